"""Time `Editor.edit` against diffusers' StableDiffusionInstructPix2PixPipeline on the same model.

One diffusers-format folder (a "small SD": the SD 1.5 block structure at reduced widths, random
weights) is saved once into a temporary directory and loaded by both. Both edit the same image
with the same instruction, seed, number of steps and scheduler, in the same process, interleaved
(who goes first alternates: ours, diffusers, diffusers, ours, ...) after one warm-up run each. The
table shows the median of --runs runs at image_guidance_scale 1.5 (three UNet branches for both)
and 1.0 (diffusers still runs three branches, we run two). The warm-up outputs are compared once,
as float pixels, so the two sides are known to do the same work.

    .venv/bin/python benchmarks/bench_edit.py                        # CPU, small SD (timings: benchmarks/README.md)
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
import warnings
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # before transformers is imported: no import-time notices

import diffusers  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    EulerAncestralDiscreteScheduler,
    StableDiffusionInstructPix2PixPipeline,
    UNet2DConditionModel,
)  # fmt: skip
from PIL import Image  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

from instruct_pix2pix.editing import Editor  # noqa: E402
from instruct_pix2pix.loading import SD15_CONFIG_DIR  # noqa: E402
from instruct_pix2pix.settings import SCHEDULERS, make_scheduler  # noqa: E402
from instruct_pix2pix.tokenizers import build_clip_tokenizer  # noqa: E402

# The scheduler config of timbrooks/instruct-pix2pix (SD 1.5's), as shipped for single files.
SD15_SCHEDULER_CONFIG = json.loads((SD15_CONFIG_DIR / "scheduler" / "scheduler_config.json").read_text())
WORDS = "make it snowy turn the sky into a night add fireworks red blue circle square painting watercolor".split()
PROMPT = "make it night"  # in the small world's vocabulary too

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
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=mlp,
            num_hidden_layers=layers,
            num_attention_heads=text_heads,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=image_size // 8,
        in_channels=8,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=spec["unet"],
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=hidden,
        attention_head_dim=spec["heads"],
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        block_out_channels=spec["vae"],
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=2,
        norm_num_groups=32,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=image_size,
    )
    scheduler = EulerAncestralDiscreteScheduler.from_config(SD15_SCHEDULER_CONFIG)
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


def save_model(folder: Path, size: str, image_size: int, dtype: torch.dtype) -> dict[str, int]:
    parts = build_parts(size, image_size)
    counts = {name: sum(p.numel() for p in parts[name].parameters()) for name in ("unet", "vae", "text_encoder")}
    if dtype != torch.float32:  # saved in float16 for --full-size: half the disk, and both sides load it as float16
        for name in ("unet", "vae", "text_encoder"):
            parts[name].to(dtype)
    pipe = StableDiffusionInstructPix2PixPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
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
        "cpu": cpu,
        "cores": cores,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def busy_seconds() -> float | None:
    """CPU seconds all processes on the machine have used so far (from /proc/stat), or None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_seconds() -> float:
    times = os.times()
    return times.user + times.system


