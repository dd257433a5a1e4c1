"""Tests of the adaptive softmax, the adaptive input embedding and their use in Transformer-XL.

References:

* ``torch.nn.AdaptiveLogSoftmaxWithLoss``, which computes the same function where the head
  has the model width and the tails are projected and have no bias: weights copied from it,
  log-probabilities, per-token and mean loss, predictions and gradients equal to 1e-6
  (float32) / 1e-12 (float64).
* A dense brute-force distribution written here from the same parameters (probabilities of
  the head times probabilities within each cluster, then the log), for the general case
  torch's class cannot express: a projected head (``embed_dim != dim``), output biases,
  ``div_val = 1`` tails without projection.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from attnzoo.transformers_zoo import (
    AdaptiveEmbedding,
    AdaptiveSoftmax,
    TokenEmbedding,
    TransformerXLConfig,
    TransformerXLLMHeadModel,
)

VOCAB, DIM, CUTOFFS = 37, 13, (5, 17)


def assert_close(actual, expected, tol):
    diff = (actual - expected).abs().max().item()
    assert diff <= tol, f"max abs difference {diff:.3g} > {tol:g}"


def labels_with_ignored(shape, vocab, generator):
    labels = torch.randint(0, vocab, shape, generator=generator)
    return labels.masked_fill(torch.rand(shape, generator=generator) < 0.2, -100)


# --------------------------------------------------------------------------- torch parity


def torch_pair(dtype, head_bias):
    """Our module and torch's, with torch's weights copied into ours."""
    torch.manual_seed(0)
    ref = nn.AdaptiveLogSoftmaxWithLoss(DIM, VOCAB, list(CUTOFFS), 2.0, head_bias=head_bias)
    ours = AdaptiveSoftmax(VOCAB, DIM, CUTOFFS, div_val=2, bias=head_bias)
    ref, ours = ref.to(dtype), ours.to(dtype)
    shortlist = CUTOFFS[0]
    with torch.no_grad():
        ours.clusters[0].weight.copy_(ref.head.weight[:shortlist])
        ours.cluster_weight.copy_(ref.head.weight[shortlist:])
        if head_bias:
            ours.clusters[0].bias.copy_(ref.head.bias[:shortlist])
            ours.cluster_bias.copy_(ref.head.bias[shortlist:])
        for cluster, (down, out) in zip(ours.clusters[1:], ref.tail, strict=True):
            cluster.projection.copy_(down.weight.T)
            cluster.weight.copy_(out.weight)
            if head_bias:
                # The class has no tail biases: random ones elsewhere, zero here.
                cluster.bias.zero_()
    return ours, ref


class TestTorchParity:
    @pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
    @pytest.mark.parametrize("head_bias", [False, True])
    def test_equals_adaptive_log_softmax_with_loss(self, dtype, tol, head_bias):
        ours, ref = torch_pair(dtype, head_bias)
        assert ours.widths == [13, 6, 3]
        generator = torch.Generator().manual_seed(1)
        hidden = torch.randn(3, 7, DIM, generator=generator, dtype=dtype)
        labels = labels_with_ignored((3, 7), VOCAB, generator)
        keep = labels != -100
        flat = hidden.flatten(0, 1)

        assert_close(ours.log_prob(hidden).flatten(0, 1), ref.log_prob(flat), tol)
        nll = ours(hidden, labels)
        assert nll.shape == (3, 7)
        expected = ref(hidden[keep], labels[keep])
        assert_close(nll[keep], -expected.output, tol)
        assert (nll[~keep] == 0).all()
        assert_close(ours(hidden, labels, reduction="mean"), expected.loss, tol)
        assert torch.equal(ours.predict(hidden).flatten(), ref.predict(flat))

        # Gradients of the mean loss, with respect to the input and the shared weights.
        x = hidden.clone().requires_grad_()
        x_ref = hidden.clone().requires_grad_()
        ours(x, labels, reduction="mean").backward()
        ref(x_ref[keep], labels[keep]).loss.backward()
        assert_close(x.grad, x_ref.grad, tol)
        head_grad = torch.cat([ours.clusters[0].weight.grad, ours.cluster_weight.grad])
        assert_close(head_grad, ref.head.weight.grad, tol)
        for cluster, (down, out) in zip(ours.clusters[1:], ref.tail, strict=True):
            assert_close(cluster.projection.grad, down.weight.grad.T, tol)
            assert_close(cluster.weight.grad, out.weight.grad, tol)


# --------------------------------------------------------------------------- general case


def dense_log_prob(module: AdaptiveSoftmax, hidden: torch.Tensor) -> torch.Tensor:
    """Every word's probability written out densely, then its log: ``(m, vocab)``."""

    def scores(cluster, weight, bias):
        h = hidden @ cluster.projection if cluster.projection is not None else hidden
        return h @ weight.T + (bias if bias is not None else 0)

    first, shortlist = module.clusters[0], module.bounds[1]
    head_weight = torch.cat([first.weight, module.cluster_weight])
    head_bias = None
    if first.bias is not None:
        head_bias = torch.cat([first.bias, module.cluster_bias])
    head = torch.softmax(scores(first, head_weight, head_bias), -1)
    probs = [head[:, :shortlist]]
    for i, cluster in enumerate(module.clusters[1:], start=1):
        within = torch.softmax(scores(cluster, cluster.weight, cluster.bias), -1)
        probs.append(head[:, shortlist + i - 1, None] * within)
    return torch.cat(probs, -1).log()


