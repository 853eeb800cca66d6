"""GLUE tasks as one table, one TSV reader, packed features with an on-disk cache, batches and metrics.

The table
---------
`TASKS` maps each task name to a frozen `Task`, which is `Problem`, the row type of every problem table
(problems.py adds People's Daily's and the user's problems, of the types cls, regression, multi_cls and seq_tag);
everything task-specific lives there and nowhere else:

    Task(name="mrpc", directory="MRPC",
         splits={"train": SplitFormat("train.tsv", header=True, text_columns=(3, 4), label_column=0),
                 "dev":   SplitFormat("dev.tsv",   header=True, text_columns=(3, 4), label_column=0),
                 "test":  SplitFormat("test.tsv",  header=True, text_columns=(3, 4), index_column=0)},
         labels=("0", "1"),                  # in the head's output order; None = regression (STS-B)
         metrics={"dev": ("f1", "acc")},     # per dev split
         submission_files={"test": "MRPC.tsv"},
         type="cls", score_rule="mean")      # STS-B: type="regression", label_scale=5.0

Columns are 0-based; a negative column counts from the end (-1 = the last: MNLI train has 12 columns, its dev files 16).
Splits are "train", "dev" and "test", except MNLI ("dev_matched", "dev_mismatched", "test_matched",
"test_mismatched") and AX (the diagnostic set: "test" only, predicted with the MNLI head, so it has MNLI's labels:
head_of="mnli"). WNLI's default_label "0" is what a model without a WNLI head predicts (the paper trains none).
`ALL_TASKS` is the original code's `--tasks all` order: a task's position there indexes its head and task embedding.

Files
-----
The standard glue_data layout, `<data_dir>/<directory>/<file>`, e.g. `glue_data/CoLA/train.tsv`. Tab-separated
with no CSV quoting (quotes are literal text). MRPC's header starts with a UTF-8 BOM; CoLA train/dev have no header.
Every row must have as many fields as the header (or the first row), except in QQP train/dev, where such rows are
skipped and counted, as the original did.

Features
--------
`[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]`, kept un-padded and packed: the ids of example i are
`input_ids[offsets[i]:offsets[i + 1]]`, the first `segment_a_len[i]` of them in segment 0. `make_batch` pads a batch
with vectorised tensor ops. `load_features` caches features on disk under a name that hashes everything they depend on.

Metrics
-------
Computed on a whole split (the original averaged MCC and Pearson over evaluation batches), in percent: CoLA MCC;
MRPC F1 and accuracy; STS-B Pearson and Spearman; QQP accuracy and F1; MNLI accuracy on dev_matched ("acc_m") and
dev_mismatched ("acc_mm"); the others accuracy. A task's score is the mean of its metrics, the GLUE score the mean of
the task scores.
"""
import array
import codecs
import hashlib
import logging
import math
import multiprocessing
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from typing import ClassVar
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from sklearn import metrics as sk_metrics
from tqdm import tqdm

from tokenization import FullTokenizer

logger = logging.getLogger(__name__)

# Bump when anything that changes features without changing their inputs changes (tokenizer, truncation, layout):
# it is part of every cache key, so old cache files are no longer found.
FEATURE_FORMAT_VERSION = 1
# STS-B similarity scores run from 0 to 5; the regression target is score / 5, as in the original code.
STS_MAX_SCORE = 5.0
# Google's BERT pads input_ids with 0 ([PAD] is line 0 of every BERT vocabulary).
PAD_ID = 0
# Token label where there is none to learn ([CLS], [SEP], padding, a word's later pieces): the default
# ignore_index of torch.nn.functional.cross_entropy.
IGNORE_INDEX = -100
# Fewest tokens a sequence can have: [CLS] [SEP] [SEP] (a pair with both sentences truncated away).
MIN_SEQ_LENGTH = 3
# Below this many examples, starting worker processes costs more than it saves (about 0.5 s of tokenizing).
PARALLEL_MIN_EXAMPLES = 20_000
# Examples per task sent to a worker: large enough to amortise pickling, small enough to balance the load.
WORKER_CHUNK_EXAMPLES = 4096
# Column names that GLUE test files use for their first column (QQP says "id", the others "index").
INDEX_COLUMN_NAMES = ("index", "id")
HASH_BLOCK_BYTES = 1 << 20


# ----------------------------------------------------------------------------------------------------------------
# The task table
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SplitFormat:
    """How to read one split's GLUE file: name, header or not, and which columns hold what (0-based; -1 = last)."""
    format: ClassVar[str] = "glue_tsv"  # the reader that problems.py uses for it
    file: str
    header: bool
    text_columns: tuple  # (a,) for single sentences, (a, b) for pairs
    label_column: int | None = None  # train/dev files
    index_column: int | None = None  # test files: the `index`/`id` column written back into submissions
    skip_malformed_rows: bool = False  # QQP train/dev: skip rows with the wrong number of fields, as the original did


