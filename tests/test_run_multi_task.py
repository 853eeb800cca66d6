"""run_multi_task.py end to end: the seed command on real GLUE data and MiniLM weights, Ctrl-C and --resume,
torchrun, and bad input. Runs call `multitask.main` in-process where they can (no interpreter start-up per run)."""
import importlib.util
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import cli
import multitask
import optimization
import run_files
import run_multi_task
from conftest import FIXTURES, ROOT, fixture_glue_dir, minilm_dir, require, shared_glue_dir
from helpers import (OUTPUT_FILES, SMALL_TASKS, interrupt_at_step, read_jsonl, read_scalars, run_training,
                     seed_command, write_problems)




def tiny_command(output_dir, config, cache_dir, *extra):
    return ["--output_dir", output_dir, "--tasks", "cola,rte,sts", "--sample", "anneal", "--do_train",
            "--do_lower_case", "--data_dir", fixture_glue_dir(), "--vocab_file", minilm_dir() / "vocab.txt",
            "--bert_config_file", config, "--train_batch_size", 8, "--learning_rate", 1e-3, "--num_train_epochs", 2,
            "--no_cuda", "--cache_dir", cache_dir, "--log_steps", 1, *extra]


@pytest.mark.slow
def test_seed_command_trains_evaluates_and_writes_every_file(tmp_path, minilm_embert_config):
    out = tmp_path / "embert"
    run_training(seed_command(out, shared_glue_dir(), minilm_embert_config, minilm_dir(), tmp_path / "cache"))
    for name in OUTPUT_FILES:
        assert (out / name).is_file(), name
    log = read_jsonl(out / "train_log.jsonl")
    epochs = [r for r in log if "task_counts" in r]
    assert [r["epoch"] for r in epochs] == [0, 1]
    assert all(sum(r["task_counts"].values()) == 20 for r in epochs)
    assert epochs[0]["alpha"] == 1.0 and epochs[1]["alpha"] == pytest.approx(0.2)
    losses = [r for r in log if "loss" in r]
    assert {r["task"] for r in losses} <= set(SMALL_TASKS.split(","))
    assert sum(r["steps"] for r in losses) == 40 and all(r["loss"] > 0 for r in losses)
    evals = read_jsonl(out / "eval_results.jsonl")
    assert [(e["epoch"], e["global_step"]) for e in evals] == [(0, 20), (1, 40)]
    assert set(evals[-1]["scores"]) == set(SMALL_TASKS.split(","))
    assert set(evals[-1]["scores"]["mrpc"]) == {"f1", "acc"} and set(evals[-1]["scores"]["sts"]) == {"pearson",
                                                                                                  "spearman"}
    best = max(evals, key=lambda e: e["glue_score"])
    assert best["best"] and best["glue_score"] == pytest.approx(
        sum(sum(m.values()) / len(m) for m in best["scores"].values()) / 5)
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "embert" and config["task_names"] == SMALL_TASKS.split(",") and config["our_attn"]
    args = json.loads((out / "args.json").read_text())
    assert args["tasks"] == SMALL_TASKS.split(",") and args["steps_per_epoch"] == 20 and args["total_steps"] == 40
    state = torch.load(out / "best_model.pth", weights_only=True)
    assert state["classifier.3.weight"].shape == (1, 384)  # STS-B: one regression output
    assert "dev, epoch 2 step 40" in (out / "train.log").read_text()  # epochs read by people count from 1


def test_output_directory_is_not_overwritten(tmp_path, tiny_run_config):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.txt").write_text("a previous run")
    with pytest.raises(SystemExit, match="is not empty: pass --resume .* or --overwrite_output_dir"):
        run_training(tiny_command(out, tiny_run_config, tmp_path / "cache", "--steps_per_epoch", 2))
    evaluate_only = [a for a in tiny_command(out, tiny_run_config, tmp_path / "cache", "--do_eval") if a != "--do_train"]
    with pytest.raises(SystemExit, match="is not empty"):  # evaluating into a run's directory would clobber its logs
        run_training(evaluate_only)
    assert [p.name for p in out.iterdir()] == ["results.txt"]


def test_train_without_eval_keeps_the_final_model(tmp_path, tiny_run_config):
    """The original crashed on --do_train without --do_eval."""
    out = tmp_path / "run"
    run_training(tiny_command(out, tiny_run_config, tmp_path / "cache", "--steps_per_epoch", 3))
    assert not (out / "eval_results.jsonl").exists()
    final = torch.load(out / "last_checkpoint.pth", weights_only=False)
    assert final["global_step"] == 6
    best = torch.load(out / "best_model.pth", weights_only=True)
    assert all(torch.equal(best[k], v) for k, v in final["model"].items())


