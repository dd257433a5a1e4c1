"""Neural Turing Machine (Graves, Wayne and Danihelka 2014) and a plain LSTM baseline.

An LSTM controller reads the input and the previous read vectors, and drives read and
write heads over an external memory ``(batch, N, M)``: ``N`` locations of width ``M``.
Every head turns its slice of the controller output into a weighting ``w`` ``(N,)`` over
the locations in four steps (section 3.3 of the paper), each a function of this module:

1. :func:`content_addressing` — ``w_c = softmax(beta * cosine(k, M[i]))`` (eq. 5-6);
2. :func:`interpolate` — ``w_g = g * w_c + (1 - g) * w_prev`` (eq. 7);
3. :func:`circular_shift` — ``w~(i) = sum_j w_g(j) s(i - j)`` over the allowed shifts (eq. 8);
4. :func:`sharpen` — ``w(i) = w~(i)^gamma / sum_j w~(j)^gamma`` with ``gamma >= 1`` (eq. 9).

A read head returns ``r = sum_i w(i) M[i]`` (:func:`memory_read`, eq. 2); a write head
erases then adds, ``M[i] <- M[i] * (1 - w(i) e) + w(i) a`` (:func:`memory_write`, eq. 3-4).

Shapes, with ``H`` heads of one kind:

* memory ``(batch, N, M)``; weightings ``(batch, H, N)``; keys, erase and add vectors
  ``(batch, H, M)``; key strengths ``beta``, gates ``g`` and ``gamma`` ``(batch, H)``;
  shift weightings ``(batch, H, S)`` over the ``S`` allowed shifts (e.g. ``-1, 0, 1``).
* :class:`NTM` takes ``inputs`` ``(batch, seq, input_size)`` and returns logits
  ``(batch, seq, output_size)``.

All heads address the memory as it was at the previous step; reads see that memory and
the writes then produce the next one. The initial memory, read vectors and controller
state are learned tensors and the initial weightings are a constant one-hot at location 0,
none of them depending on the batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention.normalizers import softmax
from ..attention.validation import check_positive, check_rank, check_size
from .tasks import binary_copy_task
from .training import TrainConfig, fit

_EPS = 1e-8


def _eps(dtype: torch.dtype) -> float:
    """A floor that is still a normal number in ``dtype`` (1e-8 is 0 in float16)."""
    return max(_EPS, torch.finfo(dtype).tiny)


def content_addressing(memory: Tensor, key: Tensor, beta: Tensor) -> Tensor:
    """Content weighting ``softmax_i(beta * cos(key, memory[i]))`` (eq. 5-6).

    Args:
        memory: ``(batch, N, M)``.
        key: ``(batch, H, M)``.
        beta: ``(batch, H)`` key strengths, ``>= 0``.
    Returns:
        ``(batch, H, N)`` weightings summing to 1 over ``N``.
    """
    check_rank(memory, 3, "memory", "(batch, N, M)")
    check_rank(key, 3, "key", "(batch, H, M)")
    check_size(key, -1, memory.shape[-1], "key", "memory width M")
    check_rank(beta, 2, "beta", "(batch, H)")
    # Norms are floored so that an all-zero row has similarity 0 and a finite gradient.
    eps = _eps(memory.dtype)
    key_n = key / key.norm(dim=-1, keepdim=True).clamp_min(eps)
    mem_n = memory / memory.norm(dim=-1, keepdim=True).clamp_min(eps)
    similarity = key_n @ mem_n.transpose(1, 2)  # (batch, H, N)
    return softmax(beta[..., None] * similarity, dim=-1)


def interpolate(content: Tensor, previous: Tensor, gate: Tensor) -> Tensor:
    """Gated weighting ``g * content + (1 - g) * previous`` (eq. 7).

    Args:
        content: ``(batch, H, N)``.
        previous: ``(batch, H, N)`` the head's weighting at the previous step.
        gate: ``(batch, H)`` in ``[0, 1]``.
    Returns:
        ``(batch, H, N)``.
    """
    g = gate[..., None]
    return g * content + (1.0 - g) * previous


def circular_shift(weights: Tensor, shift: Tensor, shifts: Sequence[int]) -> Tensor:
    """Circular convolution of ``weights`` with the shift weighting (eq. 8).

    ``out[i] = sum_k shift[k] * weights[(i - shifts[k]) mod N]``: shift ``+1`` moves the
    focus one location forward.

    Args:
        weights: ``(batch, H, N)``.
        shift: ``(batch, H, S)``, a distribution over ``shifts``.
        shifts: the ``S`` allowed integer offsets, e.g. ``(-1, 0, 1)``.
    Returns:
        ``(batch, H, N)``.
    """
    check_size(shift, -1, len(shifts), "shift", "number of allowed shifts S")
    rolled = torch.stack([weights.roll(s, dims=-1) for s in shifts], dim=-1)  # (b, H, N, S)
    return (rolled * shift[..., None, :]).sum(dim=-1)


def sharpen(weights: Tensor, gamma: Tensor) -> Tensor:
    """``w^gamma / sum(w^gamma)`` (eq. 9), undoing the blur of the shift.

    Args:
        weights: ``(batch, H, N)``, non-negative.
        gamma: ``(batch, H)``, ``>= 1``.
    Returns:
        ``(batch, H, N)`` summing to 1 over ``N``.
    """
    # The floor keeps pow's gradient finite at exact zeros.
    powered = weights.clamp_min(_eps(weights.dtype)) ** gamma[..., None]
    return powered / powered.sum(dim=-1, keepdim=True)


def memory_read(memory: Tensor, weights: Tensor) -> Tensor:
    """Read vectors ``r = sum_i w(i) memory[i]`` (eq. 2).

    Args:
        memory: ``(batch, N, M)``.
        weights: ``(batch, H, N)``.
    Returns:
        ``(batch, H, M)``.
    """
    return weights @ memory


def memory_write(memory: Tensor, weights: Tensor, erase: Tensor, add: Tensor) -> Tensor:
    """Erase then add (eq. 3-4), for ``H`` write heads at once.

    ``memory * prod_h (1 - w_h e_h^T) + sum_h w_h a_h^T``: the erasures multiply, so the
    order of the heads does not matter, then every head adds.

    Args:
        memory: ``(batch, N, M)``.
        weights: ``(batch, H, N)``.
        erase: ``(batch, H, M)`` in ``[0, 1]``.
        add: ``(batch, H, M)``.
    Returns:
        the new memory ``(batch, N, M)``.
    """
    keep = (1.0 - weights[..., :, None] * erase[..., None, :]).prod(dim=1)  # (batch, N, M)
    return memory * keep + weights.transpose(1, 2) @ add


@dataclass
class NTMConfig:
    """Sizes of an :class:`NTM`.

    Attributes:
        input_size: features per input step.
        output_size: features per output step (logits).
        controller_size: LSTM controller width.
        memory_size: ``N``, number of memory locations.
        memory_width: ``M``, width of a location.
        read_heads: number of read heads.
        write_heads: number of write heads.
        shifts: allowed shifts of the location addressing.
    """

    input_size: int
    output_size: int
    controller_size: int = 100
    memory_size: int = 128
    memory_width: int = 20
    read_heads: int = 1
    write_heads: int = 1
    shifts: tuple[int, ...] = field(default=(-1, 0, 1))

    def __post_init__(self) -> None:
        for name in (
            "input_size",
            "output_size",
            "controller_size",
            "memory_size",
            "memory_width",
            "read_heads",
            "write_heads",
        ):
            check_positive(getattr(self, name), name)
        self.shifts = tuple(int(s) for s in self.shifts)
        if not self.shifts or len(set(self.shifts)) != len(self.shifts):
            raise ValueError(f"`shifts` must be distinct offsets, got {self.shifts}")


@dataclass
class NTMState:
    """The recurrent state of an :class:`NTM` between steps.

    Attributes:
        memory: ``(batch, N, M)``.
        read_weights: ``(batch, read_heads, N)``.
        write_weights: ``(batch, write_heads, N)``.
        reads: ``(batch, read_heads, M)`` the last read vectors.
        controller: ``(h, c)`` of the LSTM controller, each ``(batch, controller_size)``.
    """

    memory: Tensor
    read_weights: Tensor
    write_weights: Tensor
    reads: Tensor
    controller: tuple[Tensor, Tensor]


class NTM(nn.Module):
    """Neural Turing Machine with an LSTM controller.

    Args:
        config: an :class:`NTMConfig`.
    """

    def __init__(self, config: NTMConfig) -> None:
        super().__init__()
        self.config = config
        n, m, c = config.memory_size, config.memory_width, config.controller_size
        r, w, s = config.read_heads, config.write_heads, len(config.shifts)
        self.controller = nn.LSTMCell(config.input_size + r * m, c)
        # Per head: key (M), beta, g, shift (S), gamma. All heads are addressed in one batch
        # of operations (reads first, then writes); write heads also emit erase and add (2M).
        self.head_size = m + 3 + s
        self.heads = nn.Linear(c, (r + w) * self.head_size)
        self.erase_add = nn.Linear(c, w * 2 * m)
        self.output = nn.Linear(c + r * m, config.output_size)
        # Batch-independent initial state.
        bound = 1.0 / math.sqrt(n + m)
        self.memory_init = nn.Parameter(torch.empty(n, m).uniform_(-bound, bound))
        self.reads_init = nn.Parameter(torch.zeros(r, m))
        self.controller_init = nn.Parameter(torch.zeros(2, c))
        self.weights_init: Tensor
        self.register_buffer("weights_init", F.one_hot(torch.tensor(0), n).float())

    def initial_state(self, batch_size: int, like: Tensor) -> NTMState:
        """The learned start state for ``batch_size`` sequences, on ``like``'s device/dtype."""
        cfg = self.config

        def expand(t: Tensor, *lead: int) -> Tensor:
            return t.to(like.dtype).expand(batch_size, *lead, *t.shape[-1:]).clone()

        memory = self.memory_init.to(like.dtype).expand(batch_size, -1, -1).clone()
        h0 = self.controller_init[0].to(like.dtype).expand(batch_size, -1)
        c0 = self.controller_init[1].to(like.dtype).expand(batch_size, -1)
        return NTMState(
            memory=memory,
            read_weights=expand(self.weights_init, cfg.read_heads),
            write_weights=expand(self.weights_init, cfg.write_heads),
            reads=self.reads_init.to(like.dtype).expand(batch_size, -1, -1),
            controller=(h0, c0),
        )

    def _address(self, params: Tensor, memory: Tensor, previous: Tensor) -> Tensor:
        """Head parameters ``(batch, H, M + 3 + S)`` -> weightings ``(batch, H, N)``."""
        m, s = self.config.memory_width, len(self.config.shifts)
        key = torch.tanh(params[..., :m])
        beta = F.softplus(params[..., m])
        gate = torch.sigmoid(params[..., m + 1])
        shift = torch.softmax(params[..., m + 2 : m + 2 + s], dim=-1)
        gamma = 1.0 + F.softplus(params[..., m + 2 + s])
        w = content_addressing(memory, key, beta)
        w = interpolate(w, previous, gate)
        w = circular_shift(w, shift, self.config.shifts)
        return sharpen(w, gamma)

    def step(self, x: Tensor, state: NTMState) -> tuple[Tensor, NTMState]:
        """One time step: ``x`` ``(batch, input_size)`` -> logits ``(batch, output_size)``."""
        cfg = self.config
        batch = x.shape[0]
        h, c = self.controller(
            torch.cat([x, state.reads.reshape(batch, -1)], dim=-1), state.controller
        )
        params = self.heads(h).reshape(batch, cfg.read_heads + cfg.write_heads, -1)
        previous = torch.cat([state.read_weights, state.write_weights], dim=1)
        weights = self._address(params, state.memory, previous)
        read_weights, write_weights = weights.split([cfg.read_heads, cfg.write_heads], dim=1)
        reads = memory_read(state.memory, read_weights)
        m = cfg.memory_width
        erase_add = self.erase_add(h).reshape(batch, cfg.write_heads, 2 * m)
        erase, add = torch.sigmoid(erase_add[..., :m]), torch.tanh(erase_add[..., m:])
        memory = memory_write(state.memory, write_weights, erase, add)
        logits = self.output(torch.cat([h, reads.reshape(batch, -1)], dim=-1))
        return logits, NTMState(memory, read_weights, write_weights, reads, (h, c))

    def forward(
        self, inputs: Tensor, state: NTMState | None = None, return_state: bool = False
    ) -> Tensor | tuple[Tensor, NTMState]:
        """Run over a sequence.

        Args:
            inputs: ``(batch, seq, input_size)``.
            state: where to start; the learned initial state when None.
            return_state: also return the final :class:`NTMState`.
        Returns:
            logits ``(batch, seq, output_size)`` (and the final state).
        """
        check_rank(inputs, 3, "inputs", "(batch, seq, input_size)")
        check_size(inputs, -1, self.config.input_size, "inputs", "input_size")
        if state is None:
            state = self.initial_state(inputs.shape[0], inputs)
        outputs = []
        for t in range(inputs.shape[1]):
            logits, state = self.step(inputs[:, t], state)
            outputs.append(logits)
        out = torch.stack(outputs, dim=1)
        return (out, state) if return_state else out


