"""ONNX Runtime session options for the SDK's models: how their threads behave between stages."""

from __future__ import annotations

from typing import Any


def session_options(threads: int | None = None) -> Any:
    """``onnxruntime.SessionOptions`` with ``threads`` intra-op threads (None: ONNX Runtime's
    own, one per physical core) that spin only while a run has work for them.

    Spinning between runs would steal the cores from the next stage (landmarks, align, match)
    on a 2-core device; never spinning costs a thread wake-up per operator, which at batch 1
    costs more than the second core saves (README, "A single-face frame, per stage").
    ValueError for a bad thread count.
    """
    import onnxruntime as ort

    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    options.add_session_config_entry("session.force_spinning_stop", "1")  # at the end of each run
    if threads is not None:
        options.intra_op_num_threads = threads
    return options
