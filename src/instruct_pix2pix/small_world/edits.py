"""Edits of the small world: what can be asked, in which words, and the exact result.

Every edit kind is a function that looks at a scene, picks what to change, and returns the edited
scene plus the words to fill a phrasing with (or None when the kind does not apply to the scene).
Each kind has several phrasings; a fixed few per kind (`HELD_OUT`) never appear in training data
and measure how the model copes with wording it never saw.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from instruct_pix2pix.small_world.scenes import (
    BACKGROUND_PHRASES,
    CELL_PHRASES,
    COLOURS,
    SHAPES,
    Scene,
    Thing,
    caption,
    sample_scene,
)

# Phrasings per kind and variant: (seen in training, held out). `{obj}` is "the red circle".
PHRASINGS: dict[str, dict[str, tuple[list[str], list[str]]]] = {
    "recolor": {"": (
        ["make {obj} {colour}", "turn {obj} {colour}", "change the color of {obj} to {colour}", "paint {obj} {colour}",
         "color {obj} {colour}", "make {obj} {colour} instead", "change {obj} to {colour}", "{obj} should be {colour}"],
        ["recolor {obj} {colour}", "can you make {obj} {colour}", "i want {obj} to be {colour}"])},
    "reshape": {"": (
        ["turn {obj} into a {shape}", "make {obj} a {shape}", "change {obj} into a {shape}",
         "change {obj} to a {shape}", "replace {obj} with a {colour} {shape}", "{obj} should be a {shape}",
         "swap {obj} for a {colour} {shape}"],
        ["transform {obj} into a {shape}", "can you make {obj} a {shape}", "i want {obj} to be a {shape}"])},
    "add": {"": (
        ["add {thing} {where}", "put {thing} {where}", "draw {thing} {where}", "place {thing} {where}",
         "{where} add {thing}", "insert {thing} {where}"],
        ["can you add {thing} {where}", "there should be {thing} {where}", "i want {thing} {where}"])},
    "remove": {"": (
        ["remove {obj}", "delete {obj}", "take away {obj}", "get rid of {obj}", "erase {obj}", "take out {obj}",
         "remove {obj} from the picture"],
        ["can you remove {obj}", "there should be no {colour} {shape}", "i want {obj} gone"])},
    "resize": {
        "bigger": (
            ["make {obj} bigger", "make {obj} larger", "enlarge {obj}", "make {obj} large", "grow {obj}",
             "increase the size of {obj}"],
            ["can you make {obj} bigger", "i want {obj} to be large", "{obj} should be bigger"]),
        "smaller": (
            ["make {obj} smaller", "shrink {obj}", "make {obj} small", "reduce the size of {obj}",
             "decrease the size of {obj}", "make {obj} a little smaller"],
            ["can you make {obj} smaller", "i want {obj} to be small", "{obj} should be smaller"]),
    },
    "move": {"": (
        ["move {obj} {direction}", "move {obj} one step {direction}", "shift {obj} {direction}",
         "slide {obj} {direction}", "push {obj} {direction}", "move {obj} {direction} a bit"],
        ["can you move {obj} {direction}", "{obj} should go {direction}", "i want {obj} moved {direction}"])},
    "background": {
        "plain": (
            ["make the background {background}", "change the background to {background}",
             "paint the background {background}", "use a {background} background",
             "turn the background {background}", "set the background to {background}"],
            ["can you make the background {background}", "i want a {background} background",
             "the background should be {background}"]),
        "scenery": (
            ["put everything on {background}", "change the background to {background}",
             "make the background {background}", "move the scene to {background}", "set the scene on {background}",
             "place them on {background}"],
            ["can you put everything on {background}", "i want the background to be {background}",
             "the scene should be on {background}"]),
    },
    "global": {
        "night": (
            ["make it night", "turn it into night", "make it nighttime", "change the time to night", "make it dark",
             "make the scene night"],
            ["can you make it night", "i want it to be night", "it should be night"]),
        "day": (
            ["make it day", "turn it into day", "make it daytime", "change the time to day", "make it bright",
             "make the scene day"],
            ["can you make it day", "i want it to be day", "it should be day"]),
        "black_and_white": (
            ["make it black and white", "turn it black and white", "remove the colors", "make it grayscale",
             "make the picture black and white", "convert it to black and white"],
            ["can you make it black and white", "i want it black and white", "it should be black and white"]),
    },
    "count": {"": (
        ["add {number} {size} {colour} {shapes}", "put {number} {size} {colour} {shapes} in the picture",
         "draw {number} {size} {colour} {shapes}", "place {number} {size} {colour} {shapes}",
         "insert {number} {size} {colour} {shapes}"],
        ["can you add {number} {size} {colour} {shapes}", "there should be {number} more {size} {colour} {shapes}",
         "i want {number} {size} {colour} {shapes} added"])},
}  # fmt: skip
KINDS = tuple(PHRASINGS)
NUMBERS = {2: "two", 3: "three"}
DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
BACKGROUND_WORDS = {"white": "white", "gray": "gray", "beige": "beige", "grass": "grass under a blue sky",
                    "beach": "a beach by the sea"}  # fmt: skip


@dataclass(frozen=True)
class WorldEdit:
    kind: str
    variant: str
    instruction: str
    held_out: bool  # phrased with a held-out phrasing
    before: Scene
    after: Scene

    @property
    def input_caption(self) -> str:
        return caption(self.before)

    @property
    def edited_caption(self) -> str:
        return caption(self.after)


Change = tuple[Scene, dict[str, str], str]  # edited scene, words for the phrasing, variant


def _pick(scene: Scene, rng: random.Random) -> Thing | None:
    return rng.choice(scene.things) if scene.things else None


def _recolor(scene: Scene, rng: random.Random) -> Change | None:
    thing = _pick(scene, rng)
    if thing is None or scene.black_and_white:
        return None
    colours = [c for c in COLOURS if c != thing.colour and scene.find(c, thing.shape) is None]
    colour = rng.choice(colours)
    return scene.replace_thing(thing, replace(thing, colour=colour)), {"obj": thing.name, "colour": colour}, ""


def _reshape(scene: Scene, rng: random.Random) -> Change | None:
    thing = _pick(scene, rng)
    if thing is None or scene.black_and_white:
        return None
    shapes = [s for s in SHAPES if s != thing.shape and scene.find(thing.colour, s) is None]
    if not shapes:
        return None
    shape = rng.choice(shapes)
    words = {"obj": thing.name, "shape": shape, "colour": thing.colour}
    return scene.replace_thing(thing, replace(thing, shape=shape)), words, ""


def _new_things(scene: Scene, rng: random.Random, count: int) -> list[Thing] | None:
    """`count` new objects of one unused (colour, shape) and size, in the first free cells (reading order)."""
    cells = scene.free_cells()
    pairs = [(c, s) for c in COLOURS for s in SHAPES if scene.find(c, s) is None]
    if len(cells) < count or not pairs:
        return None
    colour, shape = rng.choice(pairs)
    size = rng.choice(("small", "large"))
    if count == 1:  # a single added object goes where the instruction says
        cells = [rng.choice(cells)]
    return [Thing(colour, shape, size, cell) for cell in cells[:count]]


def _add(scene: Scene, rng: random.Random) -> Change | None:
    if scene.black_and_white or len(scene.things) >= 5:
        return None
    new = _new_things(scene, rng, 1)
    if new is None:
        return None
    (thing,) = new
    words = {"thing": f"a {thing.size} {thing.colour} {thing.shape}", "where": CELL_PHRASES[thing.cell]}
    return scene.with_things(thing), words, ""


def _count(scene: Scene, rng: random.Random) -> Change | None:
    if scene.black_and_white:
        return None
    number = rng.choice(list(NUMBERS))
    new = _new_things(scene, rng, number)
    if new is None:
        return None
    first = new[0]
    words = {"number": NUMBERS[number], "size": first.size, "colour": first.colour, "shapes": first.shape + "s"}
    return scene.with_things(*new), words, ""


def _remove(scene: Scene, rng: random.Random) -> Change | None:
    thing = _pick(scene, rng)
    if thing is None or scene.black_and_white:
        return None
    return scene.replace_thing(thing, None), {"obj": thing.name, "colour": thing.colour, "shape": thing.shape}, ""


def _resize(scene: Scene, rng: random.Random) -> Change | None:
    thing = _pick(scene, rng)
    if thing is None or scene.black_and_white:
        return None
    size, variant = ("large", "bigger") if thing.size == "small" else ("small", "smaller")
    return scene.replace_thing(thing, replace(thing, size=size)), {"obj": thing.name}, variant


def _move(scene: Scene, rng: random.Random) -> Change | None:
    if scene.black_and_white:
        return None
    free = set(scene.free_cells())
    moves = [
        (thing, name, (thing.cell[0] + dr, thing.cell[1] + dc))
        for thing in scene.things
        for name, (dr, dc) in DIRECTIONS.items()
        if (thing.cell[0] + dr, thing.cell[1] + dc) in free
    ]
    if not moves:
        return None
    thing, direction, cell = rng.choice(moves)
    return scene.replace_thing(thing, replace(thing, cell=cell)), {"obj": thing.name, "direction": direction}, ""


def _background(scene: Scene, rng: random.Random) -> Change | None:
    background = rng.choice([b for b in BACKGROUND_PHRASES if b != scene.background])
    variant = "scenery" if background in ("grass", "beach") else "plain"
    return replace(scene, background=background), {"background": BACKGROUND_WORDS[background]}, variant


def _global(scene: Scene, rng: random.Random) -> Change | None:
    options = ["day" if scene.night else "night"] + ([] if scene.black_and_white else ["black_and_white"])
    variant = rng.choice(options)
    if variant == "black_and_white":
        return replace(scene, black_and_white=True), {}, variant
    return replace(scene, night=variant == "night"), {}, variant


EDIT_FUNCTIONS: dict[str, Callable[[Scene, random.Random], Change | None]] = {
    "recolor": _recolor, "reshape": _reshape, "add": _add, "remove": _remove, "resize": _resize,
    "move": _move, "background": _background, "global": _global, "count": _count,
}  # fmt: skip


def make_edit(scene: Scene, kind: str, rng: random.Random, *, held_out: bool = False) -> WorldEdit | None:
    """Apply one edit of `kind` to `scene`, phrased with a training (or held-out) phrasing.

    None if it does not apply."""
    change = EDIT_FUNCTIONS[kind](scene, rng)
    if change is None:
        return None
    after, words, variant = change
    phrasing = rng.choice(PHRASINGS[kind][variant][1 if held_out else 0])
    return WorldEdit(kind, variant, phrasing.format(**words), held_out, scene, after)


def edit_rng(split: str, index: int) -> random.Random:
    """The generator for example `index` of a split: splits never share scenes' seeds."""
    return random.Random(f"small-world/{split}/{index}")


