"""Scenes of the small world: what is in a picture, how it is drawn, and how it is described.

A scene is a background, up to nine objects on a 3x3 grid of cells, and two global attributes
(night, black and white). Everything is a frozen dataclass, so a scene is a value: edits build
new scenes, and the renderer draws any scene exactly, which is what makes ground truth exact.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

# Object colours: eight names a model must tell apart, also under the night tint, and in black and
# white: their grey levels (Pillow's "L") differ by at least 12 from each other and by at least 8
# from every background's, so a black-and-white scene still shows every object and its colour.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 60, 40),
    "orange": (245, 145, 25),
    "yellow": (245, 220, 40),
    "green": (35, 175, 55),
    "blue": (40, 45, 225),
    "purple": (135, 50, 185),
    "pink": (250, 135, 195),
    "brown": (125, 60, 35),
}
SHAPES = ("circle", "square", "triangle", "star")
SIZES = ("small", "large")
# Plain backgrounds are one colour; structured ones are two bands (top, bottom, where the top ends).
# None is a pure grey, so a black-and-white picture always tells itself apart from a colour one.
BACKGROUNDS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int], float]] = {
    "white": ((240, 240, 235), (240, 240, 235), 1.0),
    "gray": ((150, 150, 144), (150, 150, 144), 1.0),
    "beige": ((225, 190, 165), (225, 190, 165), 1.0),
    "grass": ((160, 205, 245), (125, 178, 95), 0.55),  # grass under a blue sky
    "beach": ((235, 220, 160), (70, 150, 190), 0.6),  # sand at the top, the sea below
}
BACKGROUND_PHRASES = {
    "white": "on a white background",
    "gray": "on a gray background",
    "beige": "on a beige background",
    "grass": "on grass under a blue sky",
    "beach": "on a beach by the sea",
}
# Cells in reading order: (row, column), and how a caption names each.
CELLS = tuple((row, col) for row in range(3) for col in range(3))
CELL_NAMES = {
    (0, 0): "top left", (0, 1): "top", (0, 2): "top right",
    (1, 0): "left", (1, 1): "center", (1, 2): "right",
    (2, 0): "bottom left", (2, 1): "bottom", (2, 2): "bottom right",
}  # fmt: skip
CELL_PHRASES = {
    (0, 0): "at the top left", (0, 1): "at the top", (0, 2): "at the top right",
    (1, 0): "on the left", (1, 1): "in the center", (1, 2): "on the right",
    (2, 0): "at the bottom left", (2, 1): "at the bottom", (2, 2): "at the bottom right",
}  # fmt: skip
RADIUS = {"small": 0.11, "large": 0.15}  # of the image side; a cell is 1/3 of it (small was 0.085: README)
NIGHT = (0.5, (5, 10, 40))  # night multiplies the colours and adds a blue tint
DEFAULT_SIZE = 64
SUPERSAMPLE = 4  # draw 4x larger, then downsample: antialiased edges, exactly reproducible


@dataclass(frozen=True)
class Thing:
    colour: str
    shape: str
    size: str
    cell: tuple[int, int]

    @property
    def name(self) -> str:
        """How an instruction refers to it: colour and shape are unique within a scene."""
        return f"the {self.colour} {self.shape}"

    def describe(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} {CELL_PHRASES[self.cell]}"


@dataclass(frozen=True)
class Scene:
    background: str
    things: tuple[Thing, ...]
    night: bool = False
    black_and_white: bool = False

    def __post_init__(self) -> None:
        # Keep the caption order canonical (reading order), so equal scenes compare equal.
        object.__setattr__(self, "things", tuple(sorted(self.things, key=lambda t: CELLS.index(t.cell))))

    def find(self, colour: str, shape: str) -> Thing | None:
        return next((t for t in self.things if (t.colour, t.shape) == (colour, shape)), None)

    def free_cells(self) -> list[tuple[int, int]]:
        taken = {t.cell for t in self.things}
        return [cell for cell in CELLS if cell not in taken]

    def replace_thing(self, old: Thing, new: Thing | None) -> Scene:
        things = [t for t in self.things if t != old] + ([new] if new is not None else [])
        return replace(self, things=tuple(things))

    def with_things(self, *added: Thing) -> Scene:
        return replace(self, things=self.things + added)


def sample_scene(rng: random.Random, *, max_things: int = 4, night_probability: float = 0.2) -> Scene:
    """A random scene: background, 1 to `max_things` objects with unique (colour, shape), day or night."""
    count = rng.randint(1, max_things)
    pairs = rng.sample([(c, s) for c in COLOURS for s in SHAPES], count)
    cells = rng.sample(CELLS, count)
    things = tuple(Thing(c, s, rng.choice(SIZES), cell) for (c, s), cell in zip(pairs, cells))
    return Scene(rng.choice(list(BACKGROUNDS)), things, night=rng.random() < night_probability)


def caption(scene: Scene) -> str:
    """A plain English caption: 'a small red circle at the top left and ... on a white background'."""
    parts = [t.describe() for t in scene.things]
    if len(parts) > 1:
        objects = ", ".join(parts[:-1]) + " and " + parts[-1]
    else:
        objects = parts[0] if parts else "nothing"
    text = f"{objects} {BACKGROUND_PHRASES[scene.background]}"
    if scene.night:
        text += " at night"
    if scene.black_and_white:
        text = "a black and white picture of " + text
    return text


def _shape_points(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        s = r * 0.86  # same visual weight as a circle of radius r
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        corners = (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)
        return [(cx + r * math.cos(a), cy + r * 0.1 + r * math.sin(a)) for a in corners]
    if shape == "star":
        return [
            (cx + (r if k % 2 == 0 else r * 0.45) * math.cos(-math.pi / 2 + k * math.pi / 5),
             cy + (r if k % 2 == 0 else r * 0.45) * math.sin(-math.pi / 2 + k * math.pi / 5))
            for k in range(10)
        ]  # fmt: skip
    raise ValueError(f"unknown shape {shape!r}")


def draw_thing(draw: ImageDraw.ImageDraw, thing: Thing, side: int, fill) -> None:
    """Draw one object on a canvas `side` pixels wide (the renderer's, and the reader's masks)."""
    row, col = thing.cell
    cx, cy, r = (col + 0.5) * side / 3, (row + 0.5) * side / 3, RADIUS[thing.size] * side
    if thing.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(_shape_points(thing.shape, cx, cy, r), fill=fill)


def render(scene: Scene, size: int = DEFAULT_SIZE) -> Image.Image:
    """Draw a scene exactly (the same scene always gives the same pixels)."""
    big = size * SUPERSAMPLE
    top, bottom, split = BACKGROUNDS[scene.background]
    image = Image.new("RGB", (big, big), bottom)
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 0, big, round(big * split) - 1], fill=top)
    for thing in scene.things:
        draw_thing(draw, thing, big, COLOURS[thing.colour])
    image = image.resize((size, size), Image.Resampling.BOX)
    if scene.night:
        scale, tint = NIGHT
        pixels = np.asarray(image, dtype=np.float32) * scale + np.array(tint, dtype=np.float32)
        image = Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8))
    if scene.black_and_white:
        image = image.convert("L").convert("RGB")
    return image
