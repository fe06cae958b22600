"""The image stage's throughput, in the same run: batched candidates against one pair at a time, and
the attention-sharing processors against plain diffusers sampling of the same batch.

The model is the small world's architecture: the shipped default model's VAE and text encoder, and
a UNet of its configuration with 4 input channels (a text-to-image UNet; random weights time the
same as trained ones). The small world's CLIP scores the pairs.

- candidates per second: `make-pairs`' way (`sample_pairs` on --batch-size candidates at once, then
  CLIP on the batch) against the reference's (generate_img_dataset.py: each candidate's pair
  sampled alone, then scored alone); the same candidates (seeds, p, guidance) on both sides, and
  the mean directional similarity of each printed as a check that both did the same work;
- processor overhead: `sample_pairs` (p ~ U[0.1, 0.9], so attention is shared for half the steps on
  average) against diffusers' StableDiffusionPipeline drawing the same 2 x batch images with its
  own attention processors, at one guidance scale.

Rounds alternate who goes first; the tables give medians and ratios.

    .venv/bin/python benchmarks/bench_pairs.py            (figures: benchmarks/README.md)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace

import numpy as np
import torch
from bench_edit import machine
from diffusers import UNet2DConditionModel

from instruct_pix2pix.data.image_pairs import PairSettings, candidates_for
from instruct_pix2pix.data.prompt_to_prompt import sample_pairs
from instruct_pix2pix.editing import DTYPES, evaluating
from instruct_pix2pix.loading import diffusers_pipeline, load_model
from instruct_pix2pix.metrics import ClipScorer
from instruct_pix2pix.settings import make_scheduler

EDIT = {
    "input": "a red circle top left on grass",
    "edit": "make the circle blue",
    "output": "a blue circle top left on grass",
}


def small_world_text_to_image(dtype: torch.dtype = torch.float32):
    model = load_model(dtype=dtype)  # the shipped editing model
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config({**model.unet.config, "in_channels": 4})
    return replace(model, unet=unet.to(dtype).eval())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (make-pairs' default is 100)")
    parser.add_argument("--mode", choices=("self", "cross"), default="self")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="the models', both ways")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="the batched side's UNet under torch.compile "
        "(`make-pairs --compile`; compiled before the timing; one pair at a time stays eager)",
    )
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    model = small_world_text_to_image(DTYPES[args.dtype])
    scorer = ClipScorer.from_pretrained()
    candidates = candidates_for(EDIT, 0, PairSettings(candidates=args.candidates), seed=0)
    batches = [candidates[i : i + args.batch_size] for i in range(0, len(candidates), args.batch_size)]

    batched_model = model.compiled() if args.compile else model

    def scored(group, model=model) -> list[float]:
        pairs = sample_pairs(model, group, mode=args.mode, num_inference_steps=args.steps)
        captions = [c.input_caption for c in group], [c.output_caption for c in group]
        scores = scorer.edit_similarities([a for a, _ in pairs], [b for _, b in pairs], *captions)
        return list(scores["clip_direction"])

    def batched(model=batched_model):
        return np.array([d for group in batches for d in scored(group, model)])

    def alone():
        return np.array([d for c in candidates for d in scored([c])])

    # Overhead: one batch, one guidance scale, against diffusers' pipeline with its own processors.
    fixed = [replace(c, guidance_scale=7.5) for c in batches[0]]
    pipe = diffusers_pipeline(model, make_scheduler("euler_ancestral", model.scheduler_config))
    pipe.set_progress_bar_config(disable=True)

    def ours():
        sample_pairs(model, fixed, mode=args.mode, num_inference_steps=args.steps)

    def diffusers():
        prompts = [text for c in fixed for text in (c.input_caption, c.output_caption)]
        generators = [torch.Generator("cpu").manual_seed(c.seed) for c in fixed for _ in range(2)]
        pipe(prompts, num_inference_steps=args.steps, guidance_scale=7.5, generator=generators, output_type="pil")

    throughput = [("batched", batched), ("alone", alone)]
    if args.compile:  # the batched side eager too, in the same rounds
        throughput.append(("batched eager", lambda: batched(model)))
    times: dict[str, list[float]] = {name: [] for name in (*dict(throughput), "ours", "diffusers")}
    results = {}
    with evaluating(model.unet, model.vae, model.text_encoder), torch.inference_mode():
        ours(), diffusers()  # warm-up
        if args.compile:  # compiling is paid once per batch shape, not per batch: a first batched run pays it
            start = time.perf_counter()
            batched()
            print(f"compiled in {time.perf_counter() - start:.1f} s (with one batched run)", flush=True)
        for round_ in range(args.rounds):
            for pair in (throughput, [("ours", ours), ("diffusers", diffusers)]):
                for name, function in pair if round_ % 2 == 0 else pair[::-1]:
                    start = time.perf_counter()
                    results[name] = function()
                    times[name].append(time.perf_counter() - start)
                    print(f"round {round_ + 1}: {name} {times[name][-1]:.1f} s", flush=True)

    median = {name: statistics.median(values) for name, values in times.items()}
    rate = {name: args.candidates / median[name] for name, _ in throughput}
    speedup, overhead = rate["batched"] / rate["alone"], median["ours"] / median["diffusers"] - 1
    report = {
        "machine": machine(torch.device("cpu")), "candidates": args.candidates, "batch_size": args.batch_size,
        "steps": args.steps, "mode": args.mode, "dtype": args.dtype, "compile": args.compile, "rounds": args.rounds,
        "seconds": times,
        "candidates_per_second": rate, "speedup": speedup, "processor_overhead": overhead,
        "mean_direction": {name: float(results[name].mean()) for name, _ in throughput},
        "max_direction_difference": float(np.abs(results["batched"] - results["alone"]).max()),
    }  # fmt: skip
    compiled = ", compiled" * args.compile
    title = f"image pairs ({args.candidates} candidates, {args.steps} steps, {args.mode}, {args.dtype}{compiled})"
    print(f"\n| {title} | median of {args.rounds} |")
    print("|---|---|")
    print(f"| batched (batch {args.batch_size}{compiled}), candidates/s | {rate['batched']:.2f} |")
    print(f"| one pair at a time, candidates/s | {rate['alone']:.2f} |")
    print(f"| **speed-up** | **{speedup:.2f}x** |")
    if args.compile:
        eager = rate["batched eager"]
        print(f"| batched, eager, candidates/s | {eager:.2f} ({eager / rate['alone']:.2f}x) |")
    print(f"| sample_pairs, one batch of {len(fixed)} pairs, s | {median['ours']:.2f} |")
    print(f"| diffusers' pipeline, the same {2 * len(fixed)} images, s | {median['diffusers']:.2f} |")
    print(f"| **processor overhead** | **{100 * overhead:+.1f}%** |")
    means, most = report["mean_direction"], report["max_direction_difference"]
    print(f"mean CLIP direction: batched {means['batched']:.4f}, alone {means['alone']:.4f} (most apart {most:.1e})")
    if args.json:
        with open(args.json, "w") as stream:
            json.dump(report, stream, indent=2)


if __name__ == "__main__":
    main()
