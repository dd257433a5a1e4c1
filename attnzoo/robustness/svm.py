"""Support vector machines in torch, the victim model of the label-flip attacks.

A binary soft-margin SVM with the hinge loss,

    min_w  1/2 ||w||^2 + sum_i C_i max(0, 1 - y_i f(x_i)),   y_i in {-1, +1},

solved in the dual, ``max_a sum a - 1/2 a^T Q a`` with ``0 <= a_i <= C_i`` and
``Q_ij = y_i y_j k(x_i, x_j)``, by accelerated projected gradient (FISTA with adaptive
restart) until the duality gap is below a relative tolerance. As in LIBLINEAR (and
scikit-learn's ``LinearSVC(loss="hinge")``) the bias is a feature of constant value
``intercept_scaling`` and is regularised with the weights, which leaves the dual with box
constraints only. Many SVMs on the same points (one per candidate label set, as the
attacks need) are solved at once along a leading batch axis.

:class:`LinearSVM` and :class:`KernelSVM` (RBF by default) wrap the solver with ``fit``,
``decision_function``, ``predict`` and ``predict_proba`` (Platt scaling), taking class
ids in ``{0, 1}`` like every classifier in :mod:`attnzoo.robustness`.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..attention.validation import check_int, check_positive
from ._validation import check_binary_labels, check_features, check_same_length
from .calibration import PlattScaling

# How often (in iterations) the duality gap is evaluated.
_GAP_EVERY = 10


def linear_kernel(a: Tensor, b: Tensor) -> Tensor:
    """``a (n, d)``, ``b (m, d)`` -> ``(n, m)`` inner products."""
    return a @ b.T


def rbf_kernel(a: Tensor, b: Tensor, gamma: float) -> Tensor:
    """``exp(-gamma ||a_i - b_j||^2)``: ``a (n, d)``, ``b (m, d)`` -> ``(n, m)``."""
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return torch.exp(-gamma * sq.clamp_min(0))


@dataclass
class DualSolution:
    """What :func:`solve_svm_dual` returns.

    Attributes:
        alpha: ``(..., n)`` dual variables, ``0 <= alpha_i <= C_i``.
        gap: ``(...)`` final duality gap (primal minus dual objective, >= 0).
        iterations: iterations run.
        converged: whether every problem reached the tolerance.
    """

    alpha: Tensor
    gap: Tensor
    iterations: int
    converged: bool


def solve_svm_dual(
    signs: Tensor,
    C: float | Tensor,
    *,
    gram: Tensor | None = None,
    features: Tensor | None = None,
    alpha0: Tensor | None = None,
    tol: float = 1e-6,
    max_iter: int = 20_000,
) -> DualSolution:
    """Solve the hinge-loss SVM dual for one or many label vectors on the same points.

    Give the kernel either as ``gram`` (``(n, n)``, positive semi-definite) or as
    ``features`` (``(n, p)``, the Gram matrix being ``features @ features.T``; cheaper
    when ``p < n``, as for a linear SVM).

    Args:
        signs: ``(..., n)`` labels in ``{-1, +1}``; a leading batch of label vectors is
            solved at once.
        C: the box bound, a float or ``(..., n)`` per point (``C`` times sample weights).
        gram, features: the kernel, see above.
        alpha0: ``(..., n)`` warm start (clipped into the box).
        tol: stop when ``gap <= tol * max(1, primal)`` for every problem.
        max_iter: iteration cap.

    Returns:
        :class:`DualSolution`; computed in float64, returned in ``signs``' dtype if it is
        floating, else in float64.
    """
    if (gram is None) == (features is None):
        raise ValueError("give exactly one of `gram` (n, n) and `features` (n, p)")
    kernel = (gram if gram is not None else features).double()  # type: ignore[union-attr]
    n = kernel.shape[0]
    if signs.dim() < 1 or signs.shape[-1] != n:
        raise ValueError(f"`signs` must end in n = {n} (one per point), got {tuple(signs.shape)}")
    if not bool((signs.abs() == 1).all()):
        raise ValueError("`signs` must hold labels in {-1, +1}")
    out_dtype = signs.dtype if signs.is_floating_point() else torch.float64
    y = signs.double()
    box = torch.as_tensor(C, dtype=torch.float64, device=y.device).expand_as(y)
    if features is not None:
        lipschitz = float(torch.linalg.matrix_norm(kernel, ord=2)) ** 2

        def matvec(v: Tensor) -> Tensor:
            return (v @ kernel) @ kernel.T

    else:
        lipschitz = float(torch.linalg.eigvalsh(kernel)[-1])

        def matvec(v: Tensor) -> Tensor:
            return v @ kernel

    lipschitz = max(lipschitz, 1e-12)
    batch_shape = y.shape[:-1]
    y, box = y.reshape(-1, n), box.reshape(-1, n)
    if alpha0 is None:
        alpha = torch.zeros_like(y)
    else:
        alpha = torch.minimum(alpha0.double().reshape(-1, n).clamp_min(0), box)
    out_alpha = alpha.clone()
    out_gap = torch.full(y.shape[:1], float("inf"), dtype=torch.float64, device=y.device)
    # Problems still running; a converged one leaves the batch, so the others run cheaper.
    active = torch.arange(y.shape[0], device=y.device)
    momentum_point = alpha.clone()
    t = torch.ones(y.shape[0], 1, dtype=torch.float64, device=y.device)
    converged = False
    iteration = 0
    for iteration in range(1, max_iter + 1):
        gradient = y * matvec(momentum_point * y) - 1
        new_alpha = torch.minimum((momentum_point - gradient / lipschitz).clamp_min(0), box)
        # Adaptive restart (O'Donoghue & Candes 2015): drop the momentum of a problem
        # whose step went against its gradient.
        restart = ((new_alpha - alpha) * (momentum_point - new_alpha)).sum(-1, keepdim=True) > 0
        t_next = (1 + torch.sqrt(1 + 4 * t * t)) / 2
        beta = torch.where(restart, 0.0, (t - 1) / t_next)
        t = torch.where(restart, 1.0, t_next)
        momentum_point = new_alpha + beta * (new_alpha - alpha)
        alpha = new_alpha
        if iteration % _GAP_EVERY == 0 or iteration == max_iter:
            gap, primal = _duality_gap(alpha, y, box, matvec)
            done = gap <= tol * primal.clamp_min(1)
            out_alpha[active], out_gap[active] = alpha, gap
            if bool(done.all()):
                converged = True
                break
            if bool(done.any()):
                keep = ~done
                active, y, box, t = active[keep], y[keep], box[keep], t[keep]
                alpha, momentum_point = alpha[keep], momentum_point[keep]
    return DualSolution(
        out_alpha.reshape(*batch_shape, n).to(out_dtype),
        out_gap.reshape(batch_shape).to(out_dtype),
        iteration,
        converged,
    )


def _duality_gap(
    alpha: Tensor, y: Tensor, box: Tensor, matvec: Callable[[Tensor], Tensor]
) -> tuple[Tensor, Tensor]:
    """Primal minus dual objective at ``w = sum_i alpha_i y_i phi(x_i)``, and the primal."""
    scores = matvec(alpha * y)  # f(x_i) for every point
    quadratic = (alpha * y * scores).sum(-1)  # ||w||^2
    hinge = (box * (1 - y * scores).clamp_min(0)).sum(-1)
    primal = 0.5 * quadratic + hinge
    dual = alpha.sum(-1) - 0.5 * quadratic
    return (primal - dual).clamp_min(0), primal


class _BinarySVM(nn.Module, ABC):
    """Shared fitting and prediction of :class:`LinearSVM` and :class:`KernelSVM`."""

    def __init__(self, C: float, intercept_scaling: float, tol: float, max_iter: int) -> None:
        super().__init__()
        check_positive(C, "C")
        if intercept_scaling < 0:
            raise ValueError(f"`intercept_scaling` must be >= 0, got {intercept_scaling}")
        check_positive(tol, "tol")
        check_int(max_iter, "max_iter", minimum=1)
        self.C = float(C)
        self.intercept_scaling = float(intercept_scaling)
        self.tol = tol
        self.max_iter = max_iter
        self.platt = PlattScaling()
        self.solution: DualSolution | None = None

    # The two kernels differ only in these methods.
    @abstractmethod
    def _operator(self, x: Tensor) -> dict[str, Tensor]:
        """The kernel of ``x`` as :func:`solve_svm_dual`'s ``gram=`` or ``features=``."""

    @abstractmethod
    def _store(self, x: Tensor, coef: Tensor) -> None:
        """Keep what prediction needs, from the dual coefficients ``coef (n,)``."""

    @abstractmethod
    def decision_function(self, x: Tensor) -> Tensor:
        """Decision values ``(n,)`` of the fitted SVM on ``x (n, d)``."""

    @abstractmethod
    def dual_decision(self, x_train: Tensor, coef: Tensor, x: Tensor) -> Tensor:
        """Decision values of SVMs given by their dual coefficients, without fitting.

        Args:
            x_train: ``(n, d)`` training points.
            coef: ``(..., n)`` dual coefficients ``alpha_i y_i``.
            x: ``(m, d)`` points to score.

        Returns:
            ``(..., m)`` decision values (float64).
        """

    def dual_fit(
        self,
        x: Tensor,
        signs: Tensor,
        sample_weight: Tensor | None = None,
        alpha0: Tensor | None = None,
    ) -> DualSolution:
        """Solve this SVM's dual for one or many label vectors (no state is stored).

        Args:
            x: ``(n, d)`` training points.
            signs: ``(..., n)`` labels in ``{-1, +1}``.
            sample_weight: ``(n,)`` or ``(..., n)`` non-negative weights (``C_i = C w_i``).
            alpha0: ``(..., n)`` warm start.
        """
        box: float | Tensor = self.C
        if sample_weight is not None:
            if bool((sample_weight < 0).any()):
                raise ValueError("`sample_weight` must be >= 0")
            box = self.C * sample_weight.double()
        return solve_svm_dual(
            signs, box, **self._operator(x), alpha0=alpha0, tol=self.tol, max_iter=self.max_iter
        )

    def fit(self, x: Tensor, labels: Tensor, sample_weight: Tensor | None = None) -> _BinarySVM:
        """Fit on points ``x (n, d)`` with class ids ``labels (n,)`` in ``{0, 1}``.

        Also fits :class:`PlattScaling` on the training decision values, for
        :meth:`predict_proba`. Returns ``self``.
        """
        check_features(x, None, "x")
        check_binary_labels(labels, "labels")
        check_same_length(labels, x.shape[0], "labels", "x")
        if sample_weight is not None:
            check_same_length(sample_weight, x.shape[0], "sample_weight", "x")
        signs = labels.to(x.device, torch.float64) * 2 - 1
        self.solution = self.dual_fit(x, signs, sample_weight)
        if not self.solution.converged:
            warnings.warn(
                f"{type(self).__name__} stopped at max_iter={self.max_iter} with duality gap "
                f"{float(self.solution.gap):.3g} above tol={self.tol}; raise max_iter",
                RuntimeWarning,
                stacklevel=2,
            )
        self._store(x, (self.solution.alpha * signs).to(x.dtype))
        self.platt.fit(self.decision_function(x).detach(), labels)
        return self

    def _check_fitted(self, x: Tensor) -> None:
        if self.solution is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(x, labels) first")
        check_features(x, None, "x")

    def forward(self, x: Tensor) -> Tensor:
        """Decision values ``(n,)`` of points ``x (n, d)``; positive means class 1."""
        return self.decision_function(x)

    def predict(self, x: Tensor) -> Tensor:
        """Class ids ``(n,)`` in ``{0, 1}`` for ``x (n, d)``."""
        return (self.decision_function(x) > 0).long()

    def predict_proba(self, x: Tensor) -> Tensor:
        """``(n, 2)`` probabilities from Platt scaling of the decision values."""
        with torch.no_grad():
            return self.platt(self.decision_function(x))

    def accuracy(self, x: Tensor, labels: Tensor) -> float:
        """Share of ``labels (n,)`` predicted right on ``x (n, d)``."""
        return float((self.predict(x) == labels.to(x.device)).double().mean())


