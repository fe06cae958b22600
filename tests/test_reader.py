"""The scene reader: exact on exact renders of held-out scenes, robust to noise, field by field."""

from dataclasses import replace

import numpy as np
import pytest

from instruct_pix2pix.small_world.edits import sample_edits
from instruct_pix2pix.small_world.reader import FIELDS, field_errors, read, read_scene, read_scenes
from instruct_pix2pix.small_world.scenes import BACKGROUNDS, COLOURS, SHAPES, Scene, Thing, render


def held_out_scenes(count: int) -> list[Scene]:
    edits = sample_edits("test", count // 2)
    return [scene for edit in edits for scene in (edit.before, edit.after)]


def test_exact_renders_of_held_out_scenes_read_back_exactly():
    scenes = held_out_scenes(300)
    readings = [read(render(scene)) for scene in scenes]
    right = sum(r.scene == s for r, s in zip(readings, scenes))
    assert right / len(scenes) >= 0.995, f"{len(scenes) - right} of {len(scenes)} read wrong"
    assert max(r.residual for r in readings) < 0.01  # an exact render is explained to rounding


@pytest.mark.parametrize("night", [False, True])
def test_black_and_white_keeps_every_colour_readable(night):
    # One object of every colour and shape over every background: in black and white the colours
    # are grey levels, which the world's palette keeps apart.
    cells = [(r, c) for r in range(3) for c in range(3)]
    for background in BACKGROUNDS:
        for shift in range(2):
            colours = list(COLOURS)[shift * 4 : shift * 4 + 4] + list(COLOURS)[(1 - shift) * 4 : (1 - shift) * 4 + 4]
            things = tuple(
                Thing(colour, SHAPES[i % 4], ("small", "large")[i % 2], cell)
                for i, (colour, cell) in enumerate(zip(colours, cells))
            )
            scene = Scene(background, things, night=night, black_and_white=True)
            assert read_scene(render(scene)) == scene


def test_reading_survives_noise_and_other_sizes():
    scenes = held_out_scenes(40)
    rng = np.random.default_rng(0)
    noisy = [np.clip(np.asarray(render(s), np.float32) / 255 + rng.normal(0, 0.03, (64, 64, 3)), 0, 1) for s in scenes]
    assert read_scenes(noisy) == scenes
    assert [read_scene(render(s, 96)) for s in scenes[:10]] == scenes[:10]


def test_an_empty_scene_and_bad_input():
    empty = Scene("beach", (), night=True)
    assert read_scene(render(empty)) == empty
    with pytest.raises(ValueError, match="square RGB"):
        read(np.zeros((64, 48, 3)))


def test_field_errors_name_what_differs():
    scene = Scene("white", (Thing("red", "circle", "small", (0, 0)), Thing("blue", "star", "large", (1, 1))))
    assert not any(field_errors(scene, scene).values())
    assert set(field_errors(scene, scene).keys()) == set(FIELDS)

    def wrong(other: Scene) -> set[str]:
        return {k for k, v in field_errors(other, scene).items() if v}

    red, blue = scene.things
    assert wrong(scene.replace_thing(red, replace(red, colour="green"))) == {"colour"}
    assert wrong(scene.replace_thing(red, replace(red, shape="square"))) == {"shape"}
    assert wrong(scene.replace_thing(blue, replace(blue, size="small"))) == {"size"}
    assert wrong(scene.replace_thing(blue, replace(blue, cell=(2, 2)))) == {"position"}
    assert wrong(replace(scene, background="gray", night=True)) == {"background", "time"}
    assert wrong(replace(scene, black_and_white=True)) == {"black and white"}


def test_integer_arrays_are_8_bit_and_float_arrays_unit_range():
    scene = held_out_scenes(2)[0]
    pixels = np.asarray(render(scene))
    assert read_scene(pixels) == read_scene(pixels.astype(np.float32) / 255) == scene
    dark = np.ones((64, 64, 3), dtype=np.uint8)  # a nearly black 8-bit picture is not a [0, 1] one
    assert read(dark).residual == pytest.approx(read(dark.astype(np.float32) / 255).residual)
