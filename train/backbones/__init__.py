"""Backbones: networks that map an aligned face chip to an embedding, behind a timm-like registry.

    from train.backbones import create_backbone, list_backbones
    model = create_backbone("mobilefacenet", image_size=96)

Every backbone takes float NCHW RGB in 0..255, ``[N, 3, 150, 150]``: the SDK's canonical chip
(``dlib5_150_0.25``: dlib's 5-point template, 150 px, padding 0.25, cut by ``sdk.align``), and
returns a raw ``[N, 128]`` embedding (not normalised: the trainer and ``export.onnx`` normalise).
Each has ``input_size`` (chip rows, cols) and ``chip_scheme`` attributes. Small networks that run
at a lower resolution (``image_size``) resize the 150 px chip inside their forward pass, so one
chip and one exported input serve every model.

Registered:

* ``inception_resnet_small``: a small Inception-ResNet-v1 (FaceNet's NN family), ``inception_resnet.py``;
* ``mobilefacenet``: MobileFaceNet-like, depthwise separable bottlenecks for edge devices, ``mobilefacenet.py``;
* ``dlib_resnet``: dlib's ResNet-29 converted from dlib's model file (``dlib_resnet.DlibResNet``), for fine-tuning.

Entries name their module and factory as strings and import on use: the package imports no
network module.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from torch import nn

# name -> (module, factory function, one-line description)
_REGISTRY: dict[str, tuple[str, str, str]] = {
    "inception_resnet_small": (
        "train.backbones.inception_resnet",
        "inception_resnet_small",
        "small Inception-ResNet-v1 (FaceNet's NN family), 112 px",
    ),
    "mobilefacenet": (
        "train.backbones.mobilefacenet",
        "mobilefacenet",
        "MobileFaceNet-like, depthwise separable, for edge devices, 112 px",
    ),
    "dlib_resnet": (
        "train.backbones",
        "create_dlib_resnet",
        "dlib's ResNet-29 converted from its model file (150 px), for fine-tuning",
    ),
}


def list_backbones() -> list[str]:
    """Names accepted by :func:`create_backbone`, sorted."""
    return sorted(_REGISTRY)


def describe_backbones() -> dict[str, str]:
    """name -> one-line description."""
    return {name: _REGISTRY[name][2] for name in list_backbones()}


def backbone_factory(name: str) -> Any:
    """The factory function of a registered backbone (its signature lists the accepted options)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; registered: {', '.join(list_backbones())}")
    module, function, _ = _REGISTRY[name]
    return getattr(importlib.import_module(module), function)


def create_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered backbone; unknown names and options raise ValueError listing the valid ones."""
    factory = backbone_factory(name)
    accepted = inspect.signature(factory).parameters
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"backbone {name!r} has no option {', '.join(map(repr, unknown))}; it accepts: {', '.join(accepted) or 'none'}"
        )
    return factory(**kwargs)


def create_dlib_resnet(pretrained: bool = True, path: str | None = None) -> nn.Module:
    """dlib's ResNet-29 (150x150 chips). pretrained=False keeps the architecture and re-initialises
    every weight (He for convolutions and fc, identity for the folded batch-norm affines)."""
    from train.backbones._common import CHIP_SCHEME
    from train.backbones.dlib_resnet import Affine, DlibResNet

    model = DlibResNet.from_dlib(path)
    model.chip_scheme = CHIP_SCHEME
    if not pretrained:
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, Affine):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
    return model
