"""The metrics module against transformers computed directly, on tiny CLIP and DINO models built in code."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import scene
from PIL import Image

from instruct_pix2pix.errors import UserError
from instruct_pix2pix.metrics import ClipScorer, DinoScorer, pixel_distances, target_metrics


def images(count: int, size=(48, 40)) -> list[Image.Image]:
    return [scene(*size, seed=i) for i in range(count)]


CAPTIONS = ["a red circle", "a blue square", "make it snowy", "a painting of fireworks"]


def direct(folder, inputs, outputs, captions0, captions1) -> dict[str, np.ndarray]:
    """The similarities from CLIPModel's own forward pass (its image_embeds and text_embeds are unit length)."""
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    model = CLIPModel.from_pretrained(folder).eval()
    processor, tokenizer = CLIPImageProcessor.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():

        def embed(pictures, texts):
            tokens = tokenizer(texts, padding=True, return_tensors="pt")
            pixels = processor(images=pictures, return_tensors="pt").pixel_values
            out = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, pixel_values=pixels)
            return out.image_embeds, out.text_embeds

        i0, t0 = embed(inputs, captions0)
        i1, t1 = embed(outputs, captions1)
    cos = lambda a, b: (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))  # noqa: E731
    return {"clip_image": cos(i0, i1).numpy(), "clip_direction": cos(i1 - i0, t1 - t0).numpy(),
            "clip_input_caption": cos(i0, t0).numpy(), "clip_output_caption": cos(i1, t1).numpy()}  # fmt: skip


def test_similarities_equal_transformers_computed_directly(tiny_clip_dir):
    inputs, outputs = images(4), images(4, size=(40, 48))[::-1]
    ours = ClipScorer.from_pretrained(tiny_clip_dir, batch_size=3).edit_similarities(inputs, outputs, CAPTIONS,
                                                                                CAPTIONS[::-1])  # fmt: skip
    theirs = direct(tiny_clip_dir, inputs, outputs, CAPTIONS, CAPTIONS[::-1])
    assert set(ours) == set(theirs)
    for name in ours:
        np.testing.assert_allclose(ours[name], theirs[name], atol=1e-5, err_msg=name)


def test_identical_images_are_similar_one_and_have_no_direction(tiny_clip_dir):
    pictures = images(3)
    values = ClipScorer.from_pretrained(tiny_clip_dir).edit_similarities(pictures, pictures, CAPTIONS[:3], CAPTIONS[1:])
    np.testing.assert_allclose(values["clip_image"], 1.0, atol=1e-6)
    np.testing.assert_array_equal(values["clip_direction"], 0.0)


def test_a_reversed_edit_points_the_other_way():
    """The shipped small-world CLIP has learned its world: a real edit points along its change of
    caption, and the same edit run backwards (output -> input) points against it."""
    from instruct_pix2pix.small_world import render, sample_edits

    edits = list(sample_edits("test", 12, kinds=("recolor", "reshape", "add", "remove")))
    before, after = [render(e.before) for e in edits], [render(e.after) for e in edits]
    captions0, captions1 = [e.input_caption for e in edits], [e.edited_caption for e in edits]
    scorer = ClipScorer.from_pretrained()
    forward = scorer.edit_similarities(before, after, captions0, captions1)["clip_direction"]
    backward = scorer.edit_similarities(after, before, captions0, captions1)["clip_direction"]
    assert (forward > 0).mean() >= 0.8 and forward.mean() > 0.3  # the small CLIP is right about most edits
    assert backward.mean() < -0.3
    np.testing.assert_allclose(backward, -forward, atol=1e-6)


def test_bicubic_resize_is_the_references(tiny_clip_dir):
    """The option resizes the whole image to the model's square with bicubic (no crop), then CLIP's mean/std."""
    scorer = ClipScorer.from_pretrained(tiny_clip_dir, resize="bicubic")
    picture = scene(64, 40, seed=3)
    unit = torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    expected = F.interpolate(unit, size=(32, 32), mode="bicubic", align_corners=False)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
    torch.testing.assert_close(scorer.pixel_values([picture]), (expected - mean) / std)
    cropped = ClipScorer.from_pretrained(tiny_clip_dir).pixel_values([picture])
    assert not torch.allclose(cropped, scorer.pixel_values([picture]), atol=1e-2)  # a wide image is cropped there


def test_batches_give_the_values_of_one_at_a_time(tiny_clip_dir):
    pictures = images(5)
    batched = ClipScorer.from_pretrained(tiny_clip_dir, batch_size=4)
    alone = ClipScorer.from_pretrained(tiny_clip_dir, batch_size=1)
    torch.testing.assert_close(batched.image_features(pictures), alone.image_features(pictures), atol=1e-5, rtol=0)
    torch.testing.assert_close(batched.text_features(CAPTIONS), alone.text_features(CAPTIONS), atol=1e-5, rtol=0)


