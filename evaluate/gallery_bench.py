"""The gallery at scale: bulk enrolment, load time and memory, and match latency with and without
another thread enrolling at the same time.

    facesdk bench gallery [--size 1000000] [--seconds 5] [--precision fp32|fp16|int8] [--json PATH]

Random unit vectors (dim 128) stand in for faces: the gallery's work does not depend on what the
vectors mean. Steps, in one process: ``add_many`` in chunks (identities/s); reopen the file and
time the first search, which loads the snapshot (seconds; resident memory it added and the peak
while loading, from /proc); top-1 searches of one query for ``seconds`` (p50/p99 ms); the same
while a second thread enrols one identity after another (p50/p99, enrolments/s). ``--precision``
chooses the in-memory rows (``Gallery(precision=)``): the file is the same float32 file for all
three, and the bytes of the arrays a search reads are reported beside the resident memory.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from evaluate.bench import _status_kib, unit_rows
from sdk.gallery import Gallery

MODEL = {"model_name": "bench", "model_version": "1", "dim": 128}
CHUNK = 100_000  # identities per add_many call: bounds the memory of building the file


def percentiles(ms: list[float]) -> dict:
    a = np.asarray(ms, np.float64)
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "samples": int(a.size)}


def search_times(g: Gallery, queries: np.ndarray, seconds: float) -> list[float]:
    times, start, i = [], time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        g.search(queries[i % len(queries)][None], k=1)
        times.append((time.perf_counter() - t0) * 1e3)
        i += 1
    return times


def bench_gallery(size: int, seconds: float, folder: Path | None = None, precision: str = "fp32") -> dict:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        path = Path(tmp) / "gallery.sqlite"
        with Gallery(path, **MODEL) as g:
            bulk_s = 0.0  # add_many alone, not the making of the random rows
            for first in range(0, size, CHUNK):
                count = min(CHUNK, size - first)
                names, rows = [f"id{i}" for i in range(first, first + count)], unit_rows(rng, count)
                start = time.perf_counter()
                g.add_many(names, rows)
                bulk_s += time.perf_counter() - start
        queries = unit_rows(rng, 64)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS, so the peak below is the load's
        before = _status_kib("VmRSS")
        with Gallery(path, **MODEL, precision=precision) as g:
            start = time.perf_counter()
            g.search(queries[:1])
            load_s = time.perf_counter() - start
            resident_mb = (_status_kib("VmRSS") - before) / 1024
            peak_mb = (_status_kib("VmHWM") - before) / 1024
            snapshot = g._current()
            matrix_mb = snapshot.vectors.nbytes / 1e6
            rows_mb = (matrix_mb * 1e6 + snapshot.labels.nbytes + (0 if snapshot.ids is None else snapshot.ids.nbytes)) / 1e6
            alone = search_times(g, queries, seconds)
            stop, enrolled = threading.Event(), [0]

            def enrol() -> None:
                writer_rng = np.random.default_rng(1)
                while not stop.is_set():
                    g.add(f"new{enrolled[0]}", unit_rows(writer_rng, 1))
                    enrolled[0] += 1

            writer = threading.Thread(target=enrol)
            writer.start()
            try:
                during = search_times(g, queries, seconds)
            finally:
                stop.set()
                writer.join()
    return {
        "size": size,
        "precision": precision,
        "search_arrays_mb": matrix_mb,
        "row_arrays_mb": rows_mb,
        "bulk_identities_per_s": size / bulk_s,
        "load_s": load_s,
        "resident_mb": resident_mb,
        "peak_mb": peak_mb,
        "match_alone": percentiles(alone),
        "match_while_enrolling": percentiles(during),
        "enrolments_per_s": enrolled[0] / seconds,
    }


def print_gallery(r: dict) -> None:
    alone, during = r["match_alone"], r["match_while_enrolling"]
    print(f"gallery of {r['size']:,} identities (dim 128), in memory as {r['precision']} (the file keeps float32)")
    print(f"  bulk enrolment (add_many): {r['bulk_identities_per_s']:,.0f} identities/s")
    print(f"  first search (loads the snapshot): {r['load_s']:.2f} s; resident +{r['resident_mb']:.0f} MB, "
          f"peak +{r['peak_mb']:.0f} MB")  # fmt: skip
    print(f"  arrays a search reads: {r['search_arrays_mb']:.1f} MB; with row labels and file ids: {r['row_arrays_mb']:.1f} MB "
          f"(the rest of the resident rise: identity names, SQLite's cache)")  # fmt: skip
    print(f"  top-1 match alone: p50 {alone['p50_ms']:.2f} ms, p99 {alone['p99_ms']:.2f} ms ({alone['samples']} searches)")
    print(f"  top-1 match while another thread enrols ({r['enrolments_per_s']:.0f} enrolments/s): "
          f"p50 {during['p50_ms']:.2f} ms, p99 {during['p99_ms']:.2f} ms = {during['p99_ms'] / during['p50_ms']:.2f} x p50")  # fmt: skip
