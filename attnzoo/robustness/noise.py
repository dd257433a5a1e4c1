"""Synthetic label noise: noise matrices, noisy labels, and label flipping for training.

Every noise model here is a **noise matrix** ``T`` of shape ``(K, K)`` with
``T[i, j] = P(noisy label = i | true label = j)``: each *column* sums to one. This is
cleanlab's ``noise_matrix`` convention; the row-stochastic transition matrix of the
loss-correction literature (``P(noisy = j | true = i)`` in row ``i``) is its transpose.

* :func:`symmetric_noise_matrix` (diagonal ``1 - eps``, off-diagonal ``eps / (K - 1)``),
  :func:`pair_noise_matrix` (class ``j`` flips to ``class_map[j]``),
  :func:`per_class_noise_matrix` (a rate per true class, spread evenly), and
  :func:`noise_matrix_from_trace` (a random matrix with a given trace, as cleanlab's
  generator draws them) build matrices;
* :func:`apply_noise_matrix` draws noisy labels from any of them, reproducibly from a
  seed, and reports which labels flipped; :func:`symmetric_noise`, :func:`pair_noise` and
  :func:`per_class_noise` are the one-call forms;
* :func:`flip_labels` flips exactly a given number of labels, and :class:`LabelFlipping`
  flips a fraction afresh at every epoch (label flipping as a training technique).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..attention.validation import check_int, check_tensor
from ._validation import as_generator, check_labels, check_rate, infer_num_classes

# Column sums of a noise matrix may be off by this much (float32 input, rounding).
_SUM_TOLERANCE = 1e-5


@dataclass
class NoisyLabels:
    """Noisy labels and what changed.

    Attributes:
        labels: the noisy labels, shape ``(n,)``, same dtype and device as the input.
        flipped: boolean ``(n,)``, True where the noisy label differs from the input label.
        noise_matrix: the ``(K, K)`` column-stochastic matrix the labels were drawn from
            (float64, CPU), or None for noise not defined by a matrix.
    """

    labels: Tensor
    flipped: Tensor
    noise_matrix: Tensor | None = None

    @property
    def num_flipped(self) -> int:
        """How many labels changed."""
        return int(self.flipped.sum())


# ---------------------------------------------------------------------------------------
# Noise matrices
# ---------------------------------------------------------------------------------------


def _rates_per_class(
    rates: float | Sequence[float] | Tensor, num_classes: int, name: str = "rate"
) -> Tensor:
    """``rates`` as a float64 ``(K,)`` tensor with every entry in ``[0, 1)``."""
    if isinstance(rates, (int, float)) and not isinstance(rates, bool):
        return torch.full((num_classes,), check_rate(rates, name), dtype=torch.float64)
    values = torch.as_tensor(rates, dtype=torch.float64).flatten()
    if values.numel() != num_classes:
        raise ValueError(
            f"`{name}` must be a float or hold one rate per class ({num_classes}), "
            f"got {values.numel()} values"
        )
    for value in values.tolist():
        check_rate(value, name)
    return values


def symmetric_noise_matrix(num_classes: int, rate: float) -> Tensor:
    """Uniform noise: a label flips with probability ``rate`` to any other class alike.

    Args:
        num_classes: ``K >= 2``.
        rate: ``eps`` in ``[0, 1)``.

    Returns:
        float64 ``(K, K)``: ``1 - eps`` on the diagonal, ``eps / (K - 1)`` elsewhere.
    """
    check_int(num_classes, "num_classes", minimum=2)
    return per_class_noise_matrix([check_rate(rate, "rate")] * num_classes)


def per_class_noise_matrix(rates: Sequence[float] | Tensor) -> Tensor:
    """Class-dependent noise rates, each spread evenly over the other classes.

    Args:
        rates: ``(K,)``, ``rates[j]`` = probability that a label of true class ``j`` flips.

    Returns:
        float64 ``(K, K)`` with column ``j`` equal to ``1 - rates[j]`` on the diagonal and
        ``rates[j] / (K - 1)`` elsewhere.
    """
    values = torch.as_tensor(rates, dtype=torch.float64).flatten()
    if values.numel() < 2:
        raise ValueError(f"`rates` must hold one rate per class (>= 2 classes), got {values}")
    values = _rates_per_class(values, values.numel(), "rates")
    k = values.numel()
    matrix = (values / (k - 1)).expand(k, k).clone()
    matrix.diagonal().copy_(1 - values)
    return matrix


def pair_noise_matrix(
    num_classes: int,
    rate: float | Sequence[float] | Tensor,
    class_map: Mapping[int, int] | Sequence[int] | None = None,
) -> Tensor:
    """Pair (asymmetric) noise: true class ``j`` flips to ``class_map[j]`` with its rate.

    Args:
        num_classes: ``K >= 2``.
        rate: a rate in ``[0, 1)``, or one per class ``(K,)``.
        class_map: the class each class flips to, as a mapping or a length-``K`` sequence;
            classes missing from a mapping do not flip. Default ``j -> (j + 1) % K``
            (the "pair flipping" of Han et al. 2018, co-teaching).

    Returns:
        float64 ``(K, K)``: ``1 - rate[j]`` at ``(j, j)``, ``rate[j]`` at ``(class_map[j], j)``.
    """
    check_int(num_classes, "num_classes", minimum=2)
    rates = _rates_per_class(rate, num_classes)
    if class_map is None:
        targets = {j: (j + 1) % num_classes for j in range(num_classes)}
    elif isinstance(class_map, Mapping):
        targets = dict(class_map)
    else:
        if len(class_map) != num_classes:
            raise ValueError(
                f"`class_map` as a sequence must have one target per class ({num_classes}), "
                f"got {len(class_map)}"
            )
        targets = dict(enumerate(class_map))
    matrix = torch.eye(num_classes, dtype=torch.float64)
    for source, target in targets.items():
        for value, what in ((source, "a source class"), (target, "a target class")):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"`class_map` must map ints to ints, got {what} {value!r}")
            if not 0 <= value < num_classes:
                raise ValueError(
                    f"`class_map` classes must be in [0, {num_classes}), got {what} {value}"
                )
        if source == target:
            raise ValueError(f"`class_map` maps class {source} to itself; a flip needs another")
        matrix[source, source] = 1 - rates[source]
        matrix[target, source] = rates[source]
    return matrix


def check_noise_matrix(
    noise_matrix: object, num_classes: int | None = None, name: str = "noise_matrix"
) -> Tensor:
    """Return ``noise_matrix`` as float64 if it is a ``(K, K)`` column-stochastic matrix.

    Raises:
        TypeError: not a floating tensor.
        ValueError: not square, the wrong ``K``, a negative entry, or a column not summing
            to 1 (the message says when the *rows* sum to 1: pass the transpose).
    """
    check_tensor(noise_matrix, name)
    assert isinstance(noise_matrix, Tensor)
    if not noise_matrix.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor, got {noise_matrix.dtype}")
    if noise_matrix.dim() != 2 or noise_matrix.shape[0] != noise_matrix.shape[1]:
        raise ValueError(
            f"`{name}` must be a square (K, K) matrix, got {tuple(noise_matrix.shape)}"
        )
    k = noise_matrix.shape[0]
    if k < 2 or (num_classes is not None and k != num_classes):
        expected = num_classes if num_classes is not None else ">= 2"
        raise ValueError(f"`{name}` must be ({expected}, {expected}), got ({k}, {k})")
    matrix = noise_matrix.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(matrix).all()) or bool((matrix < 0).any()):
        raise ValueError(f"`{name}` must hold finite probabilities >= 0")
    columns = matrix.sum(0)
    if bool(((columns - 1).abs() > _SUM_TOLERANCE).any()):
        rows_ok = bool(((matrix.sum(1) - 1).abs() <= _SUM_TOLERANCE).all())
        hint = "; its rows sum to 1: pass its transpose" if rows_ok else ""
        raise ValueError(
            f"`{name}` columns must sum to 1 (T[i, j] = P(noisy=i | true=j)), got column "
            f"sums {[round(v, 4) for v in columns.tolist()]}{hint}"
        )
    return matrix


def noise_matrix_is_valid(noise_matrix: Tensor, prior: Sequence[float] | Tensor) -> bool:
    """Whether learning with this noise is possible (Northcutt et al. 2021, cleanlab).

    A matrix is *valid* for the class prior ``p(y)`` when, for every class ``k``,
    ``p(noisy = k) p(y = k) < p(noisy = k, y = k)``: the noisy label still carries
    information about the true one.

    Args:
        noise_matrix: ``(K, K)``, columns summing to 1.
        prior: ``(K,)`` true-class prior, summing to 1.
    """
    matrix = check_noise_matrix(noise_matrix)
    p_true = _check_prior(prior, matrix.shape[0])
    joint = matrix * p_true  # joint[i, j] = P(noisy = i, true = j)
    p_noisy = joint.sum(1)
    return bool((p_noisy * p_true < joint.diagonal()).all())


def _check_prior(prior: Sequence[float] | Tensor, num_classes: int) -> Tensor:
    values = torch.as_tensor(prior, dtype=torch.float64).flatten()
    if values.numel() != num_classes:
        raise ValueError(f"`prior` must have {num_classes} entries, got {values.numel()}")
    if bool((values < 0).any()) or abs(float(values.sum()) - 1) > _SUM_TOLERANCE:
        raise ValueError(f"`prior` must be probabilities summing to 1, got {values.tolist()}")
    return values


def _probabilities_summing_to(
    n: int, total: float, low: float, high: float, generator: torch.Generator
) -> Tensor:
    """``n`` random values in ``[low, high]`` summing to ``total`` (float64).

    Uniform on the simplex above ``low``, then the excess over ``high`` is handed to the
    entries below it in proportion to their headroom, which never pushes one past ``high``.
    """
    weights = torch.empty(n, dtype=torch.float64).exponential_(generator=generator)
    values = low + (total - n * low) * weights / weights.sum()
    excess = (values - high).clamp_min(0)
    if float(excess.sum()) > 0:
        values = values.clamp_max(high)
        headroom = high - values
        values = values + float(excess.sum()) * headroom / headroom.sum()
    return values


def noise_matrix_from_trace(
    num_classes: int,
    trace: float,
    *,
    prior: Sequence[float] | Tensor | None = None,
    valid: bool = True,
    frac_zero_noise_rates: float = 0.0,
    min_trace_prob: float = 1e-5,
    max_trace_prob: float = 1.0,
    seed: int = 0,
    max_iter: int = 10_000,
) -> Tensor:
    """A random column-stochastic noise matrix whose diagonal sums to ``trace``.

    The generator of cleanlab's benchmarks (``generate_noise_matrix_from_trace``): draw the
    diagonal (the probabilities of keeping each class) summing to ``trace``, spread each
    column's remaining mass at random over the other classes (leaving a fraction of those
    noise rates at exactly zero if asked), and redraw until the matrix is learnable
    (:func:`noise_matrix_is_valid`) when ``valid``.

    Args:
        num_classes: ``K >= 2``.
        trace: in ``(0, K]``; ``K - trace`` is ``K`` times the mean noise rate. A valid
            matrix needs ``trace > 1``.
        prior: ``(K,)`` true-class prior; needed when ``valid`` and ``K > 2`` (every
            2 x 2 matrix with trace > 1 is valid whatever the prior).
        valid: redraw until the matrix is valid for ``prior``.
        frac_zero_noise_rates: fraction of the ``K (K - 1)`` off-diagonal entries set to 0,
            as far as possible: a column with noise keeps at least one non-zero rate, and a
            column whose diagonal is 1 has only zeros.
        min_trace_prob, max_trace_prob: bounds on each diagonal entry.
        seed: the draw is a function of the seed.
        max_iter: draws before giving up.

    Returns:
        float64 ``(K, K)``, columns summing to 1, ``trace(T) == trace``.

    Raises:
        ValueError: impossible arguments, or no valid matrix in ``max_iter`` draws.
    """
    check_int(num_classes, "num_classes", minimum=2)
    check_int(max_iter, "max_iter", minimum=1)
    k = num_classes
    if not 0 < trace <= k:
        raise ValueError(f"`trace` must be in (0, {k}] for {k} classes, got {trace}")
    if valid and trace <= 1:
        raise ValueError(f"`trace` must be > 1 for a valid (learnable) noise matrix, got {trace}")
    if not 0 <= min_trace_prob <= max_trace_prob <= 1:
        raise ValueError(
            "need 0 <= `min_trace_prob` <= `max_trace_prob` <= 1, got "
            f"{min_trace_prob} and {max_trace_prob}"
        )
    if not k * min_trace_prob <= trace <= k * max_trace_prob:
        raise ValueError(
            f"`trace` {trace} cannot be reached with {k} diagonal entries in "
            f"[{min_trace_prob}, {max_trace_prob}]"
        )
    if not 0 <= frac_zero_noise_rates <= 1:
        raise ValueError(f"`frac_zero_noise_rates` must be in [0, 1], got {frac_zero_noise_rates}")
    p_true = None
    if valid and k > 2:
        if prior is None:
            raise ValueError("`prior` (the true-class prior) is needed when valid=True and K > 2")
        p_true = _check_prior(prior, k)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(max_iter):
        matrix = _draw_noise_matrix(
            k, trace, frac_zero_noise_rates, min_trace_prob, max_trace_prob, generator
        )
        if p_true is None or noise_matrix_is_valid(matrix, p_true):
            return matrix
    raise ValueError(
        f"no valid noise matrix with trace {trace} found in {max_iter} draws; lower "
        "`frac_zero_noise_rates`, raise `trace`, or pass valid=False"
    )


def _draw_noise_matrix(
    k: int, trace: float, frac_zero: float, low: float, high: float, generator: torch.Generator
) -> Tensor:
    diagonal = _probabilities_summing_to(k, trace, low, high, generator)
    noisy_columns = [j for j in range(k) if float(diagonal[j]) < 1]
    # Each noisy column keeps at least one non-zero noise rate to carry its mass.
    slots = [(i, j) for j in noisy_columns for i in range(k) if i != j]
    wanted_zeros = int(k * (k - 1) * frac_zero) - (k - len(noisy_columns)) * (k - 1)
    zeros_per_column = dict.fromkeys(noisy_columns, 0)
    zero_slots: set[tuple[int, int]] = set()
    for index in torch.randperm(len(slots), generator=generator).tolist():
        if len(zero_slots) >= wanted_zeros:
            break
        i, j = slots[index]
        if zeros_per_column[j] < k - 2:
            zeros_per_column[j] += 1
            zero_slots.add((i, j))
    matrix = torch.diag(diagonal)
    for j in noisy_columns:
        rows = [i for i in range(k) if i != j and (i, j) not in zero_slots]
        mass = float(1 - diagonal[j])
        matrix[rows, j] = _probabilities_summing_to(len(rows), mass, 0.0, 1.0, generator)
    return matrix


# ---------------------------------------------------------------------------------------
# Drawing noisy labels
# ---------------------------------------------------------------------------------------


def _counts_from_probabilities(column: Tensor, total: int) -> Tensor:
    """Integer counts summing to ``total``, proportional to ``column`` (largest remainders)."""
    raw = column * total
    counts = raw.floor().long()
    short = total - int(counts.sum())
    if short > 0:
        counts[torch.argsort(raw - counts, descending=True)[:short]] += 1
    return counts


def apply_noise_matrix(
    labels: Tensor,
    noise_matrix: Tensor,
    *,
    seed: int | torch.Generator | None = None,
    exact: bool = False,
) -> NoisyLabels:
    """Draw noisy labels from the true ``labels`` through ``noise_matrix``.

    Args:
        labels: true class ids, ``(n,)`` integer, in ``[0, K)``.
        noise_matrix: ``(K, K)``, ``T[i, j] = P(noisy = i | true = j)``, columns sum to 1.
        seed: an int or a ``torch.Generator`` for a reproducible draw (sampling runs on
            the CPU, so the same seed gives the same labels on every device).
        exact: False draws every label independently from its column; True flips exactly
            ``round(n_j T[i, j])`` of the ``n_j`` labels of class ``j`` to class ``i``
            (counts rounded by largest remainder), so the realised noise equals the
            matrix as closely as the counts allow.

    Returns:
        :class:`NoisyLabels` with the noisy labels, the flipped mask and the matrix.
    """
    matrix = check_noise_matrix(noise_matrix)
    k = matrix.shape[0]
    check_labels(labels, "labels", num_classes=k)
    generator = as_generator(seed)
    true = labels.detach().to("cpu", torch.long)
    if exact:
        noisy = true.clone()
        for j in range(k):
            members = (true == j).nonzero().flatten()
            if members.numel() == 0:
                continue
            members = members[torch.randperm(members.numel(), generator=generator)]
            counts = _counts_from_probabilities(matrix[:, j], members.numel())
            noisy[members] = torch.repeat_interleave(torch.arange(k), counts)
    else:
        noisy = torch.multinomial(matrix.T[true], 1, generator=generator).flatten()
    out = noisy.to(labels.device, labels.dtype)
    return NoisyLabels(out, out != labels, matrix)


def symmetric_noise(
    labels: Tensor,
    rate: float,
    num_classes: int | None = None,
    *,
    seed: int | torch.Generator | None = None,
    exact: bool = False,
) -> NoisyLabels:
    """``labels`` through :func:`symmetric_noise_matrix` (``num_classes`` default: max + 1)."""
    k = infer_num_classes(labels, num_classes)
    return apply_noise_matrix(labels, symmetric_noise_matrix(k, rate), seed=seed, exact=exact)


def pair_noise(
    labels: Tensor,
    rate: float | Sequence[float] | Tensor,
    class_map: Mapping[int, int] | Sequence[int] | None = None,
    num_classes: int | None = None,
    *,
    seed: int | torch.Generator | None = None,
    exact: bool = False,
) -> NoisyLabels:
    """``labels`` through :func:`pair_noise_matrix` (``num_classes`` default: max + 1)."""
    k = infer_num_classes(labels, num_classes)
    matrix = pair_noise_matrix(k, rate, class_map)
    return apply_noise_matrix(labels, matrix, seed=seed, exact=exact)


def per_class_noise(
    labels: Tensor,
    rates: Sequence[float] | Tensor,
    *,
    seed: int | torch.Generator | None = None,
    exact: bool = False,
) -> NoisyLabels:
    """``labels`` through :func:`per_class_noise_matrix` (one rate per class)."""
    matrix = per_class_noise_matrix(rates)
    return apply_noise_matrix(labels, matrix, seed=seed, exact=exact)


def flip_labels(
    labels: Tensor,
    count: int,
    num_classes: int | None = None,
    *,
    seed: int | torch.Generator | None = None,
) -> NoisyLabels:
    """Flip exactly ``count`` labels, chosen uniformly, each to a uniformly random other class.

    Args:
        labels: ``(n,)`` integer class ids.
        count: how many labels to flip, in ``[0, n]``.
        num_classes: ``K`` (default ``max(labels) + 1``, at least 2).
        seed: an int or ``torch.Generator`` for a reproducible draw.

    Returns:
        :class:`NoisyLabels` (``noise_matrix`` is None) with exactly ``count`` flips.
    """
    k = infer_num_classes(labels, num_classes)
    n = labels.shape[0]
    check_int(count, "count", minimum=0)
    if count > n:
        raise ValueError(f"`count` must be at most the number of labels {n}, got {count}")
    generator = as_generator(seed)
    true = labels.detach().to("cpu", torch.long)
    chosen = torch.randperm(n, generator=generator)[:count]
    # An offset in [1, K) added modulo K lands on each other class with equal probability.
    offsets = torch.randint(1, k, (count,), generator=generator)
    noisy = true.clone()
    noisy[chosen] = (true[chosen] + offsets) % k
    out = noisy.to(labels.device, labels.dtype)
    return NoisyLabels(out, out != labels)


class LabelFlipping:
    """Label flipping as a training technique: a fresh random fraction flipped every epoch.

    Each epoch sees the true labels with exactly ``round(rate * n)`` of them flipped to a
    random other class (:func:`flip_labels`); which ones changes from epoch to epoch, so
    the network cannot memorise the flips, and the labels of an epoch are a function of
    ``(seed, epoch)`` alone (any epoch can be replayed).

    Example::

        flipping = LabelFlipping(y_train, rate=0.1, seed=0)
        for epoch in range(epochs):
            y_epoch = flipping(epoch)        # (n,) labels for this epoch

    Args:
        labels: ``(n,)`` true class ids.
        rate: fraction flipped per epoch, in ``[0, 1)``.
        num_classes: ``K`` (default ``max(labels) + 1``).
        seed: base seed.
    """

    def __init__(
        self, labels: Tensor, rate: float, num_classes: int | None = None, seed: int = 0
    ) -> None:
        self.num_classes = infer_num_classes(labels, num_classes)
        self.rate = check_rate(rate, "rate")
        self.seed = check_int(seed, "seed", minimum=0)
        self.labels = labels
        self.count = round(self.rate * labels.shape[0])

    def flips(self, epoch: int) -> NoisyLabels:
        """The :class:`NoisyLabels` of ``epoch`` (labels and which were flipped)."""
        check_int(epoch, "epoch", minimum=0)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return flip_labels(self.labels, self.count, self.num_classes, seed=generator)

    def __call__(self, epoch: int) -> Tensor:
        """The ``(n,)`` labels to train on during ``epoch``."""
        return self.flips(epoch).labels


__all__ = [
    "LabelFlipping",
    "NoisyLabels",
    "apply_noise_matrix",
    "check_noise_matrix",
    "flip_labels",
    "noise_matrix_from_trace",
    "noise_matrix_is_valid",
    "pair_noise",
    "pair_noise_matrix",
    "per_class_noise",
    "per_class_noise_matrix",
    "symmetric_noise",
    "symmetric_noise_matrix",
]
