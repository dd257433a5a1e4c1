"""Robustness to label noise: noise, flipping, smoothing, calibration, attacks, defences.

Stands on :mod:`attnzoo.attention` and :mod:`attnzoo.transformers_zoo`. Works with any
classifier: the losses and calibration take logits or probabilities, the defences take
features (raw inputs or a zoo encoder's embeddings) and any object with ``fit`` and
``predict_proba``.

* Label noise (:mod:`~attnzoo.robustness.noise`): symmetric, pair, per-class and
  arbitrary noise matrices (columns ``P(noisy | true)``), random matrices of a given
  trace, seeded draws that report the flips; :class:`LabelFlipping` flips a fresh
  fraction every epoch.
* Label smoothing (:mod:`~attnzoo.robustness.smoothing`): the uniform convention of
  Müller et al. (``smoothing=``), the max-value convention (``max_value=``), one-sided
  binary smoothing.
* Calibration (:mod:`~attnzoo.robustness.calibration`): ECE (equal-width or equal-mass
  bins), MCE, NLL, Brier, reliability diagrams, :class:`TemperatureScaling`,
  :class:`PlattScaling`.
* Victims (:mod:`~attnzoo.robustness.svm`, :mod:`~attnzoo.robustness.classifiers`):
  :class:`LinearSVM` and :class:`KernelSVM` with the hinge loss, :class:`MLPClassifier`.
* Attacks (:mod:`~attnzoo.robustness.attacks`): random flips, ALFA, the greedy
  optimal-flip attack.
* Defences (:mod:`~attnzoo.robustness.sanitize`): kNN label sanitisation, the
  confident-learning filter.
* Experiments (:mod:`~attnzoo.robustness.experiments`): accuracy and ECE against the flip
  rate for every attack x defence, as a table and a PNG; label smoothing against
  distillation (Müller et al. 2019) on Gaussian classes grouped into super-classes.
"""

from .attacks import FlipAttackResult, alfa_attack, greedy_flip_attack, random_flip_attack
from .calibration import (
    CalibrationBins,
    PlattScaling,
    TemperatureScaling,
    brier_score,
    calibration_bins,
    calibration_report,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
    reliability_diagram,
)
from .classifiers import Classifier, MLPClassifier, cross_val_predict_proba, stratified_folds
from .datasets import make_blobs, make_hierarchical_blobs, make_moons, train_test_split
from .experiments import (
    FlipExperimentResult,
    SmoothingDistillationResult,
    class_similarity_gap,
    run_flip_experiment,
    run_smoothing_distillation_experiment,
)
from .noise import (
    LabelFlipping,
    NoisyLabels,
    apply_noise_matrix,
    check_noise_matrix,
    flip_labels,
    noise_matrix_from_trace,
    noise_matrix_is_valid,
    pair_noise,
    pair_noise_matrix,
    per_class_noise,
    per_class_noise_matrix,
    symmetric_noise,
    symmetric_noise_matrix,
)
from .sanitize import (
    FilterResult,
    SanitizedLabels,
    confident_joint,
    confident_labels,
    confident_learning_filter,
    find_label_issues,
    knn_sanitize,
    nearest_neighbours,
    per_class_thresholds,
)
from .smoothing import (
    LabelSmoothingCrossEntropy,
    smooth_binary_targets,
    smooth_labels,
    smoothed_binary_cross_entropy_with_logits,
    smoothed_cross_entropy,
)
from .svm import DualSolution, KernelSVM, LinearSVM, linear_kernel, rbf_kernel, solve_svm_dual

__all__ = [
    "CalibrationBins",
    "Classifier",
    "DualSolution",
    "FilterResult",
    "FlipAttackResult",
    "FlipExperimentResult",
    "KernelSVM",
    "LabelFlipping",
    "LabelSmoothingCrossEntropy",
    "LinearSVM",
    "MLPClassifier",
    "NoisyLabels",
    "PlattScaling",
    "SanitizedLabels",
    "SmoothingDistillationResult",
    "TemperatureScaling",
    "alfa_attack",
    "apply_noise_matrix",
    "brier_score",
    "calibration_bins",
    "calibration_report",
    "check_noise_matrix",
    "class_similarity_gap",
    "confident_joint",
    "confident_labels",
    "confident_learning_filter",
    "cross_val_predict_proba",
    "expected_calibration_error",
    "find_label_issues",
    "flip_labels",
    "greedy_flip_attack",
    "knn_sanitize",
    "linear_kernel",
    "make_blobs",
    "make_hierarchical_blobs",
    "make_moons",
    "maximum_calibration_error",
    "nearest_neighbours",
    "negative_log_likelihood",
    "noise_matrix_from_trace",
    "noise_matrix_is_valid",
    "pair_noise",
    "pair_noise_matrix",
    "per_class_noise",
    "per_class_noise_matrix",
    "per_class_thresholds",
    "random_flip_attack",
    "rbf_kernel",
    "reliability_diagram",
    "run_flip_experiment",
    "run_smoothing_distillation_experiment",
    "smooth_binary_targets",
    "smooth_labels",
    "smoothed_binary_cross_entropy_with_logits",
    "smoothed_cross_entropy",
    "solve_svm_dual",
    "stratified_folds",
    "symmetric_noise",
    "symmetric_noise_matrix",
    "train_test_split",
]
