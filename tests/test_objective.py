"""The training objective against diffusers' train_instruct_pix2pix.py recipe, and the conv_in widening."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import SD15_SCHEDULER_CONFIG, tiny_parts
from diffusers import DDPMScheduler

from instruct_pix2pix.loading import widen_conv_in
from instruct_pix2pix.training.objective import changed_region_weights, dropout_masks, training_loss


def diffusers_recipe_loss(
    parts, edited, original, input_ids, null_ids, noise, timesteps, random_p, p, scheduler, sample_eps
):
    """diffusers' examples/instruct_pix2pix/train_instruct_pix2pix.py loss, step by step as it documents it."""
    unet, vae, text_encoder = parts["unet"], parts["vae"], parts["text_encoder"]
    posterior = vae.encode(edited).latent_dist
    latents = (posterior.mean + posterior.std * sample_eps) * vae.config.scaling_factor  # latent_dist.sample()
    noisy_latents = scheduler.add_noise(latents, noise, timesteps)
    encoder_hidden_states = text_encoder(input_ids)[0]
    original_image_embeds = vae.encode(original).latent_dist.mode()
    prompt_mask = (random_p < 2 * p).reshape(-1, 1, 1)
    null_conditioning = text_encoder(null_ids)[0]
    encoder_hidden_states = torch.where(prompt_mask, null_conditioning, encoder_hidden_states)
    image_mask = 1 - ((random_p >= p).float() * (random_p < 3 * p).float())
    original_image_embeds = image_mask.reshape(-1, 1, 1, 1) * original_image_embeds
    concatenated = torch.cat([noisy_latents, original_image_embeds], dim=1)
    if scheduler.config.prediction_type == "epsilon":
        target = noise
    else:
        target = scheduler.get_velocity(latents, noise, timesteps)
    pred = unet(concatenated, timesteps, encoder_hidden_states).sample
    return F.mse_loss(pred.float(), target.float(), reduction="mean")


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_loss_equals_diffusers_recipe(prediction_type):
    parts = tiny_parts()
    scheduler = DDPMScheduler.from_config({**SD15_SCHEDULER_CONFIG, "prediction_type": prediction_type})
    g = torch.Generator().manual_seed(0)
    edited, original = torch.rand(4, 3, 64, 64, generator=g) * 2 - 1, torch.rand(4, 3, 64, 64, generator=g) * 2 - 1
    tokenizer = parts["tokenizer"]
    ids = tokenizer(
        ["make it snowy", "add fireworks", "turn the sky red", "a painting"],
        padding="max_length",
        max_length=77,
        return_tensors="pt",
    ).input_ids
    null_ids = tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    noise, sample_eps = torch.randn(4, 4, 32, 32, generator=g), torch.randn(4, 4, 32, 32, generator=g)
    timesteps = torch.tensor([10, 300, 600, 999])
    r = torch.tensor([0.02, 0.07, 0.12, 0.5])  # text only, both, image only, neither (p = 0.05)
    with torch.no_grad():
        expected = diffusers_recipe_loss(
            parts, edited, original, ids, null_ids, noise, timesteps, r, 0.05, scheduler, sample_eps
        )
        posterior = parts["vae"].encode(edited).latent_dist
        ours = training_loss(
            parts["unet"],
            scheduler,
            target_latents=(posterior.mean + posterior.std * sample_eps) * parts["vae"].config.scaling_factor,
            image_latents=parts["vae"].encode(original).latent_dist.mode(),
            text_embeds=parts["text_encoder"](ids)[0],
            null_text_embeds=parts["text_encoder"](null_ids)[0],
            noise=noise,
            timesteps=timesteps,
            r=r,
            conditioning_dropout_prob=0.05,
        )
        # and it is not a coincidence: without dropout the loss differs
        no_dropout = training_loss(
            parts["unet"],
            scheduler,
            (posterior.mean + posterior.std * sample_eps) * parts["vae"].config.scaling_factor,
            parts["vae"].encode(original).latent_dist.mode(),
            parts["text_encoder"](ids)[0],
            parts["text_encoder"](null_ids)[0],
            noise,
            timesteps,
            r,
            0.0,
        )
    assert torch.allclose(ours, expected, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(no_dropout, expected, rtol=1e-4)


def test_dropout_split_is_five_five_five():
    r = torch.rand(400_000, generator=torch.Generator().manual_seed(1))
    drop_text, drop_image = dropout_masks(r, 0.05)
    fractions = {
        "text only": (drop_text & ~drop_image).float().mean().item(),
        "both": (drop_text & drop_image).float().mean().item(),
        "image only": (~drop_text & drop_image).float().mean().item(),
        "neither": (~drop_text & ~drop_image).float().mean().item(),
    }
    for name in ("text only", "both", "image only"):
        assert abs(fractions[name] - 0.05) < 0.002, fractions  # ~7 standard deviations
    assert abs(fractions["neither"] - 0.85) < 0.003, fractions


def test_widen_conv_in_keeps_the_function_and_the_bias():
    unet = tiny_parts(in_channels=4)["unet"]
    old_weight, old_bias = unet.conv_in.weight.clone(), unet.conv_in.bias.clone()
    x, e = torch.randn(2, 4, 16, 16), torch.randn(2, 77, 32)
    with torch.no_grad():
        before = unet(x, 500, encoder_hidden_states=e).sample
        widen_conv_in(unet, 8)
        after = unet(torch.cat([x, torch.randn_like(x) * 0], dim=1), 500, encoder_hidden_states=e).sample
    assert unet.conv_in.in_channels == 8 and unet.config.in_channels == 8
    assert torch.equal(unet.conv_in.weight[:, :4], old_weight) and torch.all(unet.conv_in.weight[:, 4:] == 0)
    assert torch.equal(unet.conv_in.bias, old_bias)  # diffusers' script re-initialises it
    assert torch.allclose(before, after, atol=1e-6)


def test_changed_region_weights_count_the_changed_positions_more():
    g = torch.Generator().manual_seed(0)
    before = torch.randn(2, 4, 8, 8, generator=g)
    after = before.clone()
    after[0, 2, 1, 3] += 0.5  # one channel of one position changes
    after[1, :, 4:6, 4:6] -= 1.0
    after[1, 0, 0, 0] += 0.05  # below CHANGED: kept
    weights = changed_region_weights(after, before, 4.0)
    changed = torch.zeros(2, 8, 8, dtype=torch.bool)
    changed[0, 1, 3], changed[1, 4:6, 4:6] = True, True
    assert torch.equal(weights, torch.where(changed, 5.0, 1.0))

    scheduler = DDPMScheduler.from_config({**SD15_SCHEDULER_CONFIG, "prediction_type": "epsilon"})
    noise = torch.randn(2, 4, 8, 8, generator=g)

    def zero_unet(x, t, encoder_hidden_states, return_dict):
        return (torch.zeros_like(x[:, :4]),)  # the loss is then the noise's own square

    def loss(position_weights):
        text, null = torch.zeros(2, 3, 8), torch.zeros(1, 3, 8)
        return training_loss(zero_unet, scheduler, after, before, text, null, noise, torch.tensor([5, 500]),
                             torch.ones(2), 0.05, position_weights=position_weights)  # fmt: skip

    assert torch.allclose(loss(None), (noise**2).mean())
    assert torch.allclose(loss(torch.ones(2, 8, 8)), (noise**2).mean())
    normalised = weights / weights.mean((1, 2), keepdim=True)
    assert torch.allclose(loss(weights), (noise**2 * normalised[:, None]).mean())
