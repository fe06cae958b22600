"""The single-file layout's names: diffusers weights under their CompVis (original Stable Diffusion) names.

That layout is what the original code, AUTOMATIC1111 and ComfyUI read: one state dict whose keys
start with ``model.diffusion_model.`` (the UNet), ``first_stage_model.`` (the VAE) and
``cond_stage_model.transformer.`` (the CLIP text encoder, as a Hugging Face ``CLIPTextModel``).
The tables are built from the models' own structure, as diffusers'
``scripts/convert_diffusers_to_original_stable_diffusion.py`` does for Stable Diffusion 1.x, so
they fit a model of any width and depth. Reading (single_file.py) uses them to know which
weights a configuration needs; writing (`save_single_file`) uses them to name the weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

from instruct_pix2pix.atomic import atomic_path
from instruct_pix2pix.errors import UserError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_ENCODER_PREFIX = "cond_stage_model.transformer."
PREFIXES = {"unet": UNET_PREFIX, "vae": VAE_PREFIX, "text_encoder": TEXT_ENCODER_PREFIX}
UNET_CONV_IN = UNET_PREFIX + "input_blocks.0.0.weight"  # [out, in, 3, 3]: `in` tells editing models from others

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

    def __init__(
        self,
        diffusers_prefix: str,
        compvis_prefix: str,
        renames: dict[str, str] | None = None,
        as_conv: frozenset[str] = frozenset(),
    ):
        self.diffusers_prefix = diffusers_prefix
        self.compvis_prefix = compvis_prefix
        self.renames = renames or {}
        self.as_conv = as_conv

    def apply(self, key: str, tensor: torch.Tensor) -> tuple[str, torch.Tensor] | None:
        if not key.startswith(self.diffusers_prefix):
            return None
        rest = key[len(self.diffusers_prefix) :]
        # Longest inner name first, so "to_out.0" wins over a shorter one that also matches.
        for old in sorted(self.renames, key=len, reverse=True):
            if rest == old or rest.startswith(old + "."):
                rest = self.renames[old] + rest[len(old) :]
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
            rules.append(
                _PrefixRule(f"{part}.mid_block.resnets.{j}.", f"{part}.mid.block_{j + 1}.", _VAE_RESNET_RENAMES)
            )
        for j, _ in enumerate(getattr(mid, "attentions", None) or []):
            rules.append(
                _PrefixRule(
                    f"{part}.mid_block.attentions.{j}.",
                    f"{part}.mid.attn_{j + 1}.",
                    _VAE_ATTENTION_RENAMES,
                    as_conv=_VAE_ATTENTION_LINEARS,
                )
            )

    # Encoder: down.{i}.block.{j}, down.{i}.downsample.
    for i, block in enumerate(vae.encoder.down_blocks):
        for j, _ in enumerate(block.resnets):
            rules.append(
                _PrefixRule(
                    f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.", _VAE_RESNET_RENAMES
                )
            )
        if getattr(block, "downsamplers", None):
            rules.append(_PrefixRule(f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))

    # Decoder: CompVis numbers the up blocks from the lowest resolution, diffusers from the highest.
    count = len(vae.decoder.up_blocks)
    for i, block in enumerate(vae.decoder.up_blocks):
        level = count - 1 - i
        for j, _ in enumerate(block.resnets):
            rules.append(
                _PrefixRule(
                    f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{level}.block.{j}.", _VAE_RESNET_RENAMES
                )
            )
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
    """The full single-file state dict: ``model.diffusion_model.*``, ``first_stage_model.*`` and
    ``cond_stage_model.transformer.*``."""
    state: dict[str, torch.Tensor] = {}
    for prefix, part in (
        (UNET_PREFIX, unet_to_compvis(unet)),
        (VAE_PREFIX, vae_to_compvis(vae)),
        (TEXT_ENCODER_PREFIX, text_encoder_to_compvis(text_encoder)),
    ):
        state.update({prefix + key: tensor for key, tensor in part.items()})
    return state


CONFIGS_KEY = "instruct_pix2pix.configs"  # the safetensors metadata key of the configs a file carries


def describing_configs(unet, vae, text_encoder, tokenizer=None, scheduler_config: dict | None = None) -> dict:
    """The configs (and tokenizer files) that make a single file describe itself: what a diffusers
    folder would hold besides the weights. The layout itself cannot carry them."""
    import tempfile

    configs = {
        "unet/config.json": dict(unet.config),
        "vae/config.json": dict(vae.config),
        "text_encoder/config.json": text_encoder.config.to_dict(),
    }
    if scheduler_config:
        configs["scheduler/scheduler_config.json"] = dict(scheduler_config)
    if tokenizer is not None:
        with tempfile.TemporaryDirectory() as folder:
            tokenizer.save_pretrained(folder)
            for file in sorted(Path(folder).iterdir()):
                configs[f"tokenizer/{file.name}"] = file.read_text(encoding="utf-8")
    return configs


def save_single_file(unet, vae, text_encoder, path, *, tokenizer=None, scheduler_config: dict | None = None) -> None:
    """Write UNet, VAE and text encoder as one CompVis-layout safetensors file, atomically. With the
    tokenizer and scheduler config, the file also carries every config it needs, so it loads (and
    `ip2p info` describes it) without a config folder; other programs ignore that metadata."""
    import json

    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise UserError(
            f"{path}: single-file checkpoints are written as safetensors; use a name ending in .safetensors"
        )
    state = {
        key: tensor.detach().to("cpu").contiguous()
        for key, tensor in to_compvis_state_dict(unet, vae, text_encoder).items()
    }
    metadata = {"format": "pt"}
    if tokenizer is not None and scheduler_config:
        configs = describing_configs(unet, vae, text_encoder, tokenizer, scheduler_config)
        metadata[CONFIGS_KEY] = json.dumps(configs, default=str)  # paths (_name_or_path) as text
    with atomic_path(path) as temporary:
        save_file(state, str(temporary), metadata=metadata)
