"""Tests for instruct_pix2pix.images. Every test image is built here, in tmp_path."""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile, ImageOps

from instruct_pix2pix import images
from instruct_pix2pix.errors import EditWarning, UserError
from instruct_pix2pix.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    fit_to_multiple,
    list_images,
    load_image,
    read_metadata,
    resize_for_edit,
    save_png,
    to_pil,
    to_rgb,
    to_tensor,
)

WHITE = (255, 255, 255)


def user_error(call, *args, **kwargs) -> str:
    """Run `call`, expect a UserError, and return its message after checking it is one line."""
    with pytest.raises(UserError) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


def png_bytes(width: int, height: int, bit_depth: int, colour_type: int, raw_rows: bytes, *extra: bytes) -> bytes:
    """A PNG built by hand: Pillow cannot write 16-bit RGB, nor lie about its size."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    body = b"".join(chunk(kind, data) for kind, data in extra)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + body
        + chunk(b"IDAT", zlib.compress(raw_rows))
        + chunk(b"IEND", b"")
    )


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def pixels(image: Image.Image) -> list:
    return list(np.asarray(image).reshape(-1, len(image.getbands())).tolist())


# --- load_image: bad input ---------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.png"
    message = user_error(load_image, path)
    assert message.startswith("no such file: ") and str(path) in message


def test_directory(tmp_path):
    message = user_error(load_image, tmp_path)
    assert str(tmp_path) in message and "folder" in message


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    message = user_error(load_image, str(path))
    assert str(path) in message and "0 bytes" in message


def test_text_file_is_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n")
    message = user_error(load_image, path)
    assert str(path) in message and "not an image" in message


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image(tmp_path, monkeypatch, fmt):
    # Even if some other library switched truncated loading on, a cut file must be refused.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    buffer = io.BytesIO()
    Image.fromarray(noise(64, 64)).save(buffer, fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    message = user_error(load_image, path)
    assert str(path) in message and "truncated" in message
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored


def test_over_the_pixel_limit(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (40, 30)).save(path)
    message = user_error(load_image, path, max_pixels=1000)
    assert str(path) in message and "40x30" in message and "1,000" in message and "--max-pixels" in message
    assert load_image(path, max_pixels=1200).size == (40, 30)
    assert load_image(path, max_pixels=None).size == (40, 30)


def test_bomb_header_is_refused_before_decoding(tmp_path, monkeypatch):
    # A 20000x20000 header over one tiny row: Pillow alone would raise its own DecompressionBombError
    # (400M > 2 * 89M pixels) on open; decoding would fail as truncated. Only our check may answer.
    def no_decoding(self):
        raise AssertionError("decoded before the size check")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bytes(20000, 20000, 1, 0, b"\x00" + bytes(2500)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning would fail the test
        message = user_error(load_image, path)
    assert str(path) in message and "20000x20000" in message and f"{DEFAULT_MAX_PIXELS:,}" in message


def test_pillows_own_limit_never_fires(tmp_path, monkeypatch):
    # With Pillow's limit far below ours, a small image must still load, with no warning, and the
    # process-wide setting must be back afterwards.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    path = tmp_path / "small.png"
    Image.new("RGB", (30, 20), (1, 2, 3)).save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(path).getpixel((0, 0)) == (1, 2, 3)
    assert Image.MAX_IMAGE_PIXELS == 100


def test_open_pil_image_over_limit_names_it(tmp_path):
    path = tmp_path / "given.png"
    Image.new("RGB", (40, 30)).save(path)
    with Image.open(path) as opened:
        assert str(path) in user_error(load_image, opened, max_pixels=100)


# --- load_image: what it accepts ---------------------------------------------------------------


def test_returns_loaded_rgb(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(noise(8, 16)).save(path)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (16, 8)
    assert np.array_equal(np.asarray(image), noise(8, 16))


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="counts open files through /proc")
def test_animation_gives_first_frame_and_closes_the_file(tmp_path, monkeypatch):
    # Pillow keeps a multi-frame file open after load() (to seek to later frames); we must not.
    path = tmp_path / "anim.gif"
    first, second = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    first.save(path, save_all=True, append_images=[second], duration=100)
    with Image.open(path) as opened:
        assert opened.n_frames == 2

    real_open, seen = Image.open, []

    def spying_open(*args, **kwargs):
        seen.append(real_open(*args, **kwargs))  # also keeps it from being closed by garbage collection
        return seen[-1]

    monkeypatch.setattr(Image, "open", spying_open)
    before = len(os.listdir("/proc/self/fd"))
    with pytest.warns(EditWarning, match="has 2 frames; only the first is edited"):
        image = load_image(path)
    assert len(seen) == 1 and len(os.listdir("/proc/self/fd")) == before
    assert image.getpixel((4, 4)) == (255, 0, 0)


def test_accepts_an_open_pil_image_and_leaves_it_alone(tmp_path):
    given = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    result = load_image(given)
    assert result.mode == "RGB" and result.getpixel((0, 0)) == WHITE
    assert given.mode == "RGBA" and given.getpixel((0, 0)) == (10, 20, 30, 0)

    rgb = Image.new("RGB", (4, 4))
    assert load_image(rgb) is not rgb  # a copy, so editing the result cannot change the caller's

    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "sideways.jpg"
    Image.new("RGB", (16, 8)).save(path, exif=exif)
    with Image.open(path) as opened:  # lazily opened, not yet decoded, EXIF not applied
        assert load_image(opened).size == (8, 16)


@pytest.mark.parametrize(
    "orientation, corner",
    [
        (6, "top-right"),  # stored sideways, display rotates 90 degrees clockwise
        (8, "bottom-left"),  # display rotates 90 degrees counter-clockwise
    ],
)
def test_exif_orientation_is_applied(tmp_path, orientation, corner):
    stored = Image.new("RGB", (64, 32), (128, 128, 128))
    stored.paste((255, 0, 0), (0, 0, 16, 16))  # mark the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "phone.jpg"
    stored.save(path, exif=exif, quality=95)

    image = load_image(path)
    assert image.size == (32, 64)
    x, y = {"top-right": (32 - 8, 8), "bottom-left": (8, 64 - 8)}[corner]
    red, green, blue = image.getpixel((x, y))
    assert red > 200 and green < 60 and blue < 60
    assert image.getpixel((8, 8) if corner == "top-right" else (32 - 8, 8))[0] < 200


# --- to_rgb and the modes it meets -------------------------------------------------------------


def test_rgba_transparent_becomes_white_opaque_keeps_colour(tmp_path):
    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(10, 20, 30, 0), (10, 20, 30, 255), (0, 0, 0, 128)])
    path = tmp_path / "alpha.png"
    rgba.save(path)
    assert pixels(load_image(path)) == [[255, 255, 255], [10, 20, 30], [127, 127, 127]]


def test_la(tmp_path):
    la = Image.new("LA", (2, 1))
    la.putdata([(100, 0), (100, 255)])
    path = tmp_path / "grey_alpha.png"
    la.save(path)
    assert pixels(load_image(path)) == [[255, 255, 255], [100, 100, 100]]


def test_p_with_transparency(tmp_path):
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255])
    palette.putdata([0, 1])
    palette.info["transparency"] = 1
    for name in ("palette.png", "palette.gif"):
        path = tmp_path / name
        palette.save(path, transparency=1)
        assert pixels(load_image(path)) == [[255, 0, 0], [255, 255, 255]], name


def test_premultiplied_and_palette_alpha_modes():
    pa = Image.new("PA", (2, 1))
    pa.putpalette([0, 200, 0] * 2)
    pa.putdata([(0, 0), (0, 255)])
    assert pixels(to_rgb(pa)) == [[255, 255, 255], [0, 200, 0]]

    rgba = Image.new("RGBA", (2, 1))
    rgba.putdata([(9, 9, 9, 0), (40, 80, 120, 255)])
    assert pixels(to_rgb(rgba.convert("RGBa"))) == [[255, 255, 255], [40, 80, 120]]

    la = Image.merge("La", (Image.new("L", (1, 1), 60), Image.new("L", (1, 1), 255)))
    assert pixels(to_rgb(la)) == [[60, 60, 60]]
    transparent_la = Image.merge("La", (Image.new("L", (1, 1), 0), Image.new("L", (1, 1), 0)))
    assert pixels(to_rgb(transparent_la)) == [[255, 255, 255]]


def test_grey_and_rgb_colour_keys_become_white():
    grey = Image.new("L", (2, 1))
    grey.putdata([7, 50])
    grey.info["transparency"] = 7
    assert pixels(to_rgb(grey)) == [[255, 255, 255], [50, 50, 50]]
    rgb = Image.new("RGB", (2, 1))
    rgb.putdata([(1, 2, 3), (4, 5, 6)])
    rgb.info["transparency"] = (1, 2, 3)
    assert pixels(to_rgb(rgb)) == [[255, 255, 255], [4, 5, 6]]


def test_16_bit_grey_png_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.array([[65535, 32896, 0, 257]], dtype=np.uint16)).save(path)
    with Image.open(path) as opened:
        assert opened.mode == "I;16"
    assert pixels(load_image(path)) == [[255] * 3, [128] * 3, [0] * 3, [1] * 3]


def test_16_bit_grey_png_with_transparent_value(tmp_path):
    rows = b"\x00" + np.array([[65535, 32896]], dtype=">u2").tobytes()
    path = tmp_path / "deep_key.png"
    path.write_bytes(png_bytes(2, 1, 16, 0, rows, (b"tRNS", struct.pack(">H", 65535))))
    assert pixels(load_image(path)) == [[255, 255, 255], [128, 128, 128]]
    path.write_bytes(png_bytes(2, 1, 16, 0, rows, (b"tRNS", struct.pack(">H", 32896))))
    assert pixels(load_image(path)) == [[255, 255, 255], [255, 255, 255]]
    path.write_bytes(
        png_bytes(2, 1, 16, 0, b"\x00" + np.array([[0, 0]], dtype=">u2").tobytes(), (b"tRNS", struct.pack(">H", 1)))
    )
    assert pixels(load_image(path)) == [[0, 0, 0], [0, 0, 0]]


def test_16_bit_rgb_png(tmp_path):
    # Pillow cannot write one, so build it. Pillow 13 reads it as 8-bit RGB by keeping the high byte.
    values = np.array([[[65535, 0, 32896], [0, 65535, 0]]], dtype=">u2")
    path = tmp_path / "deep_rgb.png"
    path.write_bytes(png_bytes(2, 1, 16, 2, b"\x00" + values.tobytes()))
    assert pixels(load_image(path)) == [[255, 0, 128], [0, 255, 0]]


def test_16_bit_grey_plus_alpha_png(tmp_path):
    values = np.array([[[65535, 65535], [32896, 0]]], dtype=">u2")  # (grey, alpha) pairs
    path = tmp_path / "deep_la.png"
    path.write_bytes(png_bytes(2, 1, 16, 4, b"\x00" + values.tobytes()))
    assert pixels(load_image(path)) == [[255, 255, 255], [255, 255, 255]]


@pytest.mark.parametrize("dtype", [np.uint16, ">u2", "<u2", np.int32])
def test_wide_grey_modes_in_memory(dtype):
    image = Image.fromarray(np.array([[65535, 32896, 0]], dtype=dtype))
    assert image.mode in {"I;16", "I;16B", "I;16L", "I"}
    assert pixels(to_rgb(image)) == [[255] * 3, [128] * 3, [0] * 3]


def test_float_modes():
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert unit.mode == "F"
    assert pixels(to_rgb(unit)) == [[0] * 3, [128] * 3, [255] * 3]
    wide = Image.fromarray(np.array([[0.0, 127.6, 255.0, 300.0, -4.0]], dtype=np.float32))
    assert pixels(to_rgb(wide)) == [[0] * 3, [128] * 3, [255] * 3, [255] * 3, [0] * 3]


def test_grey_and_bilevel(tmp_path):
    path = tmp_path / "grey.png"
    Image.new("L", (3, 2), 77).save(path)
    image = load_image(path)
    assert image.mode == "RGB" and pixels(image) == [[77, 77, 77]] * 6
    bilevel = Image.new("1", (2, 1))
    bilevel.putpixel((1, 0), 1)
    assert pixels(to_rgb(bilevel)) == [[0, 0, 0], [255, 255, 255]]


def test_cmyk_jpeg(tmp_path):
    cmyk = Image.new("CMYK", (32, 16), (0, 0, 0, 0))  # no ink: white
    cmyk.paste((255, 0, 0, 0), (0, 0, 16, 16))  # full cyan
    path = tmp_path / "print.jpg"
    cmyk.save(path, quality=95)
    assert b"Adobe" in path.read_bytes()  # Pillow writes Adobe (inverted) CMYK JPEGs
    image = load_image(path)
    assert image.mode == "RGB"
    cyan, white = np.array(image.getpixel((4, 8))), np.array(image.getpixel((28, 8)))
    assert np.abs(cyan - (0, 255, 255)).max() <= 4
    assert np.abs(white - WHITE).max() <= 4


def test_rgb_is_returned_as_is():
    rgb = Image.new("RGB", (2, 2), (5, 6, 7))
    assert to_rgb(rgb) is rgb


# --- resizing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, expected",
    [
        # factor = 512/max; factor = ceil(min*factor/64)*64/min; side = (side*factor)//64*64
        ((640, 480), (512, 384)),  # 0.8 -> short 384 -> 512 x 384
        ((480, 640), (384, 512)),
        ((1000, 300), (640, 192)),  # 0.512 -> short 153.6 rounds up to 192, factor 0.64 -> 640
        ((50, 80), (320, 512)),  # 6.4 -> short 320 exactly -> 320 x 512
        ((768, 512), (576, 384)),  # 2/3 -> short 341.3 rounds up to 384, factor 0.75 -> 576
        ((100, 100), (512, 512)),
        ((49, 49), (448, 448)),  # edit_cli's float rounding: 49 * (512/49) = 511.99... -> 448
    ],
)
def test_resize_for_edit_sizes(size, expected):
    image = Image.fromarray(noise(size[1], size[0]))
    resized = resize_for_edit(image, 512)
    assert resized.size == expected
    assert resized.width % 64 == 0 and resized.height % 64 == 0
    expected_pixels = ImageOps.fit(image, expected, method=Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(resized), np.asarray(expected_pixels))


def test_resize_for_edit_keeps_an_image_of_the_right_size():
    image = Image.fromarray(noise(512, 512))
    assert resize_for_edit(image, 512) is image
    wide = Image.fromarray(noise(384, 512))
    assert resize_for_edit(wide, 512) is wide


def test_resize_for_edit_refuses_bad_input():
    image = Image.new("RGB", (64, 64))
    assert "resolution 32" in user_error(resize_for_edit, image, 32)
    assert "1000x49" in user_error(resize_for_edit, Image.new("RGB", (1000, 49)), 512)  # height -> 0
    assert "0x10" in user_error(resize_for_edit, Image.new("RGB", (0, 10)), 512)


def test_fit_to_multiple():
    image = Image.fromarray(noise(70, 100))
    cropped = fit_to_multiple(image)
    assert cropped.size == (96, 64)
    expected = ImageOps.fit(image, (96, 64), method=Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(cropped), np.asarray(expected))
    assert fit_to_multiple(image, 32).size == (96, 64)
    assert fit_to_multiple(image, 64).size == (64, 64)
    exact = Image.new("RGB", (64, 40))
    assert fit_to_multiple(exact) is exact
    assert "5x100" in user_error(fit_to_multiple, Image.new("RGB", (5, 100)))


# --- tensors, against diffusers ----------------------------------------------------------------


def test_to_tensor_matches_diffusers():
    from diffusers.image_processor import VaeImageProcessor

    batch = [Image.fromarray(noise(24, 40, seed)) for seed in range(3)]
    ours = to_tensor(batch)
    theirs = VaeImageProcessor().preprocess(batch)
    assert ours.dtype == torch.float32 and ours.shape == (3, 3, 24, 40)
    assert torch.equal(ours, theirs)
    assert torch.equal(to_tensor([batch[0]]), VaeImageProcessor().preprocess(batch[0]))
    assert ours.min() >= -1 and ours.max() <= 1


def test_to_tensor_refuses_mixed_sizes():
    message = user_error(to_tensor, [Image.new("RGB", (8, 8)), Image.new("RGB", (16, 8))])
    assert "8x8" in message and "16x8" in message


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_to_pil_matches_diffusers(dtype):
    from diffusers.image_processor import VaeImageProcessor

    generator = torch.Generator().manual_seed(0)
    decoded = (torch.rand(2, 3, 16, 24, generator=generator) * 2.4 - 1.2).to(dtype)  # some out of range
    ours = to_pil(decoded)
    theirs = VaeImageProcessor().postprocess(decoded, output_type="pil")
    assert len(ours) == len(theirs) == 2
    for mine, reference in zip(ours, theirs):
        assert mine.mode == reference.mode == "RGB" and mine.size == (24, 16)
        assert np.array_equal(np.asarray(mine), np.asarray(reference))


def test_tensor_round_trip_is_exact():
    batch = [Image.fromarray(noise(16, 8, seed)) for seed in range(2)]
    for before, after in zip(batch, to_pil(to_tensor(batch))):
        assert np.array_equal(np.asarray(before), np.asarray(after))


# --- folders and saving ------------------------------------------------------------------------


def test_image_extensions():
    assert {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"} == IMAGE_EXTENSIONS
    assert isinstance(IMAGE_EXTENSIONS, frozenset)


def test_list_images(tmp_path):
    for name in ("b.png", "a.JPG", "c.webp", "notes.txt", "._a.jpg", "d.tiff"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    (tmp_path / "sub.png" / "e.png").write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png", "c.webp", "d.tiff"]


def test_list_images_errors(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    assert str(tmp_path) in user_error(list_images, tmp_path)
    message = user_error(list_images, tmp_path / "missing")
    assert str(tmp_path / "missing") in message and "no such folder" in message
    assert str(tmp_path / "readme.txt") in user_error(list_images, tmp_path / "readme.txt")


def test_save_png_round_trips_metadata(tmp_path):
    path = tmp_path / "out" / "nested" / "edit.png"
    image = Image.fromarray(noise(8, 8))
    metadata = {"prompt": "make it snowy ❄", "seed": "42", "model": "timbrooks/instruct-pix2pix"}
    save_png(image, path, metadata)
    assert read_metadata(path) == metadata
    with Image.open(path) as written:
        assert written.format == "PNG" and np.array_equal(np.asarray(written), noise(8, 8))
    assert os.listdir(path.parent) == ["edit.png"]


@pytest.mark.parametrize(
    "failure, expected", [(OSError(28, "No space left on device"), UserError), (RuntimeError("boom"), RuntimeError)]
)
def test_save_png_is_atomic(tmp_path, monkeypatch, failure, expected):
    path = tmp_path / "edit.png"
    Image.new("RGB", (4, 4), (1, 2, 3)).save(path)
    old = path.read_bytes()

    def half_then_fail(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG half a file")
        raise failure

    monkeypatch.setattr(Image.Image, "save", half_then_fail)
    with pytest.raises(expected) as caught:
        save_png(Image.new("RGB", (4, 4)), path, {"a": "b"})
    if expected is UserError:
        assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    assert path.read_bytes() == old  # the old file is untouched
    assert os.listdir(tmp_path) == ["edit.png"]  # and no temporary file is left behind

    fresh = tmp_path / "fresh" / "new.png"
    with pytest.raises(expected):
        save_png(Image.new("RGB", (4, 4)), fresh, {})
    assert os.listdir(fresh.parent) == []


def test_read_metadata_errors(tmp_path):
    message = user_error(read_metadata, tmp_path / "none.png")
    assert message == f"no such file: {tmp_path / 'none.png'}; check the path"
    bmp = tmp_path / "photo.bmp"
    Image.new("RGB", (4, 4)).save(bmp)
    assert str(bmp) in user_error(read_metadata, bmp)
    jpeg = tmp_path / "photo.jpg"  # a JPEG without our XMP packet has no settings, and that is no error
    Image.new("RGB", (4, 4)).save(jpeg)
    assert read_metadata(jpeg) == {}


def test_module_level_names():
    assert DEFAULT_MAX_PIXELS == 64_000_000
    assert images.UserError is UserError


def test_grid_captions_wrap_to_the_cell_width_and_say_when_cut():
    from instruct_pix2pix.images import _wrap

    fits = lambda text: len(text) <= 12  # noqa: E731
    assert _wrap("place a small blue triangle at the bottom right", fits, 5) == [
        "place a", "small blue", "triangle at", "the bottom", "right"]  # fmt: skip
    assert _wrap("place a small blue triangle at the bottom right", fits, 2) == ["place a", "small blu..."]
    assert _wrap("", fits, 3) == [] and _wrap("words", fits, 0) == []
