"""Probe a tiny BERT trained on the grammar for syntax (Htut et al. 2019, Clark et al. 2019).

:func:`train_grammar_mlm` trains a small BERT with masked-LM on sentences of the grammar of
:mod:`~attnzoo.transformers_zoo.analysis.conllu_data` (a fixed WordPiece vocabulary that
splits long words into two pieces). :func:`tree_word_attentions` captures its word-level
attention on gold trees, and :func:`run_syntax_probe_experiment` compares the best head of
the trained model, per relation, with the same probe on a randomly initialised model of the
same size and with the fixed-offset and right-branching baselines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor

from ...attention.validation import check_int
from ..bert import BertConfig, BertForMaskedLM
from ..objectives import WORDPIECE_SPECIALS, mask_tokens
from ..training import TrainConfig, fit
from .capture import capture_attention, encode_words
from .conllu_data import DependencyTree, grammar_treebank, load_gold_treebank
from .probe import make_probe_batch, probe_uas, train_attention_probe
from .trees import (
    DIRECTIONS,
    HeadProbeResult,
    best_offsets,
    offset_heads,
    probe_heads,
    relation_accuracy,
    right_branching,
)


def grammar_tokenizer(sentences: Sequence[str], split_longer_than: int = 7) -> Any:
    """A deterministic WordPiece ``tokenizers.Tokenizer`` for ``sentences``.

    Words up to ``split_longer_than`` characters are one token; longer ones are two
    pieces (``astronaut`` -> ``astr ##onaut``), so probing exercises the sub-word to word
    aggregation. Ids: ``[PAD] [UNK] [CLS] [SEP] [MASK]`` = 0..4, then the pieces sorted.
    (A trained WordPiece vocabulary would do, but its ids change from run to run.)
    """
    from tokenizers import Tokenizer, models, pre_tokenizers

    pieces: set[str] = set()
    for sentence in sentences:
        for word in sentence.split():
            if len(word) <= split_longer_than:
                pieces.add(word)
            else:
                pieces.update((word[:4], "##" + word[4:]))
    vocab = {token: i for i, token in enumerate([*WORDPIECE_SPECIALS, *sorted(pieces)])}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer


def train_grammar_mlm(
    sentences: Sequence[str],
    *,
    layers: int = 2,
    heads: int = 4,
    dim: int = 64,
    steps: int = 300,
    batch_size: int = 32,
    seed: int = 0,
    train: bool = True,
    progress: bool = False,
) -> tuple[BertForMaskedLM, Any]:
    """A tiny BERT trained with masked-LM on ``sentences`` (:func:`grammar_tokenizer`).

    Args:
        sentences: training sentences (space-separated words).
        layers, heads, dim: the model's shape (feed-forward ``4 * dim``).
        steps, batch_size: optimisation length (AdamW, lr 2e-3, 15% masking).
        seed: seeds the initialisation, the batches and the masks.
        train: False returns the randomly initialised model (the probe's baseline).
        progress: show a progress bar.

    Returns:
        ``(model in eval mode, tokenizer)``.
    """
    for value, name in ((layers, "layers"), (heads, "heads"), (dim, "dim"), (steps, "steps")):
        check_int(value, name)
    if not sentences:
        raise ValueError("`sentences` must not be empty")
    tokenizer = grammar_tokenizer(sentences)
    pad, _, cls, sep, mask = (tokenizer.token_to_id(t) for t in WORDPIECE_SPECIALS)
    encoded = [[cls, *tokenizer.encode(s).ids, sep] for s in sentences]
    length = max(len(ids) for ids in encoded)
    ids = torch.full((len(encoded), length), pad, dtype=torch.long)
    for row, row_ids in enumerate(encoded):
        ids[row, : len(row_ids)] = torch.tensor(row_ids)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * dim,
        max_position_embeddings=max(64, length),
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = BertForMaskedLM(config)
    if train:
        generator = torch.Generator().manual_seed(seed)

        def batch(_: int) -> tuple[Tensor, Tensor, Tensor]:
            rows = torch.randint(0, len(encoded), (batch_size,), generator=generator)
            chosen = ids[rows]
            inputs, labels = mask_tokens(
                chosen,
                vocab_size=config.vocab_size,
                mask_token_id=mask,
                special_ids=(cls, sep),
                pad_id=pad,
                generator=generator,
            )
            return inputs, chosen != pad, labels

        def loss(net: torch.nn.Module, b: object) -> Tensor:
            inputs, real, labels = cast(tuple[Tensor, Tensor, Tensor], b)
            out = net(inputs, attention_mask=real, labels=labels)
            return cast(Tensor, out.loss)

        fit(model, loss, batch, TrainConfig(steps=steps, lr=2e-3, warmup=20, progress=progress))
    model.eval()
    return model, tokenizer


def tree_word_attentions(
    model: torch.nn.Module,
    tokenizer: Any,
    trees: Sequence[DependencyTree],
    batch_size: int = 64,
) -> list[Tensor]:
    """Word-level attention of every tree's sentence: per tree ``(layers, heads, W, W)``.

    Each sentence is tokenised from its gold words (so pieces map to words exactly) with
    ``[CLS]``/``[SEP]`` added when the tokenizer's post-processor does not add them; the
    specials are dropped by :func:`~attnzoo.transformers_zoo.analysis.word_attention`.
    """
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    pad = tokenizer.token_to_id("[PAD]") or 0
    rows = []
    for tree in trees:
        ids, tokens, word_ids = encode_words(tokenizer, tree.words)
        row = ids[0].tolist()
        if cls is not None and sep is not None and tokens[:1] != ["[CLS]"]:
            row, tokens, word_ids = (
                [cls, *row, sep],
                ["[CLS]", *tokens, "[SEP]"],
                [None, *word_ids, None],
            )
        rows.append((row, tokens, word_ids))
    result: list[Tensor] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        n = max(len(row) for row, _, _ in chunk)
        ids = torch.full((len(chunk), n), pad, dtype=torch.long)
        mask = torch.zeros(len(chunk), n, dtype=torch.bool)
        for i, (row, _, _) in enumerate(chunk):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = True
        captures = capture_attention(
            model,
            ids,
            mask,
            [tokens + ["[PAD]"] * (n - len(tokens)) for _, tokens, _ in chunk],
            word_ids=[w + [None] * (n - len(w)) for _, _, w in chunk],
        )
        result.extend(capture.word_level() for capture in captures)
    return result


@dataclass
class SyntaxProbeReport:
    """Per-relation undirected accuracy of the probes and baselines.

    Attributes:
        trained: best-head MAX results of the trained model (both directions).
        random: the same for the randomly initialised model.
        trained_mst, random_mst: the same with MST decoding.
        fixed_offset: relation -> accuracy of the most common offset per relation.
        right_branching: relation -> accuracy of the right-branching tree.
    """

    trained: dict[str, HeadProbeResult]
    random: dict[str, HeadProbeResult]
    trained_mst: dict[str, HeadProbeResult]
    random_mst: dict[str, HeadProbeResult]
    fixed_offset: dict[str, float]
    right_branching: dict[str, float]

    def best(self, results: dict[str, HeadProbeResult], relation: str) -> float:
        """The best head's accuracy for ``relation`` over both directions."""
        return max(r.best_head(relation)[2] for r in results.values())

    def table(self) -> str:
        """The per-relation table: best head of the trained model (MAX, with the head and
        direction, and MST), of the random model (MAX, MST), fixed offset, right branching."""
        header = (
            f"{'relation':<9} {'trained MAX':>11} {'head':>10} {'trained MST':>11} "
            f"{'random MAX':>10} {'random MST':>10} {'fixed off':>9} {'right br':>8}"
        )
        lines = [header]
        for relation in sorted(self.fixed_offset, key=lambda r: (r == "all", r)):
            best = max(self.trained.values(), key=lambda r: r.best_head(relation)[2])
            layer, head, value = best.best_head(relation)
            where = f"{layer}-{head} {'d>h' if best.direction == 'dependent_to_head' else 'h>d'}"
            lines.append(
                f"{relation:<9} {value:>11.3f} {where:>10} "
                f"{self.best(self.trained_mst, relation):>11.3f} "
                f"{self.best(self.random, relation):>10.3f} "
                f"{self.best(self.random_mst, relation):>10.3f} "
                f"{self.fixed_offset[relation]:>9.3f} {self.right_branching[relation]:>8.3f}"
            )
        return "\n".join(lines)


def probe_models(
    trained: torch.nn.Module,
    random: torch.nn.Module,
    tokenizer: Any,
    trees: Sequence[DependencyTree],
) -> SyntaxProbeReport:
    """Probe both models' heads on ``trees`` (MAX and MST, both directions)
    and compute the baselines (fixed offsets fitted on the same trees)."""
    return _report(
        tree_word_attentions(trained, tokenizer, trees),
        tree_word_attentions(random, tokenizer, trees),
        trees,
    )


def _report(
    trained_attention: list[Tensor], random_attention: list[Tensor], trees: Sequence[DependencyTree]
) -> SyntaxProbeReport:
    gold = [t.heads for t in trees]
    relations = [t.relations for t in trees]

    def probes(attentions: list[Tensor], method: str) -> dict[str, HeadProbeResult]:
        return {d: probe_heads(attentions, gold, relations, method, d) for d in DIRECTIONS}

    offsets = best_offsets(gold, relations)
    return SyntaxProbeReport(
        trained=probes(trained_attention, "max"),
        random=probes(random_attention, "max"),
        trained_mst=probes(trained_attention, "mst"),
        random_mst=probes(random_attention, "mst"),
        fixed_offset=relation_accuracy(
            [offset_heads(len(t.words), t.relations, offsets) for t in trees], gold, relations
        ),
        right_branching=relation_accuracy(
            [right_branching(len(t.words)) for t in trees], gold, relations
        ),
    )


def run_syntax_probe_experiment(
    steps: int = 300, seed: int = 0, n_train: int = 2000, progress: bool = False
) -> tuple[SyntaxProbeReport, dict[str, float]]:
    """Train a tiny BERT on ``n_train`` grammar sentences, probe it and a randomly
    initialised twin on the shipped gold treebank.

    Returns:
        ``(report, metrics)``; metrics hold the best head's undirected UAS of both models
        (MAX and MST, either direction), the baselines' UAS, and
        the held-out directed UAS of the attention probing classifier on both models.
    """
    sentences = [t.text for t in grammar_treebank(n_train, seed=1000 + seed)]
    trained, tokenizer = train_grammar_mlm(sentences, steps=steps, seed=seed, progress=progress)
    random, _ = train_grammar_mlm(sentences, seed=seed, train=False)
    trees = load_gold_treebank()
    attentions = {
        "trained": tree_word_attentions(trained, tokenizer, trees),
        "random": tree_word_attentions(random, tokenizer, trees),
    }
    report = _report(attentions["trained"], attentions["random"], trees)
    metrics = {
        "trained_best_head_uas": report.best(report.trained, "all"),
        "random_best_head_uas": report.best(report.random, "all"),
        "trained_mst_best_head_uas": report.best(report.trained_mst, "all"),
        "random_mst_best_head_uas": report.best(report.random_mst, "all"),
        "fixed_offset_uas": report.fixed_offset["all"],
        "right_branching_uas": report.right_branching["all"],
    }
    # Clark et al.'s probing classifier: fitted on two thirds of the trees, scored on the
    # rest (directed UAS, the root word included).
    split = (2 * len(trees)) // 3
    gold = [t.heads for t in trees]
    for name, maps in attentions.items():
        probe = train_attention_probe(make_probe_batch(maps[:split], gold[:split]))
        test = make_probe_batch(maps[split:], gold[split:])
        metrics[f"{name}_probe_uas"] = probe_uas(probe, test)
    return report, metrics


__all__ = [
    "SyntaxProbeReport",
    "grammar_tokenizer",
    "probe_models",
    "run_syntax_probe_demo",
    "run_syntax_probe_experiment",
    "train_grammar_mlm",
    "tree_word_attentions",
]


def run_syntax_probe_demo(
    steps: int | None = None, progress: bool = True, seed: int = 0
) -> dict[str, float]:
    """The ``attnzoo demo syntax-probe`` entry: print the per-relation table of
    :func:`run_syntax_probe_experiment` and return its metrics."""
    report, metrics = run_syntax_probe_experiment(steps=steps or 300, seed=seed, progress=progress)
    print(report.table())
    return metrics
