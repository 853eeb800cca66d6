"""Images and feature vectors beside the text: a problem's settings for them, their values read from a data file, the
token blocks they add to the packed features, and what a batch carries to the model (modeling_inputs.py).

An example's sequence is its text, then its image's patches, then its feature vectors, each block ended by [SEP]:

    [CLS] a red dress [SEP] p1 p2 ... p16 [SEP] v1 v2 v3 [SEP]

(a pair's text is `[CLS] A [SEP] B [SEP]`; without text it is `[CLS] [SEP]`; the blocks are segment B, as everything
after A is in make_batch). Patches and vectors are rows of the packed input_ids holding PLACEHOLDER_ID, marked in
`Features.modality` as IMAGE or VECTORS (every vocabulary token, [CLS] and each [SEP] included, is TEXT); the model
replaces their embeddings with the projected patches and vectors. A row may lack an image or vectors (then its sequence
has no such block), but not every input. The text keeps at most max_seq_length - (patches + 1) - (max_features + 1)
tokens (counting only the blocks the problem has), so that every example fits; word rows (seq_tag) are cut to that
length, and each row of a sentence carries the sentence's image and vectors.
"""
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from images import image_array, shown

# The modality-type embedding's rows (modeling_inputs.InputEmbeddings), one per kind of token.
MODALITIES = ("text", "image", "features")
TEXT, IMAGE, VECTORS = range(len(MODALITIES))
# What input_ids hold at patch and vector tokens: Google BERT's [PAD] (the model replaces their embeddings; masking
# never chooses them).
PLACEHOLDER_ID = 0
# The problems file's defaults: ViT-Base's 224 x 224 images in 16 x 16 patches, RGB; at most 64 feature vectors.
DEFAULT_IMAGE_SIZE = (224, 224)
DEFAULT_PATCH_SIZE = 16
DEFAULT_CHANNELS = 3
CHANNEL_CHOICES = (1, 3)
DEFAULT_MAX_FEATURES = 64


