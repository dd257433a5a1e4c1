"""``compression``: zoo BERT forward, dense vs half the heads pruned vs dynamic int8 vs
QAT-converted int8.

Each compressed model is timed against the dense model it came from, in the same run, so
the ratio is the speed-up the compression really buys on this machine. The correctness
column checks that the compressed model computes what it should, not that it equals the
dense one: the head-pruned model against the dense model with the same heads gated to zero
(:class:`~attnzoo.compression.HeadGates`), the int8 model against a float emulation of
dynamic int8 arithmetic, the QAT-converted int8 model against the fake-quantised model it
was converted from.
"""

from __future__ import annotations

import copy
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..harness import Case, Context, Setup, Suite
from .bert import real_tokens


def _dense_bert(ctx: Context, shape: dict[str, int], dtype: torch.dtype) -> Any:
    from attnzoo.transformers_zoo.bert import BertConfig, BertModel

    config = BertConfig(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        intermediate_size=4 * shape["hidden"],
    )
    with ctx.device:
        model = BertModel(config)
    return model.to(dtype=dtype).eval()


def _inputs(ctx: Context, shape: dict[str, int], batch: int, n: int) -> tuple[Tensor, Tensor]:
    ids = torch.randint(1, shape["vocab"], (batch, n), device=ctx.device)
    real = real_tokens(ctx, batch, n)
    return ids.masked_fill(~real, 0), real


