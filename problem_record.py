"""The record of a problem (a named dataset of one type) and of how each of its splits is read.

`Problem` is the row of every problem table: GLUE's (glue_processors.py), People's Daily's (pku.py) and the user's
(problems_file.py). Its type (a key of problem_types.TYPES) decides everything else about it. A record round-trips
through JSON (`to_record`, `problem_from_record`), so a run's config.json carries the user's problems and the run
directory predicts on its own.
"""
import math
from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar

import problem_types
from modeling_seq2seq import DecoderSettings
from modalities import ImageInput, VectorInput
from problem_types import DEFAULT_LABEL_SEPARATOR

# How a problem's metrics become its score (for the best-model choice): GLUE rows average theirs (MRPC's F1 and
# accuracy, say), as the original code did; other problems use their first metric.
SCORE_RULES = ("mean", "first")
# What one input of a problem is (Problem.inputs): a text, a pair of texts, or a list of words.
TEXT_INPUT, PAIR_INPUT, WORDS_INPUT = "text", "pair", "words"
SPELLED_INPUT = "spelled"  # one word, given as written and spelled out into one token per character (cmudict.py)


def _texts(columns):
    return PAIR_INPUT if len(columns) == 2 else TEXT_INPUT


@dataclass(frozen=True)
class SplitFormat:
    """How to read one split's GLUE file: name, header or not, and which columns hold what (0-based; -1 = last)."""
    format: ClassVar[str] = "glue_tsv"  # read by glue_processors.load_examples
    file: str
    header: bool
    text_columns: tuple  # (a,) for single sentences, (a, b) for pairs
    label_column: int | None = None  # train/dev files
    index_column: int | None = None  # test files: the `index`/`id` column written back into submissions
    skip_malformed_rows: bool = False  # QQP train/dev: skip rows with the wrong number of fields, as the original did

    @property
    def inputs(self):
        return _texts(self.text_columns)


@dataclass(frozen=True)
class TsvSplit:
    """A tab-separated file with a header row naming its columns (no quoting: quotes are literal text)."""
    format: ClassVar[str] = "tsv"
    file: str
    text: tuple  # one or two column names: a sentence or a pair; () when the problem reads an image or features only
    label: str | None  # label column (optional on test)
    index: str | None = None  # test: the column written as `index` in predictions (default: the row number)
    label_separator: str = DEFAULT_LABEL_SEPARATOR  # multi_cls: labels joined in one field
    image: str | None = None  # the column of an image: a file's path, or a JSON list of pixel values (modalities.py)
    features: str | None = None  # the column of feature vectors: a JSON list of lists, or a .npy file's path
    root: str | None = None  # the folder image and .npy paths are relative to (the problems file's); None: the file's

    @property
    def inputs(self):
        return _texts(self.text)


@dataclass(frozen=True)
class JsonlSplit(TsvSplit):
    """One JSON object per line; `text`, `label` and `index` name keys (multi_cls labels: a list or a joined string)."""
    format: ClassVar[str] = "jsonl"


@dataclass(frozen=True)
class ConllSplit:
    """One token per line, whitespace-separated columns, a blank line between sentences, -DOCSTART- lines skipped."""
    format: ClassVar[str] = "conll"
    inputs: ClassVar[str] = WORDS_INPUT
    file: str
    token_column: int = 0
    label_column: int = -1  # -1 = the last column


@dataclass(frozen=True)
class PkuSplit:
    """People's Daily 1998: the train or dev sentences of 199801.txt, with the tags of one problem."""
    format: ClassVar[str] = "pku"
    inputs: ClassVar[str] = WORDS_INPUT
    file: str
    part: str  # "train" or "dev"
    tags: str  # a key of PKU_TAGGERS


@dataclass(frozen=True)
class TextSplit:
    """Plain text. mask_lm: one text per line; pretrain: one sentence per line, a blank line between documents."""
    format: ClassVar[str] = "text"
    inputs: ClassVar[str] = TEXT_INPUT
    file: str


