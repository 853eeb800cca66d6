"""Tests of problems.py: the type table, the problem table (GLUE, People's Daily), the user's problems file and its
errors, the tsv/jsonl/conll readers, label encoding per type, the seq_tag alignment and long-sentence cut, batches,
predictions, metrics and prediction files. People's Daily and EmoLex are read from ../shared (never shipped)."""
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import evaluation
import features as feats
import glue_processors
import metrics as metrics_module
import modeling
import pku
import problem_record
import problem_types
import problems
import readers
from conftest import FIXTURES, fixture_glue_dir, require
from features import IGNORE_INDEX, Features, TaggedSentence, encode_word_rows, make_batch
from glue_processors import TASKS, Task
from helpers import write_problems
from problem_record import Problem, problem_from_record
from problem_types import TYPES
from problems import PROBLEMS, get_problem, load_problem_features, read_examples, resolve_problems
from problems_file import read_problems_file
from tokenization import FullTokenizer

PROBLEM_FIXTURES = FIXTURES / "problems"
SHARED = Path(__file__).resolve().parents[2] / "shared"
TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
              "ada", "love", "##lace", "visited", "london", ".", "un", "##aff", "##able", "the", "a", "b", "c"]
PAD, UNK, CLS, SEP = 0, 1, 2, 3
ID = {token: i for i, token in enumerate(TINY_VOCAB)}


# What problems.py did per type before the registry, now through the problem's type object (problem_types.of).

def convert_problem_examples(problem, examples, tokenizer, max_seq_length):
    return feats.convert_examples(problem, examples, tokenizer, max_seq_length,
                                  problem_types.of(problem).encode_labels)


def predictions_from_logits(problem, logits):
    return problem_types.of(get_problem(problem)).decide(logits)


def problem_metrics(problem, split, predictions, features):
    return evaluation.split_metrics(get_problem(problem), split, predictions, features)


def problem_score(problem, values):
    return evaluation.problem_score(get_problem(problem), values)


def sentence_tags(problem, features, token_values):
    return problem_types.of(problem).sentence_tags(problem, features, token_values)


def write_predictions(problem, split, predictions, features, path, data_dir):
    """Write the prediction file at `path` through the type's writer; returns the path."""
    problem = get_problem(problem)
    problem_types.of(problem).write(problem, split, predictions, features, path,
                                    lambda: readers.read_examples(problem, split, data_dir))
    return path


@pytest.fixture(scope="module")
def user_problems():
    return read_problems_file(PROBLEM_FIXTURES / "problems.json")


def shared_dir(name):
    """A data set in ../shared (People's Daily, EmoLex: research use only, so never in the repository), or skip."""
    path = SHARED / name
    require(path.is_dir(), f"needs {path}")
    return path


def tag_problem(labels, name="tags"):
    """A seq_tag problem whose files nobody reads: for features, metrics and predictions built in the test."""
    return Problem(name, "", {"dev": problem_record.ConllSplit("unused.txt")}, tuple(labels),
                   {"dev": TYPES["seq_tag"].default_metrics(labels)}, type="seq_tag")


# ---- the tables ---------------------------------------------------------------------------------------------------

def test_types_table_decides_the_head_input():
    assert set(TYPES) == set(problem_types.NAMES) == {t.name for t in TYPES.values()}
    assert all(callable(t.loss) and callable(t.build_head) for t in TYPES.values())  # each type its head and loss
    assert set(problem_types.NAMES) == {"cls", "regression", "multi_cls", "seq_tag", "mask_lm", "pretrain",
                                        "seq2seq_text", "seq2seq_tag"}
    assert {name: t.reads for name, t in TYPES.items()} == {
        "cls": "pooled", "regression": "pooled", "multi_cls": "pooled", "seq_tag": "tokens", "mask_lm": "masked",
        "pretrain": "masked", "seq2seq_text": "tokens", "seq2seq_tag": "tokens"}
    assert {name: t.file_suffix for name, t in TYPES.items()} == {
        "cls": ".tsv", "regression": ".tsv", "multi_cls": ".tsv", "seq_tag": ".conll", "mask_lm": None,
        "pretrain": None, "seq2seq_text": ".tsv", "seq2seq_tag": ".tsv"}


def test_glue_rows_are_problems_with_their_quirks_as_fields():
    assert Task is Problem and all(PROBLEMS[name] is TASKS[name] for name in TASKS)
    assert PROBLEMS["sts"].type == "regression" and PROBLEMS["sts"].label_scale == glue_processors.STS_MAX_SCORE
    assert PROBLEMS["sts"].num_labels == 1 and PROBLEMS["mnli"].num_labels == 3
    assert all(TASKS[name].type == "cls" for name in TASKS if name != "sts")
    assert PROBLEMS["ax"].head_of == "mnli" and PROBLEMS["wnli"].default_label == "0"
    assert all(PROBLEMS[name].head_of is None for name in TASKS if name != "ax")
    assert problem_score("mrpc", {"f1": 80.0, "acc": 70.0}) == 75.0  # GLUE: the mean, as before
    assert problem_score("pku_ner", {"f1": 80.0, "precision": 70.0, "recall": 90.0}) == 80.0  # others: the first


