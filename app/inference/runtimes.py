"""Serving runtimes: the model as trained (torch, fp32), exported to ONNX and run by ONNX Runtime on the CPU, or with
its Linear layers quantized to int8 (torch.ao dynamic quantization). An alias picks one (`PUT /aliases/{name}`
`"runtime"`); app/inference/conversion.py converts a model once, checks its test accuracy and stores the files.

Every runtime turns a collated batch (the dict the task's collate gives: input_ids and attention_mask, or
pixel_values) into float logits, so the batcher, top-k and calibration are the same for all of them. onnx, onnxruntime
and onnxscript are an optional extra: the service starts without them and only an alias asking for onnx needs them."""

from __future__ import annotations

import importlib
import inspect
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch

from app.errors import InvalidInput
from app.tasktypes.common import Preprocessing
from app.tasktypes.types import TaskType

log = logging.getLogger(__name__)

Runtime = Literal["torch", "onnx", "int8"]
TORCH: Runtime = "torch"
ONNX: Runtime = "onnx"
INT8: Runtime = "int8"
RUNTIMES: tuple[Runtime, ...] = (TORCH, ONNX, INT8)
ONNX_FILE = "model.onnx"
INT8_ONNX_FILE = "model.int8.onnx"  # int8 by ONNX Runtime (its dynamic quantization of the exported graph)
INSTALL_HINT = "pip install 'finetune-service[onnx]'"
# int8 quantizes nn.Linear only: worth it (and honest to offer) where Linear layers hold most of the weights.
MIN_LINEAR_SHARE = 0.5
ONNX_OPSET = 18
FUSED_OPSET = 17  # the TorchScript exporter's
# Text encoders whose graphs ONNX Runtime's transformer optimizer fuses with its "bert" patterns (MiniLM is one).
FUSED_MODEL_TYPES = frozenset({"bert"})

Forward = Callable[[dict[str, torch.Tensor]], torch.Tensor]  # a collated batch -> float logits


def require_packages(runtime: str, exporting: bool = False) -> None:
    """A 422 saying what to install when `runtime` needs packages this process cannot import."""
    if runtime != ONNX:
        return
    for name in ("onnxruntime", "onnx", "onnxscript") if exporting else ("onnxruntime",):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise InvalidInput(
                f"runtime 'onnx' needs the package '{name}', which is not installed on this API process ({exc}). "
                f"Install the optional extra ({INSTALL_HINT}) and restart the API, or use runtime 'torch' or 'int8'.",
                title="Runtime not installed",
                extra={"field": "runtime", "install": INSTALL_HINT},
            ) from exc


def linear_share(model: torch.nn.Module) -> float:
    """The share of the weights of the model's matrix-multiplying layers (nn.Linear and convolutions) held by
    nn.Linear, what dynamic int8 quantization converts. Embedding tables are left out: looked up, not multiplied."""

    def weights(kind: type | tuple[type, ...]) -> int:
        return sum(p.numel() for m in model.modules() if isinstance(m, kind) for p in m.parameters(recurse=False))

    linear = weights(torch.nn.Linear)
    total = linear + weights((torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d))
    return linear / total if total else 0.0


def check_supported(runtime: str, model: torch.nn.Module, model_id: str) -> None:
    """A 422 naming the runtimes that do serve this model, when `runtime` cannot convert its family."""
    if runtime != INT8:
        return
    share = linear_share(model)
    if share < MIN_LINEAR_SHARE:
        family = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise InvalidInput(
            f"runtime 'int8' quantizes nn.Linear layers only, and they hold {share:.0%} of the layer weights of model "
            f"'{model_id}' ({family}, mostly convolutions): int8 supports Linear-heavy models (transformers) only. "
            "Serve this model with runtime 'torch' or 'onnx'.",
            title="Runtime not supported for this model",
            extra={"field": "runtime", "supported_runtimes": [TORCH, ONNX]},
        )


