"""XLNet permutation LM: targets, factorisation order and masks; Hugging Face's collator and
models as references; the loss of XLNetLMHeadModel on a collated batch.

Hugging Face's ``DataCollatorForPermutationLanguageModeling`` draws from the global
generator with the same calls as :func:`sample_span_targets`, so with the same seed the
targets are equal; its order among the targets (sampled within the two halves of the
sequence) is read back from its ``perm_mask`` and fed to :func:`permutation_masks`.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st

from attnzoo.transformers_zoo.objectives import train_wordpiece
from attnzoo.transformers_zoo.permutation_lm import (
    IGNORE_INDEX,
    PermutationLMCollator,
    permutation_lm_batch,
    permutation_masks,
    random_order,
    sample_span_targets,
)
from attnzoo.transformers_zoo.tasks.corpus import grammar_corpus
from attnzoo.transformers_zoo.xlnet import XLNetConfig, XLNetLMHeadModel

# The ids train_wordpiece gives its specials, in order.
PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIALS = (UNK, CLS, SEP, MASK)
VOCAB = 60


def _batch(batch: int = 16, n: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``[CLS] tokens [SEP] tokens [SEP]`` then padding of random length; and the mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (batch, n), generator=g)
    ids[:, 0] = CLS
    ids[:, n // 3] = SEP
    lengths = torch.randint(n // 2, n + 1, (batch,), generator=g)
    for row, length in enumerate(lengths.tolist()):
        ids[row, length - 1] = SEP
        ids[row, length:] = PAD
    return ids, ids != PAD


def _plm(ids: torch.Tensor, seed: int = 0, **kwargs):
    return permutation_lm_batch(
        ids,
        special_ids=SPECIALS,
        pad_id=PAD,
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )


# --------------------------------------------------------------------------- invariants


def _check_invariants(ids, real, out, mask_token_id=None):
    """Every property of a permutation-LM batch, checked position by position."""
    batch, n = ids.shape
    special = torch.isin(ids, torch.tensor([PAD, *SPECIALS])) | ~real
    target = out.order >= 0
    n_predict = out.target_mapping.shape[1]
    assert out.perm_mask.shape == (batch, n, n) and out.perm_mask.dtype == torch.bool
    assert out.target_mapping.shape == (batch, n_predict, n) and out.labels.shape[1] == n_predict
    assert n_predict == max(1, int(target.sum(1).max()))
    assert torch.equal(out.attention_mask, real)
    for b in range(batch):
        targets = [j for j in range(n) if target[b, j]]
        # Never a special token, padding or a masked-out position.
        assert not any(special[b, j] for j in targets)
        # The targets' ranks are a permutation of 0..k-1; the rest is context (-1).
        assert sorted(int(out.order[b, j]) for j in targets) == list(range(len(targets)))
        assert all(int(out.order[b, j]) == -1 for j in range(n) if not target[b, j])
        context = {j for j in range(n) if not target[b, j]}
        for i in range(n):
            sees = {j for j in range(n) if not out.perm_mask[b, i, j]}
            if target[b, i]:
                # Exactly the tokens before it in the order: the context and the targets of
                # lower rank; never itself.
                rank = int(out.order[b, i])
                earlier = {j for j in targets if int(out.order[b, j]) < rank}
                assert sees == context | earlier, (b, i)
                assert i not in sees
            else:
                assert sees == context, (b, i)  # the context sees the context, no target
        # One-hot target mapping, slot k = the k-th target by position, then zero rows.
        for k in range(n_predict):
            row = out.target_mapping[b, k]
            if k < len(targets):
                assert row.sum() == 1 and row[targets[k]] == 1
                assert out.labels[b, k] == ids[b, targets[k]]
            else:
                assert not row.any() and out.labels[b, k] == IGNORE_INDEX
        expected = ids[b].clone()
        if mask_token_id is not None:
            expected[targets] = mask_token_id
        assert torch.equal(out.input_ids[b], expected)


@settings(max_examples=60)
@given(
    batch=st.integers(1, 4),
    n=st.integers(1, 37),
    probability=st.sampled_from([1 / 6, 0.3, 0.5]),
    max_span_length=st.integers(1, 6),
    seed=st.integers(0, 2**16),
    mask_token_id=st.sampled_from([None, MASK]),
    integer_mask=st.booleans(),
)
def test_invariants_on_random_batches(
    batch, n, probability, max_span_length, seed, mask_token_id, integer_mask
):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (batch, n), generator=g)  # specials anywhere, pads too
    real = torch.rand(batch, n, generator=g) < 0.85  # and masked-out positions
    out = _plm(
        ids,
        seed,
        attention_mask=real.long() if integer_mask else real,
        probability=probability,
        max_span_length=max_span_length,
        mask_token_id=mask_token_id,
    )
    _check_invariants(ids, real, out, mask_token_id)


def test_invariants_on_a_padded_batch_and_a_row_with_nothing_to_predict():
    ids, real = _batch()
    ids[3, 1:] = PAD  # only [CLS] is left
    real[3, 1:] = False
    out = _plm(ids)
    _check_invariants(ids, real, out)
    assert not (out.order[3] >= 0).any() and (out.labels[3] == IGNORE_INDEX).all()
    assert (out.order >= 0).sum() > 50


def test_target_rate_spans_and_a_uniform_order():
    ids = torch.randint(5, VOCAB, (512, 120), generator=torch.Generator().manual_seed(0))
    out = _plm(ids)
    target = out.order >= 0
    # Windows of 6 L tokens hold spans of L: 1/6 of the tokens, less a little at the end of
    # each row where a span is cut (measured 0.163 on this batch).
    rate = float(target.float().mean())
    assert 0.155 < rate < 0.172
    starts = target & ~torch.roll(target, 1, dims=1)
    starts[:, 0] = target[:, 0]
    mean_run = float(target.sum() / starts.sum())
    # Spans of 1..5 tokens (mean 3); adjacent windows sometimes join two runs.
    assert 2.8 < mean_run < 3.6
    single = _plm(ids, max_span_length=1).order >= 0
    assert abs(float(single.float().mean()) - 1 / 6) < 0.01
    # The order is not the left-to-right one: the first target of a row is predicted before
    # the second about half of the time.
    firsts = [row[row >= 0][:2] for row in out.order if int((row >= 0).sum()) >= 2]
    before = sum(int(a < b) for a, b in firsts) / len(firsts)
    assert abs(before - 0.5) < 0.06


def test_seeded_and_the_collator_draws_afresh():
    ids, real = _batch()
    a, b = _plm(ids, 3), _plm(ids, 3)
    assert torch.equal(a.perm_mask, b.perm_mask) and torch.equal(a.labels, b.labels)
    collator = PermutationLMCollator(SPECIALS, PAD, seed=1)
    first = collator({"input_ids": ids, "attention_mask": real, "extra": ids})
    second = collator({"input_ids": ids, "attention_mask": real})
    assert set(first) == {
        "input_ids", "attention_mask", "perm_mask", "target_mapping", "labels", "extra"
    }  # fmt: skip
    assert not torch.equal(first["perm_mask"], second["perm_mask"])
    again = PermutationLMCollator(SPECIALS, PAD, seed=1)({"input_ids": ids})
    assert torch.equal(again["perm_mask"], first["perm_mask"])  # the mask from pad_id alone
    assert torch.equal(again["labels"], first["labels"])


def test_permutation_masks_of_a_given_order():
    order = torch.tensor([[-1, 1, -1, 0, 2], [2, 0, 1, -1, -1]])
    perm_mask, target_mapping = permutation_masks(order)
    # Row 0: targets 3 (first), 1, 4; the context 0 and 2.
    assert perm_mask[0].int().tolist() == [
        [0, 1, 0, 1, 1],
        [0, 1, 0, 0, 1],
        [0, 1, 0, 1, 1],
        [0, 1, 0, 1, 1],
        [0, 0, 0, 0, 1],
    ]
    assert target_mapping[0].int().tolist() == [
        [0, 1, 0, 0, 0],
        [0, 0, 0, 1, 0],
        [0, 0, 0, 0, 1],
    ]
    assert target_mapping[1].argmax(-1).tolist() == [0, 1, 2]
    assert torch.equal(random_order(order >= 0, torch.Generator()) >= 0, order >= 0)


# --------------------------------------------------------------------------- Hugging Face


@pytest.fixture(scope="module")
def hf_collator():
    corpus = grammar_corpus(30, seed=0)
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=train_wordpiece(s for document in corpus for s in document),
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    assert (tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.mask_token_id) == (
        PAD,
        CLS,
        MASK,
    )
    return transformers.DataCollatorForPermutationLanguageModeling(tokenizer=tokenizer)


def _hf(collator, ids: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return collator(list(ids))


def _hf_order(hf: dict[str, torch.Tensor]) -> torch.Tensor:
    """The order of Hugging Face's targets: a target's rank is how many targets it sees."""
    target = hf["labels"] != IGNORE_INDEX
    sees = (hf["perm_mask"] == 0) & target[:, None, :]
    return torch.where(target, sees.sum(-1), torch.full_like(hf["labels"], -1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_targets_labels_and_inputs_equal_hugging_face_for_the_same_seed(hf_collator, seed):
    ids, _ = _batch(24, 40, seed)
    hf = _hf(hf_collator, ids, seed)
    ours = _plm(ids, seed, mask_token_id=MASK)
    hf_target = hf["labels"] != IGNORE_INDEX
    assert hf_target.sum() > 80
    assert torch.equal(ours.order >= 0, hf_target)
    assert torch.equal(ours.input_ids, hf["input_ids"])  # targets replaced by [MASK]
    for b in range(ids.shape[0]):
        k = int(hf_target[b].sum())
        assert torch.equal(ours.labels[b, :k], hf["labels"][b][hf_target[b]])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_perm_mask_and_target_mapping_equal_hugging_face_for_its_order(hf_collator, seed):
    ids, real = _batch(24, 40, seed)
    hf = _hf(hf_collator, ids, seed)
    order = _hf_order(hf)
    perm_mask, target_mapping = permutation_masks(order)  # raises if not an order
    hf_mask = hf["perm_mask"].bool()
    ordinary = real & ~torch.isin(ids, torch.tensor(SPECIALS))
    # The rows of ordinary tokens (targets and context) agree exactly.
    assert torch.equal(perm_mask[ordinary], hf_mask[ordinary])
    # A special token is context here: it sees no target. Hugging Face's sees the targets
    # placed before it in its order, so it hides a subset of what ours hides.
    target = order >= 0
    assert torch.equal(perm_mask[~ordinary], target[:, None, :].expand_as(perm_mask)[~ordinary])
    assert not (hf_mask[~ordinary] & ~perm_mask[~ordinary]).any()
    # Hugging Face's mapping is the identity with labels on every position; ours keeps
    # its rows at the targets, in position order.
    for b in range(ids.shape[0]):
        k = int(target[b].sum())
        assert torch.equal(target_mapping[b, :k], hf["target_mapping"][b][target[b]])
        assert not target_mapping[b, k:].any()


# --------------------------------------------------------------------------- the model


def _xlnet(seed: int = 0) -> XLNetLMHeadModel:
    torch.manual_seed(seed)
    config = XLNetConfig(
        vocab_size=VOCAB, d_model=32, n_layer=2, n_head=4, d_inner=64, dropout=0.0, pad_token_id=0
    )
    model = XLNetLMHeadModel(config).eval()
    with torch.no_grad():  # larger weights than the 0.02 init, so that every input shows
        for name, param in model.named_parameters():
            if "layer_norm" not in name:
                param.normal_(0.0, 0.2)
    return model


def _forward(model, out, input_ids=None, **kwargs):
    return model(
        out.input_ids if input_ids is None else input_ids,
        attention_mask=out.attention_mask,
        perm_mask=out.perm_mask,
        target_mapping=out.target_mapping,
        **kwargs,
    )


def test_xlnet_loss_is_the_cross_entropy_of_the_targets_only():
    model = _xlnet()
    ids, _ = _batch(6, 30)
    out = _plm(ids, 1)
    with torch.no_grad():
        result = _forward(model, out, labels=out.labels)
    scored = out.labels != IGNORE_INDEX
    assert result.logits.shape == (6, out.target_mapping.shape[1], VOCAB)
    assert (~scored).any()  # some rows have empty slots, which must not count
    by_hand = -F.log_softmax(result.logits[scored], -1).gather(1, out.labels[scored, None])
    torch.testing.assert_close(result.loss, by_hand.mean(), rtol=1e-6, atol=1e-6)
    # Hugging Face's collator layout (one slot per position, -100 off the targets) gives
    # the same loss: only the targets count.
    n = ids.shape[1]
    full_labels = torch.where(out.order >= 0, ids, IGNORE_INDEX)
    with torch.no_grad():
        full = model(
            out.input_ids, attention_mask=out.attention_mask, perm_mask=out.perm_mask,
            target_mapping=torch.eye(n).expand(6, n, n), labels=full_labels,
        )  # fmt: skip
    torch.testing.assert_close(full.loss, result.loss, rtol=1e-5, atol=1e-6)


def test_xlnet_predictions_see_only_what_comes_before_them_in_the_order():
    model = _xlnet()
    ids, _ = _batch(4, 36, seed=3)
    out = _plm(ids, 2, probability=0.3)
    with torch.no_grad():
        base = _forward(model, out).logits
    changed_later = 0
    for b in range(ids.shape[0]):
        targets = torch.nonzero(out.order[b] >= 0).flatten().tolist()
        ranks = out.order[b, targets]
        for t in targets:
            edited = out.input_ids.clone()
            edited[b, t] = 5 + (int(edited[b, t]) - 4) % (VOCAB - 5)  # another ordinary id
            with torch.no_grad():
                logits = _forward(model, out, edited).logits[b, : len(targets)]
            rank = int(out.order[b, t])
            same = (logits - base[b, : len(targets)]).abs().amax(-1) < 1e-5
            # The target itself and every target before it cannot see the edited token ...
            assert same[ranks <= rank].all(), (b, t)
            # ... every target after it does.
            assert not same[ranks > rank].any(), (b, t)
            changed_later += int((ranks > rank).sum())
    assert changed_later > 40
    # Editing a context token moves every prediction of its row.
    context = (out.order[0] < 0) & ~torch.isin(ids[0], torch.tensor([PAD, *SPECIALS]))
    edited = out.input_ids.clone()
    edited[0, int(torch.nonzero(context)[0])] = 5 + (int(edited[0, 1]) - 4) % (VOCAB - 5)
    with torch.no_grad():
        logits = _forward(model, out, edited).logits
    k = int((out.order[0] >= 0).sum())
    assert ((logits[0, :k] - base[0, :k]).abs().amax(-1) > 1e-5).all()


def test_hugging_face_xlnet_reads_the_batch_as_attnzoo_does(tmp_path):
    torch.manual_seed(0)
    hf_config = transformers.XLNetConfig(
        vocab_size=VOCAB, d_model=32, n_layer=2, n_head=4, d_inner=64, dropout=0.0,
        mem_len=None, pad_token_id=PAD,
    )  # fmt: skip
    hf = transformers.XLNetLMHeadModel(hf_config).eval()
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if "layer_norm" not in name:
                param.normal_(0.0, 0.2)
    hf.save_pretrained(tmp_path)
    ours = XLNetLMHeadModel.from_pretrained(tmp_path).eval()
    ids, _ = _batch(5, 26, seed=4)
    out = _plm(ids, 4)
    with torch.no_grad():
        a = hf(
            out.input_ids, attention_mask=out.attention_mask.long(),
            perm_mask=out.perm_mask.float(), target_mapping=out.target_mapping,
            labels=out.labels, use_mems=False,
        )  # fmt: skip
        b = _forward(ours, out, labels=out.labels)
    # Tolerance as tests/transformers_zoo/test_xlnet.py: 1e-5 in float32.
    torch.testing.assert_close(b.logits, a.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(b.loss, a.loss, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- errors


def test_errors():
    ids, real = _batch(2, 10)
    with pytest.raises(TypeError, match="input_ids"):
        _plm(ids.float())
    with pytest.raises(ValueError, match="input_ids"):
        _plm(ids[0])
    with pytest.raises(ValueError, match="probability"):
        _plm(ids, probability=1.0)
    with pytest.raises(ValueError, match="max_span_length"):
        _plm(ids, max_span_length=0)
    with pytest.raises(TypeError, match="attention_mask"):
        _plm(ids, attention_mask=real.float())
    with pytest.raises(ValueError, match="attention_mask"):
        _plm(ids, attention_mask=real[:, :5])
    with pytest.raises(ValueError, match="order"):
        permutation_masks(torch.tensor([[0, 0, -1]]))  # a rank twice
    with pytest.raises(ValueError, match="order"):
        permutation_masks(torch.tensor([[1, -2, -1]]))
    with pytest.raises(TypeError, match="order"):
        permutation_masks(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="input_ids"):
        PermutationLMCollator(SPECIALS, PAD)({"ids": ids})
    with pytest.raises(ValueError, match="probability"):
        PermutationLMCollator(SPECIALS, PAD, probability=0.0)
    with pytest.raises(ValueError, match="length"):
        sample_span_targets(torch.ones(2, 3, dtype=torch.bool), max_span_length=-1)
    with pytest.raises(TypeError, match="candidates"):
        sample_span_targets(torch.ones(2, 3))
    with pytest.raises(ValueError, match="targets"):
        random_order(torch.ones(3, dtype=torch.bool))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_matches_cpu():
    ids, real = _batch()
    cpu = _plm(ids, 5, attention_mask=real)
    cuda = _plm(ids.cuda(), 5, attention_mask=real.cuda())
    assert cuda.perm_mask.device.type == "cuda"
    for name in ("input_ids", "perm_mask", "target_mapping", "labels", "order"):
        assert torch.equal(getattr(cpu, name), getattr(cuda, name).cpu()), name
