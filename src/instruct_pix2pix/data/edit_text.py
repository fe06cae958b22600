"""The text stage's generation: captions in, one (input, edit, output) JSON line each out, resumably.

    write_edits(captions, "edits.jsonl", backend, retries=3)     (= ip2p data write-edits)

A backend writes completions: `LocalLM` (a transformers model, batched; in `language_model`) or
`OpenAIServer` (any OpenAI-compatible server through the official client: the completions endpoint
for fine-tuned base models, chat with few-shot examples for instruction-tuned ones). Each
completion passes the filters of `triples.parse_completion` (and moderation, when asked); a
rejected caption is sampled again up to `retries` times, then skipped.

Three files, all appended a batch at a time and flushed, so a kill (even SIGKILL) loses at most
the batch in flight:

    edits.jsonl                 the kept triples (plus `url`, the model and the sampling settings)
    edits.jsonl.rejected.jsonl  every rejected completion (caption, reason, text), and each skipped caption
    edits.jsonl.stats.json      the counts, rewritten at the end

A rerun with the same arguments drops a partial last line, forgets rejections of captions it had
not finished, and goes on with the captions not done yet: nothing is duplicated or lost.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from instruct_pix2pix.atomic import write_json, write_text
from instruct_pix2pix.data.captions import Caption
from instruct_pix2pix.data.language_model import Sampling
from instruct_pix2pix.data.triples import (
    FINAL,
    MODERATED_INPUT,
    MODERATED_OUTPUT,
    REFUSED,
    SEPARATOR,
    TRUNCATED,
    Rejection,
    Triple,
    chat_messages,
    few_shot_examples,
    parse_completion,
    prompt,
    read_triples,
)
from instruct_pix2pix.errors import UserError

SKIPPED = "skipped"  # a caption whose every attempt was rejected


class OpenAIServer:
    """An OpenAI-compatible server (vLLM, llama.cpp, TGI, Ollama, OpenAI) as a text-stage backend.

    The client retries 429s, 5xx answers, timeouts and dropped connections itself, with exponential
    backoff (honouring Retry-After); `concurrency` requests are in flight at once."""

    def __init__(
        self,
        base_url: str,
        model: str,
        sampling: Sampling | None = None,
        *,
        chat: bool = False,
        few_shot: int = 0,
        examples: list[Triple] | None = None,
        concurrency: int = 8,
        max_retries: int = 6,
        timeout: float = 60.0,
        seed: int = 0,
    ):
        import openai

        if not re.match(r"^https?://", base_url):
            raise UserError(f"--api-base must be an http(s) URL such as http://127.0.0.1:8000/v1, not {base_url!r}")
        if concurrency < 1:
            raise UserError("--concurrency must be at least 1")
        self.client = openai.OpenAI(
            base_url=base_url,
            api_key=os.environ.get("OPENAI_API_KEY") or "none",
            max_retries=max_retries,
            timeout=timeout,
        )
        self.base_url, self.model, self.sampling, self.chat = base_url, model, sampling or Sampling(), chat
        self.examples = (examples or read_triples()) if few_shot else []
        self.few_shot, self.seed = few_shot, seed
        self.pool = ThreadPoolExecutor(concurrency)

    def describe(self) -> dict:
        return {
            "backend": "chat" if self.chat else "completions",
            "model": self.model,
            "api_base": self.base_url,
            **({"few_shot": self.few_shot} if self.chat else {}),
        }

    def _request(self, caption: str, attempt: int) -> str:

        s = self.sampling
        common = dict(
            model=self.model,
            temperature=s.temperature,
            top_p=s.top_p,
            max_tokens=s.max_tokens,
            frequency_penalty=s.frequency_penalty,
            presence_penalty=s.presence_penalty,
            stop=[s.stop],
        )
        try:
            with _server_errors(self.base_url, self.model):
                if self.chat:
                    examples = few_shot_examples(self.examples, self.few_shot, caption, self.seed + attempt)
                    choice = self.client.chat.completions.create(messages=chat_messages(caption, examples), **common)
                    choice = choice.choices[0]
                    text = choice.message.content or ""
                else:
                    choice = self.client.completions.create(prompt=prompt(caption), **common).choices[0]
                    text = choice.text or ""
        except _Refused:
            return Rejection(REFUSED)  # this caption (too long, against a content policy): skipped
        return Rejection(TRUNCATED) if choice.finish_reason == "length" else text

    def complete(self, captions: list[str], attempt: int = 0) -> list[str]:
        """The captions' completions, `concurrency` requests at a time; on an error the requests not
        yet sent are cancelled, so a failing server ends the run at once."""
        futures = [self.pool.submit(self._request, caption, attempt) for caption in captions]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise

    def flagged(self, texts: list[str]) -> list[bool]:
        """The server's moderation endpoint on each text."""
        with _server_errors(self.base_url, "moderation", endpoint="moderations"):
            return [result.flagged for result in self.client.moderations.create(input=texts).results]