class LinearSVM(_BinarySVM):
    """Linear soft-margin SVM, ``f(x) = w . x + b``, hinge loss, trained in torch.

    Args:
        C: hinge-loss weight (inverse regularisation strength).
        intercept_scaling: value of the constant feature that carries the bias
            (regularised with ``w``, as in LIBLINEAR); 0 fits no bias.
        tol: relative duality-gap tolerance.
        max_iter: solver iteration cap.

    Attributes:
        weight: ``(d,)`` after ``fit``.
        bias: scalar after ``fit``.
    """

    weight: Tensor
    bias: Tensor

    def __init__(
        self,
        C: float = 1.0,
        intercept_scaling: float = 1.0,
        tol: float = 1e-6,
        max_iter: int = 20_000,
    ) -> None:
        super().__init__(C, intercept_scaling, tol, max_iter)
        self.register_buffer("weight", torch.zeros(0))
        self.register_buffer("bias", torch.zeros(()))

    def _augmented(self, x: Tensor) -> Tensor:
        column = torch.full((x.shape[0], 1), self.intercept_scaling, dtype=x.dtype, device=x.device)
        return torch.cat([x, column], dim=1).double()

    def _operator(self, x: Tensor) -> dict[str, Tensor]:
        return {"features": self._augmented(x)}

    def _store(self, x: Tensor, coef: Tensor) -> None:
        w = coef.double() @ self._augmented(x)
        self.weight = w[:-1].to(x.dtype)
        self.bias = (w[-1] * self.intercept_scaling).to(x.dtype)

    def dual_decision(self, x_train: Tensor, coef: Tensor, x: Tensor) -> Tensor:
        w = coef.double() @ self._augmented(x_train)
        return w @ self._augmented(x).T

    def decision_function(self, x: Tensor) -> Tensor:
        """``w . x + b`` for ``x (n, d)`` -> ``(n,)``."""
        self._check_fitted(x)
        if x.shape[1] != self.weight.shape[0]:
            raise ValueError(
                f"`x` must have {self.weight.shape[0]} features (as in fit), got {x.shape[1]}"
            )
        return x @ self.weight.to(x.dtype) + self.bias.to(x.dtype)


