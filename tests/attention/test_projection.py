"""Linear projections at inference: the CPU decoding route of ``linear`` and ``project``.

The route sums in another order than ``F.linear``; results are compared with float64
products within 2e-6 of the largest output (float32 rounding over ~500 terms; F.linear
itself is 4e-7 off here).
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.attention import projection
from attnzoo.attention.projection import MAX_DECODING_ROWS, MIN_DECODING_WEIGHT, linear, project

# 1031 x 509 = 524779 entries, just above MIN_DECODING_WEIGHT; 1031 is prime, so no thread
# count divides the rows evenly and the left-over rows always take the second product.
OUT, IN = 1031, 509


@contextmanager
def threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def counting_routes(monkeypatch):
    """Counts calls of the two route kernels, so that a test can tell the route ran."""
    calls = {"one_row": 0, "few_rows": 0}
    for name in calls:
        original = getattr(projection, f"_{name}")

        def counted(*args, _name=name, _original=original):
            calls[_name] += 1
            return _original(*args)

        monkeypatch.setattr(projection, f"_{name}", counted)
    yield calls


def weights(seed: int = 0, out: int = OUT, inp: int = IN):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, inp, generator=g), torch.randn(out, generator=g)


def assert_matches_float64(got, x, weight, bias):
    ref = F.linear(x.double(), weight.double(), None if bias is None else bias.double())
    assert got.shape == ref.shape
    assert (got.double() - ref).abs().max() <= 2e-6 * ref.abs().max()


def test_weights_here_are_on_the_route():
    assert OUT * IN >= MIN_DECODING_WEIGHT


@pytest.mark.parametrize("n_threads", [2, 3, 4])
@pytest.mark.parametrize("rows", [1, 2, 5, MAX_DECODING_ROWS])
@pytest.mark.parametrize("with_bias", [True, False])
def test_route_matches_float64(monkeypatch, n_threads, rows, with_bias):
    weight, bias = weights(rows)
    bias = bias if with_bias else None
    x = torch.randn(rows, IN, generator=torch.Generator().manual_seed(rows + 1))
    with threads(n_threads), counting_routes(monkeypatch) as calls:
        got = linear(x, weight, bias)
    assert calls["one_row" if rows == 1 else "few_rows"] == 1
    assert got.shape == (rows, OUT) and got.dtype == torch.float32 and got.is_contiguous()
    assert_matches_float64(got, x, weight, bias)


@pytest.mark.parametrize("shape", [(IN,), (1, 1, IN), (2, 3, IN), (4, 1, IN)])
def test_leading_axes_are_kept(monkeypatch, shape):
    weight, bias = weights(1)
    x = torch.randn(shape)
    with counting_routes(monkeypatch) as calls:
        got = linear(x, weight, bias)
    assert sum(calls.values()) == 1
    assert got.shape == (*shape[:-1], OUT)
    assert_matches_float64(got, x, weight, bias)


def test_a_strided_input_row(monkeypatch):
    # The last position of a batch of sequences: a view with gaps, as decoding passes it.
    weight, bias = weights(2)
    hidden = torch.randn(1, 9, IN)
    with counting_routes(monkeypatch) as calls:
        got = linear(hidden[:, -1], weight, bias)
    assert calls["one_row"] == 1
    assert_matches_float64(got, hidden[:, -1], weight, bias)


def gradient_case():
    weight, bias = weights(3)
    return torch.randn(1, IN), weight.requires_grad_(), bias


@pytest.mark.parametrize(
    "case",
    [
        "more rows",
        "small weight",
        "float64",
        "transposed weight",
        "autograd",
        "one thread",
        "empty input",
        "wrong width",
    ],
)
def test_other_calls_are_plain_f_linear(monkeypatch, case):
    weight, bias = weights(4)
    x = torch.randn(1, IN)
    n_threads = 2
    if case == "more rows":
        x = torch.randn(MAX_DECODING_ROWS + 1, IN)
    elif case == "small weight":
        weight, bias = weights(4, out=1000, inp=500)  # 500000 < 2**19 entries
        x = torch.randn(1, 500)
    elif case == "float64":
        x, weight, bias = x.double(), weight.double(), bias.double()
    elif case == "transposed weight":
        weight = torch.randn(IN, OUT).t()
    elif case == "autograd":
        x, weight, bias = gradient_case()
    elif case == "one thread":
        n_threads = 1
    elif case == "empty input":
        x = torch.randn(0, IN)
    elif case == "wrong width":
        x = torch.randn(1, 2 * IN)  # as many entries as two rows: F.linear's error
        with pytest.raises(RuntimeError, match="cannot be multiplied"):
            linear(x, weight, bias)
        return
    with threads(n_threads), counting_routes(monkeypatch) as calls:
        got = linear(x, weight, bias)
    assert sum(calls.values()) == 0
    assert torch.equal(got, F.linear(x, weight, bias))
    if case == "autograd":
        got.sum().backward()
        assert weight.grad is not None


def test_project_routes_a_plain_linear_only_at_inference(monkeypatch):
    torch.manual_seed(0)
    module = nn.Linear(IN, OUT)
    x = torch.randn(1, 1, IN)
    expected = module(x).detach()
    with counting_routes(monkeypatch) as calls:
        with torch.no_grad():
            got = project(x, module)
        assert calls["one_row"] == 1
        trained = project(x, module)  # autograd on: the module itself is called
        assert calls["one_row"] == 1 and trained.requires_grad
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_project_calls_a_module_with_hooks(monkeypatch):
    torch.manual_seed(0)
    module = nn.Linear(IN, OUT)
    seen = []
    module.register_forward_hook(lambda *_: seen.append(True))
    with counting_routes(monkeypatch) as calls, torch.no_grad():
        project(torch.randn(1, IN), module)
    assert seen == [True] and sum(calls.values()) == 0


def test_project_calls_a_module_that_is_not_a_plain_linear(monkeypatch):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(IN, OUT))
    with counting_routes(monkeypatch) as calls, torch.no_grad():
        got = project(torch.ones(1, IN), module)
    assert sum(calls.values()) == 0
    assert torch.equal(got, module(torch.ones(1, IN)))
