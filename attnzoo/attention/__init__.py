"""Attention kernels: normalisers, score functions, attention modules, memories, pooling."""

from .entmax import entmax15, entmax_bisect, sparsemax
from .normalizers import (
    Normalizer,
    available_normalizers,
    get_normalizer,
    gumbel_softmax,
    hardmax,
    masked_normalize,
    register_normalizer,
    softmax,
)

__all__ = [
    "Normalizer",
    "available_normalizers",
    "entmax15",
    "entmax_bisect",
    "get_normalizer",
    "gumbel_softmax",
    "hardmax",
    "masked_normalize",
    "register_normalizer",
    "softmax",
    "sparsemax",
]