@dataclass(frozen=True)
class PkuDocumentsSplit:
    """People's Daily 1998 as documents (pretrain): a paragraph (a line of 199801.txt) is a document of sentences
    split as the other PKU problems split them; the train or dev paragraphs."""
    format: ClassVar[str] = "pku_documents"
    inputs: ClassVar[str] = PAIR_INPUT  # sentence pairs of a document
    file: str
    part: str  # "train" or "dev"


@dataclass(frozen=True)
class CmudictSplit:
    """The CMU Pronouncing Dictionary (cmudict.py): the train, dev or test words of cmudict.dict, split by word."""
    format: ClassVar[str] = "cmudict"
    inputs: ClassVar[str] = SPELLED_INPUT
    file: str
    part: str  # "train", "dev" or "test"


@dataclass(frozen=True)
class IdxSplit:
    """Images and their class numbers in two idx files (MNIST's format; Fashion-MNIST's files), read by
    fashion_mnist.py. `file` holds the images, `labels_file` (in the same folder) the labels."""
    format: ClassVar[str] = "idx"
    inputs: ClassVar[str] = TEXT_INPUT  # a caption (or none) beside each image
    file: str
    labels_file: str
    captions: bool = False  # each image with a caption, a class name (fashion_mnist.caption): match or mismatch


SPLIT_FORMATS = {fmt.format: fmt for fmt in (SplitFormat, TsvSplit, JsonlSplit, ConllSplit, PkuSplit, TextSplit,
                                             PkuDocumentsSplit, CmudictSplit, IdxSplit)}


