"""Problems of four types on GLUE, People's Daily 1998 and the user's own data: the problem table, the readers,
features with per-token labels, predictions, metrics and prediction files.

A problem is a row of a table (`glue_processors.Problem`; GLUE's `Task` is the same class): its name, its type,
how to read each split, its labels (the head's output order) and its metrics per dev split. Everything that depends
on the type is decided in one place, the `TYPES` table:

    type        head        Features labels                     predictions           dev metrics             file
    cls         pooled      labels int64 [N] class index        argmax (N,)           acc (GLUE: theirs)      .tsv
    regression  pooled      labels float32 [N] label / scale    logits[:, 0] (N,)     pearson, spearman       .tsv
    multi_cls   pooled      labels float32 [N, L] multi-hot     sigmoid > 0.5 (N, L)  micro_f1, macro_f1,     .tsv
                                                                                      exact_match
    seq_tag     tokens      token_labels int64 [total tokens]   argmax per packed     f1, precision, recall   .conll
                                                                token                 (spans), else acc

`PROBLEMS` holds the predefined problems: GLUE's (glue_processors.TASKS) and People's Daily's (pku_cws, pku_pos,
pku_ner: seq_tag; pku_entity_types: multi_cls), read from <data_dir>/pku199801/199801.txt (its README). The user adds
problems with a JSON file (`read_problems_file`); paths in it are relative to the file:

    {"emotion": {"type": "multi_cls", "format": "tsv", "train": "emo/train.tsv", "dev": "emo/dev.tsv",
                 "text": ["word"], "label": "labels", "label_separator": ","},
     "ner":     {"type": "seq_tag", "format": "conll", "train": "ner/train.txt", "dev": "ner/dev.txt",
                 "token_column": 0, "label_column": -1}}

Word inputs (seq_tag, and pku_entity_types, which shares the People's Daily sentences) become one row per piece of a
sentence, `[CLS] pieces of the words [SEP]`: a sentence longer than max_seq_length allows is cut into consecutive
rows at word boundaries, never truncated or dropped, so every word of the file gets exactly one prediction (on its
first piece). Features.sentence / first_word / word_starts map the rows back to the file's words.
"""
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import random
import re
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from seqeval import metrics as seqeval_metrics
from sklearn import metrics as sk_metrics

import glue_processors
from glue_processors import (
    FEATURE_FORMAT_VERSION, IGNORE_INDEX, LM_TYPES, PROBLEM_TYPES, TASK_ALIASES, TASKS, Example, Features, Problem,
    SplitFormat, cached_features, class_label_tensor, compute_metrics, default_cache_dir, load_features, pack_texts,
    score_tensor, task_score,
)
from tokenization import FullTokenizer

__all__ = [  # what the training and prediction scripts use, besides the GLUE names in glue_processors
    "PROBLEM_TYPES", "Problem", "TYPES", "PROBLEMS", "read_problems_file", "problem_from_record", "get_problem",
    "canonical_problem_name", "resolve_problems", "read_examples", "load_problem_features",
    "convert_problem_examples", "predictions_from_logits", "problem_metrics", "problem_score", "sentence_tags",
    "prediction_strings", "prediction_file_name", "write_predictions", "missing_problem_files", "problem_file",
]

logger = logging.getLogger(__name__)

# Bump when features of the non-GLUE problems change without their inputs changing (word rows, the cut, labels);
# part of their cache key, beside glue_processors.FEATURE_FORMAT_VERSION.
PROBLEM_FEATURE_FORMAT_VERSION = 1
# multi_cls: a label is predicted when its sigmoid exceeds this (the seed's threshold).
MULTI_LABEL_THRESHOLD = 0.5
# Rows of a word input: [CLS] pieces [SEP].
SPECIAL_TOKENS_PER_ROW = 2
# Significant digits of a regression prediction in a .tsv file.
REGRESSION_DIGITS = 6
PREDICTION_HEADER = "index\tprediction"
# The user's problem names become file names and, in a later issue, parts of the --tasks grammar (& | ,).
PROBLEM_NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*")
USER_FORMATS = ("tsv", "jsonl", "conll", "text")
CONLL_DOCSTART = "-DOCSTART-"
DEFAULT_LABEL_SEPARATOR = ","
# seq_tag labels read as spans: word-segmentation tags b/m/e/s (seqeval reads them as B/I/E/S of one type), or
# tags with a B-/I-/E-/S- prefix (and O outside spans).
BMES_TO_SEQEVAL = {"b": "B", "m": "I", "e": "E", "s": "S"}
SPAN_TAG_PATTERN = re.compile(r"[BIES]-.+")
OUTSIDE_TAG = "O"


# ----------------------------------------------------------------------------------------------------------------
# How each split is read (GLUE's is glue_processors.SplitFormat)
# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TsvSplit:
    """A tab-separated file with a header row naming its columns (no quoting: quotes are literal text)."""
    format: ClassVar[str] = "tsv"
    file: str
    text: tuple  # one or two column names: a sentence or a pair
    label: str | None  # label column (optional on test)
    index: str | None = None  # test: the column written as `index` in predictions (default: the row number)
    label_separator: str = DEFAULT_LABEL_SEPARATOR  # multi_cls: labels joined in one field


@dataclass(frozen=True)
class JsonlSplit(TsvSplit):
    """One JSON object per line; `text`, `label` and `index` name keys (multi_cls labels: a list or a joined string)."""
    format: ClassVar[str] = "jsonl"


@dataclass(frozen=True)
class ConllSplit:
    """One token per line, whitespace-separated columns, a blank line between sentences, -DOCSTART- lines skipped."""
    format: ClassVar[str] = "conll"
    file: str
    token_column: int = 0
    label_column: int = -1  # -1 = the last column


@dataclass(frozen=True)
class PkuSplit:
    """People's Daily 1998: the train or dev sentences of 199801.txt, with the tags of one problem."""
    format: ClassVar[str] = "pku"
    file: str
    part: str  # "train" or "dev"
    tags: str  # a key of PKU_TAGGERS


@dataclass(frozen=True)
class TextSplit:
    """Plain text. mask_lm: one text per line; pretrain: one sentence per line, a blank line between documents."""
    format: ClassVar[str] = "text"
    file: str


@dataclass(frozen=True)
class PkuDocumentsSplit:
    """People's Daily 1998 as documents (pretrain): a paragraph (a line of 199801.txt) is a document of sentences
    split as the other PKU problems split them; the train or dev paragraphs."""
    format: ClassVar[str] = "pku_documents"
    file: str
    part: str  # "train" or "dev"


SPLIT_FORMATS = {fmt.format: fmt for fmt in (SplitFormat, TsvSplit, JsonlSplit, ConllSplit, PkuSplit, TextSplit,
                                             PkuDocumentsSplit)}


@dataclass(slots=True)
class TaggedSentence:
    """A sentence as words (tokens): one tag per word, or None on an unlabelled split."""
    guid: str  # "<problem>-<split>-<line number of its first word>"
    tokens: list
    tags: list | None


# ----------------------------------------------------------------------------------------------------------------
# People's Daily 1998 (../shared/pku199801/README.md)
# ----------------------------------------------------------------------------------------------------------------

PKU_DIRECTORY, PKU_FILE = "pku199801", "199801.txt"
# A sentence ends after each of these words; the mark stays with its sentence.
PKU_SENTENCE_END_WORDS = frozenset("。！？")
# Sentence i (0-based, file order) is dev when i % PKU_DEV_EVERY == PKU_DEV_REMAINDER: a tenth of the corpus.
PKU_DEV_EVERY, PKU_DEV_REMAINDER = 10, 9
# The 44 part-of-speech tags of 199801.txt (every one it uses), sorted.
PKU_POS_TAGS = ("Ag", "Bg", "Dg", "Mg", "Ng", "Rg", "Tg", "Vg", "Yg", "a", "ad", "an", "b", "c", "d", "e", "f", "h",
                "i", "j", "k", "l", "m", "n", "na", "nr", "ns", "nt", "nx", "nz", "o", "p", "q", "r", "s", "t", "u",
                "v", "vd", "vn", "vvn", "w", "y", "z")
# Word tags of the entities: a run of consecutive nr words is one person; each ns / nt word one location /
# organisation; t words are times (for the entity-type problem only).
PKU_PERSON, PKU_ENTITY_TAGS = "nr", {"ns": "LOC", "nt": "ORG"}
PKU_ENTITY_TYPES = {"nr": "PER", "ns": "LOC", "nt": "ORG", "t": "TIME"}


