"""The edit settings: one dataclass, the single source of their names, defaults, checks and CLI options.

`Editor.edit` takes them (as an `EditSettings` or as keyword overrides), `ip2p edit` builds its
options from them (`add_options` / `from_args`), the command stored in every PNG is written from
them (`command_words`), and the evaluation code passes them along.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field, fields, replace

from instruct_pix2pix.errors import UserError

# Scheduler names as users type them, and the diffusers class name (with settings) each one means.
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpm++2m_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "dpm++2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
}


# What AUTOMATIC1111 calls each sampler, for the `parameters` text its users' tools read.
A1111_SAMPLERS = {
    "euler_ancestral": "Euler a",
    "euler": "Euler",
    "ddim": "DDIM",
    "dpm++2m": "DPM++ 2M",
    "dpm++2m_karras": "DPM++ 2M Karras",
    "dpm++2m_sde": "DPM++ 2M SDE",
    "unipc": "UniPC",
    "heun": "Heun",
}

# Data types as users type them, and the torch dtype each one means.
DTYPE_NAMES = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


# Clipping the predicted sample to [-1, 1] is for pixel-space models; on latents it is wrong (SD's
# latents reach about +-4). DDIM defaults to clipping, so a scheduler config that does not say
# (timbrooks/instruct-pix2pix's does not) gets none; a config that asks for it keeps it.
NO_SAMPLE_CLIPPING = {"clip_sample": False, "thresholding": False}


def make_scheduler(name: str, config: dict):
    """The diffusers scheduler `name` means, built from a model's scheduler config."""
    import inspect

    import diffusers

    check_scheduler(name)
    class_name, settings = SCHEDULERS[name]
    scheduler_class = getattr(diffusers, class_name)
    accepted = inspect.signature(scheduler_class.__init__).parameters
    unclipped = {key: value for key, value in NO_SAMPLE_CLIPPING.items() if key in accepted and key not in config}
    return scheduler_class.from_config(config, **unclipped, **settings)


def check_scheduler(name: str) -> None:
    if name not in SCHEDULERS:
        raise UserError(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}")


def option(flag: str, help: str, **argparse_kwargs) -> dict:
    """The metadata of a setting: its command-line flag, help text and argparse details."""
    return {"flag": flag, "help": help, **argparse_kwargs}


def whole_number(least: int):
    """An argparse type: a whole number of at least `least`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, not {value}")
        return value

    return parse


positive_int = whole_number(1)
MIN_RESOLUTION = 64  # the UNet's latent must be at least 8x8


def check_seed(seed, num_images: int = 1) -> None:
    """Seeds are whole numbers a torch generator takes; variant i of an image uses seed + i."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 2**64 - num_images:
        raise UserError(f"the seed must be a whole number from 0 to {2**64 - num_images:,}, not {seed!r}")


