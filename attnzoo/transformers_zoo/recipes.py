"""Fine-tuning recipes for BERT-family models, each with a small generated dataset.

Every recipe is one function that takes a model with its task head, a
``tokenizers.Tokenizer`` that adds ``[CLS]``/``[SEP]`` (e.g.
:func:`~attnzoo.transformers_zoo.sentence.train_bert_tokenizer`, or a checkpoint's
``tokenizer.json``) and train/test data, fine-tunes end to end with
:func:`~attnzoo.transformers_zoo.training.fit`, and returns
``{"loss_initial", "loss_final", "accuracy", "majority_baseline"}`` on the held-out data:

* :func:`finetune_sequence_classifier`: a sentence classifier, one new linear layer on
  the pooled ``[CLS]`` state (:class:`~attnzoo.transformers_zoo.BertForSequenceClassification`),
  for :func:`sentiment_data` and, with feature names as labels, :func:`log_line_data`;
* :func:`finetune_token_classifier`: BIO entity tags per word (the label sits on each
  word's first sub-token, the others are ignored), :func:`entity_data`;
* :func:`finetune_question_answering`: an extractive span head over
  ``[CLS] question [SEP] context [SEP]``, character spans mapped to tokens through the
  tokenizer's offsets, :func:`qa_data`; accuracy is exact match.

The majority baseline predicts the most frequent training label (per sentence, per word,
or the most frequent answer span position) on the test data.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..attention.validation import check_int
from .bert import (
    BertConfig,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
)
from .sentence import train_bert_tokenizer
from .training import TrainConfig, fit


@dataclass
class Split:
    """A train/test split of generated examples (inputs and their labels)."""

    train_inputs: list[Any]
    train_labels: list[Any]
    test_inputs: list[Any]
    test_labels: list[Any]

    def texts(self) -> list[str]:
        """Every string in the inputs, for training a tokenizer."""
        out: list[str] = []
        for item in self.train_inputs + self.test_inputs:
            if isinstance(item, str):
                out.append(item)
            else:
                out.extend(x if isinstance(x, str) else " ".join(x) for x in item)
        return out


def _split(inputs: list[Any], labels: list[Any], n_test: int) -> Split:
    return Split(inputs[n_test:], labels[n_test:], inputs[:n_test], labels[:n_test])


# ---------------------------------------------------------------------------------------
# Generated data

SENTIMENT_NOUNS = ("movie", "meal", "hotel", "book", "concert", "phone", "service", "trip")
POSITIVE_WORDS = ("great", "wonderful", "excellent", "delightful", "superb", "lovely")
NEGATIVE_WORDS = ("awful", "terrible", "boring", "dreadful", "poor", "disappointing")
SENTIMENT_TEMPLATES = (
    "the {noun} was {adj}",
    "i thought the {noun} was really {adj}",
    "what a {adj} {noun}",
    "honestly the {noun} felt {adj} to me",
    "my friends said the {noun} is {adj}",
)


def sentiment_data(n: int = 600, n_test: int = 150, seed: int = 0) -> Split:
    """Templated reviews labelled 1 (positive) or 0 (negative) by their adjective; about a
    third negate it ("not great" is negative), so word presence alone does not decide."""
    generator = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        positive = generator.random() < 0.5
        adj = generator.choice(POSITIVE_WORDS if positive else NEGATIVE_WORDS)
        negated = generator.random() < 0.33
        text = generator.choice(SENTIMENT_TEMPLATES).format(
            noun=generator.choice(SENTIMENT_NOUNS), adj=f"not {adj}" if negated else adj
        )
        texts.append(text)
        labels.append(int(positive != negated))
    return _split(texts, labels, n_test)


# Log lines: what each product feature logs; the label is the feature's name, which the
# line itself never contains.
LOG_FEATURES: dict[str, tuple[str, ...]] = {
    "authentication": (
        "user {id} logged in from {ip}",
        "invalid password for user {id}",
        "session {hex} expired after {n} minutes",
        "password reset requested for account {id}",
    ),
    "billing": (
        "invoice {id} paid amount {n}.{n} eur",
        "card declined for customer {id}",
        "refund of {n} eur issued to customer {id}",
        "subscription {hex} renewed",
    ),
    "search": (
        "query returned {n} results in {n} ms",
        "index rebuilt with {n} documents",
        "slow query {hex} took {n} ms",
        "autocomplete cache warmed with {n} terms",
    ),
    "upload": (
        "file {hex}.png stored size {n} kb",
        "transfer {id} failed checksum mismatch",
        "chunk {n} of {n} received for transfer {id}",
        "virus scan passed for file {hex}",
    ),
    "notifications": (
        "email sent to user {id}",
        "push message {hex} delivered to device {id}",
        "sms queue length is {n}",
        "digest scheduled for {n} subscribers",
    ),
}
LOG_LEVELS = ("INFO", "WARN", "ERROR", "DEBUG")


def log_line_data(n: int = 600, n_test: int = 150, seed: int = 0) -> tuple[Split, list[str]]:
    """Generated application log lines (timestamp, level, worker, message) labelled by the
    feature that wrote them.

    Returns:
        the split (labels index the names) and the feature names.
    """
    generator = random.Random(seed)
    names = list(LOG_FEATURES)
    lines, labels = [], []
    for _ in range(n):
        label = generator.randrange(len(names))
        message = generator.choice(LOG_FEATURES[names[label]])
        message = message.replace("{id}", str(generator.randrange(100, 9999)))
        message = message.replace(
            "{ip}", f"10.0.{generator.randrange(256)}.{generator.randrange(256)}"
        )
        message = message.replace("{hex}", f"{generator.getrandbits(24):06x}")
        while "{n}" in message:
            message = message.replace("{n}", str(generator.randrange(1, 500)), 1)
        day, hour, minute = (
            generator.randrange(1, 29),
            generator.randrange(24),
            generator.randrange(60),
        )
        stamp = f"2024-05-{day:02d} {hour:02d}:{minute:02d}"
        level = generator.choice(LOG_LEVELS)
        lines.append(f"{stamp} {level} worker-{generator.randrange(8)} {message}")
        labels.append(label)
    return _split(lines, labels, n_test), names


ENTITY_TAGS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG")
_PEOPLE = ("alice smith", "bob", "carlos diaz", "dana", "emma stone", "farid", "grace lee")
_PLACES = ("paris", "new york", "lagos", "oslo", "buenos aires", "kyoto", "lima")
_ORGS = ("acme corp", "globex", "initech", "umbrella labs", "hooli", "stark industries")
_ENTITY_TEMPLATES = (
    "{PER} works for {ORG} in {LOC}",
    "yesterday {PER} flew to {LOC}",
    "{ORG} opened an office in {LOC}",
    "{ORG} hired {PER} last year",
    "in {LOC} {PER} met {PER}",
    "the team at {ORG} thanked {PER}",
)


def entity_data(n: int = 500, n_test: int = 120, seed: int = 0) -> Split:
    """Templated sentences as word lists with BIO tags (:data:`ENTITY_TAGS` indices) for
    people, places and organisations (multi-word names get ``I-`` tags)."""
    generator = random.Random(seed)
    pools = {"PER": _PEOPLE, "LOC": _PLACES, "ORG": _ORGS}
    sentences, tags = [], []
    for _ in range(n):
        words: list[str] = []
        labels: list[int] = []
        for token in generator.choice(_ENTITY_TEMPLATES).split():
            if token.startswith("{"):
                kind = token[1:-1]
                for position, word in enumerate(generator.choice(pools[kind]).split()):
                    words.append(word)
                    labels.append(ENTITY_TAGS.index(f"{'I' if position else 'B'}-{kind}"))
            else:
                words.append(token)
                labels.append(0)
        sentences.append(words)
        tags.append(labels)
    return _split(sentences, tags, n_test)


_QA_FACTS = (
    ("lives in", ("paris", "oslo", "lima", "kyoto", "cairo", "quebec"), "where does {p} live"),
    ("works at", ("the bakery", "the bank", "the museum", "the port"), "where does {p} work"),
    ("owns a", ("red bike", "small boat", "green car", "grey horse"), "what does {p} own"),
)
_QA_PEOPLE = ("anna", "ben", "chloe", "dev", "elif", "femi", "gus", "hana", "ivan", "jun")


@dataclass
class QAExample:
    """A question over a context; the answer is ``context[start : start + len(answer)]``."""

    question: str
    context: str
    answer: str
    start: int


def qa_data(n: int = 600, n_test: int = 150, seed: int = 0) -> Split:
    """Contexts of three facts about three people ("anna lives in paris . ben works at the
    bank . ..."), a question about one fact, and its answer span. Labels are the answers."""
    generator = random.Random(seed)
    examples = []
    for _ in range(n):
        people = generator.sample(_QA_PEOPLE, 3)
        facts = [generator.choice(_QA_FACTS) for _ in people]
        answers = [generator.choice(fact[1]) for fact in facts]
        sentences = [f"{p} {f[0]} {a} ." for p, f, a in zip(people, facts, answers, strict=True)]
        context = " ".join(sentences)
        asked = generator.randrange(3)
        start = context.index(sentences[asked]) + len(f"{people[asked]} {facts[asked][0]} ")
        question = facts[asked][2].format(p=people[asked]) + " ?"
        examples.append(QAExample(question, context, answers[asked], start))
    return _split(examples, [e.answer for e in examples], n_test)


# ---------------------------------------------------------------------------------------
# Models and the shared loop


def tiny_bert_config(vocab_size: int, num_labels: int = 2, **overrides: Any) -> BertConfig:
    """A 2-layer, 64-wide BERT config for the recipes (seconds on a CPU)."""
    values: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "max_position_embeddings": 96,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "num_labels": num_labels,
    }
    values.update(overrides)
    return BertConfig(**values)


