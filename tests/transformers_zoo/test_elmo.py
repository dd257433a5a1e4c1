"""ELMo: character-CNN biLM, directions, scalar mix, mean-ELMo and training."""

from __future__ import annotations

import pytest
import torch

from attnzoo.transformers_zoo.elmo import (
    BiLM,
    ELMoConfig,
    ScalarMix,
    char_ids,
    elmo_batch,
    mean_elmo,
    reverse_padded,
    run_elmo_demo,
)
from attnzoo.transformers_zoo.ulmfit import WordVocabulary

SENTENCES = [
    "the cow feeds the old horse .",
    "a whale passes .",
    "the clever astronaut repairs it .",
]


def _tiny() -> tuple[BiLM, WordVocabulary]:
    vocab = WordVocabulary(SENTENCES)
    config = ELMoConfig(
        len(vocab), filters=((1, 4), (2, 6), (3, 5)), projection_dim=8, hidden_size=12
    )
    return BiLM(config).eval(), vocab


def test_char_ids_layout() -> None:
    ids = char_ids([["ab", "c"], ["d"]], max_chars=5)
    assert ids.shape == (2, 2, 5)
    assert ids[0, 0].tolist() == [1, 3 + ord("a"), 3 + ord("b"), 2, 0]
    assert ids[1, 1].tolist() == [0] * 5  # a padding word
    long = char_ids([["abcdefgh"]], max_chars=5)[0, 0].tolist()
    assert long[0] == 1 and long[-1] == 2  # cut, markers kept


def test_scalar_mix_is_the_formula() -> None:
    mix = ScalarMix(3)
    with torch.no_grad():
        mix.weights.copy_(torch.tensor([0.3, -1.2, 2.0]))
        mix.gamma.fill_(0.7)
    layers = [torch.randn(2, 5, 7) for _ in range(3)]
    s = torch.exp(mix.weights) / torch.exp(mix.weights).sum()
    expected = 0.7 * (s[0] * layers[0] + s[1] * layers[1] + s[2] * layers[2])
    torch.testing.assert_close(mix(layers), expected, rtol=1e-6, atol=1e-6)


def test_backward_lm_sees_only_the_right_context_and_forward_only_the_left() -> None:
    model, vocab = _tiny()
    batch = elmo_batch(SENTENCES, vocab)
    out = model(batch.chars, batch.mask)
    i = 3
    left = batch.chars.clone()
    left[0, :i] = char_ids([["zz", "qq", "xy"]], 16)[0]
    perturbed = model(left, batch.mask)
    half = model.config.projection_dim
    for layer, changed in zip(out.layers[1:], perturbed.layers[1:], strict=True):
        # Backward states at i.. depend on words >= i only; forward states at i do change.
        torch.testing.assert_close(layer[0, i:, half:], changed[0, i:, half:], rtol=0, atol=1e-6)
        assert not torch.allclose(layer[0, i, :half], changed[0, i, :half])
    right = batch.chars.clone()
    right[0, i + 1 :] = right[0, i + 1 :].flip(0)  # reorder the right context (padding kept)
    perturbed = model(right, batch.mask)
    for layer, changed in zip(out.layers[1:], perturbed.layers[1:], strict=True):
        torch.testing.assert_close(layer[0, : i + 1, :half], changed[0, : i + 1, :half])


def test_padding_does_not_change_real_states() -> None:
    model, vocab = _tiny()
    batch = elmo_batch(SENTENCES, vocab)
    alone = elmo_batch(SENTENCES[1:2], vocab)
    together = model(batch.chars, batch.mask)
    single = model(alone.chars, alone.mask)
    n = alone.mask.shape[1]
    for a, b in zip(together.layers, single.layers, strict=True):
        torch.testing.assert_close(a[1, :n], b[0], rtol=1e-5, atol=1e-6)
        assert torch.all(a[1, n:] == 0)
    vectors = mean_elmo(ScalarMix(3)(together.layers), batch.mask)
    torch.testing.assert_close(vectors[1], mean_elmo(ScalarMix(3)(single.layers), alone.mask)[0])


def test_reverse_padded_is_an_involution() -> None:
    x = torch.arange(12.0).reshape(2, 6)
    lengths = torch.tensor([4, 6])
    assert reverse_padded(x, lengths)[0].tolist() == [3, 2, 1, 0, 4, 5]
    torch.testing.assert_close(reverse_padded(reverse_padded(x, lengths), lengths), x)


def test_loss_and_gradients() -> None:
    model, vocab = _tiny()
    model.train()
    batch = elmo_batch(SENTENCES, vocab)
    out = model(batch.chars, batch.mask, batch.word_ids)
    assert out.loss is not None and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.token_encoder.char_embedding.weight.grad.abs().sum() > 0
    assert out.forward_logits.shape == (3, batch.mask.shape[1], len(vocab))


def test_bad_input_is_rejected() -> None:
    model, vocab = _tiny()
    batch = elmo_batch(SENTENCES, vocab)
    with pytest.raises(TypeError, match="mask"):
        model(batch.chars, batch.mask.long())
    with pytest.raises(ValueError, match="prefix"):
        model(batch.chars, batch.mask.flip(1))
    with pytest.raises(ValueError, match="max_chars"):
        model(batch.chars[..., :5], batch.mask)
    with pytest.raises(ValueError, match="word_ids"):
        model(batch.chars, batch.mask, batch.word_ids[:, :2])
    with pytest.raises(ValueError, match="layers"):
        ScalarMix(2)([torch.zeros(1, 2, 3)])
    with pytest.raises(ValueError, match="hidden_size"):
        ELMoConfig(10, projection_dim=16, hidden_size=8)
    with pytest.raises(TypeError, match="sentences"):
        char_ids([["ok", ""]])


@pytest.mark.slow
def test_bilm_perplexity_falls_on_the_grammar_corpus() -> None:
    # 150 steps, seeds 0 and 1: held-out perplexity 77 -> 5.1 against a unigram 25.
    metrics = run_elmo_demo(steps=100, progress=False, seed=0)
    assert metrics["perplexity_final"] < 0.5 * metrics["unigram_perplexity"]
    assert metrics["perplexity_final"] < 0.2 * metrics["perplexity_initial"]