@dataclass(frozen=True)
class EditSettings:
    """Everything besides the image, the instruction, the seed and the model that decides an edit's pixels."""

    num_inference_steps: int = field(default=100, metadata=option("--steps", "sampling steps", type=positive_int))
    guidance_scale: float = field(default=7.5, metadata=option("--text-cfg", "text guidance scale", type=float))
    image_guidance_scale: float = field(default=1.5, metadata=option("--image-cfg", "image guidance scale", type=float))
    guidance_rescale: float = field(
        default=0.0,
        metadata=option("--guidance-rescale", "0..1: rescale strong guidance against over-saturation", type=float),
    )
    scheduler: str = field(
        default="euler_ancestral", metadata=option("--scheduler", "sampler", choices=tuple(SCHEDULERS))
    )
    negative_prompt: str | None = field(
        default=None, metadata=option("--negative-prompt", "text the edit moves away from (default: none)")
    )
    resolution: int | None = field(
        default=None,
        metadata=option("--resolution", "long side, about; 512 for SD", type=whole_number(MIN_RESOLUTION)),
    )
    keep_size: bool = field(
        default=False, metadata=option("--keep-size", "keep the input size (cropped to a multiple of 8)")
    )

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        if (
            isinstance(self.num_inference_steps, bool)
            or not isinstance(self.num_inference_steps, int)
            or self.num_inference_steps < 1
        ):
            raise UserError(f"the number of steps must be a positive whole number, not {self.num_inference_steps!r}")
        for item in fields(self):
            value = getattr(self, item.name)
            if item.type == "float" and (not isinstance(value, (int, float)) or not math.isfinite(value)):
                raise UserError(f"{item.name} ({item.metadata['flag']}) must be a finite number, not {value!r}")
        if not 0 <= self.guidance_rescale <= 1:
            raise UserError(f"guidance_rescale (--guidance-rescale) must be from 0 to 1, not {self.guidance_rescale!r}")
        check_scheduler(self.scheduler)
        if self.resolution is not None and (not isinstance(self.resolution, int) or self.resolution < MIN_RESOLUTION):
            raise UserError(f"resolution must be a whole number of at least {MIN_RESOLUTION}, not {self.resolution!r}")

    def for_model(self, model) -> EditSettings:
        """These settings overridden by those a model carries (its about.json "settings"), if any."""
        return self.replace(**(getattr(model, "about", None) or {}).get("settings", {}))

    def replace(self, **changes) -> EditSettings:
        """A copy with some settings changed; an unknown name is an error that lists the known ones."""
        unknown = set(changes) - {item.name for item in fields(self)}
        if unknown:
            known = ", ".join(item.name for item in fields(self))
            raise TypeError(f"unknown edit setting(s) {', '.join(sorted(unknown))}; the settings are: {known}")
        return replace(self, **changes)

    # --- the command line -----------------------------------------------------------------------

    @classmethod
    def add_options(
        cls,
        parser: argparse.ArgumentParser,
        defaults: EditSettings | None = None,
        *,
        exclude: tuple[str, ...] = (),
        fallback: EditSettings | None = None,
    ) -> None:
        """One option per setting (but those in `exclude`); `--resolution` and `--keep-size` exclude each
        other. With `defaults` None an option not given stays None, so that the model's own settings
        apply (`given_in`), else those of `fallback` (the help shows them; default: these defaults)."""
        sizes = parser.add_mutually_exclusive_group()
        for item in fields(cls):
            if item.name in exclude:
                continue
            meta = dict(item.metadata)
            flag, text = meta.pop("flag"), meta.pop("help")
            shown = getattr(defaults or fallback or cls(), item.name)
            default = None if defaults is None else shown
            if item.type != "bool" and shown is not None:
                text += f" (default: the model's, else {shown})" if defaults is None else f" (default {shown})"
            target = sizes if item.name in ("resolution", "keep_size") else parser
            if item.type == "bool":
                target.add_argument(flag, dest=item.name, action="store_true", default=default, help=text)
            else:
                target.add_argument(flag, dest=item.name, default=default, help=text, **meta)

    @classmethod
    def given_in(cls, args: argparse.Namespace) -> dict:
        """The settings the command line gave (options added with `defaults` None)."""
        given = {item.name: getattr(args, item.name, None) for item in fields(cls)}
        return {name: value for name, value in given.items() if value is not None}

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EditSettings:
        return cls(**cls.given_in(args))

    def command_words(self) -> list[str]:
        """The options that give these settings back, e.g. ['--steps', '20', '--text-cfg', '7.5', ...]."""
        words = []
        for item in fields(self):
            value, flag = getattr(self, item.name), item.metadata["flag"]
            if item.type == "bool":
                words += [flag] if value else []
            elif value is not None and not (item.name == "resolution" and self.keep_size):
                words += [flag, str(value)]
        return words


def parse_numbers(text: str, flag: str, *, low: float | None = None, high: float | None = None) -> tuple[float, ...]:
    """'1.0,1.2,1.4' -> (1.0, 1.2, 1.4); a word that is not a number (or outside [low, high]) is one line."""
    values = []
    for word in text.split(","):
        try:
            value = float(word)
        except ValueError:
            raise UserError(f"{flag}: {word.strip()!r} is not a number; give numbers separated by commas, "
                            f"e.g. {flag} 1.0,1.2,1.4") from None  # fmt: skip
        if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
            span = f" from {low:g} to {high:g}" if low is not None and high is not None else ""
            raise UserError(f"{flag}: {word.strip()} is out of range; give finite numbers{span}")
        values.append(value)
    return tuple(dict.fromkeys(values))


# The paper's evaluation sweep (the reference's metrics/compute_metrics.py): text guidance 7.5, image
# guidance 1.0 to 2.2, SDEdit over strength 0.3 to 0.9; Euler ancestral, 100 steps (`ip2p evaluate`).
SWEEP_TEXT_GUIDANCE = (7.5,)
SWEEP_IMAGE_GUIDANCE = (1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.2)
SWEEP_STRENGTHS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
SWEEP_SETTINGS = EditSettings(num_inference_steps=100, guidance_scale=7.5, scheduler="euler_ancestral")


REFERENCE_CLIP = "openai/clip-vit-large-patch14"  # the paper's CLIP, for its metrics and its filter

# The image stage (the reference's dataset_creation/generate_img_dataset.py; `ip2p data make-pairs`):
# Euler ancestral over 100 steps, p ~ U[0.1, 0.9] of the steps with shared attention, text guidance
# ~ U[7.5, 15], 100 candidates per caption pair, the best 4 kept by directional CLIP similarity among
# those that pass the thresholds. The paper says image similarity 0.75; the reference code uses 0.7.
PAIR_MODES = ("self", "cross")  # the reference's shared self-attention; the original Prompt-to-Prompt's
PAIR_SELF_REPLACE = 0.4  # cross mode: the share of steps with the first image's self-attention (n_self_replace)
PAIR_FORMATS = ("folder", "parquet")  # the reference's layout; the released dataset's parquet schema
PAIR_STEPS = 100
PAIR_CANDIDATES = 100
PAIR_KEEP = 4
PAIR_P_RANGE = (0.1, 0.9)
PAIR_GUIDANCE_RANGE = (7.5, 15.0)
PAIR_CLIP_IMAGE = 0.75
PAIR_CLIP_DIRECTION = 0.2
PAIR_CLIP_CAPTION = 0.2
