"""Writing edit examples: parquet with the released dataset's schema, and the reference on-disk format.

Both are written atomically (`instruct_pix2pix.atomic`): a crash never leaves half a file or folder.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from PIL import Image

from instruct_pix2pix.atomic import atomic_folder, atomic_path
from instruct_pix2pix.data.base import EditExample
from instruct_pix2pix.errors import UserError

# The released dataset's column order; images as datasets Image() structs, so `datasets` decodes them.
PARQUET_COLUMNS = ("original_prompt", "original_image", "edit_prompt", "edited_prompt", "edited_image")
_HF_FEATURES = {
    "original_prompt": {"dtype": "string", "_type": "Value"},
    "original_image": {"_type": "Image"},
    "edit_prompt": {"dtype": "string", "_type": "Value"},
    "edited_prompt": {"dtype": "string", "_type": "Value"},
    "edited_image": {"_type": "Image"},
}


def _encode(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    if image_format == "JPEG":
        image.convert("RGB").save(buffer, format="JPEG", quality=95)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def _image_format(image_format: str) -> str:
    name = image_format.upper().replace("JPG", "JPEG")
    if name not in ("PNG", "JPEG"):
        raise UserError(f"image_format must be PNG or JPEG, not {image_format!r}")
    return name


def write_parquet(
    examples: Iterable[EditExample],
    path: str | os.PathLike[str],
    *,
    rows_per_group: int = 100,
    image_format: str = "PNG",
) -> int:
    """Write examples as one parquet file with the released instructpix2pix schema; returns the row count.

    Columns: original_prompt, original_image, edit_prompt, edited_prompt, edited_image, images as
    {bytes, path} structs (PNG, or JPEG quality 95) with the `datasets` feature metadata, so
    `open_dataset` and `datasets.load_dataset("parquet", ...)` both read it. Rows are written a row
    group at a time (`rows_per_group` rows each) into a hidden temporary file that is renamed over
    `path` at the end: a crash never leaves a partial file under `path`.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if rows_per_group < 1:
        raise ValueError(f"rows_per_group must be positive, got {rows_per_group}")
    image_format = _image_format(image_format)
    path = Path(path)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema(
        [
            ("original_prompt", pa.string()),
            ("original_image", image_type),
            ("edit_prompt", pa.string()),
            ("edited_prompt", pa.string()),
            ("edited_image", image_type),
        ],
        metadata={"huggingface": json.dumps({"info": {"features": _HF_FEATURES}})},
    )
    written = 0
    rows: dict[str, list] = {name: [] for name in PARQUET_COLUMNS}

    def flush(writer) -> None:
        if rows["edit_prompt"]:
            writer.write_table(pa.table(rows, schema=schema), row_group_size=rows_per_group)
            for column in rows.values():
                column.clear()

    with atomic_path(path) as temporary, pq.ParquetWriter(temporary, schema) as writer:
        for example in examples:
            rows["original_prompt"].append(example.input_caption)
            rows["original_image"].append({"bytes": _encode(example.input_image, image_format), "path": None})
            rows["edit_prompt"].append(example.instruction)
            rows["edited_prompt"].append(example.edited_caption)
            rows["edited_image"].append({"bytes": _encode(example.edited_image, image_format), "path": None})
            written += 1
            if len(rows["edit_prompt"]) >= rows_per_group:
                flush(writer)
        flush(writer)
    return written


def write_reference_folder(
    examples: Iterable[EditExample | Sequence[EditExample]], folder: str | os.PathLike[str]
) -> int:
    """Write the original instruct-pix2pix on-disk format; returns the number of prompt folders.

    Each item is one prompt folder (`0000000`, `0000001`, ...): an example, or a sequence of
    examples that share the prompt (their captions and instruction are taken from the first) and
    become several seeds of it. Writes `seeds.json`, `NNNNNNN/prompt.json` ({input, edit, output})
    and `NNNNNNN/{seed}_0.jpg` / `{seed}_1.jpg` (JPEG quality 95); seeds are numbered across the
    folder. Everything goes to a temporary folder renamed to `folder` at the end, so `folder` must
    not exist or be empty.
    """
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UserError(f"{folder} already exists and is not an empty folder; give a new folder")
    seeds_json: list = []
    next_seed = 0
    # The files inside are plain writes: the whole folder appears at once, or not at all.
    with atomic_folder(folder) as temporary:  # an empty existing folder is replaced
        for index, item in enumerate(examples):
            group = [item] if isinstance(item, EditExample) else list(item)
            if not group:
                raise ValueError(f"item {index} is an empty group of examples")
            name = f"{index:07d}"
            prompt_dir = temporary / name
            prompt_dir.mkdir()
            first = group[0]
            prompt = {"input": first.input_caption, "edit": first.instruction, "output": first.edited_caption}
            (prompt_dir / "prompt.json").write_text(json.dumps(prompt), encoding="utf-8")
            seeds = []
            for example in group:
                seed, next_seed = next_seed, next_seed + 1
                (prompt_dir / f"{seed}_0.jpg").write_bytes(_encode(example.input_image, "JPEG"))
                (prompt_dir / f"{seed}_1.jpg").write_bytes(_encode(example.edited_image, "JPEG"))
                seeds.append(seed)
            seeds_json.append([name, seeds])
        (temporary / "seeds.json").write_text(json.dumps(seeds_json), encoding="utf-8")
    return len(seeds_json)
