"""mose_lsp.model_inputs: the one tokenise-truncate-pad path, and that the torch and ONNX
encoders feed a model the same ids and masks through it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers_onnx import build_model_dir

from mose_lsp.encoder import ExitEncoder, ModelEncoder
from mose_lsp.errors import ModelDirError
from mose_lsp.model_dir import InputFormat
from mose_lsp.model_inputs import InputTokenizer

CODE = [
    "def add(a, b):\n    return a + b\n",
    "int main() { return 0; }",
    "x",
    "def long_function(values):\n" + "".join(f"    total_{i} = sum(values[{i}:])\n"
                                              for i in range(40)),
]
TEXT = ["sort a list", "read a JSON file and return its contents as a dictionary", ""]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> InputTokenizer:
    path = build_model_dir(tmp_path_factory.mktemp("m") / "model")
    return ModelEncoder.open(path, threads=1, use_cache=False).inputs


def test_pad_right_with_pad_id_and_mask(inputs: InputTokenizer) -> None:
    ids, mask = inputs.pad([[5, 6, 7], [8], []])
    assert ids.dtype == mask.dtype == np.int64 and ids.shape == mask.shape == (3, 3)
    assert ids.tolist() == [[5, 6, 7], [8, inputs.pad_id, inputs.pad_id], [inputs.pad_id] * 3]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert inputs.pad([])[0].shape == (0, 1)


def test_kind_per_input_equals_one_kind_at_a_time(inputs: InputTokenizer) -> None:
    mixed = inputs.encode([*CODE, *TEXT], ["code"] * len(CODE) + ["text"] * len(TEXT), 32,
                          ["python", "c", None, "python", None, None, None])
    assert mixed[:len(CODE)] == inputs.encode(CODE, "code", 32, ["python", "c", "", "python"])
    assert mixed[len(CODE):] == inputs.encode(TEXT, "text", 32)
    assert max(len(r) for r in mixed) == 32  # the long function was cut


def test_bad_calls_say_what_is_wrong(inputs: InputTokenizer) -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        inputs.encode(["x"], "prose", 16)
    with pytest.raises(ValueError, match="2 texts, 1 kinds"):
        inputs.encode(["x", "y"], ["code"], 16)
    with pytest.raises(ModelDirError, match="max_tokens"):
        inputs.encode(["def f(): pass"], "code", 2, ["python"])


def test_load_refuses_a_broken_tokenizer_file(tmp_path: Path) -> None:
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ModelDirError, match="cannot read the tokenizer"):
        InputTokenizer.from_file(bad, InputFormat(), InputFormat(), 0)


@pytest.mark.slow
def test_torch_and_onnx_encoders_feed_the_model_identical_ids_and_masks(tmp_path: Path,
                                                                        monkeypatch) -> None:
    """A tiny MoSE checkpoint and its float export: the arrays that reach the PyTorch forward
    and the onnxruntime session are equal, batch by batch, truncation included."""
    torch = pytest.importorskip("torch")
    from helpers_onnx import build_tokenizer
    from mose_export.exporter import export_model
    from mose_training.checkpoint import save_checkpoint
    from mose_training.evaluation import TorchEncoder
    from mose_training.model import MoSEEncoder

    torch.manual_seed(0)
    model = MoSEEncoder.from_preset("tiny").eval()
    build_tokenizer(tmp_path / "tokenizer.json")
    checkpoint = save_checkpoint(model, tmp_path / "ckpt", tokenizer_file=tmp_path / "tokenizer.json")
    exported = export_model(checkpoint, tmp_path / "out", exits=(2,), int8=False, max_tokens=96)
    runtime = ModelEncoder.open(exported.path, threads=1, use_cache=False)
    trained = TorchEncoder(model, checkpoint / "tokenizer.json", max_tokens=96, batch_size=32)

    fed: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"onnx": [], "torch": []}
    run = ExitEncoder.run

    def onnx_run(self, input_ids, mask):
        fed["onnx"].append((input_ids.copy(), mask.copy()))
        return run(self, input_ids, mask)

    forward = model.forward

    def torch_forward(input_ids, mask, exits):
        fed["torch"].append((input_ids.numpy().copy(), mask.numpy().copy()))
        return forward(input_ids, mask, exits)

    monkeypatch.setattr(ExitEncoder, "run", onnx_run)
    monkeypatch.setattr(model, "forward", torch_forward)
    langs = ["python", "c", "", "python"]
    for texts, kind, lang in ((CODE, "code", langs), (TEXT, "text", None)):
        fed["onnx"].clear()
        fed["torch"].clear()
        served = runtime.encode(texts, kind, 2, lang, batch_size=32)
        scored = trained.encode(texts, kind, 2, lang)
        assert len(fed["onnx"]) == len(fed["torch"]) >= 1
        for (ids_a, mask_a), (ids_b, mask_b) in zip(fed["onnx"], fed["torch"]):
            assert np.array_equal(ids_a, ids_b) and np.array_equal(mask_a, mask_b)
        np.testing.assert_allclose(served, scored, atol=1e-4)
    assert fed["onnx"][0][0].shape[1] <= 96