def test_people_daily_rows():
    assert {name: PROBLEMS[name].type for name in pku.PKU_PROBLEMS} == {
        "pku_cws": "seq_tag", "pku_pos": "seq_tag", "pku_ner": "seq_tag", "pku_entity_types": "multi_cls",
        "pku_pretrain": "pretrain"}
    assert PROBLEMS["pku_cws"].labels == ("b", "m", "e", "s")
    assert PROBLEMS["pku_pos"].num_labels == 4 * 44 and "S-nr" in PROBLEMS["pku_pos"].labels
    assert PROBLEMS["pku_ner"].labels == ("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG")
    assert PROBLEMS["pku_entity_types"].labels == ("PER", "LOC", "ORG", "TIME")
    assert PROBLEMS["pku_pos"].metrics == {"dev": ("f1", "precision", "recall", "acc")}
    assert PROBLEMS["pku_entity_types"].metrics == {"dev": ("micro_f1", "macro_f1", "exact_match")}
    assert PROBLEMS["pku_ner"].expand_splits("test") == ()
    assert problems.problem_file("data", "pku_cws", "dev").as_posix() == "data/pku199801/199801.txt"


def test_problem_rows_are_checked():
    with pytest.raises(ValueError, match="unknown type 'tagging'"):
        Problem("x", "", {}, ("a",), {}, type="tagging")
    with pytest.raises(ValueError, match="a regression problem has no labels"):
        Problem("x", "", {}, ("a",), {}, type="regression")
    with pytest.raises(ValueError, match="a seq_tag problem needs its list of labels"):
        Problem("x", "", {}, None, {}, type="seq_tag")


def test_names_and_resolve_problems(user_problems):
    assert resolve_problems("all") == list(glue_processors.ALL_TASKS)
    assert resolve_problems("single", task_id=4) == ["sts"]
    assert resolve_problems("pku_cws, STS-B,ner", user_problems=user_problems) == ["pku_cws", "sts", "ner"]
    assert get_problem("NER", user_problems) is user_problems["ner"]
    with pytest.raises(ValueError, match=r"unknown problem 'ner'; valid names: cola, .*pku_entity_types"):
        resolve_problems("ner")  # a user problem, without the user's file
    with pytest.raises(ValueError, match="names pku_cws twice"):
        resolve_problems("pku_cws,PKU_CWS")
    with pytest.raises(ValueError, match="ax has no training data .it is predicted with the mnli head"):
        resolve_problems("ax,pku_ner")
    with pytest.raises(ValueError, match="empty group or name"):
        resolve_problems("pku_ner,")


@pytest.mark.parametrize("spec, groups", [
    ("pku_cws&pku_ner&pku_entity_types|pku_pos", [["pku_cws", "pku_ner", "pku_entity_types"], ["pku_pos"]]),
    (" pku_cws & pku_ner | cola , sts ", [["pku_cws", "pku_ner"], ["cola"], ["sts"]]),  # spaces; a comma is a |
    ("cola,mrpc", [["cola"], ["mrpc"]]),
    ("inf", [["qnli"], ["mnli"], ["rte"]]),
])
def test_task_grammar_groups(spec, groups):
    assert problems.resolve_groups(spec) == groups
    assert resolve_problems(spec) == [name for group in groups for name in group]
    assert [problems.group_name(g) for g in groups][0] == "&".join(groups[0])


@pytest.mark.parametrize("spec, message", [
    ("pku_cws&&pku_ner", "empty group or name"), ("pku_cws||cola", "empty group or name"),
    ("&cola", "empty group or name"), ("cola|", "empty group or name"),
    ("cola&sts|cola", "names cola twice"), ("cola&squad", "unknown problem 'squad'"),
])
def test_task_grammar_errors(spec, message):
    with pytest.raises(ValueError, match=message) as error:
        problems.resolve_groups(spec)
    assert "\n" not in str(error.value)


# ---- the user's problems file -------------------------------------------------------------------------------------

def test_fixture_problems_file(user_problems):
    assert list(user_problems) == ["emotion", "ner", "senti", "score"]
    emotion, ner, senti, score = (user_problems[name] for name in user_problems)
    assert (emotion.type, ner.type, senti.type, score.type) == ("multi_cls", "seq_tag", "cls", "regression")
    # Labels when not given: the sorted training labels; given: kept in their order.
    assert emotion.labels == ("anger", "anticipation", "disgust", "fear", "joy", "negative", "positive", "sadness")
    assert ner.labels == ("B-LOC", "B-ORG", "B-PER", "I-ORG", "I-PER", "O")
    assert senti.labels == ("neg", "pos") and score.labels is None and score.label_scale == 5.0
    assert emotion.metrics == {"dev": ("micro_f1", "macro_f1", "exact_match")}
    assert ner.metrics == {"dev": ("f1", "precision", "recall")} and senti.metrics == {"dev": ("acc",)}
    assert score.metrics == {"dev": ("pearson", "spearman")}
    train = Path(emotion.splits["train"].file)
    assert train.is_absolute() and train == (PROBLEM_FIXTURES / "emotion" / "train.tsv").resolve()
    assert [p.num_labels for p in user_problems.values()] == [8, 6, 2, 1]


def test_records_rebuild_the_problem(user_problems):
    for problem in [*user_problems.values(), PROBLEMS["sts"], PROBLEMS["pku_pos"], PROBLEMS["mnli"]]:
        record = json.loads(json.dumps(problem.to_record()))  # as config.json stores it
        assert problem_from_record(record) == problem
    with pytest.raises(ValueError, match="not a problem record"):
        problem_from_record({"name": "x"})


def test_seq_tag_dev_labels_are_added_with_a_warning(tmp_path, caplog):
    path = write_problems(tmp_path, {"t": {"type": "seq_tag", "format": "conll", "train": "tr.txt", "dev": "dv.txt"}},
                          {"tr.txt": "a X\nb Y\n", "dv.txt": "a X\nc Z\n"})
    with caplog.at_level(logging.WARNING):
        assert read_problems_file(path)["t"].labels == ("X", "Y", "Z")
    assert "dev labels not in the training file: Z" in caplog.text
    assert problem_types.span_scheme(("X", "Y", "Z")) is None and read_problems_file(path)["t"].metrics["dev"] == ("acc",)


