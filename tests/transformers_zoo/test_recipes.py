"""Fine-tuning recipes: data, label alignment, span decoding, and end-to-end runs."""

from __future__ import annotations

import pytest
import torch

from attnzoo.transformers_zoo import recipes
from attnzoo.transformers_zoo.bert import BertForSequenceClassification
from attnzoo.transformers_zoo.sentence import train_bert_tokenizer


def test_generated_data_is_seeded_and_labelled_consistently() -> None:
    data = recipes.sentiment_data(n=50, n_test=10, seed=1)
    assert data == recipes.sentiment_data(n=50, n_test=10, seed=1)
    assert len(data.train_inputs) == 40 and len(data.test_inputs) == 10
    for text, label in zip(data.train_inputs, data.train_labels, strict=True):
        positive = any(word in text.split() for word in recipes.POSITIVE_WORDS)
        assert label == int(positive != (" not " in f" {text} "))
    logs, names = recipes.log_line_data(n=40, n_test=5)
    assert names == list(recipes.LOG_FEATURES)
    for line in logs.train_inputs:  # the label's name never appears in the line
        assert not any(name in line for name in names)
    entities = recipes.entity_data(n=30, n_test=5)
    for words, tags in zip(entities.train_inputs, entities.train_labels, strict=True):
        assert len(words) == len(tags)
        assert all(
            recipes.ENTITY_TAGS[t] != "I-PER" or tags[i - 1] in (1, 2) for i, t in enumerate(tags)
        )
    for example in recipes.qa_data(n=30, n_test=5).train_inputs:
        answer = example.context[example.start : example.start + len(example.answer)]
        assert answer == example.answer


def test_answer_spans_map_to_the_answer_tokens() -> None:
    data = recipes.qa_data(n=40, n_test=5)
    texts = [t for e in data.train_inputs for t in (e.question, e.context)]
    tokenizer = train_bert_tokenizer(texts, vocab_size=120)
    for example in data.train_inputs[:20]:
        encoding = tokenizer.encode(example.question, example.context)
        first, last = recipes._answer_tokens(
            encoding, example.start, example.start + len(example.answer)
        )
        assert encoding.type_ids[first] == 1
        begin, end = encoding.offsets[first][0], encoding.offsets[last][1]
        assert example.context[begin:end] == example.answer


def test_word_labels_sit_on_first_sub_tokens() -> None:
    tokenizer = train_bert_tokenizer(["aaaa bbbb cccc"], vocab_size=30)
    encoding = tokenizer.encode(["aaaabbbb", "cc"], is_pretokenized=True)
    labels = recipes._word_labels(encoding, [3, 5])
    words = encoding.word_ids
    assert labels[0] == -100 and labels[-1] == -100  # [CLS], [SEP]
    firsts = [i for i, w in enumerate(words) if w is not None and words[i - 1] != w]
    assert [labels[i] for i in firsts] == [3, 5]
    assert sum(label != -100 for label in labels) == 2


def test_best_spans_is_the_brute_force_argmax() -> None:
    generator = torch.Generator().manual_seed(0)
    start, end = torch.randn(4, 9, generator=generator), torch.randn(4, 9, generator=generator)
    allowed = torch.rand(4, 9, generator=generator) > 0.3
    allowed[:, 0] = True
    got = recipes.best_spans(start, end, allowed, max_length=3)
    for row in range(4):
        best = max(
            (float(start[row, i] + end[row, j]), i, j)
            for i in range(9)
            for j in range(i, min(i + 3, 9))
            if allowed[row, i] and allowed[row, j]
        )
        assert got[row].tolist() == [best[1], best[2]]
    with pytest.raises(ValueError, match="share a shape"):
        recipes.best_spans(start, end[:, :5], allowed)


def test_recipes_reject_bad_input() -> None:
    data = recipes.sentiment_data(n=20, n_test=5)
    tokenizer = train_bert_tokenizer(data.texts(), vocab_size=60)
    model = BertForSequenceClassification(recipes.tiny_bert_config(tokenizer.get_vocab_size()))
    with pytest.raises(TypeError, match="BertForTokenClassification"):
        recipes.finetune_token_classifier(model, tokenizer, recipes.entity_data(20, 5))
    bad = recipes.Split(data.train_inputs, [3] * 15, data.test_inputs, data.test_labels)
    with pytest.raises(ValueError, match=r"labels must be ints in \[0, 2\)"):
        recipes.finetune_sequence_classifier(model, tokenizer, bad, steps=1)
    empty = recipes.Split([], [], data.test_inputs, data.test_labels)
    with pytest.raises(ValueError, match="train inputs"):
        recipes.finetune_sequence_classifier(model, tokenizer, empty, steps=1)
    with pytest.raises(ValueError, match="`name`"):
        recipes.run_recipe("translation")


# Each end-to-end run: the loss falls and held-out accuracy beats the majority baseline.
# Seeds 0, 1, 2 were checked at these step counts; the margins hold for all three (QA, the
# hardest: exact match 0.65, 0.65 against baselines 0.26, 0.23 for seeds 0, 1).
@pytest.mark.parametrize(
    ("name", "steps", "margin"),
    [("sentiment", 120, 0.3), ("log-lines", 150, 0.5), ("entities", 80, 0.3), ("qa", 250, 0.25)],
)
def test_recipe_learns_beyond_the_majority_baseline(name: str, steps: int, margin: float) -> None:
    metrics = recipes.run_recipe(name, steps=steps, seed=0)
    assert metrics["loss_final"] < 0.5 * metrics["loss_initial"], metrics
    assert metrics["accuracy"] >= metrics["majority_baseline"] + margin, metrics
