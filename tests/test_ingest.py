"""Unit tests for dataset upload parsing; every input is built in memory."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
from PIL import Image

from app.datasets.ingest import SPLITS, parse_upload
from app.errors import InvalidUpload
from app.tasktypes.types import TaskType

IMG = TaskType.image_classification
TXT = TaskType.text_classification


def png(shade: int, size: tuple[int, int] = (4, 4)) -> bytes:
    """A tiny PNG whose colour makes its bytes unique per shade."""
    buf = io.BytesIO()
    Image.new("RGB", size, (shade % 256, shade // 256 % 256, 7)).save(buf, format="PNG")
    return buf.getvalue()


def make_zip(files: dict[str, bytes]) -> bytes:
    """A zip holding the given name -> bytes entries, in order."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def class_zip(classes: dict[str, int], prefix: str = "") -> bytes:
    """A class-folder zip with the given number of distinct images per class."""
    files, shade = {}, 0
    for label, n in classes.items():
        for i in range(n):
            files[f"{prefix}{label}/{i:03d}.png"] = png(shade)
            shade += 1
    return make_zip(files)


def rejects(task: TaskType, filename: str, data: bytes, **kwargs) -> str:
    """The detail of the InvalidUpload that parsing raises."""
    with pytest.raises(InvalidUpload) as info:
        parse_upload(task, filename, data, **kwargs)
    return info.value.detail


