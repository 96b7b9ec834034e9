"""What one hostile or oversized request costs the API process: its peak and resident memory, and the time to answer.

    python bench/hostile_memory.py [--upload-mb 1000] [--cases anonymous_upload,...] [--keep]

The service as users run it (`python -m app.cli up`, embedded default, a temporary FINETUNE_VAR_DIR, a tiny BERT as
the only base model), one request at a time on loopback. Before each request the API process's peak RSS is reset
(`echo 5 > /proc/PID/clear_refs`); after it, the figures are VmHWM (peak) and VmRSS (resident) minus VmRSS before.

Cases:
  anonymous_upload   POST /datasets with no key, an --upload-mb chunked body        -> 401 before any body is read
  wrong_key_predict  POST /predict with a wrong key, a 500 MB Content-Length        -> 413 before anything is read
  upload_zip         POST /datasets with a key: a real zip of about --upload-mb MB of PNG photos of noise (stored,
                     so the upload is spooled to disk, every image checked, then copied into the store)  -> 201
  zip_bomb           a 1.5 MiB zip holding one 1.5 GiB entry                         -> 422
  huge_png_dataset   a 13000 x 13000 PNG (21 KiB) in a dataset zip                   -> 422
  huge_png_predict   the same PNG to /predict as base64                              -> 422
  predict_text_caps  /predict with 256 texts of 3,906 characters (the 1,000,000-character budget) on a tiny model
Target (issue 11): the 1 GB upload raises API memory by less than 100 MB; bombs and caps cost no more than a few MB.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from app import processes  # noqa: E402
from tests.factories import build_tiny_text_model, text_csv  # noqa: E402
from tests.hostile import huge_png, zip_bomb  # noqa: E402

MB = 1024 * 1024


def _status(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            name, value = line.split(":", 1)
            fields[name] = int(value.split()[0]) // 1024  # MB
    return fields


def measure(pid: int, name: str, send) -> dict:
    """Reset the API's peak RSS, send one request, and report its status, time and memory."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    before = _status(pid)["VmRSS"]
    started = time.perf_counter()
    response = send()
    seconds = time.perf_counter() - started
    after = _status(pid)
    figure = {
        "case": name,
        "status": response.status_code,
        "seconds": round(seconds, 2),
        "peak_mb": after["VmHWM"] - before,
        "resident_mb": after["VmRSS"] - before,
        "detail": (response.json().get("detail", "") if response.status_code >= 400 else "")[:90],
    }
    C.emit(bench="hostile_memory", **figure)
    return figure


def noise_zip(path: Path, megabytes: int) -> int:
    """A zip of 512 x 512 PNGs of noise (incompressible: each about 0.75 MB) in two class folders; its image count."""
    rng = np.random.default_rng(0)
    count = 0
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        while path.stat().st_size < megabytes * MB:
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(buf, format="PNG")
            zf.writestr(f"{'ab'[count % 2]}/{count:05d}.png", buf.getvalue())
            count += 1
    return count


def chunks(total: int, size: int = MB) -> Iterator[bytes]:
    piece = b"x" * size
    for _ in range(total // size):
        yield piece


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upload-mb", type=int, default=1000)
    parser.add_argument(
        "--cases",
        default="anonymous_upload,wrong_key_predict,upload_zip,zip_bomb,huge_png_dataset,huge_png_predict,"
        "predict_text_caps",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary var folder")
    args = parser.parse_args()
    cases = args.cases.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="hostile-memory-"))
    import psutil

    models = tmp / "models"
    build_tiny_text_model(models / "tiny-bert")
    env = C.service_env(tmp / "var", models)
    port = processes.free_port()
    up = processes.start(processes.cli_command("up", "--port", str(port)), env, tmp / "up.log")
    figures = []
    try:
        url = f"http://127.0.0.1:{port}"
        processes.wait_ready(url, up, timeout=300)
        api = next(p for p in psutil.Process(up.pid).children(recursive=True) if "uvicorn" in " ".join(p.cmdline()))
        key = processes.create_key(env, "bench")
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=1800)
        anonymous = httpx.Client(base_url=url, timeout=600)
        C.log(f"API pid {api.pid}, resident {_status(api.pid)['VmRSS']} MB")
        if "anonymous_upload" in cases:
            figures.append(measure(api.pid, "anonymous_upload", lambda: anonymous.post(
                "/datasets", content=chunks(args.upload_mb * MB),
                headers={"Content-Type": "multipart/form-data; boundary=x"},
            )))  # fmt: skip
        if "wrong_key_predict" in cases:
            wrong = {"Authorization": "Bearer ftk_wrong", "Content-Type": "application/json"}
            figures.append(measure(api.pid, "wrong_key_predict", lambda: anonymous.post(
                "/predict", content=chunks(500 * MB), headers={**wrong, "Content-Length": str(500 * MB)},
            )))  # fmt: skip
        if "upload_zip" in cases:
            path = tmp / "photos.zip"
            C.log(f"building a {args.upload_mb} MB zip of noise PNGs")
            images = noise_zip(path, args.upload_mb)
            C.log(f"{images} images, {path.stat().st_size / MB:.0f} MB; uploading")

            def upload() -> httpx.Response:
                with open(path, "rb") as f:
                    return client.post(
                        "/datasets", files={"file": ("photos.zip", f)}, data={"task": "image_classification"}
                    )

            figures.append(measure(api.pid, "upload_zip", upload))
        if "zip_bomb" in cases:
            bomb = zip_bomb("cat/bomb.png", int(1.5 * 1024**3))
            figures.append(measure(api.pid, "zip_bomb", lambda: client.post(
                "/datasets", files={"file": ("bomb.zip", bomb)}, data={"task": "image_classification"},
            )))  # fmt: skip
        png = huge_png(13000, 13000)
        if "huge_png_dataset" in cases:
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as zf:
                zf.writestr("a/huge.png", png)
                zf.writestr("b/huge.png", png)
            figures.append(measure(api.pid, "huge_png_dataset", lambda: client.post(
                "/datasets", files={"file": ("huge.zip", buf.getvalue())}, data={"task": "image_classification"},
            )))  # fmt: skip
        if "huge_png_predict" in cases:
            body = {"images": [base64.b64encode(png).decode()]}
            figures.append(measure(api.pid, "huge_png_predict", lambda: client.post("/predict", json=body)))
        if "predict_text_caps" in cases:
            with C.Client(url, key, timeout=600) as sdk:  # the setup as a user's script; the measured call stays raw
                dataset = sdk.datasets.upload(text_csv(), "text_classification", filename="r.csv")
                job = sdk.jobs.create(dataset.id, "tiny-bert", {"epochs": 1, "max_steps": 2, "batch_size": 16})
                model_id = C.wait_for_job(sdk, job.id, timeout=600).model_id
                sdk.predict(["warm up"], model=model_id)  # load the model first
            texts = ["word " * 781] * 256  # 3,905 characters each, just under the 1,000,000 budget
            figures.append(measure(api.pid, "predict_text_caps", lambda: client.post(
                "/predict", json={"model": model_id, "texts": texts},
            )))  # fmt: skip
    finally:
        processes.stop([up], timeout=30)
        if args.keep:
            C.log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(C.table(figures, ["case", "status", "seconds", "peak_mb", "resident_mb", "detail"], title="API memory"))
    print(json.dumps({"upload_mb": args.upload_mb}))


if __name__ == "__main__":
    main()