def test_repeated_texts_are_encoded_once_and_each_gets_its_features(tiny_clip_dir, monkeypatch):
    """A batch of candidates repeats its two captions: each distinct text goes through CLIP once,
    across batch boundaries, and every row gets the features of its own text."""
    scorer = ClipScorer.from_pretrained(tiny_clip_dir, batch_size=2)
    texts = [CAPTIONS[i] for i in (0, 1, 0, 2, 1, 0, 3, 3)]
    encoded = []
    forward = scorer.model.get_text_features

    def counted(input_ids, **kwargs):
        encoded.append(len(input_ids))
        return forward(input_ids, **kwargs)

    monkeypatch.setattr(scorer.model, "get_text_features", counted)
    features = scorer.text_features(texts)
    assert sum(encoded) == 4
    alone = ClipScorer.from_pretrained(tiny_clip_dir, batch_size=1)
    torch.testing.assert_close(features, torch.cat([alone.text_features([t]) for t in texts]), atol=1e-5, rtol=0)


def test_the_shipped_clip_stored_in_float16_runs_in_float32():
    """The reference scores in float32; transformers alone would keep the stored float16."""
    from transformers import AutoConfig

    from instruct_pix2pix.metrics import DEFAULT_CLIP

    assert AutoConfig.from_pretrained(DEFAULT_CLIP).dtype == torch.float16  # what this test is about
    assert ClipScorer.from_pretrained().model.dtype == torch.float32


def test_a_bfloat16_scorer_gives_float32_features_close_to_float32s(tiny_clip_dir):
    """CLIP in another precision when asked: the features come back in float32 and near."""
    pictures = images(3)
    full = ClipScorer.from_pretrained(tiny_clip_dir)
    half = ClipScorer.from_pretrained(tiny_clip_dir, dtype=torch.bfloat16)
    assert half.model.dtype == torch.bfloat16 and full.model.dtype == torch.float32
    for name in ("image_features", "text_features"):
        a = getattr(full, name)(pictures if name == "image_features" else CAPTIONS)
        b = getattr(half, name)(pictures if name == "image_features" else CAPTIONS)
        assert b.dtype == torch.float32
        torch.testing.assert_close(b, a, atol=0.05, rtol=0)
        assert not torch.equal(a, b)  # it did run in bfloat16


def test_a_model_that_is_not_a_clip_is_refused_in_one_line(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(UserError, match="not a CLIP model .*model_type 'gpt2'"):
        ClipScorer.from_pretrained(tmp_path / "gpt2")
    with pytest.raises(UserError, match="cannot load CLIP model"):
        ClipScorer.from_pretrained(tmp_path / "nothing-here")


def test_pixel_distances_resize_the_output_to_the_target():
    target, output = scene(32, 32, seed=1), scene(64, 64, seed=2)
    values = pixel_distances([output], [target])
    resized = np.asarray(output.resize((32, 32), Image.Resampling.BICUBIC), dtype=np.float64) / 255
    difference = resized - np.asarray(target, dtype=np.float64) / 255
    np.testing.assert_allclose(values["target_l1"], [np.abs(difference).mean()], rtol=1e-5)
    np.testing.assert_allclose(values["target_l2"], [(difference**2).mean()], rtol=1e-5)


@pytest.mark.parametrize("kind", ["vit", "dinov2"])
def test_dino_similarity_is_the_cosine_of_class_tokens(tmp_path, kind, tiny_clip_dir):
    from transformers import Dinov2Config, Dinov2Model, ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=32,
                 patch_size=8)  # fmt: skip
    model = ViTModel(ViTConfig(**shape)) if kind == "vit" else Dinov2Model(Dinov2Config(**shape))
    model.save_pretrained(tmp_path / kind)
    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    processor.save_pretrained(tmp_path / kind)
    outputs, targets = images(3), images(3, size=(40, 48))[::-1]
    dino = DinoScorer.from_pretrained(tmp_path / kind)
    values = target_metrics(outputs, targets, CAPTIONS[:3], clip=ClipScorer.from_pretrained(tiny_clip_dir), dino=dino)
    with torch.no_grad():
        model.eval()
        tokens = [model(pixel_values=processor(images=p, return_tensors="pt").pixel_values).last_hidden_state[:, 0]
                  for p in (outputs, targets)]  # fmt: skip
    np.testing.assert_allclose(values["target_dino"], F.cosine_similarity(*tokens).numpy(), atol=1e-5)
    assert set(values) == {"target_l1", "target_l2", "target_clip_i", "target_clip_t", "target_dino"}
