"""Checkpoints hold everything a resume needs, restore it exactly, and refuse corrupt files."""

from __future__ import annotations

import random

import pytest
import torch

from worker.training.checkpoint import load_checkpoint, save_checkpoint
from worker.training.state import FitState


def _setup(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    return model, optimizer, scheduler


def _train(model, optimizer, scheduler, steps: int) -> None:
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(3, 4)).pow(2).mean().backward()
        optimizer.step()
        scheduler.step()


def test_resume_from_checkpoint_is_bit_identical(tmp_path):
    model, optimizer, scheduler = _setup(0)
    _train(model, optimizer, scheduler, 3)
    random.seed(5)
    state = FitState(step=3, epoch=1, batch_in_epoch=2, best_value=0.5, best_step=2, evals_without_improvement=1)
    save_checkpoint(tmp_path / "ckpt", model, optimizer, scheduler, state)
    _train(model, optimizer, scheduler, 4)
    uninterrupted = [p.detach().clone() for p in model.parameters()]
    python_draw = random.random()

    resumed_model, resumed_opt, resumed_sched = _setup(1)
    restored = load_checkpoint(tmp_path / "ckpt", resumed_model, resumed_opt, resumed_sched)
    assert restored == state
    assert random.random() == python_draw
    _train(resumed_model, resumed_opt, resumed_sched, 4)
    for a, b in zip(uninterrupted, resumed_model.parameters(), strict=True):
        assert torch.equal(a, b.detach())
    assert not (tmp_path / "ckpt.staging").exists()


def test_corrupt_checkpoint_is_refused(tmp_path):
    model, optimizer, scheduler = _setup(0)
    folder = save_checkpoint(tmp_path / "ckpt", model, optimizer, scheduler, FitState())
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        load_checkpoint(folder, *_setup(0))


def test_a_partly_frozen_model_checkpoints_what_trains_and_its_buffers(tmp_path):
    """Frozen weights are left out (every attempt loads them from the base model); buffers such as BatchNorm's
    running statistics are kept, as they move in training mode; a model that trains more than the file holds is
    refused rather than resumed with fresh weights."""
    from safetensors import safe_open

    def partly_frozen(seed: int):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
        model[0].requires_grad_(False)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.01)
        return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    model, optimizer, scheduler = partly_frozen(0)
    _train(model, optimizer, scheduler, 3)
    folder = save_checkpoint(tmp_path / "ckpt", model, optimizer, scheduler, FitState(step=3))
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        assert set(f.keys()) == {
            "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked", "2.weight", "2.bias"
        }  # fmt: skip
    resumed, resumed_opt, resumed_sched = partly_frozen(0)  # the same frozen weights, as from the base model
    load_checkpoint(folder, resumed, resumed_opt, resumed_sched)
    for name, tensor in model.state_dict().items():
        assert resumed.state_dict()[name].equal(tensor), name

    unfrozen, unfrozen_opt, unfrozen_sched = partly_frozen(0)
    unfrozen[0].requires_grad_(True)
    with pytest.raises(ValueError, match="2 trainable missing: 0.weight, 0.bias"):
        load_checkpoint(folder, unfrozen, unfrozen_opt, unfrozen_sched)
