"""The recipe that makes the shipped default model from nothing, one resumable stage at a time.

    ip2p world train-default [--work DIR]   (= make train-default; in code: run_recipe(work))

1. data      write the training edits (parquet, the released dataset's schema, with both captions)
   language  the world's language model (its GPT-3): pretrained on captions, fine-tuned on 700
             triples, measured against the grammar (`small_world.language`)
2. clip      train the small CLIP (its text encoder becomes the models')
3. vae       train the small VAE
4. scratch   assemble a diffusers folder: trained VAE and text encoder, UNet (4 channels) and scheduler configs
5. t2i       `ip2p train configs/small-world-t2i.yaml`: the world's Stable Diffusion, from captions
6. unet      `ip2p train configs/small-world.yaml`: the editor, fine-tuned from the text-to-image
             model as in the paper (conv_in widened 4 -> 8, the new channels zero), with the paper's
             objective and conditioning dropout, at a constant learning rate; unlike the paper its
             text encoder trains with it (the world's CLIP never saw the instruction words)
   cooldown  the same config from the editor's model, the rate falling linearly to 0 (`COOLDOWN`)
   filler    once more from that model, on the same edits with made-up words in some of the
             instructions (`FILLER`), so that words it never saw do not stop an edit; then
   filler2   once more the same way from the filler stage's model (`FILLER_STAGES`)
7. package   both models in float16 where that loses nothing measurable, and the language model,
             into the package
8. evaluate  `ip2p world evaluate` on the editor (held-out scenes, both wordings) and the
             text-to-image model (held-out captions), at the settings they ship with: results.json,
             table.md and examples.png in evaluation/<stage>

Each stage leaves its result under the work folder and is skipped when that result is there, and
the long ones (CLIP, VAE, the two UNets) checkpoint as they go: a killed run picks up where it stopped.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from instruct_pix2pix.atomic import atomic_folder
from instruct_pix2pix.errors import UserError
from instruct_pix2pix.loading.sources import DEFAULT_CLIP, DEFAULT_MODEL, DEFAULT_TEXT_TO_IMAGE

PACKAGE = Path(__file__).resolve().parent
MODEL_CONFIG = PACKAGE / "model_config"  # UNet and scheduler configs of the default models
CONFIGS = PACKAGE.parents[2] / "configs"  # the training configs (small-world-t2i.yaml, small-world.yaml)
TEXT_TOKENS = 77  # the tokenizer's length, CLIP's: the longest caption is 68 tokens, an instruction 13
TRAINING_EDITS = 10_000  # 100,000 did no better at equal steps: the editor is short of training, not data (README)
# The editor's cool-down: after the constant-rate stage, a second stage from its model with the rate
# falling linearly to 0 after the config's warmup (fresh optimizer and EMA); measured on 10 held-out
# edits a kind: 82% right at 9000 constant-rate steps, 87% after it (README).
COOLDOWN = ["lr_scheduler=linear"]
COOLDOWN_STEPS = 1500
# Then one more such stage on the same edits with made-up words in 30% of the instructions
# (`edits.with_filler`), so that the editor edits past words it does not know instead of stopping at
# them: held-out wording 48% -> 66% right on 10 held-out edits a kind (README).
FILLER = 0.3
# Two such stages, the second from the first's model: 82% -> 83% right with training wording and
# 67% -> 71% held out on 40 held-out edits a kind (README).
FILLER_STAGES = 2
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
    """A from_scratch folder for the trainer: the frozen parts with weights, the UNet as a config (a
    text-to-image UNet, 4 input channels; the editor's trainer widens it to 8)."""
    from transformers import CLIPModel, CLIPTextModel

    from instruct_pix2pix.small_world.edits import vocabulary
    from instruct_pix2pix.tokenizers import build_clip_tokenizer

    with atomic_folder(output) as folder:
        shutil.copytree(MODEL_CONFIG, folder, dirs_exist_ok=True)
        clip = CLIPModel.from_pretrained(clip_dir)
        tokenizer = build_clip_tokenizer(vocabulary(), TEXT_TOKENS)
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
        # what it is measured with (`ip2p world evaluate`): low text guidance, chosen on held-out scenes (README)
        "settings": {"num_inference_steps": 20, "guidance_scale": 1.5, "image_guidance_scale": 1.5},
    }


