"""Validation grids: every so many steps, edit a few fixed images with the model being trained.

The grid (output_dir/validation/step-NNNNNN.png) shows each input in a row, then its edit by each
validation prompt; it is made with the EMA weights when there are some.
"""

from __future__ import annotations

import itertools
import json
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from PIL import Image, ImageOps

from instruct_pix2pix.errors import EditWarning
from instruct_pix2pix.images import image_grid, load_image, save_png
from instruct_pix2pix.loading import ModelBundle
from instruct_pix2pix.training.config import TrainConfig

VALIDATION_IMAGES = 4  # without validation_images: the inputs of the first training examples
GRID_CELL = 128  # cells are enlarged to at least this many pixels, so that small images can be seen


def validation_inputs(config: TrainConfig, dataset) -> list[Image.Image]:
    """The grid's fixed input images, center-cropped to training's square at its resolution (none
    for a text-to-image model, which draws from captions alone)."""
    if config.task == "text-to-image":
        return []
    if config.validation_images:
        images = [load_image(path) for path in config.validation_images]
    else:
        first = itertools.islice(dataset.examples(seed=config.seed, epoch=0), VALIDATION_IMAGES)
        images = [example.input_image for _, example in first]
    return [ImageOps.fit(image, (config.resolution, config.resolution), Image.Resampling.LANCZOS) for image in images]


@contextmanager
def ema_weights(ema, parameters: list):
    """The EMA weights in `parameters` for the duration (when there are some), the trained ones back after."""
    if ema is not None:
        ema.store(parameters)
        ema.copy_to(parameters)
    try:
        yield
    finally:
        if ema is not None:
            ema.restore(parameters)


def save_validation_grid(
    config: TrainConfig, step: int, images: list[Image.Image], model: ModelBundle, ema, parameters: list, device
) -> None:
    """Edit every validation image with every validation prompt (a text-to-image model: draw each
    validation caption from a few seeds) and save the grid. The UNet is the one being trained; the
    Editor and the pipeline leave its mode and flags alone, and the EMA weights are swapped into the
    trained `parameters` and back out afterwards. Both draw only from their own seeded generators;
    fork_rng makes sure nothing else moves."""
    from instruct_pix2pix.editing import Editor, NumericalError
    from instruct_pix2pix.generation import generate

    prompts = config.validation_prompts
    try:
        with ema_weights(ema, parameters), torch.random.fork_rng(devices=[]):
            if model.kind == "text-to-image":
                seeds = [config.seed + row for row in range(VALIDATION_IMAGES) for _ in prompts]
                made = generate(model, prompts * VALIDATION_IMAGES, seeds=seeds, device=device,
                                num_inference_steps=config.validation_inference_steps)  # fmt: skip
            else:
                made = (
                    Editor(model, device)
                    .edit(
                        [image for _ in prompts for image in images],
                        [prompt for prompt in prompts for _ in images],
                        seed=config.seed,
                        num_inference_steps=config.validation_inference_steps,
                        keep_size=True,
                        batch_size=config.train_batch_size,
                        show_progress=False,
                    )
                    .images
                )
    except NumericalError as error:  # a diverging or float16 model: say so, and keep training
        warnings.warn(f"no validation grid at step {step}: {error}", EditWarning, stacklevel=2)
        return
    if model.kind == "text-to-image":  # a row per seed, a column per caption
        rows = [made[k * len(prompts) : (k + 1) * len(prompts)] for k in range(VALIDATION_IMAGES)]
        labels = [f"step {step}: {prompt}" if k == 0 else prompt for k, prompt in enumerate(prompts)]
    else:  # a row per input image: the input, then its edit by each prompt
        edited = [made[k * len(images) : (k + 1) * len(images)] for k in range(len(prompts))]
        rows = [[image, *(column[i] for column in edited)] for i, image in enumerate(images)]
        labels = [f"step {step}: input", *prompts]
    grid = image_grid(rows, column_labels=labels, scale=max(1, GRID_CELL // made[0].width))
    path = Path(config.output_dir) / "validation" / f"step-{step:06d}.png"
    save_png(grid, path, {"step": str(step), "prompts": json.dumps(prompts)})
