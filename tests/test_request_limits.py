"""Limits before work: bodies capped per route before they are read, and the key checked before any body is read.

Raw sockets send the headers of a huge request and then nothing: an answer that arrives anyway proves the service
decided without reading (or spooling) the body. The API's resident memory is read from /proc before and after.
"""

from __future__ import annotations

import json
import socket
from urllib.parse import urlparse

import pytest

from tests.conftest import Service

GB = 1024**3


def _rss_kb(service: Service) -> int:
    with open(f"/proc/{service.processes['api'].pid}/status") as f:
        status = f.read()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


def _send_head(service: Service, head: str, body: bytes = b"", timeout: float = 20) -> tuple[int, dict, str]:
    """Send a request head (and maybe part of a body), then read the answer: (status, headers, body text)."""
    url = urlparse(service.url)
    with socket.create_connection((url.hostname, url.port), timeout=timeout) as sock:
        try:
            sock.sendall(head.encode("latin-1") + b"\r\n" + body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the service answered and closed while we were still sending: read its answer
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head_part, _, rest = data.partition(b"\r\n\r\n")
    lines = head_part.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, rest.decode(errors="replace")


def _length(data: bytes) -> int:
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
    for line in head.split("\r\n"):
        if line.startswith("content-length:"):
            return int(line.split(":", 1)[1])
    return 0


def _head(method: str, path: str, headers: dict[str, str]) -> str:
    lines = [f"{method} {path} HTTP/1.1", "Host: test", *(f"{k}: {v}" for k, v in headers.items())]
    return "\r\n".join(lines) + "\r\n"


@pytest.mark.parametrize("auth", [None, "Bearer ftk_not-a-real-key", "Basic dXNlcjpwYXNz"])
@pytest.mark.parametrize(("path", "size"), [("/datasets", GB // 2), ("/predict", 30 * 1024**2), ("/jobs", 1000 * 1024)])
def test_no_valid_key_no_body_read(service: Service, path: str, size: int, auth: str | None) -> None:
    """Bodies under the route's cap (over it is a 413 before anything else, see below): 401 before any is read."""
    before = _rss_kb(service)
    headers = {"Content-Type": "multipart/form-data; boundary=xyz", "Content-Length": str(size)}
    if auth:
        headers["Authorization"] = auth
    status, reply_headers, body = _send_head(service, _head("POST", path, headers))
    assert status == 401
    assert reply_headers["content-type"] == "application/problem+json"
    assert "API key" in json.loads(body)["detail"]
    assert _rss_kb(service) - before < 20_000  # KB: nothing of the body was buffered


@pytest.mark.parametrize(
    ("path", "size", "limit_words"),
    [
        ("/predict", 33 * 1024 * 1024, "32 MB for one /predict request"),
        ("/jobs", 2 * 1024 * 1024, "1024 KB for a JSON request"),
        ("/aliases/production", 2 * 1024 * 1024, "1024 KB for a JSON request"),
        ("/datasets", 2 * GB, "FINETUNE_MAX_UPLOAD_MB"),
    ],
)
def test_declared_length_over_the_cap_is_413_before_reading(
    service: Service, key: str, path: str, size: int, limit_words: str
) -> None:
    method = "PUT" if path.startswith("/aliases") else "POST"
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json", "Content-Length": str(size)}
    status, reply_headers, body = _send_head(service, _head(method, path, headers))
    assert status == 413
    assert reply_headers["content-type"] == "application/problem+json"
    assert limit_words in json.loads(body)["detail"]


def test_chunked_body_over_the_cap_is_413(service: Service, key: str) -> None:
    """No Content-Length: the body is counted as it arrives and reading stops at the cap."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json", "Transfer-Encoding": "chunked"}
    piece = b"x" * 65536
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(40)) + b"0\r\n\r\n"  # 2.5 MiB
    status, reply_headers, body = _send_head(service, _head("POST", "/jobs", headers), chunks)
    assert status == 413
    assert reply_headers["content-type"] == "application/problem+json"
    assert "1024 KB" in json.loads(body)["detail"]


def test_bad_content_length_is_400(service: Service, key: str) -> None:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json", "Content-Length": "12abc"}
    status, _, _ = _send_head(service, _head("POST", "/jobs", headers))
    assert status == 400


def test_bodies_under_the_caps_still_work(service: Service, key: str) -> None:
    """A normal JSON request passes the middleware (and is answered on its merits: here, a 422 about the spec)."""
    with service.client(key) as client:
        response = client.post("/jobs", json={"dataset_id": "nope", "base_model": "tiny-bert"})
    assert response.status_code in (404, 422)
    assert response.headers["content-type"] == "application/problem+json"