# What a problem predicts; each type decides its labels' encoding, head, loss, metrics and prediction file
# (problems.TYPES). GLUE rows are "cls", except STS-B ("regression"). The last two learn from text alone: masked LM
# ("mask_lm") and BERT's pre-training, masked LM plus next-sentence prediction ("pretrain").
PROBLEM_TYPES = ("cls", "regression", "multi_cls", "seq_tag", "mask_lm", "pretrain")
LM_TYPES = ("mask_lm", "pretrain")
# How a problem's metrics become its score (for the best-model choice): GLUE rows average theirs (MRPC's F1 and
# accuracy, say), as the original code did; other problems use their first metric.
SCORE_RULES = ("mean", "first")


@dataclass(frozen=True)
class Problem:
    """One row of a problem table: a GLUE task, a People's Daily problem or one the user defines (problems.py).

    `Task` is this same class: GLUE's rows are problems. GLUE's quirks are fields of their rows:
    label_scale (STS-B's 5.0: the regression target is label / scale; predictions are written x scale, clipped to
    [0, scale]), head_of ("mnli" for AX: predicted with that problem's head), default_label ("0" for WNLI: the class
    predicted when the model has no head for it).
    """
    name: str
    directory: str  # under --data_dir ("" for the user's problems, whose files are absolute paths)
    splits: dict  # split name -> how to read it (SplitFormat for GLUE; the other formats are in problems.py)
    labels: tuple | None  # output order of the head (cls, multi_cls, seq_tag); None = regression
    metrics: dict  # dev split -> metric names, in the order they are reported
    submission_files: dict = field(default_factory=dict)  # GLUE test split -> GLUE server file name
    type: str = "cls"  # one of PROBLEM_TYPES
    label_scale: float | None = None  # regression: targets are label / label_scale
    head_of: str | None = None  # predicted with this problem's head (AX: "mnli")
    default_label: str | None = None  # predicted for every example when the model has no head for it (WNLI: "0")
    score_rule: str = "first"  # one of SCORE_RULES
    loss_weight: float = 1.0  # this problem's loss is multiplied by it in every step that trains it
    inputs_of: str | None = None  # mask_lm: the problem whose inputs (texts or words, unlabelled) it reads

    def __post_init__(self):
        if self.type not in PROBLEM_TYPES:
            raise ValueError(
                f"problem {self.name}: unknown type {self.type!r}; expected one of {', '.join(PROBLEM_TYPES)}"
            )
        unlabelled = self.type == "regression" or self.type in LM_TYPES
        if (self.labels is None) != unlabelled:
            raise ValueError(f"problem {self.name}: a {self.type} problem "
                             f"{'has no labels' if unlabelled else 'needs its list of labels'}")
        if self.inputs_of is not None and self.type != "mask_lm":
            raise ValueError(f"problem {self.name}: inputs_of is for mask_lm problems, not {self.type}")
        if self.label_scale is not None and (self.type != "regression" or not self.label_scale > 0):
            raise ValueError(f"problem {self.name}: label_scale must be a positive number, and only for regression")
        if self.score_rule not in SCORE_RULES:
            raise ValueError(f"problem {self.name}: score_rule {self.score_rule!r} is not one of {SCORE_RULES}")
        if isinstance(self.loss_weight, bool) or not isinstance(self.loss_weight, (int, float)) or \
                not self.loss_weight > 0:
            raise ValueError(f"problem {self.name}: loss_weight must be a positive number, got {self.loss_weight!r}")

    @property
    def is_regression(self):
        return self.type == "regression"

    @property
    def num_labels(self):
        """Outputs of the problem's own head: 1 for regression, one per label otherwise, none for mask_lm and
        pretrain (their head is BERT's pre-training heads, shared)."""
        if self.type in LM_TYPES:
            return 0
        return 1 if self.labels is None else len(self.labels)

    @property
    def dev_splits(self):
        return tuple(split for split in self.splits if split.startswith("dev"))

    @property
    def test_splits(self):
        return tuple(split for split in self.splits if split.startswith("test"))

    def split_format(self, split):
        if split not in self.splits:
            raise ValueError(f"task {self.name} has no split {split!r}; its splits: {', '.join(self.splits)}")
        return self.splits[split]

    def submission_file(self, split):
        if split not in self.submission_files:
            raise ValueError(
                f"task {self.name} has no test split {split!r}; its test splits: {', '.join(self.test_splits)}"
            )
        return self.submission_files[split]

    def expand_splits(self, kind):
        """"train" / "dev" / "test" -> this task's splits of that kind (() when it has none); or one exact split."""
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
            if item.name == "splits":
                value = {split: {"format": fmt.format, **asdict(fmt)} for split, fmt in value.items()}
            elif item.name == "labels" and value is not None:
                value = list(value)
            elif item.name == "metrics":
                value = {split: list(names) for split, names in value.items()}
            record[item.name] = value
        return record


