"""Dataset uploads over HTTP: what is accepted, and every broken upload refused with nothing left behind."""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from app.artifacts.layout import RECORDS, dataset_key
from tests.factories import COLORS, image_bytes, image_zip, text_csv, text_jsonl, text_rows


def _stored_files(service) -> set[str]:
    return service.stored_keys("datasets")


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


BROKEN = [
    (
        "image_classification",
        "c.zip",
        image_zip(per_class=5, extra={"red/broken.png": b"not really a png"}),
        "red/broken.png",
    ),
    ("image_classification", "c.zip", image_zip(per_class=5, extra={"blue/notes.txt": b"hello"}), "blue/notes.txt"),
    ("image_classification", "c.zip", image_zip(per_class=5, extra={"../escape.png": b"x"}), "escape"),
    (
        "image_classification",
        "c.zip",
        _zip({"red/a.png": b"", "blue/b.png": image_bytes(COLORS["blue"], 1)}),
        "red/a.png",
    ),
    (
        "image_classification",
        "one.zip",
        _zip({f"red/{i}.png": image_bytes(COLORS["red"], i) for i in range(3)}),
        "two classes",
    ),
    (
        "image_classification",
        "top.zip",
        image_zip(per_class=3, extra={"loose.png": image_bytes(COLORS["red"], 5)}),
        "loose.png",
    ),
    ("image_classification", "empty.zip", _zip({}), "no images"),
    ("image_classification", "x.csv", text_csv(), "zip"),
    ("text_classification", "one.csv", text_csv([{"text": "good", "label": "pos"}] * 5), "two classes"),
    ("text_classification", "cols.csv", text_csv(columns=("sentence", "label")), "sentence"),
    ("text_classification", "latin1.csv", "text,label\ncafé au lait,pos\nbad,neg\n".encode("latin-1"), "UTF-8"),
    ("text_classification", "blank.csv", b"text,label\ngood film,pos\n,neg\n", "line 3"),
    ("text_classification", "bad.jsonl", b'{"text": "good", "label": "pos"}\nnot json\n', "line 2"),
    ("text_classification", "split.csv", b"text,label,split\ngood,pos,train\nbad,neg,holdout\n", "holdout"),
    ("text_classification", "empty.csv", b"", "empty"),
]


@pytest.mark.parametrize(("task", "filename", "data", "named"), BROKEN)
def test_broken_upload_is_4xx_and_stores_nothing(service, client, task, filename, data, named):
    before_files, before_rows = _stored_files(service), client.get("/datasets").json()["items"]
    answer = client.post("/datasets", files={"file": (filename, data)}, data={"task": task})
    assert 400 <= answer.status_code < 500, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert named.lower() in answer.json()["detail"].lower()
    assert _stored_files(service) == before_files
    assert client.get("/datasets").json()["items"] == before_rows


def test_text_jsonl_with_custom_columns_and_given_splits(client):
    rows = [{"review": r["text"], "sentiment": r["label"], "split": s} for r, s in zip(
        text_rows(10), ["train"] * 8 + ["val"] + ["test"] + ["train"] * 8 + ["val"] + ["test"], strict=True
    )]  # fmt: skip
    data = ("\n".join(json.dumps(r) for r in rows) + "\n").encode()
    answer = client.post(
        "/datasets",
        files={"file": ("reviews.jsonl", data)},
        data={"task": "text_classification", "text_column": "review", "label_column": "sentiment"},
    )
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["splits_given"] is True
    assert body["counts"]["val"] == {"negative": 1, "positive": 1}
    assert any("10 examples" in w or "only" in w for w in body["warnings"]) or body["warnings"] == []


def test_split_folders_zip_and_warnings(client):
    entries = {}
    source = zipfile.ZipFile(io.BytesIO(image_zip(per_class=6)))
    for i, name in enumerate(source.namelist()):
        split = "train" if i % 6 < 4 else ("val" if i % 6 == 4 else "test")
        entries[f"{split}/{name}"] = source.read(name)
    answer = client.post("/datasets", files={"file": ("s.zip", _zip(entries))}, data={"task": "image_classification"})
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["splits_given"] is True
    assert body["counts"]["train"] == {"blue": 4, "red": 4}
    assert any("only 6" in w for w in body["warnings"])


def test_dataset_list_get_delete(service, client):
    created = client.post("/datasets", files={"file": ("d.jsonl", text_jsonl())}, data={"task": "text_classification"})
    dataset_id = created.json()["id"]
    store = service.store()
    assert store.exists(f"{dataset_key(dataset_id)}/{RECORDS}")
    assert client.get(f"/datasets/{dataset_id}").json()["num_examples"] == 60
    assert dataset_id in [d["id"] for d in client.get("/datasets", params={"limit": 200}).json()["items"]]
    assert client.delete(f"/datasets/{dataset_id}").status_code == 204
    assert client.get(f"/datasets/{dataset_id}").status_code == 404
    assert not store.exists(f"{dataset_key(dataset_id)}/{RECORDS}")
    assert service.stored_keys(dataset_key(dataset_id)) == set()


def test_upload_without_task_or_file_is_422(client):
    assert client.post("/datasets", files={"file": ("a.csv", text_csv())}).status_code == 422
    answer = client.post("/datasets", data={"task": "text_classification"})
    assert answer.status_code == 422
    assert "file" in answer.json()["detail"]
    wrong_task = client.post("/datasets", files={"file": ("a.csv", text_csv())}, data={"task": "regression"})
    assert wrong_task.status_code == 422


def test_dataset_list_is_cursor_paged_newest_first(service):
    with service.client(service.new_key("paging-team")) as client:
        ids = [
            client.post(
                "/datasets", files={"file": ("d.csv", text_csv())}, data={"task": "text_classification"}
            ).json()["id"]
            for _ in range(3)
        ]
        first = client.get("/datasets", params={"limit": 2}).json()
        assert [d["id"] for d in first["items"]] == ids[::-1][:2]
        rest = client.get("/datasets", params={"limit": 2, "cursor": first["next_cursor"]}).json()
        assert [d["id"] for d in rest["items"]] == [ids[0]] and rest["next_cursor"] is None
