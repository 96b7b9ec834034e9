"""The web console in a real headless Chromium (Debian's, driven by Playwright): sign in with the key, watch a job
train live, read a finished job's report, move an alias and see /predict follow it, upload a dataset and see its
class bars. Every page runs under the console's Content-Security-Policy: a request to anywhere but the service, or
an inline script or style, shows up as a console error, and the test fails on any. The key must never appear in a
URL the browser visits or requests."""

from __future__ import annotations

import base64
import io
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, Route, sync_playwright

from app.processes import ROOT
from tests.conftest import wait_for_job, wait_for_step
from tests.factories import image_zip, text_csv, text_rows

CHROMIUM = "/usr/bin/chromium"
QUICK = {"epochs": 2, "batch_size": 8, "learning_rate": 0.003, "max_length": 16, "early_stopping": None}
# Long enough to watch (the test cancels it), evaluated often so validation points arrive too.
LONG = {"epochs": 1000, "batch_size": 8, "max_length": 16, "early_stopping": None, "eval_every_steps": 4}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def shots(service) -> Path:
    """Screenshots of each page (not committed): var/screenshots/console-<stack>/."""
    folder = ROOT / "var" / "screenshots" / f"console-{service.stack.name}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def page(browser: Browser, service, key: str) -> Iterator[Page]:
    """A signed-in tab. Afterwards: the key was in no URL, no cookie and no line of the API's log, and the page logged
    no error."""
    context = browser.new_context(viewport={"width": 1360, "height": 1000})
    tab = context.new_page()
    urls: list[str] = []
    errors: list[str] = []
    tab.on("request", lambda r: urls.append(r.url))
    tab.on("framenavigated", lambda f: urls.append(f.url))
    tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda e: errors.append(str(e)))
    tab.goto(f"{service.url}/ui/")
    tab.fill("#api-key", key)
    tab.click("#signin button[type=submit]")
    tab.wait_for_selector("#jobs-table")
    yield tab
    urls.append(tab.url)
    cookies = context.cookies()
    context.close()
    assert all(key not in url for url in urls), [u for u in urls if key in u]
    assert all(url.startswith(service.url) for url in urls if url.startswith("http")), urls
    assert not cookies
    assert key not in (service.var_dir / "logs" / "api.log").read_text(errors="replace")
    # A 4xx answer the page expected (a 409 asking for force) is logged by Chromium as a failed resource.
    assert not [e for e in errors if "status of 409" not in e], errors


@pytest.fixture(scope="module")
def quick_jobs(service, key: str, text_dataset: str) -> list[str]:
    """Two short jobs, submitted first so the one worker trains them while the live test waits its turn."""
    with service.client(key) as client:
        return [_submit(client, text_dataset, {**QUICK, "seed": seed}) for seed in (1, 2)]


def _submit(client, dataset_id: str, hyperparameters: dict) -> str:
    answer = client.post(
        "/jobs", json={"dataset_id": dataset_id, "base_model": "tiny-bert", "hyperparameters": hyperparameters}
    )
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def _points(page: Page, chart: str) -> int:
    return int(page.get_attribute(chart, "data-points") or 0)


def _until(page: Page, expression: str, timeout: float = 30) -> None:
    """Poll a JS expression until it is true. (Playwright's wait_for_function compiles its predicate with eval, which
    the console's Content-Security-Policy forbids; evaluate() does not.)"""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"still false after {timeout}s: {expression}"
        time.sleep(0.1)


def test_shell_loads_without_a_key_and_a_wrong_key_is_refused(browser: Browser, service) -> None:
    context = browser.new_context()
    tab = context.new_page()
    answer = tab.goto(f"{service.url}/ui/jobs")
    assert answer is not None and answer.status == 200
    assert "default-src 'self'" in answer.headers["content-security-policy"]
    tab.fill("#api-key", "ft_not-a-key")
    tab.click("#signin button[type=submit]")
    tab.wait_for_selector("#signin-error:has-text('not accepted')")
    assert tab.evaluate("sessionStorage.getItem('finetune.key')") is None
    context.close()


