"""A model bundle: the five parts every model of this project has, and what kind of model they make.

An editing model (InstructPix2Pix) and a text-to-image model (Stable Diffusion) differ only in
their UNet's input: the noisy latent alone (as many channels as the VAE's latent), or the noisy
latent and the input image's latent side by side (twice as many). `check_unet_channels` is the one
place that tells them apart; `widen_conv_in` makes the second kind from the first.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import transformers
from diffusers import AutoencoderKL, UNet2DConditionModel

from instruct_pix2pix.errors import UserError

EDITING, TEXT_TO_IMAGE, ANY = "editing", "text-to-image", "any"
KINDS = (EDITING, TEXT_TO_IMAGE, ANY)


@dataclass
class ModelBundle:
    """The parts of a model, ready to run: UNet, VAE, text encoder, tokenizer, scheduler config."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: transformers.PreTrainedModel
    tokenizer: transformers.PreTrainedTokenizerBase
    scheduler_config: dict
    source: str = "(in memory)"
    config: str | None = None  # the config folder a single file was read with, when it was given
    about: dict | None = None  # about.json of a model folder: what it understands (the small world's default)

    @property
    def kind(self) -> str:
        return EDITING if self.unet.config.in_channels == 2 * self.vae.config.latent_channels else TEXT_TO_IMAGE

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def default_resolution(self) -> int:
        """The size the UNet was trained at: 512 for SD 1.5 models, the model's own size for small ones."""
        return self.unet.config.sample_size * self.vae_scale_factor

    def compiled(self) -> ModelBundle:
        """The same parts, the UNet (nearly all of sampling's time) under `torch.compile` for batch jobs.
        Its first call at each new input shape or set of attention processors compiles (20 to 40 s a
        graph for the small world's UNet on 2 CPU cores); the parts are shared, not copied."""
        return replace(self, unet=torch.compile(self.unet, dynamic=False))


def check_unet_channels(in_channels: int, latent_channels: int, kind: str, source: str) -> str:
    """Refuse a UNet of the wrong kind; return the kind it is ("editing" or "text-to-image")."""
    editing, text_to_image = 2 * latent_channels, latent_channels
    if in_channels not in (editing, text_to_image):
        raise UserError(
            f"{source} has a UNet with {in_channels} input channels; with a {latent_channels}-channel VAE a "
            f"text-to-image model takes {text_to_image} and an editing model {editing}"
        )
    found = EDITING if in_channels == editing else TEXT_TO_IMAGE
    if kind == EDITING and found == TEXT_TO_IMAGE:
        raise UserError(
            f"{source} is a text-to-image model, not an editing model (its UNet takes {in_channels} input "
            f"channels, an editing model takes {editing}); train one from it with `ip2p train`"
        )
    if kind == TEXT_TO_IMAGE and found == EDITING:
        raise UserError(
            f"{source} is an editing model, not a text-to-image model (its UNet takes {in_channels} input "
            f"channels, a text-to-image model takes {text_to_image})"
        )
    return found


def widen_conv_in(unet: UNet2DConditionModel, in_channels: int = 8) -> UNet2DConditionModel:
    """Give a text-to-image UNet room for the image latent: new input channels start at zero, so the
    widened UNet computes exactly what it did before; the first channels' weights and the bias are kept
    (diffusers' training script re-initialises the bias at random, losing the pretrained one)."""
    old = unet.conv_in
    if old.in_channels == in_channels:
        return unet
    new = torch.nn.Conv2d(
        in_channels,
        old.out_channels,
        old.kernel_size,
        old.stride,
        old.padding,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels].copy_(old.weight)
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)
    return unet


def vae_dtype(dtype: torch.dtype) -> torch.dtype:
    """The SD VAE overflows in float16 (black images), so it stays in float32 then."""
    return torch.float32 if dtype == torch.float16 else dtype
