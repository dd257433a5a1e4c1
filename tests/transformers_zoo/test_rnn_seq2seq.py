"""RNN encoder-decoder with attention: teacher forcing vs decoding, masks, variants, errors."""

from __future__ import annotations

import pytest
import torch

from attnzoo.transformers_zoo.rnn_seq2seq import (
    ReverseSetup,
    RNNSeq2Seq,
    RNNSeq2SeqConfig,
    Seq2SeqOutput,
    anti_diagonal_fraction,
    run_seq2seq_demo,
    train_reverse,
)
from attnzoo.transformers_zoo.tasks.sequences import BOS, EOS, PAD, exact_match

VOCAB = 11

VARIANTS = [
    pytest.param(dict(attention="bahdanau"), id="bahdanau"),
    pytest.param(dict(attention="luong", score="dot"), id="luong-dot"),
    pytest.param(dict(attention="luong", score="general"), id="luong-general"),
    pytest.param(dict(attention="luong", score="concat"), id="luong-concat"),
    pytest.param(dict(attention="luong", score="general", input_feeding=True), id="luong-feed"),
    pytest.param(dict(attention="local-m", window=1), id="local-m"),
    pytest.param(dict(attention="local-p", window=2, input_feeding=True), id="local-p-feed"),
    pytest.param(dict(attention="local-p", window=2, score="concat"), id="local-p-concat"),
    pytest.param(dict(attention=None), id="no-attention"),
    pytest.param(dict(attention="bahdanau", normalizer="sparsemax"), id="bahdanau-sparsemax"),
]


def make_model(cell: str = "gru", **overrides) -> RNNSeq2Seq:
    options = dict(src_vocab_size=VOCAB, embed_dim=8, hidden_size=12, cell=cell)
    options.update(overrides)
    return RNNSeq2Seq(RNNSeq2SeqConfig(**options)).eval()


def make_batch(seed: int = 0):
    """Sources of lengths 6, 4 and 2 (PAD after them) and teacher-forcing inputs."""
    generator = torch.Generator().manual_seed(seed)
    src = torch.randint(3, VOCAB, (3, 6), generator=generator)
    src[1, 4:] = PAD
    src[2, 2:] = PAD
    tgt_in = torch.randint(3, VOCAB, (3, 5), generator=generator)
    tgt_in[:, 0] = BOS
    return src, src != PAD, tgt_in


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_decode_step_reproduces_teacher_forcing(variant, cell):
    model = make_model(cell, num_layers=2, **variant)
    src, src_mask, tgt_in = make_batch()
    out = model(src, src_mask, tgt_in, return_attentions=True)
    assert isinstance(out, Seq2SeqOutput)
    assert out.logits.shape == (3, 5, VOCAB)
    state = model.encode(src, src_mask)
    for t in range(tgt_in.shape[1]):
        log_probs, next_state = model.decode_step(tgt_in[:, t], state)
        expected = torch.log_softmax(out.logits[:, t], dim=-1)
        torch.testing.assert_close(log_probs, expected, atol=1e-5, rtol=0)
        _, _, weights = model._step(tgt_in[:, t], state)
        if out.attentions is None:
            assert weights is None
        else:
            torch.testing.assert_close(weights, out.attentions[:, t], atol=1e-5, rtol=0)
        state = next_state
    if out.attentions is not None:
        assert out.attentions.shape == (3, 5, 6)
        # Padded source positions get no attention at all.
        assert (out.attentions[~src_mask[:, None, :].expand_as(out.attentions)] == 0).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_trains_and_decodes(variant):
    model = make_model(**variant).train()
    src, src_mask, tgt_in = make_batch(1)
    logits = model(src, src_mask, tgt_in)
    logits.logsumexp(-1).mean().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    model.eval()
    greedy = model.greedy_decode(src, src_mask, max_len=7)
    assert greedy.dtype == torch.long and greedy.shape[0] == 3 and greedy.shape[1] <= 7
    tokens, scores = model.beam_search(src, src_mask, beam_width=3, max_len=7)
    assert tokens.shape[0] == 3 and scores.shape == (3,) and torch.isfinite(scores).all()


