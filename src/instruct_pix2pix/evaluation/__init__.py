"""`ip2p evaluate`: measure an editing model the paper's way, with its baselines.

    run_evaluation(output, model=..., data=...)    # the whole command: check, sweep, report

Modules: sweep (points, methods, the resumable sweep), examples (a dataset's split or the small
world's held-out edits), report (table, the paper's plot, contact sheet). The metrics themselves
are `instruct_pix2pix.metrics`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path

from instruct_pix2pix.errors import UserError
from instruct_pix2pix.evaluation.examples import dataset_examples, world_examples
from instruct_pix2pix.evaluation.report import RESULTS, format_table, write_report
from instruct_pix2pix.evaluation.sweep import (
    CONTACT_EXAMPLES,
    IMAGE_GUIDANCE,
    SETTINGS,
    STRENGTHS,
    TEXT_GUIDANCE,
    Example,
    Methods,
    Point,
    Scorers,
    run_sweep,
    sweep_points,
)
from instruct_pix2pix.settings import EditSettings

SMALL_WORLD_DATA = "small world (held-out edits)"

__all__ = [
    "CONTACT_EXAMPLES", "IMAGE_GUIDANCE", "RESULTS", "SETTINGS", "STRENGTHS", "TEXT_GUIDANCE", "Example", "Methods",
    "Point", "Scorers", "dataset_examples", "format_table", "run_evaluation", "run_sweep",
    "sweep_points", "world_examples", "write_report",
]  # fmt: skip


def run_evaluation(
    output: str | Path,
    *,
    model: str | None = None,
    config: str | None = None,
    data: str | None = None,
    split: str = "test",
    num_samples: int = 100,
    held_out_wording: bool = False,
    text_guidance: Sequence[float] = TEXT_GUIDANCE,
    image_guidance: Sequence[float] = IMAGE_GUIDANCE,
    strengths: Sequence[float] = STRENGTHS,
    settings: EditSettings = SETTINGS,
    seed: int = 0,
    baseline_model: str | None = None,
    clip: str | None = None,
    clip_resize: str = "processor",
    target_clip: str | None = None,
    dino: str | None = None,
    batch_size: int = 8,
    device: str = "auto",
    dtype: str | None = None,
    compile: bool = False,
    contact: int = CONTACT_EXAMPLES,
    overwrite: bool = False,
    progress: bool = True,
    command: Sequence[str] = (),
) -> str:
    """Check everything, sweep, report; returns the table and the files written, as text.

    Without `data` the examples are the small world's held-out edits (with their exact ground
    truth); without `baseline_model` there SDEdit runs on the small world's text-to-image model
    when the package ships one. `compile` runs the editor's and the baseline's UNets under torch.compile."""
    from instruct_pix2pix.editing import Editor, pick_device, pick_dtype
    from instruct_pix2pix.loading import TEXT_TO_IMAGE, load_model
    from instruct_pix2pix.loading.sources import DEFAULT_TEXT_TO_IMAGE
    from instruct_pix2pix.metrics import ClipScorer, DinoScorer

    output = Path(output)
    if output.exists() and not output.is_dir():
        raise UserError(f"{output} is a file; give a folder for the sweep's results")
    if data is None and split != "test":
        raise UserError("--split goes with --data; the small world's evaluation edits are its held-out test split")
    if data is not None and held_out_wording:
        raise UserError("--held-out-wording is for the small world's edits; leave it out with --data")
    if data is None and baseline_model is None and (DEFAULT_TEXT_TO_IMAGE / "model_index.json").is_file():
        baseline_model = str(DEFAULT_TEXT_TO_IMAGE)
    device = pick_device(device)
    torch_dtype = pick_dtype(dtype, device)

    # Everything is loaded and read before anything is written.
    editor_model = load_model(model, dtype=torch_dtype, config=config)
    baseline = load_model(baseline_model, kind=TEXT_TO_IMAGE, dtype=torch_dtype) if baseline_model else None
    if compile:
        editor_model, baseline = editor_model.compiled(), baseline and baseline.compiled()
    editor = Editor.for_model(editor_model, device)
    scorers = Scorers(ClipScorer.from_pretrained(clip, resize=clip_resize, device=device))
    if target_clip:
        scorers.target_clip = ClipScorer.from_pretrained(target_clip, resize=clip_resize, device=device)
    if dino:
        scorers.dino = DinoScorer.from_pretrained(dino, device=device)
    if data is None:
        examples = world_examples(num_samples, held_out=held_out_wording)
    else:
        examples = dataset_examples(data, split=split, count=num_samples, seed=seed)
    methods = Methods(editor, settings, baseline=baseline, seed=seed, batch_size=batch_size, device=device)
    points = sweep_points(text_guidance, image_guidance, strengths, sdedit=baseline is not None)
    steps = methods.settings.num_inference_steps
    idle = [point.strength for point in points if point.strength is not None and int(steps * point.strength) < 1]
    if idle:  # diffusers' img2img runs int(steps * strength) steps, and fails on none
        least = math.ceil(1 / min(idle))
        raise UserError(f"SDEdit at strength {min(idle):g} with {steps} steps runs no denoising step; "
                        f"give at least --steps {least} or larger strengths (--strength)")  # fmt: skip

    record = {
        "model": editor.model.source, "config": config, "data": data or SMALL_WORLD_DATA,
        "split": split, "held_out_wording": held_out_wording if data is None else None,
        "num_samples": len(examples), "examples": examples_hash(examples), "seed": seed,
        "steps": methods.settings.num_inference_steps, "scheduler": methods.settings.scheduler,
        "negative_prompt": methods.settings.negative_prompt, "resolution": methods.settings.resolution,
        "keep_size": methods.settings.keep_size, "dtype": str(torch_dtype).removeprefix("torch."),
        "baseline_model": baseline.source if baseline else None, "clip": str(clip or "small world CLIP"),
        "clip_resize": clip_resize, "target_clip": target_clip, "dino": dino,
    }  # fmt: skip
    done = run_sweep(output, examples, points, methods, scorers, record=record, overwrite=overwrite,
                     progress=progress, contact=contact)  # fmt: skip
    rows = write_report(output, points, done, examples, record, command or ["ip2p", "evaluate", "-o", str(output)],
                        contact=contact)  # fmt: skip
    notes = []
    if len(examples) < num_samples:
        notes.append(f"note: the split has {len(examples)} usable examples, fewer than the {num_samples} asked for")
    if data is None and baseline is None:
        notes.append("note: no SDEdit baseline: the package ships no small-world text-to-image model yet "
                     "(give one with --baseline-model)")  # fmt: skip
    written = ", ".join(str(output / name) for name in RESULTS)
    return "\n".join([format_table(rows), "", *notes, f"written: {written}"])


def examples_hash(examples: Sequence[Example]) -> str:
    """Which examples, in which order: a rerun must edit the same ones to go on."""
    text = "\n".join(f"{e.key}\t{e.instruction}\t{e.input_caption}\t{e.edited_caption}" for e in examples)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
