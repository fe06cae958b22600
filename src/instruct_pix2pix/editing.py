"""The Editor: an image and a written instruction in, the edited image out, in one sampling pass.

    preprocess (read, resize) -> encode (VAE posterior mode, text) -> denoise (guided UNet inside a
    diffusers scheduler) -> decode (VAE) -> images

Read `edit` top to bottom; everything it calls is in this file or in `guidance`/`images`.
"""

from __future__ import annotations

import inspect
import json
import random
import shlex
import warnings
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from tqdm.auto import tqdm

from instruct_pix2pix import __version__
from instruct_pix2pix.errors import EditWarning, UserError
from instruct_pix2pix.guidance import guided_denoiser
from instruct_pix2pix.images import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_WORK_PIXELS,
    edit_size,
    fit_to_multiple,
    load_image,
    multiple_size,
    resize_for_edit,
    to_pil,
    to_tensor,
)
from instruct_pix2pix.loading import DEFAULT_MODEL, ModelBundle, load_model
from instruct_pix2pix.prompts import PromptCheck, closed_vocabulary_check, encode_prompts, warn_if_truncated
from instruct_pix2pix.settings import A1111_SAMPLERS, DTYPE_NAMES, EditSettings, check_seed, make_scheduler

DTYPES = {alias: getattr(torch, name) for alias, name in DTYPE_NAMES.items()}


class NumericalError(UserError):
    """The sampler produced NaN or inf (float16 overflow, usually)."""


def pick_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda was asked for but torch sees no CUDA GPU; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("device mps was asked for but it is not available here; use --device cpu")
    return device


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """float32 on the CPU unless asked otherwise; float16 on GPUs."""
    if dtype is None:
        return torch.float32 if device.type == "cpu" else torch.float16
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; use float32, float16 or bfloat16")
    return DTYPES[dtype]


@dataclass
class Edit:
    """One output image and what made it."""

    image: Image.Image
    input_index: int  # which input image it came from
    instructions: list[str]  # applied in order (more than one for a compound edit)
    seed: int
    pixels: np.ndarray | None = None  # float32 HxWx3 in [0, 1] before rounding to 8 bits (None: not edited)
    batch_seeds: tuple[int, ...] = ()  # the seeds of the samples that went through the UNet with it (itself too)


@dataclass
class EditResult:
    edits: list[Edit]
    settings: EditSettings
    model: str
    dtype: str
    config: str | None = None  # the config folder a single-file model was read with, when one was given
    extra: dict = field(default_factory=dict)

    @property
    def images(self) -> list[Image.Image]:
        return [edit.image for edit in self.edits]

    @property
    def seeds(self) -> list[int]:
        return [edit.seed for edit in self.edits]

    def command(self, edit: Edit, input_path: str | Path = "INPUT.png") -> str:
        """The `ip2p edit` command that makes this edit again, pixel for pixel. A variant edited in a
        batch of several can differ by a level from the same variant made alone (batched convolutions
        add up in another order), so for those the command remakes the whole batch of variants."""
        together = len(edit.batch_seeds)
        alone = together <= 1
        first_seed = edit.seed if alone else min(edit.batch_seeds)
        output = "OUT.png" if alone else "OUT/"
        words = ["ip2p", "edit", str(input_path), edit.instructions[0], "-o", output, "--seed", str(first_seed)]
        if not alone:
            words += ["--num-images", str(together), "--batch-size", str(together)]
        for text in edit.instructions[1:]:
            words += ["--then", text]
        if self.model != str(DEFAULT_MODEL):  # the shipped default needs no --model
            words += ["--model", self.model]
        if self.config:
            words += ["--config", self.config]
        words += [*self.settings.command_words(), "--dtype", self.dtype]
        return shlex.join(words)

    def parameters(self, edit: Edit) -> str:
        """The settings as AUTOMATIC1111 writes them (its `parameters` text), for the tools that read it."""
        s = self.settings
        lines = [" then ".join(edit.instructions)]
        if s.negative_prompt:
            lines.append(f"Negative prompt: {s.negative_prompt}")
        fields = {
            "Steps": s.num_inference_steps,
            "Sampler": sampler_title(s.scheduler),
            "CFG scale": s.guidance_scale,
            "Image CFG scale": s.image_guidance_scale,
            **({"CFG Rescale phi": s.guidance_rescale} if s.guidance_rescale else {}),
            "Seed": edit.seed,
            "Size": f"{edit.image.width}x{edit.image.height}",
            "Model": Path(self.model).name or self.model,
        }
        lines.append(", ".join(f"{key}: {value}" for key, value in fields.items()))
        return "\n".join(lines)

    def metadata(self, edit: Edit, input_path: str | Path | None = None) -> dict[str, str]:
        """Text chunks from which the edit can be made again: the full record (JSON), the `ip2p edit`
        command, and AUTOMATIC1111's `parameters` text."""
        record = {
            "instructions": edit.instructions,
            "seed": edit.seed,
            "model": self.model,
            "config": self.config,
            "dtype": self.dtype,
            **asdict(self.settings),
            "batch_seeds": list(edit.batch_seeds),
            "instruct_pix2pix_version": __version__,
        }
        chunks = {
            "instruct-pix2pix": json.dumps(record),
            "parameters": self.parameters(edit),
            "Software": f"instruct-pix2pix {__version__}",
        }
        if input_path is not None:
            chunks["input"] = str(input_path)
            chunks["ip2p-command"] = self.command(edit, input_path)
        return chunks


