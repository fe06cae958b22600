"""The paper end to end in the small world, on a tiny text-to-image model built in code: every stage
runs, the candidates are judged by the scene reader, a rerun does nothing again, and the report adds up."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from instruct_pix2pix.data.image_pairs import ClipFilter
from instruct_pix2pix.errors import UserError
from instruct_pix2pix.small_world.paper import judge_pairs, pair_report, run_paper, text_stage_right
from instruct_pix2pix.small_world.scenes import caption, render
from instruct_pix2pix.training.checkpoints import latest_step


def test_the_judge_reads_pairs_against_their_captions():
    from instruct_pix2pix.small_world.edits import sample_edits

    edit = next(sample_edits("test", 1))
    triple = {"input": caption(edit.before), "edit": edit.instruction, "output": caption(edit.after)}
    right, swapped = judge_pairs(triple, [(render(edit.before), render(edit.after)),
                                          (render(edit.after), render(edit.before))])  # fmt: skip
    assert right == {"first_right": True, "second_right": True, "right": True}
    assert swapped["right"] is False


def test_the_text_stage_is_checked_against_the_grammar(tmp_path):
    from instruct_pix2pix.small_world.edits import sample_edits

    edits = [next(sample_edits("test", 1, kinds=[kind])) for kind in ("recolor", "remove")]
    triples = [{"input": caption(e.before), "edit": e.instruction, "output": caption(e.after)} for e in edits]
    triples[1]["output"] = caption(edits[0].after)  # the other edit's result: not what this instruction does
    path = tmp_path / "edits.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in triples))
    assert text_stage_right(path) == 0.5


def test_the_report_counts_the_filter():
    rows = [{"kept": k, "right": r, "first_right": r, "second_right": r, "p2p_threshold": p, "cfg_scale": g}
            for k, r, p, g in [(True, True, 0.2, 8.0), (True, False, 0.4, 9.0), (False, True, 0.6, 14.0),
                               (False, False, 0.8, 15.0)]]  # fmt: skip
    report = pair_report(rows)
    assert (report["right_before_filter"], report["right_after_filter"], report["right_dropped_by_filter"]) == (
        0.5, 0.5, 0.5)  # fmt: skip
    assert [b["candidates"] for b in report["by_p"]] == [1, 1, 1, 1]
    assert [b["candidates"] for b in report["by_guidance"]] == [2, 0, 2]


@pytest.mark.slow
def test_every_stage_runs_and_a_rerun_goes_on(text_to_image_model_dir, tmp_path):
    options = dict(captions=8, candidates=2, steps=2, editor_steps=2, editor_batch_size=2, per_kind=1,
                   progress=False, clip_filter=ClipFilter(image=0.0, direction=-1.0, caption=-1.0, keep=2))  # fmt: skip
    report = run_paper(tmp_path, text_to_image_model_dir, **options)
    candidates = sum(1 for _ in tmp_path.glob("pairs/*/candidates.jsonl"))
    assert report["pairs"]["candidates"] == 2 * candidates and report["pairs"]["kept"] == 2 * candidates
    assert set(report["editors"]) == {"generated", "exact"}
    assert report["editors"]["generated"]["training examples"] == report["pairs"]["kept"]
    assert report["editors"]["exact"]["edits"] == report["editors"]["exact"]["training examples"] > 0
    rates = [v for s in report["editors"].values() for v in (s["training wording"], *s["by kind"].values())]
    assert len(rates) == 2 * 10 and all(0.0 <= v <= 1.0 for v in rates)
    assert 0.0 <= report["text_stage"]["right"] <= 1.0
    assert json.loads((tmp_path / "report.json").read_text()) == json.loads(json.dumps(report))
    again = run_paper(tmp_path, text_to_image_model_dir, **options)  # everything is there: nothing redone
    assert again == report
    longer = run_paper(tmp_path, text_to_image_model_dir, **{**options, "editor_steps": 3})  # the editors go on
    assert latest_step(tmp_path / "editor-generated") == latest_step(tmp_path / "editor-exact") == 3
    assert (tmp_path / "evaluate-exact-2").is_dir() and (tmp_path / "evaluate-exact-3").is_dir()
    assert longer["pairs"] == report["pairs"] and longer["settings"]["editor_steps"] == 3
    with pytest.raises(UserError, match="trained 3 steps, more than the 2 asked"):
        run_paper(tmp_path, text_to_image_model_dir, **options)


def test_without_a_text_to_image_model_it_says_so_in_one_line(capsys, tmp_path):
    from test_cli import assert_one_line_error, run

    code, _, err = run(capsys, "world", "paper", "-o", tmp_path / "paper", "--text-to-image", tmp_path / "none")
    assert_one_line_error(code, err, "--text-to-image")
    assert not (tmp_path / "paper").exists()


@pytest.mark.parametrize("flag", [["--compile"], []])
def test_compile_reaches_the_pairs_unet(capsys, tmp_path, monkeypatch, text_to_image_model_dir, flag):
    """`ip2p world paper --compile` draws the pairs with the compiled UNet, and without the flag with
    the UNet as loaded (the run is stopped at the pairs stage)."""
    from test_cli import run

    from instruct_pix2pix.data import image_pairs
    from instruct_pix2pix.loading.bundle import ModelBundle

    compiled, drawn_with = [], []
    monkeypatch.setattr(ModelBundle, "compiled", lambda self: compiled.append(replace(self)) or compiled[-1])

    def stop(edits, output, model, *args, **kwargs):
        drawn_with.append(model)
        raise UserError("stopped after the text stage")

    monkeypatch.setattr(image_pairs, "make_pairs", stop)
    args = ["world", "paper", "-o", tmp_path / "paper", "--text-to-image", text_to_image_model_dir, "--captions", "2",
            "--no-progress", *flag]  # fmt: skip
    code, _, err = run(capsys, *args)
    assert code == 2 and "stopped after the text stage" in err and len(drawn_with) == 1
    assert len(compiled) == len(flag) and all(drawn_with[0] is bundle for bundle in compiled)
