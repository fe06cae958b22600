"""The small world's pretraining recipes: saved in the real layouts, measured, resumable, strict on input."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file

from instruct_pix2pix.errors import UserError
from instruct_pix2pix.small_world import pretrain
from instruct_pix2pix.small_world.edits import vocabulary
from instruct_pix2pix.small_world.scenes import BACKGROUNDS, caption, render

TINY_CLIP = {
    "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
    "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
    "projection_dim": 16,
}
TINY_VAE = {"block_out_channels": [8, 16, 16], "norm_num_groups": 8}
CLIP_ARGS = dict(steps=4, batch_size=8, learning_rate=1e-3, seed=0, progress=False, checkpoint_every=2,
                 eval_examples=16, model_config=TINY_CLIP)  # fmt: skip
VAE_ARGS = dict(steps=4, batch_size=2, learning_rate=1e-3, seed=0, progress=False, checkpoint_every=2,
                eval_examples=4, model_config=TINY_VAE)  # fmt: skip


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    return folder, pretrain.train_clip(folder, **CLIP_ARGS)


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vae")
    return folder, pretrain.train_vae(folder, **VAE_ARGS)


def test_training_data_has_hard_pairs_and_every_condition():
    scenes = pretrain.training_scenes(0, 400)
    assert len(scenes) == 400 and scenes == pretrain.training_scenes(0, 400)  # a function of the step only
    pairs = list(zip(scenes[::2], scenes[1::2]))
    assert all(caption(a) != caption(b) for a, b in pairs)  # each pair: one attribute apart
    assert {s.background for s in scenes} == set(BACKGROUNDS)
    assert any(s.night for s in scenes) and any(not s.night for s in scenes)
    assert 0.05 < sum(s.black_and_white for s in scenes) / len(scenes) < 0.3
    assert pretrain.training_scenes(1, 4) == pretrain.training_scenes(0, 8)[4:]  # batches follow on


def test_clip_saves_in_transformers_layout_and_loads_back(clip_run):
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    folder, metrics = clip_run
    model_dir = folder / "model"
    assert (model_dir / "model.safetensors").exists()
    model = CLIPModel.from_pretrained(model_dir).eval()
    tokenizer = CLIPTokenizer.from_pretrained(model_dir)
    processor = CLIPImageProcessor.from_pretrained(model_dir)
    # Every word of the world is one token, and the model pools at the tokenizer's end-of-text.
    assert all(len(tokenizer(word, add_special_tokens=False).input_ids) == 1 for word in vocabulary())
    assert model.config.text_config.eos_token_id == tokenizer.eos_token_id
    assert model.config.text_config.vocab_size == len(tokenizer)
    # The saved processor does what training did to pixels.
    scene = pretrain.scene_pair("clip-test", 0)[1]
    image = render(scene)
    pixels = processor(images=[image], return_tensors="pt").pixel_values
    torch.testing.assert_close(pixels, pretrain.clip_pixels([image]))
    # The saved weights are the ones measured: re-evaluating the loaded model gives the same numbers.
    again = pretrain.evaluate_clip(model, tokenizer, examples=CLIP_ARGS["eval_examples"])
    for key in ("retrieval_top1", "retrieval_top1_hard", "retrieval_top1_hard_by_kind"):
        assert again[key] == metrics[key]
    assert json.loads((folder / "metrics.json").read_text()) == metrics
    assert 0 <= metrics["retrieval_top1"] <= 1 and 0 <= metrics["retrieval_top1_hard"] <= 1
    assert metrics["steps"] == 4 and metrics["parameters"] == sum(p.numel() for p in model.parameters())
    assert set(metrics["retrieval_top1_hard_by_kind"]) == {"recolor", "reshape", "add", "remove", "resize", "move",
                                                          "background", "global", "count"}  # fmt: skip


def test_clip_retrieval_measures_the_model():
    """A CLIP that reads captions perfectly scores 1; one that sees nothing scores chance. The metric can fail."""

    class Oracle(torch.nn.Module):
        """Text and image features are both a hash of the caption (the image's is looked up from its pixels)."""

        def __init__(self, scenes):
            super().__init__()
            self.by_pixels = {pretrain.clip_pixels([render(s)])[0].numpy().tobytes(): caption(s) for s in scenes}

        def features(self, texts):
            digests = [hashlib.sha256(t.replace(" ", "").encode()).digest() for t in texts]  # decoding spaces commas
            return torch.tensor([[b / 255 - 0.5 for b in d] for d in digests])

        def get_image_features(self, pixel_values):
            texts = [self.by_pixels[p.numpy().tobytes()] for p in pixel_values]
            return type("Out", (), {"pooler_output": self.features(texts)})

        def get_text_features(self, input_ids):
            texts = tokenizer.batch_decode(input_ids, skip_special_tokens=True)
            return type("Out", (), {"pooler_output": self.features(texts)})

    from instruct_pix2pix.tokenizers import build_clip_tokenizer

    tokenizer = build_clip_tokenizer(vocabulary())
    scenes = [s for i in range(64) for s in pretrain.scene_pair("clip-test", i)[1:]]
    oracle = Oracle(scenes)
    metrics = pretrain.evaluate_clip(oracle, tokenizer, examples=64)
    assert metrics["retrieval_top1"] == 1.0 and metrics["retrieval_top1_hard"] == 1.0

    class Blind(Oracle):
        def get_image_features(self, pixel_values):
            return type("Out", (), {"pooler_output": torch.ones(len(pixel_values), 32)})

    metrics = pretrain.evaluate_clip(Blind(scenes), tokenizer, examples=64)
    assert metrics["retrieval_top1"] < 0.2 and metrics["retrieval_top1_hard"] <= 0.5


def test_vae_saves_in_diffusers_layout_and_loads_back(vae_run):
    from diffusers import AutoencoderKL

    folder, metrics = vae_run
    vae = AutoencoderKL.from_pretrained(folder / "model").eval()
    assert (folder / "model" / "diffusion_pytorch_model.safetensors").exists()
    assert vae.config.scaling_factor == metrics["scaling_factor"] != 0.18215  # measured, not the default
    image = pretrain.to_unit_tensor([render(pretrain.scene_pair("vae-test", 0)[1])])
    with torch.no_grad():
        latents = vae.encode(image * 2 - 1).latent_dist.mode()
    assert latents.shape == (1, 4, 16, 16)  # 64x64 -> two downsamplings -> 16x16
    again = pretrain.evaluate_vae(vae, examples=VAE_ARGS["eval_examples"])
    assert again["psnr"] == metrics["psnr"] and metrics["eval_images"] == 2 * VAE_ARGS["eval_examples"]
    assert json.loads((folder / "metrics.json").read_text()) == metrics
    assert metrics["parameters"] == sum(p.numel() for p in vae.parameters())


def test_the_vae_never_normalises_a_channel_alone():
    """Every GroupNorm of the designed VAE spans several channels: with one channel a group (an
    instance norm) a flat picture loses its colour, and the VAE read back 39% of scenes, not 67%."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**pretrain.vae_config())
    norms = [m for m in vae.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and min(m.num_channels // m.num_groups for m in norms) >= 4


def test_psnr():
    images = torch.zeros(2, 3, 4, 4)
    noisy = images.clone()
    noisy[1] += 0.1  # MSE 0.01 -> 20 dB
    assert pretrain.psnr(noisy, images)[1].item() == pytest.approx(20.0)
    assert pretrain.psnr(images, images)[0].item() == pytest.approx(100.0)  # capped, not infinite


def weights(folder):
    return load_file(next((folder / "model").glob("*.safetensors")))


@pytest.mark.parametrize("part", ["clip", "vae"])
def test_resume_after_a_crash_equals_an_uninterrupted_run(part, tmp_path, monkeypatch, clip_run, vae_run):
    train, arguments, (uninterrupted, metrics) = {
        "clip": (pretrain.train_clip, CLIP_ARGS, clip_run), "vae": (pretrain.train_vae, VAE_ARGS, vae_run)
    }[part]  # fmt: skip
    real_scenes = pretrain.training_scenes

    def crash_at_step_3(step, batch_size):
        if step == 3:
            raise KeyboardInterrupt("killed")
        return real_scenes(step, batch_size)

    monkeypatch.setattr(pretrain, "training_scenes", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path, **arguments)
    monkeypatch.undo()
    # Killed during step 4: the checkpoint holds step 2, so step 3 is done twice, the second time for real.
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 2
    assert not (tmp_path / "model").exists()
    resumed = train(tmp_path, **arguments)
    reference = weights(uninterrupted)
    assert reference.keys() == weights(tmp_path).keys()
    assert all(torch.equal(reference[k], v) for k, v in weights(tmp_path).items())
    assert resumed["loss"] == metrics["loss"]
    # And the comparison can fail: another seed gives other weights.
    other = train(tmp_path / "other-seed", **{**arguments, "seed": 1, "steps": 1, "eval_examples": 1})
    assert other["steps"] == 1
    assert any(not torch.equal(reference[k], v) for k, v in weights(tmp_path / "other-seed").items())


def test_a_second_call_with_other_settings_is_refused(clip_run):
    folder, _ = clip_run
    with pytest.raises(UserError, match="other settings"):
        pretrain.train_clip(folder, **{**CLIP_ARGS, "learning_rate": 2e-3})


@pytest.mark.parametrize("change, message", [
    ({"steps": 0}, "steps"), ({"steps": 2.5}, "steps"), ({"batch_size": 1}, "batch_size"),
    ({"learning_rate": -1.0}, "learning_rate"), ({"learning_rate": "fast"}, "learning_rate"),
    ({"image_size": 60}, "multiple of 8"), ({"checkpoint_every": 0}, "checkpoint_every"),
])  # fmt: skip
def test_bad_arguments_are_user_errors(tmp_path, change, message):
    with pytest.raises(UserError, match=message) as error:
        pretrain.train_clip(tmp_path / "out", **{**CLIP_ARGS, **change})
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_bad_vae_arguments_and_output_dir(tmp_path):
    with pytest.raises(UserError, match="reconstruction_loss"):
        pretrain.train_vae(tmp_path / "out", **VAE_ARGS, reconstruction_loss="lpips")
    with pytest.raises(UserError, match="multiple of 4"):
        pretrain.train_vae(tmp_path / "out", **{**VAE_ARGS, "image_size": 30})
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="is a file"):
        pretrain.train_vae(tmp_path / "file", **VAE_ARGS)


def test_bad_input_is_reported_on_one_line(tmp_path):
    # What `ip2p world pretrain vae --steps 0` prints after "error: ": one line, naming the setting.
    with pytest.raises(UserError) as error:
        pretrain.train_vae(tmp_path / "out", **{**VAE_ARGS, "steps": 0})
    message = str(error.value)
    assert message.startswith("steps must be") and "\n" not in message
    assert not (tmp_path / "out").exists()


def test_the_gradient_loss_charges_blurred_edges_not_flat_offsets():
    """l1+gradient adds the L1 of the error's neighbour differences: a uniform offset costs what it
    costs under L1, a blurred edge costs more (the edge term), and a perfect copy costs nothing."""
    target = torch.zeros(1, 3, 8, 8)
    target[..., 2:6, 2:6] = 1.0  # a square
    blurred = torch.nn.functional.avg_pool2d(target, 3, stride=1, padding=1, count_include_pad=False)
    l1, gradient = pretrain.RECONSTRUCTION_LOSSES["l1"], pretrain.RECONSTRUCTION_LOSSES["l1+gradient"]
    assert gradient(target - target) == 0
    assert torch.isclose(gradient(torch.full_like(target, 0.1)), l1(torch.full_like(target, 0.1)))
    assert gradient(blurred - target) > 1.5 * l1(blurred - target)


def test_bf16_autocast_trains_the_vae_and_is_part_of_its_settings(tmp_path, vae_run):
    """Under bf16 autocast the VAE still learns in float32 weights, the run says so (a resume with
    float32 settings is refused), and a float32 run's settings leave the key out (older checkpoints
    still resume)."""
    metrics = pretrain.train_vae(tmp_path, **VAE_ARGS, bf16_autocast=True)
    assert metrics["bf16_autocast"] is True and "bf16_autocast" not in vae_run[1]
    weights = load_file(tmp_path / "model" / "diffusion_pytorch_model.safetensors")
    assert all(w.dtype == torch.float32 and torch.isfinite(w).all() for w in weights.values())
    with pytest.raises(UserError, match="other settings"):
        pretrain.train_vae(tmp_path, **VAE_ARGS)  # the same run but in float32