def torch_forward(model: torch.nn.Module) -> Forward:
    def forward(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode():
            return model(**batch).logits

    return forward


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """The model with its nn.Linear layers dynamically quantized to int8 (weights per output channel, activations
    per batch); deterministic from the fp32 weights, so it is done again at each load.

    Layers that narrow (more inputs than outputs: a transformer's feed-forward down-projection, the classifier head)
    stay fp32: they read the GELU activations, whose few large outliers make one int8 scale per batch too coarse.
    MiniLM-L6 fine-tuned on Rotten Tomatoes (1,000 test reviews): every Linear per tensor lost 2.0 points, per
    channel 0.8, per channel with the narrowing layers in fp32 none (+0.4, 97.8% of answers unchanged)."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    widening = {
        name: per_channel_dynamic_qconfig
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module.in_features <= module.out_features
    }
    with warnings.catch_warnings():  # torch 2.14 warns that quantized tensors are deprecated (README: runtimes)
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*", category=UserWarning)
        return quantize_dynamic(model, widening, dtype=torch.qint8).eval()


class _Logits(torch.nn.Module):
    """The classifier's forward with named tensor inputs and the logits as its one output (what ONNX exports)."""

    def __init__(self, model: torch.nn.Module, names: list[str], constants: dict[str, Any]) -> None:
        super().__init__()
        self.model, self.names, self.constants = model, names, constants

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, tensors, strict=True)), **self.constants).logits


def onnx_inputs(model: torch.nn.Module, prep: Preprocessing) -> tuple[list[str], dict[str, Any]]:
    """The graph's input names and the constant arguments baked into it: text models read input_ids and
    attention_mask (and token_type_ids where the model has them); image models pixel_values."""
    if prep.task == TaskType.text_classification:
        names = ["input_ids", "attention_mask"]
        if "token_type_ids" in inspect.signature(model.forward).parameters:
            names.append("token_type_ids")
        return names, {}
    return ["pixel_values"], ({"interpolate_pos_encoding": True} if prep.interpolate_pos_encoding else {})


def export_onnx(
    model: torch.nn.Module, prep: Preprocessing, sample: dict[str, torch.Tensor], path: Path
) -> dict[str, Any]:
    """Export the model to `path` with dynamic batch (and, for text, sequence) axes, traced on `sample`; returns the
    manifest's part (which exporter, which operators were fused).

    A BERT-family text encoder is exported with eager attention by the TorchScript exporter and its graph fused by
    ONNX Runtime's transformer optimizer (embeddings with their LayerNorm, attention, skip LayerNorm, bias GELU into
    one operator each): its patterns read that exporter's graph, not the dynamo one's. MiniLM-L6 at batch 32 on 2
    cores (bench/README.md): the fused graph 1.00x torch's forward in fp32 against 0.81x unfused, and int8 1.41x
    against 1.13x (0.1 points lost). Other models take the dynamo exporter, as does one whose fused export fails."""
    names, constants = onnx_inputs(model, prep)
    tensors = _with_token_types(sample, names)
    args = tuple(tensors[n] for n in names)
    config = getattr(model, "config", None)
    if prep.task == TaskType.text_classification and getattr(config, "model_type", None) in FUSED_MODEL_TYPES:
        try:
            return _export_fused(model, names, args, path)
        except Exception:  # a torch without the TorchScript exporter, a variant the optimizer cannot read
            log.warning("the fused ONNX export failed; exporting the unfused graph with dynamo", exc_info=True)
    batch = torch.export.Dim("batch", min=1, max=4096)
    if prep.task == TaskType.text_classification:
        sequence = torch.export.Dim("sequence", min=1, max=max(prep.max_length or 512, 2))
        shapes: tuple = tuple({0: batch, 1: sequence} for _ in names)
    else:
        shapes = ({0: batch},)
    with torch.no_grad():
        program = torch.onnx.export(
            _Logits(model, names, constants).eval(),
            args,
            input_names=names,
            output_names=["logits"],
            dynamic_shapes=(shapes,),  # one entry: the wrapper's *tensors
            opset_version=ONNX_OPSET,
            dynamo=True,
            verbose=False,
        )
    assert program is not None
    program.save(str(path))
    return {"exporter": "dynamo"}


