"""Released ModularStarEncoder layout (training/released.py) and our checkpoint folders."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from helpers_released import write_released_layout
from mose_training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mose_training.model import MoSEEncoder, preset
from mose_training.released import (
    FINETUNED_REPO,
    PRETRAINED_REPO,
    ReleasedCheckpointError,
    load_released,
)
from safetensors.torch import load_file, save_file


def tiny(**overrides) -> MoSEEncoder:
    torch.manual_seed(0)
    model = MoSEEncoder(preset("tiny", **overrides)).eval()
    with torch.no_grad():  # non-trivial biases and norms, so that a mix-up shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name.lower():
                p.add_(torch.randn_like(p) * 0.1)
    return model


def finetuned() -> MoSEEncoder:
    return tiny()


def pretrained() -> MoSEEncoder:
    return tiny(projection_dim=None, with_pretraining_heads=True)


def batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(4, 1024, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    ids[1, 6:] = 0
    return ids, mask


def assert_same_outputs(a: MoSEEncoder, b: MoSEEncoder) -> None:
    ids, mask = batch()
    with torch.no_grad():
        out_a, out_b = a(ids, mask), b(ids, mask)
    assert out_a.exits == out_b.exits
    for x, y in zip(out_a.embeddings + out_a.hidden_states, out_b.embeddings + out_b.hidden_states):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


# -- released layout ---------------------------------------------------------------------------

def test_finetuned_layout_round_trip(tmp_path):
    model = finetuned()
    folder = write_released_layout(model, tmp_path / "ft")
    config = json.loads((folder / "config.json").read_text())
    assert config["matryoshka_layers"] == [2, 4] and config["norm_epsilon"] == 1e-5
    assert config["conditional_size"] == 4 and "exit_layers" not in config
    keys = set(load_file(str(folder / "model.safetensors")))
    assert "model.layers.0.self_attn.q_proj.weight" in keys and "model.embed_tokens.weight" in keys
    assert "projection_heads.1.weight" in keys
    loaded = load_released(folder)
    assert not loaded.training and loaded.config.projection_dim == 32
    assert loaded.config.base_model == FINETUNED_REPO
    assert loaded.config.license == "bigcode-openrail-m"
    assert "Represent this" in loaded.export_info().code_template
    assert_same_outputs(model, loaded)


def test_pretrained_layout_round_trip_with_heads(tmp_path):
    model = pretrained()
    folder = write_released_layout(model, tmp_path / "pt")
    keys = set(load_file(str(folder / "model.safetensors")))
    assert {"heads.predictions.decoder.weight", "heads.predictions.bias",
            "heads.seq_relationship.weight", "heads.conditional_embeddings.weight",
            "heads.predictions.transform.dense.weight"} <= keys
    loaded = load_released(folder)
    assert loaded.config.with_pretraining_heads and loaded.config.projection_dim is None
    assert loaded.config.base_model == PRETRAINED_REPO
    assert_same_outputs(model, loaded)
    ids, mask = batch()
    with torch.no_grad():
        a, b = model.pretraining_forward(ids, mask), loaded.pretraining_forward(ids, mask)
    for x, y in zip(a.mlm_logits + a.icc_logits, b.mlm_logits + b.icc_logits):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_other_prefixes_shards_and_torch_bin(tmp_path):
    model = finetuned()
    wrapped = write_released_layout(model, tmp_path / "wrapped",
                                    backbone_prefix="starEncoder2.model.",
                                    heads_prefix="starEncoder2.", shards=3)
    assert (wrapped / "model.safetensors.index.json").is_file()
    assert not (wrapped / "model.safetensors").exists()
    assert_same_outputs(model, load_released(wrapped))
    bare = write_released_layout(model, tmp_path / "bare", backbone_prefix="")
    state = load_file(str(bare / "model.safetensors"))
    (bare / "model.safetensors").unlink()
    torch.save(state, bare / "pytorch_model.bin")
    assert_same_outputs(model, load_released(bare))


def test_bert_style_tied_decoder_bias_is_accepted(tmp_path):
    model = pretrained()
    folder = write_released_layout(model, tmp_path / "pt")
    state = load_file(str(folder / "model.safetensors"))
    state["heads.predictions.decoder.bias"] = state.pop("heads.predictions.bias")
    save_file(state, str(folder / "model.safetensors"))
    assert_same_outputs(model, load_released(folder))


def test_missing_key_is_named(tmp_path):
    folder = write_released_layout(finetuned(), tmp_path / "ft")
    state = load_file(str(folder / "model.safetensors"))
    del state["model.layers.1.mlp.c_fc.bias"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ReleasedCheckpointError, match=r"missing \['layers\.1\.mlp\.c_fc\.bias'\]"):
        load_released(folder)


def test_unmapped_key_is_named_unless_not_strict(tmp_path):
    model = finetuned()
    folder = write_released_layout(model, tmp_path / "ft")
    state = load_file(str(folder / "model.safetensors"))
    state["logit_scale"] = torch.ones(1)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ReleasedCheckpointError, match="logit_scale"):
        load_released(folder)
    assert_same_outputs(model, load_released(folder, strict=False))


def test_wrong_shape_and_wrong_config_are_reported(tmp_path):
    folder = write_released_layout(finetuned(), tmp_path / "ft")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
    with pytest.raises(ReleasedCheckpointError, match=r"wrong shapes .*c_fc\.weight"):
        load_released(folder)
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 6}))
    with pytest.raises(ReleasedCheckpointError, match="weights hold 4 blocks"):
        load_released(folder)
    (folder / "config.json").write_text(json.dumps({**config, "mlp_type": "gated"}))
    with pytest.raises(ReleasedCheckpointError, match="mlp_type"):
        load_released(folder)
    (folder / "config.json").write_text(json.dumps({**config, "matryoshka_layers": [2, 3, 4]}))
    with pytest.raises(ReleasedCheckpointError, match="projection heads"):
        load_released(folder)


def test_folder_without_weights_is_reported(tmp_path):
    folder = write_released_layout(finetuned(), tmp_path / "ft")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ReleasedCheckpointError, match="has no weights"):
        load_released(folder)


# -- checkpoint.py -----------------------------------------------------------------------------

def test_save_and_load_checkpoint_round_trip(tmp_path):
    model = tiny(with_pretraining_heads=True, norm_intermediate_exits=True)
    tokenizer = tmp_path / "tok.json"
    tokenizer.write_text('{"model": "stand-in"}')
    folder = save_checkpoint(model, tmp_path / "ckpt", tokenizer_file=tokenizer, extra={"step": 7})
    meta = json.loads((folder / "mose_checkpoint.json").read_text())
    assert meta["kind"] == "mose-starcoder2" and meta["step"] == 7
    loaded, tokenizer_path = load_checkpoint(folder)
    assert isinstance(loaded, MoSEEncoder) and loaded.config == model.config
    assert tokenizer_path == folder / "tokenizer.json"
    assert_same_outputs(model, loaded)
    (folder / "model.safetensors").unlink()
    save_file({"embed_tokens.weight": torch.zeros(1024, 64)}, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(folder)


def test_load_checkpoint_recognises_a_released_folder(tmp_path):
    model = finetuned()
    folder = write_released_layout(model, tmp_path / "released")
    loaded, tokenizer_path = load_checkpoint(folder)
    assert tokenizer_path is None
    assert_same_outputs(model, loaded)
