"""The CLIP-style dual encoder: data, towers, loss, temperature, retrieval."""

from __future__ import annotations

import math

import pytest
import torch

from attnzoo.transformers_zoo import dual_encoder as de


def test_shape_captions_are_seeded_and_match_their_labels() -> None:
    images, captions, labels = de.shape_captions(40, seed=3)
    again, _, _ = de.shape_captions(40, seed=3)
    assert images.shape == (40, 3, 32, 32) and images.dtype == torch.float32
    assert torch.equal(images, again)
    assert captions == [de.CAPTIONS[int(label)] for label in labels]
    assert len(de.CAPTIONS) == 24 and len(set(labels.tolist())) > 12
    assert not torch.equal(images, de.shape_captions(40, seed=4)[0])


def test_each_shape_is_drawn_in_its_colour() -> None:
    images, captions, _ = de.shape_captions(24, seed=0, noise=0.0)
    for image, caption in zip(images, captions, strict=True):
        colour = torch.tensor(de.COLOURS[caption.split()[1]]).view(3, 1, 1)
        shape_pixels = (image - colour).abs().amax(dim=0) < 1e-6
        # a visible shape, and everything else is background grey
        assert shape_pixels.sum() >= 20, caption
        assert torch.all(image[:, ~shape_pixels] == 0.5)


def test_towers_shapes_and_bad_input() -> None:
    images = torch.randn(5, 3, 32, 32)
    assert de.ConvImageEncoder(width=16)(images).shape == (5, 16)
    vit = de.ViTImageEncoder(image_size=32, patch_size=8, dim=32, depth=1, heads=4)
    assert vit(images).shape == (5, 32)
    with pytest.raises(ValueError, match="channels"):
        vit(torch.randn(5, 1, 32, 32))
    with pytest.raises(ValueError, match="height"):
        vit(torch.randn(5, 3, 24, 32))
    with pytest.raises(ValueError, match="images"):
        de.ConvImageEncoder()(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="patch_size"):
        de.ViTImageEncoder(image_size=30, patch_size=4)


def test_clip_loss_equals_transformers() -> None:
    modeling_clip = pytest.importorskip("transformers.models.clip.modeling_clip")
    logits = torch.randn(7, 7, generator=torch.Generator().manual_seed(0)) * 5
    # renamed from clip_loss to image_text_contrastive_loss in transformers 5
    reference = getattr(modeling_clip, "image_text_contrastive_loss", None)
    reference = reference or modeling_clip.clip_loss
    torch.testing.assert_close(de.clip_loss(logits), reference(logits.T))
    with pytest.raises(ValueError, match="square"):
        de.clip_loss(torch.randn(3, 4))


def test_logit_scale_starts_at_clip_value_and_is_clipped_at_100() -> None:
    model = de.build_clip("cnn")
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert model.scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(7.0)
    scale = model.scale()
    scale.backward()
    assert scale.item() == pytest.approx(100.0, rel=1e-5)
    assert model.logit_scale.grad is not None and model.logit_scale.grad.item() == 0.0
    with pytest.raises(ValueError, match="logit_scale_init"):
        de.DualEncoder(model.image_encoder, model.text_encoder, 64, 64, logit_scale_init=5.0)


def test_dual_encoder_scores_every_pair_and_respects_padding() -> None:
    model = de.build_clip("vit").eval()
    images, captions, _ = de.shape_captions(4, seed=1)
    captions[0] = "a red circle a red circle"  # a longer caption: the others get padding
    ids, mask = model.text_encoder.tokenize(captions)
    assert not mask.all()
    out = model(images, ids, mask, return_loss=True)
    assert out.logits_per_image.shape == (4, 4) and out.loss is not None
    torch.testing.assert_close(out.logits_per_text, out.logits_per_image.T)
    torch.testing.assert_close(out.text_embeds.norm(dim=-1), torch.ones(4))
    alone = torch.cat([model.encode_captions([caption]) for caption in captions])
    torch.testing.assert_close(out.text_embeds, alone, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="as many images as texts"):
        model(images[:3], ids, mask, return_loss=True)
    with pytest.raises(TypeError, match="SentenceEncoder"):
        de.DualEncoder(model.image_encoder, model.text_encoder.encoder, 64, 64)
    with pytest.raises(ValueError, match="image_tower"):
        de.build_clip("resnet")


def test_recall_at_k() -> None:
    similarity = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1], [0.0, 0.8, 0.9]])
    relevant = torch.tensor([[True, False, False], [True, False, False], [False, True, True]])
    assert de.recall_at_k(similarity, relevant, 1) == pytest.approx(2 / 3)
    assert de.recall_at_k(similarity, relevant, 2) == 1.0
    assert de.recall_at_k(similarity, ~relevant, 2) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="relevant"):
        de.recall_at_k(similarity, relevant.long(), 1)
    with pytest.raises(ValueError, match="`k`"):
        de.recall_at_k(similarity, relevant, 0)


@pytest.mark.slow
def test_cnn_dual_encoder_retrieval_rises_far_above_chance() -> None:
    # Image->caption recall@1 among 24 captions on 240 held-out images; chance is 1/24.
    # Seeds 0, 1, 2 reach 0.66, 0.65, 0.68 (caption->image 0.71, 0.79, 0.75) at 250 steps.
    _, metrics = de.train_clip("cnn", steps=250, seed=0)
    assert metrics["before_image_to_text_r1"] < 0.15
    assert metrics["image_to_text_r1"] >= 0.45, metrics
    assert metrics["text_to_image_r1"] >= 0.45, metrics
    assert metrics["loss_final"] < 0.5 * metrics["loss_initial"]


@pytest.mark.slow
def test_vit_dual_encoder_retrieval_rises_above_chance() -> None:
    # The ViT tower learns more slowly at this budget: seeds 0, 1, 2 reach 0.38, 0.34, 0.32
    # image->caption recall@1, 8x chance.
    _, metrics = de.train_clip("vit", steps=300, seed=0)
    assert metrics["image_to_text_r1"] >= 5 * metrics["chance"], metrics
    assert metrics["loss_final"] < 0.7 * metrics["loss_initial"]