def _bmes(length):
    """Character positions in a word of `length` characters: s, or b m ... m e."""
    return ["s"] if length == 1 else ["b", *["m"] * (length - 2), "e"]


def _cws_tags(words):
    return [tag for word, _ in words for tag in _bmes(len(word))]


def _pos_tags(words):
    return [f"{BMES_TO_SEQEVAL[position]}-{pos}" for word, pos in words for position in _bmes(len(word))]


def _ner_tags(words):
    tags, previous_pos = [], None
    for word, pos in words:
        if pos == PKU_PERSON:
            begins = previous_pos != PKU_PERSON  # a surname and a given name are one person
            tags += [f"{'B' if begins and i == 0 else 'I'}-PER" for i in range(len(word))]
        elif pos in PKU_ENTITY_TAGS:
            tags += [f"{'B' if i == 0 else 'I'}-{PKU_ENTITY_TAGS[pos]}" for i in range(len(word))]
        else:
            tags += [OUTSIDE_TAG] * len(word)
        previous_pos = pos
    return tags


def _entity_type_tags(words):
    """Per character: the entity type of its word, or O; a row's multi_cls labels are the types it contains."""
    return [PKU_ENTITY_TYPES.get(pos, OUTSIDE_TAG) for word, pos in words for _ in word]


PKU_TAGGERS = {"cws": _cws_tags, "pos": _pos_tags, "ner": _ner_tags, "entity_types": _entity_type_tags}


@functools.lru_cache(maxsize=2)  # the four PKU problems read the same file; keyed by path, size and mtime
def _pku_sentences(path, size, mtime_ns):
    """199801.txt -> [(line number, [(word, pos), ...]), ...]: lines split after every 。！？ word."""
    sentences = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            words, start = [], line_number
            for item in line.split():
                word, slash, pos = item.rpartition("/")
                if not slash or not word or not pos:
                    raise ValueError(f"{path} line {line_number}: {item!r} is not word/TAG")
                words.append((word, pos))
                if word in PKU_SENTENCE_END_WORDS:
                    sentences.append((start, words))
                    words = []
            if words:
                sentences.append((start, words))
    return sentences


def pku_sentences(path):
    """The sentences of 199801.txt as (line number, [(word, pos), ...]), in file order (cached per file version)."""
    stat = Path(path).stat()
    return _pku_sentences(str(path), stat.st_size, stat.st_mtime_ns)


def _read_pku(problem, split, fmt, path):
    tagger = PKU_TAGGERS[fmt.tags]
    examples = []
    for i, (line_number, words) in enumerate(pku_sentences(path)):
        if (i % PKU_DEV_EVERY == PKU_DEV_REMAINDER) == (fmt.part == "dev"):
            examples.append(TaggedSentence(f"{problem.name}-{split}-{line_number}",
                                           [char for word, _ in words for char in word], tagger(words)))
    return examples, None


def _pku_problem(name, tags, type, labels, metrics):
    splits = {part: PkuSplit(PKU_FILE, part, tags) for part in ("train", "dev")}
    return Problem(name, PKU_DIRECTORY, splits, labels, {"dev": metrics}, type=type)


SPAN_METRICS = ("f1", "precision", "recall")
MULTI_LABEL_METRICS = ("micro_f1", "macro_f1", "exact_match")
MASK_LM_METRICS = ("acc", "perplexity")  # on the masked tokens
PRETRAIN_METRICS = ("mlm_acc", "nsp_acc", "perplexity")  # perplexity: the masked LM's
LOWER_IS_BETTER = ("perplexity",)
PKU_PROBLEMS = {
    "pku_cws": _pku_problem("pku_cws", "cws", "seq_tag", ("b", "m", "e", "s"), SPAN_METRICS),
    "pku_pos": _pku_problem("pku_pos", "pos", "seq_tag", tuple(f"{position}-{pos}" for pos in PKU_POS_TAGS
                                                               for position in "BIES"), (*SPAN_METRICS, "acc")),
    "pku_ner": _pku_problem("pku_ner", "ner", "seq_tag",
                            (OUTSIDE_TAG, "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"), SPAN_METRICS),
    "pku_entity_types": _pku_problem("pku_entity_types", "entity_types", "multi_cls", ("PER", "LOC", "ORG", "TIME"),
                                     MULTI_LABEL_METRICS),
    "pku_pretrain": Problem("pku_pretrain", PKU_DIRECTORY,
                            {part: PkuDocumentsSplit(PKU_FILE, part) for part in ("train", "dev")}, None,
                            {"dev": PRETRAIN_METRICS}, type="pretrain"),
}

# The predefined problems: GLUE's rows (the same objects as glue_processors.TASKS) and People's Daily's. Every
# problem X of another type also has X_mlm (mlm_problem), masked LM on X's inputs.
PROBLEMS = {**TASKS, **PKU_PROBLEMS}
MLM_SUFFIX = "_mlm"


def mlm_problem(source):
    """X_mlm: masked LM on the inputs of problem X (its train and dev splits; its labels unused)."""
    if source.type in LM_TYPES:
        raise ValueError(f"{source.name} is already a {source.type} problem; {source.name}{MLM_SUFFIX} is not defined")
    splits = {split: fmt for split, fmt in source.splits.items() if split == "train" or split in source.dev_splits}
    return Problem(source.name + MLM_SUFFIX, source.directory, splits, None,
                   {split: MASK_LM_METRICS for split in source.dev_splits}, type="mask_lm", inputs_of=source.name)


# ----------------------------------------------------------------------------------------------------------------
# Names
# ----------------------------------------------------------------------------------------------------------------

def canonical_problem_name(name, user_problems=None):
    """A predefined name (case-insensitive, GLUE's spellings too: "STS-B" -> "sts") or a user problem's name."""
    key = str(name).strip().lower()
    key = TASK_ALIASES.get(key, key)
    if key in PROBLEMS or key in (user_problems or {}):
        return key
    base = key.removesuffix(MLM_SUFFIX)
    if base != key and (TASK_ALIASES.get(base, base) in PROBLEMS or base in (user_problems or {})):
        return TASK_ALIASES.get(base, base) + MLM_SUFFIX
    valid = [*PROBLEMS, *(user_problems or {})]
    raise ValueError(f"unknown problem {name!r}; valid names: {', '.join(valid)} (also {', '.join(TASK_ALIASES)}, and "
                     f"X{MLM_SUFFIX}: masked LM on the inputs of problem X)")


def get_problem(problem, user_problems=None):
    """A `Problem`, given one or its name (predefined, X_mlm, or in `user_problems` from read_problems_file)."""
    if isinstance(problem, Problem):
        return problem
    name = canonical_problem_name(problem, user_problems)
    if name in PROBLEMS:
        return PROBLEMS[name]
    if name in (user_problems or {}):
        return user_problems[name]
    return mlm_problem(get_problem(name.removesuffix(MLM_SUFFIX), user_problems))


def resolve_problems(spec, task_id=None, user_problems=None):
    """`--tasks` -> problem names in head order: "all", "inf", "single" (GLUE, as resolve_tasks) or any names, in
    groups (resolve_groups) or not."""
    return [name for group in resolve_groups(spec, task_id, user_problems) for name in group]


GROUP_SEPARATORS = re.compile(r"[|,]")  # "|" separates groups; a comma is a "|" (today's lists keep their meaning)
SAME_INPUTS = "&"  # joins problems with the same inputs into one group, trained together on one batch


def resolve_groups(spec, task_id=None, user_problems=None):
    """`--tasks` -> groups of problem names: "a&b|c" -> [["a", "b"], ["c"]]. "|" (or ",") separates groups, sampled
    one per step; "&" joins problems trained together on one batch. "all", "inf" and "single" give one problem per
    group. Spaces around the operators are allowed; a name twice, an empty group or an unknown name is an error."""
    key = spec.strip().lower()
    if key in ("all", "inf", "single"):
        return [[name] for name in glue_processors.resolve_tasks(key, task_id)]
    groups, seen = [], set()
    for group_spec in GROUP_SEPARATORS.split(spec):
        names = [item.strip() for item in group_spec.split(SAME_INPUTS)]
        if not all(names):
            raise ValueError(f"--tasks {spec!r} has an empty group or name; expected names joined by & inside a "
                             "group and groups separated by | (or a comma), like pku_cws&pku_ner|cola")
        group = []
        for item in names:
            try:
                name = canonical_problem_name(item, user_problems)
            except ValueError as error:
                raise ValueError(f"--tasks {spec!r}: {error}") from None
            if name in seen:
                raise ValueError(f"--tasks {spec!r} names {name} twice")
            problem = get_problem(name, user_problems)
            if "train" not in problem.splits:
                where = f" (it is predicted with the {problem.head_of} head)" if problem.head_of else ""
                raise ValueError(f"--tasks {spec!r}: {name} has no training data{where}")
            seen.add(name)
            group.append(name)
        masked = [name for name in group if get_problem(name, user_problems).type in LM_TYPES]
        if masked and len(group) > 1:
            raise ValueError(f"--tasks {spec!r}: {masked[0]} masks its inputs, so it cannot share a batch with "
                             f"{[name for name in group if name != masked[0]][0]}: chain it with | instead of &")
        groups.append(group)
    return groups


