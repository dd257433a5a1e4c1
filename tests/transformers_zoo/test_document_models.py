"""The ragged-document task, the HAN, the attention BiLSTM, the text-CNN and their comparison."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnzoo.transformers_zoo.han import (
    AttentionBiLSTM,
    AttentionBiLSTMConfig,
    HANConfig,
    HierarchicalAttentionNetwork,
    run_document_demo,
    steps_to_fit,
    top_attention_hits,
)
from attnzoo.transformers_zoo.tasks.documents import (
    DOCUMENT_VOCAB,
    DOCUMENT_VOCAB_SIZE,
    FIRST_FILLER,
    FIRST_TOPIC,
    MARKER,
    PERIOD,
    DocumentBatch,
    decode_document,
    document_task,
    flatten_documents,
)
from attnzoo.transformers_zoo.tasks.sequences import PAD
from attnzoo.transformers_zoo.text_cnn import TextCNN, TextCNNConfig
from attnzoo.transformers_zoo.training import TrainConfig, fit

V = DOCUMENT_VOCAB_SIZE


def _batch(n: int = 6, seed: int = 0, **task: float) -> DocumentBatch:
    return document_task(n, torch.Generator().manual_seed(seed), **task)


def _han(**overrides: object) -> HierarchicalAttentionNetwork:
    config = {"embed_dim": 8, "word_hidden_size": 8, "sentence_hidden_size": 8} | overrides
    return HierarchicalAttentionNetwork(HANConfig(V, 4, **config)).eval()


def _bilstm(**overrides: object) -> AttentionBiLSTM:
    config = {"embed_dim": 8, "hidden_size": 8} | overrides
    return AttentionBiLSTM(AttentionBiLSTMConfig(V, 4, **config)).eval()


def _cnn(**overrides: object) -> TextCNN:
    config = {"embed_dim": 8, "n_filters": 4} | overrides
    return TextCNN(TextCNNConfig(V, 4, **config)).eval()


# --------------------------------------------------------------------------- the task


def test_task_is_reproducible_from_the_seed() -> None:
    a, b, c = _batch(seed=5), _batch(seed=5), _batch(seed=6)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.key_mask, b.key_mask)
    assert not torch.equal(a.input_ids, c.input_ids) or not torch.equal(a.labels, c.labels)


def test_labels_follow_the_topic_next_to_the_marker() -> None:
    n_classes = 3
    batch = _batch(64, seed=1, n_classes=n_classes, min_sentences=1, max_sentences=5)
    ids, words, sentences = batch.input_ids, batch.word_mask, batch.sentence_mask
    assert ids.shape == words.shape and sentences.shape == ids.shape[:2]
    assert (ids[~words] == PAD).all() and (ids[words] != PAD).all()
    assert torch.equal(sentences, words.any(-1))
    for i in range(64):
        label, key = int(batch.labels[i]), int(batch.key_sentence[i])
        assert 0 <= label < n_classes
        n_sent = int(sentences[i].sum())
        assert 1 <= n_sent <= 5 and sentences[i, :n_sent].all()
        for s in range(n_sent):
            sentence = ids[i, s][words[i, s]].tolist()
            assert 4 + 1 <= len(sentence) <= 10 + 1 and sentence[-1] == PERIOD
            topics = [t for t in sentence if FIRST_TOPIC <= t < FIRST_FILLER]
            if s == key:
                # The key sentence: the marker once and the label's topic, nothing else.
                assert sentence.count(MARKER) == 1 and topics == [FIRST_TOPIC + label]
                assert sorted(ids[i, s][batch.key_mask[i, s]].tolist()) == sorted(
                    [MARKER, FIRST_TOPIC + label]
                )
            else:
                # Other sentences: no marker, at most one distractor of another class.
                assert MARKER not in sentence and len(topics) <= 1
                assert all(FIRST_TOPIC <= t < FIRST_TOPIC + n_classes for t in topics)
                assert FIRST_TOPIC + label not in topics
                assert not batch.key_mask[i, s].any()
    assert int(batch.key_mask.sum()) == 2 * 64


def test_task_without_distractors_names_the_label_by_its_only_topic_word() -> None:
    batch = _batch(32, seed=2, distractor_prob=0.0)
    topic = (batch.input_ids >= FIRST_TOPIC) & (batch.input_ids < FIRST_FILLER)
    assert (topic.flatten(1).sum(-1) == 1).all()
    assert torch.equal(batch.input_ids[topic], FIRST_TOPIC + batch.labels)


def test_flat_view_concatenates_the_real_words() -> None:
    batch = _batch(5, seed=3)
    flat, mask = batch.flat()
    assert flat.shape == mask.shape == (5, int(batch.word_mask.flatten(1).sum(-1).max()))
    for i in range(5):
        assert flat[i][mask[i]].tolist() == batch.input_ids[i][batch.word_mask[i]].tolist()
        assert (flat[i][~mask[i]] == PAD).all()
    key = batch.flat_key_mask()
    assert torch.equal(flat[key], batch.input_ids[batch.key_mask])
    assert decode_document(flat[0], mask[0]) == decode_document(
        batch.input_ids[0], batch.word_mask[0]
    )
    assert "recommend" in decode_document(batch.input_ids[0]).split()
    assert len(DOCUMENT_VOCAB) == V and DOCUMENT_VOCAB[MARKER] == "recommend"


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n_classes": 1}, "n_classes"),
        ({"n_classes": 99}, "n_classes"),
        ({"min_words": 1}, "min_words"),
        ({"min_sentences": 3, "max_sentences": 2}, "max_sentences"),
        ({"distractor_prob": 1.5}, "distractor_prob"),
    ],
)
def test_task_rejects_bad_settings(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        _batch(**kwargs)


def test_flatten_rejects_mismatched_shapes() -> None:
    batch = _batch(2)
    with pytest.raises(ValueError, match="word_mask"):
        flatten_documents(batch.input_ids[:, :1], batch.word_mask)
    with pytest.raises(TypeError, match="word_mask"):
        flatten_documents(batch.input_ids, batch.word_mask.long())


# --------------------------------------------------------------------------- shapes and masks


def test_han_shapes_and_attention_on_padding_is_zero() -> None:
    batch = _batch(5)
    out = _han()(batch.input_ids, batch.word_mask, batch.sentence_mask)
    b, s, w = batch.input_ids.shape
    assert out.logits.shape == (b, 4)
    assert out.word_attention.shape == (b, s, w) and out.sentence_attention.shape == (b, s)
    assert (out.word_attention[~batch.word_mask] == 0).all()
    assert (out.sentence_attention[~batch.sentence_mask] == 0).all()
    real_sentence_sums = out.word_attention.sum(-1)[batch.sentence_mask]
    torch.testing.assert_close(real_sentence_sums, torch.ones_like(real_sentence_sums))
    torch.testing.assert_close(out.sentence_attention.sum(-1), torch.ones(b))
    assert torch.isfinite(out.logits).all()


def _repad(batch: DocumentBatch, extra_sentences: int, extra_words: int, fill: int) -> tuple:
    """The same documents with more padding, whose ids are garbage (``fill``)."""
    ids = F.pad(batch.input_ids, (0, extra_words, 0, extra_sentences), value=fill)
    words = F.pad(batch.word_mask, (0, extra_words, 0, extra_sentences), value=False)
    sentences = F.pad(batch.sentence_mask, (0, extra_sentences), value=False)
    ids = torch.where(words, ids, torch.full_like(ids, fill))
    return ids, words, sentences


def test_han_padding_changes_nothing() -> None:
    torch.manual_seed(0)
    model = _han()
    batch = _batch(4, seed=4)
    ref = model(batch.input_ids, batch.word_mask, batch.sentence_mask)
    ids, words, sentences = _repad(batch, 2, 3, fill=7)
    out = model(ids, words, sentences)
    s, w = batch.input_ids.shape[1:]
    torch.testing.assert_close(out.logits, ref.logits)
    torch.testing.assert_close(out.word_attention[:, :s, :w], ref.word_attention)
    assert (out.word_attention[:, s:] == 0).all() and (out.word_attention[:, :, w:] == 0).all()
    torch.testing.assert_close(out.sentence_attention[:, :s], ref.sentence_attention)
    # Garbage ids under the mask, same padding amount: bit-identical.
    garbage = torch.where(batch.word_mask, batch.input_ids, torch.full_like(batch.input_ids, 9))
    same = model(garbage, batch.word_mask, batch.sentence_mask)
    assert torch.equal(same.logits, ref.logits)


def test_han_document_with_fewer_sentences_matches_it_alone() -> None:
    model = _han()
    batch = _batch(6, seed=7, min_sentences=1, max_sentences=6)
    n_sent = batch.sentence_mask.sum(-1)
    i = int(n_sent.argmin())
    assert n_sent[i] < batch.input_ids.shape[1]
    together = model(batch.input_ids, batch.word_mask, batch.sentence_mask)
    k = int(n_sent[i])
    n_words = int(batch.word_mask[i].sum(-1).max())
    alone = model(batch.input_ids[i : i + 1, :k, :n_words])  # default masks from PAD
    torch.testing.assert_close(alone.logits[0], together.logits[i])
    torch.testing.assert_close(alone.sentence_attention[0], together.sentence_attention[i, :k])


def test_han_sentence_mask_overrides_the_words_of_padded_sentences() -> None:
    model = _han()
    batch = _batch(3, seed=8, min_sentences=3, max_sentences=3)
    sentences = batch.sentence_mask.clone()
    sentences[:, 2] = False  # drop the last sentence, its words still marked real
    out = model(batch.input_ids, batch.word_mask, sentences)
    ref = model(batch.input_ids[:, :2], batch.word_mask[:, :2], sentences[:, :2])
    torch.testing.assert_close(out.logits, ref.logits)
    assert (out.word_attention[:, 2] == 0).all() and (out.sentence_attention[:, 2] == 0).all()


@pytest.mark.parametrize("model_fn", [_bilstm, _cnn])
def test_flat_models_padding_changes_nothing(model_fn) -> None:
    model = model_fn()
    ids, mask = _batch(5, seed=9).flat()
    ref = model(ids, mask)
    ref_logits = ref if isinstance(ref, torch.Tensor) else ref.logits
    assert ref_logits.shape == (5, 4)
    padded_ids = F.pad(ids, (0, 4), value=0).masked_fill(~F.pad(mask, (0, 4)), 11)
    out = model(padded_ids, F.pad(mask, (0, 4)))
    out_logits = out if isinstance(out, torch.Tensor) else out.logits
    torch.testing.assert_close(out_logits, ref_logits)
    if not isinstance(ref, torch.Tensor):
        assert ref.attention.shape == ids.shape
        assert (ref.attention[~mask] == 0).all() and (out.attention[:, ids.shape[1] :] == 0).all()
        torch.testing.assert_close(ref.attention.sum(-1), torch.ones(5))


def test_text_cnn_handles_texts_shorter_than_its_windows_and_empty_texts() -> None:
    model = _cnn()
    ids = torch.tensor([[5, 6, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0]])
    logits = model(ids)
    torch.testing.assert_close(logits[0], model(ids[:1, :2])[0])  # 2 tokens < window 3
    # An empty text has no feature: only the classifier's bias is left.
    torch.testing.assert_close(logits[1], model.classifier.bias)


def test_empty_document_gives_zero_attention_not_nan() -> None:
    model = _han()
    ids = torch.zeros(2, 2, 3, dtype=torch.long)
    ids[0, 0, :2] = torch.tensor([5, PERIOD])
    out = model(ids)
    assert torch.isfinite(out.logits).all()
    assert (out.word_attention[1] == 0).all() and (out.sentence_attention[1] == 0).all()
    bilstm = _bilstm()(ids.flatten(1))
    assert torch.isfinite(bilstm.logits).all() and (bilstm.attention[1] == 0).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_models_run_in_low_precision(dtype: torch.dtype) -> None:
    batch = _batch(3)
    ids, mask = batch.flat()
    assert _han().to(dtype)(batch.input_ids).logits.dtype == dtype
    assert _bilstm().to(dtype)(ids, mask).attention.dtype == dtype
    assert _cnn().to(dtype)(ids, mask).dtype == dtype


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_models_on_cuda_match_cpu() -> None:
    batch = _batch(4, seed=10)
    ids, mask = batch.flat()
    for model, args in [
        (_han(), (batch.input_ids, batch.word_mask, batch.sentence_mask)),
        (_bilstm(), (ids, mask)),
        (_cnn(), (ids, mask)),
    ]:
        ref = model(*args)
        out = model.cuda()(*(a.cuda() for a in args))
        ref_logits = ref if isinstance(ref, torch.Tensor) else ref.logits
        out_logits = out if isinstance(out, torch.Tensor) else out.logits
        torch.testing.assert_close(out_logits.cpu(), ref_logits, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------- errors


def test_out_of_range_ids_name_input_ids_the_range_and_the_value() -> None:
    batch = _batch(2)
    bad = batch.input_ids.clone()
    bad[0, 0, 0] = V + 3
    with pytest.raises(ValueError, match=rf"input_ids.*\[0, {V}\).*{V + 3}"):
        _han()(bad)
    flat, _ = batch.flat()
    flat[1, 0] = -1
    for model in (_bilstm(), _cnn()):
        with pytest.raises(ValueError, match=rf"input_ids.*\[0, {V}\).*-1"):
            model(flat)
        with pytest.raises(TypeError, match="input_ids"):
            model(flat.float())


def test_bad_shapes_and_masks_name_the_argument() -> None:
    batch = _batch(2)
    han, bilstm, cnn = _han(), _bilstm(), _cnn()
    ids, mask = batch.flat()
    with pytest.raises(ValueError, match="input_ids"):
        han(ids)  # flat ids into the hierarchical model
    for model in (bilstm, cnn):
        with pytest.raises(ValueError, match="input_ids"):
            model(batch.input_ids)
        with pytest.raises(ValueError, match="mask"):
            model(ids, mask[:, :-1])
        with pytest.raises(TypeError, match="mask"):
            model(ids, mask.float())
    with pytest.raises(ValueError, match="word_mask"):
        han(batch.input_ids, batch.word_mask[:, :1])
    with pytest.raises(ValueError, match="sentence_mask"):
        han(batch.input_ids, batch.word_mask, batch.sentence_mask[:, :1])
    holes = batch.word_mask.clone()
    holes[0, 0, 0] = False  # a pad before real words: not a prefix mask
    with pytest.raises(ValueError, match="word_mask.*prefix"):
        han(batch.input_ids, holes)
    flat_holes = mask.clone()
    flat_holes[0, 0] = False
    with pytest.raises(ValueError, match="mask.*prefix"):
        cnn(ids, flat_holes)


def test_configs_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="word_hidden_size"):
        HANConfig(V, 4, word_hidden_size=0)
    with pytest.raises(ValueError, match="pad_token_id"):
        AttentionBiLSTMConfig(V, 4, pad_token_id=V)
    with pytest.raises(ValueError, match="window_sizes"):
        TextCNNConfig(V, 4, window_sizes=())
    with pytest.raises(ValueError, match="dropout"):
        TextCNNConfig(V, 4, dropout=1.0)
    with pytest.raises(ValueError, match="nope"):
        HierarchicalAttentionNetwork(HANConfig(V, 4, normalizer="nope"))


# --------------------------------------------------------------------------- learning


@pytest.mark.parametrize("name", ["han", "attention_bilstm", "text_cnn"])
def test_each_model_learns_the_separable_task_fast(name: str) -> None:
    # No distractors: the label is the only topic word, a bag-of-words problem.
    task = {"n_classes": 3, "min_sentences": 1, "max_sentences": 3, "max_words": 6}
    task["distractor_prob"] = 0.0
    if name == "han":
        model = _han(embed_dim=16)
        logits = lambda m, b: m(b.input_ids, b.word_mask, b.sentence_mask).logits  # noqa: E731
    elif name == "attention_bilstm":
        model = _bilstm(embed_dim=16)
        logits = lambda m, b: m(*b.flat()).logits  # noqa: E731
    else:
        model = _cnn(embed_dim=16, n_filters=8, dropout=0.0)
        logits = lambda m, b: m(*b.flat())  # noqa: E731
    model.classifier = torch.nn.Linear(model.classifier.in_features, 3)
    fit(
        model,
        lambda m, b: F.cross_entropy(logits(m, b), b.labels),
        lambda step: _batch(32, seed=100 + step, **task),
        TrainConfig(steps=60, lr=1e-2, progress=False),
    )
    test = _batch(200, seed=1, **task)
    with torch.no_grad():
        accuracy = (logits(model, test).argmax(-1) == test.labels).float().mean().item()
    assert accuracy >= 0.9, f"{name}: accuracy {accuracy:.3f}"


def test_top_attention_hits_and_steps_to_fit() -> None:
    key = torch.zeros(2, 2, 3, dtype=torch.bool)
    key[:, 1, 2] = True
    words = torch.zeros(2, 2, 3)
    words[:, 1, 2] = 0.9
    words[:, 0, 0] = 0.8
    sentences = torch.tensor([[0.2, 0.8], [0.7, 0.3]])
    assert top_attention_hits(key, words, sentences).tolist() == [True, False]
    assert top_attention_hits(key.flatten(1), words.flatten(1)).tolist() == [True, True]
    with pytest.raises(ValueError, match="word_attention"):
        top_attention_hits(key, words[:, :1])
    assert steps_to_fit([1.0] * 5 + [0.0] * 20, threshold=0.05, window=10) == 15
    assert steps_to_fit([1.0] * 30) == 30


# --------------------------------------------------------------------------- the comparison


@pytest.mark.slow
def test_han_attends_to_the_key_words_and_the_comparison_beats_chance() -> None:
    # Seeds 1-5 put the HAN's top attention on a key word in every correct document; seed 0
    # in 75% of them (its sentence attention sometimes peaks on a neighbouring sentence,
    # whose bi-GRU state carries the key sentence's content). An untrained HAN: 0.1%.
    metrics = run_document_demo(progress=False, seed=1)
    chance = metrics["chance_accuracy"]
    assert chance == 0.25
    # The HAN solves the ragged task and its attention explains why: the most attended
    # word of the most attended sentence is the marker or the label's topic word.
    assert metrics["han_accuracy"] >= 0.95
    assert metrics["han_key_word_attention"] >= 0.8
    for name in ("text_cnn", "attention_bilstm", "han"):
        assert metrics[f"{name}_accuracy"] >= chance + 0.2, name
    # Only the recurrent models can bind the marker to a topic word outside a
    # convolution window; this gap is structural, not a lucky seed.
    assert metrics["text_cnn_accuracy"] < metrics["han_accuracy"] - 0.1
