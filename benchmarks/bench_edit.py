"""Time `Editor.edit` against diffusers' StableDiffusionInstructPix2PixPipeline on the same model.

One diffusers-format folder (a "small SD": the SD 1.5 block structure at reduced widths, random
weights) is saved once into a temporary directory and loaded by both. Both edit the same image
with the same instruction, seed, number of steps and scheduler, in the same process, interleaved
(ours, diffusers, ours, diffusers, ...) after one warm-up run each; the table shows the median of
--runs runs at image_guidance_scale 1.5 (three UNet branches for both) and 1.0 (diffusers still
runs three branches, we run two). The warm-up outputs are compared once, as float pixels, so the
two sides are known to do the same work.

    .venv/bin/python benchmarks/bench_edit.py                        # CPU, small SD, ~3 min on 2 cores
    .venv/bin/python benchmarks/bench_edit.py --device cuda --full-size   # real SD 1.5 sizes, float16

Random weights time the same as trained ones: the work is the same shapes either way.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import diffusers
from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from instruct_pix2pix.editing import SCHEDULERS, Editor, make_scheduler
from instruct_pix2pix.tokenizers import build_clip_tokenizer

# SD 1.5's scheduler config (as in tests/conftest.py): the one timbrooks/instruct-pix2pix ships.
SD15_SCHEDULER_CONFIG = {
    "_class_name": "EulerAncestralDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "prediction_type": "epsilon", "steps_offset": 1,
    "clip_sample": False, "set_alpha_to_one": False, "skip_prk_steps": True, "trained_betas": None,
}
WORDS = "make it snowy turn the sky into a night add fireworks red blue circle square painting watercolor".split()
PROMPT = "turn the sky into a night painting"

# Widths: (UNet blocks, attention heads, text hidden / layers / heads / MLP, VAE blocks).
SIZES = {
    "small": dict(unet=(64, 128, 256, 256), heads=8, text=(128, 4, 4, 512), vae=(32, 64, 128, 128)),
    "full": dict(unet=(320, 640, 1280, 1280), heads=8, text=(768, 12, 12, 3072), vae=(128, 256, 512, 512)),
}


def build_parts(size: str, image_size: int, seed: int = 0) -> dict:
    """UNet, VAE, CLIP text encoder, tokenizer and scheduler with SD 1.5's structure at the given widths."""
    spec = SIZES[size]
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(WORDS)
    hidden, layers, text_heads, mlp = spec["text"]
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
            num_attention_heads=text_heads, max_position_embeddings=77, hidden_act="quick_gelu",
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=image_size // 8, in_channels=8, out_channels=4, layers_per_block=2,
        block_out_channels=spec["unet"],
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=hidden, attention_head_dim=spec["heads"], norm_num_groups=32,
    )
    vae = AutoencoderKL(
        block_out_channels=spec["vae"], in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        norm_num_groups=32, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=image_size,
    )
    scheduler = EulerAncestralDiscreteScheduler.from_config(SD15_SCHEDULER_CONFIG)
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


def save_model(folder: Path, size: str, image_size: int, dtype: torch.dtype) -> dict[str, int]:
    parts = build_parts(size, image_size)
    counts = {name: sum(p.numel() for p in parts[name].parameters()) for name in ("unet", "vae", "text_encoder")}
    for name in ("unet", "vae", "text_encoder"):
        parts[name].to(dtype)
    pipe = StableDiffusionInstructPix2PixPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return counts


