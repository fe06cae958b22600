"""The shipped default model: it loads with no source, it is small, and on held-out scenes its edits
keep what they should and come nearer the exact ground truth than the unchanged input does for the
kinds it has learned (background and global changes; the README's small-world results show every kind).

A broken checkpoint, a broken engine or a broken loader cannot pass: the comparison is against the
rendered ground truth of scenes whose seeds training never used.
"""

import pytest

from instruct_pix2pix import Editor
from instruct_pix2pix.models import DEFAULT_MODEL
from instruct_pix2pix.small_world.evaluate import editor_method, evaluate, unchanged

KINDS = ("background", "global")


@pytest.fixture(scope="module")
def editor():
    return Editor.from_pretrained(device="cpu")


def test_the_default_model_is_shipped_small(editor):
    size = sum(f.stat().st_size for f in DEFAULT_MODEL.rglob("*") if f.is_file())
    assert size < 40e6
    assert editor.model.default_resolution == 64 and editor.model.about["words"]


def test_default_model_edits_move_held_out_scenes_toward_the_ground_truth(editor):
    """Over every kind it keeps what it should (an editor that ignored the input image scores 0.24 on
    kept pixels, this model 0.06), and background and global edits beat the unchanged input."""
    methods = {"model": editor_method(editor), "unchanged input": unchanged}
    rows, _ = evaluate(methods, per_kind=4, progress=False)
    by = {(r.method, r.kind): r for r in rows if r.phrasing == "training"}
    overall = by["model", "all"]
    message = f"L1 to the ground truth {overall.l1:.3f}, on kept pixels {overall.l1_outside:.3f}"
    assert overall.l1 < 0.1 and overall.l1_outside < 0.1, message
    for kind in KINDS:
        ours, floor = by["model", kind].l1, by["unchanged input", kind].l1
        assert ours < 0.85 * floor, f"{kind}: L1 to the ground truth {ours:.3f}, the unchanged input's {floor:.3f}"
