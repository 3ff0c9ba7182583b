"""The MoSE encoder (training/model.py): shapes, parameter counts, exits, padding, HF parity."""

from __future__ import annotations

import dataclasses

import pytest

torch = pytest.importorskip("torch")

from mose_training.base import ExportInfo
from mose_training.model import (
    PRESETS,
    MoSEConfig,
    MoSEEncoder,
    count_parameters,
    preset,
)

# "Parameters to each exit" of the released 1B model (MOSE.md, the paper): embeddings + blocks.
PAPER_PARAMS = {4: 162e6, 9: 301e6, 18: 551e6, 27: 801e6, 36: 1.05e9}


def tiny(**overrides) -> MoSEEncoder:
    torch.manual_seed(0)
    return MoSEEncoder(preset("tiny", **overrides)).eval()


def batch(lengths=(9, 6, 12), vocab=1024, seed=1):
    """Right-padded batch of random tokens (ids >= 4, pad 0)."""
    g = torch.Generator().manual_seed(seed)
    t = max(lengths)
    ids = torch.zeros(len(lengths), t, dtype=torch.long)
    mask = torch.zeros(len(lengths), t, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(4, vocab, (n,), generator=g)
        mask[row, :n] = 1
    return ids, mask


# -- config and presets ------------------------------------------------------------------------

def test_1b_preset_is_the_released_architecture():
    c = preset("mose-1b")
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
            c.intermediate_size, c.vocab_size, c.max_position_embeddings) == \
        (1024, 36, 16, 4, 12288, 49156, 2048)
    assert c.head_dim == 64 and c.exit_layers == (4, 9, 18, 27, 36)
    assert abs(c.rope_theta - 1e6) < 1 and c.layer_norm_eps == 1e-5
    assert c.initializer_range == 0.018042 and c.pooling == "last" and c.pad_token_id == 0


def test_forward_shapes_and_unit_norm():
    model = tiny()
    ids, mask = batch()
    out = model(ids, mask)
    assert out.exits == (2, 4)
    for hidden, pooled, emb in zip(out.hidden_states, out.pooled, out.embeddings):
        assert hidden.shape == (3, 12, 64) and pooled.shape == (3, 64) and emb.shape == (3, 32)
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    assert out[4] is out.embeddings[1]


def test_config_round_trip_and_validation():
    config = preset("tiny", norm_intermediate_exits=True)
    data = config.to_dict()
    assert data["exit_layers"] == [2, 4]
    assert MoSEConfig.from_dict(data) == config
    model = MoSEEncoder.from_config_dict(MoSEEncoder(config).config_dict())
    assert model.config == config
    with pytest.raises(ValueError, match="unknown MoSEConfig fields"):
        MoSEConfig.from_dict({**data, "n_layer": 3})
    with pytest.raises(ValueError, match="exit_layers"):
        preset("tiny", exit_layers=(3, 5))
    with pytest.raises(ValueError, match="num_key_value_heads"):
        preset("tiny", num_key_value_heads=3)
    with pytest.raises(ValueError, match="unknown MoSE preset"):
        preset("huge")


# -- parameter counts --------------------------------------------------------------------------

@pytest.mark.parametrize("layer", sorted(PAPER_PARAMS))
def test_1b_parameter_count_matches_the_paper_without_allocating(layer):
    # The paper counts embeddings + blocks up to the exit (+ the final norm at 36), no heads.
    count = count_parameters(preset("mose-1b"), up_to_exit=layer, include_heads=False)
    assert abs(count - PAPER_PARAMS[layer]) / PAPER_PARAMS[layer] < 0.01, (layer, count)


def test_1b_parameter_count_is_exact_arithmetic():
    c = preset("mose-1b")
    block = (2 * (1024 * 1024 + 1024) + 2 * (1024 * 256 + 256)  # q, o, k, v
             + (1024 * 12288 + 12288) + (12288 * 1024 + 1024) + 4 * 1024)  # MLP, 2 LayerNorms
    embeddings = 49156 * 1024
    assert count_parameters(c, 4, include_heads=False) == embeddings + 4 * block == 161_564_672
    assert count_parameters(c, 36, include_heads=False) == embeddings + 36 * block + 2048
    heads = 5 * (1024 * 1024 + 1024)
    assert count_parameters(c) == embeddings + 36 * block + 2048 + heads


@pytest.mark.parametrize("overrides", [
    {}, {"with_pretraining_heads": True}, {"projection_dim": None},
    {"norm_intermediate_exits": True, "use_bias": False},
])
def test_analytic_count_equals_allocated_model(overrides):
    model = tiny(**overrides)
    assert count_parameters(model.config) == sum(p.numel() for p in model.parameters())
    for layer in model.exit_layers:
        held = sum(p.numel() for p in model.exit_module(layer).parameters())
        assert count_parameters(model.config, layer) == held, layer


# -- exits -------------------------------------------------------------------------------------

