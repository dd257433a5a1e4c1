"""XLNet's recurrence memory ``mems``: parity with Hugging Face over consecutive segments.

Hugging Face models are built from small configs with random weights (no download), saved
to ``tmp_path`` and loaded by ours. Each model is fed three segments in a row (lengths 7, 5
and 4: the memory is longer, shorter and cut), every segment with the memory the same model
returned for the one before: padding and two token types on the first and last, a random
factorisation order (``perm_mask`` + ``target_mapping``, the query stream) on the second.
Hugging Face keeps a memory length-first ``(m, batch, d_model)``; ours is batch-first
``(batch, m, d_model)`` and is compared transposed. Tolerance: max abs diff <= 1e-5 in
float32, padded positions included (measured: at most 1.2e-6 on logits and memories,
2.1e-7 on attention weights).
"""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import Tensor

from attnzoo.transformers_zoo.xlnet import (
    XLNetConfig,
    XLNetLMHeadModel,
    XLNetModel,
    cache_memory,
    relative_positions,
)

TOL = 1e-5
VOCAB, N_LAYER, BATCH = 97, 3, 3
SEGMENTS = (7, 5, 4)


def hf_lm(tmp_path, seed: int = 0, **kwargs) -> transformers.XLNetLMHeadModel:
    """A random Hugging Face ``XLNetLMHeadModel`` saved to ``tmp_path``, in eval mode."""
    options = {
        "vocab_size": VOCAB,
        "d_model": 48,
        "n_layer": N_LAYER,
        "n_head": 4,
        "d_inner": 80,
        "layer_norm_eps": 1e-6,
        "pad_token_id": 0,
        **kwargs,
    }
    torch.manual_seed(seed)
    model = transformers.XLNetLMHeadModel(transformers.XLNetConfig(**options)).eval()
    # Scores made large enough that a wrong offset, mask or segment over the memory shows.
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.normal_(0.0, 0.3 if "layer_1.weight" in name else 0.1)
            if "layer_norm" in name and name.endswith("weight"):
                param.add_(1.0)
    model.save_pretrained(tmp_path)
    return model


