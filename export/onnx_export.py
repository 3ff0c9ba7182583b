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


def quantize_int8(src: Path, dst: Path, nodes_to_exclude: list[str] | None = None) -> None:
    """Dynamic int8 quantisation, per output channel, of every MatMul weight and the embeddings.

    Per-tensor int8 lost too much here (cosine 0.93 to float on all-MiniLM-L6-v2); per channel
    keeps ~0.99. The embedding Gather is quantised too: it is most of a small model's bytes
    (all-MiniLM-L6-v2, 6 layers: 59 MB -> 23 MB) at the same cosine. ``nodes_to_exclude``
    keeps the named nodes in float (``benchmarks/int8_sensitivity.py`` measures which matter).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul", "Gather"],
                     nodes_to_exclude=list(nodes_to_exclude or []))


#: SmoothQuant's migration strength: measured on all-MiniLM-L6-v2's deep exit over held-out
#: texts (benchmarks/int8_sensitivity.py --alphas): 0.3 and 0.5 lose accuracy, 0.7 is best.
SMOOTH_ALPHA = 0.7


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    graph = model.graph
    return {v.name: len(v.type.tensor_type.shape.dim)
            for v in [*graph.value_info, *graph.input, *graph.output]
            if v.type.tensor_type.HasField("shape")}


def smooth_activations(src: Path, dst: Path, rows: list[tuple[np.ndarray, np.ndarray]],
                       alpha: float = SMOOTH_ALPHA) -> int:
    """Move activation outliers into the weights before dynamic int8 (SmoothQuant, Xiao et
    al. 2023): for every token activation X that feeds MatMuls with weights W, a per-channel
    ``s_j = max|X_j|**alpha / max|W_j|**(1 - alpha)`` (maxima over the calibration inputs
    ``rows`` and the weights' input rows), then ``X / s`` (one Mul) and ``diag(s) W``: the
    same function in float, but X's per-tensor int8 scale is no longer set by a few outlier
    channels. Returns the number of activations smoothed; writes ``dst``."""
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    assert 0.0 < alpha < 1.0, f"alpha must be in (0, 1), got {alpha}"
    model = onnx.shape_inference.infer_shapes(onnx.load(str(src)))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    ranks = _ranks(model)
    groups: dict[str, list] = {}
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits and ranks.get(node.input[0]) == 3:
            groups.setdefault(node.input[0], []).append(node)
    if not groups:
        onnx.save(model, str(dst))
        return 0
    probe = onnx.load(str(src))
    names = list(groups)
    for name in names:
        probe.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT,
                                                                None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(probe.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    amax = {name: np.zeros(0, dtype=np.float32) for name in names}
    for ids, mask in rows:  # one input per run: no padding in the maxima
        outs = session.run(names, {"input_ids": ids, "attention_mask": mask})
        for name, out in zip(names, outs):
            m = np.abs(out).reshape(-1, out.shape[-1]).max(axis=0)  # (C,)
            amax[name] = m if amax[name].size == 0 else np.maximum(amax[name], m)
    for k, (name, nodes) in enumerate(groups.items()):
        weights = [numpy_helper.to_array(inits[n.input[1]]).astype(np.float32) for n in nodes]
        wmax = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)  # (C,) input rows
        scale = amax[name] ** alpha / np.maximum(wmax, 1e-8) ** (1.0 - alpha)
        scale = np.clip(scale, 1e-5, 1e5).astype(np.float32)
        inv = numpy_helper.from_array((1.0 / scale).astype(np.float32), f"smooth_{k}_inv")
        graph.initializer.append(inv)
        mul = helper.make_node("Mul", [name, inv.name], [f"smooth_{k}_out"],
                               name=f"smooth_{k}_mul")
        for node, w in zip(nodes, weights):  # edit before inserting: insert may move nodes
            node.input[0] = mul.output[0]
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(
                (w * scale[:, None]).astype(np.float32), node.input[1]))
        graph.node.insert(_position(graph, {n.name for n in nodes}), mul)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return len(groups)


def _position(graph, names: set[str]) -> int:
    """Index of the first node named in ``names`` in the (topologically sorted) node list."""
    for i, node in enumerate(graph.node):
        if node.name in names:
            return i
    raise ExportError(f"smoothing: no node named {sorted(names)} in the graph")


def split_gemms(src: Path, dst: Path) -> int:
    """Rewrite every ``Gemm`` (a Linear with bias: alpha = beta = 1, A not transposed) as
    ``MatMul`` + ``Add`` with a (K, N) weight, so each MatMul has a name of ours that the int8
    steps can address (the quantiser would rename it); the same function. Returns the count."""
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    count = 0
    i = 0
    while i < len(graph.node):
        node = graph.node[i]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or node.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            i += 1
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            weight = weight.T
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(weight),
                                                              node.input[1]))
        out = node.output[0]
        nodes = [helper.make_node("MatMul", [node.input[0], node.input[1]],
                                  [f"{out}_matmul" if len(node.input) > 2 else out],
                                  name=f"{node.name}_matmul")]
        if len(node.input) > 2 and node.input[2]:
            nodes.append(helper.make_node("Add", [f"{out}_matmul", node.input[2]], [out],
                                          name=f"{node.name}_bias"))
        del graph.node[i]
        for j, new in enumerate(nodes):
            graph.node.insert(i + j, new)
        i += len(nodes)
        count += 1
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return count


def head_matmuls(path: Path) -> list[str]:
    """MatMul nodes with a weight that act on pooled vectors (rank-2 input, after pooling): the
    exit's head. ``quantize_dynamic`` would quantise their input per tensor, over one pooled
    vector with the base model's few outlier dimensions in it, which costs more accuracy than
    anything else in the graph (``benchmarks/int8_sensitivity.py``)."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    inits = {i.name for i in model.graph.initializer}
    ranks = _ranks(model)
    return [n.name for n in model.graph.node
            if n.op_type == "MatMul" and n.input[1] in inits and ranks.get(n.input[0]) == 2]


def half_weights(path: Path, nodes: list[str]) -> None:
    """Store the weights of the float MatMul ``nodes`` in float16 behind a ``Cast`` to float:
    half the bytes of float32, the activations and the product in float32.

    For the exit heads, kept out of ``quantize_dynamic`` (``nodes_to_exclude``): an exit head
    fitted on frozen features amplifies small directions, so int8 weights (per output channel)
    lose most of what float activations win (``benchmarks/int8_sensitivity.py``), while float16
    keeps it at 0.15 MB more per 384 x 384 head. Rewrites ``path``.
    """
    from onnx import helper, numpy_helper

    if not nodes:
        return
    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    wanted = set(nodes)
    done = set()
    i = 0
    while i < len(graph.node):
        node = graph.node[i]
        if node.name not in wanted:
            i += 1
            continue
        if node.op_type != "MatMul" or node.input[1] not in inits:
            raise ExportError(f"{path.name}: node {node.name!r} is not a MatMul with a weight")
        init = inits[node.input[1]]
        w = numpy_helper.to_array(init).astype(np.float16)
        base = init.name
        graph.initializer.remove(init)
        graph.initializer.append(numpy_helper.from_array(w, f"{base}_fp16"))
        cast = helper.make_node("Cast", [f"{base}_fp16"], [f"{base}_fp32"],
                                to=onnx.TensorProto.FLOAT, name=f"{node.name}_weight_cast")
        node.input[1] = f"{base}_fp32"  # edit before inserting: insert may move nodes
        done.add(node.name)
        graph.node.insert(i, cast)
        i += 2
    missing = wanted - done
    if missing:
        raise ExportError(f"{path.name} has no nodes {sorted(missing)} to store in float16")
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
