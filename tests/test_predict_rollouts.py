"""Serving without a database round trip per request, and safe rollouts (issue 15): /predict trusts its in-process
copy of a key and an alias for at most FINETUNE_PREDICT_LOOKUP_TTL_SECONDS; an alias splits traffic by weight
(sticky per routing key), a shadow answers a copy that is counted and never returned, a moved alias warms its new
model first, and a model that fails to load never takes the traffic."""

from __future__ import annotations

import math
import time
from collections import Counter
from datetime import UTC, datetime

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from app import processes
from app.artifacts.layout import model_key
from app.db import Database
from app.registry.tables import Alias
from app.teams.service import hash_key
from app.teams.tables import ApiKey
from tests.conftest import Service, wait_for_job
from tests.factories import text_csv

TTL = 1.0  # FINETUNE_PREDICT_LOOKUP_TTL_SECONDS's default, the bound these tests hold the service to
SLACK = 1.5  # a loaded machine's request latency on top of it
TEXTS = ["a great fun film", "the plot was dull and the film was poor", "happy", "awful"]


@pytest.fixture(scope="module")
def models(service: Service, key: str) -> dict[str, str]:
    """Four tiny text models of team A's on one dataset: a and b serve, fresh is never used before its warm swap,
    broken gets its weights damaged in the store."""
    with service.client(key) as client:
        dataset = client.post("/datasets", files={"file": ("r.csv", text_csv())}, data={"task": "text_classification"})
        assert dataset.status_code == 201, dataset.text
        jobs = {}
        for n, name in enumerate(("a", "b", "fresh", "broken")):
            hp = {"epochs": 1, "batch_size": 16, "max_steps": 2, "max_length": 16, "seed": n}
            body = {"dataset_id": dataset.json()["id"], "base_model": "tiny-bert", "hyperparameters": hp}
            job = client.post("/jobs", json=body)
            assert job.status_code == 201, job.text
            jobs[name] = job.json()["id"]
        done = {name: wait_for_job(client, job_id) for name, job_id in jobs.items()}
    assert all(d["status"] == "succeeded" for d in done.values()), done
    return {name: d["model_id"] for name, d in done.items()}


def database(service: Service) -> Database:
    return Database(service.settings.database_url)


def put_alias(client: httpx.Client, name: str, **body: object) -> httpx.Response:
    return client.put(f"/aliases/{name}", json={"force": True, **body})


def predict(client: httpx.Client, model: str, **extra: object) -> httpx.Response:
    return client.post("/predict", json={"model": model, "texts": TEXTS[:1], **extra})


def served_by(client: httpx.Client, model: str, **extra: object) -> str:
    answer = predict(client, model, **extra)
    assert answer.status_code == 200, answer.text
    return answer.json()["model_id"]


