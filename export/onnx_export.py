"""One exit -> one ONNX file: trace, inspect, quantise.

Why not optimum: ``optimum-onnx`` (the package that now holds optimum's ONNX exporter)
requires ``transformers<4.58`` and cannot be installed next to transformers 5; and it exports
whole architectures it knows (a full-depth BERT returning token states), not our cut
multi-exit graphs with pooling, projection and normalisation inside. So each exit's
``exit_module(layer)`` is traced with ``torch.onnx.export`` (the TorchScript-based exporter,
``dynamo=False``, opset 17), which handles both families and the dynamic batch and sequence
axes, and quantised with onnxruntime's dynamic int8 quantisation, per channel.
"""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from .errors import ExportError

OPSET = 17
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "embedding"
INT8 = "int8-dynamic-per-channel"
ATTENTION_OPS = ("Softmax", "Attention", "MultiHeadAttention")  # one per attention block
PROTOBUF_LIMIT = 2 * 1024**3  # bytes; larger graphs need ONNX external data files


class _KeywordCall(nn.Module):
    """Calls the exit module with keyword arguments (positional calls trip some HF modules)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)


def export_exit(exit_module: nn.Module, path: Path, input_ids: np.ndarray,
                attention_mask: np.ndarray) -> None:
    """Trace ``exit_module`` on a real (B, T) example into ``path`` with dynamic B and T.

    Large graphs (> 2 GB) come out with external data files next to ``path``; export each
    exit into its own folder.
    """
    wrapped = _KeywordCall(exit_module).eval()
    example = (torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
    axes = {"input_ids": {0: "batch", 1: "sequence"},
            "attention_mask": {0: "batch", 1: "sequence"},
            OUTPUT_NAME: {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        # The legacy exporter warns that it is legacy, and HF code warns about traced Python
        # bools that are constant for an encoder (is_causal); parity checks catch real problems.
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapped, example, str(path), input_names=list(INPUT_NAMES),
                          output_names=[OUTPUT_NAME], dynamic_axes=axes, opset_version=OPSET,
                          do_constant_folding=True, dynamo=False)


def op_counts(path: Path) -> Counter[str]:
    """How many nodes of each op type the graph has (weights are not loaded)."""
    model = onnx.load(str(path), load_external_data=False)
    return Counter(node.op_type for node in model.graph.node)


def attention_blocks(path: Path) -> int:
    """Number of attention blocks in the graph: one softmax (or fused attention op) per block."""
    counts = op_counts(path)
    return sum(counts[op] for op in ATTENTION_OPS)


def check_cut(path: Path, layer: int) -> int:
    """Raise unless the graph holds exactly ``layer`` attention blocks; return that count."""
    blocks = attention_blocks(path)
    if blocks != layer:
        raise ExportError(
            f"{path.name} holds {blocks} attention blocks but exit {layer} should hold {layer}: "
            f"the exit module does not cut the model at its layer. Fix the family's "
            f"exit_module({layer}) so that it runs only blocks 1..{layer}.")
    return blocks


def check_io(path: Path) -> None:
    """Raise unless the graph has the model-directory signature (see mose_lsp.model_dir)."""
    model = onnx.load(str(path), load_external_data=False)
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if inputs != list(INPUT_NAMES) or outputs != [OUTPUT_NAME]:
        raise ExportError(f"{path.name} has inputs {inputs} and outputs {outputs}; expected "
                          f"{list(INPUT_NAMES)} -> [{OUTPUT_NAME!r}]")


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantisation, per output channel, of every MatMul weight and the embeddings.

    Per-tensor int8 lost too much here (cosine 0.93 to float on all-MiniLM-L6-v2); per channel
    keeps ~0.99. The embedding Gather is quantised too: it is most of a small model's bytes
    (all-MiniLM-L6-v2, 6 layers: 59 MB -> 23 MB) at the same cosine.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul", "Gather"])
