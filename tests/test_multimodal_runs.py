"""Training and prediction runs of problems with images and feature vectors (the fixture's real Fashion-MNIST PNGs,
captions and vectors, with its X_mlm): bad input stops before anything is written; Ctrl-C and --resume, torchrun,
and run_test_multi_task.py --split dev reproduce the straight run (slow)."""
import json
import os
import shutil
import subprocess
import sys

import contextlib
import io

import pytest
import torch

import export_onnx
import inference
import multitask
import run_multi_task
import run_multi_task_gated
import run_test_multi_task
from conftest import FIXTURES, ROOT, fixture_glue_dir, minilm_dir, require
from helpers import interrupt_at_step, read_jsonl

MULTIMODAL = FIXTURES / "multimodal"
TASKS = "fashion_captions|fashion_captions_mlm"
SCRIPTS = {"embert": run_multi_task, "gated": run_multi_task_gated}


@pytest.fixture(scope="module")
def small_config(tmp_path_factory):
    """A 2-layer EmBERT over the real bert-base-uncased vocabulary, without dropout (torchrun's ranks draw other
    dropout masks than one process)."""
    path = tmp_path_factory.mktemp("config") / "small.json"
    path.write_text(json.dumps({"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2,
                                "num_attention_heads": 4, "intermediate_size": 37, "our_attn": True,
                                "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}))
    return path


def command(output_dir, config, cache_dir, problems_file=MULTIMODAL / "problems.json", *extra, tasks=TASKS):
    return ["--output_dir", output_dir, "--tasks", tasks, "--problems", problems_file, "--sample", "rr",
            "--do_train", "--do_eval", "--do_lower_case", "--data_dir", MULTIMODAL, "--vocab_file",
            minilm_dir() / "vocab.txt", "--bert_config_file", config, "--train_batch_size", 8, "--eval_batch_size", 8,
            "--learning_rate", 1e-3, "--num_train_epochs", 2, "--max_seq_length", 32, "--no_cuda", "--cache_dir",
            cache_dir, "--log_steps", 1, *extra]


def run(argv, method="embert"):
    script = SCRIPTS[method]
    multitask.main(multitask.parse_args(script.__doc__, [str(a) for a in argv]), script.METHOD)


def run_script(argv, **popen):
    return subprocess.Popen([sys.executable, "run_multi_task.py", *map(str, argv)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)


def bad_copy(tmp_path, split, line, change):
    """The fixture in tmp_path with one row of a split changed."""
    data = tmp_path / "data"
    shutil.copytree(MULTIMODAL, data)
    path = data / f"{split}.jsonl"
    records = [json.loads(text) for text in path.read_text().splitlines()]
    records[line - 1].update(change)
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return data


@pytest.mark.parametrize("split, change, message", [
    ("train", {"image": "images/gone.png"}, r"train\.jsonl line 6: image 'images/gone\.png' not found"),
    ("dev", {"features": [[0.5, 0.5]]}, r"dev\.jsonl line 6: features \[\[0\.5, 0\.5\]\] are vectors of width 2, "
                                        "expected 4"),
    ("dev", {"image": "train.jsonl"}, r"dev\.jsonl line 6: image .*train\.jsonl cannot be read"),
])
def test_bad_input_stops_the_run_before_anything_is_written(tmp_path, small_config, split, change, message):
    data = bad_copy(tmp_path, split, 6, change)
    out = tmp_path / "run"
    with pytest.raises(SystemExit, match=message) as error:
        run(command(out, small_config, tmp_path / "cache", data / "problems.json", "--steps_per_epoch", 2))
    assert str(error.value).startswith("error: ") and "\n" not in str(error.value)
    assert not out.exists()


def test_prediction_stops_on_a_bad_dev_row_before_writing(tmp_path, small_config):
    out = tmp_path / "run"
    run(command(out, small_config, tmp_path / "cache", MULTIMODAL / "problems.json", "--steps_per_epoch", 2))
    data = bad_copy(tmp_path, "dev", 3, {"caption": "", "image": None, "features": None})
    config = json.loads((out / "config.json").read_text())
    for split in ("train", "dev"):  # the run's own record of the problem, now reading the damaged copy
        config["problems"]["fashion_captions"]["splits"][split]["file"] = str(data / f"{split}.jsonl")
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit, match=r"dev\.jsonl line 3: no input: no text, no image and no features"):
        run_test_multi_task.main(run_test_multi_task.parse_args(
            ["--model_dir", str(out), "--output_dir", str(tmp_path / "dev"), "--split", "dev", "--no_cuda"]))
    assert not (tmp_path / "dev").exists()


def test_the_predictor_and_the_onnx_export_leave_image_problems_out_with_a_reason(tmp_path, small_config):
    """Their inputs are texts and word lists: a problem with images is refused by name, the run's text problem is
    served as before."""
    out = tmp_path / "run"
    argv = command(out, small_config, tmp_path / "cache", MULTIMODAL / "problems.json", "--steps_per_epoch", 2,
                   tasks="fashion_captions|rte")
    argv[argv.index("--data_dir") + 1] = fixture_glue_dir()  # RTE's rows; the user's problem has its own paths
    run(argv)
    predictor = inference.Predictor.from_run(out)
    with pytest.raises(ValueError, match="fashion_captions reads images or feature vectors, which the Predictor"):
        predictor.predict("fashion_captions", ["Bag"])
    assert predictor.predict("rte", [("A man sleeps.", "Nobody sleeps.")])[0] in {"entailment", "not_entailment"}
    require(not export_onnx.missing_packages(), "needs onnx, onnxscript and onnxruntime (requirements-dev.txt)")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        export_onnx.main(export_onnx.parse_args(["--model_dir", str(out), "--output_dir", str(tmp_path / "onnx")]))
    assert "fashion_captions left out: a cls problem, its inputs include images or feature vectors" in \
        printed.getvalue()
    assert sorted(path.name for path in (tmp_path / "onnx").glob("*.onnx")) == ["rte.onnx"]


@pytest.mark.slow
def test_ctrl_c_then_resume_gives_bit_identical_weights(tmp_path, small_config):
    steps = 40
    argv = lambda out: command(out, small_config, tmp_path / "cache", MULTIMODAL / "problems.json",  # noqa: E731
                               "--steps_per_epoch", steps)
    run(argv(tmp_path / "straight"))
    interrupted = tmp_path / "interrupted"
    output = interrupt_at_step(run_script(argv(interrupted)), interrupted / "train_log.jsonl", 7)
    stopped_at = torch.load(interrupted / "last_checkpoint.pth", weights_only=False)["global_step"]
    assert 7 <= stopped_at < 2 * steps and "continue with --resume" in output
    run([*argv(interrupted), "--resume"])
    straight = torch.load(tmp_path / "straight" / "last_checkpoint.pth", weights_only=False)
    resumed = torch.load(interrupted / "last_checkpoint.pth", weights_only=False)
    assert resumed["global_step"] == straight["global_step"] == 2 * steps
    assert any(".inputs.images.c1_p7." in key for key in straight["model"])
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert read_jsonl(interrupted / "train_log.jsonl") == read_jsonl(tmp_path / "straight" / "train_log.jsonl")
    assert [e["scores"] for e in read_jsonl(interrupted / "eval_results.jsonl")] == \
           [e["scores"] for e in read_jsonl(tmp_path / "straight" / "eval_results.jsonl")]


@pytest.mark.slow
def test_two_process_torchrun_matches_one_process(tmp_path, small_config):
    argv = lambda out: command(out, small_config, tmp_path / "cache", MULTIMODAL / "problems.json",  # noqa: E731
                               "--steps_per_epoch", 6, "--gradient_accumulation_steps", 2)
    run(argv(tmp_path / "single"))
    torchrun = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                               "--master_port=29522", "run_multi_task.py", *map(str, argv(tmp_path / "ddp"))],
                              cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                              timeout=300)
    assert torchrun.returncode == 0, torchrun.stderr[-3000:]
    single, ddp = (read_jsonl(tmp_path / name / "train_log.jsonl") for name in ("single", "ddp"))
    assert [r.get("task_counts") for r in single] == [r.get("task_counts") for r in ddp]
    assert {r["task"] for r in single if "loss" in r} == {"fashion_captions", "fashion_captions_mlm"}
    for a, b in zip(single, ddp):
        if "loss" in a:
            assert a["task"] == b["task"] and a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    weights = [torch.load(tmp_path / name / "best_model.pth", weights_only=True) for name in ("single", "ddp")]
    for key, value in weights[0].items():
        torch.testing.assert_close(weights[1][key], value, atol=1e-5, rtol=0, msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["embert", "gated"])
def test_dev_split_reproduces_the_logged_best_metrics(tmp_path, small_config, method):
    """The run directory alone predicts its dev sets: the classifier's, the tagger's and the masked LM's logged
    metrics exactly, and the tagger's .conll file holds the words with their gold and predicted tags."""
    out = tmp_path / "run"
    run(command(out, small_config, tmp_path / "cache", MULTIMODAL / "problems.json", "--steps_per_epoch", 9,
                tasks=f"{TASKS}|fashion_words"), method)
    run_test_multi_task.main(run_test_multi_task.parse_args(
        ["--model_dir", str(out), "--output_dir", str(tmp_path / "dev"), "--split", "dev", "--no_cuda"]))
    best = [record for record in read_jsonl(out / "eval_results.jsonl") if record["best"]][-1]
    results = json.loads((tmp_path / "dev" / run_test_multi_task.DEV_RESULTS).read_text())
    assert results["scores"] == best["scores"] and results["mean_score"] == best["mean_score"]
    lines = (tmp_path / "dev" / "fashion_captions.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 17
    assert {line.split("\t")[1] for line in lines[1:]} <= {"match", "mismatch"}
    sentences = (tmp_path / "dev" / "fashion_words.conll").read_text().split("\n\n")
    records = [json.loads(line) for line in (MULTIMODAL / "dev_words.jsonl").read_text().splitlines()]
    assert [[line.split("\t")[:2] for line in sentence.splitlines()] for sentence in sentences[:len(records)]] == \
        [[[word, tag] for word, tag in zip(record["words"], record["tags"])] for record in records]
    assert set(best["scores"]["fashion_words"]) == {"f1", "precision", "recall"}