SENTI = {"type": "cls", "format": "jsonl", "train": "t.jsonl", "text": ["s"], "label": "y"}
SENTI_ROWS = '{"s": "a", "y": "p"}\n{"s": "b", "y": "n"}\n'


@pytest.mark.parametrize("spec, files, error", [
    ({"cola": SENTI}, {}, "problem 'cola': the name clashes with the predefined problem cola"),
    ({"sts-b": SENTI}, {}, "a name is lower-case letters"),
    ({"stsb": SENTI}, {}, "clashes with the predefined problem sts"),
    ({"p": {**SENTI, "lables": ["a"]}}, {}, "problem 'p': unknown key 'lables'"),
    ({"p": {**SENTI, "type": "ner"}}, {}, "type 'ner' is not one of cls, regression, multi_cls, seq_tag"),
    ({"p": {**SENTI, "format": "csv"}}, {}, "format 'csv' is not one of tsv, jsonl, conll"),
    ({"p": {**SENTI, "format": "conll"}}, {}, "conll files hold seq_tag problems"),
    ({"p": {**SENTI, "token_column": 1}}, {}, "key 'token_column' does not apply to format jsonl"),
    ({"p": {**SENTI, "train": "none.jsonl"}}, {}, r"train file not found: .*none.jsonl"),
    ({"p": {**SENTI, "label_scale": 5}}, {}, "label_scale must be a positive number, and only for regression"),
    ({"p": {**SENTI, "labels": ["n", "n"]}}, {}, "labels repeat 'n'"),
    ({"p": {**SENTI, "text": ["s", "t", "u"]}}, {}, "text must name one or two keys"),
    ({"p": {k: v for k, v in SENTI.items() if k != "train"}}, {}, "needs a train file"),
    ({"p": {**SENTI, "format": "tsv", "train": "t.tsv"}}, {"t.tsv": "s\tlabel\nx\tp\n"},
     r"t.tsv line 1: no column 'y' \(its columns: s, label\)"),
    ({"p": {**SENTI, "format": "tsv", "train": "t.tsv"}}, {"t.tsv": "s\ty\nx\tp\nz\n"},
     r"t.tsv line 3: 1 tab-separated fields, expected 2"),
    ({"p": SENTI}, {"t.jsonl": '{"s": "a", "y": "p"}\n{"s": "b"}\n'}, r"t.jsonl line 2: no key 'y' \(its keys: s\)"),
    ({"p": SENTI}, {"t.jsonl": '{"s": "a", "y": "p"}\n{"s": "b", "y": \n'}, r"t.jsonl line 2: not valid JSON"),
    ({"p": SENTI}, {"t.jsonl": '{"s": "a", "y": "p"}\n'}, r"has 1 label\(s\) \['p'\]; a cls problem needs at least 2"),
    ({"p": {**SENTI, "type": "regression"}}, {"t.jsonl": '{"s": "a", "y": "p"}\n'}, "label 'p' is not a number"),
    ({"p": {"type": "seq_tag", "format": "conll", "train": "t.txt"}}, {"t.txt": "a X\nb Y\n\nc\n"},
     r"t.txt line 4: 1 whitespace-separated columns, expected 2"),
    ({"p": {"type": "seq_tag", "format": "conll", "train": "t.txt"}}, {"t.txt": "a\nb\n"},
     r"t.txt line 1: 1 column\(s\), so token_column 0 and label_column -1 are the same one; expected a token"),
    ({"p": {"type": "seq_tag", "format": "conll", "train": "t.txt", "token_column": 4}}, {"t.txt": "a X\n"},
     r"t.txt line 1: 2 column\(s\), but token_column is 4"),
    ({"p": {**SENTI, "train": "folder"}}, {"folder/t.jsonl": SENTI_ROWS}, r"train file .*folder is a folder, not a file"),
    ({"p": SENTI}, {"t.jsonl": ""}, r"t.jsonl is empty \(expected one JSON object per line\)"),
    ({"p": {"type": "mask_lm", "format": "text", "train": "t.txt"}}, {"t.txt": "\n"},
     r"t.txt is empty \(expected one text per line\)"),
    ({"p": {**SENTI, "loss_weight": float("inf")}}, {}, "loss_weight must be a finite number, got inf"),
    ({"p": {**SENTI, "type": "regression", "label_scale": float("inf")}}, {},
     "label_scale must be a finite number, got inf"),
])
def test_bad_problems_files_get_one_line_errors(tmp_path, spec, files, error):
    path = write_problems(tmp_path, spec, {"t.jsonl": SENTI_ROWS, **files})
    with pytest.raises((ValueError, FileNotFoundError), match=error) as raised:
        for problem in read_problems_file(path).values():  # the file, then every split as training reads it
            for split in problem.splits:
                read_examples(problem, split, "")
    assert "\n" not in str(raised.value) and str(tmp_path) in str(raised.value)  # names the file


def test_multi_cls_labels_are_trimmed(tmp_path):
    """"joy, positive": the space after the separator is no part of the label."""
    path = write_problems(tmp_path, {"e": {"type": "multi_cls", "format": "tsv", "train": "t.tsv", "text": ["w"],
                                           "label": "l"}}, {"t.tsv": "w\tl\nsun\tjoy, positive\nrain\t sadness \n"})
    problem = read_problems_file(path)["e"]
    assert problem.labels == ("joy", "positive", "sadness")
    assert [example.label for example in read_examples(problem, "train", "")] == [("joy", "positive"), ("sadness",)]


