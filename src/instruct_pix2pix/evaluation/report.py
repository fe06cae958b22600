"""A sweep's results as the paper shows them: one row per point (JSONL and CSV), the trade-off plot
(x = CLIP direction similarity, y = CLIP image similarity, one curve per method, each point labelled
with its scale), and a contact sheet of a few outputs at every point."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from instruct_pix2pix.atomic import atomic_path, write_text
from instruct_pix2pix.evaluation.sweep import EDITOR, UNCHANGED, Example, Point, kept_outputs
from instruct_pix2pix.images import figure_metadata, image_grid, save_png

# Every metric a point can have, in the order the table shows them.
METRICS = {
    "clip_image": "CLIP image similarity cos(I0, I1)",
    "clip_direction": "CLIP direction similarity cos(I1 - I0, T1 - T0)",
    "clip_input_caption": "CLIP similarity of input and input caption cos(I0, T0)",
    "clip_output_caption": "CLIP similarity of output and edited caption cos(I1, T1)",
    "target_l1": "against the target (MagicBrush): L1 on [0, 1]",
    "target_l2": "against the target (MagicBrush): L2 (mean squared) on [0, 1]",
    "target_clip_i": "against the target (MagicBrush): CLIP-I",
    "target_clip_t": "against the target (MagicBrush): CLIP-T (output and edited caption)",
    "target_dino": "against the target (MagicBrush): DINO",
    "success": "small world: share of edits right (pixel-level ground truth)",
    "read_right": "small world: share read back as exactly the asked-for scene",
}
Z95 = 1.959963984540054  # two-sided 95% of the normal distribution
RESULTS = ("results.jsonl", "results.csv", "plot.png", "plot.svg", "examples.png")


def mean_interval(values: Sequence[float]) -> tuple[float, float | None]:
    """The mean and the half-width of its 95% interval (normal approximation; None for one value)."""
    array = np.asarray(values, dtype=np.float64)
    if len(array) < 2:
        return float(array.mean()), None
    return float(array.mean()), float(Z95 * array.std(ddof=1) / math.sqrt(len(array)))


def summary(point: Point, stored: dict, record: dict) -> dict:
    """One row of the table: the point, its means with 95% intervals, the count and the settings."""
    values = stored["values"]
    row = {"method": point.method, "curve": point.curve, "text_guidance": point.text_guidance,
           "image_guidance": point.image_guidance, "strength": point.strength,
           "count": len(stored["keys"])}  # fmt: skip
    for name in METRICS:
        if name in values:
            row[name], row[f"{name}_ci95"] = mean_interval(values[name])
    settings = {key: value for key, value in record.items() if key != "examples"}
    return row | settings


def write_tables(output: Path, rows: list[dict]) -> None:
    write_text(output / "results.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    columns = list(dict.fromkeys(key for row in rows for key in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: "" if row.get(key) is None else row[key] for key in columns} for row in rows)
    write_text(output / "results.csv", text.getvalue())


def short_label(point: Point) -> str:
    if point.method == EDITOR:
        return f"IP2P text {point.text_guidance:g}, image {point.image_guidance:g}"
    if point.method == UNCHANGED:
        return "input unchanged"
    prompt = "caption" if point.method.endswith("caption") else "instruction"
    return f"SDEdit ({prompt}) {point.strength:g}"


def plot(rows: list[dict], points: list[Point], stem: Path, title: str) -> None:
    """The paper's figure as PNG and SVG; with the small world's ground truth, a second panel of the
    share of edits right against the same x, so the two can be compared."""
    from matplotlib.figure import Figure

    panels = [("clip_image", "CLIP image similarity")]
    if all("success" in row for row in rows):
        panels.append(("success", "edits right (ground truth)"))
    figure = Figure(figsize=(6.4 * len(panels), 5.2), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    curves = list(dict.fromkeys(row["curve"] for row in rows))
    for axis, (y_name, y_label) in zip(axes, panels):
        for curve in curves:
            group = [(row, point) for row, point in zip(rows, points) if row["curve"] == curve]
            x = [row["clip_direction"] for row, _ in group]
            y = [row[y_name] for row, _ in group]
            errors = [[row.get(f"{name}_ci95") or 0 for row, _ in group] for name in ("clip_direction", y_name)]
            axis.errorbar(x, y, xerr=errors[0], yerr=errors[1], marker="o", markersize=4, capsize=2, linewidth=1.5,
                          label=curve)  # fmt: skip
            for (_, point), xi, yi in zip(group, x, y):
                if point.scale is not None:
                    axis.annotate(f"{point.scale:g}", (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
        axis.set_xlabel("CLIP text-image direction similarity")
        axis.set_ylabel(y_label)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8, title="points: image guidance / SDEdit strength", title_fontsize=8)
    figure.suptitle(title, fontsize=10)
    for suffix in ("png", "svg"):
        with atomic_path(stem.with_suffix(f".{suffix}")) as temporary:
            figure.savefig(temporary, format=suffix, dpi=150)


def contact_sheet(output: Path, points: list[Point], done: dict[Point, dict], examples: Sequence[Example],
                  count: int) -> Image.Image:  # fmt: skip
    """Rows: the inputs, the targets (where known), then each point's outputs; columns: the first examples."""
    shown = list(examples[:count])
    size = max(max(e.input_image.size) for e in shown)
    scale = 2 if size <= 128 else 1

    def thumb(image: Image.Image | None) -> Image.Image | None:
        if image is None or size <= 128:
            return image
        image = image.copy()
        image.thumbnail((192, 192), Image.Resampling.LANCZOS)
        return image

    rows = [[thumb(e.input_image) for e in shown]]
    labels = ["input"]
    cell_labels = [[e.instruction for e in shown]]
    if all(e.target is not None for e in shown):
        rows.append([thumb(e.target) for e in shown])
        labels.append("target")
        cell_labels.append([])
    for point in (point for point in points if point.method != UNCHANGED):  # that row would be the inputs again
        rows.append([thumb(image) for image in kept_outputs(output, point, done[point])][: len(shown)])
        labels.append(short_label(point))
        cell_labels.append([])
    return image_grid(rows, row_labels=labels, scale=scale, cell_labels=cell_labels, cell_label_lines=3)


