"""Measure editing against the small world's exact ground truth.

For every edit we know the input, the instruction and the exactly rendered result. An edit
succeeds when the pixels the edit should change moved to their new values, the pixels it should
keep stayed, and the output is nearer the asked-for result than any wrong answer (`alternatives`):
recolouring the wrong object, drawing a square where a circle was asked, losing an object on the
way to night, or redrawing the whole picture, fails.

The first two checks look inside shapes and backgrounds, not at their one-pixel antialiased
outlines: a latent editor redraws every outline through its VAE (4x4 pixels per latent), and
whether an outline pixel lands within a tenth of its exact value says nothing about whether the edit
was right. When outlines counted, the exact ground truth passed through the default model's VAE
often failed on its redrawn outlines alone; under these rules, what still fails is what the VAE
really gets wrong (pink on a light background fades nearly away, small shapes blur into blobs).
And exact renderings of wrong edits of the same kind then sometimes passed (a small square drawn
for a small circle differs from it only at outlines); now none does. Measured figures: README,
'The small world'.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from instruct_pix2pix.atomic import write_text
from instruct_pix2pix.errors import UserError
from instruct_pix2pix.settings import EditSettings
from instruct_pix2pix.small_world.edits import KINDS, WorldEdit, make_edit, sample_edits
from instruct_pix2pix.small_world.reader import field_errors, read_scene
from instruct_pix2pix.small_world.scenes import COLOURS, DEFAULT_SIZE, SHAPES, SIZES, Scene, caption, render

FLAT = 0.1  # a pixel is inside a shape or background when its 3x3 neighbourhood varies by less than this
CHANGED = 0.1  # a pixel belongs to the edited region when the edit moves some channel more than this
CLOSE = 0.3  # a pixel of the edited region is right when its distance to the target is under this share of the edit's
TOWARD = 0.75  # success: at least this share of the edited region is right
DISTURBED = 0.1  # a kept pixel counts as disturbed when it moved more than this (mean over channels) ...
MAX_DISTURBED = 0.01  # ... and success allows at most this share of disturbed kept pixels
ALTERNATIVES = 32  # draws of other edits of the same kind that an output must be further from than from its target
EVALUATION_SPLIT = "test"  # scenes from seeds that training data never uses ("train")
WORDINGS = ("training", "held-out")  # the instructions' wording: seen in training, or held out of it
PER_KIND = 40  # held-out scenes of each edit kind an editor is evaluated on (the README's figures)
CAPTIONS = 200  # held-out captions a text-to-image model is evaluated on


def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def edited_region(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return np.abs(after - before).max(axis=-1) > CHANGED


def _flat(image: np.ndarray) -> np.ndarray:
    """Pixels inside a shape or a background: their 3x3 neighbourhood is one colour (within FLAT)."""
    height, width = image.shape[:2]
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
    around = np.stack([padded[i : i + height, j : j + width] for i in range(3) for j in range(3)])
    return (around.max(axis=0) - around.min(axis=0)).max(axis=-1) < FLAT


def _grow(mask: np.ndarray) -> np.ndarray:
    """The mask and its 8 neighbours: antialiased borders of the edited region are not 'kept' pixels."""
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    grown[:, 1:] |= grown[:, :-1].copy()
    grown[:, :-1] |= grown[:, 1:].copy()
    return grown


# What an instruction of each kind names about the objects it creates or changes; a wrong value of
# any of these is a wrong answer (the other attributes are checked by "nothing else changed").
ASKED = {"recolor": ("colour",), "reshape": ("shape",), "add": ("colour", "shape", "size", "cell"),
         "count": ("colour", "shape", "size"), "move": ("cell",)}  # fmt: skip


def alternatives(edit: WorldEdit, draws: int = ALTERNATIVES) -> list[Scene]:
    """Wrong answers to `edit`: other edits of its kind on the same scene (another object, colour,
    direction, background, ...), the asked-for result with another value of what the instruction
    asks for (ASKED), and the asked-for result with an object missing (a "make it night" that loses
    the objects). Distinct, and neither the target nor the input."""
    target = edit.after
    found: dict[Scene, None] = {}
    for draw in range(draws):
        other = make_edit(edit.before, edit.kind, random.Random(f"alternative/{draw}"))
        if other is not None:
            found[other.after] = None
    new = [t for t in target.things if t not in edit.before.things]
    rest = tuple(t for t in target.things if t not in new)
    values = {"colour": COLOURS, "shape": SHAPES, "size": SIZES, "cell": target.free_cells()}
    for attribute in ASKED.get(edit.kind, ()) if new else ():
        for value in values[attribute]:
            if attribute == "cell":  # one object to another free cell
                for index in range(len(new)):
                    moved = tuple(replace(t, cell=value) if i == index else t for i, t in enumerate(new))
                    found[replace(target, things=rest + moved)] = None
            else:  # every new object alike: "add two stars" gives two of one kind
                found[replace(target, things=rest + tuple(replace(t, **{attribute: value}) for t in new))] = None
    found.update({target.replace_thing(thing, None): None for thing in target.things})
    found.pop(target, None)
    found.pop(edit.before, None)
    return list(found)


def _nearer_target(out: np.ndarray, target: np.ndarray, others: Sequence[np.ndarray]) -> bool:
    """Whether `out` is nearer `target` than each of `others` (mean distance where the two differ).

    A tie is not nearer."""
    for other in others:
        where = np.abs(target - other).max(axis=-1) > CHANGED
        if where.any() and np.abs(out - target)[where].mean() >= np.abs(out - other)[where].mean():
            return False
    return True


@dataclass
class EditScore:
    success: bool
    nearest: bool  # nearer the asked-for result than any wrong answer
    toward: float  # share of the edited region (inside shapes) that got (nearly) its target value
    disturbed: float  # share of kept pixels (inside shapes) that moved
    l1: float  # mean |output - target| over the image
    psnr: float  # against the target
    l1_outside: float  # mean |output - input| over kept pixels


def score_edit(output: Image.Image, before: Image.Image, after: Image.Image,
               others: Sequence[Image.Image] = ()) -> EditScore:  # fmt: skip
    """Score `output` for the edit `before` -> `after`; `others` are renderings of wrong answers (see
    `alternatives`) that it must be further from than from `after`."""
    out, b, a = as_array(output), as_array(before), as_array(after)
    if out.shape != a.shape:
        raise ValueError(f"output is {out.shape[1]}x{out.shape[0]}, the ground truth {a.shape[1]}x{a.shape[0]}")
    changed = edited_region(b, a)
    inside = _flat(b) & _flat(a)
    kept = ~_grow(changed) & inside
    if (changed & inside).any():  # an edit of outlines only (a tiny shape) is judged on them
        changed &= inside
    to_target, to_input = np.abs(out - a).mean(axis=-1), np.abs(out - b).mean(axis=-1)
    # Relative to the edit's own size, not merely nearer the target than the input: at night red and
    # brown are close, and purple is nearer blue than orange is.
    right = to_target < CLOSE * np.abs(a - b).mean(axis=-1)
    toward = float(right[changed].mean()) if changed.any() else 1.0
    disturbed = float((to_input[kept] > DISTURBED).mean()) if kept.any() else 0.0
    mse = float(((out - a) ** 2).mean())
    nearest = _nearer_target(out, a, [as_array(o) for o in others])
    return EditScore(
        success=toward >= TOWARD and disturbed <= MAX_DISTURBED and nearest,
        nearest=nearest,
        toward=toward,
        disturbed=disturbed,
        l1=float(np.abs(out - a).mean()),
        psnr=10 * math.log10(1 / max(mse, 1e-10)),
        l1_outside=float(to_input[kept].mean()) if kept.any() else 0.0,
    )


Method = Callable[[list[Image.Image], list[str]], list[Image.Image]]  # inputs, instructions -> outputs


def unchanged(inputs: list[Image.Image], instructions: list[str]) -> list[Image.Image]:
    """The baseline that does nothing: every edit returns its input."""
    return list(inputs)


# The settings the small world's models are measured with when they carry none of their own (about.json):
# the sampler's defaults, with 20 steps.
SETTINGS = EditSettings(num_inference_steps=20)


def model_settings(model) -> EditSettings:
    """The settings a world model is measured with: the world's, then the model's own (about.json)."""
    return SETTINGS.for_model(model)


def editor_method(editor, settings: EditSettings | None = None, *, seed: int = 0, batch_size: int = 64) -> Method:
    """Edits by `editor` with `settings` (default: the model's own, else the world's)."""
    settings = settings or model_settings(editor.model)

    def edit(inputs: list[Image.Image], instructions: list[str]) -> list[Image.Image]:
        return editor.edit(inputs, instructions, settings, seed=seed, batch_size=batch_size, show_progress=False).images

    return edit


def vae_round_trip(vae) -> Method:
    """The best a latent editor can do: the exact ground truth, encoded and decoded by the VAE.
    (Needs the edits themselves, so `evaluate` hands this one the targets instead of the inputs.)"""
    import torch

    from instruct_pix2pix.images import to_pil, to_tensor

    def edit(targets: list[Image.Image], instructions: list[str]) -> list[Image.Image]:
        with torch.inference_mode():
            pixels = to_tensor(targets).to(vae.device, vae.dtype)
            return to_pil(vae.decode(vae.encode(pixels).latent_dist.mode()).sample.float())

    edit.needs_targets = True  # type: ignore[attr-defined]
    return edit


def evaluation_edits(per_kind: int, *, held_out: bool, kinds: Sequence[str] = KINDS) -> list[WorldEdit]:
    """`per_kind` edits of each kind on held-out scenes. The same scenes and edits for training
    and held-out phrasings (the same seeds), so the two differ only in wording."""
    return list(sample_edits(EVALUATION_SPLIT, per_kind * len(kinds), kinds=tuple(kinds), held_out=held_out))


@dataclass
class Row:
    method: str
    phrasing: str  # "training" or "held-out"
    kind: str  # an edit kind, or "all"
    count: int
    success: float
    l1: float
    psnr: float
    l1_outside: float
    read_right: float = 0.0  # share of outputs that the scene reader reads as exactly the asked-for scene


def evaluate(
    methods: dict[str, Method],
    *,
    per_kind: int = 20,
    kinds: Sequence[str] = KINDS,
    size: int = DEFAULT_SIZE,
    chunk: int = 64,
    progress: bool = True,
    phrasings: Sequence[str] = WORDINGS,
) -> tuple[list[Row], dict[str, list[tuple[WorldEdit, Image.Image]]]]:
    """Score every method on each phrasing ("training", "held-out"); returns table rows and, per method
    and phrasing, the (edit, output) pairs for figures. Methods that ignore wording are run once
    (training phrasing)."""
    from tqdm.auto import tqdm

    if unknown := set(phrasings) - set(WORDINGS):
        raise ValueError(f"unknown phrasings {sorted(unknown)}: use {', '.join(WORDINGS)}")

    rows: list[Row] = []
    outputs: dict[str, list[tuple[WorldEdit, Image.Image]]] = {}
    wrong_answers: dict[tuple[Scene, Scene], list[Image.Image]] = {}  # the phrasings share their scenes
    for phrasing in phrasings:
        held_out = phrasing == "held-out"
        edits = evaluation_edits(per_kind, held_out=held_out, kinds=kinds)
        befores = [render(e.before, size) for e in edits]
        afters = [render(e.after, size) for e in edits]
        for e in edits:
            if (e.before, e.after) not in wrong_answers:
                wrong_answers[e.before, e.after] = [render(s, size) for s in alternatives(e)]
        others = [wrong_answers[e.before, e.after] for e in edits]
        for name, method in methods.items():
            if held_out and (method is unchanged or getattr(method, "needs_targets", False)):
                continue  # the wording cannot matter to these
            images = befores if not getattr(method, "needs_targets", False) else afters
            results: list[Image.Image] = []
            for start in tqdm(range(0, len(edits), chunk), desc=f"{name}, {phrasing} phrasings", disable=not progress):
                results += method(images[start : start + chunk], [e.instruction for e in edits[start : start + chunk]])
            scores = [score_edit(*case) for case in zip(results, befores, afters, others)]
            read_right = [read_scene(image) == edit.after for image, edit in zip(results, edits)]
            outputs[f"{name}/{phrasing}"] = list(zip(edits, results))
            by_kind: dict[str, list[tuple[EditScore, bool]]] = defaultdict(list)
            for edit, score, read in zip(edits, scores, read_right):
                by_kind[edit.kind].append((score, read))
            for kind in [*kinds, "all"]:
                group = list(zip(scores, read_right)) if kind == "all" else by_kind[kind]
                fields = ("success", "l1", "psnr", "l1_outside")
                means = [float(np.mean([getattr(s, f) for s, _ in group])) for f in fields]
                rows.append(Row(name, phrasing, kind, len(group), *means, float(np.mean([r for _, r in group]))))
    return rows, outputs


def format_table(rows: list[Row]) -> str:
    """A markdown table: one line per edit kind, one column group per method and phrasing."""
    columns = list(dict.fromkeys((r.method, r.phrasing) for r in rows))
    cell = {(r.method, r.phrasing, r.kind): r for r in rows}
    kinds = list(dict.fromkeys(r.kind for r in rows))
    head = "| kind | " + " | ".join(f"{m} ({p}): success, read right, L1, PSNR, L1 kept" for m, p in columns) + " |"
    lines = [head, "|---" * (len(columns) + 1) + "|"]
    for kind in kinds:
        parts = []
        for m, p in columns:
            r = cell.get((m, p, kind))
            parts.append(
                "" if r is None
                else f"{100 * r.success:.0f}%, {100 * r.read_right:.0f}%, {r.l1:.3f}, {r.psnr:.1f}, {r.l1_outside:.3f}"
            )  # fmt: skip
        label = f"**{kind}**" if kind == "all" else kind
        lines.append(f"| {label} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


def write_json(rows: list[Row], path: str | os.PathLike[str], **extra) -> None:
    write_text(path, json.dumps({**extra, "rows": [asdict(r) for r in rows]}, indent=2))


def example_figure(outputs: dict[str, list[tuple[WorldEdit, Image.Image]]], method: str, *, size: int = DEFAULT_SIZE,
                   scale: int = 2) -> Image.Image:  # fmt: skip
    """One row per edit kind: input, the method's edit with training and held-out wording, ground truth."""
    from instruct_pix2pix.images import image_grid

    seen = {e.kind: (e, img) for e, img in reversed(outputs.get(f"{method}/training", []))}
    held = {e.kind: (e, img) for e, img in reversed(outputs.get(f"{method}/held-out", []))}
    rows, labels = [], []
    for kind, (edit, image) in seen.items():
        other = held.get(kind)
        rows.append([render(edit.before, size), image, other[1] if other else None, render(edit.after, size)])
        labels.append(["", edit.instruction, other[0].instruction if other else "", ""])
    columns = ["input", "edit (training wording)", "edit (held-out wording)", "ground truth"]
    return image_grid(rows, column_labels=columns, row_labels=list(seen), scale=scale, cell_labels=labels,
                      cell_label_lines=4)  # fmt: skip


