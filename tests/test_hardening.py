"""Bad input and interrupted work, as a new user meets them: one line, a non-zero exit, no partial file,
nothing finished lost, outputs in the formats users expect."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import scene
from PIL import Image

from instruct_pix2pix.cli import main
from instruct_pix2pix.images import read_metadata
from instruct_pix2pix.loading import load_model, save_single_file

FAST = ["--steps", "2", "--seed", "1"]


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, *words) -> None:
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("\r")]
    lines = [line for line in lines if "ip2p:" in line]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("ip2p: error: "), err
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize(
    "args, words",
    [
        (["--seed", "99999999999999999999999"], ["seed must be a whole number from 0 to"]),
        (["--seed", "-1"], ["seed must be a whole number"]),
        (["--resolution", "100000"], ["working size would be", "--max-work-pixels"]),
        (["--resolution", "32"], ["--resolution", "at least 64"]),
        (["--text-cfg", "nan"], ["guidance_scale (--text-cfg) must be a finite number"]),
    ],
)
def test_bad_settings_are_one_line_and_write_nothing(capsys, tiny_model_dir, photo, tmp_path, args, words):
    out = tmp_path / "out.png"
    code, _, err = run(capsys, "edit", photo, "make it snowy", "-o", out, "--model", tiny_model_dir, *FAST[:2], *args)
    one_line_error(code, err, *words)
    assert not out.exists()


def test_extreme_shapes_are_warned(capsys, tiny_model_dir, tmp_path):
    thin = tmp_path / "thin.png"
    scene(320, 16).save(thin)
    out = tmp_path / "o.png"
    code, _, err = run(capsys, "edit", thin, "x", "-o", out, "--model", tiny_model_dir, *FAST, "--keep-size")
    assert code == 0 and "320x16, more than 4:1" in err


def test_outputs_are_checked_before_any_work(capsys, tiny_model_dir, photo, tmp_path):
    folder = tmp_path / "a-folder.png"
    folder.mkdir()
    (folder / "photo.png").mkdir()  # where the one result would go
    code, _, err = run(capsys, "edit", photo, "x", "-o", folder, "--model", tiny_model_dir, *FAST)
    one_line_error(code, err, "is a folder")
    blocked = tmp_path / "file"
    blocked.write_text("")
    code, _, err = run(capsys, "edit", photo, "x", "-o", blocked / "out.png", "--model", tiny_model_dir, *FAST)
    one_line_error(code, err, "is a file, not a folder")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        code, _, err = run(capsys, "edit", photo, "x", "-o", locked / "out.png", "--model", tiny_model_dir, *FAST)
        one_line_error(code, err, "not writable")


def test_existing_outputs_are_kept_unless_asked(capsys, tiny_model_dir, photo, tmp_path):
    out = tmp_path / "out.png"
    out.write_bytes(b"mine")
    code, _, err = run(capsys, "edit", photo, "x", "-o", out, "--model", tiny_model_dir, *FAST)
    one_line_error(code, err, "exists already", "--overwrite", "--skip-existing")
    assert out.read_bytes() == b"mine"
    assert run(capsys, "edit", photo, "x", "-o", out, "--model", tiny_model_dir, *FAST, "--skip-existing")[0] == 0
    assert out.read_bytes() == b"mine"
    assert run(capsys, "edit", photo, "x", "-o", out, "--model", tiny_model_dir, *FAST, "--overwrite")[0] == 0
    assert Image.open(out).size == (64, 64)


def test_unreadable_inputs_stop_before_the_model_or_are_skipped(capsys, tiny_model_dir, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    scene(64, 64).save(inputs / "a.png")
    (inputs / "b.png").write_text("not an image")
    out = tmp_path / "out"
    code, _, err = run(capsys, "edit", inputs, "x", "-o", out, "--model", tiny_model_dir, *FAST)
    one_line_error(code, err, "b.png", "--skip-bad")
    assert not out.exists()
    code, _, err = run(capsys, "edit", inputs, "x", "-o", out, "--model", tiny_model_dir, *FAST, "--skip-bad")
    assert code == 1 and "ip2p: skipped:" in err and "b.png" in err
    assert sorted(p.name for p in out.iterdir()) == ["a_1.png"]


def test_an_interrupted_folder_edit_keeps_its_finished_images(tiny_model_dir, tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for k in range(12):
        scene(64, 64, k).save(inputs / f"{k:02d}.png")
    command = [sys.executable, "-m", "instruct_pix2pix.cli", "edit", str(inputs), "make it snowy", "-o", str(out)]
    command += ["--model", str(tiny_model_dir), "--steps", "3", "--seed", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(out.glob("*.png"))) < 2:
        time.sleep(0.05)
    process.kill()
    process.wait()
    finished = sorted(p.name for p in out.glob("*.png"))
    assert 2 <= len(finished) < 12, finished
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no half-written file
    assert all(Image.open(out / name).size == (64, 64) for name in finished)
    before = {name: (out / name).read_bytes() for name in finished}
    subprocess.run(command + ["--skip-existing"], check=True, capture_output=True)
    assert sorted(p.name for p in out.glob("*.png")) == [f"{k:02d}_1.png" for k in range(12)]
    assert all((out / name).read_bytes() == data for name, data in before.items())  # the rest only


@pytest.mark.parametrize("suffix", [".jpg", ".webp"])
def test_jpeg_and_webp_carry_the_settings(capsys, tiny_model_dir, photo, tmp_path, suffix):
    out = tmp_path / f"out{suffix}"
    assert run(capsys, "edit", photo, "make it snowy", "-o", out, "--model", tiny_model_dir, *FAST)[0] == 0
    meta = read_metadata(out)
    assert "Steps: 2, Sampler: Euler a, CFG scale: 7.5, Image CFG scale: 1.5, Seed: 1" in meta["parameters"]
    assert shlex.split(meta["ip2p-command"])[:2] == ["ip2p", "edit"]
    comment = Image.open(out).getexif().get_ifd(0x8769)[0x9286]  # EXIF UserComment, where A1111 looks
    assert comment.startswith(b"UNICODE\0") and b"S\0t\0e\0p\0s" in comment


def test_png_parameters_are_automatic1111s_text(capsys, tiny_model_dir, photo, tmp_path):
    out = tmp_path / "out.png"
    code = run(capsys, "edit", photo, "make it snowy", "-o", out, "--model", tiny_model_dir, *FAST,
               "--negative-prompt", "blurry")[0]  # fmt: skip
    assert code == 0
    first, negative, fields = read_metadata(out)["parameters"].splitlines()
    assert first == "make it snowy" and negative == "Negative prompt: blurry"
    assert fields.startswith("Steps: 2, Sampler: Euler a, CFG scale: 7.5, Image CFG scale: 1.5, Seed: 1, Size: 64x64")


def test_a_variant_of_a_batch_is_remade_with_its_batch(capsys, tiny_model_dir, photo, tmp_path):
    out = tmp_path / "out"
    assert run(capsys, "edit", photo, "make it snowy", "-o", out, "--model", tiny_model_dir, *FAST,
               "--num-images", "3")[0] == 0  # fmt: skip
    second = out / "photo_2.png"
    words = shlex.split(read_metadata(second)["ip2p-command"])
    assert words[words.index("--num-images") + 1] == "3" and words[words.index("--seed") + 1] == "1"
    words[words.index("OUT/")] = str(tmp_path / "again")
    assert main(words[1:]) == 0
    assert np.array_equal(np.asarray(Image.open(second)), np.asarray(Image.open(tmp_path / "again" / "photo_2.png")))


def test_a_model_carries_its_sampling_defaults(capsys, photo, tmp_path):
    out = tmp_path / "out.png"
    assert run(capsys, "edit", photo, "make it night", "-o", out, "--seed", "0")[0] == 0  # the default model
    assert "Steps: 20," in read_metadata(out)["parameters"]


def test_whitespace_instruction_warns(capsys, tiny_model_dir, photo, tmp_path):
    code, _, err = run(capsys, "edit", photo, "   ", "-o", tmp_path / "o.png", "--model", tiny_model_dir, *FAST)
    assert code == 0 and "only spaces: the input is returned unchanged" in err


# --- models and exports -----------------------------------------------------------------------------


def test_damaged_weights_are_one_line(capsys, tiny_model_dir, photo, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "text_encoder" / "model.safetensors").write_bytes(os.urandom(256))
    code, _, err = run(capsys, "edit", photo, "x", "-o", tmp_path / "o.png", "--model", broken, *FAST)
    one_line_error(code, err, "text_encoder")
    code, _, err = run(capsys, "info", "--model", broken)
    one_line_error(code, err, "text_encoder/model.safetensors")


def test_export_checks_its_output_first(capsys, tiny_model_dir, tmp_path):
    code, _, err = run(capsys, "export", "--model", tiny_model_dir, "-o", tmp_path)
    one_line_error(code, err, "is a folder")
    code, _, err = run(capsys, "export", "--model", tiny_model_dir, "-o", tmp_path / "model.ckpt")
    one_line_error(code, err, ".safetensors")


def test_exported_file_describes_itself_and_has_the_usual_permissions(capsys, tiny_model_dir, tmp_path):
    path = tmp_path / "tiny.safetensors"
    assert run(capsys, "export", "--model", tiny_model_dir, "-o", path)[0] == 0
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    code, out, _ = run(capsys, "info", "--model", path)
    assert code == 0 and "blocks 32/64" in out and "single-file checkpoint" in out  # its own widths, not SD's


def test_a_bare_single_file_says_what_it_needs(capsys, tiny_model_dir, photo, tmp_path):
    model = load_model(tiny_model_dir)
    path = tmp_path / "bare.safetensors"
    save_single_file(model.unet, model.vae, model.text_encoder, path)  # no configs inside, as other tools write
    code, _, err = run(capsys, "edit", photo, "x", "-o", tmp_path / "o.png", "--model", path, *FAST)
    one_line_error(code, err, "no tokenizer", "--config")  # its tiny vocabulary is not CLIP's
    code, _, err = run(capsys, "info", "--model", path)
    one_line_error(code, err, "no tokenizer", "--config")


def test_latents_are_not_clipped_unless_the_config_asks():
    from instruct_pix2pix.settings import make_scheduler

    assert make_scheduler("ddim", {}).config.clip_sample is False  # diffusers' own default would be True
    assert make_scheduler("ddim", {"clip_sample": True}).config.clip_sample is True
    assert make_scheduler("unipc", {}).config.thresholding is False


@pytest.mark.parametrize(
    "args, words",
    [
        (["edit", "missing.png", "x", "-o", "o.png"], "no such file"),
        (["edit", "missing.png", "x", "-o", "o.gif"], ".webp"),
        (["edit", "missing.png", "x", "-o", "o.png", "--seed", "-3"], "seed"),
        (["export", "-o", "o.ckpt"], ".safetensors"),
        (["info", "--model", "./no/such/model"], "no such model"),
        (["world", "demo", "--model", "./nowhere"], "no such model"),
        (["train", "missing.yaml"], "no such config file"),
        (["train", "missing.yaml", "learning_rate=-1"], "no such config file"),
    ],
)
def test_input_checks_answer_before_the_heavy_imports(tmp_path, args, words):
    """`ip2p edit missing.png ...` answers at once: torch is not even imported before the checks."""
    script = (
        "import sys; from instruct_pix2pix.cli import main; code = main(sys.argv[1:]); "
        "print(code, 'torch' in sys.modules, 'diffusers' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=tmp_path, capture_output=True, text=True)
    assert done.stdout.split() == ["2", "False", "False"], done.stdout + done.stderr
    assert words in done.stderr


def test_a_full_disk_stops_with_one_line_and_keeps_what_was_written(capsys, tiny_model_dir, tmp_path, monkeypatch):
    import errno

    from instruct_pix2pix import atomic

    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for k in range(3):
        scene(64, 64, k).save(inputs / f"{k}.png")
    real_fsync, written = os.fsync, []

    def fills_up(descriptor):
        if len(written) == 1:  # the second image finds the disk full
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(descriptor)
        real_fsync(descriptor)

    monkeypatch.setattr(atomic.os, "fsync", fills_up)
    code, _, err = run(capsys, "edit", inputs, "x", "-o", out, "--model", tiny_model_dir, *FAST)
    one_line_error(code, err, "No space left on device")
    assert sorted(p.name for p in out.iterdir()) == ["0_1.png"]  # the finished one, and no temporary file


def test_skip_existing_with_everything_done_loads_nothing(capsys, tmp_path):
    source, out = tmp_path / "in.png", tmp_path / "out.png"
    scene(64, 64).save(source)
    out.write_bytes(b"done")
    missing = tmp_path / "no-model"
    code, _, err = run(capsys, "edit", source, "x", "-o", out, "--model", missing, "--skip-existing")
    assert code == 2 and "no such model" in err  # the model is still checked, as every argument is
    code, _, err = run(capsys, "edit", source, "x", "-o", out, "--skip-existing")
    assert code == 0 and "nothing to edit" in err and out.read_bytes() == b"done"
