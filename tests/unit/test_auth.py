"""Write keys: the ingest endpoints' guard (memory profile through the HTTP API), the key
check against a store another process writes (SQLite, embedded), and `wotr keys`.

Every refused request asserts the status, the JSON error shape, the challenge, and that
nothing was written anywhere.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time

import pytest
from litestar.testing import TestClient

from wotr_adapters.sqlite_keys import SqliteKeyStore
from wotr_apps.api.auth import WriteKeys, presented_key
from wotr_apps.api.errors import Unauthorized
from wotr_apps.container import build_container
from wotr_apps.keys_cli import create_key
from wotr_apps.keys_cli import main as keys_main
from wotr_apps.settings import Settings
from wotr_domain.codec import decode_event

KEYS_ON = {"WOTR_PROFILE": "memory", "WOTR_REQUIRE_WRITE_KEY": "true", "WOTR_WRITE_KEY_CACHE_SECONDS": "0.2"}


@pytest.fixture
def container():
    return build_container(Settings.from_env(KEYS_ON), with_workers=False)


@pytest.fixture
def client(container):
    with TestClient(container.app()) as c:
        yield c


def nothing_written(container) -> bool:
    return (
        list(container.object_store().list()) == []
        and container.metadata_repo().count() == 0
        and container.event_bus().messages() == []
    )


def basic(user: str, password: str = "") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def forms(key: str) -> dict[str, dict[str, str]]:
    """The ways SDKs send a key."""
    return {
        "basic": {"Authorization": basic(key)},  # Segment, RudderStack: key as user name, empty password
        "basic-password": {"Authorization": basic("", key)},
        "bearer": {"Authorization": f"Bearer {key}"},
        "x-write-key": {"X-Write-Key": key},
        "both-agreeing": {"X-Write-Key": key, "Authorization": f"Bearer {key}"},
    }


def assert_unauthorized(r, container, detail: str) -> None:
    assert r.status_code == 401, r.text
    body = r.json()
    assert body["status_code"] == 401 and body["error"] == "unauthorized"
    assert detail in body["detail"]
    assert r.headers["www-authenticate"] == 'Basic realm="wotr", Bearer realm="wotr"'
    assert nothing_written(container)


# -- off by default ------------------------------------------------------------------------


def test_keys_are_off_by_default_so_the_readme_curl_works():
    settings = Settings.from_env({"WOTR_PROFILE": "memory"})
    assert settings.require_write_key is False
    container = build_container(settings, with_workers=False)
    with TestClient(container.app()) as client:
        assert client.post("/ingest", json={"payload": {"example": "hello"}}).status_code == 202
        assert client.post("/ingest/batch", json=[{"payload": {}}]).status_code == 202
        assert "key_store" not in client.get("/ready").json()["checks"]


# -- accepted ---------------------------------------------------------------------------------


@pytest.mark.parametrize("form", sorted(forms("k")))
def test_each_way_sdks_send_a_key_is_accepted_on_both_endpoints(client, container, form):
    _, key = create_key(container.key_store(), "web")
    headers = forms(key)[form]
    r = client.post("/ingest", json={"payload": {"n": 1}}, headers=headers)
    assert r.status_code == 202, r.text
    r = client.post("/ingest/batch", json=[{"payload": {"n": 2}}, {"payload": {"n": 3}}], headers=headers)
    assert r.status_code == 202 and r.json()["accepted"] == 2
    assert container.metadata_repo().count() == 3


def test_the_read_endpoints_need_no_key(client, container):
    _, key = create_key(container.key_store(), "web")
    event_id = client.post("/ingest", json={"payload": {}}, headers={"X-Write-Key": key}).json()["id"]
    assert client.get(f"/events/{event_id}").status_code == 200
    assert client.get("/health").status_code == 200
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["checks"]["key_store"] == "ok"


# -- refused ----------------------------------------------------------------------------------


def _bad_credentials(key: str) -> dict[str, tuple[dict[str, str], str]]:
    other = key[:-1] + ("A" if key[-1] != "A" else "B")  # the right id, a wrong secret
    return {
        "none": ({}, "a write key is required"),
        "wrong secret": ({"X-Write-Key": other}, "unknown write key"),
        "unknown id": ({"X-Write-Key": "wk_0123456789abcdef_" + key[20:]}, "unknown write key"),
        "not a key": ({"Authorization": "Bearer hunter2"}, "not a wotr write key"),
        "empty basic": ({"Authorization": basic("")}, "carry no write key"),
        "bad base64": ({"Authorization": "Basic !!!"}, "not base64"),
        "other scheme": ({"Authorization": f"Digest {key}"}, "'digest' is not accepted"),
        "two keys": ({"X-Write-Key": key, "Authorization": f"Bearer {other}"}, "two different write keys"),
    }


@pytest.mark.parametrize("case", sorted(_bad_credentials("wk_0123456789abcdef_" + "x" * 43)))
@pytest.mark.parametrize("path", ["/ingest", "/ingest/batch"])
def test_a_request_without_a_valid_key_is_401_and_writes_nothing(client, container, case, path):
    _, key = create_key(container.key_store(), "web")
    headers, detail = _bad_credentials(key)[case]
    body = {"payload": {"n": 1}} if path == "/ingest" else [{"payload": {"n": 1}}]
    assert_unauthorized(client.post(path, json=body, headers=headers), container, detail)


def test_the_key_is_checked_before_the_body_is_read(client, container):
    r = client.post("/ingest", content=b"{not json", headers={"content-type": "text/plain"})
    assert_unauthorized(r, container, "a write key is required")  # not 415, not 400


def test_a_revoked_key_stops_working_within_the_cache_time_without_a_restart(client, container):
    store = container.key_store()
    record, key = create_key(store, "web")
    assert client.post("/ingest", json={"payload": {"n": 0}}, headers={"X-Write-Key": key}).status_code == 202
    store.revoke(record.id, record.created_at)
    revoked_after = time.monotonic()
    deadline = revoked_after + 5  # the cache holds a key 0.2 s here; 5 s bounds the test, not the API
    while True:
        r = client.post("/ingest", json={"payload": {"n": 1}}, headers={"X-Write-Key": key})
        if r.status_code == 401 or time.monotonic() > deadline:
            break
        assert r.status_code == 202
        time.sleep(0.02)
    assert r.status_code == 401 and r.json()["detail"] == f"write key {record.id} was revoked"


# -- the key's source stamps its events -------------------------------------------------------


def test_the_keys_source_wins_and_reaches_metadata_bus_and_analytics(client, container):
    _, key = create_key(container.key_store(), "shop", source="shop-backend")
    headers = {"Authorization": basic(key)}
    one = client.post("/ingest", json={"payload": {"n": 1}, "source": "spoofed"}, headers=headers).json()
    none = client.post("/ingest", json={"payload": {"n": 2}}, headers=headers).json()
    batch = client.post("/ingest/batch", json=[{"payload": {"n": 3}, "source": "other"}, {"payload": "bad"}],
                        headers=headers).json()
    ids = [one["id"], none["id"], batch["results"][0]["id"]]
    repo = container.metadata_repo()
    assert [repo.get(i).source for i in ids] == ["shop-backend"] * 3
    messages = {m.key: decode_event(m.value) for m in container.event_bus().messages()}
    assert [messages[i].source for i in ids] == ["shop-backend"] * 3
    container.analytics_loader().run_once(timeout=0.1)
    rows = {r.id: r for r in container.analytics_sink().latest(10)}
    assert [rows[i].source for i in ids] == ["shop-backend"] * 3
    # A key without a source leaves the client's.
    _, plain = create_key(container.key_store(), "plain")
    mine = client.post("/ingest", json={"payload": {}, "source": "mine"}, headers={"X-Write-Key": plain}).json()
    assert repo.get(mine["id"]).source == "mine"


def test_the_keys_source_stamps_tracking_api_events_too(client, container):
    _, key = create_key(container.key_store(), "web", source="web-app")
    headers = {"Authorization": basic(key)}
    track = client.post("/v1/track", json={"messageId": "m-1", "userId": "u", "event": "Signed Up"}, headers=headers)
    batch = client.post("/v1/batch", json={"batch": [{"type": "page", "messageId": "m-2", "userId": "u"}]},
                        headers=headers)
    assert track.status_code == 200 and batch.status_code == 200
    repo = container.metadata_repo()
    assert [repo.get(i).source for i in ("m-1", "m-2")] == ["web-app", "web-app"]


def test_a_retry_with_the_same_id_and_key_is_a_duplicate_not_a_conflict(client, container):
    _, key = create_key(container.key_store(), "shop", source="shop")
    first = client.post("/ingest", json={"id": "e-1", "payload": {}, "source": "x"}, headers={"X-Write-Key": key})
    again = client.post("/ingest", json={"id": "e-1", "payload": {}, "source": "x"}, headers={"X-Write-Key": key})
    assert (first.status_code, again.status_code) == (202, 200)


# -- the check itself ---------------------------------------------------------------------------


def test_presented_key_reads_every_form_and_refuses_conflicts():
    assert presented_key({}) is None
    assert presented_key({"authorization": basic("k1")}) == "k1"
    assert presented_key({"authorization": "bearer  k2 "}) == "k2"
    assert presented_key({"x-write-key": " k3 "}) == "k3"
    with pytest.raises(Unauthorized):
        presented_key({"x-write-key": "a", "authorization": "Bearer b"})


def test_a_key_revoked_by_another_process_is_refused_after_the_cache_time(tmp_path):
    """The embedded profile: the API's store and `wotr keys` open the same SQLite file."""
    api_store, cli_store = SqliteKeyStore(tmp_path / "keys.db"), SqliteKeyStore(tmp_path / "keys.db")
    api_store.start()
    cli_store.start()
    now = [0.0]
    keys = WriteKeys(api_store, ttl=2.0, clock=lambda: now[0])
    record, key = create_key(cli_store, "web")

    async def scenario():
        assert (await keys.authenticate(key)).id == record.id
        cli_store.revoke(record.id, record.created_at)
        now[0] = 1.9  # still cached: the API has not asked the store again
        assert (await keys.authenticate(key)).id == record.id
        now[0] = 2.0  # the cache time is over: asked again, refused
        with pytest.raises(Unauthorized, match="revoked"):
            await keys.authenticate(key)

    asyncio.run(scenario())
    api_store.close()
    cli_store.close()