def test_early_exit_equals_the_full_run_at_that_layer():
    model = tiny()
    ids, mask = batch()
    with torch.no_grad():
        full = model(ids, mask)
        early = model(ids, mask, exits=(2,))
        exported = model.exit_module(2)(ids, mask)
        deepest = model.exit_module(4)(ids, mask)
    assert early.exits == (2,)
    torch.testing.assert_close(early.hidden_states[0], full.hidden_states[0], rtol=0, atol=0)
    torch.testing.assert_close(early[2], full[2], rtol=0, atol=0)
    torch.testing.assert_close(exported, full[2], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(deepest, full[4], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(full[2], full[4], atol=1e-3)  # the exits really differ


def test_shallow_exit_runs_fewer_blocks():
    model = tiny()
    calls: list[int] = []
    for index, block in enumerate(model.layers):
        block.register_forward_hook(lambda *_, i=index: calls.append(i))
    ids, mask = batch()
    with torch.no_grad():
        model(ids, mask, exits=(2,))
        assert calls == [0, 1]
        calls.clear()
        model(ids, mask)
        assert calls == [0, 1, 2, 3]
        calls.clear()
        module = model.exit_module(2)
        module(ids, mask)
        assert calls == [0, 1]
    assert len(module.layers) == 2
    held = {id(p) for p in module.parameters()}
    assert not held & {id(p) for p in model.layers[2].parameters()}
    assert not held & {id(p) for p in model.norm.parameters()}  # exit 2 reads the raw stream
    assert not held & {id(p) for p in model.projection_heads[1].parameters()}


def test_unknown_exit_is_rejected():
    model = tiny()
    ids, mask = batch()
    with pytest.raises(AssertionError, match="not in this model's exits"):
        model(ids, mask, exits=(3,))
    with pytest.raises(AssertionError):
        model.exit_module(1)


def test_only_the_deepest_exit_reads_the_final_norm():
    model = tiny()
    raw: dict[int, torch.Tensor] = {}
    for index, block in enumerate(model.layers):
        block.register_forward_hook(lambda _m, _i, out, i=index: raw.__setitem__(i + 1, out))
    ids, mask = batch()
    with torch.no_grad():
        out = model(ids, mask)
        torch.testing.assert_close(out.hidden_states[0], raw[2], rtol=0, atol=0)
        torch.testing.assert_close(out.hidden_states[1], model.norm(raw[4]), rtol=0, atol=0)
    normed = tiny(norm_intermediate_exits=True)
    normed.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(normed(ids, mask).hidden_states[0], model.norm(raw[2]))


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_padding_does_not_change_embeddings(pooling):
    model = tiny(pooling=pooling)
    ids, mask = batch(lengths=(7, 12, 4))
    with torch.no_grad():
        together = model(ids, mask)
        for row in range(3):
            n = int(mask[row].sum())
            alone = model(ids[row:row + 1, :n], mask[row:row + 1, :n])
            padded_ids = torch.cat([ids[row:row + 1, :n], torch.zeros(1, 9, dtype=torch.long)], 1)
            padded_mask = torch.cat([mask[row:row + 1, :n], torch.zeros(1, 9, dtype=torch.long)], 1)
            padded = model(padded_ids, padded_mask)
            for layer in model.exit_layers:
                torch.testing.assert_close(padded[layer], alone[layer], rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(together[layer][row:row + 1], alone[layer],
                                           rtol=1e-5, atol=1e-6)


def test_last_pooling_reads_the_final_token():
    model = tiny()
    ids, mask = batch(lengths=(8, 5))
    with torch.no_grad():
        out = model(ids, mask)
    torch.testing.assert_close(out.pooled[0][1], out.hidden_states[0][1, 4], rtol=0, atol=0)
    changed = ids.clone()
    changed[1, 4] = 7 if int(ids[1, 4]) != 7 else 8  # change the pooled (<cls>) token
    with torch.no_grad():
        assert not torch.allclose(model(changed, mask)[2][1], out[2][1], atol=1e-4)


# -- parity with transformers' Starcoder2Model -------------------------------------------------

def _hf_model(config: MoSEConfig, state: dict[str, torch.Tensor]):
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.Starcoder2Config(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, hidden_act=config.hidden_act,
        max_position_embeddings=config.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        norm_epsilon=config.layer_norm_eps, use_bias=config.use_bias, sliding_window=None,
        bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    hf = transformers.Starcoder2Model(hf_config).eval()
    # Our names are HF's names for the backbone; heads are ours alone.
    backbone = {k: v for k, v in state.items() if not k.startswith("projection_heads.")}
    missing, unexpected = hf.load_state_dict(backbone, strict=False)
    assert not unexpected and not [k for k in missing if "rotary" not in k], (missing, unexpected)
    return hf


def _bidirectional_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B, 1, T, T) additive mask that hides padding keys only (no causal triangle)."""
    t = mask.shape[1]
    keep = mask[:, None, None, :].expand(-1, 1, t, -1).float()
    return (1.0 - keep) * torch.finfo(torch.float32).min


def test_backbone_matches_hf_starcoder2_without_causal_mask():
    model = tiny()
    hf = _hf_model(model.config, model.state_dict())
    ids, mask = batch()
    with torch.no_grad():
        ours = model(ids, mask)
        theirs = hf(input_ids=ids, attention_mask=_bidirectional_mask(mask),
                    output_hidden_states=True)
        causal = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    # HF's last_hidden_state is after the final norm, like our deepest exit.
    torch.testing.assert_close(ours.hidden_states[1][real], theirs.last_hidden_state[real],
                               rtol=1e-5, atol=1e-5)
    # hidden_states[k] is the raw output of block k for k < num_hidden_layers, like exit 2.
    torch.testing.assert_close(ours.hidden_states[0][real], theirs.hidden_states[2][real],
                               rtol=1e-5, atol=1e-5)
    # The comparison can fail: HF's default (causal) attention gives other states.
    assert not torch.allclose(ours.hidden_states[1][real], causal[real], atol=1e-3)


def test_hf_parity_with_the_1b_head_layout():
    """GQA 16/4 heads of size 64 as in the 1B model, at a tiny width and depth."""
    torch.manual_seed(0)
    config = preset("tiny", hidden_size=256, num_attention_heads=4, num_key_value_heads=1,
                    intermediate_size=512, num_hidden_layers=2, exit_layers=(1, 2),
                    rope_theta=preset("mose-1b").rope_theta)
    model = MoSEEncoder(config).eval()
    hf = _hf_model(config, model.state_dict())
    ids, mask = batch(lengths=(30, 17))
    with torch.no_grad():
        ours = model(ids, mask).hidden_states[-1]
        theirs = hf(input_ids=ids, attention_mask=_bidirectional_mask(mask)).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], rtol=1e-5, atol=1e-5)


# -- training features -------------------------------------------------------------------------

def test_gradient_checkpointing_gives_the_same_gradients():
    ids, mask = batch()
    grads = []
    for enabled in (False, True):
        model = tiny(gradient_checkpointing=enabled).train()
        loss = sum(e.sum() for e in model(ids, mask).embeddings)
        loss.backward()
        grads.append(model.layers[0].self_attn.q_proj.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])
    model = tiny()
    model.set_gradient_checkpointing(True)
    assert model.gradient_checkpointing


def test_dropout_is_active_in_training_only():
    model = tiny(attention_dropout=0.1, residual_dropout=0.1, embedding_dropout=0.1)
    ids, mask = batch()
    with torch.no_grad():
        assert torch.equal(model(ids, mask)[4], model(ids, mask)[4])
        model.train()
        assert not torch.allclose(model(ids, mask)[4], model(ids, mask)[4])


def test_pretraining_heads_give_mlm_and_icc_logits_per_exit():
    model = tiny(with_pretraining_heads=True)
    ids, mask = batch()
    with torch.no_grad():
        out = model.pretraining_forward(ids, mask)
        assert out.exits == (2, 4)
        assert [m.shape for m in out.mlm_logits] == [(3, 12, 1024)] * 2
        assert [i.shape for i in out.icc_logits] == [(3, 2)] * 2
        # The shared heads are told the exit apart by the exit embedding.
        hidden, pooled = out.encoder.hidden_states[0], out.encoder.pooled[0]
        as_exit_0 = model.heads(hidden, pooled, 0)
        as_exit_1 = model.heads(hidden, pooled, 1)
    torch.testing.assert_close(as_exit_0[0], out.mlm_logits[0])
    torch.testing.assert_close(as_exit_0[1], out.icc_logits[0])
    assert not torch.allclose(as_exit_0[0], as_exit_1[0])
    with pytest.raises(AssertionError, match="no pretraining heads"):
        tiny().pretraining_forward(ids, mask)


def test_export_info_describes_the_input_format():
    info = tiny().export_info()
    assert isinstance(info, ExportInfo)
    assert info.pooling == "last" and info.pad_id == 0 and info.max_tokens == 128
    assert info.num_layers == 4 and not info.add_special_tokens
    assert info.text_template.startswith("<sep>") and info.text_template.endswith("{input}<cls>")
    assert "{lang}" in info.code_template and "{input}" in info.code_template
    assert info.extra["exit_layers"] == [2, 4] and info.extra["embedding_dim"] == 32


def test_exit_module_exports_to_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import warnings

    model = tiny()
    module = model.exit_module(2).eval()
    ids, mask = batch(lengths=(6, 4))
    path = tmp_path / "exit2.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (ids, mask), str(path), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                          dynamic_axes={"input_ids": {0: "b", 1: "t"},
                                        "attention_mask": {0: "b", 1: "t"}, "embedding": {0: "b"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids2, mask2 = batch(lengths=(11, 3, 7), seed=5)  # other batch size and length
    got = session.run(None, {"input_ids": ids2.numpy(), "attention_mask": mask2.numpy()})[0]
    with torch.no_grad():
        want = model(ids2, mask2)[2]
    torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-4, atol=1e-5)


def test_presets_build():
    for name in ("tiny", "small"):
        config = PRESETS[name]
        assert dataclasses.replace(config) == config
        assert count_parameters(config) > 0
