"""Training data: open parquet / datasets / hub / reference-format sources and iterate them resumably.

The modules, each with one job:

* `base`: `EditExample`, the field names, decoding one example, and `EditDataset`, whose
  `examples()` (order, sharding, resume, skipping bad examples) every source shares.
* `columns`: which of a source's columns holds each field (`COLUMN_PRESETS`).
* `tables`: parquet and arrow files read a row group at a time.
* `reference`: the original instruct-pix2pix on-disk format and its 90/5/5 split.
* `hub`: Hugging Face hub datasets, streamed or downloaded.
* `sources`: `open_dataset` / `describe_dataset`, which tell what a source is and open it.
* `writers`: `write_parquet` and `write_reference_folder`.

The text stage (a language model writes an instruction and an edited caption for each caption):

* `triples`: the 700 human-written triples, the reference's prompt/completion format, chat
  messages, and the filters a completion must pass.
* `captions`: input captions from text, JSONL, CSV, parquet or datasets; deduplicated; partitions.
* `language_model`: load any causal LM, fine-tune it on triples (`finetune_lm`), sample (`LocalLM`).
* `edit_text`: `write_edits`, resumable, with a local model or an OpenAI-compatible server.
"""

from instruct_pix2pix.data.base import FIELDS, REQUIRED_FIELDS, EditDataset, EditExample
from instruct_pix2pix.data.columns import COLUMN_PRESETS
from instruct_pix2pix.data.reference import REFERENCE_SPLITS, reference_split_range
from instruct_pix2pix.data.sources import describe_dataset, open_dataset
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