def test_bad_json_and_duplicate_names(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{"a": {"type": "cls"},\n "b": }', encoding="utf-8")
    with pytest.raises(ValueError, match=r"p.json line 2: not valid JSON"):
        read_problems_file(path)
    path.write_text('{"a": {}, "a": {}}', encoding="utf-8")
    with pytest.raises(ValueError, match="key 'a' given twice"):
        read_problems_file(path)
    with pytest.raises(FileNotFoundError, match="problems file not found"):
        read_problems_file(tmp_path / "none.json")


def test_dev_label_outside_the_list_names_file_line_and_label(user_problems, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(PROBLEM_FIXTURES, root)
    spec = json.loads((root / "problems.json").read_text())
    spec["ner"]["labels"] = list(user_problems["ner"].labels)  # given: a dev label outside them is an error
    (root / "problems.json").write_text(json.dumps(spec))
    with open(root / "ner" / "dev.txt", "a", encoding="utf-8") as f:
        f.write("\nRome NNP B-GPE\n")
    with open(root / "senti" / "dev.jsonl", "a", encoding="utf-8") as f:
        f.write('{"sentence": "meh", "label": "neutral"}\n')
    copied = read_problems_file(root / "problems.json")
    with pytest.raises(ValueError, match=r"ner/dev.txt line 11: label 'B-GPE' is not one of ner's labels"):
        read_examples(copied["ner"], "dev", "")
    with pytest.raises(ValueError, match=r"senti/dev.jsonl line 3: label 'neutral' is not one of senti's labels"):
        read_examples(copied["senti"], "dev", "")


# ---- readers ------------------------------------------------------------------------------------------------------

def test_readers_on_the_fixtures(user_problems):
    ner = read_examples(user_problems["ner"], "train", "")
    assert [s.tokens for s in ner] == [["Ada", "Lovelace", "visited", "London", "."],
                                       ["The", "Royal", "Society", "met", "in", "Paris", "."]]  # -DOCSTART- skipped
    assert ner[0].tags == ["B-PER", "I-PER", "O", "B-LOC", "O"]
    test = read_examples(user_problems["ner"], "test", "")
    assert [s.tokens for s in test] == [["Grace", "Hopper", "sailed"], ["Berlin"]] and test[0].tags is None
    emotion = read_examples(user_problems["emotion"], "train", "")
    assert emotion[2].text_a == "spider" and emotion[2].label == ("fear", "disgust", "negative")
    assert emotion[3].label == ()  # an empty set
    assert [e.index for e in read_examples(user_problems["emotion"], "test", "")] == ["w1", "w2"]
    score = read_examples(user_problems["score"], "train", "")
    assert (score[0].text_a, score[0].text_b, score[0].label) == ("A man plays a guitar.", "A person plays music.", 3.8)
    senti = read_examples(user_problems["senti"], "dev", "")
    assert (senti[1].text_a, senti[1].label, senti[1].text_b) == ("far too dull", "neg", None)


def test_jsonl_multi_labels_as_a_list_or_a_joined_string(tmp_path):
    rows = '{"w": "x", "l": ["a", "b"]}\n\n{"w": "y", "l": "b|c"}\n{"w": "z", "l": []}\n'
    path = write_problems(tmp_path, {"m": {"type": "multi_cls", "format": "jsonl", "train": "m.jsonl", "text": "w",
                                           "label": "l", "label_separator": "|"}}, {"m.jsonl": rows})
    problem = read_problems_file(path)["m"]
    assert problem.labels == ("a", "b", "c")
    assert [e.label for e in read_examples(problem, "train", "")] == [("a", "b"), ("b", "c"), ()]


# ---- features: label encoding per type ----------------------------------------------------------------------------

def test_label_encoding_of_each_text_type(user_problems, tokenizer):
    def features(name, split):
        problem = user_problems[name]
        return convert_problem_examples(problem, read_examples(problem, split, ""), tokenizer, 16)

    senti = features("senti", "train")
    assert senti.labels.dtype == torch.int64 and senti.labels.tolist() == [1, 0, 1, 0]
    score = features("score", "train")
    assert score.labels.dtype == torch.float32
    assert torch.allclose(score.labels, torch.tensor([3.8, 0.4, 4.6]) / 5)  # label / label_scale
    assert (score.segment_a_len < score.lengths).all()  # pairs: B in segment 1
    emotion = features("emotion", "dev")  # labels (anger, anticipation, disgust, fear, joy, negative, positive, ...)
    assert emotion.labels.dtype == torch.float32 and emotion.labels.shape == (3, 8)
    assert emotion.labels.tolist() == [[0, 1, 0, 0, 1, 0, 0, 0], [0, 0, 1, 0, 0, 1, 0, 0], [0] * 8]
    assert emotion.token_labels is None and emotion.word_starts is None
    test = features("emotion", "test")
    assert test.labels is None and test.index == ["w1", "w2"]


def test_seq_tag_labels_sit_on_first_pieces(tokenizer):
    problem = tag_problem(["O", "B-PER", "I-PER"])
    sentences = [TaggedSentence("s-0", ["Ada", "Lovelace", "unaffable", "\x07", "."],
                                ["B-PER", "I-PER", "O", "O", "O"]),
                 TaggedSentence("s-1", ["the"], ["O"])]
    features = convert_problem_examples(problem, sentences, tokenizer, 32)
    assert features.input_ids.tolist() == [
        CLS, ID["ada"], ID["love"], ID["##lace"], ID["un"], ID["##aff"], ID["##able"], UNK, ID["."], SEP,
        CLS, ID["the"], SEP]
    assert features.token_labels.dtype == torch.int64
    assert features.token_labels.tolist() == [
        IGNORE_INDEX, 1, 2, IGNORE_INDEX, 0, IGNORE_INDEX, IGNORE_INDEX, 0, 0, IGNORE_INDEX,
        IGNORE_INDEX, 0, IGNORE_INDEX]  # the control character is [UNK], so it has a first piece and a label
    assert features.labels is None and features.segment_a_len.tolist() == [10, 3]
    assert features.word_starts.tolist() == [1, 2, 4, 7, 8, 11]
    assert features.sentence.tolist() == [0, 1] and features.first_word.tolist() == [0, 0]
    assert sentence_tags(problem, features, features.token_labels) == [s.tags for s in sentences]


def test_long_sentences_are_cut_at_word_boundaries_and_every_word_kept(tokenizer):
    # Words of 1 to 3 pieces; max_seq_length 6 leaves 4 pieces a row.
    words = ["a", "unaffable", "b", "Lovelace", "c", "the", "unaffable", "a"]
    features_rows = encode_word_rows(tokenizer, [words, ["b"], words[:2]], 6)
    ids, lengths, sentence, first_word, word_starts = features_rows
    assert lengths.max() <= 6 and sentence.tolist() == [0, 0, 0, 0, 1, 2]
    assert first_word.tolist() == [0, 2, 5, 7, 0, 0]  # rows: [a un##aff##able] [b love##lace c] [the un##..] [a]
    starts = ids[word_starts]  # each word's first piece, every word exactly once, in order
    assert len(word_starts) == len(words) + 1 + 2 and len(set(word_starts.tolist())) == len(word_starts)
    first_pieces = [tokenizer.encode_words([w])[0][0] for w in [*words, "b", *words[:2]]]
    assert starts.tolist() == first_pieces
    # A word longer than a row keeps its first pieces (its label is on the first).
    ids, lengths, *_ = encode_word_rows(tokenizer, [["unaffable"]], 4)
    assert ids.tolist() == [CLS, ID["un"], ID["##aff"], SEP]
    with pytest.raises(ValueError, match="max_seq_length must be at least 3"):
        encode_word_rows(tokenizer, [["a"]], 2)


def test_long_sentence_predictions_are_reassembled_in_file_order(tokenizer, tmp_path):
    path = tmp_path / "dev.txt"
    tags = ["O", "B", "O", "B", "O", "B", "O", "O", "B"]
    words = ["a", "unaffable", "b", "Lovelace", "c", "the", "unaffable", "a", "Ada"]
    path.write_text("\n".join(f"{w} {t}" for w, t in zip(words, tags)) + "\n\nMixedCase B\n", encoding="utf-8")
    problem = Problem("cut", "", {"dev": problem_record.ConllSplit(str(path))}, ("O", "B"), {"dev": ("acc",)},
                      type="seq_tag")
    features = convert_problem_examples(problem, read_examples(problem, "dev", ""), tokenizer, 6)
    assert len(features) > 2 and (features.lengths <= 6).all()
    # Predict each word's gold tag on its first piece and nonsense elsewhere: only first pieces may count.
    predictions = torch.ones_like(features.token_labels)
    predictions[features.word_starts] = features.token_labels[features.word_starts]
    assert problem_metrics(problem, "dev", predictions, features) == {"acc": 100.0}
    out = write_predictions(problem, "dev", predictions, features, tmp_path / "cut.conll", "")
    lines = out.read_text(encoding="utf-8").split("\n")
    assert lines == [*(f"{w}\t{t}\t{t}" for w, t in zip(words, tags)), "", "MixedCase\tB\tB", "", ""]


def test_make_batch_carries_token_labels_and_multi_hot_labels(tokenizer):
    problem = tag_problem(["O", "B-PER", "I-PER"])
    sentences = [TaggedSentence("0", ["Ada", "Lovelace"], ["B-PER", "I-PER"]), TaggedSentence("1", ["the"], ["O"]),
                 TaggedSentence("2", ["unaffable", "a", "b"], ["O", "O", "O"])]
    features = convert_problem_examples(problem, sentences, tokenizer, 16)
    batch = make_batch(features, [2, 0])
    flat_ids = batch["input_ids"].flatten()[batch["token_index"]]
    order = torch.cat([torch.arange(features.offsets[i], features.offsets[i + 1]) for i in (2, 0)])
    assert torch.equal(flat_ids, features.input_ids[order].long())
    assert torch.equal(batch["token_labels"], features.token_labels[order])
    assert "labels" not in batch
    multi = Features(features.input_ids, features.offsets, features.segment_a_len, torch.eye(3)[[0, 2, 1]])
    assert make_batch(multi, [1, 2])["labels"].tolist() == [[0, 0, 1], [0, 1, 0]]


# ---- predictions, metrics, prediction files -----------------------------------------------------------------------

def test_predictions_from_logits_per_type():
    logits = torch.tensor([[0.2, -1.0, 3.0], [-0.5, 0.1, -2.0]])
    assert predictions_from_logits("cola", logits[:, :2]).tolist() == [0, 1]
    assert predictions_from_logits("sts", logits[:, :1]).tolist() == pytest.approx([0.2, -0.5])
    assert predictions_from_logits("pku_entity_types", logits).tolist() == [[True, False, True], [False, True, False]]
    assert predictions_from_logits("pku_cws", logits).tolist() == [2, 1]  # one per packed token


def test_cls_and_regression_metrics_of_user_problems(user_problems, tokenizer):
    senti = user_problems["senti"]
    dev = convert_problem_examples(senti, read_examples(senti, "dev", ""), tokenizer, 16)  # labels pos, neg
    assert problem_metrics(senti, "dev", torch.tensor([1, 1]), dev) == {"acc": 50.0}
    score = user_problems["score"]
    dev = convert_problem_examples(score, read_examples(score, "dev", ""), tokenizer, 16)  # 4.2 / 5, 0.0
    metrics = problem_metrics(score, "dev", torch.tensor([0.9, 0.1]), dev)
    assert metrics == pytest.approx({"pearson": 100.0, "spearman": 100.0})
    assert problem_score(score, metrics) == metrics["pearson"]


def test_glue_metrics_unchanged_through_problem_metrics():
    features = Features(torch.zeros(4, dtype=torch.int32), torch.arange(5), torch.ones(4, dtype=torch.int32),
                        torch.tensor([1, 0, 1, 1]))
    predictions = torch.tensor([1, 1, 0, 1])
    assert problem_metrics("mrpc", "dev", predictions, features) == metrics_module.compute_metrics(
        glue_processors.get_task("mrpc"), "dev", predictions, features.labels)
    scores = Features(features.input_ids, features.offsets, features.segment_a_len, torch.tensor([.1, .2, .3, .9]))
    metrics = problem_metrics("sts", "dev", torch.tensor([.2, .1, .4, .8]), scores)
    assert list(metrics) == ["pearson", "spearman"] and metrics["spearman"] == pytest.approx(80.0)


def test_multi_cls_metrics_hand_computed(user_problems):
    gold = torch.tensor([[1, 0, 1], [0, 1, 0], [0, 0, 0], [1, 1, 0]], dtype=torch.float32)
    predicted = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 0], [1, 0, 1]], dtype=torch.bool)
    features = Features(torch.zeros(4, dtype=torch.int32), torch.arange(5), torch.ones(4, dtype=torch.int32), gold)
    problem = Problem("m", "", {}, ("x", "y", "z"), {"dev": ("micro_f1", "macro_f1", "exact_match")}, type="multi_cls")
    metrics = problem_metrics(problem, "dev", predicted, features)
    # tp 3 (x twice, y once), fp 1 (z), fn 2 (z, y): micro F1 = 2*3 / (2*3 + 1 + 2); per label F1 x 1, y 2/3, z 0.
    assert metrics == pytest.approx({"micro_f1": 100 * 6 / 9, "macro_f1": 100 * (1 + 2 / 3 + 0) / 3,
                                     "exact_match": 50.0})
    assert problem_score(problem, metrics) == metrics["micro_f1"]


