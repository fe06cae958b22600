"""The image stage: Prompt-to-Prompt image pairs for the text stage's edits, filtered by CLIP.

    ip2p data make-pairs edits.jsonl --model T2I -o pairs/       (= make_pairs(...))

For every edit (input caption, instruction, edited caption) it draws `candidates` image pairs with
`prompt_to_prompt.sample_pairs` (each with its own seed, p and guidance scale, drawn from that
seed), scores them with the paper's four CLIP similarities (`metrics.ClipScorer`), keeps those with
image similarity >= 0.75, directional similarity >= 0.2 and both caption similarities >= 0.2, and
writes the best `keep` by directional similarity. Candidates of several edits share a UNet batch.

The output is the reference's layout, which `ip2p train` and `ip2p dataset info` read:

    DIR/NNNNNNN/prompt.json       {input, edit, output}; NNNNNNN is the edit's line in EDITS.jsonl, from 0
    DIR/NNNNNNN/{seed}_0.jpg      the kept pairs' first and second images (JPEG quality 100 as the
    DIR/NNNNNNN/{seed}_1.jpg      reference saves them, and no chroma subsampling, which blurs colour edges)
    DIR/NNNNNNN/metadata.jsonl    one line per kept pair, best first: seed, p2p_threshold, cfg_scale,
                                  clip_sim_0, clip_sim_1, clip_sim_dir, clip_sim_image (the reference's keys)
    DIR/NNNNNNN/candidates.jsonl  the same for every candidate, with `kept`: the filter's whole record
    DIR/seeds.json                [[NNNNNNN, [seed, ...]], ...] for the folders with a kept pair
    DIR/make-pairs.json           the settings; a rerun with others is refused

Each edit's folder appears whole (`atomic_folder`) once its candidates are scored, so a kill loses
only the edits in flight, and a rerun goes on with the edits that have no folder: no duplicate, no
gap. With `format="parquet"` the folders are kept in `DIR/.pairs` (hidden from the dataset reader)
and each partition ends as `DIR/train-KKKKK-of-NNNNN.parquet` in the released dataset's schema.

Any kept pair can be drawn again alone: `sample_pairs(model, [Candidate(input, output, seed, p,
cfg)])` with the seed, p and guidance of its metadata line and the run's steps and mode.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from instruct_pix2pix.atomic import atomic_folder, check_job_folder, write_json
from instruct_pix2pix.data.captions import partition
from instruct_pix2pix.data.prompt_to_prompt import Candidate, draw_settings, sample_pairs
from instruct_pix2pix.data.triples import Triple
from instruct_pix2pix.errors import UserError
from instruct_pix2pix.settings import (
    PAIR_CANDIDATES,
    PAIR_CLIP_CAPTION,
    PAIR_CLIP_DIRECTION,
    PAIR_CLIP_IMAGE,
    PAIR_FORMATS,
    PAIR_GUIDANCE_RANGE,
    PAIR_KEEP,
    PAIR_P_RANGE,
    PAIR_SELF_REPLACE,
    PAIR_STEPS,
)

MANIFEST = "make-pairs.json"
WORK = ".pairs"  # where the folders go when the result is parquet
FORMATS = PAIR_FORMATS
JPEG = {"quality": 100, "subsampling": 0}  # 4:4:4
# Our similarity names (metrics.similarities) and the reference's metadata keys.
REFERENCE_KEYS = {
    "clip_input_caption": "clip_sim_0",
    "clip_output_caption": "clip_sim_1",
    "clip_direction": "clip_sim_dir",
    "clip_image": "clip_sim_image",
}


@dataclass(frozen=True)
class ClipFilter:
    """The paper's filter: thresholds on the four similarities, then the best `keep` by direction."""

    image: float = PAIR_CLIP_IMAGE
    direction: float = PAIR_CLIP_DIRECTION
    caption: float = PAIR_CLIP_CAPTION
    keep: int = PAIR_KEEP

    def passes(self, scores: dict) -> bool:
        return (
            scores["clip_image"] >= self.image
            and scores["clip_direction"] >= self.direction
            and scores["clip_input_caption"] >= self.caption
            and scores["clip_output_caption"] >= self.caption
        )

    def choose(self, scores: Sequence[dict]) -> list[int]:
        """Indices of the kept candidates, best first (ties: the earlier candidate)."""
        passing = [i for i, s in enumerate(scores) if self.passes(s)]
        return sorted(passing, key=lambda i: (-scores[i]["clip_direction"], i))[: self.keep]


@dataclass(frozen=True)
class PairSettings:
    """What the pairs depend on (with the model, the CLIP and the seed): stored in the manifest."""

    mode: str = "self"
    steps: int = PAIR_STEPS
    candidates: int = PAIR_CANDIDATES
    p_range: tuple[float, float] = PAIR_P_RANGE
    guidance_range: tuple[float, float] = PAIR_GUIDANCE_RANGE
    n_self_replace: float = PAIR_SELF_REPLACE
    scheduler: str = "euler_ancestral"


