"""A guidance sweep: every example of a dataset edited at every point, each output scored.

    examples (a dataset's split, or the small world's held-out edits)
      -> for each point (InstructPix2Pix at an image guidance scale, SDEdit at a strength, the input unchanged)
           edit the examples in batches -> CLIP similarities (metrics.py), MagicBrush's metrics against
           the target, and in the small world the ground truth
      -> DIR/points/NAME.json, one file per finished point, written atomically

A killed sweep keeps the points it finished; the same command again goes on with the rest
(`DIR/sweep.json` holds what the results depend on, and another sweep's folder is refused).
`report.py` turns the points into tables, the paper's plot and a contact sheet.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from instruct_pix2pix.atomic import check_job_folder, write_json
from instruct_pix2pix.images import DEFAULT_MAX_PIXELS, DEFAULT_MAX_WORK_PIXELS, save_png
from instruct_pix2pix.metrics import ClipScorer, DinoScorer, similarities, target_metrics
from instruct_pix2pix.settings import (
    SWEEP_IMAGE_GUIDANCE,
    SWEEP_SETTINGS,
    SWEEP_STRENGTHS,
    SWEEP_TEXT_GUIDANCE,
    EditSettings,
    make_scheduler,
)

# The paper's sweep: in settings.py, which the CLI reads before any heavy import.
TEXT_GUIDANCE, IMAGE_GUIDANCE, STRENGTHS, SETTINGS = (
    SWEEP_TEXT_GUIDANCE,
    SWEEP_IMAGE_GUIDANCE,
    SWEEP_STRENGTHS,
    SWEEP_SETTINGS,
)
CONTACT_EXAMPLES = 4  # outputs kept per point for the contact sheet
POINTS = "points"
MANIFEST = "sweep.json"

EDITOR, UNCHANGED = "instruct-pix2pix", "unchanged"
SDEDIT_CAPTION, SDEDIT_INSTRUCTION = "sdedit-caption", "sdedit-instruction"  # SDEdit prompted with either
CURVES = {EDITOR: "InstructPix2Pix", SDEDIT_CAPTION: "SDEdit (edited caption)",
          SDEDIT_INSTRUCTION: "SDEdit (instruction)", UNCHANGED: "input unchanged"}  # fmt: skip


@dataclass
class Example:
    """One edit to make: the input (original size), what to ask, and what is known of the answer."""

    input_image: Image.Image
    instruction: str
    input_caption: str
    edited_caption: str
    key: str
    target: Image.Image | None = None  # the right edited image, where the dataset has one
    world_edit: object | None = None  # the small world's exact edit (ground truth), for its examples


@dataclass(frozen=True)
class Point:
    """One point of the sweep: a method and its scale."""

    method: str
    text_guidance: float
    image_guidance: float | None = None  # InstructPix2Pix
    strength: float | None = None  # SDEdit

    @property
    def scale(self) -> float | None:
        return self.image_guidance if self.method == EDITOR else self.strength

    @property
    def curve(self) -> str:
        """The plot's label of the curve the point is on."""
        if self.method == EDITOR:
            return f"{CURVES[EDITOR]}, text guidance {self.text_guidance:g}"
        return CURVES[self.method]

    @property
    def name(self) -> str:
        """A file name: e.g. instruct-pix2pix_text-7.5_image-1.2."""
        parts = [self.method]
        if self.method != UNCHANGED:
            parts.append(f"text-{self.text_guidance:g}")
        if self.image_guidance is not None:
            parts.append(f"image-{self.image_guidance:g}")
        if self.strength is not None:
            parts.append(f"strength-{self.strength:g}")
        return "_".join(parts)


def sweep_points(text_guidance: Sequence[float] = TEXT_GUIDANCE, image_guidance: Sequence[float] = IMAGE_GUIDANCE,
                 strengths: Sequence[float] = STRENGTHS, *, sdedit: bool = False,
                 unchanged: bool = True) -> list[Point]:  # fmt: skip
    """The points in order: the editor at each (text, image) scale, SDEdit at each strength (at the
    first text scale) with the edited caption and with the instruction as prompt, the input unchanged."""
    points = [Point(EDITOR, float(t), image_guidance=float(s)) for t in text_guidance for s in image_guidance]
    if sdedit:
        for method in (SDEDIT_CAPTION, SDEDIT_INSTRUCTION):
            points += [Point(method, float(text_guidance[0]), strength=float(s)) for s in strengths]
    if unchanged:
        points.append(Point(UNCHANGED, float(text_guidance[0])))
    return points