def group_name(group):
    """A group's name in logs (task_counts): its problems joined by "&"."""
    return SAME_INPUTS.join(group)


# ----------------------------------------------------------------------------------------------------------------
# Files and readers
# ----------------------------------------------------------------------------------------------------------------

def problem_file(data_dir, problem, split):
    """Path of one split's file: <data_dir>/<directory>/<file>; the user's problems hold absolute paths."""
    problem = get_problem(problem)
    return Path(data_dir) / problem.directory / problem.split_format(split).file


def missing_problem_files(data_dir, problems, splits, user_problems=None):
    """Every file that `problems` (names, the user's too) need for `splits` ("train", "dev", "test" or exact names)
    and that is absent: glue_processors.missing_files over the Problem objects."""
    return glue_processors.missing_files(data_dir, [get_problem(name, user_problems) for name in problems], splits)


def _decoded_lines(path):
    """A UTF-8 file's lines (BOM, CRLF and the final newline handled as in the GLUE reader), as (number, str)."""
    return [(number, glue_processors._decode(line, path, number))
            for number, line in enumerate(glue_processors._read_lines(path), start=1)]


def _text_label(value, problem, where):
    """A tsv field or JSON value -> the label as the type keeps it: str (cls), float (regression), tuple (multi).

    `problem` needs only .type and .label_separator (a _LabelContext while the labels are still being found).
    """
    if problem.type == "regression":
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"{where}: label {value!r} is not a number (a regression target)")
    if problem.type == "multi_cls":
        separator = problem.label_separator
        if isinstance(value, list):
            items = value
        elif isinstance(value, str):
            items = value.split(separator) if value else []  # "" is the empty set
        else:
            raise ValueError(f"{where}: labels {value!r} are neither a JSON list nor a {separator!r}-joined string")
        if any(not isinstance(item, (str, int)) or isinstance(item, bool) or item == "" for item in items):
            raise ValueError(f"{where}: labels {value!r} must be non-empty strings")
        return tuple(dict.fromkeys(str(item) for item in items))
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value)  # a JSON 1 is the label "1"
    raise ValueError(f"{where}: label {value!r} is not a string")


class _LabelContext:
    """What parsing a label needs: the problem's name, type and (multi_cls) separator; labels are checked later."""

    def __init__(self, name, type, label_separator):
        self.name, self.type, self.label_separator = name, type, label_separator


def _tsv_columns(path, fmt, split, header_line):
    """Header names -> column numbers, checking the columns this split reads are there."""
    header = header_line.split("\t")
    columns = {}
    for i, name in enumerate(header):
        columns.setdefault(name, i)
    wanted = [*fmt.text, *([fmt.index] if fmt.index and split == "test" else [])]
    if fmt.label is not None and (split != "test" or fmt.label in columns):  # a test file may lack the labels
        wanted.append(fmt.label)
    absent = [name for name in wanted if name not in columns]
    if absent:
        raise ValueError(f"{path} line 1: no column {absent[0]!r} (its columns: {', '.join(header)})")
    return header, columns


def _read_tsv(problem, split, fmt, path):
    lines = _decoded_lines(path)
    header, columns = _tsv_columns(path, fmt, split, lines[0][1])
    labelled = fmt.label in columns
    context = _LabelContext(problem.name, problem.type, fmt.label_separator)
    examples, lines_of = [], []
    for row, (number, line) in enumerate(lines[1:]):
        fields = line.split("\t")
        if len(fields) != len(header):
            raise ValueError(f"{path} line {number}: {len(fields)} tab-separated fields, expected {len(header)} "
                             "(as the header, line 1)")
        texts = [fields[columns[name]] for name in fmt.text]
        label = _text_label(fields[columns[fmt.label]], context, f"{path} line {number}") if labelled else None
        index = (fields[columns[fmt.index]] if fmt.index else str(row)) if split == "test" else None
        examples.append(Example(f"{problem.name}-{split}-{number}", texts[0], texts[1] if len(texts) > 1 else None,
                                label, index))
        lines_of.append(number)
    if not examples:
        raise ValueError(f"{path} has a header but no data rows")
    return examples, lines_of


def _read_jsonl(problem, split, fmt, path):
    context = _LabelContext(problem.name, problem.type, fmt.label_separator)
    examples, lines_of = [], []
    for number, line in _decoded_lines(path):
        if not line.strip():
            continue  # blank lines (a trailing one, say) carry no record
        where = f"{path} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
        keys = [*fmt.text, *([fmt.label] if split != "test" and fmt.label is not None else []),
                *([fmt.index] if fmt.index and split == "test" else [])]
        absent = [key for key in keys if key not in record]
        if absent:
            raise ValueError(f"{where}: no key {absent[0]!r} (its keys: {', '.join(record)})")
        texts = [record[key] for key in fmt.text]
        if not all(isinstance(text, str) for text in texts):
            raise ValueError(f"{where}: text keys {list(fmt.text)} must hold strings")
        label = _text_label(record[fmt.label], context, where) if fmt.label is not None and fmt.label in record \
            else None
        index = (str(record[fmt.index]) if fmt.index else str(len(examples))) if split == "test" else None
        examples.append(Example(f"{problem.name}-{split}-{number}", texts[0], texts[1] if len(texts) > 1 else None,
                                label, index))
        lines_of.append(number)
    if not examples:
        raise ValueError(f"{path} has no JSON records")
    labelled = [example.label is not None for example in examples]
    if any(labelled) and not all(labelled):
        number = lines_of[labelled.index(False)]
        raise ValueError(f"{path} line {number}: no key {fmt.label!r}, which other lines have")
    return examples, lines_of


def _read_conll(problem, split, fmt, path):
    sentences, lines_of = [], []
    columns = None  # columns per token line: the first token line's count, which every other must have
    tokens, tags, start = [], [], None

    def end_sentence():
        if tokens:
            sentences.append(TaggedSentence(f"{problem.name}-{split}-{start}", list(tokens),
                                            list(tags) if with_tags else None))
            lines_of.append(start)
        tokens.clear()
        tags.clear()

    for number, line in _decoded_lines(path):
        fields = line.split()
        if not fields:
            end_sentence()
            continue
        if fields[0] == CONLL_DOCSTART:
            end_sentence()
            continue
        if columns is None:
            columns = len(fields)
            token_at, label_at = fmt.token_column % columns, fmt.label_column % columns
            if not (-columns <= fmt.token_column < columns and -columns <= fmt.label_column < columns):
                raise ValueError(f"{path} line {number}: {columns} column(s), but token_column is {fmt.token_column} "
                                 f"and label_column {fmt.label_column}")
            # A test file may hold the tokens alone; train and dev need a label beside each token.
            with_tags = token_at != label_at
            if not with_tags and split != "test":
                raise ValueError(f"{path} line {number}: {columns} column(s), so token_column {fmt.token_column} and "
                                 f"label_column {fmt.label_column} are the same one; expected a token and its label")
        elif len(fields) != columns:
            raise ValueError(f"{path} line {number}: {len(fields)} whitespace-separated columns, expected {columns} "
                             f"(as the first token line): a token without its label, or a label without its token")
        if not tokens:
            start = number
        tokens.append(fields[token_at])
        tags.append(fields[label_at])
    end_sentence()
    if not sentences:
        raise ValueError(f"{path} has no sentences (expected one token per line, a blank line between sentences)")
    return sentences, lines_of


def _read_text(problem, split, fmt, path):
    """mask_lm: an example per non-blank line. pretrain: documents (blank-line separated) -> sentence pairs."""
    lines = [(number, line.strip()) for number, line in _decoded_lines(path)]
    if problem.type == "pretrain":
        documents, document = [], []
        for number, line in lines:
            if line:
                document.append((number, line))
            elif document:
                documents.append(document)
                document = []
        documents += [document] if document else []
        return next_sentence_examples(problem, split, documents, path), None
    examples = [Example(f"{problem.name}-{split}-{number}", line, None, None) for number, line in lines if line]
    if not examples:
        raise ValueError(f"{path} has no text (expected one text per line)")
    return examples, None