def _pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[Tensor, Tensor]:
    n = max(len(row) for row in rows)
    ids = torch.full((len(rows), n), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), n, dtype=torch.bool)
    for index, row in enumerate(rows):
        ids[index, : len(row)] = torch.tensor(list(row), dtype=torch.long)
        mask[index, : len(row)] = True
    return ids, mask


def _pad_id(tokenizer: Any) -> int:
    found = tokenizer.token_to_id("[PAD]")
    return int(found) if found is not None else 0


def _train(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, object], Tensor],
    n_train: int,
    steps: int,
    batch_size: int,
    lr: float,
    progress: bool,
    seed: int,
    description: str,
) -> list[float]:
    """Fit on random mini-batches of training indices; return the per-step losses."""
    check_int(steps, "steps")
    check_int(batch_size, "batch_size")
    generator = random.Random(seed)
    size = min(batch_size, n_train)
    history = fit(
        model,
        loss_fn,
        lambda step: generator.sample(range(n_train), size),
        TrainConfig(steps=steps, lr=lr, warmup=10, progress=progress, description=description),
    )
    return history.losses


def _metrics(losses: list[float], accuracy: float, baseline: float) -> dict[str, float]:
    tail = losses[-20:]
    return {
        "loss_initial": sum(losses[:10]) / len(losses[:10]),
        "loss_final": sum(tail) / len(tail),
        "accuracy": accuracy,
        "majority_baseline": baseline,
    }


