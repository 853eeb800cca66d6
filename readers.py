"""Reading one split of a problem into examples: the user's tsv, jsonl, CoNLL and text files (GLUE's files are read
by glue_processors.load_examples, People's Daily's by pku.py). Every label is parsed and checked by the problem's
type; a bad row is a one-line error naming the file and line.

Text inputs become `features.Example` (a sentence or a pair, a label); word inputs (CoNLL, People's Daily)
`features.TaggedSentence` (words and one tag per word).
"""
import json
from pathlib import Path

import cmudict
import fashion_mnist
import glue_processors
import modalities
import pku
import problem_types
from features import Example, TaggedSentence
from masking import next_sentence_examples
from problem_record import SplitFormat

CONLL_DOCSTART = "-DOCSTART-"
# What a file of each format holds, for the message about an empty one.
FORMAT_CONTENTS = {"tsv": "a tab-separated file with a header row", "jsonl": "one JSON object per line",
                   "conll": "one token per line, a blank line between sentences", "text": "one text per line"}


class LabelContext:
    """What reading labels needs before a Problem exists (problems_file.py finds a file's labels this way)."""

    def __init__(self, name, type):
        self.name, self.type = name, type


def _decoded_lines(path, fmt):
    """A UTF-8 file's lines (BOM, CRLF and the final newline handled as in the GLUE reader), as (number, str)."""
    return [(number, glue_processors.decode(line, path, number))
            for number, line in enumerate(glue_processors.read_lines(path, FORMAT_CONTENTS[fmt.format]), start=1)]


def _parse_label(problem, fmt, value, where):
    return problem_types.get(problem.type).parse_label(value, fmt.label_separator, where)


def tsv_columns(path, fmt, split, header_line):
    """Header names -> column numbers, checking the columns this split reads are there."""
    header = header_line.split("\t")
    columns = {}
    for i, name in enumerate(header):
        columns.setdefault(name, i)
    wanted = [*fmt.text, *([fmt.index] if fmt.index and split == "test" else []),
              *(name for name in (fmt.image, fmt.features) if name)]
    if fmt.label is not None and (split != "test" or fmt.label in columns):  # a test file may lack the labels
        wanted.append(fmt.label)
    absent = [name for name in wanted if name not in columns]
    if absent:
        raise ValueError(f"{path} line 1: no column {absent[0]!r} (its columns: {', '.join(header)})")
    return header, columns


def _example(problem, split, fmt, path, number, texts, label, index, image, vectors):
    """An Example of a tsv or jsonl row; a problem with an image or features (`fmt.image`, `fmt.features`) takes
    their values (modalities.read_image_value, read_vectors_value) and needs at least one input per row."""
    where = f"{path} line {number}"
    if fmt.image or fmt.features:
        texts = ["" if text is None else text for text in texts]
        image = modalities.read_image_value(image, fmt.root or path.parent, where) if fmt.image else None
        vectors = modalities.read_vectors_value(vectors, fmt.root or path.parent, where) if fmt.features else None
        if image is None and vectors is None and not any(texts):
            raise ValueError(f"{where}: no input: no text, no image and no features")
    if not all(isinstance(text, str) for text in texts):
        raise ValueError(f"{where}: text keys {list(fmt.text)} must hold strings")
    return Example(f"{problem.name}-{split}-{number}", texts[0] if texts else "", texts[1] if len(texts) > 1 else None,
                   label, index, image, vectors)


def _read_tsv(problem, split, fmt, path):
    lines = _decoded_lines(path, fmt)
    header, columns = tsv_columns(path, fmt, split, lines[0][1])
    labelled = fmt.label in columns
    examples, lines_of = [], []
    for row, (number, line) in enumerate(lines[1:]):
        fields = line.split("\t")
        if len(fields) != len(header):
            raise ValueError(f"{path} line {number}: {len(fields)} tab-separated fields, expected {len(header)} "
                             "(as the header, line 1)")
        texts = [fields[columns[name]] for name in fmt.text]
        label = _parse_label(problem, fmt, fields[columns[fmt.label]], f"{path} line {number}") if labelled else None
        index = (fields[columns[fmt.index]] if fmt.index else str(row)) if split == "test" else None
        examples.append(_example(problem, split, fmt, path, number, texts, label, index,
                                 fields[columns[fmt.image]] if fmt.image else None,
                                 fields[columns[fmt.features]] if fmt.features else None))
        lines_of.append(number)
    if not examples:
        raise ValueError(f"{path} has a header but no data rows")
    return examples, lines_of


