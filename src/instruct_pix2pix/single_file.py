"""Single-file checkpoints in the layout of the original CompVis / InstructPix2Pix code.

That layout is what AUTOMATIC1111 and ComfyUI read: one state dict whose keys start with
``model.diffusion_model.`` (the UNet), ``first_stage_model.`` (the VAE) and
``cond_stage_model.transformer.`` (the CLIP text encoder, as a Hugging Face ``CLIPTextModel``).

Reading goes through diffusers' own single-file converters, fed with a state dict that this module
reads itself (safetensors, or a pickled ``.ckpt`` only ever opened with ``torch.load(weights_only=True)``)
and with the component configs of a local diffusers-format folder, so nothing is fetched from the hub.
Writing maps diffusers names to CompVis names with tables built from the models' own structure, as
diffusers' ``scripts/convert_diffusers_to_original_stable_diffusion.py`` does for Stable Diffusion 1.x.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
from pathlib import Path

import torch

from instruct_pix2pix.errors import UserError

SD15_CONFIG_DIR: Path = Path(__file__).resolve().parent / "configs" / "sd15-instruct-pix2pix"

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_ENCODER_PREFIX = "cond_stage_model.transformer."
_PREFIXES = {"unet": UNET_PREFIX, "vae": VAE_PREFIX, "text_encoder": TEXT_ENCODER_PREFIX}

# The UNet's first convolution; its weight is [out, in, 3, 3] and `in` tells editing models (8) from others.
_UNET_CONV_IN = UNET_PREFIX + "input_blocks.0.0.weight"
_EDITING_IN_CHANNELS = 8
_PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin"}


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def load_single_file(path, config_dir=SD15_CONFIG_DIR, *, dtype: torch.dtype = torch.float32, in_channels: int | None = None) -> dict:
    """Build {"unet", "vae", "text_encoder", "tokenizer", "scheduler"} from a CompVis-layout checkpoint.

    ``config_dir`` is a diffusers-format folder without weights (unet/, vae/, text_encoder/ configs,
    tokenizer/ files and scheduler/ config); the default describes ``timbrooks/instruct-pix2pix``.
    ``in_channels`` replaces the UNet config's input channels: 4 reads a text-to-image checkpoint
    (to train an editing model from) with the editing model's configs.
    Keys outside the three model prefixes (``model_ema.*``, optimizer leftovers, ...) are ignored.
    """
    path = Path(path)
    config_dir = Path(config_dir)
    unet_config = _read_config_dir(config_dir)
    if in_channels is not None:
        unet_config["in_channels"] = in_channels
    state = _read_state_dict(path)
    _check_layout(state, path)
    _check_in_channels(state, path, unet_config.get("in_channels", _EDITING_IN_CHANNELS))
    _check_against_config(state, path, config_dir, unet_config)

    # Imported here so that importing this module stays cheap.
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import SingleFileComponentError, create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel

    # No dtype here: diffusers builds each model on the meta device and fills it from the converted state
    # dict, and a weight the checkpoint lacks stays on meta; asked for a dtype it would then fail to cast
    # without saying which weight. So: load, check that every weight arrived, then cast.
    common = {"config": str(config_dir), "local_files_only": True}
    try:
        with _quiet_diffusers():
            # A state dict (not a path) goes in: diffusers neither reads the file nor looks anything up
            # online, and `config` is a local folder, read with local_files_only.
            overrides = {} if in_channels is None else {"in_channels": in_channels}
            unet = UNet2DConditionModel.from_single_file(state, subfolder="unet", **overrides, **common)
            vae = AutoencoderKL.from_single_file(state, subfolder="vae", **common)
            # The converter `StableDiffusionPipeline.from_single_file` uses for a CLIP text encoder; it
            # handles both the `text_model.`-wrapped (transformers < 5.6) and the flat CLIPTextModel.
            text_encoder = create_diffusers_clip_model_from_ldm(
                CLIPTextModel, state, subfolder="text_encoder", **common
            )
    except (SingleFileComponentError, ValueError, KeyError, RuntimeError, IndexError) as exc:
        raise UserError(f"{path} does not match the model configuration in {config_dir}: {_first_line(exc)}") from None
    del state
    models = {"unet": unet, "vae": vae, "text_encoder": text_encoder}
    for name, model in models.items():
        _check_fully_loaded(model, name, path)
        with _quiet_diffusers():
            model.to(dtype=dtype)

    return {
        **models,
        "tokenizer": _load_tokenizer(config_dir),
        "scheduler": _load_scheduler(config_dir),
    }


def _read_config_dir(config_dir: Path) -> dict:
    """Check the config folder has what loading needs; return the UNet config."""
    needed = ["unet/config.json", "vae/config.json", "text_encoder/config.json",
              "scheduler/scheduler_config.json"]
    missing = [name for name in needed if not (config_dir / name).is_file()]
    if not (config_dir / "tokenizer").is_dir() or not any((config_dir / "tokenizer").iterdir()):
        missing.append("tokenizer/")
    if missing:
        raise UserError(f"{config_dir} is not a diffusers model configuration folder (missing {', '.join(missing)})")
    try:
        return json.loads((config_dir / "unet" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {config_dir / 'unet' / 'config.json'}: {_first_line(exc)}") from None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under the three model prefixes, read without running pickled code."""
    if not path.exists():
        raise UserError(f"checkpoint {path} not found")
    if not path.is_file():
        raise UserError(f"{path} is not a file; give a .safetensors or .ckpt checkpoint")
    if path.stat().st_size == 0:
        raise UserError(f"cannot read {path} as a checkpoint: the file is empty")
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        return _read_pickle(path)
    return _read_safetensors(path)