def test_seq_tag_span_metrics_bmes_and_prefixed(tokenizer):
    # Word segmentation: gold words [ab][c][de]; predicted [ab][cde]: 1 of 2 predicted words right, 1 of 3 gold.
    cws = tag_problem(["b", "m", "e", "s"])
    sentence = TaggedSentence("0", ["a", "b", "c", "a", "b"], ["b", "e", "s", "b", "e"])
    features = convert_problem_examples(cws, [sentence], tokenizer, 16)
    predicted = features.token_labels.clone()
    predicted[features.word_starts] = torch.tensor([0, 2, 0, 1, 2])  # b e b m e
    metrics = problem_metrics(cws, "dev", predicted, features)
    assert metrics == pytest.approx({"f1": 100 * 2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3), "precision": 50.0,
                                     "recall": 100 / 3})
    # Prefixed tags: one PER of two found, and no false alarm.
    ner = tag_problem(["O", "B-PER", "I-PER"])
    sentence = TaggedSentence("0", ["a", "b", "c", "a"], ["B-PER", "I-PER", "O", "B-PER"])
    features = convert_problem_examples(ner, [sentence], tokenizer, 16)
    predicted = features.token_labels.clone()
    predicted[features.word_starts[3]] = 0
    assert problem_metrics(ner, "dev", predicted, features) == pytest.approx(
        {"f1": 100 * 2 / 3, "precision": 100.0, "recall": 50.0})


