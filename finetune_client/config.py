"""Where the client finds the service and its key: arguments, then FINETUNE_URL / FINETUNE_API_KEY, then a TOML file.

The file (FINETUNE_CONFIG, default ~/.config/finetune/config.toml, or under $XDG_CONFIG_HOME) holds:

    url = "http://127.0.0.1:8000"
    api_key = "ftk_..."

`finetune configure` writes it, readable by its owner only.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from finetune_client.errors import ConfigError

DEFAULT_URL = "http://127.0.0.1:8000"  # where `finetune up` listens


def config_path() -> Path:
    """The config file this process reads and `finetune configure` writes."""
    if os.environ.get("FINETUNE_CONFIG"):
        return Path(os.environ["FINETUNE_CONFIG"]).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "finetune" / "config.toml"


def read_config_file(path: Path | None = None) -> dict[str, str]:
    """The file's `url` and `api_key` (an absent file is empty; an unreadable one is a ConfigError)."""
    path = path or config_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror}") from exc
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"the config file {path} is not valid TOML ({exc}); see `finetune configure`") from exc
    return {k: str(values[k]) for k in ("url", "api_key") if values.get(k)}


def write_config_file(url: str, api_key: str, path: Path | None = None) -> Path:
    """Write the config file (mode 0600: it holds a key)."""
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as f:
        f.write(f"url = {_toml_string(url)}\napi_key = {_toml_string(api_key)}\n")
    os.chmod(path, 0o600)  # an existing file keeps its mode through O_CREAT
    return path


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class Connection:
    url: str
    api_key: str


def resolve(url: str | None = None, api_key: str | None = None) -> Connection:
    """The URL and key to use: the arguments, else the environment, else the config file (URL default: local)."""
    if url and api_key:
        return Connection(url.rstrip("/"), api_key)
    url = url or os.environ.get("FINETUNE_URL") or None
    api_key = api_key or os.environ.get("FINETUNE_API_KEY") or None
    if not (url and api_key):
        from_file = read_config_file()
        url = url or from_file.get("url")
        api_key = api_key or from_file.get("api_key")
    if not api_key:
        raise ConfigError(
            f"No API key: pass api_key=, set FINETUNE_API_KEY, or write it to {config_path()} "
            "(`finetune configure`). An admin creates keys with `finetune keys create --team NAME`."
        )
    return Connection((url or DEFAULT_URL).rstrip("/"), api_key)