class OtherLoad:
    """How many cores other processes kept busy while we ran: a contended machine makes timings noisy."""

    def __enter__(self):
        self.start = (busy_seconds(), own_seconds(), time.perf_counter())
        return self

    def __exit__(self, *exc):
        busy, own, wall = busy_seconds(), own_seconds(), time.perf_counter()
        if busy is None or self.start[0] is None:
            self.cores = None
        else:
            self.cores = max(0.0, ((busy - self.start[0]) - (own - self.start[1])) / (wall - self.start[2]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per side and setting (median reported)")
    parser.add_argument("--steps", type=int, default=10, help="sampling steps")
    parser.add_argument(
        "--size", type=int, default=None, help="image side in pixels (default 256, 512 with --full-size)"
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or mps")
    parser.add_argument("--full-size", action="store_true", help="real SD 1.5 widths in float16 (for a GPU)")
    parser.add_argument("--scheduler", default="euler_ancestral", choices=list(SCHEDULERS))
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    parser.add_argument("--image-guidance-scales", type=float, nargs="+", default=[1.5, 1.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument(
        "--model",
        default=None,
        help="time this model folder instead of a built one; 'default' is the shipped "
        "small-world model (e.g. --model default --size 64 --steps 20)",
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or args.steps < 1:
        parser.error("--runs and --steps must be at least 1")
    size = args.size or (512 if args.full_size else 256)
    if size % 64:
        parser.error("--size must be a multiple of 64")

    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    device = torch.device(args.device)
    dtype = torch.float16 if args.full_size else torch.float32
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    info = machine(device)
    model_name = "full SD 1.5 widths" if args.full_size else "small SD"
    spec = SIZES["full" if args.full_size else "small"]

    with tempfile.TemporaryDirectory(prefix="ip2p-bench-") as tmp:
        folder = Path(tmp) / "model"
        if args.model:
            from instruct_pix2pix.loading import DEFAULT_MODEL

            folder = DEFAULT_MODEL if args.model == "default" else Path(args.model)
            model_name, spec, counts = f"model {args.model}", {}, {}
        else:
            counts = save_model(folder, "full" if args.full_size else "small", size, dtype)
        ours = Editor.from_pretrained(folder, device=device, dtype=dtype)
        with warnings.catch_warnings():  # newer diffusers call it `dtype`; `torch_dtype` works in all
            warnings.simplefilter("ignore", FutureWarning)
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
                image,
                PROMPT,
                **common,
                image_guidance_scale=igs,
                seed=args.seed,
                scheduler=args.scheduler,
                resolution=size,
                show_progress=False,
            )

        def run_diffusers(igs: float, output_type: str = "pil"):
            generator = torch.Generator("cpu").manual_seed(args.seed)
            return pipe(
                PROMPT, image=image, **common, image_guidance_scale=igs, generator=generator, output_type=output_type
            )

        def timed(fn) -> float:
            gc.collect()
            sync()
            start = time.perf_counter()
            fn()
            sync()
            return time.perf_counter() - start

        if not counts:  # a given model: count what was loaded
            model = ours.model
            counts = {
                part: sum(p.numel() for p in getattr(model, part).parameters())
                for part in ("unet", "vae", "text_encoder")
            }
            spec = {
                "unet": model.unet.config.block_out_channels,
                "vae": model.vae.config.block_out_channels,
                "text": (model.text_encoder.config.hidden_size, model.text_encoder.config.num_hidden_layers),
            }
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
            with OtherLoad() as load:
                for run in range(args.runs):
                    # Interleaved, and who goes first alternates (ours, diffusers, diffusers, ours, ...) so
                    # that neither side always runs right after the other or gets a drift's better half.
                    pair = [
                        (times_ours, lambda igs=igs: run_ours(igs)),
                        (times_diffusers, lambda igs=igs: run_diffusers(igs)),
                    ]
                    for times, fn in pair if run % 2 == 0 else pair[::-1]:
                        times.append(timed(fn))
            row = {
                "image_guidance_scale": igs,
                "ours_median_s": statistics.median(times_ours),
                "diffusers_median_s": statistics.median(times_diffusers),
                "ours_min_s": min(times_ours),
                "diffusers_min_s": min(times_diffusers),
                "ours_s": times_ours,
                "diffusers_s": times_diffusers,
                "max_abs_pixel_diff": max_diff,
                "other_processes_cores": load.cores,
            }
            row["ratio"] = row["ours_median_s"] / row["diffusers_median_s"]
            rows.append(row)
            other = "" if load.cores is None else f"  (other processes kept {load.cores:.2f} cores busy)"
            print(f"  igs {igs}: ours {fmt(times_ours)}  diffusers {fmt(times_diffusers)}{other}", flush=True)

        # Context for the ratios: one bare UNet forward with 3 and with 2 branches (median of 7, after a warm-up).
        unet_s = {}
        unet = ours.model.unet
        with torch.inference_mode():
            for branches in (3, 2):
                latents = torch.randn(
                    branches, unet.config.in_channels, size // 8, size // 8, device=device, dtype=dtype
                )
                states = torch.randn(branches, 77, unet.config.cross_attention_dim, device=device, dtype=dtype)

                def step(latents=latents, states=states):
                    return unet(latents, 500, encoder_hidden_states=states, return_dict=False)

                step()
                unet_s[branches] = statistics.median(timed(step) for _ in range(7))
        ours = pipe = None  # free both before the next size

    total_s = time.perf_counter() - started
    print()
    print(
        f"{'setting':<28} {'ours median s':>14} {'diffusers median s':>19} {'ours/diffusers':>15} {'max |Δpixel|':>13}"
    )
    for row in rows:
        setting = f"image_guidance_scale {row['image_guidance_scale']}"
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
    print(
        f"median of {args.runs} interleaved runs (ours first, then diffusers first, ...) after one warm-up each; "
        f"total {total_s:.0f} s"
    )
    unet_share = args.steps * unet_s[3] / statistics.median(row["diffusers_median_s"] for row in rows)
    print(
        f"one UNet forward: 3 branches {unet_s[3]:.3f} s, 2 branches {unet_s[2]:.3f} s "
        f"(ratio {unet_s[2] / unet_s[3]:.3f}); the UNet is about {unet_share:.0%} of a diffusers edit"
    )
    loads = [row["other_processes_cores"] for row in rows if row["other_processes_cores"] is not None]
    if loads and max(loads) > 0.25:
        print(
            f"warning: other processes kept up to {max(loads):.2f} cores busy during the timed runs; "
            "the timings are noisy (run it on a quiet machine, or with --threads 1 to be less sensitive to one "
            "busy neighbour)"
        )
    if args.full_size:
        print(
            "note: our Editor keeps the VAE in float32 under float16 (the SD VAE overflows in float16); "
            "diffusers runs it in float16"
        )

    if args.json:
        record = {
            "model": model_name,
            "parameters": counts,
            "widths": spec,
            "image_size": size,
            "steps": args.steps,
            "scheduler": args.scheduler,
            "guidance_scale": args.guidance_scale,
            "dtype": str(dtype).removeprefix("torch."),
            "runs": args.runs,
            "machine": info,
            "results": rows,
            "unet_forward_s": {f"{b}_branches": t for b, t in unet_s.items()},
            "setup_s": setup_s,
            "total_s": total_s,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def fmt(times: list[float]) -> str:
    return "[" + " ".join(f"{t:.2f}" for t in times) + "]"


if __name__ == "__main__":
    sys.exit(main())
