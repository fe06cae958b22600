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

import copy
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from diffusers.optimization import get_scheduler
from PIL import Image
from tqdm.auto import tqdm

from instruct_pix2pix.atomic import write_json
from instruct_pix2pix.errors import UserError
from instruct_pix2pix.images import to_tensor
from instruct_pix2pix.loading import (
    ANY,
    TEXT_TO_IMAGE,
    ModelBundle,
    build_from_configs,
    load_model,
    save_model,
    widen_conv_in,
)
from instruct_pix2pix.loading.bundle import check_unet_channels
from instruct_pix2pix.prompts import encode_prompts
from instruct_pix2pix.training.checkpoints import (
    check_output_dir,
    find_checkpoint,
    keep_metrics_up_to,
    load_trainer_state,
    save_checkpoint,
)
from instruct_pix2pix.training.config import TrainConfig
from instruct_pix2pix.training.objective import changed_region_weights, text_to_image_loss, training_loss
from instruct_pix2pix.training.validation import save_validation_grid, validation_inputs


def load_parts(config: TrainConfig) -> ModelBundle:
    """The model to train. Editing: an editing or text-to-image model (conv_in widened), or new from
    configs. Text to image: a text-to-image model, or new from configs."""
    editing = config.task == "edit"
    kind = ANY if editing else TEXT_TO_IMAGE
    if config.pretrained_model_name_or_path:
        source, single_file_config = config.pretrained_model_name_or_path, config.pretrained_config
        return load_model(source, kind=kind, widen=editing, config=single_file_config)
    model = build_from_configs(Path(config.from_scratch))
    latent_channels = model.vae.config.latent_channels
    check_unet_channels(model.unet.config.in_channels, latent_channels, kind, config.from_scratch)
    if editing:
        widen_conv_in(model.unet, 2 * latent_channels)
    return model


# --- data --------------------------------------------------------------------------------------


