"""The editor trials' curves (runs/trials/editor-trials.jsonl, written by editor_trial.py): success
on held-out scenes (training wording) against the editor's steps, and against the training time of
everything the editor needed, the text-to-image model it starts from included (equal total compute);
one row of panels per text guidance (1.5, the shipped model's, and 7.5, the world's default).

    python benchmarks/trials/editor_curves.py OUTPUT.png [RUN ...]   (default: every run in the file)

Training time is steps times the run's step time on a quiet machine, the 10th percentile of its
step times (metrics.jsonl: batch / samples_per_s), so pauses, evaluations and steps slowed by other
work on the machine do not count; a fine-tuned run's start model adds its own run's time (a cool-down's
start, an editor trial, its steps up to its last evaluated segment and that run's own start).
"""

import functools
import json
import statistics
import sys
from pathlib import Path

from matplotlib.figure import Figure

TRIALS = Path("runs/trials/editor-trials.jsonl")


@functools.cache
def step_time(run: Path) -> tuple[float, int]:
    """(seconds a step on a quiet machine, configured steps) of the run in `run` (its metrics.jsonl
    and config.json); read once a run, however many trial rows start from it."""
    config = json.loads((run / "config.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    step = statistics.quantiles([config["train_batch_size"] / row["samples_per_s"] for row in rows], n=10)[0]
    return step, config["max_train_steps"]


def hours(run: Path, steps: int | None = None) -> float:
    """Hours of `steps` training steps (default: all the run's) at the run's quiet-machine step time."""
    step, configured = step_time(run)
    return (steps or configured) * step / 3600


def start_of(row: dict, rows: list[dict]) -> tuple[int, float]:
    """(editor steps, training hours) already in the model a trial row started from: nothing for a
    run from scratch; for a trial run's model (a cool-down), its last evaluated segment and its own
    start; for any other model (the text-to-image model), its run's configured steps, all hours."""
    if row["start"].partition("=")[0] == "scratch":
        return 0, 0.0
    run = Path(row["start"]).parent
    segments = [r for r in rows if r["run"] == str(run)]
    if not segments:
        return 0, hours(run)
    last = max(segments, key=lambda r: r["steps"])
    steps, spent = start_of(last, rows)
    return steps + last["steps"], spent + hours(run, last["steps"])


def curves(names: list[str], key: str) -> dict[str, list[tuple[int, float, float]]]:
    """run -> [(editor steps, hours including the start model's, success over every kind)], by steps;
    `key` names the success measured ("success": text guidance 7.5, "success_text_1.5": 1.5). A run
    that continues another editor (a cool-down) counts from where that one stopped."""
    rows = [json.loads(line) for line in TRIALS.read_text().splitlines()]
    found: dict[str, list[tuple[int, float, float]]] = {}
    for row in rows:
        if (names and row["run"] not in names) or key not in row:
            continue
        steps, spent = start_of(row, rows)
        origin = Path(row["start"]).parent.name if steps else "scratch" if spent == 0 else "text to image"
        label = f"{Path(row['run']).name} (from {origin})"
        found.setdefault(label, []).append((steps + row["steps"], spent + hours(Path(row["run"]), row["steps"]),
                                            row[key]["all"]))  # fmt: skip
    return {label: sorted(points) for label, points in found.items()}


def main() -> None:
    output, names = Path(sys.argv[1]), sys.argv[2:]
    figure = Figure(figsize=(11, 8), layout="constrained")
    panels = figure.subplots(2, 2, sharex="col")
    for (by_steps, by_hours), (key, text) in zip(panels, [("success_text_1.5", 1.5), ("success", 7.5)]):
        for label, points in curves(names, key).items():
            steps, spent, success = zip(*points)
            by_steps.plot(steps, [100 * s for s in success], marker="o", label=label)
            by_hours.plot(spent, [100 * s for s in success], marker="o", label=label)
        by_steps.set(ylabel=f"edits right (%, 10 a kind)\ntext guidance {text}, image 1.5")
        for axis in (by_steps, by_hours):
            axis.set(xlim=(0, None), ylim=(0, 100))
            axis.grid(alpha=0.3)
        by_steps.legend(fontsize=8)
    panels[1][0].set(xlabel="editor training steps")
    panels[1][1].set(xlabel="training hours, the text-to-image model's included")
    figure.suptitle("The small world's editor, fine-tuned from its text-to-image model or from scratch "
                    "(held-out scenes, training wording)")  # fmt: skip
    figure.savefig(output, dpi=110)
    print(f"written: {output}")


main()