def general(embed_dim=10, div_val=2, cutoffs=(4, 11, 23), dim=DIM, bias=True, seed=0):
    """A projected head, random biases, three tail clusters of widths 5, 2, 1."""
    torch.manual_seed(seed)
    module = AdaptiveSoftmax(VOCAB, dim, cutoffs, embed_dim, div_val, bias).double()
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.5)
    return module


class TestGeneralCase:
    @pytest.mark.parametrize(
        "options",
        [
            {},
            {"embed_dim": None, "div_val": 1},  # no projection anywhere
            {"embed_dim": 20, "div_val": 2},  # the head wider than the model
            {"cutoffs": ()},  # no tail: a plain (projected) softmax
            {"bias": False},
        ],
    )
    def test_log_prob_and_loss_equal_the_dense_reference(self, options):
        module = general(**options)
        generator = torch.Generator().manual_seed(2)
        hidden = torch.randn(5, 9, DIM, generator=generator, dtype=torch.float64)
        labels = labels_with_ignored((5, 9), VOCAB, generator)
        keep = labels != -100
        dense = dense_log_prob(module, hidden.flatten(0, 1)).unflatten(0, (5, 9))

        log_prob = module.log_prob(hidden)
        assert log_prob.shape == (5, 9, VOCAB)
        assert_close(log_prob, dense, 1e-12)
        assert_close(log_prob.exp().sum(-1), torch.ones(5, 9, dtype=torch.float64), 1e-12)

        nll = module(hidden, labels)
        gathered = -log_prob.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
        assert_close(nll[keep], gathered[keep], 1e-12)
        assert (nll[~keep] == 0).all()
        assert_close(module(hidden, labels, reduction="sum"), gathered[keep].sum(), 1e-11)
        assert_close(module(hidden, labels, reduction="mean"), gathered[keep].mean(), 1e-12)

    def test_gradients_equal_the_dense_reference(self):
        module = general()
        generator = torch.Generator().manual_seed(3)
        hidden = torch.randn(23, DIM, generator=generator, dtype=torch.float64)
        labels = labels_with_ignored((23,), VOCAB, generator)
        keep = labels != -100
        params = [hidden.requires_grad_(), *module.parameters()]

        ours = torch.autograd.grad(module(hidden, labels, reduction="mean"), params)
        dense = dense_log_prob(module, hidden)
        loss = -dense[keep].gather(1, labels[keep, None]).mean()
        theirs = torch.autograd.grad(loss, params)
        for a, b in zip(ours, theirs, strict=True):
            assert_close(a, b, 1e-12)

    def test_gradcheck(self):
        module = AdaptiveSoftmax(11, 5, (3, 7), 6, 2).double()
        names = [name for name, _ in module.named_parameters()]
        params = [p.detach().clone().requires_grad_() for p in module.parameters()]
        hidden = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
        labels = torch.tensor([0, 2, 4, 8, -100, 10])

        def loss(h, *ps):
            state = dict(zip(names, ps, strict=True))
            return torch.func.functional_call(module, state, (h, labels), {"reduction": "mean"})

        assert torch.autograd.gradcheck(loss, (hidden, *params))

    @pytest.mark.parametrize("cluster_shift", [-50.0, 0.0, 50.0])
    def test_predict_is_the_argmax(self, cluster_shift):
        # -50: every head prefers a shortlist word (the shortcut); +50: a cluster (every
        # row scores its tails); 0: a mix.
        module = general()
        with torch.no_grad():
            module.cluster_bias += cluster_shift
        generator = torch.Generator().manual_seed(4)
        hidden = torch.randn(4, 10, DIM, generator=generator, dtype=torch.float64)
        head_best = module._head_log_prob(hidden.flatten(0, 1)).argmax(-1)
        in_shortlist = (head_best < module.shortlist).float().mean()
        assert in_shortlist == {-50.0: 1.0, 50.0: 0.0}.get(cluster_shift, in_shortlist)
        assert 0 < in_shortlist < 1 or cluster_shift != 0
        predicted = module.predict(hidden)
        assert predicted.shape == (4, 10)
        assert torch.equal(predicted, module.log_prob(hidden).argmax(-1))

    @settings(max_examples=30, deadline=None)
    @given(
        vocab=st.integers(2, 60),
        dim=st.integers(1, 9),
        embed_dim=st.sampled_from([None, 1, 7, 16]),
        div_val=st.sampled_from([1, 2, 1.5]),
        rows=st.integers(1, 12),
        data=st.data(),
    )
    def test_properties_on_random_layouts(self, vocab, dim, embed_dim, div_val, rows, data):
        width = dim if embed_dim is None else embed_dim
        # Widths halve at most (div_val <= 2): log2(width) + 1 clusters keep them >= 1.
        max_clusters = min(vocab, int(math.log2(width)) + 1)
        cutoffs = data.draw(
            st.lists(st.integers(1, vocab - 1), max_size=max_clusters - 1, unique=True).map(
                lambda c: tuple(sorted(c))
            )
        )
        seed = data.draw(st.integers(0, 2**16))
        torch.manual_seed(seed)
        module = AdaptiveSoftmax(vocab, dim, cutoffs, embed_dim, div_val).double()
        hidden = torch.randn(rows, dim, dtype=torch.float64)
        labels = torch.randint(0, vocab, (rows,))
        log_prob = module.log_prob(hidden)
        assert_close(log_prob.exp().sum(-1), torch.ones(rows, dtype=torch.float64), 1e-12)
        gathered = -log_prob.gather(1, labels[:, None]).squeeze(1)
        assert_close(module(hidden, labels), gathered, 1e-12)
        assert torch.equal(module.predict(hidden), log_prob.argmax(-1))

    def test_a_single_position_and_an_empty_batch(self):
        module = general()
        hidden = torch.randn(DIM, dtype=torch.float64)
        label = torch.tensor(30)
        assert module(hidden, label).shape == ()
        assert_close(module(hidden, label), -module.log_prob(hidden)[30], 1e-12)
        empty = torch.zeros(0, 4, DIM, dtype=torch.float64)
        assert module(empty, torch.zeros(0, 4, dtype=torch.long)).shape == (0, 4)
        assert module(hidden[None], torch.tensor([-100]), reduction="mean") == 0

    def test_half_precision_scores_in_float32(self):
        module = general().to(torch.bfloat16)
        hidden = torch.randn(3, DIM, dtype=torch.bfloat16)
        log_prob = module.log_prob(hidden)
        assert log_prob.dtype == torch.float32
        assert_close(log_prob.exp().sum(-1), torch.ones(3), 1e-5)
        nll = module(hidden, torch.tensor([0, 20, 36]))
        assert nll.dtype == torch.float32 and torch.isfinite(nll).all()


