"""Training data: open parquet / datasets / hub / reference-format sources and iterate them resumably."""

from instruct_pix2pix.data.datasets import (
    COLUMN_PRESETS,
    FIELDS,
    REFERENCE_SPLITS,
    REQUIRED_FIELDS,
    EditDataset,
    EditExample,
    describe_dataset,
    open_dataset,
    reference_split_range,
)
from instruct_pix2pix.data.writers import write_parquet, write_reference_folder

__all__ = [
    "COLUMN_PRESETS",
    "FIELDS",
    "REFERENCE_SPLITS",
    "REQUIRED_FIELDS",
    "EditDataset",
    "EditExample",
    "describe_dataset",
    "open_dataset",
    "reference_split_range",
    "write_parquet",
    "write_reference_folder",
]
