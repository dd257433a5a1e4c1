"""Model compression: pruning, factorisation, distillation, sharing, quantisation.

Stands on :mod:`attnzoo.attention` and :mod:`attnzoo.transformers_zoo`; nothing is
exported yet.
"""

__all__: list[str] = []
