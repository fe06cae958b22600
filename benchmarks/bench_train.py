"""Training throughput and peak memory: our trainer against a step rebuilt from diffusers' recipe.

The reference is diffusers' `examples/instruct_pix2pix/train_instruct_pix2pix.py` as its
documentation describes it, written again here (not copied): each image resized to the resolution
and scaled to [-1, 1], the instruction tokenized; then per step the VAE posterior *sample* x
scaling factor of the edited image as the target latent, the posterior *mode* of the original
image as the conditioning latent, Gaussian noise, uniform timesteps, `add_noise`, the text encoder
on the instructions and (as the script does every step) on "", conditioning dropout, the channel
concat, MSE against the noise, backward, gradient clipping, AdamW, the lr scheduler and the EMA.

Ours is `instruct_pix2pix.training.train` itself, the whole loop (data reading, per-example
generators, accelerate, metrics.jsonl, ...), once without and once with `cache_latents`.

All three start from the same diffusers folder (the "small SD" of bench_edit.py, random weights)
and read the same parquet file through `open_dataset`, so all decode the same PNGs; same batch,
resolution (no augmentation), AdamW settings, gradient clipping and EMA, in one process. Windows
are interleaved and the order rotates each round. A window runs --warmup-steps untimed steps (one
epoch by default, so the cache is full), then --steps timed ones; its samples/s is samples over the
time from the end of the last warmup step to the end of the last step (for ours, the per-step
times train() writes to metrics.jsonl). Peak memory is taken over the timed steps: on the CPU the
process's peak RSS (VmHWM, reset through /proc/self/clear_refs) and how far it rose above the RSS
at the start; on a GPU torch.cuda.max_memory_allocated. The table gives medians over --rounds.

    .venv/bin/python benchmarks/bench_train.py                 # CPU (timings: benchmarks/README.md)
    .venv/bin/python benchmarks/bench_train.py --threads 1     # steadier on a machine shared with others
    .venv/bin/python benchmarks/bench_train.py --device cuda --size full --resolution 256 --batch-size 16
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # before transformers is imported: no import-time notices

import diffusers  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from bench_edit import OtherLoad, machine, save_model, scene  # noqa: E402  (benchmarks/ is this script's folder)
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel  # noqa: E402
from diffusers.training_utils import EMAModel  # noqa: E402

from instruct_pix2pix.data import EditExample, open_dataset, write_parquet  # noqa: E402
from instruct_pix2pix.loading import transformers_class  # noqa: E402
from instruct_pix2pix.training import load_config, train, trainer  # noqa: E402

INSTRUCTIONS = ["make it snowy", "turn the sky into a night", "add fireworks", "make it a watercolor painting"]
SETTINGS = dict(
    learning_rate=1e-4,
    adam_beta1=0.9,
    adam_beta2=0.999,
    adam_weight_decay=1e-2,
    adam_epsilon=1e-8,
    max_grad_norm=1.0,
    ema_decay=0.9999,
    conditioning_dropout_prob=0.05,
)


# --- measuring ---------------------------------------------------------------------------------


class Meter:
    """Wall time, CPU time and peak memory of the timed steps, from `start()` to `stop()`.

    CPU time (of this process, all its threads) barely moves when other processes share the
    machine, where wall time can double; peak memory is RSS on the CPU, allocated tensors on a GPU.
    """

    def __init__(self, device: torch.device, samples: int):
        self.device, self.samples = device, samples

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def start(self) -> None:
        self.sync()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        else:
            self.rss = rss_kb("VmRSS")
            try:
                Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux)
            except OSError:
                self.rss = None
        self.times = time.perf_counter(), time.process_time()

    def stop(self) -> dict:
        self.sync()
        wall, cpu = time.perf_counter() - self.times[0], time.process_time() - self.times[1]
        if self.device.type == "cuda":
            peak, rise = torch.cuda.max_memory_allocated() / 2**20, None
        elif self.rss is None:
            peak = rise = None
        else:
            peak, rise = rss_kb("VmHWM") / 1024, (rss_kb("VmHWM") - self.rss) / 1024
        return {
            "samples_per_s": self.samples / wall,
            "samples_per_cpu_s": self.samples / cpu,
            "peak_mib": peak,
            "rise_mib": rise,
        }


def rss_kb(field: str) -> int | None:
    try:
        line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field + ":"))
        return int(line.split()[1])
    except (OSError, StopIteration):
        return None


# --- the reference step ------------------------------------------------------------------------


def reference_window(folder: Path, data: Path, args, device: torch.device) -> dict:
    """`warmup + steps` steps of diffusers' recipe; the Meter's figures for the timed steps."""
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet").to(device)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae").to(device)
    text_encoder_class = transformers_class(folder, "text_encoder", "CLIPTextModel")
    text_encoder = text_encoder_class.from_pretrained(folder / "text_encoder").to(device)
    tokenizer = transformers_class(folder, "tokenizer", "CLIPTokenizer").from_pretrained(folder / "tokenizer")
    noise_scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    unet.train()
    optimizer = torch.optim.AdamW(
        unet.parameters(),
        lr=SETTINGS["learning_rate"],
        betas=(SETTINGS["adam_beta1"], SETTINGS["adam_beta2"]),
        weight_decay=SETTINGS["adam_weight_decay"],
        eps=SETTINGS["adam_epsilon"],
    )
    lr_scheduler = diffusers.optimization.get_scheduler("constant", optimizer=optimizer)
    ema = EMAModel(
        unet.parameters(), decay=SETTINGS["ema_decay"], model_cls=UNet2DConditionModel, model_config=unet.config
    )
    ema.to(device)
    generator = torch.Generator(device).manual_seed(args.seed)
    p = SETTINGS["conditioning_dropout_prob"]

    def tokenize(captions):
        return tokenizer(
            captions, max_length=tokenizer.model_max_length, padding="max_length", truncation=True, return_tensors="pt"
        ).input_ids

    def pixels(image):  # the script's convert_to_np, then 2 * (x / 255) - 1
        array = np.array(image.convert("RGB").resize((args.resolution, args.resolution))).transpose(2, 0, 1)
        return 2 * (torch.tensor(array) / 255) - 1

    def batches():  # the same examples in the same order as ours; an incomplete last batch is dropped
        dataset = open_dataset(data)
        for epoch in itertools.count():
            batch = []
            for _, example in dataset.examples(seed=args.seed, epoch=epoch):
                batch.append(example)
                if len(batch) == args.batch_size:
                    yield (
                        torch.stack([pixels(e.input_image) for e in batch]),
                        torch.stack([pixels(e.edited_image) for e in batch]),
                        tokenize([e.instruction for e in batch]),
                    )
                    batch = []

    data_iter, meter = batches(), Meter(device, args.steps * args.batch_size)
    for step in range(args.warmup_steps + args.steps):
        original, edited, input_ids = (t.to(device) for t in next(data_iter))
        if step == args.warmup_steps:
            meter.start()
        latents = vae.encode(edited).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        bsz = latents.shape[0]
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (bsz,), device=device).long()
        noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
        encoder_hidden_states = text_encoder(input_ids)[0]
        original_image_embeds = vae.encode(original).latent_dist.mode()
        random_p = torch.rand(bsz, device=device, generator=generator)
        prompt_mask = (random_p < 2 * p).reshape(bsz, 1, 1)
        null_conditioning = text_encoder(tokenize([""]).to(device))[0]
        encoder_hidden_states = torch.where(prompt_mask, null_conditioning, encoder_hidden_states)
        image_mask = 1 - ((random_p >= p).float() * (random_p < 3 * p).float())
        original_image_embeds = image_mask.reshape(bsz, 1, 1, 1) * original_image_embeds
        model_pred = unet(
            torch.cat([noisy_latents, original_image_embeds], dim=1),
            timesteps,
            encoder_hidden_states,
            return_dict=False,
        )[0]
        loss = F.mse_loss(model_pred.float(), noise.float(), reduction="mean")
        loss.item()  # the script logs the (gathered) loss every step
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), SETTINGS["max_grad_norm"])
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
        ema.step(unet.parameters())
    return meter.stop()


# --- ours --------------------------------------------------------------------------------------


def our_window(folder: Path, data: Path, out: Path, args, device: torch.device, cache: bool) -> dict:
    """`warmup + steps` steps of train(); the Meter's figures for the timed steps."""
    config = load_config(
        None,
        [
            f"{k}={v}"
            for k, v in dict(
                SETTINGS,
                pretrained_model_name_or_path=folder,
                train_data=data,
                output_dir=out,
                resolution=args.resolution,
                random_flip=False,
                max_resize_resolution=None,
                train_batch_size=args.batch_size,
                use_ema=True,
                seed=args.seed,
                max_train_steps=args.warmup_steps + args.steps,
                checkpointing_steps=10**9,
                checkpoints_total_limit=1,
                cache_latents=cache,
            ).items()
        ],
    )
    # Instrumentation only: the meter starts with the first timed step's loss (its batch read, as the
    # reference's), and stops at the final checkpoint, right after the last step.
    batch_loss, save_checkpoint = trainer.batch_loss, trainer.save_checkpoint
    calls, meter, result = [], Meter(device, args.steps * args.batch_size), {}

    def counting_batch_loss(*a, **k):
        calls.append(1)
        if len(calls) == args.warmup_steps + 1:
            meter.start()
        return batch_loss(*a, **k)

    def measuring_save_checkpoint(*a, **k):
        result.update(meter.stop())
        return save_checkpoint(*a, **k)

    trainer.batch_loss, trainer.save_checkpoint = counting_batch_loss, measuring_save_checkpoint
    try:
        train(config, show_progress=False)
    finally:
        trainer.batch_loss, trainer.save_checkpoint = batch_loss, save_checkpoint
    return result