def _read_pku_documents(problem, split, fmt, path):
    """Paragraph j is dev when j % PKU_DEV_EVERY == PKU_DEV_REMAINDER. In a training paragraph the other PKU
    problems' dev sentences (sentence i with i % PKU_DEV_EVERY == PKU_DEV_REMAINDER) are left out (None): no pair
    holds them, so a run of pku_pretrain beside pku_cws never trains on pku_cws's dev set."""
    paragraphs = {}  # line number -> [(line number, text or None), ...]: pku_sentences numbers a sentence by its line
    for i, (line_number, words) in enumerate(pku_sentences(path)):
        left_out = fmt.part == "train" and i % PKU_DEV_EVERY == PKU_DEV_REMAINDER
        paragraphs.setdefault(line_number, []).append((line_number,
                                                       None if left_out else "".join(word for word, _ in words)))
    documents = [document for j, document in enumerate(paragraphs.values())
                 if (j % PKU_DEV_EVERY == PKU_DEV_REMAINDER) == (fmt.part == "dev")
                 and any(sentence is not None for _, sentence in document)]
    return next_sentence_examples(problem, split, documents, path), None


# Next-sentence pairs as BERT's pre-training data: B is the sentence after A, or (this share of the pairs) a random
# sentence of another document. Drawn once, from a fixed seed, when a split's features are built: every run and epoch
# sees the same pairs (BERT's create_pretraining_data with one duplicate), while the masking varies per step.
NSP_RANDOM_SHARE = 0.5
NSP_PAIRS_SEED = 12345
NSP_IS_NEXT, NSP_RANDOM = 0, 1  # the pretrain problem's NSP labels, cls.seq_relationship's output order


def next_sentence_examples(problem, split, documents, source):
    """documents: [[(line number, sentence), ...], ...] -> one pair per sentence that has a next one in its document:
    Example(text_a=sentence, text_b=the next one (label NSP_IS_NEXT) or a random other document's (NSP_RANDOM)).
    A sentence None is left out: no pair holds it (every document needs at least one other sentence)."""
    if len(documents) < 2:
        raise ValueError(f"{source}: {problem.name} ({split}) needs at least two documents (separated by a blank line) "
                         f"to draw random next sentences from; found {len(documents)}")
    rng = random.Random(NSP_PAIRS_SEED)
    drawable = [[sentence for _, sentence in document if sentence is not None] for document in documents]
    examples = []
    for d, document in enumerate(documents):
        for (number, sentence), (_, following) in zip(document, document[1:]):
            if sentence is None or following is None:
                continue
            if rng.random() < NSP_RANDOM_SHARE:
                other = rng.randrange(len(documents) - 1)
                other += other >= d  # any document but this one
                text_b, label = rng.choice(drawable[other]), NSP_RANDOM
            else:
                text_b, label = following, NSP_IS_NEXT
            examples.append(Example(f"{problem.name}-{split}-{number}-{len(examples)}", sentence, text_b, label))
    if not examples:
        raise ValueError(f"{source}: {problem.name} ({split}): no document has two sentences (one sentence per line, "
                         "a blank line between documents)")
    return examples


READERS = {"tsv": _read_tsv, "jsonl": _read_jsonl, "conll": _read_conll, "pku": _read_pku, "text": _read_text,
           "pku_documents": _read_pku_documents}


# Labels listed in an error message; a longer list (pku_pos has 176) is cut, with its length.
SHOWN_LABELS = 20


def _shown(labels):
    listed = ", ".join(labels[:SHOWN_LABELS])
    return listed if len(labels) <= SHOWN_LABELS else f"{listed}, ... ({len(labels)} in all)"


def _check_labels(problem, split, path, examples, lines_of):
    """Every label of a dev/test (and train) split must be one of the problem's: an error names file, line, label."""
    if problem.type in LM_TYPES:  # labels made from the text itself
        return
    if problem.type == "regression":
        if problem.label_scale is not None:
            for example, number in zip(examples, lines_of):
                if example.label is not None and not 0.0 <= example.label <= problem.label_scale:
                    raise ValueError(f"{path} line {number}: label {example.label:g} is outside "
                                     f"[0, {problem.label_scale:g}] (label_scale)")
        return
    known = set(problem.labels)
    if problem.type == "multi_cls" and examples and isinstance(examples[0], TaggedSentence):
        known.add(OUTSIDE_TAG)  # word inputs of a multi_cls problem: O marks a word of no label
    for i, example in enumerate(examples):
        if isinstance(example, TaggedSentence):
            values = example.tags or ()
        elif problem.type == "multi_cls":
            values = example.label or ()
        else:
            values = () if example.label is None else (example.label,)
        for value in values:
            if value not in known:
                if isinstance(example, TaggedSentence) and lines_of is not None:
                    number = lines_of[i] + example.tags.index(value)  # conll: one token per line
                else:
                    number = int(example.guid.rsplit("-", 1)[1])
                raise ValueError(f"{path} line {number}: label {value!r} is not one of {problem.name}'s labels "
                                 f"({_shown(problem.labels)})")


def read_examples(problem, split, data_dir, user_problems=None):
    """One split's examples: glue_processors.Example (text inputs) or TaggedSentence (word inputs), labels checked."""
    problem = get_problem(problem, user_problems)
    fmt = problem.split_format(split)
    if isinstance(fmt, SplitFormat):
        return glue_processors.load_examples(data_dir, problem, split)
    path = problem_file(data_dir, problem, split)
    if not path.is_file():
        raise FileNotFoundError(f"problem {problem.name}: {split} file not found: {path}")
    examples, lines_of = READERS[fmt.format](problem, split, fmt, path)
    _check_labels(problem, split, path, examples, lines_of)
    if split in problem.test_splits:  # labels a test file may carry are checked, but a test split is unlabelled
        for example in examples:
            if isinstance(example, TaggedSentence):
                example.tags = None
            else:
                example.label = None
    return examples


# ----------------------------------------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------------------------------------

def encode_word_rows(tokenizer, sentences, max_seq_length):
    """Word lists -> rows [CLS] pieces [SEP], cut at word boundaries so that every word is in exactly one row.

    Returns numpy arrays: input_ids int32 [total tokens], lengths int64 [N], sentence int64 [N], first_word int64 [N],
    word_starts int64 [total words] (position of each word's first piece in input_ids, in file order).
    A word with more pieces than a row holds keeps its first max_seq_length - 2: its label and prediction sit on the
    first piece, and the rest of that one word cannot fit in any row.
    """
    if max_seq_length <= SPECIAL_TOKENS_PER_ROW:
        raise ValueError(f"max_seq_length must be at least {SPECIAL_TOKENS_PER_ROW + 1} ([CLS] a word [SEP]), "
                         f"got {max_seq_length}")
    budget = max_seq_length - SPECIAL_TOKENS_PER_ROW
    cls_id, sep_id = tokenizer.vocab["[CLS]"], tokenizer.vocab["[SEP]"]
    ids, lengths, sentence, first_word, word_starts = [], [], [], [], []
    for number, words in enumerate(sentences):
        if not words:
            raise ValueError(f"sentence {number} has no words (every sentence needs at least one row)")
        pieces = tokenizer.encode_words(words)
        w = 0
        while w < len(pieces):  # one row per pass
            row_start, used = len(ids), 0
            ids.append(cls_id)
            sentence.append(number)
            first_word.append(w)
            while w < len(pieces):
                word = pieces[w][:budget]
                if used + len(word) > budget:
                    break  # the next row starts with this word (it fits there: used was > 0 here)
                word_starts.append(len(ids))
                ids.extend(word)
                used += len(word)
                w += 1
            ids.append(sep_id)
            lengths.append(len(ids) - row_start)
    return (np.asarray(ids, dtype=np.int32), np.asarray(lengths, dtype=np.int64),
            np.asarray(sentence, dtype=np.int64), np.asarray(first_word, dtype=np.int64),
            np.asarray(word_starts, dtype=np.int64))


