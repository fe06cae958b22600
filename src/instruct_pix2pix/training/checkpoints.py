"""Training checkpoints: write them atomically, find the one to resume from, keep the newest few.

A checkpoint is accelerate's state (model, optimizer, scheduler, EMA, random states) plus ours
(`trainer_state_RANK.json`: epoch, position in the data order, step) in `checkpoint-STEP/`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from accelerate import Accelerator

from instruct_pix2pix.atomic import replace_folder, write_text
from instruct_pix2pix.errors import UserError

CHECKPOINT_PREFIX = "checkpoint-"


def checkpoints(output_dir: Path) -> list[Path]:
    """The checkpoint folders in `output_dir`, oldest first."""
    found = [
        p for p in output_dir.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and p.name[len(CHECKPOINT_PREFIX) :].isdigit()
    ]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def save_checkpoint(accelerator: Accelerator, output_dir: Path, step: int, state: dict, limit: int | None) -> None:
    """accelerate's state plus ours, written under a temporary name and renamed: a kill never leaves half a
    checkpoint. Every process writes into the same folder, so its temporary name is fixed (by step); one
    output folder belongs to one run."""
    final = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    temporary = output_dir / f".{final.name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    (temporary / f"trainer_state_{accelerator.process_index}.json").write_text(json.dumps({**state, "step": step}))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        replace_folder(temporary, final)
        for old in checkpoints(output_dir)[:-limit] if limit else []:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def load_trainer_state(checkpoint: Path, rank: int) -> dict:
    return json.loads((checkpoint / f"trainer_state_{rank}.json").read_text())


def find_checkpoint(resume_from_checkpoint: str | None, output_dir: Path) -> Path | None:
    """The checkpoint `resume_from_checkpoint` names: a folder, or "latest" (None if there is none yet)."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        found = checkpoints(output_dir)
        return found[-1] if found else None  # nothing yet: start from the beginning
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        raise UserError(f"no checkpoint folder {path} (use resume_from_checkpoint=latest to take the newest)")
    return path


def keep_metrics_up_to(path: Path, step: int) -> None:
    """Drop the metrics lines a killed run wrote after its last checkpoint."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    write_text(path, "".join(line + "\n" for line in lines))
