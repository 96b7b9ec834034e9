"""Which arithmetic a run trains in, decided on the worker that runs it (only it knows its device), and the
autocast and gradient scaler that go with it.

- fp32: exact everywhere; what "auto" picks on a CPU and on a GPU without native bf16.
- bf16: autocast to bfloat16; same exponent range as fp32, so no gradient scaler. "auto" on a CUDA GPU that has it
  (Ampere and later). On a CPU it runs through CPU autocast as asked (fast only on CPUs with bf16 instructions).
- fp16: autocast to float16 with torch.amp.GradScaler (its state is checkpointed). For GPUs without bf16 (V100, T4).
  A CPU has no use for it: the run trains in fp32 and says why, rather than failing a job that may land on a GPU
  worker next time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    name: str  # fp32, bf16 or fp16: what the run uses
    reason: str  # why, in words (the job's event and, under "auto", its spec's `auto` entry)

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype; None: plain fp32."""
        return DTYPES.get(self.name)


FP32 = Precision("fp32", "fp32")


def choose_precision(asked: str, device: torch.device) -> Precision:
    """What `asked` ("auto", "fp32", "bf16", "fp16") becomes on `device`, and why."""
    cuda = device.type == "cuda"
    where = f"this worker's GPU ({torch.cuda.get_device_name(device)})" if cuda else "this worker's CPU"
    native_bf16 = cuda and _gpu_has_bf16(device)
    if asked == "fp32":
        return Precision("fp32", "fp32, as asked")
    if asked == "auto":
        if native_bf16:
            return Precision("bf16", f"bf16: {where} computes in bf16 natively (auto: bf16 where the GPU has it)")
        if cuda:
            return Precision(
                "fp32",
                f"fp32: {where} has no native bf16 (auto); precision fp16 is faster there, with a gradient scaler",
            )
        return Precision("fp32", f"fp32: the run is on {where} (auto: bf16 on GPUs that have it, fp32 on CPUs)")
    if asked == "bf16":
        if cuda and not native_bf16:
            return Precision("fp32", f"fp32: bf16 was asked for, but {where} has no native bf16; use precision fp16")
        return Precision(
            "bf16", "bf16, as asked" + ("" if cuda else " (CPU autocast: fast only with bf16 instructions)")
        )
    if asked == "fp16":
        if not cuda:
            return Precision("fp32", f"fp32: fp16 was asked for, but the run is on {where}, where fp16 is no faster")
        return Precision("fp16", "fp16, as asked, with a gradient scaler")
    raise ValueError(f"unknown precision {asked!r}: use auto, fp32, bf16 or fp16")


def autocast(device: torch.device, precision: Precision) -> torch.autocast:
    """Autocast to the precision's dtype; a no-op in fp32."""
    dtype = precision.dtype
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def grad_scaler(device: torch.device, precision: Precision) -> torch.amp.GradScaler | None:
    """fp16 needs its loss scaled so that small gradients do not underflow; the other precisions do not."""
    return torch.amp.GradScaler(device.type) if precision.name == "fp16" else None


def _gpu_has_bf16(device: torch.device) -> bool:
    """Native bf16 (compute capability 8.0, Ampere, and later); emulated bf16 is slower than fp32."""
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8