# The original code's name for a GLUE row.
Task = Problem


def _labelled(file, text_columns, label_column, header=True, skip_malformed_rows=False):
    return SplitFormat(file, header, text_columns, label_column=label_column, skip_malformed_rows=skip_malformed_rows)


def _unlabelled(file, text_columns):
    """A test file: header row, first column `index` (or `id`), no label."""
    return SplitFormat(file, True, text_columns, index_column=0)


LAST = -1
BINARY_LABELS = ("0", "1")
MNLI_LABELS = ("contradiction", "entailment", "neutral")
ENTAILMENT_LABELS = ("not_entailment", "entailment")
# WNLI's majority class in train and dev: predicted when a model has no WNLI head (the paper trains none).
WNLI_MAJORITY_LABEL = "0"

# GLUE rows average their metrics into the task score, as the original code did.
_glue_task = partial(Task, score_rule="mean")

TASKS = {
    "cola": _glue_task(
        "cola", "CoLA",
        {"train": _labelled("train.tsv", (3,), 1, header=False),
         "dev": _labelled("dev.tsv", (3,), 1, header=False),
         "test": _unlabelled("test.tsv", (1,))},
        BINARY_LABELS, {"dev": ("mcc",)}, {"test": "CoLA.tsv"}),
    "mrpc": _glue_task(
        "mrpc", "MRPC",
        {"train": _labelled("train.tsv", (3, 4), 0),
         "dev": _labelled("dev.tsv", (3, 4), 0),
         "test": _unlabelled("test.tsv", (3, 4))},
        BINARY_LABELS, {"dev": ("f1", "acc")}, {"test": "MRPC.tsv"}),
    "mnli": _glue_task(
        "mnli", "MNLI",
        {"train": _labelled("train.tsv", (8, 9), LAST),
         "dev_matched": _labelled("dev_matched.tsv", (8, 9), LAST),
         "dev_mismatched": _labelled("dev_mismatched.tsv", (8, 9), LAST),
         "test_matched": _unlabelled("test_matched.tsv", (8, 9)),
         "test_mismatched": _unlabelled("test_mismatched.tsv", (8, 9))},
        MNLI_LABELS, {"dev_matched": ("acc_m",), "dev_mismatched": ("acc_mm",)},
        {"test_matched": "MNLI-m.tsv", "test_mismatched": "MNLI-mm.tsv"}),
    "rte": _glue_task(
        "rte", "RTE",
        {"train": _labelled("train.tsv", (1, 2), LAST),
         "dev": _labelled("dev.tsv", (1, 2), LAST),
         "test": _unlabelled("test.tsv", (1, 2))},
        ENTAILMENT_LABELS, {"dev": ("acc",)}, {"test": "RTE.tsv"}),
    "sts": _glue_task(
        "sts", "STS-B",
        {"train": _labelled("train.tsv", (7, 8), LAST),
         "dev": _labelled("dev.tsv", (7, 8), LAST),
         "test": _unlabelled("test.tsv", (7, 8))},
        None, {"dev": ("pearson", "spearman")}, {"test": "STS-B.tsv"},
        type="regression", label_scale=STS_MAX_SCORE),
    "sst": _glue_task(
        "sst", "SST-2",
        {"train": _labelled("train.tsv", (0,), 1),
         "dev": _labelled("dev.tsv", (0,), 1),
         "test": _unlabelled("test.tsv", (1,))},
        BINARY_LABELS, {"dev": ("acc",)}, {"test": "SST-2.tsv"}),
    "qqp": _glue_task(
        "qqp", "QQP",
        {"train": _labelled("train.tsv", (3, 4), 5, skip_malformed_rows=True),
         "dev": _labelled("dev.tsv", (3, 4), 5, skip_malformed_rows=True),
         "test": _unlabelled("test.tsv", (1, 2))},
        BINARY_LABELS, {"dev": ("acc", "f1")}, {"test": "QQP.tsv"}),
    "qnli": _glue_task(
        "qnli", "QNLI",
        {"train": _labelled("train.tsv", (1, 2), LAST),
         "dev": _labelled("dev.tsv", (1, 2), LAST),
         "test": _unlabelled("test.tsv", (1, 2))},
        ENTAILMENT_LABELS, {"dev": ("acc",)}, {"test": "QNLI.tsv"}),
    "wnli": _glue_task(
        "wnli", "WNLI",
        {"train": _labelled("train.tsv", (1, 2), LAST),
         "dev": _labelled("dev.tsv", (1, 2), LAST),
         "test": _unlabelled("test.tsv", (1, 2))},
        BINARY_LABELS, {"dev": ("acc",)}, {"test": "WNLI.tsv"},
        default_label=WNLI_MAJORITY_LABEL),
    "ax": _glue_task(
        "ax", "diagnostic",
        {"test": _unlabelled("diagnostic.tsv", (1, 2))},
        MNLI_LABELS, {}, {"test": "AX.tsv"}, head_of="mnli"),
}