# --------------------------------------------------------------------------- embedding


class TestAdaptiveEmbedding:
    def test_equals_a_per_id_lookup(self):
        torch.manual_seed(0)
        embedding = AdaptiveEmbedding(20, 10, (4, 9), embed_dim=12, div_val=2).double()
        assert embedding.widths == [12, 6, 3]
        ids = torch.randint(0, 20, (3, 7))
        out = embedding(ids)
        assert out.shape == (3, 7, 10)
        for index in ids.flatten().unique().tolist():
            i = sum(index >= b for b in embedding.bounds[1:-1])
            cluster = embedding.clusters[i]
            row = cluster.weight[index - embedding.bounds[i]]
            expected = (cluster.projection @ row) * 10**0.5
            assert_close(out[ids == index], expected.expand(int((ids == index).sum()), 10), 1e-12)

    def test_without_projections_it_is_a_scaled_token_embedding(self):
        embedding = AdaptiveEmbedding(20, 8, (4, 9)).double()
        assert all(c.projection is None for c in embedding.clusters)
        plain = TokenEmbedding(20, 8, scale=True).double()
        with torch.no_grad():
            plain.weight.copy_(torch.cat([c.weight for c in embedding.clusters]))
        ids = torch.randint(0, 20, (2, 11))
        assert_close(embedding(ids), plain(ids), 1e-14)

    def test_bad_ids_are_named(self):
        embedding = AdaptiveEmbedding(20, 8, (4, 9))
        with pytest.raises(ValueError, match="`input_ids`"):
            embedding(torch.tensor([[3, 20]]))
        with pytest.raises(TypeError, match="`input_ids`"):
            embedding(torch.zeros(2, 3))


