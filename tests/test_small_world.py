"""The small world: scenes, edits, phrasings, datasets and the ground-truth scoring."""

import json
import random
import shlex
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from instruct_pix2pix.data import open_dataset
from instruct_pix2pix.images import read_metadata
from instruct_pix2pix.small_world import (
    KINDS,
    PHRASINGS,
    Scene,
    Thing,
    caption,
    make_edit,
    render,
    sample_edits,
    vocabulary,
)
from instruct_pix2pix.small_world.evaluate import (
    CHANGED,
    alternatives,
    as_array,
    evaluate,
    evaluation_edits,
    format_table,
    score_edit,
    unchanged,
)
from instruct_pix2pix.small_world.generate import write_dataset, write_samples
from instruct_pix2pix.small_world.scenes import COLOURS
from instruct_pix2pix.tokenizers import build_clip_tokenizer

SCENE = Scene("white", (Thing("blue", "square", "large", (1, 1)), Thing("red", "circle", "small", (0, 0))))


def test_caption_lists_objects_in_reading_order():
    assert caption(SCENE) == (
        "a small red circle at the top left and a large blue square in the center on a white background"
    )
    night = replace(SCENE, night=True, black_and_white=True, background="grass")
    assert caption(night) == (
        "a black and white picture of a small red circle at the top left and a large blue square in the center "
        "on grass under a blue sky at night"
    )


def test_render_is_exact_and_draws_what_the_scene_says():
    image = np.asarray(render(SCENE), dtype=int)
    assert np.array_equal(image, np.asarray(render(SCENE)))
    assert image.shape == (64, 64, 3)
    assert tuple(image[32, 32]) == COLOURS["blue"]  # the blue square in the center cell
    assert tuple(image[10, 10]) == COLOURS["red"]  # the red circle at the top left
    assert tuple(image[60, 60]) == (240, 240, 235)  # white background
    night = np.asarray(render(replace(SCENE, night=True)), dtype=int)
    assert night[32, 32, 2] > night[32, 32, 0] and night.mean() < image.mean() * 0.7
    grey = np.asarray(render(replace(SCENE, black_and_white=True)), dtype=int)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_changes_the_scene_and_its_caption(kind):
    edits = list(sample_edits("unit", 5 * len(KINDS), kinds=(kind,)))
    assert all(e.kind == kind for e in edits)
    for edit in edits:
        assert edit.after != edit.before and edit.edited_caption != edit.input_caption
        assert not np.array_equal(np.asarray(render(edit.before)), np.asarray(render(edit.after)))
        # objects keep unique (colour, shape), so "the red circle" always names one object
        pairs = [(t.colour, t.shape) for t in edit.before.things]
        assert len(set(pairs)) == len(pairs)


def test_edits_do_what_they_say():
    steps = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
    for edit in sample_edits("unit", 40, kinds=("move", "count", "remove", "resize", "recolor")):
        gone = set(edit.before.things) - set(edit.after.things)
        new = set(edit.after.things) - set(edit.before.things)
        words = edit.instruction.split()
        if edit.kind == "move":
            (old,), (moved,) = gone, new
            (direction,) = [w for w in words if w in steps]
            assert (moved.cell[0] - old.cell[0], moved.cell[1] - old.cell[1]) == steps[direction]
            assert f"{old.colour} {old.shape}" in edit.instruction
        elif edit.kind == "count":
            number = {"two": 2, "three": 3}[next(w for w in words if w in ("two", "three"))]
            assert not gone and len(new) == number and f"{next(iter(new)).shape}s" in words
        elif edit.kind == "remove":
            assert len(gone) == 1 and not new
        elif edit.kind == "resize":
            (old,), (resized,) = gone, new
            assert resized.size != old.size
            assert (resized.colour, resized.shape, resized.cell) == (old.colour, old.shape, old.cell)
        else:
            (old,), (recoloured,) = gone, new
            assert recoloured.colour in words and f"{old.colour} {old.shape}" in edit.instruction


def test_splits_and_indices_are_deterministic_and_distinct():
    a = [e.before for e in sample_edits("train", 20)]
    assert a == [e.before for e in sample_edits("train", 20)]
    assert a[10:] == [e.before for e in sample_edits("train", 10, start=10)]
    assert a != [e.before for e in sample_edits("test", 20)]


