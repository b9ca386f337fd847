"""Training configuration: typed sections read from a JSON or TOML file, checked field by field.

    config = load_config("train/configs/celeba_mobilefacenet.json", overrides=["steps=100"])

Every field has a default (the dataclasses below are the reference); a file sets only what it
changes. Unknown fields, wrong types and values out of range raise :class:`ConfigError` naming the
file and the dotted field, so a typo never silently falls back to a default. Overrides are
``dotted.field=value`` with the value parsed as JSON when it parses (``steps=100``,
``backbone.options={"width": 0.5}``, ``optimizer.name=adamw``).
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration file or override that cannot be used, with the field and the reason."""


@dataclass
class DataConfig:
    # Face sources (train.data.datasets.face_lists): "celeba", "lfw-devtrain", "att", ...
    train: list[str] = field(default_factory=lambda: ["celeba", "lfw-devtrain"])
    root: str | None = None  # data folder; None: sdk.paths.data_dir() ($FACESDK_DATA)
    detector: str = "auto"  # "auto" | "yunet" | "dlib"
    min_images: int = 2  # identities with fewer aligned faces are dropped
    max_identities: int | None = None  # keep the first N identities only (quick runs, tests)
    eval_pairs: str | None = "pairsDevTest.txt"  # LFW pairs file for periodic evaluation; None: off
    cache_dir: str | None = None  # aligned-chip cache; None: $FACESDK_HOME/chips or ~/.cache/facesdk/chips


@dataclass
class BackboneConfig:
    name: str = "mobilefacenet"  # train.backbones.list_backbones()
    options: dict[str, Any] = field(default_factory=dict)  # keyword arguments of its factory
    # Parameter-name prefixes kept fixed (fine-tuning a strong model: e.g. ["stem", "blocks"]
    # trains only dlib's fc); every prefix must name at least one parameter.
    freeze: list[str] = field(default_factory=list)


@dataclass
class SamplerConfig:
    identities: int = 30  # P identities per rank and step
    images: int = 10  # K images per identity (FaceNet: ~40)
    pad: bool = False  # identities with fewer than K images: repeat images (True) or give fewer (False)


@dataclass
class MiningConfig:
    mode: str = "semihard"  # "semihard" | "hardest" | "batch_all"
    margin: float = 0.2  # FaceNet's alpha, on squared L2 of unit embeddings
    fallback: str = "none"  # semihard pairs without a semi-hard negative: "none" | "easy" | "hardest"
    chunk: int = 128  # faces per forward/backward chunk (memory bound; any batch size works)
    reduction: str = "mean"  # triplet loss over the mined triplets: "mean" (FaceNet) | "sum" | "mean_active"


@dataclass
class DistillConfig:
    # Fine-tuning a strong model: add weight * mean |u - u0|^2 to the loss, u and u0 the unit
    # embeddings of each face of the batch by the network and by its initial weights, kept frozen
    # ("learning without forgetting"): the space moves only where the triplets outweigh it. 0: off.
    weight: float = 0.0
    # The target u0 is the mean of the initial network's unit embeddings of the face and of its
    # mirror image (test-time flip averaging, learned into one pass).
    flip_mean: bool = False


@dataclass
class AugmentConfig:
    enabled: bool = True
    flip: float = 0.5
    scale: float = 0.05
    translate: float = 0.04
    rotate: float = 0.0
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2


@dataclass
class OptimizerConfig:
    # "adagrad" (FaceNet, lr 0.05) | "adamw" | "sgd" (momentum 0.9: steps scale with the
    # gradient, where adaptive ones move every weight alike -- gentler for fine-tuning)
    name: str = "adagrad"
    lr: float = 0.05
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw only
    grad_clip: float | None = None  # max global gradient norm; None: no clipping
    # Each tensor's lr times its initial RMS, so steps are relative to the weight's own size.
    # For fine-tuning a net whose batch norm was folded away (dlib's: conv weights of RMS ~6e-4
    # feed affine scales of ~10; AdamW moves both by ~lr per step). Zero tensors stay fixed.
    relative_lr: bool = False


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # "cosine" | "step" | "constant"
    warmup_steps: int = 0  # linear warm-up from 0
    min_lr_ratio: float = 0.01  # cosine: final lr = lr * min_lr_ratio
    milestones: list[int] = field(default_factory=list)  # step: lr *= gamma at each milestone
    gamma: float = 0.1


@dataclass
class Config:
    name: str = "run"
    seed: int = 0
    steps: int = 1000
    device: str = "cpu"  # "cpu" | "cuda" | "auto"
    threads: int | None = None  # torch CPU threads per process; None: torch's default
    channels_last: bool = True  # NHWC activations: depthwise convolutions run ~1.3-2x faster on CPU
    max_minutes: float | None = None  # stop early (checkpoint, evaluation) after this wall time
    log_every: int = 1  # steps between CSV rows
    checkpoint_every: int = 100
    eval_every: int = 500  # steps between LFW evaluations (0: only at the end)
    eval_at_start: bool = False  # evaluate the initial model too (fine-tuning baseline)
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a ``.json`` or ``.toml`` config file, apply ``field=value`` overrides, check everything."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        if path.suffix == ".json":
            raw = json.loads(path.read_text())
        elif path.suffix == ".toml":
            raw = tomllib.loads(path.read_text())
        else:
            raise ConfigError(f"{path}: config files are .json or .toml, not {path.suffix or 'no suffix'}")
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: not valid {path.suffix[1:].upper()}: {e}") from e
    return config_from_dict(raw, source=str(path), overrides=overrides)