def _offsets(lengths):
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def convert_problem_examples(problem, examples, tokenizer, max_seq_length, num_workers=None, desc="tokenizing"):
    """Examples of one split -> packed Features with the labels its type encodes (TYPES[type].encode_labels).

    Text examples: [CLS] A [SEP] (B [SEP]) as GLUE's (glue_processors.pack_texts, in worker processes for big sets).
    Word examples (TaggedSentence): one row per piece of a sentence (encode_word_rows), in one process.
    """
    if not examples:
        raise ValueError(f"no {problem.name} examples to convert")
    if isinstance(examples[0], TaggedSentence):
        ids, lengths, sentence, first_word, word_starts = encode_word_rows(
            tokenizer, [example.tokens for example in examples], max_seq_length)
        features = Features(input_ids=torch.from_numpy(ids), offsets=torch.from_numpy(_offsets(lengths)),
                            segment_a_len=torch.from_numpy(lengths.astype(np.int32)), labels=None,
                            sentence=torch.from_numpy(sentence), first_word=torch.from_numpy(first_word),
                            word_starts=torch.from_numpy(word_starts))
    else:
        input_ids, offsets, segment_a_len = pack_texts(examples, tokenizer, max_seq_length, num_workers, desc)
        features = Features(input_ids=input_ids, offsets=offsets, segment_a_len=segment_a_len, labels=None,
                            index=None if examples[0].index is None else [example.index for example in examples])
    features.labels, features.token_labels = TYPES[problem.type].encode_labels(problem, examples, features)
    return features


def _labelled(problem, examples):
    """True when every example has labels, False when none has; an error for a mix."""
    labelled = [(example.tags if isinstance(example, TaggedSentence) else example.label) is not None
                for example in examples]
    if any(labelled) and not all(labelled):
        raise ValueError(f"{problem.name}: some examples have labels and some do not")
    return all(labelled)


def _encode_class_labels(problem, examples, features):
    return (class_label_tensor(examples, problem) if _labelled(problem, examples) else None), None


def _encode_scores(problem, examples, features):
    return (score_tensor(examples, problem) if _labelled(problem, examples) else None), None


def _encode_multi_hot(problem, examples, features):
    """float32 [N, L]: 1 where row i has label j. Word rows have the labels (other than O) of the words they hold."""
    if not _labelled(problem, examples):
        return None, None
    label_ids = {label: j for j, label in enumerate(problem.labels)}
    if isinstance(examples[0], TaggedSentence):
        words = [(row, tag) for row, tag in zip(_row_of_word(features).tolist(),
                                                 (tag for example in examples for tag in example.tags))
                 if tag != OUTSIDE_TAG]
    else:
        words = [(row, label) for row, example in enumerate(examples) for label in example.label]
    rows = torch.tensor([row for row, _ in words], dtype=torch.int64)
    columns = torch.tensor([label_ids[label] for _, label in words], dtype=torch.int64)
    multi_hot = torch.zeros(len(features), len(problem.labels), dtype=torch.float32)
    multi_hot[rows, columns] = 1.0
    return multi_hot, None


def _encode_token_labels(problem, examples, features):
    """int64 [total tokens]: each word's label id on its first piece, IGNORE_INDEX everywhere else."""
    if not _labelled(problem, examples):
        return None, None
    label_ids = {label: j for j, label in enumerate(problem.labels)}
    token_labels = torch.full((features.input_ids.numel(),), IGNORE_INDEX, dtype=torch.int64)
    token_labels[features.word_starts] = torch.tensor(
        [label_ids[tag] for example in examples for tag in example.tags], dtype=torch.int64)
    return None, token_labels


def _row_of_word(features):
    """int64 [total words]: the row holding each word (its first piece lies in [offsets[r], offsets[r + 1]))."""
    return torch.searchsorted(features.offsets, features.word_starts, right=True) - 1


def problem_cache_path(cache_dir, problem, split, data_file, vocab_file, do_lower_case, max_seq_length):
    """Cache file for a non-GLUE problem's features: hashes its record (type, files, labels, ...), the file's
    contents, the vocabulary and the settings. (GLUE rows keep glue_processors.feature_cache_path.)"""
    pairs = (NSP_PAIRS_SEED, NSP_RANDOM_SHARE) if problem.type == "pretrain" else ()  # how the pairs were drawn
    parts = (FEATURE_FORMAT_VERSION, PROBLEM_FEATURE_FORMAT_VERSION, json.dumps(problem.to_record(), sort_keys=True),
             *pairs, split, glue_processors._file_sha256(data_file), glue_processors._file_sha256(vocab_file),
             bool(do_lower_case), int(max_seq_length))
    key = hashlib.sha256("".join(f"{part}\n" for part in parts).encode()).hexdigest()
    return Path(cache_dir) / f"{problem.name}-{split}-len{max_seq_length}-{key}.pt"


def load_problem_features(problem, split, data_dir, vocab_file, do_lower_case, max_seq_length, cache_dir=None,
                          num_workers=None, user_problems=None):
    """Features of one split of any problem, from the on-disk cache when this exact input was tokenised before.

    GLUE rows go through glue_processors.load_features (the same features and cache files as before).
    """
    problem = get_problem(problem, user_problems)
    if problem.inputs_of is not None:  # X_mlm: X's token ids (and its cache), unlabelled
        problem.split_format(split)
        data = load_problem_features(problem.inputs_of, split, data_dir, vocab_file, do_lower_case, max_seq_length,
                                     cache_dir, num_workers, user_problems)
        return Features(input_ids=data.input_ids, offsets=data.offsets, segment_a_len=data.segment_a_len, labels=None)
    if isinstance(problem.split_format(split), SplitFormat):
        return load_features(data_dir, problem, split, vocab_file, do_lower_case, max_seq_length, cache_dir=cache_dir,
                             num_workers=num_workers)
    data_file = problem_file(data_dir, problem, split)
    if not data_file.is_file():
        raise FileNotFoundError(f"problem {problem.name}: {split} file not found: {data_file}")
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
    cache_path = problem_cache_path(cache_dir, problem, split, data_file, vocab_file, do_lower_case, max_seq_length)

    def build():
        tokenizer = FullTokenizer(vocab_file, do_lower_case=do_lower_case)
        examples = read_examples(problem, split, data_dir)
        return convert_problem_examples(problem, examples, tokenizer, max_seq_length, num_workers,
                                        desc=f"tokenizing {problem.name} {split}")

    return cached_features(cache_path, build, f"{problem.name} {split}")


# ----------------------------------------------------------------------------------------------------------------
# Predictions, metrics, prediction files
# ----------------------------------------------------------------------------------------------------------------

def span_scheme(labels):
    """"bmes" (word-segmentation tags), "prefixed" (B-/I-/E-/S-<type> and O) or None (tags that are not spans)."""
    if set(labels) <= set(BMES_TO_SEQEVAL):
        return "bmes"
    if all(label == OUTSIDE_TAG or SPAN_TAG_PATTERN.fullmatch(label) for label in labels) and \
            any(label != OUTSIDE_TAG for label in labels):
        return "prefixed"
    return None


def _seq_tag_metric_names(labels):
    return SPAN_METRICS if span_scheme(labels) else ("acc",)


def predictions_from_logits(problem, logits):
    """Logits of one split -> predictions: cls (N,) class index; regression (N,) value (in label / label_scale
    units); multi_cls (N, L) bool; seq_tag: logits per packed token (total tokens, L) -> (total tokens,) label id."""
    return TYPES[problem_with_predictions(problem).type].predict(logits)


def sentence_tags(problem, features, token_values):
    """Per-token label ids in input_ids order (predictions, or features.token_labels) -> one list of tag strings per
    sentence of the file, in file order: the values at the words' first pieces, the rows of a cut sentence joined."""
    token_values = torch.as_tensor(token_values).cpu()
    if token_values.shape != features.input_ids.shape:
        raise ValueError(f"{problem.name}: {tuple(token_values.shape)} token values for "
                         f"{features.input_ids.numel()} tokens (one per packed token, in input_ids order)")
    word_values = token_values[features.word_starts].tolist()
    words_per_sentence = torch.bincount(features.sentence[_row_of_word(features)]).tolist()
    tags, start = [], 0
    for count in words_per_sentence:
        tags.append([problem.labels[value] for value in word_values[start:start + count]])
        start += count
    return tags


def _to_seqeval(problem, tags):
    if span_scheme(problem.labels) == "bmes":
        return [[BMES_TO_SEQEVAL[tag] for tag in sentence] for sentence in tags]
    return tags


def _class_metrics(problem, split, predictions, features):
    return compute_metrics(problem, split, predictions, features.labels)


