"""Robustness to label noise: flipping, smoothing, calibration, sanitisation, attacks.

Stands on :mod:`attnzoo.attention` and :mod:`attnzoo.transformers_zoo`; nothing is
exported yet.
"""

__all__: list[str] = []
