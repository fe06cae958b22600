"""Diffusers-format folders: check, load, build from configs, and save.

A model folder holds unet/, vae/, text_encoder/, tokenizer/ and scheduler/ (as diffusers'
`save_pretrained` writes them). Optional parts (safety checker, feature extractor) are never
loaded. Classes are looked up by name inside `transformers` or `diffusers` only, and no code that
comes with a model is ever run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
import transformers
from diffusers import AutoencoderKL, UNet2DConditionModel

from instruct_pix2pix.atomic import atomic_folder, write_json
from instruct_pix2pix.errors import UserError
from instruct_pix2pix.loading.bundle import ModelBundle, check_unet_channels, vae_dtype

CONFIG_FILES = {
    "unet": "config.json",
    "vae": "config.json",
    "text_encoder": "config.json",
    "scheduler": "scheduler_config.json",
}
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"cannot read {path}: {error}") from None


def has_weights(folder: Path, part: str) -> bool:
    return (folder / part).is_dir() and any(f.suffix in WEIGHT_SUFFIXES for f in (folder / part).iterdir())


def check_folder(folder: Path, *, weights: bool, expected: str) -> None:
    """Refuse a folder that lacks a config, the tokenizer or (with `weights`) a part's weights, naming
    every missing piece at once; `expected` says what the folder should be."""
    missing = []
    for part, config in CONFIG_FILES.items():
        if not (folder / part).is_dir():
            missing.append(f"{part}/")
        elif not (folder / part / config).is_file():
            missing.append(f"{part}/{config}")
        elif weights and part != "scheduler" and not has_weights(folder, part):
            missing.append(f"{part}/ weights")
    if not (folder / "tokenizer").is_dir() or not any((folder / "tokenizer").iterdir()):
        missing.append("tokenizer/")
    if missing:
        raise UserError(f"{folder} is missing {', '.join(missing)}; it must be {expected}")


def check_weight_files(folder: Path) -> None:
    """Every safetensors file of the parts opens (its header is read, not its tensors)."""
    from safetensors import safe_open

    for part in ("unet", "vae", "text_encoder"):
        for path in sorted((folder / part).glob("*.safetensors")):
            try:
                with safe_open(str(path), framework="pt") as handle:
                    handle.keys()
            except Exception as error:
                raise UserError(
                    f"{path} is damaged ({first_line(error)}); download or export the model again"
                ) from None


def transformers_class(folder: Path, part: str, fallback: str) -> type:
    """The transformers class a part is saved as, looked up by name in transformers only."""
    name = fallback
    index = folder / "model_index.json"
    if index.is_file():
        entry = read_json(index).get(part)
        if isinstance(entry, list) and len(entry) == 2 and entry[1]:
            library, name = entry
            if library != "transformers":
                raise UserError(f"{folder}: {part} is a {library}.{name}; only transformers classes are supported")
    elif part == "text_encoder":
        architectures = read_json(folder / part / "config.json").get("architectures") or [fallback]
        name = architectures[0]
    cls = getattr(transformers, name, None)
    if not isinstance(cls, type):
        raise UserError(f"{folder}: {part} class {name!r} is not in transformers {transformers.__version__}")
    return cls


def load_tokenizer(folder: Path):
    return transformers_class(folder, "tokenizer", "CLIPTokenizer").from_pretrained(
        folder / "tokenizer", local_files_only=True
    )


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_folder(folder: Path, *, kind: str, dtype: torch.dtype, source: str) -> ModelBundle:
    """Load a complete diffusers folder of the given kind ("editing", "text-to-image" or "any")."""
    check_folder(folder, weights=True, expected="a complete diffusers-format model")
    unet_config = read_json(folder / "unet" / "config.json")
    vae_config = read_json(folder / "vae" / "config.json")
    check_unet_channels(unet_config.get("in_channels", 4), vae_config.get("latent_channels", 4), kind, source)
    check_weight_files(folder)
    try:
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=vae_dtype(dtype))
        text_encoder = transformers_class(folder, "text_encoder", "CLIPTextModel").from_pretrained(
            folder / "text_encoder", dtype=dtype
        )
        tokenizer = load_tokenizer(folder)
    except Exception as error:  # OSError, ValueError, RuntimeError, safetensors' own SafetensorError, ...
        if isinstance(error, UserError):
            raise
        raise UserError(
            f"cannot load the model in {folder}: {first_line(error)}; it is damaged or incomplete"
        ) from None
    scheduler_config = read_json(folder / "scheduler" / "scheduler_config.json")
    about = read_json(folder / "about.json") if (folder / "about.json").is_file() else None
    return ModelBundle(unet, vae, text_encoder, tokenizer, scheduler_config, source, about=about)


def build_from_configs(folder: Path) -> ModelBundle:
    """A folder of configs, to train from scratch: the UNet starts at random; VAE and text encoder load
    their weights when the folder has them (the frozen pretrained parts) and start at random otherwise."""
    check_folder(folder, weights=False, expected="a diffusers-format folder of configs (from_scratch)")
    unet = UNet2DConditionModel.from_config(read_json(folder / "unet" / "config.json"))
    if has_weights(folder, "vae"):
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    else:
        vae = AutoencoderKL.from_config(read_json(folder / "vae" / "config.json"))
    text_class = transformers_class(folder, "text_encoder", "CLIPTextModel")
    if has_weights(folder, "text_encoder"):
        text_encoder = text_class.from_pretrained(folder / "text_encoder")
    else:
        text_encoder = text_class(transformers.AutoConfig.from_pretrained(folder / "text_encoder"))
    scheduler_config = read_json(folder / "scheduler" / "scheduler_config.json")
    return ModelBundle(unet, vae, text_encoder, load_tokenizer(folder), scheduler_config, str(folder))


@contextmanager
def temporary_config_dir(files: Mapping[str, str | dict], base: Path | None = None) -> Iterator[Path]:
    """A temporary diffusers config folder: a copy of `base` (if any) with `files` written over it
    (relative name -> text, or a value written as JSON)."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        if base is not None:
            shutil.copytree(base, folder, dirs_exist_ok=True)
        for name, content in files.items():
            target = Path(folder) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content if isinstance(content, str) else json.dumps(content, indent=2), encoding="utf-8")
        yield Path(folder)