def segment_inputs(index: int, n: int, generator: torch.Generator) -> tuple[Tensor, dict]:
    """Ids ``(BATCH, n)`` and the keyword inputs of segment ``index`` (see module doc)."""
    ids = torch.randint(1, VOCAB, (BATCH, n), generator=generator)
    types = (torch.arange(n) >= n // 2).long().expand(BATCH, n).clone()
    if index == 1:
        order = torch.stack([torch.randperm(n, generator=generator) for _ in range(BATCH)])
        perm_mask = (order[:, None, :] >= order[:, :, None]).float()
        target_mapping = torch.zeros(BATCH, 2, n)
        for b in range(BATCH):
            target_mapping[b, torch.arange(2), order[b].argsort()[-2:]] = 1.0
        return ids, {
            "perm_mask": perm_mask,
            "target_mapping": target_mapping,
            "token_type_ids": types,
        }
    mask = torch.ones(BATCH, n, dtype=torch.long)
    mask[0, n - 2 :] = 0
    mask[1, n - 1 :] = 0
    ids[mask == 0] = 0
    return ids, {"attention_mask": mask, "token_type_ids": types}


def length_first(mems: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Our batch-first memory in Hugging Face's layout."""
    return tuple(mem.transpose(0, 1) for mem in mems)


@pytest.mark.parametrize(
    "options, lengths",
    [
        ({"mem_len": None}, (7, 12, 16)),
        ({"mem_len": 6}, (6, 6, 6)),
        ({"mem_len": 5, "reuse_len": 3}, (3, 5, 5)),
        ({"mem_len": 8, "clamp_len": 3, "ff_activation": "gelu_new"}, (7, 8, 8)),
    ],
    ids=["keep-all", "mem_len", "reuse_len", "clamp"],
)
def test_consecutive_segments_match_hf(tmp_path, options, lengths):
    hf = hf_lm(tmp_path, **options)
    ours = XLNetLMHeadModel.from_pretrained(tmp_path).eval()
    assert (ours.config.mem_len, ours.config.reuse_len) == (hf.config.mem_len, hf.config.reuse_len)
    generator = torch.Generator().manual_seed(1)
    hf_mems = our_mems = None
    for index, (n, length) in enumerate(zip(SEGMENTS, lengths, strict=True)):
        ids, inputs = segment_inputs(index, n, generator)
        with torch.no_grad():
            a = hf(ids, mems=hf_mems, output_attentions=True, **inputs)
            b = ours(ids, mems=our_mems, output_attentions=True, **inputs)
        assert (a.logits - b.logits).abs().max().item() <= TOL, index
        assert len(b.mems) == N_LAYER
        for mem_a, mem_b in zip(a.mems, length_first(b.mems), strict=True):
            assert mem_b.shape == mem_a.shape == (length, BATCH, 48)
            assert (mem_a - mem_b).abs().max().item() <= TOL
        assert not any(mem.requires_grad for mem in b.mems)
        # Attention now reaches the memory: (batch, heads, n, m + n), both streams.
        m = 0 if our_mems is None else our_mems[0].shape[1]
        first_a, first_b = a.attentions[0], b.attentions[0]
        if index == 1:
            (first_a, query_a), (first_b, query_b) = first_a, first_b
            assert query_b.shape == (BATCH, 4, n, m + n)
            assert (query_a - query_b).abs().max().item() <= TOL
        assert first_b.shape == (BATCH, 4, n, m + n)
        assert (first_a - first_b).abs().max().item() <= TOL
        hf_mems, our_mems = a.mems, b.mems


def test_memory_changes_the_output_and_is_used_as_given(tmp_path):
    """The memory is attended to (the output moves with it), whether or not a new memory
    is returned, and a memory of length 0 is no memory."""
    hf_lm(tmp_path, mem_len=None)
    ours = XLNetModel.from_pretrained(tmp_path).eval()
    generator = torch.Generator().manual_seed(2)
    first = torch.randint(1, VOCAB, (BATCH, 6), generator=generator)
    ids = torch.randint(1, VOCAB, (BATCH, 4), generator=generator)
    with torch.no_grad():
        mems = ours(first).mems
        alone = ours(ids).last_hidden_state
        after = ours(ids, mems=mems)
        kept = ours(ids, mems=mems, use_mems=False)
        empty = ours(ids, mems=tuple(mem[:, :0] for mem in mems)).last_hidden_state
    assert (after.last_hidden_state - alone).abs().max().item() > 0.1
    assert kept.mems is None and torch.equal(kept.last_hidden_state, after.last_hidden_state)
    assert torch.allclose(empty, alone, atol=1e-6)
    # The memory of layer i is layer i's input: the word embeddings for the first layer.
    assert torch.equal(after.mems[0][:, 6:], ours.word_embedding(ids))


def test_use_mems_defaults_follow_the_mode_as_hf(tmp_path):
    hf = hf_lm(tmp_path, mem_len=4)
    ours = XLNetLMHeadModel.from_pretrained(tmp_path)
    config = ours.config
    assert (config.use_mems_eval, config.use_mems_train) == (True, False)
    assert XLNetConfig().mem_len == transformers.XLNetConfig().mem_len == 512
    ids = torch.randint(1, VOCAB, (2, 5), generator=torch.Generator().manual_seed(3))
    for train in (False, True):
        hf.train(train)
        ours.train(train)
        assert (hf(ids).mems is None) == (ours(ids).mems is None) == train
        assert ours(ids, use_mems=True).mems[0].shape == (2, 4, 48)  # mem_len = 4
        assert ours(ids, use_mems=False).mems is None
    eval_off = XLNetLMHeadModel.from_pretrained(tmp_path, use_mems_eval=False).eval()
    assert eval_off(ids).mems is None


def test_training_with_memory_reaches_every_parameter_not_the_memory():
    torch.manual_seed(0)
    config = XLNetConfig(vocab_size=12, d_model=16, n_layer=2, n_head=2, d_inner=8, mem_len=5)
    model = XLNetLMHeadModel(config).train()
    mems = model(torch.randint(0, 12, (2, 7)), use_mems=True).mems
    assert [tuple(mem.shape) for mem in mems] == [(2, 5, 16)] * 2
    mems = tuple(mem.requires_grad_() for mem in mems)
    ids = torch.randint(0, 12, (2, 4))
    out = model(ids, mems=mems, labels=ids, token_type_ids=torch.ones_like(ids))
    out.loss.backward()
    for name, param in model.named_parameters():
        if name != "transformer.mask_emb":  # the query stream is off
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert all(mem.grad is not None for mem in mems)  # a given memory is an input like any


def test_cache_memory_and_positions():
    x = torch.arange(2 * 5 * 1.0).reshape(2, 5, 1)
    memory = -torch.ones(2, 3, 1)
    assert torch.equal(cache_memory(x, None, None, None), x)
    assert torch.equal(cache_memory(x, memory, 0, 0), torch.cat([memory, x], 1))
    assert torch.equal(cache_memory(x, memory, 4, None), x[:, 1:])
    assert torch.equal(cache_memory(x, memory, 4, 2), torch.cat([memory[:, 1:], x[:, :2]], 1))
    table = relative_positions(3, 8, clamp_len=-1, device=torch.device("cpu"), memory_len=2)
    assert table.shape == (2 + 2 * 3, 8)
    assert torch.allclose(table[5], torch.cat([torch.zeros(4), torch.ones(4)]))  # distance 0
    assert torch.equal(table[2:], relative_positions(3, 8, -1, torch.device("cpu")))


def test_config_fields_round_trip_and_errors(tmp_path):
    hf_lm(tmp_path, mem_len=7, reuse_len=2, use_mems_eval=False, use_mems_train=True)
    config = XLNetLMHeadModel.from_pretrained(tmp_path).config
    assert (config.mem_len, config.reuse_len) == (7, 2)
    assert (config.use_mems_eval, config.use_mems_train) == (False, True)
    assert not {"use_mems_eval", "use_mems_train"} & set(config.extra)
    assert XLNetModel.config_from_hf(XLNetModel.config_to_hf(config)) == config
    base = {"vocab_size": 10, "d_model": 16, "n_head": 2}
    for kwargs, error in [
        ({"mem_len": -1}, ValueError),
        ({"reuse_len": -2}, ValueError),
        ({"mem_len": 2.5}, TypeError),
        ({"reuse_len": True}, TypeError),
        ({"use_mems_eval": 1}, TypeError),
        ({"use_mems_train": None}, TypeError),
    ]:
        name = next(iter(kwargs))
        with pytest.raises(error, match=f"`{name}`"):
            XLNetConfig(**base, **kwargs)


def test_mems_errors():
    torch.manual_seed(0)
    model = XLNetModel(XLNetConfig(vocab_size=10, d_model=16, n_layer=2, n_head=2, d_inner=8))
    model.eval()
    ids = torch.randint(0, 10, (2, 5))
    good = torch.zeros(2, 3, 16)
    for mems, error, match in [
        (good, TypeError, "`mems` must be a tuple"),
        ((good,), ValueError, r"one tensor per layer \(n_layer = 2\), got 1"),
        ((good, [0.0]), TypeError, r"mems\[1\]"),
        ((good, good[0]), ValueError, r"mems\[1\].*\(batch, m, d_model\)"),
        ((good, good[:1]), ValueError, r"mems\[1\].*batch size"),
        ((good, good[:, :2]), ValueError, r"mems\[1\].*memory length"),
        ((good, torch.zeros(2, 3, 8)), ValueError, r"mems\[1\].*d_model"),
        ((good, good.double()), TypeError, r"mems\[1\].*dtype"),
        ((good, good.to("meta")), ValueError, r"mems\[1\].*device of `input_ids`"),
    ]:
        with pytest.raises(error, match=match):
            model(ids, mems=mems)
    with pytest.raises(TypeError, match="use_mems"):
        model(ids, use_mems=1)