def run_evaluation(
    editor, output: Path, settings: EditSettings | None = None, *, per_kind: int = PER_KIND, seed: int = 0
) -> str:
    """`ip2p world evaluate`: the model, the do-nothing baseline and the VAE's ceiling, on held-out
    scenes with training and held-out wording; writes results.json, table.md and examples.png."""
    from instruct_pix2pix.images import figure_metadata, save_png

    settings = settings or model_settings(editor.model)
    methods = {"model": editor_method(editor, settings, seed=seed), "unchanged input": unchanged,
               "ground truth via VAE": vae_round_trip(editor.model.vae)}  # fmt: skip
    rows, outputs = evaluate(methods, per_kind=per_kind)
    table = format_table(rows)
    output.mkdir(parents=True, exist_ok=True)
    write_json(
        rows,
        output / "results.json",
        model=editor.model.source,
        per_kind=per_kind,
        split=EVALUATION_SPLIT,
        seed=seed,
        **asdict(settings),
    )
    write_text(output / "table.md", table + "\n")
    command = ["ip2p", "world", "evaluate", "-o", output, "--per-kind", per_kind, *model_words(editor.model)]
    record = {"model": editor.model.source, "per_kind": per_kind, "seed": seed, **asdict(settings)}
    metadata = figure_metadata([*command, *settings.command_words()], **record)
    save_png(example_figure(outputs, "model"), output / "examples.png", metadata)
    return f"{table}\n\nwritten: {output / 'results.json'}, {output / 'table.md'}, {output / 'examples.png'}"


