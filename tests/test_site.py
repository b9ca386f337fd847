"""A site with a real PostgreSQL: the central store, the HTTP API and two door replicas.

One throwaway PostgreSQL (site_server.pgtemp: its own data directory, a Unix socket only) and one
API server per module; each test uses its own identity names. Faces are real: embeddings of LFW
images computed once by sdk.Verifier with the default model."""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("psycopg", reason="the site needs psycopg 3: pip install -e '.[server]'")
pytest.importorskip("fastapi", reason="the site's API needs FastAPI: pip install -e '.[server]'")

from sdk.errors import CentreUnavailableError, ChangeRefusedError, InvalidArgumentError, ModelMismatchError  # noqa: E402
from sdk.gallery import Gallery  # noqa: E402
from sdk.replica import HttpCentre, Replica, gallery_digest  # noqa: E402
from site_server.pgtemp import TempPostgres, find_bindir  # noqa: E402
from site_server.serving import ServerThread, build  # noqa: E402

PEOPLE = ["Tony_Blair", "George_W_Bush", "Colin_Powell", "Donald_Rumsfeld", "Gerhard_Schroeder", "Ariel_Sharon",
          "Hugo_Chavez", "Junichiro_Koizumi", "Jean_Chretien", "John_Ashcroft", "Jacques_Chirac", "Serena_Williams"]  # fmt: skip
LIMIT = 64 * 1024  # the test server's body limit (the default is 8 MiB)


@pytest.fixture(scope="session")
def postgres():
    if find_bindir() is None:
        pytest.skip("PostgreSQL (initdb, pg_ctl) not found: apt-get install postgresql-15")
    pg = TempPostgres().start()
    yield pg
    pg.cleanup()


@pytest.fixture(scope="session")
def faces(default_onnx: Path, data: Path) -> dict[str, np.ndarray]:
    """Two real embeddings per person (images 1 and 2 of each), by the default model."""
    from sdk import Verifier

    lfw = data / "lfw" / "images_deepfunneled"
    with Verifier(default_onnx, gallery=None) as v:
        return {p: np.stack([v.embed_largest(lfw / p / f"{p}_{i:04d}.jpg") for i in (1, 2)]) for p in PEOPLE}


class Site:
    def __init__(self, pg: TempPostgres, model: Path) -> None:
        self.pg = pg
        self.store, self.app = build(pg.dsn, model, threads=1, max_body_bytes=LIMIT)
        self.server = ServerThread(self.app)
        self.url = self.server.start()
        self.admin = self.store.create_token("desk", "admin")
        self.device = self.store.create_token("door", "device")
        self.kiosk = self.store.create_token("entrance", "kiosk")
        self.gallery = self.app.state.replica.gallery
        self.edges: list[Replica] = []

    def call(self, method: str, path: str, body: object = None, token: str | None = "admin", raw: bytes | None = None,
             headers: dict | None = None) -> tuple[int, dict]:  # fmt: skip
        token = getattr(self, token) if token in ("admin", "device", "kiosk") else token
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        h = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})}
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def enrol(self, name: str, vectors: np.ndarray) -> int:
        status, body = self.call("POST", f"/v1/identities/{name}/faces", {
            "embeddings": vectors.tolist(), "model": self.model, "precision": self.gallery.network[0],
            "network_sha256": self.gallery.network[1]})  # fmt: skip
        assert status == 200, body
        return body["version"]

    @property
    def model(self) -> dict:
        g = self.gallery
        return {"name": g.model_name, "version": g.model_version, "dim": g.dim}

    def edge(self, token: str, tmp: Path, name: str, start: bool = True) -> Replica:
        g = self.gallery
        gallery = Gallery(tmp / f"{name}.sqlite", model_name=g.model_name, model_version=g.model_version, dim=g.dim,
                          network=g.network)  # fmt: skip
        replica = Replica(gallery, HttpCentre(self.url, token, timeout_s=5), device=name, poll_s=0.1, max_backoff_s=0.5,
                          wait_s=2)  # fmt: skip
        self.edges.append(replica)
        return replica.start() if start else replica

    def stop_edges(self) -> None:
        for e in self.edges:
            e._stop.set()  # all at once: each may be in a long poll
        for e in self.edges:
            e.stop(10)
            e.gallery.close()
        self.edges.clear()

    def close(self) -> None:
        self.stop_edges()
        self.server.stop()
        self.store.close()


