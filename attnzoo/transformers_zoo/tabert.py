"""TaBERT (Yin et al. 2020): joint representations of an utterance and a table.

* **Content snapshot** (:func:`content_snapshot`): the ``K`` rows with the most n-gram
  overlap with the utterance (``K = 3`` in the paper); with ``K = 1`` one synthetic row
  made of the best-matching cell of every column.
* **Linearisation** (:func:`linearize_row`): per snapshot row
  ``[CLS] utterance [SEP] col1 | type | value [SEP] col2 | type | value [SEP] ...``,
  utterance tokens in segment 0, table tokens in segment 1.
* **Encoding** (:class:`TaBERTModel`): every row is encoded by the library's
  :class:`~attnzoo.transformers_zoo.bert.BertModel`; then vertical self-attention layers
  (:class:`~attnzoo.transformers_zoo.layers.EncoderLayer` on the transposed axis) let each
  token position attend across the ``K`` rows; a column is the mean of its cell tokens in
  a row, then the mean over the real rows; the utterance likewise.
* **Masked column prediction** (:meth:`TaBERTForPreTraining`): the names and types of
  some columns are replaced by ``[MASK]`` and predicted from the column vectors (the
  name's word pieces as a multi-label target, the type as a class).
* **Column selection** (:class:`TaBERTColumnSelector`): scores each column against the
  utterance; trained on the generated table-QA set of :func:`table_qa_examples` (tables of
  cities or people whose columns are drawn and shuffled per table, questions whose answer
  column is known).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention.validation import check_bool_mask, check_int, check_positive, check_rank
from .bert import BertConfig, BertModel
from .layers import EncoderLayer
from .objectives import train_wordpiece
from .training import TrainConfig, fit

COLUMN_TYPES = ("text", "real")


@dataclass
class Table:
    """A table: ``columns`` ``[(name, type)]`` (type in :data:`COLUMN_TYPES`) and ``rows``
    (one string per column)."""

    columns: list[tuple[str, str]]
    rows: list[list[str]]

    def __post_init__(self) -> None:
        if not self.columns:
            raise ValueError("`columns` must hold at least one (name, type) pair")
        for name, kind in self.columns:
            if kind not in COLUMN_TYPES:
                raise ValueError(
                    f"column {name!r} type must be one of {COLUMN_TYPES}, got {kind!r}"
                )
        if not self.rows:
            raise ValueError("`rows` must hold at least one row")
        for i, row in enumerate(self.rows):
            if len(row) != len(self.columns):
                raise ValueError(f"`rows[{i}]` must hold {len(self.columns)} cells, got {len(row)}")


def _ngrams(words: Sequence[str], n_max: int = 3) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for n in range(1, n_max + 1) for i in range(len(words) - n + 1)}


def _overlap(utterance: set[tuple[str, ...]], text: str) -> int:
    return len(utterance & _ngrams(text.lower().split()))


def content_snapshot(utterance: str, table: Table, k: int = 3) -> list[list[str]]:
    """The ``k`` rows most relevant to ``utterance`` (TaBERT's content snapshot).

    Rows are ranked by the number of word n-grams (n <= 3) they share with the utterance
    (ties keep table order). With ``k == 1`` the single row is synthetic: each column's
    cell with the most overlap. Tables with fewer rows than ``k`` give all their rows.
    """
    check_int(k, "k")
    grams = _ngrams(utterance.lower().split())
    if k == 1:
        return [
            [
                max((row[c] for row in table.rows), key=lambda cell: _overlap(grams, cell))
                for c in range(len(table.columns))
            ]
        ]
    scores = [sum(_overlap(grams, cell) for cell in row) for row in table.rows]
    order = sorted(range(len(table.rows)), key=lambda i: -scores[i])
    return [table.rows[i] for i in sorted(order[:k])]


@dataclass
class LinearizedRow:
    """One row's input: ``ids``, ``token_type_ids`` (lists of length n); ``utterance``
    ``(start, end)``; ``columns`` ``[(start, end)]`` of each ``col | type | value`` cell;
    ``names`` ``[(start, end)]`` of each column's name and type tokens."""

    ids: list[int]
    token_type_ids: list[int]
    utterance: tuple[int, int]
    columns: list[tuple[int, int]]
    names: list[tuple[int, int]]


def linearize_row(
    tokenizer: Any, utterance: str, columns: Sequence[tuple[str, str]], row: Sequence[str]
) -> LinearizedRow:
    """``[CLS] utterance [SEP] col1 | type | value [SEP] ...`` with ``tokenizer`` (a
    ``tokenizers`` WordPiece tokenizer with ``[CLS] [SEP]`` and ``|`` in its vocabulary)."""

    def encode(text: str) -> list[int]:
        return list(tokenizer.encode(text).ids)

    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    bar = encode("|")
    question = encode(utterance)
    ids = [cls, *question, sep]
    types = [0] * len(ids)
    spans, names = [], []
    for (name, kind), value in zip(columns, row, strict=True):
        start = len(ids)
        header = encode(name) + bar + encode(kind)
        cell = header + bar + encode(value)
        ids += [*cell, sep]
        types += [1] * (len(cell) + 1)
        spans.append((start, start + len(cell)))
        names.append((start, start + len(header)))
    return LinearizedRow(ids, types, (1, 1 + len(question)), spans, names)


@dataclass
class TableBatch:
    """Padded inputs of :class:`TaBERTModel` (``B`` tables, ``K`` rows, ``C`` columns,
    ``n`` tokens).

    Attributes:
        input_ids, token_type_ids: ``(B, K, n)`` int64.
        attention_mask: ``(B, K, n)`` bool, True = real token (all False for a padded row).
        row_mask: ``(B, K)`` bool, True = real row.
        utterance_mask: ``(B, K, n)`` bool, the utterance's tokens.
        column_token_mask: ``(B, K, C, n)`` bool, column ``c``'s cell tokens in each row.
        column_mask: ``(B, C)`` bool, True = real column.
        name_mask: ``(B, K, C, n)`` bool, the tokens of each column's name and type.
    """

    input_ids: Tensor
    token_type_ids: Tensor
    attention_mask: Tensor
    row_mask: Tensor
    utterance_mask: Tensor
    column_token_mask: Tensor
    column_mask: Tensor
    name_mask: Tensor


def collate_tables(
    tokenizer: Any, utterances: Sequence[str], tables: Sequence[Table], k: int = 3
) -> TableBatch:
    """Snapshot, linearise and pad ``tables`` with their ``utterances`` into a batch."""
    if len(utterances) != len(tables) or not tables:
        raise ValueError(
            f"`utterances` and `tables` must be non-empty and of one length, got "
            f"{len(utterances)} and {len(tables)}"
        )
    rows = [
        [linearize_row(tokenizer, u, t.columns, r) for r in content_snapshot(u, t, k)]
        for u, t in zip(utterances, tables, strict=True)
    ]
    b = len(tables)
    k_max = max(len(r) for r in rows)
    c_max = max(len(t.columns) for t in tables)
    n = max(len(row.ids) for table_rows in rows for row in table_rows)
    batch = TableBatch(
        input_ids=torch.zeros(b, k_max, n, dtype=torch.long),
        token_type_ids=torch.zeros(b, k_max, n, dtype=torch.long),
        attention_mask=torch.zeros(b, k_max, n, dtype=torch.bool),
        row_mask=torch.zeros(b, k_max, dtype=torch.bool),
        utterance_mask=torch.zeros(b, k_max, n, dtype=torch.bool),
        column_token_mask=torch.zeros(b, k_max, c_max, n, dtype=torch.bool),
        column_mask=torch.zeros(b, c_max, dtype=torch.bool),
        name_mask=torch.zeros(b, k_max, c_max, n, dtype=torch.bool),
    )
    pad = tokenizer.token_to_id("[PAD]")
    batch.input_ids.fill_(pad)
    for i, table_rows in enumerate(rows):
        batch.column_mask[i, : len(tables[i].columns)] = True
        for j, row in enumerate(table_rows):
            length = len(row.ids)
            batch.input_ids[i, j, :length] = torch.tensor(row.ids)
            batch.token_type_ids[i, j, :length] = torch.tensor(row.token_type_ids)
            batch.attention_mask[i, j, :length] = True
            batch.row_mask[i, j] = True
            batch.utterance_mask[i, j, row.utterance[0] : row.utterance[1]] = True
            for c, ((start, end), (n0, n1)) in enumerate(zip(row.columns, row.names, strict=True)):
                batch.column_token_mask[i, j, c, start:end] = True
                batch.name_mask[i, j, c, n0:n1] = True
    return batch


@dataclass
class TaBERTConfig:
    """Hyper-parameters of :class:`TaBERTModel`.

    Attributes:
        bert: the row encoder's :class:`BertConfig`.
        vertical_layers: vertical self-attention layers (the paper's ``V``).
    """

    bert: BertConfig = field(default_factory=BertConfig)
    vertical_layers: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.bert, BertConfig):
            raise TypeError(f"`bert` must be a BertConfig, got {type(self.bert).__name__}")
        check_int(self.vertical_layers, "vertical_layers", minimum=0)


