"""seq2seq_text and seq2seq_tag problems: problems-file keys and their errors, targets, metrics against a direct
computation, cmudict_g2p's split, and training runs with a seq2seq problem (an & group with a cls problem,
run_test_multi_task.py --split dev equal to the log, Ctrl-C and --resume, torchrun).

The user problems (tests/fixtures/problems/seq2seq.json) read real MRPC rows (tests/fixtures/glue/MRPC): from a
sentence, generate the second sentence of its pair (seq2seq_text), and classify whether the pair is a paraphrase
(cls), two problems of the same inputs.
"""
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu
import torch

import cmudict
import inference
import metrics
import problem_record
import problem_types
import problems
import problems_file
import readers
import run_test_multi_task
import seq2seq_types
from conftest import FIXTURES, ROOT, minilm_dir, require
from helpers import interrupt_at_step, read_jsonl, run_training, write_problems
from tokenization import FullTokenizer

SEQ2SEQ_PROBLEMS = FIXTURES / "problems" / "seq2seq.json"
MRPC_PAIRS = FIXTURES / "problems" / "mrpc_pairs"
# CMUdict's words per part (its README's 126,052 distinct words, split by md5).
CMUDICT_WORDS = {"train": 113_391, "dev": 6_350, "test": 6_311}


def shared_cmudict_dir():
    path = ROOT.parent / "shared"
    require((path / "cmudict" / "cmudict.dict").is_file(), f"needs CMUdict in {path / 'cmudict'}")
    return path



