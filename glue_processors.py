"""GLUE's tasks as one table of problems, their one TSV reader, their cached features and the GLUE score.

The table
---------
`TASKS` maps each task name to a frozen `Task`, which is `problem_record.Problem`, the row type of every problem
table; everything task-specific lives there and nowhere else:

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

Features and metrics
--------------------
Features are built as every problem's (features.py), cached under a name that hashes the task's row, the file's
contents, the vocabulary and the settings. Metrics are computed on a whole split (metrics.py; the original averaged MCC
and Pearson over evaluation batches), in percent: CoLA MCC; MRPC F1 and accuracy; STS-B Pearson and Spearman; QQP
accuracy and F1; MNLI accuracy on dev_matched ("acc_m") and dev_mismatched ("acc_mm"); the others accuracy. A task's
score is the mean of its metrics, the GLUE score the mean of the task scores.
"""
import codecs
import hashlib
import logging
import math
from functools import partial
from pathlib import Path

import features as feats
import metrics
import problem_types
from features import Example
from problem_record import Problem, SplitFormat
from tokenization import FullTokenizer

logger = logging.getLogger(__name__)

# STS-B similarity scores run from 0 to 5; the regression target is score / 5, as in the original code.
STS_MAX_SCORE = 5.0
# Column names that GLUE test files use for their first column (QQP says "id", the others "index").
INDEX_COLUMN_NAMES = ("index", "id")

# ----------------------------------------------------------------------------------------------------------------
# The task table
# ----------------------------------------------------------------------------------------------------------------

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


def read_lines(path, expected="a tab-separated GLUE file"):
    """Lines of a UTF-8 file as bytes (decoded field by field later), without MRPC's BOM and without line ends.
    `expected`: what the file should hold, in the message for an empty one."""
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    if not data.strip():
        raise ValueError(f"{path} is empty (expected {expected})")
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
    lines = read_lines(path)
    first_data_line = 2 if fmt.header else 1
    if len(lines) < first_data_line:
        raise ValueError(f"{path} has a header but no data rows")
    first = decode(lines[0], path, 1).split("\t")  # the header, or the first row when there is none
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
    label_set = {label.encode(): label for label in task.labels} if problem_types.of(task).has_label_list else None
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
                raise ValueError(f"{path} line {line_number}: label {decode(raw_label, path, line_number)!r} is "
                                 f"not one of {task.name}'s labels {list(task.labels)}")
        examples.append(Example(
            guid=f"{task.name}-{split}-{line_number}",
            text_a=decode(fields[column_a], path, line_number),
            text_b=None if column_b is None else decode(fields[column_b], path, line_number),
            label=label,
            index=None if fmt.index_column is None else decode(fields[fmt.index_column], path, line_number),
        ))
    if skipped:
        logger.warning("%s: skipped %d rows without %d fields (as the original %s reader did)",
                       path, skipped, expected_fields, task.name.upper())
    if not examples:
        raise ValueError(f"{path}: no usable rows (all {skipped} had the wrong number of fields)")
    return examples


def decode(field, path, line_number):
    try:
        return field.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} line {line_number}: not UTF-8 text ({error.reason})") from None


def _parse_score(field, path, line_number, scale):
    text = decode(field, path, line_number)
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
# Features and the GLUE score
# ----------------------------------------------------------------------------------------------------------------

def feature_cache_path(cache_dir, task, split, data_file, vocab_file, do_lower_case, max_seq_length):
    """Cache file for these features; its name hashes every input that determines them (file contents, not names)."""
    task = get_task(task)
    key = hashlib.sha256()
    for part in (feats.FEATURE_FORMAT_VERSION, task.name, split, repr(task.split_format(split)), repr(task.labels),
                 feats.file_sha256(data_file), feats.file_sha256(vocab_file), bool(do_lower_case), int(max_seq_length)):
        key.update(f"{part}\n".encode())
    return Path(cache_dir) / f"{task.name}-{split}-len{max_seq_length}-{key.hexdigest()}.pt"


def load_features(data_dir, task, split, vocab_file, do_lower_case, max_seq_length, cache_dir=None, num_workers=None):
    """Features of one GLUE split, from the cache when this exact input was tokenised before, else built and cached."""
    task = get_task(task)
    data_file = _check_file(data_dir, task, split)
    cache_dir = feats.default_cache_dir() if cache_dir is None else Path(cache_dir)
    cache_path = feature_cache_path(cache_dir, task, split, data_file, vocab_file, do_lower_case, max_seq_length)

    def build():
        tokenizer = FullTokenizer(vocab_file, do_lower_case=do_lower_case)
        examples = load_examples(data_dir, task, split)
        return feats.convert_examples(task, examples, tokenizer, max_seq_length, problem_types.of(task).encode_labels,
                                      num_workers, desc=f"tokenizing {task.name} {split}")

    return feats.cached_features(cache_path, build, f"{task.name} {split}")


def glue_score(scores):
    """GLUE score: mean over tasks of each task's mean metric; `scores` = {task: {metric: value}}."""
    if not scores:
        raise ValueError("glue_score needs at least one task")
    return sum(metrics.mean_of(values) for values in scores.values()) / len(scores)