class LSTMBaseline(nn.Module):
    """A plain stacked LSTM with a linear read-out, the NTM paper's baseline.

    Args:
        input_size: features per input step.
        output_size: features per output step (logits).
        hidden_size: LSTM width.
        num_layers: stacked layers.
    """

    def __init__(
        self, input_size: int, output_size: int, hidden_size: int = 256, num_layers: int = 1
    ) -> None:
        super().__init__()
        for value, name in (
            (input_size, "input_size"),
            (output_size, "output_size"),
            (hidden_size, "hidden_size"),
            (num_layers, "num_layers"),
        ):
            check_positive(value, name)
        self.input_size = input_size
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True)
        self.output = nn.Linear(hidden_size, output_size)

    def forward(self, inputs: Tensor) -> Tensor:
        """``(batch, seq, input_size)`` -> logits ``(batch, seq, output_size)``."""
        check_rank(inputs, 3, "inputs", "(batch, seq, input_size)")
        check_size(inputs, -1, self.input_size, "inputs", "input_size")
        return self.output(self.lstm(inputs)[0])


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def copy_loss(model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
    """Binary cross-entropy of the copy task over the last ``length`` output steps.

    Args:
        inputs: ``(batch, 2 * length + 1, width + 1)`` from ``binary_copy_task``.
        targets: ``(batch, length, width)``.
    """
    length = targets.shape[1]
    logits = model(inputs)[:, -length:]
    return F.binary_cross_entropy_with_logits(logits, targets)


@torch.no_grad()
def copy_bit_error(model: nn.Module, inputs: Tensor, targets: Tensor) -> float:
    """Mean fraction of wrong bits (thresholded at 0.5) over the copied steps."""
    was_training = model.training
    model.eval()
    logits = model(inputs)[:, -targets.shape[1] :]
    model.train(was_training)
    return float(((logits > 0).float() != targets).float().mean())


def train_copy(
    model: nn.Module,
    *,
    width: int,
    min_len: int,
    max_len: int,
    steps: int,
    batch_size: int = 32,
    lr: float = 5e-3,
    seed: int = 0,
    progress: bool = True,
    description: str = "copy",
) -> list[float]:
    """Train ``model`` on ``binary_copy_task`` with lengths drawn from ``[min_len, max_len]``.

    Returns the per-step losses.
    """
    generator = torch.Generator().manual_seed(seed)

    def batches(step: int) -> tuple[Tensor, Tensor]:
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=generator))
        return binary_copy_task(batch_size, length, width, generator)

    def loss_fn(model: nn.Module, batch: object) -> Tensor:
        return copy_loss(model, *cast(tuple[Tensor, Tensor], batch))

    config = TrainConfig(
        steps=steps, lr=lr, clip_norm=10.0, progress=progress, description=description
    )
    return fit(model, loss_fn, batches, config).losses


