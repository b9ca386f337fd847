"""MiniFASNet (Silent-Face-Anti-Spoofing, Apache-2.0) from its ``.pth`` state dicts to the two small
ONNX files the runtime's liveness check (:mod:`sdk.liveness`) ships with.

    facesdk export minifasnet --from ../shared/models/minifasnet [-o sdk/models]

The network is a MobileFaceNet with pruned widths. Nothing of it is hard-coded here but its
topology: every channel width, the number of residual blocks per stage and where the
squeeze-excitation modules sit are read off the tensors' shapes and names, and the file must be
consumed exactly (every key used, every shape as built) or it is refused with the key at fault.

Topology (80x80 input; the strides are not in the file: the final 5x5 depthwise kernel is what a
16x downsampling leaves, and the samples' scores in ``../shared/notes/minifasnet.md`` confirm it):

    conv1      3x3 conv, stride 2, BN, PReLU                  80 -> 40
    conv2_dw   3x3 depthwise, BN, PReLU
    conv_23    bottleneck, stride 2 (no shortcut)             40 -> 20
    conv_3     residual bottlenecks
    conv_34    bottleneck, stride 2                           20 -> 10
    conv_4     residual bottlenecks
    conv_45    bottleneck, stride 2                           10 -> 5
    conv_5     residual bottlenecks
    conv_6_sep 1x1 conv, BN, PReLU
    conv_6_dw  5x5 depthwise (valid), BN                      5 -> 1
    linear (no bias), BatchNorm1d, prob (no bias)             -> 3 logits; class 1 = live

A bottleneck is 1x1 expand (BN, PReLU), 3x3 depthwise (BN, PReLU), 1x1 project (BN, linear); a
residual one adds its input, after the optional squeeze-excitation (global mean, 1x1 reduce, BN,
ReLU, 1x1 expand, BN, sigmoid, channel scale) of the projection.

The exported graph takes the crop as the original does (BGR, float32 0..255, NCHW, nothing
subtracted or scaled) and ends in the softmax, so no runtime can forget it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from export.onnx import torchscript_proto
from sdk.embed import save_model_atomic
from sdk.liveness import DEFAULT_MODELS, INPUT_NAME, OUTPUT_NAME, check_metadata

# Source file of each shipped model, its ONNX file name (sdk.liveness.DEFAULT_MODELS), its crop scale.
SOURCES = {
    "2.7_80x80_MiniFASNetV2.pth": ("minifasnet_v2", 2.7),
    "4_0_0_80x80_MiniFASNetV1SE.pth": ("minifasnet_v1se", 4.0),
}
STAGES = ("conv_3", "conv_4", "conv_5")  # the residual stages, after conv_23, conv_34, conv_45
TRANSITIONS = ("conv_23", "conv_34", "conv_45")
PREFIX = "module."  # saved from DataParallel


class ConvUnit(nn.Module):
    """conv (no bias) + BN (+ PReLU): the file's ``conv``/``bn``/``prelu`` triple."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, depthwise: bool = False, prelu: bool = True):
        super().__init__()
        padding = 0 if kernel == 5 else kernel // 2  # conv_6_dw's 5x5 is valid: it pools 5x5 to 1x1
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=cin if depthwise else 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.prelu = nn.PReLU(cout) if prelu else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return x if self.prelu is None else self.prelu(x)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(reduced)
        self.fc2 = nn.Conv2d(reduced, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.mean(dim=(2, 3), keepdim=True)
        w = torch.sigmoid(self.bn2(self.fc2(torch.relu(self.bn1(self.fc1(w))))))
        return x * w


class Bottleneck(nn.Module):
    def __init__(self, cin: int, expanded: int, cout: int, stride: int, residual: bool, se: int | None):
        super().__init__()
        self.conv = ConvUnit(cin, expanded, 1)
        self.conv_dw = ConvUnit(expanded, expanded, 3, stride, depthwise=True)
        self.project = ConvUnit(expanded, cout, 1, prelu=False)
        self.se_module = SqueezeExcitation(cout, se) if se is not None else None
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.conv_dw(self.conv(x)))
        if self.se_module is not None:
            y = self.se_module(y)
        return x + y if self.residual else y