def test_concurrent_requests_with_one_key_ask_the_store_once(tmp_path):
    class Counting(SqliteKeyStore):
        calls = 0

        def get(self, key_id):
            Counting.calls += 1
            time.sleep(0.05)
            return super().get(key_id)

    store = Counting(tmp_path / "keys.db")
    store.start()
    _, key = create_key(store, "web")
    keys = WriteKeys(store, ttl=60)

    async def scenario():
        return await asyncio.gather(*(keys.authenticate(key) for _ in range(20)))

    assert len(asyncio.run(scenario())) == 20
    assert Counting.calls == 1
    store.close()


# -- wotr keys ------------------------------------------------------------------------------------


def test_wotr_keys_creates_lists_and_revokes_on_the_embedded_profile(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WOTR_PROFILE", "embedded")
    monkeypatch.setenv("WOTR_DATA_DIR", str(tmp_path))
    assert keys_main(["create", "--name", "web", "--source", "web-app", "-q"]) == 0
    key = capsys.readouterr().out.strip()
    key_id = key[3:19]
    assert keys_main(["create", "--name", "ios"]) == 0
    out = capsys.readouterr().out
    assert "key id:" in out and "key:     wk_" in out
    assert keys_main(["list"]) == 0
    listing = capsys.readouterr().out
    assert key_id in listing and "web-app" in listing and "ios" in listing
    assert "wk_" not in listing  # ids only, never a key
    assert keys_main(["revoke", key_id]) == 0
    assert f"revoked {key_id}" in capsys.readouterr().out
    assert keys_main(["revoke", "0123456789abcdef"]) == 1
    # Stored hashed: the key is nowhere in the database files.
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("keys.db*"))
    assert key.encode() not in stored and key[20:].encode() not in stored
    store = SqliteKeyStore(tmp_path / "keys.db")
    store.start()
    (record,) = [k for k in store.list() if k.id == key_id]
    assert record.revoked and record.source == "web-app" and record.verifies(key)
    store.close()


def test_wotr_keys_refuses_the_memory_profile_and_bad_sources(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WOTR_PROFILE", "memory")
    assert keys_main(["list"]) == 2
    assert "memory keeps keys inside the API process" in capsys.readouterr().err
    monkeypatch.setenv("WOTR_PROFILE", "embedded")
    monkeypatch.setenv("WOTR_DATA_DIR", str(tmp_path))
    assert keys_main(["create", "--name", "x", "--source", "a\nb"]) == 1
    assert keys_main(["create", "--name", " "]) == 1


def test_wotr_keys_is_a_subcommand_of_wotr(tmp_path, monkeypatch, capsys):
    from wotr_apps.cli import main

    monkeypatch.setenv("WOTR_PROFILE", "embedded")
    monkeypatch.setenv("WOTR_DATA_DIR", str(tmp_path))
    assert main(["keys", "create", "--name", "cli", "-q"]) == 0
    assert json.dumps(capsys.readouterr().out.strip()).startswith('"wk_')
