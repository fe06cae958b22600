"""The web app on 127.0.0.1 with the shipped model: its HTTP API through gradio_client, its handlers,
bad input, compound edits, and the bounded queue under concurrent requests."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from PIL import Image

from instruct_pix2pix.images import read_metadata
from instruct_pix2pix.settings import EditSettings

gr = pytest.importorskip("gradio")
from conftest import serve_app  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from instruct_pix2pix.app import FIXED, RANDOMIZE, EditApp, in_the_page  # noqa: E402

STEPS = 4


@pytest.fixture(scope="module")
def editor(shipped_editor):
    return shipped_editor


@pytest.fixture(scope="module")
def server(editor):
    yield from serve_app(editor, max_queue=2, concurrency=1)


@pytest.fixture(scope="module")
def client(server):
    return Client(server, verbose=False)


def edit_args(path, instruction, seed=3, variants=1, steps=STEPS, **modes):
    return (handle_file(str(path)), instruction, steps, 7.5, 1.5, modes.get("text", FIXED), modes.get("image", FIXED),
            seed, modes.get("seed_mode", FIXED), "euler_ancestral", variants)  # fmt: skip


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=int)


def test_an_edit_through_the_api_is_the_editors_with_its_metadata(client, editor):
    path, instruction, _ = client.predict(api_name="/load_example")
    gallery, seed, text, image, files, status, _ = client.predict(*edit_args(path, instruction, variants=2),
                                                                  api_name="/edit")  # fmt: skip
    assert (seed, text, image) == (3, 7.5, 1.5) and len(gallery) == len(files) == 2 and "seeds 3 to 4" in status
    settings = editor.default_settings.replace(num_inference_steps=STEPS, guidance_scale=7.5, image_guidance_scale=1.5)
    ours = editor.edit(Image.open(path), instruction, settings, seed=3, num_images=2, show_progress=False)
    for item, file, expected in zip(gallery, files, ours.images):
        assert np.array_equal(pixels(item["image"]), np.asarray(expected, dtype=int))
        assert np.array_equal(pixels(file), pixels(item["image"]))
    metadata = read_metadata(files[1])
    assert "--seed 3 --num-images 2" in metadata["ip2p-command"] and instruction in metadata["ip2p-command"]
    assert '"seed": 4' in metadata["instruct-pix2pix"]


def test_randomized_settings_are_drawn_in_the_references_ranges_and_shown(client):
    path, instruction, _ = client.predict(api_name="/load_example")
    _, seed, text, image, *_ = client.predict(
        *edit_args(path, instruction, steps=1, text=RANDOMIZE, image=RANDOMIZE, seed_mode=RANDOMIZE), api_name="/edit"
    )
    assert 6.0 <= text <= 9.0 and 1.2 <= image <= 1.8 and 0 <= seed < 2**32


def test_bad_input_is_one_line_and_the_app_goes_on(client, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(AppError, match="not an image|cannot|image") as caught:
        client.predict(*edit_args(text, "make it red"), api_name="/edit")
    assert "\n" not in str(caught.value).strip() and "Traceback" not in str(caught.value)
    path, _, _ = client.predict(api_name="/load_example")
    gallery, *_, status, _ = client.predict(*edit_args(path, ""), api_name="/edit")  # empty: the input back
    assert "unchanged" in status
    assert np.array_equal(pixels(gallery[0]["image"]), pixels(path))


def test_handlers_answer_in_one_line(editor, tmp_path):
    app = EditApp(editor, max_pixels=100, work_dir=tmp_path)
    big = tmp_path / "big.png"
    Image.new("RGB", (64, 64)).save(big)
    handle = in_the_page(app.edit)
    cases = [(None, "give an input image"), (str(big), "pixels")]
    for path, words in cases:
        with pytest.raises(gr.Error, match=words) as caught:
            handle(path, "make it red", 2, 7.5, 1.5, FIXED, FIXED, 0, FIXED, "euler_ancestral", 1)
        assert "\n" not in caught.value.message
    broken = EditApp(editor, work_dir=tmp_path)
    broken.editor = type("Broken", (), {"edit": lambda *a, **k: 1 / 0})()
    with pytest.raises(gr.Error, match="the model failed: division by zero"):
        in_the_page(broken.edit)(str(big), "x", 2, 7.5, 1.5, FIXED, FIXED, 0, FIXED, "euler_ancestral", 1)


def test_unknown_words_are_named_in_a_warning(editor, tmp_path):
    app = EditApp(editor, work_dir=tmp_path)
    path, *_ = app.load_example()
    shown = []
    original, gr.Warning = gr.Warning, lambda message, *a, **k: shown.append(message)
    try:
        in_the_page(app.edit)(path, "make the zebra purple", 1, 7.5, 1.5, FIXED, FIXED, 0, FIXED, "euler_ancestral", 1)
    finally:
        gr.Warning = original
    assert any("zebra" in message for message in shown), shown


def test_compound_edits_keep_a_history_that_can_be_restored(editor, tmp_path):
    app = EditApp(editor, work_dir=tmp_path)
    original, instruction, example, _ = app.load_example()
    first = app.edit(original, instruction, 2, 7.5, 1.5, FIXED, FIXED, 5, FIXED, "euler_ancestral", 2, example)
    results = first[6]
    source, history, view, example = app.apply_to_result(results, 1, [], original, instruction, 5)
    assert source == results[1] and [h["image"] for h in history] == [original, results[1]] and example is None
    assert view[1][1] == f"1. {instruction} (seed 6)"
    second = app.edit(source, "make it night", 2, 7.5, 1.5, FIXED, FIXED, 0, FIXED, "euler_ancestral", 1)
    source, history, *_ = app.apply_to_result(second[6], 0, history, source, "make it night", 0)
    assert len(history) == 3
    source, history, view, _ = app.restore(history, 0)
    assert source == original and len(history) == 1
    with pytest.raises(Exception, match="nothing to apply"):
        app.apply_to_result([], 0, [], original, "x", 0)


def test_a_loaded_example_is_judged_against_its_ground_truth(editor, tmp_path):
    app = EditApp(editor, work_dir=tmp_path)
    path, instruction, example, _ = app.load_example()
    *_, status, _, truth = app.edit(path, instruction, 2, 7.5, 1.5, FIXED, FIXED, 0, FIXED, "euler_ancestral", 2,
                                    example)  # fmt: skip
    from instruct_pix2pix.small_world.scenes import render

    assert "against the ground truth:" in status and " of 2 right" in status
    assert np.array_equal(np.asarray(truth), np.asarray(render(example.after)))


def test_reset_gives_the_models_defaults_not_zero_steps(editor, tmp_path):
    defaults = EditApp(editor, work_dir=tmp_path).reset()
    d: EditSettings = editor.default_settings
    assert defaults == (d.num_inference_steps, d.guidance_scale, d.image_guidance_scale, FIXED, FIXED, 0, FIXED,
                        d.scheduler, 1)  # fmt: skip
    assert defaults[0] > 0


def test_under_load_every_request_completes_or_is_told_busy(client, server):
    """Twelve requests at once against a queue of 2 and one edit at a time: each finishes with the
    right image or is refused as busy, none hangs, the app serves afterwards, memory stays flat."""
    import psutil

    path, instruction, _ = client.predict(api_name="/load_example")
    expected, *_ = client.predict(*edit_args(path, instruction, seed=1), api_name="/edit")
    expected = pixels(expected[0]["image"])
    process = psutil.Process()

    def burst(count: int) -> tuple[int, int]:
        outcomes = []

        def one():
            try:
                gallery, *_ = Client(server, verbose=False).predict(*edit_args(path, instruction, seed=1),
                                                                    api_name="/edit")  # fmt: skip
                outcomes.append("done" if np.array_equal(pixels(gallery[0]["image"]), expected) else "wrong")
            except Exception as error:  # noqa: BLE001
                outcomes.append("busy" if "queue is full" in str(error).lower() else f"error: {error}")

        threads = [threading.Thread(target=one) for _ in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in threads), "a request hung"
        assert set(outcomes) <= {"done", "busy"}, outcomes
        return outcomes.count("done"), outcomes.count("busy")

    done, busy = burst(12)
    assert done >= 1 and busy >= 1, (done, busy)
    before = process.memory_info().rss
    for _ in range(2):
        burst(12)
    grown = (process.memory_info().rss - before) / 2**20
    assert grown < 150, f"memory grew by {grown:.0f} MiB over two bursts"
    start = time.perf_counter()
    client.predict(api_name="/reset")
    assert time.perf_counter() - start < 10


def test_edits_at_the_same_time_equal_edits_in_turn(editor, tmp_path):
    """--concurrency 2 on a CPU runs two edits in two threads on one Editor: the same images."""
    app = EditApp(editor, work_dir=tmp_path)
    path, instruction, *_ = app.load_example()

    def run(seed):
        return app.edit(path, instruction, STEPS, 7.5, 1.5, FIXED, FIXED, seed, FIXED, "euler_ancestral", 1)[4][0]

    in_turn = {seed: pixels(run(seed)) for seed in (1, 2)}
    together = {}
    threads = [threading.Thread(target=lambda s=seed: together.update({s: pixels(run(s))})) for seed in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(np.array_equal(together[seed], in_turn[seed]) for seed in (1, 2))