def text_to_image_about() -> dict:
    """What the shipped text-to-image model draws."""
    from instruct_pix2pix.small_world.edits import vocabulary

    return {
        "name": "instruct-pix2pix small-world text-to-image model",
        "understands": (
            "captions of 64x64 scenes, as the small world writes them: 'a small red circle at the top left and a "
            "large blue square in the center on a white background', '... on grass under a blue sky at night', "
            "'a black and white picture of ...'"
        ),
        "words": vocabulary(),
        "settings": {"num_inference_steps": 20, "guidance_rescale": 0.7},  # guidance 7.5 over-saturates without
    }


def _package_model(trained: Path, output: Path, about_model: dict) -> None:
    """A trained model into the package: the UNet in float16 (checked to change results by less than a
    pixel level), VAE and text encoder in float32 (small, and they set the numbers)."""
    from diffusers import UNet2DConditionModel

    from instruct_pix2pix.loading import ANY, load_model, save_model

    model = load_model(trained, kind=ANY)
    unet32 = model.unet
    model.unet = UNet2DConditionModel.from_config(unet32.config)
    model.unet.load_state_dict({k: v.half().float() for k, v in unet32.state_dict().items()})
    pairs = zip(unet32.state_dict().values(), model.unet.state_dict().values())
    worst = max((a - b).abs().max().item() for a, b in pairs)
    print(f"[package] {output.name}: largest UNet weight change from float16 rounding: {worst:.2e}")
    model.unet = model.unet.half()
    model.about = about_model
    save_model(model, output)


def package(trained: Path, clip_dir: Path, text_to_image: Path | None = None, output: Path = DEFAULT_MODEL,
            clip_output: Path = DEFAULT_CLIP, text_to_image_output: Path = DEFAULT_TEXT_TO_IMAGE) -> None:  # fmt: skip
    """Copy the editing model, the text-to-image model it was fine-tuned from (if any) and the CLIP
    into the package."""
    from transformers import CLIPModel

    _package_model(trained, output, about())
    if text_to_image is not None:
        _package_model(text_to_image, text_to_image_output, text_to_image_about())
    clip = CLIPModel.from_pretrained(clip_dir)
    with atomic_folder(clip_output) as folder:  # the old CLIP goes only once the new one is in place
        clip.half().save_pretrained(folder)
        for name in CLIP_FILES:
            if (clip_dir / name).exists():
                shutil.copy(clip_dir / name, folder / name)


def package_language_model(trained: Path, output: Path | None = None) -> None:
    """The world's language model into the package (float32: 4.6 MB), with its measurements."""
    from instruct_pix2pix.small_world.language import DEFAULT_LANGUAGE_MODEL

    with atomic_folder(output or DEFAULT_LANGUAGE_MODEL) as folder:
        shutil.copytree(trained, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns("checkpoint*", ".*.tmp"))
        if (trained.parent / "report.json").exists():
            shutil.copy(trained.parent / "report.json", folder / "report.json")


