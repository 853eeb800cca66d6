"""Tests of glue_processors.py: the task table, the reader on every real GLUE file, features, the cache, batches,
metrics, and every bad-input error."""
import csv
import logging
import math
import shutil

import numpy as np
import pytest
import torch

import features as feats
import glue_processors
import metrics
import problem_types
from conftest import fixture_glue_dir, shared_glue_dir, shared_glue_partial_dir
from features import Example, Features, default_cache_dir, make_batch, truncated_pair_lengths
from glue_processors import (
    ALL_TASKS, INF_TASKS, STS_MAX_SCORE, TASKS, canonical_task_name, feature_cache_path, get_task, glue_score,
    load_examples, load_features, missing_files, resolve_tasks, task_file,
)
from metrics import mean_of as task_score

# Official GLUE sizes (SPEC section 3) of the files in ../shared/glue.
OFFICIAL_SIZES = {
    ("cola", "train"): 8551, ("cola", "dev"): 1043, ("cola", "test"): 1063,
    ("sst", "train"): 67349, ("sst", "dev"): 872, ("sst", "test"): 1821,
    ("mrpc", "train"): 3668, ("mrpc", "dev"): 408, ("mrpc", "test"): 1725,
    ("sts", "train"): 5749, ("sts", "dev"): 1500, ("sts", "test"): 1379,
    ("qnli", "dev"): 5463, ("qnli", "test"): 5463,
    ("rte", "train"): 2490, ("rte", "dev"): 277, ("rte", "test"): 3000,
    ("wnli", "train"): 635, ("wnli", "dev"): 71, ("wnli", "test"): 146,
    ("ax", "test"): 1104,
}

# Rows in the fixture slices (tests/fixtures/glue) of the files above: the first 256 train, 128 dev and 64 test rows
# of the small tasks (WNLI dev has 71 in all), 64 of QNLI dev/test and of AX. MNLI, QQP and QNLI train are copies of
# the ../shared/glue-partial samples (their rows are checked in test_partial_samples_parse_with_the_right_columns).
FIXTURE_ROWS = {("qnli", "dev"): 64, ("qnli", "test"): 64, ("ax", "test"): 64, ("wnli", "dev"): 71}
for _name in ("cola", "sst", "mrpc", "sts", "rte", "wnli"):
    for _split, _rows in (("train", 256), ("dev", 128), ("test", 64)):
        FIXTURE_ROWS.setdefault((_name, _split), _rows)
FIXTURES_MAX_BYTES = 1_000_000

TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
              "want", "##want", "##ed", "un", "runn", "##ing", "low", "##est", ",", "."]
PAD, UNK, CLS, SEP = 0, 1, 2, 3


def convert(examples, tokenizer, max_seq_length, task, num_workers=None):
    """A GLUE task's examples -> Features, with its type's label encoding (what load_features builds)."""
    task = get_task(task)
    return feats.convert_examples(task, examples, tokenizer, max_seq_length, problem_types.of(task).encode_labels,
                                  num_workers)


def compute_metrics(task, split, predictions, labels):
    """metrics.compute_metrics of a GLUE task named here (it takes the Problem)."""
    return metrics.compute_metrics(get_task(task), split, predictions, labels)


