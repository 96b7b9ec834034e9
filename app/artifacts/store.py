"""The artifact store: datasets, checkpoints and models under keys, in a local folder or S3 (fsspec)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from app.config import Settings


class ArtifactStore:
    """Keys like `datasets/<id>/data.jsonl` under one root URL (a folder, or `s3://bucket/prefix`)."""

    def __init__(self, root_url: str, cache_dir: Path | None = None, **storage_options: object) -> None:
        self.fs, root = fsspec.core.url_to_fs(root_url, **storage_options)
        self.root = root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.cache_dir = cache_dir
        if self.is_local:
            Path(self.root).mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> ArtifactStore:
        """The store the settings name; S3 listings are not cached, since other processes write there too."""
        options: dict[str, object] = {}
        if settings.artifacts_url.startswith("s3://"):
            options["use_listings_cache"] = False
            if settings.s3_endpoint_url:
                options["endpoint_url"] = settings.s3_endpoint_url
        return cls(settings.artifacts_url, cache_dir=settings.var_dir / "cache", **options)

    def path(self, key: str) -> str:
        """The store path of `key`."""
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"invalid artifact key {key!r}")
        return f"{self.root}/{key}"

    def put_bytes(self, key: str, data: bytes) -> None:
        """Write `data` at `key` atomically where the store allows it (local: write then rename)."""
        path = self.path(key)
        if self.is_local:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            tmp = f"{path}.tmp-{os.getpid()}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        else:
            self.fs.pipe_file(path, data)

    def put_file(self, local_file: Path, key: str) -> None:
        """Copy a local file to `key` without reading it into memory (local: copy then rename)."""
        path = self.path(key)
        if self.is_local:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            tmp = f"{path}.tmp-{os.getpid()}"
            shutil.copyfile(local_file, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        else:
            self.fs.put_file(str(local_file), path)

    def get_bytes(self, key: str) -> bytes:
        return self.fs.cat_file(self.path(key))

    def iter_bytes(self, key: str, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        """The file at `key` in chunks, never read whole (a download streams it)."""
        with self.fs.open(self.path(key), "rb") as f:
            while chunk := f.read(chunk_size):
                yield chunk

    def exists(self, key: str) -> bool:
        return self.fs.exists(self.path(key))

    def put_dir(self, local_dir: Path, key: str, last: str | None = None) -> None:
        """Copy a local folder to `key`. Local: into a staging folder, then one rename; S3: file `last` goes last."""
        files = sorted((p for p in Path(local_dir).rglob("*") if p.is_file()), key=lambda p: p.name == last)
        if self.is_local:
            target = Path(self.path(key))
            staging = target.with_name(f"{target.name}.staging-{os.getpid()}")
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(local_dir, staging)
            for file in staging.rglob("*"):
                if file.is_file():
                    with open(file, "rb") as f:
                        os.fsync(f.fileno())
            shutil.rmtree(target, ignore_errors=True)
            os.rename(staging, target)
            return
        for file in files:
            self.put_bytes(f"{key}/{file.relative_to(local_dir).as_posix()}", file.read_bytes())

    def local_dir(self, key: str) -> Path:
        """A local folder holding the files under `key`: the folder itself when local, else a cached copy."""
        if self.is_local:
            return Path(self.path(key))
        if self.cache_dir is None:
            raise RuntimeError("a remote artifact store needs a cache_dir to materialise folders")
        target = self.cache_dir / key
        if not (target / ".complete").exists():
            tmp = target.with_name(f"{target.name}.part-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            self.fs.get(self.path(key) + "/", str(tmp) + "/", recursive=True)
            (tmp / ".complete").touch()
            try:
                os.rename(tmp, target)
            except OSError:
                # another process cached the same (immutable) key first
                shutil.rmtree(tmp, ignore_errors=True)
                if not (target / ".complete").exists():
                    raise
        return target

    def size(self, key: str) -> int:
        """The bytes stored under `key` (a file, or everything below a prefix); 0 when there is nothing."""
        return int(self.fs.du(self.path(key), total=True))

    def delete_prefix(self, key: str) -> None:
        """Remove everything under `key`; missing is fine."""
        path = self.path(key)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)


def folder_bytes(folder: Path) -> int:
    """The total size of the files under a local folder (what uploading it stores)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
