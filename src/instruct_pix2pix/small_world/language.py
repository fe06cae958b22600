"""The small world's language model (its GPT-3) and the grammar that checks what it writes.

Made the way the paper's was: a small GPT-2 (transformers, a tokenizer built from the world's
words) is pretrained on the world's text, its internet (series of captions and lines that tell their
changes), then fine-tuned on 700 small-world triples written with the training phrasings only, by the
same `finetune_lm` any user runs.

The world has a grammar, so a triple the model writes can be checked exactly: `parse_caption`
reads the input caption back into a scene, `parse_instruction` finds the phrasing and the words of
the instruction, `apply_instruction` makes the edited scene, and the right edited caption is its
caption. `evaluate_language_model` measures a model that way on captions of held-out scenes.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import torch

from instruct_pix2pix.atomic import atomic_folder, write_json
from instruct_pix2pix.data.triples import PROMPT_END, SEPARATOR, STOP, Triple, completion, parse_completion
from instruct_pix2pix.errors import UserError
from instruct_pix2pix.small_world.edits import (
    BACKGROUND_WORDS,
    DIRECTIONS,
    EDIT_FUNCTIONS,
    KINDS,
    NUMBERS,
    PHRASINGS,
    edit_rng,
    sample_edits,
    vocabulary,
)
from instruct_pix2pix.small_world.scenes import (
    BACKGROUND_PHRASES,
    CELL_PHRASES,
    COLOURS,
    SHAPES,
    SIZES,
    Scene,
    Thing,
    caption,
    sample_scene,
)

DEFAULT_LANGUAGE_MODEL = Path(__file__).resolve().parent / "language_model"  # the shipped one (transformers)
PRETRAIN_SPLIT, TRIPLES_SPLIT, TEST_SPLIT = "lm-pretrain", "lm-triples", "lm-test"
TRIPLES = 700  # as many as the paper's human-written ones
BLACK_AND_WHITE_PROBABILITY = 0.1  # the internet has some black-and-white pictures too
SERIES = 3  # at most this many pictures in a document
INTERNET = "narrated"  # which internet pretraining reads, recorded with every run (`internet_document`)
# A Llama (rotary positions): on the narrated internet it copies a caption better, and is right more
# often, than a GPT-2 (learnt positions) three times its size (README, 'the text stage'). Token
# embeddings start 5x wider than the architectures' 0.02: nothing within one caption tells the four
# shapes (or the two sizes) apart, so from that start their embeddings stay all but equal (cosine
# 0.99) and the model never learns to copy them from one caption to the next.
MODEL_CONFIG = {
    "architecture": "llama",
    "n_positions": 256,
    "n_embd": 128,
    "n_layer": 4,
    "n_head": 4,
    "embedding_std": 0.1,
}
# The shipped model's settings. Pretraining reads an internet with 2 remarks after each caption
# (`internet_document`): without them a third of the objects the model names are not in the scene.
# Fine-tuning runs 60 epochs, not the paper's one: a model of 1.1M parameters does not pick up the
# format in one; and each step also rehearses 4 documents of the internet (`Rehearsal`), without
# which fine-tuning unlearns the copying that pretraining taught. Pretraining 8000 steps instead of
# 4000 pays off only in combination with rehearsing 4 documents instead of 2: either change alone is no better
# than neither (the runs behind these choices: README, 'Making data: the text stage').
DEFAULTS = {
    "pretrain": {"steps": 8000, "batch_size": 32, "learning_rate": 2e-3, "bf16_autocast": True, "remarks": 2},
    "finetune": {"epochs": 60, "batch_size": 8, "learning_rate": 1e-3, "rehearsal": 4},
}


# --- the world's text ------------------------------------------------------------------------------


# Kind -> variant -> statements of a change, in words of their own (never an instruction's phrasing);
# the slots are the edit functions' words.
NARRATIONS = {
    "recolor": {"": ["then {obj} turned {colour}", "after that {obj} was {colour}"]},
    "reshape": {"": ["then {obj} became a {shape}", "after that {obj} was a {colour} {shape}"]},
    "add": {"": ["then {thing} appeared {where}", "after that there was {thing} {where}"]},
    "remove": {"": ["then {obj} disappeared", "after that {obj} was gone"]},
    "resize": {"bigger": ["then {obj} grew", "after that {obj} was large"],
               "smaller": ["then {obj} shrank", "after that {obj} was small"]},
    "move": {"": ["then {obj} went {direction}", "after that {obj} was one cell further {direction}"]},
    "background": {"plain": ["then the background turned {background}", "after that the background was {background}"],
                   "scenery": ["then the scene went to {background}", "after that everything was on {background}"]},
    "global": {"night": ["then night fell", "after that it was night"],
               "day": ["then day came", "after that it was day"],
               "black_and_white": ["then the colors faded", "after that it was black and white"]},
    "count": {"": ["then {number} {size} {colour} {shapes} appeared",
                   "after that there were {number} more {size} {colour} {shapes}"]},
}  # fmt: skip


def world_tokenizer():
    """GPT-2's byte-level BPE, with one token for each word of the world, of its internet's narrations
    and of the text stage's format."""
    from instruct_pix2pix.tokenizers import build_gpt2_tokenizer

    statements = [s for variants in NARRATIONS.values() for options in variants.values() for s in options]
    narration = sorted({w for s in statements for w in re.sub(r"\{\w+\}", " ", s).split()} - set(vocabulary()))
    markers = [PROMPT_END.strip(), SEPARATOR.strip(), STOP.strip()]
    return build_gpt2_tokenizer(vocabulary() + narration + markers, model_max_length=MODEL_CONFIG["n_positions"])


