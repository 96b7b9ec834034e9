"""Key management against the real service: `finetune keys list/revoke/create` with scopes and expiry, 401 for
revoked and expired keys, 403 naming the missing scope on every route, last_used_at written at most once a minute,
and failed authentication throttled per client address."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

import app.all_tables  # noqa: F401
from app.db import Database
from app.errors import TooManyRequests
from app.processes import ROOT, cli_command
from app.teams.service import hash_key
from app.teams.tables import ApiKey
from app.teams.throttle import FailedAuthThrottle
from tests.conftest import Service

PROBLEM = "application/problem+json"


def cli(service: Service, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command(*args), env=service.env, cwd=ROOT, capture_output=True, text=True, check=check)


def new_key(service: Service, team: str, *options: str) -> str:
    return cli(service, "keys", "create", "--team", team, *options).stdout.strip().splitlines()[-1]


def listed(service: Service, team: str) -> list[dict]:
    out = cli(service, "keys", "list", "--team", team, "--json").stdout
    return [json.loads(line) for line in out.splitlines()]


def database(service: Service) -> Database:
    return Database(service.settings.database_url)


def assert_problem(answer, status: int, *words: str) -> None:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith(PROBLEM)
    for word in words:
        assert word in answer.json()["detail"], answer.json()


def test_list_shows_keys_without_secrets_and_revoke_answers_401_on_the_next_request(service):
    key = new_key(service, "keys-revoke")
    other = new_key(service, "keys-revoke")
    with service.client(key) as client:
        assert client.get("/datasets").status_code == 200

    table = cli(service, "keys", "list", "--team", "keys-revoke").stdout
    assert key[:10] in table and "read,train,predict" in table
    rows = listed(service, "keys-revoke")
    assert [r["prefix"] for r in rows] == [key[:10], other[:10]]
    for secret in (key, other, hash_key(key), hash_key(other)):
        assert secret not in table and all(secret not in json.dumps(r) for r in rows)
    mine = rows[0]
    assert mine["team"] == "keys-revoke" and mine["scopes"] == "read,train,predict"
    assert mine["last_used_at"] is not None and mine["revoked_at"] is None and mine["expires_at"] is None
    assert rows[1]["last_used_at"] is None

    revoked = cli(service, "keys", "revoke", key[:10])
    assert revoked.stdout.startswith("revoked ") and mine["id"] in revoked.stdout
    with service.client(key) as client:
        assert_problem(client.get("/datasets"), 401, "revoked", "finetune keys create")
        assert_problem(client.post("/predict", json={"texts": ["x"]}), 401, "revoked")
    with service.client(other) as client:  # the team's other key still works
        assert client.get("/datasets").status_code == 200
    revoked_at = listed(service, "keys-revoke")[0]["revoked_at"]
    assert revoked_at is not None
    again = cli(service, "keys", "revoke", mine["id"])  # again, by id: nothing changes
    assert again.stdout.startswith("already revoked")
    assert listed(service, "keys-revoke")[0]["revoked_at"] == revoked_at

    unknown = cli(service, "keys", "revoke", "ftk_nosuch", check=False)
    assert unknown.returncode == 1 and "finetune keys list" in unknown.stderr


def test_an_expired_key_answers_401_saying_it_expired(service):
    key = new_key(service, "keys-expiry", "--expires-at", "2030-01-01T12:00:00+02:00")
    later = new_key(service, "keys-expiry", "--expires-in-days", "30")
    [row, row_later] = listed(service, "keys-expiry")
    assert datetime.fromisoformat(row["expires_at"]) == datetime(2030, 1, 1, 10, tzinfo=UTC)
    assert datetime.fromisoformat(row_later["expires_at"]) > datetime.now(UTC) + timedelta(days=29)
    with service.client(key) as client:
        assert client.get("/jobs").status_code == 200
        db = database(service)
        with db.session() as session:  # time passes: the expiry is now behind us
            moment = datetime.now(UTC) - timedelta(seconds=1)
            session.execute(update(ApiKey).where(ApiKey.key_hash == hash_key(key)).values(expires_at=moment))
        db.dispose()
        assert_problem(client.get("/jobs"), 401, "expired", "finetune keys create")
        assert_problem(client.post("/predict", json={"texts": ["x"]}), 401, "expired")
    with service.client(later) as client:
        assert client.get("/jobs").status_code == 200

    past = cli(service, "keys", "create", "--team", "keys-expiry", "--expires-at", "2001-01-01", check=False)
    assert past.returncode != 0 and "in the past" in past.stderr


def _operations(service: Service) -> list[tuple[str, str]]:
    """Every (method, path) of the OpenAPI schema that takes a key, with its path parameters filled in."""
    schema = service.client().get("/openapi.json").json()
    ops = []
    for path, methods in schema["paths"].items():
        for method, op in methods.items():
            if op.get("security"):
                ops.append((method.upper(), path.replace("{", "").replace("}", "")))
    return ops


def needed_scope(method: str, path: str) -> str:
    """The scope a refusal names: predict for /predict and for submitting or cancelling batch prediction runs."""
    if path == "/predict" or (path.startswith("/predictions") and method != "GET"):
        return "predict"
    return "read" if method == "GET" else "train"


def grants(scope: str, needed: str, path: str) -> bool:
    """train includes read; predict also reads batch prediction runs (whoever submits one watches it)."""
    return (
        scope == needed or (scope == "train" and needed == "read") or (scope, path[:12]) == ("predict", "/predictions")
    )


def test_every_route_needs_its_scope_and_a_key_without_it_gets_403_naming_it(service):
    keys = {scope: new_key(service, "keys-scopes", "--scope", scope) for scope in ("read", "train", "predict")}
    admin = new_key(service, "keys-scopes", "--scope", "admin")
    assert [r["scopes"] for r in listed(service, "keys-scopes")] == ["read", "train", "predict", "admin"]
    operations = _operations(service)
    paths = {path for _, path in operations}
    assert {"/datasets", "/jobs", "/predict", "/models", "/aliases"} <= paths and len(operations) >= 13

    for method, path in operations:
        needed = needed_scope(method, path)
        for scope, key in keys.items():
            granted = grants(scope, needed, path)
            with service.client(key) as client:
                answer = client.request(method, path)
            if granted:
                assert answer.status_code not in (401, 403), (method, path, scope, answer.text)
            else:
                assert_problem(answer, 403, f"needs '{needed}'", f"--scope {needed}")
        with service.client(admin) as client:
            answer = client.request(method, path)
        assert answer.status_code not in (401, 403), (method, path, "admin", answer.text)

    bad = cli(service, "keys", "create", "--team", "keys-scopes", "--scope", "read,everything", check=False)
    assert bad.returncode != 0 and "unknown scope everything" in bad.stderr


def test_last_used_at_is_written_at_most_once_a_minute(service):
    key = new_key(service, "keys-last-used")
    db = database(service)

    def last_used() -> datetime | None:
        with db.session() as session:
            return session.scalar(select(ApiKey.last_used_at).where(ApiKey.key_hash == hash_key(key)))

    try:
        assert last_used() is None
        with service.client(key) as client:
            assert client.get("/models").status_code == 200
            first = last_used()
            assert first is not None and abs((datetime.now(UTC) - first).total_seconds()) < 30
            for _ in range(5):
                assert client.get("/models").status_code == 200
            assert last_used() == first  # no write per request
            old = datetime.now(UTC) - timedelta(minutes=2)
            with db.session() as session:
                session.execute(update(ApiKey).where(ApiKey.key_hash == hash_key(key)).values(last_used_at=old))
            assert client.get("/aliases").status_code == 200
            refreshed = last_used()
            assert refreshed is not None and refreshed > old + timedelta(seconds=60)
    finally:
        db.dispose()


def test_wrong_keys_from_one_address_are_throttled_with_retry_after(service, key):
    limit = service.settings.auth_failure_limit
    attacker = {"X-Forwarded-For": "203.0.113.7"}  # uvicorn trusts the header from 127.0.0.1 (FORWARDED_ALLOW_IPS)
    with service.client(f"ftk_wrong{'x' * 30}") as wrong:
        for _ in range(limit):
            assert_problem(wrong.get("/jobs", headers=attacker), 401, "unknown")
        throttled = wrong.get("/jobs", headers=attacker)
        assert_problem(throttled, 429, "failed authentications", "retry after")
        assert 1 <= int(throttled.headers["Retry-After"]) <= service.settings.auth_failure_window_seconds
        assert_problem(wrong.post("/predict", json={"texts": ["x"]}, headers=attacker), 429)
    with service.client(service.new_key("team-new-at-throttled-address")) as newcomer:
        assert_problem(newcomer.get("/jobs", headers=attacker), 429)  # unknown here: refused until the window slides
        assert newcomer.get("/jobs", headers={"X-Forwarded-For": "203.0.113.8"}).status_code == 200
    with service.client(key) as client:  # a key that authenticated lately is not locked out by its neighbour
        assert client.get("/jobs").status_code == 200
        assert client.get("/jobs", headers=attacker).status_code == 200


def test_the_failure_window_slides():
    throttle = FailedAuthThrottle(limit=3, window=0.5)
    for _ in range(3):
        throttle.check("10.0.0.1")
        throttle.failed("10.0.0.1")
    with pytest.raises(TooManyRequests, match="Too many failed authentications") as refused:
        throttle.check("10.0.0.1")
    assert refused.value.headers["Retry-After"] == "1"
    throttle.check("10.0.0.2")  # other addresses are not affected
    throttle.succeeded("ftk_good")
    throttle.check("10.0.0.1", "ftk_good")  # a key that authenticated lately passes the throttled address
    with pytest.raises(TooManyRequests):
        throttle.check("10.0.0.1", "ftk_other")
    time.sleep(0.6)
    throttle.check("10.0.0.1")  # the old failures left the window
    throttle.failed("10.0.0.1")
    throttle.check("10.0.0.1")