def _wanted(key) -> bool:
    return isinstance(key, str) and key.startswith(tuple(_PREFIXES.values()))


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            keys = list(handle.keys())
            # Reading only the model tensors leaves EMA copies and other extras on disk.
            return {key: handle.get_tensor(key) for key in keys if _wanted(key)}
    except Exception as exc:  # safetensors raises its own SafetensorError, OSError, ...
        raise UserError(f"cannot read {path} as a safetensors checkpoint: {_first_line(exc)}") from None


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    kwargs = {"map_location": "cpu", "weights_only": True}
    try:
        import zipfile

        if zipfile.is_zipfile(path):
            kwargs["mmap"] = True  # a multi-GB .ckpt is mapped, not copied into memory
        checkpoint = torch.load(path, **kwargs)
    except pickle.UnpicklingError as exc:
        # torch.load(weights_only=True) names the first thing it would not unpickle; garbage fails likewise.
        text = str(exc)
        refused = text[text.find("Unsupported global"):].splitlines()[0] if "Unsupported global" in text else ""
        if not refused:
            raise UserError(f"cannot read {path} as a checkpoint: it is damaged or not a PyTorch checkpoint") from None
        raise UserError(
            f"{path} holds pickled objects other than tensors ({refused.split(' was not ')[0]}), so it is not "
            "loaded: .ckpt files are only read with torch.load(weights_only=True); convert it to .safetensors "
            "with a tool you trust"
        ) from None
    except Exception as exc:
        raise UserError(f"cannot read {path} as a checkpoint: {_first_line(exc)}") from None
    # Lightning checkpoints nest the weights under "state_dict".
    while isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict):
        raise UserError(f"{path} holds a {type(checkpoint).__name__}, not a state dict of tensors")
    return {key: value for key, value in checkpoint.items() if _wanted(key) and isinstance(value, torch.Tensor)}


def _check_layout(state: dict, path: Path) -> None:
    found = {name for name, prefix in _PREFIXES.items() if any(key.startswith(prefix) for key in state)}
    if "unet" not in found:
        raise UserError(
            f"{path} does not look like a Stable Diffusion checkpoint (no '{UNET_PREFIX}*' keys; "
            "the CompVis layout of AUTOMATIC1111 / ComfyUI is expected)"
        )
    missing = [f"{name} ('{_PREFIXES[name]}*')" for name in _PREFIXES if name not in found]
    if missing:
        raise UserError(f"{path} is an incomplete Stable Diffusion checkpoint: it has no {' and no '.join(missing)}")
    if _UNET_CONV_IN not in state or state[_UNET_CONV_IN].ndim != 4:
        raise UserError(f"{path} does not look like a Stable Diffusion checkpoint (no UNet input convolution)")


