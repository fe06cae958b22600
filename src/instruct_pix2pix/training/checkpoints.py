"""Training checkpoints: write them atomically, find the one to resume from, keep the newest few.

A checkpoint is accelerate's state (model, optimizer, scheduler, EMA, random states) plus ours
(`trainer_state_RANK.json`: epoch, position in the data order, step) in `checkpoint-STEP/`.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

from accelerate import Accelerator

from instruct_pix2pix.atomic import replace_folder, write_text
from instruct_pix2pix.errors import EditWarning, UserError

CHECKPOINT_PREFIX = "checkpoint-"
RUN_FILES = ("config.json", "metrics.jsonl", "model", "validation")  # besides the checkpoints


def checkpoints(output_dir: Path) -> list[Path]:
    """The checkpoint folders in `output_dir`, oldest first."""
    found = [
        p for p in output_dir.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and p.name[len(CHECKPOINT_PREFIX) :].isdigit()
    ]
    return sorted(found, key=checkpoint_step)


def checkpoint_step(path: Path) -> int:
    """The step a checkpoint folder was written at."""
    return int(path.name[len(CHECKPOINT_PREFIX) :])


def latest_step(output_dir: Path) -> int:
    """The step of the newest checkpoint in `output_dir` (0 before the first)."""
    found = checkpoints(output_dir)
    return checkpoint_step(found[-1]) if found else 0


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


def earlier_run(output_dir: Path) -> list[Path]:
    """What another run left in `output_dir`: its checkpoints, metrics, model, grids and config."""
    return [*checkpoints(output_dir), *(output_dir / name for name in RUN_FILES if (output_dir / name).exists())]


def check_output_dir(output_dir: Path, *, resuming: bool, overwrite: bool) -> None:
    """A run never mixes its files with another's: an output_dir that holds one is refused unless this
    run resumes it, or it is cleared first with overwrite_output_dir=true (the diffusers scripts' name)."""
    found = earlier_run(output_dir)
    if not found or resuming:
        return
    if not overwrite:
        listed = ", ".join(path.name for path in found[:4]) + (", ..." if len(found) > 4 else "")
        raise UserError(
            f"output_dir {output_dir} holds another run ({listed}); resume it with resume_from_checkpoint=latest, "
            "give another output_dir, or replace it with overwrite_output_dir=true"
        )
    for path in found:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def find_checkpoint(resume_from_checkpoint: str | None, output_dir: Path) -> Path | None:
    """The checkpoint `resume_from_checkpoint` names: a folder, or "latest" (None if there is none yet)."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        found = checkpoints(output_dir)
        if not found:
            warnings.warn(f"no checkpoint in {output_dir} yet: training starts from step 0", EditWarning, stacklevel=2)
            return None
        return found[-1]
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
