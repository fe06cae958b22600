"""Which of a source's columns holds each of our fields: the known presets, and a mapping on top of one."""

from __future__ import annotations

from collections.abc import Mapping

from instruct_pix2pix.data.base import FIELDS, IMAGE_FIELDS, REQUIRED_FIELDS, TEXT_FIELDS
from instruct_pix2pix.errors import UserError

COLUMN_PRESETS: dict[str, dict[str, str]] = {
    # The released dataset (timbrooks/instructpix2pix-clip-filtered) and write_parquet.
    "instructpix2pix": dict(
        input_image="original_image",
        edited_image="edited_image",
        instruction="edit_prompt",
        input_caption="original_prompt",
        edited_caption="edited_prompt",
    ),
    # diffusers' train_instruct_pix2pix.py example (fusing/instructpix2pix-1000-samples).
    "diffusers-example": dict(input_image="input_image", edited_image="edited_image", instruction="edit_prompt"),
}


def _resolve_columns(
    available: dict[str, str], kinds: dict[str, str], columns: dict[str, str] | None, source: str
) -> tuple[dict[str, str], str | None]:
    """Our field -> their column, from a detected preset with `columns` on top; UserError if impossible.

    `available` is their column -> type name, `kinds` their column -> 'image', 'text' or 'other'.
    """
    names = list(available)
    if columns is not None and not isinstance(columns, Mapping):
        raise UserError(
            f"the column mapping must map fields to column names, like {{'instruction': 'prompt'}}, not {columns!r}"
        )

    def matches(item):
        required = sum(item[1][field] in available for field in REQUIRED_FIELDS)
        return required, sum(column in available for column in item[1].values())

    # The preset that fits best gives the columns it can; `columns` goes on top.
    preset_name, preset = max(COLUMN_PRESETS.items(), key=matches)  # the first of equals
    detected = {field: column for field, column in preset.items() if column in available}
    mapping = dict(detected)
    for field, column in (columns or {}).items():
        if field not in FIELDS:
            raise UserError(f"unknown field {field!r} in the column mapping; the fields are {', '.join(FIELDS)}")
        if column in (None, ""):
            mapping.pop(field, None)
            continue
        if column not in available:
            raise UserError(
                f"the column mapping names {column!r} for {field}, but {source} has no such column; "
                f"its columns are: {', '.join(names)}"
            )
        mapping[field] = column
    if mapping != detected or any(field not in detected for field in REQUIRED_FIELDS):
        preset_name = None
    missing = [field for field in REQUIRED_FIELDS if field not in mapping]
    if missing:
        looked = "; ".join(
            f"{field} (looked for {', '.join(dict.fromkeys(p[field] for p in COLUMN_PRESETS.values()))})"
            for field in missing
        )
        example = ", ".join(f"{field}=COLUMN" for field in missing)
        raise UserError(
            f"{source} has no column for {looked}; its columns are: {', '.join(names)}; "
            f"map them with columns={{{example}}} (data_columns in a training config)"
        )
    for field, column in mapping.items():
        kind = kinds[column]
        if field in IMAGE_FIELDS and kind == "other":
            raise UserError(
                f"column {column!r} ({field}) of {source} is {available[column]}, not an image: give a column of "
                "datasets Image() structs, encoded image bytes, or image paths"
            )
        if field in TEXT_FIELDS and kind != "text":
            raise UserError(
                f"column {column!r} ({field}) of {source} is {available[column]}, not text; map a text column"
            )
    return mapping, preset_name
