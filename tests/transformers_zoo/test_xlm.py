"""XLM: parity with Hugging Face ``XLMModel`` / ``XLMWithLMHeadModel``, checkpoints, errors.

Hugging Face models are built from small configs with random weights (no download), saved
to ``tmp_path`` and loaded from there. Parity tolerance: max abs diff <= 1e-5 in float32
(measured: at most 1.8e-6 on hidden states, 1.8e-7 on attention weights, 1.3e-6 on logits;
a tanh GELU in place of the exact one moves the logits by 5e-4).
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from attnzoo.transformers_zoo.xlm import (
    XLMConfig,
    XLMModel,
    XLMWithLMHeadModel,
    real_token_mask,
)

TOL = 1e-5
VOCAB, PAD, N_LANGS = 97, 2, 3


def hf_config(**kwargs) -> transformers.XLMConfig:
    options = {
        "vocab_size": VOCAB,
        "emb_dim": 48,
        "n_layers": 3,
        "n_heads": 4,
        "n_langs": N_LANGS,
        "max_position_embeddings": 40,
        "pad_token_id": PAD,
        "layer_norm_eps": 1e-6,
    }
    options.update(kwargs)
    return transformers.XLMConfig(**options)


def save_hf(model_class, tmp_path, seed: int = 0, **kwargs):
    """A random Hugging Face model saved to ``tmp_path``; returns it in eval mode."""
    torch.manual_seed(seed)
    model = model_class(hf_config(**kwargs)).eval()
    # Hugging Face's initialisation (std 0.02, unit LayerNorms) keeps pre-activations so
    # small that GELU and its tanh approximation agree to 1e-6: randomise every parameter
    # and widen the feed-forward input maps, so that a wrong activation, LayerNorm or bias
    # mapping shows (a tanh GELU then moves the logits by about 1e-3).
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "position_embeddings" in name and kwargs.get("sinusoidal_embeddings"):
                continue
            param.normal_(0.0, 0.3 if "lin1.weight" in name else 0.1)
            if "layer_norm" in name and name.endswith("weight"):
                param.add_(1.0)
    model.save_pretrained(tmp_path)
    return model


def batch(seed: int = 1, n: int = 11):
    """Right-padded ids (lengths 7, 4, n), language ids and the 0/1 mask."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (3, n), generator=generator)
    ids[0, 7:] = PAD
    ids[1, 4:] = PAD
    langs = torch.randint(0, N_LANGS, (3, n), generator=generator)
    mask = (ids != PAD).long()
    return ids, langs, mask


def max_diff(a: torch.Tensor, b: torch.Tensor, real: torch.Tensor | None = None) -> float:
    """Max abs difference; with ``real`` ``(batch, n)``, over real positions only (for
    attention weights ``(batch, heads, n, n)``: over the rows of real queries)."""
    if real is not None:
        if a.dim() == 4:
            a, b = a.transpose(1, 2), b.transpose(1, 2)
        a, b = a[real], b[real]
    return (a - b).abs().max().item()


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"causal": True},
        {"sinusoidal_embeddings": True, "gelu_activation": False},
        {"use_lang_emb": False},
    ],
    ids=["mlm", "causal", "sinusoidal-relu", "no-lang-emb"],
)
def test_model_parity_with_padding_and_langs(tmp_path, options):
    hf = save_hf(transformers.XLMModel, tmp_path, **options)
    ours = XLMModel.from_pretrained(tmp_path)
    assert not ours.training
    ids, langs, mask = batch()
    real = mask.bool()
    with torch.no_grad():
        a = hf(
            ids, attention_mask=mask, langs=langs, output_attentions=True, output_hidden_states=True
        )
        b = ours(
            ids, attention_mask=mask, langs=langs, output_attentions=True, output_hidden_states=True
        )
    assert max_diff(a.last_hidden_state, b.last_hidden_state, real) <= TOL
    assert len(b.attentions) == len(a.attentions) == 3
    for x, y in zip(a.attentions, b.attentions, strict=True):
        assert y.shape == (3, 4, 11, 11)
        assert max_diff(x, y, real) <= TOL  # rows of real queries
    assert len(b.hidden_states) == 4
    for x, y in zip(a.hidden_states, b.hidden_states, strict=True):
        assert max_diff(x, y, real) <= TOL
    # Padded outputs are zero, as Hugging Face leaves them.
    assert torch.all(b.last_hidden_state[~real] == 0)


