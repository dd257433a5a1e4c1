"""The flip-rate experiment: attacks x defences, accuracy and ECE against the flip rate.

:func:`run_flip_experiment` poisons the training labels of a binary problem with each
attack (random flips, ALFA, the greedy optimal-flip attack) at each flip rate, applies
each defence (none, kNN sanitisation, the confident-learning filter), trains the victim
linear SVM, and measures test accuracy and the ECE of its Platt-scaled probabilities.
The result prints as a markdown table and plots as a PNG. :func:`run_demo` is the
``attnzoo demo label-noise`` command.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor
from tqdm.auto import tqdm

from ._plotting import pyplot
from ._validation import check_binary_labels, check_features, check_rate, check_same_length
from .attacks import FlipAttackResult, alfa_attack, greedy_flip_attack, random_flip_attack
from .calibration import expected_calibration_error
from .datasets import make_blobs, train_test_split
from .sanitize import confident_learning_filter, knn_sanitize
from .svm import LinearSVM

ATTACKS = ("random", "alfa", "greedy")
DEFENCES = ("none", "knn", "confident_learning")


@dataclass
class FlipExperimentResult:
    """Test accuracy and ECE of the victim for every attack, defence and flip rate.

    Attributes:
        rates: the flip rates, in order.
        budgets: the number of flipped labels at each rate.
        accuracy: ``accuracy[attack][defence][i]`` at ``rates[i]``.
        ece: the same layout for the expected calibration error.
    """

    rates: list[float]
    budgets: list[int]
    accuracy: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    ece: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def table(self) -> str:
        """A markdown table: one row per (attack, defence), ``accuracy (ECE)`` per rate."""
        header = "| attack | defence | " + " | ".join(f"{r:.0%} flipped" for r in self.rates)
        lines = [header + " |", "|---|---|" + "---|" * len(self.rates)]
        for attack, per_defence in self.accuracy.items():
            for defence, values in per_defence.items():
                cells = [
                    f"{acc:.3f} ({ece:.3f})"
                    for acc, ece in zip(values, self.ece[attack][defence], strict=True)
                ]
                lines.append(f"| {attack} | {defence} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n\nCells: test accuracy (ECE, 15 equal-width bins)."

    def plot(self, path: str | Path) -> Path:
        """Write accuracy and ECE against the flip rate as a PNG (needs matplotlib)."""
        plt = pyplot("FlipExperimentResult.plot")
        styles = {"none": "-", "knn": "--", "confident_learning": ":"}
        colours = {"random": "tab:blue", "alfa": "tab:red", "greedy": "tab:green"}
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
        rates = [100 * r for r in self.rates]
        for attack, per_defence in self.accuracy.items():
            for defence, values in per_defence.items():
                style = {
                    "linestyle": styles.get(defence, "-"),
                    "marker": "o",
                    "color": colours.get(attack),
                }
                label = f"{attack} / {defence}"
                left.plot(rates, values, label=label, **style)
                right.plot(rates, self.ece[attack][defence], label=label, **style)
        left.set_xlabel("flipped training labels (%)")
        left.set_ylabel("test accuracy")
        right.set_xlabel("flipped training labels (%)")
        right.set_ylabel("test ECE")
        left.legend(fontsize=7)
        fig.suptitle("linear SVM under label-flip attacks, with and without defences")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return Path(path)


def run_flip_experiment(
    x_train: Tensor,
    labels_train: Tensor,
    x_test: Tensor,
    labels_test: Tensor,
    rates: Sequence[float] = (0.0, 0.05, 0.1, 0.2),
    *,
    attacks: Sequence[str] = ATTACKS,
    defences: Sequence[str] = DEFENCES,
    C: float = 1.0,
    knn_k: int = 10,
    knn_eta: float = 0.6,
    folds: int = 5,
    greedy_candidates: int | None = None,
    x_val: Tensor | None = None,
    labels_val: Tensor | None = None,
    attack_tol: float = 1e-4,
    seed: int = 0,
    progress: bool = False,
) -> FlipExperimentResult:
    """Accuracy and ECE against the flip rate for every attack x defence.

    The greedy attack runs once at the largest budget and the smaller budgets take the
    first flips of its order (exactly what greedy would pick); random flips likewise take
    prefixes of one random order, so the curves are nested. ALFA runs at each budget.

    Args:
        x_train, labels_train: ``(n, d)`` points and clean ``(n,)`` labels in ``{0, 1}``.
        x_test, labels_test: ``(m, d)`` and ``(m,)`` for the measurements.
        rates: flip rates in ``[0, 1)``; the budget is ``round(rate * n)``.
        attacks: a subset of ``("random", "alfa", "greedy")``.
        defences: a subset of ``("none", "knn", "confident_learning")``.
        C: the victim linear SVM's ``C``.
        knn_k, knn_eta: :func:`~attnzoo.robustness.knn_sanitize` settings.
        folds: cross-validation folds of the confident-learning filter.
        greedy_candidates: candidates per greedy step (None: all).
        x_val, labels_val: the greedy attacker's validation set (default: training set).
        attack_tol: solver tolerance of the SVMs inside the attacks.
        seed: seeds the random flips and the folds.
        progress: show a tqdm bar.

    Returns:
        :class:`FlipExperimentResult`.
    """
    check_features(x_train, None, "x_train")
    check_binary_labels(labels_train, "labels_train")
    check_same_length(labels_train, x_train.shape[0], "labels_train", "x_train")
    check_features(x_test, None, "x_test")
    check_binary_labels(labels_test, "labels_test")
    check_same_length(labels_test, x_test.shape[0], "labels_test", "x_test")
    for name, chosen, allowed in (("attacks", attacks, ATTACKS), ("defences", defences, DEFENCES)):
        unknown = [value for value in chosen if value not in allowed]
        if unknown or not chosen:
            raise ValueError(f"`{name}` must be a non-empty subset of {allowed}, got {chosen}")
    rates = [check_rate(rate, "rates") for rate in rates]
    if not rates:
        raise ValueError("`rates` must hold at least one flip rate")
    n = x_train.shape[0]
    budgets = [round(rate * n) for rate in rates]
    victim = LinearSVM(C=C, tol=attack_tol)
    result = FlipExperimentResult(list(rates), budgets)
    bar = tqdm(total=len(attacks) * len(rates), desc="flip experiment", disable=not progress)
    for attack in attacks:
        nested: FlipAttackResult | None = None
        if attack == "greedy":
            nested = greedy_flip_attack(
                victim,
                x_train,
                labels_train,
                max(budgets),
                x_val=x_val,
                labels_val=labels_val,
                candidates=greedy_candidates,
                seed=seed,
            )
        elif attack == "random":
            nested = random_flip_attack(labels_train, max(budgets), seed=seed)
        result.accuracy[attack] = {defence: [] for defence in defences}
        result.ece[attack] = {defence: [] for defence in defences}
        for budget in budgets:
            if nested is not None:
                poisoned = nested.prefix(budget)
            else:
                poisoned = alfa_attack(victim, x_train, labels_train, budget, seed=seed).labels
            for defence in defences:
                accuracy, ece = _defend_and_measure(
                    defence,
                    x_train,
                    poisoned,
                    x_test,
                    labels_test,
                    C=C,
                    knn_k=knn_k,
                    knn_eta=knn_eta,
                    folds=folds,
                    seed=seed,
                )
                result.accuracy[attack][defence].append(accuracy)
                result.ece[attack][defence].append(ece)
            bar.update()
    bar.close()
    return result


def _defend_and_measure(
    defence: str,
    x_train: Tensor,
    poisoned: Tensor,
    x_test: Tensor,
    labels_test: Tensor,
    *,
    C: float,
    knn_k: int,
    knn_eta: float,
    folds: int,
    seed: int,
) -> tuple[float, float]:
    """Apply ``defence``, train the victim, return its test accuracy and ECE."""
    x, labels = x_train, poisoned
    if defence == "knn":
        labels = knn_sanitize(x_train, poisoned, knn_k, knn_eta).labels
    elif defence == "confident_learning":
        kept = confident_learning_filter(
            lambda: LinearSVM(C=C), x_train, poisoned, folds=folds, seed=seed
        ).keep
        x, labels = x_train[kept], poisoned[kept]
    model = LinearSVM(C=C).fit(x, labels)
    probs = model.predict_proba(x_test)
    return model.accuracy(x_test, labels_test), expected_calibration_error(probs, labels_test)


def run_demo(steps: int | None = None, progress: bool = True, seed: int = 0) -> dict[str, float]:
    """ALFA against random flips on a linear SVM, and kNN sanitisation against ALFA.

    Ten-dimensional Gaussian blobs (200 training and 200 test points); 20% of the
    training labels are flipped at random and by ALFA, and the ALFA-poisoned labels are
    then sanitised with kNN (``k = 10``, ``eta = 0.6``) before training.

    Args:
        steps: ALFA alternations per run (default 50).
        progress: unused by this short demo (kept for the demo signature).
        seed: seeds the data, the random flips and ALFA's restarts.

    Returns:
        ``{"clean_accuracy", "random_flip_accuracy", "alfa_accuracy",
        "alfa_knn_accuracy", "knn_recovered_share"}``, the last being the share of the
        accuracy ALFA took away that kNN sanitisation gives back.
    """
    del progress
    x, labels = make_blobs(400, 2, dim=10, separation=3.0, seed=seed)
    x_train, y_train, x_test, y_test = train_test_split(x, labels, 0.5, seed=seed)
    budget = round(0.2 * x_train.shape[0])
    victim = LinearSVM(tol=1e-4)
    alfa = alfa_attack(victim, x_train, y_train, budget, max_iter=steps or 50, seed=seed).labels
    random = random_flip_attack(y_train, budget, seed=seed).labels
    sanitised = knn_sanitize(x_train, alfa, k=10, eta=0.6).labels

    def accuracy(train_labels: Tensor) -> float:
        return LinearSVM().fit(x_train, train_labels).accuracy(x_test, y_test)

    clean, alfa_acc = accuracy(y_train), accuracy(alfa)
    knn_acc = accuracy(sanitised)
    lost = clean - alfa_acc
    return {
        "clean_accuracy": clean,
        "random_flip_accuracy": accuracy(random),
        "alfa_accuracy": alfa_acc,
        "alfa_knn_accuracy": knn_acc,
        "knn_recovered_share": (knn_acc - alfa_acc) / lost if lost > 0 else 1.0,
    }


__all__ = ["ATTACKS", "DEFENCES", "FlipExperimentResult", "run_demo", "run_flip_experiment"]
