"""The Vaswani Transformer: forward pass, cached decoding, searches, and two experiments."""

from __future__ import annotations

import math

import pytest
import torch

from attnzoo.transformers_zoo.generation import length_penalty_factor
from attnzoo.transformers_zoo.stacks import LayerConfig, StackConfig, learned_alphas
from attnzoo.transformers_zoo.tasks import (
    BOS,
    EOS,
    PAD,
    copy_task,
    exact_match,
    reverse_task,
    sequence_loss,
)
from attnzoo.transformers_zoo.transformer import (
    Transformer,
    TransformerConfig,
    evaluate,
    run_sparse_transformer_demo,
    small_transformer_config,
    sparse_transformer_config,
    train_on_task,
    train_reverse_transformer,
)

VOCAB = 13


def _model(**kwargs) -> Transformer:
    return Transformer(small_transformer_config(VOCAB, dim=32, **kwargs)).eval()


def _batch(seed: int = 0, batch: int = 4):
    return reverse_task(batch, 2, 6, VOCAB - 3, torch.Generator().manual_seed(seed))


@torch.no_grad()
def _full_log_probs(model: Transformer, src, src_mask, tgt_in) -> torch.Tensor:
    return torch.log_softmax(model(src, tgt_in, src_mask).float(), dim=-1)


def _naive_greedy(model: Transformer, src, src_mask, max_len: int) -> list[list[int]]:
    """Greedy decoding by re-running the whole decoder at every step (no cache)."""
    results = []
    for i in range(src.shape[0]):
        tokens = [BOS]
        for _ in range(max_len):
            log_probs = _full_log_probs(
                model, src[i : i + 1], src_mask[i : i + 1], torch.tensor([tokens])
            )
            tokens.append(int(log_probs[0, -1].argmax()))
            if tokens[-1] == EOS:
                break
        results.append(tokens[1:])
    return results


def test_forward_shapes_tying_and_sharing() -> None:
    model = _model()
    batch = _batch()
    logits = model(batch.src, batch.decoder_input(), batch.src_mask, batch.tgt_mask)
    assert logits.shape == (*batch.tgt.shape, VOCAB)
    assert model.src_embeddings is model.tgt_embeddings and model.lm_head is None
    hidden = torch.randn(3, 32)
    torch.testing.assert_close(
        model.project(hidden), hidden @ model.tgt_embeddings.word_embeddings.weight.T
    )
    stack = StackConfig(dim=16, heads=2, depth=1, dropout=0.0)
    separate = Transformer(
        TransformerConfig(
            src_vocab_size=20,
            tgt_vocab_size=9,
            encoder=stack,
            decoder=StackConfig(dim=24, heads=2, depth=2, dropout=0.0),
            tie_output=False,
            max_len=16,
        )
    )
    assert separate.src_embeddings is not separate.tgt_embeddings
    assert separate.lm_head is not None and separate.lm_head.weight.shape == (9, 24)
    src = torch.randint(0, 20, (2, 5))
    out = separate(src, torch.randint(0, 9, (2, 3)))
    assert out.shape == (2, 3, 9)
    assert "tgt_embeddings.word_embeddings.weight" in dict(separate.named_parameters())


def test_padded_source_tokens_do_not_change_the_logits() -> None:
    model = _model()
    batch = _batch()
    logits = model(batch.src, batch.decoder_input(), batch.src_mask, batch.tgt_mask)
    src = batch.src.masked_fill(~batch.src_mask, 7)
    logits2 = model(src, batch.decoder_input(), batch.src_mask, batch.tgt_mask)
    torch.testing.assert_close(logits2[batch.tgt_mask], logits[batch.tgt_mask])