def evaluate_model(source, output: Path, overrides: dict | None = None, *, per_kind: int | None = None,
                   captions: int | None = None, device="auto", config=None) -> str:  # fmt: skip
    """`ip2p world evaluate` on a model (a folder, hub id or file): an editor on held-out scenes
    (`run_evaluation`), a text-to-image model on held-out captions (`run_text_to_image_evaluation`),
    at the world's settings, then the model's own (about.json), then `overrides`; `per_kind` and
    `captions` default to PER_KIND and CAPTIONS."""
    from instruct_pix2pix.editing import Editor, pick_device, pick_dtype
    from instruct_pix2pix.loading import ANY, load_model

    device = pick_device(device)
    model = load_model(source, kind=ANY, dtype=pick_dtype(None, device), config=config)
    settings = model_settings(model).replace(**(overrides or {}))
    if model.kind == "text-to-image":  # the world's Stable Diffusion: draw captions, read them back
        return run_text_to_image_evaluation(model, output, settings, count=captions or CAPTIONS, device=device)
    return run_evaluation(Editor.for_model(model, device), output, settings, per_kind=per_kind or PER_KIND)


def model_words(model) -> list[str]:
    """--model (and --config) for a command that remakes a figure: none for the shipped default."""
    from instruct_pix2pix.loading import DEFAULT_MODEL

    words = [] if model.source == str(DEFAULT_MODEL) else ["--model", model.source]
    return words + (["--config", model.config] if model.config else [])


