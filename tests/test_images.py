"""images.py: idx files, and every image source (file, list of pixels, array) through one Pillow conversion and
resize."""
import gzip

import numpy as np
import pytest
from PIL import Image

import images
from conftest import ROOT, require
from modalities import ImageInput

FASHION = ROOT.parent / "shared" / "fashion_mnist"
GREY_28 = ImageInput((28, 28), 7, 1)
FIXTURE_IMAGES = ROOT / "tests" / "fixtures" / "multimodal" / "images"


def fashion_dir():
    require(FASHION.is_dir(), f"needs Fashion-MNIST's idx files in {FASHION}")
    return FASHION


def test_idx_files_of_fashion_mnist():
    train = images.read_idx(fashion_dir() / "train-images-idx3-ubyte.gz", 3)
    labels = images.read_idx(fashion_dir() / "train-labels-idx1-ubyte.gz", 1)
    assert train.shape == (60000, 28, 28) and train.dtype == np.uint8 and labels.shape == (60000,)
    assert np.bincount(labels).tolist() == [6000] * 10
    dev_labels = images.read_idx(fashion_dir() / "t10k-labels-idx1-ubyte.gz", 1)
    assert np.bincount(dev_labels).tolist() == [1000] * 10  # the README's 1,000 per class


def test_idx_reads_plain_and_gzipped_alike(tmp_path):
    packed = (fashion_dir() / "t10k-labels-idx1-ubyte.gz").read_bytes()
    plain = tmp_path / "labels-idx1-ubyte"
    plain.write_bytes(gzip.decompress(packed))
    assert np.array_equal(images.read_idx(plain, 1), images.read_idx(fashion_dir() / "t10k-labels-idx1-ubyte.gz", 1))


@pytest.mark.parametrize("content, message", [
    (b"\x00\x00\x08\x01\x00\x00\x00\x05abc", r"11 bytes, but its header.s shape \[5\] needs 13"),
    (b"\x00\x00\x0d\x01\x00\x00\x00\x01abcd", "not an idx file of unsigned bytes with 1 dimension"),
    (b"\x00\x00", "too short for an idx file's header"),
    (b"\x1f\x8b\x08\x00garbage", "a damaged gzip file"),
])
def test_bad_idx_files_are_named(tmp_path, content, message):
    path = tmp_path / "labels.idx"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as error:
        images.read_idx(path, 1)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_a_png_file_its_pixel_list_and_its_idx_array_give_the_same_array(tmp_path):
    """The same image three ways, through one conversion: the same uint8 (1, 28, 28), equal to the idx pixels."""
    array = images.read_idx(fashion_dir() / "t10k-images-idx3-ubyte.gz", 3)[3]
    png = tmp_path / "three.png"
    Image.fromarray(array).save(png)
    from_file = images.image_array(str(png), GREY_28, "here")
    from_list = images.image_array(array.tolist(), GREY_28, "here")
    from_array = images.image_array(array, GREY_28, "here")
    assert from_file.shape == (1, 28, 28) and from_file.dtype == np.uint8
    assert np.array_equal(from_file, array[None]) and np.array_equal(from_list, from_file)
    assert np.array_equal(from_array, from_file)


def test_conversion_and_bilinear_resize_are_pillows():
    path = FIXTURE_IMAGES / "train_00.png"
    rgb = images.image_array(path, ImageInput((56, 42), 14, 3), "here")
    with Image.open(path) as image:
        expected = np.asarray(image.convert("RGB").resize((42, 56), Image.Resampling.BILINEAR))
    assert rgb.shape == (3, 56, 42) and np.array_equal(rgb, expected.transpose(2, 0, 1))
    assert np.array_equal(rgb[0], rgb[1]) and np.array_equal(rgb[1], rgb[2])  # grey to RGB repeats the channel
    colour = [[[255, 0, 0], [0, 0, 255]], [[0, 255, 0], [10, 20, 30]]]  # [H][W][C]: red, blue, green, dark
    grey = images.image_array(colour, ImageInput((2, 2), 1, 1), "here")
    expected = np.asarray(Image.fromarray(np.array(colour, dtype=np.uint8)).convert("L"))
    assert np.array_equal(grey[0], expected) and grey[0, 0, 0] == 76  # ITU-R 601-2 luma of pure red


@pytest.mark.parametrize("value, message", [
    ([[0, 256]], "is not a \\[H\\]\\[W\\] or \\[H\\]\\[W\\]\\[C\\] list of 0-255 integers"),
    ([[0, 1], [2]], "is not a \\[H\\]\\[W\\]"),
    ([[0.5, 1]], "is not a \\[H\\]\\[W\\]"),
    ([[[1, 2]]], "is not a \\[H\\]\\[W\\]"),  # two channels
    ([1, 2, 3], "is not a \\[H\\]\\[W\\]"),
])
def test_bad_pixel_lists_are_one_line_errors(value, message):
    with pytest.raises(ValueError, match=f"data.jsonl line 4: image .*{message}"):
        images.image_array(value, GREY_28, "data.jsonl line 4")


def test_missing_and_unreadable_image_files(tmp_path):
    with pytest.raises(ValueError, match=r"^d line 2: image .*nothing\.png not found$"):
        images.image_array(str(tmp_path / "nothing.png"), GREY_28, "d line 2")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ValueError, match=r"^d line 3: image .*notes\.png cannot be read \(cannot identify"):
        images.image_array(str(text), GREY_28, "d line 3")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes((FIXTURE_IMAGES / "train_01.png").read_bytes()[:100])
    with pytest.raises(ValueError, match=r"^d line 4: image .*cut\.png cannot be read"):
        images.image_array(str(truncated), GREY_28, "d line 4")


def test_files_key_changes_with_a_replaced_file(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes((FIXTURE_IMAGES / "train_00.png").read_bytes())
    before = images.files_key([str(path)])
    assert images.files_key([str(path)]) == before
    path.write_bytes((FIXTURE_IMAGES / "train_01.png").read_bytes())
    assert images.files_key([str(path)]) != before
