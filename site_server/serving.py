"""Running the API: ``facesdk serve`` in the foreground, or a server in a thread (tests, benchmarks)."""

from __future__ import annotations

import threading
import time

import uvicorn

from site_server.app import create_app
from site_server.store import CentreStore


def build(dsn: str, model=None, *, threads: int | None = None, max_body_bytes: int | None = None):
    """(store, app): the store migrated, a Verifier for ``model`` (default: the default model)
    matching against an in-memory replica of it."""
    from sdk import Verifier

    store = CentreStore(dsn)
    store.migrate()
    verifier = Verifier(model, gallery=None, threads=threads)
    kwargs = {} if max_body_bytes is None else {"max_body_bytes": max_body_bytes}
    return store, create_app(store, verifier, **kwargs)


class ServerThread:
    """uvicorn serving ``app`` on 127.0.0.1 (a free port) in a thread: ``with ServerThread(app) as url``."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on",
                                timeout_graceful_shutdown=3)  # long polls would hold the shutdown
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="site-server", daemon=True)
        self.url = ""

    def start(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the site server did not start")
            time.sleep(0.02)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self.url

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