def _words(problem, split, fmt, path, number, record):
    """A jsonl sentence of a per-token problem (seq_tag): `text` a list of words, `label` a list of one tag each."""
    where = f"{path} line {number}"
    tokens = record[fmt.text[0]]
    if not isinstance(tokens, list) or not tokens or not all(isinstance(token, str) and token for token in tokens):
        raise ValueError(f"{where}: {fmt.text[0]!r} must hold a non-empty list of words (non-empty strings)")
    tags = record.get(fmt.label) if fmt.label is not None else None
    if tags is not None:
        if not isinstance(tags, list) or len(tags) != len(tokens):
            raise ValueError(f"{where}: {fmt.label!r} must hold a list of one tag per word ({len(tokens)} words)")
        tags = [_parse_label(problem, fmt, tag, where) for tag in tags]
    example = _example(problem, split, fmt, path, number, [" ".join(tokens)], None, None, record.get(fmt.image),
                       record.get(fmt.features))
    return TaggedSentence(example.guid, tokens, tags, example.image, example.vectors)


def _read_jsonl(problem, split, fmt, path):
    words = problem_types.get(problem.type).word_inputs  # a tagging problem's sentences are lists of words
    examples, lines_of = [], []
    for number, line in _decoded_lines(path, fmt):
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
                *([fmt.index] if fmt.index and split == "test" else []),
                *(name for name in (fmt.image, fmt.features) if name)]
        absent = [key for key in keys if key not in record]
        if absent:
            raise ValueError(f"{where}: no key {absent[0]!r} (its keys: {', '.join(record)})")
        if words:
            examples.append(_words(problem, split, fmt, path, number, record))
            lines_of.append(number)
            continue
        texts = [record[key] for key in fmt.text]
        label = _parse_label(problem, fmt, record[fmt.label], where) if fmt.label is not None and fmt.label in record \
            else None
        index = (str(record[fmt.index]) if fmt.index else str(len(examples))) if split == "test" else None
        examples.append(_example(problem, split, fmt, path, number, texts, label, index,
                                 record.get(fmt.image), record.get(fmt.features)))
        lines_of.append(number)
    if not examples:
        raise ValueError(f"{path} has no JSON records")
    labelled = [(example.tags if words else example.label) is not None for example in examples]
    if any(labelled) and not all(labelled):
        number = lines_of[labelled.index(False)]
        raise ValueError(f"{path} line {number}: no key {fmt.label!r}, which other lines have")
    return examples, None if words else lines_of


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

    for number, line in _decoded_lines(path, fmt):
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
    lines = [(number, line.strip()) for number, line in _decoded_lines(path, fmt)]
    if problem_types.get(problem.type).next_sentence:
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


READERS = {"tsv": _read_tsv, "jsonl": _read_jsonl, "conll": _read_conll, "pku": pku.read_pku, "text": _read_text,
           "pku_documents": pku.read_pku_documents, "cmudict": cmudict.read_cmudict, "idx": fashion_mnist.read_idx_split}


def problem_file(data_dir, problem, split):
    """Path of one split's file: <data_dir>/<directory>/<file>; the user's problems hold absolute paths."""
    return Path(data_dir) / problem.directory / problem.split_format(split).file


def missing_file(path):
    """Why `path` cannot be read as a file, in words: "not found: <path>" or "<path> is a folder, not a file"."""
    return f"{path} is a folder, not a file" if path.is_dir() else f"not found: {path}"


def read_examples(problem, split, data_dir):
    """One split's examples (a Problem's), labels checked; a test split's labels (a test file may carry them) are
    checked, then dropped."""
    fmt = problem.split_format(split)
    if isinstance(fmt, SplitFormat):
        return glue_processors.load_examples(data_dir, problem, split)
    path = problem_file(data_dir, problem, split)
    if not path.is_file():
        raise FileNotFoundError(f"problem {problem.name}: {split} file {missing_file(path)}")
    examples, lines_of = READERS[fmt.format](problem, split, fmt, path)
    problem_types.of(problem).check_labels(problem, path, examples, lines_of)
    if split in problem.test_splits:
        for example in examples:
            if isinstance(example, TaggedSentence):
                example.tags = None
            else:
                example.label = None
    return examples
