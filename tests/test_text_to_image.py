"""Text-to-image training (`task: text-to-image`): diffusers' train_text_to_image.py objective, the
trainer's checkpoints, exact resume, cache and validation grids, and a model StableDiffusionPipeline
loads and samples exactly as our generation does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SD15_SCHEDULER_CONFIG, scene, tiny_parts
from diffusers import DDPMScheduler, StableDiffusionPipeline
from diffusers.training_utils import compute_snr
from PIL import Image

from instruct_pix2pix.data import EditExample, write_reference_folder
from instruct_pix2pix.errors import UserError
from instruct_pix2pix.training import load_config, train
from instruct_pix2pix.training.objective import text_to_image_loss


def diffusers_text_to_image_loss(parts, images, input_ids, noise, timesteps, scheduler, sample_eps, snr_gamma):
    """examples/text_to_image/train_text_to_image.py's loss, step by step as the script computes it
    (captions already replaced by "" where --proportion_empty_prompts dropped them)."""
    unet, vae, text_encoder = parts["unet"], parts["vae"], parts["text_encoder"]
    posterior = vae.encode(images).latent_dist
    latents = (posterior.mean + posterior.std * sample_eps) * vae.config.scaling_factor  # latent_dist.sample()
    noisy_latents = scheduler.add_noise(latents, noise, timesteps)
    encoder_hidden_states = text_encoder(input_ids, return_dict=False)[0]
    if scheduler.config.prediction_type == "epsilon":
        target = noise
    else:
        target = scheduler.get_velocity(latents, noise, timesteps)
    model_pred = unet(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]
    if snr_gamma is None:
        return F.mse_loss(model_pred.float(), target.float(), reduction="mean")
    snr = compute_snr(scheduler, timesteps)
    mse_loss_weights = torch.stack([snr, snr_gamma * torch.ones_like(timesteps)], dim=1).min(dim=1)[0]
    if scheduler.config.prediction_type == "epsilon":
        mse_loss_weights = mse_loss_weights / snr
    else:
        mse_loss_weights = mse_loss_weights / (snr + 1)
    loss = F.mse_loss(model_pred.float(), target.float(), reduction="none")
    return (loss.mean(dim=list(range(1, len(loss.shape)))) * mse_loss_weights).mean()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("snr_gamma", [None, 5.0])
def test_loss_equals_diffusers_text_to_image_recipe(prediction_type, snr_gamma):
    parts = tiny_parts(in_channels=4)
    scheduler = DDPMScheduler.from_config({**SD15_SCHEDULER_CONFIG, "prediction_type": prediction_type})
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 64, 64, generator=g) * 2 - 1
    captions = ["a red scene", "a scene", "a blue sky", "a painting"]
    r = torch.tensor([0.05, 0.5, 0.9, 0.02])  # proportion 0.1: the first and last captions are dropped
    kept = [c if p >= 0.1 else "" for c, p in zip(captions, r)]

    def ids(texts):
        return parts["tokenizer"](texts, padding="max_length", max_length=77, return_tensors="pt").input_ids

    noise, sample_eps = torch.randn(4, 4, 32, 32, generator=g), torch.randn(4, 4, 32, 32, generator=g)
    timesteps = torch.tensor([10, 300, 600, 999])
    with torch.no_grad():
        expected = diffusers_text_to_image_loss(
            parts, images, ids(kept), noise, timesteps, scheduler, sample_eps, snr_gamma
        )
        posterior = parts["vae"].encode(images).latent_dist
        latents = (posterior.mean + posterior.std * sample_eps) * parts["vae"].config.scaling_factor
        text = parts["text_encoder"](ids(captions))[0]
        null = parts["text_encoder"](ids([""]))[0]
        ours = text_to_image_loss(parts["unet"], scheduler, latents, text, null, noise, timesteps, r, 0.1, snr_gamma)
        undropped = text_to_image_loss(parts["unet"], scheduler, latents, text, null, noise, timesteps, r, 0.0)
    assert torch.allclose(ours, expected, rtol=1e-5, atol=1e-7), (ours, expected)
    assert not torch.allclose(undropped, expected)  # dropping the captions matters


@pytest.fixture(scope="module")
def captioned(tmp_path_factory):
    folder = tmp_path_factory.mktemp("captioned")
    examples = [
        EditExample(scene(32, 32, seed), scene(32, 32, seed + 100), "make it other", f"scene {seed}", f"other {seed}")
        for seed in range(12)
    ]
    write_reference_folder(examples, folder)
    return folder


def t2i_settings(model_dir, dataset, output_dir, **more) -> list[str]:
    values = dict(
        task="text-to-image",
        pretrained_model_name_or_path=model_dir,
        train_data=dataset,
        output_dir=output_dir,
        resolution=32,
        random_flip=False,
        proportion_empty_prompts=0.3,
        max_train_steps=4,
        train_batch_size=2,
        checkpointing_steps=2,
        learning_rate=1e-3,
        use_ema=True,
        ema_decay=0.9,
        seed=1,
    )
    values.update(more)
    return [f"{key}={value}" for key, value in values.items()]


def losses(output_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def test_text_to_image_run_resumes_exactly_caches_alike_and_makes_a_model_diffusers_samples(
    text_to_image_model_dir, captioned, tmp_path
):
    from instruct_pix2pix.generation import generate
    from instruct_pix2pix.loading import load_model

    whole = tmp_path / "whole"
    final = train(load_config(None, t2i_settings(text_to_image_model_dir, captioned, whole)), show_progress=False)
    # stopped after 2 steps (at its checkpoint), then resumed: the same four losses
    half = tmp_path / "half"
    train(load_config(None, t2i_settings(text_to_image_model_dir, captioned, half, max_train_steps=2)),
          show_progress=False)  # fmt: skip
    (half / "model").rename(tmp_path / "half-model")
    resume = t2i_settings(text_to_image_model_dir, captioned, half, resume_from_checkpoint="latest")
    train(load_config(None, resume), show_progress=False)
    assert losses(half) == losses(whole) and len(losses(whole)) == 4
    # each example encoded once: the same losses (the image each example trains is drawn either way)
    cached = tmp_path / "cached"
    train(load_config(None, t2i_settings(text_to_image_model_dir, captioned, cached, cache_latents=True)),
          show_progress=False)  # fmt: skip
    assert np.allclose(losses(cached), losses(whole), rtol=1e-5, atol=0)

    model = load_model(final, kind="text-to-image")
    assert model.kind == "text-to-image" and model.unet.config.in_channels == 4
    ours = generate(model, ["scene 3"], seeds=[7], num_inference_steps=3, scheduler="euler_ancestral")[0]
    pipe = StableDiffusionPipeline.from_pretrained(final, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    from diffusers import EulerAncestralDiscreteScheduler

    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    theirs = pipe("scene 3", num_inference_steps=3, generator=[torch.Generator().manual_seed(7)], height=64,
                  width=64).images[0]  # fmt: skip
    assert np.abs(np.asarray(ours, dtype=int) - np.asarray(theirs, dtype=int)).max() <= 1
    ours = generate(model, ["scene 3"], seeds=[7], num_inference_steps=3, guidance_rescale=0.7)[0]
    theirs = pipe("scene 3", num_inference_steps=3, generator=[torch.Generator().manual_seed(7)], height=64,
                  width=64, guidance_rescale=0.7).images[0]  # fmt: skip
    assert np.abs(np.asarray(ours, dtype=int) - np.asarray(theirs, dtype=int)).max() <= 1
    with pytest.raises(UserError, match="text-to-image"):
        load_model(final, kind="editing")


def test_text_to_image_validation_grid(text_to_image_model_dir, captioned, tmp_path):
    out = tmp_path / "run"
    more = dict(max_train_steps=2, validation_steps=2, validation_prompts="['scene 1', 'other 2']",
                validation_inference_steps=2)  # fmt: skip
    train(load_config(None, t2i_settings(text_to_image_model_dir, captioned, out, **more)), show_progress=False)
    grid = Image.open(out / "validation" / "step-000002.png")
    assert json.loads(grid.text["prompts"]) == ["scene 1", "other 2"]
    pixels = np.asarray(grid.convert("RGB")).astype(int)
    assert pixels.shape[1] >= 2 * 128 and pixels.shape[0] >= 4 * 128  # two captions, four seeds


def test_text_to_image_needs_captions_and_a_text_to_image_model(text_to_image_model_dir, tiny_model_dir, tmp_path):
    bare = tmp_path / "bare"
    write_reference_folder([EditExample(scene(32, 32, s), scene(32, 32, s + 1), "edit it") for s in range(6)], bare)
    with pytest.raises(UserError, match="needs captions"):
        train(load_config(None, t2i_settings(text_to_image_model_dir, bare, tmp_path / "a")), show_progress=False)
    with pytest.raises(UserError, match="editing"):
        train(load_config(None, t2i_settings(tiny_model_dir, bare, tmp_path / "b")), show_progress=False)
    with pytest.raises(UserError, match="task must be"):
        load_config(None, t2i_settings(text_to_image_model_dir, bare, tmp_path / "c", task="inpaint"))


def test_world_evaluation_of_a_text_to_image_model_reads_back_what_it_drew(monkeypatch):
    """The measure itself: a model that draws each caption's scene exactly scores 100% on every field;
    one that draws every object as a square loses the shape field, and only it."""
    from dataclasses import replace

    from instruct_pix2pix import generation
    from instruct_pix2pix.small_world import evaluate as world
    from instruct_pix2pix.small_world.scenes import caption, render

    scenes = world.held_out_scenes(30)
    by_caption = {caption(s): s for s in scenes}

    def drawing(change):
        return lambda model, captions, **_: [render(change(by_caption[c])) for c in captions]

    monkeypatch.setattr(generation, "generate", drawing(lambda s: s))
    results, triples = world.evaluate_text_to_image(None, count=30, progress=False)
    assert results["exact"] == 1.0 and set(results["fields"].values()) == {1.0}
    assert [scene for scene, _, _ in triples] == scenes

    squares = drawing(lambda s: replace(s, things=tuple(replace(t, shape="square") for t in s.things)))
    monkeypatch.setattr(generation, "generate", squares)
    results, _ = world.evaluate_text_to_image(None, count=30, progress=False)
    with_other_shapes = sum(any(t.shape != "square" for t in s.things) for s in scenes) / len(scenes)
    assert results["fields"]["shape"] == pytest.approx(1 - with_other_shapes)
    assert results["exact"] == results["fields"]["shape"] < 1
    assert all(results["fields"][f] == 1.0 for f in ("colour", "size", "position", "background"))


def test_world_evaluate_command_on_a_text_to_image_model(text_to_image_model_dir, tmp_path):
    from instruct_pix2pix.cli import main
    from instruct_pix2pix.images import read_metadata

    out = tmp_path / "eval"
    args = ["world", "evaluate", "--model", str(text_to_image_model_dir), "-o", str(out), "--captions", "3",
            "--steps", "2", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["captions"] == 3 and 0 <= results["exact"] <= 1 and set(results["fields"]) >= {"shape", "colour"}
    assert "read exactly right" in (out / "table.md").read_text()
    command = read_metadata(out / "examples.png")["ip2p-command"]
    assert "--captions 3" in command and str(text_to_image_model_dir) in command
    assert results["num_inference_steps"] == 2 and results["guidance_rescale"] == 0  # the world's, but the steps

    # a model's own settings (about.json) come before the world's, and the command line before both
    model = tmp_path / "with-settings"
    shutil.copytree(text_to_image_model_dir, model)
    (model / "about.json").write_text(json.dumps({"settings": {"num_inference_steps": 3, "guidance_rescale": 0.5}}))
    assert main(["world", "evaluate", "--model", str(model), "-o", str(out), "--captions", "2", "--device", "cpu",
                 "--guidance-rescale", "0.25"]) == 0  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert results["num_inference_steps"] == 3 and results["guidance_rescale"] == 0.25


def test_the_recipe_assembles_a_text_to_image_start_and_its_configs_chain(tmp_path):
    """The recipe's from_scratch folder is a text-to-image model's (4 channels, captions' 77 tokens,
    CLIP's text weights), and the editor's config starts from the text-to-image stage's model."""
    from transformers import CLIPModel

    from instruct_pix2pix.loading import DEFAULT_MODEL, build_from_configs
    from instruct_pix2pix.small_world.evaluate import held_out_scenes
    from instruct_pix2pix.small_world.recipe import DEFAULT_CLIP, assemble_scratch
    from instruct_pix2pix.small_world.scenes import caption

    folder = assemble_scratch(DEFAULT_CLIP, DEFAULT_MODEL / "vae", tmp_path / "scratch")
    model = build_from_configs(folder)
    assert model.kind == "text-to-image" and model.tokenizer.model_max_length == 77
    longest = max((caption(s) for s in held_out_scenes(200)), key=len)
    assert len(model.tokenizer(longest).input_ids) <= 77
    clip = CLIPModel.from_pretrained(DEFAULT_CLIP).text_model.state_dict()
    assert all(torch.equal(v.float(), clip[k].float()) for k, v in model.text_encoder.state_dict().items())

    root = Path(__file__).resolve().parents[1] / "configs"
    t2i = load_config(root / "small-world-t2i.yaml")
    editor = load_config(root / "small-world.yaml")
    assert (t2i.task, t2i.proportion_empty_prompts) == ("text-to-image", 0.1)
    # the layout needs a trained text encoder and the first sampling steps' loss (README: the small world)
    assert t2i.train_text_encoder and t2i.snr_gamma is None
    assert editor.task == "edit" and editor.pretrained_model_name_or_path == f"{t2i.output_dir}/model"


def test_training_the_text_encoder_takes_the_dreambooth_scripts_steps(text_to_image_model_dir, captioned, tmp_path):
    """train_text_encoder: one AdamW over the UNet's and the text encoder's parameters (chained, as
    train_dreambooth.py --train_text_encoder has it), gradients clipped over both, the captions (and
    the dropped ones' "") encoded with gradients every step: the same weights after three steps."""
    import itertools

    from instruct_pix2pix.data import open_dataset
    from instruct_pix2pix.loading import load_model
    from instruct_pix2pix.training.trainer import batches, pick_side

    overrides = dict(use_ema=False, max_train_steps=3, train_text_encoder=True, lr_scheduler="constant")
    config = load_config(None, t2i_settings(text_to_image_model_dir, captioned, tmp_path / "run", **overrides))
    final = train(config, show_progress=False)

    model = load_model(text_to_image_model_dir, kind="text-to-image")
    parts = {"unet": model.unet.train(), "vae": model.vae.eval(), "text_encoder": model.text_encoder.train()}
    start = {k: v.clone() for k, v in model.text_encoder.state_dict().items()}
    scheduler = DDPMScheduler.from_config(model.scheduler_config)
    chained = list(itertools.chain(model.unet.parameters(), model.text_encoder.parameters()))
    optimizer = torch.optim.AdamW(chained, lr=config.learning_rate, weight_decay=config.adam_weight_decay)
    data = batches(open_dataset(captioned), config, {"epoch": 0, "position": 0, "step": 0}, 0, 1)
    reference_losses = []
    for _ in range(3):
        _, examples = next(data)
        images, texts, draws = [], [], []
        for example, g in examples:
            side = pick_side(config, g)
            images.append(np.asarray(getattr(example, f"{side}_image").resize((32, 32), Image.Resampling.LANCZOS)))
            sample_eps, noise = torch.randn(4, 16, 16, generator=g), torch.randn(4, 16, 16, generator=g)
            t, r = torch.randint(0, 1000, (), generator=g), torch.rand((), generator=g)
            texts.append(getattr(example, f"{side}_caption") if r >= config.proportion_empty_prompts else "")
            draws.append((sample_eps, noise, t))
        pixels = torch.tensor(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
        sample_eps, noise, t = (torch.stack(column) for column in zip(*draws))
        ids = model.tokenizer(texts, padding="max_length", max_length=77, return_tensors="pt").input_ids
        loss = diffusers_text_to_image_loss(parts, pixels, ids, noise, t, scheduler, sample_eps, None)
        loss.backward()
        reference_losses.append(loss.item())
        torch.nn.utils.clip_grad_norm_(chained, config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()

    assert np.allclose(losses(tmp_path / "run"), reference_losses, rtol=1e-5, atol=0)
    trained = load_model(final, kind="text-to-image")
    for (name, a), b in zip(trained.text_encoder.state_dict().items(), model.text_encoder.state_dict().values()):
        # Adam moves a weight by up to lr = 1e-3 a step, whatever its gradient's size, so float
        # rounding in a tiny gradient shows as a few 1e-5
        assert (a - b).abs().max() < 5e-5, name
    # the UNets compute the same function (a bias a GroupNorm removes has a gradient of rounding
    # noise alone, which Adam turns into steps of lr: compare what the UNets do, not such weights)
    g = torch.Generator().manual_seed(5)
    probe = torch.randn(2, 4, 16, 16, generator=g), torch.tensor([100, 700]), torch.randn(2, 77, 32, generator=g)
    with torch.no_grad():
        ours, theirs = trained.unet(*probe).sample, model.unet.eval()(*probe).sample
    assert (ours - theirs).abs().max() < 1e-4 * theirs.abs().max()
    assert any(not torch.equal(start[k], v) for k, v in trained.text_encoder.state_dict().items())


def test_a_trained_text_encoder_resumes_exactly_caches_alike_and_its_ema_is_saved(
    text_to_image_model_dir, captioned, tmp_path
):
    from instruct_pix2pix.loading import load_model

    def run(output, **more):
        settings = t2i_settings(text_to_image_model_dir, captioned, output, train_text_encoder=True,
                                text_encoder_learning_rate=3e-4, **more)  # fmt: skip
        return train(load_config(None, settings), show_progress=False)

    whole = run(tmp_path / "whole")
    run(tmp_path / "half", max_train_steps=2)
    (tmp_path / "half" / "model").rename(tmp_path / "half-model")
    resumed = run(tmp_path / "half", resume_from_checkpoint="latest")
    run(tmp_path / "cached", cache_latents=True)
    assert losses(tmp_path / "half") == losses(tmp_path / "whole") and len(losses(tmp_path / "whole")) == 4
    assert np.allclose(losses(tmp_path / "cached"), losses(tmp_path / "whole"), rtol=1e-5, atol=0)
    first, again = load_model(whole, kind="text-to-image"), load_model(resumed, kind="text-to-image")
    for a, b in zip(first.text_encoder.state_dict().values(), again.text_encoder.state_dict().values()):
        assert torch.equal(a, b)
    # the saved text encoder is the EMA of the trained one: neither the start nor the last raw weights
    start = load_model(text_to_image_model_dir, kind="text-to-image").text_encoder.state_dict()
    raw = load_model(run(tmp_path / "raw", use_ema=False), kind="text-to-image").text_encoder.state_dict()
    for other in (start, raw):
        assert any(not torch.equal(other[k], v) for k, v in first.text_encoder.state_dict().items())
    frozen = load_model(train(load_config(None, t2i_settings(text_to_image_model_dir, captioned, tmp_path / "frozen"))),
                        kind="text-to-image").text_encoder.state_dict()  # fmt: skip
    assert all(torch.equal(start[k], v) for k, v in frozen.items())


def test_the_recipe_chains_text_to_image_editor_cool_down_and_filler_stages_and_skips_done_ones(tmp_path, monkeypatch):
    """run_recipe with the slow pretraining stages already done: the text-to-image UNet, the editor
    from its model, the cool-down from the editor's (the rate falling linearly) and two filler stages,
    each from the model before, on instructions with made-up words, each skipped once its model is
    there; the from-scratch arm starts from the assembled folder and is never packaged."""
    from instruct_pix2pix.loading import DEFAULT_MODEL
    from instruct_pix2pix.small_world import evaluate as world_evaluation
    from instruct_pix2pix.small_world import recipe
    from instruct_pix2pix.small_world.recipe import DEFAULT_CLIP, run_recipe

    work = tmp_path / "work"
    (work / "language").mkdir(parents=True)
    (work / "language" / "report.json").write_text("{}")
    shutil.copytree(DEFAULT_CLIP, work / "clip" / "model")
    shutil.copytree(DEFAULT_MODEL / "vae", work / "vae" / "model")
    monkeypatch.setattr(recipe, "COOLDOWN_STEPS", 1)
    monkeypatch.setattr(world_evaluation, "PER_KIND", 1)
    monkeypatch.setattr(world_evaluation, "CAPTIONS", 2)
    monkeypatch.setattr(recipe, "package", lambda *a, **k: pytest.fail("package_model=False must not package"))

    trained = run_recipe(work, edits=32, steps=2, text_to_image_steps=1, package_model=False)
    plain = (work / "data" / "train-triples.jsonl").read_text().splitlines()
    assert trained == work / "unet-filler2" / "model" and (trained / "model_index.json").is_file()
    stages = ("t2i", "unet", "unet-cooldown", "unet-filler", "unet-filler2")
    settings = {name: json.loads((work / name / "config.json").read_text()) for name in stages}
    assert settings["t2i"]["task"] == "text-to-image" and settings["t2i"]["from_scratch"] == str(work / "scratch")
    assert settings["unet"]["pretrained_model_name_or_path"] == str(work / "t2i" / "model")
    assert settings["unet"]["lr_scheduler"] == "constant_with_warmup" and settings["unet"]["max_train_steps"] == 2
    cool = settings["unet-cooldown"]
    assert cool["pretrained_model_name_or_path"] == str(work / "unet" / "model") and cool["from_scratch"] is None
    assert (cool["lr_scheduler"], cool["max_train_steps"]) == ("linear", 1)
    for stage, before in (("unet-filler", "unet-cooldown"), ("unet-filler2", "unet-filler")):
        filler = settings[stage]
        assert filler["pretrained_model_name_or_path"] == str(work / before / "model")
        assert (filler["lr_scheduler"], filler["max_train_steps"]) == ("linear", 1)
        assert filler["train_data"] == str(work / "data-filler")
    filled = (work / "data-filler" / "train-triples.jsonl").read_text().splitlines()
    assert len(filled) == 32 and 0 < len(set(filled) - set(plain)) < 32  # some instructions have made-up words
    assert cool["train_data"] == str(work / "data")
    results = {stage: work / "evaluation" / stage / "results.json" for stage in ("t2i", "unet")}
    evaluated = {stage: json.loads(path.read_text()) for stage, path in results.items()}
    assert evaluated["unet"]["model"] == str(trained) and evaluated["unet"]["per_kind"] == 1
    assert (evaluated["unet"]["guidance_scale"], evaluated["unet"]["image_guidance_scale"]) == (1.5, 1.5)  # as shipped
    assert evaluated["t2i"]["model"] == str(work / "t2i" / "model") and evaluated["t2i"]["guidance_rescale"] == 0.7
    assert "\n| 2 | " in (work / "evaluation" / "t2i" / "table.md").read_text()  # captions drawn

    before = {p: p.stat().st_mtime_ns for p in [*work.rglob("*.safetensors"), *work.rglob("results.json")]}
    assert run_recipe(work, edits=32, steps=2, text_to_image_steps=1, package_model=False) == trained
    after = {p: p.stat().st_mtime_ns for p in [*work.rglob("*.safetensors"), *work.rglob("results.json")]}
    assert after == before  # every stage skipped, the evaluations too

    monkeypatch.setattr(recipe, "package_language_model", lambda *a: pytest.fail("the comparison arm is not shipped"))
    scratch = run_recipe(work, steps=1, from_scratch=True)
    assert scratch == work / "unet-scratch-filler2" / "model"
    arm = json.loads((work / "unet-scratch" / "config.json").read_text())
    assert arm["from_scratch"] == str(work / "scratch") and arm["pretrained_model_name_or_path"] is None
    assert (work / "evaluation" / "unet-scratch" / "examples.png").is_file()
