"""attnzoo's benchmark suite: ``python -m benchmarks [--quick] [--device ...] [--only ...]``.

Every row times an attnzoo kernel against a baseline measured in the same run (PyTorch's
SDPA and ``nn.MultiheadAttention``, the ``entmax`` package, a dense layer, a naive
formula), reports the ratio and checks the outputs agree. See ``benchmarks/cli.py`` for
the options and ``benchmarks/suites/`` for what each suite compares.
"""
