"""Benchmarks of a site (commands, not tests: ``facesdk site bench identify|lag|scale``).

Each starts a throwaway PostgreSQL (:class:`~site_server.pgtemp.TempPostgres`) and the API on
loopback, and prints its figures beside a reference measured in the same run:

* identify: C client processes, each one keep-alive connection, POST /v1/identify by embedding
  against a gallery of N; p50/p99 latency and throughput. Reference: the same search in process
  (``Gallery.search``, no HTTP), so the ratio is what the service adds.
* lag: enrolment at the centre (POST /v1/identities/.../faces) to the first match at a door
  replica that long-polls; reference: the enrolment request's own round trip.
* scale: N identities bulk-loaded with COPY, size on disk, and the time a new door takes to sync
  all of them through the API; reference: ``Gallery.add_many`` of the same rows into a local file.

Gallery rows beyond the real faces are random unit vectors (no data set holds a million faces);
matching cost does not depend on what the vectors hold.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from sdk.gallery import Gallery
from sdk.replica import HttpCentre, Replica
from site_server.pgtemp import TempPostgres
from site_server.serving import ServerThread, build


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    out = np.empty((n, dim), np.float32)
    for i in range(0, n, 65536):  # bounded temporary memory
        block = rng.standard_normal((min(65536, n - i), dim), dtype=np.float32)
        out[i : i + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


class _Site:
    """PostgreSQL + the API in a thread, for one benchmark."""

    def __init__(self, model: Path | None, dsn: str | None) -> None:
        self.pg = None if dsn else TempPostgres(settings={"shared_buffers": "256MB"}).start()
        self.store, self.app = build(dsn or self.pg.dsn, model, threads=1)
        self.gallery = self.app.state.replica.gallery
        self.server = ServerThread(self.app)
        self.url = self.server.start()
        self.admin = self.store.create_token(f"bench-admin-{os.getpid()}-{time.time_ns()}", "admin")
        self.device = self.store.create_token(f"bench-door-{os.getpid()}-{time.time_ns()}", "device")

    def fill(self, n: int, seed: int = 0, progress=None) -> float:
        """Bulk-loads n random identities; returns the seconds COPY and the inserts took."""
        vectors = _unit(np.random.default_rng(seed), n, self.gallery.dim)
        names = [f"bench_{seed}_{i:07d}" for i in range(n)]
        start = time.perf_counter()
        self.store.bulk_load(names, vectors, network=self.gallery.network, origin="bench", progress=progress)
        return time.perf_counter() - start

    def caught_up(self, timeout: float = 3600) -> None:
        """Waits until the server's own matching gallery holds every version."""
        head, deadline = self.store.head(), time.monotonic() + timeout
        while self.app.state.replica.version < head:
            if time.monotonic() > deadline:
                raise TimeoutError("the server's gallery did not catch up")
            time.sleep(0.05)

    def close(self) -> None:
        self.server.stop()
        self.store.close()
        if self.pg is not None:
            self.pg.cleanup()


def _percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()),
            "n": len(ms)}  # fmt: skip