def _check_in_channels(state: dict, path: Path, expected: int) -> None:
    in_channels = int(state[_UNET_CONV_IN].shape[1])
    if in_channels == 4 and expected == _EDITING_IN_CHANNELS:
        raise UserError(
            f"{path} is a text-to-image model, not an editing model "
            "(its UNet takes 4 input channels, an editing model takes 8)"
        )
    if in_channels != expected:
        raise UserError(
            f"{path} is not an InstructPix2Pix editing model "
            f"(its UNet takes {in_channels} input channels, this configuration expects {expected})"
        )


def _check_against_config(state: dict, path: Path, config_dir: Path, unet_config: dict) -> None:
    """Every weight the configured models need is in the checkpoint, with a fitting shape.

    The expected names come from this module's writer, applied to the models built (without memory)
    from the configs. diffusers would otherwise leave a missing weight on the meta device and fail later
    with a message that names nothing.
    """
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    try:
        with init_empty_weights(), _quiet_diffusers():
            unet = UNet2DConditionModel.from_config(unet_config)
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(config_dir / "vae")))
            text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(str(config_dir / "text_encoder")))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise UserError(f"cannot build the models described in {config_dir}: {_first_line(exc)}") from None
    expected = to_compvis_state_dict(unet, vae, text_encoder)
    missing = [key for key in expected if key not in state]
    if missing:
        raise UserError(
            f"{path} does not match the model configuration in {config_dir}: it lacks {len(missing)} of the "
            f"{len(expected)} weights needed (for example {missing[0]}); it is damaged or made for another architecture"
        )
    for key, tensor in expected.items():
        if not _same_shape(state[key].shape, tensor.shape):
            raise UserError(
                f"{path} does not match the model configuration in {config_dir}: {key} has shape "
                f"{list(state[key].shape)}, the configuration needs {list(tensor.shape)}"
            )


def _same_shape(a, b) -> bool:
    # Linear weights stored as 1x1 convolutions (the VAE attention) count as the same shape.
    def strip(shape):
        shape = list(shape)
        while len(shape) > 2 and shape[-1] == 1:
            shape.pop()
        return shape

    return strip(a) == strip(b)


def _check_fully_loaded(model: torch.nn.Module, name: str, path: Path) -> None:
    # diffusers builds models on the meta device and fills them from the state dict: a weight the
    # checkpoint lacks would stay on meta instead of failing, so look for one.
    empty = [param_name for param_name, param in model.named_parameters() if param.is_meta]
    if empty:
        raise UserError(
            f"{path} is missing {len(empty)} {name} weight(s) (for example {empty[0]}); "
            "it is damaged or made for another architecture"
        )


def _load_tokenizer(config_dir: Path):
    from instruct_pix2pix.models import transformers_class

    tokenizer_class = transformers_class(config_dir, "tokenizer", "CLIPTokenizer")
    return tokenizer_class.from_pretrained(str(config_dir / "tokenizer"), local_files_only=True)


def _load_scheduler(config_dir: Path):
    import diffusers

    config_path = config_dir / "scheduler" / "scheduler_config.json"
    try:
        class_name = json.loads(config_path.read_text(encoding="utf-8"))["_class_name"]
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"cannot read the scheduler class from {config_path}: {_first_line(exc)}") from None
    scheduler_class = getattr(diffusers, str(class_name), None)
    if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, diffusers.SchedulerMixin)):
        raise UserError(f"{config_path} names {class_name!r}, which is not a diffusers scheduler")
    return scheduler_class.from_pretrained(str(config_dir), subfolder="scheduler", local_files_only=True)