def config_from_dict(raw: dict[str, Any], source: str = "config", overrides: list[str] | None = None) -> Config:
    """A checked Config from nested dicts (as a file holds them), plus ``field=value`` overrides."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be an object of fields, got {type(raw).__name__}")
    raw = json.loads(json.dumps(raw))  # a deep copy, and only JSON types
    for item in overrides or []:
        _apply_override(raw, item, source)
    config = _build(Config, raw, source, "")
    _check(config, source)
    return config


def _apply_override(raw: dict[str, Any], item: str, source: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r}: expected field=value, e.g. steps=100")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text  # a bare string: optimizer.name=adamw
    *parents, last = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: override {item!r}: {part!r} is not a section")
    node[last] = value


def _build(cls: type, raw: Any, source: str, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'the top level'} must be an object, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        where = f"section {prefix.rstrip('.')!r}" if prefix else "the top level"
        raise ConfigError(
            f"{source}: unknown field '{prefix}{unknown[0]}' in {where}; known fields: {', '.join(fields)}"
        )
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in raw.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, source, f"{prefix}{name}.")
        else:
            values[name] = _convert(value, hint, source, f"{prefix}{name}")
    return cls(**values)


def _convert(value: Any, hint: Any, source: str, name: str) -> Any:
    """Check `value` against a simple type hint (int, float, str, bool, None, list[...], dict)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(value, option, source, name)
            except ConfigError:
                pass
        raise ConfigError(f"{source}: {name} must be {_describe(hint)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {name} must be a list of {_describe(args[0])}, got {value!r}")
        return [_convert(v, args[0], source, f"{name}[{i}]") for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {name} must be an object, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {name} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {name} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {name} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {name} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{source}: {name}: unsupported type {hint}")  # pragma: no cover


def _describe(hint: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if typing.get_origin(hint) is list:
        return f"a list of {_describe(args[0])}"
    return names.get(hint, str(hint))


def _check(c: Config, source: str) -> None:
    """Values in range and names that exist (backbone, optimiser, schedule, mining mode)."""
    # The registries that name what a config may choose (they need torch; a config is for training).
    from sdk.detect import DETECTORS
    from train.backbones import backbone_factory, list_backbones
    from train.losses import REDUCTIONS
    from train.mining import FALLBACKS, MODES
    from train.optim import OPTIMIZERS, SCHEDULES

    def fail(message: str) -> None:
        raise ConfigError(f"{source}: {message}")

    def choose(name: str, value: str, options: tuple[str, ...]) -> None:
        if value not in options:
            fail(f"{name} must be one of {', '.join(options)}, got {value!r}")

    def positive(name: str, value: float | int | None, allow_zero: bool = False) -> None:
        if value is not None and not (value >= 0 if allow_zero else value > 0):
            fail(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")

    for name in ("steps", "log_every", "checkpoint_every", "sampler.identities", "mining.chunk", "data.min_images"):
        section, _, leaf = name.rpartition(".")
        positive(name, getattr(getattr(c, section) if section else c, leaf))
    positive("eval_every", c.eval_every, allow_zero=True)
    positive("threads", c.threads)
    positive("max_minutes", c.max_minutes)
    positive("data.max_identities", c.data.max_identities)
    if c.sampler.images < 2:
        fail(f"sampler.images must be >= 2 (a triplet needs two faces of one identity), got {c.sampler.images}")
    if not c.data.train:
        fail("data.train must list at least one face source")
    choose("device", c.device, ("cpu", "cuda", "auto"))
    choose("data.detector", c.data.detector, tuple(DETECTORS))
    choose("mining.mode", c.mining.mode, MODES)
    choose("mining.fallback", c.mining.fallback, FALLBACKS)
    choose("mining.reduction", c.mining.reduction, REDUCTIONS)
    positive("mining.margin", c.mining.margin, allow_zero=True)
    positive("distill.weight", c.distill.weight, allow_zero=True)
    choose("optimizer.name", c.optimizer.name, tuple(OPTIMIZERS))
    positive("optimizer.lr", c.optimizer.lr)
    positive("optimizer.weight_decay", c.optimizer.weight_decay, allow_zero=True)
    positive("optimizer.grad_clip", c.optimizer.grad_clip)
    if len(c.optimizer.betas) != 2 or not all(0 <= b < 1 for b in c.optimizer.betas):
        fail(f"optimizer.betas must be two numbers in [0, 1), got {c.optimizer.betas}")
    choose("schedule.name", c.schedule.name, SCHEDULES)
    positive("schedule.warmup_steps", c.schedule.warmup_steps, allow_zero=True)
    if not 0 <= c.schedule.min_lr_ratio <= 1:
        fail(f"schedule.min_lr_ratio must be in [0, 1], got {c.schedule.min_lr_ratio}")
    if sorted(c.schedule.milestones) != c.schedule.milestones or any(m < 1 for m in c.schedule.milestones):
        fail(f"schedule.milestones must be increasing steps >= 1, got {c.schedule.milestones}")
    positive("schedule.gamma", c.schedule.gamma)
    try:
        from train.data.augment import FaceAugment

        FaceAugment(**{k: v for k, v in dataclasses.asdict(c.augment).items() if k != "enabled"})
    except ValueError as e:
        fail(f"augment: {e}")
    if c.backbone.name not in list_backbones():
        fail(f"unknown backbone {c.backbone.name!r} (backbone.name); registered: {', '.join(list_backbones())}")
    import inspect

    accepted = inspect.signature(backbone_factory(c.backbone.name)).parameters
    unknown = sorted(set(c.backbone.options) - set(accepted))
    if unknown:
        fail(f"backbone {c.backbone.name!r} has no option {unknown[0]!r} (backbone.options); it accepts: {', '.join(accepted)}")