# The original code's `--tasks all` order: task ids 0-7 index the heads and the task-embedding rows.
ALL_TASKS = ("cola", "mrpc", "mnli", "rte", "sts", "sst", "qqp", "qnli")
# `--tasks inf`: the inference (entailment) tasks.
INF_TASKS = ("qnli", "mnli", "rte")
# GLUE's own spellings, accepted besides the original code's names.
TASK_ALIASES = {"sts-b": "sts", "stsb": "sts", "sst-2": "sst", "sst2": "sst", "diagnostic": "ax"}


def canonical_task_name(name):
    """"STS-B", "stsb", "sts" -> "sts" (case-insensitive); ValueError listing the valid names otherwise."""
    key = str(name).strip().lower()
    key = TASK_ALIASES.get(key, key)
    if key not in TASKS:
        raise ValueError(
            f"unknown GLUE task {name!r}; valid names: {', '.join(TASKS)} (also {', '.join(TASK_ALIASES)})"
        )
    return key


def get_task(task):
    """A `Task`, given one or any accepted name."""
    return task if isinstance(task, Task) else TASKS[canonical_task_name(task)]


def resolve_tasks(spec, task_id=None):
    """`--tasks` -> task names: "all" (ALL_TASKS), "inf" (INF_TASKS), "single" (ALL_TASKS[task_id]) or "a,b,c"."""
    spec = spec.strip().lower()
    if spec == "all":
        return list(ALL_TASKS)
    if spec == "inf":
        return list(INF_TASKS)
    if spec == "single":
        if task_id is None or not 0 <= task_id < len(ALL_TASKS):
            choices = ", ".join(f"{i}={name}" for i, name in enumerate(ALL_TASKS))
            raise ValueError(f"--tasks single needs --task_id in 0..{len(ALL_TASKS) - 1} ({choices}), got {task_id}")
        return [ALL_TASKS[task_id]]
    names = []
    for item in spec.split(","):
        if not item.strip():
            raise ValueError(
                f"--tasks {spec!r} has an empty name; expected all, inf, single or a comma list like cola,mrpc"
            )
        name = canonical_task_name(item)
        if name in names:
            raise ValueError(f"--tasks {spec!r} names {name} twice")
        if "train" not in TASKS[name].splits:
            raise ValueError(f"--tasks {spec!r}: {name} has no training data (it is predicted with the MNLI head)")
        names.append(name)
    return names


# ----------------------------------------------------------------------------------------------------------------
# Reading the TSV files
# ----------------------------------------------------------------------------------------------------------------

@dataclass(slots=True)
class Example:
    guid: str  # "<task>-<split>-<line number>"
    text_a: str
    text_b: str | None  # None for single-sentence tasks
    label: str | float | None  # label string; the 0-5 score for STS-B; None on test
    index: str | None = None  # test rows: the file's index/id column


def task_file(data_dir, task, split):
    """Path of one split's file: <data_dir>/<task directory>/<file>."""
    task = get_task(task)
    return Path(data_dir) / task.directory / task.split_format(split).file


def missing_files(data_dir, tasks, splits):
    """Every file that `tasks` need for `splits` ("train", "dev", "test" or exact split names) and that is absent."""
    missing = []
    for name in tasks:
        task = get_task(name)
        for kind in splits:
            for split in task.expand_splits(kind):
                path = task_file(data_dir, task, split)
                if not path.is_file():
                    missing.append(path)
    return missing


def _check_file(data_dir, task, split):
    path = task_file(data_dir, task, split)
    if not Path(data_dir).is_dir():
        raise FileNotFoundError(
            f"GLUE data directory not found: {data_dir} (expected the glue_data layout, e.g. "
            f"<data_dir>/{task.directory}/{task.split_format(split).file})"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"GLUE {task.name} {split} file not found: {path} (expected the glue_data layout: "
            f"<data_dir>/{task.directory}/{task.split_format(split).file})"
        )
    return path


def _read_lines(path):
    """Lines of a UTF-8 file as bytes (decoded field by field later), without MRPC's BOM and without line ends."""
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    if not data.strip():
        raise ValueError(f"{path} is empty (expected a tab-separated GLUE file)")
    if b"\r\n" in data:
        data = data.replace(b"\r\n", b"\n")  # Windows line ends, as a copy of QQP dev has
    lines = data.split(b"\n")  # only "\n": unlike str.splitlines(), not \x1c, \x85, \u2028 and others inside texts
    if lines[-1] == b"":
        lines.pop()  # the final newline
    return lines