def narrated_change(scene: Scene, kind: str, rng: random.Random) -> tuple[str, Scene] | None:
    """One change of `kind` to `scene` and the line that tells it (`NARRATIONS`); None if it does not apply."""
    change = EDIT_FUNCTIONS[kind](scene, rng)
    if change is None:
        return None
    after, words, variant = change
    return rng.choice(NARRATIONS[kind][variant]).format(**words), after


def described(scene: Scene, remarks: int, pointing: random.Random) -> list[str]:
    """A scene's caption, then up to `remarks` lines that each point at one of its objects, drawn by
    `pointing` ("the yellow circle at the top"), as the internet writes a picture."""
    things = pointing.sample(scene.things, min(remarks, len(scene.things)))
    return [caption(scene)] + [f"{thing.name} {CELL_PHRASES[thing.cell]}" for thing in things]


def internet_document(index: int, series: int = SERIES, remarks: int = 0) -> str:
    """Document `index` of the world's internet: a series of pictures' captions, each picture the one
    before with one thing changed (as albums and photo series are), and between two captions a line
    that tells the change (as real text says what happened). Its text has no instructions; what it
    teaches is the captions' grammar, that a caption can be copied with a change, and which change a
    sentence means, which a language model knows from real text before it is fine-tuned.

    `remarks` > 0 puts up to that many lines after each caption that point at one of its objects and
    say where it is ("the yellow circle at the top", as comments and labels on a picture do): text
    that asks, again and again, which shape has which colour. A model that has not learnt that names
    objects the scene does not have. Drawn from a generator of their own, so the rest of the document
    is the same with or without them."""
    rng = edit_rng(PRETRAIN_SPLIT, index)
    pointing = random.Random(f"remarks/{index}")
    scene = sample_scene(rng)
    if rng.random() < BLACK_AND_WHITE_PROBABILITY:
        scene = replace(scene, black_and_white=True)
    lines = described(scene, remarks, pointing)
    for _ in range(rng.randint(1, series - 1)):
        change = narrated_change(scene, rng.choice(KINDS), rng)
        if change is not None:
            narration, scene = change
            lines += [narration, *described(scene, remarks, pointing)]
    return "\n".join(lines)


@dataclass(frozen=True)
class Rehearsal:
    """For `finetune_lm(rehearsal=)`: `documents` documents of the world's internet for each
    fine-tuning step, from document `first` on (pretraining read the ones before), written as
    pretraining's were (`series`, `remarks`)."""

    documents: int
    first: int
    series: int = SERIES
    remarks: int = 0

    def __call__(self, step: int) -> list[str]:
        start = self.first + step * self.documents
        return [internet_document(i, self.series, self.remarks) for i in range(start, start + self.documents)]


