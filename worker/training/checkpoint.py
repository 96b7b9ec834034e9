"""Checkpoints: one folder per save, safetensors for tensors and JSON for the rest; nothing is pickled.

A model with frozen parameters (an adapter, a frozen backbone or early blocks) is checkpointed as what trains plus its
buffers (BatchNorm statistics move even under a frozen backbone): the frozen weights are the base model's, which
every attempt loads afresh, so the checkpoint stays small and a resume stays exact."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_file, save_model

from worker.training.state import FitState

MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
PARTIAL = {"holds": "trainable parameters and buffers"}  # the weights file's metadata when it is not the whole model


def save_checkpoint(
    folder: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: FitState,
    scaler: torch.amp.GradScaler | None = None,
) -> Path:
    """Write a complete checkpoint to a staging folder, fsync it, then rename it into place; `scaler`: fp16's loss
    scale and its growth tracker (plain numbers)."""
    staging = folder.with_name(folder.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_weights(model, staging / WEIGHTS)
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    save_file(opt_tensors, str(staging / "optimizer.safetensors"))
    save_file(_rng_tensors(), str(staging / "rng.safetensors"))
    meta = {
        "state": asdict(state),
        "optimizer": opt_meta,
        "scheduler": scheduler.state_dict(),
        "python_rng": _python_rng_state(),
        **({"grad_scaler": scaler.state_dict()} if scaler is not None else {}),
    }
    (staging / "trainer_state.json").write_text(json.dumps(meta))
    _write_manifest(staging)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(staging, folder)
    return folder


def load_checkpoint(
    folder: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler | None = None,
) -> FitState:
    """Restore everything save_checkpoint wrote; refuses a folder whose checksums do not match. A run in fp16
    (`scaler`) resumed from a checkpoint of another precision starts from a fresh scale."""
    verify_manifest(folder)
    restore_weights(model, folder / WEIGHTS)
    meta = json.loads((folder / "trainer_state.json").read_text())
    optimizer.load_state_dict(_unflatten_optimizer(load_file(str(folder / "optimizer.safetensors")), meta["optimizer"]))
    scheduler.load_state_dict(meta["scheduler"])
    if scaler is not None and "grad_scaler" in meta:
        scaler.load_state_dict(meta["grad_scaler"])
    rng = load_file(str(folder / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available() and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"])
    version, internal, gauss = meta["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    return FitState(**meta["state"])


def load_weights(folder: Path, model: torch.nn.Module) -> None:
    """Only the model weights of a checkpoint (for the final evaluation)."""
    verify_manifest(folder)
    restore_weights(model, folder / WEIGHTS)


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """The whole model when everything trains; else its trainable parameters and its buffers."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    if len(trainable) == len(list(model.parameters())):
        save_model(model, str(path))
        return
    kept = trainable | {name for name, _ in model.named_buffers()}
    tensors = {name: t.detach().cpu().contiguous().clone() for name, t in model.state_dict().items() if name in kept}
    save_file(tensors, str(path), metadata={"format": "pt", **PARTIAL})


def restore_weights(model: torch.nn.Module, path: Path) -> None:
    """Load what save_weights wrote; a partial file must hold every parameter that trains and nothing unknown."""
    with safe_open(str(path), framework="pt") as f:
        partial = (f.metadata() or {}).get("holds") == PARTIAL["holds"]
    if not partial:
        load_model(model, str(path))
        return
    tensors = load_file(str(path))
    _, unexpected = model.load_state_dict(tensors, strict=False)
    lacking = [name for name, p in model.named_parameters() if p.requires_grad and name not in tensors]
    if unexpected or lacking:
        raise ValueError(
            f"its weights do not fit this model ({len(unexpected)} unknown, {len(lacking)} trainable missing: "
            f"{', '.join([*unexpected, *lacking][:3])})"
        )


def verify_manifest(folder: Path) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    for name, digest in manifest["sha256"].items():
        if _sha256(folder / name) != digest:
            raise ValueError(f"checkpoint {folder.name}: {name} does not match its checksum")


def _write_manifest(folder: Path) -> None:
    digests = {p.name: _sha256(p) for p in sorted(folder.iterdir()) if p.is_file()}
    (folder / MANIFEST).write_text(json.dumps({"sha256": digests}))
    for p in folder.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _flatten_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state as named tensors plus JSON metadata (per-param scalars kept exact)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, param_state in state_dict["state"].items():
        for name, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_tensors() -> dict[str, torch.Tensor]:
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state()
    return rng


def _python_rng_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]
