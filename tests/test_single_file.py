"""Single-file (CompVis layout) checkpoints: write, read back bit for bit, refuse what is not an editing model."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from instruct_pix2pix.errors import UserError
from instruct_pix2pix.loading import SD15_CONFIG_DIR, load_single_file, save_single_file
from instruct_pix2pix.loading.compvis import to_compvis_state_dict

U = "model.diffusion_model."
V = "first_stage_model."
T = "cond_stage_model.transformer."


# ---------------------------------------------------------------------------------------------
# Tiny models of the real Stable Diffusion architecture
# ---------------------------------------------------------------------------------------------


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    # Distinct values in every tensor, so a mapping that swaps two same-shaped layers cannot pass.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator))
    return model.eval()


def _tiny_models(unet_layers: int = 2, vae_layers: int = 1, in_channels: int = 8):
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=unet_layers,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        latent_channels=4,
        layers_per_block=vae_layers,
        norm_num_groups=32,
        sample_size=16,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=49408,
            max_position_embeddings=77,
            projection_dim=32,
        )
    )
    return _randomize(unet, 1), _randomize(vae, 2), _randomize(text_encoder, 3)


def _write_config_dir(folder: Path, unet, vae, text_encoder) -> Path:
    """A diffusers-format folder without weights: the tiny models' configs + the shipped tokenizer/scheduler."""
    unet.save_config(folder / "unet")
    vae.save_config(folder / "vae")
    text_encoder.config.save_pretrained(folder / "text_encoder")
    shutil.copytree(SD15_CONFIG_DIR / "tokenizer", folder / "tokenizer")
    shutil.copytree(SD15_CONFIG_DIR / "scheduler", folder / "scheduler")
    shutil.copy(SD15_CONFIG_DIR / "model_index.json", folder / "model_index.json")
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    unet, vae, text_encoder = _tiny_models()
    config_dir = _write_config_dir(tmp_path_factory.mktemp("tiny-config"), unet, vae, text_encoder)
    checkpoint = tmp_path_factory.mktemp("tiny-ckpt") / "tiny.safetensors"
    save_single_file(unet, vae, text_encoder, checkpoint)
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "config_dir": config_dir, "path": checkpoint}


def _assert_identical(original: torch.nn.Module, loaded: torch.nn.Module, dtype=None) -> None:
    want = original.state_dict()
    got = loaded.state_dict()
    assert want.keys() == got.keys()
    for key, tensor in want.items():
        expected = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
        assert got[key].dtype == expected.dtype, key
        assert torch.equal(got[key], expected), key


def _assert_all_identical(tiny, components, dtype=None) -> None:
    for name in ("unet", "vae", "text_encoder"):
        _assert_identical(tiny[name], getattr(components, name), dtype)


# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------


def test_safetensors_round_trip_is_exact(tiny):
    components = load_single_file(tiny["path"], config_dir=tiny["config_dir"])
    _assert_all_identical(tiny, components)
    assert components.scheduler_config["_class_name"] == "EulerAncestralDiscreteScheduler"
    assert isinstance(components.tokenizer, CLIPTokenizer)
    assert components.unet.config.in_channels == 8


@pytest.mark.parametrize("unet_layers, vae_layers", [(1, 2), (3, 1)])
def test_round_trip_with_other_block_layouts(tmp_path, unet_layers, vae_layers):
    unet, vae, text_encoder = _tiny_models(unet_layers, vae_layers)
    config_dir = _write_config_dir(tmp_path / "config", unet, vae, text_encoder)
    save_single_file(unet, vae, text_encoder, tmp_path / "model.safetensors")
    components = load_single_file(tmp_path / "model.safetensors", config_dir=config_dir)
    _assert_all_identical({"unet": unet, "vae": vae, "text_encoder": text_encoder}, components)


