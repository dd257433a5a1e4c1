"""``generate`` of XLM and XLNet: token-for-token parity with Hugging Face's ``generate``.

Both models are built by ``transformers`` from tiny configs with random weights (no
download), saved to a temporary directory and loaded by ours. The weights are widened (as
in the parity tests of the two models) so that the prompts steer the output, and the EOS
logit is raised so that some hypotheses end early and the length penalty matters.

Beam search: ours keeps searching while an open beam could still beat the worst finished
hypothesis (an exact bound), which is Hugging Face's ``early_stopping="never"``; with
``length_normalization="length"`` it ranks as Hugging Face does (``sum log p / L ** lp``).

XLNet runs twice: with the default, which carries the memory ``mems`` from step to step
(Hugging Face's default ``use_mems``), and with ``use_mems_eval=False`` in our config against
Hugging Face's ``generate(..., use_mems=False)`` (the whole sequence every step). The two
pick different tokens on these models, so each parity is a test of its own path.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import transformers

from attnzoo.transformers_zoo.generation import length_penalty_factor
from attnzoo.transformers_zoo.xlm import XLMWithLMHeadModel
from attnzoo.transformers_zoo.xlnet import XLNetLMHeadModel

VOCAB, PROMPT, NEW = 61, 5, 10
EOS_BOOST = 2.5
# Feed-forward inputs and attention projections of XLM and XLNet.
WIDE = ("lin1.weight", "_lin.weight", "layer_1.weight", "rel_attn.q", "rel_attn.k", "rel_attn.v")
XLM_EOS, XLM_PAD, XLM_MASK, XLM_LANG = 1, 2, 4, 2
XLNET_EOS, XLNET_PAD = 2, 5


def widen(model: torch.nn.Module, head: str, eos: int) -> None:
    """Random weights large enough to make the generated tokens depend on the prompt,
    and a raised EOS logit (``head`` names the output layer)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(key in name for key in WIDE):
                std = 0.3
            elif name.startswith(head) and name.endswith("weight"):
                std = 0.5
            else:
                std = 0.1
            param.normal_(0.0, std)
            if "layer_norm" in name and name.endswith("weight"):
                param.add_(1.0)
            if name.startswith(head) and name.endswith("bias"):
                param[eos] += EOS_BOOST


def xlm_pair(tmp_path, causal: bool, seed: int = 0):
    config = transformers.XLMConfig(
        vocab_size=VOCAB,
        emb_dim=32,
        n_layers=2,
        n_heads=4,
        n_langs=3,
        max_position_embeddings=24,
        layer_norm_eps=1e-6,
        tie_word_embeddings=False,
        mask_token_id=XLM_MASK,
        lang_id=XLM_LANG,
        causal=causal,
    )
    torch.manual_seed(seed)
    hf = transformers.XLMWithLMHeadModel(config).eval()
    widen(hf, "pred_layer", XLM_EOS)
    hf.save_pretrained(tmp_path)
    return hf, XLMWithLMHeadModel.from_pretrained(tmp_path).eval()


def xlnet_pair(tmp_path, seed: int = 1, mem_len: int | None = None, **overrides):
    """Hugging Face's XLNet and ours with its weights (``overrides``: our config fields)."""
    config = transformers.XLNetConfig(
        vocab_size=VOCAB,
        d_model=32,
        n_layer=2,
        n_head=4,
        d_inner=64,
        mem_len=mem_len,
        layer_norm_eps=1e-6,
        tie_word_embeddings=False,
        eos_token_id=XLNET_EOS,
        pad_token_id=XLNET_PAD,
    )
    torch.manual_seed(seed)
    hf = transformers.XLNetLMHeadModel(config).eval()
    widen(hf, "lm_loss", XLNET_EOS)
    hf.save_pretrained(tmp_path)
    return hf, XLNetLMHeadModel.from_pretrained(tmp_path, **overrides).eval()


@dataclass
class Pair:
    """A Hugging Face model, ours with its weights, their EOS and padding ids, and the
    Hugging Face ``generate`` options that give our algorithm."""

    hf: torch.nn.Module
    ours: torch.nn.Module
    eos: int
    pad: int
    hf_options: dict

    def hf_generate(self, ids: torch.Tensor, **kwargs) -> torch.Tensor:
        options = {"max_new_tokens": NEW, "do_sample": False, **self.hf_options}
        if kwargs.get("num_beams", 1) > 1:
            options["early_stopping"] = "never"
        return self.hf.generate(ids, **options, **kwargs)


