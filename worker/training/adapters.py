"""LoRA through peft: wrapping the model with an adapter, what trains, and merging it for export.

The base model's weights stay frozen; the adapter and the new head train (the head as peft's `modules_to_save`, so
the adapter folder peft writes is complete on its own). Exported models have the adapter merged into their weights,
so plain transformers serves them; the adapter files are kept beside them in `adapter/`. Which layers are adapted is
decided by app/jobs/adapters.py, the same rules the API checks a spec with.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from app.jobs.adapters import CONV_ADAPTER_BUDGET, default_adapter, target_problem
from app.jobs.schemas import Adapter
from app.jobs.stop_reasons import JobFailed

ADAPTER_DIR = "adapter"


def attach_adapter(model: torch.nn.Module, head: set[str], adapter: Adapter) -> tuple[PeftModel, set[str]]:
    """The model wrapped with a fresh adapter (initialised from the torch RNG, which the caller seeded), everything
    but the adapter and the head frozen; returns it and the names of the head's trained parameters in it."""
    if not head:
        raise JobFailed("could not find this model's classification head to train beside the adapter")
    head_modules = {name.rsplit(".", 1)[0] for name in head}
    targets, rank = adapter.target_modules, adapter.r
    if not targets:
        targets, rank, _ = default_adapter(model, adapter.r)
    problem = target_problem(model, targets, head_modules)
    if problem:
        raise JobFailed(problem)
    config = LoraConfig(
        r=rank,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        target_modules=targets,
        modules_to_save=sorted(head_modules),
    )
    wrapped = get_peft_model(model, config)
    trained_head = {
        name
        for name, p in wrapped.named_parameters()
        if p.requires_grad and any(f".{module}.modules_to_save." in f".{name}" for module in head_modules)
    }
    return wrapped, trained_head


def trainable_summary(model: torch.nn.Module, adapter: Adapter | None) -> dict[str, Any]:
    """What trained, for the report and the registered model: the adapter (or null) and the parameter counts, the
    share out of the model's own parameters (the adapter's and peft's copy of the head are not counted in it)."""
    total = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n and ".modules_to_save." not in n)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    summary: dict[str, Any] = {
        "adapter": None,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "trainable_share": round(trainable / max(total, 1), 6),
    }
    if adapter is not None and isinstance(model, PeftModel):
        config = model.peft_config["default"]
        targets, rank = getattr(config, "target_modules", None), getattr(config, "r", adapter.r)
        summary["adapter"] = {**adapter.model_dump(), "r": rank, "target_modules": sorted(targets or [])}
        if rank != adapter.r:  # the default layers of a convolutional model, at a rank that fits the budget
            summary["adapter"]["r_asked"] = adapter.r
    return summary


def describe_trainable(summary: dict[str, Any]) -> str:
    """The adapter and what trains, in words (an event of the job)."""
    adapter = summary["adapter"]
    rank = f"r={adapter['r']}"
    if "r_asked" in adapter:
        budget = f"{CONV_ADAPTER_BUDGET:.1%}"
        rank += f" (r={adapter['r_asked']} asked, lowered so the adapter adds at most {budget} of the weights)"
    what = f"{adapter['type']} {rank} alpha={adapter['alpha']} on {', '.join(adapter['target_modules'])}"
    return (
        f"adapter {what}: {summary['trainable_parameters']:,} of {summary['total_parameters']:,} parameters train "
        f"({summary['trainable_share']:.2%}: the adapter and the head)"
    )


def save_merged(model: PeftModel, folder: Path, base_model_name: str) -> PreTrainedModel:
    """Write the adapter (peft's adapter_config.json and adapter_model.safetensors, the head included) to
    folder/adapter and return a copy of the model with the adapter merged into its weights, for save_pretrained.
    The run's own model keeps its adapter."""
    model.peft_config["default"].base_model_name_or_path = base_model_name
    # save_embedding_layers=False: else peft looks the base model up on the Hub to see whether its vocabulary grew
    model.save_pretrained(str(Path(folder) / ADAPTER_DIR), safe_serialization=True, save_embedding_layers=False)
    merged = copy.deepcopy(model).merge_and_unload()
    assert isinstance(merged, PreTrainedModel), "peft unwraps the model it wrapped"
    return merged