def load_examples(data_dir, task, split):
    """Read one split's file into Examples, checking the layout, field counts and labels as it goes."""
    task = get_task(task)
    fmt = task.split_format(split)
    path = _check_file(data_dir, task, split)
    lines = _read_lines(path)
    first_data_line = 2 if fmt.header else 1
    if len(lines) < first_data_line:
        raise ValueError(f"{path} has a header but no data rows")
    first = _decode(lines[0], path, 1).split("\t")  # the header, or the first row when there is none
    expected_fields = len(first)
    needed = [column for column in (*fmt.text_columns, fmt.label_column, fmt.index_column) if column is not None]
    if any(not -expected_fields <= column < expected_fields for column in needed):
        raise ValueError(
            f"{path} has {expected_fields} columns, but {task.name} {split} reads columns {needed} "
            f"(is this the GLUE {task.directory} file?)"
        )
    if fmt.index_column is not None and first[fmt.index_column] not in INDEX_COLUMN_NAMES:
        raise ValueError(
            f"{path} line 1: column {fmt.index_column} is {first[fmt.index_column]!r}, expected index or id"
        )

    column_a = fmt.text_columns[0]
    column_b = fmt.text_columns[1] if len(fmt.text_columns) == 2 else None
    label_set = None if task.is_regression else {label.encode(): label for label in task.labels}
    examples = []
    skipped = 0
    for line_number, line in enumerate(lines[first_data_line - 1:], start=first_data_line):
        fields = line.split(b"\t")
        if len(fields) != expected_fields:
            if fmt.skip_malformed_rows:
                skipped += 1
                continue
            raise ValueError(f"{path} line {line_number}: {len(fields)} tab-separated fields, expected "
                             f"{expected_fields} (as line 1)")
        label = None
        if fmt.label_column is not None:
            raw_label = fields[fmt.label_column]
            if label_set is None:
                label = _parse_score(raw_label, path, line_number, task.label_scale)
            elif raw_label in label_set:
                label = label_set[raw_label]
            else:
                raise ValueError(f"{path} line {line_number}: label {_decode(raw_label, path, line_number)!r} is "
                                 f"not one of {task.name}'s labels {list(task.labels)}")
        examples.append(Example(
            guid=f"{task.name}-{split}-{line_number}",
            text_a=_decode(fields[column_a], path, line_number),
            text_b=None if column_b is None else _decode(fields[column_b], path, line_number),
            label=label,
            index=None if fmt.index_column is None else _decode(fields[fmt.index_column], path, line_number),
        ))
    if skipped:
        logger.warning("%s: skipped %d rows without %d fields (as the original %s reader did)",
                       path, skipped, expected_fields, task.name.upper())
    if not examples:
        raise ValueError(f"{path}: no usable rows (all {skipped} had the wrong number of fields)")
    return examples


def _decode(field, path, line_number):
    try:
        return field.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} line {line_number}: not UTF-8 text ({error.reason})") from None


def _parse_score(field, path, line_number, scale):
    text = _decode(field, path, line_number)
    try:
        score = float(text)
    except ValueError:
        score = math.nan
    if not 0.0 <= score <= scale:  # also rejects NaN
        raise ValueError(
            f"{path} line {line_number}: label {text!r} is not a similarity score in [0, {scale:g}]"
        )
    return score


# ----------------------------------------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------------------------------------

@dataclass(eq=False)
class Features:
    """The tokenised examples of one split, un-padded and packed (N examples, "rows").

    The ids of example i are input_ids[offsets[i]:offsets[i + 1]]: [CLS] A [SEP] or [CLS] A [SEP] B [SEP]; the first
    segment_a_len[i] of them ([CLS] A [SEP]) have segment id 0, the rest (B [SEP]) segment id 1.

    Problems whose input is a list of words (seq_tag, and People's Daily's entity types) have one row per piece of
    a sentence: [CLS] words [SEP], all segment 0; a sentence too long for max_seq_length is cut into consecutive
    rows at word boundaries. `sentence`, `first_word` and `word_starts` map the rows back to the words of the file.
    """
    input_ids: torch.Tensor  # int32 [total tokens], all examples concatenated
    offsets: torch.Tensor  # int64 [N + 1]
    segment_a_len: torch.Tensor  # int32 [N]
    # cls: int64 [N] class index; regression: float32 [N] label / label_scale (STS-B: score / 5);
    # multi_cls: float32 [N, L] multi-hot; None for seq_tag and on test
    labels: torch.Tensor | None
    index: list | None = field(default=None)  # test splits: the file's index/id value per example
    # seq_tag with labels: int64 [total tokens], aligned to input_ids: the label id at each word's first piece,
    # IGNORE_INDEX at [CLS], [SEP] and every other piece
    token_labels: torch.Tensor | None = None
    sentence: torch.Tensor | None = None  # word inputs: int64 [N], the source sentence (0-based, file order) of row i
    first_word: torch.Tensor | None = None  # word inputs: int64 [N], that sentence's word that row i starts with
    # word inputs: int64 [total words]: the position in input_ids of each word's first piece, in file order
    # (sentence by sentence, word by word), so token_values[word_starts] lists one value per word of the file
    word_starts: torch.Tensor | None = None

    @property
    def lengths(self):
        """int64 [N]: tokens per example, [CLS] and [SEP]s included."""
        return self.offsets[1:] - self.offsets[:-1]

    def __len__(self):
        return self.segment_a_len.numel()