def _check_split(data: Split, name: str = "data") -> None:
    if not isinstance(data, Split):
        raise TypeError(f"`{name}` must be a Split, got {type(data).__name__}")
    for part in ("train", "test"):
        inputs, labels = getattr(data, f"{part}_inputs"), getattr(data, f"{part}_labels")
        if not inputs or len(inputs) != len(labels):
            raise ValueError(
                f"`{name}` needs as many {part} inputs as labels and at least one, "
                f"got {len(inputs)} and {len(labels)}"
            )


# ---------------------------------------------------------------------------------------
# Recipes


def finetune_sequence_classifier(
    model: BertForSequenceClassification,
    tokenizer: Any,
    data: Split,
    steps: int = 200,
    batch_size: int = 32,
    lr: float = 1e-3,
    progress: bool = False,
    seed: int = 0,
) -> dict[str, float]:
    """Fine-tune a sentence classifier on ``data`` (texts, integer labels).

    Args:
        model: :class:`BertForSequenceClassification` with ``num_labels`` classes.
        tokenizer: adds ``[CLS]`` and ``[SEP]``.
        data: :class:`Split` of strings and labels in ``[0, num_labels)``.
        steps, batch_size, lr: the optimisation (AdamW, 10 warm-up steps).
        progress: show a tqdm bar.
        seed: the batch order.

    Returns:
        ``{"loss_initial", "loss_final", "accuracy", "majority_baseline"}``.
    """
    if not isinstance(model, BertForSequenceClassification):
        raise TypeError(
            f"`model` must be a BertForSequenceClassification, got {type(model).__name__}"
        )
    _check_split(data)
    num_labels = model.config.num_labels
    for label in data.train_labels + data.test_labels:
        if not (isinstance(label, int) and 0 <= label < num_labels):
            raise ValueError(f"labels must be ints in [0, {num_labels}), got {label!r}")
    pad = _pad_id(tokenizer)
    train = [e.ids for e in tokenizer.encode_batch(data.train_inputs)]
    train_labels = torch.tensor(data.train_labels)

    def loss_fn(module: nn.Module, batch: object) -> Tensor:
        index = list(batch)  # type: ignore[call-overload]
        ids, mask = _pad([train[i] for i in index], pad)
        return module(ids, attention_mask=mask, labels=train_labels[index]).loss  # type: ignore[no-any-return]

    losses = _train(model, loss_fn, len(train), steps, batch_size, lr, progress, seed, "classify")
    with torch.no_grad():
        ids, mask = _pad([e.ids for e in tokenizer.encode_batch(data.test_inputs)], pad)
        predicted = model(ids, attention_mask=mask).logits.argmax(-1)
    test_labels = torch.tensor(data.test_labels)
    accuracy = float((predicted == test_labels).float().mean())
    majority = Counter(data.train_labels).most_common(1)[0][0]
    baseline = float((test_labels == majority).float().mean())
    return _metrics(losses, accuracy, baseline)