# --- the methods ----------------------------------------------------------------------------------


class Methods:
    """Makes the outputs of a point for a batch of examples: the editor, SDEdit through diffusers'
    StableDiffusionImg2ImgPipeline on a text-to-image model (`baseline`), or the input unchanged.
    Every example of a batch gets a generator seeded with `seed`, as the reference does."""

    def __init__(self, editor, settings: EditSettings = SETTINGS, *, baseline=None, seed: int = 0,
                 batch_size: int = 8, device="cpu"):  # fmt: skip
        self.editor, self.settings, self.baseline = editor, editor.resolve(settings), baseline
        self.seed, self.batch_size, self.device = seed, batch_size, device
        self._img2img = None

    def prepare(self, image: Image.Image) -> Image.Image:
        """The input as the editor sees it (resized to the working size); the metrics and SDEdit use it too."""
        return self.editor.prepare_image(image, self.settings, DEFAULT_MAX_PIXELS, DEFAULT_MAX_WORK_PIXELS)

    def __call__(self, point: Point, examples: Sequence[Example], inputs: Sequence[Image.Image]) -> list[Image.Image]:
        if point.method == UNCHANGED:
            return list(inputs)
        if point.method == EDITOR:
            settings = self.settings.replace(guidance_scale=point.text_guidance,
                                             image_guidance_scale=point.image_guidance)  # fmt: skip
            result = self.editor.edit([e.input_image for e in examples], [e.instruction for e in examples], settings,
                                      seed=self.seed, batch_size=self.batch_size, show_progress=False)  # fmt: skip
            return result.images
        prompts = [e.edited_caption if point.method == SDEDIT_CAPTION else e.instruction for e in examples]
        return self.sdedit(list(inputs), prompts, point)

    @torch.inference_mode()
    def sdedit(self, images: list[Image.Image], prompts: list[str], point: Point) -> list[Image.Image]:
        from instruct_pix2pix.editing import evaluating
        from instruct_pix2pix.loading import diffusers_pipeline

        model = self.baseline
        if self._img2img is None:
            self._img2img = diffusers_pipeline(model, img2img=True).to(self.device)
            self._img2img.set_progress_bar_config(disable=True)
        pipe = self._img2img
        pipe.scheduler = make_scheduler(self.settings.scheduler, model.scheduler_config)
        outputs: list[Image.Image | None] = [None] * len(images)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            by_size.setdefault(image.size, []).append(i)
        with evaluating(model.unet, model.vae, model.text_encoder):
            for indices in by_size.values():
                generators = [torch.Generator("cpu").manual_seed(self.seed) for _ in indices]
                made = pipe(prompt=[prompts[i] for i in indices], image=[images[i] for i in indices],
                            strength=point.strength, guidance_scale=point.text_guidance,
                            num_inference_steps=self.settings.num_inference_steps, generator=generators,
                            negative_prompt=None if self.settings.negative_prompt is None
                            else [self.settings.negative_prompt] * len(indices)).images  # fmt: skip
                for i, image in zip(indices, made):
                    outputs[i] = image
        return outputs


# --- the sweep ------------------------------------------------------------------------------------


@dataclass
class Scorers:
    clip: ClipScorer
    target_clip: ClipScorer | None = None  # CLIP-I / CLIP-T against the target (default: `clip`)
    dino: DinoScorer | None = None


@dataclass
class Prepared:
    """What every point shares: the inputs at their working size and the features that do not change."""

    inputs: list[Image.Image]
    input_features: torch.Tensor
    input_text: torch.Tensor
    edited_text: torch.Tensor
    target_features: torch.Tensor | None = None
    wrong_answers: list = field(default_factory=list)  # the small world: renderings of wrong answers per example


def prepare(examples: Sequence[Example], methods: Methods, scorers: Scorers) -> Prepared:
    inputs = [methods.prepare(e.input_image) for e in examples]
    clip = scorers.clip
    prepared = Prepared(inputs, clip.image_features(inputs), clip.text_features([e.input_caption for e in examples]),
                        clip.text_features([e.edited_caption for e in examples]))  # fmt: skip
    if all(e.target is not None for e in examples):
        prepared.target_features = (scorers.target_clip or clip).image_features([e.target for e in examples])
    if all(e.world_edit is not None for e in examples):
        from instruct_pix2pix.small_world.evaluate import alternatives
        from instruct_pix2pix.small_world.scenes import render

        prepared.wrong_answers = [[render(s, e.target.width) for s in alternatives(e.world_edit)] for e in examples]
    return prepared