class KernelSVM(_BinarySVM):
    """Kernel soft-margin SVM, ``f(x) = sum_i a_i y_i (k(x_i, x) + s^2)``, hinge loss.

    Args:
        kernel: ``"rbf"`` (``exp(-gamma ||x - x'||^2)``) or ``"linear"``.
        gamma: RBF width; None uses ``1 / (d * var(x))`` at fit time (scikit-learn's
            ``gamma="scale"``).
        C, intercept_scaling, tol, max_iter: as in :class:`LinearSVM`; the bias is the
            constant ``s^2`` added to the kernel.

    Attributes:
        support_vectors: ``(s, d)`` training points with ``a_i > 0`` after ``fit``.
        dual_coef: ``(s,)`` their ``a_i y_i``.
    """

    support_vectors: Tensor
    dual_coef: Tensor

    def __init__(
        self,
        kernel: str = "rbf",
        gamma: float | None = None,
        C: float = 1.0,
        intercept_scaling: float = 1.0,
        tol: float = 1e-6,
        max_iter: int = 20_000,
    ) -> None:
        super().__init__(C, intercept_scaling, tol, max_iter)
        if kernel not in ("rbf", "linear"):
            raise ValueError(f"`kernel` must be 'rbf' or 'linear', got {kernel!r}")
        if gamma is not None:
            check_positive(gamma, "gamma")
        self.kernel = kernel
        self.gamma = gamma
        self.fitted_gamma: float | None = gamma
        self.register_buffer("support_vectors", torch.zeros(0, 0))
        self.register_buffer("dual_coef", torch.zeros(0))

    def _kernel(self, a: Tensor, b: Tensor) -> Tensor:
        a, b = a.double(), b.double()
        if self.kernel == "linear":
            base = linear_kernel(a, b)
        else:
            assert self.fitted_gamma is not None
            base = rbf_kernel(a, b, self.fitted_gamma)
        return base + self.intercept_scaling**2

    def _operator(self, x: Tensor) -> dict[str, Tensor]:
        if self.gamma is None:
            variance = float(x.double().var(correction=0))
            self.fitted_gamma = 1.0 / (x.shape[1] * variance) if variance > 0 else 1.0
        return {"gram": self._kernel(x, x)}

    def _store(self, x: Tensor, coef: Tensor) -> None:
        keep = coef != 0
        self.support_vectors = x[keep].detach().clone()
        self.dual_coef = coef[keep].detach().clone()

    def dual_decision(self, x_train: Tensor, coef: Tensor, x: Tensor) -> Tensor:
        return coef.double() @ self._kernel(x_train, x)

    def decision_function(self, x: Tensor) -> Tensor:
        """``sum_i a_i y_i (k(x_i, x) + s^2)`` for ``x (n, d)`` -> ``(n,)``."""
        self._check_fitted(x)
        if x.shape[1] != self.support_vectors.shape[1]:
            raise ValueError(
                f"`x` must have {self.support_vectors.shape[1]} features (as in fit), "
                f"got {x.shape[1]}"
            )
        values = self.dual_coef.double() @ self._kernel(self.support_vectors, x)
        return values.to(x.dtype)


__all__ = [
    "DualSolution",
    "KernelSVM",
    "LinearSVM",
    "linear_kernel",
    "rbf_kernel",
    "solve_svm_dual",
]