class TestTying:
    def test_tie_to_shares_tables_and_projections(self):
        embedding = AdaptiveEmbedding(VOCAB, DIM, CUTOFFS, embed_dim=12, div_val=2)
        softmax = AdaptiveSoftmax(VOCAB, DIM, CUTOFFS, embed_dim=12, div_val=2)
        softmax.tie_to(embedding, tie_weight=True, tie_projs=[False, True, True])
        pairs = list(zip(softmax.clusters, embedding.clusters, strict=True))
        assert all(s.weight is e.weight for s, e in pairs)
        assert softmax.clusters[0].projection is not embedding.clusters[0].projection
        assert all(s.projection is e.projection for s, e in pairs[1:])
        # A shared parameter collects the gradient of both uses.
        ids = torch.randint(0, VOCAB, (2, 5))
        softmax(embedding(ids), ids, reduction="mean").backward()
        assert embedding.clusters[1].projection.grad is not None
        shared = {id(p) for p in embedding.parameters()}
        assert sum(id(p) in shared for p in softmax.parameters()) == 5

    def test_untied_by_default(self):
        embedding = AdaptiveEmbedding(VOCAB, DIM, CUTOFFS, div_val=2)
        softmax = AdaptiveSoftmax(VOCAB, DIM, CUTOFFS, div_val=2)
        assert all(
            s.weight is not e.weight
            for s, e in zip(softmax.clusters, embedding.clusters, strict=True)
        )

    @pytest.mark.parametrize(
        "embedding, tie_projs, error",
        [
            (AdaptiveEmbedding(VOCAB, DIM, (5, 18), div_val=2), True, ValueError),
            (AdaptiveEmbedding(VOCAB, DIM, CUTOFFS, div_val=3), True, ValueError),
            (AdaptiveEmbedding(VOCAB, DIM, CUTOFFS, div_val=2), [True], ValueError),
            (nn.Embedding(VOCAB, DIM), True, TypeError),
        ],
    )
    def test_bad_tying_is_named(self, embedding, tie_projs, error):
        softmax = AdaptiveSoftmax(VOCAB, DIM, CUTOFFS, div_val=2)
        name = "`tie_projs`" if isinstance(tie_projs, list) else "`embedding`"
        with pytest.raises(error, match=name):
            softmax.tie_to(embedding, tie_projs=tie_projs)


