"""The training loop: one file, top to bottom, on one CPU, one GPU or many (through accelerate).

The data order is a pure function of (seed, epoch, position), and everything random about an
example (augmentation, VAE sampling, noise, timestep, conditioning dropout) comes from a generator
seeded by (seed, epoch, the example's global index). So a run resumed from a checkpoint computes
exactly the losses of a run never interrupted, and N processes with batch B draw exactly what one
process with batch N*B draws.

Every `validation_steps` steps the main process edits a few fixed images with the current (EMA)
weights and saves a labelled grid. With `cache_latents` (augmentation off) each example's VAE
posterior and text encoding are computed once and kept in memory.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from diffusers.optimization import get_scheduler
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from instruct_pix2pix.errors import EditWarning, UserError
from instruct_pix2pix.images import load_image, save_png, to_tensor
from instruct_pix2pix.models import EditingModel, load_model, read_json, resolve_source, save_model, single_file_in_channels
from instruct_pix2pix.training.config import TrainConfig
from instruct_pix2pix.training.objective import training_loss, widen_conv_in

CHECKPOINT_PREFIX = "checkpoint-"


# --- model -------------------------------------------------------------------------------------


def load_parts(config: TrainConfig) -> EditingModel:
    """The model to train: an editing or text-to-image checkpoint (conv_in widened), or new from configs."""
    source = config.pretrained_model_name_or_path
    if source and resolve_source(source)[0] == "file":
        model = load_single_file_to_train(Path(source), config.pretrained_config)
    elif source:
        model = load_model(source, config=config.pretrained_config, editing_only=False)
    else:
        model = build_from_configs(Path(config.from_scratch))
    latent_channels = model.vae.config.latent_channels
    if model.unet.config.in_channels not in (latent_channels, 2 * latent_channels):
        raise UserError(f"{source or config.from_scratch} has a UNet with {model.unet.config.in_channels} input channels; training starts from "
                        f"a text-to-image ({latent_channels}) or an editing ({2 * latent_channels}) model")
    widen_conv_in(model.unet, 2 * latent_channels)
    return model


def load_single_file_to_train(path: Path, config_dir: str | None) -> EditingModel:
    """A single-file checkpoint, text-to-image (4 channels) or editing (8), read with the editing model's configs."""
    from instruct_pix2pix import single_file

    parts = single_file.load_single_file(path, config_dir or single_file.SD15_CONFIG_DIR, in_channels=single_file_in_channels(path))
    return EditingModel(parts["unet"], parts["vae"], parts["text_encoder"], parts["tokenizer"], dict(parts["scheduler"].config), str(path))


def build_from_configs(folder: Path) -> EditingModel:
    """A diffusers folder of configs: the UNet starts at random; VAE and text encoder load their
    weights when the folder has them (the frozen pretrained parts) and start at random otherwise."""
    import transformers
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from instruct_pix2pix.models import transformers_class

    def has_weights(part):
        return any(f.suffix in (".safetensors", ".bin") for f in (folder / part).glob("*"))

    for needed in ("unet/config.json", "vae/config.json", "text_encoder/config.json", "scheduler/scheduler_config.json", "tokenizer"):
        if not (folder / needed).exists():
            raise UserError(f"from_scratch folder {folder} is missing {needed}")
    unet = UNet2DConditionModel.from_config(read_json(folder / "unet" / "config.json"))
    vae = (AutoencoderKL.from_pretrained(folder, subfolder="vae") if has_weights("vae")
           else AutoencoderKL.from_config(read_json(folder / "vae" / "config.json")))
    text_class = transformers_class(folder, "text_encoder", "CLIPTextModel")
    text_encoder = (text_class.from_pretrained(folder / "text_encoder") if has_weights("text_encoder")
                    else text_class(transformers.AutoConfig.from_pretrained(folder / "text_encoder")))
    tokenizer = transformers_class(folder, "tokenizer", "CLIPTokenizer").from_pretrained(folder / "tokenizer")
    return EditingModel(unet, vae, text_encoder, tokenizer, read_json(folder / "scheduler" / "scheduler_config.json"), str(folder))


# --- data --------------------------------------------------------------------------------------


def augment_pair(input_image: Image.Image, edited_image: Image.Image, config: TrainConfig, generator: torch.Generator):
    """The reference's augmentation: both images resized to one random square size, then one shared
    random crop and one shared random flip. Without augmentation nothing is drawn (so cached
    examples draw their noise exactly as uncached ones do) and the pair is just resized."""
    size, top, left = config.resolution, 0, 0
    if (config.max_resize_resolution or config.resolution) > config.resolution:
        size = int(torch.randint(config.resolution, config.max_resize_resolution + 1, (), generator=generator))
        top, left = (int(torch.randint(0, size - config.resolution + 1, (), generator=generator)) for _ in range(2))
    pair = to_tensor([image.resize((size, size), Image.Resampling.LANCZOS) for image in (input_image, edited_image)])
    pair = pair[:, :, top : top + config.resolution, left : left + config.resolution]
    if config.random_flip and torch.rand((), generator=generator) < 0.5:
        pair = pair.flip(-1)
    return pair[0], pair[1]


