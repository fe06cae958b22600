"""The recipe that makes the shipped default model from nothing, one resumable stage at a time.

    python -m instruct_pix2pix.small_world.recipe [--work runs/default]   (= make train-default)

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

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from instruct_pix2pix.errors import UserError
from instruct_pix2pix.models import DEFAULT_MODEL  # the shipped editing model (diffusers layout)

PACKAGE = Path(__file__).resolve().parent
DEFAULT_CLIP = PACKAGE / "clip"  # the shipped small CLIP (for scores and metrics)
MODEL_CONFIG = PACKAGE / "model_config"  # UNet and scheduler configs of the default model
INSTRUCTION_TOKENS = 20  # the editing tokenizer's length: the longest instruction is 13 tokens
TRAINING_EDITS = 10_000


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

    temporary = output.with_name(output.name + ".tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    shutil.copytree(MODEL_CONFIG, temporary)
    clip = CLIPModel.from_pretrained(clip_dir)
    tokenizer = build_clip_tokenizer(vocabulary(), INSTRUCTION_TOKENS)
    text_config = clip.config.text_config
    text_config.bos_token_id, text_config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    text_config.pad_token_id = tokenizer.pad_token_id
    text_encoder = CLIPTextModel(text_config)
    text_encoder.load_state_dict(clip.text_model.state_dict())
    text_encoder.save_pretrained(temporary / "text_encoder")
    tokenizer.save_pretrained(temporary / "tokenizer")
    shutil.copytree(vae_dir, temporary / "vae", ignore=shutil.ignore_patterns("checkpoint*", "*.json.tmp", "metrics.json"))
    temporary.replace(output)
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
    }


def package(trained: Path, clip_dir: Path, output: Path = DEFAULT_MODEL, clip_output: Path = DEFAULT_CLIP) -> None:
    """Copy the trained model into the package: the UNet in float16 (checked to change edits by
    less than a pixel level), VAE and text encoder in float32 (small, and they set the numbers)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPModel

    from instruct_pix2pix.models import load_model, save_model

    model = load_model(trained)
    unet32 = model.unet
    model.unet = UNet2DConditionModel.from_config(unet32.config)
    model.unet.load_state_dict({k: v.half().float() for k, v in unet32.state_dict().items()})
    worst = max((a - b).abs().max().item() for a, b in zip(unet32.state_dict().values(), model.unet.state_dict().values()))
    print(f"[package] largest UNet weight change from float16 rounding: {worst:.2e}")
    model.unet = model.unet.half()
    model.about = about()
    save_model(model, output)
    clip = CLIPModel.from_pretrained(clip_dir)
    temporary = clip_output.with_name(clip_output.name + ".tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    clip.half().save_pretrained(temporary)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                 "preprocessor_config.json"):  # fmt: skip
        if (clip_dir / name).exists():
            shutil.copy(clip_dir / name, temporary / name)
    shutil.rmtree(clip_output, ignore_errors=True)
    temporary.replace(clip_output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="runs/default", help="where every stage leaves its results")
    parser.add_argument("--edits", type=int, default=TRAINING_EDITS, help="training edits to generate")
    parser.add_argument("--steps", type=int, default=None, help="UNet training steps (default: the config's)")
    parser.add_argument("--no-package", action="store_true", help="leave the shipped model in the package alone")
    args = parser.parse_args(argv)
    work = Path(args.work)
    started = time.time()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    from instruct_pix2pix.small_world import pretrain
    from instruct_pix2pix.small_world.generate import write_dataset
    from instruct_pix2pix.training.config import load_config
    from instruct_pix2pix.training.trainer import train

    data = work / "data"
    if not _done(data / "train-triples.jsonl", "data"):
        write_dataset(data, args.edits)
    clip, vae = work / "clip" / "model", work / "vae" / "model"  # pretrain writes output_dir/model
    if not _done(clip, "clip"):
        pretrain.train_clip(work / "clip", **pretrain.DEFAULTS["clip"], seed=0)
    if not _done(vae, "vae"):
        pretrain.train_vae(work / "vae", **pretrain.DEFAULTS["vae"], seed=0)
    scratch = work / "scratch"
    if not _done(scratch, "scratch"):
        assemble_scratch(clip, vae, scratch)
    overrides = [f"from_scratch={scratch}", f"train_data={data}", f"output_dir={work / 'unet'}", "resume_from_checkpoint=latest"]
    if args.steps:
        overrides.append(f"max_train_steps={args.steps}")
    trained = work / "unet" / "model"
    if not _done(trained, "unet"):
        train(load_config(PACKAGE.parents[2] / "configs" / "small-world.yaml", overrides))
    if not args.no_package:
        print("[package] ...")
        package(trained, clip)
    print(f"[evaluate] run `ip2p world evaluate` next; all stages took {(time.time() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except UserError as e:
        raise SystemExit(f"error: {e}") from None
