"""Reading, validating, converting and resizing images for the edit model.

Everything a user hands us goes through `load_image`, which turns every way a file can be wrong
into a one-line `UserError` that names the file, and every odd pixel format into plain 8-bit RGB.
The tensor conversions match diffusers' `VaeImageProcessor` bit for bit, so results do not depend
on whether an image went through this module or through a diffusers pipeline.
"""

from __future__ import annotations

import contextlib
import math
import os
import struct
import threading
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from instruct_pix2pix.errors import EditWarning, UserError

if TYPE_CHECKING:  # torch is heavy; only the tensor helpers need it, so they import it themselves.
    import torch

DEFAULT_MAX_PIXELS = 64_000_000  # about 8000x8000: the largest input read
DEFAULT_MAX_WORK_PIXELS = 2048 * 2048  # the largest size edited (after resizing): 16x SD's 512x512

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"})

# Modes holding more than 8 bits of grey. Pillow's own convert() clips these to 255 instead of
# scaling them, which would turn most of a 16-bit photo white, so we scale them ourselves.
_WIDE_GREY_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})

# Exceptions Pillow's decoders raise for damaged data (truncation, bad CRCs, broken zlib streams).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)

# Image.MAX_IMAGE_PIXELS and ImageFile.LOAD_TRUNCATED_IMAGES are process-wide; the lock keeps two
# loads in different threads from restoring each other's saved values in the wrong order. It also
# makes decodes one at a time, which costs little next to a diffusion step.
_PILLOW_SETTINGS_LOCK = threading.Lock()


@contextlib.contextmanager
def _our_rules_for_pillow() -> Iterator[None]:
    """Within the block, our pixel limit replaces Pillow's, and truncated data is an error."""
    with _PILLOW_SETTINGS_LOCK:
        saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
        # Pillow's DecompressionBombWarning/Error would fire in Image.open, before we can compare the
        # header size with max_pixels, and with a different limit; we check the size ourselves.
        Image.MAX_IMAGE_PIXELS = None
        # Some other library may have switched this on; then a cut-off download decodes "fine" with
        # a grey band at the bottom. We want to tell the user instead.
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _check_pixels(size: tuple[int, int], max_pixels: int | None, name: str) -> None:
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise UserError(
            f"{name} is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}; "
            "shrink it first, or raise the limit with --max-pixels if you trust the file"
        )


def _open_path(path: Path, max_pixels: int | None) -> Image.Image:
    """Open and fully decode the first frame of an image file; the file is closed on return."""
    name = str(path)
    # Check these before Pillow so the user gets a plain answer, not an errno or "cannot identify".
    if not path.exists():
        raise UserError(f"no such file: {name}; check the path")
    if path.is_dir():
        raise UserError(f"{name} is a folder, not an image file; give the path of one image")
    try:
        empty = path.stat().st_size == 0
    except OSError as e:
        raise UserError(f"cannot read {name}: {e.strerror or e}; check the path and its permissions") from e
    if empty:
        raise UserError(f"{name} is empty (0 bytes); re-export or re-download it")
    with _our_rules_for_pillow():
        try:
            opened = Image.open(path)
        except UnidentifiedImageError as e:
            raise UserError(
                f"{name} is not an image Pillow can read; give a PNG, JPEG, WebP, BMP, TIFF or GIF file"
            ) from e
        except OSError as e:
            raise UserError(f"cannot read {name}: {e.strerror or e}; check the path and its permissions") from e
        with opened:
            # The header size is known now and nothing has been decoded yet.
            _check_pixels(opened.size, max_pixels, name)
            frames = getattr(opened, "n_frames", 1)
            if frames > 1:
                warnings.warn(f"{name} has {frames} frames; only the first is edited", EditWarning, stacklevel=4)
            _decode(opened, name)
            return _apply_exif_orientation(opened)