# --- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="timed windows per side (median reported)")
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps per window")
    parser.add_argument("--warmup-steps", type=int, default=None, help="untimed steps first (default: one epoch)")
    parser.add_argument("--examples", type=int, default=8, help="training pairs in the dataset")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=128, help="training resolution; the images are 1.25x larger")
    parser.add_argument(
        "--size", choices=["small", "full"], default="small", help="small SD (default) or SD 1.5 widths"
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    args.warmup_steps = args.warmup_steps or args.examples // args.batch_size
    if min(args.rounds, args.steps, args.warmup_steps, args.batch_size) < 1 or args.examples < args.batch_size:
        parser.error(
            "--rounds, --steps, --warmup-steps and --batch-size must be at least 1, --examples at least the batch"
        )
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "1"  # train() runs through accelerate: keep it on the CPU too

    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    sides = {"ours": [], "reference": [], "ours, cached": []}
    with tempfile.TemporaryDirectory(prefix="ip2p-bench-train-") as tmp:
        folder, data = Path(tmp) / "model", Path(tmp) / "data.parquet"
        counts = save_model(folder, args.size, args.resolution, torch.float32)
        image = round(args.resolution * 1.25)
        write_parquet(
            [
                EditExample(
                    scene(image, image, 2 * i), scene(image, image, 2 * i + 1), INSTRUCTIONS[i % len(INSTRUCTIONS)]
                )
                for i in range(args.examples)
            ],
            data,
        )
        names = list(sides)
        with OtherLoad() as load:
            for round_ in range(args.rounds):
                for name in names[round_ % 3 :] + names[: round_ % 3]:  # the order rotates
                    gc.collect()
                    if name == "reference":
                        window = reference_window(folder, data, args, device)
                    else:
                        out = Path(tmp) / f"run-{round_}-{len(sides[name])}-{'cached' if 'cached' in name else 'plain'}"
                        window = our_window(folder, data, out, args, device, cache="cached" in name)
                    sides[name].append(window)
                    print(f"  round {round_ + 1} {name:<13} {window['samples_per_s']:7.2f} samples/s", file=sys.stderr)

    def median(name, key):
        values = [w[key] for w in sides[name] if w[key] is not None]
        return statistics.median(values) if values else None

    info = machine(device)
    params = ", ".join(f"{k} {v / 1e6:.1f}M" for k, v in counts.items())
    print(
        f"\n{args.size} SD ({params}); {args.examples} pairs at {args.resolution}px, batch {args.batch_size}, "
        f"AdamW + clipping + EMA, float32, {args.warmup_steps} warmup + {args.steps} timed steps per window"
    )
    memory_label = "peak allocated MiB" if device.type == "cuda" else "peak RSS MiB (rise)"
    print(
        f"\n{'side':<14}{'samples/s':>10}{'per CPU s':>11}   {'windows (samples/s)':<{6 * args.rounds}} {memory_label}"
    )
    for name in sides:
        peak, rise = median(name, "peak_mib"), median(name, "rise_mib")
        shown = "n/a" if peak is None else f"{peak:.0f}" + ("" if rise is None else f" (+{rise:.0f})")
        windows = " ".join(f"{w['samples_per_s']:5.2f}" for w in sides[name])
        print(
            f"{name:<14}{median(name, 'samples_per_s'):>10.2f}{median(name, 'samples_per_cpu_s'):>11.2f}   "
            f"{windows:<{6 * args.rounds}} {shown}"
        )
    ratios = {
        key: (median("ours", key) / median("reference", key), median("ours, cached", key) / median("ours", key))
        for key in ("samples_per_s", "samples_per_cpu_s")
    }
    print(f"\nmedians over {args.rounds} windows    wall time   CPU time")
    print(
        f"ours / reference         {ratios['samples_per_s'][0]:9.3f}  {ratios['samples_per_cpu_s'][0]:9.3f}   "
        "(>= 1.0 expected)"
    )
    print(f"cached / uncached (ours) {ratios['samples_per_s'][1]:9.3f}  {ratios['samples_per_cpu_s'][1]:9.3f}")
    other = f"{load.cores:.2f}" if load.cores is not None else "?"
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, torch threads {info['torch_threads']}, "
        f"torch {info['torch']}, diffusers {info['diffusers']}, device {device}; "
        f"other processes kept {other} cores busy; "
        f"total {time.perf_counter() - started:.0f} s"
    )
    if load.cores is not None and load.cores > 0.3:
        print("warning: other processes were busy during the runs; the figures are noisy", file=sys.stderr)
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "json"}
        args.json.write_text(
            json.dumps(
                {"settings": settings, "windows": sides, "ratios": ratios, "machine": info, "params": counts}, indent=2
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