def scene(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth, structured test image (as in tests/conftest.py)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    channels = [np.sin(6 * x * rng.uniform(0.5, 2) + rng.uniform(0, 6)) * np.cos(5 * y + c) for c in range(3)]
    return Image.fromarray(((np.stack(channels, -1) + 1) * 127.5).astype(np.uint8))


def machine(device: torch.device) -> dict:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {
        "cpu": cpu, "cores": cores, "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per side and setting (median reported)")
    parser.add_argument("--steps", type=int, default=10, help="sampling steps")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (default 256, 512 with --full-size)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or mps")
    parser.add_argument("--full-size", action="store_true", help="real SD 1.5 widths in float16 (for a GPU)")
    parser.add_argument("--scheduler", default="euler_ancestral", choices=list(SCHEDULERS))
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    parser.add_argument("--image-guidance-scales", type=float, nargs="+", default=[1.5, 1.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.steps < 1:
        parser.error("--runs and --steps must be at least 1")
    size = args.size or (512 if args.full_size else 256)
    if size % 64:
        parser.error("--size must be a multiple of 64")

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    import transformers

    transformers.logging.set_verbosity_error()

    started = time.perf_counter()
    device = torch.device(args.device)
    dtype = torch.float16 if args.full_size else torch.float32
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    info = machine(device)
    model_name = "full SD 1.5 widths" if args.full_size else "small SD"
    spec = SIZES["full" if args.full_size else "small"]

    with tempfile.TemporaryDirectory(prefix="ip2p-bench-") as tmp:
        folder = Path(tmp) / "model"
        counts = save_model(folder, "full" if args.full_size else "small", size, dtype)
        ours = Editor.from_pretrained(folder, device=device, dtype=dtype)
        pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
            folder, safety_checker=None, requires_safety_checker=False, torch_dtype=dtype
        ).to(device)
        pipe.set_progress_bar_config(disable=True)
        pipe.scheduler = make_scheduler(args.scheduler, pipe.scheduler.config)
        setup_s = time.perf_counter() - started

        image = scene(size, size)
        common = dict(num_inference_steps=args.steps, guidance_scale=args.guidance_scale)

        def run_ours(igs: float):
            return ours.edit(
                image, PROMPT, **common, image_guidance_scale=igs, seed=args.seed, scheduler=args.scheduler,
                resolution=size, show_progress=False,
            )

        def run_diffusers(igs: float, output_type: str = "pil"):
            generator = torch.Generator("cpu").manual_seed(args.seed)
            return pipe(PROMPT, image=image, **common, image_guidance_scale=igs, generator=generator, output_type=output_type)

        def timed(fn) -> float:
            gc.collect()
            sync()
            start = time.perf_counter()
            fn()
            sync()
            return time.perf_counter() - start

        print(
            f"{model_name}: UNet {'/'.join(map(str, spec['unet']))} ({counts['unet'] / 1e6:.1f}M params), "
            f"VAE {'/'.join(map(str, spec['vae']))} ({counts['vae'] / 1e6:.1f}M), "
            f"CLIP text {spec['text'][0]}x{spec['text'][1]} ({counts['text_encoder'] / 1e6:.1f}M); "
            f"{size}x{size} image, {args.steps} steps, {args.scheduler}, guidance {args.guidance_scale}, "
            f"{str(dtype).removeprefix('torch.')}; setup {setup_s:.1f} s",
            flush=True,
        )
        rows = []
        for igs in args.image_guidance_scales:
            # Warm-up, one each, not timed; their outputs are the like-for-like check.
            ours_pixels = run_ours(igs).edits[0].pixels
            theirs_pixels = run_diffusers(igs, output_type="np").images[0]
            max_diff = float(np.abs(ours_pixels.astype(np.float64) - theirs_pixels.astype(np.float64)).max())
            times_ours, times_diffusers = [], []
            for _ in range(args.runs):
                times_ours.append(timed(lambda: run_ours(igs)))
                times_diffusers.append(timed(lambda: run_diffusers(igs)))
            row = {
                "image_guidance_scale": igs,
                "ours_median_s": statistics.median(times_ours),
                "diffusers_median_s": statistics.median(times_diffusers),
                "ours_s": times_ours,
                "diffusers_s": times_diffusers,
                "max_abs_pixel_diff": max_diff,
            }
            row["ratio"] = row["ours_median_s"] / row["diffusers_median_s"]
            rows.append(row)
            print(f"  igs {igs}: ours {fmt(times_ours)}  diffusers {fmt(times_diffusers)}", flush=True)

    total_s = time.perf_counter() - started
    print()
    print(f"{'setting':<28} {'ours median s':>14} {'diffusers median s':>19} {'ours/diffusers':>15} {'max |Δpixel|':>13}")
    for row in rows:
        setting = f"image_guidance_scale {row['image_guidance_scale']:g}"
        print(
            f"{setting:<28} {row['ours_median_s']:>14.3f} {row['diffusers_median_s']:>19.3f} "
            f"{row['ratio']:>15.3f} {row['max_abs_pixel_diff']:>13.2e}"
        )
    print()
    gpu = f", {info['gpu']}" if "gpu" in info else ""
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, torch threads {info['torch_threads']}, "
        f"torch {info['torch']}, diffusers {info['diffusers']}, device {info['device']}{gpu}"
    )
    print(f"median of {args.runs} interleaved runs after one warm-up each; total {total_s:.0f} s")
    if args.full_size:
        print("note: our Editor keeps the VAE in float32 under float16 (the SD VAE overflows in float16); diffusers runs it in float16")

    if args.json:
        record = {
            "model": model_name, "parameters": counts, "widths": spec, "image_size": size, "steps": args.steps,
            "scheduler": args.scheduler, "guidance_scale": args.guidance_scale, "dtype": str(dtype).removeprefix("torch."),
            "runs": args.runs, "machine": info, "results": rows, "setup_s": setup_s, "total_s": total_s,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def fmt(times: list[float]) -> str:
    return "[" + " ".join(f"{t:.2f}" for t in times) + "]"


if __name__ == "__main__":
    sys.exit(main())