def test_held_out_phrasings_never_appear_in_training_edits():
    held = {p for variants in PHRASINGS.values() for _, h in variants.values() for p in h}
    seen = {p for variants in PHRASINGS.values() for s, _ in variants.values() for p in s}
    assert not held & seen
    training = {e.instruction for e in sample_edits("train", 2000)}
    held_out = [e.instruction for e in sample_edits("train", 200, held_out=True)]
    assert not training & set(held_out)
    assert all(e.held_out for e in sample_edits("test", 9, held_out=True))


def test_filler_words_are_made_up_and_leave_the_edits_alone():
    plain, filled = list(sample_edits("train", 400)), list(sample_edits("train", 400, filler=0.5))
    assert [e.after for e in plain] == [e.after for e in filled]
    changed = [(p.instruction.split(), f.instruction.split()) for p, f in zip(plain, filled) if p != f]
    assert 150 < len(changed) < 250  # about half
    world = set(vocabulary())
    for words, with_made_up in changed:
        made_up = list(with_made_up)
        for word in words:  # the instruction's words stay, in order, with one or two new ones among them
            made_up.remove(word)
        assert 1 <= len(made_up) <= 2 and not world & set(made_up)
    assert [e.instruction for e in sample_edits("train", 400, filler=0.5)] == [e.instruction for e in filled]


def test_every_world_word_is_one_token():
    words = vocabulary()
    assert {"red", "circle", "night", "background", "recolor"} <= set(words)
    tokenizer = build_clip_tokenizer(words, 77)
    assert [w for w in words if len(tokenizer(w, add_special_tokens=False).input_ids) != 1] == []
    longest = max(len(tokenizer(e.input_caption).input_ids) for e in sample_edits("train", 300))
    assert longest <= 77


def test_scores_decide_success_from_ground_truth():
    wrong_answers = 0
    for edit in sample_edits("test", 3 * len(KINDS)):
        before, after = render(edit.before), render(edit.after)
        wrong_scenes = alternatives(edit)  # none when resizing the only object
        assert edit.after not in wrong_scenes and edit.before not in wrong_scenes
        others = [render(s) for s in wrong_scenes]
        wrong_answers += len(others)
        assert score_edit(after, before, after, others).success, edit.instruction
        assert not score_edit(before, before, after, others).success, edit.instruction
        for wrong in others:  # another object, colour, shape, size, cell, direction, number, background ...
            # only the wrong answers that look different: a grey shape in black and white can vanish
            if np.abs(as_array(wrong) - as_array(after)).max() > CHANGED:
                assert not score_edit(wrong, before, after, others).success, edit.instruction
    assert wrong_answers > 10 * 3 * len(KINDS)
    # the right kind of edit applied to the wrong object fails: something else changed
    edit = make_edit(SCENE, "recolor", random.Random(0))
    other = next(t for t in SCENE.things if t.name not in edit.instruction)
    wrong = SCENE.replace_thing(other, replace(other, colour="yellow"))
    assert not score_edit(render(wrong), render(SCENE), render(edit.after)).success
    # a different colour than asked fails, even at night where colours are close
    night = replace(SCENE, night=True)
    red = SCENE.things[0]
    target = night.replace_thing(red, replace(red, colour="blue"))
    wrong = night.replace_thing(red, replace(red, colour="purple"))
    assert not score_edit(render(wrong), render(night), render(target)).success
    assert score_edit(render(target), render(night), render(target)).psnr > 90


