"""The editor trials' curves (runs/trials/editor-trials.jsonl, written by editor_trial.py): success
on held-out scenes (training wording) against the editor's steps, and against the training time of
everything the editor needed, the text-to-image model it starts from included (equal total compute);
one row of panels per text guidance (1.5, the shipped model's, and 7.5, the world's default).

    python benchmarks/trials/editor_curves.py OUTPUT.png [RUN ...] [RUN=SECONDS ...]   (default: every run)

RUN=SECONDS counts a run's steps at SECONDS a step instead of its own: for a run repeated on another
machine than the arms it is compared with (the from-scratch arm, rerun on a faster VM, at its first
run's 0.647 s a step: `editor-scratch=0.647`); it does not choose the runs drawn. (That rerun's
points replaced its first run's, which are stored as "editor-scratch, first run (from scratch)".)

Training time is steps times the run's step time on a quiet machine, the 10th percentile of its
step times (metrics.jsonl: batch / samples_per_s), so pauses, evaluations and steps slowed by other
work on the machine do not count; a fine-tuned run's start model adds its own run's time (a cool-down's
start, an editor trial, its steps up to its last evaluated segment and that run's own start).

The points drawn are kept in docs/small-world/editor-curves.json (label -> [steps, hours, success
at text guidance 1.5, at 7.5 (null: not measured)]), so a figure redrawn where some runs no longer
exist keeps their curves: points computed from the runs at hand replace the stored ones of the same
run, the rest are drawn as stored. (The first six curves were stored from the README's table of
them: hours at each arm's quiet step time, 0.60 s with the text encoder trained, 0.47 s frozen.)
"""

import functools
import json
import statistics
import sys
from pathlib import Path

from matplotlib.figure import Figure

TRIALS = Path("runs/trials/editor-trials.jsonl")
POINTS = Path("docs/small-world/editor-curves.json")
KEYS = ("success_text_1.5", "success")  # text guidance 1.5 (the shipped model's), 7.5 (the world's default)


STEP_SECONDS: dict[str, float] = {}  # run folder name -> seconds a step, given as RUN=SECONDS


@functools.cache
def step_time(run: Path) -> tuple[float, int]:
    """(seconds a step on a quiet machine, configured steps) of the run in `run` (its metrics.jsonl
    and config.json, or STEP_SECONDS); read once a run, however many trial rows start from it."""
    config = json.loads((run / "config.json").read_text())
    if run.name in STEP_SECONDS:
        return STEP_SECONDS[run.name], config["max_train_steps"]
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


def curves() -> dict[str, list[list[float]]]:
    """run -> [[editor steps, hours including the start model's, success at text guidance 1.5, at 7.5]]
    over every kind, by steps, from the trial rows whose run folders are at hand. A run that continues
    another editor (a cool-down) counts from where that one stopped."""
    rows = [json.loads(line) for line in TRIALS.read_text().splitlines()] if TRIALS.exists() else []
    found: dict[str, list[list[float]]] = {}
    for row in rows:
        if not all(key in row for key in KEYS):
            continue
        try:
            steps, spent = start_of(row, rows)
            own = hours(Path(row["run"]), row["steps"])
        except FileNotFoundError:  # the run's folder is gone: its stored points stand
            continue
        origin = Path(row["start"]).parent.name if steps else "scratch" if spent == 0 else "text to image"
        label = f"{Path(row['run']).name} (from {origin})"
        success = [row[key]["all"] for key in KEYS]
        found.setdefault(label, []).append([steps + row["steps"], round(spent + own, 3), *success])
    return {label: sorted(points) for label, points in found.items()}


def main() -> None:
    output, names = Path(sys.argv[1]), [arg for arg in sys.argv[2:] if "=" not in arg]
    given = (arg.partition("=") for arg in sys.argv[2:] if "=" in arg)
    STEP_SECONDS.update((Path(run).name, float(seconds)) for run, _, seconds in given)
    stored = json.loads(POINTS.read_text()) if POINTS.exists() else {}
    points = {**stored, **curves()}
    POINTS.write_text(json.dumps(points, indent=1) + "\n")
    figure = Figure(figsize=(11, 8), layout="constrained")
    panels = figure.subplots(2, 2, sharex="col")
    for column, ((by_steps, by_hours), text) in enumerate(zip(panels, (1.5, 7.5))):
        for label, curve in points.items():
            if names and label.split(" (")[0] not in {Path(name).name for name in names}:
                continue
            curve = [p for p in curve if p[2 + column] is not None]  # not measured at this guidance
            steps, spent, success = [p[0] for p in curve], [p[1] for p in curve], [100 * p[2 + column] for p in curve]
            by_steps.plot(steps, success, marker="o", label=label)
            by_hours.plot(spent, success, marker="o", label=label)
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
    print(f"written: {output} and {POINTS}")


main()
