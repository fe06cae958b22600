"""The recipe that makes the shipped default model from nothing, one resumable stage at a time.

    ip2p world train-default [--work DIR]   (= make train-default; in code: run_recipe(work))

1. data      write the training edits (parquet, the released dataset's schema)
2. clip      train the small CLIP (its text encoder becomes the editing model's)
3. vae       train the small VAE
4. scratch   assemble a diffusers folder: trained VAE and text encoder, UNet and scheduler configs
5. unet      `ip2p train configs/small-world.yaml` (the paper's objective and conditioning dropout)
6. package   the trained model in float16 where that loses nothing measurable, into the package
7. evaluate  `ip2p world evaluate` on held-out scenes; table, JSON and figure next to the model

Each stage leaves its result under the work folder and is skipped when that result is there, and
the long ones (CLIP, VAE, UNet) checkpoint as they go: a killed run picks up where it stopped.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from instruct_pix2pix.atomic import atomic_folder
from instruct_pix2pix.loading import DEFAULT_MODEL  # the shipped editing model (diffusers layout)

PACKAGE = Path(__file__).resolve().parent
DEFAULT_CLIP = PACKAGE / "clip"  # the shipped small CLIP (for scores and metrics)
MODEL_CONFIG = PACKAGE / "model_config"  # UNet and scheduler configs of the default model
INSTRUCTION_TOKENS = 20  # the editing tokenizer's length: the longest instruction is 13 tokens
TRAINING_EDITS = 10_000
CLIP_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "preprocessor_config.json",
)


def _done(path: Path, stage: str) -> bool:
    if path.exists():
        print(f"[{stage}] done already: {path}")
        return True
    print(f"[{stage}] ...", flush=True)
    return False


def assemble_scratch(clip_dir: Path, vae_dir: Path, output: Path) -> Path:
    """A from_scratch folder for the trainer: the frozen parts with weights, the UNet as a config."""
    from transformers import CLIPModel, CLIPTextModel

    from instruct_pix2pix.small_world.edits import vocabulary
    from instruct_pix2pix.tokenizers import build_clip_tokenizer

    with atomic_folder(output) as folder:
        shutil.copytree(MODEL_CONFIG, folder, dirs_exist_ok=True)
        clip = CLIPModel.from_pretrained(clip_dir)
        tokenizer = build_clip_tokenizer(vocabulary(), INSTRUCTION_TOKENS)
        text_config = clip.config.text_config
        text_config.bos_token_id, text_config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        text_config.pad_token_id = tokenizer.pad_token_id
        text_encoder = CLIPTextModel(text_config)
        text_encoder.load_state_dict(clip.text_model.state_dict())
        text_encoder.save_pretrained(folder / "text_encoder")
        tokenizer.save_pretrained(folder / "tokenizer")
        # the VAE without training leftovers: checkpoints, metrics, unfinished atomic writes
        leftovers = shutil.ignore_patterns("checkpoint*", ".*.tmp", "metrics.json")
        shutil.copytree(vae_dir, folder / "vae", ignore=leftovers)
    return output


def about() -> dict:
    """What the default model understands: `Editor` warns about instructions with other words."""
    from instruct_pix2pix.small_world.edits import vocabulary

    return {
        "name": "instruct-pix2pix small-world default model",
        "understands": (
            "64x64 scenes of circles, squares, triangles and stars in eight colours (red, orange, yellow, green, blue, "
            "purple, pink, brown) on a 3x3 grid, with instructions such as 'make the red circle blue', "
            "'turn the blue square into a star', 'add a small green star at the top left', 'remove the red circle', "
            "'make the red circle bigger', 'move the red circle left', 'make the background beige', 'make it night', "
            "'make it black and white', 'add two small yellow stars'"
        ),
        "words": vocabulary(),
        "settings": {"num_inference_steps": 20},  # what it is measured with (`ip2p world evaluate`)
    }


def package(trained: Path, clip_dir: Path, output: Path = DEFAULT_MODEL, clip_output: Path = DEFAULT_CLIP) -> None:
    """Copy the trained model into the package: the UNet in float16 (checked to change edits by
    less than a pixel level), VAE and text encoder in float32 (small, and they set the numbers)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPModel

    from instruct_pix2pix.loading import load_model, save_model

    model = load_model(trained)
    unet32 = model.unet
    model.unet = UNet2DConditionModel.from_config(unet32.config)
    model.unet.load_state_dict({k: v.half().float() for k, v in unet32.state_dict().items()})
    pairs = zip(unet32.state_dict().values(), model.unet.state_dict().values())
    worst = max((a - b).abs().max().item() for a, b in pairs)
    print(f"[package] largest UNet weight change from float16 rounding: {worst:.2e}")
    model.unet = model.unet.half()
    model.about = about()
    save_model(model, output)
    clip = CLIPModel.from_pretrained(clip_dir)
    with atomic_folder(clip_output) as folder:  # the old CLIP goes only once the new one is in place
        clip.half().save_pretrained(folder)
        for name in CLIP_FILES:
            if (clip_dir / name).exists():
                shutil.copy(clip_dir / name, folder / name)


def run_recipe(
    work: Path = Path("runs/default"),
    *,
    edits: int = TRAINING_EDITS,
    steps: int | None = None,
    package_model: bool = True,
) -> Path:
    """Run every stage under `work`, skipping those already done; return the trained model folder.

    `edits`: training edits to generate; `steps`: UNet training steps (default: the config's);
    `package_model=False` leaves the shipped model in the package alone.
    """
    work = Path(work)
    started = time.time()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    from instruct_pix2pix.small_world import pretrain
    from instruct_pix2pix.small_world.generate import write_dataset
    from instruct_pix2pix.training.config import load_config
    from instruct_pix2pix.training.trainer import train

    data = work / "data"
    if not _done(data / "train-triples.jsonl", "data"):
        write_dataset(data, edits)
    clip, vae = work / "clip" / "model", work / "vae" / "model"  # pretrain writes output_dir/model
    if not _done(clip, "clip"):
        pretrain.train_clip(work / "clip", **pretrain.DEFAULTS["clip"], seed=0)
    if not _done(vae, "vae"):
        pretrain.train_vae(work / "vae", **pretrain.DEFAULTS["vae"], seed=0)
    scratch = work / "scratch"
    if not _done(scratch, "scratch"):
        assemble_scratch(clip, vae, scratch)
    overrides = [
        f"from_scratch={scratch}",
        f"train_data={data}",
        f"output_dir={work / 'unet'}",
        "resume_from_checkpoint=latest",
    ]
    if steps:
        overrides.append(f"max_train_steps={steps}")
    trained = work / "unet" / "model"
    if not _done(trained, "unet"):
        train(load_config(PACKAGE.parents[2] / "configs" / "small-world.yaml", overrides))
    if package_model:
        print("[package] ...")
        package(trained, clip)
    print(f"[evaluate] run `ip2p world evaluate` next; all stages took {(time.time() - started) / 60:.1f} min")
    return trained
