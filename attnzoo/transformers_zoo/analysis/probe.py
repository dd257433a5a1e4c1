"""An attention-based probing classifier for dependency heads (Clark et al. 2019, sec. 5).

Every head's word-level attention map, read in both directions, votes for each word's
head; the weight of a head's vote is learned, and with word features it depends on the
pair of words (Clark et al.'s "Attn + GloVe" probe):

    score(d -> h) = sum_k (w_k + W_k [v_h; v_d]) A_k[d, h] + (u_k + U_k [v_h; v_d]) A_k[h, d]
    score(d -> ROOT) = b + r . v_d

and ``p(h | d)`` is the softmax of the scores over the sentence's other words and ROOT.
Only ``w, W, u, U, b, r`` are trained: the model under study is frozen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...attention.validation import check_int, check_rank
from .trees import uas


@dataclass
class ProbeBatch:
    """Sentences padded to ``W`` words.

    Attributes:
        attention: ``(batch, K, W, W)`` word attention, ``K = layers * heads``.
        features: ``(batch, W, F)`` word features, or None.
        heads: ``(batch, W)`` gold heads (0 = ROOT, 1-based; -100 = padding).
        mask: ``(batch, W)`` True = real word.
    """

    attention: Tensor
    features: Tensor | None
    heads: Tensor
    mask: Tensor


def make_probe_batch(
    word_attentions: Sequence[Tensor],
    gold: Sequence[Sequence[int]] | None = None,
    features: Sequence[Tensor] | None = None,
) -> ProbeBatch:
    """Pad sentences into a :class:`ProbeBatch`.

    Args:
        word_attentions: per sentence ``(layers, heads, W_i, W_i)``.
        gold: per sentence the 1-based heads (length ``W_i``); None for prediction only.
        features: per sentence ``(W_i, F)`` word features, or None.
    """
    if not word_attentions:
        raise ValueError("`word_attentions` must hold at least one sentence")
    for name, other in (("gold", gold), ("features", features)):
        if other is not None and len(other) != len(word_attentions):
            raise ValueError(
                f"`{name}` must hold {len(word_attentions)} sentences, got {len(other)}"
            )
    sizes = [a.shape[-1] for a in word_attentions]
    w, b = max(sizes), len(sizes)
    k = word_attentions[0].shape[0] * word_attentions[0].shape[1]
    attention = torch.zeros(b, k, w, w)
    heads = torch.full((b, w), -100, dtype=torch.long)
    mask = torch.zeros(b, w, dtype=torch.bool)
    feats = None if features is None else torch.zeros(b, w, features[0].shape[-1])
    for i, (a, n) in enumerate(zip(word_attentions, sizes, strict=True)):
        check_rank(a, 4, "word_attentions[i]", "(layers, heads, W, W)")
        if a.shape[0] * a.shape[1] != k:
            raise ValueError(f"every sentence must have {k} heads, got {a.shape[0] * a.shape[1]}")
        attention[i, :, :n, :n] = a.flatten(0, 1).float()
        mask[i, :n] = True
        if gold is not None:
            if len(gold[i]) != n:
                raise ValueError(f"sentence {i}: {n} words but {len(gold[i])} gold heads")
            heads[i, :n] = torch.tensor(list(gold[i]))
        if feats is not None and features is not None:
            if features[i].shape[0] != n:
                raise ValueError(f"sentence {i}: {n} words but {features[i].shape[0]} features")
            feats[i, :n] = features[i].float()
    return ProbeBatch(attention, feats, heads, mask)


class AttentionProbe(nn.Module):
    """Clark et al.'s probe: learned per-head weights over both attention directions.

    Args:
        num_maps: ``K = layers * heads`` attention maps per sentence.
        feature_dim: size of the word features (0: the attention-only probe).
    """

    def __init__(self, num_maps: int, feature_dim: int = 0) -> None:
        super().__init__()
        check_int(num_maps, "num_maps")
        check_int(feature_dim, "feature_dim", minimum=0)
        self.feature_dim = feature_dim
        self.weights = nn.Parameter(torch.zeros(2, num_maps))  # w (d -> h) and u (h -> d)
        self.pair = nn.Linear(2 * feature_dim, 2 * num_maps, bias=False) if feature_dim else None
        self.root_bias = nn.Parameter(torch.zeros(()))
        self.root = nn.Linear(feature_dim, 1, bias=False) if feature_dim else None
        if self.pair is not None:
            nn.init.zeros_(self.pair.weight)

    def forward(self, batch: ProbeBatch) -> Tensor:
        """Scores ``(batch, W, W + 1)``: row ``d`` over candidates ROOT (column 0) and the
        words (column ``h``); padding and ``h = d`` are ``-inf``."""
        a = batch.attention  # (b, K, W, W): a[.., d, h] attention from d to h
        b, k, w, _ = a.shape
        if k != self.weights.shape[1]:
            raise ValueError(f"the batch has {k} attention maps, the probe {self.weights.shape[1]}")
        to_head, from_head = a, a.transpose(-1, -2)
        coef_to = self.weights[0].view(1, k, 1, 1)
        coef_from = self.weights[1].view(1, k, 1, 1)
        if self.pair is not None:
            if batch.features is None or batch.features.shape[-1] != self.feature_dim:
                raise ValueError(f"the probe needs word features of size {self.feature_dim}")
            v = batch.features
            pairs = torch.cat(
                [v.unsqueeze(1).expand(b, w, w, -1), v.unsqueeze(2).expand(b, w, w, -1)], -1
            )  # (b, d, h, 2F): [v_h; v_d]
            extra = self.pair(pairs).permute(0, 3, 1, 2)  # (b, 2K, d, h)
            coef_to = coef_to + extra[:, :k]
            coef_from = coef_from + extra[:, k:]
        words = (coef_to * to_head + coef_from * from_head).sum(1)  # (b, d, h)
        root = self.root_bias.expand(b, w, 1)
        if self.root is not None and batch.features is not None:
            root = root + self.root(batch.features)
        scores = torch.cat([root, words], dim=-1)
        keys = batch.mask[:, None, :].expand(b, w, w)
        allowed = torch.cat([torch.ones(b, w, 1, dtype=torch.bool), keys], -1)
        allowed = allowed & ~torch.eye(w + 1, dtype=torch.bool)[1:].unsqueeze(0)
        return scores.masked_fill(~allowed, float("-inf"))

    @torch.no_grad()
    def predict(self, batch: ProbeBatch) -> list[list[int]]:
        """Each real word's most probable head (1-based, 0 = ROOT), per sentence."""
        best = self(batch).argmax(-1)
        return [row[m].tolist() for row, m in zip(best, batch.mask, strict=True)]


def train_attention_probe(
    batch: ProbeBatch, steps: int = 300, lr: float = 0.05, seed: int = 0
) -> AttentionProbe:
    """Fit an :class:`AttentionProbe` on ``batch`` (full-batch Adam on the cross-entropy
    of the gold heads)."""
    check_int(steps, "steps")
    if bool((batch.heads[batch.mask] < 0).any()):
        raise ValueError("`batch` must hold gold heads for every real word")
    torch.manual_seed(seed)
    feature_dim = 0 if batch.features is None else batch.features.shape[-1]
    probe = AttentionProbe(batch.attention.shape[1], feature_dim)
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr)
    for _ in range(steps):
        scores = probe(batch)
        loss = F.cross_entropy(scores[batch.mask], batch.heads[batch.mask])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return probe.eval()


def probe_uas(probe: AttentionProbe, batch: ProbeBatch) -> float:
    """Directed UAS of the probe's predictions on ``batch`` (the root word included)."""
    gold = [row[m].tolist() for row, m in zip(batch.heads, batch.mask, strict=True)]
    return uas(probe.predict(batch), gold)


__all__ = ["AttentionProbe", "ProbeBatch", "make_probe_batch", "probe_uas", "train_attention_probe"]
