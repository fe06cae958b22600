"""Dual classifier-free guidance (InstructPix2Pix, eq. 3), as a wrapper around the UNet.

    eps = e(∅,∅) + s_I (e(∅,c_I) − e(∅,∅)) + s_T (e(c_T,c_I) − e(∅,c_I))

c_T is the instruction's encoding, ∅ for text is the encoding of the empty string (or of a
negative prompt), c_I is the input image's latent and ∅ for the image is an all-zero latent. The
branches run as one batched forward. Branches that cancel are not run at all: with s_I = 1 the
formula is exactly e(∅,c_I) + s_T (e(c_T,c_I) − e(∅,c_I)) (two branches), and with s_T = s_I = 1
it is e(c_T,c_I) (one branch).

With a guidance rescale phi > 0 (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample
Steps are Flawed", section 3.4; diffusers' `guidance_rescale`), the guided output is scaled to the
standard deviation of the fully conditioned one, e(c_T,c_I), and mixed with it by phi: strong
guidance then stops over-saturating colours. phi = 0 is the paper's formula.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def branch_count(guidance_scale: float, image_guidance_scale: float) -> int:
    if image_guidance_scale != 1:
        return 3
    return 2 if guidance_scale != 1 else 1


def guided_denoiser(
    unet: torch.nn.Module,
    text_embeds: torch.Tensor,
    null_text_embeds: torch.Tensor,
    image_latents: torch.Tensor,
    guidance_scale: float,
    image_guidance_scale: float,
    guidance_rescale: float = 0.0,
) -> Denoiser:
    """Return denoise(scaled_latents, t) -> guided model output (epsilon or v, as the UNet predicts).

    `scaled_latents` is the scheduler-scaled noisy latent of shape (B, C, h, w); `text_embeds`,
    `null_text_embeds` and `image_latents` have batch size B too, row for row.
    """
    branches = branch_count(guidance_scale, image_guidance_scale)
    # Rows in the order diffusers uses: (c_T, c_I), (∅, c_I), (∅, ∅).
    encoder_states = torch.cat([text_embeds, null_text_embeds, null_text_embeds][:branches])
    image_conditions = torch.cat([image_latents, image_latents, torch.zeros_like(image_latents)][:branches])

    def denoise(scaled_latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        model_input = torch.cat([scaled_latents.repeat(branches, 1, 1, 1), image_conditions], dim=1)
        out = unet(model_input, t, encoder_hidden_states=encoder_states, return_dict=False)[0]
        if branches == 1:
            return out
        if branches == 2:
            text, image = out.chunk(2)
            guided = image + guidance_scale * (text - image)
        else:
            text, image, unconditional = out.chunk(3)
            guided = unconditional + image_guidance_scale * (image - unconditional) + guidance_scale * (text - image)
        return rescale_noise_cfg(guided, text, guidance_rescale) if guidance_rescale else guided

    return denoise