def world_triples(count: int = TRIPLES, split: str = TRIPLES_SPLIT) -> list[Triple]:
    """`count` triples written with the training phrasings, every edit kind in turn."""
    return [
        {"input": e.input_caption, "edit": e.instruction, "output": e.edited_caption}
        for e in sample_edits(split, count)
    ]


# --- reading text back -----------------------------------------------------------------------------


def _alternatives(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


COLOUR, SHAPE, SIZE, CELL = (_alternatives(words) for words in (COLOURS, SHAPES, SIZES, CELL_PHRASES.values()))
_CELLS_BY_PHRASE = {phrase: cell for cell, phrase in CELL_PHRASES.items()}
_BACKGROUND_BY_PHRASE = {phrase: name for name, phrase in BACKGROUND_PHRASES.items()}
_BACKGROUND_BY_WORDS = {words: name for name, words in BACKGROUND_WORDS.items()}
_NUMBER_BY_WORD = {word: number for number, word in NUMBERS.items()}
_THING = re.compile(rf"a ({SIZE}) ({COLOUR}) ({SHAPE}) ({CELL})")
_BACKGROUND = _alternatives(BACKGROUND_PHRASES.values())
_CAPTION = re.compile(
    rf"(?P<bw>a black and white picture of )?(?P<objects>.+?) (?P<background>{_BACKGROUND})(?P<night> at night)?"
)


def parse_caption(text: str) -> Scene | None:
    """The scene a caption describes, or None if it is not a caption of the world (exactly as `caption`
    writes them: objects in reading order, one object a cell)."""
    match = _CAPTION.fullmatch(text.strip())
    if match is None:
        return None
    objects = match["objects"]
    things = (
        []
        if objects == "nothing"
        else [
            Thing(colour, shape, size, _CELLS_BY_PHRASE[where])
            for size, colour, shape, where in _THING.findall(objects)
        ]
    )
    scene = Scene(
        _BACKGROUND_BY_PHRASE[match["background"]],
        tuple(things),
        night=bool(match["night"]),
        black_and_white=bool(match["bw"]),
    )
    one_a_cell = len({t.cell for t in things}) == len(things)
    return scene if one_a_cell and caption(scene) == text.strip() else None


_SLOTS = {
    "obj": rf"the (?P<obj_colour>{COLOUR}) (?P<obj_shape>{SHAPE})",
    "colour": rf"(?P<colour>{COLOUR})",
    "shape": rf"(?P<shape>{SHAPE})",
    "thing": rf"a (?P<size>{SIZE}) (?P<colour>{COLOUR}) (?P<shape>{SHAPE})",
    "where": rf"(?P<where>{_alternatives(CELL_PHRASES.values())})",
    "direction": rf"(?P<direction>{_alternatives(DIRECTIONS)})",
    "background": rf"(?P<background>{_alternatives(BACKGROUND_WORDS.values())})",
    "number": rf"(?P<number>{_alternatives(NUMBERS.values())})",
    "size": rf"(?P<size>{SIZE})",
    "shapes": rf"(?P<shape>{SHAPE})s",
}


@dataclass(frozen=True)
class Phrasing:
    kind: str
    variant: str
    template: str
    held_out: bool
    pattern: re.Pattern


@cache
def phrasings() -> tuple[Phrasing, ...]:
    found = []
    for kind, variants in PHRASINGS.items():
        for variant, (seen, held) in variants.items():
            for held_out, templates in ((False, seen), (True, held)):
                for template in templates:
                    parts = re.split(r"\{(\w+)\}", template)  # literal, slot, literal, ...
                    regex = "".join(_SLOTS[p] if i % 2 else re.escape(p) for i, p in enumerate(parts))
                    found.append(Phrasing(kind, variant, template, held_out, re.compile(regex)))
    return tuple(found)


def parse_instruction(text: str) -> list[tuple[Phrasing, dict[str, str]]]:
    """Every phrasing the instruction fits, with the words it fills in (none: not an instruction of the world)."""
    text = text.strip()
    return [(p, m.groupdict()) for p in phrasings() if (m := p.pattern.fullmatch(text))]


def apply_instruction(scene: Scene, phrasing: Phrasing, words: dict[str, str]) -> Scene | None:
    """The edited scene, as the world's own edits make it; None if the instruction does not apply to
    the scene (an object that is not there, a cell that is taken, a colour and shape already used, ...)."""
    kind, variant = phrasing.kind, phrasing.variant
    thing = scene.find(words["obj_colour"], words["obj_shape"]) if "obj_colour" in words else None
    if kind == "remove" and thing is None and "colour" in words and "obj_colour" not in words:
        thing = scene.find(words["colour"], words["shape"])  # "there should be no red circle"
    needs_thing = kind in ("recolor", "reshape", "remove", "resize", "move")
    if (needs_thing and thing is None) or (kind not in ("background", "global") and scene.black_and_white):
        return None

    def unused(colour, shape):
        return scene.find(colour, shape) is None

    if kind == "recolor":
        return (
            scene.replace_thing(thing, replace(thing, colour=words["colour"]))
            if unused(words["colour"], thing.shape)
            else None
        )
    if kind == "reshape":
        if words.get("colour", thing.colour) != thing.colour or not unused(thing.colour, words["shape"]):
            return None
        return scene.replace_thing(thing, replace(thing, shape=words["shape"]))
    if kind == "remove":
        return scene.replace_thing(thing, None)
    if kind == "resize":
        size = "large" if variant == "bigger" else "small"
        return scene.replace_thing(thing, replace(thing, size=size)) if thing.size != size else None
    if kind == "move":
        dr, dc = DIRECTIONS[words["direction"]]
        cell = (thing.cell[0] + dr, thing.cell[1] + dc)
        return scene.replace_thing(thing, replace(thing, cell=cell)) if cell in scene.free_cells() else None
    if kind == "add":
        cell = _CELLS_BY_PHRASE[words["where"]]
        if cell not in scene.free_cells() or not unused(words["colour"], words["shape"]) or len(scene.things) >= 5:
            return None
        return scene.with_things(Thing(words["colour"], words["shape"], words["size"], cell))
    if kind == "count":
        number, cells = _NUMBER_BY_WORD[words["number"]], scene.free_cells()
        if len(cells) < number or not unused(words["colour"], words["shape"]):
            return None
        return scene.with_things(*(Thing(words["colour"], words["shape"], words["size"], c) for c in cells[:number]))
    if kind == "background":
        background = _BACKGROUND_BY_WORDS[words["background"]]
        return replace(scene, background=background) if background != scene.background else None
    if variant == "black_and_white":
        return replace(scene, black_and_white=True) if not scene.black_and_white else None
    night = variant == "night"
    return replace(scene, night=night) if scene.night != night else None


@dataclass(frozen=True)
class Check:
    """What the grammar says about one completion for an input caption."""

    parses: bool  # well formed, a world instruction, and a world caption
    right: bool  # the edited caption is exactly the instruction applied to the input scene
    kind: str | None
    held_out_phrasing: bool
    reason: str  # why not right ("" when right)
    instruction: str | None = None  # the completion's instruction, when it is well formed


def check_triple(triple: Triple) -> Check:
    """`check_completion` for a written triple (the text stage's output)."""
    return check_completion(triple["input"], completion(triple["edit"], triple["output"]))


def check_completion(input_caption: str, text: str) -> Check:
    parsed = parse_completion(text, input_caption)
    if isinstance(parsed, str):
        return Check(False, False, None, False, parsed)
    edit, output = parsed
    scene, matches = parse_caption(input_caption), parse_instruction(edit)
    if scene is None:
        return Check(False, False, None, False, "input is not a world caption", edit)
    if not matches:
        return Check(False, False, None, False, "not a world instruction", edit)
    phrasing = matches[0][0]
    if parse_caption(output) is None:
        return Check(False, False, phrasing.kind, phrasing.held_out, "edited caption is not a world caption", edit)
    afters = [(p, apply_instruction(scene, p, w)) for p, w in matches]
    for phrasing, after in afters:
        if after is not None and caption(after) == output:
            return Check(True, True, phrasing.kind, phrasing.held_out, "", edit)
    applies = any(after is not None for _, after in afters)
    reason = "wrong edited caption" if applies else "does not apply"
    return Check(True, False, phrasing.kind, phrasing.held_out, reason, edit)


# --- training ------------------------------------------------------------------------------------


def new_language_model(tokenizer, settings: dict):
    """The world's language model, untrained: a GPT-2 (learnt positions) or, with `architecture: llama`,
    a Llama of the same sizes (rotary positions, SwiGLU, RMSNorm)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    settings = dict(settings)
    architecture = settings.pop("architecture", "gpt2")
    embedding_std = settings.pop("embedding_std", None)
    end = tokenizer.eos_token_id  # GPT-2's one special token: beginning, end and padding
    ids = {"vocab_size": len(tokenizer), "bos_token_id": end, "eos_token_id": end, "pad_token_id": end}
    if architecture == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(**ids, **settings))
    elif architecture == "llama":
        width = settings["n_embd"]
        config = LlamaConfig(
            **ids,
            hidden_size=width,
            intermediate_size=settings.get("n_inner") or 4 * width,
            num_hidden_layers=settings["n_layer"],
            num_attention_heads=settings["n_head"],
            max_position_embeddings=settings["n_positions"],
            tie_word_embeddings=settings.get("tie_word_embeddings", True),
        )
        model = LlamaForCausalLM(config)
    else:
        raise UserError(f"the world's language model is a gpt2 or a llama, not {architecture!r}")
    if embedding_std is not None:  # the token embeddings' initial spread (the architectures' own: 0.02)
        torch.nn.init.normal_(model.get_input_embeddings().weight, std=float(embedding_std))
    return model


def pretrain_language_model(
    output_dir,
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int = 0,
    checkpoint_every: int = 100,
    progress: bool = True,
    model_config: dict | None = None,
    bf16_autocast: bool = False,
    series: int = SERIES,
    remarks: int = 0,
) -> dict:
    """Pretrain the world's language model on its internet (captions); writes output_dir/model, returns the
    metrics. `bf16_autocast` runs the model under CPU bf16 autocast (the loss in float32); `series`: at
    most this many captions a document; `remarks`: lines that point at a caption's objects after it
    (`internet_document`)."""
    from instruct_pix2pix.data.language_model import pad_batch, text_rows
    from instruct_pix2pix.training.loop import fit

    output_dir = Path(output_dir)
    tokenizer = world_tokenizer()
    settings = {**MODEL_CONFIG, **(model_config or {})}
    torch.manual_seed(seed)
    model = new_language_model(tokenizer, settings)  # a bad architecture is refused before anything is written
    output_dir.mkdir(parents=True, exist_ok=True)
    arguments = {
        "steps": steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "seed": seed,
        "model_config": settings,
        "internet": INTERNET,  # so a checkpoint of the internet without narration lines does not resume
        **({"bf16_autocast": True} if bf16_autocast else {}),  # absent when off: older checkpoints resume
        **({"series": series} if series != SERIES else {}),  # the same
        **({"remarks": remarks} if remarks else {}),  # the same
    }

    def step_loss(step: int, generator: torch.Generator) -> torch.Tensor:
        texts = [internet_document(step * batch_size + i, series, remarks) for i in range(batch_size)]
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16_autocast):
            return model(**pad_batch(text_rows(tokenizer, texts), tokenizer.pad_token_id, "cpu")).loss.float()

    result = fit(
        "world language model",
        output_dir,
        model,
        step_loss,
        arguments=arguments,
        steps=steps,
        learning_rate=learning_rate,
        seed=seed,
        checkpoint_every=checkpoint_every,
        progress=progress,
        weight_decay=0.1,
        betas=(0.9, 0.95),
    )
    metrics = {**arguments, **result, "parameters": sum(p.numel() for p in model.parameters())}
    with atomic_folder(output_dir / "model") as folder:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    write_json(output_dir / "metrics.json", metrics)
    return metrics


# --- measuring -----------------------------------------------------------------------------------


def held_out_captions(count: int) -> list[str]:
    """Captions of scenes no training text comes from (distinct, in a fixed order)."""
    captions, index = [], 0
    while len(captions) < count:
        text = caption(sample_scene(edit_rng(TEST_SPLIT, index)))
        index += 1
        if text not in captions:
            captions.append(text)
    return captions


def evaluate_language_model(
    model_source,
    *,
    count: int = 200,
    batch_size: int = 32,
    seed: int = 0,
    device: str = "auto",
    training: list[Triple] | None = None,
) -> dict:
    """Write a triple for each of `count` held-out captions and check every one against the grammar."""
    from instruct_pix2pix.data.language_model import LocalLM

    training = world_triples() if training is None else training
    backend = LocalLM(model_source, device=device, seed=seed)
    captions = held_out_captions(count)
    started = time.perf_counter()
    completions = []
    for start in range(0, count, batch_size):
        completions += backend.complete(captions[start : start + batch_size])
    seconds = time.perf_counter() - started
    checks = [check_completion(c, text) for c, text in zip(captions, completions)]
    instructions = [c.instruction for c in checks if c.instruction is not None]
    seen = {t["edit"] for t in training}
    training_kinds = Counter(parse_instruction(t["edit"])[0][0].kind for t in training)
    kinds = Counter(c.kind for c in checks if c.parses)

    def share(counter: Counter, total: int) -> dict[str, float]:
        return {kind: round(counter.get(kind, 0) / max(1, total), 3) for kind in PHRASINGS}

    def rate(values) -> float:
        values = list(values)
        return round(sum(values) / max(1, len(values)), 4)

    return {
        "captions": count,
        "parses": rate(c.parses for c in checks),
        "right": rate(c.right for c in checks),
        "right_by_kind": {k: rate(c.right for c in checks if c.kind == k) for k in PHRASINGS if kinds.get(k)},
        "kinds": share(kinds, sum(kinds.values())),
        "training_kinds": share(training_kinds, len(training)),
        "novel_instructions": rate(i not in seen for i in instructions),
        "held_out_phrasings": rate(c.held_out_phrasing for c in checks if c.parses),
        "repeated_instructions": rate(n > 1 for n in Counter(instructions).values()),
        "reasons": dict(Counter(c.reason for c in checks if not c.right).most_common()),
        "triples_per_second": round(count / seconds, 1),
        "examples": [
            {"input": c, "completion": t, "right": k.right} for c, t, k in list(zip(captions, completions, checks))[:8]
        ],
    }


def train_language_model(
    work, *, pretrain: dict | None = None, finetune: dict | None = None, progress: bool = True, evaluate: int = 200
) -> dict:
    """Pretrain, fine-tune on the world's 700 triples, measure; every part resumes. Returns the report."""
    from instruct_pix2pix.data.language_model import finetune_lm

    work = Path(work)
    pretrain = {**DEFAULTS["pretrain"], **(pretrain or {})}
    finetune = {**DEFAULTS["finetune"], **(finetune or {})}
    documents = finetune.pop("rehearsal", 0)  # internet documents a fine-tuning step (`Rehearsal`)
    internet = {"series": pretrain.get("series", SERIES), "remarks": pretrain.get("remarks", 0)}
    rehearsal = Rehearsal(documents, pretrain["steps"] * pretrain["batch_size"], **internet) if documents else None
    recorded = {**finetune, **({"rehearsal": repr(rehearsal)} if rehearsal else {})}
    for done, wanted in ((work / "pretrain" / "metrics.json", pretrain), (work / "model" / "finetune.json", recorded)):
        if done.exists() and any(json.loads(done.read_text()).get(k) != v for k, v in wanted.items()):
            raise UserError(f"{done.parent} was trained with other settings than {wanted}; give another work folder")
    if not (work / "pretrain" / "metrics.json").exists():
        pretrain_language_model(work / "pretrain", progress=progress, **pretrain)
    triples = world_triples()
    if not (work / "model" / "finetune.json").exists():
        finetune_lm(work / "pretrain" / "model", work / "model", triples, rehearsal=rehearsal, device="cpu",
                    progress=progress, **finetune)  # fmt: skip
    report = {
        "pretrain": json.loads((work / "pretrain" / "metrics.json").read_text()),
        "finetune": json.loads((work / "model" / "finetune.json").read_text()),
    }
    if evaluate:
        report["evaluation"] = evaluate_language_model(work / "model", count=evaluate, device="cpu", training=triples)
    write_json(work / "report.json", report)
    return report