def example_generator(seed: int, epoch: int, global_index: int) -> torch.Generator:
    """The randomness of one example, independent of which process or batch it lands in."""
    entropy = np.random.SeedSequence([seed, epoch, global_index]).generate_state(2, dtype=np.uint32)
    return torch.Generator("cpu").manual_seed(int(entropy[0]) << 31 | int(entropy[1]) >> 1)


def batches(dataset, config: TrainConfig, state: dict, rank: int, world_size: int):
    """Endless (next position, [(example, generator)]) batches from where `state` says this process stopped."""
    while True:
        batch, yielded = [], state["position"] > 0
        epoch = state["epoch"]
        for position, example in dataset.examples(seed=config.seed, epoch=epoch, start=state["position"],
                                                  rank=rank, world_size=world_size):
            batch.append((example, example_generator(config.seed, epoch, rank + world_size * position)))
            if len(batch) == config.train_batch_size:
                yield position + 1, batch
                batch, yielded = [], True
        if not yielded:
            raise UserError(
                f"{config.train_data} gives this process fewer usable examples than train_batch_size={config.train_batch_size}"
            )
        state["epoch"] += 1  # an incomplete last batch is dropped, as with drop_last
        state["position"] = 0


# --- checkpoints -------------------------------------------------------------------------------


