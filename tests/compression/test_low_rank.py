"""Low-rank factorisation of Linear layers and ALBERT-style embeddings."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest
import torch
from torch import nn

from attnzoo.compression import (
    FactorisedEmbedding,
    LowRankLinear,
    count_parameters,
    factorise_embedding,
    factorise_linears,
    svd_rank,
)
from attnzoo.transformers_zoo.bert import BertForMaskedLM


def test_full_rank_reproduces_the_layer_and_the_factors_are_the_best_fit() -> None:
    linear = nn.Linear(9, 7).double()
    x = torch.randn(4, 9, dtype=torch.float64)
    torch.testing.assert_close(LowRankLinear.from_linear(linear, rank=7)(x), linear(x))
    low = LowRankLinear.from_linear(linear, rank=3)
    singular = torch.linalg.svdvals(linear.weight.detach())
    # Eckart-Young: the Frobenius error of the best rank-3 fit is the tail of the spectrum.
    error = torch.linalg.matrix_norm(low.weight.detach() - linear.weight.detach())
    assert float(error) == pytest.approx(float(singular[3:].norm()), rel=1e-9)
    assert low.first.weight.shape == (3, 9) and low.second.weight.shape == (7, 3)
    torch.testing.assert_close(low.second.bias, linear.bias)


def test_rank_from_energy() -> None:
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1 of 14
    assert svd_rank(s, 9 / 14) == 1
    assert svd_rank(s, 0.7) == 2
    assert svd_rank(s, 1.0) == 3
    linear = nn.Linear(6, 6)
    with torch.no_grad():
        linear.weight.copy_(torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.0, 0.0, 0.0])))
    assert LowRankLinear.from_linear(linear, energy=0.9).rank == 2


def test_factorising_a_model_saves_parameters_and_skips_layers_that_would_grow(
    tiny_bert: nn.Module,
) -> None:
    before = count_parameters(tiny_bert)
    ranks = factorise_linears(tiny_bert, rank=4, select=lambda name, _: "classifier" not in name)
    assert "classifier" not in ranks and set(ranks.values()) == {4}
    assert count_parameters(tiny_bert) < before
    assert isinstance(tiny_bert.bert.encoder.layers[0].attention.query, LowRankLinear)
    assert tiny_bert(torch.randint(1, 53, (2, 5))).logits.shape == (2, 3)
    small = nn.Sequential(nn.Linear(4, 4))
    assert factorise_linears(small, rank=3) == {}  # 3 * 8 >= 16: no saving


def test_factorised_embedding_keeps_a_tied_masked_lm_working(
    make_config: Any, padded_batch: Any
) -> None:
    ids, mask = padded_batch
    torch.manual_seed(0)
    model = BertForMaskedLM(make_config()).eval()
    expected = model(ids, attention_mask=mask).logits
    table = factorise_embedding(model, "bert.embeddings.word_embeddings", size=32)
    assert isinstance(table, FactorisedEmbedding) and table.weight.shape == (53, 32)
    torch.testing.assert_close(
        model(ids, attention_mask=mask).logits, expected, atol=1e-4, rtol=1e-4
    )
    fresh = BertForMaskedLM(make_config())
    before = count_parameters(fresh)
    factorise_embedding(fresh, "bert.embeddings.word_embeddings", size=8)
    assert count_parameters(fresh) == before - 53 * 32 + 53 * 8 + 8 * 32


@pytest.mark.slow
def test_low_rank_trades_rank_for_error_monotonically(tiny_bert: nn.Module) -> None:
    """Truncated SVD of every Linear of a zoo BERT. Per layer, on the activations the layer
    really sees, the output error falls strictly with the rank (Eckart-Young: the error is
    the sum of the dropped components) while the parameters grow; at the model output the
    error falls too over ranks 2, 8, 16, 32 and full rank is exact. (With random weights the
    spectrum is flat, so neighbouring small ranks such as 2 and 4 are within noise at the
    model output; seeds 0, 1, 2 all hold for the ranks asserted.)"""
    ids = torch.randint(1, 53, (8, 16))
    inputs: dict[str, torch.Tensor] = {}
    hooks = [
        module.register_forward_pre_hook(
            lambda _, args, name=name: inputs.__setitem__(name, args[0])
        )
        for name, module in tiny_bert.named_modules()
        if isinstance(module, nn.Linear)
    ]
    with torch.no_grad():
        expected = tiny_bert.bert(ids).last_hidden_state
    for hook in hooks:
        hook.remove()
    layers = dict(tiny_bert.named_modules())
    for name, x in inputs.items():
        linear = layers[name]
        top = min(linear.in_features, linear.out_features)
        with torch.no_grad():
            errors = [
                float((LowRankLinear.from_linear(linear, rank=r)(x) - linear(x)).norm())
                for r in range(1, top + 1)
            ]
        assert all(a > b for a, b in itertools.pairwise(errors)), name
    model_errors, sizes = [], []
    for rank in (2, 8, 16, 32):
        model = copy.deepcopy(tiny_bert)
        factorise_linears(model, rank=rank, only_if_smaller=False)
        with torch.no_grad():
            model_errors.append(float((model.bert(ids).last_hidden_state - expected).norm()))
        sizes.append(count_parameters(model))
    assert all(a > b for a, b in itertools.pairwise(model_errors))
    assert all(a < b for a, b in itertools.pairwise(sizes))
    assert model_errors[-1] < 1e-4 * float(expected.norm())


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: svd_rank(torch.ones(3), 0.0), ValueError, "energy"),
        (lambda: LowRankLinear.from_linear(nn.Linear(3, 3)), ValueError, "exactly one"),
        (lambda: LowRankLinear.from_linear(nn.Linear(3, 3), rank=4), ValueError, "rank"),
        (lambda: LowRankLinear.from_linear(nn.Conv1d(3, 3, 1), rank=1), TypeError, "nn.Linear"),  # type: ignore[arg-type]
        (lambda: factorise_linears(nn.Linear(3, 3), rank=1, energy=0.5), ValueError, "exactly one"),
        (lambda: FactorisedEmbedding.from_embedding(nn.Linear(3, 3), 2), TypeError, "nn.Embedding"),  # type: ignore[arg-type]
    ],
)
def test_bad_arguments(call: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()