def test_written_file_uses_compvis_names(tiny):
    unet, vae, text_encoder = tiny["unet"], tiny["vae"], tiny["text_encoder"]
    with safe_open(str(tiny["path"]), framework="pt") as handle:
        assert handle.metadata() == {"format": "pt"}
        keys = set(handle.keys())
        tensors = {key: handle.get_tensor(key) for key in keys}
    assert all(key.startswith((U, V, T)) for key in keys)
    assert len(keys) == len(unet.state_dict()) + len(vae.state_dict()) + len(text_encoder.state_dict())

    well_known = {
        U + "input_blocks.0.0.weight": unet.conv_in.weight,
        U + "out.0.weight": unet.conv_norm_out.weight,
        U + "out.2.weight": unet.conv_out.weight,
        U + "time_embed.0.weight": unet.time_embedding.linear_1.weight,
        U + "time_embed.2.weight": unet.time_embedding.linear_2.weight,
        U + "input_blocks.1.0.in_layers.2.weight": unet.down_blocks[0].resnets[0].conv1.weight,
        U + "input_blocks.1.1.proj_in.weight": unet.down_blocks[0].attentions[0].proj_in.weight,
        U + "input_blocks.3.0.op.weight": unet.down_blocks[0].downsamplers[0].conv.weight,
        U + "input_blocks.4.0.skip_connection.weight": unet.down_blocks[1].resnets[0].conv_shortcut.weight,
        U + "middle_block.0.emb_layers.1.weight": unet.mid_block.resnets[0].time_emb_proj.weight,
        U + "middle_block.1.transformer_blocks.0.attn2.to_k.weight": unet.mid_block.attentions[0]
        .transformer_blocks[0]
        .attn2.to_k.weight,
        U + "middle_block.2.out_layers.3.weight": unet.mid_block.resnets[1].conv2.weight,
        U + "output_blocks.2.1.conv.weight": unet.up_blocks[0].upsamplers[0].conv.weight,
        U + "output_blocks.3.1.proj_out.weight": unet.up_blocks[1].attentions[0].proj_out.weight,
        V + "encoder.conv_in.weight": vae.encoder.conv_in.weight,
        V + "encoder.down.0.block.0.conv1.weight": vae.encoder.down_blocks[0].resnets[0].conv1.weight,
        V + "encoder.down.0.downsample.conv.weight": vae.encoder.down_blocks[0].downsamplers[0].conv.weight,
        V + "encoder.down.1.block.0.nin_shortcut.weight": vae.encoder.down_blocks[1].resnets[0].conv_shortcut.weight,
        V + "encoder.mid.block_2.norm1.weight": vae.encoder.mid_block.resnets[1].norm1.weight,
        V + "encoder.mid.attn_1.norm.weight": vae.encoder.mid_block.attentions[0].group_norm.weight,
        V + "encoder.norm_out.weight": vae.encoder.conv_norm_out.weight,
        V + "decoder.up.1.block.0.conv1.weight": vae.decoder.up_blocks[0].resnets[0].conv1.weight,
        V + "decoder.up.1.upsample.conv.weight": vae.decoder.up_blocks[0].upsamplers[0].conv.weight,
        V + "decoder.up.0.block.0.nin_shortcut.weight": vae.decoder.up_blocks[1].resnets[0].conv_shortcut.weight,
        V + "quant_conv.weight": vae.quant_conv.weight,
        V + "post_quant_conv.weight": vae.post_quant_conv.weight,
        T + "text_model.embeddings.token_embedding.weight": text_encoder.get_input_embeddings().weight,
    }
    for key, param in well_known.items():
        assert key in keys, key
        assert torch.equal(tensors[key], param.detach()), key

    # The VAE mid-block attention projections are 1x1 convolutions in the CompVis layout.
    attention = vae.decoder.mid_block.attentions[0]
    for compvis, linear in (
        ("q", attention.to_q),
        ("k", attention.to_k),
        ("v", attention.to_v),
        ("proj_out", attention.to_out[0]),
    ):
        written = tensors[V + f"decoder.mid.attn_1.{compvis}.weight"]
        assert written.shape == (*linear.weight.shape, 1, 1)
        assert torch.equal(written[:, :, 0, 0], linear.weight.detach())
    assert T + "text_model.final_layer_norm.weight" in keys
    assert T + "text_model.encoder.layers.1.self_attn.q_proj.weight" in keys


def test_full_size_sd15_layout_names(tmp_path):
    # The shipped configuration, built without memory (meta tensors): the names and counts of a real SD 1.5 file.
    from accelerate import init_empty_weights

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD15_CONFIG_DIR, subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SD15_CONFIG_DIR, subfolder="vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(SD15_CONFIG_DIR / "text_encoder"))
    state = to_compvis_state_dict(unet, vae, text_encoder)
    counts = {prefix: sum(key.startswith(prefix) for key in state) for prefix in (U, V, T)}
    assert counts == {U: 686, V: 248, T: 196}
    for key in [
        "input_blocks.3.0.op.weight",
        "input_blocks.6.0.op.weight",
        "input_blocks.9.0.op.weight",
        "input_blocks.11.0.out_layers.3.weight",
        "input_blocks.8.1.transformer_blocks.0.ff.net.2.weight",
        "output_blocks.2.1.conv.weight",
        "output_blocks.5.2.conv.weight",
        "output_blocks.8.2.conv.weight",
        "output_blocks.11.1.proj_out.weight",
        "output_blocks.0.0.skip_connection.weight",
    ]:
        assert U + key in state, key
    assert U + "input_blocks.12.0.op.weight" not in state and U + "output_blocks.11.2.conv.weight" not in state
    assert tuple(state[U + "input_blocks.0.0.weight"].shape) == (320, 8, 3, 3)
    assert V + "decoder.up.3.upsample.conv.weight" in state and V + "decoder.up.0.upsample.conv.weight" not in state
    assert (
        V + "encoder.down.2.downsample.conv.weight" in state
        and V + "encoder.down.3.downsample.conv.weight" not in state
    )
    assert tuple(state[V + "encoder.mid.attn_1.q.weight"].shape) == (512, 512, 1, 1)
    assert tuple(state[T + "text_model.embeddings.token_embedding.weight"].shape) == (49408, 768)


