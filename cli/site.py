"""A site of many doors: `facesdk serve` (the centre's HTTP API) and `facesdk site ...` (its
store, tokens, a door's sync, benchmarks). The centre needs the server extra (PostgreSQL driver,
FastAPI, uvicorn); a door's sync needs nothing beyond the runtime.

    facesdk serve --dsn DSN [--host 127.0.0.1] [--port 8080] [--model PATH]
    facesdk site migrate --dsn DSN
    facesdk site token create NAME --scope admin|device|kiosk --dsn DSN  |  token list  |  token revoke NAME
    facesdk site sync --url URL [--follow] [--gallery PATH] [--model PATH]    (token: $FACESDK_SITE_TOKEN)
    facesdk site enroll NAME IMAGE... --url URL [--largest]                  (a kiosk token)
    facesdk site bench identify|lag|scale [...]

The database is named by --dsn or $FACESDK_SITE_DSN (a libpq connection string; keep its
password in ~/.pgpass or $PGPASSFILE, not on the command line).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from cli.common import UsageError, emit, model_option, positive


def register(sub) -> None:
    p = sub.add_parser("serve", help="run the site's HTTP API (behind a TLS reverse proxy)")
    dsn_option(p)
    model_option(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback: the proxy's side)")
    p.add_argument("--port", type=positive, default=8080)
    p.add_argument("--threads", type=positive, help="ONNX Runtime threads for embedding images")
    p.add_argument("--max-body-mb", type=float, default=8.0, help="largest request body accepted (MiB)")
    p.set_defaults(run=serve_cmd)

    site = sub.add_parser("site", help="a site's store, tokens, a door's sync, benchmarks")
    actions = site.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = actions.add_parser("migrate", help="create or upgrade the central store's schema")
    dsn_option(p)
    p.set_defaults(run=migrate_cmd)

    token = actions.add_parser("token", help="API tokens (only their SHA-256 is stored)")
    verbs = token.add_subparsers(dest="verb", metavar="VERB", required=True)
    p = verbs.add_parser("create", help="a new token, printed once")
    p.add_argument("name", help="who holds it (a door, a desk)")
    p.add_argument("--scope", choices=("admin", "device", "kiosk"), required=True,
                   help="admin: enrol, remove, list; device: match, pull, events; kiosk: a device that also enrols")  # fmt: skip
    dsn_option(p)
    p.set_defaults(run=token_create)
    p = verbs.add_parser("list", help="tokens by name, scope and state")
    dsn_option(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=token_list)
    p = verbs.add_parser("revoke", help="revoke a token now")
    p.add_argument("name")
    dsn_option(p)
    p.set_defaults(run=token_revoke)

    p = actions.add_parser("sync", help="bring this door's gallery up to date with the site (and send its enrolments)")
    p.add_argument("--url", required=True, help="the site's base URL (https://...)")
    p.add_argument("--gallery", help="gallery file (default $FACESDK_HOME/gallery.sqlite)")
    model_option(p, "the door's ONNX model (default: the cached default model); the site's must be the same")
    p.add_argument("--cafile", help="CA bundle for a site certificate from a private CA")
    p.add_argument("--follow", action="store_true", help="keep syncing (long polls; retries while offline) until Ctrl-C")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=sync_cmd)

    p = actions.add_parser("enroll", help="a kiosk: enrol here (matched at once, offline too) and send it to the site")
    p.add_argument("name")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--url", required=True, help="the site's base URL (https://...)")
    p.add_argument("--gallery", help="gallery file (default $FACESDK_HOME/gallery.sqlite)")
    model_option(p, "the kiosk's ONNX model (default: the cached default model)")
    p.add_argument("--largest", action="store_true", help="an image of several faces: enrol its largest face")
    p.add_argument("--cafile", help="CA bundle for a site certificate from a private CA")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=kiosk_enroll)

    bench = actions.add_parser("bench", help="the site's benchmarks (a throwaway PostgreSQL unless --dsn)")
    kinds = bench.add_subparsers(dest="kind", metavar="KIND", required=True)
    p = kinds.add_parser("identify", help="HTTP identify with concurrent clients: p50/p99, throughput")
    p.add_argument("--size", type=positive, default=10_000, help="identities in the gallery")
    p.add_argument("--clients", type=positive, default=4)
    p.add_argument("--seconds", type=float, default=10.0)
    bench_options(p, identify_bench)
    p = kinds.add_parser("lag", help="enrolment at the centre -> first match at a door")
    p.add_argument("--rounds", type=positive, default=50)
    p.add_argument("--size", type=positive, default=1000)
    bench_options(p, lag_bench)
    p = kinds.add_parser("scale", help="bulk load N identities, size on disk, a new door's sync")
    p.add_argument("--size", type=positive, default=1_000_000)
    bench_options(p, scale_bench)


def dsn_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dsn", default=os.environ.get("FACESDK_SITE_DSN"),
                   help="PostgreSQL connection string (default $FACESDK_SITE_DSN)")  # fmt: skip


def bench_options(p: argparse.ArgumentParser, run) -> None:
    model_option(p)
    p.add_argument("--dsn", help="an existing (empty, scratch) PostgreSQL instead of a throwaway one")
    p.add_argument("--json-out", type=Path, help="also write the figures here")
    p.set_defaults(run=run)


def _store(args):
    if not args.dsn:
        raise UsageError("name the central store: --dsn or $FACESDK_SITE_DSN")
    from site_server.store import CentreStore

    return CentreStore(args.dsn)


def serve_cmd(args) -> int:
    if not args.dsn:
        raise UsageError("name the central store: --dsn or $FACESDK_SITE_DSN")
    import uvicorn

    from site_server.serving import build

    store, app = build(args.dsn, args.model, threads=args.threads, max_body_bytes=int(args.max_body_mb * 1024 * 1024))
    print(f"facesdk site: serving on http://{args.host}:{args.port} (OpenAPI at /openapi.json); put TLS in front of it",
          file=sys.stderr)  # fmt: skip
    # proxy_headers: the client address the reverse proxy saw, trusted from the proxy on loopback only.
    uvicorn.run(app, host=args.host, port=args.port, proxy_headers=True, forwarded_allow_ips="127.0.0.1", log_level="info")
    store.close()
    return 0


def migrate_cmd(args) -> int:
    with _store(args) as store:
        applied = store.migrate()
    print("\n".join(f"applied {name}" for name in applied) or "the schema is up to date")
    return 0


def token_create(args) -> int:
    with _store(args) as store:
        store.migrate()
        secret = store.create_token(args.name, args.scope)
    print(f"token {args.name!r} (scope {args.scope}); shown once, only its SHA-256 is kept:", file=sys.stderr)
    print(secret)
    return 0


def token_list(args) -> int:
    with _store(args) as store:
        tokens = store.tokens()
    emit(args, tokens, [f"{t['name']:<24} {t['scope']:<7} created {t['created']}" + (f"  REVOKED {t['revoked']}" if t["revoked"] else "")
                        for t in tokens] or ["no tokens"])  # fmt: skip
    return 0


def token_revoke(args) -> int:
    with _store(args) as store:
        if not store.revoke_token(args.name):
            raise UsageError(f"no live token named {args.name!r}")
    print(f"revoked {args.name!r}")
    return 0


def sync_cmd(args) -> int:
    import time

    from sdk.replica import LONG_POLL_S

    v, replica = _door(args)
    with v:
        if args.follow:
            replica.start()
            print(f"syncing {v.info()['gallery']} with {args.url} until Ctrl-C", file=sys.stderr)
            try:
                while True:  # Ctrl-C ends it (facesdk exits 130); every applied page is committed
                    time.sleep(3600)
            finally:
                replica.stop(LONG_POLL_S + 5)
        else:
            applied = replica.sync()
            result = {"applied": applied, "version": replica.version, "pending": replica.pending(),
                      "identities": v.gallery.identity_count()}  # fmt: skip
            emit(args, result, [f"applied {applied} change(s); at version {result['version']}; "
                                f"{result['identities']} identities; {result['pending']} enrolment(s) waiting to be sent"])  # fmt: skip
    return 0


def _door(args):
    from sdk import Verifier
    from sdk.replica import HttpCentre, Replica

    token = os.environ.get("FACESDK_SITE_TOKEN")
    if not token:
        raise UsageError("set $FACESDK_SITE_TOKEN to this door's token (never on the command line: ps would show it)")
    v = Verifier(args.model, gallery=args.gallery or "default")
    return v, Replica(v.gallery, HttpCentre(args.url, token, cafile=args.cafile), device="cli")


def kiosk_enroll(args) -> int:
    """The Verifier's enrolment checks against this door's copy of the site, then the faces are
    stored here and queued for the centre; sent now when it answers, else by a later sync."""
    import numpy as np

    from sdk.errors import CentreUnavailableError

    v, replica = _door(args)
    with v:
        try:  # the checks see the site as fresh as it can be
            replica.sync()
        except CentreUnavailableError:
            pass
        results, rows = v.enrolment(args.name, args.images, largest=args.largest)
        refused = [r for r in results if r.status == "refused"]
        if refused:
            raise refused[0].error
        if rows:
            sigma = None if rows[0][2] is None else np.stack([s for _, _, s in rows])
            replica.enrol(args.name, np.stack([mu for _, mu, _ in rows]), sigma_sq=sigma)
        try:
            replica.sync()
            sent = True
        except CentreUnavailableError:
            sent = False
        result = {"identity": args.name, "faces": len(rows), "sent": sent, "pending": replica.pending()}
        emit(args, result, [f"enrolled {len(rows)} face(s) of {args.name!r} here; "
                            + ("sent to the site" if sent else f"the site is unreachable: {result['pending']} waiting for the next sync")])  # fmt: skip
    return 0


def _bench_out(args, result: dict) -> int:
    print(json.dumps(result, indent=2))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(result, indent=2))
    return 0


def identify_bench(args) -> int:
    from site_server import bench

    return _bench_out(args, bench.identify(args.model, size=args.size, clients=args.clients, seconds=args.seconds, dsn=args.dsn))


def lag_bench(args) -> int:
    from site_server import bench

    return _bench_out(args, bench.lag(args.model, rounds=args.rounds, size=args.size, dsn=args.dsn))


def scale_bench(args) -> int:
    from site_server import bench

    return _bench_out(args, bench.scale(args.model, size=args.size, dsn=args.dsn, progress=lambda m: print(m, file=sys.stderr)))