def test_prediction_files_of_text_types(user_problems, tokenizer, tmp_path):
    emotion = user_problems["emotion"]
    test = convert_problem_examples(emotion, read_examples(emotion, "test", ""), tokenizer, 16)
    predicted = torch.zeros(2, 8, dtype=torch.bool)
    predicted[0, [4, 6]] = True  # joy, positive
    name = problems.prediction_file_name(emotion, "test")
    path = write_predictions(emotion, "test", predicted, test, tmp_path / name, "")
    assert path.name == "emotion.tsv" and path.read_text() == "index\tprediction\nw1\tjoy,positive\nw2\t\n"
    score = user_problems["score"]
    dev = convert_problem_examples(score, read_examples(score, "dev", ""), tokenizer, 16)
    write_predictions(score, "dev", torch.tensor([0.5, 1.2]), dev, tmp_path / "score.tsv", "")
    assert (tmp_path / "score.tsv").read_text() == "index\tprediction\n0\t2.5\n1\t5\n"  # x label_scale, clipped
    write_predictions("cola", "dev", torch.tensor([1, 0]), dev, tmp_path / "cola.tsv", "")
    assert (tmp_path / "cola.tsv").read_text() == "index\tprediction\n0\t1\n1\t0\n"
    assert problems.prediction_file_name("mnli", "dev_matched") == "mnli-dev_matched.tsv"
    assert problems.prediction_file_name("pku_ner", "dev") == "pku_ner.conll"


