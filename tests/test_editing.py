"""The Editor against diffusers' StableDiffusionInstructPix2PixPipeline (the oracle), and where we differ on purpose."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import scene
from diffusers import StableDiffusionInstructPix2PixPipeline
from PIL import Image

from instruct_pix2pix.editing import Editor, NumericalError
from instruct_pix2pix.errors import EditWarning, UserError
from instruct_pix2pix.guidance import guided_denoiser
from instruct_pix2pix.settings import make_scheduler

STEPS = 8


@pytest.fixture(scope="module")
def editor(tiny_model_dir):
    return Editor.from_pretrained(tiny_model_dir, device="cpu")


def reference(folder, image, prompt, scheduler, seeds, **kwargs) -> np.ndarray:
    """diffusers' own pipeline, one generator per image as our seeds are."""
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
        folder, safety_checker=None, requires_safety_checker=False
    )
    pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    return pipe(
        prompt, image=image, num_images_per_prompt=len(seeds), generator=generators, output_type="np", **kwargs
    ).images


def ours(editor, image, prompt, **kwargs) -> np.ndarray:
    result = editor.edit(image, prompt, show_progress=False, **kwargs)
    return np.stack([edit.pixels for edit in result.edits])


@pytest.mark.parametrize("scheduler", ["euler_ancestral", "ddim", "dpm++2m"])
@pytest.mark.parametrize("image_guidance_scale", [1.0, 1.5])
def test_same_pixels_as_diffusers(tiny_model_dir, editor, scheduler, image_guidance_scale):
    image = scene(64, 64)  # already a valid size, so neither side resizes
    settings = dict(num_inference_steps=STEPS, guidance_scale=7.5, image_guidance_scale=image_guidance_scale)
    expected = reference(tiny_model_dir, image, "make it snowy", scheduler, [7, 8], **settings)
    got = ours(editor, image, "make it snowy", seed=7, num_images=2, scheduler=scheduler, **settings)
    assert got.shape == expected.shape == (2, 64, 64, 3)
    assert np.abs(got - expected).max() <= 1e-4
    assert np.abs(got[0] - got[1]).max() > 1e-3  # the two seeds really differ


def test_negative_prompt_matches_diffusers(tiny_model_dir, editor):
    image = scene(64, 64, seed=1)
    settings = dict(num_inference_steps=STEPS, image_guidance_scale=1.5, negative_prompt="blue painting")
    expected = reference(tiny_model_dir, image, "add fireworks", "euler_ancestral", [0], **settings)
    got = ours(editor, image, "add fireworks", seed=0, **settings)
    assert np.abs(got - expected).max() <= 1e-4


def unet_batch_sizes(editor, **kwargs) -> list[int]:
    sizes = []
    hook = editor.model.unet.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    try:
        editor.edit(scene(), "make it snowy", num_inference_steps=2, show_progress=False, **kwargs)
    finally:
        hook.remove()
    return sizes


def test_image_guidance_one_runs_two_branches_not_three(editor):
    assert unet_batch_sizes(editor, image_guidance_scale=1.5, num_images=2) == [6, 6]
    assert unet_batch_sizes(editor, image_guidance_scale=1.0, num_images=2) == [4, 4]
    assert unet_batch_sizes(editor, image_guidance_scale=1.0, guidance_scale=1.0, num_images=2) == [2, 2]


def test_image_guidance_below_one_is_applied_not_dropped(tiny_model_dir, editor):
    # diffusers silently turns off all guidance when image_guidance_scale < 1; we apply the formula,
    # as the reference code does, which pushes the edit away from the input image.
    image = scene(64, 64)
    settings = dict(num_inference_steps=STEPS, guidance_scale=7.5, image_guidance_scale=0.5)
    diffusers_unguided = reference(tiny_model_dir, image, "make it snowy", "euler_ancestral", [1], **settings)
    unguided = ours(
        editor, image, "make it snowy", seed=1, num_inference_steps=STEPS, guidance_scale=1.0, image_guidance_scale=1.0
    )
    guided = ours(editor, image, "make it snowy", seed=1, **settings)
    assert np.abs(unguided - diffusers_unguided).max() <= 1e-4  # what diffusers does
    assert np.abs(guided - unguided).max() > 1e-2  # what we do instead