def sample_edits(
    split: str,
    count: int,
    *,
    kinds: tuple[str, ...] = KINDS,
    held_out: bool = False,
    start: int = 0,
    filler: float = 0.0,
) -> Iterator[WorldEdit]:
    """`count` edits of split `split` ("train", "validation", "test"), kinds in turn, each from its own seed;
    a `filler` share of the instructions get made-up words (`with_filler`), the edits themselves unchanged.

    Example `i` depends only on (split, i), so a dataset can be extended, resumed or sharded.
    """
    for index in range(start, start + count):
        rng = edit_rng(split, index)
        kind = kinds[index % len(kinds)]
        while True:  # resample the scene until the kind applies (a move needs a free neighbour cell, ...)
            edit = make_edit(sample_scene(rng), kind, rng, held_out=held_out)
            if edit is not None:
                break
        noise = random.Random(f"small-world/{split}/{index}/filler")  # its own draws: the edit is the same
        yield replace(edit, instruction=with_filler(edit.instruction, noise)) if noise.random() < filler else edit


def with_filler(instruction: str, rng: random.Random) -> str:
    """`instruction` with one or two made-up words (1-5 random letters, never a word of the world, so
    never a held-out phrasing's) at random places, so that a model learns to edit past words it does
    not know rather than stop at them."""
    words = instruction.split()
    for _ in range(rng.choice((1, 2))):
        while (made_up := "".join(rng.choices(LETTERS, k=rng.randint(1, 5)))) in _world_words():
            pass
        words.insert(rng.randint(0, len(words)), made_up)
    return " ".join(words)


LETTERS = "abcdefghijklmnopqrstuvwxyz"


@functools.cache
def _world_words() -> frozenset[str]:
    return frozenset(vocabulary())


def vocabulary() -> list[str]:
    """Every word the small world uses, in captions and in all phrasings (held-out ones too)."""
    fillers = [*COLOURS, *SHAPES, *(s + "s" for s in SHAPES), "small", "large", *NUMBERS.values(), *DIRECTIONS,
               *BACKGROUND_WORDS.values(), *BACKGROUND_PHRASES.values(), *CELL_PHRASES.values(),
               "a black and white picture of", "and at night nothing"]  # fmt: skip
    phrasings = [p for variants in PHRASINGS.values() for seen, held in variants.values() for p in seen + held]
    return sorted({word for text in fillers + phrasings for word in re.sub(r"\{\w+\}", " ", text).split()})
