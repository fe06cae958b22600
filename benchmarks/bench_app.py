"""The web app's cost and its queue: an edit through the app (gradio_client over HTTP on 127.0.0.1)
against the same edit through `Editor.edit` in the same process, and a burst of concurrent requests.

- per edit: the shipped default model, a held-out scene, 20 steps, one variant, the same seed on
  both sides; rounds alternate who goes first; medians and the ratio (app / Editor.edit);
- under load: `--burst` clients at once against the app with `--max-queue` places and one edit at
  a time: how many finish, how many are told the app is busy, and the edits per second.

    .venv/bin/python benchmarks/bench_app.py            (figures: benchmarks/README.md)
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import threading
import time

import torch
from bench_edit import machine
from gradio_client import Client, handle_file

from instruct_pix2pix import Editor
from instruct_pix2pix.app import FIXED, EditApp, launch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--burst", type=int, default=12)
    parser.add_argument("--max-queue", type=int, default=4)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    editor = Editor.from_pretrained(device="cpu")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = launch(editor, port=port, block=False, max_queue=args.max_queue, concurrency=1)
    url = f"http://127.0.0.1:{port}/"
    client = Client(url, verbose=False)
    path, instruction, *_ = EditApp(editor).load_example()
    settings = editor.default_settings.replace(num_inference_steps=args.steps, guidance_scale=7.5,
                                               image_guidance_scale=1.5)  # fmt: skip
    request = (handle_file(path), instruction, args.steps, 7.5, 1.5, FIXED, FIXED, 0, FIXED, settings.scheduler, 1)

    def through_app():
        client.predict(*request, api_name="/edit")

    def direct():
        editor.edit(path, instruction, settings, seed=0, show_progress=False)

    through_app(), direct()  # warm-up
    times: dict[str, list[float]] = {"app": [], "editor": []}
    for run in range(args.runs):
        order = [("app", through_app), ("editor", direct)]
        for name, function in order if run % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in times.items()}
    ratio = median["app"] / median["editor"]

    outcomes: list[str] = []

    def one():
        try:
            Client(url, verbose=False).predict(*request, api_name="/edit")
            outcomes.append("done")
        except Exception as error:  # noqa: BLE001
            outcomes.append("busy" if "queue is full" in str(error).lower() else f"error: {error}")

    threads = [threading.Thread(target=one) for _ in range(args.burst)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    burst_seconds = time.perf_counter() - start
    done, busy = outcomes.count("done"), outcomes.count("busy")
    demo.close()

    report = {
        "machine": machine(torch.device("cpu")), "steps": args.steps, "runs": args.runs, "seconds": times,
        "median": median, "ratio": ratio, "burst": args.burst, "max_queue": args.max_queue, "done": done,
        "busy": busy, "other": len(outcomes) - done - busy, "burst_seconds": burst_seconds,
        "edits_per_second": done / burst_seconds,
    }  # fmt: skip
    print(f"\n| one {args.steps}-step edit (median of {args.runs}) | seconds |")
    print("|---|---|")
    print(f"| through the app (gradio_client, HTTP) | {median['app']:.3f} |")
    print(f"| Editor.edit | {median['editor']:.3f} |")
    print(f"| **app / Editor.edit** | **{ratio:.2f}x** |")
    print(f"\nburst of {args.burst} at once, queue of {args.max_queue}, one edit at a time: {done} done, "
          f"{busy} told busy, {report['other']} other, in {burst_seconds:.1f} s "
          f"({report['edits_per_second']:.2f} edits/s)")  # fmt: skip
    if args.json:
        with open(args.json, "w") as stream:
            json.dump(report, stream, indent=2)


if __name__ == "__main__":
    main()