def _multi_label_metrics(problem, split, predictions, features):
    predicted = glue_processors._as_numpy(predictions).astype(bool)
    gold = glue_processors._as_numpy(features.labels).astype(bool)
    if predicted.shape != gold.shape:
        raise ValueError(f"{problem.name} {split}: predictions {predicted.shape} and labels {gold.shape} differ")
    values = {  # zero_division=0: a label never predicted nor present counts as F1 0, not a warning
        "micro_f1": lambda: sk_metrics.f1_score(gold, predicted, average="micro", zero_division=0),
        "macro_f1": lambda: sk_metrics.f1_score(gold, predicted, average="macro", zero_division=0),
        "exact_match": lambda: sk_metrics.accuracy_score(gold, predicted),  # the whole label set right
    }
    return {name: 100.0 * float(values[name]()) for name in problem.metrics[split]}


def _tag_metrics(problem, split, predictions, features):
    """Span F1 / precision / recall as seqeval reads them (default mode), and acc: the share of words tagged right."""
    predicted = _to_seqeval(problem, sentence_tags(problem, features, predictions))
    gold = _to_seqeval(problem, sentence_tags(problem, features, features.token_labels))
    values = {
        "f1": lambda: seqeval_metrics.f1_score(gold, predicted, zero_division=0),
        "precision": lambda: seqeval_metrics.precision_score(gold, predicted, zero_division=0),
        "recall": lambda: seqeval_metrics.recall_score(gold, predicted, zero_division=0),
        "acc": lambda: seqeval_metrics.accuracy_score(gold, predicted),
    }
    return {name: 100.0 * float(values[name]()) for name in problem.metrics[split]}


def problem_metrics(problem, split, predictions, features):
    """The problem's dev metrics on a whole split, in percent; GLUE rows give exactly compute_metrics' values."""
    problem = get_problem(problem)
    if split not in problem.metrics:
        raise ValueError(f"problem {problem.name} has no metrics for split {split!r}; its dev splits: "
                         f"{list(problem.metrics)}")
    if features.labels is None and features.token_labels is None and problem.type not in LM_TYPES:
        raise ValueError(f"{problem.name} {split}: the features have no labels to score against")
    return TYPES[problem.type].metrics(problem, split, predictions, features)


def problem_score(problem, metrics):
    """One problem's score for the best-model choice: GLUE rows the mean of their metrics, others the first; a masked
    LM's is minus its dev loss (-ln perplexity: higher is better)."""
    if not metrics:
        raise ValueError("problem_score needs at least one metric")
    problem = get_problem(problem)
    if problem.type in LM_TYPES:
        return -math.log(metrics["perplexity"])
    if problem.score_rule == "mean":
        return task_score(metrics)
    return next(iter(metrics.values()))


def prediction_strings(problem, predictions):
    """cls: the label; regression: the value x label_scale (clipped to [0, label_scale]); multi_cls: labels joined
    by ","."""
    problem = get_problem(problem)
    if problem.type == "regression":
        values = torch.as_tensor(predictions).float().cpu()
        if problem.label_scale is not None:
            values = (values * problem.label_scale).clamp(0.0, problem.label_scale)
        return [f"{value:.{REGRESSION_DIGITS}g}" for value in values.tolist()]
    if problem.type == "multi_cls":
        return [DEFAULT_LABEL_SEPARATOR.join(label for label, on in zip(problem.labels, row) if on)
                for row in torch.as_tensor(predictions).bool().tolist()]
    if problem.type == "cls":
        return [problem.labels[i] for i in torch.as_tensor(predictions).tolist()]
    raise ValueError(f"{problem.name} is {problem.type}: its predictions are written as CoNLL, not strings")


def prediction_file_name(problem, split):
    """<name>.tsv / <name>.conll; <name>-<split>.<ext> for a problem with several splits of that kind (MNLI)."""
    problem = problem_with_predictions(problem)
    kind = "dev" if split.startswith("dev") else "test" if split.startswith("test") else split
    several = len(problem.expand_splits(kind)) > 1
    return f"{problem.name}{f'-{split}' if several else ''}{TYPES[problem.type].file_suffix}"


def _write_text(path, text):
    """Write to a temporary file beside `path`, then rename: never a half-written prediction file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp_name, path)
    except BaseException:
        os.unlink(tmp_name)
        raise


def _write_rows(problem, split, predictions, features, path, data_dir):
    """`index<TAB>prediction` per example: the file's index on test (GLUE's, or the row number), else the row."""
    values = prediction_strings(problem, predictions)
    indices = features.index if features.index is not None else range(len(features))
    lines = [PREDICTION_HEADER, *(f"{index}\t{value}" for index, value in zip(indices, values, strict=True))]
    _write_text(path, "\n".join(lines) + "\n")


def _write_conll(problem, split, predictions, features, path, data_dir):
    """One token per line, exactly as in the input: token, gold (when the split has labels) and predicted tag; a
    blank line after each sentence, in file order."""
    sentences = read_examples(problem, split, data_dir)
    predicted = sentence_tags(problem, features, predictions)
    if [len(sentence.tokens) for sentence in sentences] != [len(tags) for tags in predicted]:
        raise ValueError(f"{problem.name} {split}: the features do not match {problem_file(data_dir, problem, split)} "
                         "(another file, or another max_seq_length?)")
    lines = []
    for sentence, tags in zip(sentences, predicted):
        gold = sentence.tags if sentence.tags is not None else [None] * len(tags)
        for token, gold_tag, tag in zip(sentence.tokens, gold, tags):
            lines.append(f"{token}\t{tag}" if gold_tag is None else f"{token}\t{gold_tag}\t{tag}")
        lines.append("")
    _write_text(path, "\n".join(lines) + "\n")


def write_predictions(problem, split, predictions, features, path, data_dir):
    """Write one split's predictions (from predictions_from_logits) to `path` (name: prediction_file_name)."""
    problem = problem_with_predictions(problem)
    TYPES[problem.type].write(problem, split, predictions, features, path, data_dir)
    return Path(path)


# ----------------------------------------------------------------------------------------------------------------
# Masked LM and pre-training
# ----------------------------------------------------------------------------------------------------------------

# BERT's masking (google-research/bert, create_pretraining_data.py): MASK_RATE of each text's word pieces are
# predicted (rounded, at least one), never [CLS] or [SEP] (padding is not in the packed features at all); of those,
# MASK_TOKEN_SHARE become [MASK], RANDOM_TOKEN_SHARE a word piece drawn uniformly from the whole vocabulary, the rest
# stay as they are.
MASK_RATE = 0.15
MASK_TOKEN_SHARE, RANDOM_TOKEN_SHARE = 0.8, 0.1
MASK_TOKEN = "[MASK]"
NEVER_MASKED = ("[CLS]", "[SEP]", "[PAD]")
REQUIRED_TOKENS = (MASK_TOKEN, "[CLS]", "[SEP]")  # what a vocabulary needs for masked LM ([PAD] is optional)
SEED_MODULUS = 2 ** 64
LARGEST_EXP_ARGUMENT = math.log(sys.float_info.max)  # math.exp overflows above it


@dataclass(frozen=True)
class Masking:
    """What masking needs from the vocabulary."""
    mask_id: int
    special_ids: tuple  # never chosen
    vocab_size: int  # random replacements are ids in [0, vocab_size)

    @classmethod
    def from_vocab(cls, vocab):
        """From a tokenization.load_vocab dict; an error names a missing special token."""
        missing = [token for token in REQUIRED_TOKENS if token not in vocab]
        if missing:
            raise ValueError(f"the vocabulary has no {missing[0]} token, which masked LM needs")
        return cls(vocab[MASK_TOKEN], tuple(vocab[token] for token in NEVER_MASKED if token in vocab), len(vocab))


