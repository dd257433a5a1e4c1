"""Sparse normalisers: sparsemax, 1.5-entmax and alpha-entmax (bisection).

Provisional forward passes through autograd; to be replaced by custom autograd
Functions with closed-form backward passes.
"""

from __future__ import annotations

import torch
from torch import Tensor


def sparsemax(x: Tensor, dim: int = -1) -> Tensor:
    """Euclidean projection of ``x`` onto the simplex along ``dim`` (Martins & Astudillo 2016)."""
    z = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    z = z.transpose(dim, -1)
    empty = torch.isneginf(z).all(-1, keepdim=True)
    z = z.masked_fill(empty, 0.0)
    z = z - z.max(-1, keepdim=True).values
    srt = z.sort(-1, descending=True).values
    k = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype, device=z.device)
    csum = srt.cumsum(-1) - 1
    support = (k * srt > csum).sum(-1, keepdim=True)
    tau = csum.gather(-1, support - 1) / support.to(z.dtype)
    p = (z - tau).clamp(min=0).masked_fill(empty, 0.0)
    return p.transpose(dim, -1).to(x.dtype)


def entmax15(x: Tensor, dim: int = -1) -> Tensor:
    """1.5-entmax along ``dim`` (Peters et al. 2019)."""
    return entmax_bisect(x, 1.5, dim=dim)


def entmax_bisect(x: Tensor, alpha: float | Tensor = 1.5, dim: int = -1, n_iter: int = 50) -> Tensor:
    """alpha-entmax along ``dim`` by bisection on the threshold."""
    z = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    empty = torch.isneginf(z).all(dim, keepdim=True)
    z = z.masked_fill(empty, 0.0)
    a = torch.as_tensor(alpha, dtype=z.dtype, device=z.device)
    z = z * (a - 1)
    mx = z.max(dim, keepdim=True).values
    lo = mx - 1
    hi = mx - (1.0 / z.shape[dim]) ** (a - 1)
    for _ in range(n_iter):
        mid = (lo + hi) / 2
        p = (z - mid).clamp(min=0) ** (1 / (a - 1))
        big = p.sum(dim, keepdim=True) >= 1
        lo = torch.where(big, mid, lo)
        hi = torch.where(big, hi, mid)
    p = (z - lo).clamp(min=0) ** (1 / (a - 1))
    p = p / p.sum(dim, keepdim=True)
    return p.masked_fill(empty, 0.0).to(x.dtype)