class _Refused(Exception):
    """A 400 or 422: the server refuses this request (not the run)."""


class _server_errors:
    """The openai client's errors as one line each: what went wrong, and what to do."""

    def __init__(self, base_url: str, model: str, endpoint: str | None = None):
        self.base_url, self.model, self.endpoint = base_url, model, endpoint

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        import openai

        if error is None or not isinstance(error, openai.OpenAIError):
            return False
        where = f"the server at {self.base_url}"
        if isinstance(error, openai.AuthenticationError):
            raise UserError(f"{where} refused the API key (401); set OPENAI_API_KEY") from None
        if isinstance(error, openai.PermissionDeniedError):
            raise UserError(f"{where} refused the request (403): {_message(error)}") from None
        if isinstance(error, (openai.BadRequestError, openai.UnprocessableEntityError)) and not self.endpoint:
            raise _Refused from None
        if isinstance(error, openai.NotFoundError) and self.endpoint:
            raise UserError(
                f"{where} has no /{self.endpoint} endpoint (404); use a blocklist file with --moderation"
            ) from None
        if isinstance(error, openai.NotFoundError):
            raise UserError(
                f"{where} has no model {self.model!r} or no such endpoint (404); check --api-model "
                "and --api-base (it usually ends in /v1)"
            ) from None
        if isinstance(error, openai.APITimeoutError):
            raise UserError(f"{where} did not answer in time, even after retries; rerun to go on") from None
        if isinstance(error, openai.APIConnectionError):
            raise UserError(f"cannot reach {where}; is it running? Rerun to go on") from None
        if isinstance(error, openai.APIStatusError):
            raise UserError(
                f"{where} answered {error.status_code} after retries: {_message(error)}; rerun to go on"
            ) from None
        raise UserError(f"{where}: {_message(error)}") from None


def _message(error) -> str:
    return str(getattr(error, "message", error)).splitlines()[0][:200]


class Blocklist:
    """Moderation by a list of words or phrases (one a line, case ignored, whole words)."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise UserError(f"no blocklist file {path}; give a text file with one word or phrase a line")
        words = [w.strip().lower() for w in path.read_text(encoding="utf-8").splitlines() if w.strip()]
        self.pattern = re.compile(r"\b(" + "|".join(map(re.escape, words)) + r")\b", re.IGNORECASE) if words else None

    def flagged(self, texts: list[str]) -> list[bool]:
        return [bool(self.pattern and self.pattern.search(text)) for text in texts]


def _read_lines(path: Path) -> list[dict]:
    """The complete lines of a JSONL file this stage wrote; a partial last line (a kill mid-write) is cut off."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as stream:
            stream.truncate(end)
    rows = []
    for number, line in enumerate(data[:end].decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict) or "input" not in row:
            raise UserError(f"{path}, line {number}: not a line this stage writes; give another --output")
        rows.append(row)
    return rows


def side_files(output: Path) -> tuple[Path, Path]:
    return output.with_name(output.name + ".rejected.jsonl"), output.with_name(output.name + ".stats.json")