def test_job_page_curves_grow_while_training_then_cancel(page: Page, service, client, text_dataset, quick_jobs, shots):
    job_id = _submit(client, text_dataset, LONG)
    wait_for_step(client, job_id, 1, timeout=300)
    page.click(f"a[href='/ui/jobs/{job_id}']")
    page.wait_for_selector("#stream-state[data-state=live]")
    _until(page, "document.querySelector('#chart-loss').dataset.points > 0")
    before = _points(page, "#chart-loss")
    step_before = client.get(f"/jobs/{job_id}").json()["step"]
    wait_for_step(client, job_id, step_before + 6)
    _until(page, f"document.querySelector('#chart-loss').dataset.points > {before + 3}")
    assert _points(page, "#chart-lr") > 0 and _points(page, "#chart-throughput") > 0
    _until(page, "document.querySelector('#chart-validation').dataset.points > 0")
    page.wait_for_selector("#evaluations tbody tr")
    assert page.locator("#events li[data-kind=claimed]").count() == 1
    assert page.inner_text("#hyperparameters [data-name=batch_size] dd") == "8"
    page.screenshot(path=str(shots / "job-live.png"), full_page=True)

    page.click("#cancel-job")
    assert job_id in page.inner_text("#confirm-text")
    page.click("#confirm-yes")
    page.wait_for_selector("#job-head .badge[data-status=cancelled]", timeout=60_000)
    page.wait_for_selector("#stream-state[data-state=ended]")
    assert client.get(f"/jobs/{job_id}").json()["status"] == "cancelled"


def test_finished_job_shows_confusion_matrix_and_per_class_table(page: Page, service, client, quick_jobs, shots):
    job = wait_for_job(client, quick_jobs[0])
    assert job["status"] == "succeeded", job["error"]
    report = client.get(f"/jobs/{job['id']}/report").json()
    labels = report["confusion_matrix"]["labels"]
    page.goto(f"{service.url}/ui/jobs/{job['id']}")
    page.wait_for_selector("[data-testid=confusion-matrix]")
    assert page.locator("[data-testid=confusion-matrix] .row-label").all_text_contents() == labels
    assert page.locator("[data-testid=confusion-matrix] .col-label").all_text_contents() == labels
    assert page.locator("#per-class tbody tr[data-label]").evaluate_all("rows => rows.map(r => r.dataset.label)") == [
        *report["per_class"]
    ]
    assert page.inner_text("#report-accuracy") == f"{100 * report['accuracy']:.1f}%"
    assert "majority class" in page.inner_text("#baselines")
    assert page.get_attribute("[data-testid=reliability]", "data-bins") == "15"
    drawn = page.locator("[data-testid=reliability] .reliability-bar").evaluate_all(
        "bars => bars.map(b => +b.dataset.count)"
    )
    assert drawn == [b["count"] for b in report["calibration"]["bins"] if b["count"]]
    assert page.locator("#confused-pairs tbody tr").count() == min(10, len(report["confused_pairs"]))
    assert page.locator("#misclassified tbody tr").count() == min(8, len(report["misclassified"]))
    page.wait_for_selector("#checkpoints tr[data-step]")
    assert _points(page, "#chart-loss") > 0  # a finished job's stream replays its backlog
    page.screenshot(path=str(shots / "job-report.png"), full_page=True)
    page.click("a[href='/ui/jobs']")
    page.wait_for_selector(f"#jobs-table tr[data-job='{job['id']}']")
    page.select_option("#status-filter", "succeeded")
    _until(page, "[...document.querySelectorAll('#jobs-table .badge')].every(b => b.dataset.status === 'succeeded')")
    page.screenshot(path=str(shots / "jobs.png"), full_page=True)