class ResidualStage(nn.Module):
    def __init__(self, blocks: list[Bottleneck]):
        super().__init__()
        self.model = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class MiniFASNet(nn.Module):
    """BGR crops [N, 3, S, S] float 0..255 -> logits [N, 3] (class 1 = live); widths from a state dict."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]):
        super().__init__()

        def width(key: str, dim: int = 0) -> int:
            if key not in shapes:
                raise ValueError(f"missing tensor {PREFIX}{key}")
            return shapes[key][dim]

        def bottleneck(prefix: str, stride: int, residual: bool) -> Bottleneck:
            se = f"{prefix}.se_module.fc1.weight"
            return Bottleneck(
                width(f"{prefix}.conv.conv.weight", 1),
                width(f"{prefix}.conv.conv.weight"),
                width(f"{prefix}.project.conv.weight"),
                stride,
                residual,
                width(se) if se in shapes else None,
            )

        c1 = width("conv1.conv.weight")
        self.conv1 = ConvUnit(width("conv1.conv.weight", 1), c1, 3, stride=2)
        self.conv2_dw = ConvUnit(c1, c1, 3, depthwise=True)
        for transition, stage in zip(TRANSITIONS, STAGES):
            setattr(self, transition, bottleneck(transition, 2, residual=False))
            count = len({k.split(".")[2] for k in shapes if k.startswith(f"{stage}.model.")})
            if count == 0:
                raise ValueError(f"no residual blocks under {PREFIX}{stage}")
            setattr(self, stage, ResidualStage([bottleneck(f"{stage}.model.{i}", 1, True) for i in range(count)]))
        sep = width("conv_6_sep.conv.weight")
        self.conv_6_sep = ConvUnit(width("conv_6_sep.conv.weight", 1), sep, 1)
        kernel = width("conv_6_dw.conv.weight", 2)
        if kernel != 5:
            raise ValueError(f"conv_6_dw has a {kernel}x{kernel} kernel; this topology (80x80 crops) needs 5x5")
        self.conv_6_dw = ConvUnit(sep, sep, kernel, depthwise=True, prelu=False)
        self.linear = nn.Linear(width("linear.weight", 1), width("linear.weight"), bias=False)
        self.bn = nn.BatchNorm1d(width("bn.weight"))
        self.prob = nn.Linear(width("prob.weight", 1), width("prob.weight"), bias=False)
        self.input_size = kernel * 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2_dw(self.conv1(x))
        x = self.conv_3(self.conv_23(x))
        x = self.conv_4(self.conv_34(x))
        x = self.conv_5(self.conv_45(x))
        x = self.conv_6_dw(self.conv_6_sep(x)).flatten(1)
        return self.prob(self.bn(self.linear(x)))

    @classmethod
    def from_state_dict(cls, path: str | os.PathLike[str]) -> MiniFASNet:
        """The network in ``path`` (a MiniFASNet ``.pth``), in eval mode; ValueError naming the key at
        fault unless the file is a plain state dict that fills this topology exactly."""
        path = Path(path)
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)  # tensors only: no pickled code runs
        except Exception as e:
            raise ValueError(f"{path}: not a readable torch state dict ({type(e).__name__}: {e})") from e
        if not isinstance(raw, dict) or not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
            raise ValueError(f"{path}: expected a dict of tensors (a state dict), got {type(raw).__name__}")
        foreign = [k for k in raw if not k.startswith(PREFIX)]
        if foreign:
            raise ValueError(f"{path}: key {foreign[0]!r} lacks the {PREFIX!r} prefix of a MiniFASNet file")
        state = {k[len(PREFIX):]: v for k, v in raw.items()}
        try:
            model = cls({k: tuple(v.shape) for k, v in state.items()})
        except (ValueError, IndexError) as e:
            raise ValueError(f"{path}: not a MiniFASNet state dict: {e}") from e
        expected = model.state_dict()
        unused = sorted(state.keys() - expected.keys())
        missing = sorted(expected.keys() - state.keys())
        if unused or missing:
            raise ValueError(
                f"{path}: keys do not fit MiniFASNet: unused {[PREFIX + k for k in unused[:5]]}, "
                f"missing {[PREFIX + k for k in missing[:5]]}"
            )
        for key, tensor in expected.items():
            if state[key].shape != tensor.shape or state[key].dtype != tensor.dtype:
                raise ValueError(
                    f"{path}: {PREFIX}{key} is {tuple(state[key].shape)} {state[key].dtype}, "
                    f"the topology needs {tuple(tensor.shape)} {tensor.dtype}"
                )
            if tensor.is_floating_point() and not torch.isfinite(state[key]).all():
                raise ValueError(f"{path}: {PREFIX}{key} holds NaN or infinite values")
        model.load_state_dict(state, strict=True)
        return model.eval()


class SlopeMax(nn.Module):
    """PReLU as max(x, a*x), exact for slopes a <= 1. ONNX Runtime's PRelu broadcasts its
    per-channel slope slowly: it took 42% of MiniFASNet's time; Mul + Max run 1.4-1.7x faster."""

    def __init__(self, prelu: nn.PReLU):
        super().__init__()
        self.slope = nn.Parameter(prelu.weight.detach().view(1, -1, 1, 1).clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.maximum(x, x * self.slope)


class Probabilities(nn.Module):
    """The exported graph: crops -> softmax over the 3 classes (PReLUs as SlopeMax where exact)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        for unit in model.modules():
            if isinstance(unit, ConvUnit) and unit.prelu is not None and bool((unit.prelu.weight <= 1).all()):
                unit.prelu = SlopeMax(unit.prelu)
        self.model = model

    def forward(self, crop: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(crop), dim=1)


def export_model(pth: str | os.PathLike[str], path: str | os.PathLike[str], *, name: str, scale: float) -> Path:
    """One ``.pth`` to a self-describing ONNX file (input ``crop``, output ``probabilities``)."""
    pth, path = Path(pth), Path(path)
    model = MiniFASNet.from_state_dict(pth)
    size = model.input_size
    graph = Probabilities(model).eval()
    example = torch.zeros(2, 3, size, size)  # batch 2: no size-1 batch baked in
    proto = torchscript_proto(graph, example, path, INPUT_NAME, [OUTPUT_NAME])
    meta = {
        "model_name": name,
        "crop_scale": f"{scale:g}",
        "input_size": f"{size}x{size}",
        "input_layout": "NCHW",
        "input_color": "BGR",
        "input_range": "0-255",
        "live_class": "1",
        "license": "Apache-2.0 (Silent-Face-Anti-Spoofing, Minivision)",
        "source": f"{pth.name} sha256:{hashlib.sha256(pth.read_bytes()).hexdigest()}",
    }
    check_metadata(meta, str(path))
    onnx.helper.set_model_props(proto, meta)
    onnx.checker.check_model(proto, full_check=True)
    save_model_atomic(proto, path)
    return path


def export_minifasnet(source: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Both models from the folder ``source`` holding the original ``.pth`` files, into ``out_dir``
    under the names the runtime loads (``sdk.liveness.DEFAULT_MODELS``), with their licence."""
    source, out_dir = Path(source), Path(out_dir)
    written = []
    for pth, (name, scale) in SOURCES.items():
        if not (source / pth).is_file():
            raise FileNotFoundError(f"{source / pth} not found (the MiniFASNet weights, see ../shared/notes/minifasnet.md)")
        written.append(export_model(source / pth, out_dir / DEFAULT_MODELS[name], name=name, scale=scale))
    if (source / "LICENSE").is_file():  # Apache-2.0: the licence travels with the weights
        shutil.copyfile(source / "LICENSE", out_dir / "LICENSE-minifasnet")
        written.append(out_dir / "LICENSE-minifasnet")
    return written


def torch_probabilities(pth: str | os.PathLike[str], crops: np.ndarray) -> np.ndarray:
    """The reference: softmax of the torch module on crops [N, 3, S, S] float32 (for parity tests)."""
    with torch.inference_mode():
        return torch.softmax(MiniFASNet.from_state_dict(pth)(torch.from_numpy(crops)), dim=1).numpy()