@contextlib.contextmanager
def _quiet_diffusers():
    """Hide diffusers' loading chatter (ignored extra keys, dtype casts); errors still raise."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------

# Inside a UNet resnet (ResBlock in CompVis): diffusers name -> CompVis name.
_UNET_RESNET_RENAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
# Inside a VAE resnet only the shortcut is named differently.
_VAE_RESNET_RENAMES = {"conv_shortcut": "nin_shortcut"}
# Inside the VAE mid-block attention; the CompVis q/k/v/proj_out are 1x1 convolutions, not linears.
_VAE_ATTENTION_RENAMES = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
    # names used by diffusers before 0.14
    "query": "q",
    "key": "k",
    "value": "v",
    "proj_attn": "proj_out",
}
_VAE_ATTENTION_LINEARS = frozenset({"q", "k", "v", "proj_out"})
# Whole-model layers outside the blocks.
_UNET_TOP_LEVEL = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_VAE_TOP_LEVEL = {"conv_norm_out": "norm_out"}


class _PrefixRule:
    """Rename keys under one diffusers module prefix to a CompVis prefix, with optional inner renames.

    ``as_conv`` lists inner (CompVis) names whose linear weights CompVis stores as 1x1 convolutions.
    """

    def __init__(self, diffusers_prefix: str, compvis_prefix: str, renames: dict[str, str] | None = None,
                 as_conv: frozenset[str] = frozenset()):
        self.diffusers_prefix = diffusers_prefix
        self.compvis_prefix = compvis_prefix
        self.renames = renames or {}
        self.as_conv = as_conv

    def apply(self, key: str, tensor: torch.Tensor) -> tuple[str, torch.Tensor] | None:
        if not key.startswith(self.diffusers_prefix):
            return None
        rest = key[len(self.diffusers_prefix):]
        # Longest inner name first, so "to_out.0" wins over a shorter one that also matches.
        for old in sorted(self.renames, key=len, reverse=True):
            if rest == old or rest.startswith(old + "."):
                rest = self.renames[old] + rest[len(old):]
                break
        module, _, leaf = rest.rpartition(".")
        if module in self.as_conv and leaf == "weight" and tensor.ndim == 2:
            tensor = tensor.reshape(*tensor.shape, 1, 1)
        return self.compvis_prefix + rest, tensor


def _unet_rules(unet) -> list[_PrefixRule]:
    rules = [_PrefixRule(f"{old}.", f"{new}.") for old, new in _UNET_TOP_LEVEL.items()]

    # input_blocks: 0 is conv_in; then, per down block, one entry per layer (resnet [+ attention])
    # and one for the downsampler.
    index = 1
    for i, block in enumerate(unet.down_blocks):
        attentions = getattr(block, "attentions", None) or []
        for j, _ in enumerate(block.resnets):
            rules.append(_PrefixRule(f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{index}.0.", _UNET_RESNET_RENAMES))
            if j < len(attentions):
                rules.append(_PrefixRule(f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{index}.1."))
            index += 1
        if getattr(block, "downsamplers", None):
            rules.append(_PrefixRule(f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{index}.0.op."))
            index += 1

    # middle_block: resnet, attention, resnet, ...
    mid = unet.mid_block
    position = 0
    for j, _ in enumerate(mid.resnets):
        rules.append(_PrefixRule(f"mid_block.resnets.{j}.", f"middle_block.{position}.", _UNET_RESNET_RENAMES))
        position += 1
        if j < len(getattr(mid, "attentions", None) or []):
            rules.append(_PrefixRule(f"mid_block.attentions.{j}.", f"middle_block.{position}."))
            position += 1

    # output_blocks: one entry per up-block layer; the upsampler sits in the block's last entry,
    # after the resnet (and the attention, where there is one).
    index = 0
    for i, block in enumerate(unet.up_blocks):
        attentions = getattr(block, "attentions", None) or []
        for j, _ in enumerate(block.resnets):
            rules.append(_PrefixRule(f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{index}.0.", _UNET_RESNET_RENAMES))
            if j < len(attentions):
                rules.append(_PrefixRule(f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{index}.1."))
            index += 1
        if getattr(block, "upsamplers", None):
            slot = 2 if attentions else 1
            rules.append(_PrefixRule(f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{index - 1}.{slot}."))
    return rules


def _vae_rules(vae) -> list[_PrefixRule]:
    rules = [_PrefixRule("quant_conv.", "quant_conv."), _PrefixRule("post_quant_conv.", "post_quant_conv.")]
    for part in ("encoder", "decoder"):
        coder = getattr(vae, part)
        rules += [_PrefixRule(f"{part}.{old}.", f"{part}.{new}.") for old, new in _VAE_TOP_LEVEL.items()]
        rules += [_PrefixRule(f"{part}.{name}.", f"{part}.{name}.") for name in ("conv_in", "conv_out")]
        mid = coder.mid_block
        for j, _ in enumerate(mid.resnets):
            rules.append(_PrefixRule(f"{part}.mid_block.resnets.{j}.", f"{part}.mid.block_{j + 1}.", _VAE_RESNET_RENAMES))
        for j, _ in enumerate(getattr(mid, "attentions", None) or []):
            rules.append(_PrefixRule(f"{part}.mid_block.attentions.{j}.", f"{part}.mid.attn_{j + 1}.",
                                     _VAE_ATTENTION_RENAMES, as_conv=_VAE_ATTENTION_LINEARS))

    # Encoder: down.{i}.block.{j}, down.{i}.downsample.
    for i, block in enumerate(vae.encoder.down_blocks):
        for j, _ in enumerate(block.resnets):
            rules.append(_PrefixRule(f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.", _VAE_RESNET_RENAMES))
        if getattr(block, "downsamplers", None):
            rules.append(_PrefixRule(f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))

    # Decoder: CompVis numbers the up blocks from the lowest resolution, diffusers from the highest.
    count = len(vae.decoder.up_blocks)
    for i, block in enumerate(vae.decoder.up_blocks):
        level = count - 1 - i
        for j, _ in enumerate(block.resnets):
            rules.append(_PrefixRule(f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{level}.block.{j}.", _VAE_RESNET_RENAMES))
        if getattr(block, "upsamplers", None):
            rules.append(_PrefixRule(f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{level}.upsample."))
    return rules


def _rename(state: dict[str, torch.Tensor], rules: list[_PrefixRule], what: str) -> dict[str, torch.Tensor]:
    # Longest diffusers prefix first, so "mid_block.resnets.1." is not taken by a shorter rule.
    rules = sorted(rules, key=lambda rule: len(rule.diffusers_prefix), reverse=True)
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        result = next((out for rule in rules if (out := rule.apply(key, tensor)) is not None), None)
        if result is None:
            raise UserError(f"the Stable Diffusion 1.x single-file layout has no place for the {what} weight {key!r}")
        new_key, new_tensor = result
        if new_key in renamed:
            raise UserError(f"two {what} weights map to the same single-file key {new_key!r}")
        renamed[new_key] = new_tensor
    return renamed


def unet_to_compvis(unet) -> dict[str, torch.Tensor]:
    """The UNet's weights under their CompVis names (without the ``model.diffusion_model.`` prefix)."""
    return _rename(unet.state_dict(), _unet_rules(unet), "UNet")