def test_ckpt_round_trip_reads_with_weights_only_and_ignores_extras(tiny, tmp_path, monkeypatch):
    state = to_compvis_state_dict(tiny["unet"], tiny["vae"], tiny["text_encoder"])
    state = {key: value.detach().clone() for key, value in state.items()}
    # What the original InstructPix2Pix / Lightning checkpoints also carry.
    state["model_ema.decay"] = torch.tensor(0.9999)
    state["model_ema.num_updates"] = torch.tensor(22000)
    state["model_ema.diffusion_modelinput_blocks00weight"] = torch.zeros(3)
    state[T + "text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": state, "global_step": 22000, "epoch": 3}, path)

    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    components = load_single_file(path, config_dir=tiny["config_dir"])
    assert calls and all(flag is True for flag in calls)
    _assert_all_identical(tiny, components)


class _Payload:
    """Unpickling this would create a file: proof that pickled code ran."""

    marker: str = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_ckpt_with_pickled_object_is_refused_without_running_it(tiny, tmp_path):
    marker = tmp_path / "pwned"
    payload = _Payload()
    payload.marker = str(marker)
    state = to_compvis_state_dict(tiny["unet"], tiny["vae"], tiny["text_encoder"])
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": dict(state), "callback": payload}, path)
    with pytest.raises(UserError, match="weights_only=True"):
        load_single_file(path, config_dir=tiny["config_dir"])
    assert not marker.exists()


def test_dtype_is_applied(tiny):
    components = load_single_file(tiny["path"], config_dir=tiny["config_dir"], dtype=torch.bfloat16)
    _assert_all_identical(tiny, components, dtype=torch.bfloat16)


# ---------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------


def test_text_to_image_checkpoint_is_refused(tiny, tmp_path):
    unet, vae, text_encoder = _tiny_models(in_channels=4)
    save_single_file(unet, vae, text_encoder, tmp_path / "txt2img.safetensors")
    with pytest.raises(
        UserError,
        match=r"is a text-to-image model, not an editing model "
        r"\(its UNet takes 4 input channels, an editing model takes 8\)",
    ):
        load_single_file(tmp_path / "txt2img.safetensors", config_dir=tiny["config_dir"])


def test_text_to_image_checkpoint_loads_when_asked_for(tiny, tmp_path):
    """What training from a text-to-image single file does: the editing configs, with the file's 4 input channels."""
    unet, vae, text_encoder = _tiny_models(in_channels=4)
    save_single_file(unet, vae, text_encoder, tmp_path / "txt2img.safetensors")
    components = load_single_file(tmp_path / "txt2img.safetensors", config_dir=tiny["config_dir"], kind="any")
    assert components.unet.config.in_channels == 4
    _assert_all_identical({"unet": unet, "vae": vae, "text_encoder": text_encoder}, components)
    assert load_single_file(tiny["path"], config_dir=tiny["config_dir"], kind="any").unet.config.in_channels == 8
    with pytest.raises(UserError, match="is an editing model, not a text-to-image model"):
        load_single_file(tiny["path"], config_dir=tiny["config_dir"], kind="text-to-image")


