"""The joint query/key/value product of self-attention at inference (``project_jointly``)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from attnzoo.attention.multi_head import MultiHeadAttention, project_jointly


def mha(seed: int = 0, **options) -> MultiHeadAttention:
    torch.manual_seed(seed)
    module = MultiHeadAttention(20, heads=2, causal=True, **options)
    with torch.no_grad():  # non-zero biases, so that a mix-up of biases shows
        for linear in (module.query, module.key, module.value):
            linear.bias.normal_()
    return module.eval()


def inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    x = torch.randn(3, 7, 20)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, :2] = False
    return x, mask


def unfused(module: MultiHeadAttention, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The module's output through three separate products (autograd on: no fusing)."""
    with torch.enable_grad():
        return module(x, mask=mask).detach()


def is_packed(module: MultiHeadAttention) -> bool:
    weights = [module.query.weight, module.key.weight, module.value.weight]
    base = weights[0].untyped_storage().data_ptr()
    step = weights[0].numel() * weights[0].element_size()
    return all(
        w.untyped_storage().data_ptr() == base and w.data_ptr() == weights[0].data_ptr() + i * step
        for i, w in enumerate(weights)
    )


def test_fused_output_matches_separate_products_and_parameters_share_one_block():
    module, (x, mask) = mha(), inputs()
    expected = unfused(module, x, mask)
    names = [name for name, _ in module.named_parameters()]
    params = list(module.parameters())
    assert not is_packed(module)
    with torch.no_grad():
        got = module(x, mask=mask)
    assert is_packed(module)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    # Same Parameter objects, names and shapes; one block of exactly their size.
    assert [name for name, _ in module.named_parameters()] == names
    assert all(a is b for a, b in zip(module.parameters(), params, strict=True))
    assert module.query.weight.shape == (20, 20)
    assert module.query.weight.untyped_storage().nbytes() == 3 * 20 * 20 * 4
    assert module.value.bias.untyped_storage().nbytes() == 3 * 20 * 4


def test_cached_decoding_matches_separate_products():
    from attnzoo.attention.multi_head import KVCache

    module, (x, _) = mha(position="rotary"), inputs()
    with torch.enable_grad():
        full = module(x).detach()
    cache = KVCache()
    with torch.no_grad():
        steps = [module(x[:, t : t + 1], cache=cache) for t in range(x.shape[1])]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-6)


def test_training_after_fusing_updates_the_same_parameters_with_correct_gradients():
    module, (x, mask) = mha(), inputs()
    reference = copy.deepcopy(module)  # never fused
    with torch.no_grad():
        module(x, mask=mask)
    assert is_packed(module)
    for model in (module, reference):
        model.train()
        model(x, mask=mask).square().sum().backward()
    for (name, p), q in zip(module.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)
    for model in (module, reference):
        torch.optim.SGD(model.parameters(), lr=0.1).step()
        model.eval()
    assert is_packed(module)  # in-place updates keep the block
    with torch.no_grad():
        got = module(x, mask=mask)
    torch.testing.assert_close(got, unfused(reference, x, mask), rtol=1e-5, atol=1e-6)


def test_dtype_change_and_loading_are_seen_and_repacked():
    module, (x, mask) = mha(), inputs()
    with torch.no_grad():
        module(x, mask=mask)
    module.to(torch.float64)  # gives every parameter its own storage again
    assert not is_packed(module)
    x64 = x.double()
    with torch.no_grad():
        got = module(x64, mask=mask)
    assert is_packed(module) and module.query.weight.dtype == torch.float64
    torch.testing.assert_close(got, unfused(module, x64, mask), rtol=1e-12, atol=1e-12)
    # load_state_dict copies into the block: the fused product sees the new values.
    other = mha(seed=5).double()
    module.load_state_dict(other.state_dict())
    with torch.no_grad():
        got = module(x64, mask=mask)
    torch.testing.assert_close(got, unfused(other, x64, mask), rtol=1e-12, atol=1e-12)
    module.load_state_dict(mha(seed=6).double().state_dict(), assign=True)
    assert not is_packed(module)


def test_packing_inside_inference_mode_leaves_trainable_parameters():
    module, (x, mask) = mha(), inputs()
    with torch.inference_mode():
        module(x, mask=mask)
    assert is_packed(module)
    assert not module.query.weight.is_inference()
    module.train()
    module(x, mask=mask).sum().backward()  # inference tensors would refuse to be saved
    assert module.key.weight.grad is not None


@pytest.mark.parametrize("hooked", ["query", "key", "value"])
def test_a_hook_on_a_projection_still_fires(hooked):
    module, (x, mask) = mha(), inputs()
    expected = unfused(module, x, mask)
    seen = []
    handle = getattr(module, hooked).register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.no_grad():
        got = module(x, mask=mask)
    handle.remove()
    assert len(seen) == 1 and seen[0].shape == (3, 7, 20)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_a_global_module_hook_still_fires():
    module, (x, mask) = mha(), inputs()
    seen = []
    handle = nn.modules.module.register_module_forward_hook(
        lambda m, a, out: seen.append(type(m)) if isinstance(m, nn.Linear) else None
    )
    try:
        with torch.no_grad():
            module(x, mask=mask)
    finally:
        handle.remove()
    assert seen.count(nn.Linear) == 4  # query, key, value and out
    assert not is_packed(module)


def test_project_jointly_fuses_unequal_widths():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 6)
    a, b = nn.Linear(6, 4), nn.Linear(6, 3)
    expected = [a(x).detach(), b(x).detach()]
    with torch.no_grad():
        got = project_jointly(x, (a, b))
    assert b.weight.data_ptr() == a.weight.data_ptr() + 4 * 6 * 4  # one block
    for y, e in zip(got, expected, strict=True):
        torch.testing.assert_close(y, e, rtol=1e-6, atol=1e-6)


class LinearSubclass(nn.Linear):
    """A Linear subclass may change ``forward``: it is always called."""


@pytest.mark.parametrize("case", ["bias and no bias", "same module twice", "subclass"])
def test_project_jointly_calls_each_module_when_it_cannot_fuse(case):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 6)
    a = nn.Linear(6, 4)
    b = {
        "bias and no bias": nn.Linear(6, 4, bias=False),
        "same module twice": a,
        "subclass": LinearSubclass(6, 4),
    }[case]
    pointers = [p.data_ptr() for m in (a, b) for p in m.parameters()]
    with torch.no_grad():
        got = project_jointly(x, (a, b))
    assert [p.data_ptr() for m in (a, b) for p in m.parameters()] == pointers
    torch.testing.assert_close(got[0], a(x).detach())
    torch.testing.assert_close(got[1], b(x).detach())


def test_project_jointly_with_autograd_calls_each_module():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 6)
    c, d = nn.Linear(6, 4), nn.Linear(6, 4)
    pointers = [p.data_ptr() for p in (*c.parameters(), *d.parameters())]
    sum(y.sum() for y in project_jointly(x, (c, d))).backward()
    assert [p.data_ptr() for p in (*c.parameters(), *d.parameters())] == pointers
    assert c.weight.grad is not None and d.bias.grad is not None
