"""fashion_mnist.py: the predefined Fashion-MNIST problems on the real idx files, and fashion_match's caption rule."""
import numpy as np
import pytest
import torch

import fashion_mnist
import images
import problems
from conftest import ROOT, minilm_dir, require
from fashion_mnist import caption
from modalities import IMAGE, ImageInput

FASHION = ROOT.parent / "shared" / "fashion_mnist"


def shared_dir():
    require(FASHION.is_dir(), f"needs Fashion-MNIST's idx files in {FASHION}")
    return FASHION.parent


def dev_labels():
    return images.read_idx(shared_dir() / "fashion_mnist" / "t10k-labels-idx1-ubyte.gz", 1).tolist()


def test_the_problems_as_the_dataset_defines_them():
    for name in ("fashion_mnist", "fashion_match"):
        problem = problems.get_problem(name)
        assert problem.type == "cls" and problem.image == ImageInput((28, 28), 7, 1) and problem.image.num_patches == 16
        assert set(problem.splits) == {"train", "dev"} and problem.metrics == {"dev": ("acc",)}
    assert problems.get_problem("fashion_mnist").labels == (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
    assert problems.get_problem("fashion_match").labels == ("match", "mismatch")
    lm = problems.get_problem("fashion_match_mlm")
    assert lm.type == "mask_lm" and lm.inputs_of == "fashion_match" and lm.image == ImageInput((28, 28), 7, 1)


@pytest.mark.parametrize("i, label, named, match", [
    (0, 3, 3, True), (2, 9, 9, True),  # even: its own class
    (1, 3, 4, False),  # (3 + 1 + 0) % 10
    (3, 9, 1, False),  # (9 + 1 + 1) % 10
    (5, 0, 3, False),  # (0 + 1 + 2) % 10
    (17, 2, 1, False),  # (2 + 1 + 8) % 10
    (19, 5, 6, False),  # (19 // 2) % 9 = 0: (5 + 1 + 0) % 10
])
def test_caption_rule_by_hand(i, label, named, match):
    assert caption(i, label) == (named, match)


def test_a_mismatched_caption_never_names_its_own_class_and_cycles_through_the_others():
    for label in range(10):
        named = [caption(i, label)[0] for i in range(1, 36, 2)]  # 18 odd images of one class
        assert label not in named and sorted(named[:9]) == sorted(set(range(10)) - {label})


def test_neither_the_image_nor_the_caption_alone_beats_chance_on_the_real_dev_set():
    """The best classifier of the image's class alone, and of the caption alone, both stay at about 50%."""
    labels = dev_labels()
    pairs = [caption(i, label) for i, label in enumerate(labels)]
    matches = np.array([match for _, match in pairs])
    assert matches.mean() == 0.5
    for key in (np.array(labels), np.array([named for named, _ in pairs])):  # by class of the image, of the caption
        best = sum(max(matches[key == c].sum(), (~matches[key == c]).sum()) for c in range(10)) / len(labels)
        assert best < 0.52, best


def test_features_of_the_real_files(tmp_path):
    """fashion_match's dev features: [CLS] caption [SEP], 16 patches, [SEP]; the idx pixels; the rule's labels."""
    data = problems.load_problem_features("fashion_match", "dev", shared_dir(), minilm_dir() / "vocab.txt", True, 32,
                                          cache_dir=tmp_path)
    labels = dev_labels()
    assert len(data) == 10000 and data.images.shape == (10000, 1, 28, 28)
    pixels = images.read_idx(shared_dir() / "fashion_mnist" / "t10k-images-idx3-ubyte.gz", 3)
    assert torch.equal(data.images[:, 0], torch.from_numpy(pixels.copy()))
    assert data.labels.tolist() == [0 if caption(i, label)[1] else 1 for i, label in enumerate(labels)]
    first = data.input_ids[data.offsets[0]:data.offsets[1]].tolist()
    assert first[:4] == [101, 10792, 9573, 102] and first[-1] == 102  # [CLS] ankle boot [SEP] ... [SEP]
    assert int((data.modality[data.offsets[0]:data.offsets[1]] == IMAGE).sum()) == 16
    alone = problems.load_problem_features("fashion_mnist", "train", shared_dir(), minilm_dir() / "vocab.txt", True,
                                           32, cache_dir=tmp_path)
    assert len(alone) == 60000 and (alone.lengths == 2 + 16 + 1).all()  # [CLS] [SEP] 16 patches [SEP]
    assert torch.bincount(alone.labels).tolist() == [6000] * 10


def test_mismatched_files_are_named(tmp_path):
    folder = tmp_path / "fashion_mnist"
    folder.mkdir()
    for split, (image_file, label_file) in fashion_mnist.FASHION_FILES.items():
        (folder / image_file).symlink_to(shared_dir() / "fashion_mnist" / image_file)
        (folder / label_file).symlink_to(shared_dir() / "fashion_mnist" / fashion_mnist.FASHION_FILES["train"][1])
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte\.gz: 60000 labels for the 10000 images"):
        problems.read_examples("fashion_mnist", "dev", tmp_path)