def checkpoints(output_dir: Path) -> list[Path]:
    found = [p for p in output_dir.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and p.name[len(CHECKPOINT_PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def save_checkpoint(accelerator: Accelerator, output_dir: Path, step: int, state: dict, limit: int | None):
    """accelerate's state plus ours, written under a temporary name and renamed: a kill never leaves half a checkpoint."""
    final = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    tmp = output_dir / f".{final.name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    rank = accelerator.process_index
    (tmp / f"trainer_state_{rank}.json").write_text(json.dumps({**state, "step": step}))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoints(output_dir)[: -limit if limit else None] if limit else []:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def find_checkpoint(config: TrainConfig) -> Path | None:
    if not config.resume_from_checkpoint:
        return None
    if config.resume_from_checkpoint == "latest":
        found = checkpoints(Path(config.output_dir))
        return found[-1] if found else None  # nothing yet: start from the beginning
    path = Path(config.resume_from_checkpoint)
    if not path.is_dir():
        raise UserError(f"no checkpoint folder {path} (use resume_from_checkpoint=latest to take the newest)")
    return path


# --- the loop ----------------------------------------------------------------------------------


def train(config: TrainConfig, *, show_progress: bool = True) -> Path:
    """Train an editing model; returns the folder of the final model (output_dir/model)."""
    output_dir = Path(config.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=config.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), automatic_checkpoint_naming=False),
    )
    rank, world_size, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.json").write_text(json.dumps(asdict(config), indent=2))

    from instruct_pix2pix.data import open_dataset

    dataset = open_dataset(config.train_data, split=config.train_split, columns=config.data_columns)
    if config.cache_latents and "streamed" in dataset.kind:  # its examples have no lasting identity, and no end
        raise UserError(f"cache_latents needs a dataset on disk, not the streamed {config.train_data}; download it first")
    validation_images = validation_inputs(config, dataset) if config.validation_steps else []  # on every process: errors alike
    torch.manual_seed(config.seed)  # the UNet's initialisation when training from scratch
    model = load_parts(config)
    from diffusers import DDPMScheduler

    noise_scheduler = DDPMScheduler.from_config(model.scheduler_config)
    unet, vae, text_encoder, tokenizer = model.unet, model.vae, model.text_encoder, model.tokenizer
    vae.requires_grad_(False).eval().to(device)
    text_encoder.requires_grad_(False).eval().to(device)
    unet.train()
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(
        unet.parameters(), lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay, eps=config.adam_epsilon,
    )
    # As the reference script: accelerate steps the scheduler once per process per optimizer step.
    lr_scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps * world_size,
                                 num_training_steps=config.max_train_steps * world_size)  # fmt: skip
    ema = None
    if config.use_ema:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(unet.parameters(), decay=config.ema_decay, use_ema_warmup=True,
                       model_cls=type(unet), model_config=unet.config)
        ema.to(device)
        accelerator.register_for_checkpointing(ema)
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)

    state = {"epoch": 0, "position": 0, "step": 0}
    checkpoint = find_checkpoint(config)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        state = json.loads((checkpoint / f"trainer_state_{rank}.json").read_text())
    metrics_path = output_dir / "metrics.jsonl"
    if accelerator.is_main_process:
        keep_metrics_up_to(metrics_path, state["step"])  # lines a killed run wrote after its last checkpoint
    if config.report_to:
        accelerator.init_trackers("instruct-pix2pix", config={k: v for k, v in asdict(config).items() if isinstance(v, (int, float, str, bool))})

    with torch.no_grad():
        null_text_embeds = encode_text(tokenizer, text_encoder, [""], device)
    data = batches(dataset, config, state, rank, world_size)
    cache = {} if config.cache_latents else None
    progress = tqdm(total=config.max_train_steps, initial=state["step"], disable=not (show_progress and accelerator.is_main_process),
                    desc="training", unit="step")
    samples_per_step = config.train_batch_size * config.gradient_accumulation_steps * world_size
    step_losses, started = [], time.perf_counter()
    while state["step"] < config.max_train_steps:
        position, examples = next(data)
        with accelerator.accumulate(unet):
            loss = batch_loss(examples, config, unet, vae, text_encoder, tokenizer, noise_scheduler, null_text_embeds, device, cache)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(unet.parameters(), config.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
        state["position"] = position
        step_losses.append(accelerator.gather(loss.detach()[None]).mean().item())
        if not accelerator.sync_gradients:
            continue
        state["step"] += 1
        if ema is not None:
            ema.step(unet.parameters())
        elapsed, started = time.perf_counter() - started, time.perf_counter()
        record = {"step": state["step"], "loss": sum(step_losses) / len(step_losses), "lr": lr_scheduler.get_last_lr()[0],
                  "epoch": state["epoch"], "samples_per_s": samples_per_step / elapsed}
        step_losses = []
        if accelerator.is_main_process:
            with metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        if config.report_to:
            accelerator.log({k: v for k, v in record.items() if k != "step"}, step=state["step"])
        progress.set_postfix(loss=f"{record['loss']:.4f}", samples_s=f"{record['samples_per_s']:.1f}")
        progress.update()
        last = state["step"] == config.max_train_steps
        if config.validation_steps and (state["step"] % config.validation_steps == 0 or last):
            if accelerator.is_main_process:
                parts = EditingModel(accelerator.unwrap_model(unet), vae, text_encoder, tokenizer, model.scheduler_config)
                save_validation_grid(config, state["step"], validation_images, parts, ema, device)
            started = time.perf_counter()  # the grid's time is not the next step's
        if state["step"] % config.checkpointing_steps == 0 or last:
            save_checkpoint(accelerator, output_dir, state["step"], state, config.checkpoints_total_limit)
    progress.close()

    final = output_dir / "model"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        trained = accelerator.unwrap_model(unet)
        extra = {}
        if ema is not None:  # unet/ holds the EMA weights (what editing uses); unet_non_ema/ the raw ones
            extra["unet_non_ema"] = trained
            trained = type(trained).from_config(trained.config)
            ema.copy_to(trained.parameters())
        save_model(EditingModel(trained, vae, text_encoder, tokenizer, model.scheduler_config), final, extra_unets=extra)
    accelerator.end_training()
    return final


# --- validation --------------------------------------------------------------------------------

VALIDATION_IMAGES = 4  # without validation_images: the inputs of the first training examples
GRID_CELL = 128  # the smallest side of a grid cell, in pixels, so that its label fits


def validation_inputs(config: TrainConfig, dataset) -> list[Image.Image]:
    """The grid's fixed input images, center-cropped to training's square at its resolution."""
    if config.validation_images:
        images = [load_image(path) for path in config.validation_images]
    else:
        first = itertools.islice(dataset.examples(seed=config.seed, epoch=0), VALIDATION_IMAGES)
        images = [example.input_image for _, example in first]
    return [ImageOps.fit(image, (config.resolution, config.resolution), Image.Resampling.LANCZOS) for image in images]


def save_validation_grid(config: TrainConfig, step: int, images: list[Image.Image], model: EditingModel, ema, device) -> None:
    """Edit every validation image with every validation prompt, with the EMA weights when there
    are some, and save the grid as output_dir/validation/step-NNNNNN.png. The UNet is the one being
    trained: its weights, mode and requires_grad flags are put back afterwards."""
    from instruct_pix2pix.editing import Editor, NumericalError

    unet, prompts = model.unet, config.validation_prompts
    requires_grad = [p.requires_grad for p in unet.parameters()]
    if ema is not None:
        ema.store(unet.parameters())
        ema.copy_to(unet.parameters())
    try:
        # The editor draws only from its own seeded generators; fork_rng makes sure nothing else moves.
        with torch.random.fork_rng(devices=[]):
            result = Editor(model, device).edit(
                [image for _ in prompts for image in images], [prompt for prompt in prompts for _ in images],
                seed=config.seed, num_inference_steps=config.validation_inference_steps, keep_size=True,
                batch_size=config.train_batch_size, show_progress=False,
            )
    except NumericalError as error:  # a diverging or float16 model: say so, and keep training
        warnings.warn(f"no validation grid at step {step}: {error}", EditWarning)
        return
    finally:
        if ema is not None:
            ema.restore(unet.parameters())
        unet.train()
        for parameter, flag in zip(unet.parameters(), requires_grad):
            parameter.requires_grad_(flag)
    columns = [images] + [result.images[k * len(images) : (k + 1) * len(images)] for k in range(len(prompts))]
    grid = labelled_grid([f"step {step}: input", *prompts], columns)
    path = Path(config.output_dir) / "validation" / f"step-{step:06d}.png"
    save_png(grid, path, {"step": str(step), "prompts": json.dumps(prompts)})  # atomically: temporary name, then rename


def labelled_grid(labels: list[str], columns: list[list[Image.Image]]) -> Image.Image:
    """Columns of equal square images side by side, each under its label (cut to the column's width)."""
    from PIL import ImageDraw, ImageFont

    cell, band = max(GRID_CELL, columns[0][0].width), 16
    grid = Image.new("RGB", (cell * len(columns), band + cell * len(columns[0])), "white")
    draw, font = ImageDraw.Draw(grid), ImageFont.load_default()
    for x, (label, column) in enumerate(zip(labels, columns)):
        while draw.textlength(label, font=font) > cell - 4:
            label = label[:-4] + "..."
        draw.text((x * cell + 2, 2), label, fill="black", font=font)
        for y, image in enumerate(column):
            grid.paste(image.resize((cell, cell), Image.Resampling.NEAREST), (x * cell, band + y * cell))
    return grid


def encode_text(tokenizer, text_encoder, prompts: list[str], device) -> torch.Tensor:
    tokens = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt")
    return text_encoder(tokens.input_ids.to(device))[0]


@torch.no_grad()
def encode_batch(examples, config, vae, text_encoder, tokenizer, device):
    """What the frozen parts make of a batch: the edited image's posterior (mean, std), the input
    image's posterior mode, and the instruction's encoding."""
    pairs = [augment_pair(e.input_image, e.edited_image, config, g) for e, g in examples]
    posterior = vae.encode(torch.stack([p[1] for p in pairs]).to(device)).latent_dist
    image_latents = vae.encode(torch.stack([p[0] for p in pairs]).to(device)).latent_dist.mode()
    text_embeds = encode_text(tokenizer, text_encoder, [e.instruction for e, _ in examples], device)
    return posterior.mean, posterior.std, image_latents, text_embeds


def encode_cached(examples, config, vae, text_encoder, tokenizer, device, cache: dict):
    """encode_batch, each example encoded once (in CPU memory, by its key): without augmentation an
    example looks the same every epoch. The posterior's parameters are kept, not a sample, so the
    target is still a fresh sample each time."""
    missing = [(e, g) for e, g in examples if e.key not in cache]
    if missing:
        for (e, _), *encoded in zip(missing, *encode_batch(missing, config, vae, text_encoder, tokenizer, device)):
            cache[e.key] = [t.to("cpu", copy=True) for t in encoded]
    return [torch.stack(column).to(device) for column in zip(*(cache[e.key] for e, _ in examples))]


def batch_loss(examples, config, unet, vae, text_encoder, tokenizer, noise_scheduler, null_text_embeds, device, cache=None):
    """The loss of a batch of (example, generator) pairs; each example draws only from its own generator."""
    if cache is None:
        mean, std, image_latents, text_embeds = encode_batch(examples, config, vae, text_encoder, tokenizer, device)
    else:
        mean, std, image_latents, text_embeds = encode_cached(examples, config, vae, text_encoder, tokenizer, device, cache)
    shape = mean.shape[1:]
    draws = [(torch.randn(shape, generator=g), torch.randn(shape, generator=g),
              torch.randint(0, noise_scheduler.config.num_train_timesteps, (), generator=g), torch.rand((), generator=g))
             for _, g in examples]
    sample_eps, noise, timesteps, r = (torch.stack(column).to(device) for column in zip(*draws))
    # z = mean + std * eps: the posterior sample, drawn from our generators (the same on every device)
    target_latents = (mean + std * sample_eps.to(mean)) * vae.config.scaling_factor
    return training_loss(unet, noise_scheduler, target_latents, image_latents, text_embeds, null_text_embeds,
                         noise.to(target_latents), timesteps, r, config.conditioning_dropout_prob)


def keep_metrics_up_to(path: Path, step: int) -> None:
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, path)