def _word_labels(encoding: Any, tags: Sequence[int]) -> list[int]:
    """Each word's tag on its first sub-token, -100 on the rest and on the specials."""
    labels, previous = [], None
    for word in encoding.word_ids:
        labels.append(-100 if word is None or word == previous else int(tags[word]))
        previous = word
    return labels


def finetune_token_classifier(
    model: BertForTokenClassification,
    tokenizer: Any,
    data: Split,
    steps: int = 200,
    batch_size: int = 32,
    lr: float = 1e-3,
    progress: bool = False,
    seed: int = 0,
) -> dict[str, float]:
    """Fine-tune a per-word tagger on ``data`` (word lists, one tag index per word).

    Words are tokenised as pre-split input; each word's label goes on its first sub-token.
    ``accuracy`` is per word on the test data; the baseline tags every word with the most
    frequent training tag.
    """
    if not isinstance(model, BertForTokenClassification):
        raise TypeError(f"`model` must be a BertForTokenClassification, got {type(model).__name__}")
    _check_split(data)
    for words, tags in zip(
        data.train_inputs + data.test_inputs, data.train_labels + data.test_labels, strict=True
    ):
        if len(words) != len(tags):
            raise ValueError(f"each sentence needs one tag per word, got {words} and {tags}")
    pad = _pad_id(tokenizer)

    def encode(sentences: list[list[str]], tags: list[list[int]]) -> tuple[list, list]:
        encodings = tokenizer.encode_batch(sentences, is_pretokenized=True)
        return [e.ids for e in encodings], [
            _word_labels(e, t) for e, t in zip(encodings, tags, strict=True)
        ]

    train_ids, train_tags = encode(data.train_inputs, data.train_labels)

    def loss_fn(module: nn.Module, batch: object) -> Tensor:
        index = list(batch)  # type: ignore[call-overload]
        ids, mask = _pad([train_ids[i] for i in index], pad)
        labels, _ = _pad([train_tags[i] for i in index], -100)
        return module(ids, attention_mask=mask, labels=labels).loss  # type: ignore[no-any-return]

    losses = _train(model, loss_fn, len(train_ids), steps, batch_size, lr, progress, seed, "tag")
    test_ids, test_tags = encode(data.test_inputs, data.test_labels)
    ids, mask = _pad(test_ids, pad)
    labels, _ = _pad(test_tags, -100)
    with torch.no_grad():
        predicted = model(ids, attention_mask=mask).logits.argmax(-1)
    scored = labels != -100
    accuracy = float((predicted[scored] == labels[scored]).float().mean())
    majority = Counter(t for tags in data.train_labels for t in tags).most_common(1)[0][0]
    baseline = float((labels[scored] == majority).float().mean())
    return _metrics(losses, accuracy, baseline)