def mask_tokens(features, masking, generator):
    """Features with BERT's masking applied: input_ids masked, token_labels the original id at each chosen position
    and IGNORE_INDEX elsewhere (the other fields, NSP labels included, kept). Every draw comes from `generator`, so a
    seeded generator gives the same masking on any machine and batch split.

    Per text, exactly round(MASK_RATE x its maskable pieces) are chosen (at least one when it has any): a random key per
    token, the non-maskable ones keyed last, and each text's k smallest keys chosen, with one sort for all texts.
    """
    ids = features.input_ids.long()  # (n,) packed, every text's tokens in a row
    n, lengths = ids.numel(), features.lengths
    text_of = torch.repeat_interleave(torch.arange(len(features)), lengths)  # (n,)
    candidates = maskable(features, masking)
    per_text = torch.zeros(len(features), dtype=torch.int64).index_add_(0, text_of, candidates.long())
    chosen_per_text = torch.where(per_text > 0, torch.round(per_text * MASK_RATE).long().clamp(min=1), 0)
    # Keys in [0, 1) for maskable tokens, 1 for the others; + 2 x text number keeps each text's tokens together. float64
    # holds the sum closely enough: with 10^7 texts (keys below 2^25) 27 bits of each key's fraction remain.
    keys = torch.rand(n, generator=generator, dtype=torch.float64)
    keys = torch.where(candidates, keys, 1.0) + 2.0 * text_of
    order = torch.argsort(keys)
    rank = torch.empty(n, dtype=torch.int64)
    rank[order] = torch.arange(n) - features.offsets[:-1][text_of]  # sorted, text t's tokens sit at its offsets
    chosen = rank < chosen_per_text[text_of]
    action = torch.rand(n, generator=generator)
    random_ids = torch.randint(masking.vocab_size, (n,), generator=generator)
    masked = torch.where(chosen & (action < MASK_TOKEN_SHARE), masking.mask_id,
                         torch.where(chosen & (action < MASK_TOKEN_SHARE + RANDOM_TOKEN_SHARE), random_ids, ids))
    return dataclasses.replace(features, input_ids=masked.to(features.input_ids.dtype),
                               token_labels=torch.where(chosen, ids, IGNORE_INDEX))


def seeded_generator(*seeds):
    """A CPU generator seeded from a tuple of integers (the run's seed, the step, the micro-batch): the same stream
    wherever and however often it is made, which is what makes masking resume bit-identically. Any integers (a
    negative --seed too: SeedSequence takes non-negative ones, so each is taken modulo 2^64)."""
    entropy = [seed % SEED_MODULUS for seed in seeds]
    return torch.Generator().manual_seed(int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]))


def maskable(features, masking):
    """bool [total tokens]: the word pieces masking may choose (not [CLS], [SEP] or [PAD])."""
    return ~torch.isin(features.input_ids, torch.tensor(masking.special_ids, dtype=features.input_ids.dtype))


def _encode_next_sentence(problem, examples, features):
    """int64 [N]: NSP_IS_NEXT or NSP_RANDOM per pair."""
    return torch.tensor([example.label for example in examples], dtype=torch.int64), None


def _lm_metrics(problem, split, statistics, features):
    """From lm statistics (sums over the masked tokens and pairs of a whole split): accuracy in percent on the masked
    tokens (and on next-sentence prediction), and the masked LM's perplexity, exp(mean cross-entropy)."""
    if not statistics["masked"]:
        raise ValueError(f"{problem.name} {split}: no token was masked (are the texts empty?)")
    accuracy = 100.0 * statistics["correct"] / statistics["masked"]
    mean_loss = statistics["loss"] / statistics["masked"]
    perplexity = math.exp(mean_loss) if mean_loss < LARGEST_EXP_ARGUMENT else math.inf  # a diverged model's
    if problem.type == "mask_lm":
        return {"acc": accuracy, "perplexity": perplexity}
    return {"mlm_acc": accuracy, "nsp_acc": 100.0 * statistics["next_correct"] / statistics["pairs"],
            "perplexity": perplexity}


def problem_with_predictions(problem):
    """The Problem, when it has predictions (every type but mask_lm and pretrain); a ValueError otherwise."""
    problem = get_problem(problem)
    if problem.type in LM_TYPES:
        raise ValueError(f"{problem.name} is a {problem.type} problem: it is scored on its masked tokens "
                         "(problem_metrics), with no predictions or prediction file")
    return problem


@dataclass(frozen=True)
class ProblemType:
    """Everything data-side that a problem's type decides (what its head reads and its loss: modeling.HEAD_INPUTS and
    modeling.LOSSES). mask_lm and pretrain are scored from sums over their masked tokens (multitask.lm_statistics)
    and write no prediction file."""
    encode_labels: Callable  # (problem, examples, features) -> (Features.labels, Features.token_labels)
    default_metrics: Callable  # labels -> metric names for a user problem's dev split
    predict: Callable | None  # logits -> predictions
    metrics: Callable  # (problem, split, predictions (LM: statistics), features) -> {metric: value}
    write: Callable | None  # (problem, split, predictions, features, path, data_dir) -> None
    file_suffix: str | None  # of the prediction file


TYPES = {
    "cls": ProblemType(_encode_class_labels, lambda labels: ("acc",), lambda logits: logits.argmax(-1),
                       _class_metrics, _write_rows, ".tsv"),
    "regression": ProblemType(_encode_scores, lambda labels: ("pearson", "spearman"),
                              lambda logits: logits[:, 0], _class_metrics, _write_rows, ".tsv"),
    "multi_cls": ProblemType(_encode_multi_hot, lambda labels: MULTI_LABEL_METRICS,
                             lambda logits: torch.sigmoid(logits.float()) > MULTI_LABEL_THRESHOLD,
                             _multi_label_metrics, _write_rows, ".tsv"),
    "seq_tag": ProblemType(_encode_token_labels, _seq_tag_metric_names, lambda logits: logits.argmax(-1),
                           _tag_metrics, _write_conll, ".conll"),
    "mask_lm": ProblemType(lambda problem, examples, features: (None, None), lambda labels: MASK_LM_METRICS,
                           None, _lm_metrics, None, None),
    "pretrain": ProblemType(_encode_next_sentence, lambda labels: PRETRAIN_METRICS, None, _lm_metrics, None, None),
}
assert set(TYPES) == set(PROBLEM_TYPES)


# ----------------------------------------------------------------------------------------------------------------
# The user's problems file (--problems) and problem records (a run's config.json)
# ----------------------------------------------------------------------------------------------------------------

SPLIT_KEYS = ("train", "dev", "test")
COMMON_KEYS = ("type", "format", *SPLIT_KEYS, "labels", "label_scale", "loss_weight", "inputs_of")
FORMAT_KEYS = {"tsv": ("text", "label", "index", "label_separator"),
               "jsonl": ("text", "label", "index", "label_separator"),
               "conll": ("token_column", "label_column"),
               "text": ()}
INPUTS_OF_KEYS = ("type", "inputs_of", "loss_weight")  # a mask_lm problem on another problem's inputs
ALL_KEYS = tuple(dict.fromkeys((*COMMON_KEYS, *(key for keys in FORMAT_KEYS.values() for key in keys))))
MAX_TEXT_FIELDS = 2  # a sentence or a pair


def _unique_keys(pairs):
    """json object_pairs_hook: a key given twice is an error (json would silently keep the last)."""
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"key {key!r} given twice")
        result[key] = value
    return result


def read_problems_file(path):
    """The user's problems JSON -> {name: Problem}, every field checked (one-line errors naming file and problem).

    Paths are relative to the problems file and stored absolute. Labels, when not given: the sorted training labels
    (for seq_tag also the dev labels, with a warning).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"problems file not found: {path} (expected a JSON object of named problems)")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} line {error.lineno}: not valid JSON ({error.msg})") from None
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    if not isinstance(spec, dict) or not spec:
        raise ValueError(f"{path}: expected a JSON object {{name: problem, ...}} with at least one problem")
    found = {}
    for name, body in spec.items():  # those reading another's inputs after the others: they may name a later one
        if not (isinstance(body, dict) and "inputs_of" in body):
            found[name] = _problem_from_spec(name, body, path)
    for name, body in spec.items():
        if name not in found:
            source = body["inputs_of"]
            if isinstance(source, str) and source in spec and source not in found:  # not built yet: an inputs_of one
                raise ValueError(f"{path}: problem {name!r}: inputs_of {source!r} is itself a mask_lm problem; name "
                                 "a problem with inputs of its own")
            found[name] = _inputs_of_problem(name, body, path, found)
    return {name: found[name] for name in spec}


def _inputs_of_problem(name, spec, problems_file, user_problems):
    """{"type": "mask_lm", "inputs_of": "<problem>"}: masked LM on another problem's train and dev inputs."""
    where = f"{problems_file}: problem {name!r}"
    _check_name(name, where)
    if spec.get("type") != "mask_lm":
        raise ValueError(f"{where}: inputs_of is for mask_lm problems, not {spec.get('type')!r}")
    extra = [key for key in spec if key not in INPUTS_OF_KEYS]
    if extra:
        raise ValueError(f"{where}: a problem with inputs_of reads that problem's files; drop {extra[0]!r} (its keys: "
                         f"{', '.join(INPUTS_OF_KEYS)})")
    _check_loss_weight(spec, where)
    try:
        source = get_problem(spec["inputs_of"], user_problems) if isinstance(spec["inputs_of"], str) else None
        if source is None:
            raise ValueError(f"inputs_of must be a problem's name, got {spec['inputs_of']!r}")
        if source.type in LM_TYPES:
            raise ValueError(f"inputs_of {source.name!r} is itself a {source.type} problem; name a problem with "
                             "inputs of its own")
        derived = mlm_problem(source)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    return dataclasses.replace(derived, name=name, loss_weight=float(spec.get("loss_weight", 1.0)))