def truncated_pair_lengths(len_a, len_b, max_length):
    """Lengths after Google's _truncate_seq_pair: drop the last token of the longer side (B on a tie) until they fit.

    One token at a time from the longer side keeps as much of the shorter sentence as possible, which matters
    more than truncating both by the same fraction.
    """
    while len_a + len_b > max_length:
        if len_a > len_b:
            len_a -= 1
        else:
            len_b -= 1
    return len_a, len_b


def _encode(tokenizer, texts, max_seq_length):
    """(text_a, text_b or None) pairs -> packed ids (int32), lengths (int64), segment-A lengths (int32), as numpy."""
    cls_id, sep_id = tokenizer.vocab["[CLS]"], tokenizer.vocab["[SEP]"]
    ids = array.array("i")
    lengths = array.array("q")
    segment_a = array.array("i")
    for text_a, text_b in texts:
        a = tokenizer.encode(text_a)
        if text_b is None:
            a = a[:max_seq_length - 2]  # room for [CLS] and [SEP]
            sequence = [cls_id, *a, sep_id]
            segment_a.append(len(sequence))
        else:
            b = tokenizer.encode(text_b)
            len_a, len_b = truncated_pair_lengths(len(a), len(b), max_seq_length - 3)  # [CLS], [SEP], [SEP]
            sequence = [cls_id, *a[:len_a], sep_id, *b[:len_b], sep_id]
            segment_a.append(len_a + 2)
        ids.extend(sequence)
        lengths.append(len(sequence))
    return (np.frombuffer(ids, dtype=np.int32), np.frombuffer(lengths, dtype=np.int64),
            np.frombuffer(segment_a, dtype=np.int32))


# Worker processes get the tokenizer once, through the pool initializer, then only text chunks.
_worker_tokenizer = None


def _init_worker(tokenizer):
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _encode_in_worker(job):
    texts, max_seq_length = job
    return _encode(_worker_tokenizer, texts, max_seq_length)


