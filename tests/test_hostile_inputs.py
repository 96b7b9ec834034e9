"""Hostile inputs against the real service: bombs, huge canvases, formats outside the allow-list, texts over the
cap and ambiguous uploads each get a 422 problem+json with nothing stored, at a bounded cost in API memory."""

from __future__ import annotations

import base64
import io
import time
import zipfile
from pathlib import Path

import pytest

from app.errors import InvalidInput
from app.inference.service import check_inputs
from app.input_limits import InputLimits
from tests.factories import COLORS, image_bytes, image_zip
from tests.hostile import EPS, huge_png, zip_bomb

PROBLEM = "application/problem+json"
BOMB_BYTES = 1536 * 1024**2  # the issue's: one 1.5 GiB entry in a 1.5 MiB zip


def memory_mib(pid: int) -> dict[str, float]:
    """The process's resident memory now (VmRSS) and at its peak so far (VmHWM), in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {name: int(fields[name].split()[0]) / 1024 for name in ("VmRSS", "VmHWM")}


def refused_and_measured(service, call) -> tuple[dict, dict[str, float]]:
    """Run `call` (a request that must be refused with 422 problem+json); its answer and what it cost the API."""
    pid = service.processes["api"].pid
    before, started = memory_mib(pid), time.monotonic()
    answer = call()
    seconds, after = time.monotonic() - started, memory_mib(pid)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == PROBLEM
    cost = {
        "seconds": round(seconds, 2),
        "rss_delta_mib": round(after["VmRSS"] - before["VmRSS"], 1),
        "peak_delta_mib": round(after["VmHWM"] - before["VmHWM"], 1),
    }
    print(f"\n{answer.json()['detail'][:90]}: {cost}")  # the figures bench/README.md quotes (pytest -s)
    return answer.json(), cost


def upload(client, filename: str, data: bytes, task: str, **fields: str):
    return client.post("/datasets", files={"file": (filename, data)}, data={"task": task, **fields})


@pytest.fixture
def nothing_stored(service, client):
    """Asserts after the test that no dataset row or file was added."""
    rows, files = client.get("/datasets").json()["items"], service.stored_keys("datasets")
    yield
    assert client.get("/datasets").json()["items"] == rows
    assert service.stored_keys("datasets") == files


# --- datasets ---------------------------------------------------------------------------------------------------


def test_zip_bomb_is_refused_before_it_is_unpacked(service, client, nothing_stored):
    bomb = zip_bomb("red/bomb.png", BOMB_BYTES, {"red/1.png": image_bytes(COLORS["red"], 1)})
    assert len(bomb) < 2 * 1024**2
    problem, cost = refused_and_measured(service, lambda: upload(client, "bomb.zip", bomb, "image_classification"))
    assert problem["detail"].startswith('"red/bomb.png" unpacks to 1,536.0 MiB; an image file may be at most 64 MiB')
    assert cost["peak_delta_mib"] < 100  # before: 3 GB


def test_huge_canvas_png_in_a_dataset_is_refused_from_its_header(service, client, nothing_stored):
    data = image_zip(per_class=3, extra={"blue/huge.png": huge_png(13000, 13000)})
    problem, cost = refused_and_measured(service, lambda: upload(client, "c.zip", data, "image_classification"))
    assert problem["detail"].startswith('"blue/huge.png" has too many pixels: 13000x13000 (169.0 megapixels)')
    assert cost["peak_delta_mib"] < 100


@pytest.mark.parametrize(
    ("filename", "data", "fields", "said"),
    [
        ("eps.zip", image_zip(per_class=3, extra={"red/x.png": EPS}), {}, '"red/x.png" is a PostScript/EPS file'),
        (
            "nested.zip",
            image_zip(per_class=3, extra={"red/inner.png": image_zip(per_class=1)}),
            {},
            '"red/inner.png" is a zip archive (nested archives are not accepted',
        ),
        ("r.csv", b"text,label\ngood,pos\nbad, really,neg\n", {}, "line 3 has 3 fields but the header has 2"),
        ("n.csv", b"text,label\ngood,pos\nba\x00d,neg\n", {}, "line 3: the text holds the control character U+0000"),
        ("l.csv", b"text,label\ngood,True\nbad, true \nok,false\n", {}, 'line 3: the label " true " and "True"'),
        ("j.jsonl", b'{"text": "a", "label": 1}\n{"text": "b", "label": "1"}\n', {}, 'line 2: the label "1" and 1'),
        ("s.csv", b"text,label\ngood,pos\nbad,neg\n", {"label_column": "text"}, "text_column and label_column"),
    ],
)
def test_hostile_or_ambiguous_upload_is_422_naming_where(client, nothing_stored, filename, data, fields, said):
    task = "image_classification" if filename.endswith(".zip") else "text_classification"
    answer = upload(client, filename, data, task, **fields)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == PROBLEM
    assert said in answer.json()["detail"]


# --- /predict ---------------------------------------------------------------------------------------------------
# The caps are checked before the model is looked up: a refused request costs no lookup, load or decode, whatever
# model it names (another team's answers exactly like a missing one: the same 422).


def test_huge_canvas_png_to_predict_is_refused_from_its_header(service, client):
    encoded = base64.b64encode(huge_png(13000, 13000)).decode()
    problem, cost = refused_and_measured(
        service, lambda: client.post("/predict", json={"model": "any-model", "images": [encoded]})
    )
    assert problem["detail"].startswith("images[0] has too many pixels: 13000x13000 (169.0 megapixels)")
    assert cost["peak_delta_mib"] < 100  # before: 800 MB
    files = [("files", ("ok.png", image_bytes(COLORS["red"], 1))), ("files", ("big.png", huge_png(9000, 9000)))]
    multipart = client.post("/predict", files=files, data={"model": "any-model"})
    assert multipart.status_code == 422
    assert multipart.json()["detail"].startswith("images[1] has too many pixels: 9000x9000")


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ({"images": [base64.b64encode(EPS).decode()]}, "images[0] is a PostScript/EPS file"),
        ({"images": [base64.b64encode(b"%PDF-1.7\n").decode()]}, "images[0] is a PDF document"),
        ({"texts": ["ok", "x" * 100_001]}, "texts[1] has 100,001 characters; the limit is 100,000 per text"),
        ({"texts": ["a"] * 257}, "257 inputs; at most 256 per request (FINETUNE_PREDICT_MAX_INPUTS)"),
        ({"texts": ["x" * 100_000] * 11}, "at texts[10], the texts hold more than 1,000,000 characters in all"),
    ],
)
def test_predict_inputs_over_the_caps_are_422(client, body, said):
    answer = client.post("/predict", json={"model": "any-model", **body})
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == PROBLEM
    assert answer.json()["detail"].startswith(said)


def test_predict_within_the_caps_still_looks_the_model_up(client):
    answer = client.post("/predict", json={"model": "no-such-model", "texts": ["x" * 100_000]})
    assert answer.status_code == 404


def test_all_images_of_one_request_share_a_pixel_budget():
    image = _png_of((1000, 1000))
    limits = InputLimits(predict_max_megapixels=2)
    check_inputs(None, [image, image], limits)
    with pytest.raises(InvalidInput) as refused:
        check_inputs(None, [image, image, image], limits)
    assert refused.value.detail.startswith("at images[2], the images hold more than 2 megapixels in all")


def _png_of(size: tuple[int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size).save(buf, format="PNG")
    return buf.getvalue()


def test_zip_bomb_built_for_these_tests_really_unpacks_to_its_size():
    with zipfile.ZipFile(io.BytesIO(zip_bomb("a/b.png", 64 * 1024**2))) as archive:
        assert len(archive.read("a/b.png")) == 64 * 1024**2  # CRC and size check out: a real bomb, not a lie