@pytest.fixture(scope="module")
def site(postgres: TempPostgres, default_onnx: Path):
    s = Site(postgres, default_onnx)
    yield s
    s.close()


@pytest.fixture(autouse=True)
def _stop_edges(request):
    yield
    if "site" in request.fixturenames:
        request.getfixturevalue("site").stop_edges()


def until(condition, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(0.05)


def nearest(gallery: Gallery, vector: np.ndarray) -> str | None:
    names, _ = gallery.search(vector[None], k=1)
    return names[0][0]


# ------------------------------------------------------------------ the gallery's hook (no PostgreSQL)


def test_gallery_apply_is_one_transaction(tmp_path: Path, faces) -> None:
    g = Gallery(tmp_path / "g.sqlite", model_name="m", model_version="1", dim=128)
    a, b = faces["Tony_Blair"], faces["Colin_Powell"]
    g.apply([("add", "a", a, None, None), ("add", "b", b, None, None), ("remove", "a")], {"replica_version": "3"})
    assert g.identities() == ["b"] and g.meta()["replica_version"] == "3"
    assert nearest(g, a[1]) == "b" and nearest(g, b[0]) == "b"  # the snapshot followed
    with pytest.raises(InvalidArgumentError):  # a bad row: nothing of the batch is written
        g.apply([("remove", "b"), ("add", "c", np.full((1, 128), np.nan), None, None)], {"replica_version": "4"})
    assert g.identities() == ["b"] and g.meta()["replica_version"] == "3"
    g.close()


# ------------------------------------------------------------------------------- the store


def test_migrations_are_versioned_and_applied_once(site: Site) -> None:
    assert site.store.migrate() == []
    with site.store.connection() as conn:
        rows = conn.execute("SELECT version, name FROM schema_version ORDER BY version").fetchall()
    assert rows == [(1, "0001_initial.sql")]


def test_concurrent_enrolments_lose_nothing_and_pulls_see_versions_in_order(site: Site, faces, tmp_path: Path) -> None:
    """Writers commit in any order; a replica pulling all the while must still get every face:
    each page it gets starts right after the version it had (no hole that a later commit fills)."""
    writers, each = 8, 6
    edge = site.edge(site.device, tmp_path, "puller", start=False)
    pages: list[list[int]] = []
    centre = edge.centre
    real_pull = centre.pull

    def recording_pull(since: int, wait_s: float = 0.0):
        page = real_pull(since, wait_s)
        pages.append([since] + [c["version"] for c in page["changes"]])
        return page

    centre.pull = recording_pull
    stop = threading.Event()

    def pull_all_the_while() -> None:
        while not stop.is_set():
            edge.pull()

    # Random unit vectors (far from every real face, so later tests' matches are not disturbed).
    vectors = np.random.default_rng(0).normal(size=(writers * each, 128))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    names = [f"concurrent_{w}_{i}" for w in range(writers) for i in range(each)]
    errors: list[BaseException] = []

    def write(w: int) -> None:
        try:
            for i in range(each):
                site.store.enrol(names[w * each + i], vectors[w * each + i][None], network=site.gallery.network,
                                 origin="test")  # fmt: skip
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    puller = threading.Thread(target=pull_all_the_while)
    puller.start()
    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    puller.join()
    assert not errors
    edge.pull()
    held = set(edge.gallery.identities())
    assert set(names) <= held, f"lost: {sorted(set(names) - held)}"
    assert set(names) <= {r["identity"] for r in site.store.identities()}
    for since, *versions in pages:
        assert versions == list(range(since + 1, since + 1 + len(versions))), f"a page after {since} had {versions}"
    assert sum(len(p) > 1 for p in pages) > 1, "the puller should have seen the enrolments arrive in several pages"


def test_concurrent_enrolments_through_the_api_reach_both_doors(site: Site, tmp_path: Path) -> None:
    doors = [site.edge(site.device, tmp_path, "api_d1"), site.edge(site.device, tmp_path, "api_d2")]
    vectors = np.random.default_rng(1).normal(size=(16, 128))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    statuses: list[int] = []

    def enrol(i: int) -> None:
        statuses.append(site.call("POST", f"/v1/identities/api_{i}/faces", {
            "embeddings": [vectors[i].tolist()], "model": site.model, "precision": site.gallery.network[0],
            "network_sha256": site.gallery.network[1]})[0])  # fmt: skip

    threads = [threading.Thread(target=enrol, args=(i,)) for i in range(len(vectors))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * len(vectors)
    until(lambda: len({site.store.digest(), *(gallery_digest(d.gallery) for d in doors)}) == 1, what="both doors to converge")
    for d in doors:
        assert {f"api_{i}" for i in range(len(vectors))} <= set(d.gallery.identities())
        assert nearest(d.gallery, vectors[5]) == "api_5"


# ------------------------------------------------------------------------- the replicas


def test_outage_edges_keep_matching_and_enrolling_then_converge(site: Site, faces, tmp_path: Path) -> None:
    blair, bush, powell = faces["Tony_Blair"], faces["George_W_Bush"], faces["Colin_Powell"]
    site.enrol("outage_blair", blair[:1])
    site.enrol("outage_bush", bush[:1])
    door = site.edge(site.device, tmp_path, "door")
    kiosk = site.edge(site.kiosk, tmp_path, "kiosk")
    until(lambda: {"outage_blair", "outage_bush"} <= set(door.gallery.identities()) & set(kiosk.gallery.identities()),
          what="both edges to pull the enrolments")  # fmt: skip

    site.pg.stop()
    try:
        status, body = site.call("GET", "/v1/health", token=None)
        assert status == 200 and body["status"] == "degraded" and body["database"] is False
        status, body = site.call("POST", "/v1/identify", {"embedding": blair[1].tolist()}, "device")
        assert status == 503 and "unreachable" in body["error"]
        # Both doors match from their own copy (image 2 of each person: never enrolled).
        assert nearest(door.gallery, blair[1]) == "outage_blair" and nearest(kiosk.gallery, bush[1]) == "outage_bush"
        # The kiosk enrols a visitor: it matches at once, here, and waits to be sent.
        kiosk.enrol("outage_visitor", powell[:1])
        assert nearest(kiosk.gallery, powell[1]) == "outage_visitor"
        with pytest.raises(CentreUnavailableError):
            kiosk.sync()
        assert kiosk.pending() == 1 and not kiosk.online
    finally:
        site.pg.start()
    until(lambda: kiosk.pending() == 0, what="the kiosk to push its enrolment")
    digests = lambda: {site.store.digest(), gallery_digest(site.gallery), gallery_digest(door.gallery),  # noqa: E731
                       gallery_digest(kiosk.gallery)}  # fmt: skip
    until(lambda: len(digests()) == 1, what="the centre and both edges to converge")
    assert nearest(door.gallery, powell[1]) == "outage_visitor"  # the kiosk's enrolment reached the other door
    assert door.version == kiosk.version == site.store.head()


def test_a_removal_reaches_every_replica(site: Site, faces, tmp_path: Path) -> None:
    chavez = faces["Hugo_Chavez"]
    site.enrol("removed_chavez", chavez)
    edges = [site.edge(site.device, tmp_path, "d1"), site.edge(site.kiosk, tmp_path, "d2")]
    until(lambda: all("removed_chavez" in e.gallery.identities() for e in edges), what="the enrolment everywhere")
    status, body = site.call("DELETE", "/v1/identities/removed_chavez")
    assert status == 200 and body["removed"]
    until(lambda: all("removed_chavez" not in e.gallery.identities() for e in edges), what="the removal everywhere")
    assert "removed_chavez" not in site.gallery.identities()
    for e in edges:
        assert nearest(e.gallery, chavez[0]) != "removed_chavez"
    # The tombstone: no face, no add entry left; the log keeps only that the name was removed.
    with site.store.connection() as conn:
        log = conn.execute("SELECT op FROM changes WHERE identity = 'removed_chavez'").fetchall()
        faces_left = conn.execute("SELECT count(*) FROM faces f JOIN identities i ON i.id = f.identity_id "
                                  "WHERE i.name = 'removed_chavez'").fetchone()[0]  # fmt: skip
    assert log == [("remove",)] and faces_left == 0
    assert len({site.store.digest(), *(gallery_digest(e.gallery) for e in edges)}) == 1
    assert site.call("DELETE", "/v1/identities/removed_chavez")[0] == 404


def test_a_removal_wins_over_an_older_offline_add(site: Site, faces, tmp_path: Path) -> None:
    koizumi, chretien = faces["Junichiro_Koizumi"], faces["Jean_Chretien"]
    site.enrol("conflict_koizumi", koizumi[:1])
    kiosk = site.edge(site.kiosk, tmp_path, "conflict_kiosk", start=False)
    kiosk.sync()
    # Offline, the kiosk adds a face to the person; meanwhile the desk removes them.
    kiosk.enrol("conflict_koizumi", koizumi[1:])
    site.call("DELETE", "/v1/identities/conflict_koizumi")
    kiosk.sync()  # the push is refused (the removal is newer than the kiosk's version); the removal arrives
    assert "conflict_koizumi" not in kiosk.gallery.identities() and kiosk.pending() == 0
    assert "conflict_koizumi" not in [r["identity"] for r in site.store.identities()]
    # An add made after the kiosk saw the removal is a new enrolment: accepted, in the centre's order.
    kiosk.enrol("conflict_koizumi", chretien[:1])
    kiosk.sync()
    assert "conflict_koizumi" in [r["identity"] for r in site.store.identities()]
    assert gallery_digest(kiosk.gallery) == site.store.digest()


def test_changes_for_another_model_are_refused(site: Site, faces, tmp_path: Path) -> None:
    g = site.gallery
    centre = HttpCentre(site.url, site.kiosk)
    face = {"uid": "6f1c2a8e-9a57-4c54-9d0c-0c7a3f0b8a11", "vector": faces["Ariel_Sharon"][0].astype("<f4").tobytes()}
    push = {"identity": "other_model", "based_on": 0, "model": site.model, "precision": g.network[0],
            "network_sha256": g.network[1], "faces": [face]}  # fmt: skip
    with pytest.raises(ChangeRefusedError, match="model"):
        centre.push({**push, "model": {**site.model, "version": "2"}})
    with pytest.raises(ChangeRefusedError, match="network"):
        centre.push({**push, "network_sha256": "0" * 64})
    assert "other_model" not in [r["identity"] for r in site.store.identities()]
    # A door whose gallery holds another model applies nothing of the site's.
    other = Gallery(tmp_path / "other.sqlite", model_name=g.model_name, model_version="other", dim=g.dim, network=g.network)
    with pytest.raises(ModelMismatchError):
        Replica(other, HttpCentre(site.url, site.device)).sync()
    assert other.identities() == [] and other.meta().get("replica_version") is None
    other.close()


# ------------------------------------------------------------------------------- the API


def test_enrol_identify_and_verify_real_images_over_http(site: Site, faces, data: Path) -> None:
    lfw = data / "lfw" / "images_deepfunneled" / "Serena_Williams"
    first = base64.b64encode((lfw / "Serena_Williams_0001.jpg").read_bytes()).decode()
    status, body = site.call("POST", "/v1/identities/http_serena/faces", {"images": [first], "largest": True})
    assert status == 200 and body["faces"] == 1, body
    # The Verifier's enrolment checks run against the whole site: the same face under another name is refused.
    status, body = site.call("POST", "/v1/identities/http_not_serena/faces", {"images": [first], "largest": True})
    assert status == 422 and "http_serena" in body["error"] and body["images"][0]["other"] == "http_serena", body
    assert "http_not_serena" not in [r["identity"] for r in site.store.identities()]
    b64 = base64.b64encode((lfw / "Serena_Williams_0002.jpg").read_bytes()).decode()
    status, body = site.call("POST", "/v1/identify", {"image": b64, "k": 3}, "device")
    assert status == 200 and body["identity"] == "http_serena" and body["accepted"], body
    status, body = site.call("POST", "/v1/verify", {"identity": "http_serena", "embedding": faces["Serena_Williams"][1].tolist()}, "device")
    assert status == 200 and body["same"], body
    status, body = site.call("POST", "/v1/verify", {"identity": "http_serena", "embedding": faces["John_Ashcroft"][0].tolist()}, "device")
    assert status == 200 and not body["same"], body


def test_every_auth_failure_gets_its_status(site: Site, faces) -> None:
    vector = faces["Jacques_Chirac"][0].tolist()
    identify = ("POST", "/v1/identify", {"embedding": vector})
    cases = [
        (401, "missing bearer token", *identify, None),
        (401, "invalid or revoked token", *identify, "fsk_" + "x" * 43),
        (403, "needs admin", "POST", "/v1/identities/auth_x/faces", {"embeddings": [vector]}, "device"),
        (403, "needs admin", "DELETE", "/v1/identities/auth_x", None, "kiosk"),
        (403, "needs admin", "GET", "/v1/identities", None, "device"),
        (403, "needs kiosk or admin", "POST", "/v1/enrolments", {}, "device"),
        (403, "needs device or kiosk", "POST", "/v1/events", {"events": []}, "admin"),
        (401, "missing bearer token", "GET", "/v1/changes?since=0", None, None),
    ]
    for status, message, method, path, body, token in cases:
        got, answer = site.call(method, path, body, token)
        assert (got, message in answer.get("error", "")) == (status, True), (method, path, token, got, answer)
    revoked = site.store.create_token("revoked_door", "device")
    assert site.call(*identify, revoked)[0] == 200
    site.store.revoke_token("revoked_door")
    assert site.call(*identify, revoked)[0] == 401
    # 413: over the body limit, told by Content-Length and by a chunked body alike
    huge = json.dumps({"image": "A" * LIMIT}).encode()
    got, answer = site.call("POST", "/v1/identify", raw=huge, token="device")
    assert got == 413 and "over" in answer["error"]
    chunks = iter([huge[i : i + 8192] for i in range(0, len(huge), 8192)])
    got, answer = site.call("POST", "/v1/identify", raw=chunks, token="device", headers={"Transfer-Encoding": "chunked"})
    assert got == 413, answer
    small = json.dumps({"embedding": vector}).encode()  # a chunked body under the limit goes through
    got, answer = site.call("POST", "/v1/identify", raw=iter([small[:100], small[100:]]), token="device",
                            headers={"Transfer-Encoding": "chunked"})  # fmt: skip
    assert got == 200, answer
    # 422: a body that says what is wrong
    for body, message in [
        ({"embedding": vector, "extra": 1}, "extra"),
        ({"embedding": vector[:5]}, "128 finite numbers"),
        ({}, "an image or an embedding"),
        ({"image": "not base64!"}, "base64"),
        ({"image": base64.b64encode(b"GIF89a not a face").decode()}, "image"),
        ({"embedding": vector, "k": 0}, "k"),
    ]:
        got, answer = site.call("POST", "/v1/identify", body, "device")
        assert got == 422 and message in answer["error"].lower() + answer["error"], (body, answer)
    got, answer = site.call("POST", "/v1/identities/auth_x/faces", raw=b"{not json", token="admin")
    assert got == 422 and "error" in answer


def test_the_openapi_schema_lists_every_route(site: Site) -> None:
    status, schema = site.call("GET", "/openapi.json", token=None)
    assert status == 200
    assert {"/v1/health", "/v1/identities", "/v1/identities/{identity}/faces", "/v1/identities/{identity}", "/v1/identify",
            "/v1/verify", "/v1/changes", "/v1/enrolments", "/v1/events"} <= set(schema["paths"])  # fmt: skip


def test_events_are_recorded(site: Site) -> None:
    status, body = site.call("POST", "/v1/events", {"events": [{"at": "2026-01-01T08:00:00Z", "kind": "door_opened",
                                                                "identity": "x", "detail": {"door": 3}}]}, "device")  # fmt: skip
    assert status == 200 and body == {"recorded": 1}
    with site.store.connection() as conn:
        assert conn.execute("SELECT device, kind FROM events WHERE kind = 'door_opened'").fetchall() == [("door", "door_opened")]


def test_a_replica_must_know_its_network(tmp_path: Path) -> None:
    """A replica needs to know its network, or it could not refuse another model's changes."""
    g = Gallery(tmp_path / "g.sqlite", model_name="m", model_version="1", dim=4)
    with pytest.raises(InvalidArgumentError, match="network"):
        Replica(g, HttpCentre("http://127.0.0.1:9", "t"))
    g.close()


# ------------------------------------------------------------------------------- the CLI


def test_cli_tokens_a_door_sync_and_a_kiosk(site: Site, faces, default_onnx: Path, data: Path, tmp_path: Path, capsys,
                                            monkeypatch) -> None:  # fmt: skip
    from cli.main import main

    dsn = ["--dsn", site.pg.dsn]
    assert main(["site", "migrate", *dsn]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["site", "token", "create", "cli_door", "--scope", "device", *dsn]) == 0
    secret = capsys.readouterr().out.strip()
    assert secret.startswith("fsk_") and site.store.check_token(secret).scope == "device"
    assert main(["site", "token", "list", "--json", *dsn]) == 0
    listed = {t["name"]: t for t in json.loads(capsys.readouterr().out)}
    assert listed["cli_door"]["scope"] == "device" and secret not in json.dumps(listed)
    site.enrol("cli_ashcroft", faces["John_Ashcroft"][:1])
    monkeypatch.setenv("FACESDK_SITE_TOKEN", secret)
    door = ["site", "sync", "--url", site.url, "--gallery", str(tmp_path / "door.sqlite"), "--model", str(default_onnx), "--json"]
    assert main(door) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["version"] == site.store.head() and result["pending"] == 0
    with Gallery(tmp_path / "door.sqlite", model_name=site.gallery.model_name, model_version=site.gallery.model_version,
                 dim=site.gallery.dim) as g:  # fmt: skip
        assert nearest(g, faces["John_Ashcroft"][1]) == "cli_ashcroft"
        assert gallery_digest(g) == site.store.digest()
    # A kiosk at the entrance enrols from an image: stored there, sent to the centre, pulled by the door.
    lfw = data / "lfw" / "images_deepfunneled" / "Jacques_Chirac"
    kiosk_gallery = str(tmp_path / "kiosk.sqlite")
    monkeypatch.setenv("FACESDK_SITE_TOKEN", site.kiosk)
    kiosk = ["site", "enroll", "cli_chirac", str(lfw / "Jacques_Chirac_0001.jpg"), "--largest", "--url", site.url,
             "--gallery", kiosk_gallery, "--model", str(default_onnx), "--json"]  # fmt: skip
    assert main(kiosk) == 0
    assert json.loads(capsys.readouterr().out) == {"identity": "cli_chirac", "faces": 1, "sent": True, "pending": 0}
    monkeypatch.setenv("FACESDK_SITE_TOKEN", secret)
    assert main(door) == 0
    capsys.readouterr()
    with Gallery(tmp_path / "door.sqlite", model_name=site.gallery.model_name, model_version=site.gallery.model_version,
                 dim=site.gallery.dim) as g:  # fmt: skip
        assert nearest(g, faces["Jacques_Chirac"][1]) == "cli_chirac"
    assert main(["site", "token", "revoke", "cli_door", *dsn]) == 0
    capsys.readouterr()
    assert main(door) == 1  # a revoked token: refused, said on one line
    assert "401" in capsys.readouterr().err


def test_the_benchmark_commands_run(postgres: TempPostgres, default_onnx: Path, capsys) -> None:
    """The benchmarks are commands (figures in README); this only keeps two of them working, at toy
    sizes (identify's client processes would cost more than the rest of this file)."""
    import psycopg

    from cli.main import main

    for kind, options in [("lag", ["--rounds", "2", "--size", "10"]), ("scale", ["--size", "300"])]:
        with psycopg.connect(postgres.dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE bench_{kind}")
        dsn = postgres.dsn.replace("dbname=postgres", f"dbname=bench_{kind}")
        assert main(["site", "bench", kind, *options, "--model", str(default_onnx), "--dsn", dsn]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["benchmark"] == kind
    assert result["door_faces"] == 300 and result["bulk_load_s"] > 0