def _decode(image: Image.Image, name: str) -> None:
    try:
        image.load()
    except _DECODE_ERRORS as e:
        raise UserError(f"{name} is damaged or truncated ({e}); re-export or re-download it") from e


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    """A copy of `image` turned upright as its EXIF Orientation says (phones store photos sideways)."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001
        # Broken EXIF is common in the wild and the pixels are fine: show the image as stored,
        # as most viewers do, rather than refuse it.
        return image.copy()


def load_image(
    source: str | os.PathLike[str] | Image.Image, *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Read an image file (or take an open PIL image) and return it upright, fully loaded, 8-bit RGB.

    Animated files give their first frame, with a warning. `max_pixels=None` means no size limit.
    Raises UserError for a missing, empty, non-image, damaged or too-large file.
    """
    if isinstance(source, Image.Image):
        name = getattr(source, "filename", "") or "the given image"
        _check_pixels(source.size, max_pixels, name)
        with _our_rules_for_pillow():
            _decode(source, name)
            upright = _apply_exif_orientation(source)  # a copy: the caller's image is left alone
    else:
        upright = _open_path(Path(source), max_pixels)
    return to_rgb(upright)


def _has_alpha(image: Image.Image) -> bool:
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        return True
    # A palette can carry alpha itself (PNG tRNS for palettes, WebP), with no "transparency" key.
    return image.mode == "P" and image.palette is not None and image.palette.mode.endswith("A")


def _on_white(rgba: Image.Image) -> Image.Image:
    # Dropping alpha would show whatever colour hides under transparent pixels (often black or junk);
    # white is what the user sees in a viewer and what the model was trained on for such images.
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _grey_to_rgb(grey: np.ndarray, alpha: np.ndarray | None) -> Image.Image:
    grey_image = Image.fromarray(grey.astype(np.uint8))
    if alpha is None:
        return grey_image.convert("RGB")
    rgba = Image.merge("RGBA", (grey_image, grey_image, grey_image, Image.fromarray(alpha.astype(np.uint8))))
    return _on_white(rgba)


def _wide_grey_to_rgb(image: Image.Image) -> Image.Image:
    values = np.asarray(image).astype(np.float64)
    # Mode I comes from 16-bit files in older Pillow versions and from some TIFFs; treat it as 16-bit.
    grey = np.rint(np.clip(values, 0, 65535) / 257.0)  # 65535 / 257 == 255 exactly
    alpha = None
    key = image.info.get("transparency")
    if isinstance(key, int):  # a 16-bit PNG's tRNS names one grey value as transparent
        alpha = np.where(np.asarray(image) == key, 0, 255)
    return _grey_to_rgb(grey, alpha)