@contextmanager
def no_torchvision_warnings():
    """transformers' image processors warn that torchvision is missing and advise installing it; we
    need none (there is no CPU build to install, and Pillow does our image work), so say nothing."""
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)


def diffusers_pipeline(model: ModelBundle, scheduler=None, *, img2img: bool = False):
    """diffusers' own pipeline over a bundle's parts (no copies): StableDiffusionInstructPix2PixPipeline
    for an editing model, StableDiffusionPipeline for a text-to-image one (StableDiffusionImg2ImgPipeline,
    SDEdit, with `img2img`). `scheduler` defaults to the model's scheduler config's class (Euler
    ancestral when that is not a diffusers scheduler)."""
    import diffusers

    with no_torchvision_warnings():  # importing the pipeline imports transformers' image processors
        from diffusers import (
            SchedulerMixin,
            StableDiffusionImg2ImgPipeline,
            StableDiffusionInstructPix2PixPipeline,
            StableDiffusionPipeline,
        )

    if scheduler is None:
        scheduler_class = getattr(diffusers, model.scheduler_config.get("_class_name", ""), None)
        if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, SchedulerMixin)):
            scheduler_class = diffusers.EulerAncestralDiscreteScheduler
        scheduler = scheduler_class.from_config(model.scheduler_config)
    if img2img and model.kind == "editing":
        raise UserError(f"{model.source} is an editing model; SDEdit needs a text-to-image model (Stable Diffusion)")
    pipeline_class = StableDiffusionInstructPix2PixPipeline if model.kind == "editing" else StableDiffusionPipeline
    pipeline_class = StableDiffusionImg2ImgPipeline if img2img else pipeline_class
    return pipeline_class(
        vae=model.vae,
        text_encoder=model.text_encoder,
        tokenizer=model.tokenizer,
        unet=model.unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_model(
    model: ModelBundle, folder: str | Path, *, extra_unets: dict[str, UNet2DConditionModel] | None = None
) -> None:
    """Write a diffusers-format folder (model_index.json and all) that diffusers' pipelines load too,
    atomically. `extra_unets` are saved beside it (e.g. "unet_non_ema"); pipelines ignore folders
    model_index.json does not name."""
    pipe = diffusers_pipeline(model)
    with atomic_folder(folder) as temporary:
        pipe.save_pretrained(temporary)
        for name, unet in (extra_unets or {}).items():
            unet.save_pretrained(temporary / name)
        if model.about:
            write_json(temporary / "about.json", model.about)