def test_scores_ignore_outlines_but_not_shapes_or_objects():
    # a small star recoloured everywhere but on its antialiased outline is recoloured
    scene = Scene("white", (Thing("blue", "square", "large", (1, 1)), Thing("red", "star", "small", (0, 0))))
    red = scene.find("red", "star")
    target = scene.replace_thing(red, replace(red, colour="green"))
    before, after = np.asarray(render(scene), dtype=int), np.asarray(render(target), dtype=int)
    changed = np.abs(after - before).max(-1) > 25
    rim = changed & (np.abs(after - np.array(COLOURS["green"])).max(-1) > 3)
    assert rim.sum() > 0.3 * changed.sum()  # a small star is a third outline
    kept_rim = Image.fromarray(np.where(rim[..., None], before, after).astype(np.uint8))
    assert score_edit(kept_rim, render(scene), render(target)).success
    # ... but a small square added where a small circle was asked for is the wrong shape
    base = Scene("white", (Thing("blue", "square", "large", (1, 1)),))
    add = make_edit(base, "add", random.Random(0))
    (new,) = [t for t in add.after.things if t not in base.things]
    asked = replace(add, after=base.with_things(replace(new, shape="circle", size="small")))
    square = render(base.with_things(replace(new, shape="square", size="small")))
    others = [render(s) for s in alternatives(asked)]
    assert score_edit(render(asked.after), render(base), render(asked.after), others).success
    assert not score_edit(square, render(base), render(asked.after), others).success
    # ... and a night that loses the small red circle on the way changed every pixel, as it should,
    # but is nearer the night without the circle than the night asked for
    night = make_edit(SCENE, "global", random.Random(1))
    assert night.after == replace(SCENE, night=True)
    lost = render(night.after.replace_thing(SCENE.find("red", "circle"), None))
    assert score_edit(lost, render(SCENE), render(night.after)).success  # the pixel checks alone pass it
    others = [render(s) for s in alternatives(night)]
    assert score_edit(render(night.after), render(SCENE), render(night.after), others).success
    assert not score_edit(lost, render(SCENE), render(night.after), others).success


def test_evaluate_reports_every_kind_and_the_baseline():
    def perfect(inputs, instructions):  # returns the ground truth of exactly these edits
        by_instruction = {}
        for e in lookup:
            by_instruction.setdefault(e.instruction, []).append(e)
        return [render(by_instruction[text].pop(0).after) for text in instructions]

    lookup = evaluation_edits(2, held_out=False) + evaluation_edits(2, held_out=True)
    rows, outputs = evaluate({"perfect": perfect, "unchanged input": unchanged}, per_kind=2, progress=False)
    table = {(r.method, r.phrasing, r.kind): r for r in rows}
    assert table["perfect", "training", "all"].success == 1.0
    assert table["perfect", "held-out", "all"].success == 1.0
    assert table["perfect", "training", "all"].read_right == 1.0  # the reader finds the asked-for scene
    assert table["unchanged input", "training", "all"].success == 0.0
    assert table["unchanged input", "training", "all"].read_right == 0.0
    assert ("unchanged input", "held-out", "all") not in table  # wording cannot matter to it
    assert {r.kind for r in rows} == {*KINDS, "all"}
    assert "| **all** | 100%, 100%" in format_table(rows)
    assert len(outputs["perfect/training"]) == 2 * len(KINDS)
    echo = lambda inputs, instructions: list(inputs)  # noqa: E731  (not `unchanged`: that one skips held-out wording)
    rows, _ = evaluate({"echo": echo}, per_kind=1, kinds=("remove",), progress=False, phrasings=["held-out"])
    assert {(r.phrasing, r.kind) for r in rows} == {("held-out", "remove"), ("held-out", "all")}
    with pytest.raises(ValueError, match="unknown phrasings"):
        evaluate({"echo": echo}, per_kind=1, phrasings=["trainig"])


def test_dataset_is_readable_by_the_trainer_and_resumes(tmp_path):
    out = write_dataset(tmp_path / "data", 25, shard_size=10, progress=False)
    shards = sorted(out.glob("train-*.parquet"))
    assert [p.name for p in shards] == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    dataset = open_dataset(out)
    examples = [e for _, e in dataset.examples(seed=0, epoch=0)]
    assert len(examples) == 25 and examples[0].input_image.size == (64, 64)
    expected = {e.instruction for e in sample_edits("train", 25)}
    assert {e.instruction for e in examples} == expected
    triples = [json.loads(line) for line in (out / "train-triples.jsonl").read_text().splitlines()]
    assert len(triples) == 25 and set(triples[0]) == {"input", "edit", "output"}
    # a killed run left two shards: the rerun writes only the missing one
    shards[2].unlink()
    stamp = shards[0].stat().st_mtime_ns
    write_dataset(out, 25, shard_size=10, progress=False)
    assert shards[2].exists() and shards[0].stat().st_mtime_ns == stamp
    reference = write_dataset(tmp_path / "ref", 6, format="reference", progress=False)
    assert len([e for _, e in open_dataset(reference, split="train").examples(seed=0, epoch=0)]) >= 5


