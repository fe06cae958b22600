"""Prompts into text embeddings: the one encoder that training and editing share, and prompt checks.

A model is trained and sampled with the same embeddings only if both sides tokenize, pad, cap
and mask alike, so both call `encode_prompts`.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable

import torch

from instruct_pix2pix.errors import EditWarning

PromptCheck = Callable[[str], None]


def distinct_texts(texts: Iterable[str]) -> tuple[list[str], list[int]]:
    """Each text once, in the order first seen, and for every text its row among them: encode the
    first list and index the result with the second (a batch of candidates repeats its captions)."""
    rows: dict[str, int] = {}
    index = [rows.setdefault(text, len(rows)) for text in texts]
    return list(rows), index


def prompt_length(tokenizer, text_encoder) -> int:
    """Tokens per prompt: the tokenizer's length, capped by the encoder's position embeddings."""
    return min(tokenizer.model_max_length, getattr(text_encoder.config, "max_position_embeddings", 10**6), 10**6)


def encode_prompts(
    tokenizer, text_encoder, prompts: list[str], device: torch.device | str | None = None
) -> torch.Tensor:
    """Last hidden states of the text encoder, padded to `prompt_length`, as diffusers' pipelines do
    (the attention mask is passed when the encoder's config asks for it)."""
    device = device or text_encoder.device
    max_length = prompt_length(tokenizer, text_encoder)
    tokens = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    mask = tokens.attention_mask.to(device) if getattr(text_encoder.config, "use_attention_mask", False) else None
    return text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]


def warn_if_truncated(tokenizer, text_encoder, prompts: Iterable[str]) -> None:
    """Say which prompts are longer than the model reads, and what it reads of them."""
    max_length = prompt_length(tokenizer, text_encoder)
    for prompt in dict.fromkeys(prompts):
        ids = tokenizer(prompt, truncation=False).input_ids
        if len(ids) > max_length:
            kept = tokenizer.decode(ids[1 : max_length - 1])
            warnings.warn(
                f"the instruction is longer than the model's {max_length} tokens and was cut to: {kept!r}",
                EditWarning,
                stacklevel=4,
            )


def closed_vocabulary_check(about: dict | None) -> PromptCheck | None:
    """For a model whose about.json lists every word it knows (the small world's default model): a
    check that warns about the others. None for a model without such a list."""
    known = set((about or {}).get("words", ()))
    if not known:
        return None
    understands = about.get("understands", "")

    def check(prompt: str) -> None:
        unknown = [w for w in dict.fromkeys(re.findall(r"[a-z0-9']+", prompt.lower())) if w not in known]
        if unknown:
            listed = ", ".join(repr(w) for w in unknown)
            noun = "word" if len(unknown) == 1 else "words"
            warnings.warn(
                f"the model does not know the {noun} {listed}; it understands {understands}", EditWarning, stacklevel=5
            )

    return check
