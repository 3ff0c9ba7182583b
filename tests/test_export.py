"""mose export: checkpoints -> model directories, cut at each exit, with parity that fails loudly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from mose_export.errors import ExportError, ParityError
from mose_export.exporter import (
    LoadedSource,
    export_loaded,
    export_model,
    load_source,
    verify_model_dir,
)
from mose_export.onnx_export import INT8, attention_blocks, op_counts
from mose_training.checkpoint import save_checkpoint
from mose_training.hf_adapter import HFMultiExitEncoder

from mose_lsp.encoder import ModelEncoder
from mose_lsp.errors import ModelDirError
from mose_lsp.model_dir import load_model_dir, write_manifest

pytestmark = pytest.mark.slow  # ONNX exports

# Inputs the exporter's own parity check does not use (independent of export/inputs.py).
CODE = [
    "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
    ("async def fetch(session, url):\n    async with session.get(url) as r:\n"
    "        r.raise_for_status()\n        return await r.json()"),
    "SELECT name, COUNT(*) FROM users GROUP BY name HAVING COUNT(*) > 1;",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }\n" * 40,  # longer than max_tokens
]
TEXT = ["fibonacci numbers", "fetch json from an url asynchronously",
        "find duplicate user names in a table"]


@pytest.fixture(scope="session")
def source() -> LoadedSource:
    """all-MiniLM-L6-v2 with exits 2 and 6, loaded once (the CLI test exports it by name)."""
    return load_source("all-minilm-l6-v2", (2, 6))


@pytest.fixture(scope="session")
def minilm(source) -> HFMultiExitEncoder:
    return source.model


@pytest.fixture(scope="session")
def float_dir(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "minilm-float"
    export_loaded(source, out, int8=False)
    return out


@pytest.fixture(scope="session")
def int8_dir(source, tmp_path_factory) -> Path:
    """The deep exit only: it loses the most to quantisation, and onnxruntime's per-channel
    quantiser is slow (a Python loop over channels)."""
    out = tmp_path_factory.mktemp("export") / "minilm-int8"
    export_loaded(source, out, exits=(6,), int8=True)
    return out


def _torch_vs_runtime(model, path: Path, texts: list[str], kind: str):
    """Per exported exit: embeddings of the runtime (tokeniser + ONNX session) and of PyTorch
    on the ids the runtime made, and those ids."""
    runtime = ModelEncoder(load_model_dir(path), threads=2)
    langs = ["python"] * len(texts)
    rows = runtime.tokenize(texts, kind, runtime.exits[0], langs=langs)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), runtime.manifest.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    with torch.no_grad():
        expected = model(ids, mask, exits=runtime.exits)
    return {layer: (runtime.encode(texts, kind, layer, langs=langs), expected[layer].numpy())
            for layer in runtime.exits}, rows


def test_float_export_loads_and_matches_torch(minilm, float_dir):
    model_dir = load_model_dir(float_dir)
    m = model_dir.manifest
    assert [e.layer for e in m.exits] == [2, 6]
    assert (m.index_exit, m.rerank_exit) == (2, 6)
    assert all(e.quantization == "none" and e.dim == 384 and e.pooling == "mean"
               and e.normalize and e.max_tokens == 256 for e in m.exits)
    assert [e.relative_cost for e in m.exits] == pytest.approx([2 / 6, 1.0], abs=1e-3)
    pairs, rows = _torch_vs_runtime(minilm, float_dir, CODE + TEXT, "code")
    assert sorted(pairs) == [2, 6]
    for got, expected in pairs.values():
        assert np.abs(got - expected).max() <= 1e-4
    assert max(len(r) for r in rows) == 256  # the long input was truncated to max_tokens


def test_int8_export_keeps_cosine(minilm, int8_dir):
    m = load_model_dir(int8_dir).manifest
    assert all(e.quantization == INT8 for e in m.exits)
    pairs, _ = _torch_vs_runtime(minilm, int8_dir, CODE + TEXT, "code")
    for got, expected in pairs.values():
        cos = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
        assert cos.mean() >= 0.99
    recorded = m.provenance["parity"]["exits"]
    assert {e["quantization"] for e in recorded} == {"none", INT8}
    assert all(e["mean_cosine"] >= 0.99 for e in recorded)


def test_each_file_is_cut_at_its_layer(float_dir, int8_dir):
    shallow, deep = float_dir / "layer2.onnx", float_dir / "layer6.onnx"
    assert attention_blocks(shallow) == 2
    assert attention_blocks(deep) == 6
    assert shallow.stat().st_size < deep.stat().st_size
    matmuls = [op_counts(p)["MatMul"] for p in (shallow, deep)]
    assert matmuls[1] - matmuls[0] == 4 * 8  # 8 matrix products per BERT block
    quantised = int8_dir / "layer6.int8.onnx"
    assert attention_blocks(quantised) == 6
    counts = op_counts(quantised)
    assert counts["MatMulInteger"] == 6 * 6  # every weight product of the 6 blocks is int8
    # the embeddings are quantised too: much smaller than float
    assert quantised.stat().st_size < 0.4 * deep.stat().st_size


def test_manifest_describes_the_model_without_machine_paths(float_dir):
    m = load_model_dir(float_dir).manifest
    assert m.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert m.license == "Apache-2.0" and m.num_layers == 6 and m.pad_id == 0
    assert m.text_format.template == m.code_format.template == "{input}"
    prov = m.provenance
    assert prov["source"] == "all-minilm-l6-v2" and prov["kind"] == "hf-adapter"
    assert prov["weights"].startswith("sha256:")
    assert {"mose", "torch", "onnx", "onnxruntime"} <= set(prov["versions"])
    assert prov["opset"] == 17 and "exported" in prov
    text = (float_dir / "manifest.json").read_text(encoding="utf-8")
    assert str(Path.home()) not in text and "site-packages" not in text


def test_tokenizer_is_copied_without_baked_padding_or_truncation(float_dir):
    data = json.loads((float_dir / "tokenizer.json").read_text(encoding="utf-8"))
    assert data["padding"] is None and data["truncation"] is None
    assert data["model"]["vocab"]["[PAD]"] == 0


def test_verify_model_dir_passes_on_a_good_export(minilm, int8_dir):
    report = verify_model_dir(minilm, int8_dir)
    assert [e.layer for e in report.exits] == [6]
    assert all(e.mean_cosine >= 0.99 for e in report.exits)
    assert "| 6 | layer6.int8.onnx |" in report.to_markdown()


def test_corrupted_file_is_refused(minilm, float_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(float_dir, broken)
    target = broken / "layer6.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(ModelDirError, match="checksum"):
        verify_model_dir(minilm, broken)


def test_refuses_non_empty_out_and_bad_options(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(ExportError, match="--force"):
        export_model("all-minilm-l6-v2", out, exits=(2,))
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"
    with pytest.raises(ExportError, match="--index-exit 4"):
        export_model("all-minilm-l6-v2", tmp_path / "a", exits=(2, 6), index_exit=4)
    with pytest.raises(ExportError, match="neither a checkpoint folder nor a known base model"):
        export_model(str(tmp_path / "missing"), tmp_path / "b")


# -- the MoSE StarCoder2-style family (training/model.py) ---------------------------------------

def _tiny_tokenizer(path: Path) -> Path:
    """A byte-level BPE trained here on real code, with the tiny preset's special-token ids."""
    from mose_export.inputs import parity_samples
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<pad>", "<sep>", "<cls>",
                                                                  "<mask>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([s.content for s in parity_samples()] + CODE + TEXT, trainer)
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A randomly initialised MoSE encoder of the "tiny" preset, saved as a checkpoint."""
    model_module = pytest.importorskip("mose_training.model",
                                       reason="training/model.py (MoSEEncoder) not written yet")
    torch.manual_seed(0)
    model = model_module.MoSEEncoder.from_preset("tiny").eval()
    folder = tmp_path_factory.mktemp("tiny")
    tokenizer = _tiny_tokenizer(folder / "tokenizer.json")
    save_checkpoint(model, folder / "ckpt", tokenizer_file=tokenizer)
    return model, folder / "ckpt"


@pytest.fixture(scope="module")
def tiny_dir(tiny, tmp_path_factory):
    """The tiny checkpoint exported in float, both exits, the deep one for both roles."""
    _, checkpoint = tiny
    out = tmp_path_factory.mktemp("tiny-export") / "tiny"
    return export_model(checkpoint, out, int8=False, index_exit=4, rerank_exit=4)


def test_tiny_mose_checkpoint_exports_with_parity(tiny, tiny_dir):
    model, _ = tiny
    result, out = tiny_dir, tiny_dir.path
    m = load_model_dir(out).manifest
    info = model.export_info()
    assert [e.layer for e in m.exits] == list(model.exit_layers) == [2, 4]
    assert (m.index_exit, m.rerank_exit) == (4, 4)
    assert all(e.pooling == info.pooling and e.dim == 32 and e.max_tokens == info.max_tokens
               for e in m.exits)
    assert m.code_format.template == info.code_template and not m.code_format.add_special_tokens
    assert [attention_blocks(out / e.file) for e in m.exits] == [2, 4]
    assert all(e.max_abs_diff <= 1e-4 for e in result.parity.exits)
    pairs, rows = _torch_vs_runtime(model, out, CODE, "code")
    for got, expected in pairs.values():
        assert np.abs(got - expected).max() <= 1e-4
    cls = model.config.cls_token_id
    assert all(row[-1] == cls for row in rows)  # the pooled <cls> survives truncation
    assert max(len(r) for r in rows) == info.max_tokens


def test_tiny_mose_int8_export_keeps_cosine_and_enforces_it(tiny, tmp_path):
    _, checkpoint = tiny
    result = export_model(checkpoint, tmp_path / "tiny8", exits=(2,), int8=True)
    assert [e.quantization for e in result.manifest.exits] == [INT8]
    assert 0.99 <= result.parity.exits[-1].mean_cosine < 0.99999
    with pytest.raises(ParityError, match="--no-int8"):
        export_model(checkpoint, tmp_path / "strict", exits=(2,), int8=True, min_cosine=0.99999)
    assert not (tmp_path / "strict").exists()


def test_wrong_file_with_valid_checksums_fails_parity(tiny, tiny_dir, tmp_path):
    model, _ = tiny
    swapped = tmp_path / "swapped"
    shutil.copytree(tiny_dir.path, swapped)
    shutil.copyfile(swapped / "layer2.onnx", swapped / "layer4.onnx")  # exit 4 computes layer 2
    write_manifest(swapped, load_model_dir(swapped, verify=False).manifest)
    with pytest.raises(ParityError, match="exit 4"):
        verify_model_dir(model, swapped)


def test_failed_export_leaves_nothing_behind(tiny, tmp_path):
    _, checkpoint = tiny
    out = tmp_path / "never"
    with pytest.raises(ParityError, match="differs from PyTorch"):
        export_model(checkpoint, out, int8=False, tolerance=1e-12)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no staging folder left either


def test_checkpoint_without_the_requested_exit_is_refused(tiny, tmp_path):
    _, checkpoint = tiny
    with pytest.raises(ExportError, match=r"no exits at layers \[3\]"):
        export_model(checkpoint, tmp_path / "out", exits=(3,))
    assert not (tmp_path / "out").exists()


def test_released_layout_folder_exports(tiny, tmp_path):
    """A folder in the released ModularStarEncoder layout (config.json + sharded safetensors)."""
    pytest.importorskip("mose_training.released")
    from helpers_released import write_released_layout

    model, checkpoint = tiny
    folder = write_released_layout(model, tmp_path / "released", shards=2)
    shutil.copyfile(checkpoint / "tokenizer.json", folder / "tokenizer.json")
    result = export_model(folder, tmp_path / "out", exits=(2,), int8=False)
    assert result.parity.exits[0].max_abs_diff <= 1e-4
    prov = result.manifest.provenance
    assert prov["source"] == "released" and prov["kind"] == "mose-starcoder2"
    assert len(prov["weight_files"]) == 2 and prov["weights"].startswith("sha256:")
    assert load_model_dir(tmp_path / "out").manifest.exits[0].layer == 2


class _PooledHead(torch.nn.Module):
    """Embedding -> Linear per token -> masked mean -> Linear head: the shape of an exit."""

    def __init__(self, vocab: int = 50, dim: int = 16):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, dim)
        self.block = torch.nn.Linear(dim, dim, bias=False)
        self.head = torch.nn.Linear(dim, dim)  # with a bias: exported as a Gemm

    def forward(self, input_ids, attention_mask):
        h = torch.relu(self.block(self.emb(input_ids)))  # (B, T, D)
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)  # (B, D)
        return torch.nn.functional.normalize(self.head(pooled), dim=-1)


def test_head_stays_float_with_float16_weights(tmp_path):
    import onnxruntime as ort
    from mose_export.onnx_export import (
        export_exit,
        head_matmuls,
        quantize_int8,
        smooth_activations,
        split_gemms,
        half_weights,
    )

    torch.manual_seed(0)
    module = _PooledHead().eval()
    ids = torch.randint(0, 50, (3, 7)).numpy()
    mask = np.ones((3, 7), dtype=np.int64)
    mask[0, 4:] = 0
    traced = tmp_path / "traced.onnx"
    export_exit(module, traced, ids, mask)
    assert op_counts(traced)["Gemm"] == 1
    src = tmp_path / "exit.onnx"
    assert split_gemms(traced, src) == 1 and op_counts(src)["Gemm"] == 0
    heads = head_matmuls(src)
    assert len(heads) == 1  # the per-token Linear acts on (B, T, D): not a head
    rows = [(ids[i:i + 1], mask[i:i + 1]) for i in range(3)]
    smoothed = tmp_path / "smoothed.onnx"
    assert smooth_activations(src, smoothed, rows) == 1  # the block's input, not the head's
    dst = tmp_path / "exit.int8.onnx"
    quantize_int8(smoothed, dst, nodes_to_exclude=heads)
    half_weights(dst, heads)
    counts = op_counts(dst)
    assert counts["Cast"] >= 1 and counts["MatMulInteger"] == 1  # the block: int8
    model = onnx.load(str(dst))
    half = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert len(half) == 1 and half[0].name.endswith("_fp16")
    feeds = {"input_ids": ids, "attention_mask": mask}
    ref = ort.InferenceSession(str(traced)).run(None, feeds)[0]
    same = ort.InferenceSession(str(smoothed)).run(None, feeds)[0]
    assert np.abs(same - ref).max() < 1e-5  # splitting and smoothing keep the function
    got = ort.InferenceSession(str(dst)).run(None, feeds)[0]
    assert float((ref * got).sum(1).min()) > 0.99
    with pytest.raises(ExportError, match="no nodes"):
        half_weights(dst, ["no-such-node"])
