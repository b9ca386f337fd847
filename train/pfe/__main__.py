"""Train the PFE uncertainty head: ``python -m train.pfe features|train|evaluate``.

    python -m train.pfe features [--variants 10]       frozen features of clean + degraded chips (cached)
    python -m train.pfe train [--steps 3000]            train the head (features first if not cached)
    python -m train.pfe evaluate [--head HEAD.pt]       the sanity report of a trained head again

Then ``python -m export.onnx pfe`` writes the backbone + head as one ONNX model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sdk.paths import data_dir
from train.pfe.features import FeatureSet, cache_dir, default_features_path, default_head_path

DEFAULT_VARIANTS = 10


def load_or_extract(path: Path | None, variants: int, seed: int, data: Path, force: bool = False) -> FeatureSet:
    """The cached features at ``path`` (default: per variants and seed), extracted first if absent."""
    import torch

    from train.pfe.features import extract_features, training_images

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
          f"{len(features.skipped)} images without a face skipped; seconds {features.meta['seconds']})")
    return features


def main(argv: list[str] | None = None) -> None:
    from train.pfe.train import TrainConfig

    defaults = TrainConfig()
    parser = argparse.ArgumentParser(prog="python -m train.pfe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def feature_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--features", type=Path, default=None,
                       help=f"feature cache .npz (default: {cache_dir()}/features_v<variants>_seed<seed>.npz)")
        p.add_argument("--variants", type=int, default=DEFAULT_VARIANTS, help="degraded copies per image")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--data", type=Path, default=data_dir(), help="data folder (default: $FACESDK_DATA)")

    feats = sub.add_parser("features", help="compute and cache the frozen features")
    feature_options(feats)
    feats.add_argument("--force", action="store_true", help="recompute even if the cache exists")

    train = sub.add_parser("train", help="train the uncertainty head on the cached features")
    feature_options(train)
    train.add_argument("-o", "--output", type=Path, default=None, help=f"checkpoint (default: {default_head_path()})")
    train.add_argument("--plot", type=Path, default=None, help="loss curve PNG (default: beside the checkpoint)")
    train.add_argument("--steps", type=int, default=defaults.steps)
    train.add_argument("--optimizer", choices=("sgd", "adam"), default=defaults.optimizer)
    train.add_argument("--lr", type=float, default=defaults.lr)
    train.add_argument("--identities", type=int, default=defaults.identities_per_batch, help="P per batch")
    train.add_argument("--images", type=int, default=defaults.images_per_identity, help="K faces per identity")
    train.add_argument("--chips-per-image", type=int, default=defaults.chips_per_image,
                       help="chips of one image among the K (1: the paper's K distinct images)")
    train.add_argument("--holdout", type=float, default=defaults.holdout_fraction,
                       help="fraction of CelebA identities held out for the sanity report")
    train.add_argument("--quiet", action="store_true", help="no progress bars")

    evaluate = sub.add_parser("evaluate", help="the sanity report of a trained head on its held-out identities")
    feature_options(evaluate)
    evaluate.add_argument("--head", type=Path, default=None, help=f"checkpoint (default: {default_head_path()})")

    args = parser.parse_args(argv)
    if args.command == "features":
        load_or_extract(args.features, args.variants, args.seed, args.data, force=args.force)
    elif args.command == "train":
        from train.pfe.train import run

        features = load_or_extract(args.features, args.variants, args.seed, args.data)
        config = TrainConfig(
            identities_per_batch=args.identities,
            images_per_identity=args.images,
            chips_per_image=args.chips_per_image,
            steps=args.steps,
            optimizer=args.optimizer,
            lr=args.lr,
            holdout_fraction=args.holdout,
            seed=args.seed,
        )
        output = default_head_path() if args.output is None else args.output
        plot = output.with_name(f"{output.stem}_loss.png") if args.plot is None else args.plot
        run(features, config, output, plot, progress=not args.quiet)
    else:
        import numpy as np

        from train.pfe.head import load_head
        from train.pfe.train import format_report, sanity_report

        head, info = load_head(default_head_path() if args.head is None else args.head)
        features = load_or_extract(args.features, args.variants, args.seed, args.data)
        held = np.isin(features.row_identity, info.get("held_out_identities", []))
        if not held.any():
            raise SystemExit("the checkpoint names no held-out identity present in these features")
        print(format_report(sanity_report(head, features, held, args.seed)))


if __name__ == "__main__":
    main()
