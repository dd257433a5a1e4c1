"""Hard (stochastic) attention of Xu et al. (2015), "Show, attend and tell".

The attention distribution ``alpha = normalizer(score(query, keys))`` is a categorical
distribution over source positions; hard attention selects ONE position ``s`` and the
context is that key, ``z = keys[s]``. Selecting is not differentiable, so training uses
one of two estimators:

* ``"reinforce"`` — sample ``s ~ Categorical(alpha)`` and return ``log alpha_s``; the caller
  turns a reward into the score-function (REINFORCE) gradient with :func:`reinforce_loss`,
  with a moving-average baseline (:class:`MovingAverageBaseline`) and an entropy bonus,
  the two variance reductions of the paper (section 4.1).
* ``"gumbel"`` — a Gumbel-softmax sample with temperature ``tau`` (Jang et al. 2017):
  the forward value is one-hot, the gradient is that of the soft sample (straight-through).

With ``"reinforce"``, Xu et al. (section 4.1) further lower the variance by using, with
probability 0.5 for a given minibatch, the expected context ``sum_s alpha_s keys[s]`` (soft
attention) instead of a sample: ``expected_context_prob=0.5``. One draw decides for the
whole forward call; such a call has no REINFORCE term (``log_prob = 0``) and its gradient
flows through ``alpha`` as in soft attention.

In ``eval()`` the module is deterministic: ``s = argmax alpha`` (ties to the first index).
Masked positions have ``alpha = 0`` and are never selected; a query with no allowed key
gets zero weights, a zero context, ``log_prob = 0`` and ``index = -1``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .normalizers import Normalizer, gumbel_softmax, masked_normalize
from .rnn_attention import _ScoredAttention
from .scores import SCORE_NAMES, make_score
from .validation import check_positive, check_tensor

ESTIMATORS = ("reinforce", "gumbel")


@dataclass
class HardAttentionOutput:
    """What :class:`HardAttention` returns; ``[n_q]`` is present for a 3-D query.

    Attributes:
        context: ``(batch, [n_q,] key_dim)`` the selected key (zeros for an empty row).
        weights: ``(batch, [n_q,] n_k)`` one-hot selection (straight-through gradient
            with ``"gumbel"``, none with ``"reinforce"``); zeros for an empty row.
        log_prob: ``(batch, [n_q])`` ``log alpha_s`` of the selected position, with gradient
            to the score parameters; 0 for an empty row.
        probs: ``(batch, [n_q,] n_k)`` the attention distribution ``alpha``.
        index: ``(batch, [n_q])`` int64 selected position; -1 for an empty row.
        expected_context: True when this call used the expected context instead of a
            sample (see ``HardAttention(expected_context_prob=...)``): then ``context`` is
            ``probs @ keys``, ``weights`` is ``probs``, ``log_prob`` is 0 without gradient
            and ``index`` is ``argmax probs`` (-1 for an empty row).
    """

    context: Tensor
    weights: Tensor
    log_prob: Tensor
    probs: Tensor
    index: Tensor
    expected_context: bool = False


def _safe_log(probs: Tensor) -> Tensor:
    """``log(probs)`` with ``-inf`` for zeros and a zero (never NaN) gradient there."""
    tiny = torch.finfo(probs.dtype).tiny
    return torch.log(probs.clamp_min(tiny)).masked_fill(probs <= 0, float("-inf"))


def categorical_entropy(probs: Tensor) -> Tensor:
    """Entropy ``-sum p log p`` over the last axis; ``(..., n) -> (...)``; zero terms count 0."""
    check_tensor(probs, "probs")
    log_p = _safe_log(probs).masked_fill(probs <= 0, 0.0)
    return -(probs * log_p).sum(dim=-1)


def _match_reward(reward: Tensor | float, log_prob: Tensor, name: str) -> Tensor:
    """A reward of shape ``log_prob.shape[:k]`` (e.g. ``(batch,)``), padded to broadcast."""
    reward = torch.as_tensor(reward, dtype=log_prob.dtype, device=log_prob.device)
    if tuple(reward.shape) != tuple(log_prob.shape[: reward.dim()]):
        raise ValueError(
            f"`{name}` must have a leading part of the shape of `log_prob` "
            f"{tuple(log_prob.shape)}, e.g. (batch,), got {tuple(reward.shape)}"
        )
    return reward.reshape(*reward.shape, *([1] * (log_prob.dim() - reward.dim())))


def reinforce_loss(
    log_prob: Tensor,
    reward: Tensor | float,
    baseline: Tensor | float = 0.0,
    probs: Tensor | None = None,
    entropy_weight: float = 0.0,
) -> Tensor:
    """Surrogate loss whose gradient is the REINFORCE estimate of ``-grad E[reward]``.

    ``loss = -mean_batch( sum_steps (reward - baseline) * log_prob ) - entropy_weight * H``.
    ``reward`` and ``baseline`` are detached: they weight the score-function gradient
    ``grad log alpha_s``; a baseline that does not depend on the sample keeps the estimate
    unbiased and lowers its variance. In Xu et al. the reward is ``log p(y | s, a)``; add
    this loss to the task loss (``-log p(y | s, a)``), whose own gradient flows through the
    selected context.

    Args:
        log_prob: ``(batch, ...)`` log-probabilities of the sampled selections.
        reward: a scalar or a tensor of shape ``log_prob.shape[:k]``, e.g. ``(batch,)``
            for one reward per sequence of selections.
        baseline: a scalar or a tensor shaped like ``reward``.
        probs: ``(batch, ..., n_k)`` attention distributions, for the entropy bonus.
        entropy_weight: ``lambda_e`` >= 0; the bonus favours spread attention early on.
    Returns:
        scalar loss.
    """
    check_tensor(log_prob, "log_prob")
    if log_prob.dim() < 1:
        raise ValueError("`log_prob` must have a batch dimension, got a scalar")
    advantage = (
        _match_reward(reward, log_prob, "reward") - _match_reward(baseline, log_prob, "baseline")
    ).detach()
    per_sequence = (advantage * log_prob).reshape(log_prob.shape[0], -1).sum(dim=1)
    loss = -per_sequence.mean()
    if entropy_weight:
        if entropy_weight < 0:
            raise ValueError(f"`entropy_weight` must be >= 0, got {entropy_weight}")
        if probs is None:
            raise ValueError("`probs` is required when `entropy_weight` > 0")
        entropy = categorical_entropy(probs).reshape(probs.shape[0], -1).sum(dim=1)
        loss = loss - entropy_weight * entropy.mean()
    return loss


class MovingAverageBaseline(nn.Module):
    """Exponential moving average of the reward: ``b <- momentum * b + (1 - momentum) * r``.

    Xu et al. use ``momentum = 0.9`` on the mini-batch mean reward. The first update sets
    ``b`` to that mean rather than blending it with 0, so early steps are not biased
    towards a zero reward. Kept as buffers, so it is saved with the model's state dict.

    Args:
        momentum: in ``[0, 1)``.
    """

    value: Tensor
    initialized: Tensor

    def __init__(self, momentum: float = 0.9) -> None:
        super().__init__()
        if not 0 <= momentum < 1:
            raise ValueError(f"`momentum` must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.register_buffer("value", torch.zeros(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def forward(self) -> Tensor:
        """The current baseline, a scalar tensor."""
        return self.value

    @torch.no_grad()
    def update(self, reward: Tensor | float) -> Tensor:
        """Fold the mean of ``reward`` into the average; returns the new value."""
        mean = torch.as_tensor(reward, dtype=self.value.dtype).mean().to(self.value.device)
        if bool(self.initialized):
            self.value.mul_(self.momentum).add_((1 - self.momentum) * mean)
        else:
            self.value.copy_(mean)
            self.initialized.fill_(True)
        return self.value


def _check_expected_context_prob(value: object, estimator: str) -> None:
    """A number in ``[0, 1]``, above 0 only for the estimator it reduces the variance of."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"`expected_context_prob` must be a float in [0, 1], got {type(value).__name__}"
        )
    if not 0 <= value <= 1:  # also rejects NaN
        raise ValueError(f"`expected_context_prob` must be in [0, 1], got {value}")
    if value > 0 and estimator != "reinforce":
        raise ValueError(
            "`expected_context_prob` > 0 is a variance reduction of the 'reinforce' "
            f"estimator, got estimator={estimator!r}"
        )


