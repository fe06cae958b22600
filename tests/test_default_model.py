"""The shipped default model: it loads with no source, it is small, and on held-out scenes its edits
come nearer the exact ground truth than the unchanged input does, for the edit kinds it has learned
(background and global changes; see the README's small-world results for every kind).

A broken checkpoint, a broken engine or a broken loader cannot pass: the comparison is against the
rendered ground truth of scenes whose seeds training never used.
"""

import numpy as np
import pytest

from instruct_pix2pix import Editor
from instruct_pix2pix.models import DEFAULT_MODEL
from instruct_pix2pix.small_world.evaluate import evaluation_edits, score_edit
from instruct_pix2pix.small_world.scenes import render

KINDS = ("background", "global")


@pytest.fixture(scope="module")
def editor():
    return Editor.from_pretrained(device="cpu")


def test_the_default_model_is_shipped_small(editor):
    size = sum(f.stat().st_size for f in DEFAULT_MODEL.rglob("*") if f.is_file())
    assert size < 40e6
    assert editor.model.default_resolution == 64 and editor.model.about["words"]


def test_default_model_edits_move_held_out_scenes_toward_the_ground_truth(editor):
    edits = evaluation_edits(4, held_out=False, kinds=KINDS)
    befores = [render(e.before) for e in edits]
    afters = [render(e.after) for e in edits]
    result = editor.edit(befores, [e.instruction for e in edits], num_inference_steps=20, seed=0, show_progress=False)
    model = [score_edit(out, b, a).l1 for out, b, a in zip(result.images, befores, afters)]
    unchanged = [score_edit(b, b, a).l1 for b, a in zip(befores, afters)]
    for kind in KINDS:
        ours = np.mean([m for m, e in zip(model, edits) if e.kind == kind])
        floor = np.mean([u for u, e in zip(unchanged, edits) if e.kind == kind])
        assert ours < 0.85 * floor, f"{kind}: L1 to the ground truth {ours:.3f}, the unchanged input's {floor:.3f}"