# --------------------------------------------------------------------------- validation


class TestValidation:
    @pytest.mark.parametrize(
        "cutoffs, error",
        [
            ((5, 5), ValueError),
            ((17, 5), ValueError),
            ((0, 5), ValueError),
            ((5, VOCAB), ValueError),
            ((5, 40), ValueError),
            ((5.0, 17), TypeError),
            (5, TypeError),
        ],
    )
    def test_bad_cutoffs_are_named(self, cutoffs, error):
        with pytest.raises(error, match="`cutoffs`"):
            AdaptiveSoftmax(VOCAB, DIM, cutoffs)
        with pytest.raises(error, match="`cutoffs`"):
            AdaptiveEmbedding(VOCAB, DIM, cutoffs)

    @pytest.mark.parametrize("div_val", [0.5, 0, 8])  # 8: cluster 2 gets width 13 // 64 = 0
    def test_bad_div_val_is_named(self, div_val):
        with pytest.raises(ValueError, match="`div_val`"):
            AdaptiveSoftmax(VOCAB, DIM, CUTOFFS, div_val=div_val)

    @pytest.mark.parametrize(
        "labels, error",
        [
            (torch.tensor([0, VOCAB]), ValueError),
            (torch.tensor([-1, 3]), ValueError),
            (torch.tensor([-5, 3]), ValueError),
            (torch.tensor([0.0, 3.0]), TypeError),
            (torch.tensor([0, 1, 2]), ValueError),
        ],
    )
    def test_bad_labels_are_named(self, labels, error):
        module = AdaptiveSoftmax(VOCAB, DIM, CUTOFFS, div_val=2)
        with pytest.raises(error, match="`labels`"):
            module(torch.randn(2, DIM), labels)

    def test_bad_hidden_is_named(self):
        module = AdaptiveSoftmax(VOCAB, DIM, CUTOFFS, div_val=2)
        for call in (module.log_prob, module.predict, lambda h: module(h, torch.zeros(2).long())):
            with pytest.raises(ValueError, match="`hidden`"):
                call(torch.randn(2, DIM + 1))
        with pytest.raises(ValueError, match="`reduction`"):
            module(torch.randn(2, DIM), torch.zeros(2).long(), reduction="avg")


# --------------------------------------------------------------------------- Transformer-XL


def tiny_xl(**overrides):
    options = {
        "vocab_size": VOCAB,
        "dim": 16,
        "heads": 2,
        "depth": 2,
        "mem_len": 12,
        "dropout": 0.0,
        "cutoffs": CUTOFFS,
        "div_val": 2,
    }
    return TransformerXLConfig(**{**options, **overrides})