def test_model_parity_token_types_positions_lengths_and_bool_mask(tmp_path):
    hf = save_hf(transformers.XLMModel, tmp_path)
    ours = XLMModel.from_pretrained(tmp_path)
    ids, langs, mask = batch(n=9)
    types = torch.randint(0, 5, ids.shape)
    positions = torch.arange(2, 11).unsqueeze(0).expand(3, -1)
    lengths = mask.sum(1)
    real = mask.bool()
    with torch.no_grad():
        a = hf(ids, langs=langs, token_type_ids=types, position_ids=positions, lengths=lengths)
        b = ours(ids, langs=langs, token_type_ids=types, position_ids=positions, lengths=lengths)
        c = ours(
            ids, attention_mask=real, langs=langs, token_type_ids=types, position_ids=positions
        )
        # No mask and no lengths: the non-pad count gives the lengths, as in Hugging Face.
        d = hf(ids, langs=langs)
        e = ours(ids, langs=langs)
    assert max_diff(a.last_hidden_state, b.last_hidden_state, real) <= TOL
    assert max_diff(b.last_hidden_state, c.last_hidden_state) <= TOL
    assert max_diff(d.last_hidden_state, e.last_hidden_state, real) <= TOL


@pytest.mark.parametrize("causal", [False, True])
def test_lm_head_parity_logits_and_loss(tmp_path, causal):
    hf = save_hf(transformers.XLMWithLMHeadModel, tmp_path, causal=causal)
    ours = XLMWithLMHeadModel.from_pretrained(tmp_path)
    assert ours.pred_layer.weight is ours.transformer.embeddings.word_embeddings.weight
    ids, langs, mask = batch(n=13)
    ids[2, 12] = PAD
    mask = (ids != PAD).long()
    labels = ids.masked_fill(ids == PAD, -100)
    real = mask.bool()
    with torch.no_grad():
        a = hf(ids, attention_mask=mask, langs=langs, labels=labels, output_attentions=True)
        b = ours(ids, attention_mask=mask, langs=langs, labels=labels, output_attentions=True)
    assert b.logits.shape == (3, 13, VOCAB)
    assert max_diff(a.logits, b.logits, real) <= TOL
    assert abs(a.loss.item() - b.loss.item()) <= TOL
    for x, y in zip(a.attentions, b.attentions, strict=True):
        assert max_diff(x, y, real) <= TOL


def test_save_pretrained_round_trip_to_hugging_face(tmp_path):
    torch.manual_seed(3)
    config = XLMConfig(
        vocab_size=VOCAB,
        emb_dim=32,
        n_layers=2,
        n_heads=2,
        n_langs=N_LANGS,
        max_position_embeddings=30,
        layer_norm_eps=1e-5,
        dropout=0.0,
    )
    ours = XLMWithLMHeadModel(config).eval()
    with torch.no_grad():  # distinct LayerNorms and biases, so a swapped key would show
        for param in ours.parameters():
            param.add_(torch.randn_like(param), alpha=0.1)
    ours.save_pretrained(tmp_path / "lm")
    hf = transformers.XLMWithLMHeadModel.from_pretrained(tmp_path / "lm").eval()
    assert hf.config.layer_norm_eps == 1e-5 and hf.config.n_langs == N_LANGS
    ids, langs, mask = batch(n=9)
    real = mask.bool()
    with torch.no_grad():
        a = hf(ids, attention_mask=mask, langs=langs)
        b = ours(ids, attention_mask=mask, langs=langs)
    assert max_diff(a.logits, b.logits, real) <= TOL

    ours.transformer.save_pretrained(tmp_path / "base")
    assert json.loads((tmp_path / "base" / "config.json").read_text())["architectures"] == [
        "XLMModel"
    ]
    hf_base = transformers.XLMModel.from_pretrained(tmp_path / "base").eval()
    back = XLMModel.from_pretrained(tmp_path / "base")
    with torch.no_grad():
        c = hf_base(ids, attention_mask=mask, langs=langs).last_hidden_state
        d = back(ids, attention_mask=mask, langs=langs).last_hidden_state
    assert max_diff(c, d, real) <= TOL
    assert back.config == ours.config


