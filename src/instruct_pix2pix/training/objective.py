"""The training objectives, exactly as diffusers' training scripts compute them.

Editing (InstructPix2Pix, diffusers' train_instruct_pix2pix.py):

    target latent z      = VAE posterior *sample* x scaling factor (what the sampler must produce)
    conditioning latent  = VAE posterior *mode*, unscaled (what the editor feeds at sampling time)
    loss                 = || unet([noisy z, c_I], t, c_T) - target ||^2, target = noise (or v)

Conditioning dropout, r ~ U[0, 1) per sample, p = conditioning_dropout_prob:
    r < 2p        -> text replaced by the empty string's encoding   (5% text only, 5% both)
    p <= r < 3p   -> image latent zeroed                             (5% both, 5% image only)

Text to image (diffusers' train_text_to_image.py): loss = || unet(noisy z, t, c_T) - target ||^2,
with the caption replaced by the empty string when r < proportion_empty_prompts, so that
classifier-free guidance has an unconditional model to push away from.

Both take min-SNR-gamma weighting (`snr_gamma`, Hang et al. 2023, as train_text_to_image.py has it;
train_instruct_pix2pix.py has none): each sample's loss
is weighted by min(SNR(t), gamma) / SNR(t) for epsilon targets, / (SNR(t) + 1) for v targets.

Editing may also weight the loss where the edit happens (`changed_region_weight` w, ours, off by
default): a latent position whose target and input latents differ by more than `CHANGED` (scaled
units, in any channel) counts 1 + w times, and each sample's weights are normalised to mean 1, so a
thin changed band (a resized outline) is not drowned by the kept picture around it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHANGED = 0.1  # a latent position the edit changes: |target - input| above this (scaled latents, any channel)


def dropout_masks(r: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(drop_text, drop_image) boolean masks from r ~ U[0,1), with the reference's 5/5/5 % split."""
    return r < 2 * p, (r >= p) & (r < 3 * p)


def empty_where(drop: torch.Tensor, text_embeds: torch.Tensor, null_text_embeds: torch.Tensor) -> torch.Tensor:
    """The texts' encodings, with the empty string's in place of those where `drop` is true."""
    return torch.where(drop[:, None, None], null_text_embeds.to(text_embeds.dtype), text_embeds)


def training_loss(
    unet: torch.nn.Module,
    noise_scheduler,
    target_latents: torch.Tensor,  # posterior sample x scaling factor, (B, 4, h, w)
    image_latents: torch.Tensor,  # posterior mode, unscaled, (B, 4, h, w)
    text_embeds: torch.Tensor,  # (B, L, D)
    null_text_embeds: torch.Tensor,  # (1, L, D): the empty string's encoding
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    r: torch.Tensor,  # U[0,1) per sample, for conditioning dropout
    conditioning_dropout_prob: float,
    snr_gamma: float | None = None,
    position_weights: torch.Tensor | None = None,  # (B, h, w), as `changed_region_weights` makes them
) -> torch.Tensor:
    """The editing objective."""
    drop_text, drop_image = dropout_masks(r, conditioning_dropout_prob)
    text_embeds = empty_where(drop_text, text_embeds, null_text_embeds)
    image_latents = image_latents * (~drop_image).to(image_latents.dtype)[:, None, None, None]
    return denoising_loss(
        unet, noise_scheduler, target_latents, noise, timesteps, text_embeds, image_latents, snr_gamma, position_weights
    )


def changed_region_weights(target_mean: torch.Tensor, image_latents: torch.Tensor, weight: float) -> torch.Tensor:
    """1 + `weight` at the latent positions an edit changes, 1 elsewhere, (B, h, w); both latents scaled
    alike (the target's posterior mean, not a sample of it, so the posterior's noise marks nothing)."""
    return 1 + weight * ((target_mean - image_latents).abs().amax(1) > CHANGED).float()


def text_to_image_loss(
    unet: torch.nn.Module,
    noise_scheduler,
    target_latents: torch.Tensor,  # posterior sample x scaling factor, (B, 4, h, w)
    text_embeds: torch.Tensor,  # (B, L, D): the captions' encodings
    null_text_embeds: torch.Tensor,  # (1, L, D)
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    r: torch.Tensor,  # U[0,1) per sample: the caption is dropped when r < proportion_empty_prompts
    proportion_empty_prompts: float,
    snr_gamma: float | None = None,
) -> torch.Tensor:
    """The text-to-image objective."""
    text_embeds = empty_where(r < proportion_empty_prompts, text_embeds, null_text_embeds)
    return denoising_loss(unet, noise_scheduler, target_latents, noise, timesteps, text_embeds, None, snr_gamma)


def denoising_loss(
    unet,
    noise_scheduler,
    target_latents,
    noise,
    timesteps,
    text_embeds,
    image_latents=None,
    snr_gamma=None,
    position_weights=None,
) -> torch.Tensor:
    """The diffusion loss both objectives share: image latents, when given, are concatenated to the
    noisy latents as extra input channels; `position_weights` (B, h, w) weight each latent position's
    squared error, normalised to mean 1 per sample."""
    noisy = noise_scheduler.add_noise(target_latents, noise, timesteps)
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(target_latents, noise, timesteps)
    else:
        raise ValueError(f"unsupported prediction_type {prediction_type!r}")
    model_input = noisy if image_latents is None else torch.cat([noisy, image_latents.to(noisy.dtype)], dim=1)
    prediction = unet(model_input, timesteps, encoder_hidden_states=text_embeds, return_dict=False)[0]
    if snr_gamma is None and position_weights is None:
        return F.mse_loss(prediction.float(), target.float(), reduction="mean")
    squared = F.mse_loss(prediction.float(), target.float(), reduction="none")
    if position_weights is not None:
        squared = squared * (position_weights / position_weights.mean((1, 2), keepdim=True))[:, None]
    per_sample = squared.flatten(1).mean(1)
    if snr_gamma is None:
        return per_sample.mean()
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, timesteps)
    weights = torch.clamp(snr, max=snr_gamma) / (snr + 1 if prediction_type == "v_prediction" else snr)
    return (per_sample * weights).mean()
