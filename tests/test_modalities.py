"""modalities.py and the keys that give a problem images and feature vectors: the problems file, the sequence layout,
images from PNG files, pixel lists and idx files alike, rows with some inputs missing, X_mlm masking only the text,
the feature cache following the image files, and every bad input as one line naming the file, line and value."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import features as feats
import masking
import modalities
import problem_types
import problems
import tokenization
from conftest import FIXTURES, ROOT, minilm_dir, require
from modalities import ImageInput, VectorInput
from problem_record import problem_from_record
from problems_file import read_problems_file

MULTIMODAL = FIXTURES / "multimodal"
FASHION = ROOT.parent / "shared" / "fashion_mnist"
PATCHES = 16  # 28 x 28 images in 7 x 7 patches


def fixture_copy(tmp_path):
    """The fixture's files in tmp_path, to change."""
    shutil.copytree(MULTIMODAL, tmp_path / "data")
    return tmp_path / "data"


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_rows(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def load(problem, split, cache_dir, max_seq_length=48, data_dir=MULTIMODAL):
    return problems.load_problem_features(problem, split, data_dir, minilm_dir() / "vocab.txt", True, max_seq_length,
                                          cache_dir=cache_dir)


def with_problem(tmp_path, **changes):
    """A problems file in a copy of the fixture's data, with the fixture's problem changed (a key None: left out)."""
    spec = json.loads((MULTIMODAL / "problems.json").read_text())["fashion_captions"]
    spec = {key: value for key, value in {**spec, **changes}.items() if value is not None}
    path = fixture_copy(tmp_path) / "mine.json"
    path.write_text(json.dumps({"mine": spec}))
    return path


# ---------------------------------------------------------------------------------------------- the problems file

def test_problems_file_keys_their_defaults_and_the_record(tmp_path):
    problem = read_problems_file(MULTIMODAL / "problems.json")["fashion_captions"]
    assert problem.image == ImageInput((28, 28), 7, 1) and problem.vectors == VectorInput(4, 4)
    split = problem.splits["train"]
    assert (split.text, split.image, split.features, split.root) == (("caption",), "image", "features",
                                                                      str(MULTIMODAL))
    assert problem_from_record(json.loads(json.dumps(problem.to_record()))) == problem
    words = read_problems_file(MULTIMODAL / "problems.json")["fashion_words"]
    assert words.splits["dev"].text == ("words",) and words.image == problem.image
    defaults = read_problems_file(with_problem(tmp_path / "a", text=None, image_size=None, patch_size=None,
                                               channels=None, features=None, max_features=None))["mine"]
    assert defaults.image == ImageInput((224, 224), 16, 3) and defaults.vectors is None
    assert defaults.splits["train"].text == () and defaults.image.num_patches == 196
    assert read_problems_file(with_problem(tmp_path / "b", max_features=None))["mine"].vectors == VectorInput(4, 64)
    text_only = problems.get_problem("rte_mlm").to_record()  # a text problem's record is as before
    assert "image" not in text_only and "vectors" not in text_only


@pytest.mark.parametrize("changes, message", [
    ({"image_size": [28]}, r"image_size must be \[height, width\] in pixels, got \[28\]"),
    ({"patch_size": 5}, r"image_size \[28, 28\] is not a whole number of 5 x 5 patches"),
    ({"patch_size": 0}, "patch_size must be a positive integer, got 0"),
    ({"channels": 2}, r"channels must be 1 \(grey\) or 3 \(RGB\), got 2"),
    ({"features": None}, "max_features is a setting of \"features\", which the problem does not give"),
    ({"image": None}, "image_size is a setting of \"image\""),
    ({"image": None, "image_size": None, "patch_size": None, "channels": None, "features": None,
      "max_features": None, "text": None}, "text must name one or two keys"),
    ({"max_features": -1}, "max_features must be a positive integer"),
    ({"image": ""}, "image must be a non-empty string"),
    ({"type": "seq_tag", "text": ["caption", "label"]}, "a seq_tag problem's text is one key, holding a list of words"),
])
def test_problems_file_errors_on_image_and_feature_keys(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message) as error:
        read_problems_file(with_problem(tmp_path, **changes))
    assert "mine.json: problem 'mine'" in str(error.value) and "\n" not in str(error.value)


def test_image_keys_are_for_tsv_and_jsonl_files(tmp_path):
    path = tmp_path / "problems.json"
    path.write_text(json.dumps({"tags": {"type": "seq_tag", "format": "conll", "train": str(
        FIXTURES / "problems" / "ner" / "train.txt"), "image": "picture"}}))
    with pytest.raises(ValueError, match="key 'image' does not apply to format conll"):
        read_problems_file(path)


# ---------------------------------------------------------------------------------------------- the sequence

def test_sequence_is_the_text_then_the_patches_then_the_vectors_each_ended_by_sep(tmp_path):
    problem = read_problems_file(MULTIMODAL / "problems.json")["fashion_captions"]
    data = load(problem, "train", tmp_path)
    tokenizer = tokenization.FullTokenizer(minilm_dir() / "vocab.txt", do_lower_case=True)
    cls, sep = tokenizer.vocab["[CLS]"], tokenizer.vocab["[SEP]"]
    place = modalities.PLACEHOLDER_ID
    for i, record in enumerate(rows(MULTIMODAL / "train.jsonl")):
        text = [cls, *tokenizer.encode(record["caption"]), sep]
        count = len(record["features"])
        ids = data.input_ids[data.offsets[i]:data.offsets[i + 1]].tolist()
        assert ids == [*text, *[place] * PATCHES, sep, *[place] * count, sep]
        kinds = data.modality[data.offsets[i]:data.offsets[i + 1]].tolist()
        assert kinds == [0] * len(text) + [modalities.IMAGE] * PATCHES + [0] + [modalities.VECTORS] * count + [0]
        assert data.segment_a_len[i] == len(text)
        with Image.open(MULTIMODAL / record["image"]) as image:
            assert np.array_equal(data.images[i, 0].numpy(), np.asarray(image))
        assert torch.equal(data.vectors[i, :count], torch.tensor(record["features"]))
        assert not data.vectors[i, count:].any()
    assert data.patch_size == 7 and data.labels.tolist() == [
        problem.labels.index(record["label"]) for record in rows(MULTIMODAL / "train.jsonl")]


def test_the_text_keeps_what_the_blocks_leave(tmp_path):
    """max_seq_length - (16 patches + [SEP]) - (max_features 4 + [SEP]): 25 leaves 3, [CLS] one piece [SEP]."""
    problem = read_problems_file(MULTIMODAL / "problems.json")["fashion_captions"]
    data = load(problem, "train", tmp_path, max_seq_length=25)
    assert int(data.lengths.max()) <= 25 and data.segment_a_len.max() == 3
    with pytest.raises(ValueError, match=r"problem fashion_captions: --max_seq_length 24 leaves 2 tokens for the text "
                                         r"beside 16 patches \+ \[SEP\] and max_features 4 \+ \[SEP\]"):
        load(problem, "train", tmp_path, max_seq_length=24)


def test_rows_may_lack_an_image_or_vectors_but_not_every_input(tmp_path):
    data_dir = fixture_copy(tmp_path)
    records = rows(data_dir / "train.jsonl")[:4]
    records[1]["image"] = None
    records[2]["features"] = []
    records[3]["caption"] = ""
    write_rows(data_dir / "train.jsonl", records)
    problem = read_problems_file(data_dir / "problems.json")["fashion_captions"]
    data = load(problem, "train", tmp_path / "cache", data_dir=data_dir)
    kinds = [data.modality[data.offsets[i]:data.offsets[i + 1]] for i in range(4)]
    assert [int((k == modalities.IMAGE).sum()) for k in kinds] == [PATCHES, 0, PATCHES, PATCHES]
    assert [int((k == modalities.VECTORS).sum()) for k in kinds] == [1, 2, 0, 4]
    assert data.segment_a_len[3] == 2  # [CLS] [SEP]: no text
    batch = feats.make_batch(data, torch.arange(4))
    assert batch["inputs"]["pixel_values"].shape == (3, 1, 28, 28)  # the three rows with an image, in row order
    assert torch.equal(batch["inputs"]["pixel_values"][1], data.images[2])
    assert len(batch["inputs"]["patch_index"]) == 3 * PATCHES and len(batch["inputs"]["vector_index"]) == 7
    records[3].update(image=None, features=None)
    write_rows(data_dir / "train.jsonl", records)
    with pytest.raises(ValueError, match=r"train\.jsonl line 4: no input: no text, no image and no features"):
        load(problem, "train", tmp_path / "cache", data_dir=data_dir)


def test_png_files_pixel_lists_and_idx_files_give_the_same_features(tmp_path):
    """The first t10k images of Fashion-MNIST as fashion_mnist reads them (idx), as PNG files named in a jsonl and a
    tsv file, and as lists of pixels in a jsonl file: the same token ids, modalities and uint8 images."""
    require(FASHION.is_dir(), f"needs Fashion-MNIST's idx files in {FASHION}")
    count = 8
    idx = feats.first_examples(load("fashion_mnist", "dev", tmp_path / "cache", data_dir=FASHION.parent), count)
    pixels = idx.images[:, 0].numpy()
    (tmp_path / "png").mkdir()
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(tmp_path / "png" / f"{i}.png")
    labels = [problems.get_problem("fashion_mnist").labels[i] for i in idx.labels.tolist()]
    write_rows(tmp_path / "files.jsonl", [{"image": f"png/{i}.png", "label": label} for i, label in enumerate(labels)])
    write_rows(tmp_path / "lists.jsonl", [{"image": image.tolist(), "label": label}
                                          for image, label in zip(pixels, labels)])
    (tmp_path / "files.tsv").write_text("image\tlabel\n" + "".join(f"png/{i}.png\t{label}\n"
                                                                  for i, label in enumerate(labels)))
    common = {"type": "cls", "image": "image", "image_size": [28, 28], "patch_size": 7, "channels": 1,
              "label": "label", "labels": list(problems.get_problem("fashion_mnist").labels)}
    (tmp_path / "problems.json").write_text(json.dumps({
        "files": {**common, "format": "jsonl", "train": "files.jsonl"},
        "lists": {**common, "format": "jsonl", "train": "lists.jsonl"},
        "tsv": {**common, "format": "tsv", "train": "files.tsv"}}))
    for name, problem in read_problems_file(tmp_path / "problems.json").items():
        data = load(problem, "train", tmp_path / "cache", data_dir=tmp_path)
        for field in ("input_ids", "offsets", "segment_a_len", "modality", "images", "labels"):
            assert torch.equal(getattr(data, field), getattr(idx, field)), (name, field)


def test_the_feature_cache_follows_the_image_files(tmp_path):
    data_dir = fixture_copy(tmp_path)
    problem = read_problems_file(data_dir / "problems.json")["fashion_captions"]
    before = load(problem, "dev", tmp_path / "cache", data_dir=data_dir)
    shutil.copyfile(data_dir / "images" / "dev_05.png", data_dir / "images" / "dev_00.png")
    after = load(problem, "dev", tmp_path / "cache", data_dir=data_dir)
    assert torch.equal(after.images[0], before.images[5]) and not torch.equal(after.images[0], before.images[0])
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_a_tagging_problem_reads_words_beside_an_image_and_labels_only_the_text(tmp_path):
    """seq_tag from jsonl: every row of a sentence cut into rows carries the sentence's image; the tags sit on the
    words' first pieces only, never on a patch, and come back per sentence."""
    data_dir = fixture_copy(tmp_path)
    long = {"words": "a long caption of ten plain words about ankle boots".split(),
            "tags": ["O"] * 9 + ["B-ITEM"], "image": "images/train_09.png"}
    write_rows(data_dir / "train_words.jsonl", [*rows(data_dir / "train_words.jsonl")[:3], long])
    problem = read_problems_file(data_dir / "problems.json")["fashion_words"]
    assert problem.type == "seq_tag" and problem.labels == ("B-ITEM", "I-ITEM", "O") and problem.vectors is None
    # Rows of 5 word pieces beside 16 patches + [SEP] ("caption" is 2 pieces): three rows for the long sentence.
    data = load(problem, "train", tmp_path / "cache", max_seq_length=24, data_dir=data_dir)
    assert data.sentence.tolist() == [0, 1, 2, 3, 3, 3] and data.first_word.tolist() == [0, 0, 0, 0, 4, 9]
    for row in range(len(data)):
        kinds = data.modality[data.offsets[row]:data.offsets[row + 1]]
        assert int((kinds == modalities.IMAGE).sum()) == PATCHES
    assert torch.equal(data.images[5], data.images[3]) and not torch.equal(data.images[3], data.images[2])
    labelled = data.token_labels != feats.IGNORE_INDEX
    assert (data.modality[labelled] == modalities.TEXT).all() and int(labelled.sum()) == 2 + 1 + 1 + 10
    tags = [record["tags"] for record in rows(data_dir / "train_words.jsonl")]
    assert problem_types.of(problem).sentence_tags(problem, data, data.token_labels) == tags


@pytest.mark.parametrize("change, message", [
    ({"words": "Ankle boot"}, r"line 2: 'words' must hold a non-empty list of words"),
    ({"tags": ["O", "O"]}, r"line 2: 'tags' must hold a list of one tag per word \(1 words\)"),
])
def test_tagging_rows_of_a_jsonl_file(tmp_path, change, message):
    data_dir = fixture_copy(tmp_path)
    records = rows(data_dir / "train_words.jsonl")
    records[1].update(change)
    write_rows(data_dir / "train_words.jsonl", records)
    with pytest.raises(ValueError, match=message):
        read_problems_file(data_dir / "problems.json")


# ---------------------------------------------------------------------------------------------- masked LM

def test_x_mlm_of_a_multimodal_problem_masks_only_the_text(tmp_path):
    """fashion_captions_mlm reads fashion_captions' features, images and vectors included; masking (the training
    path's take_examples, and the dev set's) never chooses a patch or a vector."""
    user = read_problems_file(MULTIMODAL / "problems.json")
    lm = problems.get_problem("fashion_captions_mlm", user)
    assert lm.image == user["fashion_captions"].image and lm.vectors == user["fashion_captions"].vectors
    data = problems.load_problem_features(lm, "train", MULTIMODAL, minilm_dir() / "vocab.txt", True, 48,
                                          cache_dir=tmp_path, user_problems=user)
    source = load(user["fashion_captions"], "train", tmp_path)
    assert data.labels is None and torch.equal(data.images, source.images) and torch.equal(data.vectors,
                                                                                           source.vectors)
    spec = masking.Masking.from_vocab(tokenization.load_vocab(minilm_dir() / "vocab.txt"))
    taken = feats.take_examples(data, torch.tensor([3, 1, 2]))
    assert torch.equal(taken.images, data.images[[3, 1, 2]]) and taken.patch_size == data.patch_size
    for seed in range(20):
        masked = masking.mask_tokens(taken, spec, masking.seeded_generator(seed))
        chosen = masked.token_labels != feats.IGNORE_INDEX
        assert chosen.any() and (taken.modality[chosen] == modalities.TEXT).all()
        assert torch.equal(masked.input_ids[taken.modality != modalities.TEXT],
                           taken.input_ids[taken.modality != modalities.TEXT])
    dev = masking.mask_dev_set(data, spec)
    assert (data.modality[dev.token_labels != feats.IGNORE_INDEX] == modalities.TEXT).all()
    without_text = feats.Features(data.input_ids, data.offsets, data.segment_a_len, None,
                                  modality=torch.where(data.modality == modalities.TEXT, modalities.IMAGE,
                                                       data.modality))
    assert not masking.maskable(without_text, spec).any()  # nothing but patches and vectors: nothing to mask


# ---------------------------------------------------------------------------------------------- bad input

BAD_ROWS = [
    ({"image": "images/none.png"}, r"line 3: image 'images/none\.png' not found \(.*images/none\.png\)"),
    ({"image": "notes.png"}, r"line 3: image .*notes\.png cannot be read \(cannot identify image file"),
    ({"image": [[0, 300]]}, r"line 3: image \[\[0, 300\]\] is not a \[H\]\[W\] or \[H\]\[W\]\[C\] list"),
    ({"image": 7}, "line 3: image 7 is neither a file path nor a list of pixel values"),
    ({"features": [[1, 2, 3]]}, r"line 3: features \[\[1, 2, 3\]\] are vectors of width 3, expected 4"),
    ({"features": [[1, 2, 3, 4]] * 5}, r"line 3: features .* hold 5 vectors, more than max_features 4"),
    ({"features": [[1, 2], [3]]}, r"line 3: features \[\[1, 2\], \[3\]\] are not a list of vectors of one width"),
    ({"features": [[1, 2, 3, float("nan")]]}, "line 3: features .* hold a value that is not a finite number"),
    ({"features": "vectors.npy"}, r"line 3: features .*vectors\.npy are vectors of width 2, expected 4"),
    ({"features": "absent.npy"}, r"line 3: features file 'absent\.npy' not found"),
    ({"caption": "", "image": None, "features": None}, "line 3: no input: no text, no image and no features"),
    ({"image": "[[1, 2"}, r"line 3: image '\[\[1, 2' is not valid JSON"),
]


@pytest.mark.parametrize("change, message", BAD_ROWS)
def test_bad_rows_are_one_line_errors_naming_file_line_and_value(tmp_path, change, message):
    data_dir = fixture_copy(tmp_path)
    (data_dir / "notes.png").write_text("not an image")
    np.save(data_dir / "vectors.npy", np.ones((3, 2), dtype=np.float32))
    records = rows(data_dir / "dev.jsonl")
    records[2].update(change)
    write_rows(data_dir / "dev.jsonl", records)
    problem = read_problems_file(data_dir / "problems.json")["fashion_captions"]
    with pytest.raises(ValueError, match=message) as error:
        load(problem, "dev", tmp_path / "cache", data_dir=data_dir)
    assert str(error.value).startswith(str(data_dir / "dev.jsonl")) and "\n" not in str(error.value)


def test_inputs_naming_no_column_or_key(tmp_path):
    data_dir = fixture_copy(tmp_path)
    records = rows(data_dir / "dev.jsonl")
    del records[4]["image"]
    write_rows(data_dir / "dev.jsonl", records)
    problem = read_problems_file(data_dir / "problems.json")["fashion_captions"]
    with pytest.raises(ValueError, match=r"dev\.jsonl line 5: no key 'image' \(its keys: caption, features, label\)"):
        load(problem, "dev", tmp_path / "cache", data_dir=data_dir)
    (data_dir / "train.tsv").write_text("caption\tpicture\tlabel\nBag\timages/train_00.png\tmatch\n")
    (data_dir / "tsv.json").write_text(json.dumps({"tsv": {"type": "cls", "format": "tsv", "train": "train.tsv",
                                                           "text": "caption", "image": "image", "label": "label"}}))
    with pytest.raises(ValueError, match=r"train\.tsv line 1: no column 'image' \(its columns: caption, picture, "):
        read_problems_file(data_dir / "tsv.json")
    write_rows(data_dir / "nothing.jsonl", [{"caption": "Bag", "features": None, "label": "match"}])
    (data_dir / "none.json").write_text(json.dumps({"none": {
        "type": "cls", "format": "jsonl", "train": "nothing.jsonl", "text": "caption", "features": "features",
        "label": "label", "labels": ["match", "mismatch"]}}))
    with pytest.raises(ValueError, match=r"nothing\.jsonl: no row has features, so their width is unknown"):
        read_problems_file(data_dir / "none.json")