def vae_to_compvis(vae) -> dict[str, torch.Tensor]:
    """The VAE's weights under their CompVis names (without the ``first_stage_model.`` prefix).

    The mid-block attention projections, linears in diffusers, become 1x1 convolution weights.
    """
    return _rename(vae.state_dict(), _vae_rules(vae), "VAE")


def text_encoder_to_compvis(text_encoder) -> dict[str, torch.Tensor]:
    """The CLIP text encoder's weights as ``text_model.*`` keys (without ``cond_stage_model.transformer.``).

    transformers >= 5.6 dropped the ``text_model`` wrapper of ``CLIPTextModel``; the single-file
    layout keeps it, as the model was saved by the transformers of 2022.
    """
    return {
        (key if key.startswith("text_model.") else "text_model." + key): tensor
        for key, tensor in text_encoder.state_dict().items()
    }


def to_compvis_state_dict(unet, vae, text_encoder) -> dict[str, torch.Tensor]:
    """The full single-file state dict: ``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.transformer.*``."""
    state: dict[str, torch.Tensor] = {}
    for prefix, part in (
        (UNET_PREFIX, unet_to_compvis(unet)),
        (VAE_PREFIX, vae_to_compvis(vae)),
        (TEXT_ENCODER_PREFIX, text_encoder_to_compvis(text_encoder)),
    ):
        state.update({prefix + key: tensor for key, tensor in part.items()})
    return state


def save_single_file(unet, vae, text_encoder, path) -> None:
    """Write UNet, VAE and text encoder as one CompVis-layout safetensors file, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise UserError(f"{path}: single-file checkpoints are written as safetensors; use a name ending in .safetensors")
    state = {key: tensor.detach().to("cpu").contiguous() for key, tensor in to_compvis_state_dict(unet, vae, text_encoder).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(state, str(temporary), metadata={"format": "pt"})
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