def run_ntm_demo(
    steps: int | None = None, progress: bool = True, seed: int = 0
) -> dict[str, float]:
    """Train an NTM and an LSTM of similar size on copy (lengths 1-5), test on longer ones.

    Both see the same batches (32 sequences of 6-bit vectors, AdamW at 5e-3, 2000 steps).

    Returns:
        ``{ntm,lstm}_bit_error_train`` (lengths 1-5), ``{ntm,lstm}_bit_error_8`` and
        ``{ntm,lstm}_bit_error_10`` (lengths never seen in training), and the two
        parameter counts ``{ntm,lstm}_parameters``.
    """
    width, max_len, steps = 6, 5, steps or 2000
    torch.manual_seed(seed)
    ntm = NTM(NTMConfig(width + 1, width, controller_size=64, memory_size=16, memory_width=8))
    lstm = LSTMBaseline(width + 1, width, hidden_size=72)
    results: dict[str, float] = {}
    for name, model in (("ntm", ntm), ("lstm", lstm)):
        results[f"{name}_parameters"] = float(count_parameters(model))
        train_copy(
            model,
            width=width,
            min_len=1,
            max_len=max_len,
            steps=steps,
            batch_size=32,
            lr=5e-3,
            seed=seed,
            progress=progress,
            description=f"{name} copy",
        )
        generator = torch.Generator().manual_seed(seed + 1)
        errors = [
            copy_bit_error(model, *binary_copy_task(128, n, width, generator))
            for n in range(1, max_len + 1)
        ]
        results[f"{name}_bit_error_train"] = sum(errors) / len(errors)
        for n in (8, 10):
            batch = binary_copy_task(256, n, width, generator)
            results[f"{name}_bit_error_{n}"] = copy_bit_error(model, *batch)
    return results


__all__ = [
    "NTM",
    "LSTMBaseline",
    "NTMConfig",
    "NTMState",
    "circular_shift",
    "content_addressing",
    "copy_bit_error",
    "copy_loss",
    "count_parameters",
    "interpolate",
    "memory_read",
    "memory_write",
    "run_ntm_demo",
    "sharpen",
    "train_copy",
]
