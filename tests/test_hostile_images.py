"""Big and hostile image files: a pixel limit before decoding, one-line errors for broken files, sound mode conversion.

Every fixture is made in tmp_path at test time; the decompression bomb is a small PNG whose header claims a huge size.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from test_cli import invoke, one_error_line

from diffusers_cli.data import DataError, load_dataset
from diffusers_cli.engine.metrics import MetricsError
from diffusers_cli.engine.metrics.features import load_image as inception_image
from diffusers_cli.support.errors import UsageError
from diffusers_cli.parts.evaluation import image_side
from diffusers_cli.support.image_files import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    convert_image,
    decode_image,
    image_size,
    max_pixels,
    open_image,
)

IMPUTE = ["--model", "builtin:shapes", "--method", "repaint", "--steps", "5"]  # 16x16 RGB: seconds on a CPU
OVER = "is 14000x14000 (196,000,000 pixels), over the limit of 64,000,000; shrink it, or raise DIFFUSE_MAX_PIXELS"


@pytest.fixture(autouse=True)
def _default_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DIFFUSE_MAX_PIXELS", raising=False)


# ---- fixtures, written at test time ------------------------------------------------------------------------------


def bomb(path: Path, width: int = 14000, height: int = 14000, mode: str = "RGB") -> Path:
    """A 16x16 PNG whose IHDR claims width x height (CRC fixed), as a decompression bomb's header does."""
    Image.new(mode, (16, 16), 9).save(path)
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # the CRC covers the chunk type and data
    path.write_bytes(bytes(data))
    return path


def truncated(path: Path) -> Path:
    """A 64x64 noise PNG cut in half: the header reads, the pixel data ends early."""
    Image.effect_noise((64, 64), 50).convert("RGB").save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def grey16(path: Path) -> Path:
    """A 16x16 16-bit greyscale PNG; row 0 holds 0, 257, 32768, 32896, 65535 and the rest is 65535."""
    arr = np.full((16, 16), 65535, np.uint16)
    arr[0, :5] = [0, 257, 32768, 32896, 65535]
    Image.fromarray(arr).save(path)
    return path


def palette(path: Path) -> Path:
    """A 16x16 palette PNG: index 0 red and fully transparent (left half), index 1 opaque green (right half)."""
    img = Image.new("P", (16, 16), 1)
    img.putpalette([255, 0, 0, 0, 255, 0])
    img.paste(0, (0, 0, 8, 16))
    img.save(path, transparency=0)
    return path


def rgba(path: Path) -> Path:
    """A 16x16 RGBA PNG: half-transparent (200, 100, 50) on the left, opaque (1, 2, 3) on the right, one clear pixel."""
    arr = np.zeros((16, 16, 4), np.uint8)
    arr[:, :8] = (200, 100, 50, 128)
    arr[:, 8:] = (1, 2, 3, 255)
    arr[0, 0] = (10, 20, 30, 0)
    Image.fromarray(arr, "RGBA").save(path)
    return path


def cmyk(path: Path) -> Path:
    """A 16x16 CMYK JPEG of pure red (C=0, M=255, Y=255, K=0)."""
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)
    return path


def right_half_mask(path: Path) -> Path:
    arr = np.zeros((16, 16), np.uint8)
    arr[:, 8:] = 255  # white = fill: the left half is known
    Image.fromarray(arr, "L").save(path)
    return path


# ---- the pixel limit -----------------------------------------------------------------------------------------------


