"""Read a scene back from its pixels: the ground truth of pictures that have no exact counterpart.

A generated scene, a Prompt-to-Prompt pair or an edit has no scene behind it; the reader finds
the scene that explains its pixels best. It works by synthesis, as the renderer draws: objects
never cross their grid cell, so every cell is explained alone, by the background or by one of
the 64 objects (8 colours x 4 shapes x 2 sizes) drawn over it; and the global state (background,
night, black and white, 20 in all) is the one whose best cell-by-cell explanation leaves the
least error. A drawn object is its coverage mask (the share of each pixel's 4x4 supersamples it
covers, as the renderer's box filter averages them) mixing its colour into the background; night
and black and white are affine in the colour, so they carry through the mix, and a prediction
matches an exact render to rounding. On images that are not exact renders (through a VAE, or
generated), the nearest explanation in squared error is the reading.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from instruct_pix2pix.small_world.scenes import (
    BACKGROUNDS,
    CELLS,
    COLOURS,
    NIGHT,
    SHAPES,
    SIZES,
    SUPERSAMPLE,
    Scene,
    Thing,
    draw_thing,
    render,
)

GLOBAL_STATES = tuple(
    (background, night, grey) for background in BACKGROUNDS for night in (False, True) for grey in (False, True)
)
LOOKS = tuple(itertools.product(SHAPES, SIZES))  # an object's outline: shape and size
GREY = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # Pillow's "L" weights


@dataclass(frozen=True)
class Reading:
    scene: Scene
    residual: float  # root mean squared error of the scene's explanation, in [0, 1] units per channel


def _bounds(size: int) -> list[tuple[int, int]]:
    """Pixel rows (or columns) of the three grid cells: they tile the image."""
    edges = [round(k * size / 3) for k in range(4)]
    return list(zip(edges[:-1], edges[1:]))


@functools.lru_cache(maxsize=4)
def _masks(size: int) -> dict[tuple[int, int], np.ndarray]:
    """Per cell, the coverage of every outline (LOOKS) over the cell's pixels: (looks, h, w, 1)."""
    big = size * SUPERSAMPLE
    bounds = _bounds(size)
    masks = {}
    for cell in CELLS:
        (top, bottom), (left, right) = bounds[cell[0]], bounds[cell[1]]
        stack = []
        for shape, size_name in LOOKS:
            canvas = Image.new("L", (big, big), 0)
            draw_thing(ImageDraw.Draw(canvas), Thing("red", shape, size_name, cell), big, 255)
            cover = np.asarray(canvas, dtype=np.float32).reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean((1, 3))
            stack.append(cover[top:bottom, left:right] / 255.0)
        masks[cell] = np.stack(stack)[..., None]
    return masks


def _look(colour: np.ndarray, night: bool, grey: bool) -> np.ndarray:
    """Colours (..., 3) in [0, 1] as the renderer shows them at night and in black and white."""
    if night:
        scale, tint = NIGHT
        colour = colour * scale + np.array(tint, dtype=np.float32) / 255.0
    if grey:
        colour = np.repeat((colour @ GREY)[..., None], 3, axis=-1)
    return colour


@functools.lru_cache(maxsize=4)
def _backgrounds(size: int) -> np.ndarray:
    """The exact empty scene of every global state: (states, size, size, 3) in [0, 1]."""
    empty = [render(Scene(bg, (), night, grey), size) for bg, night, grey in GLOBAL_STATES]
    return np.stack([np.asarray(image, dtype=np.float32) / 255.0 for image in empty])


_PALETTE = np.array(list(COLOURS.values()), dtype=np.float32) / 255.0  # (colours, 3)


def read(image: Image.Image | np.ndarray) -> Reading:
    """The scene that explains `image` best (a square picture at any size: a PIL image, an 8-bit
    array, or a float array in [0, 1]), and how well it does."""
    raw = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    pixels = raw.astype(np.float32) / (255.0 if np.issubdtype(raw.dtype, np.integer) else 1.0)  # floats: [0, 1]
    if pixels.ndim != 3 or pixels.shape[0] != pixels.shape[1] or pixels.shape[2] != 3:
        raise ValueError(f"a scene is a square RGB picture, not an array of shape {pixels.shape}")
    size = pixels.shape[0]
    masks, bounds = _masks(size), _bounds(size)
    empties = _backgrounds(size)
    # Likely states first (those whose empty scene is nearest, robustly), so the rest stop early.
    order = np.argsort(np.minimum(np.abs(empties - pixels), 0.1).sum(axis=(1, 2, 3)))
    best: tuple[float, Scene] | None = None
    for (background, night, grey), empty in ((GLOBAL_STATES[i], empties[i]) for i in order):
        colours = _look(_PALETTE, night, grey)[:, None, None, None, :]  # (colours, 1, 1, 1, 3)
        things, total = [], 0.0
        for cell in CELLS:
            (top, bottom), (left, right) = bounds[cell[0]], bounds[cell[1]]
            seen, behind = pixels[top:bottom, left:right], empty[top:bottom, left:right]
            mask = masks[cell][None]  # (1, looks, h, w, 1)
            drawn = mask * colours + (1 - mask) * behind  # (colours, looks, h, w, 3)
            errors = ((drawn - seen) ** 2).sum(axis=(2, 3, 4))
            nothing = float(((behind - seen) ** 2).sum())
            index = np.unravel_index(int(errors.argmin()), errors.shape)
            if errors[index] < nothing:
                shape, size_name = LOOKS[index[1]]
                things.append(Thing(list(COLOURS)[index[0]], shape, size_name, cell))
                total += float(errors[index])
            else:
                total += nothing
            if best is not None and total >= best[0]:
                break  # this global state cannot win any more
        else:
            best = (total, Scene(background, tuple(things), night=night, black_and_white=grey))
    assert best is not None
    return Reading(best[1], float(np.sqrt(best[0] / pixels.size)))


def read_scene(image: Image.Image | np.ndarray) -> Scene:
    return read(image).scene


def read_scenes(images: Sequence[Image.Image | np.ndarray]) -> list[Scene]:
    return [read(image).scene for image in images]


FIELDS = ("background", "time", "black and white", "colour", "shape", "size", "position")


def field_errors(read_back: Scene, truth: Scene) -> dict[str, bool]:
    """Which parts of a reading are wrong, field by field: the global ones, and per object of the
    truth its colour, shape and size where it stands (position: an object is missing, or one is
    there that should not be)."""
    found = {t.cell: t for t in read_back.things}
    wanted = {t.cell: t for t in truth.things}
    common = [(wanted[c], found[c]) for c in wanted if c in found]
    return {
        "background": read_back.background != truth.background,
        "time": read_back.night != truth.night,
        "black and white": read_back.black_and_white != truth.black_and_white,
        "colour": any(a.colour != b.colour for a, b in common),
        "shape": any(a.shape != b.shape for a, b in common),
        "size": any(a.size != b.size for a, b in common),
        "position": set(found) != set(wanted),
    }