def test_conll_test_predictions_keep_the_tokens_as_written(user_problems, vocab_file, tmp_path):
    ner = user_problems["ner"]
    features = load_problem_features(ner, "test", "", vocab_file, True, 8, cache_dir=tmp_path)
    assert features.token_labels is None and features.labels is None
    logits = torch.zeros(features.input_ids.numel(), ner.num_labels)
    logits[:, ner.labels.index("B-PER")] = 1.0
    path = write_predictions(ner, "test", predictions_from_logits(ner, logits), features, tmp_path / "ner.conll", "")
    assert path.read_text(encoding="utf-8") == "Grace\tB-PER\nHopper\tB-PER\nsailed\tB-PER\n\nBerlin\tB-PER\n\n"


# ---- the cache ------------------------------------------------------------------------------------------------------

def test_problem_features_are_cached(user_problems, vocab_file, tmp_path, monkeypatch):
    ner = user_problems["ner"]
    first = load_problem_features(ner, "dev", "", vocab_file, True, 8, cache_dir=tmp_path)
    monkeypatch.setattr(feats, "convert_examples", lambda *args, **kwargs: pytest.fail("tokenized again"))
    again = load_problem_features(ner, "dev", "", vocab_file, True, 8, cache_dir=tmp_path)
    for name in ("input_ids", "offsets", "token_labels", "sentence", "first_word", "word_starts"):
        assert torch.equal(getattr(first, name), getattr(again, name))
    assert len(list(tmp_path.glob("ner-dev-len8-*.pt"))) == 1


def test_glue_rows_load_glue_features_and_cache(vocab_file, tmp_path):
    data_dir = fixture_glue_dir()
    via_problems = load_problem_features("rte", "dev", data_dir, vocab_file, True, 32, cache_dir=tmp_path)
    cached = list(tmp_path.iterdir())
    direct = glue_processors.load_features(data_dir, "rte", "dev", vocab_file, True, 32, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == cached  # the same cache file
    assert torch.equal(via_problems.input_ids, direct.input_ids) and torch.equal(via_problems.labels, direct.labels)
    assert via_problems.token_labels is None and via_problems.word_starts is None


# ---- People's Daily (../shared/pku199801) ---------------------------------------------------------------------------

def test_people_daily_sentence_counts():
    data_dir = shared_dir("pku199801").parent
    sentences = pku.pku_sentences(data_dir / "pku199801" / "199801.txt")
    assert len(sentences) == 45_080
    train, dev = (read_examples("pku_cws", split, data_dir) for split in ("train", "dev"))
    assert (len(train), len(dev)) == (40_572, 4_508)
    assert dev[0].guid == f"pku_cws-dev-{sentences[9][0]}" and dev[0].tokens == [c for w, _ in sentences[9][1]
                                                                                for c in w]
    assert all(len(s.tokens) == len(s.tags) for s in dev)


def test_people_daily_tags_on_real_lines():
    sentences = pku.pku_sentences(shared_dir("pku199801") / "199801.txt")
    by_line = {}
    for line, words in sentences:
        by_line.setdefault(line, words)
    # Line 2: 中共中央/nt 总书记/n 、/w 国家/n 主席/n 江/nr 泽民/nr; line 3: （/w 一九九七年/t 十二月/t 三十一日/t ）/w
    line2, line3 = by_line[2], by_line[3]
    assert line2 == [("中共中央", "nt"), ("总书记", "n"), ("、", "w"), ("国家", "n"), ("主席", "n"), ("江", "nr"),
                     ("泽民", "nr")]
    assert pku._cws_tags(line2) == ["b", "m", "m", "e", "b", "m", "e", "s", "b", "e", "b", "e", "s", "b", "e"]
    assert pku._pos_tags(line2)[:8] == ["B-nt", "I-nt", "I-nt", "E-nt", "B-n", "I-n", "E-n", "S-w"]
    assert pku._pos_tags(line2)[-3:] == ["S-nr", "B-nr", "E-nr"]
    # A run of nr words is one person: 江 泽民 -> B-PER I-PER I-PER; an nt word is an organisation.
    assert pku._ner_tags(line2) == ["B-ORG", "I-ORG", "I-ORG", "I-ORG", *["O"] * 8, "B-PER", "I-PER", "I-PER"]
    assert set(pku._entity_type_tags(line3)) == {"O", "TIME"}
    # Two ns words side by side are two locations; a nr run broken by another word is two people.
    words = [("北京", "ns"), ("上海", "ns"), ("江", "nr"), ("和", "c"), ("李", "nr")]
    assert pku._ner_tags(words) == ["B-LOC", "I-LOC", "B-LOC", "I-LOC", "B-PER", "O", "B-PER"]


def test_people_daily_problems_share_inputs_and_cut_long_sentences(tmp_path):
    data_dir = shared_dir("pku199801").parent
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join([*TINY_VOCAB, "中", "共", "，", "。"]) + "\n", encoding="utf-8")
    tokenizer = FullTokenizer(vocab)
    dev = read_examples("pku_ner", "dev", data_dir)[:300]
    entity = read_examples("pku_entity_types", "dev", data_dir)[:300]
    ner = convert_problem_examples(PROBLEMS["pku_ner"], dev, tokenizer, 32)
    types = convert_problem_examples(PROBLEMS["pku_entity_types"], entity, tokenizer, 32)
    assert torch.equal(ner.input_ids, types.input_ids) and len(ner) > len(dev)  # same rows; long sentences cut
    assert ner.word_starts.numel() == sum(len(s.tokens) for s in dev)
    assert sentence_tags(PROBLEMS["pku_ner"], ner, ner.token_labels) == [s.tags for s in dev]
    # A sentence's entity types (those of all its characters) on each of its rows; its first row is its example.
    labels = PROBLEMS["pku_entity_types"].labels
    sentence_types = [{tag for tag in s.tags if tag != "O"} for s in entity]
    assert [{labels[j] for j in np.flatnonzero(r)} for r in types.labels.numpy()] == \
        [sentence_types[i] for i in types.sentence.tolist()]
    rows = feats.example_rows(types)
    assert len(rows) == len(entity) and types.sentence[rows].tolist() == list(range(len(entity)))
    assert types.first_word[rows].eq(0).all()