class TestTransformerXL:
    def test_adaptive_layers_are_used_and_tied(self):
        model = TransformerXLLMHeadModel(tiny_xl())
        embedding, head = model.transformer.embedding, model.lm_head
        assert isinstance(embedding, AdaptiveEmbedding) and isinstance(head, AdaptiveSoftmax)
        assert head.widths == [16, 8, 4]
        for s, e in zip(head.clusters, embedding.clusters, strict=True):
            assert s.weight is e.weight and s.projection is e.projection
        untied = TransformerXLLMHeadModel(tiny_xl(tie_weights=False, tie_projs=False))
        tail, embedded = untied.lm_head.clusters[1], untied.transformer.embedding.clusters[1]
        assert tail.weight is not embedded.weight and tail.projection is not embedded.projection

        default = TransformerXLLMHeadModel(tiny_xl(cutoffs=None, div_val=1))
        assert isinstance(default.lm_head, nn.Linear)

    def test_loss_is_the_shifted_nll_of_log_prob(self):
        model = TransformerXLLMHeadModel(tiny_xl()).double().eval()
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(0, VOCAB, (2, 9), generator=generator)
        labels = ids.masked_fill(torch.rand(2, 9, generator=generator) < 0.2, -100)
        log_prob = model(ids).logits
        assert log_prob.shape == (2, 9, VOCAB)
        out = model(ids, labels=labels)
        assert out.logits is None
        targets = labels[:, 1:]
        keep = targets != -100
        gathered = log_prob[:, :-1].gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
        assert_close(out.loss, -gathered[keep].mean(), 1e-12)
        # The same as cross-entropy on log-probabilities used as logits.
        expected = F.cross_entropy(log_prob[:, :-1].flatten(0, 1), targets.flatten())
        assert_close(out.loss, expected, 1e-12)

    @pytest.mark.parametrize("segment_len", [1, 4])
    def test_segments_equal_one_full_context_pass(self, segment_len):
        model = TransformerXLLMHeadModel(tiny_xl(embed_dim=12)).double().eval()
        ids = torch.randint(0, VOCAB, (2, 11))
        full = model(ids).logits
        segmented = model.forward_segments(ids, segment_len)
        assert_close(segmented.logits, full, 1e-10)
        mems = model(ids[:, :4]).mems
        assert_close(model(ids[:, 4:], mems=mems).logits, full[:, 4:], 1e-10)

    def test_trains_on_a_zipfian_corpus(self):
        # A fixed sequence of Zipf-distributed words, repeated: the next word is given by
        # the context, and most targets fall in the shortlist, as in a real corpus.
        torch.manual_seed(0)
        generator = torch.Generator().manual_seed(0)
        zipf = 1.0 / torch.arange(1, VOCAB + 1, dtype=torch.float64)
        period = torch.multinomial(zipf, 24, replacement=True, generator=generator)
        ids = period.repeat(2, 2)[:, :40]
        model = TransformerXLLMHeadModel(tiny_xl(depth=1))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        losses = []
        for _ in range(40):
            loss = model(ids, labels=ids).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        assert losses[-1] < 0.3 * losses[0], losses[::10]

    @pytest.mark.parametrize(
        "overrides, error, name",
        [
            ({"cutoffs": (5, 5)}, ValueError, "`cutoffs`"),
            ({"cutoffs": (5, VOCAB)}, ValueError, "`cutoffs`"),
            ({"div_val": 0.5}, ValueError, "`div_val`"),
            ({"tie_projs": (True, False)}, ValueError, "`tie_projs`"),
            ({"cutoffs": None}, ValueError, "`div_val`"),
            ({"cutoffs": None, "div_val": 1, "embed_dim": 8}, ValueError, "`embed_dim`"),
        ],
    )
    def test_bad_config_is_named(self, overrides, error, name):
        with pytest.raises(error, match=name):
            tiny_xl(**overrides)

    def test_bad_labels_and_mems_are_named(self):
        model = TransformerXLLMHeadModel(tiny_xl())
        ids = torch.zeros(2, 4, dtype=torch.long)
        with pytest.raises(ValueError, match="`labels`"):
            model(ids, labels=torch.full((2, 4), VOCAB))
        with pytest.raises(TypeError, match=r"`mems\[0\]`"):
            model(ids, mems=[torch.zeros(2, 3, 16, dtype=torch.float64)] * 2)


# --------------------------------------------------------------------------- paper effect

