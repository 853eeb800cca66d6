"""Images as a problem reads them: files Pillow opens, nested lists of pixel values, and idx files (MNIST's format,
Fashion-MNIST's files), each converted to the problem's channels and resized to its size as uint8 arrays (C, H, W),
which the feature cache keeps (the model scales and normalises them, modeling_inputs.py).

Every source goes through the same Pillow conversion and resize, so one image given as a PNG file, as a list of its
pixels or in an idx file gives the same array.
"""
import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# Pillow's modes for a problem's `channels`: grey or RGB.
CHANNEL_MODES = {1: "L", 3: "RGB"}
# Channels an [H][W][C] list of pixels may have: grey, RGB, RGBA (converted to the problem's channels).
LIST_CHANNELS = (1, 3, 4)
PIXEL_MAX = 255
# idx files: two zero bytes, a type code (0x08: unsigned bytes), the number of dimensions, then one big-endian
# 4-byte size per dimension and the values in row-major order. MNIST's images have 3 dimensions, its labels 1.
IDX_UBYTE = 0x08
IDX_HEADER = struct.Struct(">BBBB")
IDX_SIZE = struct.Struct(">I")
GZIP_MAGIC = b"\x1f\x8b"
# Characters of a value quoted in an error message.
SHOWN_CHARS = 60


def shown(value):
    """A value as an error message quotes it: its repr, cut to SHOWN_CHARS."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "..."


def read_idx(path, dimensions):
    """An idx file (gzipped or not, told by its first bytes) of unsigned bytes -> uint8 array of `dimensions` axes;
    ValueError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"idx file not found: {path}")
    data = path.read_bytes()
    if data.startswith(GZIP_MAGIC):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as error:
            raise ValueError(f"{path}: a damaged gzip file ({error})") from None
    header_end = IDX_HEADER.size + IDX_SIZE.size * dimensions
    if len(data) < header_end:
        raise ValueError(f"{path}: {len(data)} bytes, too short for an idx file's header")
    zero1, zero2, code, found = IDX_HEADER.unpack_from(data)
    if (zero1, zero2, code, found) != (0, 0, IDX_UBYTE, dimensions):
        raise ValueError(f"{path}: not an idx file of unsigned bytes with {dimensions} dimension(s) (its first bytes "
                         f"are {data[:IDX_HEADER.size].hex(' ')})")
    shape = [IDX_SIZE.unpack_from(data, IDX_HEADER.size + IDX_SIZE.size * d)[0] for d in range(dimensions)]
    expected = header_end + int(np.prod(shape))
    if len(data) != expected:
        raise ValueError(f"{path}: {len(data)} bytes, but its header's shape {shape} needs {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header_end).reshape(shape)


def pixel_array(value, where):
    """A nested list [H][W] or [H][W][C] of 0-255 integers -> uint8 array; ValueError naming `where` otherwise."""
    problem = f"{where}: image {shown(value)} is not a [H][W] or [H][W][C] list of 0-{PIXEL_MAX} integers"
    try:
        array = np.asarray(value)
    except ValueError:  # a ragged list
        raise ValueError(problem) from None
    if array.dtype.kind not in "iu" or array.ndim not in (2, 3) or 0 in array.shape or \
            (array.ndim == 3 and array.shape[2] not in LIST_CHANNELS) or array.min() < 0 or array.max() > PIXEL_MAX:
        raise ValueError(problem)
    return array.astype(np.uint8).squeeze(2) if array.ndim == 3 and array.shape[2] == 1 else array.astype(np.uint8)


def open_image(path, where):
    """A Pillow image of the file, fully decoded (a truncated file fails here); ValueError naming `where`."""
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except FileNotFoundError:
        raise ValueError(f"{where}: image {path} not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{where}: image {path} cannot be read ({reason})") from None


def image_array(value, spec, where):
    """An image -> uint8 (channels, H, W) at the problem's size: `value` a file path (str or Path), a nested list of
    pixels, or a uint8 array (H, W) or (H, W, C). Converted with Pillow to grey (L) or RGB, resized bilinearly when
    its size differs. `spec`: modalities.ImageInput; `where` names the data file and line in errors."""
    if isinstance(value, np.ndarray):
        image = Image.fromarray(value)
    elif isinstance(value, list):
        image = Image.fromarray(pixel_array(value, where))
    else:
        image = open_image(value, where)
    image = image.convert(CHANNEL_MODES[spec.channels])
    height, width = spec.size
    if image.size != (width, height):  # Pillow's sizes are (width, height)
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)  # (C, H, W)


def files_key(paths):
    """A digest of the files' paths, sizes and modification times: part of a feature cache key, so that a replaced
    image or .npy file is read again (its contents are not hashed: that would read every image on every run)."""
    digest = hashlib.sha256()
    for path in paths:
        stat = Path(path).stat()
        digest.update(f"{path}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
