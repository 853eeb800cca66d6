"""reporting.py: the TensorBoard event files hold the expected tags at the expected steps (read back with TensorBoard's
own reader), a resumed run's files hold each (tag, step) once, and the optional install fails in one line."""
import os
import sys
from collections import Counter

import pytest

import reporting
from helpers import read_scalars, tensorboard_reader


def report_epoch(reporter, epoch, steps_per_epoch, log_steps, first_step=0):
    """What the training loop reports for one epoch of a two-problem run with an "&" group."""
    start = epoch * steps_per_epoch
    if first_step == 0:
        reporter.epoch(start, alpha=1.0 - 0.4 * epoch, shares={"rte": 0.25, "pku_cws&pku_ner": 0.75})
    for step in range(start + first_step + 1, start + steps_per_epoch + 1):  # the steps after the checkpoint
        if step % log_steps == 0:
            reporter.train(step, {"rte": 0.7 - step / 1000, "pku_cws": 0.5 + epoch}, lr=1e-4 * step)
    reporter.dev(start + steps_per_epoch, {"rte": {"acc": 55.0 + epoch}, "pku_ner": {"f1": 40.0, "acc": 90.0}},
                 overall=60.0 + epoch)


def test_tags_and_steps(tmp_path):
    tensorboard_reader()
    reporter = reporting.open_reporter("tensorboard", tmp_path / "tensorboard")
    for epoch in range(2):
        report_epoch(reporter, epoch, steps_per_epoch=20, log_steps=10)
    reporter.close()
    scalars = read_scalars(tmp_path / "tensorboard")
    assert set(scalars) == {"train/loss/rte", "train/loss/pku_cws", "train/lr", "train/alpha", "train/share/rte",
                            "train/share/pku_cws&pku_ner", "dev/rte/acc", "dev/pku_ner/f1", "dev/pku_ner/acc",
                            "dev/score"}
    assert [s for s, _ in scalars["train/loss/rte"]] == [10, 20, 30, 40]
    assert scalars["train/lr"][-1] == (40, pytest.approx(4e-3))
    assert scalars["train/alpha"] == [(0, 1.0), (20, pytest.approx(0.6))]
    assert scalars["train/share/pku_cws&pku_ner"] == [(0, 0.75), (20, 0.75)]
    assert scalars["dev/rte/acc"] == [(20, 55.0), (40, 56.0)]
    assert scalars["dev/score"] == [(20, 60.0), (40, 61.0)]


def test_round_robin_has_no_alpha(tmp_path):
    tensorboard_reader()
    reporter = reporting.open_reporter("tensorboard", tmp_path)
    reporter.epoch(0, alpha=None, shares={"rte": 0.5, "sts": 0.5})
    reporter.close()
    assert set(read_scalars(tmp_path)) == {"train/share/rte", "train/share/sts"}


@pytest.mark.parametrize("resume_epoch, resume_step", [(1, 20), (1, 30)])  # at an epoch boundary, and mid-epoch
def test_resumed_run_has_no_duplicate_steps(tmp_path, resume_epoch, resume_step):
    """The interrupted run reported up to step 40 (its last checkpoint: resume_step), and its event file ends in a
    torn record (killed while writing); the resumed run reports from resume_step on again."""
    tensorboard_reader()
    log_dir = tmp_path / "tensorboard"
    interrupted = reporting.open_reporter("tensorboard", log_dir)
    for epoch in range(2):
        report_epoch(interrupted, epoch, steps_per_epoch=20, log_steps=10)
    interrupted.close()
    (event_file,) = log_dir.iterdir()
    with open(event_file, "ab") as f:
        f.write(b"\x40\x00\x00")  # the first bytes of a record's length field

    resumed = reporting.open_reporter("tensorboard", log_dir, resume_step=resume_step)
    report_epoch(resumed, resume_epoch, steps_per_epoch=20, log_steps=10, first_step=resume_step - 20)
    resumed.close()
    scalars = read_scalars(log_dir)
    points = Counter((tag, step) for tag, series in scalars.items() for step, _ in series)
    assert points and max(points.values()) == 1, [p for p, n in points.items() if n > 1]
    assert [s for s, _ in scalars["train/loss/rte"]] == [10, 20, 30, 40]
    assert [s for s, _ in scalars["train/alpha"]] == [0, 20]
    assert [s for s, _ in scalars["dev/score"]] == [20, 40]