def test_samples_for_people(tmp_path):
    out = write_samples(tmp_path / "s", count=1)
    records = [json.loads(line) for line in (out / "edits.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records] == list(KINDS)
    assert (out / "sheet.png").exists() and (out / records[0]["edited"]).exists()
    command = shlex.split(read_metadata(out / "sheet.png")["ip2p-command"])  # the sheet says how to remake it
    assert command == ["ip2p", "world", "sample", "-o", str(out), "--count", "1", "--seed", "0"]


def test_unknown_words_warning_names_them(tiny_model_dir, tmp_path):
    import shutil
    import warnings

    from instruct_pix2pix import Editor
    from instruct_pix2pix.errors import EditWarning
    from instruct_pix2pix.small_world.recipe import about

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "about.json").write_text(json.dumps(about()))
    editor = Editor.from_pretrained(folder, device="cpu")
    assert "red" in editor.model.about["words"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quick = dict(num_inference_steps=1, seed=0, show_progress=False)
        editor.edit(render(SCENE), "please make the red circle fuchsia", **quick)
        editor.edit(render(SCENE), "make the red circle blue", **quick)
    messages = [str(w.message) for w in caught if issubclass(w.category, EditWarning)]
    assert len(messages) == 1
    assert "'please', 'fuchsia'" in messages[0] and "circles, squares" in messages[0]


def test_the_cli_world_commands(tmp_path, capsys):
    from instruct_pix2pix.cli import main

    assert main(["world", "sample", "-o", str(tmp_path / "s"), "--count", "1"]) == 0
    assert (tmp_path / "s" / "sheet.png").exists()
    assert main(["world", "generate", "-o", str(tmp_path / "d"), "--count", "3"]) == 0
    assert len(list((tmp_path / "d").glob("*.parquet"))) == 1
    assert main(["world", "generate", "-o", str(tmp_path / "d"), "--count", "0"]) == 2
    assert "must be at least 1" in capsys.readouterr().err
    assert main(["world", "generate", "-o", str(tmp_path / "f"), "--count", "9", "--filler", "1"]) == 0
    triples = [json.loads(line) for line in (tmp_path / "f" / "train-triples.jsonl").read_text().splitlines()]
    assert [t["edit"] for t in triples] == [e.instruction for e in sample_edits("train", 9, filler=1)]
    assert not {t["edit"] for t in triples} & {e.instruction for e in sample_edits("train", 9)}
    assert main(["world", "generate", "-o", str(tmp_path / "g"), "--count", "3", "--filler", "1.5"]) != 0
    assert "from 0 to 1, not 1.5" in capsys.readouterr().err and not (tmp_path / "g").exists()
    assert main(["world", "generate", "-o", str(tmp_path / "k"), "--count", "6", "--kinds", "resize,move,resize"]) == 0
    written = [json.loads(line)["edit"] for line in (tmp_path / "k" / "train-triples.jsonl").read_text().splitlines()]
    weighted = list(sample_edits("train", 6, kinds=("resize", "move", "resize")))
    assert written == [e.instruction for e in weighted] and [e.kind for e in weighted].count("resize") == 4
    assert main(["world", "generate", "-o", str(tmp_path / "h"), "--count", "3", "--kinds", "resize,blur"]) != 0
    assert "must be some of recolor" in capsys.readouterr().err and not (tmp_path / "h").exists()


def test_demo_and_evaluation_figures_carry_their_settings(tmp_path):
    from instruct_pix2pix.cli import main

    demo = tmp_path / "demo.png"
    assert main(["world", "demo", "-o", str(demo), "--steps", "2", "--device", "cpu"]) == 0
    words = shlex.split(read_metadata(demo)["ip2p-command"])
    assert words[:3] == ["ip2p", "world", "demo"] and words[words.index("--steps") + 1] == "2"
    assert json.loads(read_metadata(demo)["instruct-pix2pix"])["num_inference_steps"] == 2
    out = tmp_path / "eval"
    assert main(["world", "evaluate", "-o", str(out), "--per-kind", "1", "--steps", "2", "--device", "cpu"]) == 0
    words = shlex.split(read_metadata(out / "examples.png")["ip2p-command"])
    assert words[:3] == ["ip2p", "world", "evaluate"] and words[words.index("--per-kind") + 1] == "1"
