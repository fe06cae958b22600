"""The web app: a thin Gradio layer over `Editor` (`ip2p app`); no editing logic of its own.

    ip2p app                                   # the shipped small-world model on http://127.0.0.1:7860
    ip2p app --model timbrooks/instruct-pix2pix --device cuda

What the reference's edit_app.py has (an image, an instruction, steps, a seed and both guidance
scales, fixed or randomized, "Load example", "Reset"), and what its users miss: variants in a
gallery (variant i uses seed + i), a scheduler, compound edits ("Apply to result") with a history
whose every step can be restored, a PNG download of each result that carries the same metadata as
the CLI's (the command that makes it again), live progress, and bad input answered in the page
(a one-line message, never a stack trace). With the shipped model, "Load example" draws a held-out
small-world scene and one of its instructions and the ground truth is shown beside the result.

Every handler is also an endpoint of Gradio's HTTP API (`/edit`, `/load_example`, ...), so
`gradio_client.Client("http://127.0.0.1:7860").predict(..., api_name="/edit")` edits from Python.
The queue is bounded (`max_queue`): a request beyond it is told the app is busy, at once.
"""

from __future__ import annotations

import atexit
import functools
import logging
import random
import shutil
import tempfile
import uuid
import warnings
from collections import deque
from pathlib import Path

import gradio as gr

from instruct_pix2pix.errors import EditWarning, UserError
from instruct_pix2pix.images import DEFAULT_MAX_PIXELS, load_image, save_png
from instruct_pix2pix.loading.sources import DEFAULT_MODEL
from instruct_pix2pix.settings import SCHEDULERS, EditSettings

logger = logging.getLogger(__name__)

# The reference's "randomize" ranges (edit_app.py).
TEXT_GUIDANCE_RANGE = (6.0, 9.0)
IMAGE_GUIDANCE_RANGE = (1.2, 1.8)
FIXED, RANDOMIZE = "Fixed", "Randomize"
MAX_VARIANTS = 8
KEPT_REQUESTS = 64  # result files of the last this many edits are kept on disk for downloads
IMAGE_HEIGHT = 320
# The small world's 64x64 scenes, shown large: sharp pixels rather than a blur.
PIXELATED = """
#input-image img, #results img, #history img, #ground-truth img {image-rendering: pixelated}
#input-image img, #ground-truth img {width: 100%; height: 100%; object-fit: contain}
"""
TRACK_TQDM = gr.Progress(track_tqdm=True)  # live progress: Gradio follows the editor's tqdm bar


def input_image(**kwargs) -> gr.Image:
    """gr.Image that hands a file it cannot read to the handler, which says what is wrong in one
    line, instead of failing in Gradio's preprocessing with a traceback in the log. (On the
    instance: a subclass of a Gradio component makes Gradio write a .pyi file beside this one.)"""
    image = gr.Image(**kwargs)
    preprocess = image.preprocess

    def tolerant(payload):
        try:
            return preprocess(payload)
        except Exception:  # noqa: BLE001  (PIL's errors for a file that is not an image)
            return None if payload is None else str(payload.path)

    image.preprocess = tolerant
    return image


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def in_the_page(function):
    """Errors as one line in the page (gr.Error), never a traceback; the editor's warnings as toasts."""

    @functools.wraps(function)
    def handler(*args, **kwargs):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", EditWarning)
            try:
                result = function(*args, **kwargs)
            except gr.Error:
                raise
            except UserError as error:
                raise gr.Error(str(error), print_exception=False) from None
            except Exception as error:  # noqa: BLE001  (a model error: logged in full, one line in the page)
                logger.exception("edit failed")
                raise gr.Error(f"the model failed: {_first_line(error)}", print_exception=False) from None
        for warning in caught:
            if issubclass(warning.category, EditWarning):
                gr.Warning(str(warning.message))
        return result

    return handler