@dataclass(frozen=True)
class Problem:
    """One row of a problem table: a GLUE task, a People's Daily problem or one the user defines.

    GLUE's rows are problems (`glue_processors.Task` is this class), and GLUE's quirks are fields of their rows:
    label_scale (STS-B's 5.0: the regression target is label / scale; predictions are written x scale, clipped to
    [0, scale]), head_of ("mnli" for AX: predicted with that problem's head), default_label ("0" for WNLI: the class
    predicted when the model has no head for it).
    """
    name: str
    directory: str  # under --data_dir ("" for the user's problems, whose files are absolute paths)
    splits: dict  # split name -> how to read it (one of SPLIT_FORMATS)
    labels: tuple | None  # output order of the head; None for types without a label list (regression, masked LM)
    metrics: dict  # dev split -> metric names, in the order they are reported
    submission_files: dict = field(default_factory=dict)  # GLUE test split -> GLUE server file name
    type: str = "cls"  # a key of problem_types.TYPES
    label_scale: float | None = None  # regression: targets are label / label_scale
    head_of: str | None = None  # predicted with this problem's head (AX: "mnli")
    default_label: str | None = None  # predicted for every example when the model has no head for it (WNLI: "0")
    score_rule: str = "first"  # one of SCORE_RULES
    loss_weight: float = 1.0  # this problem's loss is multiplied by it in every step that trains it
    inputs_of: str | None = None  # mask_lm: the problem whose inputs (texts or words, unlabelled) it reads
    decoder: DecoderSettings | None = None  # seq2seq types: the decoder and its generation
    image: ImageInput | None = None  # its examples' images: size, patches, channels (None: no image)
    vectors: VectorInput | None = None  # its examples' feature vectors: width, most per example (None: none)

    def __post_init__(self):
        try:
            problem_types.get(self.type).check_record(self)
        except ValueError as error:
            raise ValueError(f"problem {self.name}: {error}" if str(error).startswith("unknown") else str(error)) \
                from None
        if self.score_rule not in SCORE_RULES:
            raise ValueError(f"problem {self.name}: score_rule {self.score_rule!r} is not one of {SCORE_RULES}")
        if isinstance(self.loss_weight, bool) or not isinstance(self.loss_weight, (int, float)) or \
                not 0 < self.loss_weight < math.inf:
            raise ValueError(f"problem {self.name}: loss_weight must be a positive number (finite), got "
                             f"{self.loss_weight!r}")

    @property
    def num_labels(self):
        """Outputs of the problem's own head (classifier.N); 0 for a masked LM (BERT's pre-training heads)."""
        return problem_types.of(self).num_outputs(self)

    @property
    def inputs(self):
        """What one input is: TEXT_INPUT, PAIR_INPUT or WORDS_INPUT (every split of a problem reads the same; a
        tagging problem's jsonl sentences are lists of words)."""
        form = next(iter(self.splits.values())).inputs
        return WORDS_INPUT if problem_types.of(self).word_inputs else form

    @property
    def dev_splits(self):
        return tuple(split for split in self.splits if split.startswith("dev"))

    @property
    def test_splits(self):
        return tuple(split for split in self.splits if split.startswith("test"))

    def split_format(self, split):
        if split not in self.splits:
            raise ValueError(f"problem {self.name} has no split {split!r}; its splits: {', '.join(self.splits)}")
        return self.splits[split]

    def submission_file(self, split):
        if split not in self.submission_files:
            raise ValueError(
                f"problem {self.name} has no test split {split!r}; its test splits: {', '.join(self.test_splits)}"
            )
        return self.submission_files[split]

    def expand_splits(self, kind):
        """"train" / "dev" / "test" -> this problem's splits of that kind (() when it has none); or one exact split."""
        if kind == "train":
            return ("train",) if "train" in self.splits else ()
        if kind == "dev":
            return self.dev_splits
        if kind == "test":
            return self.test_splits
        self.split_format(kind)
        return (kind,)

    def to_record(self):
        """A JSON-ready dict of every field (each split as {"format": ..., its fields}); problems.problem_from_record
        rebuilds the problem from it, so a run's config.json can carry the user's problems."""
        record = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name in INPUT_FIELDS and value is None:
                continue  # a text problem's record stays as it was before images and vectors existed
            if item.name == "splits":
                value = {split: {"format": fmt.format, **{key: field_value for key, field_value in asdict(fmt).items()
                                                          if not (key in SPLIT_INPUT_FIELDS and field_value is None)}}
                         for split, fmt in value.items()}
            elif item.name == "labels" and value is not None:
                value = list(value)
            elif item.name == "metrics":
                value = {split: list(names) for split, names in value.items()}
            elif (item.name == "decoder" or item.name in INPUT_FIELDS) and value is not None:
                value = asdict(value)
            record[item.name] = value
        return record


# A problem's inputs beside its text (Problem fields), by the record class each round-trips through; and the fields of
# a split that name them. Records leave them out when None, so a text problem's record (its cache key, config.json)
# is what it was before they existed.
INPUT_FIELDS = {"image": ImageInput, "vectors": VectorInput}
SPLIT_INPUT_FIELDS = ("image", "features", "root")


def problem_from_record(record):
    """Rebuild a Problem from Problem.to_record() (as a run's config.json stores the user's problems)."""
    try:
        splits = {}
        for split, item in record["splits"].items():
            item = dict(item)
            split_class = SPLIT_FORMATS[item.pop("format")]
            splits[split] = split_class(**{key: tuple(value) if isinstance(value, list) else value
                                           for key, value in item.items()})
        inputs = {name: None if record.get(name) is None else kind(**{
            key: tuple(value) if isinstance(value, list) else value for key, value in record[name].items()})
            for name, kind in INPUT_FIELDS.items()}
        return Problem(**{**record, "splits": splits, **inputs,
                          "labels": None if record["labels"] is None else tuple(record["labels"]),
                          "metrics": {split: tuple(names) for split, names in record["metrics"].items()},
                          "decoder": None if record.get("decoder") is None else DecoderSettings(**record["decoder"])})
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"not a problem record ({type(error).__name__}: {error}); expected Problem.to_record()'s "
                         "dict") from None