def test_base_model_reads_an_lm_checkpoint_and_overrides(tmp_path):
    hf = save_hf(transformers.XLMWithLMHeadModel, tmp_path, dropout=0.1)
    ours = XLMModel.from_pretrained(tmp_path, attention_dropout=0.0)
    assert ours.config.attention_dropout == 0.0 and ours.config.dropout == 0.1
    ids, langs, mask = batch()
    with torch.no_grad():
        a = hf.transformer(ids, attention_mask=mask, langs=langs).last_hidden_state
        b = ours(ids, attention_mask=mask, langs=langs).last_hidden_state
    assert max_diff(a, b, mask.bool()) <= TOL
    with pytest.raises(ValueError, match="unknown config fields"):
        XLMModel.from_pretrained(tmp_path, hidden=3)


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    save_hf(transformers.XLMModel, tmp_path)
    weights = tmp_path / "model.safetensors"
    state = load_file(weights)
    del state["layer_norm2.1.weight"]
    state["attentions.0.extra.weight"] = torch.zeros(2)
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError) as error:
        XLMModel.from_pretrained(tmp_path)
    message = str(error.value)
    assert "missing keys" in message and "layers.1.ffn_norm.weight" in message
    assert "unexpected keys" in message and "attentions.0.extra.weight" in message


def test_lm_head_needs_its_bias(tmp_path):
    save_hf(transformers.XLMModel, tmp_path)  # a base checkpoint has no pred_layer
    with pytest.raises(ValueError, match=r"missing keys.*pred_layer\.bias"):
        XLMWithLMHeadModel.from_pretrained(tmp_path)


def test_language_embeddings_shift_outputs_as_expected():
    torch.manual_seed(0)
    config = XLMConfig(
        vocab_size=VOCAB,
        emb_dim=32,
        n_layers=2,
        n_heads=2,
        n_langs=N_LANGS,
        max_position_embeddings=30,
        dropout=0.0,
        attention_dropout=0.0,
    )
    model = XLMModel(config).eval()
    ids, _, mask = batch(n=9)
    zeros, ones = torch.zeros_like(ids), torch.ones_like(ids)
    with torch.no_grad():
        lang0 = model(ids, attention_mask=mask, langs=zeros).last_hidden_state
        lang1 = model(ids, attention_mask=mask, langs=ones).last_hidden_state
        none = model(ids, attention_mask=mask).last_hidden_state
        # Language 1 is language 0 plus (e1 - e0) added to every token embedding.
        table = model.embeddings.lang_embeddings.weight
        delta = table[1] - table[0]
        model.embeddings.lang_embeddings.weight[0] += delta
        moved = model(ids, attention_mask=mask, langs=zeros).last_hidden_state
        # With a zero language vector, `langs` changes nothing (no language added).
        model.embeddings.lang_embeddings.weight[0] = 0.0
        zero_lang = model(ids, attention_mask=mask, langs=zeros).last_hidden_state
    real = mask.bool()
    assert max_diff(lang0, lang1, real) > 1e-2
    assert max_diff(moved, lang1, real) <= TOL
    assert max_diff(zero_lang, none, real) <= TOL

    # One language (or use_lang_emb=False): no language table, and `langs` is ignored.
    single = XLMModel(XLMConfig(vocab_size=VOCAB, emb_dim=32, n_layers=1, n_heads=2, n_langs=1))
    assert single.embeddings.lang_embeddings is None
    assert not any("lang" in key for key in single.state_dict())
    single.eval()
    with torch.no_grad():
        assert torch.equal(single(ids, langs=ones).last_hidden_state, single(ids).last_hidden_state)


def test_sinusoidal_positions_are_hugging_faces_and_frozen(tmp_path):
    hf = save_hf(transformers.XLMModel, tmp_path, sinusoidal_embeddings=True)
    config = XLMModel.from_pretrained(tmp_path).config
    fresh = XLMModel(config)
    table = fresh.embeddings.position_embeddings.weight
    assert not table.requires_grad
    assert max_diff(table, hf.position_embeddings.weight.detach()) <= 1e-6


