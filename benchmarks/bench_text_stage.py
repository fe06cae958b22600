"""The text stage's throughput: batched local generation against one caption at a time, and the API
backend with many requests in flight against one, both in the same run.

1. Local: the shipped small-world language model (`--lm` for another) writes triples for held-out
   captions through `LocalLM.complete`, in batches of --batch-size against batches of 1, the same
   captions, sampling settings and seeds; windows alternate and the table gives medians.
2. API: `OpenAIServer` against the test suite's OpenAI-compatible stub on 127.0.0.1, which answers
   each request after a fixed --delay; --concurrency requests in flight against 1.

    .venv/bin/python benchmarks/bench_text_stage.py            (figures: benchmarks/README.md)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the stub server lives with the tests

from bench_edit import machine  # noqa: E402
from openai_stub import Stub  # noqa: E402

from instruct_pix2pix.data.edit_text import OpenAIServer  # noqa: E402
from instruct_pix2pix.data.language_model import LocalLM  # noqa: E402
from instruct_pix2pix.small_world.language import DEFAULT_LANGUAGE_MODEL, held_out_captions  # noqa: E402


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lm", default=str(DEFAULT_LANGUAGE_MODEL))
    parser.add_argument("--captions", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--delay", type=float, default=0.05, help="the stub server's answer time, seconds")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    captions = held_out_captions(args.captions)
    local = LocalLM(args.lm, device="cpu")
    local.complete(captions[:2])  # warm-up

    def batched():
        for start in range(0, len(captions), args.batch_size):
            local.complete(captions[start : start + args.batch_size])

    def one_at_a_time():
        for caption in captions:
            local.complete([caption])

    times = {"batched": [], "one": []}
    for round_ in range(args.rounds):
        order = [("batched", batched), ("one", one_at_a_time)]
        for name, function in order if round_ % 2 == 0 else order[::-1]:
            times[name].append(timed(function))
    local_rates = {name: len(captions) / statistics.median(values) for name, values in times.items()}

    api_times = {args.concurrency: [], 1: []}
    with Stub(delay=args.delay) as stub:
        servers = {n: OpenAIServer(stub.url, "stub", concurrency=n) for n in api_times}
        servers[1].complete(["warm-up"])
        for round_ in range(args.rounds):
            for n in api_times if round_ % 2 == 0 else list(api_times)[::-1]:
                api_times[n].append(timed(lambda n=n: servers[n].complete(captions[: args.requests] * 1)))
    requests = min(args.requests, len(captions))
    api_rates = {n: requests / statistics.median(values) for n, values in api_times.items()}

    result = {
        "machine": machine(torch.device("cpu")),
        "threads": torch.get_num_threads(),
        "local": {
            "captions": len(captions),
            "batch_size": args.batch_size,
            "triples_per_second": local_rates,
            "ratio": local_rates["batched"] / local_rates["one"],
        },
        "api": {
            "requests": requests,
            "delay": args.delay,
            "triples_per_second": api_rates,
            "ratio": api_rates[args.concurrency] / api_rates[1],
        },
    }
    print(
        f"local LM, {len(captions)} held-out captions: batch {args.batch_size} "
        f"{local_rates['batched']:.1f} triples/s, one at a time {local_rates['one']:.1f} triples/s, "
        f"ratio {result['local']['ratio']:.1f}x"
    )
    print(
        f"API stub ({args.delay * 1000:.0f} ms an answer), {requests} requests: concurrency {args.concurrency} "
        f"{api_rates[args.concurrency]:.1f}/s, 1 {api_rates[1]:.1f}/s, ratio {result['api']['ratio']:.1f}x"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