def run_script(argv, env=None, **popen):
    return subprocess.Popen([sys.executable, "run_multi_task.py", *map(str, argv)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


# An & group of two problems on the same texts (one tsv, two label columns) and a GLUE task as a second group.
CHAINED = ["--tasks", "review_sentiment&review_stars|cola", "--problems",
           fixture_glue_dir().parent / "problems" / "reviews.json"]
# Masked LM on CoLA's texts and BERT pre-training on news documents beside CoLA: batches masked afresh every step.
MASKED = ["--tasks", "cola|cola_texts|news_pretrain", "--problems", fixture_glue_dir().parent / "problems" / "lm.json"]
# Per-token labels (CoNLL NER, two sentences of 5 and 7 words): one example per micro-batch and process, so each
# holds a different number of labelled tokens.
TAGGED = ["--tasks", "ner|cola", "--sample", "uniform", "--train_batch_size", 4, "--problems",
          fixture_glue_dir().parent / "problems" / "problems.json"]


@pytest.mark.slow
@pytest.mark.parametrize("tasks", [[], CHAINED, MASKED], ids=["tasks", "chained", "masked"])
def test_ctrl_c_then_resume_gives_bit_identical_weights(tmp_path, tiny_run_config, tasks):
    steps_per_epoch = 100
    command = lambda out: tiny_command(out, tiny_run_config, tmp_path / "cache", "--steps_per_epoch", steps_per_epoch,
                                       "--do_eval", "--eval_batch_size", 64, *tasks)
    run_training(command(tmp_path / "straight"))

    interrupted = tmp_path / "interrupted"
    output = interrupt_at_step(run_script(command(interrupted)), interrupted / "train_log.jsonl", 7)
    stopped_at = torch.load(interrupted / "last_checkpoint.pth", weights_only=False)["global_step"]
    assert 7 <= stopped_at < 2 * steps_per_epoch, "the run ended before the interrupt: give it more steps"
    assert "continue with --resume" in output

    run_training([*command(interrupted), "--resume"])
    straight = torch.load(tmp_path / "straight" / "last_checkpoint.pth", weights_only=False)
    resumed = torch.load(interrupted / "last_checkpoint.pth", weights_only=False)
    assert resumed["global_step"] == straight["global_step"] == 2 * steps_per_epoch
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert read_jsonl(interrupted / "train_log.jsonl") == read_jsonl(tmp_path / "straight" / "train_log.jsonl")
    assert [e["scores"] for e in read_jsonl(interrupted / "eval_results.jsonl")] == \
           [e["scores"] for e in read_jsonl(tmp_path / "straight" / "eval_results.jsonl")]


def test_resume_refuses_changed_settings(tmp_path, tiny_run_config):
    out = tmp_path / "run"
    run_training(tiny_command(out, tiny_run_config, tmp_path / "cache", "--steps_per_epoch", 2))
    with pytest.raises(SystemExit, match=r"changed: --learning_rate \(was 0.001, now 0.002\)"):
        run_training([*tiny_command(out, tiny_run_config, tmp_path / "cache", "--steps_per_epoch", 2), "--resume",
             "--learning_rate", 2e-3])


@pytest.mark.slow
@pytest.mark.parametrize("tasks", [[], CHAINED, MASKED, TAGGED], ids=["tasks", "chained", "masked", "tagged"])
def test_two_process_torchrun_matches_one_process(tmp_path, tasks):
    """DDP over gloo with the same global batch: same losses and final weights (dropout off: its masks differ)."""
    config = tmp_path / "no_dropout.json"
    config.write_text(json.dumps({"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2,
                                  "num_attention_heads": 4, "intermediate_size": 37, "our_attn": True,
                                  "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}))
    command = lambda out: tiny_command(out, config, tmp_path / "cache", "--steps_per_epoch", 6,
                                       "--gradient_accumulation_steps", 2, *tasks)
    run_training(command(tmp_path / "single"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                               "--master_port=29517", "run_multi_task.py", *map(str, command(tmp_path / "ddp"))],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert torchrun.returncode == 0, torchrun.stderr[-3000:]
    single, ddp = (read_jsonl(tmp_path / name / "train_log.jsonl") for name in ("single", "ddp"))
    assert [r.get("task_counts") for r in single] == [r.get("task_counts") for r in ddp]  # the same tasks drawn
    for a, b in zip(single, ddp):
        if "loss" in a:
            assert a["task"] == b["task"] and a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    weights = [torch.load(tmp_path / name / "best_model.pth", weights_only=True) for name in ("single", "ddp")]
    for key, value in weights[0].items():
        torch.testing.assert_close(weights[1][key], value, atol=1e-5, rtol=0, msg=key)
    assert json.loads((tmp_path / "ddp" / "args.json").read_text())["world_size"] == 2


# ------------------------------------------------------------------------------------------------------ bad input

def test_missing_task_files_are_all_listed_before_any_work(tmp_path, tiny_run_config):
    """--tasks all with MNLI, QQP and QNLI train absent: every missing file named at once."""
    with pytest.raises(SystemExit) as error:
        run_training(["--output_dir", tmp_path / "out", "--tasks", "all", "--do_train", "--do_eval", "--data_dir",
             shared_glue_dir(), "--vocab_file", minilm_dir() / "vocab.txt", "--bert_config_file", tiny_run_config])
    message = str(error.value)
    for name in ("MNLI/train.tsv", "MNLI/dev_matched.tsv", "MNLI/dev_mismatched.tsv", "QQP/train.tsv",
                 "QQP/dev.tsv", "QNLI/train.tsv"):
        assert name in message
    assert "QNLI/dev.tsv" not in message and "\n" not in message
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("flags, message", [
    (["--tasks", "cola,squad"], "--tasks 'cola,squad': unknown problem 'squad'; valid names: cola, mrpc"),
    (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps must be at least 1, got 0"),
    (["--train_batch_size", "6", "--gradient_accumulation_steps", "4"],
     "--train_batch_size 6 must be a multiple of --gradient_accumulation_steps 4"),
    (["--max_seq_length", "600"], "--max_seq_length 600 is more than the config's max_position_embeddings 512"),
])
def test_bad_flags_give_one_line_errors(tmp_path, tiny_run_config, flags, message, capsys):
    argv = [*tiny_command(tmp_path / "out", tiny_run_config, tmp_path / "cache", "--steps_per_epoch", 2), *flags]
    with pytest.raises(SystemExit) as error:
        run_training(argv)
    text = str(error.value) if error.value.code != 2 else capsys.readouterr().err  # argparse errors exit with 2
    assert message in text


def test_vocab_larger_than_the_config_is_refused(tmp_path):
    config = tmp_path / "small_vocab.json"
    config.write_text(json.dumps({"vocab_size": 1000, "hidden_size": 32, "num_hidden_layers": 1,
                                  "num_attention_heads": 4, "intermediate_size": 37}))
    with pytest.raises(SystemExit, match=r"has 30522 tokens but the config's vocab_size is 1000"):
        run_training(tiny_command(tmp_path / "out", config, tmp_path / "cache", "--steps_per_epoch", 2))


def test_eval_only_from_the_best_model_reproduces_its_logged_scores(tmp_path, tiny_run_config):
    trained = tmp_path / "trained"
    run_training(tiny_command(trained, tiny_run_config, tmp_path / "cache", "--steps_per_epoch", 3, "--do_eval",
                     "--eval_batch_size", 64))
    best = max(read_jsonl(trained / "eval_results.jsonl"), key=lambda e: e["glue_score"])
    evaluated = tmp_path / "evaluated"
    argv = [a for a in tiny_command(evaluated, tiny_run_config, tmp_path / "cache", "--do_eval", "--eval_batch_size", 64,
                                    "--init_checkpoint", trained / "best_model.pth") if a != "--do_train"]
    run_training(argv)
    [result] = read_jsonl(evaluated / "eval_results.jsonl")
    assert result["scores"] == best["scores"] and result["epoch"] is None


def test_eval_only_refuses_a_checkpoint_without_trained_heads(tmp_path, tiny_run_config):
    bert_only = tmp_path / "bert.pth"
    model = run_multi_task.METHOD.modeling.BertForMultiTask(
        run_multi_task.METHOD.modeling.BertConfig.from_json_file(tiny_run_config), [2])
    torch.save({k: v for k, v in model.state_dict().items() if "task_emb" not in k and "classifier" not in k},
               bert_only)
    argv = [a for a in tiny_command(tmp_path / "out", tiny_run_config, tmp_path / "cache", "--do_eval",
                                    "--init_checkpoint", bert_only) if a != "--do_train"]
    with pytest.raises(SystemExit,
                       match=r"--init_checkpoint: checkpoint .*bert.pth lacks 12 parameter\(s\): .*query_task_emb"):
        run_training(argv)


# ---------------------------------------------------------------------------------------------------- nothing lost

def files_and_bytes(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def copy_run(run_dir, to):
    """A copy of a run directory's files, to damage without touching the module's shared run."""
    shutil.copytree(run_dir, to)
    return to


def one_line_error(argv):
    with pytest.raises(SystemExit) as error:
        run_training(argv)
    message = str(error.value)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_run_config):
    """A short finished run with evaluation: its files must survive every failed attempt below."""
    base = tmp_path_factory.mktemp("finished")
    out = base / "run"
    run_training(tiny_command(out, tiny_run_config, base / "cache", "--steps_per_epoch", 2, "--do_eval", "--eval_batch_size", 64))
    return out, base / "cache"


def test_failed_overwrite_keeps_the_old_run_byte_for_byte(finished_run, tiny_run_config, tmp_path):
    out, cache = finished_run
    before = files_and_bytes(out)
    bad_config = tmp_path / "bad.json"
    bad_config.write_text('{"vocab_size": 30522, "hidden_size": 32')
    message = one_line_error([*tiny_command(out, bad_config, cache, "--steps_per_epoch", 2),
                              "--overwrite_output_dir"])
    assert "bad.json is not valid JSON" in message
    assert files_and_bytes(out) == before


# ---------------------------------------------------------------------------------------------------- nothing lost

FLOAT_FLAGS = ("--learning_rate", "--num_train_epochs", "--warmup_proportion", "--weight_decay")


@pytest.mark.parametrize("flag, value, message", [
    *((flag, value, f"argument {flag}: expected a finite number, got '{value}'") for flag in FLOAT_FLAGS
      for value in ("nan", "inf", "-inf")),
    ("--learning_rate", "-5e-5", "--learning_rate must be positive, got -5e-05"),
])
def test_a_refused_flag_value_leaves_the_old_run_byte_for_byte(finished_run, tiny_run_config, tmp_path, flag, value,
                                                               message, capsys):
    out = copy_run(finished_run[0], tmp_path / "run")
    before = files_and_bytes(out)
    with pytest.raises(SystemExit) as error:
        run_training([*tiny_command(out, tiny_run_config, finished_run[1], "--steps_per_epoch", 2), "--overwrite_output_dir",
             f"{flag}={value}"])
    assert error.value.code == 2 and message in capsys.readouterr().err
    assert files_and_bytes(out) == before


def test_the_optimizers_refusal_comes_before_any_file_is_touched(finished_run, tiny_run_config, tmp_path, monkeypatch):
    """What torch's optimizer or schedule refuses (here an lr torch rejects) stops the run before the old files go."""
    out = copy_run(finished_run[0], tmp_path / "run")
    before = files_and_bytes(out)
    real = optimization.build_optimizer
    monkeypatch.setattr(optimization, "build_optimizer",
                        lambda model, name, lr, *args, **kwargs: real(model, name, -lr, *args, **kwargs))
    message = one_line_error([*tiny_command(out, tiny_run_config, finished_run[1], "--steps_per_epoch", 2),
                              "--overwrite_output_dir"])
    assert "the optimizer refused its settings: Invalid learning rate" in message
    assert files_and_bytes(out) == before


@pytest.mark.parametrize("where", ["a file", "under a file", "read-only"])
def test_an_output_dir_that_cannot_be_written_is_refused_before_any_work(tmp_path, tiny_run_config, read_only_folder,
                                                                          where):
    file = tmp_path / "notes.txt"
    file.write_text("mine\n")
    out = {"a file": file, "under a file": file / "run", "read-only": read_only_folder / "run"}[where]
    message = one_line_error(tiny_command(out, tiny_run_config, tmp_path / "cache"))
    assert f"--output_dir {out}" in message
    assert file.read_text() == "mine\n" and not list(read_only_folder.iterdir()) and not (tmp_path / "cache").exists()


# Half a second into the script, torch is still being imported (it takes seconds).
STARTUP_INTERRUPT_SECONDS = 0.5


def test_ctrl_c_while_the_script_starts_is_one_line_and_130(tmp_path, tiny_run_config):
    """SIGINT while torch is still being imported: no traceback, the shell's 130, nothing written."""
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, ROOT / "run_multi_task.py",
                                *map(str, tiny_command(out, tiny_run_config, tmp_path / "cache"))],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               # a shell's background job ignores SIGINT, and a child would inherit that
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(STARTUP_INTERRUPT_SECONDS)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("interrupted (Ctrl-C)") and not out.exists()


def test_a_second_ctrl_c_during_the_checkpoint_write_finishes_it_then_exits_130(tmp_path, tiny_run_config, monkeypatch):
    """Ctrl-C twice while last_checkpoint.pth is being written: the first asks for a stop, the second would interrupt
    at once, but the write completes first; then the script exits 130 and the checkpoint loads."""
    real_save = torch.save
    sent = []

    def save_interrupted_twice(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "optimizer" in obj and not sent:  # the first checkpoint write
            for _ in range(2):
                os.kill(os.getpid(), signal.SIGINT)
                sent.append(signal.SIGINT)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(run_files.torch, "save", save_interrupted_twice)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as error:
        with cli.exit_on_interrupt(cli.RESUME_HINT):
            run_training(tiny_command(out, tiny_run_config, tmp_path / "cache", "--steps_per_epoch", 2))
    assert error.value.code == 130 and len(sent) == 2
    state = torch.load(out / "last_checkpoint.pth", weights_only=False)
    assert state["global_step"] == 2 and not list(out.glob(".*.tmp"))


def test_a_nan_loss_names_the_last_checkpoint_only_when_one_was_written(tmp_path, tiny_run_config, monkeypatch):
    real_step = multitask.training_step
    steps = []

    def nan_from(first_bad_step):
        def step(*args, **kwargs):
            losses = real_step(*args, **kwargs)
            steps.append(1)
            return losses * math.nan if len(steps) >= first_bad_step else losses
        return step

    monkeypatch.setattr(multitask, "training_step", nan_from(1))
    message = one_line_error(tiny_command(tmp_path / "a", tiny_run_config, tmp_path / "cache", "--steps_per_epoch", 2))
    assert "no checkpoint had been written yet" in message and "last_checkpoint.pth" not in message
    steps.clear()
    monkeypatch.setattr(multitask, "training_step", nan_from(3))  # the second epoch, after the first checkpoint
    message = one_line_error(tiny_command(tmp_path / "b", tiny_run_config, tmp_path / "cache", "--steps_per_epoch", 2))
    assert f"the last good checkpoint, {tmp_path / 'b' / 'last_checkpoint.pth'}, is kept" in message


def test_an_and_group_of_different_inputs_says_which_has_how_many(tmp_path, tiny_run_config):
    argv = tiny_command(tmp_path / "out", tiny_run_config, tmp_path / "cache", "--max_train_samples", 4)
    argv[argv.index("--tasks") + 1] = "rte&mrpc"
    message = one_line_error(argv)
    assert "rte & mrpc must have the same inputs, but their training examples differ from example 0 on" in message
    problems = write_problems(tmp_path, {"few": {"type": "cls", "format": "tsv", "train": "few/train.tsv",
                                                 "text": ["sentence"], "label": "label"}},
                              {"few/train.tsv": "sentence\tlabel\nshort\t1\nlonger text\t0\n"})
    argv = tiny_command(tmp_path / "out", tiny_run_config, tmp_path / "cache", "--problems", problems)
    argv[argv.index("--tasks") + 1] = "sst&few"
    assert "sst has 256 training examples and few 2" in one_line_error(argv)
    assert not (tmp_path / "out").exists()


def test_do_eval_with_problems_without_a_dev_set(tmp_path, tiny_run_config, capsys):
    """None with a dev set: refused at the start; some: the others are evaluated, and the start says which not."""
    senti = {"type": "cls", "format": "jsonl", "train": str(FIXTURES / "problems" / "senti" / "train.jsonl"),
             "text": ["sentence"], "label": "label", "labels": ["neg", "pos"]}
    problems = write_problems(tmp_path, {"senti": senti})
    argv = [*tiny_command(tmp_path / "out", tiny_run_config, tmp_path / "cache", "--steps_per_epoch", 2, "--problems",
                          problems), "--do_eval"]
    argv[argv.index("--tasks") + 1] = "senti"
    assert "--do_eval: no problem of --tasks has a dev set (senti" in one_line_error(argv)
    assert not (tmp_path / "out").exists()
    argv[argv.index("--tasks") + 1] = "senti,rte"
    run_training(argv)
    assert "senti has no dev set and is not evaluated; the dev score is the mean of rte" in capsys.readouterr().err
    assert [list(r["scores"]) for r in read_jsonl(tmp_path / "out" / "eval_results.jsonl")] == [["rte"], ["rte"]]


def test_failed_start_leaves_no_output_directory_then_the_corrected_command_runs(tmp_path, tiny_run_config):
    out = tmp_path / "fresh"
    bad_data = tmp_path / "glue"
    (bad_data / "RTE").mkdir(parents=True)
    for task in ("CoLA", "STS-B"):
        (bad_data / task).symlink_to(fixture_glue_dir() / task)
    (bad_data / "RTE" / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\tonly two fields\n")
    argv = [*tiny_command(out, tiny_run_config, tmp_path / "cache", "--steps_per_epoch", 2)]
    argv[argv.index("--data_dir") + 1] = bad_data
    assert "RTE/train.tsv" in one_line_error(argv)
    assert not out.exists()
    run_training(tiny_command(out, tiny_run_config, tmp_path / "cache", "--steps_per_epoch", 2))
    assert (out / "last_checkpoint.pth").is_file()


@pytest.mark.parametrize("name, content, message", [
    ("notes.txt", b"these are my notes\n", "notes.txt is not a PyTorch or safetensors file"),
    ("model.safetensors", b"not safetensors at all\n", "model.safetensors is not a PyTorch or safetensors file"),
])
def test_init_checkpoint_that_is_no_checkpoint(tmp_path, tiny_run_config, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    out = tmp_path / "out"
    error = one_line_error([*tiny_command(out, tiny_run_config, tmp_path / "cache"), "--init_checkpoint", path])
    assert error.startswith("error: --init_checkpoint: checkpoint") and message in error
    assert not out.exists()


def test_truncated_init_checkpoint(finished_run, tiny_run_config, tmp_path):
    out, cache = finished_run
    cut = tmp_path / "cut.pth"
    whole = (out / "best_model.pth").read_bytes()
    cut.write_bytes(whole[:len(whole) // 2])
    error = one_line_error([*tiny_command(tmp_path / "out", tiny_run_config, cache), "--init_checkpoint", cut])
    assert "cut.pth is truncated" in error


def test_resume_from_a_corrupt_checkpoint_is_one_line_and_changes_nothing(finished_run, tiny_run_config, tmp_path):
    out, cache = finished_run
    copy = copy_run(out, tmp_path / "copy")
    checkpoint = copy / run_files.LAST_CHECKPOINT
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    before = files_and_bytes(copy)
    error = one_line_error([*tiny_command(copy, tiny_run_config, cache, "--steps_per_epoch", 2, "--do_eval",
                                          "--eval_batch_size", 64), "--resume"])
    assert f"--resume: checkpoint {checkpoint} is truncated" in error
    assert files_and_bytes(copy) == before


def test_disk_full_during_a_checkpoint_write_keeps_the_previous_one(finished_run, tmp_path, monkeypatch):
    out, _ = finished_run
    checkpoint = tmp_path / run_files.LAST_CHECKPOINT
    checkpoint.write_bytes((out / run_files.LAST_CHECKPOINT).read_bytes())
    state = torch.load(checkpoint, weights_only=False)

    def no_space(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(28, "No space left on device")  # errno 28: ENOSPC

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(SystemExit) as error:
        run_files.save_torch(state, checkpoint)
    message = str(error.value)
    assert f"no space left on the device writing {checkpoint} (about" in message and "MB needed" in message
    assert f"the previous {run_files.LAST_CHECKPOINT} is kept" in message and "\n" not in message
    monkeypatch.undo()
    assert torch.load(checkpoint, weights_only=False)["global_step"] == state["global_step"]
    assert [p.name for p in tmp_path.iterdir()] == [run_files.LAST_CHECKPOINT]  # no temporary file left


def test_a_killed_write_leaves_no_temporary_file_after_the_next_start(finished_run, tiny_run_config, tmp_path):
    out, cache = finished_run
    copy = copy_run(out, tmp_path / "copy")
    stale = copy / f".{run_files.LAST_CHECKPOINT}.tmp"
    stale.write_bytes(b"half a checkpoint")
    run_training([*tiny_command(copy, tiny_run_config, cache, "--steps_per_epoch", 2, "--do_eval", "--eval_batch_size", 64),
         "--resume"])
    assert not stale.exists()


def test_config_without_our_attn_warns_and_records_the_shared_encoder(tmp_path, caplog):
    config = tmp_path / "hf_config.json"
    config.write_text(json.dumps({"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 1,
                                  "num_attention_heads": 4, "intermediate_size": 37}))
    out = tmp_path / "out"
    run_training(tiny_command(out, config, tmp_path / "cache", "--steps_per_epoch", 1))
    log = (out / "train.log").read_text()
    assert log.count("does not set our_attn: training the shared encoder") == 1
    assert json.loads((out / "args.json").read_text())["model_trained"] == "shared encoder"
    assert json.loads((out / "config.json").read_text())["our_attn"] is False


def test_paths_are_stored_absolute(tmp_path, tiny_run_config, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "out"
    relative_data = os.path.relpath(fixture_glue_dir(), ROOT)
    argv = tiny_command(out, tiny_run_config, tmp_path / "cache", "--steps_per_epoch", 1)
    argv[argv.index("--data_dir") + 1] = relative_data
    run_training(argv)
    args = json.loads((out / "args.json").read_text())
    assert args["data_dir"] == str(fixture_glue_dir()) and os.path.isabs(args["vocab_file"])


@pytest.mark.slow
def test_sigterm_saves_and_exits_143(tmp_path, tiny_run_config):
    out = tmp_path / "run"
    argv = tiny_command(out, tiny_run_config, tmp_path / "cache", "--steps_per_epoch", 500)
    output = interrupt_at_step(run_script(argv), out / "train_log.jsonl", 3, signum=signal.SIGTERM)
    assert "continue with --resume" in output
    assert torch.load(out / "last_checkpoint.pth", weights_only=False)["global_step"] >= 3


def test_eval_only_says_what_it_evaluates(finished_run, tiny_run_config, tmp_path):
    out, cache = finished_run
    evaluated = tmp_path / "evaluated"
    argv = [a for a in tiny_command(evaluated, tiny_run_config, cache, "--do_eval", "--eval_batch_size", 64,
                                    "--init_checkpoint", out / "best_model.pth") if a != "--do_train"]
    run_training(argv)
    log = (evaluated / "train.log").read_text()
    assert f"evaluating {out / 'best_model.pth'} on the dev sets of cola,rte,sts" in log
    assert "epoch" not in log and "steps" not in log


# ---------------------------------------------------------------------------------------------------- run_glue flags

def flag_run(tmp_path, tiny_run_config, name, *flags):
    out = tmp_path / name
    run_training(tiny_command(out, tiny_run_config, tmp_path / "cache", "--steps_per_epoch", 4, "--do_eval", "--eval_batch_size",
                     64, *flags))
    return out


def test_max_steps_overrides_epochs(tmp_path, tiny_run_config):
    out = flag_run(tmp_path, tiny_run_config, "run", "--max_steps", 6)
    args = json.loads((out / "args.json").read_text())
    assert args["total_steps"] == 6 and args["num_epochs"] == 2 and args["max_steps"] == 6
    assert [(e["epoch"], e["global_step"]) for e in read_jsonl(out / "eval_results.jsonl")] == [(0, 4), (1, 6)]


def test_warmup_steps_and_weight_decay_reach_the_optimizer(tmp_path, tiny_run_config):
    out = flag_run(tmp_path, tiny_run_config, "run", "--warmup_steps", 4, "--weight_decay", 0.5, "--log_steps", 1)
    lrs = [r["lr"] for r in read_jsonl(out / "train_log.jsonl") if "lr" in r]
    assert lrs[:4] == pytest.approx([1e-3 * s / 4 for s in (1, 2, 3, 4)])  # linear warm-up over exactly 4 steps
    state = torch.load(out / "last_checkpoint.pth", weights_only=False)
    assert [g["weight_decay"] for g in state["optimizer"]["param_groups"]] == [0.5, 0.0]


def test_eval_steps_evaluates_between_epochs(tmp_path, tiny_run_config):
    out = flag_run(tmp_path, tiny_run_config, "run", "--eval_steps", 3)
    assert [e["global_step"] for e in read_jsonl(out / "eval_results.jsonl")] == [3, 4, 6, 8]


def test_max_samples_limit_the_data(tmp_path, tiny_run_config, caplog):
    out = flag_run(tmp_path, tiny_run_config, "run", "--max_train_samples", 10, "--max_eval_samples", 7)
    log = (out / "train.log").read_text()
    assert "cola: 10 training examples" in log and "rte: 10 training examples" in log
    # 7 dev examples: an accuracy is a multiple of 1/7
    rte = read_jsonl(out / "eval_results.jsonl")[-1]["scores"]["rte"]["acc"]
    assert round(rte * 7 / 100, 6) == round(rte * 7 / 100)


def test_metric_for_best_model_picks_the_checkpoint(tmp_path, tiny_run_config):
    out = flag_run(tmp_path, tiny_run_config, "run", "--metric_for_best_model", "sts/pearson", "--num_train_epochs", 3)
    evals = read_jsonl(out / "eval_results.jsonl")
    pearson = [e["scores"]["sts"]["pearson"] for e in evals]
    best = [e["best"] for e in evals]
    assert best == [p > max(pearson[:i], default=-math.inf) for i, p in enumerate(pearson)]
    error = one_line_error(tiny_command(tmp_path / "x", tiny_run_config, tmp_path / "cache", "--metric_for_best_model",
                                        "mrpc/f1"))  # not one of the run's tasks
    assert "--metric_for_best_model 'mrpc/f1' is not one of: mean, cola, rte, sts, cola/mcc" in error
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("flag, first, second", [
    ("--max_steps", 5, 6), ("--warmup_steps", 1, 2), ("--weight_decay", 0.1, 0.2), ("--eval_steps", 2, 3),
    ("--max_train_samples", 20, 30), ("--max_eval_samples", 20, 30), ("--metric_for_best_model", "mean", "rte"),
])
def test_resume_refuses_a_changed_flag(tmp_path, tiny_run_config, flag, first, second):
    out = tmp_path / "run"
    command = lambda value: [*tiny_command(out, tiny_run_config, tmp_path / "cache", "--steps_per_epoch", 2, "--do_eval",
                                           "--eval_batch_size", 64), flag, value]
    run_training(command(first))
    error = one_line_error([*command(second), "--resume"])
    assert f"changed: {flag} (was {first!r}, now {second!r})" in error


# ---------------------------------------------------------------------------------------------------- the console

class Terminal(io.StringIO):
    """A stderr that says it is a terminal, as tqdm asks before drawing a bar."""

    def isatty(self):
        return True


def test_each_epoch_bar_reaches_its_total_and_shows_the_losses(tmp_path, tiny_run_config, monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    run_training(tiny_command(tmp_path / "run", tiny_run_config, tmp_path / "cache", "--steps_per_epoch", 4, "--log_steps", 2))
    err = terminal.getvalue()
    for epoch in (1, 2):
        assert re.search(rf"epoch {epoch}/2: 100%\|[^|]*\| 4/4 \[", err), err[-2000:]
    assert re.search(r"4/4 \[[^\]]*, (cola|rte|sts) \d+\.\d{3}.* lr \d\.\d\de[-+]\d\d\]", err)


def test_off_a_terminal_each_log_flush_is_a_plain_line(tmp_path, tiny_run_config, capsys):
    """stderr a file or a pipe (capsys's is neither a terminal): no bar redrawn with carriage returns, a line per
    --log_steps instead; train.log keeps only the log records, as on a terminal."""
    run_training(tiny_command(tmp_path / "run", tiny_run_config, tmp_path / "cache", "--steps_per_epoch", 4, "--log_steps", 2))
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = re.findall(r"^\d\d:\d\d:\d\d epoch (\d)/2 step (\d)/8: (?:(?:cola|rte|sts) \d+\.\d{3} )+lr \d\.\d\de[-+]\d\d$",
                       err, flags=re.MULTILINE)
    assert lines == [("1", "2"), ("1", "4"), ("2", "6"), ("2", "8")], err
    assert " step 2/8: " not in (tmp_path / "run" / "train.log").read_text()


def test_report_to_tensorboard_writes_the_curves(tmp_path, tiny_run_config):
    require(importlib.util.find_spec("tensorboard") is not None, "needs tensorboard: pip install tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = tmp_path / "run"
    run_training(tiny_command(out, tiny_run_config, tmp_path / "cache", "--steps_per_epoch", 3, "--do_eval", "--eval_batch_size",
                     64, "--report_to", "tensorboard"))
    events = EventAccumulator(str(out / run_files.REPORT_DIR))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/lr", "train/alpha", "dev/score", "dev/cola/mcc", "dev/sts/pearson"} <= tags
    assert {t for t in tags if t.startswith("train/loss/")} <= {"train/loss/cola", "train/loss/rte", "train/loss/sts"}
    assert [e.step for e in events.Scalars("dev/score")] == [3, 6]
    assert [e.step for e in events.Scalars("train/lr")] == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in events.Scalars("train/alpha")] == [0, 3]


@pytest.mark.slow
def test_report_to_tensorboard_resumed_curves_equal_straight(tmp_path, tiny_run_config):
    """Interrupted at step 7 and resumed: the event files hold each (tag, step) once, with the uninterrupted run's
    values (a CPU resume is bit-identical)."""
    command = lambda out: tiny_command(out, tiny_run_config, tmp_path / "cache", "--steps_per_epoch", 100, "--do_eval",
                                       "--eval_batch_size", 64, "--report_to", "tensorboard")
    run_training(command(tmp_path / "straight"))
    interrupted = tmp_path / "interrupted"
    interrupt_at_step(run_script(command(interrupted)), interrupted / "train_log.jsonl", 7)
    run_training([*command(interrupted), "--resume"])
    straight, resumed = (read_scalars(d / run_files.REPORT_DIR) for d in (tmp_path / "straight", interrupted))
    assert {"train/loss/cola", "train/lr", "train/alpha", "train/share/cola", "dev/cola/mcc", "dev/score"} <= set(
        straight)
    assert [step for step, _ in straight["dev/score"]] == [100, 200]
    assert resumed == straight


def test_resuming_a_finished_fractional_run_evaluates_nothing_again(tmp_path, tiny_run_config):
    """--num_train_epochs 1.5 ends mid-epoch; --resume on the finished run used to evaluate its last epoch again."""
    out = tmp_path / "run"
    command = tiny_command(out, tiny_run_config, tmp_path / "cache", "--steps_per_epoch", 4, "--num_train_epochs", 1.5,
                           "--do_eval", "--eval_batch_size", 64)
    run_training(command)
    before = files_and_bytes(out)
    assert [e["global_step"] for e in read_jsonl(out / "eval_results.jsonl")] == [4, 6]
    run_training([*command, "--resume"])
    assert (out / "eval_results.jsonl").read_bytes() == before["eval_results.jsonl"]
    assert (out / "last_checkpoint.pth").read_bytes() == before["last_checkpoint.pth"]
    assert "the run already finished at step 6" in (out / "train.log").read_text()


def test_loss_weight_scales_a_problem_alone_in_its_group(tmp_path, tiny_run_config):
    """An auxiliary masked-LM group weighted 0.5 trains differently from one weighted 1 (its gradient is halved against
    CoLA's in AdamW's shared moments); the logged loss is the unweighted one."""
    weights = {}
    for weight in (1.0, 0.5):
        (tmp_path / str(weight)).mkdir()
        problems_file = write_problems(tmp_path / str(weight), {"texts": {"type": "mask_lm", "inputs_of": "cola",
                                                                          "loss_weight": weight}})
        out = tmp_path / f"run{weight}"
        run_training(tiny_command(out, tiny_run_config, tmp_path / "cache", "--steps_per_epoch", 4, "--num_train_epochs", 1,
                         "--tasks", "texts|cola", "--sample", "rr", "--problems", problems_file))
        weights[weight] = torch.load(out / "best_model.pth", weights_only=True)
        first_loss = next(r["loss"] for r in read_jsonl(out / "train_log.jsonl") if r.get("task") == "texts")
        assert first_loss == pytest.approx(math.log(30522), rel=0.05)  # a fresh MLM head: ~ln(vocabulary)
    embeddings = "bert.embeddings.word_embeddings.weight"
    assert not torch.equal(weights[1.0][embeddings], weights[0.5][embeddings])
