"""Evaluation throughput: `ip2p evaluate`'s batched sweep against a one-example-at-a-time loop, in the same run.

Both make and score the same edits: the shipped default model edits --examples held-out small-world
scenes at each point of a sweep (text guidance 7.5, the image guidance scales of --image-guidance:
by default the paper's seven, 1.0 to 2.2; seed 0; --steps), and the small world's CLIP scores each
(the paper's four similarities, plus the MagicBrush metrics against the target and the ground
truth, as the sweep computes them).

- batched: what the sweep does, `Methods` (examples edited --batch-size at a time) and `score`
  (features in batches; the inputs' and captions' features computed once, shared by every point);
- loop: the reference's way (metrics/compute_metrics.py): at each point, for each example,
  `Editor.edit` on it alone, then the same scoring on it alone.

Rounds alternate who goes first; the table gives medians of edits per second and the ratio. The mean
similarities of the two are printed too: equal up to float rounding, so both did the same work.

    .venv/bin/python benchmarks/bench_evaluate.py            (figures: benchmarks/README.md)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from bench_edit import machine

from instruct_pix2pix import Editor
from instruct_pix2pix.evaluation.examples import world_examples
from instruct_pix2pix.evaluation.sweep import EDITOR, SETTINGS, Methods, Point, Scorers, prepare, score
from instruct_pix2pix.metrics import ClipScorer
from instruct_pix2pix.settings import SWEEP_IMAGE_GUIDANCE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (the small world's sampler settings)")
    parser.add_argument("--image-guidance", default=",".join(map(str, SWEEP_IMAGE_GUIDANCE)), help="the sweep's points")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="the editor's, both ways")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="the batched sweep's UNet under torch.compile "
        "(`ip2p evaluate --compile`; compiled before the timing, and the loop stays eager)",
    )
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    editor = Editor.from_pretrained(device="cpu", dtype=args.dtype)
    settings = SETTINGS.replace(num_inference_steps=args.steps)
    examples = world_examples(args.examples)
    scorers = Scorers(ClipScorer.from_pretrained())
    points = [Point(EDITOR, 7.5, image_guidance=float(scale)) for scale in args.image_guidance.split(",")]
    methods = Methods(editor, settings, batch_size=args.batch_size)
    compiled_methods = Methods(Editor.for_model(editor.model.compiled(), editor.device), settings,
                               batch_size=args.batch_size) if args.compile else methods  # fmt: skip

    def batched(methods=compiled_methods) -> np.ndarray:
        prepared = prepare(examples, methods, scorers)
        directions = []
        for point in points:
            for start in range(0, len(examples), args.batch_size):
                rows = slice(start, start + args.batch_size)
                outputs = methods(point, examples[rows], prepared.inputs[rows])
                directions += list(score(outputs, examples[rows], prepared, scorers, rows)["clip_direction"])
        return np.array(directions)

    def loop() -> np.ndarray:
        directions = []
        for point in points:
            for example in examples:
                edit = editor.edit(example.input_image, example.instruction, settings, seed=0,
                                   image_guidance_scale=point.image_guidance, show_progress=False)  # fmt: skip
                prepared = prepare([example], methods, scorers)
                directions.append(score(edit.images, [example], prepared, scorers, slice(0, 1))["clip_direction"][0])
        return np.array(directions)

    order = [("batched", batched), ("loop", loop)]
    if args.compile:  # the batched sweep eager too, in the same rounds
        order.append(("batched eager", lambda: batched(methods)))
    times: dict[str, list[float]] = {name: [] for name, _ in order}
    results = {}
    if args.compile:  # compiling is paid once per shape, not per sweep: a first batched run pays it
        start = time.perf_counter()
        batched()
        print(f"compiled in {time.perf_counter() - start:.1f} s (with one batched run)", flush=True)
    for round_ in range(args.rounds):
        for name, function in order if round_ % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            results[name] = function()
            times[name].append(time.perf_counter() - start)
            print(f"round {round_ + 1}: {name} {times[name][-1]:.1f} s", flush=True)

    edits = args.examples * len(points)
    rate = {name: edits / statistics.median(values) for name, values in times.items()}
    ratio = rate["batched"] / rate["loop"]
    report = {
        "machine": machine(torch.device("cpu")), "threads": torch.get_num_threads(), "examples": args.examples,
        "steps": args.steps, "dtype": args.dtype, "compile": args.compile,
        "batch_size": args.batch_size, "image_guidance": [p.image_guidance for p in points], "rounds": args.rounds,
        "seconds": times, "edits_per_second": rate, "ratio": ratio,
        "mean_direction": {name: float(values.mean()) for name, values in results.items()},
        "max_direction_difference": float(np.abs(results["batched"] - results["loop"]).max()),
    }  # fmt: skip
    compiled = ", compiled" * args.compile
    title = f"evaluation ({args.examples} examples x {len(points)} points, {args.steps} steps, {args.dtype}{compiled})"
    print(f"\n| {title} | edits/s (median of {args.rounds}) |")
    print("|---|---|")
    print(f"| batched sweep (batch {args.batch_size}{compiled}) | {rate['batched']:.2f} |")
    print(f"| one example at a time | {rate['loop']:.2f} |")
    print(f"| **ratio** | **{ratio:.2f}x** |")
    if args.compile:
        print(f"| batched sweep, eager | {rate['batched eager']:.2f} ({rate['batched eager'] / rate['loop']:.2f}x) |")
    means, most = report["mean_direction"], report["max_direction_difference"]
    print(f"mean CLIP direction: batched {means['batched']:.4f}, loop {means['loop']:.4f} (most apart {most:.1e})")
    if args.json:
        with open(args.json, "w") as stream:
            json.dump(report, stream, indent=2)


if __name__ == "__main__":
    main()