class EditApp:
    """The app's state that outlives a request (the editor, the result files) and its handlers."""

    def __init__(self, editor, *, max_pixels: int = DEFAULT_MAX_PIXELS, work_dir: str | Path | None = None):
        self.editor = editor
        self.max_pixels = max_pixels
        self.defaults: EditSettings = editor.default_settings
        self.is_small_world = Path(str(editor.model.source)) == DEFAULT_MODEL
        if work_dir is None:  # our own temporary folder, removed when the app's process ends
            work_dir = tempfile.mkdtemp(prefix="ip2p-app-")
            atexit.register(shutil.rmtree, work_dir, ignore_errors=True)
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._requests: deque[Path] = deque()

    # --- files ------------------------------------------------------------------------------------

    def request_folder(self) -> Path:
        """A new folder for one request's files; the oldest beyond KEPT_REQUESTS are removed."""
        folder = self.work_dir / uuid.uuid4().hex
        folder.mkdir()
        self._requests.append(folder)
        while len(self._requests) > KEPT_REQUESTS:
            shutil.rmtree(self._requests.popleft(), ignore_errors=True)
        return folder

    # --- handlers ---------------------------------------------------------------------------------

    def load_example(self):
        """A new held-out small-world scene and one of its instructions (-> input, instruction, the
        world's edit, for the ground truth)."""
        from instruct_pix2pix.small_world.edits import sample_edits
        from instruct_pix2pix.small_world.evaluate import EVALUATION_SPLIT
        from instruct_pix2pix.small_world.scenes import render

        edit = next(sample_edits(EVALUATION_SPLIT, 1, start=random.randrange(1_000_000)))
        path = self.request_folder() / "example.png"
        save_png(render(edit.before), path)
        return str(path), edit.instruction, edit, None

    def edit(self, input_path, instruction, steps, text_guidance, image_guidance, text_mode, image_mode, seed,
             seed_mode, scheduler, variants, example=None, progress=TRACK_TQDM):  # fmt: skip
        """Edit the input; returns the gallery, the seed and scales used, the PNGs, a status line, the
        results (for "Apply to result") and, for a loaded example, its ground truth."""
        if not input_path:
            raise UserError("give an input image: upload one, paste one, or press Load example")
        image = load_image(input_path, max_pixels=self.max_pixels)
        variants = int(variants)
        if not 1 <= variants <= MAX_VARIANTS:
            raise UserError(f"variants: from 1 to {MAX_VARIANTS}")
        if seed_mode == RANDOMIZE or seed is None:
            seed = random.randrange(2**32 - variants)
        if text_mode == RANDOMIZE:
            text_guidance = round(random.uniform(*TEXT_GUIDANCE_RANGE), 2)
        if image_mode == RANDOMIZE:
            image_guidance = round(random.uniform(*IMAGE_GUIDANCE_RANGE), 2)
        settings = self.defaults.replace(
            num_inference_steps=int(steps), guidance_scale=float(text_guidance),
            image_guidance_scale=float(image_guidance), scheduler=scheduler,
        )  # fmt: skip
        instruction = instruction or ""
        result = self.editor.edit(image, instruction, settings, seed=int(seed), num_images=variants,
                                  max_pixels=self.max_pixels, show_progress=True)  # fmt: skip
        folder = self.request_folder()
        paths = []
        for edit in result.edits:
            path = folder / f"edit_{edit.seed}.png"
            save_png(edit.image, path, result.metadata(edit, Path(input_path).name))
            paths.append(str(path))
        gallery = [(path, f"seed {edit.seed}") for path, edit in zip(paths, result.edits)]
        status = f"{variants} variant{'s' * (variants > 1)}, seeds {seed} to {seed + variants - 1}"
        if not instruction.strip():
            status = "No instruction: the input is returned unchanged."
        truth = None
        if self.is_small_world and example is not None:
            truth, verdicts = self.ground_truth(image, example, result.images)
            if truth is not None:
                status += f"; against the ground truth: {verdicts}"
        return gallery, seed, text_guidance, image_guidance, paths, status, paths, truth

    @staticmethod
    def ground_truth(image, example, outputs):
        """The loaded example's right answer and how many outputs match it, while the input is still
        that example's scene (Gradio hands back a copy of the file, so the pixels say); else None."""
        import numpy as np

        from instruct_pix2pix.small_world.evaluate import alternatives, score_edit
        from instruct_pix2pix.small_world.scenes import render

        before = render(example.before)
        if not np.array_equal(np.asarray(image), np.asarray(before.convert("RGB"))):
            return None, None
        target = render(example.after)
        others = [render(s) for s in alternatives(example)]
        right = [score_edit(out, before, target, others).success for out in outputs]
        return target, f"{sum(right)} of {len(right)} right"

    def apply_to_result(self, results, selected, history, input_path, instruction, seed):
        """The selected result becomes the input; the step joins the history (-> input, history, gallery)."""
        if not results:
            raise UserError("nothing to apply yet: press Edit first")
        index = min(int(selected or 0), len(results) - 1)
        history = list(history or [])
        if not history:
            history.append({"image": input_path, "caption": "0. the original"})
        history.append(
            {"image": results[index], "caption": f"{len(history)}. {instruction} (seed {int(seed) + index})"}
        )
        return results[index], history, self.history_gallery(history), None

    def restore(self, history, selected):
        """An earlier step of the history becomes the input; the steps after it are dropped."""
        if not history:
            raise UserError("no history yet: edit, then Apply to result")
        index = min(int(selected or 0), len(history) - 1)
        history = list(history[: index + 1])
        return history[index]["image"], history, self.history_gallery(history), None

    @staticmethod
    def history_gallery(history):
        return [(step["image"], step["caption"]) for step in history]

    def reset(self):
        """The settings back to their defaults (the model's own), a fixed seed 0."""
        d = self.defaults
        return d.num_inference_steps, d.guidance_scale, d.image_guidance_scale, FIXED, FIXED, 0, FIXED, d.scheduler, 1

    # --- the page ---------------------------------------------------------------------------------

    def build(self) -> gr.Blocks:
        d = self.defaults
        with gr.Blocks(title="InstructPix2Pix", delete_cache=(600, 3600)) as demo:
            gr.Markdown(f"## InstructPix2Pix\nModel: `{self.editor.model.source}`")
            results, history, selected, history_selected = gr.State([]), gr.State([]), gr.State(0), gr.State(0)
            example = gr.State(None)
            with gr.Row():
                with gr.Column():
                    source = input_image(label="Input", type="filepath", sources=["upload", "clipboard"],
                                        elem_id="input-image", height=IMAGE_HEIGHT)  # fmt: skip
                    instruction = gr.Textbox(label="Instruction", placeholder="make it snowy", elem_id="instruction")
                    with gr.Row():
                        edit_button = gr.Button("Edit", variant="primary", elem_id="edit")
                        example_button = gr.Button("Load example", elem_id="load-example")
                        reset_button = gr.Button("Reset", elem_id="reset")
                with gr.Column():
                    gallery = gr.Gallery(label="Results", columns=2, fit_columns=False, height=IMAGE_HEIGHT,
                                         object_fit="contain", elem_id="results")  # fmt: skip
                    status = gr.Markdown(label="Status", elem_id="status")
                    truth = gr.Image(label="Ground truth", type="pil", interactive=False, visible=self.is_small_world,
                                     height=IMAGE_HEIGHT, elem_id="ground-truth")  # fmt: skip
                    files = gr.File(label="Download (PNG with the settings)", file_count="multiple",
                                    elem_id="downloads")  # fmt: skip
            with gr.Row():
                steps = gr.Slider(1, 150, value=d.num_inference_steps, step=1, label="Steps")
                text_guidance = gr.Slider(0.0, 20.0, value=d.guidance_scale, step=0.05, label="Text guidance")
                text_mode = gr.Radio(
                    [FIXED, RANDOMIZE], value=FIXED, label="Text guidance mode", info="randomize: 6.0-9.0"
                )
                image_guidance = gr.Slider(0.0, 5.0, value=d.image_guidance_scale, step=0.05, label="Image guidance")
                image_mode = gr.Radio(
                    [FIXED, RANDOMIZE], value=FIXED, label="Image guidance mode", info="randomize: 1.2-1.8"
                )
            with gr.Row():
                seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
                seed_mode = gr.Radio([FIXED, RANDOMIZE], value=FIXED, label="Seed mode")
                scheduler = gr.Dropdown(list(SCHEDULERS), value=d.scheduler, label="Scheduler")
                variants = gr.Slider(1, MAX_VARIANTS, value=1, step=1, label="Variants", info="variant i uses seed + i")
            with gr.Row():
                apply_button = gr.Button("Apply to result", elem_id="apply")
                restore_button = gr.Button("Restore the selected step", elem_id="restore")
            history_view = gr.Gallery(label="History (compound edit)", columns=8, fit_columns=False, height=160,
                                      object_fit="contain", elem_id="history")  # fmt: skip

            settings = [steps, text_guidance, image_guidance, text_mode, image_mode, seed, seed_mode, scheduler,
                        variants]  # fmt: skip

            edit_outputs = [gallery, seed, text_guidance, image_guidance, files, status, results, truth]
            for trigger in (edit_button.click, instruction.submit):
                trigger(in_the_page(self.edit), [source, instruction, *settings, example], edit_outputs,
                        api_name="edit" if trigger == edit_button.click else False)  # fmt: skip
            example_button.click(in_the_page(self.load_example), None, [source, instruction, example, truth],
                                 api_name="load_example")  # fmt: skip
            reset_button.click(self.reset, None, settings, api_name="reset")

            def chosen(event: gr.SelectData) -> int:
                return event.index

            gallery.select(chosen, None, selected, api_name=False)
            history_view.select(chosen, None, history_selected, api_name=False)
            apply_inputs = [results, selected, history, source, instruction, seed]
            new_input = [source, history, history_view, example]
            apply_button.click(in_the_page(self.apply_to_result), apply_inputs, new_input, api_name=False)
            restore_button.click(in_the_page(self.restore), [history, history_selected], new_input, api_name=False)
        return demo


def launch(editor, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False, max_queue: int = 4,
           concurrency: int = 1, max_pixels: int = DEFAULT_MAX_PIXELS, block: bool = True):  # fmt: skip
    """Build the app on `editor` and serve it; `block=False` returns the running Blocks (for tests)."""
    app = EditApp(editor, max_pixels=max_pixels)
    demo = app.build()
    demo.queue(max_size=max_queue, default_concurrency_limit=concurrency)
    demo.launch(server_name=host, server_port=port, share=share, show_error=True, prevent_thread_lock=not block,
                quiet=not block, css=PIXELATED if app.is_small_world else None)  # fmt: skip
    return demo