def score(outputs: list[Image.Image], examples: Sequence[Example], prepared: Prepared, scorers: Scorers,
          rows: slice) -> dict[str, np.ndarray]:  # fmt: skip
    """Every metric of each output; `rows` says which examples (and prepared features) they belong to."""
    features = scorers.clip.image_features(outputs)
    values = similarities(prepared.input_features[rows], features, prepared.input_text[rows],
                          prepared.edited_text[rows])  # fmt: skip
    if prepared.target_features is not None:
        target_clip = scorers.target_clip or scorers.clip
        values |= target_metrics(
            outputs, [e.target for e in examples], [e.edited_caption for e in examples], clip=target_clip,
            dino=scorers.dino, target_features=prepared.target_features[rows],
            output_features=features if target_clip is scorers.clip else None,
        )  # fmt: skip
    if prepared.wrong_answers:
        values |= world_truth(outputs, examples, prepared.wrong_answers[rows])
    return values


def world_truth(outputs, examples, wrong_answers) -> dict[str, np.ndarray]:
    """The small world's ground truth: the pixel-level success of `ip2p world evaluate`, and whether
    the scene reader reads the output as exactly the asked-for scene."""
    from instruct_pix2pix.small_world.evaluate import score_edit
    from instruct_pix2pix.small_world.reader import read_scene

    success, read_right = [], []
    for output, example, others in zip(outputs, examples, wrong_answers):
        target = example.target
        if output.size != target.size:
            output = output.resize(target.size, Image.Resampling.BICUBIC)
        # The input and the target are exact renderings of the same size.
        success.append(score_edit(output, example.input_image, target, others).success)
        read_right.append(read_scene(output) == example.world_edit.after)
    return {"success": np.array(success, dtype=np.float64), "read_right": np.array(read_right, dtype=np.float64)}


def run_sweep(output: str | Path, examples: Sequence[Example], points: Sequence[Point], methods: Methods,
              scorers: Scorers, *, record: dict, overwrite: bool = False, progress: bool = True,
              contact: int = CONTACT_EXAMPLES) -> dict[Point, dict]:  # fmt: skip
    """Edit and score every example at every point not finished yet; returns each point's stored
    result ({"values": metric -> per-example list, ...}). `record` is what the results depend on."""
    from tqdm.auto import tqdm

    output = Path(output)
    check_job_folder(output, MANIFEST, record, what="sweep", overwrite=overwrite)
    if overwrite and output.exists():
        shutil.rmtree(output / POINTS, ignore_errors=True)
    write_json(output / MANIFEST, record)
    done = {point: load_point(output, point) for point in points}
    todo = [point for point in points if done[point] is None]
    bar = tqdm(total=len(todo) * len(examples), desc="evaluating", unit="edit", disable=not progress)
    with bar:
        if todo:
            bar.set_postfix_str("preparing")
            prepared = prepare(examples, methods, scorers)
        for point in todo:
            bar.set_postfix_str(point.name)
            values: dict[str, list[float]] = {}
            kept: list[Image.Image] = []
            for start in range(0, len(examples), methods.batch_size):
                rows = slice(start, start + methods.batch_size)
                outputs = methods(point, examples[rows], prepared.inputs[rows])
                for name, array in score(outputs, examples[rows], prepared, scorers, rows).items():
                    values.setdefault(name, []).extend(float(v) for v in array)
                kept += outputs[: max(0, contact - len(kept))]
                bar.update(len(outputs))
            done[point] = save_point(output, point, values, kept, [e.key for e in examples])
    return done


def point_file(output: Path, point: Point) -> Path:
    return output / POINTS / f"{point.name}.json"


def save_point(output: Path, point: Point, values: dict, kept: list[Image.Image], keys: list[str]) -> dict:
    """The kept outputs first, then the point's JSON: the JSON exists only once all of it does."""
    folder = output / POINTS / point.name
    for i, image in enumerate(kept):
        save_png(image, folder / f"{i}.png")
    stored = {"point": asdict(point), "keys": keys, "values": values, "kept": len(kept)}
    write_json(point_file(output, point), stored)
    return stored


def load_point(output: Path, point: Point) -> dict | None:
    path = point_file(output, point)
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def kept_outputs(output: Path, point: Point, stored: dict) -> list[Image.Image]:
    folder = output / POINTS / point.name
    return [Image.open(folder / f"{i}.png").convert("RGB") for i in range(stored.get("kept", 0))]
