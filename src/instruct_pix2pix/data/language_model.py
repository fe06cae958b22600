"""The text stage's language model: load any transformers causal LM, fine-tune it on triples, sample from it.

    finetune_lm(source, output_dir, triples, epochs=1, lora=False)   (= ip2p data finetune-lm)
    LocalLM(source, settings).complete(captions)                        (= ip2p data write-edits --lm)

Fine-tuning is the paper's: the reference format's prompt and completion concatenated, the loss on
the completion tokens only (and the end-of-text token after it), one epoch by default. It runs the
project's shared loop (`training.loop.fit`): a progress bar, a checkpoint every few steps, exact
resume; the result is a transformers folder (with `--lora`, the adapters merged into the weights).
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from instruct_pix2pix.atomic import atomic_folder, write_json
from instruct_pix2pix.data.triples import STOP, TOO_LONG, TRUNCATED, Rejection, Triple, completion, prompt
from instruct_pix2pix.errors import UserError

IGNORE = -100  # label of tokens the loss skips (the prompt, the padding)
MIN_ROOM = 16  # a caption must leave this many tokens of the context for the completion
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Sampling:
    """The reference's sampling settings (OpenAI's names)."""

    temperature: float = 0.7
    top_p: float = 1.0
    frequency_penalty: float = 0.1
    presence_penalty: float = 0.0
    max_tokens: int = 256
    stop: str = STOP

    def __post_init__(self):
        checks = {
            "temperature": 0 <= self.temperature <= 2,
            "top_p": 0 < self.top_p <= 1,
            "frequency_penalty": -2 <= self.frequency_penalty <= 2,
            "presence_penalty": -2 <= self.presence_penalty <= 2,
            "max_tokens": isinstance(self.max_tokens, int) and self.max_tokens >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise UserError(
                    f"{name} {getattr(self, name)!r} is out of range (temperature 0-2, top_p in (0, 1], "
                    "penalties -2 to 2, max_tokens >= 1)"
                )

    def record(self) -> dict:
        return asdict(self)


def load_causal_lm(source: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """(model, tokenizer) from a transformers folder or hub id; refuses anything that is not a causal LM.

    Weights load as transformers does: safetensors first, a pickled file only with weights_only; code
    that comes with a model is never run."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    source = str(source)
    if not Path(source).is_dir() and (not _HUB_ID.match(source) or source.startswith((".", "/"))):
        raise UserError(
            f"no language model {source}: give a transformers folder or a hub id such as openai-community/gpt2"
        )
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read a transformers config from {source}: {str(error).splitlines()[0]}") from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise UserError(
            f"{source} is a {config.model_type} model, not a causal language model (GPT-2, Llama, Qwen, ...)"
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, RuntimeError) as error:
        raise UserError(f"cannot load the language model {source}: {str(error).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device), tokenizer


def tokenize_triple(tokenizer, triple: Triple, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids of prompt + completion + end of text, and labels that hide the prompt."""
    prompt_ids = tokenizer(prompt(triple["input"])).input_ids
    completion_ids = tokenizer(completion(triple["edit"], triple["output"]), add_special_tokens=False).input_ids
    ids = (prompt_ids + completion_ids + [tokenizer.eos_token_id])[:max_length]
    labels = ([IGNORE] * len(prompt_ids) + completion_ids + [tokenizer.eos_token_id])[:max_length]
    return ids, labels


def text_rows(tokenizer, texts) -> list[tuple[list[int], list[int]]]:
    """Plain texts to learn every token of (pretraining, rehearsal): ids + end of text, labels the same."""
    return [(ids, ids) for ids in (tokenizer(t).input_ids + [tokenizer.eos_token_id] for t in texts)]


def pad_batch(rows: list[tuple[list[int], list[int]]], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Right-padded input ids, attention mask and labels (padding is masked and ignored)."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id)
    labels = torch.full((len(rows), width), IGNORE)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (tokens, targets) in enumerate(rows):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        labels[row, : len(targets)] = torch.tensor(targets)
        mask[row, : len(tokens)] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def batch_at(step: int, count: int, batch_size: int, seed: int) -> list[int]:
    """The examples of step `step`: each epoch is a fresh seeded permutation cut into batches (the last
    one of an epoch may be smaller)."""
    per_epoch = math.ceil(count / batch_size)
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    return order[position * batch_size : (position + 1) * batch_size]


def finetune_lm(
    source: str | Path,
    output_dir: str | Path,
    triples: list[Triple],
    *,
    epochs: float = 1,
    batch_size: int = 8,
    learning_rate: float = 5e-5,
    lora: bool = False,
    lora_rank: int = 16,
    rehearsal: Callable[[int], list[str]] | None = None,
    seed: int = 0,
    checkpoint_every: int = 25,
    device: str = "auto",
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Fine-tune `source` on `triples` into `output_dir` (a transformers folder); resumes a killed run.

    `rehearsal(step)`: texts learnt alongside each step's triples, with the loss on every token, added
    to the triples' loss: pretraining text mixed into fine-tuning (as InstructGPT's "ptx"), so that a
    small model keeps what pretraining taught it; recorded by its `repr`.

    Returns the run's record, also written to output_dir/finetune.json."""
    from instruct_pix2pix.editing import pick_device
    from instruct_pix2pix.training.loop import CHECKPOINT, fit

    output_dir = Path(output_dir)
    if not (isinstance(batch_size, int) and batch_size >= 1 and epochs > 0 and 0 < learning_rate < 1):
        raise UserError("batch size must be >= 1, epochs > 0 and the learning rate between 0 and 1")
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"{output_dir} is a file; give a folder for the fine-tuned model")
    ours = {CHECKPOINT} | {p.name for p in output_dir.glob(".*.tmp")}
    others = [p.name for p in output_dir.iterdir() if p.name not in ours] if output_dir.is_dir() else []
    if others and not overwrite:
        what = "a finished model" if "config.json" in others else f"other files ({', '.join(sorted(others)[:3])})"
        raise UserError(f"{output_dir} holds {what}; pass --overwrite to replace the folder, or give another")
    device = pick_device(device)
    # float32 weights to train (the optimizer's updates are lost in bfloat16 weights), whatever the
    # model's own dtype; save_pretrained writes them as they are.
    model, tokenizer = load_causal_lm(source, device, torch.float32)
    max_length = min(tokenizer.model_max_length, getattr(model.config, "max_position_embeddings", 10**6) or 10**6)
    rows = [tokenize_triple(tokenizer, t, max_length) for t in triples]
    steps = math.ceil(epochs * math.ceil(len(rows) / batch_size))
    if lora:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(seed)
        model = get_peft_model(
            model,
            LoraConfig(
                r=lora_rank,
                lora_alpha=2 * lora_rank,
                target_modules="all-linear",
                lora_dropout=0.05,
                task_type="CAUSAL_LM",
            ),
        )
    arguments = {
        "source": str(source),
        "examples": len(rows),
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "lora_rank": lora_rank if lora else None,
        "seed": seed,
        **({"rehearsal": repr(rehearsal)} if rehearsal else {}),  # absent when off: older checkpoints resume
    }

    def step_loss(step: int, generator: torch.Generator) -> torch.Tensor:
        batch = pad_batch(
            [rows[i] for i in batch_at(step, len(rows), batch_size, seed)], tokenizer.pad_token_id, device
        )
        loss = model(**batch).loss
        if rehearsal is not None:
            loss = loss + model(**pad_batch(text_rows(tokenizer, rehearsal(step)), tokenizer.pad_token_id, device)).loss
        return loss

    output_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)  # dropout's randomness; the checkpoint keeps its state
    result = fit(
        "language model",
        output_dir,
        model,
        step_loss,
        arguments=arguments,
        steps=steps,
        learning_rate=learning_rate,
        seed=seed,
        checkpoint_every=checkpoint_every,
        progress=progress,
        weight_decay=0.0,
        betas=(0.9, 0.999),
    )
    if lora:
        model = model.merge_and_unload()
    record = {**arguments, "steps": steps, **result, "format": "reference"}
    with atomic_folder(output_dir) as folder:  # replaces the run's checkpoint with the finished model
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        write_json(folder / "finetune.json", record)
    return record


