"""The text stage: the 700 triples and their formats, fine-tuning a causal LM, writing edits with a local
model or an OpenAI-compatible server (a stub on 127.0.0.1), filters, resume, partitions, bad input."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from openai_stub import Stub
from test_cli import assert_one_line_error, run
from transformers import GPT2Config, GPT2LMHeadModel

from instruct_pix2pix.data.captions import Caption, partition, read_captions
from instruct_pix2pix.data.edit_text import Blocklist, OpenAIServer, write_edits
from instruct_pix2pix.data.language_model import (
    IGNORE,
    FrequencyPenalty,
    LocalLM,
    Sampling,
    finetune_lm,
    pad_batch,
    tokenize_triple,
)
from instruct_pix2pix.data.triples import (
    EMPTY,
    MALFORMED,
    UNCHANGED,
    Rejection,
    chat_messages,
    completion,
    lm_dataset_rows,
    parse_completion,
    prompt,
    read_triples,
)
from instruct_pix2pix.errors import UserError
from instruct_pix2pix.small_world.language import (
    Rehearsal,
    held_out_captions,
    internet_document,
    world_tokenizer,
    world_triples,
)
from instruct_pix2pix.tokenizers import build_gpt2_tokenizer


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A tiny GPT-2 with the small world's tokenizer, saved as a transformers folder (random weights)."""
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    tokenizer = world_tokenizer()
    torch.manual_seed(0)
    end = tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=256,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=end,
        eos_token_id=end,
        pad_token_id=end,
    )
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# --- triples and formats ---------------------------------------------------------------------------