def demo_metadata(editor, settings: EditSettings, seed: int, output) -> dict[str, str]:
    """The metadata of `ip2p world demo`'s sheet."""
    from instruct_pix2pix.images import figure_metadata

    command = ["ip2p", "world", "demo", "-o", output, "--seed", seed, *model_words(editor.model)]
    record = {"model": editor.model.source, "seed": seed, **asdict(settings)}
    return figure_metadata([*command, *settings.command_words()], **record)


DEMO_KINDS = ("recolor", "reshape", "add", "remove", "move", "global")


def demo_sheet(editor, settings: EditSettings | None = None, *, seed: int = 0) -> tuple[Image.Image, list[EditScore]]:
    """`make demo`: one held-out scene, several single edits and one compound edit (two
    instructions in a row), each shown as input | the model's edit | ground truth, and scored."""
    from instruct_pix2pix.images import image_grid
    from instruct_pix2pix.small_world.edits import edit_rng
    from instruct_pix2pix.small_world.scenes import sample_scene

    settings = settings or model_settings(editor.model)
    rng = edit_rng("demo", seed)
    scene = sample_scene(rng, max_things=3, night_probability=0)
    while len(scene.things) < 3:
        scene = sample_scene(rng, max_things=3, night_probability=0)
    chains = [[make_edit(scene, kind, random.Random(f"demo/{seed}/{kind}"))] for kind in DEMO_KINDS]
    first = make_edit(scene, "recolor", random.Random(f"demo/{seed}/compound"))
    chains.append([first, make_edit(first.after, "resize", random.Random(f"demo/{seed}/compound/2"))])
    chains = [chain for chain in chains if all(chain)]
    image = render(scene)
    outputs = [
        editor.edit(image, chain[0].instruction, settings, then=[e.instruction for e in chain[1:]], seed=seed,
                    show_progress=False).images[0]
        for chain in chains
    ]  # fmt: skip
    scores = [score_edit(out, image, render(chain[-1].after), [render(s) for s in alternatives(chain[-1])])
              for out, chain in zip(outputs, chains)]  # fmt: skip
    rows = [[image, out, render(chain[-1].after)] for out, chain in zip(outputs, chains)]
    labels = [[" then ".join(e.instruction for e in chain), f"{'right' if s.success else 'wrong'}, PSNR {s.psnr:.1f}",
               "ground truth"] for chain, s in zip(chains, scores)]  # fmt: skip
    kinds = [" + ".join(e.kind for e in chain) for chain in chains]
    sheet = image_grid(rows, column_labels=["input", "model's edit", "ground truth"], row_labels=kinds,
                       scale=2, cell_labels=labels, cell_label_lines=4)  # fmt: skip
    return sheet, scores


