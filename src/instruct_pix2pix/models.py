"""Loading an editing model: a diffusers folder, a hub id, or a single-file checkpoint.

An editing model is five parts: an 8-channel UNet, a VAE, a text encoder with its tokenizer, and
a scheduler configuration. Optional parts of a diffusers folder (safety checker, feature
extractor) are never loaded. Model classes are looked up by name inside `transformers` or
`diffusers` only, and no code that comes with a model is ever run.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from diffusers import AutoencoderKL, UNet2DConditionModel

from instruct_pix2pix.errors import UserError

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")
DEFAULT_HUB_ID = "timbrooks/instruct-pix2pix"
DEFAULT_MODEL = Path(__file__).resolve().parent / "small_world" / "default_model"  # shipped, trained by the project


def default_source(source: str | Path | None) -> str | Path:
    """No source means the shipped small-world model."""
    if source is not None:
        return source
    if not (DEFAULT_MODEL / "model_index.json").is_file():
        raise UserError(f"the default model is missing from {DEFAULT_MODEL}; reinstall, run `make train-default`, or pass --model")
    return DEFAULT_MODEL


@dataclass
class EditingModel:
    """The parts of an editing model, ready to run."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: transformers.PreTrainedModel
    tokenizer: transformers.PreTrainedTokenizerBase
    scheduler_config: dict
    source: str = "(in memory)"
    about: dict | None = None  # about.json of a model folder: what it understands (the small world's default)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def default_resolution(self) -> int:
        """The size the UNet was trained at: 512 for SD 1.5 models, the model's own size for small ones."""
        return self.unet.config.sample_size * self.vae_scale_factor


def check_editing_unet(in_channels: int, latent_channels: int, source: str) -> None:
    """An editing UNet sees the noisy latent and the image latent side by side."""
    if in_channels == latent_channels:
        raise UserError(
            f"{source} is a text-to-image model, not an editing model (its UNet takes {in_channels} input "
            f"channels, an editing model takes {2 * latent_channels}); train one from it with `ip2p train`"
        )
    if in_channels != 2 * latent_channels:
        raise UserError(
            f"{source} has a UNet with {in_channels} input channels; an editing model with a "
            f"{latent_channels}-channel VAE needs {2 * latent_channels}"
        )


def resolve_source(source: str | Path) -> tuple[str, Path]:
    """Say what kind of source this is ("folder", "file" or "hub") and where its files are."""
    path = Path(source).expanduser()
    if path.is_dir():
        return "folder", path
    if path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise UserError(f"{path} is not a model: expected a diffusers folder or a {'/'.join(SINGLE_FILE_SUFFIXES)} file")
        return "file", path
    text = str(source)
    looks_like_hub_id = text.count("/") == 1 and not text.startswith((".", "/", "~")) and not path.suffix
    if looks_like_hub_id:
        return "hub", Path(text)
    raise UserError(f"no such model: {text} (give a diffusers folder, a .safetensors/.ckpt file, or a hub id such as {DEFAULT_HUB_ID})")


# --- diffusers folders -------------------------------------------------------------------------


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"cannot read {path}: {error}") from None


def check_folder(folder: Path) -> None:
    """Refuse a folder that lacks a part, naming every missing piece at once."""
    needed = {
        "unet": "config.json",
        "vae": "config.json",
        "text_encoder": "config.json",
        "scheduler": "scheduler_config.json",
        "tokenizer": None,
    }
    missing = []
    for part, config in needed.items():
        if not (folder / part).is_dir():
            missing.append(f"{part}/")
        elif config and not (folder / part / config).is_file():
            missing.append(f"{part}/{config}")
        elif part != "tokenizer" and part != "scheduler" and not any(
            f.suffix in (".safetensors", ".bin") for f in (folder / part).iterdir()
        ):
            missing.append(f"{part}/ weights")
    if missing:
        raise UserError(f"model folder {folder} is missing {', '.join(missing)}; it must be a complete diffusers-format editing model")


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


