"""The one typed training configuration, read from YAML with `key=value` overrides.

Setting names follow diffusers' `train_instruct_pix2pix.py` where it has one, so its users feel at home.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from instruct_pix2pix.errors import UserError


@dataclass
class TrainConfig:
    # --- model: start from a text-to-image or editing checkpoint, or from scratch ---
    pretrained_model_name_or_path: str | None = None  # folder, hub id or single file
    pretrained_config: str | None = None  # diffusers config folder for a single file
    from_scratch: str | None = None  # a diffusers-format folder of configs (+ tokenizer, and VAE/text encoder weights)
    # --- data ---
    train_data: str = ""  # parquet folder/files, a `datasets` folder or hub id, or the reference on-disk format
    train_split: str = "train"
    data_columns: dict[str, str] | None = None  # our field -> their column, for other schemas
    resolution: int = 256  # the crop the model sees
    max_resize_resolution: int | None = None  # resize to a random size in [resolution, this] before the crop
    random_flip: bool = True
    # --- objective ---
    conditioning_dropout_prob: float = 0.05
    # --- optimisation ---
    output_dir: str = "runs/ip2p"
    max_train_steps: int = 1000
    train_batch_size: int = 4  # per process
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    use_ema: bool = False
    ema_decay: float = 0.9999
    mixed_precision: str = "no"  # no, fp16, bf16
    gradient_checkpointing: bool = False
    seed: int = 0
    # --- bookkeeping ---
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 3
    resume_from_checkpoint: str | None = None  # "latest" or a checkpoint folder
    validation_steps: int = 0  # 0: none
    validation_prompts: list[str] = field(default_factory=list)
    report_to: str | None = None  # "tensorboard" when installed
    dataloader_num_workers: int = 0

    def check(self) -> None:
        if not self.train_data:
            raise UserError("train_data is not set: give a dataset folder, parquet files or a hub dataset id")
        if (self.pretrained_model_name_or_path is None) == (self.from_scratch is None):
            raise UserError("set exactly one of pretrained_model_name_or_path and from_scratch")
        for name in ("max_train_steps", "train_batch_size", "gradient_accumulation_steps", "checkpointing_steps", "resolution"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, not {getattr(self, name)}")
        if not 0 <= self.conditioning_dropout_prob <= 1 / 3:
            raise UserError("conditioning_dropout_prob must be in [0, 1/3] (it is used three times: text, both, image)")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise UserError(f"mixed_precision must be no, fp16 or bf16, not {self.mixed_precision!r}")


def _convert(value, annotation, name: str):
    """Turn a YAML or command-line value into the field's type."""
    origin = typing.get_origin(annotation)
    options = typing.get_args(annotation) if origin in (typing.Union, getattr(__import__("types"), "UnionType")) else (annotation,)
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