def candidate_seeds(seed: int, index: int, count: int) -> list[int]:
    """`count` distinct 32-bit seeds for edit `index`: the same on every run and in every partition."""
    rng = np.random.default_rng([seed, index])
    seeds: list[int] = []
    while len(seeds) < count:
        value = int(rng.integers(1 << 32))
        if value not in seeds:
            seeds.append(value)
    return seeds


def candidates_for(edit: Triple, index: int, settings: PairSettings, seed: int) -> list[Candidate]:
    found = []
    for candidate_seed in candidate_seeds(seed, index, settings.candidates):
        p, guidance = draw_settings(candidate_seed, settings.p_range, settings.guidance_range)
        found.append(Candidate(edit["input"], edit["output"], candidate_seed, p, guidance))
    return found


def folder_name(index: int) -> str:
    return f"{index:07d}"


def share(edits: Sequence[Triple], num_partitions: int = 1, part: int = 0, seed: int = 0) -> list[tuple[int, Triple]]:
    """The (line index, edit) pairs of partition `part` of `num_partitions` (disjoint; together all)."""
    return partition(list(enumerate(edits)), num_partitions, part, seed)


def metadata_line(candidate: Candidate, scores: dict) -> dict:
    return {
        "seed": candidate.seed,
        "p2p_threshold": candidate.p,
        "cfg_scale": candidate.guidance_scale,
        **{REFERENCE_KEYS[name]: float(scores[name]) for name in REFERENCE_KEYS},
    }


def write_edit_folder(folder: Path, edit: Triple, candidates, pairs, scores, kept: list[int],
                      judged: list[dict] | None = None) -> None:  # fmt: skip
    """One edit's folder, whole or not at all; `judged` adds fields to each candidate's line."""
    with atomic_folder(folder) as temporary:
        prompt = {"input": edit["input"], "edit": edit["edit"], "output": edit["output"]}
        (temporary / "prompt.json").write_text(json.dumps(prompt, ensure_ascii=False), encoding="utf-8")
        lines = []
        for i in kept:
            first, second = pairs[i]
            first.save(temporary / f"{candidates[i].seed}_0.jpg", **JPEG)
            second.save(temporary / f"{candidates[i].seed}_1.jpg", **JPEG)
            lines.append(json.dumps(metadata_line(candidates[i], scores[i])) + "\n")
        (temporary / "metadata.jsonl").write_text("".join(lines), encoding="utf-8")
        judged = judged or [{}] * len(candidates)
        every = [json.dumps({**metadata_line(c, s), "kept": i in kept, **j}) + "\n" for i, (c, s, j) in
                 enumerate(zip(candidates, scores, judged))]  # fmt: skip
        (temporary / "candidates.jsonl").write_text("".join(every), encoding="utf-8")


def kept_seeds(folder: Path) -> list[int]:
    lines = (folder / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["seed"] for line in lines if line.strip()]


def finished_folders(root: Path) -> dict[str, Path]:
    """The edits' folders that are complete (every one is: they appear whole), by name."""
    if not root.is_dir():
        return {}
    return {p.name: p for p in root.iterdir() if p.is_dir() and p.name.isdigit() and (p / "prompt.json").is_file()}


def write_seeds(root: Path) -> int:
    """seeds.json from the finished folders (so it never lists a folder that is not whole); returns
    the number of folders with a kept pair."""
    entries = []
    for name, folder in sorted(finished_folders(root).items()):
        seeds = kept_seeds(folder)
        if seeds:
            entries.append([name, seeds])
    write_json(root / "seeds.json", entries)
    return len(entries)


def write_partition_parquet(root: Path, names: Sequence[str], path: Path) -> int:
    """The kept pairs of the folders `names` as one parquet file of the released schema."""
    from PIL import Image

    from instruct_pix2pix.data.base import EditExample
    from instruct_pix2pix.data.writers import write_parquet

    def examples() -> Iterator[EditExample]:
        for name in sorted(names):
            folder = root / name
            prompt = json.loads((folder / "prompt.json").read_text(encoding="utf-8"))
            for seed in kept_seeds(folder):
                with Image.open(folder / f"{seed}_0.jpg") as first, Image.open(folder / f"{seed}_1.jpg") as second:
                    yield EditExample(
                        input_image=first.convert("RGB"), instruction=prompt["edit"],
                        edited_image=second.convert("RGB"), input_caption=prompt["input"],
                        edited_caption=prompt["output"],
                    )  # fmt: skip

    return write_parquet(examples(), path, image_format="JPEG")