def write_report(output: Path, points: list[Point], done: dict[Point, dict], examples: Sequence[Example],
                 record: dict, command: Sequence[str], *, contact: int = 4) -> list[dict]:  # fmt: skip
    """results.jsonl, results.csv, plot.png, plot.svg and examples.png; returns the rows."""
    rows = [summary(point, done[point], record) for point in points]
    write_tables(output, rows)
    title = f"{model_name(record['model'])} on {record['data']} ({record['split']}), {len(examples)} examples"
    plot(rows, points, output / "plot", title)
    metadata = figure_metadata(command, **{k: v for k, v in record.items() if k != "examples"})
    save_png(contact_sheet(output, points, done, examples, contact), output / "examples.png", metadata)
    return rows


def model_name(source: str) -> str:
    from instruct_pix2pix.loading import DEFAULT_MODEL

    return "the shipped small-world model" if source == str(DEFAULT_MODEL) else source


def format_table(rows: list[dict]) -> str:
    """A markdown table of the main numbers, one line per point."""
    shown = ("clip_image", "clip_direction", "clip_output_caption", "success", "read_right", "target_l1",
             "target_clip_i", "target_dino")  # fmt: skip
    names = [name for name in shown if all(name in row for row in rows)]
    lines = ["| method | scale | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    for row in rows:
        scale = row["image_guidance"] if row["method"] == EDITOR else row["strength"]
        cells = []
        for name in names:
            mean, half = row[name], row.get(f"{name}_ci95")
            cells.append(f"{mean:.3f}" + (f" ± {half:.3f}" if half is not None else ""))
        lines.append(f"| {row['curve']} | {'' if scale is None else f'{scale:g}'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
