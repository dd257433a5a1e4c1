"""Raw embeddings: vocabulary neighbours, vectors projected to the vocabulary, similarities.

* :func:`nearest_tokens`: the rows of an input-embedding matrix closest (cosine) to a
  token's row: what the model learned a token is like before any context.
* :func:`project_to_vocabulary`: every layer's contextual vector pushed through a BERT
  masked-LM head (the "logit lens"): which words each layer already predicts at each
  position.
* :func:`pairwise_cosines` / :func:`similarity_histogram` /
  :func:`save_similarity_histograms`: the distribution of cosine similarities of a set of
  vectors (contextual vectors are anisotropic: far from centred on 0).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...attention.validation import check_int, check_rank, check_tensor


def nearest_tokens(
    embeddings: Tensor, token_id: int, k: int = 10, exclude_self: bool = True
) -> tuple[Tensor, Tensor]:
    """The ``k`` vocabulary rows nearest to row ``token_id`` by cosine similarity.

    Args:
        embeddings: ``(vocab, dim)`` input-embedding matrix (e.g.
            ``model.embeddings.word_embeddings.weight``).
        token_id: the query row.
        k: neighbours returned.
        exclude_self: leave the query row out.

    Returns:
        ``(ids (k,), cosines (k,))``, most similar first.
    """
    check_rank(embeddings, 2, "embeddings", "(vocab, dim)")
    check_int(k, "k")
    vocab = embeddings.shape[0]
    if not 0 <= int(token_id) < vocab:
        raise ValueError(f"`token_id` must be in [0, {vocab}), got {token_id}")
    if k > vocab - int(exclude_self):
        raise ValueError(f"`k` must be at most {vocab - int(exclude_self)}, got {k}")
    weights = F.normalize(embeddings.detach().float(), dim=-1)
    cosines = weights @ weights[int(token_id)]
    if exclude_self:
        cosines[int(token_id)] = float("-inf")
    values, ids = cosines.topk(k)
    return ids, values


@torch.no_grad()
def project_to_vocabulary(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    top_k: int = 5,
) -> tuple[Tensor, Tensor]:
    """Every layer's hidden states through a BERT masked-LM head.

    Args:
        model: a :class:`~attnzoo.transformers_zoo.BertForMaskedLM` (or
            :class:`~attnzoo.transformers_zoo.BertForPreTraining`): its ``bert`` encoder
            and ``cls.predictions`` head.
        input_ids: ``(batch, n)``.
        attention_mask: ``(batch, n)`` 1/True = real token.
        top_k: most probable tokens kept per position.

    Returns:
        ``(ids, probabilities)``, both ``(layers + 1, batch, n, top_k)``: index 0 is the
        embedding output, index ``l`` the output of layer ``l``; the last equals the
        model's own prediction.
    """
    bert = getattr(model, "bert", None)
    head = getattr(getattr(model, "cls", None), "predictions", None)
    if bert is None or head is None:
        raise TypeError(
            f"`model` must be a BERT masked-LM model (with `bert` and `cls.predictions`), "
            f"got {type(model).__name__}"
        )
    check_tensor(input_ids, "input_ids")
    check_int(top_k, "top_k")
    was_training = model.training
    model.eval()
    try:
        out = bert(input_ids, attention_mask, output_hidden_states=True)
        words = bert.embeddings.word_embeddings.weight
        probs = torch.stack([head(h, words).float().softmax(-1) for h in out.hidden_states])
    finally:
        model.train(was_training)
    values, ids = probs.topk(top_k, dim=-1)
    return ids, values


def pairwise_cosines(vectors: Tensor, others: Tensor | None = None) -> Tensor:
    """Cosine similarities: of every pair of distinct rows of ``vectors`` ``(N, D)``
    (``N (N - 1) / 2`` values), or of every row against every row of ``others``
    ``(M, D)`` (``N M`` values)."""
    check_rank(vectors, 2, "vectors", "(N, dim)")
    a = F.normalize(vectors.detach().float(), dim=-1)
    if others is None:
        if a.shape[0] < 2:
            raise ValueError(f"`vectors` must hold at least 2 rows, got {a.shape[0]}")
        rows, cols = torch.triu_indices(a.shape[0], a.shape[0], offset=1)
        return (a @ a.T)[rows, cols]
    check_rank(others, 2, "others", "(M, dim)")
    if others.shape[1] != a.shape[1]:
        raise ValueError(f"`others` must have dim {a.shape[1]}, got {others.shape[1]}")
    return (a @ F.normalize(others.detach().float(), dim=-1).T).flatten()


def similarity_histogram(
    vectors: Tensor, bins: int = 20, others: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Histogram of :func:`pairwise_cosines` over ``[-1, 1]``: ``(counts (bins,),
    edges (bins + 1,))``."""
    check_int(bins, "bins")
    cosines = pairwise_cosines(vectors, others)
    counts = torch.histc(cosines.clamp(-1, 1), bins=bins, min=-1.0, max=1.0)
    return counts, torch.linspace(-1.0, 1.0, bins + 1)


def save_similarity_histograms(
    groups: dict[str, Tensor], path: str | os.PathLike[str], bins: int = 40
) -> Path:
    """One overlaid histogram of pairwise cosines per named group of vectors, as a PNG."""
    if not groups:
        raise ValueError("`groups` must name at least one set of vectors")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("histograms need matplotlib: pip install 'attnzoo[viz]'") from error
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, vectors in groups.items():
        values = pairwise_cosines(vectors).numpy()
        ax.hist(values, bins=bins, range=(-1, 1), alpha=0.5, density=True, label=name)
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = [
    "nearest_tokens",
    "pairwise_cosines",
    "project_to_vocabulary",
    "save_similarity_histograms",
    "similarity_histogram",
]
