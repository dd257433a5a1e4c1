"""XLNet: parity with Hugging Face ``XLNetModel`` / ``XLNetLMHeadModel``, checkpoints, errors.

Hugging Face models are built from small configs with random weights (no download), saved
to ``tmp_path`` and loaded from there. Parity tolerance: max abs diff <= 1e-5 in float32
(measured: at most 1.3e-6 on hidden states, 1.8e-7 on attention weights, 1.1e-6 on the
query stream with ``perm_mask`` + ``target_mapping``; the LM logits and losses of these seeds
agree bit for bit). An off-by-one relative shift, swapped segment embeddings, a content
stream that cannot see itself or a wrong ``gelu_new`` each make some of these tests fail.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from attnzoo.transformers_zoo.xlnet import (
    XLNetConfig,
    XLNetLMHeadModel,
    XLNetModel,
    relative_positions,
)

TOL = 1e-5
VOCAB, N_LAYER, N_HEAD = 97, 3, 4


def hf_config(**kwargs) -> transformers.XLNetConfig:
    options = {
        "vocab_size": VOCAB,
        "d_model": 48,
        "n_layer": N_LAYER,
        "n_head": N_HEAD,
        "d_inner": 80,
        "mem_len": None,
        "layer_norm_eps": 1e-6,
        "pad_token_id": 0,
    }
    options.update(kwargs)
    return transformers.XLNetConfig(**options)


def save_hf(model_class, tmp_path, seed: int = 0, **kwargs):
    """A random Hugging Face model saved to ``tmp_path``; returns it in eval mode."""
    torch.manual_seed(seed)
    model = model_class(hf_config(**kwargs)).eval()
    # Hugging Face's initialisation (std 0.02, unit LayerNorms) makes every score tiny:
    # randomise every parameter so that a wrong bias, shift or activation shows.
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.normal_(0.0, 0.3 if "layer_1.weight" in name else 0.1)
            if "layer_norm" in name and name.endswith("weight"):
                param.add_(1.0)
    model.save_pretrained(tmp_path)
    return model


def batch(seed: int = 1, n: int = 11):
    """Right-padded ids (lengths 7, 4, n), two segments per row, and the 0/1 mask."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (3, n), generator=generator)
    mask = torch.ones(3, n, dtype=torch.long)
    mask[0, 7:] = 0
    mask[1, 4:] = 0
    ids[mask == 0] = 0
    types = (torch.arange(n) >= n // 2).long().expand(3, n).clone()
    return ids, types, mask


def permutation_inputs(n: int, n_predict: int, seed: int = 2):
    """A random factorisation order per row: ``perm_mask`` (float, as in Hugging Face's
    examples: 1 = may not attend) hides from each token itself and every later token in the
    order; ``target_mapping`` selects the ``n_predict`` last tokens of the order."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.stack([torch.randperm(n, generator=generator) for _ in range(3)])
    perm_mask = (order[:, None, :] >= order[:, :, None]).float()
    target_mapping = torch.zeros(3, n_predict, n)
    for b in range(3):
        last = order[b].argsort()[-n_predict:]
        target_mapping[b, torch.arange(n_predict), last] = 1.0
    return perm_mask, target_mapping


def max_diff(a: torch.Tensor, b: torch.Tensor, rows: torch.Tensor | None = None) -> float:
    """Max abs difference; with ``rows`` ``(batch, n)``, over those positions only (for
    attention weights ``(batch, heads, n, n)``: over those query rows)."""
    if rows is not None:
        if a.dim() == 4:
            a, b = a.transpose(1, 2), b.transpose(1, 2)
        a, b = a[rows], b[rows]
    return (a - b).abs().max().item()


@pytest.mark.parametrize(
    "options",
    [{}, {"ff_activation": "gelu_new", "clamp_len": 3}, {"ff_activation": "relu"}],
    ids=["gelu", "gelu_new-clamp", "relu"],
)
def test_model_parity_with_padding_and_token_types(tmp_path, options):
    hf = save_hf(transformers.XLNetModel, tmp_path, **options)
    ours = XLNetModel.from_pretrained(tmp_path)
    assert not ours.training
    ids, types, mask = batch()
    real = mask.bool()
    kwargs = {"output_attentions": True, "output_hidden_states": True}
    with torch.no_grad():
        a = hf(ids, attention_mask=mask, token_type_ids=types, use_mems=False, **kwargs)
        b = ours(ids, attention_mask=mask, token_type_ids=types, **kwargs)
        # The original convention (1 = padding) and no token types.
        c = hf(ids, input_mask=1 - mask, use_mems=False)
        d = ours(ids, input_mask=~real)
    assert b.last_hidden_state.shape == (3, 11, 48)
    assert max_diff(a.last_hidden_state, b.last_hidden_state, real) <= TOL
    assert len(b.attentions) == N_LAYER
    for x, y in zip(a.attentions, b.attentions, strict=True):
        assert y.shape == (3, N_HEAD, 11, 11)
        assert max_diff(x, y, real) <= TOL
    assert len(b.hidden_states) == N_LAYER + 1
    for x, y in zip(a.hidden_states, b.hidden_states, strict=True):
        assert max_diff(x, y, real) <= TOL
    assert max_diff(c.last_hidden_state, d.last_hidden_state, real) <= TOL
    # Only the equality of segment ids counts; without them the segment term is left out.
    with torch.no_grad():
        e = ours(ids, attention_mask=mask, token_type_ids=1 - types).last_hidden_state
    assert max_diff(e, b.last_hidden_state, real) <= TOL  # only equality of segments counts
    with torch.no_grad():
        f = ours(ids, attention_mask=mask).last_hidden_state
    assert max_diff(f, b.last_hidden_state, real) > 1e-3


def test_model_parity_two_stream_with_perm_mask_and_target_mapping(tmp_path):
    hf = save_hf(transformers.XLNetModel, tmp_path, seed=4)
    ours = XLNetModel.from_pretrained(tmp_path)
    n, n_predict = 11, 3
    ids, types, _ = batch(n=n)
    perm_mask, target_mapping = permutation_inputs(n, n_predict)
    kwargs = {"output_attentions": True, "output_hidden_states": True}
    with torch.no_grad():
        a = hf(
            ids,
            perm_mask=perm_mask,
            target_mapping=target_mapping,
            token_type_ids=types,
            use_mems=False,
            **kwargs,
        )
        b = ours(
            ids, perm_mask=perm_mask, target_mapping=target_mapping, token_type_ids=types, **kwargs
        )
    assert b.last_hidden_state.shape == (3, n_predict, 48)
    assert max_diff(a.last_hidden_state, b.last_hidden_state) <= TOL
    assert len(b.hidden_states) == 2 * (N_LAYER + 1)  # h0, g0, h1, g1, ...
    for x, y in zip(a.hidden_states, b.hidden_states, strict=True):
        assert max_diff(x, y) <= TOL
    # Query-stream rows with at least one visible key: the first token of each order sees
    # none (zero weights here, uniform in Hugging Face; it is never a target).
    seen = (perm_mask == 0).any(-1)
    assert (~seen).sum() == 3
    for (xh, xg), (yh, yg) in zip(a.attentions, b.attentions, strict=True):
        assert max_diff(xh, yh) <= TOL
        assert max_diff(xg, yg, seen) <= TOL
        assert torch.all(yg.transpose(1, 2)[~seen] == 0)
    # perm_mask alone (content stream only): a token still sees itself.
    with torch.no_grad():
        c = hf(ids, perm_mask=perm_mask, use_mems=False).last_hidden_state
        d = ours(ids, perm_mask=perm_mask.bool()).last_hidden_state
    assert max_diff(c, d) <= TOL


def test_lm_head_parity_logits_and_loss(tmp_path):
    hf = save_hf(transformers.XLNetLMHeadModel, tmp_path)
    assert "lm_loss.weight" not in load_file(tmp_path / "model.safetensors")  # tied, left out
    ours = XLNetLMHeadModel.from_pretrained(tmp_path)
    assert ours.lm_loss.weight is ours.transformer.word_embedding.weight
    ids, types, mask = batch(n=13)
    real = mask.bool()
    labels = ids.masked_fill(~real, -100)
    with torch.no_grad():
        a = hf(
            ids,
            attention_mask=mask,
            token_type_ids=types,
            labels=labels,
            output_attentions=True,
            use_mems=False,
        )
        b = ours(
            ids, attention_mask=real, token_type_ids=types, labels=labels, output_attentions=True
        )
    assert b.logits.shape == (3, 13, VOCAB)
    assert max_diff(a.logits, b.logits, real) <= TOL
    assert abs(a.loss.item() - b.loss.item()) <= TOL
    for x, y in zip(a.attentions, b.attentions, strict=True):
        assert max_diff(x, y, real) <= TOL

    # Permutation language modelling: padding + perm_mask + target_mapping + labels.
    perm_mask, target_mapping = permutation_inputs(13, 4, seed=5)
    labels = torch.randint(0, VOCAB, (3, 4))
    with torch.no_grad():
        c = hf(
            ids,
            attention_mask=mask,
            perm_mask=perm_mask,
            target_mapping=target_mapping,
            labels=labels,
            use_mems=False,
        )
        d = ours(
            ids,
            attention_mask=mask,
            perm_mask=perm_mask.long(),
            target_mapping=target_mapping,
            labels=labels,
        )
    assert d.logits.shape == (3, 4, VOCAB)
    assert max_diff(c.logits, d.logits) <= TOL
    assert abs(c.loss.item() - d.loss.item()) <= TOL


def test_save_pretrained_round_trip_to_hugging_face(tmp_path):
    torch.manual_seed(3)
    config = XLNetConfig(
        vocab_size=VOCAB, d_model=32, n_layer=2, n_head=2, d_inner=64, layer_norm_eps=1e-5
    )
    ours = XLNetLMHeadModel(config).eval()
    with torch.no_grad():  # distinct LayerNorms and biases, so a swapped key would show
        for param in ours.parameters():
            param.add_(torch.randn_like(param), alpha=0.1)
    ours.save_pretrained(tmp_path / "lm")
    hf = transformers.XLNetLMHeadModel.from_pretrained(tmp_path / "lm").eval()
    assert hf.config.layer_norm_eps == 1e-5 and hf.config.d_inner == 64
    ids, types, mask = batch(n=9)
    real = mask.bool()
    perm_mask, target_mapping = permutation_inputs(9, 2)
    with torch.no_grad():
        a = hf(ids, attention_mask=mask, token_type_ids=types, use_mems=False)
        b = ours(ids, attention_mask=mask, token_type_ids=types)
        c = hf(ids, perm_mask=perm_mask, target_mapping=target_mapping, use_mems=False)
        d = ours(ids, perm_mask=perm_mask, target_mapping=target_mapping)
    assert max_diff(a.logits, b.logits, real) <= TOL
    assert max_diff(c.logits, d.logits) <= TOL

    ours.transformer.save_pretrained(tmp_path / "base")
    hf_config_json = json.loads((tmp_path / "base" / "config.json").read_text())
    assert hf_config_json["architectures"] == ["XLNetModel"]
    hf_base = transformers.XLNetModel.from_pretrained(tmp_path / "base").eval()
    back = XLNetModel.from_pretrained(tmp_path / "base")
    with torch.no_grad():
        e = hf_base(ids, attention_mask=mask, use_mems=False).last_hidden_state
        f = back(ids, attention_mask=mask).last_hidden_state
    assert max_diff(e, f, real) <= TOL
    assert back.config == ours.config


def test_base_model_reads_an_lm_checkpoint_and_overrides(tmp_path):
    hf = save_hf(transformers.XLNetLMHeadModel, tmp_path)
    ours = XLNetModel.from_pretrained(tmp_path, dropout=0.0)
    assert ours.config.dropout == 0.0
    ids, _, mask = batch()
    real = mask.bool()
    with torch.no_grad():
        a = hf.transformer(ids, attention_mask=mask, use_mems=False).last_hidden_state
        b = ours(ids, attention_mask=mask).last_hidden_state
    assert max_diff(a, b, real) <= TOL
    with pytest.raises(ValueError, match="unknown config fields"):
        XLNetModel.from_pretrained(tmp_path, n_layers=2)


def test_unknown_and_missing_keys_are_listed(tmp_path):
    save_hf(transformers.XLNetModel, tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state["layer.0.rel_attn.extra_bias"] = torch.zeros(3)
    del state["layer.1.ff.layer_2.weight"]
    del state["mask_emb"]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError) as error:
        XLNetModel.from_pretrained(tmp_path)
    message = str(error.value)
    assert "missing keys (2)" in message and "layer.1.ff.ffn.output.weight" in message
    assert "mask_emb" in message
    assert "unexpected keys (1): layer.0.rel_attn.extra_bias" in message


def test_config_errors_and_round_trip():
    for kwargs, name in [
        ({"attn_type": "uni"}, "attn_type"),
        ({"mem_len": -1}, "mem_len"),
        ({"bi_data": True}, "bi_data"),
        ({"same_length": True}, "same_length"),
        ({"ff_activation": "swish"}, "ff_activation"),
        ({"d_model": 30, "n_head": 4}, "d_model"),
        ({"d_head": 5}, "d_head"),
    ]:
        with pytest.raises(ValueError, match=f"`{name}`"):
            XLNetConfig(**{"vocab_size": 10, "d_model": 32, "n_head": 4, **kwargs})
    config = XLNetConfig(vocab_size=10, d_model=32, n_layer=1, n_head=4, d_inner=8)
    assert config.d_head == 8
    hf_json = XLNetModel.config_to_hf(config)
    assert hf_json["model_type"] == "xlnet" and hf_json["architectures"] == ["XLNetModel"]
    assert XLNetModel.config_from_hf(hf_json) == config
    hf_json["summary_type"] = "last"
    assert XLNetModel.config_from_hf(hf_json).extra == {"summary_type": "last"}


def test_input_errors():
    torch.manual_seed(0)
    model = XLNetModel(XLNetConfig(vocab_size=10, d_model=16, n_layer=1, n_head=2, d_inner=8))
    ids = torch.randint(0, 10, (2, 5))
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.full((2, 5), 10))
    with pytest.raises(ValueError, match="input_ids"):
        model(ids[0])
    with pytest.raises(TypeError, match="attention_mask"):
        model(ids, attention_mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match="at most one"):
        model(ids, attention_mask=torch.ones(2, 5, dtype=torch.long), input_mask=torch.zeros(2, 5))
    with pytest.raises(ValueError, match="input_mask"):
        model(ids, input_mask=torch.full((2, 5), 2))
    with pytest.raises(ValueError, match="perm_mask"):
        model(ids, perm_mask=torch.zeros(2, 5, 4))
    with pytest.raises(ValueError, match="perm_mask"):
        model(ids, perm_mask=torch.full((2, 5, 5), 0.5))
    with pytest.raises(ValueError, match="target_mapping"):
        model(ids, target_mapping=torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="token_type_ids"):
        model(ids, token_type_ids=torch.zeros(2, 4, dtype=torch.long))
    lm = XLNetLMHeadModel(model.config)
    with pytest.raises(ValueError, match="labels"):
        lm(ids, labels=torch.zeros(2, 4, dtype=torch.long))


def test_relative_positions_and_padding_invariance():
    table = relative_positions(4, 8, clamp_len=-1, device=torch.device("cpu"))
    assert table.shape == (8, 8)
    assert torch.allclose(table[4], torch.cat([torch.zeros(4), torch.ones(4)]))  # distance 0
    clamped = relative_positions(4, 8, clamp_len=2, device=torch.device("cpu"))
    assert torch.equal(clamped[0], clamped[2])  # distances 4 and 2 both read 2
    # Real positions do not depend on what the padding holds.
    torch.manual_seed(0)
    model = XLNetModel(
        XLNetConfig(vocab_size=10, d_model=16, n_layer=2, n_head=2, d_inner=8, dropout=0.0)
    ).eval()
    ids = torch.randint(0, 10, (1, 6))
    other = ids.clone()
    other[0, 4:] = (other[0, 4:] + 3) % 10
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    with torch.no_grad():
        a = model(ids, attention_mask=mask).last_hidden_state[:, :4]
        b = model(other, attention_mask=mask).last_hidden_state[:, :4]
    assert torch.allclose(a, b, atol=1e-6)


def test_training_mode_backward_reaches_every_parameter():
    torch.manual_seed(0)
    config = XLNetConfig(vocab_size=12, d_model=16, n_layer=2, n_head=2, d_inner=8, dropout=0.1)
    model = XLNetLMHeadModel(config).train()
    ids = torch.randint(0, 12, (2, 7))
    perm_mask, target_mapping = (x[:2] for x in permutation_inputs(7, 2))
    out = model(
        ids,
        perm_mask=perm_mask,
        target_mapping=target_mapping,
        token_type_ids=torch.zeros_like(ids),
        labels=torch.randint(0, 12, (2, 2)),
    )
    out.loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
