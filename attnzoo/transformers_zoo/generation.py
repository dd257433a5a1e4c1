"""Model-agnostic autoregressive decoding: greedy search and beam search.

A model plugs in through one function, the *step*::

    step(prev_tokens, state) -> (log_probs, new_state)

* ``prev_tokens``: ``(N,)`` int64, the last token of each running sequence (BOS first);
* ``state``: whatever the model carries between steps (encoder outputs, hidden states,
  :class:`~attnzoo.attention.multi_head.KVCache` objects, ...), as a nested structure of
  tensors, tuples, lists, dicts and dataclasses (or None) whose tensors are batch-first:
  dimension 0 is ``N``;
* ``log_probs``: ``(N, vocab)`` log-probabilities of the next token.

``N`` is ``batch_size`` in greedy search and ``batch_size * beam_width`` in beam search,
where the beams of batch item ``b`` are rows ``b * beam_width ... (b + 1) * beam_width - 1``.
Beam search expands the caller's ``(batch_size, ...)`` state to that layout itself and keeps
it aligned with the surviving beams through :func:`reorder_state`, so a step function never
needs to know which search calls it.

Outputs exclude BOS and include EOS; positions after a sequence's EOS are ``pad``
(``PAD = 0`` of :mod:`attnzoo.transformers_zoo.tasks`). The output width ``n`` is the length
of the longest returned sequence, at most ``max_len``.

Length penalty (beam search) is the GNMT one (Wu et al. 2016) by default: a finished
hypothesis of ``L`` generated tokens (its EOS included) with summed log-probability ``s``
scores ``s / ((5 + L) / 6) ** length_penalty``; ``length_normalization="length"`` gives
Hugging Face's ``s / L ** length_penalty`` instead. ``length_penalty = 0`` ranks by ``s``
alone; larger values favour longer outputs.

Every language model's ``generate`` is :meth:`GenerationMixin.generate`: one keyword list,
one resolution of the EOS and padding ids; a model only says how its decoding starts
(:class:`GenerationStart`).
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

import torch
from torch import Tensor

from ..attention.validation import check_positive, check_rank
from .checkpoints import hf_attention_mask
from .tasks.sequences import PAD

State = Any
# An id no vocabulary reaches: the EOS of a search that must run to its length limit.
NO_TOKEN = 2**62
StepFn = Callable[[Tensor, State], tuple[Tensor, State]]
T = TypeVar("T")


# ---------------------------------------------------------------------------------------
# State handling
# ---------------------------------------------------------------------------------------


def reorder_state(state: T, index: Tensor) -> T:
    """Select rows ``index`` along dimension 0 of every tensor in a nested ``state``.

    Tuples (named tuples included), lists, dicts (any ``Mapping`` rebuilt as its own type)
    and dataclass instances are traversed and rebuilt; a dataclass is rebuilt with
    :func:`dataclasses.replace`, so an object shared with the caller (e.g. a
    :class:`~attnzoo.attention.multi_head.KVCache`) is never mutated. Other leaves (None,
    numbers, strings, 0-dimensional tensors) are returned unchanged.

    Args:
        state: the nested structure of batch-first tensors ``(N, ...)``.
        index: ``(M,)`` integer indices into ``N`` (repeats allowed: expanding a batch to
            its beams is ``index = arange(N).repeat_interleave(beam_width)``).

    Returns:
        the same structure with every tensor ``(M, ...)``.
    """
    if not isinstance(index, Tensor):
        raise TypeError(f"`index` must be a torch.Tensor, got {type(index).__name__}")
    if index.dim() != 1 or index.is_floating_point() or index.dtype == torch.bool:
        raise ValueError(
            f"`index` must be a 1-D integer tensor (M,), got shape {tuple(index.shape)} "
            f"and dtype {index.dtype}"
        )
    return _reorder(state, index.long())


def _reorder(state: Any, index: Tensor) -> Any:
    if isinstance(state, Tensor):
        if state.dim() == 0:
            return state
        return state.index_select(0, index.to(state.device))
    if state is None or isinstance(state, (int, float, bool, str)):
        return state
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        changes = {
            f.name: _reorder(getattr(state, f.name), index)
            for f in dataclasses.fields(state)
            if f.init
        }
        return dataclasses.replace(state, **changes)
    if isinstance(state, tuple):
        items = [_reorder(item, index) for item in state]
        if hasattr(state, "_fields"):  # named tuple
            return type(state)(*items)
        return tuple(items)
    if isinstance(state, list):
        return [_reorder(item, index) for item in state]
    if isinstance(state, Mapping):
        rebuilt = {key: _reorder(value, index) for key, value in state.items()}
        if type(state) is dict:
            return rebuilt
        # Mapping declares no constructor; the mapping types rebuilt here take a dict of
        # their items (dict subclasses, OrderedDict, MappingProxyType).
        mapping_type = cast(Callable[[dict[Any, Any]], Mapping[Any, Any]], type(state))
        return mapping_type(rebuilt)
    return state


def _first_tensor(state: Any) -> Tensor | None:
    """The first tensor found in a nested state (to place new tensors on its device)."""
    if isinstance(state, Tensor):
        return state
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        children: Any = [getattr(state, f.name) for f in dataclasses.fields(state)]
    elif isinstance(state, (tuple, list)):
        children = state
    elif isinstance(state, Mapping):
        children = list(state.values())
    else:
        return None
    for child in children:
        found = _first_tensor(child)
        if found is not None:
            return found
    return None


def _resolve_device(state: Any, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    found = _first_tensor(state)
    return found.device if found is not None else torch.device("cpu")


def _check_token(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"`{name}` must be an int token id, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"`{name}` must be a token id >= 0, got {value}")
    return value


def _check_search_args(batch_size: int, bos: int, eos: int, max_len: int, pad: int) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool):
        raise TypeError(f"`batch_size` must be an int, got {type(batch_size).__name__}")
    check_positive(batch_size, "batch_size")
    if not isinstance(max_len, int) or isinstance(max_len, bool):
        raise TypeError(f"`max_len` must be an int, got {type(max_len).__name__}")
    check_positive(max_len, "max_len")
    _check_token(bos, "bos")
    _check_token(eos, "eos")
    _check_token(pad, "pad")


def _call_step(step: StepFn, tokens: Tensor, state: State) -> tuple[Tensor, State]:
    """Run ``step`` and check that it returned ``(N, vocab)`` log-probabilities."""
    out = step(tokens, state)
    if not isinstance(out, tuple) or len(out) != 2:
        raise TypeError("`step` must return a pair (log_probs, new_state)")
    log_probs, new_state = out
    if not isinstance(log_probs, Tensor) or log_probs.dim() != 2:
        shape = tuple(log_probs.shape) if isinstance(log_probs, Tensor) else type(log_probs)
        raise ValueError(f"`step` must return log_probs of shape (N, vocab), got {shape}")
    if log_probs.shape[0] != tokens.shape[0]:
        raise ValueError(
            f"`step` must return log_probs with N = {tokens.shape[0]} rows (one per running "
            f"sequence), got shape {tuple(log_probs.shape)}"
        )
    return log_probs, new_state


def _pack(rows: list[list[int]], pad: int, device: torch.device) -> Tensor:
    """Token lists -> ``(batch, n)`` int64 padded with ``pad``, ``n`` = longest (>= 1)."""
    width = max(1, max(len(row) for row in rows))
    out = torch.full((len(rows), width), pad, dtype=torch.long, device=device)
    for i, row in enumerate(rows):
        if row:
            out[i, : len(row)] = torch.tensor(row, dtype=torch.long, device=device)
    return out


# ---------------------------------------------------------------------------------------
# Greedy search
# ---------------------------------------------------------------------------------------


@torch.no_grad()
def greedy_search(
    step: StepFn,
    state: State,
    batch_size: int,
    bos: int,
    eos: int,
    max_len: int,
    *,
    pad: int = PAD,
    device: torch.device | str | None = None,
) -> Tensor:
    """Pick the most probable token at every step until EOS or ``max_len`` tokens.

    Args:
        step: ``(prev_tokens (batch,), state) -> (log_probs (batch, vocab), new_state)``.
        state: initial state, batch-first tensors ``(batch_size, ...)`` (or None).
        batch_size: number of sequences.
        bos: first input token.
        eos: end-of-sequence token; a sequence stops after emitting it.
        max_len: the most tokens generated per sequence (EOS included).
        pad: token written after EOS (a finished sequence is fed its EOS once, then
            ``pad`` while the others run on).
        device: device of the tokens; default that of the first tensor in ``state``.

    Returns:
        ``(batch_size, n)`` int64, without BOS, EOS included, ``pad`` after it;
        ``n <= max_len`` is the longest sequence's length.
    """
    _check_search_args(batch_size, bos, eos, max_len, pad)
    device = _resolve_device(state, device)
    start = torch.full((batch_size,), bos, dtype=torch.long, device=device)
    return _decode(step, state, start, eos, pad, max_len, lambda scores, _: scores.argmax(-1))


def _decode(
    step: StepFn,
    state: State,
    start: Tensor,
    eos: int | None,
    pad: int,
    max_len: int,
    choose: Callable[[Tensor, int], Tensor],
) -> Tensor:
    """The token-by-token loop shared by greedy search and sampling.

    ``choose(scores (N, vocab), index) -> (N,)`` picks each row's next token from the
    step's scores at generation step ``index`` (0-based). A finished row is fed its EOS
    once, then ``pad``; the loop stops when every row is finished or after ``max_len``.
    Returns ``(N, n)`` int64, ``n <= max_len``.
    """
    tokens = start
    finished = torch.zeros_like(start, dtype=torch.bool)
    outputs: list[Tensor] = []
    for index in range(max_len):
        scores, state = _call_step(step, tokens, state)
        tokens = choose(scores, index).to(start.device).masked_fill(finished, pad)
        outputs.append(tokens)
        if eos is not None:
            finished = finished | (tokens == eos)
            if bool(finished.all()):
                break
    return torch.stack(outputs, dim=1)


# ---------------------------------------------------------------------------------------
# Beam search
# ---------------------------------------------------------------------------------------


LENGTH_NORMALIZATIONS = ("gnmt", "length")
"""Beam-search length normalisers: ``"gnmt"`` ``((5 + L) / 6) ** lp`` (Wu et al. 2016) and
``"length"`` ``L ** lp`` (Hugging Face's)."""


def _check_normalization(normalization: object) -> str:
    if normalization not in LENGTH_NORMALIZATIONS:
        raise ValueError(
            f"`length_normalization` must be one of {LENGTH_NORMALIZATIONS}, got {normalization!r}"
        )
    return str(normalization)


def length_penalty_factor(length: int, length_penalty: float, normalization: str = "gnmt") -> float:
    """The normaliser a beam score is divided by, for ``length`` generated tokens.

    ``"gnmt"``: ``((5 + length) / 6) ** length_penalty`` (Wu et al. 2016); ``"length"``:
    ``length ** length_penalty`` (Hugging Face's). Both grow with ``length`` for a positive
    penalty and shrink for a negative one.
    """
    if _check_normalization(normalization) == "length":
        return float(length) ** length_penalty
    return ((5.0 + length) / 6.0) ** length_penalty


class _Hypotheses:
    """The best ``beam_width`` finished hypotheses of one batch item."""

    def __init__(self, beam_width: int) -> None:
        self.beam_width = beam_width
        self.items: list[tuple[float, list[int]]] = []

    def add(self, score: float, tokens: list[int]) -> None:
        self.items.append((score, tokens))
        # Stable sort: among equal scores the earlier (higher-ranked) hypothesis wins.
        self.items.sort(key=lambda item: -item[0])
        del self.items[self.beam_width :]

    def full(self) -> bool:
        return len(self.items) >= self.beam_width

    def worst(self) -> float:
        return self.items[-1][0] if self.items else -math.inf

    def best(self) -> tuple[float, list[int]]:
        return self.items[0]


def _best_open_bound(
    open_sum: float, length: int, max_len: int, length_penalty: float, normalization: str
) -> float:
    """Upper bound on the penalised score any continuation of an open beam can reach.

    The open beam has ``length`` tokens and summed log-probability ``open_sum <= 0``; a
    continuation ends with ``L`` tokens, ``length < L <= max_len``, and a sum ``<= open_sum``.
    A negative sum divided by a larger normaliser is larger, so the bound sits at the
    length with the largest normaliser: ``max_len`` for a positive penalty, the next step
    for a negative one, either for zero.
    """
    if open_sum == -math.inf:
        return -math.inf
    best_len = max_len if length_penalty > 0 else min(length + 1, max_len)
    return open_sum / length_penalty_factor(best_len, length_penalty, normalization)


@torch.no_grad()
def beam_search(
    step: StepFn,
    state: State,
    batch_size: int,
    bos: int,
    eos: int,
    max_len: int,
    beam_width: int,
    length_penalty: float = 1.0,
    *,
    pad: int = PAD,
    device: torch.device | str | None = None,
    length_normalization: str = "gnmt",
) -> tuple[Tensor, Tensor]:
    """Beam search with finished-hypothesis bookkeeping and the GNMT length penalty.

    At every step each of the ``beam_width`` open beams of a batch item is extended by
    every token; of the ``2 * beam_width`` best extensions, those ending in EOS (from the
    top ``beam_width`` ranks) become finished hypotheses and the best ``beam_width`` others
    stay open. A batch item is done once it holds ``beam_width`` finished hypotheses, the
    worst of which scores at least as well as any continuation of its open beams could
    (an exact bound, see the module docstring for the penalty); the search stops when every
    item is done or after ``max_len`` tokens, when the open beams count as finished.

    Args:
        step: ``(prev_tokens (batch*beam,), state) -> (log_probs (batch*beam, vocab),
            new_state)``; beams of item ``b`` are rows ``b*beam_width ... b*beam_width +
            beam_width - 1``.
        state: initial state for ``batch_size`` items, batch-first tensors
            ``(batch_size, ...)`` (or None); it is expanded to ``batch_size * beam_width``
            rows with :func:`reorder_state` (the caller's objects are not mutated).
        batch_size: number of sequences.
        bos: first input token.
        eos: end-of-sequence token.
        max_len: the most tokens generated per hypothesis (EOS included).
        beam_width: open beams per batch item (1 = greedy when ``length_penalty = 0``).
        length_penalty: GNMT exponent, score ``= sum log p / ((5 + L) / 6) ** lp`` with
            ``L`` the generated length including EOS.
        pad: token written after EOS (done items are fed ``pad`` until the search stops).
        device: device of the tokens; default that of the first tensor in ``state``.
        length_normalization: ``"gnmt"`` or ``"length"`` (``sum log p / L ** lp``, Hugging
            Face's), see :func:`length_penalty_factor`.

    Returns:
        ``tokens`` ``(batch_size, n)`` int64: the best hypothesis of each item, without
        BOS, EOS included, ``pad`` after it, ``n <= max_len``; and ``scores``
        ``(batch_size,)`` float32: their length-penalised log-probabilities.
    """
    _check_search_args(batch_size, bos, eos, max_len, pad)
    if not isinstance(beam_width, int) or isinstance(beam_width, bool):
        raise TypeError(f"`beam_width` must be an int, got {type(beam_width).__name__}")
    check_positive(beam_width, "beam_width")
    if not math.isfinite(length_penalty):
        raise ValueError(f"`length_penalty` must be finite, got {length_penalty}")
    normalization = _check_normalization(length_normalization)
    device = _resolve_device(state, device)
    k = beam_width
    n_rows = batch_size * k

    state = reorder_state(state, torch.arange(batch_size, device=device).repeat_interleave(k))
    tokens = torch.full((n_rows,), bos, dtype=torch.long, device=device)
    # Summed log-probabilities of the open beams. Only beam 0 starts live: the others
    # would duplicate it.
    beam_sums = torch.full((batch_size, k), -math.inf, dtype=torch.float64, device=device)
    beam_sums[:, 0] = 0.0
    histories: list[list[list[int]]] = [[[] for _ in range(k)] for _ in range(batch_size)]
    hypotheses = [_Hypotheses(k) for _ in range(batch_size)]
    done = [False] * batch_size

    for length in range(1, max_len + 1):
        log_probs, state = _call_step(step, tokens, state)
        vocab = log_probs.shape[-1]
        candidates = beam_sums[..., None] + log_probs.to(device, torch.float64).view(
            batch_size, k, vocab
        )
        n_top = min(2 * k, k * vocab)
        top_sums, top_flat = candidates.view(batch_size, k * vocab).topk(n_top, dim=-1)
        top_sums_list, top_flat_list = top_sums.tolist(), top_flat.tolist()

        # Built as Python lists (per-element tensor writes are slow), one row per item.
        next_sums = [[-math.inf] * k for _ in range(batch_size)]
        next_tokens = [[pad] * k for _ in range(batch_size)]
        # A row that holds no beam (a done item, a dead slot) keeps its own state row.
        next_source = [list(range(b * k, (b + 1) * k)) for b in range(batch_size)]
        next_histories: list[list[list[int]]] = []
        for b in range(batch_size):
            if done[b]:
                next_histories.append(histories[b])
                continue
            new_histories: list[list[int]] = []
            for rank, (total, flat) in enumerate(
                zip(top_sums_list[b], top_flat_list[b], strict=True)
            ):
                if total == -math.inf or len(new_histories) == k:
                    break
                source, token = divmod(flat, vocab)
                if token == eos:
                    # An EOS below the top k ranks would displace a better open beam.
                    if rank < k:
                        score = total / length_penalty_factor(length, length_penalty, normalization)
                        hypotheses[b].add(score, [*histories[b][source], eos])
                    continue
                slot = len(new_histories)
                next_sums[b][slot] = total
                next_tokens[b][slot] = token
                next_source[b][slot] = b * k + source
                new_histories.append([*histories[b][source], token])
            while len(new_histories) < k:
                new_histories.append([])
            next_histories.append(new_histories)
            best_open = max(next_sums[b])
            if best_open == -math.inf:
                done[b] = True  # nothing left to extend
            elif hypotheses[b].full():
                bound = _best_open_bound(best_open, length, max_len, length_penalty, normalization)
                done[b] = hypotheses[b].worst() >= bound
            if done[b]:
                next_sums[b] = [-math.inf] * k
                next_tokens[b] = [pad] * k
                next_source[b] = list(range(b * k, (b + 1) * k))
        histories = next_histories
        if all(done):
            break
        beam_sums = torch.tensor(next_sums, dtype=torch.float64, device=device)
        tokens = torch.tensor(next_tokens, dtype=torch.long, device=device).view(-1)
        state = reorder_state(state, torch.tensor(next_source, device=device).view(-1))

    if not all(done):
        # Out of length: the open beams end here without EOS.
        for b in range(batch_size):
            if done[b]:
                continue
            for slot in range(k):
                total = float(beam_sums[b, slot])
                if total > -math.inf:
                    score = total / length_penalty_factor(max_len, length_penalty, normalization)
                    hypotheses[b].add(score, histories[b][slot])

    best_scores, best_tokens = [], []
    for b in range(batch_size):
        if hypotheses[b].items:
            score, seq = hypotheses[b].best()
        else:  # every continuation had probability zero
            score, seq = -math.inf, []
        best_scores.append(score)
        best_tokens.append(seq)
    return _pack(best_tokens, pad, device), torch.tensor(best_scores, device=device)


# ---------------------------------------------------------------------------------------
# Logits processing and sampling: the full generate() of every language-model head
# ---------------------------------------------------------------------------------------


def apply_repetition_penalty(
    scores: Tensor, tokens: Tensor, penalty: float, mask: Tensor | None = None
) -> Tensor:
    """CTRL's repetition penalty (Keskar et al. 2019, as Hugging Face applies it).

    Every token id present in a row of ``tokens`` (where ``mask`` is True) has its score
    divided by ``penalty`` if positive, multiplied by it if negative; each id once.

    Args:
        scores: ``(N, vocab)`` logits (or log-probabilities).
        tokens: ``(N, n)`` ids seen so far.
        penalty: > 0; 1 changes nothing, > 1 discourages repeats.
        mask: ``(N, n)`` bool, True = count this token (default all).

    Returns:
        ``(N, vocab)`` new scores.
    """
    if penalty == 1.0:
        return scores
    keep = torch.ones_like(tokens, dtype=torch.bool) if mask is None else mask
    # Count occurrences (scatter_add) so that a masked copy of an id never hides a real one.
    counts = torch.zeros_like(scores, dtype=torch.float32)
    seen = counts.scatter_add(1, tokens, keep.to(torch.float32)) > 0
    penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen, penalised, scores)


