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


def build_parser() -> argparse.ArgumentParser:
    from instruct_pix2pix.settings import DTYPE_NAMES, EditSettings, positive_int

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
    edit.add_argument("-o", "--output", required=True, help="output .png (one result) or folder (several)")
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

    world = commands.add_parser(
        "world",
        help="the small world: scenes, datasets, its models, evaluation against ground truth",
        description="The small world: procedural scenes with an exact result for every edit.",
    )
    actions = world.add_subparsers(dest="world_command", required=True, parser_class=Parser, metavar="COMMAND")
    sample = actions.add_parser("sample", help="write scenes and their edits as PNGs, with a labelled sheet")
    sample.add_argument("-o", "--output", default="world-samples", help="folder to write (default: world-samples)")
    sample.add_argument("--count", type=positive_int, default=2, help="edits of each kind (default: 2)")
    sample.add_argument("--seed", type=int, default=0)
    generate = actions.add_parser("generate", help="write a training dataset (parquet or the reference format)")
    generate.add_argument("-o", "--output", required=True, help="folder to write")
    generate.add_argument("--count", type=positive_int, default=40_000, help="number of edits (default: 40000)")
    generate.add_argument(
        "--split", default="train", help="train (the default), or any other name for scenes training never sees"
    )
    generate.add_argument("--format", choices=("parquet", "reference"), default="parquet")
    from instruct_pix2pix.small_world.evaluate import SETTINGS as small_world_settings

    demo = actions.add_parser("demo", help="edit a sample scene several ways; one labelled grid with the ground truth")
    demo.add_argument("-o", "--output", default="demo.png", help="PNG to write (default: demo.png)")
    add_model_options(demo)
    demo.add_argument("--seed", type=int, default=0, help="which sample scene (default: 0)")
    EditSettings.add_options(demo, small_world_settings)
    evaluate = actions.add_parser(
        "evaluate", help="edit held-out scenes and score every edit kind against ground truth"
    )
    evaluate.add_argument("-o", "--output", default="world-evaluation", help="folder for the JSON, table and figure")
    add_model_options(evaluate)
    evaluate.add_argument("--per-kind", type=positive_int, default=40, help="held-out edits of each kind (default: 40)")
    EditSettings.add_options(evaluate, small_world_settings)
    recipe = actions.add_parser(
        "train-default",
        help="retrain the shipped default model from nothing (data, CLIP, VAE, UNet)",
        description="Run the recipe of the shipped default model; every stage resumes.",
    )
    recipe.add_argument(
        "--work", default="runs/default", help="where every stage leaves its results (default: runs/default)"
    )
    recipe.add_argument(
        "--edits", type=positive_int, default=None, help="training edits to generate (default: the recipe's)"
    )
    recipe.add_argument("--steps", type=positive_int, default=None, help="UNet training steps (default: the config's)")
    recipe.add_argument("--no-package", action="store_true", help="leave the shipped model in the package alone")
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


def check_output(output: str, count: int) -> None:
    """One result goes to OUTPUT itself, a .png; several go into OUTPUT, a folder."""
    out = Path(output)
    if count == 1 and out.suffix and out.suffix.lower() != ".png":
        raise UserError(f"output {out} must be a .png file (PNG keeps the settings that made the edit)")
    if count > 1 and out.suffix:
        raise UserError(f"{count} images to write: give a folder as --output, not {out}")


def output_paths(output: str, result, inputs: list[Path]) -> list[Path]:
    """OUTPUT itself for one result (or OUTPUT/INPUTNAME.png if it is a folder); else OUTPUT/INPUTNAME_SEED.png."""
    out = Path(output)
    if len(result.edits) == 1:
        return [out if out.suffix else out / f"{inputs[0].stem}.png"]
    names = [f"{inputs[e.input_index].stem}_{e.seed}.png" for e in result.edits]
    if len(set(names)) < len(names):  # several instructions on one input with the same seed
        names = [f"{inputs[e.input_index].stem}_{k}_{e.seed}.png" for k, e in enumerate(result.edits)]
    return [out / name for name in names]