def _check_name(name, where):
    if not PROBLEM_NAME_PATTERN.fullmatch(name):
        raise ValueError(f"{where}: a name is lower-case letters, digits and _, starting with a letter")
    if name in PROBLEMS or name in TASK_ALIASES:
        raise ValueError(f"{where}: the name clashes with the predefined problem {canonical_problem_name(name)}")
    if name.endswith(MLM_SUFFIX):
        raise ValueError(f"{where}: names ending in {MLM_SUFFIX} are the predefined masked-LM problems (X{MLM_SUFFIX} "
                         "for every problem X); choose another name")


def _check_loss_weight(spec, where):
    if "loss_weight" in spec:
        weight = spec["loss_weight"]
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            raise ValueError(f"{where}: loss_weight must be a positive number (the factor of its loss in a step)")


def _problem_from_spec(name, spec, problems_file):
    where = f"{problems_file}: problem {name!r}"
    _check_name(name, where)
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: expected a JSON object of keys ({', '.join(ALL_KEYS)})")
    unknown = [key for key in spec if key not in ALL_KEYS]
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r} (expected some of {', '.join(ALL_KEYS)})")
    type_, format_ = spec.get("type"), spec.get("format")
    if type_ not in PROBLEM_TYPES:
        raise ValueError(f"{where}: type {type_!r} is not one of {', '.join(PROBLEM_TYPES)}")
    if format_ not in USER_FORMATS:
        raise ValueError(f"{where}: format {format_!r} is not one of {', '.join(USER_FORMATS)}")
    if (format_ == "conll") != (type_ == "seq_tag"):
        raise ValueError(f"{where}: seq_tag problems read conll files, and conll files hold seq_tag problems "
                         f"(got type {type_}, format {format_})")
    if (format_ == "text" and type_ not in LM_TYPES) or (type_ == "pretrain" and format_ != "text"):
        raise ValueError(f"{where}: text files hold mask_lm (one text per line) or pretrain problems (documents), "
                         f"and pretrain reads a text file (got type {type_}, format {format_})")
    if type_ in LM_TYPES:
        given = [key for key in ("label", "labels", "label_scale", "label_separator", "index", "test") if key in spec]
        if given:
            raise ValueError(f"{where}: a {type_} problem learns from the text alone; drop {given[0]!r}")
    misplaced = [key for key in spec if key not in COMMON_KEYS and key not in FORMAT_KEYS[format_]]
    if misplaced:
        raise ValueError(f"{where}: key {misplaced[0]!r} does not apply to format {format_} "
                         f"(its keys: {', '.join((*COMMON_KEYS, *FORMAT_KEYS[format_]))})")
    if "label_separator" in spec and type_ != "multi_cls":
        raise ValueError(f"{where}: label_separator is for multi_cls problems, not {type_}")
    if "label_scale" in spec:
        scale = spec["label_scale"]
        if type_ != "regression" or isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            raise ValueError(f"{where}: label_scale must be a positive number, and only for regression")
    _check_loss_weight(spec, where)
    if "train" not in spec:
        raise ValueError(f"{where}: needs a train file (\"train\": path relative to the problems file)")

    files = {}
    for split in SPLIT_KEYS:
        if split not in spec:
            continue
        if not isinstance(spec[split], str) or not spec[split]:
            raise ValueError(f"{where}: {split} must be a file path (relative to the problems file)")
        file = (problems_file.parent / spec[split]).resolve()
        if not file.is_file():
            raise FileNotFoundError(f"{where}: {split} file not found: {file} (paths are relative to the problems "
                                    "file's folder)")
        files[split] = str(file)
    splits = {split: _split_from_spec(spec, format_, file, where) for split, file in files.items()}

    labels = spec.get("labels")
    if labels is not None:
        if type_ == "regression":
            raise ValueError(f"{where}: a regression problem has no labels")
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
            raise ValueError(f"{where}: labels must be a non-empty list of non-empty strings")
        if len(set(labels)) != len(labels):
            raise ValueError(f"{where}: labels repeat {next(x for x in labels if labels.count(x) > 1)!r}")
        labels = tuple(labels)
    elif type_ != "regression" and type_ not in LM_TYPES:
        labels = _labels_from_data(name, type_, splits, where)
    for split, fmt in splits.items():
        if format_ == "tsv":  # the columns, now; the rows and their labels when the split is read
            with open(fmt.file, encoding="utf-8-sig", newline="") as f:
                header = f.readline().rstrip("\r\n")
            _tsv_columns(fmt.file, fmt, split, header)
    metrics = {"dev": tuple(TYPES[type_].default_metrics(labels))} if "dev" in splits else {}
    return Problem(name, "", splits, labels, metrics, type=type_,
                   label_scale=float(spec["label_scale"]) if "label_scale" in spec else None,
                   loss_weight=float(spec.get("loss_weight", 1.0)))


def _split_from_spec(spec, format_, file, where):
    if format_ == "text":
        return TextSplit(file)
    if format_ == "conll":
        columns = {key: spec.get(key, default) for key, default in (("token_column", 0), ("label_column", -1))}
        for key, value in columns.items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{where}: {key} must be a column number (0-based; -1 = the last)")
        if columns["token_column"] == columns["label_column"]:
            raise ValueError(f"{where}: token_column and label_column are the same column")
        return ConllSplit(file, **columns)
    text = spec.get("text")
    text = [text] if isinstance(text, str) else text
    if not isinstance(text, list) or not 1 <= len(text) <= MAX_TEXT_FIELDS or \
            not all(isinstance(name, str) and name for name in text):
        raise ValueError(f"{where}: text must name one or two {'columns' if format_ == 'tsv' else 'keys'} "
                         "(a sentence or a pair)")
    for key in ("label", "index", "label_separator"):
        if key in spec and (not isinstance(spec[key], str) or not spec[key]):
            raise ValueError(f"{where}: {key} must be a non-empty string")
    if "label" not in spec and spec["type"] != "mask_lm":
        raise ValueError(f"{where}: needs \"label\", the {'column' if format_ == 'tsv' else 'key'} of the labels")
    split_class = TsvSplit if format_ == "tsv" else JsonlSplit
    return split_class(file, tuple(text), spec.get("label"), spec.get("index"),
                       spec.get("label_separator", DEFAULT_LABEL_SEPARATOR))


def _labels_from_data(name, type_, splits, where):
    """The sorted labels of the training file (seq_tag: and of the dev file, with a warning for those only there)."""
    def labels_in(split):
        fmt = splits[split]
        context = _LabelContext(name, type_, getattr(fmt, "label_separator", DEFAULT_LABEL_SEPARATOR))
        examples, _ = READERS[fmt.format](context, split, fmt, Path(fmt.file))
        found = set()
        for example in examples:
            found.update(example.tags if isinstance(example, TaggedSentence) else
                         example.label if type_ == "multi_cls" else (example.label,))
        return found

    labels = labels_in("train")
    if type_ == "seq_tag" and "dev" in splits:
        extra = labels_in("dev") - labels
        if extra:
            logger.warning("%s: dev labels not in the training file: %s (added to the labels; the model never sees "
                           "them in training)", where, ", ".join(sorted(extra)))
            labels |= extra
    minimum = 2 if type_ == "cls" else 1
    if len(labels) < minimum:
        raise ValueError(f"{where}: the training file has {len(labels)} label(s) {sorted(labels)}; a {type_} "
                         f"problem needs at least {minimum} (or give \"labels\")")
    return tuple(sorted(labels))


def problem_from_record(record):
    """Rebuild a Problem from Problem.to_record() (as a run's config.json stores the user's problems)."""
    try:
        splits = {}
        for split, item in record["splits"].items():
            item = dict(item)
            split_class = SPLIT_FORMATS[item.pop("format")]
            splits[split] = split_class(**{key: tuple(value) if isinstance(value, list) else value
                                           for key, value in item.items()})
        return Problem(**{**record, "splits": splits,
                          "labels": None if record["labels"] is None else tuple(record["labels"]),
                          "metrics": {split: tuple(names) for split, names in record["metrics"].items()}})
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"not a problem record ({type(error).__name__}: {error}); expected Problem.to_record()'s "
                         "dict") from None