def test_a_per_example_problem_on_cut_sentences_is_one_row_per_sentence(tmp_path):
    """pku_entity_types (multi_cls) beside pku_cws (seq_tag) on sentences cut at length 32: in a batch of the group's
    rows the entity head reads only the rows that start a sentence, with the sentence's labels; a split's predictions,
    metrics and prediction file have one row per sentence; the group's loss averages over the step's first rows."""
    data_dir = shared_dir("pku199801").parent
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join([*TINY_VOCAB, "中", "共", "，", "。"]) + "\n", encoding="utf-8")
    tokenizer = FullTokenizer(vocab)
    cws_problem, entity_problem = PROBLEMS["pku_cws"], PROBLEMS["pku_entity_types"]
    sentences = read_examples("pku_entity_types", "dev", data_dir)[:300]
    cws = convert_problem_examples(cws_problem, read_examples("pku_cws", "dev", data_dir)[:300], tokenizer, 32)
    entity = convert_problem_examples(entity_problem, sentences, tokenizer, 32)
    entity_type = problem_types.of(entity_problem)
    indices = torch.arange(len(entity))
    assert (entity.first_word > 0).sum() > 50  # many sentences are cut at this length

    batch = make_batch(cws, indices[:40])
    firsts = batch["example_index"]
    assert torch.equal(indices[:40][firsts], feats.example_indices(entity, indices[:40]))
    assert torch.equal(entity_type.example_labels(entity, indices[:40]), entity.labels[indices[:40][firsts]])
    assert entity_type.labelled_tokens(entity, indices[:40]) == len(firsts)
    assert problem_types.of(cws_problem).labelled_tokens(cws, indices[:40]) == int((batch["token_labels"] >= 0).sum())
    logits = torch.randn(len(firsts), len(entity_problem.labels))
    labels = entity_type.example_labels(entity, indices[:40])
    assert torch.allclose(entity_type.loss(logits, labels, denominator=len(firsts)), entity_type.loss(logits, labels))

    config = modeling.BertConfig(vocab_size=len(TINY_VOCAB) + 4, hidden_size=32, num_hidden_layers=1,
                                 num_attention_heads=4, intermediate_size=37)
    torch.manual_seed(0)
    model = modeling.BertForMultiTask(config, [4, 4], ["seq_tag", "multi_cls"], num_groups=1)
    with torch.no_grad():
        model.classifier[1].bias.copy_(torch.tensor([3.0, -3.0, 0.0, -3.0]))  # PER always; LOC by the input
    predictions = evaluation.predict_split(model, entity_problem, entity, 0, 1, 64, torch.device("cpu"))
    assert predictions.shape == (len(sentences), len(entity_problem.labels)) and predictions[:, 0].all()
    gold = torch.tensor([[label in s.tags for label in entity_problem.labels] for s in sentences])
    expected = metrics_module.multi_label_metrics(entity_problem.metrics["dev"], predictions, gold.float())
    assert problem_metrics("pku_entity_types", "dev", predictions, entity) == expected
    path = write_predictions("pku_entity_types", "dev", predictions, entity, tmp_path / "pku_entity_types.tsv",
                             data_dir)
    assert len(path.read_text().splitlines()) == 1 + len(sentences)


# ---- EmoLex as the user's multi_cls problem (../shared/emolex) ------------------------------------------------------

def test_emolex_split_loads_as_a_multi_cls_problem(tmp_path, vocab_file):
    lexicon = json.loads((shared_dir("emolex") / "nrc_en.json").read_text(encoding="utf-8"))
    words = sorted(lexicon)
    rows = {"train": [], "dev": []}
    for i, word in enumerate(words):  # every 10th word to dev
        rows["dev" if i % 10 == 9 else "train"].append(f"{word}\t{','.join(lexicon[word])}")
    files = {f"emo/{split}.tsv": "word\tlabels\n" + "\n".join(lines) + "\n" for split, lines in rows.items()}
    path = write_problems(tmp_path, {"emotion": {"type": "multi_cls", "format": "tsv", "train": "emo/train.tsv",
                                                 "dev": "emo/dev.tsv", "text": ["word"], "label": "labels"}}, files)
    emotion = read_problems_file(path)["emotion"]
    assert emotion.labels == ("anger", "anticipation", "disgust", "fear", "joy", "negative", "positive", "sadness",
                              "surprise", "trust")
    counts = torch.zeros(10)
    for split in ("train", "dev"):
        features = load_problem_features(emotion, split, "", vocab_file, True, 16, cache_dir=tmp_path / "cache")
        assert features.labels.shape == (len(rows[split]), 10)
        counts += features.labels.sum(0)
    # The README's counts: negative 3324, positive 2312, fear 1476, ...
    assert dict(zip(emotion.labels, counts.int().tolist())) == {
        "anger": 1247, "anticipation": 839, "disgust": 1058, "fear": 1476, "joy": 689, "negative": 3324,
        "positive": 2312, "sadness": 1191, "surprise": 534, "trust": 1231}
