"""What the UNet trials share: their data and scratch folder, and one resumable training segment.

Both trial scripts take, before the training overrides, the world and model settings of a trial:
`small=R` (the small objects' radius as a share of the side, in the data and the evaluation alike),
`edits=N` (distinct training edits, default 10,000), `filler=S` (the share of
instructions with made-up words, `edits.with_filler`), `kinds=K+K+...` (the edit kinds in turn, a
kind named twice drawn twice as often; default every kind once), `vae=FOLDER` (a trained VAE, default the
shipped one) and `unet.KEY=VALUE` (the UNet's config, as `unet.norm_num_groups=8`). Each
combination gets its own data and scratch folders, made once.
"""

import json
import sys
from pathlib import Path

from instruct_pix2pix.loading import DEFAULT_MODEL
from instruct_pix2pix.small_world import scenes
from instruct_pix2pix.small_world.edits import KINDS
from instruct_pix2pix.small_world.generate import write_dataset
from instruct_pix2pix.small_world.reader import _masks
from instruct_pix2pix.small_world.recipe import DEFAULT_CLIP, assemble_scratch
from instruct_pix2pix.training import load_config, train

TRIALS = Path("runs/trials")


def use_small_radius(radius: float) -> None:
    """Draw (and read) the world's small objects at `radius` of the side in this process."""
    scenes.RADIUS["small"] = radius
    _masks.cache_clear()  # the reader's outlines were drawn at the old radius


def trial_settings(arguments: list[str], keys: set[str]) -> dict[str, str]:
    """A trial script's KEY=VALUE arguments (one of `keys` each) as a dict, `small=R` applied at once;
    anything else ends the script with one line."""
    wrong = [argument for argument in arguments if "=" not in argument or argument.partition("=")[0] not in keys]
    if wrong:
        sys.exit(f"not a KEY=VALUE setting of this trial: {', '.join(wrong)} (the keys: the script's docstring)")
    given = dict(argument.partition("=")[::2] for argument in arguments)
    if "small" in given:
        use_small_radius(float(given["small"]))
    return given


def trial_inputs(arguments: list[str]) -> tuple[Path, Path, list[str]]:
    """Data (`edits=N` training edits, 10,000 by default) and a from_scratch folder over the VAE and the
    shipped CLIP, for the trial settings among `arguments`; returns them and the arguments left
    (training overrides)."""
    mine = [a for a in arguments if a.startswith(("small=", "edits=", "filler=", "kinds=", "vae=", "unet."))]
    settings = trial_settings(mine, {a.partition("=")[0] for a in mine})
    rest = [a for a in arguments if a not in mine]
    radius = scenes.RADIUS["small"]
    vae = Path(settings.get("vae", DEFAULT_MODEL / "vae"))
    unet = {k.removeprefix("unet."): json.loads(v) for k, v in sorted(settings.items()) if k.startswith("unet.")}
    edits, filler = int(settings.get("edits", 10_000)), float(settings.get("filler", 0))
    data = TRIALS / (f"data-{edits // 1000}k" + ("" if radius == 0.085 else f"-r{radius}"))  # no -r: the first trials'
    kinds = tuple(settings["kinds"].split("+")) if "kinds" in settings else KINDS
    weighted = "" if kinds == KINDS else "-" + "+".join(kinds)
    data = data.with_name(data.name + (f"-f{filler}" if filler else "") + weighted)
    name = "shipped" if "vae" not in settings else vae.parent.name if vae.name == "model" else vae.name
    scratch = TRIALS / ("scratch-" + name + "".join(f"-{k}{v}" for k, v in unet.items()))
    TRIALS.mkdir(parents=True, exist_ok=True)
    if not (data / "train-triples.jsonl").exists():
        write_dataset(data, edits, filler=filler, kinds=kinds)
    if not scratch.exists():
        assemble_scratch(DEFAULT_CLIP, vae, scratch)
        config_file = scratch / "unet" / "config.json"
        config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **unet}, indent=2))
    print(f"trial inputs: data {data}, scratch {scratch}, overrides {rest}", file=sys.stderr)
    return data, scratch, rest


def train_segment(config: str, start: list[str], data: Path, work: Path, steps: int, extra: list[str]) -> None:
    """Train `work` on to `steps` at a constant learning rate after warmup, so that each segment
    continues the last exactly (resumed from its latest checkpoint)."""
    overrides = [
        *start,
        f"train_data={data}",
        f"output_dir={work}",
        "resume_from_checkpoint=latest",
        f"max_train_steps={steps}",
        "lr_scheduler=constant_with_warmup",
        "validation_steps=0",
        "checkpointing_steps=250",
        *extra,
    ]
    train(load_config(config, overrides), show_progress=False)