def test_training_step_reaches_tied_weights():
    torch.manual_seed(0)
    config = XLMConfig(
        vocab_size=VOCAB, emb_dim=32, n_layers=1, n_heads=2, n_langs=2, max_position_embeddings=16
    )
    model = XLMWithLMHeadModel(config).train()
    ids, _, mask = batch(n=9)
    labels = torch.full_like(ids, -100)
    labels[:, 1] = ids[:, 1]
    out = model(ids, attention_mask=mask, langs=torch.ones_like(ids), labels=labels)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    grad = model.transformer.embeddings.word_embeddings.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert model.transformer.embeddings.lang_embeddings.weight.grad[1].abs().sum() > 0


def test_config_checks():
    with pytest.raises(ValueError, match="`asm`"):
        XLMConfig(asm=True)
    with pytest.raises(ValueError, match="`is_encoder`"):
        XLMConfig(is_encoder=False)
    with pytest.raises(ValueError, match="`emb_dim`"):
        XLMConfig(emb_dim=30, n_heads=4)
    with pytest.raises(ValueError, match="`pad_index`"):
        XLMConfig(vocab_size=10, pad_index=10)
    with pytest.raises(ValueError, match="XLM"):
        XLMModel.config_from_hf({"model_type": "bert"})


def test_input_errors_name_the_argument():
    model = XLMWithLMHeadModel(
        XLMConfig(
            vocab_size=VOCAB,
            emb_dim=16,
            n_layers=1,
            n_heads=2,
            n_langs=N_LANGS,
            max_position_embeddings=12,
        )
    ).eval()
    ids, langs, mask = batch(n=9)
    bad = ids.clone()
    bad[0, 0] = VOCAB
    with pytest.raises(ValueError, match=rf"`input_ids`.*\[0, {VOCAB}\).*{VOCAB}"):
        model(bad)
    with pytest.raises(ValueError, match=rf"`langs`.*\[0, {N_LANGS}\)"):
        model(ids, langs=langs + N_LANGS)
    with pytest.raises(ValueError, match="`langs` must have the shape"):
        model(ids, langs=langs[:, :3])
    with pytest.raises(TypeError, match="`attention_mask`"):
        model(ids, attention_mask=mask.float())
    with pytest.raises(ValueError, match="`attention_mask` must hold 0 or 1"):
        model(ids, attention_mask=mask * 2)
    with pytest.raises(ValueError, match="`lengths`"):
        model(ids, lengths=torch.tensor([3, 4, 10]))
    with pytest.raises(ValueError, match="`input_ids` must have at most"):
        model(torch.randint(3, VOCAB, (1, 13)))
    with pytest.raises(ValueError, match="`labels`"):
        model(ids, labels=torch.full_like(ids, VOCAB))
    with pytest.raises(ValueError, match="`position_ids`"):
        model(ids, position_ids=torch.arange(5)[None])


def test_real_token_mask_matches_the_three_sources():
    ids, _, mask = batch()
    expected = mask.bool()
    assert torch.equal(real_token_mask(ids, PAD), expected)
    assert torch.equal(real_token_mask(ids, PAD, lengths=mask.sum(1)), expected)
    assert torch.equal(real_token_mask(ids, PAD, attention_mask=mask), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
def test_low_precision_and_all_padding_row_stay_finite(dtype, causal):
    torch.manual_seed(0)
    config = XLMConfig(
        vocab_size=50,
        emb_dim=16,
        n_layers=2,
        n_heads=2,
        n_langs=2,
        max_position_embeddings=20,
        causal=causal,
    )
    model = XLMWithLMHeadModel(config).eval().to(dtype)
    ids = torch.randint(3, 50, (2, 7))
    ids[1] = config.pad_index  # a sequence with no real token
    with torch.no_grad():
        out = model(ids, langs=torch.ones_like(ids), labels=ids, output_attentions=True)
    assert out.logits.dtype == dtype
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
    assert torch.all(out.attentions[0].isfinite())
