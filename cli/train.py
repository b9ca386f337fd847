"""``facesdk train``: the FaceNet triplet trainer (``--config``), the PFE head (``train pfe``),
checkpoint comparison, LFW cross-validation and the mining benchmark. All need torch (the train
extra), imported only when a command runs."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from cli.common import UsageError, data_option, positive

LFW_FOLDS = 10
PFE_VARIANTS = 10
MINING_METHODS = ("ours/semihard", "ours/hardest", "ours/batch_all", "pml", "reference")


def register(sub) -> None:
    t = sub.add_parser("train", help="training (needs torch): train --config FILE | train pfe|compare|crossval|bench-mining")
    t.add_argument("--config", type=Path, help="a .json or .toml config (see train/configs/)")
    t.add_argument("--out", type=Path, help="output folder (default: $FACESDK_HOME/runs/<config name>)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    overrides_option(t, "override a config field, e.g. --set steps=200 --set optimizer.name=adamw (repeatable)")
    t.add_argument("--nproc", type=positive, default=1, help="CPU processes for local DDP over gloo (default 1)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--list-backbones", action="store_true", help="list registered backbones and exit")
    t.set_defaults(run=train_cmd)
    verbs = t.add_subparsers(dest="train_verb", metavar="{pfe,compare,crossval,bench-mining}")

    pfe = verbs.add_parser("pfe", help="the PFE uncertainty head: features, train, evaluate")
    kinds = pfe.add_subparsers(dest="pfe_verb", metavar="{features,train,evaluate}", required=True)
    p = kinds.add_parser("features", help="compute and cache the frozen features of clean + degraded chips")
    feature_options(p)
    p.add_argument("--force", action="store_true", help="recompute even if the cache exists")
    p.set_defaults(run=pfe_features_cmd)
    p = kinds.add_parser("train", help="train the uncertainty head (features first if not cached)")
    feature_options(p)
    p.add_argument("-o", "--output", type=Path, default=None, help="checkpoint (default: $FACESDK_HOME's pfe head)")
    p.add_argument("--plot", type=Path, default=None, help="loss curve PNG (default: beside the checkpoint)")
    p.add_argument("--steps", type=positive, help="optimiser steps (default: TrainConfig's)")
    p.add_argument("--optimizer", choices=("sgd", "adam"))
    p.add_argument("--lr", type=float)
    p.add_argument("--identities", type=positive, help="P identities per batch")
    p.add_argument("--images", type=positive, help="K faces per identity")
    p.add_argument("--chips-per-image", type=positive, help="chips of one image among the K (1: K distinct images)")
    p.add_argument("--holdout", type=float, help="fraction of CelebA identities held out for the sanity report")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=pfe_train_cmd)
    p = kinds.add_parser("evaluate", help="the sanity report of a trained head on its held-out identities")
    feature_options(p)
    p.add_argument("--head", type=Path, default=None, help="checkpoint (default: $FACESDK_HOME's pfe head)")
    p.set_defaults(run=pfe_evaluate_cmd)

    p = verbs.add_parser("compare", help="did fine-tuning help? LFW verification of checkpoints vs their start")
    p.add_argument("checkpoints", nargs="+", type=Path, help="trainer checkpoints (checkpoint.pt)")
    p.add_argument("--pairs", default="pairs.txt", help="LFW pairs file (default pairs.txt, the 6,000 pairs)")
    p.add_argument("--flip", action="store_true", help="also the initial network with flip averaging")
    p.add_argument("--data", type=Path, help="data folder (default $FACESDK_DATA)")
    p.set_defaults(run=compare_cmd)

    p = verbs.add_parser("crossval", help="fine-tuning under LFW View 2: ten runs, each fold scored by a model that never saw it")
    p.add_argument("--config", type=Path, required=True, help="a trainer config (see train/configs/)")
    p.add_argument("--out", type=Path, required=True, help="folder of the runs (DIR/fold-K) and crossval.json")
    overrides_option(p, "override a config field, as for facesdk train (repeatable)")
    p.add_argument("--folds", default=",".join(map(str, range(LFW_FOLDS))), help="test folds (default all ten)")
    p.add_argument("--pairs", default="pairs.txt", help="LFW pairs file with people.txt's folds (default pairs.txt)")
    p.add_argument("--data", type=Path, help="data folder (default $FACESDK_DATA)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=crossval_cmd)

    p = verbs.add_parser("bench-mining", help="triplet mining: our op vs pytorch-metric-learning and the reference")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--repeats", type=positive, default=3, help="runs per method; the best counts (default 3)")
    p.add_argument("--pml-repeats", type=positive, default=1, help="runs of pml's miner (~10 s each on 2 cores)")
    p.add_argument("--methods", nargs="+", choices=MINING_METHODS,
                   help="default: all (on CUDA all but the reference, which runs on the CPU)")  # fmt: skip
    p.add_argument("--identities", type=positive, default=45)
    p.add_argument("--per-identity", type=positive, default=40)
    p.add_argument("--dim", type=positive, default=128)
    p.add_argument("--noise", type=float, default=0.12, help="per-dimension noise around the identity centres")
    p.add_argument("--threads", type=positive, help="torch CPU threads (default: torch's, one per core)")
    p.set_defaults(run=bench_mining_cmd)


def overrides_option(p: argparse.ArgumentParser, text: str) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE", help=text)


def feature_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--features", type=Path, default=None,
                   help="feature cache .npz (default: $FACESDK_HOME's, per variants and seed)")  # fmt: skip
    p.add_argument("--variants", type=positive, default=PFE_VARIANTS, help="degraded copies per image")
    p.add_argument("--seed", type=int, default=0)
    data_option(p)


def quiet_torch() -> None:
    # Idle OpenMP threads must sleep, not spin: on a small shared CPU, torch's spinning threads
    # fight each other and the other processes. Read when torch loads, so set before importing it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def load_config(path: Path, overrides: list[str]):
    from train.config import ConfigError, load_config

    try:
        return load_config(path, overrides)
    except ConfigError as e:
        raise UsageError(str(e)) from e


# --- train --config -------------------------------------------------------------------------------


def train_cmd(args: argparse.Namespace) -> int:
    quiet_torch()
    logging.getLogger().setLevel(logging.INFO)
    if args.list_backbones:
        from train.backbones import describe_backbones

        for name, text in describe_backbones().items():
            print(f"{name:24s} {text}")
        return 0
    if args.config is None:
        raise UsageError("--config is required (or a sub-command: pfe, compare, crossval, bench-mining)")
    config = load_config(args.config, args.overrides)
    from sdk.paths import home
    from train import trainer

    out = args.out or home() / "runs" / config.name
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
                                progress=not args.no_progress)  # fmt: skip
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


# --- train pfe ------------------------------------------------------------------------------------


def load_or_extract(path: Path | None, variants: int, seed: int, data: Path, force: bool = False):
    """The cached features at ``path`` (default: per variants and seed), extracted first if absent."""
    quiet_torch()
    import torch

    from train.pfe.features import FeatureSet, default_features_path, extract_features, training_images

    path = default_features_path(variants, seed) if path is None else path
    if path.is_file() and not force:
        features = FeatureSet.load(path)
        print(f"features: {path} ({len(features)} chips)")
        return features
    torch.set_num_threads(2)  # the one-off export of the feature graph; ONNX Runtime does the rest
    paths, identity, source = training_images(data)
    print(f"extracting features of {len(paths)} images x (1 clean + {variants} degraded) -> {path}")
    features = extract_features(paths, identity, source, variants=variants, seed=seed)
    features.save(path)
    print(f"features: {path} ({len(features)} chips of {len(features.paths)} images; "
          f"{len(features.skipped)} images without a face skipped; seconds {features.meta['seconds']})")  # fmt: skip
    return features


def pfe_features_cmd(args: argparse.Namespace) -> int:
    load_or_extract(args.features, args.variants, args.seed, args.data, force=args.force)
    return 0


def pfe_train_cmd(args: argparse.Namespace) -> int:
    from dataclasses import replace

    if args.holdout is not None and not 0 < args.holdout < 1:
        raise UsageError(f"--holdout: a fraction between 0 and 1, got {args.holdout}")
    features = load_or_extract(args.features, args.variants, args.seed, args.data)
    from train.pfe.features import default_head_path
    from train.pfe.train import TrainConfig, run

    given = {
        "identities_per_batch": args.identities, "images_per_identity": args.images,
        "chips_per_image": args.chips_per_image, "steps": args.steps, "optimizer": args.optimizer,
        "lr": args.lr, "holdout_fraction": args.holdout,
    }  # fmt: skip
    config = replace(TrainConfig(seed=args.seed), **{k: v for k, v in given.items() if v is not None})
    output = default_head_path() if args.output is None else args.output
    plot = output.with_name(f"{output.stem}_loss.png") if args.plot is None else args.plot
    run(features, config, output, plot, progress=not args.quiet)
    return 0


def pfe_evaluate_cmd(args: argparse.Namespace) -> int:
    quiet_torch()
    import numpy as np

    from train.pfe.features import default_head_path
    from train.pfe.head import load_head
    from train.pfe.train import format_report, sanity_report

    head, info = load_head(default_head_path() if args.head is None else args.head)
    features = load_or_extract(args.features, args.variants, args.seed, args.data)
    held = np.isin(features.row_identity, info.get("held_out_identities", []))
    if not held.any():
        raise ValueError("the checkpoint names no held-out identity present in these features")
    print(format_report(sanity_report(head, features, held, args.seed)))
    return 0


# --- compare, crossval, bench-mining --------------------------------------------------------------


def compare_cmd(args: argparse.Namespace) -> int:
    missing = [str(p) for p in args.checkpoints if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"no checkpoint at {', '.join(missing)}")
    quiet_torch()
    import numpy as np

    from sdk.paths import data_dir
    from evaluate.paired import describe
    from train.compare import pair_outcomes
    from train.config import config_from_dict
    from train.checkpoint import backbone_from_state, read_checkpoint
    from train.trainer import LfwEvaluation, initial_backbone

    evaluation = LfwEvaluation(args.data or data_dir(), args.pairs, progress=False)
    baselines: dict[str, np.ndarray] = {}
    for path in args.checkpoints:
        state = read_checkpoint(path)
        config = state["config"]
        key = repr((config["backbone"], config["seed"]))
        if key not in baselines:
            initial = initial_backbone(config_from_dict(config, source=f"{path} (saved config)"))
            baselines[key], v = pair_outcomes(evaluation, initial)
            print(describe(f"initial {config['backbone']['name']}", baselines[key], v), flush=True)
            if args.flip:
                ok, v = pair_outcomes(evaluation, initial, flip=True)
                print(describe("  the same with flip averaging", ok, v, baselines[key]), flush=True)
        ok, v = pair_outcomes(evaluation, backbone_from_state(state))
        print(describe(f"{path} (step {state['step']})", ok, v, baselines[key]), flush=True)
    return 0


def crossval_cmd(args: argparse.Namespace) -> int:
    try:
        folds = sorted({int(k) for k in args.folds.split(",")})
    except ValueError:
        folds = []
    if not folds or not all(0 <= k < LFW_FOLDS for k in folds):
        raise UsageError(f"--folds: integers 0..9 separated by commas, got {args.folds!r}")
    quiet_torch()
    logging.getLogger().setLevel(logging.INFO)
    from sdk.paths import data_dir
    from train.crossval import cross_validate

    config = load_config(args.config, args.overrides)
    cross_validate(config, args.out, args.data or data_dir(), folds, args.pairs, progress=not args.no_progress)
    return 0


def bench_mining_cmd(args: argparse.Namespace) -> int:
    quiet_torch()
    import torch

    from train import bench_mining

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device cuda: torch {torch.__version__} sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.methods is None:
        args.methods = [m for m in bench_mining.METHODS if args.device == "cpu" or m != "reference"]
    result = bench_mining.run_all(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        bench_mining.print_table(result)
    return 0