def check_output(output: Path, record: dict, settings: PairSettings, clip_filter: ClipFilter, seed: int,
                 num_partitions: int, format: str, overwrite: bool = False) -> dict:  # fmt: skip
    """The manifest of this run; refuses (one line) a folder that holds pairs made otherwise."""
    if format not in FORMATS:
        raise UserError(f"unknown format {format!r}; use folder or parquet")
    manifest = {**record, **asdict(settings), "filter": asdict(clip_filter), "seed": seed,
                "num_partitions": num_partitions, "format": format}  # fmt: skip
    manifest = json.loads(json.dumps(manifest))  # tuples as lists, as they read back
    check_job_folder(output, MANIFEST, manifest, what="set of image pairs", overwrite=overwrite)
    return manifest


def _batches(todo: list[tuple[int, Triple]], settings: PairSettings, seed: int, size: int):
    """(edit index, edit, candidate number, candidate) in UNet batches of `size` candidates."""
    batch = []
    for index, edit in todo:
        for number, candidate in enumerate(candidates_for(edit, index, settings, seed)):
            batch.append((index, edit, number, candidate))
            if len(batch) == size:
                yield batch
                batch = []
    if batch:
        yield batch


def make_pairs(
    edits: Sequence[Triple],
    output: str | Path,
    model,
    scorer,
    *,
    settings: PairSettings = PairSettings(),
    clip_filter: ClipFilter = ClipFilter(),
    record: dict | None = None,
    seed: int = 0,
    num_partitions: int = 1,
    partition_index: int = 0,
    format: str = "folder",
    batch_size: int = 8,
    device="cpu",
    limit: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    process_index: int = 0,
    num_processes: int = 1,
    judge=None,
) -> dict:
    """Write the image pairs of this partition's edits that are not done yet; returns the counts.

    `model` is a text-to-image bundle on `device`, `scorer` a ClipScorer. `record` describes the
    model and the CLIP (stored with the settings: a folder made with others is refused). Under
    several processes (accelerate), process `process_index` of `num_processes` takes its own share
    of the partition. `judge(edit, pairs)`, where there is a ground truth (the small world), returns
    fields for each candidate's line in candidates.jsonl (is the pair right?), before the filter."""
    import shutil

    from tqdm.auto import tqdm

    output = Path(output)
    manifest = check_output(output, record or {}, settings, clip_filter, seed, num_partitions, format, overwrite)
    if overwrite and output.exists():
        shutil.rmtree(output)
    root = output / WORK if format == "parquet" else output
    if process_index == 0:
        write_json(output / MANIFEST, manifest)
    mine = share(edits, num_partitions * num_processes, partition_index * num_processes + process_index, seed)
    mine = sorted(mine)[:limit]
    done = finished_folders(root)
    todo = [(i, e) for i, e in mine if folder_name(i) not in done]
    bar = tqdm(total=len(mine) * settings.candidates, initial=(len(mine) - len(todo)) * settings.candidates,
               unit="candidate", desc="drawing pairs", disable=not progress)  # fmt: skip
    pending: dict[int, list] = {}  # edit index -> [(number, candidate, pair, scores)]
    written = kept_total = 0
    with bar:
        for batch in _batches(todo, settings, seed, batch_size):
            candidates = [item[3] for item in batch]
            pairs = sample_pairs(model, candidates, mode=settings.mode, num_inference_steps=settings.steps,
                                 scheduler=settings.scheduler, n_self_replace=settings.n_self_replace,
                                 device=device)  # fmt: skip
            scores = scorer.edit_similarities([a for a, _ in pairs], [b for _, b in pairs],
                                              [c.input_caption for c in candidates],
                                              [c.output_caption for c in candidates])  # fmt: skip
            for k, (index, edit, number, candidate) in enumerate(batch):
                row = {name: float(values[k]) for name, values in scores.items()}
                pending.setdefault(index, []).append((number, candidate, pairs[k], row))
                if len(pending[index]) == settings.candidates:
                    results = sorted(pending.pop(index), key=lambda r: r[0])
                    ordered = [r[1] for r in results], [r[2] for r in results], [r[3] for r in results]
                    kept = clip_filter.choose(ordered[2])
                    judged = judge(edit, ordered[1]) if judge else None
                    write_edit_folder(root / folder_name(index), edit, *ordered, kept, judged)
                    written += 1
                    kept_total += len(kept)
            bar.update(len(batch))
            bar.set_postfix(edits=len(mine) - len(todo) + written, kept=kept_total)
    folders = write_seeds(root)
    shard = None
    if format == "parquet":
        total = num_partitions * num_processes
        shard = output / f"train-{partition_index * num_processes + process_index:05d}-of-{total:05d}.parquet"
        if written or not shard.exists():
            write_partition_parquet(root, [folder_name(i) for i, _ in mine], shard)
    return {
        "edits": len(mine),
        "done_before": len(mine) - len(todo),
        "written": written,
        "kept_this_run": kept_total,
        "kept": sum(len(kept_seeds(root / folder_name(i))) for i, _ in mine),
        "folders_with_pairs": folders,
        "output": str(shard or output),
    }