@pytest.mark.parametrize("variant", VARIANTS[:2] + VARIANTS[4:6])
def test_beam_width_one_is_greedy_decoding(variant):
    model = make_model(**variant)
    src, src_mask, _ = make_batch(2)
    greedy = model.greedy_decode(src, src_mask, max_len=9)
    beam, _ = model.beam_search(src, src_mask, beam_width=1, max_len=9, length_penalty=0.0)
    assert torch.equal(beam, greedy)


def test_greedy_output_is_the_argmax_of_its_own_teacher_forcing():
    model = make_model(attention="luong", input_feeding=True, cell="lstm")
    src, src_mask, _ = make_batch(3)
    tokens = model.greedy_decode(src, src_mask, max_len=6)
    tgt_in = torch.cat([torch.full((3, 1), BOS), tokens[:, :-1]], dim=1)
    logits = model(src, src_mask, tgt_in)
    real = torch.ones_like(tokens, dtype=torch.bool)
    for i, row in enumerate(tokens.tolist()):
        if EOS in row:
            real[i, row.index(EOS) + 1 :] = False
    assert torch.equal(logits.argmax(-1)[real], tokens[real])


@pytest.mark.parametrize("variant", VARIANTS)
def test_padded_source_content_does_not_change_outputs(variant):
    model = make_model(**variant)
    src, src_mask, tgt_in = make_batch(4)
    noisy = src.clone()
    noisy[~src_mask] = torch.randint(3, VOCAB, (int((~src_mask).sum()),))
    clean = model(src, src_mask, tgt_in, return_attentions=True)
    dirty = model(noisy, src_mask, tgt_in, return_attentions=True)
    torch.testing.assert_close(dirty.logits, clean.logits, atol=1e-6, rtol=0)
    # ... and a source decodes the same alone as in a padded batch.
    alone = model(src[2:, :2], None, tgt_in[2:])
    torch.testing.assert_close(alone, clean.logits[2:], atol=1e-5, rtol=0)
    assert torch.equal(
        model.greedy_decode(noisy, src_mask, max_len=5), model.greedy_decode(src, None, max_len=5)
    )


def test_unidirectional_multilayer_lstm_and_default_mask():
    model = make_model("lstm", num_layers=3, bidirectional=False, hidden_size=9, dropout=0.1)
    src, src_mask, tgt_in = make_batch(5)
    state = model.encode(src)
    assert state.hidden.shape == (3, 3, 9) and state.cell is not None
    assert torch.equal(state.memory_mask, src_mask)
    assert model(src, None, tgt_in).shape == (3, 5, VOCAB)


def test_no_attention_model_sees_only_the_final_state():
    model = make_model(attention=None)
    src, src_mask, tgt_in = make_batch(6)
    out = model(src, src_mask, tgt_in, return_attentions=True)
    assert out.attentions is None
    assert model.attention is None and model.encode(src).projected_keys is None


def test_config_errors_name_the_argument():
    with pytest.raises(ValueError, match="cell"):
        RNNSeq2SeqConfig(VOCAB, cell="rnn")
    with pytest.raises(ValueError, match="attention"):
        RNNSeq2SeqConfig(VOCAB, attention="global")
    with pytest.raises(ValueError, match="score"):
        RNNSeq2SeqConfig(VOCAB, attention="luong", score="cosine")
    with pytest.raises(ValueError, match="input_feeding"):
        RNNSeq2SeqConfig(VOCAB, attention="bahdanau", input_feeding=True)
    with pytest.raises(ValueError, match="hidden_size"):
        RNNSeq2SeqConfig(VOCAB, hidden_size=7, bidirectional=True)
    with pytest.raises(ValueError, match="dropout"):
        RNNSeq2SeqConfig(VOCAB, dropout=1.0)
    with pytest.raises(ValueError, match="eos_token_id"):
        RNNSeq2SeqConfig(VOCAB, eos_token_id=VOCAB)
    with pytest.raises(ValueError, match="window"):
        make_model(attention="local-p", window=0)