def top_k_filter(scores: Tensor, k: int) -> Tensor:
    """Set every score below the ``k``-th largest of its row to ``-inf`` (ties kept).

    ``(N, vocab) -> (N, vocab)``.
    """
    _check_count(k, "k")
    k = min(k, scores.shape[-1])
    threshold = scores.topk(k, dim=-1).values[..., -1:]
    return scores.masked_fill(scores < threshold, -math.inf)


def top_p_filter(scores: Tensor, p: float) -> Tensor:
    """Nucleus filter (Holtzman et al. 2020): keep the most probable tokens whose total
    probability reaches ``p`` (at least one), set the rest to ``-inf``.

    As Hugging Face: tokens sorted by increasing probability are removed while the
    cumulative probability stays ``<= 1 - p``. ``(N, vocab) -> (N, vocab)``.
    """
    if not 0 < p <= 1:
        raise ValueError(f"`p` must be in (0, 1], got {p}")
    sorted_scores, order = scores.sort(dim=-1)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= 1 - p
    remove[..., -1] = False
    return scores.masked_fill(remove.scatter(-1, order, remove), -math.inf)


def _check_count(value: object, name: str, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}")
    return value


@dataclasses.dataclass(frozen=True)
class GenerationOptions:
    """How :func:`generate_tokens` picks tokens (Hugging Face's names and meanings).

    Attributes:
        max_new_tokens: the most tokens generated per row (EOS included).
        min_new_tokens: EOS is forbidden before this many new tokens.
        do_sample: sample instead of taking the argmax (``num_beams`` must be 1).
        temperature: logits are divided by it when sampling (> 0).
        top_k: keep the ``top_k`` most probable tokens when sampling.
        top_p: nucleus sampling, keep the smallest set with probability >= ``top_p``.
        repetition_penalty: CTRL's rule (:func:`apply_repetition_penalty`) on every token
            already in a row (the prompt's real tokens and the generated ones).
        num_beams: beam width; 1 = no beam search.
        length_penalty: beam search's length exponent (:func:`beam_search`).
        length_normalization: ``"gnmt"`` (``((5 + L) / 6) ** length_penalty``) or
            ``"length"`` (``L ** length_penalty``, Hugging Face's rule).
    """

    max_new_tokens: int = 20
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    num_beams: int = 1
    length_penalty: float = 1.0
    length_normalization: str = "gnmt"

    def __post_init__(self) -> None:
        _check_count(self.max_new_tokens, "max_new_tokens")
        _check_count(self.min_new_tokens, "min_new_tokens", minimum=0)
        _check_count(self.num_beams, "num_beams")
        if not self.temperature > 0:
            raise ValueError(f"`temperature` must be > 0, got {self.temperature}")
        if self.top_k is not None:
            _check_count(self.top_k, "top_k")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"`top_p` must be in (0, 1], got {self.top_p}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"`repetition_penalty` must be > 0, got {self.repetition_penalty}")
        if self.do_sample and self.num_beams > 1:
            raise ValueError(f"`do_sample=True` needs `num_beams=1`, got {self.num_beams}")
        if not math.isfinite(self.length_penalty):
            raise ValueError(f"`length_penalty` must be finite, got {self.length_penalty}")
        _check_normalization(self.length_normalization)

    def warp(self, scores: Tensor) -> Tensor:
        """Sampling's temperature, then top-k, then top-p, on ``(N, vocab)`` scores."""
        if self.temperature != 1.0:
            scores = scores / self.temperature
        if self.top_k is not None:
            scores = top_k_filter(scores, self.top_k)
        if self.top_p is not None and self.top_p < 1.0:
            scores = top_p_filter(scores, self.top_p)
        return scores