def augment(images: list[Image.Image], config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """The reference's augmentation: the images (an edit's two) resized to one random square size,
    then one shared random crop and one shared random flip. Without augmentation nothing is drawn
    (so cached examples draw their noise exactly as uncached ones do) and they are just resized."""
    size, top, left = config.resolution, 0, 0
    if (config.max_resize_resolution or config.resolution) > config.resolution:
        size = int(torch.randint(config.resolution, config.max_resize_resolution + 1, (), generator=generator))
        top, left = (int(torch.randint(0, size - config.resolution + 1, (), generator=generator)) for _ in range(2))
    pixels = to_tensor([image.resize((size, size), Image.Resampling.LANCZOS) for image in images])
    pixels = pixels[:, :, top : top + config.resolution, left : left + config.resolution]
    if config.random_flip and torch.rand((), generator=generator) < 0.5:
        pixels = pixels.flip(-1)
    return pixels


def example_generator(seed: int, epoch: int, global_index: int) -> torch.Generator:
    """The randomness of one example, independent of which process or batch it lands in."""
    entropy = np.random.SeedSequence([seed, epoch, global_index]).generate_state(2, dtype=np.uint32)
    return torch.Generator("cpu").manual_seed(int(entropy[0]) << 31 | int(entropy[1]) >> 1)


def batches(dataset, config: TrainConfig, state: dict, rank: int, world_size: int):
    """Endless (next position, [(example, generator)]) batches from where `state` says this process stopped."""
    while True:
        batch, yielded = [], state["position"] > 0
        epoch = state["epoch"]
        for position, example in dataset.examples(
            seed=config.seed, epoch=epoch, start=state["position"], rank=rank, world_size=world_size
        ):
            batch.append((example, example_generator(config.seed, epoch, rank + world_size * position)))
            if len(batch) == config.train_batch_size:
                yield position + 1, batch
                batch, yielded = [], True
        if not yielded:
            raise UserError(
                f"{config.train_data} gives this process fewer usable examples than "
                f"train_batch_size={config.train_batch_size}"
            )
        state["epoch"] += 1  # an incomplete last batch is dropped, as with drop_last
        state["position"] = 0


def pick_side(config: TrainConfig, generator: torch.Generator) -> str:
    """Which image of an example trains: editing trains the edited one; text to image draws one of
    the two (both are pictures with a caption: a dataset of edits is a text-to-image dataset twice
    over) from the example's generator, for every example, cached or not, so the draws that follow
    are the same either way."""
    if config.task == "edit":
        return "edited"
    return "input" if torch.rand((), generator=generator) < 0.5 else "edited"


def training_text(example, side: str, config: TrainConfig) -> str:
    """The text a sample is conditioned on: the instruction (editing) or the trained image's caption."""
    if config.task == "edit":
        return example.instruction
    caption = getattr(example, f"{side}_caption")
    if not caption:
        raise UserError(
            f"text-to-image training needs captions, and {example.key} has no {side} caption: give a dataset "
            "with input and edited captions (map their columns with data_columns)"
        )
    return caption


def training_sample(example, side: str, config: TrainConfig, generator: torch.Generator):
    """(target image, conditioning image or None, text) of one example: for editing the edited image,
    conditioned on the input image and the instruction; for text to image one image and its caption."""
    text = training_text(example, side, config)
    if config.task == "edit":
        source, target = augment([example.input_image, example.edited_image], config, generator)
        return target, source, text
    return augment([getattr(example, f"{side}_image")], config, generator)[0], None, text


# --- the loop ----------------------------------------------------------------------------------


def train(config: TrainConfig, *, show_progress: bool = True, cpu: bool = False) -> Path:
    """Train an editing or (task: text-to-image) a text-to-image model (on the CPU with `cpu`, else
    where accelerate puts it); returns the folder of the final model (output_dir/model)."""
    output_dir = Path(config.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=config.report_to,
        cpu=cpu,
        project_config=ProjectConfiguration(project_dir=str(output_dir), automatic_checkpoint_naming=False),
    )
    rank, world_size, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    checkpoint = find_checkpoint(config.resume_from_checkpoint, output_dir)  # before anything is written
    if accelerator.is_main_process:
        resuming = bool(config.resume_from_checkpoint)
        check_output_dir(output_dir, resuming=resuming, overwrite=config.overwrite_output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        write_json(output_dir / "config.json", asdict(config))

    from instruct_pix2pix.data import open_dataset

    dataset = open_dataset(config.train_data, split=config.train_split, columns=config.data_columns)
    if config.cache_latents and "streamed" in dataset.kind:  # its examples have no lasting identity, and no end
        raise UserError(
            f"cache_latents needs a dataset on disk, not the streamed {config.train_data}; download it first"
        )
    validation_images = (
        validation_inputs(config, dataset) if config.validation_steps else []
    )  # on every process: errors alike
    torch.manual_seed(config.seed)  # the UNet's initialisation when training from scratch
    model = load_parts(config)
    from diffusers import DDPMScheduler

    noise_scheduler = DDPMScheduler.from_config(model.scheduler_config)
    unet, vae, text_encoder, tokenizer = model.unet, model.vae, model.text_encoder, model.tokenizer
    vae.requires_grad_(False).eval().to(device)
    text_encoder.requires_grad_(config.train_text_encoder).train(config.train_text_encoder).to(device)
    unet.train()
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    groups = [{"params": list(unet.parameters())}]
    if config.train_text_encoder:
        groups.append({"params": list(text_encoder.parameters()),
                       "lr": config.text_encoder_learning_rate or config.learning_rate})  # fmt: skip
    optimizer = torch.optim.AdamW(
        groups,
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
    )
    # As the reference script: accelerate steps the scheduler once per process per optimizer step.
    lr_scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer,
        num_warmup_steps=config.lr_warmup_steps * world_size,
        num_training_steps=config.max_train_steps * world_size,
    )
    ema = None
    if config.use_ema:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(
            trained_parameters(unet, text_encoder, config),
            decay=config.ema_decay,
            use_ema_warmup=True,
            model_cls=type(unet),
            model_config=unet.config,
        )
        ema.to(device)
        accelerator.register_for_checkpointing(ema)
    if config.train_text_encoder:
        unet, text_encoder, optimizer, lr_scheduler = accelerator.prepare(unet, text_encoder, optimizer, lr_scheduler)
    else:
        unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)

    state = {"epoch": 0, "position": 0, "step": 0}
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        state = load_trainer_state(checkpoint, rank)
    metrics_path = output_dir / "metrics.jsonl"
    if accelerator.is_main_process:
        keep_metrics_up_to(metrics_path, state["step"])  # lines a killed run wrote after its last checkpoint
    if config.report_to:
        accelerator.init_trackers(
            "instruct-pix2pix",
            config={k: v for k, v in asdict(config).items() if isinstance(v, (int, float, str, bool))},
        )

    null_text_embeds = None  # a trained text encoder encodes "" anew each step
    if not config.train_text_encoder:
        with torch.no_grad():
            null_text_embeds = encode_prompts(tokenizer, text_encoder, [""], device)
    data = batches(dataset, config, state, rank, world_size)
    cache = {} if config.cache_latents else None
    progress = tqdm(
        total=config.max_train_steps,
        initial=state["step"],
        disable=not (show_progress and accelerator.is_main_process),
        desc="training",
        unit="step",
    )
    samples_per_step = config.train_batch_size * config.gradient_accumulation_steps * world_size
    step_losses, started = [], time.perf_counter()
    while state["step"] < config.max_train_steps:
        position, examples = next(data)
        with accelerator.accumulate(unet, text_encoder):
            loss = batch_loss(
                examples, config, unet, vae, text_encoder, tokenizer, noise_scheduler, null_text_embeds, device, cache
            )
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(trained_parameters(unet, text_encoder, config), config.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
        state["position"] = position
        step_losses.append(accelerator.gather(loss.detach()[None]).mean().item())
        if not accelerator.sync_gradients:
            continue
        state["step"] += 1
        if ema is not None:
            ema.step(trained_parameters(unet, text_encoder, config))
        elapsed, started = time.perf_counter() - started, time.perf_counter()
        record = {
            "step": state["step"],
            "loss": sum(step_losses) / len(step_losses),
            "lr": lr_scheduler.get_last_lr()[0],
            "epoch": state["epoch"],
            "samples_per_s": samples_per_step / elapsed,
        }
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
                parts = ModelBundle(accelerator.unwrap_model(unet), vae, accelerator.unwrap_model(text_encoder),
                                    tokenizer, model.scheduler_config)  # fmt: skip
                save_validation_grid(config, state["step"], validation_images, parts, ema,
                                     trained_parameters(unet, text_encoder, config), device)  # fmt: skip
            started = time.perf_counter()  # the grid's time is not the next step's
        if state["step"] % config.checkpointing_steps == 0 or last:
            save_checkpoint(accelerator, output_dir, state["step"], state, config.checkpoints_total_limit)
    progress.close()

    final = output_dir / "model"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        trained, text_encoder = accelerator.unwrap_model(unet), accelerator.unwrap_model(text_encoder)
        extra = {}
        if ema is not None:  # unet/ holds the EMA weights (what editing uses); unet_non_ema/ the raw ones
            extra["unet_non_ema"] = trained
            trained = type(trained).from_config(trained.config)
            if config.train_text_encoder:  # the EMA of the text encoder too (its raw weights are not kept)
                text_encoder = copy.deepcopy(text_encoder)
            ema.copy_to(trained_parameters(trained, text_encoder, config))
        text_encoder.requires_grad_(False).eval()
        save_model(ModelBundle(trained, vae, text_encoder, tokenizer, model.scheduler_config), final, extra_unets=extra)
    accelerator.end_training()
    return final


def trained_parameters(unet, text_encoder, config: TrainConfig) -> list[torch.nn.Parameter]:
    """What the optimizer, the gradient clipping and the EMA see, in this order."""
    return [*unet.parameters(), *(text_encoder.parameters() if config.train_text_encoder else ())]


@torch.no_grad()
def encode_batch(samples, config, vae, text_encoder, tokenizer, device):
    """What the frozen parts make of a batch of (example, generator, side): the target image's
    posterior (mean, std), the conditioning image's posterior mode (editing; None for text to
    image), and the text's encoding (None when the text encoder is trained: batch_loss encodes it)."""
    targets, sources, texts = zip(*(training_sample(e, side, config, g) for e, g, side in samples))
    posterior = vae.encode(torch.stack(targets).to(device)).latent_dist
    image_latents = None
    if sources[0] is not None:
        image_latents = vae.encode(torch.stack(sources).to(device)).latent_dist.mode()
    text_embeds = None if config.train_text_encoder else encode_prompts(tokenizer, text_encoder, list(texts), device)
    return posterior.mean, posterior.std, image_latents, text_embeds


def encode_cached(samples, config, vae, text_encoder, tokenizer, device, cache: dict):
    """encode_batch, each (example, side) encoded once (in CPU memory, by its key): without
    augmentation an example looks the same every epoch. The posterior's parameters are kept, not a
    sample, so the target is still a fresh sample each time."""
    keys = [f"{e.key}/{side}" for e, _, side in samples]
    missing = {key: sample for key, sample in zip(keys, samples) if key not in cache}
    if missing:
        encoded = encode_batch(list(missing.values()), config, vae, text_encoder, tokenizer, device)
        for i, key in enumerate(missing):
            cache[key] = [None if t is None else t[i].to("cpu", copy=True) for t in encoded]
    columns = zip(*(cache[key] for key in keys))
    return [None if column[0] is None else torch.stack(column).to(device) for column in columns]


def batch_loss(
    examples, config, unet, vae, text_encoder, tokenizer, noise_scheduler, null_text_embeds, device, cache=None
):
    """The loss of a batch of (example, generator) pairs; each example draws only from its own generator."""
    samples = [(e, g, pick_side(config, g)) for e, g in examples]
    if cache is None:
        mean, std, image_latents, text_embeds = encode_batch(samples, config, vae, text_encoder, tokenizer, device)
    else:
        mean, std, image_latents, text_embeds = encode_cached(
            samples, config, vae, text_encoder, tokenizer, device, cache
        )
    if config.train_text_encoder:  # with gradients, every step
        texts = [training_text(e, side, config) for e, _, side in samples]
        text_embeds = encode_prompts(tokenizer, text_encoder, texts, device)
        null_text_embeds = encode_prompts(tokenizer, text_encoder, [""], device)
    shape = mean.shape[1:]
    draws = [
        (
            torch.randn(shape, generator=g),
            torch.randn(shape, generator=g),
            torch.randint(0, noise_scheduler.config.num_train_timesteps, (), generator=g),
            torch.rand((), generator=g),
        )
        for _, g in examples
    ]
    sample_eps, noise, timesteps, r = (torch.stack(column).to(device) for column in zip(*draws))
    # z = mean + std * eps: the posterior sample, drawn from our generators (the same on every device)
    target_latents = (mean + std * sample_eps.to(mean)) * vae.config.scaling_factor
    noise = noise.to(target_latents)
    if image_latents is None:
        return text_to_image_loss(
            unet, noise_scheduler, target_latents, text_embeds, null_text_embeds, noise, timesteps, r,
            config.proportion_empty_prompts, config.snr_gamma,
        )  # fmt: skip
    weights = None  # the edit's changed region counted more (`changed_region_weight`), or plain MSE
    if config.changed_region_weight is not None:
        scale = vae.config.scaling_factor
        weights = changed_region_weights(mean * scale, image_latents * scale, config.changed_region_weight)
    return training_loss(
        unet, noise_scheduler, target_latents, image_latents, text_embeds, null_text_embeds, noise, timesteps, r,
        config.conditioning_dropout_prob, config.snr_gamma, weights,
    )  # fmt: skip