def test_missing_file(tiny, tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_single_file(tmp_path / "nope.safetensors", config_dir=tiny["config_dir"])
    with pytest.raises(UserError, match="not a file"):
        load_single_file(tmp_path, config_dir=tiny["config_dir"])


@pytest.mark.parametrize("name", ["garbage.safetensors", "garbage.ckpt", "empty.ckpt", "garbage.pt"])
def test_garbage_file(tiny, tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"" if name.startswith("empty") else b"this is not a checkpoint\n" * 40)
    with pytest.raises(UserError, match="cannot read") as info:
        load_single_file(path, config_dir=tiny["config_dir"])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_not_compvis_layout(tiny, tmp_path, suffix):
    # A diffusers-format UNet file, for example, has none of the CompVis prefixes.
    tensors = {key: value.contiguous() for key, value in tiny["unet"].state_dict().items()}
    path = tmp_path / f"diffusers_unet{suffix}"
    if suffix == ".safetensors":
        save_file(tensors, str(path))
    else:
        torch.save(tensors, path)
    with pytest.raises(UserError, match="does not look like a Stable Diffusion checkpoint"):
        load_single_file(path, config_dir=tiny["config_dir"])


def test_incomplete_checkpoint(tiny, tmp_path):
    state = to_compvis_state_dict(tiny["unet"], tiny["vae"], tiny["text_encoder"])
    save_file({k: v.contiguous() for k, v in state.items() if not k.startswith(V)}, str(tmp_path / "novae.safetensors"))
    with pytest.raises(UserError, match="first_stage_model"):
        load_single_file(tmp_path / "novae.safetensors", config_dir=tiny["config_dir"])
    # A tensor that is missing inside a component is caught too, not left uninitialised.
    dropped = {k: v.contiguous() for k, v in state.items() if k != V + "decoder.conv_out.weight"}
    save_file(dropped, str(tmp_path / "holey.safetensors"))
    with pytest.raises(
        UserError,
        match=r"lacks 1 of the \d+ weights needed \(for example first_stage_model\.decoder\.conv_out\.weight\)",
    ):
        load_single_file(tmp_path / "holey.safetensors", config_dir=tiny["config_dir"])


def test_config_that_does_not_fit_the_checkpoint(tiny):
    # The tiny file against the full-size SD 1.5 configuration: shapes differ.
    with pytest.raises(UserError, match="does not match the model configuration.*--config"):
        load_single_file(tiny["path"], config_dir=SD15_CONFIG_DIR)


def test_bad_config_dir(tiny, tmp_path):
    with pytest.raises(UserError, match="is missing .*it must be a diffusers model configuration folder"):
        load_single_file(tiny["path"], config_dir=tmp_path)


# ---------------------------------------------------------------------------------------------
# Offline
# ---------------------------------------------------------------------------------------------


def test_loading_never_touches_the_network(tiny, monkeypatch):
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted during load_single_file")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    components = load_single_file(tiny["path"], config_dir=tiny["config_dir"])
    assert attempts == []
    _assert_identical(tiny["unet"], components.unet)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def test_save_is_atomic(tiny, tmp_path, monkeypatch):
    import safetensors.torch

    path = tmp_path / "model.safetensors"
    path.write_bytes(b"previous contents")

    def broken(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half written")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(UserError, match="cannot write .*disk full"):
        save_single_file(tiny["unet"], tiny["vae"], tiny["text_encoder"], path)
    assert path.read_bytes() == b"previous contents"
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]

    monkeypatch.undo()
    save_single_file(tiny["unet"], tiny["vae"], tiny["text_encoder"], path)
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]
    components = load_single_file(path, config_dir=tiny["config_dir"])
    _assert_identical(tiny["vae"], components.vae)


def test_save_wants_a_safetensors_name(tiny, tmp_path):
    with pytest.raises(UserError, match="safetensors"):
        save_single_file(tiny["unet"], tiny["vae"], tiny["text_encoder"], tmp_path / "model.ckpt")


# ---------------------------------------------------------------------------------------------
# The shipped SD 1.5 / InstructPix2Pix configuration
# ---------------------------------------------------------------------------------------------