def run_recipe(
    work: Path = Path("runs/default"),
    *,
    edits: int = TRAINING_EDITS,
    steps: int | None = None,
    text_to_image_steps: int | None = None,
    from_scratch: bool = False,
    package_model: bool = True,
) -> Path:
    """Run every stage under `work`, skipping those already done; return the trained model folder.

    `edits`: training edits to generate; `steps` and `text_to_image_steps`: the two UNets' training
    steps (default: their configs'); `from_scratch`: train the editor from scratch, with no
    text-to-image model (the comparison the README reports); `package_model=False` leaves the
    shipped models in the package alone.
    """
    work = Path(work)
    started = time.time()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    from instruct_pix2pix.small_world import pretrain
    from instruct_pix2pix.small_world.evaluate import evaluate_model
    from instruct_pix2pix.small_world.generate import write_dataset
    from instruct_pix2pix.training.config import load_config
    from instruct_pix2pix.training.trainer import train

    data = work / "data"
    if not _done(data / "train-triples.jsonl", "data"):
        write_dataset(data, edits)
    if not _done(work / "language" / "report.json", "language"):
        from instruct_pix2pix.small_world.language import train_language_model

        report = train_language_model(work / "language")["evaluation"]
        print(f"[language] held-out captions: {report['parses']:.1%} parse, {report['right']:.1%} exactly right")
    clip, vae = work / "clip" / "model", work / "vae" / "model"  # pretrain writes output_dir/model
    if not _done(clip, "clip"):
        pretrain.train_clip(work / "clip", **pretrain.DEFAULTS["clip"], seed=0)
    if not _done(vae, "vae"):
        pretrain.train_vae(work / "vae", **pretrain.DEFAULTS["vae"], seed=0)
    scratch = work / "scratch"
    if not _done(scratch, "scratch"):
        assemble_scratch(clip, vae, scratch)
    elif json.loads((scratch / "unet" / "config.json").read_text())["in_channels"] != 4:
        raise UserError(f"{scratch} was assembled by the earlier recipe (an 8-channel UNet): delete it and run again")

    def train_stage(config: str, name: str, start: list[str], stage_steps: int | None, data: Path = data) -> Path:
        output = work / name
        if not _done(output / "model", name):
            overrides = [*start, f"train_data={data}", f"output_dir={output}", "resume_from_checkpoint=latest"]
            overrides += [f"max_train_steps={stage_steps}"] if stage_steps else []
            train(load_config(CONFIGS / config, overrides))
        return output / "model"

    text_to_image = None
    if from_scratch:
        start = [f"from_scratch={scratch}", "pretrained_model_name_or_path=none"]
    else:
        text_to_image = train_stage("small-world-t2i.yaml", "t2i", [f"from_scratch={scratch}"], text_to_image_steps)
        start = [f"pretrained_model_name_or_path={text_to_image}", "from_scratch=none"]
    name = "unet-scratch" if from_scratch else "unet"
    constant = train_stage("small-world.yaml", name, start, steps)
    start = [f"pretrained_model_name_or_path={constant}", "from_scratch=none", *COOLDOWN]
    cooled = train_stage("small-world.yaml", f"{name}-cooldown", start, COOLDOWN_STEPS)
    filler_data = work / "data-filler"
    if not _done(filler_data / "train-triples.jsonl", "data-filler"):
        write_dataset(filler_data, edits, filler=FILLER)
    trained = cooled
    for stage in range(1, FILLER_STAGES + 1):
        start = [f"pretrained_model_name_or_path={trained}", "from_scratch=none", *COOLDOWN]
        stage_name = f"{name}-filler" + (str(stage) if stage > 1 else "")
        trained = train_stage("small-world.yaml", stage_name, start, COOLDOWN_STEPS, filler_data)
    if package_model and from_scratch:
        print("[package] skipped: the editor trained from scratch is the comparison arm, not the shipped model")
    elif package_model:
        print("[package] ...")
        package(trained, clip, text_to_image)
        package_language_model(work / "language" / "model")
    evaluation = work / "evaluation"  # `ip2p world evaluate` at the settings each model is shipped with
    if text_to_image is not None and not _done(evaluation / "t2i" / "examples.png", "evaluate t2i"):
        print(evaluate_model(text_to_image, evaluation / "t2i", text_to_image_about()["settings"]))
    if not _done(evaluation / name / "examples.png", f"evaluate {name}"):
        print(evaluate_model(trained, evaluation / name, about()["settings"]))
    print(f"[done] all stages took {(time.time() - started) / 60:.1f} min")
    return trained
