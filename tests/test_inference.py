"""inference.Predictor: on raw inputs it predicts what run_test_multi_task.py's prediction files hold, for every
problem type (GLUE's single sentences, pairs and STS-B's rounded scale; the user's multi_cls, seq_tag, cls and
unscaled regression; People's Daily's word inputs cut into rows), from the best model or the last checkpoint; bad
inputs are one-line ValueErrors naming what was expected.

The runs are real and tiny: run_multi_task.py trains a 2-layer hidden-32 encoder over MiniLM's real vocabulary on
the GLUE rows of tests/fixtures/glue and the problem files of tests/fixtures/problems, a few steps each.
"""
import json

import pytest
import torch

import multitask
import readers
import run_multi_task
import run_test_multi_task
from conftest import fixture_glue_dir, minilm_dir, require, shared_glue_dir
from helpers import tiny_dict
from inference import Predictor
from problem_record import problem_from_record
from problems import get_problem

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only add waiting

TINY = tiny_dict(vocab_size=30522, max_position_embeddings=128, our_attn=True)
GLUE_TASKS = "cola,sts,mrpc|cola_mlm"  # single sentences, a scaled regression, pairs, and a masked LM
PROBLEMS_FILE = fixture_glue_dir().parent / "problems" / "problems.json"
USER_PROBLEMS = "emotion,ner,senti,score"  # multi_cls, seq_tag, cls (jsonl), regression without submission files
SHORT = 16  # max_seq_length of the user run: the fixture's texts, and long inputs cut


def train(root, name, tasks, data_dir, max_seq_length, *extra):
    """A tiny EmBERT run's output directory (two epochs of two steps, evaluated after each)."""
    config = root / "tiny_config.json"
    config.write_text(json.dumps(TINY))
    output_dir = root / name
    argv = ["--seed", "1", "--output_dir", str(output_dir), "--tasks", tasks, "--sample", "rr", "--do_train",
            "--do_eval", "--do_lower_case", "--data_dir", str(data_dir), "--vocab_file",
            str(minilm_dir() / "vocab.txt"), "--bert_config_file", str(config), "--max_seq_length",
            str(max_seq_length), "--train_batch_size", "8", "--eval_batch_size", "16", "--num_train_epochs", "2",
            "--steps_per_epoch", "2", "--learning_rate", "1e-3", "--no_cuda", "--cache_dir", str(root / "cache"),
            *extra]
    multitask.main(multitask.parse_args(run_multi_task.__doc__, argv), run_multi_task.METHOD)
    return output_dir


@pytest.fixture(scope="module")
def glue_run(tmp_path_factory, one_thread):
    return train(tmp_path_factory.mktemp("inference"), "glue", GLUE_TASKS, fixture_glue_dir(), 64)


@pytest.fixture(scope="module")
def user_run(tmp_path_factory, one_thread):
    return train(tmp_path_factory.mktemp("inference"), "user", USER_PROBLEMS, fixture_glue_dir(), SHORT,
                 "--problems", str(PROBLEMS_FILE))


def dev_files(run, output_dir):
    """run_test_multi_task.py --split dev's prediction files of the run's problems."""
    heads = json.loads((run / "config.json").read_text())["task_names"]
    run_test_multi_task.main(run_test_multi_task.parse_args(
        ["--model_dir", str(run), "--output_dir", str(output_dir), "--split", "dev", "--tasks", ",".join(heads),
         "--no_cuda"]))
    return output_dir


def file_predictions(path):
    """The `prediction` column of an index<TAB>prediction file."""
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[0] == "index\tprediction"
    return [line.split("\t")[1] for line in lines[1:] if line]


def conll_tags(path):
    """The predicted tag (last column) of every token line, one list per sentence."""
    sentences = [[]]
    for line in path.read_text(encoding="utf-8").split("\n"):
        if line:
            sentences[-1].append(line.split("\t")[-1])
        elif sentences[-1]:
            sentences.append([])
    return [tags for tags in sentences if tags]


def raw_inputs(problem, split, data_dir):
    """The split's inputs as a user gives them: a str, an (a, b) tuple, or a list of words."""
    examples = readers.read_examples(problem, split, data_dir)
    if hasattr(examples[0], "tokens"):
        return [example.tokens for example in examples]
    return [example.text_a if example.text_b is None else (example.text_a, example.text_b) for example in examples]


# ------------------------------------------------------------------------------------------ the prediction files

def test_glue_predictions_equal_the_prediction_files(glue_run, tmp_path):
    out = dev_files(glue_run, tmp_path)
    predictor = Predictor.from_run(glue_run)
    assert predictor.problems == {"cola": "cls", "sts": "regression", "mrpc": "cls", "cola_mlm": "mask_lm"}
    data_dir = fixture_glue_dir()
    cola = predictor.predict("cola", raw_inputs(get_problem("cola"), "dev", data_dir))
    assert cola == file_predictions(out / "CoLA.tsv")
    mrpc = predictor.predict("MRPC", raw_inputs(get_problem("mrpc"), "dev", data_dir))  # GLUE's spelling too
    assert mrpc == file_predictions(out / "MRPC.tsv")
    sts = predictor.predict("sts", raw_inputs(get_problem("sts"), "dev", data_dir))
    # In the label's units, clipped to [0, 5], which the submission file writes with three decimals.
    assert all(isinstance(value, float) and 0.0 <= value <= 5.0 for value in sts)
    assert [f"{value:.3f}" for value in sts] == file_predictions(out / "STS-B.tsv")
    assert len(set(sts)) > 1  # real values, not one constant