def _answer_tokens(encoding: Any, start: int, end: int) -> tuple[int, int]:
    """The first and last context tokens covering characters ``[start, end)``."""
    first = last = None
    for index, (sequence, (a, b)) in enumerate(
        zip(encoding.sequence_ids, encoding.offsets, strict=True)
    ):
        if sequence != 1:
            continue
        if first is None and a <= start < b:
            first = index
        if a < end <= b:
            last = index
    if first is None or last is None:
        raise ValueError(f"answer characters [{start}, {end}) are not on context tokens")
    return first, last


def finetune_question_answering(
    model: BertForQuestionAnswering,
    tokenizer: Any,
    data: Split,
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 1e-3,
    progress: bool = False,
    seed: int = 0,
) -> dict[str, float]:
    """Fine-tune the span head on ``data`` (:class:`QAExample` inputs).

    The input is ``[CLS] question [SEP] context [SEP]`` with segment ids 0 then 1; the
    predicted span is the best ``start <= end`` pair of context tokens (at most 8 tokens
    long). ``accuracy`` is the exact-match rate of predicted token spans; the baseline
    always predicts the most frequent training span.
    """
    if not isinstance(model, BertForQuestionAnswering):
        raise TypeError(f"`model` must be a BertForQuestionAnswering, got {type(model).__name__}")
    _check_split(data)
    pad = _pad_id(tokenizer)

    def encode(examples: list[QAExample]) -> tuple[list, list, list, list]:
        encodings = tokenizer.encode_batch([(e.question, e.context) for e in examples])
        spans = [
            _answer_tokens(enc, e.start, e.start + len(e.answer))
            for enc, e in zip(encodings, examples, strict=True)
        ]
        return (
            [enc.ids for enc in encodings],
            [enc.type_ids for enc in encodings],
            [[s == 1 for s in enc.sequence_ids] for enc in encodings],
            spans,
        )

    train_ids, train_types, _, train_spans = encode(data.train_inputs)
    spans = torch.tensor(train_spans)

    def loss_fn(module: nn.Module, batch: object) -> Tensor:
        index = list(batch)  # type: ignore[call-overload]
        ids, mask = _pad([train_ids[i] for i in index], pad)
        types, _ = _pad([train_types[i] for i in index], 0)
        out = module(
            ids, mask, types, start_positions=spans[index, 0], end_positions=spans[index, 1]
        )
        return out.loss  # type: ignore[no-any-return]

    losses = _train(model, loss_fn, len(train_ids), steps, batch_size, lr, progress, seed, "qa")
    test_ids, test_types, test_context, test_spans = encode(data.test_inputs)
    ids, mask = _pad(test_ids, pad)
    types, _ = _pad(test_types, 0)
    context, _ = _pad(test_context, 0)
    with torch.no_grad():
        out = model(ids, mask, types)
    predicted = best_spans(out.start_logits, out.end_logits, context.bool(), max_length=8)
    gold = torch.tensor(test_spans)
    accuracy = float((predicted == gold).all(dim=1).float().mean())
    majority = torch.tensor(Counter(train_spans).most_common(1)[0][0])
    baseline = float((gold == majority).all(dim=1).float().mean())
    return _metrics(losses, accuracy, baseline)