@pytest.mark.parametrize(
    "layer",
    [LayerConfig(), LayerConfig(normalizer="entmax", learn_alpha=True)],
    ids=["softmax", "adaptive-entmax"],
)
def test_decode_step_with_caches_equals_the_teacher_forced_forward(layer) -> None:
    model = _model(layer=layer)
    batch = _batch()
    tgt_in = batch.decoder_input()
    full = _full_log_probs(model, batch.src, batch.src_mask, tgt_in)
    state = model.decoding_state(batch.src, batch.src_mask)
    steps = []
    with torch.no_grad():
        for t in range(tgt_in.shape[1]):
            log_probs, state = model.decode_step(tgt_in[:, t], state)
            steps.append(log_probs)
    assert (torch.stack(steps, dim=1) - full).abs().max() <= 1e-5


def test_greedy_decode_equals_naive_recomputation() -> None:
    model = _model()
    batch = _batch(seed=3)
    tokens = model.greedy_decode(batch.src, batch.src_mask, max_len=8)
    expected = _naive_greedy(model, batch.src, batch.src_mask, max_len=8)
    for row, seq in zip(tokens.tolist(), expected, strict=True):
        assert row[: len(seq)] == seq
        assert all(t == PAD for t in row[len(seq) :])


def test_beam_width_one_equals_greedy_and_scores_match_a_rescoring() -> None:
    model = _model()
    batch = _batch(seed=5, batch=3)
    greedy = model.greedy_decode(batch.src, batch.src_mask, max_len=8)
    beam1, _ = model.beam_search(
        batch.src, batch.src_mask, max_len=8, beam_width=1, length_penalty=0.0
    )
    assert torch.equal(beam1, greedy)
    # Width 3: the reported score is the length-penalised sum of the hypothesis'
    # log-probabilities, recomputed here by a teacher-forced pass (this checks that the
    # caches were reordered with the beams).
    tokens, scores = model.beam_search(
        batch.src, batch.src_mask, max_len=8, beam_width=3, length_penalty=0.6
    )
    for i, row in enumerate(tokens.tolist()):
        seq = row[: row.index(EOS) + 1] if EOS in row else row
        log_probs = _full_log_probs(
            model, batch.src[i : i + 1], batch.src_mask[i : i + 1], torch.tensor([[BOS, *seq]])
        )
        total = sum(float(log_probs[0, t, tok]) for t, tok in enumerate(seq))
        expected = total / length_penalty_factor(len(seq), 0.6)
        assert math.isclose(float(scores[i]), expected, rel_tol=1e-4, abs_tol=1e-4)


def test_decoding_runs_on_every_device(device: torch.device) -> None:
    model = _model().to(device)
    batch = _batch().to(device)
    tokens = model.greedy_decode(batch.src, batch.src_mask, max_len=6)
    assert tokens.device.type == device.type and tokens.shape[0] == 4
    tokens, scores = model.beam_search(batch.src, batch.src_mask, max_len=6, beam_width=2)
    assert torch.isfinite(scores).all()


def test_exact_match_and_sequence_loss() -> None:
    tgt = torch.tensor([[5, 6, EOS], [7, EOS, PAD]])
    mask = tgt != PAD
    assert exact_match(torch.tensor([[5, 6, EOS], [7, EOS, PAD]]), tgt, mask) == 1.0
    assert exact_match(torch.tensor([[5, 6, EOS], [7, 8, EOS]]), tgt, mask) == 0.5
    assert exact_match(torch.tensor([[5, 6], [7, EOS]]), tgt, mask) == 0.5
    logits = torch.zeros(2, 3, 10)
    assert math.isclose(float(sequence_loss(logits, tgt, mask)), math.log(10), rel_tol=1e-6)