def test_user_problem_types_equal_their_prediction_files(user_run, tmp_path):
    out = dev_files(user_run, tmp_path)
    predictor = Predictor.from_run(user_run, batch_size=2)  # batches of another size: the same values
    record = json.loads((user_run / "config.json").read_text())
    user = {name: problem_from_record(problem) for name, problem in record["problems"].items()}
    inputs = {name: raw_inputs(problem, "dev", fixture_glue_dir()) for name, problem in user.items()}
    emotion = predictor.predict("emotion", inputs["emotion"])
    assert [",".join(labels) for labels in emotion] == file_predictions(out / "emotion.tsv")
    assert all(set(labels) <= set(user["emotion"].labels) for labels in emotion)
    assert predictor.predict("senti", inputs["senti"]) == file_predictions(out / "senti.tsv")
    score = predictor.predict("score", inputs["score"])
    assert [f"{value:.6g}" for value in score] == file_predictions(out / "score.tsv")
    ner = predictor.predict("ner", inputs["ner"])
    assert ner == conll_tags(out / "ner.conll")
    assert [len(tags) for tags in ner] == [len(words) for words in inputs["ner"]]


def test_long_inputs_are_cut_as_training_cuts_them_and_every_word_gets_a_tag(user_run):
    predictor = Predictor.from_run(user_run)
    words = ["Ada", "Lovelace", "wrote", "the", "first", "program"] * 7  # 42 words: rows of at most 14 pieces
    features = predictor.features(predictor.problem("ner"), [words])
    assert len(features) > 1 and int(features.lengths.max()) <= SHORT  # one sentence, several rows
    tags = predictor.predict("ner", [words, words[:3]])
    assert [len(t) for t in tags] == [len(words), 3]
    assert set(tags[0]) <= set(predictor.loaded.problem("ner").labels)
    long_text = " ".join(words)  # a text of 42 words: cut to SHORT tokens, as training cuts it
    assert len(predictor.features(predictor.problem("senti"), [long_text]).input_ids) == SHORT
    assert predictor.predict("senti", [long_text]) == predictor.predict("senti", [" ".join(words[:SHORT])])


def test_last_checkpoint_predicts_with_the_last_model(glue_run):
    last = Predictor.from_run(glue_run, checkpoint="last")
    saved = torch.load(glue_run / multitask.LAST_CHECKPOINT, weights_only=True)["model"]
    for name, value in last.model.state_dict().items():
        assert torch.equal(value, saved[name]), name
    assert last.predict("cola", ["a sentence"]) in (["0"], ["1"])


@pytest.mark.slow
def test_word_inputs_cut_into_rows_on_people_daily(tmp_path):
    """pku_ner (seq_tag) and pku_entity_types (multi_cls on words) in one & group at length 32, so that many
    sentences are cut into several rows: a tag per character, and a sentence's labels from its first row, as its
    prediction file holds them."""
    shared = shared_glue_dir().parent
    require((shared / "pku199801" / "199801.txt").is_file(), f"needs People's Daily in {shared / 'pku199801'}")
    run = train(tmp_path, "pku", "pku_ner&pku_entity_types", shared, 32)
    out = dev_files(run, tmp_path / "out")
    predictor = Predictor.from_run(run)
    sentences = raw_inputs(get_problem("pku_ner"), "dev", shared)
    assert predictor.predict("pku_ner", sentences) == conll_tags(out / "pku_ner.conll")
    rows = file_predictions(out / "pku_entity_types.tsv")  # one line per sentence, cut or not
    features = predictor.features(predictor.problem("pku_entity_types"), sentences)
    assert len(rows) == len(sentences) < len(features)
    assert predictor.predict("pku_entity_types", sentences) == [[label for label in labels.split(",") if label]
                                                                for labels in rows]


# ------------------------------------------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("problem, inputs, message", [
    ("cola", [("a", "b")], r"^cola takes one text \(a str\) per input; input 0 is a tuple of 2$"),
    ("mrpc", ["a", "b"], r"^mrpc takes a sentence pair \(a tuple of two str\) per input; input 0 is a str$"),
    ("mrpc", [("a", "b"), ("a", "b", "c")], r"^mrpc takes a sentence pair .* input 1 is a tuple of 3$"),
    ("cola", "a sentence", r"^cola: inputs must be a list with one text \(a str\) per input, got a str$"),
    ("qnli", ["a"], r"^unknown problem 'qnli': this model predicts cola, sts, mrpc$"),
    ("no_such", ["a"], r"^unknown problem 'no_such': this model predicts cola, sts, mrpc$"),
    ("cola_mlm", ["a"], r"^cola_mlm is a mask_lm problem: it is scored on masked tokens .* predicts cola, sts, mrpc$"),
])
def test_bad_inputs_are_one_line_errors(glue_run, problem, inputs, message):
    predictor = Predictor.from_run(glue_run)
    with pytest.raises(ValueError, match=message) as info:
        predictor.predict(problem, inputs)
    assert "\n" not in str(info.value)


def test_bad_word_inputs_and_runs(user_run, tmp_path):
    predictor = Predictor.from_run(user_run)
    with pytest.raises(ValueError, match=r"^ner takes a list of words \(a non-empty list of str\) per input; "
                                         r"input 0 is a str$"):
        predictor.predict("ner", ["Ada Lovelace"])
    with pytest.raises(ValueError, match=r"input 1 is a list of 0$"):
        predictor.predict("ner", [["Ada"], []])
    assert predictor.predict("ner", []) == []
    with pytest.raises(ValueError, match=r"^checkpoint 'first': expected one of best, last$"):
        Predictor.from_run(user_run, checkpoint="first")
    with pytest.raises(ValueError, match=r"is not a training run's directory"):
        Predictor.from_run(tmp_path / "absent")
    with pytest.raises(ValueError, match=r"lacks config.json, vocab.txt, best_model.pth") as info:
        Predictor.from_run(tmp_path)
    assert "\n" not in str(info.value)