def write_task_file(data_dir, task, split, text):
    """Write `text` (str, as UTF-8, or raw bytes) where the glue_data layout puts this task's split."""
    path = task_file(data_dir, task, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def reference_rows(path, header):
    """The file read as the original code did: csv.reader with tabs and no quoting."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return rows[1:] if header else rows


# ---- the table ------------------------------------------------------------------------------------------------------

def test_task_order_and_groups_are_the_originals():
    assert ALL_TASKS == ("cola", "mrpc", "mnli", "rte", "sts", "sst", "qqp", "qnli")
    assert INF_TASKS == ("qnli", "mnli", "rte")
    assert set(TASKS) == set(ALL_TASKS) | {"wnli", "ax"}


def test_labels_in_spec_order_and_regression():
    assert TASKS["mnli"].labels == ("contradiction", "entailment", "neutral")
    assert TASKS["rte"].labels == TASKS["qnli"].labels == ("not_entailment", "entailment")
    for name in ("cola", "mrpc", "sst", "qqp", "wnli"):
        assert TASKS[name].labels == ("0", "1") and TASKS[name].num_labels == 2
    assert TASKS["sts"].type == "regression" and TASKS["sts"].labels is None and TASKS["sts"].num_labels == 1
    assert TASKS["mnli"].num_labels == 3 and TASKS["mnli"].type == "cls"
    assert TASKS["ax"].labels == TASKS["mnli"].labels  # predicted with the MNLI head


def test_splits_metrics_and_submission_files():
    assert TASKS["mnli"].dev_splits == ("dev_matched", "dev_mismatched")
    assert TASKS["mnli"].test_splits == ("test_matched", "test_mismatched")
    assert TASKS["cola"].dev_splits == ("dev",) and TASKS["cola"].test_splits == ("test",)
    assert TASKS["ax"].dev_splits == () and TASKS["ax"].test_splits == ("test",)
    assert task_file("glue", "ax", "test").as_posix() == "glue/diagnostic/diagnostic.tsv"
    submissions = {TASKS[name].submission_file(split) for name in TASKS for split in TASKS[name].test_splits}
    assert submissions == {"CoLA.tsv", "SST-2.tsv", "MRPC.tsv", "STS-B.tsv", "QQP.tsv", "MNLI-m.tsv", "MNLI-mm.tsv",
                           "QNLI.tsv", "RTE.tsv", "WNLI.tsv", "AX.tsv"}
    assert TASKS["mnli"].submission_file("test_mismatched") == "MNLI-mm.tsv"
    with pytest.raises(ValueError, match="problem cola has no test split 'dev'"):
        TASKS["cola"].submission_file("dev")
    metrics = {name: TASKS[name].metrics for name in TASKS}
    assert metrics["cola"] == {"dev": ("mcc",)} and metrics["mrpc"] == {"dev": ("f1", "acc")}
    assert metrics["sts"] == {"dev": ("pearson", "spearman")} and metrics["qqp"] == {"dev": ("acc", "f1")}
    assert metrics["mnli"] == {"dev_matched": ("acc_m",), "dev_mismatched": ("acc_mm",)}
    assert all(metrics[name] == {"dev": ("acc",)} for name in ("rte", "sst", "qnli", "wnli"))


@pytest.mark.parametrize("name, canonical", [
    ("sts", "sts"), ("STS-B", "sts"), ("stsb", "sts"), ("sst", "sst"), ("SST-2", "sst"), ("sst2", "sst"),
    ("CoLA", "cola"), (" mnli ", "mnli"), ("diagnostic", "ax"),
])
def test_canonical_task_name(name, canonical):
    assert canonical_task_name(name) == canonical


def test_unknown_task_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown GLUE task 'squad'; valid names: cola, mrpc, mnli, rte, sts, sst"):
        canonical_task_name("squad")


def test_resolve_tasks():
    assert resolve_tasks("all") == list(ALL_TASKS)
    assert resolve_tasks("inf") == ["qnli", "mnli", "rte"]
    assert resolve_tasks("single", task_id=4) == ["sts"]
    assert resolve_tasks("rte,STS-B, cola") == ["rte", "sts", "cola"]  # order kept
    with pytest.raises(ValueError, match="names sts twice"):
        resolve_tasks("sts,stsb")
    with pytest.raises(ValueError, match=r"--tasks single needs --task_id in 0..7 \(0=cola, 1=mrpc"):
        resolve_tasks("single")
    with pytest.raises(ValueError, match="--task_id in 0..7"):
        resolve_tasks("single", task_id=8)
    with pytest.raises(ValueError, match="unknown GLUE task 'bogus'"):
        resolve_tasks("cola,bogus")
    with pytest.raises(ValueError, match="empty name"):
        resolve_tasks("cola,")
    with pytest.raises(ValueError, match="ax has no training data"):
        resolve_tasks("ax")


# ---- every real file -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, split", sorted(OFFICIAL_SIZES))
def test_real_file_counts_labels_and_columns(name, split):
    data_dir = shared_glue_dir()
    task = TASKS[name]
    fmt = task.split_format(split)
    examples = load_examples(str(data_dir) + "/", name, split)  # trailing slash, as in the seed commands
    assert len(examples) == OFFICIAL_SIZES[name, split]
    # Same texts, labels and index as the original's csv.reader(delimiter="\t", quoting=QUOTE_NONE) reading.
    rows = reference_rows(task_file(data_dir, name, split), fmt.header)
    assert [e.text_a for e in examples] == [row[fmt.text_columns[0]] for row in rows]
    if len(fmt.text_columns) == 2:
        assert [e.text_b for e in examples] == [row[fmt.text_columns[1]] for row in rows]
    else:
        assert all(e.text_b is None for e in examples)
    if fmt.label_column is None:
        assert all(e.label is None for e in examples)
        # Test rows carry the file's own index: its first column, 0 .. N-1 in every GLUE test file.
        assert [e.index for e in examples] == [row[0] for row in rows] == [str(i) for i in range(len(rows))]
    elif task.type == "regression":
        scores = [e.label for e in examples]
        assert all(0.0 <= score <= STS_MAX_SCORE for score in scores) and min(scores) == 0 and max(scores) == 5
    else:
        assert {e.label for e in examples} == set(task.labels)
        assert all(e.index is None for e in examples)


@pytest.mark.parametrize("name, split, rows, text_a, text_b, label, index", [
    ("mnli", "train", 3, "Conceptually cream skimming has two basic dimensions - product and geography.",
     "Product and geography are what make cream skimming work. ", "neutral", None),
    ("mnli", "dev_matched", 2, "The new rights are nice enough", "Everyone really likes the newest benefits ",
     "neutral", None),
    ("mnli", "dev_mismatched", 2,
     "Your contribution helped make it possible for us to provide our students with a quality education.",
     "Your contributions were of no help with our students' education.", "contradiction", None),
    ("mnli", "test_matched", 1,
     "Hierbas, ans seco, ans dulce, and frigola are just a few names worth keeping a look-out for.",
     "Hierbas is a name worth looking out for.", None, "0"),
    ("mnli", "test_mismatched", 1, "What have you decided, what are you going to do?", "So what's your decision?",
     None, "0"),
    ("qqp", "train", 9, "How is the life of a math student? Could you describe your own experiences?",
     "Which level of prepration is enough for the exam jlpt5?", "0", None),
    ("qqp", "dev", 9, "Why are African-Americans so beautiful?", "Why are hispanics so beautiful?", "0", None),
    ("qqp", "test", 9,
     "Would the idea of Trump and Putin in bed together scare you, given the geopolitical implications?",
     "Do you think that if Donald Trump were elected President, he would be able to restore relations with Putin "
     "and Russia as he said he could, based on the rocky relationship Putin had with Obama and Bush?", None, "0"),
    ("qnli", "train", 3, "When did the third Digimon series begin?", None, "not_entailment", None),
])
def test_partial_samples_parse_with_the_right_columns(name, split, rows, text_a, text_b, label, index):
    for data_dir in (shared_glue_partial_dir(), fixture_glue_dir()):  # the fixtures hold copies of these samples
        examples = load_examples(data_dir, name, split)
        first = examples[0]
        assert len(examples) == rows
        assert (first.text_a, first.label, first.index) == (text_a, label, index)
        if text_b is not None:
            assert first.text_b == text_b
        else:
            assert first.text_b.startswith("Unlike the two seasons before it")


# ---- fixtures ----------------------------------------------------------------------------------------------------

def test_fixture_slices_are_small_and_complete():
    fixtures = fixture_glue_dir()
    assert sum(path.stat().st_size for path in fixtures.rglob("*")) < FIXTURES_MAX_BYTES
    assert missing_files(fixtures, TASKS, ("train", "dev", "test")) == []  # every GLUE file, in the same layout
    for (name, split), rows in FIXTURE_ROWS.items():
        assert len(load_examples(fixtures, name, split)) == rows, (name, split)


def test_fixtures_are_exact_prefixes_of_the_real_files():
    fixtures = fixture_glue_dir()
    real, partial = shared_glue_dir(), shared_glue_partial_dir()
    for path in sorted(fixtures.rglob("*.tsv")):
        relative = path.relative_to(fixtures)
        source = real / relative if (real / relative).is_file() else partial / relative
        assert source.read_bytes().startswith(path.read_bytes()), relative


def test_missing_files_lists_everything_absent(tmp_path):
    shutil.copytree(fixture_glue_dir() / "CoLA", tmp_path / "CoLA")
    missing = missing_files(tmp_path, ["cola", "mnli", "ax"], ["train", "dev", "test"])
    assert missing == [tmp_path / "MNLI" / name for name in
                       ("train.tsv", "dev_matched.tsv", "dev_mismatched.tsv", "test_matched.tsv",
                        "test_mismatched.tsv")] + [tmp_path / "diagnostic" / "diagnostic.tsv"]
    assert missing_files(tmp_path, ["rte"], ["dev"]) == [tmp_path / "RTE" / "dev.tsv"]


# ---- bad input ------------------------------------------------------------------------------------------------------

def test_missing_data_dir_and_file_errors_show_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"GLUE data directory not found: {tmp_path / 'nope'} "
                                                r"\(expected the glue_data layout, e.g. <data_dir>/CoLA/train.tsv\)"):
        load_examples(tmp_path / "nope", "cola", "train")
    with pytest.raises(FileNotFoundError, match=rf"GLUE sts dev file not found: {tmp_path / 'STS-B' / 'dev.tsv'} "
                                                r"\(expected the glue_data layout: <data_dir>/STS-B/dev.tsv\)"):
        load_examples(tmp_path, "sts", "dev")
    with pytest.raises(ValueError, match="problem cola has no split 'dev_matched'; its splits: train, dev, test"):
        load_examples(tmp_path, "cola", "dev_matched")


def test_empty_and_header_only_files(tmp_path):
    path = write_task_file(tmp_path, "rte", "train", "")
    with pytest.raises(ValueError, match=f"{path} is empty"):
        load_examples(tmp_path, "rte", "train")
    write_task_file(tmp_path, "rte", "train", "index\tsentence1\tsentence2\tlabel\n")
    with pytest.raises(ValueError, match=f"{path} has a header but no data rows"):
        load_examples(tmp_path, "rte", "train")


def test_wrong_field_count_names_file_and_line(tmp_path):
    path = write_task_file(tmp_path, "rte", "dev", "index\tsentence1\tsentence2\tlabel\n"
                                                   "0\tA b.\tC d.\tentailment\n"
                                                   "1\tA \"quoted\ttab\".\tC d.\tentailment\n")
    with pytest.raises(ValueError, match=f"{path} line 3: 5 tab-separated fields, expected 4"):
        load_examples(tmp_path, "rte", "dev")
    # Header-less CoLA: the first row sets the count.
    path = write_task_file(tmp_path, "cola", "train", "gj04\t1\t\tFine.\ngj04\t0\t*\n")
    with pytest.raises(ValueError, match=f"{path} line 2: 3 tab-separated fields, expected 4"):
        load_examples(tmp_path, "cola", "train")


def test_qqp_rows_with_wrong_field_count_are_skipped_and_counted(tmp_path, caplog):
    path = write_task_file(tmp_path, "qqp", "train", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
                                                     "1\t1\t2\tWhy?\tHow?\t0\n"
                                                     "2\t3\t4\tbroken row\n"
                                                     "3\t5\t6\tWhat?\tWho?\t1\n"
                                                     "4\t7\t8\ta\tb\tc\t1\n")
    with caplog.at_level(logging.WARNING, logger="glue_processors"):
        examples = load_examples(tmp_path, "qqp", "train")
    assert [(e.text_a, e.label) for e in examples] == [("Why?", "0"), ("What?", "1")]
    assert f"{path}: skipped 2 rows without 6 fields" in caplog.text
    # QQP test files get no such leniency.
    path = write_task_file(tmp_path, "qqp", "test", "id\tquestion1\tquestion2\n0\tWhy?\n")
    with pytest.raises(ValueError, match=f"{path} line 2: 2 tab-separated fields, expected 3"):
        load_examples(tmp_path, "qqp", "test")


def test_unknown_label_names_file_line_and_label(tmp_path):
    path = write_task_file(tmp_path, "mnli", "dev_matched", "\t".join(["x"] * 16) + "\n"
                                                            + "\t".join(["y"] * 15 + ["neutral"]) + "\n"
                                                            + "\t".join(["y"] * 15 + ["-"]) + "\n")
    with pytest.raises(ValueError, match=rf"{path} line 3: label '-' is not one of mnli's labels "
                                         r"\['contradiction', 'entailment', 'neutral'\]"):
        load_examples(tmp_path, "mnli", "dev_matched")
    path = write_task_file(tmp_path, "sts", "train", "\t".join(["h"] * 10) + "\n" + "\t".join(["t"] * 9 + ["5.5"]))
    with pytest.raises(ValueError, match=rf"{path} line 2: label '5.5' is not a similarity score in \[0, 5\]"):
        load_examples(tmp_path, "sts", "train")
    write_task_file(tmp_path, "sts", "train", "\t".join(["h"] * 10) + "\n" + "\t".join(["t"] * 9 + ["high"]))
    with pytest.raises(ValueError, match=f"{path} line 2: label 'high' is not a similarity score"):
        load_examples(tmp_path, "sts", "train")


def test_layout_errors(tmp_path):
    path = write_task_file(tmp_path, "sts", "dev", "index\tsentence1\tsentence2\tscore\n0\ta\tb\t1.0\n")
    with pytest.raises(ValueError, match=rf"{path} has 4 columns, but sts dev reads columns \[7, 8, -1\]"):
        load_examples(tmp_path, "sts", "dev")
    path = write_task_file(tmp_path, "rte", "test", "sentence1\tsentence2\tx\na\tb\tc\n")
    with pytest.raises(ValueError, match=f"{path} line 1: column 0 is 'sentence1', expected index or id"):
        load_examples(tmp_path, "rte", "test")
    path = write_task_file(tmp_path, "rte", "train", b"index\tsentence1\tsentence2\tlabel\n0\ta\xff\tb\tentailment\n")
    with pytest.raises(ValueError, match=f"{path} line 2: not UTF-8 text"):
        load_examples(tmp_path, "rte", "train")


def test_bom_crlf_quotes_and_missing_final_newline(tmp_path):
    # MRPC's header starts with a BOM; quotes are literal text; CRLF line ends and a missing final newline are fine.
    text = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\r\n1\t1\t2\t\" A \"\tB \" C\r\n0\t3\t4\tD\t\"E"
    write_task_file(tmp_path, "mrpc", "train", text)
    examples = load_examples(tmp_path, "mrpc", "train")
    assert [(e.text_a, e.text_b, e.label) for e in examples] == [('" A "', 'B " C', "1"), ("D", '"E', "0")]
    real = load_examples(fixture_glue_dir(), "mrpc", "dev")[0]
    assert real.label == "1" and real.text_b.startswith('" The foodservice pie business')


# ---- features ------------------------------------------------------------------------------------------------------

def pair(text_a, text_b=None, label=None):
    return Example("guid", text_a, text_b, label)


def unpack(features, i):
    start, end = features.offsets[i].item(), features.offsets[i + 1].item()
    return features.input_ids[start:end].tolist(), features.segment_a_len[i].item()


def test_pair_features_hand_checked(tokenizer):
    # [CLS] un ##want ##ed runn ##ing [SEP] low low ##est [SEP]; segment 0 = [CLS] A [SEP] (7 tokens), 1 = B [SEP].
    features = convert([pair("UNwanted running", "low lowest", "1")], tokenizer, 128, "mrpc")
    assert unpack(features, 0) == ([CLS, 8, 6, 7, 9, 10, SEP, 11, 11, 12, SEP], 7)
    assert features.input_ids.dtype == torch.int32 and features.offsets.tolist() == [0, 11]
    assert features.segment_a_len.dtype == torch.int32 and features.lengths.tolist() == [11]
    assert features.labels.tolist() == [1] and features.labels.dtype == torch.int64 and features.index is None
    batch = make_batch(features, [0])
    assert batch["token_type_ids"][0, :11].tolist() == [0] * 7 + [1] * 4


def test_single_sentence_features_and_truncation(tokenizer):
    features = convert(
        [pair("want , xyz", label="0"), pair("low " * 10, label="1")], tokenizer, 6, "sst")
    assert unpack(features, 0) == ([CLS, 5, 13, UNK, SEP], 5)
    assert unpack(features, 1) == ([CLS, 11, 11, 11, 11, SEP], 6)  # max_seq_length - 2 tokens of text
    assert features.labels.tolist() == [0, 1] and len(features) == 2


def google_truncate_seq_pair(tokens_a, tokens_b, max_length):
    """Google's _truncate_seq_pair, on lists."""
    while len(tokens_a) + len(tokens_b) > max_length:
        (tokens_a if len(tokens_a) > len(tokens_b) else tokens_b).pop()


def test_pair_truncation_is_longest_first_one_token_at_a_time(tokenizer):
    for len_a in range(12):
        for len_b in range(12):
            for max_length in range(16):
                a, b = list(range(len_a)), list(range(len_b))
                google_truncate_seq_pair(a, b, max_length)
                assert truncated_pair_lengths(len_a, len_b, max_length) == (len(a), len(b))
    # 5 + 2 text tokens into 8 - 3 = 5 places: A loses 2 from its end, B keeps both.
    features = convert([pair("want want want want want", "low low")], tokenizer, 8, "rte")
    assert unpack(features, 0) == ([CLS, 5, 5, 5, SEP, 11, 11, SEP], 5)
    # A tie takes from B first: 3 + 3 into 4 places -> 2 + 2; 3 + 3 into 5 -> A keeps 3, B 2.
    features = convert(
        [pair("want want want", "low low low"), pair("want want want", "low low low")], tokenizer, 7, "rte")
    assert unpack(features, 0) == ([CLS, 5, 5, SEP, 11, 11, SEP], 4)
    assert truncated_pair_lengths(3, 3, 5) == (3, 2)
    with pytest.raises(ValueError, match="max_seq_length must be at least 3"):
        convert([pair("want")], tokenizer, 2, "rte")


def test_labels_follow_the_table_order_and_sts_is_score_over_five(tokenizer):
    features = convert(
        [pair("a", "b", "neutral"), pair("a", "b", "contradiction"), pair("a", "b", "entailment")], tokenizer, 16,
        "mnli")
    assert features.labels.tolist() == [2, 0, 1]
    features = convert(
        [pair("a", "b", "not_entailment"), pair("a", "b", "entailment")], tokenizer, 16, "rte")
    assert features.labels.tolist() == [0, 1]
    examples = load_examples(fixture_glue_dir(), "sts", "train")
    features = convert(examples, tokenizer, 32, "sts")
    assert features.labels.dtype == torch.float32
    assert torch.equal(features.labels, torch.tensor([e.label / 5 for e in examples], dtype=torch.float32))
    assert features.labels[0].item() == 1.0  # "5.000"


def test_test_split_features_carry_the_index_and_no_labels(tokenizer):
    examples = load_examples(fixture_glue_dir(), "qqp", "test")
    features = convert(examples, tokenizer, 32, "qqp")
    assert features.labels is None and features.index == [e.index for e in examples] == [str(i) for i in range(9)]
    assert "labels" not in make_batch(features, [0, 1])


def test_parallel_and_single_process_features_are_identical(tokenizer, monkeypatch):
    examples = load_examples(fixture_glue_dir(), "rte", "train") + load_examples(fixture_glue_dir(), "rte", "dev")
    single = convert(examples, tokenizer, 64, "rte", num_workers=1)
    monkeypatch.setattr(feats, "PARALLEL_MIN_EXAMPLES", 0)
    monkeypatch.setattr(feats, "WORKER_CHUNK_EXAMPLES", 50)  # 8 chunks over 2 workers
    parallel = convert(examples, tokenizer, 64, "rte", num_workers=2)
    for name in ("input_ids", "offsets", "segment_a_len", "labels"):
        assert torch.equal(getattr(single, name), getattr(parallel, name)), name


# ---- feature cache ------------------------------------------------------------------------------------------------

def copy_fixture_task(tmp_path, directory):
    data_dir = tmp_path / "glue"
    shutil.copytree(fixture_glue_dir() / directory, data_dir / directory)
    return data_dir


def test_cache_hit_does_not_tokenize(tmp_path, vocab_file, monkeypatch):
    data_dir = copy_fixture_task(tmp_path, "CoLA")
    cache_dir = tmp_path / "cache"
    built = load_features(data_dir, "cola", "train", vocab_file, True, 32, cache_dir=cache_dir)
    cached_files = list(cache_dir.iterdir())
    assert len(cached_files) == 1 and cached_files[0].name.startswith("cola-train-len32-")  # no temporary left

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("a cache hit must not read examples or tokenize")
    monkeypatch.setattr(glue_processors, "FullTokenizer", no_tokenizing)
    monkeypatch.setattr(glue_processors, "load_examples", no_tokenizing)
    monkeypatch.setattr(feats, "convert_examples", no_tokenizing)
    loaded = load_features(data_dir, "cola", "train", vocab_file, True, 32, cache_dir=cache_dir)
    for name in ("input_ids", "offsets", "segment_a_len", "labels"):
        assert torch.equal(getattr(built, name), getattr(loaded, name))
    assert loaded.index is None


def test_test_split_cache_keeps_the_index(tmp_path, vocab_file):
    data_dir = copy_fixture_task(tmp_path, "RTE")
    built = load_features(data_dir, "rte", "test", vocab_file, True, 32, cache_dir=tmp_path / "cache")
    loaded = load_features(data_dir, "rte", "test", vocab_file, True, 32, cache_dir=tmp_path / "cache")
    assert loaded.labels is None and loaded.index == built.index == [str(i) for i in range(64)]


def test_cache_misses_when_any_input_changes(tmp_path, vocab_file, monkeypatch):
    data_dir = copy_fixture_task(tmp_path, "CoLA")
    cache_dir = tmp_path / "cache"
    builds = []
    real_convert = feats.convert_examples

    def counting_convert(*args, **kwargs):
        builds.append(1)
        return real_convert(*args, **kwargs)
    monkeypatch.setattr(feats, "convert_examples", counting_convert)

    def load(**changes):
        settings = dict(vocab_file=vocab_file, do_lower_case=True, max_seq_length=32) | changes
        load_features(data_dir, "cola", "train", cache_dir=cache_dir, **settings)
        return len(builds)

    assert load() == 1
    assert load() == 1  # hit
    assert load(max_seq_length=64) == 2
    assert load(do_lower_case=False) == 3
    other_vocab = tmp_path / "other_vocab.txt"
    other_vocab.write_text(vocab_file.read_text(encoding="utf-8") + "extra\n", encoding="utf-8")
    assert load(vocab_file=other_vocab) == 4
    data_file = task_file(data_dir, "cola", "train")
    data_file.write_bytes(data_file.read_bytes().replace(b"Our friends", b"Our enemies", 1))
    assert load() == 5
    assert load(max_seq_length=64) == 6  # same settings as the 2nd build, but on the changed file
    assert load() == 6
    assert len(list(cache_dir.iterdir())) == 6


def test_cache_key_is_about_contents_not_names(tmp_path, vocab_file):
    data_dir = copy_fixture_task(tmp_path, "CoLA")
    data_file = task_file(data_dir, "cola", "train")
    renamed_vocab = tmp_path / "renamed.txt"
    shutil.copy(vocab_file, renamed_vocab)
    key = feature_cache_path(tmp_path, "cola", "train", data_file, vocab_file, True, 128)
    assert key == feature_cache_path(tmp_path, "cola", "train", data_file, renamed_vocab, True, 128)
    assert key != feature_cache_path(tmp_path, "cola", "dev", data_file, vocab_file, True, 128)


def test_damaged_cache_file_is_rebuilt(tmp_path, vocab_file, caplog):
    data_dir = copy_fixture_task(tmp_path, "CoLA")
    cache_dir = tmp_path / "cache"
    built = load_features(data_dir, "cola", "dev", vocab_file, True, 32, cache_dir=cache_dir)
    (cache_file,) = cache_dir.iterdir()
    cache_file.write_bytes(b"not a torch file")
    with caplog.at_level(logging.WARNING, logger="features"):
        rebuilt = load_features(data_dir, "cola", "dev", vocab_file, True, 32, cache_dir=cache_dir)
    assert "ignoring unreadable feature cache" in caplog.text and str(cache_file) in caplog.text
    assert torch.equal(built.input_ids, rebuilt.input_ids)


def test_unwritable_cache_warns_and_still_returns_features(tmp_path, vocab_file, caplog):
    data_dir = copy_fixture_task(tmp_path, "CoLA")
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with caplog.at_level(logging.WARNING, logger="features"):
        features = load_features(data_dir, "cola", "dev", vocab_file, True, 32, cache_dir=not_a_folder / "cache")
    assert len(features) == FIXTURE_ROWS["cola", "dev"]
    assert f"could not cache it in {not_a_folder / 'cache'}" in caplog.text


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("EMBERT_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "features"
    monkeypatch.delenv("EMBERT_CACHE")
    assert str(default_cache_dir()).endswith(".cache/embert/features")


# ---- batches -------------------------------------------------------------------------------------------------------

def toy_features():
    """Three packed examples: lengths 3, 11 and 5; segment A lengths 3, 7 and 2."""
    sequences = [[CLS, 5, SEP], [CLS, 8, 6, 7, 9, 10, SEP, 11, 11, 12, SEP], [CLS, SEP, 5, 13, SEP]]
    return Features(
        input_ids=torch.tensor([i for s in sequences for i in s], dtype=torch.int32),
        offsets=torch.tensor([0, 3, 14, 19]),
        segment_a_len=torch.tensor([3, 7, 2], dtype=torch.int32),
        labels=torch.tensor([1, 0, 1]),
    )


def naive_batch(features, indices, width):
    """The per-example loop that make_batch replaces."""
    ids, types, mask = [], [], []
    for i in indices:
        sequence, segment_a = unpack(features, i)
        pad = width - len(sequence)
        ids.append(sequence + [PAD] * pad)
        types.append([0] * segment_a + [1] * (len(sequence) - segment_a) + [0] * pad)
        mask.append([1] * len(sequence) + [0] * pad)
    return ids, types, mask


def test_make_batch_pads_to_a_multiple_of_8_with_masks():
    features = toy_features()
    batch = make_batch(features, [2, 0])
    assert batch["input_ids"].shape == (2, 8) and batch["input_ids"].dtype == torch.int64
    assert batch["input_ids"].tolist() == [[CLS, SEP, 5, 13, SEP, 0, 0, 0], [CLS, 5, SEP, 0, 0, 0, 0, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 1, 1, 1, 0, 0, 0], [0] * 8]
    assert batch["attention_mask"].tolist() == [[1] * 5 + [0] * 3, [1] * 3 + [0] * 5]
    assert batch["labels"].tolist() == [1, 1]
    assert make_batch(features, [1, 0])["input_ids"].shape == (2, 16)  # 11 rounds up to 16
    assert make_batch(features, [1], pad_multiple=1)["input_ids"].shape == (1, 11)


def test_make_batch_pad_to_and_agreement_with_a_loop():
    features = toy_features()
    for indices in ([0, 1, 2], [1, 1], [2], np.array([2, 1]), torch.tensor([0, 2])):
        for pad_to in (None, 11, 16):
            batch = make_batch(features, indices, pad_to=pad_to)
            width = batch["input_ids"].shape[1]
            assert width == (pad_to or width)
            ids, types, mask = naive_batch(features, list(map(int, indices)), width)
            assert batch["input_ids"].tolist() == ids
            assert batch["token_type_ids"].tolist() == types
            assert batch["attention_mask"].tolist() == mask
    with pytest.raises(ValueError, match="an example has 11 tokens, more than pad_to=8"):
        make_batch(features, [0, 1], pad_to=8)
    with pytest.raises(ValueError, match="non-empty 1-D list of example indices"):
        make_batch(features, [])


# ---- metrics -------------------------------------------------------------------------------------------------------

def test_metrics_hand_computed():
    labels, predictions = [1, 1, 1, 0, 0], [1, 1, 0, 1, 0]  # TP 2, FN 1, FP 1, TN 1
    mrpc = compute_metrics("mrpc", "dev", predictions, labels)
    assert mrpc == pytest.approx({"f1": 100 * 2 / 3, "acc": 60.0})
    assert compute_metrics("qqp", "dev", torch.tensor(predictions), torch.tensor(labels)) == pytest.approx(
        {"acc": 60.0, "f1": 100 * 2 / 3})
    # MCC = (TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (2 - 1) / sqrt(3 * 3 * 2 * 2) = 1/6
    assert compute_metrics("cola", "dev", predictions, labels) == pytest.approx({"mcc": 100 / 6})
    assert compute_metrics("mnli", "dev_matched", [0, 2, 1], [0, 2, 2]) == pytest.approx({"acc_m": 200 / 3})
    assert compute_metrics("mnli", "dev_mismatched", [0, 2], [0, 2]) == {"acc_mm": 100.0}
    assert compute_metrics("rte", "dev", [0, 1], [1, 1]) == {"acc": 50.0}
    # Scores x = 0 1 2 3, y = 0 1 3 2 (as score / 5): sum dx dy = 4, sum dx^2 = sum dy^2 = 5 -> r = 0.8; the ranks
    # are the values, so Spearman is 0.8 too. Scaling both by 5 changes neither.
    sts = compute_metrics("sts", "dev", [0.0, 0.2, 0.6, 0.4], [0.0, 0.2, 0.4, 0.6])
    assert sts == pytest.approx({"pearson": 80.0, "spearman": 80.0})
    assert compute_metrics("sts", "dev", [0.5] * 4, [0.0, 0.2, 0.4, 0.6]) == {"pearson": 0.0, "spearman": 0.0}
    # Model outputs under bf16 autocast (numpy has no bfloat16); quarters are exact in bf16.
    bf16 = torch.tensor([0.0, 0.25, 0.75, 0.5], dtype=torch.bfloat16)
    assert compute_metrics("sts", "dev", bf16, torch.tensor([0.0, 0.25, 0.5, 0.75])) == pytest.approx(
        {"pearson": 80.0, "spearman": 80.0})


def test_whole_set_metrics_differ_from_the_originals_batch_average():
    # The original averaged MCC and Pearson over evaluation batches; both are not averages of per-batch values.
    # MCC. Batch 1: labels 1 1 0 0, predictions 1 1 0 0 -> MCC 1.
    #      Batch 2: labels 1 0 0 0, predictions 0 0 0 1 -> TP 0, TN 2, FP 1, FN 1
    #               -> (0 - 1) / sqrt(1 * 1 * 3 * 3) = -1/3.
    #      Batch average 1/3; whole set TP 2, TN 4, FP 1, FN 1 -> (8 - 1) / sqrt(3 * 3 * 5 * 5) = 7/15.
    batches = [([1, 1, 0, 0], [1, 1, 0, 0]), ([0, 0, 0, 1], [1, 0, 0, 0])]
    per_batch = [compute_metrics("cola", "dev", p, y)["mcc"] for p, y in batches]
    assert per_batch == pytest.approx([100.0, -100 / 3])
    assert np.mean(per_batch) == pytest.approx(100 / 3)
    whole = compute_metrics("cola", "dev", sum((p for p, _ in batches), []), sum((y for _, y in batches), []))
    assert whole["mcc"] == pytest.approx(100 * 7 / 15)
    # Pearson. Batch 1: x 0 1, y 0 1 -> r = 1; batch 2: x 2 3, y 3 2 -> r = -1; average 0.
    #          Whole set x 0 1 2 3, y 0 1 3 2 -> r = 0.8 (as in test_metrics_hand_computed).
    batches = [([0.0, 0.2], [0.0, 0.2]), ([0.4, 0.6], [0.6, 0.4])]
    per_batch = [compute_metrics("sts", "dev", p, y)["pearson"] for p, y in batches]
    assert per_batch == pytest.approx([100.0, -100.0]) and np.mean(per_batch) == pytest.approx(0.0)
    whole = compute_metrics("sts", "dev", [0.0, 0.2, 0.4, 0.6], [0.0, 0.2, 0.6, 0.4])
    assert whole["pearson"] == pytest.approx(80.0)


def test_task_and_glue_scores():
    assert task_score({"f1": 90.0, "acc": 80.0}) == 85.0
    scores = {"mrpc": {"f1": 90.0, "acc": 80.0}, "cola": {"mcc": 50.0},
              "mnli": {"acc_m": 84.0, "acc_mm": 83.0}}
    assert glue_score(scores) == pytest.approx((85.0 + 50.0 + 83.5) / 3)
    with pytest.raises(ValueError):
        glue_score({})


@pytest.mark.filterwarnings("ignore:A single label was found")  # scikit-learn, on the one-class case below
def test_metric_errors():
    with pytest.raises(ValueError, match="problem mnli has no metrics for split 'dev'"):
        compute_metrics("mnli", "dev", [0], [0])
    with pytest.raises(ValueError, match="problem ax has no metrics for split 'test'"):
        compute_metrics("ax", "test", [0], [0])
    with pytest.raises(ValueError, match=r"predictions \(2,\) and labels \(3,\)"):
        compute_metrics("rte", "dev", [0, 1], [0, 1, 1])
    assert not math.isnan(compute_metrics("cola", "dev", [1, 1], [1, 1])["mcc"])