def best_spans(
    start_logits: Tensor, end_logits: Tensor, allowed: Tensor, max_length: int = 30
) -> Tensor:
    """The highest-scoring spans ``start <= end < start + max_length`` inside ``allowed``.

    Args:
        start_logits, end_logits: ``(batch, n)``.
        allowed: ``(batch, n)`` bool, True on tokens a span may cover (the context).
        max_length: the longest span in tokens.

    Returns:
        ``(batch, 2)`` int64 ``(start, end)`` token indices (inclusive).
    """
    check_int(max_length, "max_length")
    if start_logits.shape != end_logits.shape or allowed.shape != start_logits.shape:
        raise ValueError(
            "`start_logits`, `end_logits` and `allowed` must share a shape (batch, n), got "
            f"{tuple(start_logits.shape)}, {tuple(end_logits.shape)}, {tuple(allowed.shape)}"
        )
    n = start_logits.shape[1]
    offsets = torch.arange(n, device=start_logits.device)
    length = offsets.unsqueeze(0) - offsets.unsqueeze(1)  # end - start
    valid = (length >= 0) & (length < max_length)
    valid = valid & allowed.unsqueeze(2) & allowed.unsqueeze(1)
    scores = start_logits.unsqueeze(2) + end_logits.unsqueeze(1)
    flat = scores.masked_fill(~valid, float("-inf")).flatten(1).argmax(dim=1)
    return torch.stack([flat // n, flat % n], dim=1)


# ---------------------------------------------------------------------------------------
# End to end, from scratch (tokenizer, model, data)

RECIPES = ("sentiment", "log-lines", "entities", "qa")


def run_recipe(
    name: str, steps: int | None = None, progress: bool = False, seed: int = 0
) -> dict[str, float]:
    """Generate the data of recipe ``name`` (one of :data:`RECIPES`), train a WordPiece
    tokenizer on it, build a tiny BERT with the right head, and fine-tune."""
    torch.manual_seed(seed)
    if name in ("sentiment", "log-lines"):
        if name == "sentiment":
            data, num_labels = sentiment_data(seed=seed), 2
        else:
            data, names = log_line_data(seed=seed)
            num_labels = len(names)
        tokenizer = train_bert_tokenizer(data.texts(), vocab_size=300)
        classifier = BertForSequenceClassification(
            tiny_bert_config(tokenizer.get_vocab_size(), num_labels)
        )
        return finetune_sequence_classifier(
            classifier, tokenizer, data, steps or 200, progress=progress, seed=seed
        )
    if name == "entities":
        data = entity_data(seed=seed)
        tokenizer = train_bert_tokenizer(data.texts(), vocab_size=200)
        tagger = BertForTokenClassification(
            tiny_bert_config(tokenizer.get_vocab_size(), len(ENTITY_TAGS))
        )
        return finetune_token_classifier(
            tagger, tokenizer, data, steps or 200, progress=progress, seed=seed
        )
    if name == "qa":
        data = qa_data(seed=seed)
        texts = [t for e in data.train_inputs + data.test_inputs for t in (e.question, e.context)]
        tokenizer = train_bert_tokenizer(texts, vocab_size=200)
        reader = BertForQuestionAnswering(tiny_bert_config(tokenizer.get_vocab_size(), 2))
        return finetune_question_answering(
            reader, tokenizer, data, steps or 300, progress=progress, seed=seed
        )
    raise ValueError(f"`name` must be one of {RECIPES}, got {name!r}")


def run_finetune_demo(
    steps: int | None = None, progress: bool = True, seed: int = 0
) -> dict[str, float]:
    """All four recipes on tiny BERTs: held-out accuracy against the majority baseline."""
    metrics: dict[str, float] = {}
    for name in RECIPES:
        result = run_recipe(name, steps, progress=progress, seed=seed)
        metrics.update({f"{name}_{key}": value for key, value in result.items()})
    return metrics


__all__ = [
    "ENTITY_TAGS",
    "LOG_FEATURES",
    "RECIPES",
    "QAExample",
    "Split",
    "best_spans",
    "entity_data",
    "finetune_question_answering",
    "finetune_sequence_classifier",
    "finetune_token_classifier",
    "log_line_data",
    "qa_data",
    "run_finetune_demo",
    "run_recipe",
    "sentiment_data",
    "tiny_bert_config",
]
