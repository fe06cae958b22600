"""The one way to load a model: a diffusers folder, a hub id or a single-file checkpoint.

    model = load_model("timbrooks/instruct-pix2pix")                   # an editing model
    model = load_model("sd-v1-5.safetensors", kind="text-to-image")    # a Stable Diffusion model
    model = load_model("sd-v1-5.safetensors", kind="any", widen=True)  # either, made an editing model

Modules: sources (what a source is), folder (diffusers folders: check, load, save), hub (fetch
the needed files), single_file (read CompVis-layout checkpoints), compvis (that layout's names,
and writing it), bundle (the parts, their kind, conv_in widening), describe (`ip2p info`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from instruct_pix2pix.loading.bundle import ANY, EDITING, KINDS, TEXT_TO_IMAGE, ModelBundle, widen_conv_in
from instruct_pix2pix.loading.compvis import save_single_file
from instruct_pix2pix.loading.describe import describe
from instruct_pix2pix.loading.folder import (
    build_from_configs,
    load_folder,
    no_torchvision_warnings,
    save_model,
    transformers_class,
)
from instruct_pix2pix.loading.hub import DEFAULT_HUB_ID, download
from instruct_pix2pix.loading.single_file import SD15_CONFIG_DIR, load_single_file
from instruct_pix2pix.loading.sources import DEFAULT_MODEL, default_source, resolve_source


def load_model(
    source: str | Path | None = None,
    *,
    kind: str = EDITING,
    widen: bool = False,
    dtype: torch.dtype = torch.float32,
    config: str | Path | None = None,
) -> ModelBundle:
    """Load a model of `kind` ("editing", "text-to-image" or "any") from a diffusers folder, a hub id
    or a single-file checkpoint; with no source, the small-world model shipped in the package.

    `widen` gives a text-to-image model's UNet the image-latent channels of an editing model
    (zero-initialised, see `widen_conv_in`). `config` is the diffusers folder of configs a single
    file is read with; by default the shipped configuration of timbrooks/instruct-pix2pix.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    source = default_source(source)
    where, path = resolve_source(source)
    if where == "file":
        model = load_single_file(path, config, kind=kind, dtype=dtype, source=str(source))
    else:
        folder = download(str(path)) if where == "hub" else path
        model = load_folder(folder, kind=kind, dtype=dtype, source=str(source))
    model.config = None if config is None else str(config)
    if widen:
        widen_conv_in(model.unet, 2 * model.vae.config.latent_channels)
    return model


__all__ = [
    "ANY",
    "DEFAULT_HUB_ID",
    "DEFAULT_MODEL",
    "EDITING",
    "KINDS",
    "SD15_CONFIG_DIR",
    "TEXT_TO_IMAGE",
    "ModelBundle",
    "build_from_configs",
    "default_source",
    "describe",
    "load_model",
    "load_single_file",
    "no_torchvision_warnings",
    "resolve_source",
    "save_model",
    "save_single_file",
    "transformers_class",
    "widen_conv_in",
]
