"""The `ip2p` command: a thin layer that parses, calls the library, and reports.

Bad input ends with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from instruct_pix2pix import __version__
from instruct_pix2pix.errors import EditWarning, UserError

EXIT_USER_ERROR = 2


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        raise UserError(f"{message} (see `{self.prog} --help`)")


def add_model_options(parser: argparse.ArgumentParser, *, device: bool = True, config: bool = True) -> None:
    """--model (and --config, --device): the same words for every command that uses a model."""
    parser.add_argument(
        "--model",
        default=None,
        help="diffusers folder, hub id (timbrooks/instruct-pix2pix) or "
        ".safetensors/.ckpt file (default: the small-world model shipped with the package)",
    )
    if config:
        parser.add_argument(
            "--config",
            help="diffusers config folder a single-file checkpoint is read with (default: SD 1.5 InstructPix2Pix)",
        )
    if device:
        parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N, mps")


COMPILE_HELP = (
    "run the UNet under torch.compile: about 1.2x faster after a first batch that compiles (40 s to a "
    "minute for the small world's model on 2 CPU cores); for long runs"
)


def build_parser() -> argparse.ArgumentParser:
    from instruct_pix2pix.images import DEFAULT_MAX_WORK_PIXELS
    from instruct_pix2pix.settings import (
        DTYPE_NAMES,
        PAIR_CANDIDATES,
        PAIR_CLIP_CAPTION,
        PAIR_CLIP_DIRECTION,
        PAIR_CLIP_IMAGE,
        PAIR_FORMATS,
        PAIR_GUIDANCE_RANGE,
        PAIR_KEEP,
        PAIR_MODES,
        PAIR_P_RANGE,
        PAIR_SELF_REPLACE,
        PAIR_STEPS,
        REFERENCE_CLIP,
        EditSettings,
        positive_int,
        whole_number,
    )

    parser = Parser(
        prog="ip2p",
        description="InstructPix2Pix: edit images from written instructions.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"instruct-pix2pix {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")

    edit = commands.add_parser(
        "edit",
        help="edit images from a written instruction",
        description="Edit INPUT (image files or folders) following INSTRUCTION.",
    )
    edit.add_argument(
        "items", nargs="+", metavar="INPUT... INSTRUCTION", help="image files or folders, then the instruction"
    )
    edit.add_argument("-o", "--output", required=True, help="output .png/.jpg/.webp (one result) or folder (several)")
    edit.add_argument(
        "--then",
        action="append",
        default=[],
        metavar="INSTRUCTION",
        help="apply another instruction after (repeatable)",
    )
    add_model_options(edit)
    EditSettings.add_options(edit)
    edit.add_argument(
        "--seed", type=int, default=None, help="seed of the first image; image i uses seed+i (default random)"
    )
    edit.add_argument("--num-images", type=positive_int, default=1, help="variants per input (default 1)")
    edit.add_argument("--batch-size", type=positive_int, default=None, help="most samples per UNet call (default: all)")
    edit.add_argument("--max-pixels", type=positive_int, default=None, help="refuse larger inputs (default 64 million)")
    edit.add_argument(
        "--max-work-pixels",
        type=positive_int,
        default=DEFAULT_MAX_WORK_PIXELS,
        help=f"refuse larger working sizes, after resizing (default {DEFAULT_MAX_WORK_PIXELS:,})",
    )
    edit.add_argument("--overwrite", action="store_true", help="replace outputs that exist already")
    edit.add_argument("--skip-existing", action="store_true", help="leave outputs that exist already, edit the rest")
    edit.add_argument(
        "--skip-bad",
        action="store_true",
        help="go on past inputs that cannot be read, list them at the end, and exit 1",
    )
    edit.add_argument(
        "--dtype",
        choices=tuple(DTYPE_NAMES),
        default=None,
        help="float32 (default on CPU), float16 (default on GPU), bfloat16",
    )

    train = commands.add_parser(
        "train",
        help="train an editing model",
        description="Train an editing model from CONFIG.yaml; key=value pairs override its settings.",
    )
    train.add_argument("config", nargs="?", help="YAML file of settings (see configs/)")
    train.add_argument("overrides", nargs="*", metavar="key=value")
    train.add_argument(
        "--help-settings", action="store_true", help="list every setting with its type, default and meaning"
    )
    train.add_argument(
        "--device",
        choices=("auto", "cpu"),
        default="auto",
        help="auto (default: what accelerate picks) or cpu; `accelerate launch` chooses GPUs",
    )

    export = commands.add_parser(
        "export",
        help="write a model as one .safetensors file (CompVis layout)",
        description="Write a model in the single-file layout the original code, AUTOMATIC1111 and ComfyUI read.",
    )
    add_model_options(export, device=False)
    export.add_argument("-o", "--output", required=True, help="the .safetensors file to write")

    info = commands.add_parser(
        "info", help="say what a model is", description="Print what a model is, from its configuration."
    )
    add_model_options(info, device=False)

    dataset = commands.add_parser("dataset", help="look at training data")
    dataset_commands = dataset.add_subparsers(
        dest="dataset_command", required=True, parser_class=Parser, metavar="COMMAND"
    )
    dataset_info = dataset_commands.add_parser("info", help="count, schema and a few rows of a dataset")
    dataset_info.add_argument("path", help="parquet folder/files, a datasets folder or hub id, or the reference format")
    dataset_info.add_argument("--split", default="train")
    dataset_info.add_argument("--rows", type=positive_int, default=3)

    from instruct_pix2pix.settings import SWEEP_IMAGE_GUIDANCE, SWEEP_SETTINGS, SWEEP_STRENGTHS, SWEEP_TEXT_GUIDANCE

    def numbers(values) -> str:
        return ",".join(f"{value:g}" for value in values)

    evaluate = commands.add_parser(
        "evaluate",
        help="measure a model the paper's way: CLIP similarities over a guidance sweep, SDEdit, the paper's plot",
        description="Edit each example of a dataset (default: the small world's held-out edits) at every point "
        "of a guidance sweep, score the edits with CLIP (and against the target), and write the table "
        "(JSONL, CSV), the paper's plot (PNG, SVG) and a contact sheet to OUTPUT. A killed sweep goes on "
        "where it stopped when run again.",
    )
    evaluate.add_argument("-o", "--output", required=True, help="folder for the results")
    add_model_options(evaluate)
    evaluate.add_argument("--data", help="a dataset the trainer reads (default: the small world's held-out edits)")
    evaluate.add_argument("--split", default="test", help="the dataset's split (default: test)")
    evaluate.add_argument("--num-samples", type=positive_int, default=100, help="examples to edit (default 100)")
    evaluate.add_argument("--held-out-wording", action="store_true", help="small world: phrasings training never saw")
    sweep_options = {"--text-guidance": ("text guidance scales", SWEEP_TEXT_GUIDANCE),
                     "--image-guidance": ("image guidance scales", SWEEP_IMAGE_GUIDANCE),
                     "--strength": ("SDEdit strengths", SWEEP_STRENGTHS)}  # fmt: skip
    for flag, (text, values) in sweep_options.items():
        evaluate.add_argument(flag, default=numbers(values), help=f"{text}, with commas (default {numbers(values)})")
    evaluate.add_argument("--baseline-model", help="a text-to-image model for SDEdit (diffusers folder, hub id, file)")
    evaluate.add_argument("--seed", type=int, default=0, help="every example's sampling seed (default 0)")
    EditSettings.add_options(evaluate, SWEEP_SETTINGS, exclude=("guidance_scale", "image_guidance_scale"))
    evaluate.add_argument("--clip", help="CLIP folder or hub id (default: the small world's; the paper's: "
                          f"{REFERENCE_CLIP})")  # fmt: skip
    evaluate.add_argument("--clip-resize", choices=("processor", "bicubic"), default="processor",
                          help="as CLIP's processor does (default), or the reference's: bicubic, no crop")  # fmt: skip
    evaluate.add_argument("--target-clip", help="a CLIP for CLIP-I/CLIP-T against targets (MagicBrush: ViT-B/32)")
    evaluate.add_argument("--dino", help="a DINO or DINOv2 model for DINO similarity to targets (facebook/dino-vits16)")
    evaluate.add_argument("--batch-size", type=positive_int, default=8, help="examples edited together (default 8)")
    evaluate.add_argument("--dtype", choices=tuple(DTYPE_NAMES), help="default: float32 on CPU, float16 on GPUs")
    evaluate.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    evaluate.add_argument("--contact-examples", type=positive_int, default=4, help="examples on the sheet (default 4)")
    evaluate.add_argument("--overwrite", action="store_true", help="start again in a folder that holds a sweep")
    evaluate.add_argument("--no-progress", action="store_true")

    data = commands.add_parser(
        "data",
        help="make training data the paper's way: the text stage (a language model writes edits)",
        description="Make training data: fine-tune a language model on edit triples, write edits for captions.",
    )
    data_commands = data.add_subparsers(dest="data_command", required=True, parser_class=Parser, metavar="COMMAND")
    lm_dataset = data_commands.add_parser(
        "lm-dataset", help="write the 700 human-written triples as fine-tuning data (reference or chat format)"
    )
    lm_dataset.add_argument("-o", "--output", required=True, help="the JSONL file to write")
    lm_dataset.add_argument(
        "--format",
        choices=("reference", "chat"),
        default="reference",
        help="reference: prompt/completion as the paper's GPT-3 fine-tune; chat: messages",
    )
    lm_dataset.add_argument("--triples", help="another triples file (JSONL: input, edit, output)")
    finetune = data_commands.add_parser(
        "finetune-lm", help="fine-tune a causal language model on the triples (resumes a killed run)"
    )
    finetune.add_argument("--model", required=True, help="transformers folder or hub id (GPT-2, Llama, Qwen, ...)")
    finetune.add_argument("-o", "--output", required=True, help="folder for the fine-tuned model")
    finetune.add_argument("--triples", help="triples file (default: the 700 human-written ones)")
    finetune.add_argument("--epochs", type=float, default=1.0, help="passes over the triples (default 1, the paper's)")
    finetune.add_argument("--batch-size", type=positive_int, default=8)
    finetune.add_argument("--learning-rate", type=float, default=5e-5)
    finetune.add_argument("--lora", action="store_true", help="train LoRA adapters (peft), merged at the end")
    finetune.add_argument("--lora-rank", type=positive_int, default=16)
    finetune.add_argument("--seed", type=int, default=0)
    finetune.add_argument("--checkpoint-every", type=positive_int, default=25, help="steps between checkpoints")
    finetune.add_argument("--overwrite", action="store_true", help="replace a finished model in --output")
    finetune.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N, mps")
    write = data_commands.add_parser(
        "write-edits", help="write an instruction and an edited caption for each input caption (resumable)"
    )
    write.add_argument("captions", help="captions: .txt (one a line), .jsonl, .csv, parquet, or a datasets folder/id")
    write.add_argument("-o", "--output", required=True, help="the JSONL file to write (a rerun goes on with it)")
    write.add_argument("--column", help="the captions' column (default: input, caption, TEXT or text)")
    write.add_argument("--url-column", help="a column to keep as url (default: URL or url, if there)")
    write.add_argument("--split", default="train", help="a dataset's split (default: train)")
    write.add_argument("--num-partitions", type=positive_int, default=1, help="split the work into N parts")
    write.add_argument("--partition", type=int, default=0, help="which part this run does (0 to N-1)")
    write.add_argument("--seed", type=int, default=0, help="seeds the partitions and the sampling")
    write.add_argument("--limit", type=positive_int, help="only the first N captions of the partition")
    write.add_argument("--lm", help="a local causal LM (default: the small world's, when no --api-base is given)")
    write.add_argument("--api-base", help="an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    write.add_argument("--api-model", help="the model name on that server")
    write.add_argument("--chat", action="store_true", help="use the chat endpoint (instruction-tuned models)")
    write.add_argument("--few-shot", type=int, default=8, help="chat: examples from the 700 triples (default 8)")
    write.add_argument("--concurrency", type=positive_int, default=None, help="server requests in flight (default 8)")
    write.add_argument("--retries", type=int, default=3, help="samples again after a rejection (default 3)")
    write.add_argument("--moderation", help="'api' (the server's moderation endpoint) or a blocklist file")
    write.add_argument("--batch-size", type=positive_int, default=32, help="captions per batch (default 32)")
    write.add_argument("--temperature", type=float, default=0.7)
    write.add_argument("--top-p", type=float, default=1.0)
    write.add_argument("--frequency-penalty", type=float, default=0.1)
    write.add_argument("--presence-penalty", type=float, default=0.0)
    write.add_argument("--max-tokens", type=positive_int, default=256)
    write.add_argument("--device", default="auto", help="a local LM's device: auto (default), cpu, cuda, mps")
    write.add_argument("--no-progress", action="store_true")

    pairs = data_commands.add_parser(
        "make-pairs", help="draw Prompt-to-Prompt image pairs for edits, filter them by CLIP, write a dataset"
    )
    pairs.add_argument("edits", help="the text stage's JSONL (input or caption, edit, output on each line)")
    pairs.add_argument("-o", "--output", required=True, help="the dataset folder (a rerun goes on with it)")
    pairs.add_argument("--model", help="a text-to-image model: diffusers folder, hub id or .safetensors/.ckpt "
                       "(default: the small world's)")  # fmt: skip
    pairs.add_argument("--config", help="diffusers config folder a single-file checkpoint is read with")
    pairs.add_argument("--clip", help="CLIP folder or hub id for the filter (default: the small world's with the "
                       f"default model, else the paper's {REFERENCE_CLIP})")  # fmt: skip
    pairs.add_argument(
        "--format",
        choices=PAIR_FORMATS,
        default="folder",
        help="folder: the reference's layout (default); parquet: the released dataset's schema",
    )
    pairs.add_argument("--mode", choices=PAIR_MODES, default="self",
                       help="self: share self-attention (the reference's, default); cross: the original "
                       "Prompt-to-Prompt (word swap / refine of cross-attention)")  # fmt: skip
    pairs.add_argument("--steps", type=positive_int, default=PAIR_STEPS, help=f"sampling steps (default {PAIR_STEPS})")
    pairs.add_argument("--scheduler", default="euler_ancestral", help="sampler (default euler_ancestral)")
    pairs.add_argument(
        "--candidates",
        type=positive_int,
        default=PAIR_CANDIDATES,
        help=f"pairs drawn per edit before the filter (default {PAIR_CANDIDATES})",
    )
    pairs.add_argument(
        "--keep",
        type=positive_int,
        default=PAIR_KEEP,
        help=f"the most pairs kept per edit, best by direction (default {PAIR_KEEP})",
    )
    pairs.add_argument(
        "--clip-image-threshold",
        type=float,
        default=PAIR_CLIP_IMAGE,
        help=f"image-image similarity (default {PAIR_CLIP_IMAGE}, the paper's; the reference code: 0.7)",
    )
    pairs.add_argument(
        "--clip-direction-threshold",
        type=float,
        default=PAIR_CLIP_DIRECTION,
        help=f"directional similarity (default {PAIR_CLIP_DIRECTION})",
    )
    pairs.add_argument(
        "--clip-caption-threshold",
        type=float,
        default=PAIR_CLIP_CAPTION,
        help=f"each image's similarity to its caption (default {PAIR_CLIP_CAPTION})",
    )
    pairs.add_argument(
        "--p-range", default=",".join(map(str, PAIR_P_RANGE)), help="p is uniform in this range (default 0.1,0.9)"
    )
    pairs.add_argument(
        "--guidance-range",
        default=",".join(map(str, PAIR_GUIDANCE_RANGE)),
        help="the text guidance scale is uniform in this range (default 7.5,15.0)",
    )
    pairs.add_argument(
        "--self-replace",
        type=float,
        default=PAIR_SELF_REPLACE,
        help=f"cross mode: the share of steps whose self-attention is the first image's (default {PAIR_SELF_REPLACE})",
    )
    pairs.add_argument("--batch-size", type=positive_int, default=8, help="pairs through the UNet at once (default 8)")
    pairs.add_argument("--num-partitions", type=positive_int, default=1, help="split the edits into N parts")
    pairs.add_argument("--partition", type=int, default=0, help="which part this run does (0 to N-1)")
    pairs.add_argument("--seed", type=int, default=0, help="seeds every candidate and the partitions (default 0)")
    pairs.add_argument("--limit", type=positive_int, help="only the first N edits of the partition")
    pairs.add_argument("--device", default="auto", help="auto (default; under accelerate launch, each "
                       "process's GPU), cpu, cuda, cuda:N, mps")  # fmt: skip
    pairs.add_argument("--dtype", choices=tuple(DTYPE_NAMES), help="default: float32 on CPU, float16 on GPUs")
    pairs.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    pairs.add_argument("--overwrite", action="store_true", help="start again in a folder that holds other pairs")
    pairs.add_argument("--no-progress", action="store_true")

    app = commands.add_parser("app", help="serve the editor as a web app (Gradio), with an HTTP API")
    add_model_options(app)
    app.add_argument("--dtype", choices=tuple(DTYPE_NAMES), help="default: float32 on CPU, float16 on GPUs")
    app.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    app.add_argument("--port", type=positive_int, default=7860, help="default 7860")
    app.add_argument("--share", action="store_true", help="also a public gradio.live link")
    app.add_argument("--max-queue", type=positive_int, default=4,
                     help="requests waiting at most; one more is told the app is busy (default 4)")  # fmt: skip
    app.add_argument("--concurrency", type=positive_int, default=1,
                     help="edits at the same time (default 1; keep 1 on a GPU)")  # fmt: skip
    app.add_argument("--max-pixels", type=positive_int, help="the largest input accepted, in pixels")

    world = commands.add_parser(
        "world",
        help="the small world: scenes, datasets, its models, evaluation against ground truth",
        description="The small world: procedural scenes with an exact result for every edit.",
    )
    actions = world.add_subparsers(dest="world_command", required=True, parser_class=Parser, metavar="COMMAND")
    paper = actions.add_parser(
        "paper", help="the whole paper in the small world: text stage, pairs, filter, editors, evaluation, report"
    )
    paper.add_argument("-o", "--output", default="runs/paper", help="work folder (a rerun goes on; default runs/paper)")
    paper.add_argument("--text-to-image", help="the world's text-to-image model (default: the shipped one)")
    paper.add_argument("--captions", type=positive_int, default=1000, help="training captions (default 1000)")
    paper.add_argument("--candidates", type=positive_int, default=8, help="pairs drawn per edit (default 8)")
    paper.add_argument("--steps", type=positive_int, default=20, help="sampling steps of a pair (default 20)")
    paper.add_argument("--keep", type=positive_int, default=4, help="pairs kept per edit (default 4)")
    paper.add_argument("--editor-steps", type=positive_int, default=1000, help="training steps of each editor")
    paper.add_argument("--editor-batch-size", type=positive_int, default=32, help="their batch (default 32)")
    paper.add_argument("--per-kind", type=positive_int, default=20, help="held-out edits of each kind (default 20)")
    paper.add_argument("--compile", action="store_true", help="for the pairs: " + COMPILE_HELP)
    paper.add_argument("--no-progress", action="store_true")
    sample = actions.add_parser("sample", help="write scenes and their edits as PNGs, with a labelled sheet")
    sample.add_argument("-o", "--output", default="world-samples", help="folder to write (default: world-samples)")
    sample.add_argument("--count", type=positive_int, default=2, help="edits of each kind (default: 2)")
    sample.add_argument("--seed", type=int, default=0)
    from instruct_pix2pix.small_world.edits import KINDS
    from instruct_pix2pix.small_world.evaluate import CAPTIONS, PER_KIND
    from instruct_pix2pix.small_world.evaluate import SETTINGS as small_world_settings

    generate = actions.add_parser("generate", help="write a training dataset (parquet or the reference format)")
    generate.add_argument("-o", "--output", required=True, help="folder to write")
    generate.add_argument("--count", type=positive_int, default=40_000, help="number of edits (default: 40000)")
    generate.add_argument(
        "--split", default="train", help="train (the default), or any other name for scenes training never sees"
    )
    generate.add_argument("--format", choices=("parquet", "reference"), default="parquet")
    generate.add_argument(
        "--filler", type=float, default=0.0, help="share of instructions given made-up words, 0 to 1 (default: 0)"
    )
    generate.add_argument(
        "--kinds",
        type=lambda text: tuple(text.split(",")),
        default=KINDS,
        help="edit kinds in turn, comma-separated; a kind named twice comes twice as often (default: each once)",
    )
    demo = actions.add_parser("demo", help="edit a sample scene several ways; one labelled grid with the ground truth")
    demo.add_argument("-o", "--output", default="demo.png", help="PNG to write (default: demo.png)")
    add_model_options(demo)
    demo.add_argument("--seed", type=int, default=0, help="which sample scene (default: 0)")
    EditSettings.add_options(demo, fallback=small_world_settings)  # the model's own settings first
    evaluate = actions.add_parser(
        "evaluate",
        help="edit held-out scenes and score every edit kind against ground truth (a text-to-image model: "
        "draw held-out captions and read the pictures back)",
    )
    evaluate.add_argument("-o", "--output", default="world-evaluation", help="folder for the JSON, table and figure")
    add_model_options(evaluate)
    evaluate.add_argument(
        "--per-kind", type=positive_int, default=PER_KIND, help=f"held-out edits of each kind (default: {PER_KIND})"
    )
    evaluate.add_argument(
        "--captions",
        type=positive_int,
        default=CAPTIONS,
        help=f"a text-to-image model: held-out captions to draw ({CAPTIONS})",
    )
    EditSettings.add_options(evaluate, fallback=small_world_settings)
    recipe = actions.add_parser(
        "train-default",
        help="retrain the shipped default models from nothing (data, CLIP, VAE, text to image, editor)",
        description="Run the recipe of the shipped default model; every stage resumes.",
    )
    recipe.add_argument(
        "--work", default="runs/default", help="where every stage leaves its results (default: runs/default)"
    )
    recipe.add_argument(
        "--edits", type=positive_int, default=None, help="training edits to generate (default: the recipe's)"
    )
    recipe.add_argument(
        "--steps", type=positive_int, default=None, help="the editor's constant-rate steps (default: the config's)"
    )
    recipe.add_argument(
        "--text-to-image-steps", type=positive_int, default=None, help="the text-to-image model's (default: its own)"
    )
    recipe.add_argument(
        "--from-scratch", action="store_true", help="train the editor from scratch, without the text-to-image model"
    )
    recipe.add_argument("--no-package", action="store_true", help="leave the shipped model in the package alone")
    train_lm = actions.add_parser(
        "train-lm", help="train the world's language model (captions, then 700 triples) and check it by the grammar"
    )
    train_lm.add_argument("-o", "--output", default="runs/language", help="work folder (default: runs/language)")
    train_lm.add_argument("--pretrain-steps", type=positive_int, help="steps on the world's internet (default 8000)")
    train_lm.add_argument("--epochs", type=float, help="fine-tuning passes over the 700 triples (default 60)")
    train_lm.add_argument(
        "--rehearsal", type=whole_number(0), help="internet documents learnt beside each fine-tuning step (default 4)"
    )
    train_lm.add_argument("--captions", type=positive_int, default=200, help="held-out captions to check (200)")
    evaluate_lm = actions.add_parser(
        "evaluate-lm", help="write edits for held-out captions with a language model; check them by the grammar"
    )
    evaluate_lm.add_argument("--model", help="a transformers folder (default: the shipped world language model)")
    evaluate_lm.add_argument("--captions", type=positive_int, default=200, help="held-out captions (default 200)")
    evaluate_lm.add_argument("-o", "--output", help="also write the report as JSON here")
    evaluate_lm.add_argument("--device", default="auto")
    pretrain = actions.add_parser("pretrain", help="train the small world's CLIP or VAE (resumes from its checkpoint)")
    pretrain.add_argument("part", choices=("clip", "vae"))
    pretrain.add_argument("-o", "--output", required=True, help="folder for the checkpoint, metrics and model/")
    pretrain.add_argument("--steps", type=positive_int)
    pretrain.add_argument("--batch-size", type=positive_int)
    pretrain.add_argument("--learning-rate", type=float)
    pretrain.add_argument("--seed", type=int, default=0)
    pretrain.add_argument("--image-size", type=positive_int, default=64)
    pretrain.add_argument("--checkpoint-every", type=positive_int, default=50)
    pretrain.add_argument("--eval-examples", type=positive_int)
    pretrain.add_argument("--no-progress", action="store_true")
    parser.epilog = "subcommands:\n" + "\n".join(
        line for line in command_lines(commands) if line.split("  ")[1].count(" ")
    )
    return parser


def command_lines(commands, prefix: str = "") -> list[str]:
    """'  edit            edit images ...' for every command and subcommand, for `ip2p --help`."""
    lines = []
    for choice in commands._choices_actions:
        name = f"{prefix}{choice.dest}"
        lines.append(f"  {name:<22}{choice.help}")
        sub = commands.choices[choice.dest]._subparsers
        if sub is not None:
            nested = next(a for a in sub._group_actions if isinstance(a, argparse._SubParsersAction))
            lines += command_lines(nested, prefix=name + " ")
    return lines


def input_paths(items: list[str]) -> list[Path]:
    from instruct_pix2pix.images import list_images

    paths = []
    for item in items:
        path = Path(item)
        paths += list_images(path) if path.is_dir() else [path]
    return paths


def output_plan(output: str, inputs: list[Path], num_images: int, seed: int) -> list[list[Path]]:
    """Where each input's variants go: one result to OUTPUT itself (.png, .jpg or .webp) or into
    OUTPUT/INPUTNAME.png if it is a folder; several into the folder OUTPUT as INPUTNAME_SEED.png."""
    from instruct_pix2pix.images import check_output_format

    out = Path(output)
    is_folder = out.is_dir() or not out.suffix
    if len(inputs) * num_images == 1:
        if not is_folder:
            check_output_format(out)
        return [[out / f"{inputs[0].stem}.png" if is_folder else out]]
    if not is_folder:
        raise UserError(f"{len(inputs) * num_images} images to write: give a folder as --output, not {out}")
    stems = [path.stem for path in inputs]
    unique = len(set(stems)) == len(stems)  # the same name in two input folders: number them
    return [
        [out / (f"{stem}_{seed + k}.png" if unique else f"{stem}_{i}_{seed + k}.png") for k in range(num_images)]
        for i, stem in enumerate(stems)
    ]


def check_writable(paths: list[Path]) -> None:
    """Each output can be written: not a folder, and its folder exists (or can be made) and is writable."""
    import os

    for folder in dict.fromkeys(path.parent for path in paths):
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        if not existing.is_dir():
            raise UserError(f"cannot write into {folder}: {existing} is a file, not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise UserError(f"cannot write into {folder}: {existing} is not writable; choose another --output")
    for path in paths:
        if path.is_dir():
            raise UserError(f"cannot write {path}: it is a folder; give a file name")


def read_inputs(paths: list[Path], max_pixels: int, skip_bad: bool) -> tuple[dict[int, object], list[str]]:
    """The images by input index, and (with `skip_bad`) the inputs that could not be read, and why."""
    from instruct_pix2pix.images import load_image

    images, bad = {}, []
    for index, path in enumerate(paths):
        try:
            images[index] = load_image(path, max_pixels=max_pixels)
        except UserError as error:
            if not skip_bad:
                hint = " (or pass --skip-bad to edit the other inputs)" if len(paths) > 1 else ""
                raise UserError(f"{error}{hint}") from None
            bad.append(str(error))
    return images, bad


def run_edit(args) -> int:
    import random

    from instruct_pix2pix.images import DEFAULT_MAX_PIXELS, save_image
    from instruct_pix2pix.settings import EditSettings, check_seed

    if len(args.items) < 2:
        raise UserError(
            "give an input image (or folder) and then an instruction, "
            'e.g. ip2p edit photo.jpg "make it snowy" -o out.png'
        )
    # Everything is checked before the model loads (and before torch is even imported).
    *items, instruction = args.items
    paths = input_paths(items)
    overrides = EditSettings.given_in(args)
    EditSettings().replace(**overrides)  # a bad setting is refused now
    seed = random.randrange(2**32 - args.num_images) if args.seed is None else args.seed
    check_seed(seed, args.num_images)
    plan = output_plan(args.output, paths, args.num_images, seed)
    check_writable([path for targets in plan for path in targets])
    check_model_source(args)
    existing = [path for targets in plan for path in targets if path.exists()]
    if existing and not (args.overwrite or args.skip_existing):
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise UserError(f"{existing[0]}{more} exists already; pass --overwrite to replace, or --skip-existing to keep")
    todo = [i for i, targets in enumerate(plan) if args.overwrite or not all(path.exists() for path in targets)]
    images, bad = read_inputs([paths[i] for i in todo], args.max_pixels or DEFAULT_MAX_PIXELS, args.skip_bad)
    todo = [todo[k] for k in images]
    if not todo:
        if not bad:
            print("ip2p: nothing to edit: every output exists already", file=sys.stderr)
        return report_skipped(bad)

    quiet_libraries()
    from tqdm.auto import tqdm

    from instruct_pix2pix.editing import Editor, check_working_size

    editor = Editor.from_pretrained(args.model, device=args.device, dtype=args.dtype, config=args.config)
    settings = editor.resolve(editor.default_settings.replace(**overrides))
    limits = dict(max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS, max_work_pixels=args.max_work_pixels)
    for image in images.values():  # every working size is checked before the first edit
        check_working_size(editor.working_size(image.size, settings), args.max_work_pixels)
    several = len(todo) > 1
    # Each input's results are written as soon as they are made: an interrupted run keeps them, and
    # `--skip-existing` goes on from there.
    for index, image in zip(tqdm(todo, desc="images", unit="image", disable=not several), images.values()):
        result = editor.edit(
            image, instruction, settings, then=args.then, seed=seed, num_images=args.num_images,
            batch_size=args.batch_size, show_progress=not several, **limits,
        )  # fmt: skip
        for edit, path in zip(result.edits, plan[index]):
            save_image(edit.image, path, result.metadata(edit, paths[index]))
            tqdm.write(str(path))
    return report_skipped(bad)


def report_skipped(bad: list[str]) -> int:
    """List the inputs --skip-bad passed over; exit status 1 if there were any."""
    for reason in bad:
        print(f"ip2p: skipped: {reason}", file=sys.stderr)
    return 1 if bad else 0


def check_model_source(args) -> None:
    """--model names something that exists (or looks like a hub id), and --config a folder: checked
    before the heavy imports."""
    from instruct_pix2pix.loading import default_source, resolve_source

    resolve_source(default_source(args.model))
    if getattr(args, "config", None) and not Path(args.config).is_dir():
        raise UserError(f"no config folder {args.config}; give a diffusers folder of configs (and tokenizer)")


def run_info(args) -> None:
    check_model_source(args)
    quiet_libraries()
    from instruct_pix2pix.loading import describe

    for key, value in describe(args.model, config=args.config).items():
        print(f"{key:<20}{value}")


def quiet_libraries() -> None:
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()  # "Loading weights" bars: ours is the one that matters
    transformers.utils.logging.disable_progress_bar()


def run_train(args) -> None:
    from instruct_pix2pix.training import load_config
    from instruct_pix2pix.training.config import settings_help

    if args.help_settings:
        print(settings_help())
        return
    if args.config is None:
        raise UserError("give a config file, e.g. ip2p train configs/tiny.yaml (settings: ip2p train --help-settings)")
    config = load_config(args.config, args.overrides)  # checked before the heavy imports
    quiet_libraries()
    from instruct_pix2pix.training import train

    print(train(config, cpu=args.device == "cpu"))


def run_export(args) -> None:
    output = Path(args.output)
    if output.is_dir():
        raise UserError(f"cannot write {output}: it is a folder; give a file name ending in .safetensors")
    if output.suffix.lower() != ".safetensors":
        raise UserError(
            f"{output}: single-file checkpoints are written as safetensors; use a name ending in .safetensors"
        )
    check_writable([output])
    check_model_source(args)
    quiet_libraries()
    from instruct_pix2pix.loading import load_model, save_single_file

    model = load_model(args.model, config=args.config)
    save_single_file(
        model.unet,
        model.vae,
        model.text_encoder,
        args.output,
        tokenizer=model.tokenizer,
        scheduler_config=model.scheduler_config,
    )
    print(args.output)


def run_dataset(args) -> None:
    quiet_libraries()
    from instruct_pix2pix.data import describe_dataset

    print(describe_dataset(args.path, split=args.split, rows=args.rows))


SHOWN_WARNINGS: set[str] = set()


def show_warning(message, category, filename, lineno, file=None, line=None):
    """Each warning once (a folder of inputs would repeat it for every image), on its own line above
    a live progress bar."""
    from tqdm import tqdm

    if str(message) not in SHOWN_WARNINGS:
        SHOWN_WARNINGS.add(str(message))
        tqdm.write(f"ip2p: warning: {message}", file=sys.stderr)


def run_world(args) -> None:
    if args.world_command == "sample":
        from instruct_pix2pix.small_world.generate import write_samples

        print(write_samples(args.output, count=args.count, seed=args.seed) / "sheet.png")
    elif args.world_command == "generate":
        from instruct_pix2pix.small_world.generate import write_dataset

        settings = {"split": args.split, "format": args.format, "filler": args.filler, "kinds": args.kinds}
        print(write_dataset(args.output, args.count, **settings))
    elif args.world_command == "train-default":
        quiet_libraries()
        from instruct_pix2pix.small_world.recipe import TRAINING_EDITS, run_recipe

        edits = args.edits or TRAINING_EDITS
        print(run_recipe(Path(args.work), edits=edits, steps=args.steps, text_to_image_steps=args.text_to_image_steps,
                         from_scratch=args.from_scratch, package_model=not args.no_package))  # fmt: skip
    elif args.world_command == "paper":
        from instruct_pix2pix.loading.sources import DEFAULT_TEXT_TO_IMAGE

        quiet_libraries()
        from instruct_pix2pix.small_world.paper import format_report, run_paper

        report = run_paper(
            Path(args.output), Path(args.text_to_image or DEFAULT_TEXT_TO_IMAGE), captions=args.captions,
            candidates=args.candidates, steps=args.steps, keep=args.keep, editor_steps=args.editor_steps,
            editor_batch_size=args.editor_batch_size, per_kind=args.per_kind, compile=args.compile,
            progress=not args.no_progress,
        )  # fmt: skip
        print(format_report(report))
    elif args.world_command == "pretrain":
        run_pretrain(args)
    elif args.world_command in ("train-lm", "evaluate-lm"):
        run_world_language(args)
    else:
        check_model_source(args)
        quiet_libraries()
        from instruct_pix2pix.settings import EditSettings

        overrides = EditSettings.given_in(args)  # over the world's settings, then the model's own
        if args.world_command == "evaluate":
            from instruct_pix2pix.small_world.evaluate import evaluate_model

            print(evaluate_model(args.model, Path(args.output), overrides, per_kind=args.per_kind,
                                 captions=args.captions, device=args.device, config=args.config))  # fmt: skip
            return
        from instruct_pix2pix import Editor
        from instruct_pix2pix.images import save_png
        from instruct_pix2pix.small_world.evaluate import demo_metadata, demo_sheet, model_settings

        editor = Editor.from_pretrained(args.model, device=args.device, config=args.config)
        settings = model_settings(editor.model).replace(**overrides)
        sheet, scores = demo_sheet(editor, settings, seed=args.seed)
        save_png(sheet, args.output, demo_metadata(editor, settings, args.seed, args.output))
        print(f"{args.output}: {sum(s.success for s in scores)} of {len(scores)} edits match the ground truth")


def run_data(args) -> None:
    from instruct_pix2pix.data.triples import HUMAN_WRITTEN, read_triples

    triples_file = getattr(args, "triples", None) or HUMAN_WRITTEN
    if args.data_command == "lm-dataset":
        from instruct_pix2pix.data.triples import write_lm_dataset

        check_writable([Path(args.output)])
        print(write_lm_dataset(args.output, read_triples(triples_file), args.format))
    elif args.data_command == "finetune-lm":
        triples = read_triples(triples_file)
        quiet_libraries()
        from instruct_pix2pix.data.language_model import finetune_lm

        record = finetune_lm(
            args.model,
            args.output,
            triples,
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            lora=args.lora,
            lora_rank=args.lora_rank,
            seed=args.seed,
            checkpoint_every=args.checkpoint_every,
            device=args.device,
            overwrite=args.overwrite,
        )
        print(f"{args.output}: {record['steps']} steps, loss {record['loss']:.4f}")
    elif args.data_command == "make-pairs":
        run_make_pairs(args)
    else:
        run_write_edits(args)


def run_make_pairs(args) -> None:
    import os

    from instruct_pix2pix.data.triples import read_triples
    from instruct_pix2pix.loading.sources import DEFAULT_CLIP, DEFAULT_TEXT_TO_IMAGE
    from instruct_pix2pix.settings import REFERENCE_CLIP, check_scheduler, parse_numbers

    def unit_range(text: str, flag: str, low: float, high: float) -> tuple[float, float]:
        values = parse_numbers(text, flag, low=low, high=high)
        if len(values) == 1:
            values = values * 2
        if len(values) != 2 or values[0] > values[1]:
            raise UserError(f"{flag} takes two numbers, the least and the most, e.g. {flag} {low:g},{high:g}")
        return values

    p_range = unit_range(args.p_range, "--p-range", 0.0, 1.0)
    guidance_range = unit_range(args.guidance_range, "--guidance-range", 0.0, 100.0)
    check_scheduler(args.scheduler)
    if not 0 <= args.partition < args.num_partitions:
        raise UserError(f"--partition must be between 0 and {args.num_partitions - 1}, not {args.partition}")
    if not 0.0 <= args.self_replace <= 1.0:
        raise UserError("--self-replace is a share of the steps, from 0 to 1")
    edits = read_triples(args.edits)
    if args.model is None and not (DEFAULT_TEXT_TO_IMAGE / "model_index.json").is_file():
        raise UserError(f"the small world's text-to-image model is not in {DEFAULT_TEXT_TO_IMAGE} yet; "
                        "pass --model (a diffusers folder, hub id or .safetensors/.ckpt file)")  # fmt: skip
    model_source = args.model or DEFAULT_TEXT_TO_IMAGE
    args.model = str(model_source)
    check_model_source(args)
    clip_source = args.clip or (DEFAULT_CLIP if model_source == DEFAULT_TEXT_TO_IMAGE else REFERENCE_CLIP)
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise UserError(f"{output} is a file; give a folder for the image pairs")
    quiet_libraries()
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    from instruct_pix2pix.data.image_pairs import WORK, ClipFilter, PairSettings, check_output, make_pairs, write_seeds
    from instruct_pix2pix.editing import evaluating, pick_device, pick_dtype
    from instruct_pix2pix.loading import TEXT_TO_IMAGE, load_model
    from instruct_pix2pix.metrics import ClipScorer

    # accelerate launch --cpu sets ACCELERATE_USE_CPU, which Accelerator reads and PartialState does not.
    state = PartialState(cpu=args.device == "cpu" or parse_flag_from_env("ACCELERATE_USE_CPU"))
    if args.overwrite and state.num_processes > 1:
        raise UserError("--overwrite is for one process; remove the folder first, then launch the processes")
    device = state.device if args.device == "auto" and state.num_processes > 1 else pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    settings = PairSettings(mode=args.mode, steps=args.steps, candidates=args.candidates, p_range=p_range,
                            guidance_range=guidance_range, n_self_replace=args.self_replace,
                            scheduler=args.scheduler)  # fmt: skip
    clip_filter = ClipFilter(args.clip_image_threshold, args.clip_direction_threshold, args.clip_caption_threshold,
                             args.keep)  # fmt: skip
    record = {"model": str(model_source), "clip": str(clip_source), "dtype": str(dtype).removeprefix("torch."),
              "edits": os.path.abspath(args.edits)}  # fmt: skip
    check_output(output, record, settings, clip_filter, args.seed, args.num_partitions, args.format, args.overwrite)
    model = load_model(model_source, kind=TEXT_TO_IMAGE, dtype=dtype, config=args.config)
    scorer = ClipScorer.from_pretrained(clip_source, device=device)
    for part in (model.unet, model.vae, model.text_encoder):
        part.to(device)
    if args.compile:
        model = model.compiled()
    with evaluating(model.unet, model.vae, model.text_encoder):
        stats = make_pairs(
            edits, output, model, scorer, settings=settings, clip_filter=clip_filter, record=record, seed=args.seed,
            num_partitions=args.num_partitions, partition_index=args.partition, format=args.format,
            batch_size=args.batch_size, device=device, limit=args.limit, overwrite=args.overwrite,
            progress=not args.no_progress and state.is_local_main_process, process_index=state.process_index,
            num_processes=state.num_processes,
        )  # fmt: skip
    state.wait_for_everyone()
    if state.num_processes > 1 and state.is_main_process:  # every process's folders are in now
        write_seeds(output / WORK if args.format == "parquet" else output)
    print(f"{stats['output']}: {stats['kept']} pairs kept for {stats['edits']} edits "
          f"({stats['written']} edits drawn now, {stats['done_before']} done before)")  # fmt: skip


def run_write_edits(args) -> None:
    from instruct_pix2pix.data.captions import partition, read_captions
    from instruct_pix2pix.data.edit_text import Blocklist, side_files, write_edits
    from instruct_pix2pix.data.language_model import Sampling

    if args.api_base and args.lm:
        raise UserError("give --lm (a local model) or --api-base (a server), not both")
    if args.api_base and not args.api_model:
        raise UserError("--api-base needs --api-model, the model's name on that server")
    if (args.chat or args.concurrency is not None) and not args.api_base:
        raise UserError("--chat and --concurrency are for a server (--api-base); a local model is batched instead")
    if args.retries < 0 or args.few_shot < 0:
        raise UserError("--retries and --few-shot must be 0 or more")
    sampling = Sampling(
        temperature=args.temperature,
        top_p=args.top_p,
        frequency_penalty=args.frequency_penalty,
        presence_penalty=args.presence_penalty,
        max_tokens=args.max_tokens,
    )
    output = Path(args.output)
    check_writable([output, *side_files(output)])
    captions = read_captions(args.captions, column=args.column, url_column=args.url_column, split=args.split)
    captions = partition(captions, args.num_partitions, args.partition, args.seed)[: args.limit]
    if args.moderation == "api" and not args.api_base:
        raise UserError("--moderation api needs a server (--api-base); give a blocklist file for a local model")
    moderation = Blocklist(args.moderation) if args.moderation not in (None, "api") else None
    quiet_libraries()
    if args.api_base:
        from instruct_pix2pix.data.edit_text import OpenAIServer

        backend = OpenAIServer(
            args.api_base,
            args.api_model,
            sampling,
            chat=args.chat,
            few_shot=args.few_shot,
            concurrency=args.concurrency or 8,
            seed=args.seed,
        )
    else:
        from instruct_pix2pix.data.language_model import LocalLM
        from instruct_pix2pix.small_world.language import DEFAULT_LANGUAGE_MODEL

        backend = LocalLM(args.lm or DEFAULT_LANGUAGE_MODEL, sampling, device=args.device, seed=args.seed)
    if args.moderation == "api":
        moderation = backend  # the server's moderation endpoint
    stats = write_edits(
        captions,
        output,
        backend,
        retries=args.retries,
        batch_size=args.batch_size,
        moderation=moderation,
        progress=not args.no_progress,
    )
    reasons = ", ".join(f"{reason} {n}" for reason, n in stats["rejections"].items()) or "none"
    print(
        f"{output}: {stats['kept']} of {stats['captions']} captions kept, {stats['skipped']} skipped; "
        f"rejected samples: {reasons}"
    )


def run_world_language(args) -> None:
    import json

    quiet_libraries()
    from instruct_pix2pix.atomic import write_json
    from instruct_pix2pix.small_world import language

    if args.world_command == "train-lm":
        pretrain = {"steps": args.pretrain_steps} if args.pretrain_steps else {}
        finetune = {"epochs": args.epochs} if args.epochs else {}
        if args.rehearsal is not None:
            finetune["rehearsal"] = args.rehearsal
        report = language.train_language_model(
            args.output, pretrain=pretrain, finetune=finetune, evaluate=args.captions
        )["evaluation"]
    else:
        model = Path(args.model) if args.model else language.DEFAULT_LANGUAGE_MODEL
        if not (model / "config.json").exists():
            raise UserError(f"no language model in {model}; give a transformers folder (ip2p world train-lm makes one)")
        report = language.evaluate_language_model(model, count=args.captions, device=args.device)
        if args.output:
            write_json(args.output, report)
    print(json.dumps({k: v for k, v in report.items() if k != "examples"}, indent=2))


def run_pretrain(args) -> None:
    import json

    quiet_libraries()
    from instruct_pix2pix.small_world import pretrain

    chosen = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "eval_examples": args.eval_examples,
    }
    settings = {**pretrain.DEFAULTS[args.part], **{k: v for k, v in chosen.items() if v is not None}}
    train = pretrain.train_clip if args.part == "clip" else pretrain.train_vae
    metrics = train(
        args.output,
        seed=args.seed,
        image_size=args.image_size,
        checkpoint_every=args.checkpoint_every,
        progress=not args.no_progress,
        **settings,
    )
    print(json.dumps(metrics, indent=2))


def run_evaluate(args) -> None:
    from instruct_pix2pix.settings import parse_numbers

    sweep = {
        "text_guidance": parse_numbers(args.text_guidance, "--text-guidance"),
        "image_guidance": parse_numbers(args.image_guidance, "--image-guidance"),
        "strengths": parse_numbers(args.strength, "--strength", low=0.0, high=1.0),
    }
    from instruct_pix2pix.settings import EditSettings

    settings = EditSettings.from_args(args)
    check_model_source(args)
    quiet_libraries()
    from instruct_pix2pix.evaluation import run_evaluation

    print(run_evaluation(
        args.output, model=args.model, config=args.config, data=args.data, split=args.split,
        num_samples=args.num_samples, held_out_wording=args.held_out_wording, settings=settings, seed=args.seed,
        baseline_model=args.baseline_model, clip=args.clip, clip_resize=args.clip_resize, target_clip=args.target_clip,
        dino=args.dino, batch_size=args.batch_size, device=args.device, dtype=args.dtype, compile=args.compile,
        contact=args.contact_examples, overwrite=args.overwrite, progress=not args.no_progress,
        command=["ip2p", *args.argv],
        **sweep,
    ))  # fmt: skip


def run_app(args) -> None:
    from instruct_pix2pix.images import DEFAULT_MAX_PIXELS

    check_model_source(args)
    quiet_libraries()
    from instruct_pix2pix.app import launch
    from instruct_pix2pix.editing import Editor

    editor = Editor.from_pretrained(args.model, device=args.device, dtype=args.dtype, config=args.config)
    print(f"serving {editor.model.source} on http://{args.host}:{args.port} (Ctrl-C stops)", flush=True)
    launch(editor, host=args.host, port=args.port, share=args.share, max_queue=args.max_queue,
           concurrency=args.concurrency, max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS)  # fmt: skip


COMMANDS = {
    "app": run_app,
    "evaluate": run_evaluate,
    "world": run_world,
    "data": run_data,
    "edit": run_edit,
    "info": run_info,
    "train": run_train,
    "export": run_export,
    "dataset": run_dataset,
}


def main(argv: list[str] | None = None) -> int:
    SHOWN_WARNINGS.clear()
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        args = build_parser().parse_args(argv)
        args.argv = argv  # the words of the command, for the figures that record how they were made
        with warnings.catch_warnings():
            # Our own warnings reach the user as one line each; the libraries' deprecation notes do not.
            warnings.simplefilter("ignore")
            warnings.simplefilter("always", EditWarning)
            warnings.showwarning = show_warning
            code = COMMANDS[args.command](args) or 0
    except UserError as error:
        print(f"ip2p: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("ip2p: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