def test_shipped_config_folder_describes_instruct_pix2pix():
    index = json.loads((SD15_CONFIG_DIR / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionInstructPix2PixPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]

    unet = UNet2DConditionModel.load_config(SD15_CONFIG_DIR, subfolder="unet")
    assert unet["in_channels"] == 8 and unet["out_channels"] == 4
    assert list(unet["block_out_channels"]) == [320, 640, 1280, 1280]
    assert unet["cross_attention_dim"] == 768 and unet["layers_per_block"] == 2 and unet["attention_head_dim"] == 8

    vae = AutoencoderKL.load_config(SD15_CONFIG_DIR, subfolder="vae")
    assert vae["scaling_factor"] == 0.18215 and vae["latent_channels"] == 4
    assert list(vae["block_out_channels"]) == [128, 256, 512, 512]

    text = CLIPTextConfig.from_pretrained(SD15_CONFIG_DIR / "text_encoder")
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (768, 12, 12)
    assert (text.vocab_size, text.max_position_embeddings, text.hidden_act) == (49408, 77, "quick_gelu")

    scheduler = diffusers.EulerAncestralDiscreteScheduler.from_pretrained(SD15_CONFIG_DIR, subfolder="scheduler")
    config = scheduler.config
    assert (config.beta_schedule, config.beta_start, config.beta_end) == ("scaled_linear", 0.00085, 0.012)
    assert config.num_train_timesteps == 1000 and config.prediction_type == "epsilon"


def test_shipped_tokenizer_gives_the_known_clip_ids():
    tokenizer = CLIPTokenizer.from_pretrained(SD15_CONFIG_DIR / "tokenizer", local_files_only=True)
    assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (49406, 49407, 49407)
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tokenizer("a photo of a dog").input_ids == [49406, 320, 1125, 539, 320, 1929, 49407]
    assert tokenizer("a painting of a cat").input_ids == [49406, 320, 3086, 539, 320, 2368, 49407]
    assert tokenizer("n kabrie").input_ids == [49406, 333, 6554, 5322, 49407]
    # The integration case of transformers' tests/models/clip/test_tokenization_clip.py.
    text = (
        "This is a test\nI was born in 92000, and this is falsé.\n生活的真谛是\n"
        "Hi  Hello\nHi   Hello\n\n \n  \n Hello\n"
        "<s>\nhi<s>there\nThe following string should be properly encoded: Hello.\nBut ird and ปี   ird   ด\n"
        "Hey how are you doing"
    )
    assert tokenizer(text).input_ids == [
        49406,
        589,
        533,
        320,
        1628,
        328,
        739,
        2683,
        530,
        280,
        273,
        271,
        271,
        271,
        267,
        537,
        589,
        533,
        2778,
        82,
        4166,
        269,
        33375,
        162,
        112,
        119,
        163,
        248,
        226,
        41570,
        164,
        108,
        249,
        42891,
        363,
        1883,
        3306,
        1883,
        3306,
        3306,
        283,
        338,
        285,
        1883,
        283,
        338,
        285,
        997,
        518,
        3473,
        9696,
        1535,
        655,
        12560,
        524,
        33703,
        281,
        3306,
        269,
        767,
        2770,
        537,
        1777,
        505,
        20278,
        2770,
        38825,
        2189,
        829,
        631,
        592,
        1960,
        49407,
    ]
    padded = tokenizer("a photo of a cat", padding="max_length", max_length=77, truncation=True).input_ids
    assert len(padded) == 77 and padded[7:] == [49407] * 70


@pytest.mark.parametrize("unet_layers, vae_layers, in_channels", [(2, 1, 8), (1, 2, 4)])
def test_a_bare_file_of_any_size_loads_by_its_shapes(tmp_path, unet_layers, vae_layers, in_channels):
    """No --config and no configs inside (as AUTOMATIC1111 or ComfyUI write them): the architecture is
    read from the shapes; what shapes cannot tell (attention heads, norm groups) is SD 1.5's."""
    from instruct_pix2pix.loading import describe

    unet, vae, text_encoder = _tiny_models(unet_layers, vae_layers, in_channels)
    path = tmp_path / "bare.safetensors"
    save_single_file(unet, vae, text_encoder, path)
    loaded = load_single_file(path, kind="any")
    _assert_all_identical({"unet": unet, "vae": vae, "text_encoder": text_encoder}, loaded)
    for key in ("in_channels", "block_out_channels", "layers_per_block", "down_block_types", "up_block_types",
                "cross_attention_dim"):  # fmt: skip
        assert tuple(np.atleast_1d(loaded.unet.config[key])) == tuple(np.atleast_1d(unet.config[key])), key
    for key in ("block_out_channels", "layers_per_block", "latent_channels"):
        assert tuple(np.atleast_1d(loaded.vae.config[key])) == tuple(np.atleast_1d(vae.config[key])), key
    for key in ("hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size"):
        assert getattr(loaded.text_encoder.config, key) == getattr(text_encoder.config, key), key
    info = describe(path)
    assert "blocks 32/64" in info["unet"] and "width 32, 2 layers" in info["text encoder"]


def test_a_bare_file_whose_vocabulary_is_not_clips_asks_for_its_config(tmp_path):
    unet, vae, _ = _tiny_models()
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                                num_attention_heads=4, vocab_size=500))  # fmt: skip
    path = tmp_path / "bare.safetensors"
    save_single_file(unet, vae, text_encoder, path)
    with pytest.raises(UserError, match="text encoder of 500 tokens.*--config"):
        load_single_file(path)
