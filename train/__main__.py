"""Train a face embedding with FaceNet's triplet loss from a config file.

    python -m train --config train/configs/celeba_mobilefacenet.json [--out DIR] [--resume] [--set steps=200]
    torchrun --nproc_per_node 4 -m train --config train/configs/lfw_dlib_finetune.json      (DDP)
    python -m train --config CONFIG --nproc 2                                     (DDP on CPU, gloo)
    python -m train --list-backbones

Writes DIR/checkpoint.pt, metrics.csv, eval.csv, training.png, summary.json, config.json; DIR
defaults to ``$FACESDK_HOME/runs/<config name>`` (``~/.cache/facesdk/runs/...``), outside the repo.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from train.config import Config

# Idle OpenMP threads must sleep, not spin: on a small shared CPU, torch's spinning threads fight
# each other and the other processes (measured here under load: a step 20x slower with 2 spinning
# threads than with passive ones). Read when torch loads, so set before importing it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def default_out(name: str) -> Path:
    from sdk.paths import home

    return home() / "runs" / name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="a .json or .toml config (see train/configs/)")
    parser.add_argument("--out", type=Path, help="output folder (default: ~/.cache/facesdk/runs/<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
        help="override a config field, e.g. --set steps=200 --set optimizer.name=adamw (repeatable)",
    )
    parser.add_argument("--nproc", type=int, default=1, help="CPU processes for local DDP over gloo (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--list-backbones", action="store_true", help="list registered backbones and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    if args.list_backbones:
        from train.backbones import describe_backbones

        for name, text in describe_backbones().items():
            print(f"{name:24s} {text}")
        return 0
    if args.config is None:
        build_parser().error("--config is required")
    if args.nproc < 1:
        build_parser().error(f"--nproc must be >= 1, got {args.nproc}")
    from train.config import ConfigError, load_config

    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or default_out(config.name)

    try:
        return _run(args, config, out)
    except (FileExistsError, FileNotFoundError) as e:  # an existing run without --resume, missing data
        print(f"error: {e}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, config: Config, out: Path) -> int:
    from train import trainer

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:  # launched by torchrun
        import torch
        import torch.distributed as dist

        cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
        try:
            t = trainer.Trainer(config, out, resume=args.resume, rank=dist.get_rank(), world_size=world_size,
                                progress=not args.no_progress)
            summary = t.fit()
        finally:
            dist.destroy_process_group()
        if int(os.environ.get("RANK", "0")) != 0:
            return 0
    elif args.nproc > 1:
        summary = trainer.launch_local(config, out, args.nproc, resume=args.resume)
    else:
        summary = trainer.Trainer(config, out, resume=args.resume, progress=not args.no_progress).fit()
    print(json.dumps(summary, indent=2))
    print(f"outputs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