class HardAttention(_ScoredAttention):
    """Hard attention: select one source position per query (Xu et al. 2015).

    Args:
        query_dim: decoder state size.
        key_dim: encoder output size (annotation vectors).
        hidden_dim: tanh size of the additive score (defaults to ``query_dim``).
        score: any name of :func:`~attnzoo.attention.scores.make_score`; the paper's
            attention MLP is ``"additive"``.
        estimator: ``"reinforce"`` or ``"gumbel"`` (used in training mode only).
        tau: Gumbel-softmax temperature (> 0).
        normalizer: maps scores to the distribution ``alpha`` (registry name or callable).
        normalizer_options: options of a named normaliser.
        baseline_momentum: momentum of the built-in :class:`MovingAverageBaseline`.
        expected_context_prob: in training with ``"reinforce"``, the probability that a
            forward call (one minibatch) returns the expected context ``probs @ keys``
            instead of a sampled key; Xu et al. use 0.5. In ``[0, 1]``; 0 (the default)
            always samples. Not used in ``eval()`` or with ``"gumbel"``.

    Call :meth:`forward` for the selection and :meth:`reinforce_loss` for the REINFORCE
    loss with the module's own baseline.
    """

    def __init__(
        self,
        query_dim: int,
        key_dim: int,
        hidden_dim: int | None = None,
        score: str = "additive",
        estimator: str = "reinforce",
        tau: float = 1.0,
        normalizer: str | Normalizer = "softmax",
        normalizer_options: Mapping[str, object] | None = None,
        baseline_momentum: float = 0.9,
        expected_context_prob: float = 0.0,
    ) -> None:
        super().__init__(query_dim, key_dim, normalizer, normalizer_options)
        if estimator not in ESTIMATORS:
            raise ValueError(f"`estimator` must be one of {list(ESTIMATORS)}, got {estimator!r}")
        if score not in SCORE_NAMES:
            raise ValueError(f"`score` must be one of {list(SCORE_NAMES)}, got {score!r}")
        check_positive(tau, "tau")
        _check_expected_context_prob(expected_context_prob, estimator)
        self.estimator = estimator
        self.tau = tau
        self.expected_context_prob = float(expected_context_prob)
        self.score = make_score(score, query_dim, key_dim, hidden_dim)
        self.baseline = MovingAverageBaseline(baseline_momentum)

    def forward(  # type: ignore[override]
        self,
        query: Tensor,
        keys: Tensor,
        mask: Tensor | None = None,
        projected_keys: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> HardAttentionOutput:
        """Select one key per query.

        Args:
            query: ``(batch, query_dim)`` or ``(batch, n_q, query_dim)``.
            keys: ``(batch, n_k, key_dim)``.
            mask: ``(batch, n_k)`` bool, True = may be selected.
            projected_keys: cached :meth:`precompute` output for these keys.
            generator: optional ``torch.Generator`` for reproducible sampling, and for the
                draw that picks the expected context (``expected_context_prob``).
        Returns:
            :class:`HardAttentionOutput`.
        """
        query, single, mask, scores = self._prepare(query, keys, mask, projected_keys)
        key_mask = None if mask is None else mask[:, None, :]
        probs = masked_normalize(scores, key_mask, self.normalize)  # (batch, n_q, n_k)
        has_key = probs.detach().sum(dim=-1) > 0  # (batch, n_q)
        if self._draws_expected_context(generator):
            return self._expected_output(probs, has_key, keys, mask, single)
        log_probs = _safe_log(probs)

        if self.training and self.estimator == "gumbel":
            weights = gumbel_softmax(log_probs, tau=self.tau, hard=True, generator=generator)
            index = weights.detach().argmax(dim=-1)
        else:
            index = self._select(probs.detach(), has_key, generator)
            weights = torch.zeros_like(probs).scatter_(-1, index[..., None], 1.0)
            weights = weights * has_key[..., None]

        log_prob = log_probs.gather(-1, index[..., None]).squeeze(-1)
        log_prob = torch.where(has_key, log_prob, torch.zeros_like(log_prob))
        index = torch.where(has_key, index, torch.full_like(index, -1))
        context, weights = self._finish(weights, keys, mask, single)
        if single:
            log_prob, probs, index = log_prob.squeeze(1), probs.squeeze(1), index.squeeze(1)
        return HardAttentionOutput(context, weights, log_prob, probs, index)

    def _draws_expected_context(self, generator: torch.Generator | None) -> bool:
        """One draw per call: whether this minibatch uses the expected context.

        No random number is consumed unless ``0 < expected_context_prob < 1``, so the
        default leaves the sampling stream exactly as it was.
        """
        prob = self.expected_context_prob
        if not self.training or self.estimator != "reinforce" or prob == 0:
            return False
        if prob == 1:
            return True
        device = None if generator is None else generator.device
        return bool(torch.rand((), generator=generator, device=device) < prob)

    def _expected_output(
        self, probs: Tensor, has_key: Tensor, keys: Tensor, mask: Tensor | None, single: bool
    ) -> HardAttentionOutput:
        """Soft attention's context ``probs @ keys``, in the form of a hard selection."""
        index = torch.where(has_key, probs.detach().argmax(dim=-1), -1)
        log_prob = torch.zeros(has_key.shape, dtype=probs.dtype, device=probs.device)
        context, weights = self._finish(probs, keys, mask, single)
        if single:
            log_prob, probs, index = log_prob.squeeze(1), probs.squeeze(1), index.squeeze(1)
        return HardAttentionOutput(context, weights, log_prob, probs, index, True)

    def _select(self, probs: Tensor, has_key: Tensor, generator: torch.Generator | None) -> Tensor:
        """``(batch, n_q, n_k)`` -> ``(batch, n_q)`` index: sampled in training, else argmax."""
        if not self.training:
            return probs.argmax(dim=-1)
        flat = probs.reshape(-1, probs.shape[-1]).float()
        # multinomial rejects an all-zero row; such rows are discarded by the caller.
        flat = torch.where(has_key.reshape(-1, 1), flat, torch.ones_like(flat))
        index = torch.multinomial(flat, 1, generator=generator)
        return index.reshape(probs.shape[:-1])

    def reinforce_loss(
        self,
        output: HardAttentionOutput,
        reward: Tensor | float,
        entropy_weight: float = 0.0,
        update_baseline: bool = True,
    ) -> Tensor:
        """:func:`reinforce_loss` against this module's moving-average baseline.

        The baseline used is the one from before this batch (so it does not depend on the
        current samples); it is then updated with the batch's mean reward. A batch that
        used the expected context has no REINFORCE term (only the entropy bonus remains)
        and leaves the baseline alone: it tracks the reward of sampled locations.

        Args:
            output: this module's output for the batch.
            reward: scalar or tensor of shape ``output.log_prob.shape[:k]``, e.g. ``(batch,)``.
            entropy_weight: weight of the entropy bonus on ``output.probs``.
            update_baseline: fold this batch's reward into the baseline afterwards.
        Returns:
            scalar loss.
        """
        baseline = self.baseline().to(output.log_prob.dtype).clone()
        loss = reinforce_loss(
            output.log_prob, reward, baseline, probs=output.probs, entropy_weight=entropy_weight
        )
        if update_baseline and not output.expected_context:
            self.baseline.update(torch.as_tensor(reward).detach())
        return loss

    def extra_repr(self) -> str:
        return (
            f"estimator={self.estimator!r}, tau={self.tau}, "
            f"expected_context_prob={self.expected_context_prob}"
        )


__all__ = [
    "HardAttention",
    "HardAttentionOutput",
    "MovingAverageBaseline",
    "categorical_entropy",
    "reinforce_loss",
]