# --- the text-to-image model: pictures from held-out captions, read back ------------------------

# The fields of a reading the README reports, as the issue names them (night and black and white
# count toward "background": they are the picture's global state).
T2I_FIELDS = {"colour": ("colour",), "shape": ("shape",), "size": ("size",), "position": ("position",),
              "background": ("background", "time", "black and white")}  # fmt: skip


def held_out_scenes(count: int) -> list[Scene]:
    """`count` distinct scenes of held-out edits (inputs and results alike: day and night, black and
    white, every background), from seeds that training data never uses."""
    scenes: dict[Scene, None] = {}
    index = 0
    while len(scenes) < count:
        for edit in sample_edits(EVALUATION_SPLIT, 64, start=index):
            scenes.update({edit.before: None, edit.after: None})
        index += 64
    return list(scenes)[:count]


def evaluate_text_to_image(
    model, settings: EditSettings | None = None, *, count: int = 200, seed: int = 0, device="cpu", progress: bool = True
) -> tuple[dict, list[tuple[Scene, Image.Image, Scene]]]:
    """Draw each of `count` held-out scenes from its caption (picture i from seed + i) and read the
    picture back: the share read as exactly the captioned scene, and per field (T2I_FIELDS) the
    share right. Returns the results and the (scene, picture, reading) triples."""
    from tqdm.auto import tqdm

    from instruct_pix2pix.generation import generate

    settings = settings or model_settings(model)
    if settings.resolution is not None or settings.keep_size:
        raise UserError("a text-to-image model draws at its own size: leave out --resolution and --keep-size")
    scenes = held_out_scenes(count)
    captions, seeds = [caption(scene) for scene in scenes], [seed + i for i in range(count)]
    pictures: list[Image.Image] = []
    for start in tqdm(range(0, count, 50), desc="drawing held-out captions", disable=not progress):
        pictures += generate(
            model, captions[start : start + 50], seeds=seeds[start : start + 50], device=device,
            num_inference_steps=settings.num_inference_steps, guidance_scale=settings.guidance_scale,
            guidance_rescale=settings.guidance_rescale, scheduler=settings.scheduler,
            negative_prompt=settings.negative_prompt,
        )  # fmt: skip
    readings = [read_scene(picture) for picture in pictures]
    wrong = [field_errors(reading, scene) for reading, scene in zip(readings, scenes)]
    fields = {name: float(np.mean([not any(w[f] for f in parts) for w in wrong])) for name, parts in T2I_FIELDS.items()}
    exact = float(np.mean([reading == scene for reading, scene in zip(readings, scenes)]))
    return {"captions": count, "exact": exact, "fields": fields}, list(zip(scenes, pictures, readings))


