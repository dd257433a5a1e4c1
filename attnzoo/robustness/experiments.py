"""The flip-rate experiment: attacks x defences, accuracy and ECE against the flip rate.

:func:`run_flip_experiment` poisons the training labels of a binary problem with each
attack (random flips, ALFA, the greedy optimal-flip attack) at each flip rate, applies
each defence (none, kNN sanitisation, the confident-learning filter), trains the victim
linear SVM, and measures test accuracy and the ECE of its Platt-scaled probabilities.
The result prints as a markdown table and plots as a PNG. :func:`run_demo` is the
``attnzoo demo label-noise`` command.

:func:`run_smoothing_distillation_experiment` is Müller, Kornblith & Hinton's (2019)
distillation experiment: a teacher trained with label smoothing is as accurate as one
trained with hard labels, but a student distilled from it is worse, because smoothing
erases what the logits said about which wrong classes resemble the right one (measured by
:func:`class_similarity_gap`). Data with that structure, Gaussian classes grouped into
confusable super-classes, comes from
:func:`~attnzoo.robustness.datasets.make_hierarchical_blobs`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..attention.validation import check_int, check_positive, check_rank, check_tensor
from ..transformers_zoo.training import TrainConfig, fit
from ._plotting import pyplot
from ._validation import (
    check_binary_labels,
    check_features,
    check_labels,
    check_logits,
    check_rate,
    check_same_length,
)
from .attacks import FlipAttackResult, alfa_attack, greedy_flip_attack, random_flip_attack
from .calibration import expected_calibration_error
from .classifiers import MLPClassifier
from .datasets import make_blobs, train_test_split
from .sanitize import confident_learning_filter, knn_sanitize
from .smoothing import LabelSmoothingCrossEntropy
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


# ---------------------------------------------------------------- smoothing and distillation

TEACHERS = ("hard", "smoothed")

DistillationLoss = Callable[[Tensor, Tensor, float], Tensor]
"""``(student_logits (b, K), teacher_logits (b, K), temperature) -> scalar loss``, e.g.
:func:`attnzoo.compression.soft_target_loss` (taken as an argument: :mod:`attnzoo.robustness`
does not import :mod:`attnzoo.compression`)."""


def _check_groups(groups: object, num_classes: int | None = None) -> Tensor:
    """``groups (K,)``: a super-class id per class, >= 2 groups of >= 2 classes each."""
    check_labels(groups, "groups")
    assert isinstance(groups, Tensor)
    if num_classes is not None and groups.numel() != num_classes:
        raise ValueError(
            f"`groups` must give the group of each of the {num_classes} classes, got "
            f"{groups.numel()} entries"
        )
    sizes = torch.bincount(groups.cpu())
    sizes = sizes[sizes > 0]
    if sizes.numel() < 2 or int(sizes.min()) < 2:
        raise ValueError(
            "`groups` must form at least two groups of at least two classes each (every "
            f"class needs a group mate and an unrelated class), got group sizes {sizes.tolist()}"
        )
    return groups


def class_similarity_gap(logits: Tensor, labels: Tensor, groups: Tensor) -> float:
    """How much a classifier's scores tell which wrong classes resemble the true class.

    For each row: the mean log-probability of the true class's group mates minus the mean
    log-probability of the classes of the other groups, averaged over the rows, in nats.
    Differences of log-probabilities are differences of logits, so this is the margin by
    which a similar wrong class outscores an unrelated one: large for a network trained on
    hard labels, near zero once label smoothing has pulled every wrong-class logit to the
    same value (the information it erases, Müller, Kornblith & Hinton 2019, Sections 2, 4).

    Args:
        logits: ``(n, K)`` scores of any classifier.
        labels: ``(n,)`` true class ids in ``[0, K)``.
        groups: ``(K,)`` super-class id of every class; at least two groups, each of at
            least two classes.

    Returns:
        the mean gap (a float; nats).
    """
    check_logits(logits, None, "logits")
    num_classes = logits.shape[1]
    check_labels(labels, "labels", num_classes)
    check_same_length(labels, logits.shape[0], "labels", "logits")
    groups = _check_groups(groups, num_classes).to(logits.device)
    labels = labels.to(logits.device)
    log_probs = logits.detach().double().log_softmax(-1)
    same_group = groups[labels][:, None] == groups[None, :]  # (n, K)
    mates = same_group.scatter(1, labels[:, None], False)
    others = ~same_group

    def mean_over(chosen: Tensor) -> Tensor:
        return torch.where(chosen, log_probs, 0.0).sum(1) / chosen.sum(1)

    return float((mean_over(mates) - mean_over(others)).mean())


@dataclass
class SmoothingDistillationResult:
    """Teachers trained with hard and with smoothed labels, and students distilled from each.

    Attributes:
        smoothing: the smoothed teacher's label smoothing (uniform convention).
        temperatures: the distillation temperatures, in order.
        teacher_accuracy: test accuracy of each teacher, ``{"hard": ..., "smoothed": ...}``.
        similarity_gap: :func:`class_similarity_gap` of each teacher's test logits (nats).
        student_accuracy: ``student_accuracy[teacher][i]``, the test accuracy of the
            students distilled at ``temperatures[i]``, averaged over the transfer sets.
        baseline_accuracy: the same students trained on the transfer sets' true labels
            instead of a teacher, averaged.
    """

    smoothing: float
    temperatures: list[float]
    teacher_accuracy: dict[str, float] = field(default_factory=dict)
    similarity_gap: dict[str, float] = field(default_factory=dict)
    student_accuracy: dict[str, list[float]] = field(default_factory=dict)
    baseline_accuracy: float = float("nan")

    def best_student(self, teacher: str) -> tuple[float, float]:
        """``(accuracy, temperature)`` of the best students of ``teacher`` (``"hard"`` or
        ``"smoothed"``): Müller et al. compare each teacher at its best temperature."""
        if teacher not in self.student_accuracy:
            raise ValueError(f"`teacher` must be one of {TEACHERS}, got {teacher!r}")
        accuracies = self.student_accuracy[teacher]
        best = max(range(len(accuracies)), key=accuracies.__getitem__)
        return accuracies[best], self.temperatures[best]

    def table(self) -> str:
        """A markdown table: one row per teacher, then the students trained on labels."""
        temperatures = " | ".join(f"student T={t:g}" for t in self.temperatures)
        lines = [
            f"| teacher | teacher acc. | similarity gap | {temperatures} | best student |",
            "|---|---|---|" + "---|" * len(self.temperatures) + "---|",
        ]
        for teacher in self.student_accuracy:
            name = "hard labels" if teacher == "hard" else f"smoothing {self.smoothing:g}"
            cells = " | ".join(f"{a:.3f}" for a in self.student_accuracy[teacher])
            best, at = self.best_student(teacher)
            lines.append(
                f"| {name} | {self.teacher_accuracy[teacher]:.3f} | "
                f"{self.similarity_gap[teacher]:.2f} | {cells} | {best:.3f} (T={at:g}) |"
            )
        return (
            "\n".join(lines)
            + f"\n\nStudents trained on the transfer sets' labels: {self.baseline_accuracy:.3f}. "
            "Similarity gap: log-probability of a group mate minus that of an unrelated class "
            "(nats)."
        )


def run_smoothing_distillation_experiment(
    x_train: Tensor,
    labels_train: Tensor,
    x_transfer: Tensor,
    labels_transfer: Tensor,
    x_test: Tensor,
    labels_test: Tensor,
    groups: Tensor,
    distillation_loss: DistillationLoss,
    *,
    smoothing: float = 0.2,
    temperatures: Sequence[float] = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0),
    teacher_hidden: int = 64,
    teacher_depth: int = 2,
    teacher_steps: int = 400,
    student_hidden: int = 32,
    student_depth: int = 1,
    student_steps: int = 300,
    lr: float = 1e-2,
    seed: int = 0,
    progress: bool = False,
) -> SmoothingDistillationResult:
    """Distil from a teacher trained with hard labels and from one trained with smoothing.

    Müller, Kornblith & Hinton (2019), Section 4: two :class:`MLPClassifier` teachers of
    the same architecture, initialisation and budget learn ``x_train``, one with hard
    labels and one with :class:`LabelSmoothingCrossEntropy`; smaller students learn only
    the teachers' logits on each transfer set with ``distillation_loss`` at every
    temperature (full batch, AdamW), and students of the same initialisation learn the
    transfer set's labels as a baseline. A transfer set smaller than the teachers' training
    set makes the teacher's soft targets the student's main source of information, which is
    where the information smoothing erases shows.

    Args:
        x_train, labels_train: the teachers' ``(n, d)`` points and ``(n,)`` labels.
        x_transfer: ``(sets, m, d)``: ``sets`` transfer sets of ``m`` points each; every
            student configuration is trained once per set and its accuracies averaged.
        labels_transfer: ``(sets, m)`` true labels of the transfer sets (baseline only).
        x_test, labels_test: ``(t, d)`` and ``(t,)`` for the measurements.
        groups: ``(K,)`` super-class of every class (see :func:`class_similarity_gap`).
        distillation_loss: ``(student_logits, teacher_logits, temperature) -> loss``, e.g.
            :func:`attnzoo.compression.soft_target_loss`.
        smoothing: the smoothed teacher's ``a`` in ``(0, 1)`` (uniform convention).
        temperatures: distillation temperatures (> 0).
        teacher_hidden, teacher_depth, teacher_steps: the teachers' MLP and training steps.
        student_hidden, student_depth, student_steps: the students' MLP and training steps.
        lr: learning rate of every model.
        seed: the teachers' initialisation; every student of transfer set ``s`` starts
            from seed ``seed + 1 + s``, whatever it learns from, so comparisons are paired.
        progress: show a tqdm bar.

    Returns:
        :class:`SmoothingDistillationResult`.
    """
    num_classes = _check_groups(groups).numel()
    check_features(x_train, None, "x_train")
    check_labels(labels_train, "labels_train", num_classes)
    check_same_length(labels_train, x_train.shape[0], "labels_train", "x_train")
    dim = x_train.shape[1]
    check_tensor(x_transfer, "x_transfer")
    check_rank(x_transfer, 3, "x_transfer", "(sets, m, dim)")
    if not x_transfer.is_floating_point() or x_transfer.shape[-1] != dim:
        raise ValueError(
            f"`x_transfer` must be a floating (sets, m, {dim}) tensor like `x_train`, got "
            f"shape {tuple(x_transfer.shape)} and dtype {x_transfer.dtype}"
        )
    check_tensor(labels_transfer, "labels_transfer")
    if labels_transfer.shape != x_transfer.shape[:2]:
        raise ValueError(
            f"`labels_transfer` must have shape {tuple(x_transfer.shape[:2])} (sets, m) like "
            f"`x_transfer`, got {tuple(labels_transfer.shape)}"
        )
    check_labels(labels_transfer.flatten(), "labels_transfer", num_classes)
    check_features(x_test, None, "x_test")
    check_labels(labels_test, "labels_test", num_classes)
    check_same_length(labels_test, x_test.shape[0], "labels_test", "x_test")
    if x_test.shape[1] != dim:
        raise ValueError(f"`x_test` must have {dim} features like `x_train`, got {x_test.shape[1]}")
    if not callable(distillation_loss):
        raise TypeError(
            f"`distillation_loss` must be callable (student_logits, teacher_logits, "
            f"temperature) -> loss, got {type(distillation_loss).__name__}"
        )
    if check_rate(smoothing, "smoothing") == 0:
        raise ValueError("`smoothing` must be in (0, 1): with 0 both teachers are the same")
    temperatures = [float(t) for t in temperatures]
    if not temperatures:
        raise ValueError("`temperatures` must hold at least one temperature")
    for temperature in temperatures:
        check_positive(temperature, "temperatures")
    for value, name, minimum in (
        (teacher_hidden, "teacher_hidden", 1),
        (teacher_depth, "teacher_depth", 0),
        (teacher_steps, "teacher_steps", 1),
        (student_hidden, "student_hidden", 1),
        (student_depth, "student_depth", 0),
        (student_steps, "student_steps", 1),
    ):
        check_int(value, name, minimum=minimum)
    check_positive(lr, "lr")

    sets = x_transfer.shape[0]
    result = SmoothingDistillationResult(float(smoothing), temperatures)
    bar = tqdm(
        total=len(TEACHERS) * (1 + sets * len(temperatures)) + sets,
        desc="smoothing and distillation",
        disable=not progress,
    )

    def student(transfer_set: int) -> MLPClassifier:
        return MLPClassifier(
            dim,
            num_classes,
            student_hidden,
            student_depth,
            steps=student_steps,
            lr=lr,
            seed=seed + 1 + transfer_set,
        )

    for teacher_name in TEACHERS:
        loss = None if teacher_name == "hard" else LabelSmoothingCrossEntropy(smoothing=smoothing)
        teacher = MLPClassifier(
            dim,
            num_classes,
            teacher_hidden,
            teacher_depth,
            steps=teacher_steps,
            lr=lr,
            loss=loss,
            seed=seed,
        ).fit(x_train, labels_train)
        with torch.no_grad():
            test_logits = teacher(x_test)
            transfer_logits = [teacher(x_transfer[s]) for s in range(sets)]
        result.teacher_accuracy[teacher_name] = _accuracy(test_logits, labels_test)
        result.similarity_gap[teacher_name] = class_similarity_gap(test_logits, labels_test, groups)
        bar.update()
        result.student_accuracy[teacher_name] = []
        for temperature in temperatures:
            total = 0.0
            for s in range(sets):
                learner = student(s)
                _distil(learner, x_transfer[s], transfer_logits[s], temperature, distillation_loss)
                with torch.no_grad():
                    total += _accuracy(learner(x_test), labels_test)
                bar.update()
            result.student_accuracy[teacher_name].append(total / sets)
    total = 0.0
    for s in range(sets):
        learner = student(s).fit(x_transfer[s], labels_transfer[s])
        with torch.no_grad():
            total += _accuracy(learner(x_test), labels_test)
        bar.update()
    result.baseline_accuracy = total / sets
    bar.close()
    return result


def _accuracy(logits: Tensor, labels: Tensor) -> float:
    """Share of the rows of ``logits (n, K)`` whose argmax is ``labels (n,)``."""
    return float((logits.argmax(-1) == labels).float().mean())


def _distil(
    student: MLPClassifier,
    x: Tensor,
    teacher_logits: Tensor,
    temperature: float,
    loss: DistillationLoss,
) -> None:
    """Train ``student`` on ``teacher_logits (m, K)`` of ``x (m, d)`` alone (full batch), with
    the optimiser settings of :meth:`MLPClassifier.fit`."""
    config = TrainConfig(
        steps=student.steps,
        lr=student.lr,
        weight_decay=student.weight_decay,
        clip_norm=None,
        progress=False,
        description="distil",
    )
    fit(
        student,
        lambda model, batch: loss(model(batch[0]), batch[1], temperature),
        lambda _: (x, teacher_logits),
        config,
    )


__all__ = [
    "ATTACKS",
    "DEFENCES",
    "TEACHERS",
    "DistillationLoss",
    "FlipExperimentResult",
    "SmoothingDistillationResult",
    "class_similarity_gap",
    "run_demo",
    "run_flip_experiment",
    "run_smoothing_distillation_experiment",
]
