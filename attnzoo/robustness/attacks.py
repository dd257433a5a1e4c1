"""Label-flip poisoning attacks under a budget of flipped training labels.

* :func:`random_flip_attack`: ``budget`` labels chosen uniformly at random (the baseline).
* :func:`alfa_attack`: ALFA (Xiao, Xiao & Eckert 2012, "Adversarial Label Flips Attack on
  Support Vector Machines") against an SVM. The training set is doubled with every label
  flipped; the attacker alternates between (a) a linear program choosing, for each point,
  its original or its flipped copy (exactly ``budget`` flips) so as to minimise
  ``sum_i q_i (eps_i - xi_i)``, where ``xi_i`` is the hinge loss of the SVM trained on the
  clean labels and ``eps_i`` that of the SVM trained on the tainted labels, and (b)
  retraining the tainted SVM on the chosen labels, until the choice stops changing. With
  one unit of cost per flip the linear program is solved exactly by ranking the points
  by the gain of flipping them.
* :func:`greedy_flip_attack`: the bilevel "optimal" label-flip attack of Paudice,
  Muñoz-González & Lupu 2018 ("Label Sanitization against Label Flipping Poisoning
  Attacks"), approximated greedily: at each step every remaining candidate flip is tried
  (all candidate SVMs solved at once, warm-started), and the one that most increases the
  hinge loss of the retrained SVM on the attacker's validation set is kept.

The attacks take the victim as an unfitted :class:`~attnzoo.robustness.LinearSVM` or
:class:`~attnzoo.robustness.KernelSVM` whose settings (``C``, kernel, tolerance) they use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..attention.validation import check_int
from ._validation import (
    check_binary_labels,
    check_budget,
    check_features,
    check_labels,
    check_same_length,
)
from .noise import flip_labels
from .svm import _BinarySVM


@dataclass
class FlipAttackResult:
    """Poisoned labels and the flips that made them.

    Attributes:
        labels: ``(n,)`` poisoned labels (input dtype and device).
        flipped: ``(n,)`` boolean, True where the label was flipped.
        order: ``(budget,)`` indices of the flipped points in the attack's order of
            preference (greedy: the order chosen, so ``order[:b]`` is the greedy attack
            with budget ``b``; ALFA: by decreasing gain; random: the draw order).
        original: ``(n,)`` the clean labels.
        iterations: alternations (ALFA) or greedy steps run.
    """

    labels: Tensor
    flipped: Tensor
    order: Tensor
    original: Tensor
    iterations: int = 0

    def prefix(self, budget: int) -> Tensor:
        """The labels ``(n,)`` after only the first ``budget`` flips of :attr:`order`."""
        check_budget(budget, self.order.numel(), "budget")
        out = self.original.clone()
        first = self.order[:budget]
        out[first] = self.labels[first]
        return out


def _check_attack_inputs(svm: object, x: Tensor, labels: Tensor, budget: int) -> None:
    if not isinstance(svm, _BinarySVM):
        raise TypeError(f"`svm` must be a LinearSVM or KernelSVM, got {type(svm).__name__}")
    check_features(x, None, "x")
    check_binary_labels(labels, "labels")
    check_same_length(labels, x.shape[0], "labels", "x")
    check_budget(budget, x.shape[0])


def _hinge(margins: Tensor) -> Tensor:
    return (1 - margins).clamp_min(0)


def random_flip_attack(
    labels: Tensor,
    budget: int,
    num_classes: int | None = None,
    *,
    seed: int | torch.Generator | None = None,
) -> FlipAttackResult:
    """Flip ``budget`` labels chosen uniformly at random (each to a random other class).

    Args:
        labels: ``(n,)`` class ids.
        budget: number of flips, in ``[0, n]``.
        num_classes: ``K`` (default ``max(labels) + 1``).
        seed: an int or ``torch.Generator``.
    """
    check_labels(labels, "labels")
    check_budget(budget, labels.shape[0])
    noisy = flip_labels(labels, budget, num_classes, seed=seed)
    order = noisy.flipped.nonzero().flatten()
    order = order[torch.randperm(order.numel(), generator=_cpu_generator(seed)).to(order.device)]
    return FlipAttackResult(noisy.labels, noisy.flipped, order, labels)


def _cpu_generator(seed: int | torch.Generator | None) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    return torch.Generator().manual_seed(0 if seed is None else seed)


def alfa_attack(
    svm: _BinarySVM,
    x: Tensor,
    labels: Tensor,
    budget: int,
    *,
    max_iter: int = 50,
    restarts: int = 9,
    seed: int = 0,
) -> FlipAttackResult:
    """ALFA: adversarial label flips against an SVM (Xiao, Xiao & Eckert 2012).

    The alternation only finds a local optimum, and which one depends on the tainted
    losses ``eps`` it starts from. The first run starts from ``eps = 0`` (the paper);
    each restart starts from ``eps`` drawn uniformly in ``[0, 1)`` (as in the authors'
    ALFASVMLib). The attacker keeps the run whose tainted SVM has the largest mean hinge
    loss on the clean training labels, a quantity it can compute.

    Args:
        svm: the victim's settings (an unfitted or fitted ``LinearSVM``/``KernelSVM``;
            it is not modified).
        x: ``(n, d)`` training points.
        labels: ``(n,)`` clean class ids in ``{0, 1}``.
        budget: number of labels to flip, in ``[0, n]``.
        max_iter: alternations of the flip choice and the SVM fit, per run.
        restarts: extra runs from random starting losses (0: the paper's single run).
        seed: seeds the restarts' starting losses.

    Returns:
        :class:`FlipAttackResult` of the kept run; ``order`` ranks its flips by gain.
    """
    _check_attack_inputs(svm, x, labels, budget)
    check_int(max_iter, "max_iter")
    check_int(restarts, "restarts", minimum=0)
    signs = labels.to(x.device, torch.float64) * 2 - 1
    clean = svm.dual_fit(x, signs)
    clean_scores = svm.dual_decision(x, clean.alpha.double() * signs, x)
    # xi: the clean SVM's loss on each point with its own and with its flipped label.
    xi = (_hinge(signs * clean_scores), _hinge(-signs * clean_scores))
    # Run 0 starts from eps = 0; the restarts from uniform draws. All runs alternate in
    # lockstep, their SVMs solved as one batch.
    generator = torch.Generator().manual_seed(seed)
    eps_keep = torch.rand(restarts + 1, x.shape[0], generator=generator, dtype=torch.float64)
    eps_flip = torch.rand(restarts + 1, x.shape[0], generator=generator, dtype=torch.float64)
    eps_keep[0], eps_flip[0] = 0.0, 0.0
    clean_loss, flipped, gain, iterations = _alfa_runs(
        svm,
        x,
        signs,
        xi,
        (eps_keep.to(x.device), eps_flip.to(x.device)),
        clean.alpha,
        budget,
        max_iter,
    )
    best = int(clean_loss.argmax())
    flipped, gain = flipped[best], gain[best]
    order = torch.argsort(torch.where(flipped, gain, -torch.inf), descending=True)[:budget]
    poisoned = torch.where(flipped, 1 - labels.to(x.device), labels.to(x.device))
    return FlipAttackResult(
        poisoned.to(labels.device),
        flipped.to(labels.device),
        order.to(labels.device),
        labels,
        int(iterations[best]),
    )


def _alfa_runs(
    svm: _BinarySVM,
    x: Tensor,
    signs: Tensor,
    xi: tuple[Tensor, Tensor],
    eps: tuple[Tensor, Tensor],
    clean_alpha: Tensor,
    budget: int,
    max_iter: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """ALFA alternations from a batch of starting losses ``eps`` (keep, flip), ``(R, n)`` each.

    Returns:
        per run ``(R,)`` the tainted SVM's mean hinge loss on the clean labels, ``(R, n)``
        the flipped mask, ``(R, n)`` the gains of the last choice, ``(R,)`` the iterations.
    """
    (xi_keep, xi_flip), (eps_keep, eps_flip) = xi, eps
    runs, n = eps_keep.shape
    flipped = torch.zeros(runs, n, dtype=torch.bool, device=x.device)
    alpha = clean_alpha.double().expand(runs, n).clone()
    gain = torch.zeros(runs, n, dtype=torch.float64, device=x.device)
    clean_loss = torch.zeros(runs, dtype=torch.float64, device=x.device)
    iterations = torch.zeros(runs, dtype=torch.long)
    active = torch.ones(runs, dtype=torch.bool, device=x.device)
    for iteration in range(1, max_iter + 1):
        # LP step: with q_i + q_{n+i} = 1 and exactly `budget` flips, the optimum flips the
        # points where choosing the flipped copy lowers sum q (eps - xi) the most.
        new_gain = (eps_keep - xi_keep) - (eps_flip - xi_flip)
        chosen = torch.zeros_like(flipped)
        chosen.scatter_(1, torch.topk(new_gain, budget, dim=1).indices, True)
        if iteration > 1:
            active &= ~(chosen == flipped).all(1)  # a run whose choice repeats has converged
        if not bool(active.any()):
            break
        rows = active.nonzero().flatten()
        gain[rows], flipped[rows] = new_gain[rows], chosen[rows]
        iterations[rows.cpu()] = iteration
        tainted = torch.where(flipped[rows], -signs, signs)
        # QP step: the SVMs on the tainted labels, warm-started from the previous fits.
        start = torch.where(flipped[rows], 0.0, alpha[rows])
        alpha[rows] = svm.dual_fit(x, tainted, alpha0=start).alpha.double()
        scores = svm.dual_decision(x, alpha[rows] * tainted, x)
        eps_keep, eps_flip = eps_keep.clone(), eps_flip.clone()
        eps_keep[rows], eps_flip[rows] = _hinge(signs * scores), _hinge(-signs * scores)
        clean_loss[rows] = eps_keep[rows].mean(1)
    return clean_loss, flipped, gain, iterations


def greedy_flip_attack(
    svm: _BinarySVM,
    x: Tensor,
    labels: Tensor,
    budget: int,
    *,
    x_val: Tensor | None = None,
    labels_val: Tensor | None = None,
    candidates: int | None = None,
    seed: int = 0,
) -> FlipAttackResult:
    """Greedy approximation of the optimal (bilevel) label-flip attack (Paudice et al. 2018).

    The attacker wants the flips that maximise the victim's loss on clean validation data
    after it retrains on the poisoned set. Greedily, one flip per step: each remaining
    candidate flip is applied, an SVM is retrained for each (all at once, warm-started
    from the current solution), and the flip whose SVM has the largest mean hinge loss on
    the validation set is kept. Because it is greedy, ``order[:b]`` is the greedy attack
    with any smaller budget ``b``.

    Args:
        svm: the victim's settings (not modified).
        x: ``(n, d)`` training points.
        labels: ``(n,)`` clean class ids in ``{0, 1}``.
        budget: number of flips, in ``[0, n]``.
        x_val, labels_val: the attacker's clean validation set (default: the training set).
        candidates: try only this many randomly drawn candidates per step (default: all
            remaining points); bounds the cost at ``budget x candidates`` SVM fits.
        seed: seeds the candidate draws.

    Returns:
        :class:`FlipAttackResult` with ``order`` the greedy order.
    """
    _check_attack_inputs(svm, x, labels, budget)
    if (x_val is None) != (labels_val is None):
        raise ValueError("give both `x_val` and `labels_val`, or neither")
    if x_val is None or labels_val is None:
        x_val, labels_val = x, labels
    check_features(x_val, None, "x_val")
    check_binary_labels(labels_val, "labels_val")
    check_same_length(labels_val, x_val.shape[0], "labels_val", "x_val")
    if x_val.shape[1] != x.shape[1]:
        raise ValueError(f"`x_val` must have {x.shape[1]} features like `x`, got {x_val.shape[1]}")
    if candidates is not None:
        check_int(candidates, "candidates")
    generator = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    signs = labels.to(x.device, torch.float64) * 2 - 1
    val_signs = labels_val.to(x.device, torch.float64) * 2 - 1
    current = signs.clone()
    alpha = svm.dual_fit(x, current).alpha.double()
    flipped = torch.zeros(n, dtype=torch.bool, device=x.device)
    order: list[int] = []
    for _ in range(budget):
        pool = (~flipped).nonzero().flatten()
        if candidates is not None and pool.numel() > candidates:
            pick = torch.randperm(pool.numel(), generator=generator)[:candidates]
            pool = pool[pick.to(pool.device)]
        rows = torch.arange(pool.numel(), device=x.device)
        trial = current.expand(pool.numel(), n).clone()
        trial[rows, pool] *= -1
        start = alpha.expand(pool.numel(), n).clone()
        start[rows, pool] = 0.0
        solution = svm.dual_fit(x, trial, alpha0=start)
        scores = svm.dual_decision(x, solution.alpha.double() * trial, x_val)
        val_loss = _hinge(val_signs * scores).mean(-1)
        best = int(val_loss.argmax())
        index = int(pool[best])
        order.append(index)
        flipped[index] = True
        current = trial[best]
        alpha = solution.alpha[best].double()
    poisoned = torch.where(flipped, 1 - labels.to(x.device), labels.to(x.device))
    order_tensor = torch.tensor(order, dtype=torch.long, device=labels.device)
    return FlipAttackResult(
        poisoned.to(labels.device), flipped.to(labels.device), order_tensor, labels, len(order)
    )


__all__ = ["FlipAttackResult", "alfa_attack", "greedy_flip_attack", "random_flip_attack"]