ZIPF_VOCAB, ZIPF_DIM, ZIPF_CUTOFFS = 1000, 64, (100, 400)


def zipf_bigrams(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(previous, next)`` word pairs: words Zipf-distributed over their rank; half the
    time the next word is a fixed function of the previous one, else a fresh Zipf draw."""
    zipf = 1.0 / torch.arange(1, ZIPF_VOCAB + 1, dtype=torch.float64)
    follow = torch.multinomial(zipf, ZIPF_VOCAB, replacement=True, generator=generator)
    previous = torch.multinomial(zipf, n, replacement=True, generator=generator)
    fresh = torch.multinomial(zipf, n, replacement=True, generator=generator)
    copy = torch.rand(n, generator=generator) < 0.5
    return previous, torch.where(copy, follow[previous], fresh)


def output_macs_per_token(module: AdaptiveSoftmax, targets: torch.Tensor) -> float:
    """Multiply-adds of the loss per token: the head, plus each target's tail cluster."""
    macs = module.dim * (module.shortlist + len(module.clusters) - 1)
    for i, cluster in enumerate(module.clusters[1:], start=1):
        share = ((targets >= module.bounds[i]) & (targets < module.bounds[i + 1])).float().mean()
        size, width = cluster.weight.shape
        macs += share.item() * (module.dim * width + width * size)
    return macs


@pytest.mark.slow
def test_adaptive_softmax_matches_the_full_softmax_at_a_fraction_of_the_compute():
    """Grave et al. 2017: on Zipf-distributed words the adaptive softmax reaches the
    perplexity of the full softmax while computing far less per token. A bigram model
    (embedding, LayerNorm, output layer) is trained both ways on the same batches; the
    adaptive one (cutoffs 100/400 of 1000, widths 64/32/16, input embedding adaptive too)
    costs ~16% of the output layer's multiply-adds. Held-out NLL, seeds 0-2 (400 steps):
    adaptive / full = 1.004, 1.006, 1.004 (both ~3.40 nats, optimum 3.24, chance 6.9).
    """
    data = torch.Generator().manual_seed(100)
    previous, following = zipf_bigrams(200_000, data)
    train, test = slice(0, 180_000), slice(180_000, None)

    def held_out_nll(adaptive: bool) -> tuple[float, nn.Module]:
        torch.manual_seed(0)
        batches = torch.Generator().manual_seed(0)
        if adaptive:
            embedding = AdaptiveEmbedding(ZIPF_VOCAB, ZIPF_DIM, ZIPF_CUTOFFS, div_val=2)
            output = AdaptiveSoftmax(ZIPF_VOCAB, ZIPF_DIM, ZIPF_CUTOFFS, div_val=2)

            def loss_fn(h, y):
                return output(h, y, reduction="mean")
        else:
            embedding = TokenEmbedding(ZIPF_VOCAB, ZIPF_DIM, scale=True)
            nn.init.normal_(embedding.weight, std=0.02)
            output = nn.Linear(ZIPF_DIM, ZIPF_VOCAB)

            def loss_fn(h, y):
                return F.cross_entropy(output(h), y)

        norm = nn.LayerNorm(ZIPF_DIM)
        model = nn.ModuleList([embedding, norm, output])
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(400):
            rows = torch.randint(0, train.stop, (1024,), generator=batches)
            loss = loss_fn(norm(embedding(previous[rows])), following[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            nll = loss_fn(norm(embedding(previous[test])), following[test]).item()
        return nll, output

    adaptive, head = held_out_nll(adaptive=True)
    full, _ = held_out_nll(adaptive=False)
    assert full < 3.6, full  # learned the bigrams (chance: log 1000 = 6.9)
    assert adaptive < 1.02 * full, (adaptive, full)
    macs = output_macs_per_token(head, following[test])
    assert macs < 0.2 * ZIPF_DIM * ZIPF_VOCAB, macs