@pytest.fixture(scope="module", params=["xlm", "xlm-causal", "xlnet", "xlnet-no-mems"])
def pair(request, tmp_path_factory) -> Pair:
    path = tmp_path_factory.mktemp(request.param)
    if request.param == "xlnet":
        return Pair(*xlnet_pair(path), XLNET_EOS, XLNET_PAD, {})
    if request.param == "xlnet-no-mems":
        models = xlnet_pair(path, use_mems_eval=False)
        return Pair(*models, XLNET_EOS, XLNET_PAD, {"use_mems": False})
    hf, ours = xlm_pair(path, causal=request.param == "xlm-causal")
    return Pair(hf, ours, XLM_EOS, XLM_PAD, {})


def prompts(seed: int = 1, batch: int = 3) -> torch.Tensor:
    """``(batch, PROMPT)`` ids above XLM's special tokens (0..4)."""
    return torch.randint(5, VOCAB, (batch, PROMPT), generator=torch.Generator().manual_seed(seed))


def assert_same_tokens(ours: torch.Tensor, theirs: torch.Tensor, pad: int) -> None:
    """Equal tokens; Hugging Face may pad its beam output a little further."""
    assert torch.equal(ours, theirs[:, : ours.shape[1]])
    assert theirs[:, ours.shape[1] :].eq(pad).all()


def test_length_normalizations():
    assert length_penalty_factor(4, 2.0, "length") == 16.0
    assert length_penalty_factor(4, 2.0, "gnmt") == pytest.approx((9 / 6) ** 2)
    assert length_penalty_factor(4, 2.0) == length_penalty_factor(4, 2.0, "gnmt")
    with pytest.raises(ValueError, match="length_normalization"):
        length_penalty_factor(4, 2.0, "hf")


# ---------------------------------------------------------------------------------------
# Parity with Hugging Face, every model
# ---------------------------------------------------------------------------------------


def test_greedy_matches_hf(pair):
    ids = prompts()
    got = pair.ours.generate(ids, max_new_tokens=NEW)
    assert torch.equal(got, pair.hf_generate(ids))
    assert got[:, :PROMPT].equal(ids)
    assert len(set(got[:, PROMPT:].flatten().tolist())) > 2  # not one repeated token
    assert not torch.equal(got[0, PROMPT:], got[1, PROMPT:])  # the prompt matters


def test_beam_search_with_length_penalty_matches_hf(pair):
    ids = prompts()
    got = pair.ours.generate(
        ids, max_new_tokens=NEW, num_beams=3, length_penalty=2.0, length_normalization="length"
    )
    assert_same_tokens(got, pair.hf_generate(ids, num_beams=3, length_penalty=2.0), pair.pad)
    plain = pair.ours.generate(ids, max_new_tokens=NEW, num_beams=3, length_penalty=0.0)
    assert_same_tokens(plain, pair.hf_generate(ids, num_beams=3, length_penalty=0.0), pair.pad)
    # Some hypotheses end early and the penalty changes the chosen ones: not vacuous.
    assert plain.eq(pair.eos).any()
    width = min(got.shape[1], plain.shape[1])
    assert not torch.equal(got[:, :width], plain[:, :width])


def test_repetition_penalty_and_min_new_tokens_match_hf(pair):
    ids = prompts(seed=3)
    kwargs = dict(repetition_penalty=1.8, min_new_tokens=6)
    got = pair.ours.generate(ids, max_new_tokens=NEW, **kwargs)
    assert torch.equal(got, pair.hf_generate(ids, **kwargs))
    assert not got[:, PROMPT : PROMPT + 6].eq(pair.eos).any()
    assert not torch.equal(got, pair.ours.generate(ids, max_new_tokens=NEW))