def _client(url: str, token: str, body: bytes, seconds: float, start_at: float) -> list[float]:
    """One client: one keep-alive connection, requests back to back for ``seconds``."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    while time.time() < start_at:
        time.sleep(0.001)
    latencies, stop = [], time.time() + seconds
    while time.time() < stop:
        t = time.perf_counter()
        conn.request("POST", "/v1/identify", body, headers)
        response = conn.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(f"identify answered {response.status}: {payload[:200]!r}")
        latencies.append((time.perf_counter() - t) * 1e3)
    conn.close()
    return latencies


def identify(model: Path | None = None, *, size: int = 10_000, clients: int = 4, seconds: float = 10.0,
             dsn: str | None = None) -> dict[str, Any]:  # fmt: skip
    site = _Site(model, dsn)
    try:
        site.fill(size)
        site.caught_up()
        query = _unit(np.random.default_rng(1), 1, site.gallery.dim)[0]
        # Reference: the same search in process, one thread.
        reference = []
        for _ in range(200):
            t = time.perf_counter()
            site.gallery.search(query[None], k=1)
            reference.append((time.perf_counter() - t) * 1e3)
        body = json.dumps({"embedding": query.tolist(), "k": 1}).encode()
        context = multiprocessing.get_context("spawn")  # the server's threads are not forked
        start_at = time.time() + 3.0  # every client connected and waiting
        with context.Pool(clients) as pool:
            results = pool.starmap(_client, [(site.url, site.device, body, seconds, start_at)] * clients)
        latencies = [x for r in results for x in r]
        http_stats = _percentiles(latencies)
        return {
            "benchmark": "identify", "gallery": size, "clients": clients, "seconds": seconds,
            "http": {**http_stats, "throughput_per_s": len(latencies) / seconds},
            "in_process_search": _percentiles(reference),
            "http_over_in_process_p50": http_stats["p50_ms"] / float(np.percentile(reference, 50)),
        }  # fmt: skip
    finally:
        site.close()


def lag(model: Path | None = None, *, rounds: int = 50, size: int = 1000, dsn: str | None = None) -> dict[str, Any]:
    site = _Site(model, dsn)
    folder = Path(tempfile.mkdtemp(prefix="facesdk-bench-"))
    door = None
    try:
        site.fill(size)
        g = site.gallery
        door = Replica(Gallery(folder / "door.sqlite", model_name=g.model_name, model_version=g.model_version, dim=g.dim,
                               network=g.network), HttpCentre(site.url, site.device), device="bench-door")  # fmt: skip
        door.sync()
        door.start()
        vectors = _unit(np.random.default_rng(2), rounds, g.dim)
        lags, requests = [], []
        host, port = site.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        headers = {"Authorization": f"Bearer {site.admin}", "Content-Type": "application/json"}
        for i, v in enumerate(vectors):
            name = f"lag_{i}"
            body = json.dumps({"embeddings": [v.tolist()], "model": {"name": g.model_name, "version": g.model_version, "dim": g.dim},
                               "precision": g.network[0], "network_sha256": g.network[1]}).encode()  # fmt: skip
            t = time.perf_counter()
            conn.request("POST", f"/v1/identities/{name}/faces", body, headers)
            response = conn.getresponse()
            response.read()
            requests.append((time.perf_counter() - t) * 1e3)
            if response.status != 200:
                raise RuntimeError(f"enrolment answered {response.status}")
            while door.gallery.search(v[None], k=1)[0][0][0] != name:
                time.sleep(0.0005)
            lags.append((time.perf_counter() - t) * 1e3)
            time.sleep(0.05)  # one at a time: each lag from a quiet door
        conn.close()
        return {"benchmark": "lag", "gallery": size, "rounds": rounds, "enrol_to_match_at_door": _percentiles(lags),
                "enrol_request": _percentiles(requests)}  # fmt: skip
    finally:
        if door is not None:
            door.stop(0)  # it may be in a long poll: the server's shutdown ends that
        site.close()
        if door is not None:
            door.stop(30)
            door.gallery.close()
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()


def scale(model: Path | None = None, *, size: int = 1_000_000, dsn: str | None = None, progress=print) -> dict[str, Any]:
    site = _Site(model, dsn)
    folder = Path(tempfile.mkdtemp(prefix="facesdk-bench-"))
    try:
        g = site.gallery
        load_s = site.fill(size, progress=lambda i: progress(f"  COPY {i:,} / {size:,}") if i % 200_000 == 0 else None)
        progress(f"bulk load of {size:,}: {load_s:.1f} s")
        table_bytes = site.store.size_on_disk()
        site.caught_up()
        progress("the server's own gallery caught up; a new door syncs")
        door = Replica(Gallery(folder / "door.sqlite", model_name=g.model_name, model_version=g.model_version, dim=g.dim,
                               network=g.network), HttpCentre(site.url, site.device, timeout_s=300), device="new-door")  # fmt: skip
        t = time.perf_counter()
        door.sync()
        sync_s = time.perf_counter() - t
        held = door.gallery.count()
        door_bytes = (folder / "door.sqlite").stat().st_size
        door.gallery.close()
        # Reference: the same rows straight into a local gallery file.
        vectors = _unit(np.random.default_rng(0), size, g.dim)
        names = [f"bench_0_{i:07d}" for i in range(size)]
        reference = Gallery(folder / "ref.sqlite", model_name=g.model_name, model_version=g.model_version, dim=g.dim)
        t = time.perf_counter()
        reference.add_many(names, vectors)
        add_many_s = time.perf_counter() - t
        reference.close()
        return {
            "benchmark": "scale", "identities": size, "bulk_load_s": load_s, "central_tables_bytes": table_bytes,
            "postgres_data_bytes": site.pg.size_on_disk() if site.pg else None, "door_sync_s": sync_s,
            "door_faces": held, "door_file_bytes": door_bytes, "local_add_many_s": add_many_s,
            "sync_over_add_many": sync_s / add_many_s,
        }  # fmt: skip
    finally:
        site.close()
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()

