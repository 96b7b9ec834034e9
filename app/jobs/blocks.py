"""A model's stack of encoder blocks or stages, found from its parameter names alone, for `freeze: "last_n"`.

The same rule runs at submit (on the names in the base model's safetensors headers, without loading it) and in the
worker (on the model's named parameters): the block list is the outermost `<prefix>.<name>.<i>.` whose name is one of
BLOCK_LISTS (BERT/MiniLM and ViT `encoder.layer`, DistilBERT `transformer.layer`, timm `blocks` (EfficientNet's
stages of blocks, ViT) and `stages` (ConvNeXt), Hugging Face ResNet/ConvNeXt `encoder.stages`, Swin
`encoder.layers`); when several are found, the one holding the most weights. Models without one (timm's ResNet names
its stages layer1..layer4) are a 422 that says so.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

BLOCK_LISTS = ("layer", "layers", "blocks", "block", "stages")
HEADER_LIMIT = 100 * 1024 * 1024
_BLOCK = re.compile(r"^((?:.*?\.)?(?:" + "|".join(BLOCK_LISTS) + r"))\.(\d+)\.")


@dataclass(frozen=True)
class Blocks:
    prefix: str  # e.g. "bert.encoder.layer"
    count: int

    def block_of(self, name: str) -> int | None:
        """Which block a parameter belongs to, or None when it is outside the list."""
        if not name.startswith(self.prefix + "."):
            return None
        index = name[len(self.prefix) + 1 :].split(".", 1)[0]
        return int(index) if index.isdigit() else None


def find_blocks(names: Iterable[str]) -> Blocks | None:
    """The model's block list from its parameter names, or None when it has none this rule recognises."""
    indices: dict[str, set[int]] = {}
    weights: dict[str, int] = {}
    for name in names:
        match = _BLOCK.match(name)  # the shortest prefix: the outermost list on this name's path
        if match:
            prefix = match.group(1)
            indices.setdefault(prefix, set()).add(int(match.group(2)))
            weights[prefix] = weights.get(prefix, 0) + 1
    if not indices:
        return None
    prefix = max(indices, key=lambda p: (weights[p], p))
    return Blocks(prefix, max(indices[prefix]) + 1)


def weight_names(folder: Path) -> list[str]:
    """The tensor names in a model folder's safetensors files (their JSON headers only)."""
    names: list[str] = []
    for path in sorted(Path(folder).glob("*.safetensors")):
        try:
            with path.open("rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                if length > HEADER_LIMIT:
                    continue
                header = json.loads(f.read(length))
        except (OSError, ValueError, struct.error):
            continue
        if isinstance(header, dict):
            names.extend(name for name in header if name != "__metadata__")
    return names