def test_the_700_human_written_triples_ship_and_write_in_both_formats(tmp_path, capsys):
    triples = read_triples()
    assert len(triples) == 700 and all(t["input"] and t["edit"] and t["output"] for t in triples)
    code, out, _ = run(capsys, "data", "lm-dataset", "-o", tmp_path / "ft.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "ft.jsonl").read_text().splitlines()]
    assert code == 0 and len(rows) == 700
    first = triples[0]
    assert rows[0] == {
        "prompt": first["input"] + "\n##\n",
        "completion": first["edit"] + "\n%%\n" + first["output"] + "\nEND",
    }
    run(capsys, "data", "lm-dataset", "-o", tmp_path / "chat.jsonl", "--format", "chat")
    chat = json.loads((tmp_path / "chat.jsonl").read_text().splitlines()[0])["messages"]
    assert [m["role"] for m in chat] == ["system", "user", "assistant"]
    assert chat[1]["content"] == first["input"] and chat[2]["content"] == first["edit"] + "\n%%\n" + first["output"]


def test_filters_are_the_references_and_ours():
    caption = "A dog on a beach"
    assert parse_completion("make it snowy\n%%\nA dog on a snowy beach\nEND", caption) == (
        "make it snowy",
        "A dog on a snowy beach",
    )
    assert parse_completion("make it snowy\n%%\nA dog on a snowy beach", caption) == (
        "make it snowy",
        "A dog on a snowy beach",
    )
    assert parse_completion("make it snowy, A dog on a snowy beach", caption) == MALFORMED
    assert parse_completion("a\n%%\nb\n%%\nc", caption) == MALFORMED
    assert parse_completion("make it snowy\n%%\n  ", caption) == EMPTY
    assert parse_completion(" \n%%\nA cat", caption) == EMPTY
    assert parse_completion("do nothing\n%%\n a dog on a beach!.", caption) == UNCHANGED  # strip, strip(".!?"), lower
    assert parse_completion("do nothing\n%%\nA dog on a beach, really", caption) == (
        "do nothing",
        "A dog on a beach, really",
    )


def test_captions_from_every_source_deduplicated(tmp_path):
    (tmp_path / "c.txt").write_text("a cat\n\na dog\na cat\n a bird \n")
    assert [c.text for c in read_captions(tmp_path / "c.txt")] == ["a cat", "a dog", "a bird"]
    rows = [
        {"TEXT": "a cat", "URL": "u1"},
        {"TEXT": "a dog", "URL": "u1"},
        {"TEXT": "a cat", "URL": "u2"},
        {"TEXT": "a fox", "URL": "u3"},
    ]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    expected = [Caption("a cat", "u1"), Caption("a fox", "u3")]  # the same URL or the same caption: dropped
    assert read_captions(tmp_path / "c.jsonl") == expected
    (tmp_path / "c.csv").write_text("TEXT,URL\n" + "".join(f'"{r["TEXT"]}",{r["URL"]}\n' for r in rows))
    assert read_captions(tmp_path / "c.csv") == expected
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    assert read_captions(tmp_path / "c.parquet") == expected
    import datasets

    datasets.Dataset.from_list([{"caption": r["TEXT"], "link": r["URL"]} for r in rows]).save_to_disk(tmp_path / "ds")
    assert read_captions(tmp_path / "ds", url_column="link") == expected
    assert [c.text for c in read_captions(tmp_path / "ds", column="link")] == ["u1", "u2", "u3"]
    with pytest.raises(UserError, match="no column 'caption'.*TEXT, URL"):
        read_captions(tmp_path / "c.jsonl", column="caption")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(UserError, match="holds no captions"):
        read_captions(tmp_path / "empty.txt")
    with pytest.raises(UserError, match="no captions file"):
        read_captions(tmp_path / "missing.txt")


def test_partitions_are_disjoint_complete_and_deterministic():
    items = list(range(103))
    parts = [partition(items, 4, i, seed=7) for i in range(4)]
    assert sorted(x for p in parts for x in p) == items and sum(map(len, parts)) == 103
    assert {len(p) for p in parts} <= {25, 26}
    assert partition(items, 4, 2, seed=7) == parts[2] and partition(items, 4, 2, seed=8) != parts[2]
    with pytest.raises(UserError, match="between 0 and 3"):
        partition(items, 4, 4)


# --- fine-tuning --------------------------------------------------------------------------------


def test_the_loss_is_on_the_completion_tokens_only(tiny_lm):
    model = GPT2LMHeadModel.from_pretrained(tiny_lm)
    tokenizer = world_tokenizer()
    triple = world_triples(1)[0]
    ids, labels = tokenize_triple(tokenizer, triple, 256)
    prompt_length = len(tokenizer(prompt(triple["input"])).input_ids)
    assert labels[:prompt_length] == [IGNORE] * prompt_length and labels[prompt_length:] == ids[prompt_length:]
    assert tokenizer.decode(ids[prompt_length:-1]) == completion(triple["edit"], triple["output"])
    # the oracle: cross-entropy of the next token, over the completion's tokens (and end of text) alone
    logits = model(torch.tensor([ids])).logits[0]
    direct = torch.nn.functional.cross_entropy(logits[prompt_length - 1 : -1], torch.tensor(ids[prompt_length:]))
    ours = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
    torch.testing.assert_close(ours, direct)


def test_finetune_trains_resumes_exactly_and_writes_a_transformers_folder(tiny_lm, tmp_path, monkeypatch):
    triples = world_triples(24)
    settings = dict(epochs=2, batch_size=4, learning_rate=1e-3, checkpoint_every=2, device="cpu", progress=False)
    whole = finetune_lm(tiny_lm, tmp_path / "whole", triples, **settings)
    assert whole["steps"] == 12 and whole["examples"] == 24
    reference = GPT2LMHeadModel.from_pretrained(tmp_path / "whole")
    start = GPT2LMHeadModel.from_pretrained(tiny_lm)
    assert not torch.equal(reference.transformer.h[0].attn.c_attn.weight, start.transformer.h[0].attn.c_attn.weight)

    calls = {"n": 0}
    forward = GPT2LMHeadModel.forward

    def dies_at_step_7(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(GPT2LMHeadModel, "forward", dies_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        finetune_lm(tiny_lm, tmp_path / "killed", triples, **settings)
    monkeypatch.setattr(GPT2LMHeadModel, "forward", forward)
    assert (tmp_path / "killed" / "checkpoint.pt").exists() and not (tmp_path / "killed" / "config.json").exists()
    resumed = finetune_lm(tiny_lm, tmp_path / "killed", triples, **settings)
    assert resumed["loss"] == pytest.approx(whole["loss"], abs=1e-6)
    again = GPT2LMHeadModel.from_pretrained(tmp_path / "killed")
    for (name, a), b in zip(reference.state_dict().items(), again.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)
    assert not (tmp_path / "killed" / "checkpoint.pt").exists()
    with pytest.raises(UserError, match="holds a finished model"):
        finetune_lm(tiny_lm, tmp_path / "whole", triples, **settings)


def test_rehearsal_adds_the_loss_of_its_texts_on_every_token(tiny_lm, tmp_path):
    model = GPT2LMHeadModel.from_pretrained(tiny_lm, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0).eval()
    model.save_pretrained(tmp_path / "start")  # without dropout, so the step's loss can be recomputed
    tokenizer = world_tokenizer()
    tokenizer.save_pretrained(tmp_path / "start")
    triples, asked = world_triples(4), []

    def rehearsal(step: int) -> list[str]:
        asked.append(step)
        return [internet_document(step)]

    record = finetune_lm(tmp_path / "start", tmp_path / "tuned", triples, batch_size=4, rehearsal=rehearsal,
                         device="cpu", progress=False)  # fmt: skip
    assert asked == [0] and record["steps"] == 1 and record["rehearsal"] == repr(rehearsal)
    # the oracle: the triples' completion loss plus the next-token cross-entropy of the whole text
    ids = tokenizer(internet_document(0)).input_ids + [tokenizer.eos_token_id]
    with torch.no_grad():
        text = torch.nn.functional.cross_entropy(model(torch.tensor([ids])).logits[0, :-1], torch.tensor(ids[1:]))
        rows = [tokenize_triple(tokenizer, t, 256) for t in triples]
        completions = model(**pad_batch(rows, tokenizer.pad_token_id, "cpu")).loss
    assert record["loss"] == pytest.approx((text + completions).item(), rel=1e-5)


def test_the_world_rehearses_documents_pretraining_did_not_read():
    rehearsal = Rehearsal(2, first=100, remarks=2)
    assert rehearsal(3) == [internet_document(106, remarks=2), internet_document(107, remarks=2)]
    assert rehearsal(0) != Rehearsal(2, first=100)(0)  # the remarks of the internet pretraining read


def test_lora_fine_tuning_merges_into_a_plain_model(tiny_lm, tmp_path):
    triples = world_triples(8)
    record = finetune_lm(
        tiny_lm,
        tmp_path / "lora",
        triples,
        lora=True,
        lora_rank=4,
        batch_size=4,
        learning_rate=1e-2,
        device="cpu",
        progress=False,
    )
    assert record["lora_rank"] == 4 and record["steps"] == 2
    checkpoint_free = sorted(p.name for p in (tmp_path / "lora").iterdir())
    assert "adapter_config.json" not in checkpoint_free and "model.safetensors" in checkpoint_free
    merged = GPT2LMHeadModel.from_pretrained(tmp_path / "lora")
    base = GPT2LMHeadModel.from_pretrained(tiny_lm)
    assert not torch.equal(merged.transformer.h[0].attn.c_attn.weight, base.transformer.h[0].attn.c_attn.weight)
    torch.testing.assert_close(merged.transformer.wte.weight, base.transformer.wte.weight)  # not a LoRA target


def test_a_model_that_is_not_a_causal_lm_is_refused(tmp_path, capsys):
    from transformers import CLIPTextConfig, CLIPTextModel

    CLIPTextModel(
        CLIPTextConfig(hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2)
    ).save_pretrained(tmp_path / "clip")
    capsys.readouterr()  # the save's progress bar
    code, _, err = run(capsys, "data", "finetune-lm", "--model", tmp_path / "clip", "-o", tmp_path / "out")
    assert_one_line_error(code, err, "not a causal language model")
    assert not (tmp_path / "out").exists()
    code, _, err = run(capsys, "data", "write-edits", tmp_path / "nope.txt", "-o", tmp_path / "e.jsonl")
    assert_one_line_error(code, err, "no captions file")


# --- sampling -----------------------------------------------------------------------------------


def test_frequency_penalty_is_openais():
    scores = torch.zeros(2, 5)
    ids = torch.tensor([[4, 4, 1, 1, 1, 3], [4, 4, 0, 0, 2, 2]])  # two prompt tokens, then the completion
    out = FrequencyPenalty(2, frequency=0.5, presence=0.25)(ids, scores)
    expected = torch.tensor([[0, -1.75, 0, -0.75, 0], [-1.25, 0, -1.25, 0, 0]])
    torch.testing.assert_close(out, expected)


def test_local_generation_is_seeded_and_stops_at_end(tiny_lm):
    from instruct_pix2pix.small_world.language import DEFAULT_LANGUAGE_MODEL

    captions = held_out_captions(3)  # not the training triples' captions, which the model has memorised
    backend = LocalLM(DEFAULT_LANGUAGE_MODEL, device="cpu", seed=3)  # a trained model reaches the stop
    first = backend.complete(captions)
    assert len(first) == 3 and first == backend.complete(captions)
    assert first != backend.complete(captions, attempt=1)
    assert all(not isinstance(t, Rejection) and "\n%%\n" in t and "\nEND" not in t for t in first)
    # 12 tokens of a random model do not reach the stop: rejections, not completions
    untrained = LocalLM(tiny_lm, Sampling(max_tokens=12), device="cpu")
    assert untrained.complete(captions) == ["truncated"] * 3
    long_caption = " ".join(["a small red circle at the top"] * 60)  # past the 256-token context
    results = untrained.complete([long_caption, captions[0]])
    assert results == ["too long", "truncated"] and all(isinstance(r, Rejection) for r in results)


# --- writing edits ------------------------------------------------------------------------------


class Scripted:
    """A backend whose completions are given per caption and attempt; counts its calls."""

    sampling = Sampling()

    def __init__(self, answers, die_on_call=None):
        self.answers, self.calls, self.die_on_call = answers, 0, die_on_call

    def describe(self):
        return {"backend": "scripted", "model": "script"}

    def complete(self, captions, attempt=0):
        self.calls += 1
        if self.calls == self.die_on_call:
            raise KeyboardInterrupt
        return [self.answers(c, attempt) for c in captions]


def good(caption, attempt):
    return f"make it blue\n%%\n{caption} in blue"


def test_a_caption_given_twice_is_written_once(tmp_path):
    captions = [Caption("first"), Caption("second"), Caption("first")]
    stats = write_edits(captions, tmp_path / "e.jsonl", Scripted(good), progress=False)
    rows = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert [r["input"] for r in rows] == ["first", "second"] and stats["kept"] == stats["captions"] == 2


def test_rejections_are_retried_counted_and_saved(tmp_path):
    def answers(caption, attempt):
        if caption == "never":
            return "no separator here"
        if caption == "second" and attempt == 0:
            return f"nothing\n%%\n{caption}."
        return good(caption, attempt)

    captions = [Caption("first", "http://1"), Caption("second"), Caption("never")]
    stats = write_edits(captions, tmp_path / "e.jsonl", Scripted(answers), retries=2, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert [r["input"] for r in rows] == ["first", "second"] and rows[0]["url"] == "http://1" and "url" not in rows[1]
    assert rows[0]["output"] == "first in blue" and rows[0]["model"] == "script" and rows[0]["sampling"]["top_p"] == 1
    assert stats["kept"] == 2 and stats["skipped"] == 1
    assert stats["rejections"] == {"malformed": 3, "unchanged": 1}
    assert json.loads((tmp_path / "e.jsonl.stats.json").read_text())["rejections"] == stats["rejections"]
    rejected = [json.loads(line) for line in (tmp_path / "e.jsonl.rejected.jsonl").read_text().splitlines()]
    assert sum(r["reason"] == "skipped" for r in rejected) == 1


def test_a_killed_run_goes_on_with_no_duplicate_and_no_loss(tmp_path):
    captions = [Caption(f"caption {i}") for i in range(10)]
    with pytest.raises(KeyboardInterrupt):
        write_edits(captions, tmp_path / "e.jsonl", Scripted(good, die_on_call=3), batch_size=3, progress=False)
    with open(tmp_path / "e.jsonl", "a") as stream:
        stream.write('{"input": "caption 6", "ed')  # a kill in the middle of a line
    assert len((tmp_path / "e.jsonl").read_text().splitlines()) == 7
    backend = Scripted(good)
    stats = write_edits(captions, tmp_path / "e.jsonl", backend, batch_size=3, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert sorted(r["input"] for r in rows) == sorted(c.text for c in captions)
    assert backend.calls == 2 and stats["kept"] == 10 and stats["this_run"]["captions"] == 4


def test_moderation_by_blocklist(tmp_path):
    (tmp_path / "block.txt").write_text("Dragon\n")
    blocklist = Blocklist(tmp_path / "block.txt")
    assert blocklist.flagged(["a dragon flies", "dragonfly", "A DRAGON"]) == [True, False, True]

    def answers(caption, attempt):
        return "add a dragon\n%%\nx with a dragon" if caption == "sky" else good(caption, attempt)

    captions = [Caption("a dragon"), Caption("sky"), Caption("sea")]
    stats = write_edits(
        captions, tmp_path / "e.jsonl", Scripted(answers), retries=1, moderation=blocklist, progress=False
    )
    assert stats["kept"] == 1 and stats["skipped"] == 2
    assert stats["rejections"] == {"moderated output": 2, "moderated input": 1}


# --- an OpenAI-compatible server --------------------------------------------------------------------


def test_server_completions_chat_retries_and_moderation(tmp_path, capsys):
    (tmp_path / "c.txt").write_text("a cat\na dog\nMALFORMED fox\nUNCHANGED owl\n")
    with Stub() as stub:
        stub.statuses.extend([429, 500])  # the first request is refused twice, then answered
        code, out, err = run(
            capsys,
            "data",
            "write-edits",
            tmp_path / "c.txt",
            "-o",
            tmp_path / "e.jsonl",
            "--api-base",
            stub.url,
            "--api-model",
            "ft-davinci",
            "--retries",
            "1",
            "--no-progress",
        )
        assert code == 0, err
        rows = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
        assert sorted(r["input"] for r in rows) == ["a cat", "a dog"]
        assert {r["output"] for r in rows} == {"a cat in blue", "a dog in blue"}
        completions = [r["body"] for r in stub.requests if r["path"].endswith("/completions")]
        assert len(completions) == 4 + 2 + 2  # 4 captions, 2 refused tries, the 2 rejected ones once more
        body = completions[-1]
        assert body["prompt"].endswith("\n##\n") and body["stop"] == ["\nEND"] and body["max_tokens"] == 256
        assert (body["temperature"], body["top_p"], body["frequency_penalty"]) == (0.7, 1.0, 0.1)
        assert "2 of 4 captions kept, 2 skipped" in out and "malformed 2" in out and "unchanged 2" in out

        stub.requests.clear()
        stub.flag.add("dog")
        code, out, err = run(
            capsys,
            "data",
            "write-edits",
            tmp_path / "c.txt",
            "-o",
            tmp_path / "chat.jsonl",
            "--api-base",
            stub.url,
            "--api-model",
            "llama",
            "--chat",
            "--few-shot",
            "3",
            "--moderation",
            "api",
            "--retries",
            "0",
            "--no-progress",
        )
        assert code == 0, err
        chats = [r["body"] for r in stub.requests if r["path"].endswith("/chat/completions")]
        assert sorted(c["messages"][-1]["content"] for c in chats) == ["MALFORMED fox", "UNCHANGED owl", "a cat"]
        assert all(len(c["messages"]) == 1 + 2 * 3 + 1 for c in chats)  # the task, 3 examples, the caption
        assert [json.loads(line)["input"] for line in (tmp_path / "chat.jsonl").read_text().splitlines()] == ["a cat"]
        assert any(r["path"].endswith("/moderations") for r in stub.requests)


@pytest.mark.parametrize(
    ("statuses", "words"),
    [([401], "refused the API key (401)"), ([404], "no model 'm'"), ([500] * 8, "answered 500 after retries")],
)
def test_server_errors_are_one_line_and_write_nothing(tmp_path, capsys, monkeypatch, statuses, words):
    import openai

    monkeypatch.setattr(openai._base_client, "INITIAL_RETRY_DELAY", 0.001, raising=False)
    monkeypatch.setattr(openai._base_client, "MAX_RETRY_DELAY", 0.001, raising=False)
    (tmp_path / "c.txt").write_text("a cat\n")
    with Stub() as stub:
        stub.statuses.extend(statuses)
        code, _, err = run(
            capsys,
            "data",
            "write-edits",
            tmp_path / "c.txt",
            "-o",
            tmp_path / "e.jsonl",
            "--api-base",
            stub.url,
            "--api-model",
            "m",
            "--no-progress",
        )
    assert_one_line_error(code, err, words)
    assert not (tmp_path / "e.jsonl").exists()


def test_an_unreachable_server_is_one_line(tmp_path, capsys):
    import socket

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    (tmp_path / "c.txt").write_text("a cat\n")
    backend = OpenAIServer(f"http://127.0.0.1:{port}/v1", "m", max_retries=0)
    with pytest.raises(UserError, match="cannot reach"):
        write_edits(read_captions(tmp_path / "c.txt"), tmp_path / "e.jsonl", backend, progress=False)
    assert not (tmp_path / "e.jsonl").exists()


def test_write_edits_with_a_local_model_and_partitions(tiny_lm, tmp_path, capsys):
    (tmp_path / "c.txt").write_text("".join(t["input"] + "\n" for t in world_triples(9)))
    for part in range(2):
        code, out, err = run(
            capsys,
            "data",
            "write-edits",
            tmp_path / "c.txt",
            "-o",
            tmp_path / f"p{part}.jsonl",
            "--lm",
            tiny_lm,
            "--num-partitions",
            2,
            "--partition",
            part,
            "--max-tokens",
            8,
            "--retries",
            0,
            "--device",
            "cpu",
            "--no-progress",
        )
        assert code == 0, err
    stats = [json.loads((tmp_path / f"p{part}.jsonl.stats.json").read_text()) for part in range(2)]
    assert stats[0]["captions"] + stats[1]["captions"] == 9 and stats[0]["model"] == str(tiny_lm)
    (tmp_path / "other.jsonl").write_text(json.dumps({"input": "x", "edit": "y", "output": "z", "model": "m2"}) + "\n")
    code, _, err = run(
        capsys,
        "data",
        "write-edits",
        tmp_path / "c.txt",
        "-o",
        tmp_path / "other.jsonl",
        "--lm",
        tiny_lm,
        "--device",
        "cpu",
        "--no-progress",
    )
    assert_one_line_error(code, err, "written with the model 'm2'")


def test_the_gpt2_tokenizer_keeps_text_exactly():
    tokenizer = build_gpt2_tokenizer(["make", "snowy", "##"])
    text = "make it snowy\n##\n  Make IT snowy!\nEND"
    ids = tokenizer(text).input_ids
    assert tokenizer.decode(ids) == text
    assert tokenizer.convert_ids_to_tokens(tokenizer(" make snowy").input_ids) == ["Ġmake", "Ġsnowy"]
    assert chat_messages("x")[-1] == {"role": "user", "content": "x"} and len(lm_dataset_rows([], "chat")) == 0


# --- what a review found --------------------------------------------------------------------------


def test_resume_forgets_the_rejections_of_captions_it_had_not_finished(tmp_path):
    def answers(caption, attempt):
        return "no separator" if attempt == 0 else good(caption, attempt)

    captions = [Caption(f"c{i}") for i in range(4)]
    rejected = tmp_path / "e.jsonl.rejected.jsonl"
    # a kill between the two appends: the batch's rejections are on disk, its kept lines are not
    rejected.write_text(
        "".join(json.dumps({"input": f"c{i}", "reason": "malformed", "text": ""}) + "\n" for i in (0, 1))
    )
    stats = write_edits(captions, tmp_path / "e.jsonl", Scripted(answers), retries=1, progress=False)
    assert stats["kept"] == 4 and stats["rejections"] == {"malformed": 4}  # not 6: the two stale ones are gone
    assert len(rejected.read_text().splitlines()) == 4
    # a rerun over a smaller share of the same file counts only that share
    again = write_edits(captions[:2], tmp_path / "e.jsonl", Scripted(answers), retries=1, progress=False)
    assert again["kept"] == 2 and again["rejections"] == {"malformed": 2} and again["this_run"]["captions"] == 0


def test_final_rejections_are_not_retried_and_outputs_go_into_new_folders(tmp_path):
    from instruct_pix2pix.data.triples import Rejection

    backend = Scripted(lambda caption, attempt: Rejection("too long") if caption == "long" else good(caption, 0))
    stats = write_edits(
        [Caption("long"), Caption("short")], tmp_path / "new" / "deeper" / "e.jsonl", backend, retries=3, progress=False
    )
    assert stats["rejections"] == {"too long": 1} and stats["skipped"] == 1 and backend.calls == 1
    assert (tmp_path / "new" / "deeper" / "e.jsonl").exists()


def test_filters_reject_multi_line_parts_and_captions_keep_rows_without_urls(tmp_path):
    assert parse_completion("make it blue\n%%\na cat\na second caption", "a dog") == MALFORMED
    assert parse_completion("%%\nmake it blue\n%%\na cat", "a dog") == MALFORMED
    (tmp_path / "c.csv").write_text("\ufeffTEXT,URL\na cat,\na dog,\na fox,u1\n", encoding="utf-8")
    assert read_captions(tmp_path / "c.csv") == [Caption("a cat"), Caption("a dog"), Caption("a fox", "u1")]
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        read_captions(tmp_path / "latin1.txt")
    (tmp_path / "bad.parquet").write_bytes(b"not a parquet file at all")
    with pytest.raises(UserError, match="cannot read"):
        read_captions(tmp_path / "bad.parquet")
    with pytest.raises(UserError, match="no captions file"):
        read_captions("runs/missing/captions")  # a missing relative path is not taken for a hub id


def test_finetune_never_deletes_other_files(tiny_lm, tmp_path, capsys):
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "notes.txt").write_text("mine")
    code, _, err = run(
        capsys, "data", "finetune-lm", "--model", tiny_lm, "-o", tmp_path / "keep", "--triples", tmp_path / "none.jsonl"
    )
    assert_one_line_error(code, err, "no triples file")
    with pytest.raises(UserError, match="other files"):
        finetune_lm(tiny_lm, tmp_path / "keep", world_triples(4), device="cpu", progress=False)
    assert (tmp_path / "keep" / "notes.txt").read_text() == "mine"


def test_cli_partitions_together_cover_every_caption_once(tmp_path, capsys):
    (tmp_path / "c.txt").write_text("".join(f"caption {i}\n" for i in range(11)))
    with Stub() as stub:
        for part in range(3):
            code, _, err = run(
                capsys,
                "data",
                "write-edits",
                tmp_path / "c.txt",
                "-o",
                tmp_path / f"p{part}.jsonl",
                "--api-base",
                stub.url,
                "--api-model",
                "m",
                "--num-partitions",
                3,
                "--partition",
                part,
                "--no-progress",
            )
            assert code == 0, err
    parts = [
        [json.loads(line)["input"] for line in (tmp_path / f"p{k}.jsonl").read_text().splitlines()] for k in range(3)
    ]
    assert sorted(x for p in parts for x in p) == sorted(f"caption {i}" for i in range(11))
    assert all(set(a).isdisjoint(b) for i, a in enumerate(parts) for b in parts[i + 1 :])
    code, _, err = run(capsys, "data", "write-edits", tmp_path / "c.txt", "-o", tmp_path / "x.jsonl", "--chat")
    assert_one_line_error(code, err, "--chat and --concurrency are for a server")


def test_written_edits_read_back_as_triples_and_caption_means_input(tmp_path):
    write_edits([Caption("a cat", "u")], tmp_path / "e.jsonl", Scripted(good), progress=False)
    assert read_triples(tmp_path / "e.jsonl") == [{"input": "a cat", "edit": "make it blue", "output": "a cat in blue"}]
    (tmp_path / "released.jsonl").write_text(json.dumps({"caption": "a dog", "edit": "e", "output": "o"}) + "\n")
    assert read_triples(tmp_path / "released.jsonl") == [{"input": "a dog", "edit": "e", "output": "o"}]
    (tmp_path / "broken.jsonl").write_text('{"caption": "a dog"}\n')
    with pytest.raises(UserError, match="line 1"):
        read_triples(tmp_path / "broken.jsonl")