def available_cpus():
    """CPUs this process may run on (its affinity mask, which job schedulers set), not all of the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _process_pool(num_workers, tokenizer):
    # fork (Linux) starts workers in milliseconds without re-importing torch; they run pure Python only.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    return context.Pool(num_workers, initializer=_init_worker, initargs=(tokenizer,))


def pack_texts(examples, tokenizer, max_seq_length, num_workers=None, desc="tokenizing"):
    """Examples' texts -> packed input_ids (int32 [total tokens]), offsets (int64 [N + 1]), segment_a_len (int32 [N]);
    big sets in `num_workers` processes (default: every CPU)."""
    if max_seq_length < MIN_SEQ_LENGTH:
        raise ValueError(
            f"max_seq_length must be at least {MIN_SEQ_LENGTH} ([CLS] A [SEP] B [SEP]), got {max_seq_length}"
        )
    texts = [(example.text_a, example.text_b) for example in examples]
    num_workers = available_cpus() if num_workers is None else num_workers
    chunks = [texts[start:start + WORKER_CHUNK_EXAMPLES] for start in range(0, len(texts), WORKER_CHUNK_EXAMPLES)]
    parts = []
    if num_workers > 1 and len(texts) >= PARALLEL_MIN_EXAMPLES:
        with _process_pool(min(num_workers, len(chunks)), tokenizer) as pool, \
                tqdm(total=len(texts), desc=desc, unit="ex", leave=False, disable=None) as progress:
            for part in pool.imap(_encode_in_worker, [(chunk, max_seq_length) for chunk in chunks]):
                parts.append(part)
                progress.update(len(part[1]))
    else:
        with tqdm(total=len(texts), desc=desc, unit="ex", leave=False, disable=None) as progress:
            for chunk in chunks:
                parts.append(_encode(tokenizer, chunk, max_seq_length))
                progress.update(len(chunk))
    ids, lengths, segment_a = (np.concatenate(arrays) for arrays in zip(*parts))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return torch.from_numpy(ids), torch.from_numpy(offsets), torch.from_numpy(segment_a)


def convert_examples_to_features(examples, tokenizer, max_seq_length, task, num_workers=None, desc="tokenizing"):
    """Tokenise examples into packed `Features`; big sets in `num_workers` processes (default: every CPU)."""
    task = get_task(task)
    if not examples:
        raise ValueError(f"no {task.name} examples to convert")
    input_ids, offsets, segment_a_len = pack_texts(examples, tokenizer, max_seq_length, num_workers, desc)
    return Features(
        input_ids=input_ids,
        offsets=offsets,
        segment_a_len=segment_a_len,
        labels=_label_tensor(examples, task),
        index=None if examples[0].index is None else [example.index for example in examples],
    )


def _label_tensor(examples, task):
    labelled = [example.label is not None for example in examples]
    if not any(labelled):
        return None
    if not all(labelled):
        raise ValueError(f"{task.name}: some examples have labels and some do not")
    return score_tensor(examples, task) if task.is_regression else class_label_tensor(examples, task)


def class_label_tensor(examples, problem):
    """cls labels -> int64 [N]: each example's position in problem.labels (the head's output order)."""
    label_ids = {label: i for i, label in enumerate(problem.labels)}
    return torch.tensor([label_ids[example.label] for example in examples], dtype=torch.int64)


def score_tensor(examples, problem):
    """Regression labels -> float32 [N]: label / label_scale (STS-B: score / 5, as the original), or the label."""
    scale = problem.label_scale
    return torch.tensor([example.label if scale is None else example.label / scale for example in examples],
                        dtype=torch.float32)


# ----------------------------------------------------------------------------------------------------------------
# Feature cache
# ----------------------------------------------------------------------------------------------------------------

def default_cache_dir():
    """$EMBERT_CACHE/features, or ~/.cache/embert/features (the data directory may be read-only)."""
    return Path(os.environ.get("EMBERT_CACHE", "~/.cache/embert")).expanduser() / "features"


def _file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def feature_cache_path(cache_dir, task, split, data_file, vocab_file, do_lower_case, max_seq_length):
    """Cache file for these features; its name hashes every input that determines them (file contents, not names)."""
    task = get_task(task)
    key = hashlib.sha256()
    for part in (FEATURE_FORMAT_VERSION, task.name, split, repr(task.split_format(split)), repr(task.labels),
                 _file_sha256(data_file), _file_sha256(vocab_file), bool(do_lower_case), int(max_seq_length)):
        key.update(f"{part}\n".encode())
    return Path(cache_dir) / f"{task.name}-{split}-len{max_seq_length}-{key.hexdigest()}.pt"


def _save_atomically(features, path):
    """torch.save to a temporary file in the same folder, then os.replace: readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {item.name: getattr(features, item.name) for item in fields(Features)}
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        os.unlink(tmp_name)
        raise


def cached_features(cache_path, build, what):
    """Features from `cache_path` when it holds them, else `build()`, saved there for the next run.

    Safe for concurrent callers (DDP ranks, say): each writes its own temporary file and renames it into place.
    They would all build, though: let one rank build the cache first. `what` names the data in log lines.
    """
    if cache_path.is_file():
        try:
            return Features(**torch.load(cache_path, weights_only=True))
        except Exception as error:  # a damaged cache file is rebuilt, never fatal
            logger.warning("ignoring unreadable feature cache %s (%s); rebuilding it", cache_path, error)
    start = time.perf_counter()
    features = build()
    seconds = time.perf_counter() - start
    try:
        _save_atomically(features, cache_path)
        logger.info("tokenized %s (%d examples) in %.1f s; cached in %s", what, len(features), seconds, cache_path)
    except OSError as error:  # a read-only or full cache disk costs time on the next run, not this run
        logger.warning("tokenized %s in %.1f s but could not cache it in %s (%s); point $EMBERT_CACHE or "
                       "--cache_dir to a writable folder", what, seconds, cache_path.parent, error)
    return features


def load_features(data_dir, task, split, vocab_file, do_lower_case, max_seq_length, cache_dir=None, num_workers=None):
    """Features of one GLUE split, from the cache when this exact input was tokenised before, else built and cached."""
    task = get_task(task)
    data_file = _check_file(data_dir, task, split)
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
    cache_path = feature_cache_path(cache_dir, task, split, data_file, vocab_file, do_lower_case, max_seq_length)

    def build():
        tokenizer = FullTokenizer(vocab_file, do_lower_case=do_lower_case)
        examples = load_examples(data_dir, task, split)
        return convert_examples_to_features(examples, tokenizer, max_seq_length, task, num_workers=num_workers,
                                            desc=f"tokenizing {task.name} {split}")

    return cached_features(cache_path, build, f"{task.name} {split}")


# ----------------------------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------------------------