def generate_tokens(
    step: StepFn,
    state: State,
    start: int,
    *,
    history: Tensor,
    history_mask: Tensor | None = None,
    eos: int | None,
    pad: int,
    options: GenerationOptions,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Generate with greedy search, sampling or beam search from any language-model step.

    Logits are processed as Hugging Face does: repetition penalty, then EOS suppression
    before ``min_new_tokens``, then (sampling only) temperature, top-k and top-p. Beam
    search applies the first two to the log-probabilities, as Hugging Face does.

    Args:
        step: ``(prev_tokens (N,), state) -> (logits (N, vocab), new_state)``; its first
            call receives ``start``, later calls the previous step's tokens.
        state: the model's initial state, batch-first tensors (see :func:`reorder_state`).
        start: the token id fed to the first call of ``step`` (a decoder's start token, or
            any id for a model that starts from its prompt and ignores it).
        history: ``(batch, n)`` int64, the ids the repetition penalty counts at the start
            (the prompt, or a decoder's start token); it sets the batch size and device.
        history_mask: ``(batch, n)`` bool, True = a real token of ``history`` (padding is
            not penalised); default all real.
        eos: stop a row after it; None = every row runs to ``max_new_tokens``.
        pad: written after a row's EOS.
        options: :class:`GenerationOptions`.
        generator: random generator for sampling (reproducible draws).

    Returns:
        ``(batch, n_new)`` int64, EOS included, ``pad`` after it, ``n_new <= max_new_tokens``.
    """
    if not isinstance(options, GenerationOptions):
        raise TypeError(f"`options` must be a GenerationOptions, got {type(options).__name__}")
    _check_token(start, "start")
    if history.dim() != 2:
        raise ValueError(f"`history` must have shape (batch, n), got {tuple(history.shape)}")
    batch, device = history.shape[0], history.device
    mask = torch.ones_like(history, dtype=torch.bool) if history_mask is None else history_mask
    penalise = options.repetition_penalty != 1.0
    # The ids seen so far ride in the search state, so that beam search reorders them with
    # the beams; they are tracked only when the repetition penalty needs them.
    wrapped = {
        "model": state,
        "history": history if penalise else None,
        "mask": mask,
        "generated": 0,
    }
    started = [False]

    def process(scores: Tensor, wrapped: dict[str, Any], generated: int) -> Tensor:
        if penalise:
            scores = apply_repetition_penalty(
                scores, wrapped["history"], options.repetition_penalty, wrapped["mask"]
            )
        if eos is not None and generated < options.min_new_tokens:
            scores = scores.clone()
            scores[:, eos] = -math.inf
        return scores

    def processed_step(prev: Tensor, wrapped: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        if started[0] and penalise:
            wrapped = {
                **wrapped,
                "history": torch.cat([wrapped["history"], prev[:, None]], dim=1),
                "mask": torch.nn.functional.pad(wrapped["mask"], (0, 1), value=True),
            }
        generated = wrapped["generated"]
        logits, model_state = step(prev, wrapped["model"])
        started[0] = True
        if options.num_beams > 1:
            logits = logits.float().log_softmax(dim=-1)
        scores = process(logits, wrapped, generated)
        return scores, {**wrapped, "model": model_state, "generated": generated + 1}

    if options.num_beams > 1:
        new, _ = beam_search(
            processed_step,
            wrapped,
            batch,
            bos=start,
            eos=NO_TOKEN if eos is None else eos,
            max_len=options.max_new_tokens,
            beam_width=options.num_beams,
            length_penalty=options.length_penalty,
            pad=pad,
            device=device,
            length_normalization=options.length_normalization,
        )
        return new

    def choose(scores: Tensor, index: int) -> Tensor:
        if not options.do_sample:
            return scores.argmax(dim=-1)
        probs = options.warp(scores).float().softmax(dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    first = torch.full((batch,), start, dtype=torch.long, device=device)
    return _decode(processed_step, wrapped, first, eos, pad, options.max_new_tokens, choose)


# ---------------------------------------------------------------------------------------
# generate(): the one entry point of every language model
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class GenerationStart:
    """How a model's decoding starts: what :meth:`GenerationMixin.generate` needs from it.

    Attributes:
        step: ``(prev_tokens (N,), state) -> (logits (N, vocab), new_state)``, as
            :func:`generate_tokens` takes it.
        state: the initial state, batch-first tensors ``(batch, ...)``.
        history: ``(batch, n)`` int64, the ids the repetition penalty counts at the start.
        prefix: ``(batch, m)`` int64, returned before the generated tokens (the prompt, or
            a decoder's start token).
        eos: the model's end-of-sequence id (None: none).
        pad: the model's padding id (None: none; EOS is then written after EOS).
        start: the token fed to the first call of ``step``; None for a model that starts
            from its prompt and ignores it.
        history_mask: ``(batch, n)`` bool, True = a real token of ``history`` (default all).
        vocab_size: the model's vocabulary size, for a model whose step feeds the padding
            id back (after a row's EOS) without checking it: generate then checks once
            that the padding id is below it. None: no such check.
    """

    step: StepFn
    state: State
    history: Tensor
    prefix: Tensor
    eos: int | None
    pad: int | None
    start: int | None = None
    history_mask: Tensor | None = None
    vocab_size: int | None = None


def resolve_special_tokens(
    eos_token_id: int | None,
    pad_token_id: int | None,
    default_eos: int | None,
    default_pad: int | None,
) -> tuple[int | None, int]:
    """The ``(eos, pad)`` of a generation, as Hugging Face resolves them.

    ``eos_token_id`` and ``pad_token_id`` (the caller's) win over the model's defaults;
    without any padding id, EOS is written after EOS. ``eos`` None = no stopping.
    """
    eos = default_eos if eos_token_id is None else eos_token_id
    pad = default_pad if pad_token_id is None else pad_token_id
    pad = eos if pad is None else pad
    if pad is None:
        raise ValueError("`pad_token_id` is required when the model has no eos/pad token id")
    if eos is not None:
        _check_token(eos, "eos_token_id")
    return eos, _check_token(pad, "pad_token_id")


def check_generation_length(prompt_len: int, max_new_tokens: int, limit: int, what: str) -> None:
    """A model with ``limit`` positions (``what`` names the limit) can hold a prompt of
    ``prompt_len`` tokens and ``max_new_tokens`` more; a ``ValueError`` if not."""
    if prompt_len + max_new_tokens > limit:
        raise ValueError(
            f"`max_new_tokens` ({max_new_tokens}) + prompt length ({prompt_len}) must be <= "
            f"{what} ({limit})"
        )


def check_unpadded_prompt(input_ids: Tensor, attention_mask: Tensor | None, model: str) -> None:
    """For a model whose Hugging Face ``generate`` ignores ``attention_mask``: the prompts
    ``input_ids`` ``(batch, n)`` must be unpadded (the mask, if given, all real)."""
    check_rank(input_ids, 2, "input_ids", "(batch, n)")
    mask = hf_attention_mask(attention_mask, input_ids.shape)
    if mask is not None and not bool(mask.all()):
        raise ValueError(
            f"`attention_mask`: {model} generate takes unpadded prompts only (as Hugging "
            f"Face, whose {model} generate ignores the mask); got {int((~mask).sum())} "
            "padded positions: generate each prompt length separately"
        )


class GenerationMixin(abc.ABC):
    """Hugging Face-style ``generate`` for a language model that defines
    :meth:`_begin_generation` (its initial state and step function)."""

    @abc.abstractmethod
    def _begin_generation(self, *args: Any, **kwargs: Any) -> GenerationStart:
        """``(input_ids (batch, n), attention_mask (batch, n) or None, options, **the
        model's own keywords) -> GenerationStart``: check the prompt and say how decoding
        starts."""

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        max_new_tokens: int = 20,
        min_new_tokens: int = 0,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        repetition_penalty: float = 1.0,
        num_beams: int = 1,
        length_penalty: float = 1.0,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        generator: torch.Generator | None = None,
        length_normalization: str = "gnmt",
        **model_inputs: Any,
    ) -> Tensor:
        """Greedy search (default), sampling or beam search, with Hugging Face's options.

        Logits are processed as in Hugging Face: repetition penalty, then EOS suppression
        before ``min_new_tokens``, then (sampling) temperature, top-k, top-p; beam search
        applies the first two to the log-probabilities (:func:`generate_tokens`).

        Args:
            input_ids: ``(batch, n)`` the prompts (an encoder-decoder: the sources).
            attention_mask: ``(batch, n)`` 1/True = real token (bool or 0/1); what padding
                a model accepts is in its ``_begin_generation``.
            max_new_tokens: the most tokens generated per row.
            min_new_tokens: EOS is forbidden before this many tokens.
            do_sample: sample instead of taking the argmax (``num_beams`` must be 1).
            temperature: logits are divided by it when sampling (> 0).
            top_k: keep the ``top_k`` most probable tokens when sampling.
            top_p: nucleus sampling, keep the smallest set with probability >= ``top_p``.
            repetition_penalty: CTRL's rule (Keskar et al. 2019) on every token already in
                a row: a positive logit is divided by it, a negative one multiplied.
            num_beams: beam width; 1 = no beam search.
            length_penalty: beam search's length exponent (:func:`beam_search`); 0 ranks by
                the summed log-probability.
            eos_token_id: stop a row after it; default the model's (None: no stopping
                before ``max_new_tokens``).
            pad_token_id: written after EOS; default the model's padding id, else EOS.
            generator: random generator for sampling (reproducible draws).
            length_normalization: ``"gnmt"`` (default) or ``"length"`` (Hugging Face's
                ``L ** length_penalty``), see :func:`length_penalty_factor`.
            **model_inputs: the model's own inputs (e.g. XLM's ``langs`` and ``lang_id``,
                the encoder-decoder's ``use_cache``), see its ``_begin_generation``.

        Returns:
            ``(batch, m + n_new)`` int64: the model's prefix (the prompt; an
            encoder-decoder's start token), then the generated tokens, the padding id after
            a row's EOS; ``n_new <= max_new_tokens``.
        """
        options = GenerationOptions(
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            num_beams=num_beams,
            length_penalty=length_penalty,
            length_normalization=length_normalization,
        )
        begin = self._begin_generation(input_ids, attention_mask, options, **model_inputs)
        eos, pad = resolve_special_tokens(eos_token_id, pad_token_id, begin.eos, begin.pad)
        if begin.vocab_size is not None and eos is not None and pad >= begin.vocab_size:
            raise ValueError(
                f"`pad_token_id` must be < the vocabulary size ({begin.vocab_size}): a row "
                f"that ends early is fed it, got {pad}"
            )
        new = generate_tokens(
            begin.step,
            begin.state,
            pad if begin.start is None else begin.start,
            history=begin.history,
            history_mask=begin.history_mask,
            eos=eos,
            pad=pad,
            options=options,
            generator=generator,
        )
        return torch.cat([begin.prefix, new], dim=1)


__all__ = [
    "LENGTH_NORMALIZATIONS",
    "GenerationMixin",
    "GenerationOptions",
    "GenerationStart",
    "apply_repetition_penalty",
    "beam_search",
    "check_generation_length",
    "check_unpadded_prompt",
    "generate_tokens",
    "greedy_search",
    "length_penalty_factor",
    "reorder_state",
    "resolve_special_tokens",
    "top_k_filter",
    "top_p_filter",
]
