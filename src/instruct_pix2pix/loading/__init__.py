"""The one way to load a model: a diffusers folder, a hub id or a single-file checkpoint.

    model = load_model("timbrooks/instruct-pix2pix")                   # an editing model
    model = load_model("sd-v1-5.safetensors", kind="text-to-image")    # a Stable Diffusion model
    model = load_model("sd-v1-5.safetensors", kind="any", widen=True)  # either, made an editing model

Modules: sources (what a source is), folder (diffusers folders: check, load, save), hub (fetch
the needed files), single_file (read CompVis-layout checkpoints), compvis (that layout's names,
and writing it), bundle (the parts, their kind, conv_in widening), architecture (a single file's,
from its shapes), info (`ip2p info`).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from instruct_pix2pix.loading.hub import DEFAULT_HUB_ID
from instruct_pix2pix.loading.sources import DEFAULT_MODEL, default_source, resolve_source

if TYPE_CHECKING:
    import torch

    from instruct_pix2pix.loading.bundle import ModelBundle

# The rest is imported when first used (PEP 562), so that the light parts (what a source is, the
# default model) cost nothing: the CLI checks its arguments before torch is imported.
_LAZY = {
    "ANY": "bundle", "EDITING": "bundle", "KINDS": "bundle", "TEXT_TO_IMAGE": "bundle", "ModelBundle": "bundle",
    "widen_conv_in": "bundle", "save_single_file": "compvis", "describe": "info",
    "build_from_configs": "folder", "load_folder": "folder", "no_torchvision_warnings": "folder",
    "save_model": "folder", "transformers_class": "folder", "diffusers_pipeline": "folder", "download": "hub",
    "SD15_CONFIG_DIR": "single_file", "load_single_file": "single_file",
}  # fmt: skip


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_model(
    source: str | Path | None = None,
    *,
    kind: str = "editing",
    widen: bool = False,
    dtype: torch.dtype | None = None,
    config: str | Path | None = None,
) -> ModelBundle:
    """Load a model of `kind` ("editing", "text-to-image" or "any") from a diffusers folder, a hub id
    or a single-file checkpoint; with no source, the small-world model shipped in the package.

    `widen` gives a text-to-image model's UNet the image-latent channels of an editing model
    (zero-initialised, see `widen_conv_in`). `config` is the diffusers folder of configs a single
    file is read with; by default the shipped configuration of timbrooks/instruct-pix2pix.
    """
    import torch

    from instruct_pix2pix.loading.bundle import KINDS, widen_conv_in
    from instruct_pix2pix.loading.folder import load_folder
    from instruct_pix2pix.loading.hub import download
    from instruct_pix2pix.loading.single_file import load_single_file

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    dtype = dtype or torch.float32
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
    "diffusers_pipeline",
    "load_model",
    "load_single_file",
    "no_torchvision_warnings",
    "resolve_source",
    "save_model",
    "save_single_file",
    "transformers_class",
    "widen_conv_in",
]