def _resume(output: Path, record: dict) -> tuple[set[str], set[str], list[dict]]:
    """The captions kept and skipped already, and the rejections to keep: unfinished captions'
    rejections are dropped, since those captions are sampled again. A file written with another
    model or other sampling settings is refused."""
    rejected_path, _ = side_files(output)
    kept = _read_lines(output)
    if kept and (kept[0].get("model"), kept[0].get("sampling")) != (record["model"], record["sampling"]):
        raise UserError(
            f"{output} was written with the model {kept[0].get('model')!r} and other settings "
            f"({kept[0].get('sampling')}): rerun with those to go on, or give another --output"
        )
    rejections = _read_lines(rejected_path)
    kept_inputs = {row["input"] for row in kept}
    skipped = {row["input"] for row in rejections if row["reason"] == SKIPPED}
    keep = [row for row in rejections if row["input"] in kept_inputs | skipped]
    if len(keep) != len(rejections):
        write_text(rejected_path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in keep))
    return kept_inputs, skipped, keep


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def write_edits(
    captions: list[Caption],
    output: str | Path,
    backend,
    *,
    retries: int = 3,
    batch_size: int = 32,
    moderation=None,
    progress: bool = True,
) -> dict:
    """Write a triple for every caption not done yet (a caption given twice, once); returns (and saves)
    the counts."""
    from tqdm.auto import tqdm

    distinct: dict[str, Caption] = {}
    for caption in captions:
        distinct.setdefault(caption.text, caption)
    captions = list(distinct.values())

    output = Path(output)
    rejected_path, stats_path = side_files(output)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot make the folder {output.parent}: {error.strerror}") from None
    record = {**backend.describe(), "sampling": backend.sampling.record()}
    kept_inputs, skipped, earlier = _resume(output, record)
    texts = {c.text for c in captions}  # the counts are of these captions (a file may hold other partitions')
    todo = [c for c in captions if c.text not in kept_inputs and c.text not in skipped]
    counts = Counter(row["reason"] for row in earlier if row["input"] in texts)
    kept_before = len(kept_inputs & texts)
    bar = tqdm(
        total=len(captions),
        initial=len(captions) - len(todo),
        unit="caption",
        desc="writing edits",
        disable=not progress,
    )
    kept, started = 0, time.perf_counter()
    for batch in _batches(todo, batch_size):
        lines, rejected, given_up = [], [], []
        pending = batch
        if moderation is not None:
            flags = moderation.flagged([c.text for c in batch])
            given_up = [c for c, flag in zip(batch, flags) if flag]
            rejected += [{"input": c.text, "reason": MODERATED_INPUT, "text": c.text} for c in given_up]
            pending = [c for c, flag in zip(batch, flags) if not flag]
        for attempt in range(retries + 1):
            if not pending:
                break
            again, accepted = [], []
            for caption, text in zip(pending, backend.complete([c.text for c in pending], attempt)):
                parsed = parse_completion(text, caption.text)
                if isinstance(parsed, str):
                    rejected.append({"input": caption.text, "reason": parsed, "text": str(text)})
                    (given_up if parsed in FINAL else again).append(caption)
                else:
                    accepted.append((caption, *parsed))
            flags = [False] * len(accepted)
            if moderation is not None and accepted:
                pairs = moderation.flagged([text for _, edit, edited in accepted for text in (edit, edited)])
                flags = [pairs[2 * k] or pairs[2 * k + 1] for k in range(len(accepted))]
            for (caption, edit, edited), flag in zip(accepted, flags):
                if flag:
                    text = edit + SEPARATOR + edited
                    rejected.append({"input": caption.text, "reason": MODERATED_OUTPUT, "text": text})
                    again.append(caption)
                else:
                    url = {"url": caption.url} if caption.url is not None else {}
                    lines.append({"input": caption.text, "edit": edit, "output": edited, **url, **record})
            pending = again
        rejected += [{"input": c.text, "reason": SKIPPED, "text": ""} for c in given_up + pending]
        # Rejections first: on a kill between the two writes, the batch's kept lines are missing and
        # its rejections are dropped again on resume (they belong to unfinished captions).
        _append(rejected_path, rejected)
        _append(output, lines)
        counts.update(r["reason"] for r in rejected)
        kept += len(lines)
        bar.update(len(batch))
        bar.set_postfix(
            kept=kept_before + kept, rejected=sum(counts.values()) - counts[SKIPPED], skipped=counts[SKIPPED]
        )
    bar.close()
    stats = {
        "captions": len(captions),
        "kept": kept_before + kept,
        "skipped": counts[SKIPPED],
        "rejections": {reason: n for reason, n in counts.most_common() if reason != SKIPPED},
        "this_run": {"captions": len(todo), "kept": kept, "seconds": round(time.perf_counter() - started, 1)},
        **record,
        "retries": retries,
    }
    write_json(stats_path, stats)
    return stats


def _append(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    with open(path, "a", encoding="utf-8") as stream:
        stream.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        stream.flush()
        os.fsync(stream.fileno())
