"""What the UNet trials share: their data and scratch folder, and one resumable training segment."""

from pathlib import Path

from instruct_pix2pix.loading import DEFAULT_MODEL
from instruct_pix2pix.small_world.generate import write_dataset
from instruct_pix2pix.small_world.recipe import DEFAULT_CLIP, assemble_scratch
from instruct_pix2pix.training import load_config, train

DATA, SCRATCH = Path("runs/trials/data-10k"), Path("runs/trials/scratch-shipped")


def trial_inputs() -> tuple[Path, Path]:
    """10,000 training edits and a from_scratch folder over the shipped VAE and CLIP, made once."""
    Path("runs/trials").mkdir(parents=True, exist_ok=True)
    if not (DATA / "train-triples.jsonl").exists():
        write_dataset(DATA, 10_000)
    if not SCRATCH.exists():
        assemble_scratch(DEFAULT_CLIP, DEFAULT_MODEL / "vae", SCRATCH)
    return DATA, SCRATCH


def train_segment(config: str, start: list[str], work: Path, steps: int, extra: list[str]) -> None:
    """Train `work` on to `steps` at a constant learning rate after warmup, so that each segment
    continues the last exactly (resumed from its latest checkpoint)."""
    overrides = [
        *start,
        f"train_data={DATA}",
        f"output_dir={work}",
        "resume_from_checkpoint=latest",
        f"max_train_steps={steps}",
        "lr_scheduler=constant_with_warmup",
        "validation_steps=0",
        "checkpointing_steps=250",
        *extra,
    ]
    train(load_config(config, overrides), show_progress=False)
