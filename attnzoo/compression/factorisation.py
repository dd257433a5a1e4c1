"""Low-rank factorisation: a Linear as two thinner ones, an embedding table ALBERT-style.

Truncated SVD gives the best rank-``r`` approximation of a weight in Frobenius and spectral
norm (Eckart-Young), so the error falls monotonically as the rank grows: ``W = U S V^T`` is
replaced by ``(U_r sqrt(S_r)) (sqrt(S_r) V_r^T)``, a ``in -> r`` map without bias followed by
an ``r -> out`` map with the original bias. It saves parameters when
``r (in + out) < in * out``. The rank is given directly or chosen as the smallest keeping a
fraction ``energy`` of the squared singular values.

:class:`FactorisedEmbedding` is ALBERT's factorised embedding (Lan et al. 2020): a
``vocab x E`` table and a ``E -> H`` projection, initialised from the SVD of a trained
``vocab x H`` table.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention.validation import check_int, check_rank


def svd_rank(singular_values: Tensor, energy: float) -> int:
    """Smallest ``r`` with ``sum(s[:r]^2) >= energy * sum(s^2)``.

    Args:
        singular_values: ``(k,)`` in decreasing order.
        energy: fraction in ``(0, 1]``.
    """
    if not 0 < energy <= 1:
        raise ValueError(f"`energy` must be in (0, 1], got {energy}")
    power = singular_values.double() ** 2
    cumulative = power.cumsum(0) / power.sum().clamp_min(1e-300)
    return min(int((cumulative < energy - 1e-12).sum()) + 1, singular_values.numel())


def _truncated_svd(
    weight: Tensor, rank: int | None, energy: float | None
) -> tuple[Tensor, Tensor, int]:
    """``(left (out, r), right (r, in), r)`` with ``left @ right`` the best rank-r fit."""
    if (rank is None) == (energy is None):
        raise ValueError("give exactly one of `rank` and `energy`")
    u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    if rank is None:
        assert energy is not None
        rank = svd_rank(s, energy)
    else:
        check_int(rank, "rank")
        if rank > s.numel():
            raise ValueError(f"`rank` must be <= min(out, in) = {s.numel()}, got {rank}")
    root = s[:rank].sqrt()
    left = (u[:, :rank] * root).to(weight.dtype)
    right = (root[:, None] * vh[:rank]).to(weight.dtype)
    return left, right, rank


class LowRankLinear(nn.Module):
    """``second(first(x))``: a rank-``r`` linear map ``(..., in) -> (..., out)``.

    Parameters: ``first`` (Linear ``in -> rank``, no bias), ``second`` (Linear
    ``rank -> out``, with the original bias if any).
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.first = nn.Linear(in_features, rank, bias=False)
        self.second = nn.Linear(rank, out_features, bias=bias)

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, rank: int | None = None, energy: float | None = None
    ) -> LowRankLinear:
        """Factorise ``linear`` by truncated SVD at ``rank``, or at the smallest rank keeping
        ``energy`` of its squared singular values (exactly one of the two)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"`linear` must be an nn.Linear, got {type(linear).__name__}")
        left, right, r = _truncated_svd(linear.weight, rank, energy)
        weight = linear.weight
        new = cls(linear.in_features, linear.out_features, r, bias=linear.bias is not None)
        new.to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            new.first.weight.copy_(right)
            new.second.weight.copy_(left)
            if linear.bias is not None and new.second.bias is not None:
                new.second.bias.copy_(linear.bias)
        return new

    @property
    def weight(self) -> Tensor:
        """The product ``(out, in)`` (for inspection; the forward never forms it)."""
        return self.second.weight @ self.first.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.second(self.first(x))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def factorise_linears(
    model: nn.Module,
    rank: int | None = None,
    energy: float | None = None,
    only_if_smaller: bool = True,
    select: Callable[[str, nn.Linear], bool] | None = None,
) -> dict[str, int]:
    """Replace Linear layers of ``model`` by :class:`LowRankLinear`, in place.

    Args:
        model: any module.
        rank: the rank of every factorisation (capped at ``min(in, out)``), or
        energy: the retained fraction of squared singular values per layer.
        only_if_smaller: skip layers where the factorisation has no fewer parameters.
        select: ``(name, linear) -> bool`` choosing layers; default all.

    Returns:
        ``{layer name: rank}`` of the replaced layers.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module, got {type(model).__name__}")
    if (rank is None) == (energy is None):
        raise ValueError("give exactly one of `rank` and `energy`")
    chosen = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and (select is None or select(name, module))
    ]
    replaced: dict[str, int] = {}
    for name, linear in chosen:
        r = None if rank is None else min(rank, linear.in_features, linear.out_features)
        low = LowRankLinear.from_linear(linear, rank=r, energy=energy)
        full = linear.in_features * linear.out_features
        if only_if_smaller and low.rank * (linear.in_features + linear.out_features) >= full:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, low)
        replaced[name] = low.rank
    return replaced


class FactorisedEmbedding(nn.Module):
    """ALBERT's factorised embedding: ``ids -> table[ids] @ projection^T``.

    ``(...)`` ids -> ``(..., dim)``. ``weight`` is the full ``(vocab, dim)`` product, so a
    tied output layer that reads ``word_embeddings.weight`` keeps working.

    Parameters: ``table`` (Embedding ``vocab x size``), ``projection`` (Linear
    ``size -> dim``, no bias).
    """

    def __init__(
        self, num_embeddings: int, embedding_dim: int, size: int, padding_idx: int | None = None
    ) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = padding_idx
        self.table = nn.Embedding(num_embeddings, size, padding_idx=padding_idx)
        self.projection = nn.Linear(size, embedding_dim, bias=False)

    @classmethod
    def from_embedding(
        cls, embedding: nn.Embedding, size: int | None = None, energy: float | None = None
    ) -> FactorisedEmbedding:
        """Factorise a trained table by truncated SVD (``size`` = rank ``E``, or ``energy``)."""
        if not isinstance(embedding, nn.Embedding):
            raise TypeError(f"`embedding` must be an nn.Embedding, got {type(embedding).__name__}")
        check_rank(embedding.weight, 2, "embedding.weight", "(vocab, dim)")
        left, right, r = _truncated_svd(embedding.weight, size, energy)
        new = cls(embedding.num_embeddings, embedding.embedding_dim, r, embedding.padding_idx)
        new.to(device=embedding.weight.device, dtype=embedding.weight.dtype)
        with torch.no_grad():
            new.table.weight.copy_(left)
            new.projection.weight.copy_(right.T)
        return new

    @property
    def weight(self) -> Tensor:
        """The full ``(vocab, dim)`` table the factors represent."""
        return self.projection(self.table.weight)

    def forward(self, ids: Tensor) -> Tensor:
        return self.projection(F.embedding(ids, self.table.weight, self.padding_idx))

    def extra_repr(self) -> str:
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, size={self.table.embedding_dim}, "
            f"padding_idx={self.padding_idx}"
        )


def factorise_embedding(
    model: nn.Module, name: str, size: int | None = None, energy: float | None = None
) -> FactorisedEmbedding:
    """Replace the embedding ``name`` (e.g. ``"bert.embeddings.word_embeddings"``) of
    ``model`` by its :class:`FactorisedEmbedding`, in place, and return it."""
    embedding = model.get_submodule(name)
    factorised = FactorisedEmbedding.from_embedding(embedding, size, energy)  # type: ignore[arg-type]
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, factorised)
    return factorised


__all__ = [
    "FactorisedEmbedding",
    "LowRankLinear",
    "factorise_embedding",
    "factorise_linears",
    "svd_rank",
]