def _float_to_rgb(image: Image.Image) -> Image.Image:
    values = np.nan_to_num(np.asarray(image).astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
    # Float images come either as [0, 1] (most tools) or as [0, 255]; the maximum tells which.
    if values.size and values.max() <= 1.0:
        values = values * 255.0
    return _grey_to_rgb(np.clip(np.rint(values), 0, 255), None)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB: alpha composited on white, 16-bit and float scaled.

    An RGB image with no transparency is returned as is (not copied).
    """
    mode = image.mode
    if mode in _WIDE_GREY_MODES:
        return _wide_grey_to_rgb(image)
    if mode == "F":
        return _float_to_rgb(image)
    if mode == "La":
        # Pillow converts La (premultiplied grey) to nothing, but RGBa -> RGBA un-premultiplies.
        grey, alpha = image.split()
        image = Image.merge("RGBa", (grey, grey, grey, alpha))
    if _has_alpha(image):
        # convert("RGBA") also turns a "transparency" key (P, L, RGB, 1) into an alpha channel.
        return _on_white(image.convert("RGBA"))
    if mode == "RGB":
        return image
    # CMYK from JPEG, Adobe-inverted or not, is already un-inverted by Pillow's decoder.
    return image.convert("RGB")


def edit_size(size: tuple[int, int], resolution: int) -> tuple[int, int]:
    """The size `resize_for_edit` makes of an image of `size`: the official edit_cli's rule, sides
    multiples of 64, the long side near `resolution` (the short side is rounded up, so the long side
    can go over)."""
    if resolution < 64:
        raise UserError(f"resolution {resolution} is too small; use 64 or more, e.g. 512")
    width, height = size
    if min(width, height) < 1:
        raise UserError(f"the {width}x{height} image is empty; give an image with pixels in it")
    # Kept exactly as in edit_cli, float rounding included, so our sizes match the reference results.
    factor = resolution / max(width, height)
    factor = math.ceil(min(width, height) * factor / 64) * 64 / min(width, height)
    new_width = int((width * factor) // 64) * 64
    new_height = int((height * factor) // 64) * 64
    if new_width == 0 or new_height == 0:
        raise UserError(
            f"the {width}x{height} image is too thin to edit at resolution {resolution}: a side would "
            "become 0 pixels; crop it to a less extreme shape or use a larger --resolution"
        )
    return new_width, new_height


def resize_for_edit(image: Image.Image, resolution: int) -> Image.Image:
    """Scale and center-crop to `edit_size`, as the official InstructPix2Pix edit_cli does. Returns
    `image` itself when it already has the target size."""
    size = edit_size(image.size, resolution)
    if size == image.size:
        return image  # already right: resampling would only blur it
    return ImageOps.fit(image, size, method=Image.Resampling.LANCZOS)


def multiple_size(size: tuple[int, int], multiple: int = 8) -> tuple[int, int]:
    """The size `fit_to_multiple` makes of an image of `size`: the largest with sides multiples of `multiple`."""
    if multiple < 1:
        raise ValueError(f"multiple must be positive, got {multiple}")
    width, height = size
    if width < multiple or height < multiple:
        raise UserError(
            f"the {width}x{height} image is too small: both sides must be at least {multiple} pixels; "
            "give a larger image or let it be resized"
        )
    return width // multiple * multiple, height // multiple * multiple


def fit_to_multiple(image: Image.Image, multiple: int = 8) -> Image.Image:
    """Center-crop to `multiple_size` (keep-size mode). The VAE downsamples by 8, so other sizes
    cannot round-trip. Returns `image` itself if it fits."""
    size = multiple_size(image.size, multiple)
    if size == image.size:
        return image
    return ImageOps.fit(image, size, method=Image.Resampling.LANCZOS)


def to_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """Stack same-size images into an NCHW float32 tensor in [-1, 1].

    Equal bit for bit to diffusers' `VaeImageProcessor().preprocess(images)` for RGB images whose
    sides are multiples of 8. Non-RGB images are passed through `to_rgb` first.
    """
    import torch

    if isinstance(images, Image.Image):
        images = [images]
    if not images:
        raise ValueError("to_tensor needs at least one image")
    sizes = {image.size for image in images}
    if len(sizes) > 1:
        listed = ", ".join(f"{w}x{h}" for w, h in sorted(sizes))
        raise UserError(f"images in one batch must have the same size, got {listed}; resize them to one size")
    # Same operations, in the same order and precision, as VaeImageProcessor.pil_to_numpy/normalize.
    arrays = [np.array(to_rgb(image)).astype(np.float32) / 255.0 for image in images]
    batch = torch.from_numpy(np.stack(arrays, axis=0).transpose(0, 3, 1, 2))
    return (2.0 * batch - 1.0).contiguous()


def unit_pixels(images: Sequence[Image.Image]) -> list[torch.Tensor]:
    """Each image as a (3, H, W) float32 tensor in [0, 1] (sizes may differ; `to_tensor` gives [-1, 1])."""
    import torch

    return [torch.from_numpy(np.asarray(to_rgb(image), dtype=np.float32) / 255).permute(2, 0, 1) for image in images]


def to_pil(tensor: torch.Tensor) -> list[Image.Image]:
    """Turn decoder output in [-1, 1] (NCHW, or CHW for one image) into PIL images.

    Equal bit for bit to diffusers' `VaeImageProcessor().postprocess(tensor, output_type="pil")`;
    values outside [-1, 1] are clamped. 3 channels give RGB, 1 gives L.
    """
    if tensor.ndim == 3:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 4 or tensor.shape[1] not in (1, 3):
        raise ValueError(f"expected an N x 3 x H x W (or N x 1 x H x W) tensor, got shape {tuple(tensor.shape)}")
    # Denormalize in the tensor's own dtype before going to float32, as diffusers does: with fp16
    # output, doing it in float32 instead can round a few pixels differently.
    unit = (tensor.detach() * 0.5 + 0.5).clamp(0, 1)
    array = unit.cpu().permute(0, 2, 3, 1).float().numpy()
    array = (array * 255).round().astype("uint8")
    if array.shape[-1] == 1:
        return [Image.fromarray(frame[..., 0]) for frame in array]
    return [Image.fromarray(frame) for frame in array]


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """The image files directly inside `folder` (not in subfolders), sorted by name.

    Hidden files are skipped: macOS leaves "._photo.jpg" companions that are not images.
    """
    folder = Path(folder)
    if not folder.exists():
        raise UserError(f"no such folder: {folder}; check the path")
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder; give a folder that contains images")
    found = sorted(
        path
        for path in folder.iterdir()
        if path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()
    )
    if not found:
        listed = " ".join(sorted(IMAGE_EXTENSIONS))
        raise UserError(f"no images in {folder}; put files ending in one of {listed} there")
    return found


OUTPUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
XMP_NAMESPACE = "https://github.com/timothybrooks/instruct-pix2pix/ns/1.0/"  # ours: the keys below it
_EXIF_IFD, _USER_COMMENT, _IMAGE_DESCRIPTION = 0x8769, 0x9286, 0x010E


def check_output_format(path: str | os.PathLike[str]) -> str:
    """The format an output name asks for; a one-line error for one we do not write."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise UserError(f"{path}: write .png, .jpg/.jpeg or .webp (they keep the settings that made the image)")
    return OUTPUT_FORMATS[suffix]


def _xmp(metadata: Mapping[str, str]) -> bytes:
    from xml.sax.saxutils import quoteattr

    attributes = " ".join(f"ip2p:{key}={quoteattr(str(value))}" for key, value in metadata.items())
    return (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description xmlns:ip2p="{XMP_NAMESPACE}" {attributes}/></rdf:RDF></x:xmpmeta>'
    ).encode()


def _read_xmp(packet: bytes | str) -> dict[str, str]:
    import xml.etree.ElementTree as ElementTree

    try:
        root = ElementTree.fromstring(packet)
    except ElementTree.ParseError:
        return {}
    prefix = "{" + XMP_NAMESPACE + "}"
    return {
        key[len(prefix) :]: value
        for element in root.iter()
        for key, value in element.attrib.items()
        if key.startswith(prefix)
    }


def save_image(image: Image.Image, path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None) -> None:
    """Write `image` atomically as PNG, JPEG or WebP (by the name's ending), with its metadata: PNG
    text chunks; for JPEG and WebP an XMP packet with every item, and the `parameters` text in EXIF
    UserComment, where AUTOMATIC1111 keeps it. Creates missing parent folders."""
    from instruct_pix2pix.atomic import atomic_file

    image_format = check_output_format(path)
    metadata = dict(metadata or {})
    options: dict = {}
    if image_format == "PNG":
        info = PngInfo()
        for key, value in metadata.items():
            info.add_text(str(key), str(value))  # falls back to an iTXt chunk for non-Latin-1 text
        options["pnginfo"] = info
    else:
        exif = Image.Exif()
        if "parameters" in metadata:
            # EXIF's UserComment with a Unicode header, as A1111 writes it (big-endian UTF-16).
            exif.get_ifd(_EXIF_IFD)[_USER_COMMENT] = b"UNICODE\0" + metadata["parameters"].encode("utf-16-be")
        if "Software" in metadata:
            exif[0x0131] = metadata["Software"]
        options.update(xmp=_xmp(metadata), exif=exif.tobytes(), quality=95)
    with atomic_file(path, "wb") as stream:
        image.save(stream, format=image_format, **options)


def figure_metadata(command: Sequence[str], **record) -> dict[str, str]:
    """What a figure the project writes carries: the command that makes it again and what made it."""
    import json
    import shlex

    from instruct_pix2pix import __version__

    return {
        "ip2p-command": shlex.join(str(word) for word in command),
        "instruct-pix2pix": json.dumps(record, default=str),
        "Software": f"instruct-pix2pix {__version__}",
    }


def save_png(image: Image.Image, path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None) -> None:
    """`save_image` to a .png name."""
    if Path(path).suffix.lower() != ".png":
        raise UserError(f"{path}: expected a name ending in .png")
    save_image(image, path, metadata)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The settings an image written by `save_image` carries: PNG text chunks (tEXt, zTXt, iTXt),
    or the XMP packet of a JPEG or WebP file."""
    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise UserError(f"no such file: {name}; check the path")
    with _our_rules_for_pillow():
        try:
            opened = Image.open(path, formats=["PNG", "JPEG", "WEBP"])
        except UnidentifiedImageError as e:
            raise UserError(f"{name} is not a PNG, JPEG or WebP file; metadata can only be read from those") from e
        except OSError as e:
            raise UserError(f"cannot read {name}: {e.strerror or e}; check the path and its permissions") from e
        with opened:
            _check_pixels(opened.size, DEFAULT_MAX_PIXELS, name)
            # Text chunks may follow the pixel data, and Pillow only reads those while decoding.
            _decode(opened, name)
            if opened.format != "PNG":
                return _read_xmp(opened.info.get("xmp", b""))
            # iTXt values are a str subclass carrying language tags; callers want plain strings.
            return {str(key): str(value) for key, value in opened.text.items()}


def image_grid(
    rows: Sequence[Sequence[Image.Image | None]],
    *,
    column_labels: Sequence[str] = (),
    row_labels: Sequence[str] = (),
    scale: int = 1,
    cell_label_lines: int = 0,
    cell_labels: Sequence[Sequence[str]] = (),
) -> Image.Image:
    """A labelled grid of images on white: column titles on top, row titles on the left, and
    optionally a caption under each cell (wrapped to `cell_label_lines` lines). Small images are
    enlarged `scale` times with nearest-neighbour, so pixels stay visible."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default()
    line = 12
    cells = [
        [img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST) if img else None for img in row]
        for row in rows
    ]
    width = max((img.width for row in cells for img in row if img), default=64)
    height = max((img.height for row in cells for img in row if img), default=64)
    columns = max(len(row) for row in cells)
    left = 6 + max((int(font.getlength(label)) for label in row_labels), default=-6)
    top = line + 4 if column_labels else 0
    below = cell_label_lines * line

    def fits(text: str) -> bool:
        return font.getlength(text) <= width

    grid = Image.new("RGB", (left + columns * (width + 4), top + len(cells) * (height + below + 4)), "white")
    draw = ImageDraw.Draw(grid)
    for c, label in enumerate(column_labels):
        draw.text((left + c * (width + 4), 2), " ".join(_wrap(label, fits, 1)), fill="black", font=font)
    for r, row in enumerate(cells):
        y = top + r * (height + below + 4)
        if r < len(row_labels):
            draw.text((2, y + height // 2 - line // 2), row_labels[r], fill="black", font=font)
        for c, img in enumerate(row):
            x = left + c * (width + 4)
            if img is not None:
                grid.paste(img, (x, y))
            text = cell_labels[r][c] if r < len(cell_labels) and c < len(cell_labels[r]) else ""
            for k, piece in enumerate(_wrap(text, fits, cell_label_lines)):
                draw.text((x, y + height + 1 + k * line), piece, fill="black", font=font)
    return grid


def _wrap(text: str, fits: Callable[[str], bool], most: int) -> list[str]:
    """Words into at most `most` lines that fit; when words are left over, the last line ends in '...'."""
    lines: list[str] = []
    for word in text.split():
        if lines and fits(lines[-1] + " " + word):
            lines[-1] += " " + word
        else:
            lines.append(word)
    if len(lines) > most:
        if not most:
            return []
        lines = lines[:most]
        while lines[-1] and not fits(lines[-1] + "..."):
            lines[-1] = lines[-1][:-1]
        lines[-1] += "..."
    return lines