def _build_head_pruned(ctx: Context, shape: dict[str, int], batch: int, n: int) -> Setup:
    from attnzoo.compression import HeadGates, attention_modules, prune_heads

    dense = _dense_bert(ctx, shape, ctx.dtype)
    pruned = copy.deepcopy(dense)
    removed = list(range(shape["heads"] // 2))
    for _, attention in attention_modules(pruned):
        prune_heads(attention, removed)
    # One embedding table (the same Parameter) in both: the leaf whose gradient is compared.
    shared = dense.embeddings.word_embeddings.weight
    pruned.embeddings.word_embeddings.weight = shared
    gates = HeadGates(dense)
    with torch.no_grad():
        for gate in gates.gates:
            gate[removed] = 0
    ids, real = _inputs(ctx, shape, batch, n)

    def run_pruned() -> Tensor:
        return pruned(ids, attention_mask=real).last_hidden_state[real]

    def run_dense() -> Tensor:
        return dense(ids, attention_mask=real).last_hidden_state[real]

    def run_gated() -> Tensor:
        with gates:
            return dense(ids, attention_mask=real).last_hidden_state[real]

    return Setup(
        ours=run_pruned,
        baseline=run_dense,
        inputs=(shared,),
        ours_params=tuple(p for p in pruned.parameters() if p is not shared),
        baseline_params=tuple(p for p in dense.parameters() if p is not shared),
        reference=run_gated,
    )


class _EmulatedDynamicInt8(nn.Module):
    """A dynamically quantised Linear computed in float: the input quantised per tensor
    to unsigned 7-bit codes (``reduce_range``, as the x86/fbgemm kernels do) with
    min/max parameters chosen per call, times the dequantised int8 weight."""

    def __init__(self, quantized: Any) -> None:
        super().__init__()
        self.weight = quantized.weight().dequantize()
        self.bias = quantized.bias()

    def forward(self, x: Tensor) -> Tensor:
        scale, zero_point = torch._choose_qparams_per_tensor(x, True)
        codes = torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 127)
        return F.linear(codes, self.weight, self.bias)


def _emulate(quantized_model: nn.Module) -> nn.Module:
    emulated = copy.deepcopy(quantized_model)
    for name, module in list(emulated.named_modules()):
        if isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
            parent, _, child = name.rpartition(".")
            target = emulated.get_submodule(parent) if parent else emulated
            setattr(target, child, _EmulatedDynamicInt8(module))
    return emulated


def _build_int8(ctx: Context, shape: dict[str, int], batch: int, n: int) -> Setup:
    from attnzoo.compression import quantize_dynamic_int8

    dense = _dense_bert(ctx, shape, torch.float32)
    quantized = quantize_dynamic_int8(dense)
    emulated = _emulate(quantized)
    ids, real = _inputs(ctx, shape, batch, n)

    def run(model: nn.Module) -> Tensor:
        return model(ids, attention_mask=real).last_hidden_state[real]

    return Setup(
        ours=partial(run, quantized),
        baseline=partial(run, dense),
        reference=partial(run, emulated),
    )


def _build_qat_int8(ctx: Context, shape: dict[str, int], batch: int, n: int) -> Setup:
    from attnzoo.compression import convert_qat, prepare_qat

    dense = _dense_bert(ctx, shape, torch.float32)
    ids, real = _inputs(ctx, shape, batch, n)
    fake_quantised = copy.deepcopy(dense)
    prepare_qat(fake_quantised, "lsq")
    fake_quantised.train()
    with torch.no_grad():  # the first batch initialises the LSQ steps
        fake_quantised(ids, attention_mask=real)
    fake_quantised.eval()
    converted = convert_qat(fake_quantised)

    def run(model: nn.Module) -> Tensor:
        return model(ids, attention_mask=real).last_hidden_state[real]

    return Setup(
        ours=partial(run, converted),
        baseline=partial(run, dense),
        reference=partial(run, fake_quantised),
    )


def cases(ctx: Context) -> list[Case]:
    base = {"hidden": 768, "heads": 12, "vocab": 30522}
    shape = ctx.pick(
        tiny={"hidden": 32, "heads": 4, "layers": 2, "vocab": 100},
        quick={"hidden": 256, "heads": 4, "layers": 4, "vocab": 8000},
        full={**base, "layers": 4},
        cuda_quick={**base, "layers": 4},
        cuda_full={**base, "layers": 12},
    )
    batch, n = ctx.pick(tiny=(2, 16), quick=(8, 128), full=(8, 128))
    size = f"{shape['layers']}x{shape['hidden']}, batch {batch}"
    params = {"batch": batch, **shape, "intermediate": 4 * shape["hidden"]}
    found = [
        Case(
            suite="compression",
            name=f"half the heads pruned ({shape['heads']} -> {shape['heads'] // 2}), {size}",
            n=n,
            params=params,
            build=partial(_build_head_pruned, ctx, shape, batch, n),
        )
    ]
    if not ctx.is_cuda:  # PyTorch's dynamic int8 kernels are CPU-only
        found.append(
            Case(
                suite="compression",
                name=f"dynamic int8 Linear layers, {size}",
                n=n,
                params=params,
                build=partial(_build_int8, ctx, shape, batch, n),
                backward=False,
                dtype=torch.float32,
            )
        )
        found.append(
            Case(
                suite="compression",
                name=f"LSQ QAT converted to int8 (static scales), {size}",
                n=n,
                params=params,
                build=partial(_build_qat_int8, ctx, shape, batch, n),
                backward=False,
                dtype=torch.float32,
            )
        )
    return found


NOTE = (
    "Zoo `BertModel` forward on a padded batch (real lengths spread from n/2 to n; sizes as "
    "in the `bert` suite), eval mode; baseline = the dense model the compressed one came "
    "from. Head-pruned: the first half of every layer's heads removed physically "
    "(query/key/value rows and out-projection columns sliced away), checked against the "
    "dense model with those heads gated to zero; `fwd+bwd` compares the gradient of the "
    "shared word-embedding table. Dynamic int8: every Linear quantised with "
    "`torch.ao.quantization.quantize_dynamic` (CPU only, float32, forward only), checked "
    "against a float emulation of the same arithmetic (activations quantised per tensor to "
    "7-bit codes, int8 weights). QAT int8: every Linear prepared for LSQ (8-bit, steps "
    "initialised on the timed batch), then converted by `convert_qat` (int8 codes, learned "
    "static input scales, `torch._int_mm` int32 accumulation; CPU only), checked against "
    "the fake-quantised model it came from. In both int8 rows the two sides agree to float32 "
    "rounding within a layer, but an activation that sits within that rounding of a "
    "quantisation boundary is given the neighbouring code on one side: that moves the "
    "outputs downstream by about one activation step times a weight row, of order 1e-2 at "
    "these sizes, so these rows show a diff above the float32 tolerance (at tiny sizes, "
    "where no activation falls that close, they agree to 1e-6; the `attnzoo.compression` "
    "tests check the codes bit for bit). The error against the float model is reported by "
    "those tests, not here. The ratio is the speed-up (below 1) or slow-down the "
    "compression buys on this machine."
)

SUITE = Suite(
    name="compression",
    title="compressed zoo BERT (head-pruned, dynamic int8, QAT int8) vs the dense model",
    note=NOTE,
    cases=cases,
)