def test_sampling_is_reproducible(pair):
    ids = prompts()
    kwargs = dict(max_new_tokens=NEW, do_sample=True, temperature=1.3, top_k=8, top_p=0.9)
    a = pair.ours.generate(ids, generator=torch.Generator().manual_seed(7), **kwargs)
    b = pair.ours.generate(ids, generator=torch.Generator().manual_seed(7), **kwargs)
    c = pair.ours.generate(ids, generator=torch.Generator().manual_seed(8), **kwargs)
    assert torch.equal(a, b) and not torch.equal(a, c)
    one = pair.ours.generate(ids, max_new_tokens=NEW, do_sample=True, top_k=1)
    assert torch.equal(one, pair.ours.generate(ids, max_new_tokens=NEW))


def test_padded_prompts_are_refused(pair):
    """Hugging Face's XLM and XLNet ``generate`` drop ``attention_mask``: a padded batch
    would be read as real tokens, so ours refuses it."""
    ids = prompts()
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    with pytest.raises(ValueError, match="attention_mask.*unpadded"):
        pair.ours.generate(ids, attention_mask=mask, max_new_tokens=3)
    with pytest.raises(TypeError, match="attention_mask"):
        pair.ours.generate(ids, attention_mask=mask.float(), max_new_tokens=3)
    full = pair.ours.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3)
    assert torch.equal(full, pair.ours.generate(ids, max_new_tokens=3))
    with pytest.raises(ValueError, match="input_ids"):
        pair.ours.generate(ids + VOCAB, max_new_tokens=3)
    with pytest.raises(ValueError, match="pad_token_id"):
        pair.ours.generate(ids, pad_token_id=-1, max_new_tokens=3)
    with pytest.raises(ValueError, match="length_normalization"):
        pair.ours.generate(ids, num_beams=2, length_normalization="hf", max_new_tokens=3)


# ---------------------------------------------------------------------------------------
# XLM: languages and its own errors
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def xlm(tmp_path_factory):
    return xlm_pair(tmp_path_factory.mktemp("xlm-langs"), causal=False)


def test_xlm_languages(xlm):
    """``lang_id`` defaults to the config's (Hugging Face fills every position with it);
    prompt languages ``langs`` are ours only: checked against a hand-written loop."""
    hf, ours = xlm
    ids = prompts(seed=4, batch=2)
    default = ours.generate(ids, max_new_tokens=NEW)
    assert torch.equal(default, ours.generate(ids, max_new_tokens=NEW, lang_id=XLM_LANG))
    hf.config.lang_id = 0
    try:
        want = hf.generate(ids, max_new_tokens=NEW, do_sample=False)
    finally:
        hf.config.lang_id = XLM_LANG
    assert torch.equal(ours.generate(ids, max_new_tokens=NEW, lang_id=0), want)
    assert not torch.equal(want, default)  # the language embedding matters
    langs = torch.tensor([[0, 0, 1, 1, 0], [1, 0, 1, 0, 1]])
    got = ours.generate(ids, langs=langs, max_new_tokens=NEW)
    for row in range(2):  # each prompt alone: no padding after another row's EOS
        tokens, token_langs = ids[row : row + 1], langs[row : row + 1]
        while tokens.shape[1] < PROMPT + NEW and tokens[0, -1] != XLM_EOS:
            masked = torch.cat([tokens, torch.tensor([[XLM_MASK]])], dim=1)
            masked_langs = torch.cat([token_langs, torch.tensor([[XLM_LANG]])], dim=1)
            with torch.no_grad():
                logits = ours(masked, langs=masked_langs).logits[:, -1]
            tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
            token_langs = torch.cat([token_langs, torch.tensor([[XLM_LANG]])], dim=1)
        n = tokens.shape[1]
        assert torch.equal(got[row, :n], tokens[0]) and got[row, n:].eq(XLM_PAD).all()
    assert not torch.equal(got, default)


