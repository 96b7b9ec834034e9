"""Which layers a LoRA adapter adapts, and whether a spec's `target_modules` can work on a model.

The same rules run at submit (on the base model's module tree, built from its config on the meta device: no weights
are read) and in the worker (on the loaded model), so a spec that cannot train is a 422 that names the layers the
model has. Layer names are the runtime ones (transformers 5 renames some, e.g. ViT's query is q_proj), which is why
the check does not read the names in the safetensors headers as app/jobs/blocks.py does.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

from app.tasktypes.common import HEAD_NAMES
from app.tasktypes.types import TaskType

# Attention projections by the names the architectures we serve give them: BERT/MiniLM (query, value), ViT in
# transformers 5 and most decoders (q_proj, v_proj), DistilBERT (q_lin, v_lin), timm's ViT (one fused qkv).
ATTENTION_TARGETS = ("query", "value", "q_proj", "v_proj", "q_lin", "v_lin", "qkv")
ADAPTABLE = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
SUPPORTED = "Linear, Embedding and Conv1d/2d/3d layers with groups=1 (not depthwise convolutions)"


# Convolutional models: LoRA spread over the depth, on the narrowing 1x1 convolutions (EfficientNet's projections,
# ResNet bottlenecks' reductions) past the first stage and the deepest 1x1 one (EfficientNet's conv_head), at the
# highest rank up to the requested one whose updates together add at most this share of the model's parameters, so
# that with the head it stays under 2% trainable. Measured on EfficientNet-Lite0 and MNIST (bench/README.md): spread
# at r=4 (1.8% with a 10-class head) learns what the last block alone at r=8 cannot (96.9% against 90.2%, full
# fine-tuning 97.9%).
CONV_ADAPTER_BUDGET = 0.015


def default_targets(model: torch.nn.Module, r: int = 8) -> list[str]:
    """The layers LoRA adapts when a spec names none (see `default_adapter`)."""
    return default_adapter(model, r)[0]


def default_adapter(model: torch.nn.Module, r: int = 8) -> tuple[list[str], int, str]:
    """The layers to adapt when a spec names none, the rank to adapt them at, and why: peft's default for the
    architecture, else the attention's query and value projections, at rank `r`; else, for convolutional models, the
    pointwise (1x1, groups=1) convolutions spread over the depth at the highest rank up to `r` within
    CONV_ADAPTER_BUDGET, or, when even rank 1 does not fit, the deepest ones that fit at `r` (at least one); ([], r)
    when it has none of these."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
        return list(TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING[model_type]), r, "peft's default layers"
    modules = list(model.named_modules())
    linear = {_last(name) for name, m in modules if isinstance(m, torch.nn.Linear)}
    attention = sorted(linear & set(ATTENTION_TARGETS))
    if attention:
        return attention, r, "the attention's query and value projections"
    excite = {name for name, m in modules if "squeeze" in type(m).__name__.lower() or type(m).__name__ == "SEModule"}
    pointwise = [(name, m) for name, m in modules if _pointwise_conv(m) and name.rsplit(".", 1)[0] not in excite]
    if not pointwise:
        return [], r, "no layer LoRA adapts by default"
    budget = CONV_ADAPTER_BUDGET * sum(p.numel() for p in model.parameters())
    # Squeeze-and-excitation gates (1x1 convolutions on pooled vectors) are left out: they reweight channels. So are
    # the narrowest ones, the first stage's: its features (edges, textures) transfer as they are, and at the highest
    # resolution they cost the most to train. Measured on EfficientNet-Lite0 and MNIST: with its first block adapted,
    # validation accuracy swung by 6 points between evaluations, test 94.4% against 95.7%, at 0.75x the speed.
    narrowing = [(name, m) for name, m in pointwise[:-1] if m.out_channels < m.in_channels]
    narrowest = min((m.out_channels for _, m in narrowing), default=0)
    spread = [(name, m) for name, m in narrowing if m.out_channels > narrowest] + [pointwise[-1]]
    rank = min(r, int(budget // sum(m.in_channels + m.out_channels for _, m in spread)))
    if rank >= 1:
        why = f"the narrowing 1x1 convolutions past the first stage and the deepest one ({len(spread)} layers)"
        why += f" at rank {rank}" + (
            f" (lowered from {r} to keep the adapter within {CONV_ADAPTER_BUDGET:.1%} of the parameters)"
            if rank < r
            else ""
        )
        return [name for name, _ in spread], rank, why
    chosen: list[str] = []
    cost = 0
    for name, module in reversed(pointwise):
        cost += r * (module.in_channels + module.out_channels)
        if chosen and cost > budget:
            break
        chosen.append(name)
    return chosen[::-1], r, f"the deepest 1x1 convolutions within {CONV_ADAPTER_BUDGET:.1%} of the parameters"


def target_problem(model: torch.nn.Module, targets: list[str], head_modules: set[str]) -> str | None:
    """What is wrong with adapting `targets` (peft's rule: a layer's full name or the end of it) in `model`, in words
    that say what to change; None when nothing is."""
    if not targets:
        return (
            "this model has no layers LoRA adapts by default (attention query/value projections or 1x1 "
            f"convolutions); name them in adapter.target_modules: {', '.join(adaptable_layer_names(model, head_modules)[:40])}"
        )
    modules = dict(model.named_modules())
    hits = {t: [name for name in modules if name == t or name.endswith("." + t)] for t in targets}
    missing = [t for t, names in hits.items() if not names]
    if missing:
        return (
            f"adapter.target_modules {missing} name no layer of this model; the layers LoRA can adapt are "
            f"{', '.join(adaptable_layer_names(model, head_modules)[:40])}"
        )
    reached = {name for names in hits.values() for name in names}
    grouped = sorted(name for name in reached if getattr(modules[name], "groups", 1) > 1)
    if grouped:
        return (
            "adapter.target_modules reach grouped (depthwise) convolutions, whose LoRA updates cannot be merged into "
            f"the exported weights: {', '.join(grouped[:10])}. LoRA here supports {SUPPORTED}; this model's are "
            f"{', '.join(adaptable_layer_names(model, head_modules)[:40])}"
        )
    unsupported = sorted(name for name in reached if not isinstance(modules[name], ADAPTABLE))
    if unsupported:
        kinds = sorted({type(modules[name]).__name__ for name in unsupported})
        return (
            f"adapter.target_modules reach layers LoRA cannot adapt ({', '.join(kinds)}: "
            f"{', '.join(unsupported[:10])}); it supports {SUPPORTED}"
        )
    head = sorted(name for name in reached if any(name == h or name.startswith(h + ".") for h in head_modules))
    if head:
        return f"adapter.target_modules name the classification head ({', '.join(head)}), which trains in full"
    return None


def adaptable_layer_names(model: torch.nn.Module, head_modules: set[str]) -> list[str]:
    """The distinct last parts of the names of layers LoRA can adapt outside the head, for messages."""
    names = {
        _last(name)
        for name, m in model.named_modules()
        if isinstance(m, ADAPTABLE) and getattr(m, "groups", 1) == 1 and name and name not in head_modules
    }
    return sorted(names)


def named_head_modules(model: torch.nn.Module) -> set[str]:
    """The head's modules by the usual head names (classifier, head, fc...), as far as names alone tell."""
    return {
        name.rsplit(".", 1)[0]
        for name, _ in model.named_parameters()
        if any(part in HEAD_NAMES for part in name.split(".")[:-1])
    }


def model_skeleton(folder: Path, task: TaskType, labels: int) -> torch.nn.Module:
    """The base model's module tree with a head for `labels` classes, on the meta device (no memory, no weights)."""
    from transformers import AutoConfig, AutoModelForImageClassification, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(str(folder), num_labels=labels, trust_remote_code=False)
    auto = (
        AutoModelForSequenceClassification if task == TaskType.text_classification else AutoModelForImageClassification
    )
    with torch.device("meta"):
        return auto.from_config(config, trust_remote_code=False)


def _pointwise_conv(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1


def _last(name: str) -> str:
    return name.rsplit(".", 1)[-1]