def run_text_to_image_evaluation(
    model, output: Path, settings: EditSettings | None = None, *, count: int = CAPTIONS, seed: int = 0, device="cpu"
) -> str:
    """`ip2p world evaluate` on a text-to-image model: results.json, table.md and examples.png (caption,
    the model's picture, its reading drawn exactly, the captioned scene)."""
    from instruct_pix2pix.images import figure_metadata, image_grid, save_png

    settings = settings or model_settings(model)
    results, triples = evaluate_text_to_image(model, settings, count=count, seed=seed, device=device)
    record = {"model": model.source, "seed": seed, "split": EVALUATION_SPLIT, **asdict(settings)}
    head = "| captions | read exactly right | " + " | ".join(T2I_FIELDS) + " |"
    values = [f"{100 * results['exact']:.1f}%", *(f"{100 * v:.1f}%" for v in results["fields"].values())]
    table = "\n".join([head, "|---" * (len(T2I_FIELDS) + 2) + "|", f"| {count} | " + " | ".join(values) + " |"])
    output.mkdir(parents=True, exist_ok=True)
    write_text(output / "results.json", json.dumps({**record, **results}, indent=2))
    write_text(output / "table.md", table + "\n")
    rows = [[picture, render(reading), render(scene)] for scene, picture, reading in triples[:12]]
    labels = [[caption(scene), "right" if reading == scene else "wrong", ""] for scene, _, reading in triples[:12]]
    sheet = image_grid(rows, column_labels=["generated from the caption", "its reading", "the captioned scene"],
                       scale=2, cell_labels=labels, cell_label_lines=5)  # fmt: skip
    command = ["ip2p", "world", "evaluate", "-o", output, "--captions", count, *model_words(model)]
    save_png(sheet, output / "examples.png", figure_metadata([*command, *settings.command_words()], **record))
    return f"{table}\n\nwritten: {output / 'results.json'}, {output / 'table.md'}, {output / 'examples.png'}"