def test_input_errors_name_the_argument():
    model = make_model(attention="luong")
    src, src_mask, tgt_in = make_batch()
    bad = src.clone()
    bad[0, 0] = VOCAB
    with pytest.raises(ValueError, match=rf"`src`.*\[0, {VOCAB}\).*{VOCAB}"):
        model(bad, src_mask, tgt_in)
    bad_tgt = tgt_in.clone()
    bad_tgt[1, 2] = -1
    with pytest.raises(ValueError, match=r"`tgt_in`.*-1"):
        model(src, src_mask, bad_tgt)
    with pytest.raises(TypeError, match="src"):
        model(src.float(), src_mask, tgt_in)
    with pytest.raises(ValueError, match="src"):
        model(src[0], None, tgt_in)
    with pytest.raises(TypeError, match="src_mask"):
        model(src, src_mask.float(), tgt_in)
    with pytest.raises(ValueError, match="src_mask"):
        model(src, src_mask[:, :3], tgt_in)
    with pytest.raises(ValueError, match="src_mask"):
        model(src, src_mask.flip(1), tgt_in)  # padding first
    empty = src_mask.clone()
    empty[0] = False
    with pytest.raises(ValueError, match="src_mask"):
        model(src, empty, tgt_in)
    with pytest.raises(ValueError, match="tgt_in"):
        model(src, src_mask, tgt_in[:2])
    with pytest.raises(ValueError, match="tgt_in"):
        model(src, src_mask, None)
    with pytest.raises(ValueError, match="prev_tokens"):
        model.decode_step(torch.full((3,), VOCAB + 2), model.encode(src))


def test_runs_on_every_device(device):
    model = make_model(attention="local-p", window=2, cell="lstm").to(device)
    src, src_mask, tgt_in = (t.to(device) for t in make_batch())
    out = model(src, src_mask, tgt_in, return_attentions=True)
    assert out.logits.device.type == device.type
    tokens, scores = model.beam_search(src, src_mask, beam_width=2, max_len=4)
    assert tokens.device.type == device.type and scores.device.type == device.type


def test_metrics_by_hand():
    predicted = torch.tensor([[5, 4, EOS], [5, EOS, PAD], [4, 4, 4]])
    target = torch.tensor([[5, 4, EOS, PAD], [5, 4, EOS, PAD], [4, 4, 4, EOS]])
    assert exact_match(predicted, target, target != PAD) == pytest.approx(1 / 3)
    # Source lengths 3 and 2; the targets are reversals (3 and 2 symbols, then EOS).
    src_mask = torch.tensor([[True, True, True], [True, True, False]])
    tgt_mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    attentions = torch.zeros(2, 4, 3)
    for t, s in enumerate([2, 1, 0, 0]):
        attentions[0, t, s] = 1.0
    for t, s in enumerate([1, 1, 0, 0]):  # step 1 should look at position 0
        attentions[1, t, s] = 1.0
    assert anti_diagonal_fraction(attentions, src_mask, tgt_mask) == pytest.approx(4 / 5)


def test_train_reverse_smoke():
    setup = ReverseSetup(
        min_len=3,
        max_len=5,
        n_symbols=4,
        batch_size=4,
        embed_dim=8,
        hidden_size=8,
        steps=2,
        anneal_steps=1,
        eval_size=5,
    )
    model, metrics = train_reverse("luong", setup, progress=False)
    assert set(metrics) == {"exact", "token", "anti_diagonal", "loss", "seconds"}
    assert 0.0 <= metrics["exact"] <= 1.0 and 0.0 <= metrics["anti_diagonal"] <= 1.0
    assert not model.training


def test_demo_smoke():
    metrics = run_seq2seq_demo(steps=2, progress=False)
    expected = {"exact", "token", "seconds"}
    assert {f"baseline_{k}" for k in expected} | {f"attention_{k}" for k in expected} | {
        "attention_anti_diagonal"
    } == set(metrics)


# Reversal of 30 symbols (Bahdanau et al. 2015, Fig. 2 in miniature). The two halves of
# the experiment are separate tests so that each stays within the slow-test budget; they
# train the same model (ReverseSetup defaults, seed 0), with and without attention.


@pytest.mark.slow
def test_attention_reverses_30_symbols_along_the_anti_diagonal():
    _, metrics = train_reverse("luong", ReverseSetup(), seed=0, progress=False)
    assert metrics["exact"] >= 0.95, metrics
    # Each output step attends most to the mirrored source position.
    assert metrics["anti_diagonal"] >= 0.9, metrics


@pytest.mark.slow
def test_without_attention_the_fixed_length_context_fails_on_30_symbols():
    _, metrics = train_reverse(None, ReverseSetup(), seed=0, progress=False)
    # The attention model of the test above gets ~100% exact and ~100% token accuracy.
    assert metrics["exact"] <= 0.05, metrics
    assert metrics["token"] <= 0.6, metrics
