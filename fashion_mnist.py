"""Fashion-MNIST (Zalando Research, MIT licence; the four original idx files in <data_dir>/fashion_mnist/) as
predefined problems:

    fashion_mnist      cls      the image alone -> its class name
    fashion_match      cls      the image with a caption, a class name -> match or mismatch
    fashion_match_mlm  mask_lm  (every problem X has X_mlm) the captions masked, the images as context

Train: the 60,000 training images; dev: the 10,000 t10k images; no test. 28 x 28 grey images in 7 x 7 patches (16
per image). fashion_match's caption of image i (0-based within its split) of class c is the name of c when i is even
(match), else the name of class (c + 1 + (i // 2) % 9) % 10 (mismatch): half the pairs match, and the mismatched
captions cycle through the nine other classes, so neither the image nor the caption alone predicts the label better
than chance (50%).
"""
import numpy as np

from features import Example
from images import read_idx
from modalities import ImageInput
from problem_record import IdxSplit, Problem

FASHION_DIRECTORY = "fashion_mnist"
# The classes in the dataset's order: a label byte c is FASHION_CLASSES[c].
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
# Each split's images and labels files, as the dataset publishes them.
FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                 "dev": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
FASHION_IMAGE = ImageInput(size=(28, 28), patch_size=7, channels=1)
MATCH, MISMATCH = "match", "mismatch"
# idx dimensions: images (count, rows, columns), labels (count,).
IMAGE_DIMENSIONS, LABEL_DIMENSIONS = 3, 1


def caption(i, label):
    """fashion_match's caption of image i (0-based in its split) of class `label`: (the class it names, whether that is
    the image's own)."""
    if i % 2 == 0:
        return label, True
    return (label + 1 + (i // 2) % (len(FASHION_CLASSES) - 1)) % len(FASHION_CLASSES), False


def read_idx_split(problem, split, fmt, path):
    """An IdxSplit's examples: each image (a uint8 (28, 28) array) with its class name as label, or with its caption
    as text and match / mismatch as label (fmt.captions). guids end with the image's number (0-based)."""
    images = read_idx(path, IMAGE_DIMENSIONS)
    labels_path = path.parent / fmt.labels_file
    labels = read_idx(labels_path, LABEL_DIMENSIONS)
    if len(images) != len(labels):
        raise ValueError(f"{labels_path}: {len(labels)} labels for the {len(images)} images of {path}")
    if labels.size and int(labels.max()) >= len(FASHION_CLASSES):
        number = int(np.argmax(labels >= len(FASHION_CLASSES)))
        raise ValueError(f"{labels_path} label {number}: class {labels[number]} is not one of the "
                         f"{len(FASHION_CLASSES)} classes")
    examples = []
    for i, (image, label) in enumerate(zip(images, labels.tolist())):
        guid = f"{problem.name}-{split}-{i}"
        if fmt.captions:
            named, match = caption(i, label)
            examples.append(Example(guid, FASHION_CLASSES[named], None, MATCH if match else MISMATCH, image=image))
        else:
            examples.append(Example(guid, "", None, FASHION_CLASSES[label], image=image))
    return examples, None


def _fashion_problem(name, labels, captions):
    splits = {split: IdxSplit(images, labels_file, captions) for split, (images, labels_file) in FASHION_FILES.items()}
    return Problem(name, FASHION_DIRECTORY, splits, labels, {"dev": ("acc",)}, type="cls", image=FASHION_IMAGE)


FASHION_PROBLEMS = {
    "fashion_mnist": _fashion_problem("fashion_mnist", FASHION_CLASSES, captions=False),
    "fashion_match": _fashion_problem("fashion_match", (MATCH, MISMATCH), captions=True),
}
