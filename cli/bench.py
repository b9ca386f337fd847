"""``facesdk bench``: the benchmarks of ``evaluate.bench``, with the torch reference they compare against."""

from __future__ import annotations

import numpy as np

from evaluate import bench


def load_torch(threads: int) -> bench.Candidate:
    """dlib's ResNet-29 converted to PyTorch, wrapped in the very graph export.onnx exports
    (uint8 NHWC -> float NCHW -> network -> L2-normalised), so it computes what the ONNX file does."""
    import torch

    from export.onnx import ChipEmbedding
    from train.backbones.dlib_resnet import DlibResNet

    torch.set_num_threads(threads)
    net = ChipEmbedding(DlibResNet.from_dlib()).eval()

    def embed(chips: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(chips)).numpy()

    return bench.Candidate("torch", "fp32", "DlibResNet.from_dlib", embed, {"threads": threads, "torch": torch.__version__})


def main(argv: list[str] | None = None) -> int:
    return bench.main(argv, torch_loader=load_torch)
