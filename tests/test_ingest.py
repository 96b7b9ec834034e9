"""Unit tests for dataset upload parsing (and storing what was parsed); every input is built in test."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
from PIL import Image

from app.artifacts.layout import read_dataset, write_dataset
from app.artifacts.store import ArtifactStore
from app.datasets.ingest import SPLITS, parse_upload
from app.errors import InvalidUpload
from app.input_limits import InputLimits
from app.tasktypes.types import TaskType
from tests.hostile import EPS, huge_png, with_declared_size, zip_bomb

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
    assert all(r.member and r.source.endswith(".png") for r in ds.records)
    assert all(ds.image_bytes(r).startswith(b"\x89PNG") for r in ds.records)


def test_an_upload_file_is_checked_and_stored_one_image_at_a_time(tmp_path):
    """From an open file (an upload spooled to disk), no record holds its image: each names its zip entry, and the
    stored images.zip is copied entry by entry; what the worker reads back is exactly what was uploaded."""
    data = class_zip({"cat": 12, "dog": 12})
    (tmp_path / "up.zip").write_bytes(data)
    with open(tmp_path / "up.zip", "rb") as upload:
        ds = parse_upload(IMG, "up.zip", upload)
        assert all(r.image is None and r.member and len(r.digest) == 64 for r in ds.records)
        store = ArtifactStore(str(tmp_path / "store"))
        write_dataset(store, "datasets/d1", ds)
        ds.close()
    stored = read_dataset(store, "datasets/d1")
    with zipfile.ZipFile(io.BytesIO(data)) as original:
        assert [(r["split"], r["label"], r["image"]) for r in stored] == [
            (r.split, r.label, original.read(r.member or "")) for r in ds.records
        ]


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


def test_pixel_cap_is_read_from_the_header():
    data = make_zip({"cat/1.png": png(1, size=(12, 12)), "dog/1.png": png(2)})
    detail = rejects(IMG, "a.zip", data, limits=InputLimits(max_image_pixels=100))
    assert '"cat/1.png" has too many pixels: 12x12' in detail and "FINETUNE_MAX_IMAGE_PIXELS" in detail
    assert len(parse_upload(IMG, "a.zip", data, limits=InputLimits(max_image_pixels=144)).records) == 2


def test_pillows_own_bomb_limit_still_refuses(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 400 pixels is over twice Pillow's limit: it raises
    data = make_zip({"cat/1.png": png(1, size=(20, 20)), "dog/1.png": png(2)})
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
    monkeypatch.setattr("app.datasets.image_zip.MAX_UNCOMPRESSED_BYTES", 10)
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


# --- hostile or ambiguous uploads ------------------------------------------------------------------------------


def image_file(fmt: str, size: tuple[int, int] = (8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buf, format=fmt)
    return buf.getvalue()


def deflated_zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_every_allowed_format_is_accepted():
    files = {f"cat/1.{fmt.lower()}": image_file(fmt) for fmt in ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")}
    ds = parse_upload(IMG, "a.zip", make_zip({**files, "dog/1.png": png(2)}))
    assert len(ds.records) == 7


@pytest.mark.parametrize(
    ("data", "said"),
    [
        (EPS, "PostScript/EPS"),
        (b"\xc5\xd0\xd3\xc6" + bytes(40), "PostScript/EPS"),
        (b"%PDF-1.4\n1 0 obj\n", "PDF"),
        (image_file("ICO", (16, 16)), "is not a JPEG, PNG, WebP, BMP, GIF or TIFF image"),
        (image_file("PPM"), "is not a JPEG, PNG, WebP, BMP, GIF or TIFF image"),
        (make_zip({"cat/1.png": png(1)}), "nested archives are not accepted"),
    ],
)
def test_formats_outside_the_allow_list_are_refused_before_pillow_sees_them(monkeypatch, data, said):
    from PIL import EpsImagePlugin

    def no_ghostscript(*args, **kwargs):
        raise AssertionError("Ghostscript must never run")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", no_ghostscript)
    detail = rejects(IMG, "a.zip", make_zip({"cat/1.png": png(1), "dog/1.png": png(2), "dog/x.png": data}))
    assert detail.startswith('"dog/x.png" is ') and said in detail


def test_allow_list_holds_even_when_the_signature_matches():
    # A BMP signature on a file Pillow cannot read as BMP: no other plugin (EPS, PDF, ...) is tried.
    detail = rejects(IMG, "a.zip", make_zip({"cat/1.png": png(1), "dog/1.png": png(2), "dog/x.png": b"BM" + EPS}))
    assert '"dog/x.png" is not a readable image' in detail


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # the service ignores it: see image_files
def test_huge_canvas_png_is_refused_from_its_header():
    detail = rejects(IMG, "a.zip", make_zip({"cat/1.png": png(1), "dog/big.png": huge_png(13000, 13000)}))
    assert '"dog/big.png" has too many pixels: 13000x13000 (169.0 megapixels)' in detail
    assert "the limit is 40 megapixels" in detail


def test_zip_bomb_entry_is_refused_from_its_declared_size():
    data = zip_bomb("cat/bomb.png", 1536 * 1024**2, {"cat/1.png": png(1), "dog/1.png": png(2)})
    detail = rejects(IMG, "a.zip", data)
    assert '"cat/bomb.png" unpacks to 1,536.0 MiB; an image file may be at most 64 MiB' in detail


def test_compression_ratio_is_capped_above_one_mib():
    data = deflated_zip({"cat/1.png": png(1), "dog/1.png": png(2), "dog/flat.bmp": bytes(3 * 1024**2)})
    detail = rejects(IMG, "a.zip", data)
    assert '"dog/flat.bmp" unpacks from' in detail and "more than 100:1" in detail
    small = deflated_zip({"cat/1.png": png(1), "dog/1.png": png(2), "dog/flat.bmp": image_file("BMP", (300, 300))})
    assert len(parse_upload(IMG, "a.zip", small).records) == 3  # 264 KiB at well over 100:1, under the floor


def test_per_image_file_cap_is_configurable():
    data = make_zip({"cat/1.png": png(1), "dog/1.png": png(2), "dog/2.bmp": image_file("BMP", (700, 700))})
    detail = rejects(IMG, "a.zip", data, limits=InputLimits(max_image_mb=1))
    assert '"dog/2.bmp" unpacks to 1.4 MiB; an image file may be at most 1 MiB' in detail


def test_entry_whose_header_understates_its_size_is_refused():
    big = png(7, size=(300, 300)) + bytes(5000)  # trailing bytes: the declared size below cuts the real stream
    data = with_declared_size(make_zip({"cat/1.png": png(1), "dog/1.png": png(2), "dog/2.png": big}), "dog/2.png", 100)
    detail = rejects(IMG, "a.zip", data)
    assert detail.startswith('"dog/2.png" could not be extracted from the zip (Bad CRC-32')


def test_total_pixels_of_an_upload_are_capped():
    files = {f"{c}/{i}.png": png(i, size=(600, 600)) for c in ("cat", "dog") for i in range(2)}
    detail = rejects(IMG, "a.zip", make_zip(files), limits=InputLimits(max_dataset_megapixels=1))
    assert "more than 1 megapixels in all" in detail and "FINETUNE_MAX_DATASET_MEGAPIXELS" in detail


def test_class_folders_spelled_two_ways_are_refused():
    detail = rejects(IMG, "a.zip", make_zip({"cat/1.png": png(1), "Cat /2.png": png(2), "dog/1.png": png(3)}))
    assert '"Cat /2.png": the label "Cat " and "cat" ("cat/1.png")' in detail and "spell each class one way" in detail


def test_long_entry_names_are_not_echoed_whole():
    name = "dog/" + "x" * 5000 + ".txt"
    detail = rejects(IMG, "a.zip", make_zip({"cat/1.png": png(1), "dog/1.png": png(2), name: b"hello"}))
    assert len(detail) < 400 and "xxx..." in detail


def test_ragged_csv_rows_are_refused_with_the_line():
    detail = rejects(TXT, "d.csv", csv_bytes(["text,label", "good,pos", "bad, really bad,neg", "ok,pos"]))
    assert detail.startswith("line 3 has 3 fields but the header has 2") and "quote" in detail
    detail = rejects(TXT, "d.csv", csv_bytes(["text,label,split", "good,pos,train", "bad,neg"]))
    assert detail.startswith("line 3 has 2 fields but the header has 3")
    detail = rejects(TXT, "d.csv", csv_bytes(["text,label", "good,pos,"]))
    assert detail.startswith("line 2 has 3 fields")


@pytest.mark.parametrize(
    ("data", "filename", "said"),
    [
        (b"text,label\ngood,pos\nba\x00d,neg\n", "d.csv", "line 3: the text holds the control character U+0000"),
        (b"text,label\ngood,pos\nbad\x1b[31m,neg\n", "d.csv", "line 3: the text holds the control character U+001B"),
        ("text,label\ngood,pos\nbad\u0085,neg\n".encode(), "d.csv", "U+0085"),
        (jsonl_bytes([{"text": "a", "label": "x"}, {"text": "b\u0000", "label": "y"}]), "d.jsonl", "line 2: the text"),
        (jsonl_bytes([{"text": "a", "label": "x"}, {"text": "b", "label": "y\tz"}]), "d.jsonl", "line 2: the label"),
        (b'text,label\ngood,pos\nbad,"n\neg"\n', "d.csv", "the label holds the control character U+000A"),
    ],
)
def test_control_characters_are_refused_with_the_line(data, filename, said):
    assert said in rejects(TXT, filename, data)


def test_tabs_and_line_breaks_in_text_are_fine():
    ds = parse_upload(TXT, "d.csv", b'text,label\n"two\r\nlines\tand a tab",pos\nbad,neg\n')
    assert sorted(r.text for r in ds.records) == ["bad", "two\r\nlines\tand a tab"]


def test_text_length_is_capped():
    detail = rejects(
        TXT, "d.csv", csv_bytes(["text,label", "short,pos", "far too long,neg"]), limits=InputLimits(max_text_chars=10)
    )
    assert detail.startswith("line 3: the text has 12 characters; the limit is 10")
    detail = rejects(TXT, "d.jsonl", jsonl_bytes([{"text": "x" * 100_001, "label": "a"}]))
    assert "line 1: the text has 100,001 characters; the limit is 100,000 (FINETUNE_MAX_TEXT_CHARS)" in detail


def test_csv_field_beyond_the_csv_modules_limit_names_the_line_and_the_cap():
    detail = rejects(TXT, "d.csv", csv_bytes(["text,label", "a,pos", "x" * 200_000 + ",neg"]))
    assert "line 3" in detail and "at most 100,000 (FINETUNE_MAX_TEXT_CHARS)" in detail


@pytest.mark.parametrize(
    ("rows", "said"),
    [
        ([{"text": "a", "label": 1}, {"text": "b", "label": "1"}], 'line 2: the label "1" and 1 (line 1)'),
        ([{"text": "a", "label": True}, {"text": "b", "label": "true"}], 'line 2: the label "true" and true (line 1)'),
        ([{"text": "a", "label": "True"}, {"text": "b", "label": " true "}], 'the label " true " and "True" (line 1)'),
        ([{"text": "a", "label": 1}, {"text": "b", "label": True}], "line 2: the label true and 1 (line 1)"),
        ([{"text": "a", "label": "pos"}, {"text": "b", "label": "POS"}], 'the label "POS" and "pos" (line 1)'),
    ],
)
def test_jsonl_labels_that_collide_after_normalising_are_refused(rows, said):
    rows = rows + [{"text": "c", "label": "other"}]
    detail = rejects(TXT, "d.jsonl", jsonl_bytes(rows))
    assert said in detail and "spell each class one way" in detail


@pytest.mark.parametrize(
    ("labels", "said"),
    [
        (["1", '"""1"""'], 'line 3: the label "\\"1\\"" and "1" (line 2)'),
        (["True", " True "], 'line 3: the label " True " and "True" (line 2)'),
        (["1", "1.0"], 'line 3: the label "1.0" and "1" (line 2)'),
        (["1", "true"], 'line 3: the label "true" and "1" (line 2)'),
        (["Yes", "yes"], 'line 3: the label "yes" and "Yes" (line 2)'),
    ],
)
def test_csv_labels_that_collide_after_normalising_are_refused(labels, said):
    lines = ["text,label"] + [f"t{i},{label}" for i, label in enumerate(labels)] + ["z,other"]
    assert said in rejects(TXT, "d.csv", csv_bytes(lines))


def test_labels_spelled_the_same_way_throughout_are_stripped_and_kept():
    ds = parse_upload(TXT, "d.csv", csv_bytes(["text,label", "a, pos", "b, neg", "c, pos"]))
    assert ds.labels == ["neg", "pos"]
    ds = parse_upload(TXT, "d.jsonl", jsonl_bytes([{"text": "a", "label": True}, {"text": "b", "label": False}]))
    assert ds.labels == ["false", "true"]


@pytest.mark.parametrize(
    ("label", "said"),
    [
        (1.5, "is a number with a fraction"),
        (1.0, "is a number with a fraction"),
        (None, "is null"),
        (["a"], "is a list"),
        ({"a": 1}, "is an object"),
    ],
)
def test_unclear_jsonl_labels_are_refused(label, said):
    detail = rejects(TXT, "d.jsonl", jsonl_bytes([{"text": "a", "label": "x"}, {"text": "b", "label": label}]))
    assert detail == f"line 2: 'label' {said}; a label must be a string, a whole number or true/false"


def test_long_labels_are_refused():
    detail = rejects(TXT, "d.jsonl", jsonl_bytes([{"text": "a", "label": "x"}, {"text": "b", "label": 10**300}]))
    assert detail.startswith("line 2: the label has 301 characters; a label may have at most 200")


def test_hostile_json_lines_are_refused_with_the_line():
    deep = b'{"text": "a", "label": "x"}\n' + b"[" * 100_000 + b"]" * 100_000 + b"\n"
    assert "line 2 nests too deeply" in rejects(TXT, "d.jsonl", deep)
    giant = b'{"text": "a", "label": "x"}\n{"text": "b", "label": ' + b"9" * 5000 + b"}\n"
    assert "line 2 holds a number too long to read" in rejects(TXT, "d.jsonl", giant)
    twice = b'{"text": "a", "label": "x"}\n{"text": "b", "label": "y", "label": "x"}\n'
    assert "line 2 has the key 'label' twice" in rejects(TXT, "d.jsonl", twice)


def test_text_column_equal_to_label_column_is_refused():
    for name, data in (("d.csv", csv_bytes(["text,label", "a,x", "b,y"])), ("d.jsonl", jsonl_bytes([{"text": "a"}]))):
        detail = rejects(TXT, name, data, label_column="text")
        assert detail.startswith("text_column and label_column are both 'text'")


def test_csv_header_naming_a_used_column_twice_is_refused():
    detail = rejects(TXT, "d.csv", csv_bytes(["text,label,label", "a,x,y", "b,y,x"]))
    assert detail == "the CSV header names the column 'label' twice; rename or remove one"


def test_duplicates_within_one_split_are_not_called_a_leak():
    rows = [{"text": "same", "label": "a", "split": "train"}, {"text": "same", "label": "a", "split": "train"}]
    rows += [{"text": f"t{i}", "label": "ab"[i % 2], "split": ["train", "val", "test"][i % 3]} for i in range(12)]
    ds = parse_upload(TXT, "d.jsonl", jsonl_bytes(rows))
    assert not any("more than one split" in w for w in ds.warnings)
    assert "1 example appears more than once within the train split (e.g. line 1 and line 2)" in " ".join(ds.warnings)


def test_leak_example_names_two_different_splits():
    rows = [{"text": "same", "label": "a", "split": s} for s in ("train", "train", "test")]
    rows += [{"text": f"t{i}", "label": "ab"[i % 2], "split": ["train", "val", "test"][i % 3]} for i in range(12)]
    ds = parse_upload(TXT, "d.jsonl", jsonl_bytes(rows))
    leak = next(w for w in ds.warnings if "more than one split" in w)
    assert "(e.g. line 1 (train) and line 3 (test))" in leak
    assert any("within the train split (e.g. line 1 and line 2)" in w for w in ds.warnings)