def test_a_dropped_stream_resumes_with_last_event_id(page: Page, service, client, quick_jobs):
    """The first connection is cut halfway through the backlog (no `end`); the page reconnects with the id of the
    last message it got, and ends with every row exactly once."""
    job = wait_for_job(client, quick_jobs[1])
    asked: list[str | None] = []
    cut_at: list[str] = []

    def drop_the_first_connection(route: Route) -> None:
        asked.append(route.request.headers.get("last-event-id"))
        if len(asked) > 1:
            route.continue_()
            return
        messages = route.fetch().text().split("\n\n")
        half = "\n\n".join(messages[: len(messages) // 2]) + "\n\n"
        cut_at.append(re.findall(r"^id: (\S+)$", half, re.M)[-1])
        route.fulfill(status=200, headers={"content-type": "text/event-stream"}, body=half)

    page.route(re.compile(rf"/jobs/{job['id']}/stream$"), drop_the_first_connection)
    page.goto(f"{service.url}/ui/jobs/{job['id']}")
    page.wait_for_selector("#stream-state[data-state=ended]", timeout=30_000)
    assert asked == [None, cut_at[0]]
    events = client.get(f"/jobs/{job['id']}/events", params={"limit": 1000}).json()["items"]
    assert page.locator("#events li").count() == len(events)
    metrics = client.get(f"/jobs/{job['id']}/metrics", params={"limit": 10000}).json()["items"]
    losses = [m for m in metrics if m["name"] in ("train_loss", "val_loss")]
    assert _points(page, "#chart-loss") == len(losses)


def test_moving_an_alias_from_the_models_page_changes_what_predict_serves(
    page: Page, service, client, quick_jobs, shots
):
    models = []
    for job_id in quick_jobs:
        job = wait_for_job(client, job_id)
        assert job["status"] == "succeeded", job["error"]
        models.append(client.get(f"/models/{job['model_id']}").json())
    first, second = models
    alias = f"console-{int(time.time() * 1000)}"
    assert client.put(f"/aliases/{alias}", json={"model_id": first["id"], "force": True}).status_code == 200

    page.click("a[href='/ui/models']")
    page.wait_for_selector(f"#aliases tr[data-alias='{alias}'][data-model='{first['id']}']")
    page.fill("#alias-name", alias)
    page.click(f"button.set-alias[data-model='{second['id']}']")
    question = page.inner_text("#confirm-text")
    assert first["id"] in question and second["id"] in question  # names the model it replaces
    page.click("#confirm-yes")
    if second["below_baseline"]:  # the server asks for force; the console says so and offers it
        _until(page, "document.querySelector('#confirm-text').textContent.includes('force')")
        page.click("#confirm-yes")
    page.wait_for_selector(f"#aliases tr[data-alias='{alias}'][data-model='{second['id']}']")
    page.screenshot(path=str(shots / "models.png"), full_page=True)
    answer = client.post("/predict", json={"model": alias, "texts": ["a great film"]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_id"] == second["id"]

    page.click("a[href='/ui/predict']")
    page.select_option("#predict-model", alias)
    page.fill("#predict-texts", "a great film\nthe worst plot")
    page.click("#predict-run")
    page.wait_for_selector("#predictions .prediction >> nth=1")
    assert second["id"] in page.inner_text("#predict-model-used")
    bars = page.locator("#predictions .prediction").first.locator(".bar-row")
    assert bars.count() == 2  # top_k 3 of two labels
    page.screenshot(path=str(shots / "predict.png"), full_page=True)


def test_dataset_upload_shows_progress_class_bars_and_samples(page: Page, service, client, shots):
    rows = text_rows(per_class=12) + [{"text": f"the plot was there {i}", "label": "neutral"} for i in range(12)]
    page.click("a[href='/ui/datasets']")
    page.set_input_files("#upload-file", {"name": "three.csv", "mimeType": "text/csv", "buffer": text_csv(rows)})
    page.fill("#upload-name", "three classes")
    page.click("#upload-form button[type=submit]")
    page.wait_for_selector("#class-counts")
    dataset_id = page.url.rsplit("/", 1)[-1]
    dataset = client.get(f"/datasets/{dataset_id}").json()
    assert dataset["name"] == "three classes"
    for split in ("train", "val", "test"):
        shown = page.locator(f"#class-counts [data-split={split}] .bar-row").evaluate_all(
            "rows => Object.fromEntries(rows.map(r => [r.dataset.label, Number(r.dataset.value)]))"
        )
        assert shown == dataset["counts"][split]
    page.wait_for_selector("#samples .items[data-label=neutral] .text")
    for label in dataset["labels"]:
        assert page.locator(f"#samples .items[data-label={label}] .text").count() == 3
    page.screenshot(path=str(shots / "dataset.png"), full_page=True)
    page.click("a[href='/ui/datasets']")
    page.wait_for_selector(f"#datasets-table tr[data-dataset='{dataset_id}']")


def test_samples_endpoint_is_bounded_and_team_scoped(page: Page, service, client, other_key, shots):
    uploaded = client.post(
        "/datasets", files={"file": ("shapes.zip", image_zip(per_class=12))}, data={"task": "image_classification"}
    )
    assert uploaded.status_code == 201, uploaded.text
    dataset = uploaded.json()
    answer = client.get(f"/datasets/{dataset['id']}/samples", params={"per_class": 2})
    assert answer.status_code == 200, answer.text
    samples = answer.json()["samples"]
    assert sorted(samples) == dataset["labels"] and all(len(rows) == 2 for rows in samples.values())
    for rows in samples.values():
        for row in rows:
            head, data = row["image"].split(",", 1)
            assert head == "data:image/png;base64"
            assert max(Image.open(io.BytesIO(base64.b64decode(data))).size) <= 96
    too_many = client.get(f"/datasets/{dataset['id']}/samples", params={"per_class": 11})
    assert too_many.status_code == 422
    with service.client(other_key) as other:
        assert other.get(f"/datasets/{dataset['id']}/samples").status_code == 404

    page.goto(f"{service.url}/ui/datasets/{dataset['id']}")
    page.wait_for_selector("#samples img")
    thumbnails = page.locator("#samples img")
    assert thumbnails.count() == 3 * len(dataset["labels"])
    assert all(thumbnails.evaluate_all("imgs => imgs.map(i => i.complete && i.naturalWidth > 0)"))  # shown under CSP
    page.screenshot(path=str(shots / "dataset-images.png"), full_page=True)