@dataclass(frozen=True)
class ImageInput:
    """A problem's images: resized (bilinear) to `size` (H, W), converted to `channels` (1: grey, Pillow's L; 3: RGB)
    and cut into non-overlapping patch_size x patch_size patches, row by row."""
    size: tuple = DEFAULT_IMAGE_SIZE
    patch_size: int = DEFAULT_PATCH_SIZE
    channels: int = DEFAULT_CHANNELS

    def __post_init__(self):
        height, width = self.size
        if self.channels not in CHANNEL_CHOICES or self.patch_size < 1 or height % self.patch_size or \
                width % self.patch_size or height < 1 or width < 1:
            raise ValueError(f"image size {list(self.size)} must be positive multiples of patch_size {self.patch_size},"
                             f" and channels {self.channels} one of {CHANNEL_CHOICES}")

    @property
    def num_patches(self):
        return (self.size[0] // self.patch_size) * (self.size[1] // self.patch_size)

    @property
    def patch_width(self):
        """Values in a flattened patch: channels x patch_size x patch_size."""
        return self.channels * self.patch_size ** 2


@dataclass(frozen=True)
class VectorInput:
    """A problem's feature vectors: `width` numbers each (the first training row's), at most `max_features` per
    example."""
    width: int
    max_features: int = DEFAULT_MAX_FEATURES


def has_inputs(problem):
    """Whether the problem reads an image or feature vectors beside (or instead of) its text."""
    return problem.image is not None or problem.vectors is not None


def not_exported(problem):
    """Why export_onnx.py's graphs (token inputs only) leave the problem out, or None when it reads text alone."""
    return "its inputs include images or feature vectors, which the graph's token inputs do not carry" \
        if has_inputs(problem) else None


def reserved_tokens(problem):
    """Tokens the blocks after the text may take: patches + [SEP], max_features + [SEP] (those the problem has)."""
    image = 0 if problem.image is None else problem.image.num_patches + 1
    vectors = 0 if problem.vectors is None else problem.vectors.max_features + 1
    return image + vectors


def text_length(problem, max_seq_length, minimum):
    """The most tokens an example's text may keep beside its blocks; ValueError when fewer than `minimum`."""
    budget = max_seq_length - reserved_tokens(problem)
    if budget < minimum:
        parts = [f"{problem.image.num_patches} patches + [SEP]"] if problem.image else []
        parts += [f"max_features {problem.vectors.max_features} + [SEP]"] if problem.vectors else []
        raise ValueError(f"problem {problem.name}: --max_seq_length {max_seq_length} leaves {budget} tokens for the "
                         f"text beside {' and '.join(parts)}; it needs at least {minimum}: raise --max_seq_length, "
                         "or take larger patches or a smaller max_features")
    return budget


# ---------------------------------------------------------------------------------------------- values of a data file

def _json_list(value, what, where):
    try:
        return json.loads(value)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: {what} {shown(value)} is not valid JSON ({error.msg})") from None


def _file(value, root, what, where):
    path = Path(root) / value
    if not path.is_file():
        raise ValueError(f"{where}: {what} {value!r} not found ({path})")
    return str(path)


def read_image_value(value, root, where):
    """A row's image field: None (no image), a nested list of pixels (also as a JSON string), or a file path,
    returned absolute after checking it exists. Decoding waits for the features (image_array)."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.lstrip().startswith("["):
        value = _json_list(value, "image", where)
    if isinstance(value, list):
        return value
    if not isinstance(value, str):
        raise ValueError(f"{where}: image {shown(value)} is neither a file path nor a list of pixel values")
    return _file(value, root, "image", where)


def read_vectors_value(value, root, where):
    """A row's features field: None (none), a list of vectors (also as a JSON string), or a .npy file's path,
    returned absolute after checking it exists. Checked against the problem's width by vector_array."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str) and value.lstrip().startswith("["):
        value = _json_list(value, "features", where)
    if isinstance(value, list):
        return value or None
    if not isinstance(value, str):
        raise ValueError(f"{where}: features {shown(value)} are neither a list of vectors nor a .npy file's path")
    return _file(value, root, "features file", where)


def vector_array(value, where, width=None, max_features=None):
    """A row's feature vectors (a list of lists, or a .npy file's path) -> float32 (n, width); ValueError naming
    `where` and the value for anything else: another width, more than max_features vectors, a value not finite."""
    if isinstance(value, str):
        try:
            array = np.load(value, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise ValueError(f"{where}: features file {value} cannot be read as a .npy array ({error})") from None
        shown_value = value
    else:
        try:
            array = np.asarray(value, dtype=np.float32)
        except (ValueError, TypeError):
            array = None
        shown_value = shown(value)
    if array is None or array.ndim != 2 or 0 in array.shape or array.dtype.kind not in "biuf":
        raise ValueError(f"{where}: features {shown_value} are not a list of vectors of one width ([n][d] numbers)")
    if width is not None and array.shape[1] != width:
        raise ValueError(f"{where}: features {shown_value} are vectors of width {array.shape[1]}, expected {width} "
                         "(the width of the training file's first features)")
    if max_features is not None and array.shape[0] > max_features:
        raise ValueError(f"{where}: features {shown_value} hold {array.shape[0]} vectors, more than max_features "
                         f"{max_features}")
    if not np.isfinite(array).all():
        raise ValueError(f"{where}: features {shown_value} hold a value that is not a finite number")
    return array.astype(np.float32)


def first_width(examples, source):
    """The width of the first feature vectors among a training file's examples (every other row must have it)."""
    for example in examples:
        if example.vectors is not None:
            return vector_array(example.vectors, where_of(source, example)).shape[1]
    raise ValueError(f"{source}: no row has features, so their width is unknown (a problem with \"features\" needs "
                     "them in its training file)")


def where_of(source, example):
    """"<data file> line <n>" of an example read from it (its guid ends with the line number)."""
    return f"{source} line {example.guid.rsplit('-', 1)[1]}"


def referenced_files(examples):
    """The image and .npy files a split's examples name (what a feature cache key must cover besides the data file)."""
    return [value for example in examples for value in (example.image, example.vectors) if isinstance(value, str)]


# ---------------------------------------------------------------------------------------------- packed features

def _spans(starts, lengths):
    """Concatenated ranges [starts[i], starts[i] + lengths[i]) as one int64 array, without a Python loop."""
    lengths = np.asarray(lengths, dtype=np.int64)
    within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(np.asarray(starts, dtype=np.int64), lengths) + within


def with_inputs(problem, examples, features, sep_id, source):
    """Features of the examples' texts -> with each one's image patches and feature vectors after its text (the module
    docstring's layout): input_ids and offsets grown by the blocks, `modality` int8 [total tokens], `images` uint8
    (N, C, H, W) (zeros for a row without one), `vectors` float32 (N, V, width) (V: the most of any row; zero rows
    past each row's own), `patch_size`; word rows' `word_starts` moved with their rows. `examples`: one per row (a
    sentence cut into rows gives each its image and vectors). `source` (the data file) names the file in errors."""
    n = len(examples)
    images = vectors = None
    image_tokens = counts = np.zeros(n, dtype=np.int64)
    if problem.image is not None:
        spec = problem.image
        present = np.array([example.image is not None for example in examples])
        if present.any():
            images = np.zeros((n, spec.channels, *spec.size), dtype=np.uint8)
            for i in np.flatnonzero(present):
                images[i] = image_array(examples[i].image, spec, where_of(source, examples[i]))
            image_tokens = present * (spec.num_patches + 1)
    if problem.vectors is not None:
        spec = problem.vectors
        arrays = [None if example.vectors is None else
                  vector_array(example.vectors, where_of(source, example), spec.width, spec.max_features)
                  for example in examples]
        counts = np.array([0 if array is None else len(array) for array in arrays], dtype=np.int64)
        if counts.any():
            vectors = np.zeros((n, counts.max(), spec.width), dtype=np.float32)
            for i, array in enumerate(arrays):
                if array is not None:
                    vectors[i, :len(array)] = array
    text_lengths = features.lengths.numpy()
    vector_tokens = np.where(counts > 0, counts + 1, 0)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(text_lengths + image_tokens + vector_tokens, out=offsets[1:])
    ids = np.full(offsets[-1], PLACEHOLDER_ID, dtype=np.int32)
    modality = np.full(offsets[-1], TEXT, dtype=np.int8)
    ids[_spans(offsets[:-1], text_lengths)] = features.input_ids.numpy()
    image_start = offsets[:-1] + text_lengths
    modality[_spans(image_start, np.maximum(image_tokens - 1, 0))] = IMAGE
    ids[(image_start + image_tokens - 1)[image_tokens > 0]] = sep_id
    vector_start = image_start + image_tokens
    modality[_spans(vector_start, counts)] = VECTORS
    ids[(vector_start + counts)[counts > 0]] = sep_id
    word_starts = features.word_starts
    if word_starts is not None:  # word rows: each word's first piece moves with the blocks of the rows before it
        row = np.searchsorted(features.offsets.numpy(), word_starts.numpy(), side="right") - 1
        word_starts = torch.from_numpy(word_starts.numpy() + (offsets[:-1] - features.offsets.numpy()[:-1])[row])
    return replace(features, input_ids=torch.from_numpy(ids), offsets=torch.from_numpy(offsets),
                   word_starts=word_starts,
                   modality=torch.from_numpy(modality),
                   images=None if images is None else torch.from_numpy(images),
                   vectors=None if vectors is None else torch.from_numpy(vectors),
                   patch_size=None if problem.image is None else problem.image.patch_size)


def input_fields(features, indices=None, positions=None):
    """The Features fields of the images and vectors (none for text alone): all of them, or those of the examples at
    `indices` whose tokens sit at `positions` of the packed input_ids (features.take_examples)."""
    if features.modality is None:
        return {}
    pick = (lambda value: value) if indices is None else (lambda value: value[indices])
    return {"modality": features.modality if positions is None else features.modality[positions],
            "images": None if features.images is None else pick(features.images),
            "vectors": None if features.vectors is None else pick(features.vectors),
            "patch_size": features.patch_size}


def same_inputs(a, b):
    """Whether two problems' features have the same images and vectors (as well as texts: multitask's check)."""
    def equal(x, y):
        return (x is None) == (y is None) and (x is None or (x.shape == y.shape and torch.equal(x, y)))
    return all(equal(getattr(a, name), getattr(b, name)) for name in ("modality", "images", "vectors"))


def batch_inputs(features, indices, gather_at, real):
    """A batch's images and vectors as the model reads them (modeling_inputs.InputEmbeddings), built on the host so
    the model needs no sync to find them:
        modality_ids  (B, T) int64: each token's modality (TEXT at padding)
        pixel_values  (B', C, H, W) uint8: the images of the B' rows that have one, in row order; patch_size an int
        patch_index   (B' x patches,) int64: where their patches sit among the N real tokens (row-major)
        vectors       (B, V, width) float32; vector_rows (M,): which of the B x V are real, in row-major order
        vector_index  (M,) int64: where those sit among the N real tokens
    `gather_at` (B, T) and `real` (B, T) are make_batch's."""
    modality_ids = torch.where(real, features.modality[gather_at].long(), TEXT)
    packed = modality_ids[real]  # (N,): the real tokens, row-major
    inputs = {"modality_ids": modality_ids}
    with_image = (modality_ids == IMAGE).any(1)  # (B,)
    if with_image.any():
        inputs.update(pixel_values=features.images[indices[with_image]], patch_size=features.patch_size,
                      patch_index=(packed == IMAGE).nonzero().squeeze(1))
    counts = (modality_ids == VECTORS).sum(1)  # (B,)
    most = int(counts.max())
    if most:
        inputs.update(vectors=features.vectors[indices, :most],
                      vector_rows=(torch.arange(most) < counts[:, None]).flatten().nonzero().squeeze(1),
                      vector_index=(packed == VECTORS).nonzero().squeeze(1))
    return inputs
