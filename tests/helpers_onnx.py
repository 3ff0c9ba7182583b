"""A small but real model directory for tests, built without torch.

* ``tokenizer.json``: a byte-level BPE trained with the ``tokenizers`` library on a few code
  lines written here, with ``<s> ... </s>`` added by its post-processor and the special tokens
  ``<pad>`` (id 0), ``<unk>``, ``<s>``, ``</s>``, ``<sep>``, ``<cls>``.
* Two ONNX exits built with ``onnx.helper``: token embeddings (Gather) -> ``layer`` blocks of
  ``h = h + tanh(h W + b)`` -> masked pooling (``mean``, or ``last``: the last non-pad token)
  -> projection -> L2 normalisation, output ``embedding``. The deep exit shares the shallow
  exit's weights for its first blocks (an exit is the same network cut at a layer).
* ``manifest.json`` written by ``write_manifest`` (checksums included).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from mose_lsp.model_dir import ExitSpec, InputFormat, Manifest, write_manifest

SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>", "<sep>", "<cls>"]
HIDDEN = 24
DIM = 16
OPSET = 17

# Hand-written lines in several languages: enough for BPE merges of common code words.
CORPUS = [
    "def add(a, b):\n    return a + b",
    "def read_file(path):\n    with open(path) as fh:\n        return fh.read()",
    "class Parser:\n    def parse(self, text):\n        return text.split()",
    "for i in range(n):\n    total += values[i]",
    "public static int add(int a, int b) { return a + b; }",
    "public String readFile(String path) throws IOException { return Files.readString(path); }",
    "int sum(int *arr, int n) { int s = 0; for (int i = 0; i < n; i++) s += arr[i]; return s; }",
    "function fetchUser(id) { return http.get('/users/' + id).then(r => r.json()); }",
    "fn parse_config(text: &str) -> Result<Config, Error> { toml::from_str(text) }",
    "func ReadAll(r io.Reader) ([]byte, error) { return io.ReadAll(r) }",
    "sort the list of numbers and return the largest value",
    "open a file and read every line into a list of strings",
    "parse json text into a dictionary",
    "query: how do I reverse a string in python",
] * 4


@dataclass(frozen=True)
class FixtureExit:
    layer: int
    pooling: str  # "mean" | "last"
    max_tokens: int


DEFAULT_EXITS = (FixtureExit(1, "mean", 24), FixtureExit(3, "mean", 40))


def build_tokenizer(path: Path) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, min_frequency=2,
                                  special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer=trainer)
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> $B </s>",
        special_tokens=[("<s>", bos), ("</s>", eos)])
    # Like many exported tokenizers, ship with truncation and padding switched on: the runtime
    # must switch them off and apply its own rules.
    tok.enable_truncation(max_length=8)
    tok.enable_padding(pad_id=0, pad_token="<pad>")
    tok.save(str(path))
    return tok


def _weights(vocab: int, n_layers: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w: dict[str, np.ndarray] = {"emb": rng.normal(0, 1, (vocab, HIDDEN)).astype(np.float32)}
    for i in range(n_layers):
        w[f"w{i}"] = (rng.normal(0, 1, (HIDDEN, HIDDEN)) / np.sqrt(HIDDEN)).astype(np.float32)
        w[f"b{i}"] = rng.normal(0, 0.1, (HIDDEN,)).astype(np.float32)
    w["proj"] = (rng.normal(0, 1, (HIDDEN, DIM)) / np.sqrt(HIDDEN)).astype(np.float32)
    return w


def build_exit_model(weights: dict[str, np.ndarray], layer: int, pooling: str) -> onnx.ModelProto:
    """(B, T) int64 ids and mask -> (B, DIM) float32 unit vectors."""
    nodes: list[onnx.NodeProto] = []
    inits = [numpy_helper.from_array(weights["emb"], "emb"),
             numpy_helper.from_array(weights["proj"], "proj"),
             numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
             numpy_helper.from_array(np.array([-1], dtype=np.int64), "axis_last"),
             numpy_helper.from_array(np.array(1e-9, dtype=np.float32), "eps")]
    nodes.append(helper.make_node("Gather", ["emb", "input_ids"], ["h0"]))  # (B, T, H)
    h = "h0"
    for i in range(layer):
        inits += [numpy_helper.from_array(weights[f"w{i}"], f"w{i}"),
                  numpy_helper.from_array(weights[f"b{i}"], f"b{i}")]
        nodes += [helper.make_node("MatMul", [h, f"w{i}"], [f"mm{i}"]),
                  helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"lin{i}"]),
                  helper.make_node("Tanh", [f"lin{i}"], [f"act{i}"]),
                  helper.make_node("Add", [h, f"act{i}"], [f"h{i + 1}"])]
        h = f"h{i + 1}"
    nodes.append(helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT))
    nodes.append(helper.make_node("ReduceSum", ["maskf", "axis1"], ["count"], keepdims=1))  # (B,1)
    if pooling == "mean":
        nodes.append(helper.make_node("Max", ["count", "eps"], ["count_safe"]))
        nodes.append(helper.make_node("Div", ["maskf", "count_safe"], ["weights"]))  # (B, T)
    elif pooling == "last":
        nodes.append(helper.make_node("CumSum", ["maskf", "axis1"], ["position"]))
        nodes.append(helper.make_node("Equal", ["position", "count"], ["is_last"]))
        nodes.append(helper.make_node("Cast", ["is_last"], ["is_lastf"], to=TensorProto.FLOAT))
        nodes.append(helper.make_node("Mul", ["is_lastf", "maskf"], ["weights"]))
    else:
        raise ValueError(f"pooling {pooling!r} is not built by this fixture")
    nodes += [helper.make_node("Unsqueeze", ["weights", "axis_last"], ["weights3"]),  # (B, T, 1)
              helper.make_node("Mul", [h, "weights3"], ["weighted"]),
              helper.make_node("ReduceSum", ["weighted", "axis1"], ["pooled"], keepdims=0),
              helper.make_node("MatMul", ["pooled", "proj"], ["projected"]),  # (B, D)
              helper.make_node("Mul", ["projected", "projected"], ["squared"]),
              helper.make_node("ReduceSum", ["squared", "axis_last"], ["sumsq"], keepdims=1),
              helper.make_node("Sqrt", ["sumsq"], ["norm"]),
              helper.make_node("Max", ["norm", "eps"], ["norm_safe"]),
              helper.make_node("Div", ["projected", "norm_safe"], ["embedding"])]
    graph = helper.make_graph(
        nodes, f"fixture_exit_{layer}",
        inputs=[helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
                helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                              ["batch", "seq"])],
        outputs=[helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", DIM])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def build_model_dir(
    root: Path,
    exits: tuple[FixtureExit, ...] = DEFAULT_EXITS,
    text_template: str = "query: {input}",
    code_template: str = "<sep>{lang}: {input}<cls>",
    add_special_tokens: bool = True,
    seed: int = 0,
) -> Path:
    """Write a complete model directory under ``root`` and return its path."""
    root.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(root / "tokenizer.json")
    weights = _weights(tok.get_vocab_size(), max(e.layer for e in exits), seed)
    specs = []
    for e in exits:
        name = f"exit_{e.layer}.onnx"
        onnx.save(build_exit_model(weights, e.layer, e.pooling), str(root / name))
        specs.append(ExitSpec(layer=e.layer, file=name, dim=DIM, pooling=e.pooling,
                              normalize=True, max_tokens=e.max_tokens))
    layers = sorted(e.layer for e in exits)
    manifest = Manifest(
        name="fixture", version="0.0.1", exits=tuple(specs),
        index_exit=layers[0], rerank_exit=layers[-1],
        text_format=InputFormat(text_template, add_special_tokens),
        code_format=InputFormat(code_template, add_special_tokens),
        pad_id=tok.token_to_id("<pad>"), base_model="none (random weights)",
        license="Apache-2.0", num_layers=layers[-1])
    write_manifest(root, manifest)
    return root