@pytest.mark.parametrize("image_guidance_scale", [1.0, 1.5])
def test_guidance_rescale_scales_to_the_conditioned_branch(image_guidance_scale):
    """phi mixes the guided output with itself scaled to the standard deviation of e(c_T, c_I), per
    sample (Lin et al. 2023, eq. 15-16); phi = 0 is the paper's formula unchanged."""
    generator = torch.Generator().manual_seed(0)
    branches = torch.randn(3, 2, 4, 8, 8, generator=generator) * torch.tensor([3.0, 1.0, 0.5]).view(3, 1, 1, 1, 1)
    text, image, unconditional = branches

    def unet(model_input, t, encoder_hidden_states, return_dict):
        return (branches[: model_input.shape[0] // 2].flatten(0, 1),)

    inputs = (unet, torch.zeros(2, 5, 16), torch.zeros(2, 5, 16), torch.zeros(2, 4, 8, 8), 7.5, image_guidance_scale)
    if image_guidance_scale == 1:
        guided = image + 7.5 * (text - image)
    else:
        guided = unconditional + image_guidance_scale * (image - unconditional) + 7.5 * (text - image)
    latents = torch.zeros(2, 4, 8, 8)
    assert torch.allclose(guided_denoiser(*inputs)(latents, 1), guided)
    assert torch.allclose(guided_denoiser(*inputs, 0.0)(latents, 1), guided)
    spread = text.std(dim=(1, 2, 3), keepdim=True) / guided.std(dim=(1, 2, 3), keepdim=True)
    rescaled = guided_denoiser(*inputs, 0.7)(latents, 1)
    assert torch.allclose(rescaled, 0.7 * guided * spread + 0.3 * guided, atol=1e-5)
    assert torch.allclose(guided_denoiser(*inputs, 1.0)(latents, 1).std(dim=(1, 2, 3)), text.std(dim=(1, 2, 3)))


def test_guidance_rescale_changes_the_edit_and_is_recorded(editor):
    image = scene(64, 64)
    plain = editor.edit(image, "make it snowy", seed=3, num_inference_steps=STEPS, show_progress=False)
    result = editor.edit(image, "make it snowy", seed=3, num_inference_steps=STEPS, guidance_rescale=0.7,
                         show_progress=False)  # fmt: skip
    assert np.abs(result.edits[0].pixels - plain.edits[0].pixels).max() > 1e-2
    assert "--guidance-rescale 0.7" in result.command(result.edits[0])
    assert "CFG Rescale phi: 0.7" in result.parameters(result.edits[0])
    assert "CFG Rescale" not in plain.parameters(plain.edits[0])


def test_any_variant_reproduces_alone(editor):
    image = scene(64, 64)
    many = ours(editor, image, "add fireworks", seed=10, num_images=3, num_inference_steps=STEPS)
    alone = ours(editor, image, "add fireworks", seed=12, num_images=1, num_inference_steps=STEPS)
    assert np.abs(many[2] - alone[0]).max() <= 1e-5


def test_batch_of_images_and_instructions_equals_one_by_one(editor):
    a, b = scene(64, 64, seed=1), scene(64, 64, seed=2)
    both = editor.edit(
        [a, b], ["make it snowy", "add fireworks"], seed=4, num_inference_steps=STEPS, show_progress=False
    )
    assert [e.input_index for e in both.edits] == [0, 1]
    for edit, image, text in zip(both.edits, (a, b), ("make it snowy", "add fireworks")):
        alone = ours(editor, image, text, seed=4, num_inference_steps=STEPS)
        assert np.abs(edit.pixels - alone[0]).max() <= 1e-5
    # one image with several instructions, and one instruction for several images
    assert (
        len(editor.edit(a, ["make it snowy", "add fireworks"], num_inference_steps=1, show_progress=False).edits) == 2
    )
    assert len(editor.edit([a, b], "make it snowy", num_inference_steps=1, show_progress=False).edits) == 2
    with pytest.raises(UserError, match="2 images and 3 instructions"):
        editor.edit([a, b], ["x", "y", "z"], num_inference_steps=1)


def test_mixed_sizes_are_batched_by_size(editor):
    sizes = []
    hook = editor.model.unet.register_forward_pre_hook(lambda module, args: sizes.append(tuple(args[0].shape)))
    try:
        result = editor.edit(
            [scene(64, 64), scene(128, 64), scene(64, 64, 3)],
            "make it snowy",
            keep_size=True,
            num_inference_steps=1,
            image_guidance_scale=1.0,
            show_progress=False,
        )
    finally:
        hook.remove()
    assert sorted(sizes) == [(2, 8, 32, 64), (4, 8, 32, 32)]
    assert [e.image.size for e in result.edits] == [(64, 64), (128, 64), (64, 64)]


def test_compound_edit_applies_instructions_in_order(editor):
    image = scene(64, 64)
    chained = editor.edit(
        image, "make it snowy", then=["add fireworks"], seed=2, num_inference_steps=STEPS, show_progress=False
    )
    first = editor.edit(image, "make it snowy", seed=2, num_inference_steps=STEPS, show_progress=False)
    second = editor.edit(first.images[0], "add fireworks", seed=2, num_inference_steps=STEPS, show_progress=False)
    assert chained.edits[0].instructions == ["make it snowy", "add fireworks"]
    assert np.abs(chained.edits[0].pixels - second.edits[0].pixels).max() <= 1e-5
    assert np.abs(chained.edits[0].pixels - first.edits[0].pixels).max() > 1e-3


def test_empty_instruction_returns_the_input(editor):
    image = scene(64, 64)
    result = editor.edit(image, "  ", num_inference_steps=STEPS, show_progress=False)
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(image))


def test_reference_resize_rule_not_diffusers_floor(editor):
    # diffusers keeps 96x64 (floor to multiples of 8); the reference rule (long side about the
    # resolution, short side rounded up to a multiple of 64, centre crop) gives 64x64 at 64.
    result = editor.edit(scene(96, 64), "make it snowy", num_inference_steps=1, show_progress=False)
    assert result.images[0].size == (64, 64)
    result = editor.edit(scene(96, 64), "make it snowy", resolution=128, num_inference_steps=1, show_progress=False)
    assert result.images[0].size == (192, 128)
    kept = editor.edit(scene(100, 60), "make it snowy", keep_size=True, num_inference_steps=1, show_progress=False)
    assert kept.images[0].size == (96, 56)


def test_rgba_is_composited_on_white_before_editing(editor):
    rgb = np.asarray(scene(64, 64)).copy()
    alpha = np.full((64, 64), 255, np.uint8)
    alpha[:, :32] = 0  # left half transparent
    rgba = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    on_white = rgb.copy()
    on_white[:, :32] = 255
    a = ours(editor, rgba, "make it snowy", seed=0, num_inference_steps=STEPS)
    b = ours(editor, Image.fromarray(on_white), "make it snowy", seed=0, num_inference_steps=STEPS)
    assert np.abs(a - b).max() <= 1e-6


def test_long_instruction_is_truncated_with_a_warning(editor):
    with pytest.warns(EditWarning, match="longer than the model's 77 tokens"):
        editor.edit(scene(), "make it snowy " * 40, num_inference_steps=1, show_progress=False)


def test_result_records_seeds_and_settings(editor):
    result = editor.edit(scene(), "make it snowy", seed=5, num_images=2, num_inference_steps=2, show_progress=False)
    assert result.seeds == [5, 6]
    assert result.settings.resolution == 64  # the tiny model's own size
    meta = result.metadata(result.edits[1])
    assert '"seed": 6' in meta["instruct-pix2pix"] and '"num_inference_steps": 2' in meta["instruct-pix2pix"]


def test_nan_raises_instead_of_saving_black(editor, monkeypatch):
    vae = editor.model.vae
    original = vae.decode
    monkeypatch.setattr(vae, "decode", lambda z, return_dict=False: (original(z, return_dict=False)[0] * float("nan"),))
    with pytest.raises(NumericalError, match="NaN/inf"):
        editor.edit(scene(), "make it snowy", num_inference_steps=1, show_progress=False)


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(num_inference_steps=0), "positive whole number"),
        (dict(num_inference_steps=-3), "positive whole number"),
        (dict(scheduler="nope"), "unknown scheduler 'nope'"),
        (dict(num_images=0), "num_images"),
        (dict(guidance_scale=float("nan")), "finite"),
        (dict(guidance_rescale=1.5), "from 0 to 1"),
    ],
)
def test_bad_settings(editor, bad, message):
    with pytest.raises(UserError, match=message):
        editor.edit(scene(), "make it snowy", **bad)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_keeps_the_vae_safe(tiny_model_dir, dtype):
    editor = Editor.from_pretrained(tiny_model_dir, device="cpu", dtype=dtype)
    assert editor.model.unet.dtype == dtype and editor.model.text_encoder.dtype == dtype
    assert editor.model.vae.dtype == (torch.float32 if dtype == torch.float16 else dtype)
    full = Editor.from_pretrained(tiny_model_dir, device="cpu")
    half = ours(editor, scene(), "make it snowy", seed=0, num_inference_steps=4)
    single = ours(full, scene(), "make it snowy", seed=0, num_inference_steps=4)
    assert np.isfinite(half).all() and np.abs(half - single).mean() < 0.05


@pytest.mark.parametrize("scheduler", ["euler", "unipc", "dpm++2m_karras", "heun", "dpm++2m_sde"])
def test_other_schedulers_run(editor, scheduler):
    result = editor.edit(scene(), "make it snowy", scheduler=scheduler, num_inference_steps=3, show_progress=False)
    assert np.isfinite(result.edits[0].pixels).all()
