"""Pictures from captions with a text-to-image model: diffusers' StableDiffusionPipeline over the
project's model bundle, with the sampler chosen by name as for editing. Used by the trainer's
validation grids and the small world's measure of its text-to-image model."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from instruct_pix2pix.editing import NumericalError, evaluating
from instruct_pix2pix.loading import ModelBundle, diffusers_pipeline
from instruct_pix2pix.settings import make_scheduler


@torch.no_grad()
def generate(
    model: ModelBundle,
    captions: list[str],
    *,
    seeds: list[int],
    num_inference_steps: int = 20,
    guidance_scale: float = 7.5,
    guidance_rescale: float = 0.0,
    scheduler: str = "euler_ancestral",
    negative_prompt: str | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
) -> list[Image.Image]:
    """One picture per caption, picture i from its own generator seeded with seeds[i] (so a picture
    is the same made alone or in any batch, up to the order of floating-point sums)."""
    if len(seeds) != len(captions):
        raise ValueError(f"{len(captions)} captions but {len(seeds)} seeds")
    pipe = diffusers_pipeline(model, make_scheduler(scheduler, model.scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    images: list[Image.Image] = []
    size = model.default_resolution
    with evaluating(model.unet, model.vae, model.text_encoder):
        for start in range(0, len(captions), batch_size):
            chunk = slice(start, start + batch_size)
            generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds[chunk]]
            pixels = pipe(
                captions[chunk], height=size, width=size, num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale, guidance_rescale=guidance_rescale, generator=generators,
                output_type="np",
                negative_prompt=None if negative_prompt is None else [negative_prompt] * len(generators),
            ).images  # fmt: skip
            if not np.isfinite(pixels).all():
                raise NumericalError(f"generation produced NaN/inf values in {model.unet.dtype}; try float32")
            images += pipe.numpy_to_pil(pixels)
    return images
