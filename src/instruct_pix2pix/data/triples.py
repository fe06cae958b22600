"""The text stage's examples: (input caption, instruction, edited caption) triples, their formats and filters.

The paper fine-tuned GPT-3 on 700 human-written triples (shipped here, `human-written-prompts.jsonl`,
from the InstructPix2Pix authors' released data). The reference writes each as a prompt and a
completion; a completion the model writes is read back the same way and kept only if it passes
the reference's filters:

    prompt      "{input}\n##\n"
    completion  "{edit}\n%%\n{output}\nEND"       (generation stops at "\nEND")

For instruction-tuned models the same triples are chat messages: the caption as the user's turn,
"{edit}\n%%\n{output}" as the assistant's.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from instruct_pix2pix.atomic import atomic_file
from instruct_pix2pix.errors import UserError

HUMAN_WRITTEN = Path(__file__).resolve().parent / "human-written-prompts.jsonl"
PROMPT_END = "\n##\n"
SEPARATOR = "\n%%\n"
STOP = "\nEND"
FORMATS = ("reference", "chat")
SYSTEM_PROMPT = (
    "You write image edits. Given an image caption, reply with an instruction that changes the image, "
    "then a line with %%, then the caption of the edited image."
)
# Why a completion is rejected (the names counted in the stats file).
MALFORMED = "malformed"  # not exactly two parts around "\n%%\n"
EMPTY = "empty"  # one of the two parts is empty
UNCHANGED = "unchanged"  # the edited caption is the input caption
MODERATED_INPUT = "moderated input"
MODERATED_OUTPUT = "moderated output"
TRUNCATED = "truncated"  # the token limit came before the stop sequence
TOO_LONG = "too long"  # the caption does not fit in the model's context (not retried)
REFUSED = "refused"  # the server refused the request, e.g. a 400 for its content (not retried)
FINAL = (TOO_LONG, REFUSED)  # reasons a new sample cannot change


class Rejection(str):
    """What a backend returns in place of a completion it could not write: the reason."""


Triple = dict[str, str]  # {"input", "edit", "output"}


def read_triples(path: str | Path = HUMAN_WRITTEN) -> list[Triple]:
    """Triples from a JSONL file (`input`, `edit`, `output`; `caption` is taken for `input`)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no triples file {path}; give a JSONL file with input, edit and output on each line")
    triples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            triple = {"input": row.get("input", row.get("caption")), "edit": row["edit"], "output": row["output"]}
        except (json.JSONDecodeError, KeyError, AttributeError):
            raise UserError(f"{path}, line {number}: not a JSON object with input, edit and output") from None
        if not all(isinstance(value, str) for value in triple.values()):
            raise UserError(f"{path}, line {number}: input, edit and output must be strings")
        triples.append(triple)
    if not triples:
        raise UserError(f"{path} holds no triples")
    return triples


def prompt(caption: str) -> str:
    return caption + PROMPT_END


def completion(edit: str, output: str) -> str:
    return f"{edit}{SEPARATOR}{output}{STOP}"


def chat_messages(caption: str, examples: list[Triple] = ()) -> list[dict[str, str]]:
    """The chat request for `caption`: the task, then each example as a user and an assistant turn."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    for example in examples:
        messages.append({"role": "user", "content": example["input"]})
        messages.append({"role": "assistant", "content": example["edit"] + SEPARATOR + example["output"]})
    return [*messages, {"role": "user", "content": caption}]


def few_shot_examples(triples: list[Triple], count: int, caption: str, seed: int) -> list[Triple]:
    """`count` examples for `caption`'s request, the same for the same caption and seed."""
    return random.Random(f"{seed}/{caption}").sample(triples, min(count, len(triples)))


def lm_dataset_rows(triples: list[Triple], format: str = "reference") -> list[dict]:
    """Fine-tuning rows: {"prompt", "completion"} (the reference's) or {"messages"} (chat services')."""
    if format not in FORMATS:
        raise UserError(f"unknown format {format!r}; use one of: {', '.join(FORMATS)}")
    if format == "reference":
        return [{"prompt": prompt(t["input"]), "completion": completion(t["edit"], t["output"])} for t in triples]
    return [
        {
            "messages": chat_messages(t["input"])
            + [{"role": "assistant", "content": t["edit"] + SEPARATOR + t["output"]}]
        }
        for t in triples
    ]


def write_lm_dataset(path: str | Path, triples: list[Triple], format: str = "reference") -> Path:
    rows = lm_dataset_rows(triples, format)
    with atomic_file(path, "w", encoding="utf-8") as stream:
        for row in rows:
            stream.write(json.dumps(row, ensure_ascii=False) + "\n")
    return Path(path)


def normalised(caption: str) -> str:
    """The reference's comparison key: `.strip().strip(".!?").lower()`."""
    return caption.strip().strip(".!?").lower()


def parse_completion(text: str, caption: str) -> tuple[str, str] | str:
    """(instruction, edited caption) from a completion, or the reason it is rejected.

    The reference's filters: exactly two parts around "\\n%%\\n", and an edited caption that is not
    the input; ours: neither part empty, each one line with no separator in it, and a backend's
    `Rejection` (truncated, too long, refused) passed on. Text from "\\nEND" on is dropped (a server
    that ignores the stop sequence still gives a usable completion)."""
    if isinstance(text, Rejection):
        return str(text)
    text = text.split(STOP, 1)[0]
    parts = text.split(SEPARATOR)
    if len(parts) != 2:
        return MALFORMED
    edit, output = (part.strip() for part in parts)
    if not edit or not output:
        return EMPTY
    if any(marker in part for part in (edit, output) for marker in ("\n", "%%", "##")):
        return MALFORMED  # one line each: a second caption or a stray separator is not an edit
    if normalised(output) == normalised(caption):
        return UNCHANGED
    return edit, output