def run_edit(args) -> None:
    from instruct_pix2pix.editing import Editor
    from instruct_pix2pix.images import DEFAULT_MAX_PIXELS, load_image, save_png
    from instruct_pix2pix.settings import EditSettings

    if len(args.items) < 2:
        raise UserError(
            "give an input image (or folder) and then an instruction, "
            'e.g. ip2p edit photo.jpg "make it snowy" -o out.png'
        )
    *items, instruction = args.items
    paths = input_paths(items)
    check_output(args.output, len(paths) * args.num_images)
    settings = EditSettings.from_args(args)
    max_pixels = args.max_pixels or DEFAULT_MAX_PIXELS
    images = [load_image(path, max_pixels=max_pixels) for path in paths]  # all bad input fails before the model loads
    editor = Editor.from_pretrained(args.model, device=args.device, dtype=args.dtype, config=args.config)
    result = editor.edit(
        images,
        instruction,
        settings,
        then=args.then,
        seed=args.seed,
        num_images=args.num_images,
        max_pixels=max_pixels,
        batch_size=args.batch_size,
    )
    for edit, path in zip(result.edits, output_paths(args.output, result, paths)):
        save_png(edit.image, path, result.metadata(edit, paths[edit.input_index]))
        print(path)


def run_info(args) -> None:
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
    from instruct_pix2pix.training import load_config, train
    from instruct_pix2pix.training.config import settings_help

    if args.help_settings:
        print(settings_help())
        return
    if args.config is None:
        raise UserError("give a config file, e.g. ip2p train configs/tiny.yaml (settings: ip2p train --help-settings)")
    print(train(load_config(args.config, args.overrides), cpu=args.device == "cpu"))


def run_export(args) -> None:
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
    from instruct_pix2pix.data import describe_dataset

    print(describe_dataset(args.path, split=args.split, rows=args.rows))


def show_warning(message, category, filename, lineno, file=None, line=None):
    from tqdm import tqdm

    tqdm.write(f"ip2p: warning: {message}", file=sys.stderr)  # on its own line, above a live progress bar


def run_world(args) -> None:
    if args.world_command == "sample":
        from instruct_pix2pix.small_world.generate import write_samples

        print(write_samples(args.output, count=args.count, seed=args.seed) / "sheet.png")
    elif args.world_command == "generate":
        from instruct_pix2pix.small_world.generate import write_dataset

        print(write_dataset(args.output, args.count, split=args.split, format=args.format))
    elif args.world_command == "train-default":
        from instruct_pix2pix.small_world.recipe import TRAINING_EDITS, run_recipe

        edits = args.edits or TRAINING_EDITS
        print(run_recipe(Path(args.work), edits=edits, steps=args.steps, package_model=not args.no_package))
    elif args.world_command == "pretrain":
        run_pretrain(args)
    else:
        from instruct_pix2pix import Editor
        from instruct_pix2pix.settings import EditSettings

        editor = Editor.from_pretrained(args.model, device=args.device, config=args.config)
        settings = EditSettings.from_args(args)
        if args.world_command == "demo":
            from instruct_pix2pix.images import save_png
            from instruct_pix2pix.small_world.evaluate import demo_sheet

            sheet, scores = demo_sheet(editor, settings, seed=args.seed)
            save_png(sheet, args.output)
            print(f"{args.output}: {sum(s.success for s in scores)} of {len(scores)} edits match the ground truth")
        else:
            from instruct_pix2pix.small_world.evaluate import run_evaluation

            print(run_evaluation(editor, Path(args.output), settings, per_kind=args.per_kind))


def run_pretrain(args) -> None:
    import json

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


COMMANDS = {
    "world": run_world,
    "edit": run_edit,
    "info": run_info,
    "train": run_train,
    "export": run_export,
    "dataset": run_dataset,
}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        with warnings.catch_warnings():
            # Our own warnings reach the user as one line each; the libraries' deprecation notes do not.
            warnings.simplefilter("ignore")
            warnings.simplefilter("always", EditWarning)
            warnings.showwarning = show_warning
            quiet_libraries()
            COMMANDS[args.command](args)
    except UserError as error:
        print(f"ip2p: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("ip2p: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
