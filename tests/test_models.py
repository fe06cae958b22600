"""Loading: diffusers folders, hub ids (without the network), single files, other text encoders."""

from __future__ import annotations

import shutil

import huggingface_hub
import numpy as np
import pytest
import torch
from conftest import WORDS, scene, tiny_parts
from diffusers import StableDiffusionInstructPix2PixPipeline
from transformers import BertConfig, BertModel, BertTokenizer

from instruct_pix2pix.editing import Editor
from instruct_pix2pix.errors import UserError
from instruct_pix2pix.loading import SD15_CONFIG_DIR, describe, hub, load_model, save_single_file
from instruct_pix2pix.loading.hub import hub_patterns

EDIT = dict(seed=3, num_inference_steps=4, show_progress=False)

# The file list of timbrooks/instruct-pix2pix on the hub (weights in both formats, two
# multi-GB single-file checkpoints at the top, a safety checker).
TIMBROOKS_FILES = [
    ".gitattributes",
    "README.md",
    "model_index.json",
    "instruct-pix2pix-00-22000.ckpt",
    "instruct-pix2pix-00-22000.safetensors",
    "feature_extractor/preprocessor_config.json",
    "safety_checker/config.json",
    "safety_checker/model.safetensors",
    "safety_checker/pytorch_model.bin",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "text_encoder/pytorch_model.bin",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.bin",
    "unet/diffusion_pytorch_model.safetensors",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.bin",
    "vae/diffusion_pytorch_model.safetensors",
]


def test_hub_fetches_only_what_the_editor_needs():
    from fnmatch import fnmatch

    patterns = hub_patterns(TIMBROOKS_FILES)
    fetched = sorted(f for f in TIMBROOKS_FILES if any(fnmatch(f, p) for p in patterns))
    assert fetched == [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    # a repository with only pickled weights still gets them
    bin_only = [f for f in TIMBROOKS_FILES if not f.endswith(".safetensors")]
    assert "unet/diffusion_pytorch_model.bin" in hub_patterns(bin_only)


def test_hub_id_downloads_then_loads(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(hub, "hub_reachable", lambda: True)
    asked = {}
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda repo_id: TIMBROOKS_FILES)

    def fake_snapshot(repo_id, allow_patterns=None, local_files_only=False):
        asked.update(repo_id=repo_id, allow_patterns=allow_patterns)
        return str(tiny_model_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    model = load_model("timbrooks/instruct-pix2pix")
    assert asked["repo_id"] == "timbrooks/instruct-pix2pix"
    assert "unet/diffusion_pytorch_model.safetensors" in asked["allow_patterns"]
    assert model.unet.config.in_channels == 8 and model.source == "timbrooks/instruct-pix2pix"


def test_hub_id_offline_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hub, "hub_reachable", lambda: True)  # reachable, but the download fails

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'huggingface.co'")

    monkeypatch.setattr(huggingface_hub, "list_repo_files", offline)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(UserError, match=r"cannot download 'timbrooks/instruct-pix2pix'.*not in the local cache"):
        load_model("timbrooks/instruct-pix2pix")


def test_no_network_fails_fast_and_says_offline(monkeypatch, tmp_path):
    import socket
    import time

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)

    def no_route(address, timeout=None):
        assert timeout is not None and timeout <= 5  # a few seconds, not the client's retries
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_route)
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda *a, **k: pytest.fail("no download is tried"))
    started = time.monotonic()
    with pytest.raises(UserError, match="this machine is offline.*pass a local diffusers folder"):
        load_model("timbrooks/instruct-pix2pix")
    assert time.monotonic() - started < 5


def test_text_to_image_folder_is_refused(text_to_image_model_dir):
    with pytest.raises(UserError, match="is a text-to-image model, not an editing model"):
        load_model(text_to_image_model_dir)


@pytest.mark.parametrize(
    "remove, named",
    [
        ("vae", "vae/"),
        ("unet/diffusion_pytorch_model.safetensors", "unet/ weights"),
        ("scheduler/scheduler_config.json", "scheduler/scheduler_config.json"),
        ("tokenizer", "tokenizer/"),
    ],
)
def test_folder_missing_pieces(tiny_model_dir, tmp_path, remove, named):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    target = folder / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(UserError, match=f"is missing .*{named}"):
        load_model(folder)


@pytest.mark.parametrize(
    "source, message",
    [
        ("no/such/place.safetensors", "no such model"),
        ("./nowhere", "no such model"),
    ],
)
def test_unknown_sources(source, message):
    with pytest.raises(UserError, match=message):
        load_model(source)


def config_only_copy(folder, into):
    """The folder without weights: what a single file is read with."""
    shutil.copytree(folder, into, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    return into


def test_single_file_edits_like_the_folder(tiny_model_dir, tmp_path):
    parts = load_model(tiny_model_dir)
    checkpoint = tmp_path / "model.safetensors"
    save_single_file(parts.unet, parts.vae, parts.text_encoder, checkpoint)
    configs = config_only_copy(tiny_model_dir, tmp_path / "configs")
    from_file = Editor.from_pretrained(checkpoint, device="cpu", config=configs)
    from_folder = Editor.from_pretrained(tiny_model_dir, device="cpu")
    a = from_file.edit(scene(), "make it snowy", **EDIT).edits[0].pixels
    b = from_folder.edit(scene(), "make it snowy", **EDIT).edits[0].pixels
    assert np.array_equal(a, b)


def test_info_reads_configs(tiny_model_dir, text_to_image_model_dir, tmp_path):
    info = describe(tiny_model_dir)
    assert info["kind"].startswith("editing model")
    assert info["unet"].startswith("8 input channels (4 noisy latent + 4 image latent)")
    assert info["default resolution"] == "64" and "CLIPTextModel" in info["text encoder"]
    assert describe(text_to_image_model_dir)["kind"].startswith("not an editing model")
    parts = load_model(tiny_model_dir)
    checkpoint = tmp_path / "model.safetensors"
    save_single_file(parts.unet, parts.vae, parts.text_encoder, checkpoint)
    info = describe(checkpoint, config=config_only_copy(tiny_model_dir, tmp_path / "configs"))
    assert "single-file" in info["source"] and info["kind"].startswith("editing model")
    # the shipped configuration describes SD 1.5 InstructPix2Pix
    assert describe(checkpoint, config=SD15_CONFIG_DIR)["default resolution"] == "512"


def test_any_transformers_text_encoder(tmp_path):
    """A BERT text encoder instead of CLIP: loaded by the class name in model_index.json, same pixels as diffusers."""
    parts = tiny_parts()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    parts["tokenizer"] = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, model_max_length=32)
    torch.manual_seed(1)
    parts["text_encoder"] = BertModel(
        BertConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            max_position_embeddings=64,
        )
    )
    folder = tmp_path / "bert-ip2p"
    StableDiffusionInstructPix2PixPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    ).save_pretrained(folder)
    editor = Editor.from_pretrained(folder, device="cpu")
    assert type(editor.model.text_encoder).__name__ == "BertModel"
    ours = editor.edit(scene(), "make it snowy", **EDIT).edits[0].pixels
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
        folder, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(
        "make it snowy",
        image=scene(),
        num_inference_steps=4,
        generator=[torch.Generator().manual_seed(3)],
        output_type="np",
    ).images[0]
    assert np.abs(ours - theirs).max() <= 1e-4