@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    """A 3-layer EmBERT over MiniLM's vocabulary (cmudict_g2p's decoder starts from the top 3 encoder layers),
    dropout off (torchrun's processes draw different masks)."""
    path = tmp_path_factory.mktemp("config") / "tiny.json"
    path.write_text(json.dumps({"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 3,
                                "num_attention_heads": 4, "intermediate_size": 37, "our_attn": True,
                                "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}))
    return path


def command(output_dir, config, cache_dir, tasks="mrpc_second&mrpc_quality", *extra):
    return ["--output_dir", output_dir, "--tasks", tasks, "--problems", SEQ2SEQ_PROBLEMS, "--do_train", "--do_eval",
            "--do_lower_case", "--data_dir", FIXTURES, "--vocab_file", minilm_dir() / "vocab.txt",
            "--bert_config_file", config, "--train_batch_size", 8, "--learning_rate", 1e-3, "--no_cuda",
            "--cache_dir", cache_dir, "--log_steps", 1, "--eval_batch_size", 32, *extra]


# ------------------------------------------------------------------------------------------------ problems file

def test_problems_file_keys_defaults_and_record():
    read = problems_file.read_problems_file(SEQ2SEQ_PROBLEMS)
    second = read["mrpc_second"]
    assert second.type == "seq2seq_text" and second.labels is None
    assert second.metrics == {"dev": ("bleu", "exact_match")}
    settings = second.decoder
    assert (settings.max_target_length, settings.decoder_layers, settings.decoder_init, settings.num_beams,
            settings.length_penalty, settings.bleu_tokenize) == (24, 2, "random", 1, 1.0, "13a")
    assert problem_record.problem_from_record(json.loads(json.dumps(second.to_record()))) == second
    assert read["mrpc_quality"].decoder is None


def g2p_spec(**extra):
    return {"g2p": {"type": "seq2seq_tag", "format": "tsv", "train": "train.tsv", "dev": "dev.tsv",
                    "text": ["word"], "label": "phonemes", **extra}}


G2P_FILES = {"train.tsv": "word\tphonemes\nread\tR EH1 D\nlead\tL IY1 D\n",
             "dev.tsv": "word\tphonemes\nred\tR EH1 D\n"}


def test_seq2seq_tag_symbols_come_from_the_training_file_sorted(tmp_path):
    problem = problems_file.read_problems_file(write_problems(tmp_path, g2p_spec(), G2P_FILES))["g2p"]
    assert problem.labels == ("D", "EH1", "IY1", "L", "R")
    assert problem.metrics == {"dev": ("seq_acc", "token_error_rate")}


@pytest.mark.parametrize("extra,message", [
    ({"bleu_tokenize": "zh"}, "bleu_tokenize is for seq2seq_text problems, not seq2seq_tag"),
    ({"decoder_layers": 0}, "decoder_layers must be a positive integer, got 0"),
    ({"decoder_init": "bert"}, "decoder_init must be one of random, encoder, got 'bert'"),
    ({"num_beams": 2.5}, "num_beams must be a positive integer"),
    ({"length_penalty": "long"}, "length_penalty must be a number"),
    ({"label_scale": 5}, "label_scale must be a positive number, and only for regression"),
])
def test_problems_file_errors_are_one_line(tmp_path, extra, message):
    with pytest.raises(ValueError, match=message) as error:
        problems_file.read_problems_file(write_problems(tmp_path, g2p_spec(**extra), G2P_FILES))
    assert "\n" not in str(error.value) and "problem 'g2p'" in str(error.value)


def test_decoder_keys_belong_to_seq2seq_problems_and_bleu_tokenizers_are_sacrebleus(tmp_path):
    spec = {"c": {"type": "cls", "format": "tsv", "train": "train.tsv", "text": ["word"], "label": "phonemes",
                  "max_target_length": 8}}
    with pytest.raises(ValueError, match="max_target_length is for seq2seq_text problems, not cls"):
        problems_file.read_problems_file(write_problems(tmp_path, spec, G2P_FILES))
    spec = {"t": {"type": "seq2seq_text", "format": "tsv", "train": "train.tsv", "text": ["word"],
                  "label": "phonemes", "bleu_tokenize": "klingon"}}
    with pytest.raises(ValueError, match=r"bleu_tokenize 'klingon' is not one of sacrebleu's tokenizers \(.*13a"):
        problems_file.read_problems_file(write_problems(tmp_path, spec, G2P_FILES))


def load(problem, split, data_dir, tmp_path, user_problems=None, max_seq_length=64):
    return problems.load_problem_features(problem, split, data_dir, minilm_dir() / "vocab.txt", True, max_seq_length,
                                          cache_dir=tmp_path / "cache", user_problems=user_problems)


def test_a_dev_symbol_outside_the_vocabulary_and_an_empty_target_name_file_and_line(tmp_path):
    files = {**G2P_FILES, "dev.tsv": "word\tphonemes\nred\tR EH1 D\nzed\tZ EH1 D\n"}
    user = problems_file.read_problems_file(write_problems(tmp_path, g2p_spec(), files))
    with pytest.raises(ValueError, match=r"dev.tsv line 3: label 'Z' is not one of g2p's labels"):
        load("g2p", "dev", tmp_path, tmp_path, user)
    (tmp_path / "train.tsv").write_text("word\tphonemes\nread\tR EH1 D\nlead\t \n")
    with pytest.raises(ValueError, match=r"train.tsv line 3: the target \(label\) is empty"):
        problems_file.read_problems_file(tmp_path / "problems.json")
    spec = {"t": {"type": "seq2seq_text", "format": "jsonl", "train": "train.jsonl", "text": ["a"], "label": "b"}}
    user = problems_file.read_problems_file(write_problems(tmp_path, spec, {"train.jsonl": '{"a": "x", "b": "y"}\n'
                                                                                          '{"a": "x", "b": ""}\n'}))
    with pytest.raises(ValueError, match=r"train.jsonl line 2: the target \(label\) is empty"):
        load("t", "train", tmp_path, tmp_path, user)


def embert_warnings():
    """The records the run's logger ("embert", not propagated once a run has set it up) gets meanwhile."""
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    return handler, records


def test_training_targets_are_cut_with_one_warning_and_dev_targets_kept(tmp_path):
    user = problems_file.read_problems_file(SEQ2SEQ_PROBLEMS)
    logger = logging.getLogger("embert")
    handler, records = embert_warnings()
    logger.addHandler(handler)
    try:
        train = load("mrpc_second", "train", FIXTURES, tmp_path, user)
        dev = load("mrpc_second", "dev", FIXTURES, tmp_path, user)
    finally:
        logger.removeHandler(handler)
    tokenizer = FullTokenizer(minilm_dir() / "vocab.txt", do_lower_case=True)
    examples = readers.read_examples(user["mrpc_second"], "train", FIXTURES)
    longer = sum(len(tokenizer.encode(e.label)) > 23 for e in examples)
    assert [r.getMessage() for r in records] == [
        f"mrpc_second train: {longer} of 256 targets are longer than max_target_length 24 (end token included): cut"]
    cls, sep = tokenizer.vocab["[CLS]"], tokenizer.vocab["[SEP]"]
    for example, row in zip(examples, train.labels.tolist()):
        pieces = tokenizer.encode(example.label)[:23]
        assert row[:len(pieces) + 2] == [cls, *pieces, sep] and set(row[len(pieces) + 2:]) <= {-100}
    dev_examples = readers.read_examples(user["mrpc_second"], "dev", FIXTURES)
    assert dev.labels.shape[1] == 2 + max(len(tokenizer.encode(e.label)) for e in dev_examples) > 25
    kind = problem_types.of(user["mrpc_second"])
    batch = kind.example_labels(train, torch.tensor([0, 5]))
    assert batch.shape[1] == int((train.labels[[0, 5]] != -100).sum(1).max())  # cut to the batch's longest
    assert kind.labelled_tokens(train, torch.tensor([0, 5])) == int((train.labels[[0, 5]] != -100).sum()) - 2


# ------------------------------------------------------------------------------------------------ metrics

def levenshtein(a, b):
    """Edit distance by the textbook dynamic programme (insertions, deletions, substitutions cost 1)."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        previous, row[0] = row[0], i
        for j, y in enumerate(b, start=1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return row[-1]


def test_symbol_metrics_against_a_direct_computation():
    entries = cmudict.read_entries(shared_cmudict_dir() / "cmudict" / "cmudict.dict")[:400]
    references = [phonemes for _, _, phonemes in entries[::2]]
    predicted = [phonemes for _, _, phonemes in entries[1::2]]  # the next entry: often close, sometimes the same
    predicted[:20] = references[:20]
    values = metrics.generated_symbol_metrics(("seq_acc", "token_error_rate"), predicted, references)
    assert values["seq_acc"] == pytest.approx(100 * sum(p == r for p, r in zip(predicted, references)) / 200)
    assert values["token_error_rate"] == pytest.approx(
        100 * sum(levenshtein(p, r) for p, r in zip(predicted, references)) / sum(map(len, references)))
    assert 10 <= values["seq_acc"] < 100 and 0 < values["token_error_rate"] < 100


def corpus_bleu(predicted, references, n=4):
    """Papineni et al.'s corpus BLEU of whitespace tokens: clipped n-gram precisions, geometric mean, brevity
    penalty (on texts 13a tokenization leaves as they are: lower-case words without punctuation)."""
    import math
    from collections import Counter
    matches, totals = [0] * n, [0] * n
    for p, r in zip(predicted, references):
        p, r = p.split(), r.split()
        for k in range(1, n + 1):
            grams = Counter(tuple(p[i:i + k]) for i in range(len(p) - k + 1))
            ref_grams = Counter(tuple(r[i:i + k]) for i in range(len(r) - k + 1))
            matches[k - 1] += sum(min(c, ref_grams[g]) for g, c in grams.items())
            totals[k - 1] += max(len(p) - k + 1, 0)
    length, ref_length = sum(len(p.split()) for p in predicted), sum(len(r.split()) for r in references)
    penalty = 1.0 if length > ref_length else math.exp(1 - ref_length / length)
    return 100 * penalty * math.exp(sum(math.log(m / t) for m, t in zip(matches, totals)) / n)


def test_text_metrics_against_a_direct_computation():
    lines = [line.split("\t") for line in (MRPC_PAIRS / "dev.tsv").read_text().splitlines()[1:41]]
    words = lambda text: " ".join(w for w in text.lower().split() if w.isalpha())  # noqa: E731
    references = [words(second) for _, second, _ in lines]
    predicted = [words(sentence) for sentence, _, _ in lines]  # the pair's other sentence: a paraphrase or not
    predicted[:3] = references[:3]
    values = metrics.generated_text_metrics(("bleu", "exact_match"), predicted, references, "13a")
    assert values["bleu"] == pytest.approx(corpus_bleu(predicted, references), abs=1e-6)
    assert values["bleu"] == pytest.approx(sacrebleu.corpus_bleu(predicted, [references]).score)
    assert values["exact_match"] == pytest.approx(100 * 3 / 40)
    assert 5 < values["bleu"] < 100


# ------------------------------------------------------------------------------------------------ cmudict_g2p

def test_cmudict_split_by_word_md5_with_the_documented_counts():
    data_dir = shared_cmudict_dir()
    problem = problems.get_problem("cmudict_g2p")
    path = data_dir / "cmudict" / "cmudict.dict"
    entries = cmudict.read_entries(path)
    assert len(entries) == 135_166 and len({word for _, word, _ in entries}) == 126_052
    assert {symbol for _, _, phonemes in entries for symbol in phonemes} == set(cmudict.CMUDICT_SYMBOLS)
    assert len(cmudict.CMUDICT_SYMBOLS) == 69 and problem.labels == cmudict.CMUDICT_SYMBOLS
    examples = {split: readers.read_examples(problem, split, data_dir) for split in ("train", "dev", "test")}
    for split, count in CMUDICT_WORDS.items():
        assert len({e.index for e in examples[split]}) == count, split
    assert len(examples["dev"]) == CMUDICT_WORDS["dev"] and len(examples["test"]) == CMUDICT_WORDS["test"]
    train_words = {e.index for e in examples["train"]}
    assert len(examples["train"]) == sum(word in train_words for _, word, _ in entries)  # every pronunciation
    assert not train_words & {e.index for e in examples["dev"]} and all(e.label is None for e in examples["test"])
    reads = [e for e in examples["train"] if e.index == "read"]
    assert [(e.text_a, e.label) for e in reads] == [("r e a d", ("R", "EH1", "D")), ("r e a d", ("R", "IY1", "D"))]
    lead = next(e for e in examples["dev"] if e.index == "lead")
    assert lead.text_a == "l e a d" and lead.label == ("L", "EH1", "D")  # its first pronunciation
    aalborg = next(e for split in examples.values() for e in split if e.index == "aalborg")
    assert aalborg.text_a == "a a l b o r g"  # the line's "# place, danish" comment dropped
    assert [e.guid for e in examples["dev"]] == sorted((e.guid for e in examples["dev"]),
                                                       key=lambda guid: int(guid.rsplit("-", 1)[1]))


def test_cmudict_spelled_out_input_is_one_token_per_letter(tmp_path):
    features = load("cmudict_g2p", "dev", shared_cmudict_dir(), tmp_path)
    examples = readers.read_examples(problems.get_problem("cmudict_g2p"), "dev", shared_cmudict_dir())
    letters = [len(e.index) for e in examples]
    assert features.lengths.tolist() == [n + 2 for n in letters]  # [CLS] letters [SEP]
    assert features.index == [e.index for e in examples]
    symbols = problems.get_problem("cmudict_g2p").labels
    first = features.labels[0]
    assert first[0] == seq2seq_types.SYMBOL_START and \
        [symbols[i - seq2seq_types.SYMBOL_SPECIALS] for i in first[1:len(examples[0].label) + 1]] == \
        list(examples[0].label)


# ------------------------------------------------------------------------------------------------ training runs

@pytest.mark.slow
def test_group_of_a_seq2seq_and_a_cls_problem_trains_predicts_and_scores_as_logged(tmp_path, tiny_config):
    out = tmp_path / "run"
    run_training(command(out, tiny_config, tmp_path / "cache", "mrpc_second&mrpc_quality", "--num_train_epochs", 2,
                "--steps_per_epoch", 4))
    log = [r for r in read_jsonl(out / "train_log.jsonl") if "loss" in r]
    assert {r["task"] for r in log} == {"mrpc_second", "mrpc_quality"} and sum(r["steps"] for r in log) == 16
    evals = read_jsonl(out / "eval_results.jsonl")
    assert set(evals[-1]["scores"]["mrpc_second"]) == {"bleu", "exact_match"}
    state = torch.load(out / "best_model.pth", weights_only=True)
    assert "classifier.0.layer.1.crossattention.self.query.weight" in state  # decoder_layers 2, under its head
    config = json.loads((out / "config.json").read_text())
    assert config["task_groups"] == [["mrpc_second", "mrpc_quality"]]
    assert config["problems"]["mrpc_second"]["decoder"]["max_target_length"] == 24

    predictions = tmp_path / "dev"
    run_test_multi_task.main(run_test_multi_task.parse_args(
        ["--model_dir", str(out), "--output_dir", str(predictions), "--split", "dev", "--no_cuda"]))
    best = next(e for e in reversed(evals) if e["best"])
    dev = json.loads((predictions / "dev_results.json").read_text())
    assert dev["scores"].keys() == best["scores"].keys()
    for name, values in best["scores"].items():
        assert dev["scores"][name] == pytest.approx(values), name
    lines = (predictions / "mrpc_second.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 129
    assert all(line.split("\t")[0] == str(i) and "##" not in line for i, line in enumerate(lines[1:]))
    sentences = [line.split("\t")[0] for line in (MRPC_PAIRS / "dev.tsv").read_text().splitlines()[1:4]]
    predictor = inference.Predictor.from_run(out)
    assert predictor.predict("mrpc_second", sentences) == [line.split("\t")[1] for line in lines[1:4]]

    test = tmp_path / "test"
    run_test_multi_task.main(run_test_multi_task.parse_args(
        ["--model_dir", str(out), "--output_dir", str(test), "--no_cuda", "--num_beams", "3"]))
    lines = (test / "mrpc_second.tsv").read_text().splitlines()
    indices = [line.split("\t")[0] for line in (MRPC_PAIRS / "test.tsv").read_text().splitlines()[1:]]
    assert [line.split("\t")[0] for line in lines[1:]] == indices


SEQ2SEQ_TASKS = "mrpc_second&mrpc_quality|cmudict_g2p"
SEQ2SEQ_DATA = ["--max_train_samples", 256, "--max_eval_samples", 48]


def seq2seq_command(out, config, cache, *extra):
    """Both seq2seq types: the & group on MRPC pairs, cmudict_g2p from ../shared (the data directory for both: the
    user problems' paths are absolute)."""
    return command(out, config, cache, SEQ2SEQ_TASKS, *SEQ2SEQ_DATA, *extra)


def with_data_dir(argv, data_dir):
    argv = list(argv)
    argv[argv.index("--data_dir") + 1] = data_dir
    return argv


@pytest.mark.slow
def test_ctrl_c_then_resume_gives_bit_identical_weights_with_seq2seq_problems(tmp_path, tiny_config):
    data_dir = shared_cmudict_dir()
    def make(out):
        return with_data_dir(seq2seq_command(out, tiny_config, tmp_path / "cache", "--num_train_epochs", 2,
                                             "--steps_per_epoch", 40), data_dir)
    run_training(make(tmp_path / "straight"))
    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen([sys.executable, "run_multi_task.py", *map(str, make(interrupted))], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = interrupt_at_step(process, interrupted / "train_log.jsonl", 7)
    stopped_at = torch.load(interrupted / "last_checkpoint.pth", weights_only=False)["global_step"]
    assert 7 <= stopped_at < 80 and "continue with --resume" in output
    run_training([*make(interrupted), "--resume"])
    straight = torch.load(tmp_path / "straight" / "last_checkpoint.pth", weights_only=False)
    resumed = torch.load(interrupted / "last_checkpoint.pth", weights_only=False)
    assert resumed["global_step"] == straight["global_step"] == 80
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert read_jsonl(interrupted / "train_log.jsonl") == read_jsonl(tmp_path / "straight" / "train_log.jsonl")
    assert [e["scores"] for e in read_jsonl(interrupted / "eval_results.jsonl")] == \
           [e["scores"] for e in read_jsonl(tmp_path / "straight" / "eval_results.jsonl")]

    # The Predictor takes a word as written and spells it out as cmudict_g2p's inputs are; it predicts what
    # run_test_multi_task.py writes for that dev word.
    run_test_multi_task.main(run_test_multi_task.parse_args(
        ["--model_dir", str(interrupted), "--output_dir", str(tmp_path / "dev"), "--split", "dev", "--no_cuda",
         "--tasks", "cmudict_g2p"]))
    written = dict(line.split("\t") for line in (tmp_path / "dev" / "cmudict_g2p.tsv").read_text().splitlines()[1:])
    symbols = inference.Predictor.from_run(interrupted).predict("cmudict_g2p", ["lead", "aalseth"])
    assert [" ".join(s) for s in symbols] == [written["lead"], written["aalseth"]]


@pytest.mark.slow
def test_two_process_torchrun_matches_one_process_with_seq2seq_problems(tmp_path, tiny_config):
    """DDP over gloo, two micro-batches each, the same global batch: the per-token losses are normalised over the
    whole step's target tokens, so the losses and weights are those of one process."""
    data_dir = shared_cmudict_dir()
    def make(out):
        return with_data_dir(seq2seq_command(out, tiny_config, tmp_path / "cache", "--steps_per_epoch", 6,
                                             "--num_train_epochs", 1, "--gradient_accumulation_steps", 2), data_dir)
    run_training(make(tmp_path / "single"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                               "--master_port=29521", "run_multi_task.py", *map(str, make(tmp_path / "ddp"))],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert torchrun.returncode == 0, torchrun.stderr[-3000:]
    single, ddp = (read_jsonl(tmp_path / name / "train_log.jsonl") for name in ("single", "ddp"))
    assert {r["task"] for r in single if "loss" in r} == {"mrpc_second", "mrpc_quality", "cmudict_g2p"}
    for a, b in zip(single, ddp, strict=True):
        if "loss" in a:
            assert a["task"] == b["task"] and a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    weights = [torch.load(tmp_path / name / "best_model.pth", weights_only=True) for name in ("single", "ddp")]
    for key, value in weights[0].items():
        torch.testing.assert_close(weights[1][key], value, atol=1e-5, rtol=0, msg=key)


def test_run_test_num_beams_must_be_positive():
    with pytest.raises(SystemExit):
        run_test_multi_task.parse_args(["--model_dir", "x", "--output_dir", "y", "--num_beams", "0"])


def test_prediction_file_of_seq2seq_tag_joins_symbols_by_one_space(tmp_path):
    problem = problems.get_problem("cmudict_g2p")
    kind = problem_types.of(problem)
    predictions = seq2seq_types.GeneratedSplit([("R", "EH1", "D"), ()], None)

    class Rows:  # what write reads of the features: the words as written
        index = ["read", "a"]
    path = Path(tmp_path / "cmudict_g2p.tsv")
    kind.write(problem, "test", predictions, Rows, path, None)
    assert path.read_text() == "index\tprediction\nread\tR EH1 D\na\t\n"