def load_folder(folder: Path, dtype: torch.dtype, source: str, *, editing_only: bool = True) -> EditingModel:
    """Load a diffusers folder; with editing_only=False a text-to-image model loads too (to train from)."""
    check_folder(folder)
    unet_config = read_json(folder / "unet" / "config.json")
    vae_config = read_json(folder / "vae" / "config.json")
    if editing_only:
        check_editing_unet(unet_config.get("in_channels", 4), vae_config.get("latent_channels", 4), source)
    try:
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=vae_dtype(dtype))
        text_encoder = transformers_class(folder, "text_encoder", "CLIPTextModel").from_pretrained(
            folder / "text_encoder", dtype=dtype
        )
        tokenizer = transformers_class(folder, "tokenizer", "CLIPTokenizer").from_pretrained(folder / "tokenizer")
    except (OSError, ValueError, RuntimeError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"cannot load the model in {folder}: {first_line}") from None
    scheduler_config = read_json(folder / "scheduler" / "scheduler_config.json")
    about = read_json(folder / "about.json") if (folder / "about.json").is_file() else None
    return EditingModel(unet, vae, text_encoder, tokenizer, scheduler_config, source, about)


def vae_dtype(dtype: torch.dtype) -> torch.dtype:
    """The SD VAE overflows in float16 (black images), so it stays in float32 then."""
    return torch.float32 if dtype == torch.float16 else dtype


# --- the hub -----------------------------------------------------------------------------------


def hub_patterns(repo_files: list[str]) -> list[str]:
    """The files the editor needs from a hub repository: configs, tokenizer and one copy of each
    part's weights (safetensors when there are any). Everything else (the multi-GB single-file
    checkpoints at the top level, the safety checker, fp16 variants) is left on the hub."""
    patterns = ["model_index.json", "scheduler/*.json", "tokenizer/*"]
    for part in ("unet", "vae", "text_encoder"):
        weights = [f for f in repo_files if f.startswith(f"{part}/") and f.count(".") == 1]
        has_safetensors = any(f.endswith(".safetensors") for f in weights)
        patterns += [f"{part}/*.json", *(f for f in weights if f.endswith(".safetensors" if has_safetensors else ".bin"))]
    return patterns


def download(repo_id: str) -> Path:
    """Fetch what the editor needs from the hub, or find it in the local cache when offline."""
    import huggingface_hub

    try:
        files = huggingface_hub.list_repo_files(repo_id)
        return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=hub_patterns(files)))
    except huggingface_hub.errors.RepositoryNotFoundError:
        raise UserError(f"no model {repo_id!r} on the Hugging Face hub (or it is private and you are not logged in)") from None
    except Exception as network_error:  # offline, proxy, DNS, time-out: try the cache
        try:
            return Path(huggingface_hub.snapshot_download(repo_id, local_files_only=True))
        except Exception:
            reason = str(network_error).strip().splitlines()[0][:160] if str(network_error).strip() else type(network_error).__name__
            raise UserError(
                f"cannot download {repo_id!r} from the Hugging Face hub and it is not in the local cache ({reason}); "
                "download it where there is network, or pass a local folder or .safetensors file"
            ) from None


# --- entry point -------------------------------------------------------------------------------


def load_model(
    source: str | Path | None, *, dtype: torch.dtype = torch.float32, config: str | Path | None = None, editing_only: bool = True
) -> EditingModel:
    """Load an editing model from a diffusers folder, a hub id, or a single-file checkpoint.

    `config` is the diffusers-format folder of configs a single file is read with; by default the
    shipped configuration of timbrooks/instruct-pix2pix (SD 1.5 with an 8-channel UNet).
    """
    source = default_source(source)
    kind, path = resolve_source(source)
    if kind == "hub":
        return load_folder(download(str(path)), dtype, str(source), editing_only=editing_only)
    if kind == "folder":
        return load_folder(path, dtype, str(source), editing_only=editing_only)
    from instruct_pix2pix import single_file

    parts = single_file.load_single_file(path, config or single_file.SD15_CONFIG_DIR, dtype=dtype)
    parts["vae"].to(vae_dtype(dtype))
    return EditingModel(
        parts["unet"], parts["vae"], parts["text_encoder"], parts["tokenizer"], dict(parts["scheduler"].config), str(source)
    )


# --- ip2p info ---------------------------------------------------------------------------------


def single_file_in_channels(path: Path) -> int:
    """conv_in's input channels, read from the file's header (safetensors) or a memory map (ckpt)."""
    key = "model.diffusion_model.input_blocks.0.0.weight"
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors import safe_open

            with safe_open(path, framework="pt") as f:
                return f.get_slice(key).get_shape()[1]
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return state.get("state_dict", state)[key].shape[1]
    except Exception:
        raise UserError(f"{path} does not look like a Stable Diffusion checkpoint (no {key})") from None