def test_bad_inputs_and_configs_name_the_argument() -> None:
    model = _model()
    src = torch.tensor([[3, 4, 5]])
    with pytest.raises(ValueError, match=r"src.*\[0, 13\).*13"):
        model(torch.tensor([[3, 13]]), torch.tensor([[BOS]]))
    with pytest.raises(ValueError, match=r"tgt_in.*-2"):
        model(src, torch.tensor([[BOS, -2]]))
    with pytest.raises(ValueError, match="tgt_in"):
        model(src, torch.tensor([[BOS], [BOS]]))
    with pytest.raises(TypeError, match="src_mask"):
        model(src, torch.tensor([[BOS]]), src_mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match="src_mask"):
        model(src, torch.tensor([[BOS]]), src_mask=torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="tgt_mask"):
        model(src, torch.tensor([[BOS]]), tgt_mask=torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="src"):
        model(torch.tensor([3, 4]), torch.tensor([[BOS]]))
    with pytest.raises(ValueError, match="max_len"):
        model.greedy_decode(src, max_len=64)
    with pytest.raises(ValueError, match="share_embeddings"):
        TransformerConfig(src_vocab_size=10, tgt_vocab_size=11, share_embeddings=True)
    with pytest.raises(ValueError, match="share_embeddings"):
        TransformerConfig(
            src_vocab_size=10,
            tgt_vocab_size=10,
            share_embeddings=True,
            decoder=StackConfig(dim=256, heads=4),
        )
    with pytest.raises(ValueError, match="eos_id"):
        TransformerConfig(src_vocab_size=10, tgt_vocab_size=2)
    with pytest.raises(TypeError, match="encoder"):
        TransformerConfig(src_vocab_size=10, tgt_vocab_size=10, encoder={"dim": 8})
    with pytest.raises(TypeError, match="config"):
        Transformer({"src_vocab_size": 10})


def test_training_reduces_the_loss() -> None:
    torch.manual_seed(0)
    model = _model()
    losses = train_on_task(
        model,
        lambda b, g: copy_task(b, 2, 5, VOCAB - 3, g),
        steps=60,
        batch_size=32,
        lr=3e-3,
        progress=False,
    )
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    assert not model.training


# ---------------------------------------------------------------------------------------
# experiments
# ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_transformer_learns_to_reverse_and_beam_one_equals_greedy() -> None:
    """Reverse sequences of 2-10 symbols (20 symbols): >= 95% exact with greedy decoding.

    An untrained model gets 0% here; the trained one about 99%.
    """
    model, test, _ = train_reverse_transformer(progress=False)
    max_len = test.tgt.shape[1]
    greedy = model.greedy_decode(test.src, test.src_mask, max_len=max_len)
    accuracy = exact_match(greedy, test.tgt, test.tgt_mask)
    assert accuracy >= 0.95, accuracy
    beam, _ = model.beam_search(
        test.src, test.src_mask, max_len=max_len, beam_width=1, length_penalty=0.0
    )
    assert torch.equal(beam, greedy)
    assert evaluate(model, test, beam_width=4) >= 0.95


@pytest.mark.slow
def test_adaptively_sparse_transformer_alphas_move_apart() -> None:
    """Correia et al. 2019 on a toy task: every attention is alpha-entmax with a learned
    alpha per head, all starting at 1.5. Learning the copy task, the heads specialise: the
    cross-attention heads (which learn a one-to-one alignment) become sparser (alpha up),
    the self-attention heads denser (alpha down). A model whose alphas do not learn stays
    at 1.5 with zero spread.
    """
    result = run_sparse_transformer_demo(progress=False)
    assert result["greedy_accuracy"] >= 0.9, result
    assert result["alpha_max"] - result["alpha_min"] >= 0.15, result
    assert result["alpha_max"] > 1.55 and result["alpha_min"] < 1.45, result
    assert result["cross_alpha_min"] > 1.5, result  # every cross-attention head sparser
    assert result["self_alpha_mean"] < 1.5, result  # self-attention denser on average


def test_sparse_config_puts_learned_entmax_everywhere() -> None:
    model = Transformer(sparse_transformer_config(VOCAB, dim=16, depth=1))
    alphas = learned_alphas(model)
    assert sorted(alphas) == [
        "decoder.layers.0.cross_attention",
        "decoder.layers.0.self_attention",
        "encoder.layers.0.attention",
    ]
    assert all(torch.allclose(a, torch.full_like(a, 1.5)) for a in alphas.values())
