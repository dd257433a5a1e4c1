"""ULMFiT: AWD-LSTM regularisers, masks, concat pooling and the three-stage pipeline."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnzoo.transformers_zoo.ulmfit import (
    AWDLSTMConfig,
    AWDLSTMLanguageModel,
    LockedDropout,
    ULMFiTClassifier,
    ULMFiTSetup,
    WeightDropLSTM,
    WordVocabulary,
    concat_pool,
    embedding_dropout,
    load_ulmfit_corpus,
    load_ulmfit_reviews,
    run_ulmfit_pipeline,
)

TEXTS = ["the soup was cold .", "we loved this cafe and the bread was fresh .", "great view ."]


def _config(vocab: WordVocabulary, **overrides: float) -> AWDLSTMConfig:
    return AWDLSTMConfig(len(vocab), embed_dim=6, hidden_size=10, num_layers=3, **overrides)


def test_embedding_dropout_drops_whole_words() -> None:
    weight = torch.randn(50, 8)
    dropped = embedding_dropout(weight, 0.5, training=True)
    zero_rows = (dropped == 0).all(dim=1)
    assert 5 < int(zero_rows.sum()) < 45
    torch.testing.assert_close(dropped[~zero_rows], 2 * weight[~zero_rows])
    assert embedding_dropout(weight, 0.5, training=False) is weight


def test_locked_dropout_shares_its_mask_over_time() -> None:
    x = torch.ones(4, 7, 16)
    out = LockedDropout(0.5).train()(x)
    assert torch.equal(out, out[:, :1].expand_as(out))
    assert set(out.unique().tolist()) <= {0.0, 2.0} and (out == 0).any()
    assert torch.equal(LockedDropout(0.5).eval()(x), x)


def test_weight_drop_is_dropconnect_on_hidden_to_hidden_only() -> None:
    layer = WeightDropLSTM(3, 5, weight_dropout=0.5).train()
    x = torch.randn(2, 4, 3)
    reference = layer.lstm.weight_hh_l0.detach().clone()
    out_a, _ = layer(x)
    out_b, _ = layer(x)
    assert not torch.allclose(out_a, out_b)  # a fresh mask per call
    assert torch.equal(layer.lstm.weight_hh_l0, reference)  # the parameter is untouched
    # Without dropout (or in eval mode) it is exactly a plain LSTM with the same weights.
    layer.weight_dropout = 0.0
    layer.eval()
    with torch.no_grad():
        plain = nn.LSTM(3, 5, batch_first=True)
        plain.load_state_dict(layer.lstm.state_dict())
    torch.testing.assert_close(layer(x)[0], plain(x)[0])
    out_a.sum().backward()
    assert layer.lstm.weight_hh_l0.grad is not None and layer.lstm.weight_hh_l0.grad.abs().sum() > 0


def test_lm_respects_padding_and_ties_weights() -> None:
    vocab = WordVocabulary(TEXTS)
    torch.manual_seed(0)
    model = AWDLSTMLanguageModel(_config(vocab)).eval()
    assert model.decoder.weight is model.encoder.embedding.weight
    ids, mask = vocab.batch(TEXTS)
    alone_ids, alone_mask = vocab.batch(TEXTS[2:])
    batched = model(ids, mask).logits
    alone = model(alone_ids, alone_mask).logits
    n = alone_ids.shape[1]
    torch.testing.assert_close(batched[2, :n], alone[0], rtol=1e-5, atol=1e-6)
    out = model(ids, mask, compute_loss=True)
    assert out.loss is not None and torch.isfinite(out.loss)
    # The state carries over: continuing from it equals reading the text in one go.
    full = vocab.batch(["great view . great view ."], eos=False)[0]
    first = model(full[:, :4])
    second = model(full[:, 4:], state=first.encoder.state)
    torch.testing.assert_close(
        torch.cat([first.logits, second.logits], 1), model(full).logits, rtol=1e-5, atol=1e-6
    )


def test_concat_pooling_reads_real_tokens_only() -> None:
    hidden = torch.randn(2, 5, 3)
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    hidden_padded = hidden.clone()
    hidden_padded[0, 3:] = 100.0  # padding must not leak into max or mean
    pooled = concat_pool(hidden_padded, mask)
    expected = torch.cat([hidden[0, 2], hidden[0, :3].amax(0), hidden[0, :3].mean(0)])
    torch.testing.assert_close(pooled[0], expected)
    assert pooled.shape == (2, 9)


def test_classifier_from_language_model_and_layer_groups() -> None:
    vocab = WordVocabulary(TEXTS)
    lm = AWDLSTMLanguageModel(_config(vocab))
    classifier = ULMFiTClassifier.from_language_model(lm, n_classes=3).eval()
    assert torch.equal(classifier.encoder.embedding.weight, lm.encoder.embedding.weight)
    groups = classifier.layer_groups()
    assert len(groups) == 5 and groups[-1] is classifier.head
    ids, mask = vocab.batch(TEXTS)
    assert classifier(ids, mask).shape == (3, 3)


def test_bad_input_is_rejected() -> None:
    vocab = WordVocabulary(TEXTS)
    model = AWDLSTMLanguageModel(_config(vocab))
    ids, mask = vocab.batch(TEXTS)
    with pytest.raises(TypeError, match="attention_mask"):
        model(ids, mask.long())
    with pytest.raises(ValueError, match="prefix"):
        model(ids, mask.flip(1))
    with pytest.raises(ValueError, match="input_ids"):
        model(ids + len(vocab))
    with pytest.raises(ValueError, match="at least one real token"):
        model(ids, torch.zeros_like(mask))
    with pytest.raises(ValueError, match="weight_dropout"):
        _config(vocab, weight_dropout=1.0)
    with pytest.raises(TypeError, match="lm"):
        ULMFiTClassifier.from_language_model(nn.Linear(2, 2), 2)  # type: ignore[arg-type]


def test_shipped_data() -> None:
    corpus = load_ulmfit_corpus()
    texts, labels = load_ulmfit_reviews()
    assert len(corpus) == 800 and len(texts) == len(labels) == 700
    assert set(labels) == {0, 1}


@pytest.mark.slow
def test_three_stage_pipeline_beats_the_majority_baseline() -> None:
    # Held-out accuracy with the default setup: seeds 0, 1, 2, 3 give 1.00, 0.995, 0.99,
    # 0.795 against a majority baseline of 0.605.
    metrics = run_ulmfit_pipeline(ULMFiTSetup(), seed=0)
    assert metrics["pretrain_ppl_final"] < 0.2 * metrics["pretrain_ppl_initial"]
    assert metrics["target_ppl_after_finetune"] < 0.2 * metrics["target_ppl_before_finetune"]
    assert metrics["classifier_accuracy"] > metrics["majority_accuracy"] + 0.15
