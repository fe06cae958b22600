"""`ip2p info`: what a model is, from its configuration files alone (no weights are loaded)."""

from __future__ import annotations

from pathlib import Path

from instruct_pix2pix.loading.folder import check_folder, check_weight_files, read_json, transformers_class
from instruct_pix2pix.loading.hub import download
from instruct_pix2pix.loading.single_file import config_folder, conv_in_channels, read_shapes
from instruct_pix2pix.loading.sources import default_source, resolve_source

SOURCE_NAMES = {"folder": "diffusers folder", "hub": "hub id", "file": "single-file checkpoint"}


def describe(source: str | Path | None, *, config: str | Path | None = None) -> dict[str, str]:
    """A few lines about each part of a model, for people to read."""
    source = default_source(source)
    where, path = resolve_source(source)
    in_channels = None
    if where == "hub":
        import huggingface_hub

        try:
            patterns = ["model_index.json", "*/*.json", "tokenizer/*"]
            path = Path(huggingface_hub.snapshot_download(str(path), allow_patterns=patterns))
        except Exception:
            path = download(str(path))  # the same one-line error, or the cache
    elif where == "folder":
        check_weight_files(path)
    elif where == "file":
        shapes = read_shapes(path)  # the header only, for safetensors
        in_channels = conv_in_channels(shapes, path)
        with config_folder(path, config, shapes) as folder:
            return {"source": f"{source} ({SOURCE_NAMES[where]})", **describe_folder(folder, in_channels)}
    return {"source": f"{source} ({SOURCE_NAMES[where]})", **describe_folder(path, in_channels)}


def describe_folder(path: Path, in_channels: int | None = None) -> dict[str, str]:
    """`describe` for a folder of configs; `in_channels` overrides the UNet config's (a single file's own)."""
    check_folder(path, weights=False, expected="a diffusers-format model")
    unet = read_json(path / "unet" / "config.json")
    vae = read_json(path / "vae" / "config.json")
    text = read_json(path / "text_encoder" / "config.json")
    scheduler = read_json(path / "scheduler" / "scheduler_config.json")
    in_channels = in_channels or unet.get("in_channels", 4)
    latent_channels = vae.get("latent_channels", 4)
    scale = 2 ** (len(vae.get("block_out_channels", [0])) - 1)
    text_class = transformers_class(path, "text_encoder", "CLIPTextModel").__name__
    has_tokenizer = (path / "tokenizer").is_dir()
    tokenizer_class = transformers_class(path, "tokenizer", "CLIPTokenizer").__name__ if has_tokenizer else "(none)"
    editing = in_channels == 2 * latent_channels
    image_channels = in_channels - latent_channels
    return {
        "kind": "editing model (InstructPix2Pix)"
        if editing
        else f"not an editing model: its UNet takes {in_channels} channels",
        "unet": (
            f"{in_channels} input channels ({latent_channels} noisy latent + {image_channels} image latent), "
            f"blocks {'/'.join(map(str, unet.get('block_out_channels', [])))}, "
            f"cross-attention {unet.get('cross_attention_dim')}, predicts {scheduler.get('prediction_type', 'epsilon')}"
        ),
        "vae": (
            f"{latent_channels} latent channels, {scale}x downsampling, "
            f"scaling factor {vae.get('scaling_factor', 0.18215)}"
        ),
        "text encoder": (
            f"{text_class}, width {text.get('hidden_size', text.get('d_model'))}, "
            f"{text.get('num_hidden_layers', text.get('num_layers'))} layers, tokenizer {tokenizer_class}"
        ),
        "scheduler": scheduler.get("_class_name", "?"),
        "default resolution": str(unet.get("sample_size", 64) * scale),
    }
