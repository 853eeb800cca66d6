"""resume.py: what --resume does with a run directory, decided before any data is read. A directory holding a run's
files but no checkpoint, or another run's, is refused and left byte for byte as it was; an empty or absent one, or one
holding only what the same command wrote before its first checkpoint, starts afresh; a changed method or problem
record is named before any checkpoint is loaded."""
import os
import shutil
import signal

import pytest

import multitask
import reporting
import run_multi_task
import run_multi_task_gated
from conftest import FIXTURES, fixture_glue_dir, minilm_dir
from helpers import run_training, write_problems




def command(output_dir, config, cache_dir, *extra):
    return ["--output_dir", output_dir, "--tasks", "cola,rte,sts", "--do_train", "--do_eval", "--do_lower_case",
            "--data_dir", fixture_glue_dir(), "--vocab_file", minilm_dir() / "vocab.txt", "--bert_config_file", config,
            "--train_batch_size", 8, "--learning_rate", 1e-3, "--num_train_epochs", 1, "--steps_per_epoch", 2,
            "--eval_batch_size", 64, "--no_cuda", "--cache_dir", cache_dir, *extra]


def files_and_bytes(directory):
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def one_line_error(argv, method=run_multi_task.METHOD):
    with pytest.raises(SystemExit) as error:
        run_training(argv, method)
    message = str(error.value)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_run_config):
    base = tmp_path_factory.mktemp("finished")
    run_training(command(base / "run", tiny_run_config, base / "cache"))
    return base / "run", base / "cache"


@pytest.mark.parametrize("tasks", ["cola,rte,sts", "cola,sts"])
def test_a_run_without_its_checkpoint_is_refused_and_kept(finished_run, tiny_run_config, tmp_path, tasks):
    """rm last_checkpoint.pth, then --resume (with the run's --tasks, or others): the finished run's best model, logs
    and args must not become another run's."""
    out = tmp_path / "run"
    shutil.copytree(finished_run[0], out)
    (out / "last_checkpoint.pth").unlink()
    before = files_and_bytes(out)
    argv = command(out, tiny_run_config, finished_run[1], "--resume")
    argv[argv.index("--tasks") + 1] = tasks
    message = one_line_error(argv)
    assert (f"--resume: {out} holds args.json, best_model.pth, config.json, eval_results.jsonl, train.log, "
            "train_log.jsonl, vocab.txt but no last_checkpoint.pth") in message
    assert "put the run's last_checkpoint.pth back" in message and "--overwrite_output_dir" in message
    assert files_and_bytes(out) == before


def test_another_runs_log_without_a_checkpoint_is_refused_and_kept(finished_run, tiny_run_config, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(finished_run[0] / "train_log.jsonl", out)
    before = files_and_bytes(out)
    assert "holds train_log.jsonl but no last_checkpoint.pth" in one_line_error(
        command(out, tiny_run_config, finished_run[1], "--resume"))
    assert files_and_bytes(out) == before


def test_resume_on_an_empty_or_absent_folder_starts_afresh(finished_run, tiny_run_config, tmp_path):
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "empty", tmp_path / "absent"):
        run_training(command(out, tiny_run_config, finished_run[1], "--resume"))
        assert (out / "last_checkpoint.pth").is_file() and (out / "best_model.pth").is_file()


def test_a_run_stopped_before_its_first_checkpoint_resumes_afresh(finished_run, tiny_run_config, tmp_path, monkeypatch):
    """Ctrl-C after the run wrote args.json, config.json, vocab.txt and train.log but before any checkpoint: the same
    command with --resume (the README's until loop) starts afresh; another command is refused."""
    out = tmp_path / "run"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(reporting, "open_reporter", interrupted)  # the last step before the training loop
        with pytest.raises(KeyboardInterrupt):
            run_training(command(out, tiny_run_config, finished_run[1]))
    assert sorted(p.name for p in out.iterdir()) == ["args.json", "config.json", "train.log", "vocab.txt"]
    before = files_and_bytes(out)
    assert "but no last_checkpoint.pth" in one_line_error(command(out, tiny_run_config, finished_run[1], "--resume",
                                                                  "--seed", 7))
    assert files_and_bytes(out) == before
    run_training(command(out, tiny_run_config, finished_run[1], "--resume"))
    assert (out / "last_checkpoint.pth").is_file()
    assert "starts afresh" in (out / "train.log").read_text()


def test_resume_with_another_methods_script_names_the_script(finished_run, tiny_run_config, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run[0], out)
    before = files_and_bytes(out)
    message = one_line_error(command(out, tiny_run_config, finished_run[1], "--resume"), run_multi_task_gated.METHOD)
    assert "the run was trained by run_multi_task.py (embert), this is run_multi_task_gated.py (gated)" in message
    assert files_and_bytes(out) == before


def test_resume_after_a_problems_labels_changed_names_them(tiny_run_config, tmp_path):
    senti = {"type": "cls", "format": "jsonl", "train": str(FIXTURES / "problems" / "senti" / "train.jsonl"),
             "dev": str(FIXTURES / "problems" / "senti" / "dev.jsonl"), "text": ["sentence"], "label": "label",
             "labels": ["neg", "pos"]}
    problems = write_problems(tmp_path, {"senti": senti})
    out = tmp_path / "run"
    argv = command(out, tiny_run_config, tmp_path / "cache", "--problems", problems)
    argv[argv.index("--tasks") + 1] = "senti,cola"
    run_training(argv)
    before = files_and_bytes(out)
    write_problems(tmp_path, {"senti": {**senti, "labels": ["neg", "pos", "mixed"]}})
    message = one_line_error([*argv, "--resume"])
    assert "senti's labels (were ['neg', 'pos'], now ['neg', 'pos', 'mixed'])" in message
    assert files_and_bytes(out) == before


def test_a_resumed_run_does_not_say_its_task_parameters_start_fresh(finished_run, tiny_run_config, tmp_path,
                                                                    monkeypatch):
    """Stopped after its first step (Ctrl-C, in-process), then --resume: every weight comes from the checkpoint, so
    the resumed run logs where it resumed from, not the fresh-start count of its first start."""
    out = tmp_path / "run"
    argv = command(out, tiny_run_config, finished_run[1], "--init_checkpoint", finished_run[0] / "best_model.pth",
                   "--num_train_epochs", 2)
    real_step = multitask.training_step

    def interrupted_step(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # the loop's handler: save a checkpoint after this step
        return real_step(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(multitask, "training_step", interrupted_step)
        with pytest.raises(SystemExit) as stopped:
            run_training(argv)
    assert stopped.value.code == 130
    run_training([*argv, "--resume"])
    log = (out / "train.log").read_text()
    assert log.count("task parameter tensor(s) start fresh") == 1 and "resumed from" in log
