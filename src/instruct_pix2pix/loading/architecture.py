"""A single file's architecture, read from its tensors' shapes.

A CompVis-layout checkpoint holds weights and no configs. Most of the architecture is in the
shapes: block widths and depths, input and latent channels, which blocks attend, the
cross-attention width, the text encoder's width, depth and vocabulary. What is not (attention
heads, group-norm groups, the VAE's scaling factor, the sample size, the scheduler and tokenizer)
comes from a base config folder, SD 1.5 InstructPix2Pix's by default; `--config` overrides all of it.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from instruct_pix2pix.errors import UserError
from instruct_pix2pix.loading.compvis import TEXT_ENCODER_PREFIX, UNET_PREFIX, VAE_PREFIX
from instruct_pix2pix.loading.folder import read_json, temporary_config_dir

Shapes = Mapping[str, tuple[int, ...]]
HEAD_WIDTH = 64  # SD 2.x and CLIP text encoders: heads of 64 channels


def _groups(channels: list[int], wanted: int) -> int:
    """Group-norm groups: the base's when they divide every width, else the largest that does."""
    return next(g for g in (wanted, 32, 16, 8, 4, 2, 1) if all(c % g == 0 for c in channels))


def _count(shapes: Shapes, pattern: str) -> int:
    found = {int(m[1]) for key in shapes if (m := re.match(pattern, key))}
    return max(found) + 1 if found else 0


def unet_config(shapes: Shapes, base: dict) -> dict:
    p = UNET_PREFIX
    widths, attends, depth = [], [], 0
    level_widths, level_attends, layers = [], [], []
    index = 1
    while f"{p}input_blocks.{index}.0.op.weight" in shapes or f"{p}input_blocks.{index}.0.in_layers.2.weight" in shapes:
        if f"{p}input_blocks.{index}.0.op.weight" in shapes:  # a downsampler ends the level
            widths.append(level_widths[-1])
            attends.append(any(level_attends))
            layers.append(depth)
            level_widths, level_attends, depth = [], [], 0
        else:
            level_widths.append(shapes[f"{p}input_blocks.{index}.0.in_layers.2.weight"][0])
            level_attends.append(f"{p}input_blocks.{index}.1.proj_in.weight" in shapes)
            depth += 1
        index += 1
    widths.append(level_widths[-1])
    attends.append(any(level_attends))
    layers.append(depth)
    if len(set(layers)) != 1:
        raise UserError(f"the UNet has {layers} layers per block; give its diffusers config folder with --config")
    per_level = layers[0] + 1
    up_attends = [f"{p}output_blocks.{level * per_level}.1.proj_in.weight" in shapes for level in range(len(widths))]
    key = next((k for k in shapes if k.startswith(p) and k.endswith("attn2.to_k.weight")), None)
    proj_in = next((shapes[k] for k in shapes if k.startswith(p) and k.endswith(".proj_in.weight")), (0, 0, 1, 1))
    linear = len(proj_in) == 2  # SD 2.x projects with linears, SD 1.x with 1x1 convolutions
    transformer_layers = _count(shapes, re.escape(f"{p}input_blocks.1.1.transformer_blocks.") + r"(\d+)\.") or 1
    config = {
        **base,
        "in_channels": shapes[f"{p}input_blocks.0.0.weight"][1],
        "out_channels": shapes[f"{p}out.2.weight"][0],
        "block_out_channels": widths,
        "layers_per_block": layers[0],
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attends],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in up_attends],
        "cross_attention_dim": shapes[key][1] if key else base.get("cross_attention_dim", 768),
        "use_linear_projection": linear,
        "transformer_layers_per_block": transformer_layers,
        "norm_num_groups": _groups(widths, base.get("norm_num_groups", 32)),
    }
    if linear:  # SD 2.x names heads by their count per block, each of 64 channels
        config["attention_head_dim"] = [max(1, w // HEAD_WIDTH) for w in widths]
    else:
        heads = base.get("attention_head_dim", 8)
        heads = heads if isinstance(heads, int) else heads[0]
        config["attention_head_dim"] = heads if all(w % heads == 0 for w in widths) else 1
    if f"{p}middle_block.1.proj_in.weight" not in shapes:
        config["mid_block_type"] = "UNetMidBlock2D"
    return config


def vae_config(shapes: Shapes, base: dict) -> dict:
    p = VAE_PREFIX
    levels = _count(shapes, re.escape(f"{p}encoder.down.") + r"(\d+)\.")
    widths = [shapes[f"{p}encoder.down.{i}.block.0.conv2.weight"][0] for i in range(levels)]
    return {
        **base,
        "in_channels": shapes[f"{p}encoder.conv_in.weight"][1],
        "out_channels": shapes[f"{p}decoder.conv_out.weight"][0],
        "latent_channels": shapes[f"{p}quant_conv.weight"][0] // 2,
        "block_out_channels": widths,
        "layers_per_block": _count(shapes, re.escape(f"{p}encoder.down.0.block.") + r"(\d+)\."),
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "norm_num_groups": _groups(widths, base.get("norm_num_groups", 32)),
    }


def text_encoder_config(shapes: Shapes, base: dict) -> dict:
    p = TEXT_ENCODER_PREFIX + "text_model."
    vocab, hidden = shapes[f"{p}embeddings.token_embedding.weight"]
    return {
        **base,
        "vocab_size": vocab,
        "hidden_size": hidden,
        "max_position_embeddings": shapes[f"{p}embeddings.position_embedding.weight"][0],
        "num_hidden_layers": _count(shapes, re.escape(f"{p}encoder.layers.") + r"(\d+)\."),
        "intermediate_size": shapes[f"{p}encoder.layers.0.mlp.fc1.weight"][0],
        "num_attention_heads": max(1, hidden // HEAD_WIDTH) if hidden % HEAD_WIDTH == 0 else math.gcd(hidden, 8),
    }


def base_vocabulary(base_dir: Path) -> int | None:
    """The size of the base config's (CLIP BPE) tokenizer vocabulary, None when it cannot tell."""
    vocab = base_dir / "tokenizer" / "vocab.json"
    return len(read_json(vocab)) if vocab.is_file() else None


@contextlib.contextmanager
def inferred_config_dir(shapes: Shapes, base_dir: Path, source: str) -> Iterator[Path]:
    """A temporary config folder for a single file: its shapes' architecture over `base_dir`."""
    try:
        configs = {
            "unet": unet_config(shapes, read_json(base_dir / "unet" / "config.json")),
            "vae": vae_config(shapes, read_json(base_dir / "vae" / "config.json")),
            "text_encoder": text_encoder_config(shapes, read_json(base_dir / "text_encoder" / "config.json")),
        }
    except (KeyError, IndexError, ValueError) as error:
        raise UserError(
            f"cannot tell the architecture of {source} from its weights (no {error}); "
            "give its diffusers config folder with --config"
        ) from None
    vocabulary = base_vocabulary(base_dir)
    if vocabulary and configs["text_encoder"]["vocab_size"] != vocabulary:
        raise UserError(
            f"{source} has a text encoder of {configs['text_encoder']['vocab_size']} tokens and no tokenizer, and the "
            f"default tokenizer has {vocabulary}; give its diffusers config folder (with its tokenizer) with --config"
        )
    with temporary_config_dir({f"{part}/config.json": config for part, config in configs.items()}, base_dir) as folder:
        yield folder