def wait_until(check, bound: float) -> float:
    """Seconds until `check()` holds, polling; fails past `bound`."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < bound, f"not within {bound:.1f} s"
        time.sleep(0.05)
    return time.monotonic() - started


def test_a_revoked_key_stops_predicting_within_the_bound(service, models):
    key = service.new_key("team-a")
    with service.client(key) as client:
        assert predict(client, models["a"]).status_code == 200  # the key is now in the API's memory
        assert predict(client, models["a"]).status_code == 200
        db = database(service)
        with db.session() as session:  # as `finetune keys revoke` does, from another process
            session.execute(update(ApiKey).where(ApiKey.key_hash == hash_key(key)).values(revoked_at=datetime.now(UTC)))
        db.dispose()
        took = wait_until(lambda: predict(client, models["a"]).status_code == 401, TTL + SLACK)
        answer = predict(client, models["a"])
    assert answer.status_code == 401 and "revoked" in answer.json()["detail"]
    assert took <= TTL + SLACK


def test_an_alias_moved_elsewhere_takes_effect_within_the_bound(client, models, service):
    assert put_alias(client, "rollout-moved", model_id=models["a"]).status_code == 200
    assert served_by(client, "rollout-moved") == models["a"]  # the route is now in the API's memory
    assert served_by(client, models["b"]) == models["b"]  # and b is loaded
    db = database(service)
    with db.session() as session:  # as another API process (or a sweep's promotion on a worker) moves it
        session.execute(update(Alias).where(Alias.name == "rollout-moved").values(model_id=models["b"]))
    db.dispose()
    took = wait_until(lambda: served_by(client, "rollout-moved") == models["b"], TTL + SLACK)
    assert took <= TTL + SLACK
    # Moved through this process, the very next request follows.
    assert put_alias(client, "rollout-moved", model_id=models["a"]).status_code == 200
    assert served_by(client, "rollout-moved") == models["a"]


def test_another_api_process_follows_a_move_warm(service, key, models):
    """A second API process on the same database: an alias moved through the first reaches it within the ttl plus
    the time to load the new model, which it loads and warms ahead of its traffic while the old one keeps serving:
    no request of the second process waits for a model to load."""
    a, b = models["a"], models["b"]
    port = processes.free_port()
    second_api = service.start("api-second", processes.api_command("127.0.0.1", port))
    url, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}
    try:
        processes.wait_ready(url, second_api, timeout=180)
        with service.client(key) as first, httpx.Client(base_url=url, headers=headers, timeout=60) as second:
            assert put_alias(first, "rollout-two", model_id=a).status_code == 200
            assert served_by(second, "rollout-two") == a  # routes and model now in the second process's memory
            before = model_loads(second)
            assert before == {"request": 1}, before  # the first request loaded a
            assert put_alias(first, "rollout-two", model_id=b).status_code == 200
            answers: list[str] = []

            def moved() -> bool:
                answers.append(served_by(second, "rollout-two"))
                return answers[-1] == b

            took = wait_until(moved, 30)
            assert took <= TTL + SLACK + 10, took  # the ttl, and loading the model in the background
            assert set(answers) <= {a, b}  # the old model answered until the new one was warm
            assert served_by(second, "rollout-two") == b
            after = model_loads(second)
            assert after == {"request": 1, "ahead": 1}, after  # b was loaded and warmed before its first answer
    finally:
        processes.stop([service.processes.pop("api-second")])


def model_loads(client: httpx.Client) -> dict[str, float]:
    """The process's finetune_predict_model_loads_total by `when` (from its /metrics)."""
    text = client.get("/metrics").text
    return {
        sample.labels["when"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "finetune_predict_model_loads"
        for sample in family.samples
        if sample.name.endswith("_total")
    }


def binomial_bound(n: int, p: float) -> float:
    """Six standard deviations: a correct split falls outside with probability about 2e-9."""
    return 6 * math.sqrt(n * p * (1 - p))


def test_a_weighted_split_serves_each_model_its_share(client, models):
    a, b = models["a"], models["b"]
    split = put_alias(client, "rollout-split", routes=[{"model_id": a, "weight": 70}, {"model_id": b, "weight": 30}])
    assert split.status_code == 200, split.text
    assert split.json()["routes"] == [{"model_id": a, "weight": 70}, {"model_id": b, "weight": 30}]
    assert split.json()["model_id"] == a  # the model taking the most traffic
    n = 300
    drawn = Counter(served_by(client, "rollout-split") for _ in range(n))  # no routing key: drawn at random
    assert set(drawn) <= {a, b}
    assert abs(drawn[b] - 0.3 * n) <= binomial_bound(n, 0.3), drawn
    keyed = Counter(served_by(client, "rollout-split", routing_key=f"user-{i}") for i in range(n))
    assert abs(keyed[b] - 0.3 * n) <= binomial_bound(n, 0.3), keyed


def test_a_routing_key_sticks_to_its_model_and_a_growing_canary_only_takes_keys(client, models):
    a, b = models["a"], models["b"]
    routes = [{"model_id": a, "weight": 80}, {"model_id": b, "weight": 20}]
    assert put_alias(client, "rollout-sticky", routes=routes).status_code == 200
    users = [f"session-{i}" for i in range(40)]
    first = {u: served_by(client, "rollout-sticky", routing_key=u) for u in users}
    assert set(first.values()) == {a, b}  # 40 keys at 80/20: both models serve some (fixed hashes, no chance)
    for _ in range(2):
        assert {u: served_by(client, "rollout-sticky", routing_key=u) for u in users} == first
    grown = [{"model_id": a, "weight": 50}, {"model_id": b, "weight": 50}]
    assert put_alias(client, "rollout-sticky", routes=grown).status_code == 200
    after = {u: served_by(client, "rollout-sticky", routing_key=u) for u in users}
    assert all(after[u] == b for u in users if first[u] == b)  # the canary's keys stay on it
    assert sum(m == b for m in after.values()) > sum(m == b for m in first.values())


def test_a_shadow_answers_a_copy_that_is_counted_never_returned(client, models):
    a, b = models["a"], models["b"]
    assert put_alias(client, "rollout-shadow", model_id=a, shadow_model_id=b).status_code == 200
    bodies = [TEXTS[i % len(TEXTS) : i % len(TEXTS) + 2] for i in range(12)]
    agreed = inputs = 0
    for texts in bodies:
        served = client.post("/predict", json={"model": "rollout-shadow", "texts": texts})
        assert served.status_code == 200, served.text
        assert (
            set(served.json()) == {"model_id", "runtime", "predictions", "temperature"}
            and served.json()["model_id"] == a
        )
        assert served.json()["temperature"] is None  # raw scores: nothing of the shadow in the answer
        alone = client.post("/predict", json={"model": b, "texts": texts}).json()  # what the shadow answers
        tops = zip(served.json()["predictions"], alone["predictions"], strict=True)
        agreed += sum(s[0]["label"] == o[0]["label"] for s, o in tops)
        inputs += len(texts)

    def shadow_row() -> dict | None:
        stats = client.get("/aliases/rollout-shadow/stats")
        assert stats.status_code == 200, stats.text
        rows = {r["role"]: r for r in stats.json()["models"]}
        return rows.get("shadow") if rows.get("shadow", {}).get("compared") == inputs else None

    wait_until(lambda: shadow_row() is not None, 30)  # the shadow runs after each answer is sent
    stats = client.get("/aliases/rollout-shadow/stats").json()
    assert stats["alias"]["shadow_model_id"] == b
    rows = {r["role"]: r for r in stats["models"]}
    assert rows["route"]["model_id"] == a and rows["route"]["requests"] == len(bodies)
    assert rows["route"]["inputs"] == inputs and rows["route"]["errors"] == 0
    assert rows["route"]["mean_latency_ms"] > 0
    shadow = rows["shadow"]
    assert shadow["model_id"] == b and shadow["requests"] == len(bodies) and shadow["errors"] == 0
    assert shadow["agreed"] == agreed and shadow["agreement"] == pytest.approx(agreed / inputs, abs=1e-4)
    assert shadow["mean_latency_ms"] > 0


def test_a_warm_swap_loads_and_warms_its_model_before_it_answers(client, models):
    """PUT /aliases loads and warms the new model before it returns: no request waits for the load."""
    a, fresh = models["a"], models["fresh"]
    assert put_alias(client, "rollout-warm", model_id=a).status_code == 200
    assert served_by(client, "rollout-warm") == a
    before = model_loads(client)
    moved = put_alias(client, "rollout-warm", model_id=fresh)  # loaded and warmed before it answers
    assert moved.status_code == 200, moved.text
    assert model_loads(client) == {**before, "ahead": before.get("ahead", 0) + 1}
    assert [served_by(client, "rollout-warm") for _ in range(3)] == [fresh] * 3
    assert model_loads(client) == {**before, "ahead": before.get("ahead", 0) + 1}  # none of them waited for a load


def test_a_model_that_fails_to_load_never_takes_the_alias(client, models, service):
    a, broken = models["a"], models["broken"]
    assert put_alias(client, "rollout-broken", model_id=a).status_code == 200
    assert served_by(client, "rollout-broken") == a
    store = service.store()
    store.put_bytes(f"{model_key(broken)}/model.safetensors", b"\x00" * 64)  # damaged in the artifact store
    for body in ({"model_id": broken}, {"routes": [{"model_id": a, "weight": 90}, {"model_id": broken, "weight": 10}]}):
        refused = put_alias(client, "rollout-broken", **body)
        assert refused.status_code == 422, refused.text
        assert refused.json()["title"] == "Model failed to load"
        assert broken in refused.json()["detail"] and "was not moved" in refused.json()["detail"]
    aliases = {x["name"]: x for x in client.get("/aliases").json()}
    assert aliases["rollout-broken"]["model_id"] == a and aliases["rollout-broken"]["routes"] == [
        {"model_id": a, "weight": 100}
    ]
    assert all(served_by(client, "rollout-broken", routing_key=f"k{i}") == a for i in range(20))
    shadowed = put_alias(client, "rollout-broken", model_id=a, shadow_model_id=broken)
    assert shadowed.status_code == 422 and client.get("/aliases").status_code == 200


def test_routes_are_checked_and_stats_are_the_teams_own(client, models, service, other_key):
    a, b = models["a"], models["b"]
    for routes, words in (
        ([{"model_id": a, "weight": 70}, {"model_id": b, "weight": 20}], "add up to 90"),
        ([{"model_id": a, "weight": 50}, {"model_id": a, "weight": 50}], "appears once"),
    ):
        answer = put_alias(client, "rollout-bad", routes=routes)
        assert answer.status_code == 422 and words in answer.text, answer.text
    both = put_alias(client, "rollout-bad", model_id=a, routes=[{"model_id": a, "weight": 100}])
    assert both.status_code == 422 and "not both" in both.text
    assert client.get("/aliases/rollout-bad/stats").status_code == 404
    assert put_alias(client, "rollout-mine", model_id=a).status_code == 200
    with service.client(other_key) as other:
        assert other.get("/aliases/rollout-mine/stats").status_code == 404
        assert put_alias(other, "rollout-theirs", routes=[{"model_id": a, "weight": 100}]).status_code == 404
    for body in (
        {"routes": [{"model_id": a, "weight": 90}, {"model_id": b, "weight": 10}]},
        {"model_id": a, "shadow_model_id": b},
    ):
        assert put_alias(client, "rollout-mine", **body).status_code == 200
        refused = client.delete(f"/models/{b}")  # a canary or a shadow cannot be deleted from under its alias
        assert refused.status_code == 409 and "rollout-mine" in refused.json()["detail"], refused.text


def test_traffic_counters_of_several_processes_add_up(db):
    """Two API processes' counters (two TrafficCounters on one database) add to the same rows, a few rows in all."""
    from sqlalchemy import select

    from app.inference.traffic import ROUTE, SHADOW, TrafficCounters
    from app.registry.tables import AliasTraffic
    from app.teams.tables import Team

    with db.session() as session:
        team = Team(name="traffic")
        session.add(team)
        session.flush()
        team_id = team.id
    first, second = TrafficCounters(db), TrafficCounters(db)
    for n in range(50):
        for counters in (first, second):
            counters.add(team_id, "prod", "m1", ROUTE, inputs=2, latency_ms=10.0)
            counters.add(team_id, "prod", "m2", SHADOW, inputs=2, latency_ms=4.0, compared=2, agreed=n % 2)
        if n % 10 == 0:
            first.flush()
    counters.add(team_id, "prod", "m1", ROUTE, inputs=1, error=True)
    first.close()
    second.close()
    with db.session() as session:
        rows = {r.model_id: r for r in session.scalars(select(AliasTraffic).where(AliasTraffic.team_id == team_id))}
    assert set(rows) == {"m1", "m2"}
    assert (rows["m1"].requests, rows["m1"].inputs, rows["m1"].errors) == (101, 201, 1)
    assert rows["m1"].latency_ms_total == pytest.approx(1000.0)
    assert (rows["m2"].requests, rows["m2"].compared, rows["m2"].agreed) == (100, 200, 50)


def test_stats_answer_at_once_when_the_callers_key_was_last_used_long_ago(client, models, service, key):
    """Authenticating a key unused for a minute writes its last_used_at; that write commits at once, so reading the
    stats (which first writes this process's pending counters through another connection) never waits on the
    request's own write lock (on SQLite it did, until the busy timeout, then answered 503)."""
    assert put_alias(client, "rollout-stale-key", model_id=models["a"]).status_code == 200
    assert predict(client, "rollout-stale-key").status_code == 200  # counters pending in the API process
    db = database(service)
    with db.session() as session:
        session.execute(update(ApiKey).where(ApiKey.key_hash == hash_key(key)).values(last_used_at=None))
    started = time.monotonic()
    stats = client.get("/aliases/rollout-stale-key/stats")
    assert stats.status_code == 200, stats.text
    assert time.monotonic() - started < 10
    assert stats.json()["models"][0]["requests"] >= 1