def test_a_run_resumed_within_the_same_second_sorts_after_the_interrupted_one(tmp_path, monkeypatch):
    """TensorBoard reads event files in name order, events.out.tfevents.<second>.<host>.<pid>...: a resumed process
    with a smaller process id, started in the interrupted one's second, must still come after it."""
    tensorboard_reader()
    log_dir = tmp_path / "tensorboard"
    interrupted = reporting.open_reporter("tensorboard", log_dir)
    interrupted.train(10, {"rte": 0.7}, lr=1e-4)
    interrupted.close()
    monkeypatch.setattr(os, "getpid", lambda: 1)  # "1." sorts before any longer pid at the same second
    resumed = reporting.open_reporter("tensorboard", log_dir, resume_step=10)
    resumed.train(20, {"rte": 0.6}, lr=1e-4)
    resumed.close()
    first, second = sorted(path.name for path in log_dir.iterdir())
    assert second.split(".")[reporting.EVENT_FILE_SECOND_FIELD + 2] == "1"  # the resumed run's file, last
    assert [s for s, _ in read_scalars(log_dir)["train/loss/rte"]] == [10, 20]


def test_reader_keeps_a_step_written_twice(tmp_path):
    """Two event files with the same step (what resuming without dropping would leave): the reader shows both, so the
    resume test above would see them if nothing dropped them."""
    tensorboard_reader()
    from torch.utils.tensorboard import SummaryWriter
    for value in (50.0, 51.0):
        with SummaryWriter(log_dir=str(tmp_path)) as writer:
            writer.add_scalar("dev/score", value, 10)
    assert read_scalars(tmp_path)["dev/score"] == [(10, 50.0), (10, 51.0)]


def test_none_reports_nothing(tmp_path):
    reporter = reporting.open_reporter(None, tmp_path / "tensorboard")
    reporter.epoch(0, 1.0, {"rte": 1.0})
    reporter.train(1, {"rte": 0.5}, 1e-4)
    reporter.dev(1, {"rte": {"acc": 50.0}}, 50.0)
    reporter.close()
    assert not (tmp_path / "tensorboard").exists()


def test_missing_tensorboard_is_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import raise ImportError
    message = r"^--report_to tensorboard needs the tensorboard package: pip install tensorboard$"
    with pytest.raises(ValueError, match=message):
        reporting.check_report_to("tensorboard")
    with pytest.raises(ValueError, match=message):
        reporting.open_reporter("tensorboard", tmp_path)
    assert not any(tmp_path.iterdir())
    reporting.check_report_to(None)  # no reporting needs nothing


def test_unknown_choice(tmp_path):
    with pytest.raises(ValueError, match="--report_to 'wandb': expected one of tensorboard"):
        reporting.open_reporter("wandb", tmp_path)


def test_new_run_replaces_the_curves_of_an_earlier_run(tmp_path):
    """--overwrite_output_dir: the new run's curves alone, not mixed with the replaced run's."""
    tensorboard_reader()
    old = reporting.open_reporter("tensorboard", tmp_path)
    old.dev(10, {"rte": {"acc": 50.0}}, overall=50.0)
    old.dev(20, {"rte": {"acc": 51.0}}, overall=51.0)
    old.close()
    new = reporting.open_reporter("tensorboard", tmp_path)
    new.dev(10, {"rte": {"acc": 60.0}}, overall=60.0)
    new.close()
    assert read_scalars(tmp_path)["dev/score"] == [(10, 60.0)]