class FrequencyPenalty:
    """OpenAI's frequency and presence penalties as a logits processor: each token's logit is lowered
    by `frequency` times its count in the completion so far, and by `presence` if it occurs at all
    (the prompt does not count). It runs before temperature and top_p, as OpenAI applies it."""

    def __init__(self, prompt_length: int, frequency: float, presence: float):
        self.prompt_length, self.frequency, self.presence = prompt_length, frequency, presence

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        generated = input_ids[:, self.prompt_length :]
        counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


class LocalLM:
    """A local causal LM as a text-stage backend: batched sampling on CPU or GPU."""

    def __init__(self, source, sampling: Sampling | None = None, *, device: str = "auto", seed: int = 0):
        from instruct_pix2pix.editing import pick_device, pick_dtype

        self.device = pick_device(device)
        self.model, self.tokenizer = load_causal_lm(source, self.device, pick_dtype(None, self.device))
        self.model.eval()
        self.tokenizer.padding_side = "left"  # new tokens follow every prompt directly
        self.sampling, self.seed, self.source = sampling or Sampling(), seed, str(source)

    def describe(self) -> dict:
        return {"backend": "local", "model": self.source}

    @torch.no_grad()
    def complete(self, captions: list[str], attempt: int = 0) -> list[str]:
        """One completion per caption, sampled with the settings (the same captions, seed and attempt
        give the same completions); a `Rejection` for a caption too long for the model's context, or
        a completion the token limit cut off before the stop sequence."""
        from transformers import LogitsProcessorList

        s = self.sampling
        context = getattr(self.model.config, "max_position_embeddings", None) or 10**9
        prompts = [prompt(c) for c in captions]
        fits = [len(self.tokenizer(p).input_ids) + MIN_ROOM <= context for p in prompts]
        results: list[str] = [Rejection(TOO_LONG) for _ in captions]
        chosen = [p for p, ok in zip(prompts, fits) if ok]
        if not chosen:
            return results
        batch = self.tokenizer(chosen, return_tensors="pt", padding=True).to(self.device)
        length = batch.input_ids.shape[1]
        torch.manual_seed(zlib.crc32(f"{self.seed}/{attempt}/{captions[0]}".encode()))
        sample = s.temperature > 0
        output = self.model.generate(
            **batch,
            do_sample=sample,
            temperature=s.temperature if sample else None,
            top_p=s.top_p if sample else None,
            top_k=0 if sample else None,  # OpenAI samples from the whole distribution (transformers' default is 50)
            repetition_penalty=1.0,  # not a model's own generation config: the penalties are OpenAI's, below
            max_new_tokens=min(s.max_tokens, context - length),  # never past the model's context
            logits_processor=LogitsProcessorList([FrequencyPenalty(length, s.frequency_penalty, s.presence_penalty)]),
            stop_strings=[s.stop],
            tokenizer=self.tokenizer,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        new = output[:, length:]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        ended = (new == self.tokenizer.eos_token_id).any(dim=1).tolist()
        written = iter(
            text.split(s.stop, 1)[0] if s.stop in text or end else Rejection(TRUNCATED)
            for text, end in zip(texts, ended)
        )
        return [next(written) if ok else result for ok, result in zip(fits, results)]