def _export_fused(model: Any, names: list[str], args: tuple[torch.Tensor, ...], path: Path) -> dict[str, Any]:
    """A BERT-family encoder through the TorchScript exporter with eager attention, then ONNX Runtime's transformer
    optimizer (its Python fusions only; the session applies its own graph optimizations when it loads)."""
    from onnxruntime.transformers.optimizer import optimize_model

    attention = model.config._attn_implementation
    traced = path.with_name(path.stem + ".traced.onnx")
    try:
        _set_attention(model, "eager")  # the attention pattern the optimizer fuses (SDPA's is not)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated in favour of dynamo's
            torch.onnx.export(
                _Logits(model, names, {}).eval(),
                args,
                str(traced),
                input_names=names,
                output_names=["logits"],
                dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names},
                opset_version=FUSED_OPSET,
                dynamo=False,
            )
        optimized = optimize_model(
            str(traced),
            model_type="bert",
            num_heads=model.config.num_attention_heads,
            hidden_size=model.config.hidden_size,
            opt_level=0,
        )
        optimized.save_model_to_file(str(path))
        fused = {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}
    finally:
        _set_attention(model, attention)
        traced.unlink(missing_ok=True)
    return {"exporter": "torchscript, fused by onnxruntime.transformers", "fused": fused}


def _set_attention(model: Any, implementation: str) -> None:
    """Which attention the model's forward runs (read at each forward since transformers 4.48)."""
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(implementation)
    else:
        model.config._attn_implementation = implementation


def _with_token_types(batch: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    """token_type_ids as zeros where the graph reads them: what the model assumes when torch serving omits them."""
    if "token_type_ids" in names and "token_type_ids" not in batch:
        return {**batch, "token_type_ids": torch.zeros_like(batch["input_ids"])}
    return batch


def onnx_runtime_available() -> bool:
    """Whether this process can export and quantize with ONNX Runtime (the optional extra)."""
    try:
        require_packages(ONNX, exporting=True)
    except InvalidInput:
        return False
    return True


def quantize_onnx_int8(source: Path, target: Path) -> dict[str, Any]:
    """ONNX Runtime's dynamic quantization of an exported graph: the weights of its widening MatMuls (and of the fused
    graph's Attention, its query/key/value projection) int8 per output channel, their inputs uint8 per tensor at run
    time. MatMuls that narrow (a transformer's feed-forward down-projection, the head) stay fp32, as in quantize_int8
    and for the same reason. Returns the manifest's part.

    MiniLM-L6 fine-tuned on Rotten Tomatoes-2k, 1,000 test reviews (81.4% in torch), batch 32 on 2 cores against
    torch's fp32 forward (bench/README.md): on the fused graph, every MatMul and Attention quantized ran 1.74x and
    lost 0.9 points (0.5 with reduce_range); the widening ones only, 1.41x and 0.1 points (98.3% of answers
    unchanged). On the unfused graph the same recipe ran 1.13x."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(source)).graph
    shapes = {i.name: tuple(i.dims) for i in graph.initializer}
    narrowing = [n.name for n in graph.node if n.op_type == "MatMul" and _narrows(shapes.get(n.input[1], ()))]
    attention = sum(n.op_type == "Attention" for n in graph.node)
    quantize_dynamic(
        str(source),
        str(target),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul", "Attention"],
        nodes_to_exclude=narrowing,
        # The fused operators are ONNX Runtime's own, which ONNX's shape inference cannot type: their outputs are float.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    modules = f"widening MatMul ({len(narrowing)} narrowing MatMuls kept fp32)"
    return {
        "quantization": "onnxruntime dynamic, per channel",
        "dtype": "qint8 weights, quint8 activations",
        "modules": modules + (f", {attention} fused Attention" if attention else ""),
    }


def _narrows(weight_shape: tuple[int, ...]) -> bool:
    """A MatMul weight of [inputs, outputs] with more inputs than outputs (a Linear layer exported by torch.onnx)."""
    return len(weight_shape) == 2 and weight_shape[0] > weight_shape[1]


def onnx_forward(path: Path, threads: int) -> Forward:
    """An ONNX Runtime session on the CPU, `threads` intra-op threads; session.run is safe from several threads."""
    require_packages(ONNX)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # ONNX Runtime's pool threads spin between ops by default, taking the cores the API's event loop and tokenizing
    # need: MiniLM at 32 clients served 1.13x more (int8) and 1.08x (onnx) without (bench/README.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def forward(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        tensors = _with_token_types(batch, names)
        feeds = {n: tensors[n].numpy() for n in names}
        return torch.from_numpy(session.run(["logits"], feeds)[0])

    return forward