def test_a_bomb_header_is_refused_before_decoding_with_the_size_and_the_fix(tmp_path: Path) -> None:
    big = bomb(tmp_path / "big.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning would be a stray stderr line
        with pytest.raises(ImageError) as err:
            open_image(big, "L", what="mask")
        assert str(err.value) == f"mask {big} {OVER}"
        with pytest.raises(ImageError, match="dataset image .* is 14000x14000"):
            image_size(big, what="dataset image")
    assert Image.MAX_IMAGE_PIXELS == int(1024 * 1024 * 1024 // 4 // 3)  # PIL's own setting, put back
    assert DEFAULT_MAX_PIXELS == 64_000_000 and max_pixels() == DEFAULT_MAX_PIXELS


def test_a_raised_limit_is_ours_alone_pils_bomb_check_neither_warns_nor_raises(tmp_path: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # 196M pixels is over twice PIL's default MAX_IMAGE_PIXELS, where PIL raises DecompressionBombError itself.
    big = bomb(tmp_path / "big.png", mode="L")
    monkeypatch.setenv("DIFFUSE_MAX_PIXELS", "200,000,000")
    assert max_pixels() == 200_000_000
    assert image_size(big, what="image") == (14000, 14000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageError) as err:  # the header passes; the pixel data is a 16x16 image's
            decode_image(big, what="image")
    assert str(err.value).startswith(f"image {big} is not a readable image (truncated or corrupt): image file is truncated")


def test_diffuse_max_pixels_values(monkeypatch: pytest.MonkeyPatch) -> None:
    for raw, value in (("1000", 1000), (" 100_000_000 ", 100_000_000), ("", DEFAULT_MAX_PIXELS)):
        monkeypatch.setenv("DIFFUSE_MAX_PIXELS", raw)
        assert max_pixels() == value
    for raw in ("lots", "0", "-5", "1.5e8"):
        monkeypatch.setenv("DIFFUSE_MAX_PIXELS", raw)
        with pytest.raises(UsageError) as err:
            max_pixels()
        assert str(err.value) == ("DIFFUSE_MAX_PIXELS must be a whole number of pixels above 0 "
                                  f"(e.g. DIFFUSE_MAX_PIXELS=100000000), got {raw!r}")
        assert not isinstance(err.value, ImageError)  # the setting is wrong, not the file: no file hint is added


# ---- broken files --------------------------------------------------------------------------------------------------


def test_a_truncated_png_is_refused_even_if_another_library_allowed_truncated_images(tmp_path: Path,
                                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    cut = truncated(tmp_path / "cut.png")
    assert image_size(cut, what="image") == (64, 64)  # the header alone is fine
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageError) as err:
        open_image(cut, "RGB", what="image")
    assert str(err.value) == f"image {cut} is not a readable image (truncated or corrupt): image file is truncated"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # put back as it was found


def test_not_an_image_missing_and_folder(tmp_path: Path) -> None:
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png at all")
    with pytest.raises(ImageError) as err:
        open_image(junk, "RGB", what="image")
    assert str(err.value) == f"image {junk} is not a readable image (truncated or corrupt): not in any image format PIL knows"
    with pytest.raises(ImageError, match=f"^cannot read mask {tmp_path / 'nope.png'}: No such file or directory$"):
        open_image(tmp_path / "nope.png", "L", what="mask")
    with pytest.raises(ImageError, match=f"^cannot read image {tmp_path}: Is a directory$"):
        open_image(tmp_path, "RGB", what="image")


def test_the_evaluation_and_dataset_readers_keep_their_error_types(tmp_path: Path) -> None:
    big, cut = bomb(tmp_path / "big.png"), truncated(tmp_path / "cut.png")
    with pytest.raises(MetricsError) as err:
        image_side(big)
    assert str(err.value) == f"reference image {big} {OVER}"
    with pytest.raises(MetricsError) as err:
        inception_image(cut)
    assert str(err.value) == f"image {cut} is not a readable image (truncated or corrupt): image file is truncated"
    with pytest.raises(MetricsError) as err:
        inception_image(big)
    assert str(err.value) == f"image {big} {OVER}"
    folder = tmp_path / "data"
    folder.mkdir()
    bomb(folder / "big.png")
    with pytest.raises(DataError) as err:  # headers are read when the folder loads: before any training
        load_dataset(folder, 8)
    assert str(err.value) == f"dataset image {folder / 'big.png'} {OVER}; remove or replace the file"


# ---- conversions ---------------------------------------------------------------------------------------------------


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    path = grey16(tmp_path / "g16.png")
    assert decode_image(path, what="image").mode == "I;16"
    grey = np.asarray(open_image(path, "L", what="image"))
    assert grey[0, :5].tolist() == [0, 1, 128, 128, 255] and (grey[1:] == 255).all()
    assert np.asarray(Image.open(path).convert("L"))[0, :5].tolist() == [0, 255, 255, 255, 255]  # what PIL alone does
    rgb = np.asarray(open_image(path, "RGB", what="image"))
    assert rgb.shape == (16, 16, 3) and rgb[0, :5].tolist() == [[v] * 3 for v in (0, 1, 128, 128, 255)]
    values = np.array([[0, 257, 32768, 32896, 65535]])
    for img in (Image.fromarray(values.astype(">u2")), Image.fromarray(values.astype(np.int32)),
                Image.fromarray(values.astype(np.float32))):
        assert img.mode in ("I;16B", "I", "F")
        assert np.asarray(convert_image(img, "L", what="image", path=path)).tolist() == [[0, 1, 128, 128, 255]]
    out_of_range = Image.fromarray(np.array([[-100, 70000]], np.int32))
    assert np.asarray(convert_image(out_of_range, "L", what="image", path=path)).tolist() == [[0, 255]]  # clipped


def test_alpha_is_composited_over_white_and_a_masks_over_black(tmp_path: Path) -> None:
    rgb = np.asarray(open_image(rgba(tmp_path / "a.png"), "RGB", what="image"))
    assert rgb[0, 0].tolist() == [255, 255, 255]          # fully transparent: the white under it
    assert rgb[5, 3].tolist() == [227, 177, 152]          # alpha 128: c a / 255 + 255 (255 - a) / 255, rounded
    assert rgb[5, 12].tolist() == [1, 2, 3]               # opaque: untouched
    la = Image.fromarray(np.array([[[200, 128], [7, 255], [99, 0]]], np.uint8), "LA")
    assert np.asarray(convert_image(la, "L", what="mask", path=tmp_path)).tolist() == [[100, 7, 0]]  # over black
    assert np.asarray(convert_image(la, "RGB", what="image", path=tmp_path)).tolist() == [[[227] * 3, [7] * 3, [255] * 3]]


def test_palette_with_transparency_and_one_bit(tmp_path: Path) -> None:
    path = palette(tmp_path / "p.png")
    rgb = np.asarray(open_image(path, "RGB", what="image"))
    assert rgb[0, 0].tolist() == [255, 255, 255] and rgb[0, 15].tolist() == [0, 255, 0]  # transparent red over white
    grey = np.asarray(open_image(path, "L", what="image"))
    assert grey[0, 0] == 255 and grey[0, 15] == 150  # luma of pure green: 0.587 x 255
    opaque = Image.new("P", (2, 1), 1)
    opaque.putpalette([255, 0, 0, 0, 0, 255])
    assert np.asarray(convert_image(opaque, "RGB", what="image", path=path)).tolist() == [[[0, 0, 255]] * 2]
    one = Image.fromarray(np.array([[True, False]]))
    assert one.mode == "1" and np.asarray(convert_image(one, "L", what="mask", path=path)).tolist() == [[255, 0]]


def test_cmyk_jpeg_reads_as_rgb(tmp_path: Path) -> None:
    path = cmyk(tmp_path / "c.jpg")
    assert decode_image(path, what="image").mode == "CMYK"
    rgb = np.asarray(open_image(path, "RGB", what="image")).astype(int)
    assert np.abs(rgb - [255, 0, 0]).max() <= 3  # pure red, give or take JPEG
    grey = np.asarray(open_image(path, "L", what="image")).astype(int)
    assert np.abs(grey - 76).max() <= 3  # luma of pure red: 0.299 x 255


def test_an_unconvertible_mode_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"^image x\.tif is a LAB image, which cannot be converted to L .*save it as RGB or greyscale$"):
        convert_image(Image.new("LAB", (2, 2)), "L", what="image", path=Path("x.tif"))


# ---- end to end: `diffuse impute` ----------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["image", "mask"])
@pytest.mark.parametrize("kind", ["bomb", "truncated", "junk"])
def test_impute_refuses_a_hostile_file_with_one_line_and_writes_nothing(kind: str, role: str, tmp_path: Path) -> None:
    hostile = tmp_path / "hostile.png"
    if kind == "bomb":
        bomb(hostile)
        words = f"{role} {hostile} {OVER}"
    elif kind == "truncated":
        truncated(hostile)
        words = f"{role} {hostile} is not a readable image (truncated or corrupt): image file is truncated"
    else:
        hostile.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
        words = f"{role} {hostile} is not a readable image (truncated or corrupt)"
    Image.new("RGB", (16, 16), (200, 10, 10)).save(tmp_path / "img.png")
    mask = right_half_mask(tmp_path / "mask.png")
    image, mask = (hostile, mask) if role == "image" else (tmp_path / "img.png", hostile)
    out = tmp_path / "out.png"
    line = one_error_line(invoke("impute", image, mask, *IMPUTE, "--out", out))
    assert words in line
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == sorted(["hostile.png", "img.png", "mask.png"])


@pytest.mark.parametrize("kind", ["cmyk", "grey16", "palette", "rgba"])
def test_impute_reads_unusual_modes_and_keeps_the_converted_pixels(kind: str, tmp_path: Path) -> None:
    write = {"cmyk": cmyk, "grey16": grey16, "palette": palette, "rgba": rgba}[kind]
    path = write(tmp_path / ("c.jpg" if kind == "cmyk" else f"{kind}.png"))
    expected = np.asarray(open_image(path, "RGB", what="image"))
    mask = right_half_mask(tmp_path / "mask.png")
    res = invoke("impute", path, mask, *IMPUTE, "--out", tmp_path / "o.png", "--json")
    assert res.exit_code == 0, res.stderr
    out = np.asarray(Image.open(tmp_path / "o.png"))
    assert out.shape == (16, 16, 3) and np.array_equal(out[:, :8], expected[:, :8])  # the known half, converted
    notes = json.loads(res.stdout)["notes"]
    said = {"cmyk": [], "grey16": [f"converted the I;16 image {path.name} to RGB for a 3-channel model"],
            "palette": [f"converted the P image {path.name} to RGB for a 3-channel model (transparent pixels composited over white)"],
            "rgba": [f"converted the RGBA image {path.name} to RGB for a 3-channel model (transparent pixels composited over white)"]}
    assert notes == said[kind]
    if kind == "grey16":
        assert out[0, :5, 0].tolist() == [0, 1, 128, 128, 255]
    if kind == "rgba":
        assert out[0, 0].tolist() == [255, 255, 255] and out[5, 3].tolist() == [227, 177, 152]


def test_a_mask_with_transparency_keeps_its_transparent_pixels(tmp_path: Path) -> None:
    # White strokes on a transparent layer, as a paint program saves them: transparent -> black -> keep.
    arr = np.zeros((16, 16, 4), np.uint8)
    arr[..., :3] = 255
    arr[:, 8:, 3] = 255
    Image.fromarray(arr, "RGBA").save(tmp_path / "mask.png")
    Image.new("RGB", (16, 16), (200, 10, 10)).save(tmp_path / "img.png")
    res = invoke("impute", tmp_path / "img.png", tmp_path / "mask.png", *IMPUTE, "--out", tmp_path / "o.png")
    assert res.exit_code == 0, res.stderr
    out = np.asarray(Image.open(tmp_path / "o.png"))
    assert (out[:, :8] == (200, 10, 10)).all()


def test_impute_follows_diffuse_max_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.new("RGB", (16, 16), 7).save(tmp_path / "img.png")
    mask = right_half_mask(tmp_path / "mask.png")
    out = tmp_path / "o.png"
    monkeypatch.setenv("DIFFUSE_MAX_PIXELS", "100")
    line = one_error_line(invoke("impute", tmp_path / "img.png", mask, *IMPUTE, "--out", out))
    assert line == (f"diffuse: error: image {tmp_path / 'img.png'} is 16x16 (256 pixels), over the limit of 100; "
                    "shrink it, or raise DIFFUSE_MAX_PIXELS")
    monkeypatch.setenv("DIFFUSE_MAX_PIXELS", "lots")
    line = one_error_line(invoke("impute", tmp_path / "img.png", mask, *IMPUTE, "--out", out))
    assert line == ("diffuse: error: DIFFUSE_MAX_PIXELS must be a whole number of pixels above 0 "
                    "(e.g. DIFFUSE_MAX_PIXELS=100000000), got 'lots'")
    assert not out.exists()
    monkeypatch.setenv("DIFFUSE_MAX_PIXELS", "256")  # exactly at the limit is allowed
    assert invoke("impute", tmp_path / "img.png", mask, *IMPUTE, "--out", out).exit_code == 0 and out.exists()


# ---- end to end: `diffuse train` on a folder -----------------------------------------------------------------------


TRAIN = ["--image-size", "8", "--preset", "tiny", "--steps", "1", "--batch-size", "5", "--sample-every", "0",
         "--device", "cpu", "--name", "r"]


def train_error_line(result: object) -> str:
    """Exit 2 and one error line, the last on stderr, with no traceback (progress lines may come before it)."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert [ln for ln in lines if ln.startswith("diffuse: error: ")] == lines[-1:], result.stderr
    assert "Traceback" not in result.stderr
    return lines[-1]


def image_folder(root: Path) -> Path:
    root.mkdir()
    for i in range(4):
        Image.effect_noise((8, 8), 40 + i).convert("RGB").save(root / f"good{i}.png")
    return root


@pytest.mark.parametrize("workers", ["0", "1"])
def test_train_on_a_folder_with_a_truncated_image_names_it(workers: str, tmp_path: Path) -> None:
    data = image_folder(tmp_path / "data")
    truncated(data / "cut.png")
    # Five images and a batch of five: the first step reads every one of them (in a worker process with 1: torch
    # wraps the error there, and the line must still be the original one).
    line = train_error_line(invoke("train", "--dataset", "folder", "--data-dir", data, *TRAIN, "--num-workers", workers,
                                   "--out", tmp_path / "runs"))
    assert line == (f"diffuse: error: dataset image {data / 'cut.png'} is not a readable image (truncated or corrupt): "
                    "image file is truncated; remove or replace the file")
    assert not (tmp_path / "runs" / "r").exists()  # jobs/train.py removes a run that failed before its first checkpoint


def test_train_on_a_folder_with_a_bomb_fails_before_the_run_starts(tmp_path: Path) -> None:
    data = image_folder(tmp_path / "data")
    bomb(data / "big.png")
    line = train_error_line(invoke("train", "--dataset", "folder", "--data-dir", data, *TRAIN, "--out", tmp_path / "runs"))
    assert line == f"diffuse: error: dataset image {data / 'big.png'} {OVER}; remove or replace the file"
    assert not (tmp_path / "runs" / "r").exists()


def test_dataset_items_convert_like_every_other_reader(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    rgba(data / "a.png")
    ds, _ = load_dataset(data, 16)
    x = ((ds[0][0] + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert x[0, 0].tolist() == [255, 255, 255] and x[5, 3].tolist() == [227, 177, 152] and x[5, 12].tolist() == [1, 2, 3]


def test_the_image_reader_stays_torch_free() -> None:
    code = "import sys, diffusers_cli.support.image_files; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
