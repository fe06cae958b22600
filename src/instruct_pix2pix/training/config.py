"""The one typed training configuration, read from YAML with `key=value` overrides.

Setting names follow diffusers' `train_instruct_pix2pix.py` where it has one, so its users feel at home.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from instruct_pix2pix.errors import UserError

TASKS = ("edit", "text-to-image")
# diffusers' get_scheduler names that need no more than warmup and total steps
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")


@dataclass
class TrainConfig:
    # --- model: start from a text-to-image or editing checkpoint, or from scratch ---
    pretrained_model_name_or_path: str | None = None  # folder, hub id or single file (text-to-image: widened 4 -> 8)
    pretrained_config: str | None = None  # diffusers config folder for a single file (default: SD 1.5's)
    from_scratch: str | None = None  # a diffusers-format folder of configs (+ tokenizer, and VAE/text encoder weights)
    # --- data ---
    train_data: str = ""  # parquet folder/files, a `datasets` folder or hub id, or the reference on-disk format
    train_split: str = "train"  # the split to read (the reference on-disk format splits 90/5/5 into train/val/test)
    data_columns: dict[str, str] | None = None  # our field -> their column, for other schemas
    resolution: int = 256  # the crop the model sees
    max_resize_resolution: int | None = None  # resize to a random size in [resolution, this] before the crop
    random_flip: bool = True  # one shared random horizontal flip of the input and the edited image
    cache_latents: bool = False  # encode each example (VAE posterior, text) once and reuse it; needs augmentation off
    # --- objective ---
    task: str = "edit"  # "edit" (InstructPix2Pix) or "text-to-image" (train_text_to_image.py: image from caption)
    conditioning_dropout_prob: float = 0.05  # edit: p: 5% text dropped, 5% both, 5% image (at 0.05)
    proportion_empty_prompts: float = 0.0  # text-to-image: share of captions replaced by "" (for guidance)
    snr_gamma: float | None = None  # min-SNR-gamma loss weighting (5.0 is diffusers' suggestion); none: plain MSE
    changed_region_weight: float | None = None  # edit: extra loss weight where the edit changes the latents; none: off
    train_text_encoder: bool = False  # train the text encoder too (train_dreambooth.py's --train_text_encoder)
    text_encoder_learning_rate: float | None = None  # its peak learning rate (none: learning_rate)
    # --- optimisation ---
    output_dir: str = "runs/ip2p"  # checkpoints, metrics.jsonl, validation/ and the final model/
    max_train_steps: int = 1000  # optimizer steps
    train_batch_size: int = 4  # per process
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    learning_rate: float = 1e-4  # AdamW's peak
    lr_scheduler: str = "constant_with_warmup"  # diffusers' get_scheduler: constant, linear, cosine, ...
    lr_warmup_steps: int = 0  # linear warmup, in optimizer steps
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0  # gradient clipping
    use_ema: bool = False  # an EMA of the UNet (and a trained text encoder) in model/; raw UNet: unet_non_ema
    ema_decay: float = 0.9999
    mixed_precision: str = "no"  # no, fp16, bf16
    gradient_checkpointing: bool = False  # less memory, more compute
    seed: int = 0  # data order, augmentation, noise, dropout and the initialisation from scratch
    # --- bookkeeping ---
    checkpointing_steps: int = 500  # save a checkpoint every this many optimizer steps (and at the end)
    checkpoints_total_limit: int | None = 3  # keep the newest this many checkpoints (none: keep all)
    resume_from_checkpoint: str | None = None  # "latest" or a checkpoint folder
    overwrite_output_dir: bool = False  # train into an output_dir that holds another run's files, replacing them
    validation_steps: int = 0  # save a grid of validation edits every this many steps (and at the end); 0: none
    validation_prompts: list[str] = field(default_factory=list)  # the grid's columns: instructions (or captions)
    validation_images: list[str] = field(
        default_factory=list
    )  # the grid's input images (default: the first 4 training inputs)
    validation_inference_steps: int = 20  # sampling steps of a validation edit (fixed seed: the run's seed)
    report_to: str | None = None  # "tensorboard" when installed
    dataloader_num_workers: int = 0

    def check(self) -> None:
        if not self.train_data:
            raise UserError("train_data is not set: give a dataset folder, parquet files or a hub dataset id")
        if (self.pretrained_model_name_or_path is None) == (self.from_scratch is None):
            raise UserError("set exactly one of pretrained_model_name_or_path and from_scratch")
        for name in (
            "max_train_steps",
            "train_batch_size",
            "gradient_accumulation_steps",
            "checkpointing_steps",
            "resolution",
        ):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, not {getattr(self, name)}")
        positive = ("learning_rate", "adam_epsilon", "max_grad_norm")
        optional = ("text_encoder_learning_rate", "snr_gamma", "changed_region_weight")  # none: unset
        for name in positive + optional:
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value <= 0):
                raise UserError(f"{name} must be a positive number, not {getattr(self, name)}")
        for name in ("adam_beta1", "adam_beta2", "ema_decay"):
            if not 0 <= getattr(self, name) < 1:
                raise UserError(f"{name} must be in [0, 1), not {getattr(self, name)}")
        if self.adam_weight_decay < 0 or self.lr_warmup_steps < 0:
            raise UserError("adam_weight_decay and lr_warmup_steps cannot be negative")
        if self.task not in TASKS:
            raise UserError(f"task must be {' or '.join(TASKS)}, not {self.task!r}")
        if not 0 <= self.proportion_empty_prompts <= 1:
            raise UserError(f"proportion_empty_prompts must be in [0, 1], not {self.proportion_empty_prompts}")
        if self.changed_region_weight is not None and self.task != "edit":
            raise UserError("changed_region_weight weights the region an edit changes; text-to-image has none")
        if not 0 <= self.conditioning_dropout_prob <= 1 / 3:
            raise UserError("conditioning_dropout_prob must be in [0, 1/3] (it is used three times: text, both, image)")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise UserError(f"lr_scheduler must be one of {', '.join(LR_SCHEDULERS)}, not {self.lr_scheduler!r}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise UserError(f"mixed_precision must be no, fp16 or bf16, not {self.mixed_precision!r}")
        if self.max_resize_resolution is not None and self.max_resize_resolution < self.resolution:
            raise UserError(
                f"max_resize_resolution ({self.max_resize_resolution}) must be at least resolution ({self.resolution})"
            )
        if self.cache_latents and (
            self.random_flip or (self.max_resize_resolution or self.resolution) > self.resolution
        ):
            raise UserError(
                "cache_latents needs augmentation off (random_flip=false, max_resize_resolution=none): "
                "a cached example must look the same every epoch"
            )
        if self.validation_steps < 0 or self.validation_inference_steps < 1:
            raise UserError("validation_steps must be 0 (none) or more, and validation_inference_steps at least 1")
        if self.validation_steps and not self.validation_prompts:
            raise UserError(
                "validation_steps is set but validation_prompts is empty: give the instructions to edit with "
                "(text to image: the captions to draw)"
            )


def _convert(value, annotation, name: str):
    """Turn a YAML or command-line value into the field's type."""
    origin = typing.get_origin(annotation)
    options = typing.get_args(annotation) if origin in (typing.Union, __import__("types").UnionType) else (annotation,)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and type(None) in options):
        if type(None) in options:
            return None
        raise UserError(f"{name} cannot be empty")
    for option in options:
        if option is type(None):
            continue
        base = typing.get_origin(option) or option
        if base is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "yes", "1", "false", "no", "0"):
                return str(value).lower() in ("true", "yes", "1")
        elif base in (int, float) and not isinstance(value, bool):
            try:
                return base(value) if base is float or isinstance(value, int) else int(str(value))
            except (TypeError, ValueError):
                continue
        elif base is str:
            return str(value)
        elif base in (list, dict):
            if isinstance(value, str):
                value = yaml.safe_load(value)
            if isinstance(value, base):
                return value
    raise UserError(f"{name}: {value!r} is not a valid {getattr(annotation, '__name__', annotation)}")


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML file (unknown keys are an error, not silently ignored), then apply key=value overrides."""
    values = {}
    if path is not None:
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise UserError(f"no such config file: {path}") from None
        except yaml.YAMLError as error:
            raise UserError(f"{path} is not valid YAML: {str(error).splitlines()[0]}") from None
        if not isinstance(values, dict):
            raise UserError(f"{path} must be a mapping of setting: value")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"override {item!r} must look like key=value")
        values[key.strip()] = value
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    hints = typing.get_type_hints(TrainConfig)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise UserError(f"unknown setting(s): {', '.join(unknown)}; see `ip2p train --help-settings`")
    config = TrainConfig(**{key: _convert(value, hints[key], key) for key, value in values.items()})
    config.check()
    return config


def settings_help() -> str:
    """Every setting with its type, default and the comment beside it above (`ip2p train --help-settings`)."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    rows = []  # (name, type, default, comment), or a section title alone
    for line in inspect.getsource(TrainConfig).splitlines():
        if section := re.match(r"\s*# --- (.*) ---$", line):
            rows.append(section[1])
        elif (setting := re.match(r"\s*(\w+): .*?(?:  # (.*))?$", line)) and setting[1] in fields:
            f = fields[setting[1]]
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            rows.append((f.name, str(f.type), "none" if default is None else json.dumps(default), setting[2] or ""))
    widths = [max(len(row[k]) for row in rows if isinstance(row, tuple)) for k in range(3)]
    lines = ["Settings of `ip2p train CONFIG.yaml [key=value ...]` (YAML keys or key=value overrides):"]
    for row in rows:
        if isinstance(row, str):
            lines.append(f"\n{row}")
        else:
            lines.append("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])
    return "\n".join(line.rstrip() for line in lines)
