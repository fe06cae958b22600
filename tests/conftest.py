"""Tiny components of the real SD 1.5 editing architecture, built in code and saved in the real layouts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    EulerAncestralDiscreteScheduler,
    StableDiffusionInstructPix2PixPipeline,
    UNet2DConditionModel,
)
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel

from instruct_pix2pix.loading import SD15_CONFIG_DIR
from instruct_pix2pix.tokenizers import build_clip_tokenizer

# The scheduler config of timbrooks/instruct-pix2pix (SD 1.5's), as shipped for single files.
SD15_SCHEDULER_CONFIG = json.loads((SD15_CONFIG_DIR / "scheduler" / "scheduler_config.json").read_text())
WORDS = "make it snowy turn the sky into a night add fireworks red blue circle square painting watercolor".split()


def tiny_parts(seed: int = 0, in_channels: int = 8) -> dict:
    """UNet (8 input channels), VAE, CLIP text encoder, tokenizer and scheduler, a few MB in all."""
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(WORDS)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=in_channels,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        norm_num_groups=32,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        sample_size=64,
    )
    # The scheduler config of timbrooks/instruct-pix2pix (SD 1.5's, with its DDIM/PNDM keys).
    scheduler = EulerAncestralDiscreteScheduler.from_config(SD15_SCHEDULER_CONFIG)
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


def save_tiny_model(folder, **kwargs) -> None:
    """Write a diffusers-format folder the way diffusers itself writes one (model_index.json and all)."""
    pipe = StableDiffusionInstructPix2PixPipeline(
        **tiny_parts(**kwargs), safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.save_pretrained(folder)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-ip2p")
    save_tiny_model(folder)
    return folder


@pytest.fixture(scope="session")
def text_to_image_model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-sd")
    save_tiny_model(folder, in_channels=4)
    return folder


def scene(width: int = 64, height: int = 64, seed: int = 0) -> Image.Image:
    """A smooth, structured test image (random noise would make every edit look alike)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    channels = [np.sin(6 * x * rng.uniform(0.5, 2) + rng.uniform(0, 6)) * np.cos(5 * y + c) for c in range(3)]
    return Image.fromarray(((np.stack(channels, -1) + 1) * 127.5).astype(np.uint8))


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    scene(96, 64).save(path)
    return path


TINY_CLIP = {"text_config": {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                             "num_attention_heads": 4, "projection_dim": 16},
             "vision_config": {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                               "num_attention_heads": 4, "patch_size": 8, "projection_dim": 16},
             "projection_dim": 16}  # fmt: skip


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A tiny CLIP (transformers layout, with its image processor and tokenizer)."""
    from transformers import CLIPModel

    from instruct_pix2pix.small_world.pretrain import clip_config, clip_image_processor

    torch.manual_seed(0)
    tokenizer = build_clip_tokenizer(WORDS)
    model = CLIPModel(clip_config(tokenizer, image_size=32, overrides=TINY_CLIP))
    folder = tmp_path_factory.mktemp("tiny-clip")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    clip_image_processor(32).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def shipped_editor():
    """The Editor on the small-world model shipped in the package, on the CPU."""
    from instruct_pix2pix import Editor

    return Editor.from_pretrained(device="cpu")


def serve_app(editor, **options):
    """The web app on a free port of 127.0.0.1, for a fixture: yields its URL, then stops it."""
    import socket

    from instruct_pix2pix.app import launch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = launch(editor, port=port, block=False, **options)
    yield f"http://127.0.0.1:{port}/"
    demo.close()