def make_batch(features, indices, pad_to=None, pad_multiple=8):
    """Pad the examples at `indices` into a batch of int64 [B, T] tensors (plus labels [B] unless on test, and the
    flat positions of the real tokens, token_index [N]; multi_cls labels are [B, L]; seq_tag features add
    token_labels [N], one per real token, in token_index order).

    T = the longest example rounded up to `pad_multiple` (padding is masked, so results do not change, and
    tensor-core friendly shapes repeat more often), or exactly `pad_to` (Gated-BERT's gate needs max_seq_length).
    Works on whichever device `features` live on, with no per-example Python loop.
    """
    indices = torch.as_tensor(indices, dtype=torch.int64, device=features.offsets.device)
    if indices.ndim != 1 or indices.numel() == 0:
        raise ValueError(f"make_batch needs a non-empty 1-D list of example indices, got shape {tuple(indices.shape)}")
    starts = features.offsets[indices]  # [B]
    lengths = features.offsets[indices + 1] - starts  # [B]
    longest = int(lengths.max())
    if pad_to is None:
        width = -(-longest // pad_multiple) * pad_multiple
    elif longest > pad_to:
        raise ValueError(f"an example has {longest} tokens, more than pad_to={pad_to}")
    else:
        width = pad_to
    positions = torch.arange(width, device=indices.device)  # [T]
    real = positions < lengths[:, None]  # [B, T]: True on real tokens
    gather_at = torch.where(real, starts[:, None] + positions, 0)  # [B, T]: padding reads token 0, then masked
    input_ids = torch.where(real, features.input_ids[gather_at].long(), PAD_ID)
    segment_b = positions >= features.segment_a_len[indices].long()[:, None]  # [B, T]
    batch = {
        "input_ids": input_ids,
        "token_type_ids": (real & segment_b).long(),
        "attention_mask": real.long(),
        # [N]: flat positions of the real tokens, for the model's packed layers; built here, on the host, so the
        # model need not ask the GPU for it (a sync).
        "token_index": real.flatten().nonzero().squeeze(1),
    }
    if features.labels is not None:
        batch["labels"] = features.labels[indices]  # [B], or [B, L] multi-hot (multi_cls)
    if features.token_labels is not None:
        # [N]: the labels of the real tokens in token_index order (row-major; boolean indexing keeps that order)
        batch["token_labels"] = features.token_labels[gather_at[real]]
    return batch


# ----------------------------------------------------------------------------------------------------------------
# Metrics (whole split, in percent)
# ----------------------------------------------------------------------------------------------------------------

def _accuracy(predictions, labels):
    return float(np.mean(predictions == labels))


def _correlation(function):
    def metric(predictions, labels):
        # Undefined for a constant input; reported as 0 (no correlation), as scikit-learn does for MCC, so that a
        # collapsed model scores as chance instead of turning the GLUE score into NaN.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", stats.ConstantInputWarning)
            value = function(predictions, labels)[0]
        return 0.0 if math.isnan(value) else float(value)
    return metric


METRIC_FUNCTIONS = {
    "acc": _accuracy,
    "acc_m": _accuracy,  # MNLI matched
    "acc_mm": _accuracy,  # MNLI mismatched
    "f1": lambda predictions, labels: float(sk_metrics.f1_score(labels, predictions)),  # class 1 is positive
    "mcc": lambda predictions, labels: float(sk_metrics.matthews_corrcoef(labels, predictions)),
    "pearson": _correlation(stats.pearsonr),
    "spearman": _correlation(stats.spearmanr),
}


def _as_numpy(values):
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        if values.is_floating_point():
            values = values.double()  # numpy has no bfloat16 (the model's output under autocast)
    return np.asarray(values)


def compute_metrics(task, split, predictions, labels):
    """The task's dev metrics on a whole split, in percent (x100).

    predictions: class indices, or regression outputs for STS-B (Pearson and Spearman do not change when the
    outputs and targets are both scaled by 5, so score/5 targets give the same values as 0-5 scores).
    """
    task = get_task(task)
    if split not in task.metrics:
        raise ValueError(f"task {task.name} has no metrics for split {split!r}; its dev splits: {list(task.metrics)}")
    predictions, labels = _as_numpy(predictions), _as_numpy(labels)
    if predictions.shape != labels.shape or predictions.ndim != 1 or predictions.size == 0:
        raise ValueError(f"{task.name} {split}: predictions {predictions.shape} and labels {labels.shape} "
                         "must be the same non-empty 1-D shape")
    return {name: 100.0 * METRIC_FUNCTIONS[name](predictions, labels) for name in task.metrics[split]}


def task_score(metrics):
    """One task's score: the mean of its metrics (e.g. MRPC (F1 + accuracy) / 2)."""
    if not metrics:
        raise ValueError("task_score needs at least one metric")
    return sum(metrics.values()) / len(metrics)


def glue_score(scores):
    """GLUE score: mean over tasks of each task's mean metric; `scores` = {task: {metric: value}}."""
    if not scores:
        raise ValueError("glue_score needs at least one task")
    return sum(task_score(metrics) for metrics in scores.values()) / len(scores)
