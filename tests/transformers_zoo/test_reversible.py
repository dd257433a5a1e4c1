"""Reversible residual stacks: exact reconstruction, gradients equal to plain autograd, and
saved activations that do not grow with depth.

Tolerances: float64 gradients within 1e-10 of plain autograd; float32 reconstruction within
1e-5.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnzoo.transformers_zoo.feed_forward import FeedForward
from attnzoo.transformers_zoo.reversible import (
    FeedForwardSublayer,
    ReformerConfig,
    ReformerLM,
    ReversibleBlock,
    ReversibleEncoder,
    ReversibleSequence,
)

TOL = 1e-10
ATTENTIONS = [
    ("dense", {}),
    ("dense", {"normalizer": "entmax15"}),
    ("lsh", {"n_buckets": 4, "n_hashes": 2, "chunk_length": 4}),
    ("sparse", {"pattern": "fixed", "stride": 3, "summary": 1}),
]


def padding_mask(batch, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch, n, generator=g) > 0.25
    mask[:, 0] = True
    return mask


def grads_of(model, x, mask, grad_out, seed=5):
    """Output and gradients w.r.t. ``x`` and every parameter, from a fixed RNG state."""
    torch.manual_seed(seed)
    out = model(x, mask)
    return out, torch.autograd.grad(out, [x, *model.parameters()], grad_out)


class TestGradients:
    @pytest.mark.parametrize("attention,options", ATTENTIONS)
    def test_equal_plain_autograd_with_dropout_and_padding(self, attention, options):
        torch.manual_seed(0)
        encoder = ReversibleEncoder(
            16, 2, 3, dropout=0.2, attention=attention, attention_options=options, ffn_chunks=2
        ).double()
        x = torch.randn(2, 11, 16, dtype=torch.float64, requires_grad=True)
        mask = padding_mask(2, 11)
        grad_out = torch.randn(2, 11, 16, dtype=torch.float64)
        out, ours = grads_of(encoder, x, mask, grad_out)
        encoder.layers.reversible = False
        ref, theirs = grads_of(encoder, x, mask, grad_out)
        # Same dropout masks (and LSH rotations) in the recomputation: exact agreement.
        assert (out - ref).abs().max() < TOL
        for a, b in zip(ours, theirs, strict=True):
            assert (a - b).abs().max() < TOL

    def test_backward_accumulates_into_grad(self):
        torch.manual_seed(0)
        encoder = ReversibleEncoder(8, 2, 2, dropout=0.1).double()
        x = torch.randn(3, 5, 8, dtype=torch.float64)
        torch.manual_seed(1)
        encoder(x).square().sum().backward()
        ours = [p.grad.clone() for p in encoder.parameters()]
        encoder.zero_grad()
        encoder.layers.reversible = False
        torch.manual_seed(1)
        encoder(x).square().sum().backward()
        for a, p in zip(ours, encoder.parameters(), strict=True):
            assert (a - p.grad).abs().max() < TOL

    def test_shared_branches_accumulate_their_gradients(self):
        torch.manual_seed(0)
        f = FeedForwardSublayer(FeedForward(6, 12))
        g = FeedForwardSublayer(FeedForward(6, 12))
        stack = ReversibleSequence([ReversibleBlock(f, g), ReversibleBlock(f, g)]).double()
        x1, x2 = (torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True) for _ in range(2))
        params = list(stack.parameters())
        assert len(params) == len({id(p) for p in params}) == 12  # each shared tensor once
        y1, y2 = stack(x1, x2)
        ours = torch.autograd.grad((y1 * y2).sum(), [x1, x2, *params])
        stack.reversible = False
        y1, y2 = stack(x1, x2)
        theirs = torch.autograd.grad((y1 * y2).sum(), [x1, x2, *params])
        for a, b in zip(ours, theirs, strict=True):
            assert (a - b).abs().max() < TOL

    def test_gradcheck(self):
        torch.manual_seed(0)

        class Tanh(nn.Module):
            def __init__(self):
                super().__init__()
                self.linear = nn.Linear(3, 3)

            def forward(self, x, mask=None):
                return torch.tanh(self.linear(x))

        blocks = [ReversibleBlock(Tanh(), Tanh()) for _ in range(2)]
        stack = ReversibleSequence(blocks).double()
        x1, x2 = (torch.randn(2, 3, dtype=torch.float64, requires_grad=True) for _ in range(2))
        assert torch.autograd.gradcheck(lambda a, b: stack(a, b), (x1, x2))

    def test_recomputation_replays_autocast(self):
        torch.manual_seed(0)
        encoder = ReversibleEncoder(32, 2, 4, dropout=0.1)
        x = torch.randn(2, 16, 32, requires_grad=True)
        grad_out = torch.randn(2, 16, 32)
        grads = []
        for reversible in (True, False):
            encoder.layers.reversible = reversible
            torch.manual_seed(5)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = encoder(x)
            grads.append(torch.autograd.grad(out, [x, *encoder.parameters()], grad_out))
        # Both sides compute in bfloat16 under autocast; only the float32 reconstruction of
        # the inputs differs (a recomputation outside autocast is off by ~100%).
        for a, b in zip(*grads, strict=True):
            assert (a - b).abs().max() <= 1e-4 * b.abs().max()

    def test_backward_leaves_the_global_rng_alone(self):
        encoder = ReversibleEncoder(8, 2, 2, dropout=0.3)
        x = torch.randn(2, 5, 8, requires_grad=True)
        out = encoder(x)
        state = torch.get_rng_state()
        out.sum().backward()
        assert torch.equal(torch.get_rng_state(), state)


class TestReconstruction:
    def test_inverse_recovers_the_inputs(self):
        torch.manual_seed(0)
        encoder = ReversibleEncoder(16, 4, 1, attention="lsh", attention_options={"seed": 3})
        block = encoder.layers.blocks[0].eval()
        x1, x2 = torch.randn(2, 2, 13, 16).unbind(0)
        mask = padding_mask(2, 13)
        with torch.no_grad():
            y1, y2 = block(x1, x2, mask)
            r1, r2 = block.inverse(y1, y2, mask)
        assert (r1 - x1).abs().max() < 1e-5 and (r2 - x2).abs().max() < 1e-5

    def test_no_grad_and_eval_match_the_graph_forward(self):
        encoder = ReversibleEncoder(8, 2, 3).eval()
        x = torch.randn(2, 6, 8, requires_grad=True)
        with torch.no_grad():
            plain = encoder(x)
        assert torch.equal(encoder(x).detach(), plain)

    def test_chunked_feed_forward_equals_unchunked(self):
        ffn = FeedForward(8, 16)
        whole, chunked = FeedForwardSublayer(ffn), FeedForwardSublayer(ffn, chunks=3)
        x = torch.randn(2, 7, 8)
        assert torch.allclose(whole(x), chunked(x), atol=1e-6)


def saved_activation_bytes(model, x):
    """Bytes of the distinct non-parameter storages autograd keeps for the backward pass."""
    saved: list[torch.Tensor] = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    # Parameters are told apart by storage after the forward: a reversible layer runs its
    # sublayers without autograd, where the attention's joint q/k/v product may have moved
    # their weights into one block.
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
        for t in saved
        if t.untyped_storage().data_ptr() not in params
    }
    return sum(storages.values())


@pytest.mark.parametrize("attention,options", ATTENTIONS[::2])
def test_saved_activations_are_flat_in_depth(attention, options):
    x = torch.randn(2, 16, 16, requires_grad=True)
    rev, plain = [], []
    for depth in (1, 2, 4, 8):
        kwargs = {"attention": attention, "attention_options": options, "dropout": 0.1}
        rev.append(saved_activation_bytes(ReversibleEncoder(16, 2, depth, **kwargs), x))
        plain.append(
            saved_activation_bytes(ReversibleEncoder(16, 2, depth, reversible=False, **kwargs), x)
        )
    # Reversible: the two output streams and the final norm's, whatever the depth.
    assert len(set(rev)) == 1
    assert rev[0] <= 2 * 2 * 16 * 16 * 4 * 2  # a few (batch, n, dim) float32 tensors
    # Plain: every layer's activations; from depth 1 to 8, seven more layers' worth.
    per_layer = plain[1] - plain[0]
    assert per_layer > rev[0]
    assert plain[3] - plain[0] == pytest.approx(7 * per_layer, rel=0.01)


class TestReformer:
    def test_language_model_shapes_and_gradients_match_plain(self):
        torch.manual_seed(0)
        config = ReformerConfig(
            vocab_size=20,
            dim=16,
            heads=2,
            depth=2,
            n_buckets=4,
            n_hashes=2,
            chunk_length=4,
            ffn_chunks=2,
            dropout=0.1,
        )
        model = ReformerLM(config).double()
        ids = torch.randint(0, 20, (2, 13))
        mask = padding_mask(2, 13)
        torch.manual_seed(2)
        logits = model(ids, mask)
        assert logits.shape == (2, 13, 20)
        ours = torch.autograd.grad(logits.sum(), list(model.parameters()))
        model.encoder.layers.reversible = False
        torch.manual_seed(2)
        theirs = torch.autograd.grad(model(ids, mask).sum(), list(model.parameters()))
        for a, b in zip(ours, theirs, strict=True):
            assert (a - b).abs().max() < TOL

    def test_causal_model_ignores_future_tokens_with_one_chunk(self):
        # With a chunk covering the sequence the hashing cannot mix positions: position i's
        # logits depend only on tokens <= i.
        config = ReformerConfig(vocab_size=11, dim=8, heads=2, depth=2, chunk_length=16, seed=0)
        model = ReformerLM(config).eval()
        ids = torch.randint(0, 11, (1, 9))
        changed = ids.clone()
        changed[0, 6:] = (changed[0, 6:] + 1) % 11
        with torch.no_grad():
            assert torch.allclose(model(ids)[:, :6], model(changed)[:, :6], atol=1e-6)


class TestErrors:
    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="`attention`"):
            ReversibleEncoder(8, 2, 2, attention="linear")
        with pytest.raises(TypeError, match="`attention_options`"):
            ReversibleEncoder(8, 2, 2, attention_options=[("normalizer", "softmax")])
        with pytest.raises(ValueError, match="`depth`"):
            ReversibleEncoder(8, 2, 0)
        with pytest.raises(ValueError, match="`chunks`"):
            FeedForwardSublayer(FeedForward(8), chunks=0)
        with pytest.raises(ValueError, match="at least one"):
            ReversibleSequence([])
        with pytest.raises(TypeError, match="ReversibleBlock"):
            ReversibleSequence([nn.Linear(2, 2)])
        with pytest.raises(TypeError, match="`config`"):
            ReformerLM({"vocab_size": 5})
        encoder = ReversibleEncoder(8, 2, 1)
        with pytest.raises(ValueError, match=r"`mask` must have shape \(batch, n\)"):
            encoder(torch.randn(2, 5, 8), torch.ones(2, 4, dtype=torch.bool))
        with pytest.raises(TypeError, match="`mask` must be a boolean"):
            encoder(torch.randn(2, 5, 8), torch.ones(2, 5))
        with pytest.raises(ValueError, match="`x` must have dim = 8"):
            encoder(torch.randn(2, 5, 6))