@dataclass
class TaBERTOutput:
    """What :class:`TaBERTModel` returns.

    Attributes:
        token_states: ``(B, K, n, dim)`` after the vertical layers (zeros on padding).
        columns: ``(B, C, dim)`` column vectors (zeros for padded columns).
        utterance: ``(B, dim)`` utterance vectors.
    """

    token_states: Tensor
    columns: Tensor
    utterance: Tensor


def _masked_mean(x: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Mean of ``x`` over ``dim`` where ``mask`` (``x``'s shape without its last axis) is
    True; zero where nothing is."""
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(dim) / weights.sum(dim).clamp_min(1.0)


class TaBERTModel(nn.Module):
    """BERT per row, vertical self-attention across rows, pooled column and utterance vectors.

    Args:
        config: a :class:`TaBERTConfig`.

    Parameters: ``bert.*`` (a :class:`BertModel` without pooler), ``vertical.{i}.*``
    (:class:`EncoderLayer`, BERT's width, heads and post-LN).
    """

    def __init__(self, config: TaBERTConfig) -> None:
        super().__init__()
        if not isinstance(config, TaBERTConfig):
            raise TypeError(f"`config` must be a TaBERTConfig, got {type(config).__name__}")
        self.config = config
        bert = config.bert
        self.bert = BertModel(bert, add_pooling_layer=False)
        self.vertical = nn.ModuleList(
            EncoderLayer(
                bert.hidden_size,
                bert.num_attention_heads,
                bert.intermediate_size,
                activation="gelu",
                dropout=bert.hidden_dropout_prob,
                attention_dropout=bert.attention_probs_dropout_prob,
                layer_norm_eps=bert.layer_norm_eps,
            )
            for _ in range(config.vertical_layers)
        )

    def forward(self, batch: TableBatch) -> TaBERTOutput:
        """Encode a :class:`TableBatch`; shapes in :class:`TaBERTOutput`."""
        if not isinstance(batch, TableBatch):
            raise TypeError(f"`batch` must be a TableBatch, got {type(batch).__name__}")
        check_rank(batch.input_ids, 3, "input_ids", "(tables, rows, n)")
        b, k, n = batch.input_ids.shape
        for name in ("attention_mask", "utterance_mask", "token_type_ids"):
            value = getattr(batch, name)
            if value.shape != (b, k, n):
                raise ValueError(f"`{name}` must have shape {(b, k, n)}, got {tuple(value.shape)}")
        for name in (
            "attention_mask",
            "row_mask",
            "utterance_mask",
            "column_token_mask",
            "column_mask",
        ):
            check_bool_mask(getattr(batch, name), name)
        if not bool(batch.row_mask.any(-1).all()):
            raise ValueError("`row_mask` must keep at least one row per table")
        mask = batch.attention_mask
        # Padded rows are encoded with one real token so that BERT never sees an empty
        # row; their states are dropped below.
        row_attention = mask.clone()
        row_attention[..., 0] |= ~batch.row_mask
        h = self.bert(
            batch.input_ids.reshape(b * k, n),
            row_attention.reshape(b * k, n),
            batch.token_type_ids.reshape(b * k, n),
        ).last_hidden_state.reshape(b, k, n, -1)
        h = h * mask.unsqueeze(-1)
        # Vertical attention: each token position attends over the rows holding a real token there.
        x = h.transpose(1, 2).reshape(b * n, k, -1)
        vertical_mask = mask.transpose(1, 2).reshape(b * n, k)
        for layer in self.vertical:
            x = layer(x, mask=vertical_mask)  # type: ignore[assignment]
        h = x.reshape(b, n, k, -1).transpose(1, 2) * mask.unsqueeze(-1)
        # Mean over each column's cell tokens in each row: (B, K, C, d), without
        # materialising a (B, K, C, n, d) tensor.
        cells = batch.column_token_mask.to(h.dtype)
        per_row_columns = torch.einsum("bkcn,bknd->bkcd", cells, h)
        per_row_columns = per_row_columns / cells.sum(-1, keepdim=True).clamp_min(1.0)
        columns = _masked_mean(per_row_columns.transpose(1, 2), batch.row_mask.unsqueeze(1), dim=2)
        utterance = _masked_mean(
            _masked_mean(h, batch.utterance_mask, dim=2), batch.row_mask, dim=1
        )
        return TaBERTOutput(h, columns * batch.column_mask.unsqueeze(-1), utterance)


def _column_logits(scores: Tensor, column_mask: Tensor) -> Tensor:
    return scores.masked_fill(~column_mask, torch.finfo(scores.dtype).min)


class TaBERTColumnSelector(nn.Module):
    """TaBERT with a column-selection head: which column answers the utterance.

    The score of column ``c`` is ``MLP([col_c; u; col_c * u])``.
    ``forward(batch, answer=None)`` -> ``(logits, loss)``: logits ``(B, C)`` (padded
    columns at the dtype's minimum), ``loss`` the cross-entropy with ``answer`` ``(B,)``
    column indices when given.
    """

    def __init__(self, config: TaBERTConfig) -> None:
        super().__init__()
        self.tabert = TaBERTModel(config)
        dim = config.bert.hidden_size
        self.scorer = nn.Sequential(nn.Linear(3 * dim, dim), nn.Tanh(), nn.Linear(dim, 1))

    def forward(
        self, batch: TableBatch, answer: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        out = self.tabert(batch)
        u = out.utterance.unsqueeze(1).expand_as(out.columns)
        scores = self.scorer(torch.cat([out.columns, u, out.columns * u], dim=-1)).squeeze(-1)
        logits = _column_logits(scores, batch.column_mask)
        if answer is None:
            return logits, None
        check_rank(answer, 1, "answer", "(tables,)")
        if answer.shape[0] != logits.shape[0]:
            raise ValueError(f"`answer` must have {logits.shape[0]} entries, got {answer.shape[0]}")
        real = batch.column_mask.gather(1, answer.clamp(0, logits.shape[1] - 1)[:, None])
        if bool((answer < 0).any() or (answer >= logits.shape[1]).any() or not real.all()):
            raise ValueError("`answer` must index a real column of each table")
        return logits, F.cross_entropy(logits, answer)


@dataclass
class MaskedColumns:
    """:func:`mask_columns`' result: the ``batch`` with some headers masked, ``masked``
    ``(B, C)`` bool (the masked columns), ``name_targets`` ``(B, C, vocab)`` float (the
    header's word pieces, multi-label) and ``type_targets`` ``(B, C)`` (index in
    :data:`COLUMN_TYPES`)."""

    batch: TableBatch
    masked: Tensor
    name_targets: Tensor
    type_targets: Tensor


def mask_columns(
    batch: TableBatch,
    column_types: Tensor,
    mask_id: int,
    vocab_size: int,
    probability: float = 0.3,
    generator: torch.Generator | None = None,
) -> MaskedColumns:
    """Masked column prediction inputs: replace the name and type tokens of a random
    ``probability`` of the real columns (at least one per table) by ``mask_id`` in every row.

    ``column_types`` ``(B, C)``: each column's type index.
    """
    b, c = batch.column_mask.shape
    draw = torch.rand(b, c, generator=generator) < probability
    # At least one column per table, so every table contributes to the loss.
    first = torch.rand(b, c, generator=generator).masked_fill(~batch.column_mask, -1).argmax(-1)
    draw[torch.arange(b), first] = True
    masked = draw & batch.column_mask
    header_tokens = batch.name_mask & masked[:, None, :, None]  # (B, K, C, n)
    name_targets = torch.zeros(b, c, vocab_size)
    ids = batch.input_ids.unsqueeze(2).expand_as(header_tokens)
    table, _, column, _ = header_tokens.nonzero(as_tuple=True)
    name_targets[table, column, ids[header_tokens]] = 1.0
    input_ids = batch.input_ids.masked_fill(header_tokens.any(dim=2), mask_id)
    new_batch = TableBatch(**{**batch.__dict__, "input_ids": input_ids})
    return MaskedColumns(new_batch, masked, name_targets, column_types)


class TaBERTForPreTraining(nn.Module):
    """TaBERT with the masked column prediction (MCP) heads.

    ``forward(masked)`` with a :class:`MaskedColumns` -> scalar loss: binary cross-entropy
    of the masked headers' word pieces (multi-label over the vocabulary) plus the
    cross-entropy of their types, both from the column vectors.
    """

    def __init__(self, config: TaBERTConfig) -> None:
        super().__init__()
        self.tabert = TaBERTModel(config)
        dim = config.bert.hidden_size
        self.name_head = nn.Linear(dim, config.bert.vocab_size)
        self.type_head = nn.Linear(dim, len(COLUMN_TYPES))

    def forward(self, masked: MaskedColumns) -> Tensor:
        columns = self.tabert(masked.batch).columns[masked.masked]  # (masked, dim)
        names = F.binary_cross_entropy_with_logits(
            self.name_head(columns), masked.name_targets[masked.masked]
        )
        types = F.cross_entropy(self.type_head(columns), masked.type_targets[masked.masked])
        return names + types


# ---------------------------------------------------------------------------------------
# A generated table-QA set
# ---------------------------------------------------------------------------------------

_CITIES = (
    "paris",
    "lyon",
    "porto",
    "oslo",
    "bergen",
    "turin",
    "bruges",
    "ghent",
    "kyoto",
    "osaka",
    "quito",
    "lima",
    "perth",
    "cairo",
    "dakar",
    "accra",
)
_COUNTRIES = ("france", "norway", "italy", "belgium", "japan", "peru", "ecuador", "egypt", "ghana")
_RIVERS = ("seine", "rhone", "douro", "nile", "volta", "tiber", "kamo", "rimac")
_NAMES = (
    "alice",
    "bruno",
    "chloe",
    "david",
    "emma",
    "farid",
    "grace",
    "hugo",
    "ines",
    "jonas",
    "kenji",
    "lena",
    "marta",
    "nadia",
    "omar",
    "paula",
)
_JOBS = ("baker", "pilot", "nurse", "farmer", "teacher", "lawyer", "painter", "chef")
_TEAMS = ("lions", "eagles", "sharks", "wolves", "tigers", "bears")

# Schema -> key column and {column: (type, value generator, question templates)}.
_SCHEMAS: dict[str, tuple[str, dict[str, tuple[str, Any, tuple[str, ...]]]]] = {
    "cities": (
        "city",
        {
            "country": (
                "text",
                lambda r: r.choice(_COUNTRIES),
                ("which country is {key} in ?", "in what nation is {key} ?"),
            ),
            "population": (
                "real",
                lambda r: str(r.randint(10, 900) * 1000),
                ("how many people live in {key} ?", "what is the population of {key} ?"),
            ),
            "area": (
                "real",
                lambda r: str(r.randint(20, 800)),
                ("how large is {key} ?", "how big is {key} in square km ?"),
            ),
            "mayor": (
                "text",
                lambda r: r.choice(_NAMES),
                ("who is the mayor of {key} ?", "who governs {key} ?"),
            ),
            "founded": (
                "real",
                lambda r: str(r.randint(800, 1900)),
                ("when was {key} founded ?", "in what year was {key} built ?"),
            ),
            "river": (
                "text",
                lambda r: r.choice(_RIVERS),
                ("which river flows through {key} ?", "what water runs through {key} ?"),
            ),
        },
    ),
    "people": (
        "name",
        {
            "age": (
                "real",
                lambda r: str(r.randint(18, 90)),
                ("how old is {key} ?", "what age is {key} ?"),
            ),
            "city": (
                "text",
                lambda r: r.choice(_CITIES),
                ("where does {key} live ?", "in which town is {key} based ?"),
            ),
            "job": (
                "text",
                lambda r: r.choice(_JOBS),
                ("what does {key} do for work ?", "what is the occupation of {key} ?"),
            ),
            "salary": (
                "real",
                lambda r: str(r.randint(20, 120) * 1000),
                ("how much does {key} earn ?", "what is the pay of {key} ?"),
            ),
            "team": (
                "text",
                lambda r: r.choice(_TEAMS),
                ("which team does {key} support ?", "who does {key} cheer for ?"),
            ),
        },
    ),
}


@dataclass
class TableQAExample:
    """An utterance, its table, the answer column's index and each column's type index."""

    utterance: str
    table: Table
    answer: int
    column_types: list[int]


def table_qa_examples(
    n: int, seed: int = 0, n_columns: int = 4, n_rows: int = 5
) -> list[TableQAExample]:
    """``n`` generated table-QA examples.

    Each table is about cities or people: its key column (city, name) and
    ``n_columns - 1`` other columns drawn from the schema, in a random order, with
    ``n_rows`` rows of random values. The question asks about one row (named by its key)
    and one non-key column, in one of two phrasings that mostly do not contain the
    column's name, so the model must learn which words point at which column.
    """
    check_int(n, "n")
    check_int(n_columns, "n_columns", minimum=2)
    check_int(n_rows, "n_rows")
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        key_name, schema = _SCHEMAS[rng.choice(tuple(_SCHEMAS))]
        if n_columns - 1 > len(schema):
            raise ValueError(f"`n_columns` must be <= {len(schema) + 1}, got {n_columns}")
        chosen = rng.sample(tuple(schema), n_columns - 1)
        names = [key_name, *chosen]
        rng.shuffle(names)
        keys = rng.sample(_NAMES if key_name == "name" else _CITIES, n_rows)
        rows = [
            [key if name == key_name else schema[name][1](rng) for name in names] for key in keys
        ]
        columns = [(name, "text" if name == key_name else schema[name][0]) for name in names]
        target = rng.choice(chosen)
        utterance = rng.choice(schema[target][2]).format(key=rng.choice(keys))
        types = [COLUMN_TYPES.index(kind) for _, kind in columns]
        examples.append(TableQAExample(utterance, Table(columns, rows), names.index(target), types))
    return examples


def table_tokenizer(examples: Sequence[TableQAExample], vocab_size: int = 400) -> Any:
    """A WordPiece tokenizer trained on the utterances and tables of ``examples``."""
    texts = []
    for example in examples:
        texts.append(example.utterance)
        texts.append(" | ".join(f"{name} | {kind}" for name, kind in example.table.columns))
        texts.extend(" ".join(row) for row in example.table.rows)
    return train_wordpiece(texts, vocab_size=vocab_size)


def _collate(
    tokenizer: Any, examples: Sequence[TableQAExample], k: int
) -> tuple[TableBatch, Tensor, Tensor]:
    batch = collate_tables(
        tokenizer, [e.utterance for e in examples], [e.table for e in examples], k
    )
    answer = torch.tensor([e.answer for e in examples])
    c = batch.column_mask.shape[1]
    types = torch.tensor([e.column_types + [0] * (c - len(e.column_types)) for e in examples])
    return batch, answer, types


def _selection_loss(model: nn.Module, item: object) -> Tensor:
    assert isinstance(item, tuple)
    batch, answer = item
    _, loss = model(batch, answer)
    return loss  # type: ignore[no-any-return]


def selection_accuracy(model: TaBERTColumnSelector, batch: TableBatch, answer: Tensor) -> float:
    """Fraction of tables whose top-scored column is the answer (eval mode)."""
    model.eval()
    with torch.no_grad():
        logits, _ = model(batch)
    return float((logits.argmax(-1) == answer).float().mean())


def tiny_tabert_config(vocab_size: int, hidden_size: int = 64, layers: int = 2) -> TaBERTConfig:
    """A CPU-sized :class:`TaBERTConfig` (4 heads, one vertical layer, no dropout)."""
    bert = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return TaBERTConfig(bert=bert, vertical_layers=1)


def run_tabert_demo(
    steps: int | None = None, progress: bool = True, seed: int = 0
) -> dict[str, float]:
    """Masked column prediction, then column selection on the generated table-QA set.

    Args:
        steps: column-selection steps (default 250, 16 tables each); MCP pretraining takes
            ``steps // 2`` steps on the same tables first.
        progress: show tqdm bars.
        seed: seed of the data, the initialisation and the masking.

    Returns:
        ``mcp_loss_initial`` / ``mcp_loss_final`` (mean of the first / last 20 steps),
        ``selection_accuracy`` on 300 held-out tables, ``chance_accuracy``
        (``1 / columns``).
    """
    steps = 250 if steps is None else steps
    check_positive(steps, "steps")
    torch.manual_seed(seed)
    train = table_qa_examples(2000, seed=seed)
    test = table_qa_examples(300, seed=seed + 10_000)
    tokenizer = table_tokenizer(train)
    config = tiny_tabert_config(tokenizer.get_vocab_size())
    generator = torch.Generator().manual_seed(seed)
    mask_id, vocab = tokenizer.token_to_id("[MASK]"), tokenizer.get_vocab_size()

    def examples(step: int) -> list[TableQAExample]:
        return random.Random(seed * 1_000_003 + step).sample(train, 16)

    pretraining = TaBERTForPreTraining(config)
    metrics: dict[str, float] = {}
    if steps // 2 >= 1:

        def mcp_batch(step: int) -> MaskedColumns:
            batch, _, types = _collate(tokenizer, examples(step), 3)
            return mask_columns(batch, types, mask_id, vocab, generator=generator)

        history = fit(
            pretraining,
            lambda model, masked: model(masked),
            mcp_batch,
            TrainConfig(steps=steps // 2, lr=1e-3, progress=progress, description="MCP"),
        )
        metrics["mcp_loss_initial"] = sum(history.losses[:20]) / len(history.losses[:20])
        metrics["mcp_loss_final"] = sum(history.losses[-20:]) / len(history.losses[-20:])
    selector = TaBERTColumnSelector(config)
    selector.tabert.load_state_dict(pretraining.tabert.state_dict())
    fit(
        selector,
        _selection_loss,
        lambda step: _collate(tokenizer, examples(10**6 + step), 3)[:2],
        TrainConfig(steps=steps, lr=1e-3, progress=progress, description="column selection"),
    )
    test_batch, test_answer, _ = _collate(tokenizer, test, 3)
    metrics["selection_accuracy"] = selection_accuracy(selector, test_batch, test_answer)
    metrics["chance_accuracy"] = 1 / test_batch.column_mask.shape[1]
    return metrics


__all__ = [
    "COLUMN_TYPES",
    "LinearizedRow",
    "MaskedColumns",
    "TaBERTColumnSelector",
    "TaBERTConfig",
    "TaBERTForPreTraining",
    "TaBERTModel",
    "TaBERTOutput",
    "Table",
    "TableBatch",
    "TableQAExample",
    "collate_tables",
    "content_snapshot",
    "linearize_row",
    "mask_columns",
    "run_tabert_demo",
    "selection_accuracy",
    "table_qa_examples",
    "table_tokenizer",
    "tiny_tabert_config",
]