def test_xlm_input_errors(xlm):
    _, ours = xlm
    ids = prompts()
    padded = ids.clone()
    padded[0, :2] = XLM_PAD
    with pytest.raises(ValueError, match="pad_index"):
        ours.generate(padded, max_new_tokens=3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        ours.generate(ids, max_new_tokens=20)  # 5 + 20 > 24 positions
    with pytest.raises(ValueError, match="lang_id"):
        ours.generate(ids, lang_id=3, max_new_tokens=3)
    with pytest.raises(ValueError, match="langs"):
        ours.generate(ids, langs=torch.zeros(3, 4, dtype=torch.long), max_new_tokens=3)
    with pytest.raises(TypeError, match="unexpected keyword"):
        ours.generate(ids, perm_mask=None, max_new_tokens=3)


# ---------------------------------------------------------------------------------------
# XLNet: one step by hand
# ---------------------------------------------------------------------------------------


def test_xlnet_step_is_the_hidden_dummy_prediction(tmp_path):
    """The logits of a dummy token that no position can see, read through the query
    stream, are the ones generate follows."""
    _, ours = xlnet_pair(tmp_path)
    ids = prompts(seed=5, batch=2)
    n = PROMPT + 1
    perm_mask = torch.zeros(2, n, n)
    perm_mask[:, :, -1] = 1.0
    target_mapping = torch.zeros(2, 1, n)
    target_mapping[:, 0, -1] = 1.0
    with torch.no_grad():
        logits = ours(
            torch.cat([ids, torch.zeros(2, 1, dtype=torch.long)], dim=1),
            perm_mask=perm_mask,
            target_mapping=target_mapping,
        ).logits[:, 0]
    first = ours.generate(ids, max_new_tokens=1, eos_token_id=None)[:, -1]
    assert torch.equal(first, logits.argmax(-1))
    with pytest.raises(TypeError, match="unexpected keyword"):
        ours.generate(ids, langs=ids, max_new_tokens=3)


# ---------------------------------------------------------------------------------------
# XLNet: the memory across steps
# ---------------------------------------------------------------------------------------


def test_xlnet_short_memory_and_explicit_use_mems_match_hf(tmp_path):
    """With ``mem_len=4`` the memory is cut every step; ``generate(use_mems=...)`` picks
    the path whatever the config says, as Hugging Face's keyword does."""
    hf, ours = xlnet_pair(tmp_path, seed=3, mem_len=4)
    ids = prompts(seed=6)
    beams = dict(num_beams=3, length_penalty=2.0)
    beamed = {}
    for use_mems in (True, False):
        got = ours.generate(ids, max_new_tokens=NEW, use_mems=use_mems)
        want = hf.generate(ids, max_new_tokens=NEW, do_sample=False, use_mems=use_mems)
        assert torch.equal(got, want), use_mems
        got = beamed[use_mems] = ours.generate(
            ids, max_new_tokens=NEW, use_mems=use_mems, length_normalization="length", **beams
        )
        want = hf.generate(
            ids,
            max_new_tokens=NEW,
            do_sample=False,
            use_mems=use_mems,
            early_stopping="never",
            **beams,
        )
        assert_same_tokens(got, want, XLNET_PAD)
    default = ours.generate(ids, max_new_tokens=NEW)
    assert torch.equal(default, ours.generate(ids, max_new_tokens=NEW, use_mems=True))
    # The two paths differ here, greedy and beams alike: each parity above is its own.
    assert not torch.equal(default, ours.generate(ids, max_new_tokens=NEW, use_mems=False))
    assert not torch.equal(beamed[True], beamed[False])
    with pytest.raises(TypeError, match="use_mems"):
        ours.generate(ids, max_new_tokens=3, use_mems=1)


def test_xlnet_memory_steps_run_two_tokens_and_the_dummy(tmp_path):
    """After the prompt, a step with the memory runs 3 positions on top of it (the last
    two tokens and the dummy); without it, the whole sequence and the dummy."""
    _, ours = xlnet_pair(tmp_path)
    ids = prompts(seed=7, batch=2)
    seen: list[tuple[int, int]] = []

    def record(module, args, kwargs, output):
        mems = kwargs.get("mems")
        seen.append((args[0].shape[1], 0 if mems is None else mems[0].shape[1]))

    handle = ours.transformer.register_forward_hook(record, with_kwargs=True)
    try:
        ours.generate(ids, max_new_tokens=4, min_new_tokens=4)
        with_memory, seen[:] = list(seen), []
        ours.generate(ids, max_new_tokens=4, min_new_tokens=4, use_mems=False)
    finally:
        handle.remove()
    # (tokens run, memory length): the memory drops the last token and the dummy.
    assert with_memory == [(6, 0), (3, 4), (3, 5), (3, 6)]
    assert seen == [(6, 0), (7, 0), (8, 0), (9, 0)]