def csv_bytes(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def jsonl_bytes(rows: list[dict]) -> bytes:
    return "\n".join(json.dumps(r) for r in rows).encode()


# --- images ----------------------------------------------------------------------------------------------------


def test_class_folders_auto_split_is_stratified_and_complete():
    ds = parse_upload(IMG, "pets.zip", class_zip({"cat": 20, "dog": 30}))
    assert ds.labels == ["cat", "dog"]
    assert not ds.splits_given
    assert set(ds.counts) == set(SPLITS)
    assert sum(sum(c.values()) for c in ds.counts.values()) == 50 == len(ds.records)
    assert ds.counts["val"] == {"cat": 2, "dog": 3}
    assert ds.counts["test"] == {"cat": 2, "dog": 3}
    assert ds.counts["train"] == {"cat": 16, "dog": 24}
    assert [r.split for r in ds.records] == sorted((r.split for r in ds.records), key=SPLITS.index)
    assert all(r.image and r.source.endswith(".png") for r in ds.records)


def test_auto_split_is_deterministic_and_seeded():
    data = class_zip({"cat": 20, "dog": 20})
    first = [(r.source, r.split) for r in parse_upload(IMG, "a.zip", data).records]
    again = [(r.source, r.split) for r in parse_upload(IMG, "a.zip", data).records]
    other = [(r.source, r.split) for r in parse_upload(IMG, "a.zip", data, seed=1).records]
    assert first == again
    assert first != other


def test_small_classes_keep_one_in_train_and_warn():
    ds = parse_upload(IMG, "a.zip", class_zip({"cat": 3, "dog": 1, "bird": 12}))
    assert ds.counts["train"] == {"bird": 10, "cat": 1, "dog": 1}
    assert ds.counts["val"]["cat"] == ds.counts["test"]["cat"] == 1
    assert any("class 'dog' has only 1 example;" in w for w in ds.warnings)
    assert any("class 'cat' has only 3 examples" in w for w in ds.warnings)
    assert any("val split has no examples of 'dog'" in w for w in ds.warnings)


def test_imbalance_warning():
    ds = parse_upload(IMG, "a.zip", class_zip({"cat": 110, "dog": 10}))
    assert any("imbalanced" in w and "'cat'" in w and "'dog'" in w for w in ds.warnings)


def test_common_wrapper_folder_is_stripped():
    ds = parse_upload(IMG, "a.zip", class_zip({"cat": 10, "dog": 10}, prefix="pets/"))
    assert ds.labels == ["cat", "dog"]
    assert ds.records[0].source.startswith("pets/")


def test_os_clutter_is_ignored():
    data = make_zip(
        {
            "cat/1.png": png(1),
            "dog/1.png": png(2),
            "__MACOSX/cat/._1.png": b"junk",
            "cat/.DS_Store": b"junk",
            "dog/Thumbs.db": b"junk",
            "desktop.ini": b"junk",
        }
    )
    assert parse_upload(IMG, "a.zip", data).labels == ["cat", "dog"]


def test_given_train_val_test_folders():
    files, shade = {}, 0
    for split, n in (("train", 8), ("validation", 2), ("test", 3)):
        for label in ("cat", "dog"):
            for i in range(n):
                files[f"{split}/{label}/{i}.png"] = png(shade)
                shade += 1
    ds = parse_upload(IMG, "a.zip", make_zip(files))
    assert ds.splits_given
    assert ds.counts == {"train": {"cat": 8, "dog": 8}, "val": {"cat": 2, "dog": 2}, "test": {"cat": 3, "dog": 3}}


def test_missing_test_folder_is_carved_from_train():
    files = {f"train/{label}/{i}.png": png(i + 100 * k) for k, label in enumerate(("cat", "dog")) for i in range(20)}
    files |= {
        f"val/{label}/v{i}.png": png(900 + i + 10 * k) for k, label in enumerate(("cat", "dog")) for i in range(2)
    }
    ds = parse_upload(IMG, "a.zip", make_zip(files))
    assert ds.splits_given
    assert ds.counts["test"] == {"cat": 2, "dog": 2}
    assert ds.counts["val"] == {"cat": 2, "dog": 2}
    assert ds.counts["train"] == {"cat": 18, "dog": 18}
    assert any("no test split" in w for w in ds.warnings)


def test_label_without_train_examples_is_rejected():
    data = make_zip({"train/cat/1.png": png(1), "train/dog/1.png": png(2), "val/bird/1.png": png(3)})
    assert "'bird'" in rejects(IMG, "a.zip", data)


def test_corrupt_image_is_named():
    truncated = png(1, size=(64, 64))[:60]
    data = make_zip({"cat/001.png": png(1), "cat/003.jpg": b"\xff\xd8\xff garbage", "dog/1.png": truncated})
    detail = rejects(IMG, "a.zip", data)
    assert '"cat/003.jpg" is not a readable image (cannot identify image file)' in detail


def test_truncated_image_is_caught_by_full_load():
    data = make_zip({"cat/001.png": png(1), "dog/big.png": png(2, size=(256, 256))[:-40]})
    assert '"dog/big.png" is not a readable image' in rejects(IMG, "a.zip", data)


def test_non_image_file_is_named():
    data = make_zip({"cat/1.png": png(1), "dog/1.png": png(2), "dog/notes.txt": b"hello"})
    assert '"dog/notes.txt"' in rejects(IMG, "a.zip", data)


@pytest.mark.parametrize("side", [12, 20])  # 144 pixels only warns in PIL, 400 raises; both must be refused
def test_decompression_bomb_is_refused(monkeypatch, side):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    data = make_zip({"cat/1.png": png(1, size=(side, side)), "dog/1.png": png(2)})
    assert '"cat/1.png" has too many pixels' in rejects(IMG, "a.zip", data)


@pytest.mark.parametrize("name", ["../evil.png", "cat/../../evil.png", "/etc/evil.png", "cat\\evil.png"])
def test_path_escaping_the_archive_is_refused(name):
    data = make_zip({"cat/1.png": png(1), "dog/1.png": png(2), name: png(3)})
    detail = rejects(IMG, "a.zip", data)
    assert "path escapes the archive" in detail and name in detail


def test_top_level_file_is_refused():
    data = make_zip({"cat/1.png": png(1), "dog/1.png": png(2), "stray.png": png(3)})
    detail = rejects(IMG, "a.zip", data)
    assert '"stray.png"' in detail and "folder named after their class" in detail


def test_deep_nesting_is_refused():
    data = make_zip({"cat/1.png": png(1), "dog/sub/1.png": png(2)})
    assert '"dog/sub/1.png" is nested too deeply' in rejects(IMG, "a.zip", data)


def test_one_class_only():
    assert "found only 'cat'" in rejects(IMG, "a.zip", class_zip({"cat": 5}))


def test_empty_zip():
    assert "no images" in rejects(IMG, "a.zip", make_zip({}))


def test_not_a_zip():
    assert ".zip of class folders" in rejects(IMG, "a.tar", b"not a zip at all")


def test_zip_bomb_by_declared_size(monkeypatch):
    monkeypatch.setattr("app.datasets.ingest.MAX_UNCOMPRESSED_BYTES", 10)
    assert "more than 2 GiB" in rejects(IMG, "a.zip", class_zip({"cat": 1, "dog": 1}))


# --- text ------------------------------------------------------------------------------------------------------


def test_csv_ok_with_bom_and_auto_split():
    lines = ["text,label"] + [f"review {i},{'pos' if i % 2 else 'neg'}" for i in range(40)]
    ds = parse_upload(TXT, "reviews.csv", b"\xef\xbb\xbf" + csv_bytes(lines))
    assert ds.labels == ["neg", "pos"]
    assert len(ds.records) == 40 and not ds.splits_given
    assert ds.counts["val"] == {"neg": 2, "pos": 2}
    assert all(r.text and r.source.startswith("line ") for r in ds.records)


def test_jsonl_ok_with_int_labels():
    rows = [{"text": f"t{i}", "label": i % 2} for i in range(20)]
    ds = parse_upload(TXT, "data.jsonl", jsonl_bytes(rows))
    assert ds.labels == ["0", "1"]
    assert len(ds.records) == 20


def test_unknown_extension_is_sniffed():
    rows = [{"text": f"t{i}", "label": "ab"[i % 2]} for i in range(4)]
    assert len(parse_upload(TXT, "upload.txt", jsonl_bytes(rows)).records) == 4
    assert len(parse_upload(TXT, "upload.txt", csv_bytes(["text,label", "x,a", "y,b"])).records) == 2


def test_custom_column_names():
    ds = parse_upload(TXT, "d.csv", csv_bytes(["sentence,y", "hi,a", "yo,b"]), text_column="sentence", label_column="y")
    assert sorted(r.text for r in ds.records) == ["hi", "yo"]
    rows = [{"body": "hi", "cls": "a"}, {"body": "yo", "cls": "b"}]
    assert len(parse_upload(TXT, "d.jsonl", jsonl_bytes(rows), text_column="body", label_column="cls").records) == 2


def test_missing_column_lists_found_columns():
    detail = rejects(TXT, "d.csv", csv_bytes(["sentence,label", "hi,a"]))
    assert "'sentence'" in detail and "'label'" in detail and "text_column" in detail


def test_missing_jsonl_key_names_the_line():
    detail = rejects(TXT, "d.jsonl", jsonl_bytes([{"text": "a", "label": "x"}, {"text": "b"}]))
    assert "line 2" in detail and "label_column" in detail


def test_empty_label_names_the_line():
    assert "line 3: the label is empty" in rejects(TXT, "d.csv", csv_bytes(["text,label", "a,x", "b,", "c,y"]))


def test_jsonl_line_that_is_not_an_object():
    data = b'{"text": "a", "label": "x"}\n\n[1, 2]\n'
    assert "line 3 is not a JSON object" in rejects(TXT, "d.jsonl", data)


def test_non_utf8_names_the_line():
    data = "text,label\na,x\ncaf\u00e9,y\n".encode("latin-1")
    detail = rejects(TXT, "d.csv", data)
    assert "not UTF-8" in detail and "line 3" in detail and "offset 18" in detail


def test_split_column_given():
    lines = ["text,label,split"] + [f"t{i},{'ab'[i % 2]},{['train', 'valid', 'test'][i % 3]}" for i in range(30)]
    ds = parse_upload(TXT, "d.csv", csv_bytes(lines))
    assert ds.splits_given
    assert sum(ds.counts["val"].values()) == 10


def test_split_column_with_bad_value():
    detail = rejects(TXT, "d.csv", csv_bytes(["text,label,split", "a,x,train", "b,y,dev"]))
    assert "line 3" in detail and "'dev'" in detail


def test_split_column_missing_on_some_rows():
    rows = [{"text": "a", "label": "x", "split": "train"}, {"text": "b", "label": "y"}]
    assert "line 2" in rejects(TXT, "d.jsonl", jsonl_bytes(rows))


def test_duplicates_across_splits_warning():
    rows = [{"text": "same", "label": "a", "split": "train"}, {"text": "same", "label": "a", "split": "test"}]
    rows += [{"text": f"t{i}", "label": "ab"[i % 2], "split": "train"} for i in range(10)]
    ds = parse_upload(TXT, "d.jsonl", jsonl_bytes(rows))
    assert any("1 example appears in more than one split" in w and "line 1" in w for w in ds.warnings)
    assert any("no val split" in w for w in ds.warnings)


def test_empty_text_file():
    assert rejects(TXT, "d.csv", b"") == "the dataset is empty"
    assert rejects(TXT, "d.csv", b"text,label\n") == "the dataset is empty"
    assert rejects(TXT, "d.jsonl", b"\n\n") == "the dataset is empty"
