"""The editor trials' curves (runs/trials/editor-trials.jsonl, written by editor_trial.py): success
on held-out scenes (training wording) against the editor's steps, and against the training time of
everything the editor needed, the text-to-image model it starts from included (equal total compute).

    python benchmarks/trials/editor_curves.py OUTPUT.png [RUN ...]   (default: every run in the file)

Training time is the sum of the runs' own step times (metrics.jsonl: batch / samples_per_s), so
pauses and evaluations do not count; a fine-tuned run's start model adds its own run's time.
"""

import json
import sys
from pathlib import Path

from matplotlib.figure import Figure

TRIALS = Path("runs/trials/editor-trials.jsonl")


def step_hours(run: Path) -> dict[int, float]:
    """Hours of training up to each step of the run in `run` (its metrics.jsonl and config.json)."""
    batch = json.loads((run / "config.json").read_text())["train_batch_size"]
    hours, total = {}, 0.0
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        total += batch / row["samples_per_s"] / 3600
        hours[row["step"]] = total
    return hours


def curves(names: list[str]) -> dict[str, list[tuple[int, float, float]]]:
    """run -> [(steps, hours including the start model's, success over every kind)], by steps."""
    rows = [json.loads(line) for line in TRIALS.read_text().splitlines()]
    found: dict[str, list[tuple[int, float, float]]] = {}
    for row in rows:
        if names and row["run"] not in names:
            continue
        from_scratch = row["start"].partition("=")[0] == "scratch"
        offset = 0.0 if from_scratch else max(step_hours(Path(row["start"]).parent).values())
        hours = step_hours(Path(row["run"]))[row["steps"]] + offset
        label = f"{Path(row['run']).name} (from {'scratch' if from_scratch else 'text to image'})"
        found.setdefault(label, []).append((row["steps"], hours, row["success"]["all"]))
    return {label: sorted(points) for label, points in found.items()}


def main() -> None:
    output, names = Path(sys.argv[1]), sys.argv[2:]
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    by_steps, by_hours = figure.subplots(1, 2)
    for label, points in curves(names).items():
        steps, hours, success = zip(*points)
        by_steps.plot(steps, [100 * s for s in success], marker="o", label=label)
        by_hours.plot(hours, [100 * s for s in success], marker="o", label=label)
    by_steps.set(xlabel="editor training steps", ylabel="held-out edits right (%, 10 a kind)")
    by_hours.set(xlabel="training hours, the text-to-image model's included")
    for axis in (by_steps, by_hours):
        axis.set(xlim=(0, None), ylim=(0, 100))
        axis.grid(alpha=0.3)
    by_steps.legend(fontsize=8)
    figure.suptitle("The small world's editor, fine-tuned from its text-to-image model or from scratch "
                    "(text guidance 7.5, image 1.5)")  # fmt: skip
    figure.savefig(output, dpi=110)
    print(f"written: {output}")


main()