def describe(source: str | Path | None, *, config: str | Path | None = None) -> dict[str, str]:
    """What a model is, from its configuration files alone (no weights are loaded)."""
    source = default_source(source)
    kind, path = resolve_source(source)
    in_channels = None
    if kind == "hub":
        import huggingface_hub

        try:
            path = Path(huggingface_hub.snapshot_download(str(path), allow_patterns=["model_index.json", "*/*.json", "tokenizer/*"]))
        except Exception:
            path = download(str(path))  # the same one-line error, or the cache
    elif kind == "file":
        from instruct_pix2pix import single_file

        in_channels = single_file_in_channels(path)
        path = Path(config or single_file.SD15_CONFIG_DIR)
    for part, name in (("unet", "config.json"), ("vae", "config.json"), ("text_encoder", "config.json"), ("scheduler", "scheduler_config.json")):
        if not (path / part / name).is_file():
            raise UserError(f"{source} is missing {part}/{name}; it is not a diffusers-format model")
    unet = read_json(path / "unet" / "config.json")
    vae = read_json(path / "vae" / "config.json")
    text = read_json(path / "text_encoder" / "config.json")
    scheduler = read_json(path / "scheduler" / "scheduler_config.json")
    in_channels = in_channels or unet.get("in_channels", 4)
    latent_channels = vae.get("latent_channels", 4)
    scale = 2 ** (len(vae.get("block_out_channels", [0])) - 1)
    text_class = transformers_class(path, "text_encoder", "CLIPTextModel").__name__
    tokenizer_class = transformers_class(path, "tokenizer", "CLIPTokenizer").__name__ if (path / "tokenizer").is_dir() else "(none)"
    editing = in_channels == 2 * latent_channels
    return {
        "source": f"{source} ({ {'folder': 'diffusers folder', 'hub': 'hub id', 'file': 'single-file checkpoint'}[kind] })",
        "kind": "editing model (InstructPix2Pix)" if editing else f"not an editing model: its UNet takes {in_channels} channels",
        "unet": (
            f"{in_channels} input channels ({latent_channels} noisy latent + {in_channels - latent_channels} image latent), "
            f"blocks {'/'.join(map(str, unet.get('block_out_channels', [])))}, "
            f"cross-attention {unet.get('cross_attention_dim')}, predicts {scheduler.get('prediction_type', 'epsilon')}"
        ),
        "vae": f"{latent_channels} latent channels, {scale}x downsampling, scaling factor {vae.get('scaling_factor', 0.18215)}",
        "text encoder": (
            f"{text_class}, width {text.get('hidden_size', text.get('d_model'))}, "
            f"{text.get('num_hidden_layers', text.get('num_layers'))} layers, tokenizer {tokenizer_class}"
        ),
        "scheduler": scheduler.get("_class_name", "?"),
        "default resolution": str(unet.get("sample_size", 64) * scale),
    }


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


def save_model(model: EditingModel, folder: str | Path, *, extra_unets: dict[str, UNet2DConditionModel] | None = None) -> None:
    """Write a diffusers-format folder (model_index.json and all) that diffusers' pipeline loads too.

    Written under a temporary name and renamed, so a crash never leaves half a model. `extra_unets`
    are saved beside it (e.g. "unet_non_ema"); pipelines ignore folders model_index.json does not name.
    """
    import os
    import shutil

    import diffusers

    with no_torchvision_warnings():  # importing the pipeline imports transformers' image processors
        from diffusers import SchedulerMixin, StableDiffusionInstructPix2PixPipeline

    folder = Path(folder)
    scheduler_class = getattr(diffusers, model.scheduler_config.get("_class_name", ""), None)
    if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, SchedulerMixin)):
        scheduler_class = diffusers.EulerAncestralDiscreteScheduler
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
        scheduler=scheduler_class.from_config(model.scheduler_config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp)
    for name, unet in (extra_unets or {}).items():
        unet.save_pretrained(tmp / name)
    if model.about:
        (tmp / "about.json").write_text(json.dumps(model.about, indent=2) + "\n")
    if folder.exists():  # replace an older export: move it aside first so no moment lacks a model
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old)
    else:
        os.replace(tmp, folder)