@contextmanager
def evaluating(*modules: torch.nn.Module) -> Iterator[None]:
    """Eval mode for the duration (no dropout), each module's own mode back afterwards."""
    modes = [module.training for module in modules]
    try:
        for module in modules:
            module.eval()
        yield
    finally:
        for module, mode in zip(modules, modes):
            module.train(mode)


class Editor:
    """Edits images with an InstructPix2Pix model.

    >>> editor = Editor.from_pretrained("timbrooks/instruct-pix2pix")
    >>> result = editor.edit("photo.jpg", "make it snowy", seed=0)
    >>> result.images[0].save("snowy.png")

    An `Editor` shares the model it is given (nothing is copied): it places the parts on its device,
    and changes nothing else about them; during an edit they are in eval mode, afterwards in the
    mode they were in, and their weights and `requires_grad` flags are never touched. So a trainer
    can edit with the model it is training. `prompt_check` is called with every prompt before
    encoding (the default model's warns about words it does not know).
    """

    def __init__(
        self, model: ModelBundle, device: str | torch.device = "cpu", *, prompt_check: PromptCheck | None = None
    ):
        self.model = model
        self.device = pick_device(device)
        for part in (model.unet, model.vae, model.text_encoder):
            part.to(self.device)
        self.dtype = model.unet.dtype
        self.prompt_check = prompt_check
        # A model may carry the settings it is meant to be sampled with (about.json "settings").
        self.default_settings = EditSettings().for_model(model)

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path | None = None,
        *,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype | None = None,
        config: str | Path | None = None,
    ) -> Editor:
        """Load from a diffusers folder, a hub id or a single .safetensors/.ckpt file (see `loading.load_model`);
        with no source, the small-world model shipped in the package."""
        device = pick_device(device)
        return cls.for_model(load_model(source, dtype=pick_dtype(dtype, device), config=config), device)

    @classmethod
    def for_model(cls, model: ModelBundle, device: torch.device) -> Editor:
        """An editor for a loaded model, warning about the words it does not know if it lists them."""
        return cls(model, device, prompt_check=closed_vocabulary_check(model.about))

    # --- the public entry point -----------------------------------------------------------------

    @torch.inference_mode()
    def edit(
        self,
        image: str | Path | Image.Image | Sequence[str | Path | Image.Image],
        instruction: str | Sequence[str],
        settings: EditSettings | None = None,
        *,
        then: Sequence[str] = (),
        seed: int | None = None,
        num_images: int = 1,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_work_pixels: int = DEFAULT_MAX_WORK_PIXELS,
        batch_size: int | None = None,
        show_progress: bool = True,
        **setting_overrides,
    ) -> EditResult:
        """Edit one or many images.

        `settings` (default: the model's own recommended settings, else `EditSettings()`) decide how
        each sample is made; any of them can also be given by name, e.g. `num_inference_steps=20`.
        `image` and `instruction` may each be one item or a list; two lists pair up item by item,
        and a single item goes with every item of the other list. `then` lists further
        instructions applied in order to each result (a compound edit). Each input gives
        `num_images` variants; variant i uses seed `seed + i`, so any variant can be reproduced
        alone. All samples of the same size go through the UNet together (at most `batch_size`
        at a time). An empty instruction returns the (resized) input, as the reference does.
        Inputs over `max_pixels`, and working sizes (after resizing) over `max_work_pixels`, are
        refused before any sampling.
        """
        settings = (settings or self.default_settings).replace(**setting_overrides)
        if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
            raise UserError(f"num_images must be a positive whole number, not {num_images!r}")
        if seed is None:
            seed = random.randrange(2**32 - num_images)
        check_seed(seed, num_images)
        settings = self.resolve(settings)

        images = list(image) if isinstance(image, (list, tuple)) else [image]
        instructions = [instruction] if isinstance(instruction, str) else list(instruction)
        pairs = pair_up(images, instructions)
        for text in {text for _, text in pairs} | set(then):
            if text and not text.strip():
                warnings.warn(
                    "the instruction is only spaces: the input is returned unchanged", EditWarning, stacklevel=3
                )
        inputs = [self.prepare_image(source, settings, max_pixels, max_work_pixels) for source in images]

        # One sample per (pair, variant); every step of a compound edit works on all of them at once.
        samples = [(index, [text, *then], seed + i) for index, text in pairs for i in range(num_images)]
        current = [inputs[index] for index, *_ in samples]
        progress = tqdm(
            total=self.count_unet_calls(samples, current, settings, batch_size),
            disable=not show_progress,
            desc="editing",
            unit="step",
        )
        pixels, together = [None] * len(samples), [()] * len(samples)
        model = self.model
        with progress, evaluating(model.unet, model.vae, model.text_encoder):
            for step in range(1 + len(then)):
                prompts = [texts[step] for _, texts, *_ in samples]
                seeds = [sample_seed for _, _, sample_seed in samples]
                results = self.edit_batch(current, prompts, seeds, settings, batch_size, progress)
                current = [image for image, _, _ in results]
                pixels = [new if new is not None else old for (_, new, _), old in zip(results, pixels)]
                together = [batch or old for (_, _, batch), old in zip(results, together)]
        edits = [
            Edit(img, index, texts, sample_seed, px, batch)
            for img, px, batch, (index, texts, sample_seed) in zip(current, pixels, together, samples)
        ]
        return EditResult(edits, settings, model.source, str(self.dtype).removeprefix("torch."), model.config)

    def resolve(self, settings: EditSettings) -> EditSettings:
        """The settings with the resolution filled in (the model's own size when none is given)."""
        if settings.resolution is None and not settings.keep_size:
            return settings.replace(resolution=self.model.default_resolution)
        return settings

    def working_size(self, size: tuple[int, int], settings: EditSettings) -> tuple[int, int]:
        """The size an image of `size` is edited at, with resolved `settings`."""
        return multiple_size(size, 8) if settings.keep_size else edit_size(size, settings.resolution)

    def prepare_image(self, source, settings: EditSettings, max_pixels: int, max_work_pixels: int) -> Image.Image:
        image = load_image(source, max_pixels=max_pixels)
        size = self.working_size(image.size, settings)
        check_working_size(size, max_work_pixels)  # before resizing
        warn_if_extreme(size)
        return fit_to_multiple(image, 8) if settings.keep_size else resize_for_edit(image, settings.resolution)

    # --- the work --------------------------------------------------------------------------------

    @staticmethod
    def batches(images: list[Image.Image], prompts: list[str], batch_size: int | None) -> list[list[int]]:
        """Indices of the samples that go through the UNet together: same size, non-empty prompt."""
        by_size = defaultdict(list)
        for i, (image, prompt) in enumerate(zip(images, prompts)):
            if prompt.strip():
                by_size[image.size].append(i)
        size = batch_size or max(1, len(images))
        return [group[start : start + size] for group in by_size.values() for start in range(0, len(group), size)]

    def count_unet_calls(self, samples, images, settings, batch_size) -> int:
        """For the progress bar. Sizes never change along a compound edit, so the batches are known up front."""
        scheduler = make_scheduler(settings.scheduler, self.model.scheduler_config)
        scheduler.set_timesteps(settings.num_inference_steps)
        chain_length = len(samples[0][1])
        batches = sum(
            len(self.batches(images, [texts[k] for _, texts, _ in samples], batch_size)) for k in range(chain_length)
        )
        return len(scheduler.timesteps) * batches

    def edit_batch(
        self, images, prompts, seeds, settings, batch_size, progress
    ) -> list[tuple[Image.Image, np.ndarray | None]]:
        """Apply prompts[i] to images[i] with seeds[i]: (image, float pixels, the seeds batched with
        it) each; an empty prompt leaves its image as it is (None, ())."""
        out = [(image, None, ()) for image in images]
        for indices in self.batches(images, prompts, batch_size):
            edited = self.sample(
                [images[i] for i in indices],
                [prompts[i] for i in indices],
                [seeds[i] for i in indices],
                settings,
                progress,
            )
            for i, (image, pixels) in zip(indices, edited):
                out[i] = (image, pixels, tuple(seeds[k] for k in indices))
        return out

    def sample(self, images, prompts, seeds, settings: EditSettings, progress) -> list[tuple[Image.Image, np.ndarray]]:
        """One sampling pass for a batch of same-size images: each result as an image and as float pixels."""
        model, device, dtype = self.model, self.device, self.dtype
        pixels = to_tensor(images).to(device, model.vae.dtype)
        # Conditioning latent: posterior mode, not multiplied by the scaling factor (as trained).
        image_latents = model.vae.encode(pixels).latent_dist.mode().to(dtype)
        text_embeds = self.encode_text(prompts)
        null_text_embeds = self.encode_text([settings.negative_prompt or ""] * len(prompts))

        scheduler = make_scheduler(settings.scheduler, model.scheduler_config)
        scheduler.set_timesteps(settings.num_inference_steps, device=device)
        # One CPU generator per sample: the same seed gives the same image on any device and in any batch.
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        latents = randn_tensor(image_latents.shape, generator=generators, device=device, dtype=dtype)
        latents = latents * scheduler.init_noise_sigma
        step_kwargs = {"generator": generators} if "generator" in inspect.signature(scheduler.step).parameters else {}

        denoise = guided_denoiser(
            model.unet,
            text_embeds,
            null_text_embeds,
            image_latents,
            settings.guidance_scale,
            settings.image_guidance_scale,
            settings.guidance_rescale,
        )
        for t in scheduler.timesteps:
            model_output = denoise(scheduler.scale_model_input(latents, t), t)
            latents = scheduler.step(model_output, t, latents, **step_kwargs, return_dict=False)[0]
            progress.update()

        decoded = model.vae.decode(latents.to(model.vae.dtype) / model.vae.config.scaling_factor, return_dict=False)[0]
        if not torch.isfinite(decoded).all():
            raise NumericalError(
                f"the edit produced NaN/inf values in {str(dtype).removeprefix('torch.')}; "
                "run it again with dtype float32 (or bfloat16)"
            )
        pixels = (decoded / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
        return list(zip(to_pil(decoded), pixels))

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        tokenizer, encoder = self.model.tokenizer, self.model.text_encoder
        for prompt in dict.fromkeys(prompts):
            if self.prompt_check:
                self.prompt_check(prompt)
        warn_if_truncated(tokenizer, encoder, prompts)
        return encode_prompts(tokenizer, encoder, prompts, self.device).to(self.dtype)


MAX_ASPECT_RATIO = 4  # wider than this, the model (trained on squares) is far from what it knows


def check_working_size(size: tuple[int, int], max_work_pixels: int) -> None:
    """Refuse a working size over the limit (memory grows with it, attention faster still)."""
    width, height = size
    if width * height > max_work_pixels:
        raise UserError(
            f"the working size would be {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{max_work_pixels:,}; lower --resolution, or raise the limit with --max-work-pixels"
        )


def warn_if_extreme(size: tuple[int, int]) -> None:
    """Say so when the working size is far from the square images the model was trained on."""
    width, height = size
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        warnings.warn(
            f"the working size is {width}x{height}, more than {MAX_ASPECT_RATIO}:1; expect slow steps and poor "
            "edits far from the square images the model was trained on (crop the input first)",
            EditWarning,
            stacklevel=4,
        )


def sampler_title(name: str) -> str:
    """The name AUTOMATIC1111 gives a sampler (e.g. euler_ancestral -> 'Euler a')."""
    return A1111_SAMPLERS.get(name, name)


def pair_up(images: list, instructions: list[str]) -> list[tuple[int, str]]:
    """(input index, instruction) pairs: lists pair item by item; a single item goes with all."""
    if not images or not instructions:
        raise UserError("nothing to edit: give at least one image and one instruction")
    if len(images) == 1:
        return [(0, text) for text in instructions]
    if len(instructions) == 1:
        return [(i, instructions[0]) for i in range(len(images))]
    if len(images) != len(instructions):
        raise UserError(
            f"{len(images)} images and {len(instructions)} instructions: give one instruction, or one per image"
        )
    return list(enumerate(instructions))
