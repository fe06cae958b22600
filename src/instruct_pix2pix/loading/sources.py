"""What a model source is: a diffusers folder, a single file, or a hub id; and the default model."""

from __future__ import annotations

from pathlib import Path

from instruct_pix2pix.errors import UserError
from instruct_pix2pix.loading.hub import DEFAULT_HUB_ID

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")
# The shipped small-world models, trained by the project (`ip2p world train-default`).
SMALL_WORLD = Path(__file__).resolve().parents[1] / "small_world"
DEFAULT_MODEL = SMALL_WORLD / "default_model"  # the editing model (diffusers layout)
DEFAULT_TEXT_TO_IMAGE = SMALL_WORLD / "text_to_image"  # its Stable Diffusion (diffusers layout)
DEFAULT_CLIP = SMALL_WORLD / "clip"  # its CLIP (transformers layout), for scores and metrics


def default_source(source: str | Path | None) -> str | Path:
    """No source means the shipped small-world model."""
    if source is not None:
        return source
    if not (DEFAULT_MODEL / "model_index.json").is_file():
        raise UserError(
            f"the default model is missing from {DEFAULT_MODEL}; "
            "reinstall, run `ip2p world train-default`, or pass --model"
        )
    return DEFAULT_MODEL


def resolve_source(source: str | Path) -> tuple[str, Path]:
    """Say what kind of source this is ("folder", "file" or "hub") and where its files are."""
    path = Path(source).expanduser()
    if path.is_dir():
        return "folder", path
    if path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise UserError(
                f"{path} is not a model: expected a diffusers folder or a {'/'.join(SINGLE_FILE_SUFFIXES)} file"
            )
        return "file", path
    text = str(source)
    looks_like_hub_id = text.count("/") == 1 and not text.startswith((".", "/", "~")) and not path.suffix
    if looks_like_hub_id:
        return "hub", Path(text)
    raise UserError(
        f"no such model: {text} (give a diffusers folder, a .safetensors/.ckpt file, "
        f"or a hub id such as {DEFAULT_HUB_ID})"
    )
