"""The whole paper, end to end, in the small world, measured against its exact ground truth.

    ip2p world paper -o runs/paper --text-to-image runs/default/t2i/model     (= make paper)

1. captions  captions of training scenes (the world's LAION)
2. edits     the world's language model writes an instruction and an edited caption for each
             (the text stage, `data.edit_text.write_edits`)
3. pairs     Prompt-to-Prompt pairs from the world's text-to-image model, filtered by CLIP
             (`data.image_pairs.make_pairs`); every candidate is also read back by the scene reader,
             so candidates.jsonl says which pairs are right before the filter
4. exact     the same edits rendered exactly (where both captions parse): the comparison arm
5. editors   two editors fine-tuned from the text-to-image model at equal compute, on the generated
             pairs and on the exact ones (`ip2p train configs/small-world.yaml`)
6. evaluate  `ip2p world evaluate` for both
7. report    report.json and report.md: the pairs against the ground truth (right before and after
             the filter, the filter's precision and what it drops, by p and by guidance scale) and
             the two editors

Every stage is resumable (the text and image stages go on where they stopped, the trainings from
their checkpoints) and is skipped once its result is there; a rerun with more --editor-steps trains
both editors on from their checkpoints and evaluates them again (evaluate-NAME-STEPS).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from instruct_pix2pix.atomic import write_json, write_text
from instruct_pix2pix.errors import UserError

P_BINS = (0.1, 0.3, 0.5, 0.7, 0.9)
GUIDANCE_BINS = (7.5, 10.0, 12.5, 15.0)


def training_captions(count: int) -> list[str]:
    """Captions of `count` training scenes, each from its own seed."""
    from instruct_pix2pix.small_world.edits import edit_rng
    from instruct_pix2pix.small_world.scenes import caption, sample_scene

    return [caption(sample_scene(edit_rng("paper", i))) for i in range(count)]


def judge_pairs(edit: dict, pairs) -> list[dict]:
    """For make_pairs: each candidate read back against the scenes its two captions describe."""
    from instruct_pix2pix.small_world.language import parse_caption
    from instruct_pix2pix.small_world.reader import read_scene

    wanted = parse_caption(edit["input"]), parse_caption(edit["output"])
    rows = []
    for first, second in pairs:
        right = [wanted[k] is not None and read_scene(image) == wanted[k] for k, image in enumerate((first, second))]
        rows.append({"first_right": right[0], "second_right": right[1], "right": right[0] and right[1]})
    return rows


def candidate_rows(pairs_dir: Path) -> list[dict]:
    rows = []
    for path in sorted(Path(pairs_dir).glob("[0-9]*/candidates.jsonl")):
        rows += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows


def _share(rows, key="right") -> float | None:
    return float(np.mean([bool(r[key]) for r in rows])) if rows else None


def pair_report(rows: list[dict]) -> dict:
    """The pairs against the ground truth: right before and after the filter, and by p and guidance."""
    if not rows or "right" not in rows[0]:
        raise UserError("no judged candidates: run the pairs stage with the scene reader (ip2p world paper)")
    kept = [r for r in rows if r["kept"]]
    right = [r for r in rows if r["right"]]

    def binned(key: str, edges) -> list[dict]:
        out = []
        for low, high in zip(edges, edges[1:]):
            part = [r for r in rows if low <= r[key] < high or (high == edges[-1] and r[key] == high)]
            kept_part = [r for r in part if r["kept"]]
            out.append({"from": low, "to": high, "candidates": len(part), "right": _share(part),
                        "kept": _share(part, "kept"), "right_when_kept": _share(kept_part)})  # fmt: skip
        return out

    return {
        "candidates": len(rows),
        "kept": len(kept),
        "right_before_filter": _share(rows),
        "right_after_filter": _share(kept),  # the filter's precision
        "right_dropped_by_filter": (sum(not r["kept"] for r in right) / len(right)) if right else None,
        "first_right": _share(rows, "first_right"),
        "second_right": _share(rows, "second_right"),
        "by_p": binned("p2p_threshold", P_BINS),
        "by_guidance": binned("cfg_scale", GUIDANCE_BINS),
    }


def text_stage_right(edits_file: Path) -> float | None:
    """The share of the text stage's edits that the world's grammar says are right (the instruction,
    applied to the input caption's scene, gives the edited caption): what both editors learn from."""
    from instruct_pix2pix.data.triples import read_triples
    from instruct_pix2pix.small_world.language import check_triple

    rights = [check_triple(triple).right for triple in read_triples(edits_file)]
    return sum(rights) / len(rights) if rights else None


def write_exact_pairs(edits_file: Path, output: Path) -> int:
    """The text stage's edits rendered exactly, where both captions parse (the comparison arm)."""
    from instruct_pix2pix.data.base import EditExample
    from instruct_pix2pix.data.triples import read_triples
    from instruct_pix2pix.data.writers import write_reference_folder
    from instruct_pix2pix.small_world.language import parse_caption
    from instruct_pix2pix.small_world.scenes import render

    examples = []
    for edit in read_triples(edits_file):
        before, after = parse_caption(edit["input"]), parse_caption(edit["output"])
        if before is not None and after is not None and before != after:
            examples.append(EditExample(render(before), render(after), edit["edit"], edit["input"], edit["output"]))
    if not examples:
        raise UserError(f"none of the edits in {edits_file} has two captions of the world")
    return write_reference_folder(examples, output)


def run_paper(
    work: str | Path,
    text_to_image: str | Path,
    *,
    captions: int = 1000,
    candidates: int = 8,
    steps: int = 20,
    keep: int = 4,
    editor_steps: int = 1000,
    editor_batch_size: int = 32,
    per_kind: int = 20,
    batch_size: int = 16,
    clip_filter=None,
    compile: bool = False,
    progress: bool = True,
) -> dict:
    """Run every stage under `work` not done yet; returns the report. `clip_filter`: the paper's
    (`image_pairs.ClipFilter` with `keep`) unless given; `compile`: the pairs' UNet under
    `torch.compile` (`ModelBundle.compiled`)."""
    from instruct_pix2pix.data.captions import Caption
    from instruct_pix2pix.data.edit_text import write_edits
    from instruct_pix2pix.data.image_pairs import ClipFilter, PairSettings, make_pairs
    from instruct_pix2pix.data.language_model import LocalLM
    from instruct_pix2pix.editing import Editor, evaluating
    from instruct_pix2pix.loading import TEXT_TO_IMAGE, load_model
    from instruct_pix2pix.metrics import ClipScorer
    from instruct_pix2pix.small_world.evaluate import SETTINGS, run_evaluation
    from instruct_pix2pix.small_world.language import DEFAULT_LANGUAGE_MODEL
    from instruct_pix2pix.small_world.recipe import CONFIGS
    from instruct_pix2pix.training.checkpoints import latest_step
    from instruct_pix2pix.training.config import load_config
    from instruct_pix2pix.training.trainer import train

    work, text_to_image = Path(work), Path(text_to_image)
    if not (text_to_image / "model_index.json").is_file():
        raise UserError(f"no text-to-image model in {text_to_image}; give --text-to-image, a diffusers folder "
                        "(ip2p world train-default makes one in runs/default/t2i/model)")  # fmt: skip
    work.mkdir(parents=True, exist_ok=True)
    caption_file = work / "captions.txt"
    if not caption_file.exists():
        write_text(caption_file, "\n".join(training_captions(captions)) + "\n")
    texts = caption_file.read_text(encoding="utf-8").splitlines()

    edits_file = work / "edits.jsonl"
    stats = write_edits([Caption(t) for t in texts], edits_file, LocalLM(DEFAULT_LANGUAGE_MODEL, device="cpu"),
                        progress=progress)  # fmt: skip

    from instruct_pix2pix.data.triples import read_triples

    pairs_dir = work / "pairs"
    model = load_model(text_to_image, kind=TEXT_TO_IMAGE)
    model = model.compiled() if compile else model
    with evaluating(model.unet, model.vae, model.text_encoder):
        make_pairs(read_triples(edits_file), pairs_dir, model, ClipScorer.from_pretrained(),
                   settings=PairSettings(steps=steps, candidates=candidates),
                   clip_filter=clip_filter or ClipFilter(keep=keep), record={"model": str(text_to_image)},
                   batch_size=batch_size, progress=progress, judge=judge_pairs)  # fmt: skip
    pairs = pair_report(candidate_rows(pairs_dir))

    exact_dir = work / "exact"
    if not (exact_dir / "seeds.json").exists():
        write_exact_pairs(edits_file, exact_dir)

    editors = {}
    for name, data in (("generated", pairs_dir), ("exact", exact_dir)):
        output = work / f"editor-{name}"
        done = latest_step(output)
        if done > editor_steps:
            raise UserError(f"{output} is trained {done} steps, more than the {editor_steps} asked; give "
                            "--editor-steps at least that (a longer run goes on), or another work folder")  # fmt: skip
        if done < editor_steps or not (output / "model" / "model_index.json").exists():
            overrides = [f"pretrained_model_name_or_path={text_to_image}", "from_scratch=none", f"train_data={data}",
                         f"output_dir={output}", "resume_from_checkpoint=latest", f"max_train_steps={editor_steps}",
                         f"train_batch_size={editor_batch_size}", "validation_steps=0"]  # fmt: skip
            train(load_config(CONFIGS / "small-world.yaml", overrides), show_progress=progress)
        evaluation = work / f"evaluate-{name}-{editor_steps}"  # each length its own: a longer run adds a point
        if not (evaluation / "results.json").exists():
            run_evaluation(Editor.from_pretrained(output / "model", device="cpu"), evaluation, SETTINGS,
                           per_kind=per_kind)  # fmt: skip
        rows = [r for r in json.loads((evaluation / "results.json").read_text(encoding="utf-8"))["rows"]
                if r["method"] == "model"]  # fmt: skip
        editors[name] = {
            "training examples": sum(1 for _ in Path(data).glob("[0-9]*/*_0.jpg")),
            "edits": sum(1 for folder in Path(data).glob("[0-9]*") if any(folder.glob("*_0.jpg"))),
            **{f"{r['phrasing']} wording": r["success"] for r in rows if r["kind"] == "all"},
            "by kind": {r["kind"]: r["success"] for r in rows if r["phrasing"] == "training" and r["kind"] != "all"},
        }

    report = {
        "captions": len(texts),
        "text_stage": {"kept": stats["kept"], "skipped": stats["skipped"], "right": text_stage_right(edits_file)},
        "pairs": pairs,
        "editors": editors,
        "settings": {"candidates": candidates, "steps": steps, "keep": keep, "editor_steps": editor_steps,
                     "editor_batch_size": editor_batch_size, "text_to_image": str(text_to_image)},
    }  # fmt: skip
    write_json(work / "report.json", report)
    write_text(work / "report.md", format_report(report) + "\n")
    return report


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def format_report(report: dict) -> str:
    kinds = list(dict.fromkeys(k for s in report["editors"].values() for k in s.get("by kind", {})))
    p, text = report["pairs"], report["text_stage"]
    lines = [
        f"text stage: {text['kept']} edits written, {text['skipped']} captions skipped; right (the instruction "
        f"applied to the input scene gives the edited caption) {_percent(text.get('right'))}",
        "",
        f"pairs: {p['candidates']} candidates, {p['kept']} kept; right before the filter "
        f"{_percent(p['right_before_filter'])} (first image {_percent(p['first_right'])}, second "
        f"{_percent(p['second_right'])}), after it {_percent(p['right_after_filter'])}; right pairs the filter "
        f"dropped {_percent(p['right_dropped_by_filter'])}",
        "",
        "| p | candidates | right | kept | right when kept |",
        "|---|---|---|---|---|",
        *(f"| {b['from']:g}-{b['to']:g} | {b['candidates']} | {_percent(b['right'])} | {_percent(b['kept'])} | "
          f"{_percent(b['right_when_kept'])} |" for b in p["by_p"]),
        "",
        "| text guidance | candidates | right | kept | right when kept |",
        "|---|---|---|---|---|",
        *(f"| {b['from']:g}-{b['to']:g} | {b['candidates']} | {_percent(b['right'])} | {_percent(b['kept'])} | "
          f"{_percent(b['right_when_kept'])} |" for b in p["by_guidance"]),
        "",
        "| editor trained on | edits / pairs | success, training wording | success, held-out wording |",
        "|---|---|---|---|",
        *(f"| {name} pairs | {s.get('edits', '-')} / {s.get('training examples', '-')} | "
          f"{_percent(s.get('training wording'))} | {_percent(s.get('held-out wording'))} |"
          for name, s in report["editors"].items()),
        "",
        "| editor trained on | " + " | ".join(kinds) + " |",
        "|---|" + "---|" * len(kinds),
        *(f"| {name} pairs | " + " | ".join(_percent(s["by kind"].get(k)) for k in kinds) + " |"
          for name, s in report["editors"].items()),
    ]  # fmt: skip
    return "\n".join(lines)
