"""Training curves as TensorBoard event files (`--report_to tensorboard`), the format BERT's and Hugging Face's trainers
write, so a run shows in `tensorboard --logdir <output_dir>/tensorboard` beside theirs.

TensorBoard is an optional install: only `open_reporter(REPORT_TO_CHOICES[0], ...)` imports it, and without it that
call is a one-line error saying what to install. Without --report_to the reporter is `NullReporter`, whose methods do
nothing, so the training loop calls the same methods either way.

Tags, all at the run's global (optimizer) step:
  train/loss/<problem>     mean training loss of the problem since the previous log flush
  train/lr                 learning rate after the flush's last step
  train/alpha              the epoch's sampling exponent (p_t proportional to N_t^alpha); absent for round robin
  train/share/<group>      fraction of the epoch's steps drawn for the group (a task, or an "&" group of problems)
  dev/<problem>/<metric>   every dev metric of every problem, in percent
  dev/score                the overall dev score (mean of the problems' means)

A resumed run continues the same curves: before writing, `open_reporter` rewrites the interrupted run's event files
without the events that the resumed run writes again (those after its checkpoint's step, see `_replayed`), so every
(tag, step) appears once, for any reader of the files, not only TensorBoard's own.
"""
import time
from pathlib import Path

from run_files import write_atomic

REPORT_TO_CHOICES = ("tensorboard",)
# Events the training loop writes when an epoch starts: a run resumed at an epoch boundary starts that epoch again.
EPOCH_TAGS = ("train/alpha", "train/share/")
# Event files are named events.out.tfevents.<time>.<host>...; TensorBoard reads a directory's files in name order.
EVENT_FILE_GLOB = "events.out.tfevents.*"
EVENT_FILE_SECOND_FIELD = 3  # events.out.tfevents.<seconds since the epoch>.<host>.<pid>.<n>
CLOCK_POLL_SECONDS = 0.05


class NullReporter:
    """What the run reports when --report_to is not given: nothing."""

    def train(self, step, losses, lr):
        pass

    def epoch(self, step, alpha, shares):
        pass

    def dev(self, step, scores, overall):
        pass

    def close(self):
        pass


class TensorBoardReporter:
    """Scalars through torch.utils.tensorboard's SummaryWriter (module docstring: the tags)."""

    def __init__(self, writer):
        self.writer = writer

    def train(self, step, losses, lr):
        """losses: {problem name: mean loss since the last flush}."""
        for problem, loss in losses.items():
            self.writer.add_scalar(f"train/loss/{problem}", loss, step)
        self.writer.add_scalar("train/lr", lr, step)

    def epoch(self, step, alpha, shares):
        """At an epoch's first step. alpha: the sampling exponent, None for round robin (no point then); shares:
        {group name: fraction of the epoch's steps}."""
        if alpha is not None:
            self.writer.add_scalar("train/alpha", alpha, step)
        for group, share in shares.items():
            self.writer.add_scalar(f"train/share/{group}", share, step)

    def dev(self, step, scores, overall):
        """scores: {problem: {metric: value}}; overall: the mean score the best model is chosen by."""
        for problem, metrics in scores.items():
            for metric, value in metrics.items():
                self.writer.add_scalar(f"dev/{problem}/{metric}", value, step)
        self.writer.add_scalar("dev/score", overall, step)
        self.writer.flush()  # evaluations are rare and the point of a live view: show them at once

    def close(self):
        self.writer.close()


def check_report_to(report_to):
    """Raise open_reporter's one-line ValueError now if `report_to` cannot work here, so that a run can say so before
    it spends time on its data and model. None (no reporting) always works."""
    if report_to is None:
        return
    if report_to not in REPORT_TO_CHOICES:
        raise ValueError(f"--report_to {report_to!r}: expected one of {', '.join(REPORT_TO_CHOICES)}")
    try:
        import torch.utils.tensorboard  # noqa: F401  (raises ImportError without the tensorboard package)
    except ImportError:
        raise ValueError("--report_to tensorboard needs the tensorboard package: pip install tensorboard") from None


def open_reporter(report_to, log_dir, resume_step=None):
    """The run's reporter. report_to: None or one of REPORT_TO_CHOICES; log_dir: where the event files go (the run's
    <output_dir>/tensorboard/); resume_step: the global step a resumed run continues from, or None for a new run,
    which first deletes the event files of a run that was in the directory before (so no curve mixes two runs)."""
    if report_to is None:
        return NullReporter()
    check_report_to(report_to)
    from torch.utils.tensorboard import SummaryWriter

    log_dir = Path(log_dir)
    for path in sorted(log_dir.glob(EVENT_FILE_GLOB)):
        if resume_step is None:  # a new run in the directory (--overwrite_output_dir): the old curves go
            path.unlink()
        else:
            drop_replayed_events(path, resume_step)
    wait_for_a_later_second(log_dir)
    return TensorBoardReporter(SummaryWriter(log_dir=str(log_dir)))


def wait_for_a_later_second(log_dir):
    """Sleep (at most a second) until the clock's second is past every event file's in `log_dir`. TensorBoard reads a
    directory's files in name order, and a name is events.out.tfevents.<second>.<host>.<pid>...: a run resumed within
    the second its interrupted process started would otherwise sort by process id, perhaps before the older file."""
    seconds = [int(part) for path in log_dir.glob(EVENT_FILE_GLOB)
               if (part := path.name.split(".")[EVENT_FILE_SECOND_FIELD]).isdigit()]
    while seconds and time.time() < max(seconds) + 1:
        time.sleep(CLOCK_POLL_SECONDS)


def _replayed(event, resume_step):
    """Whether a run resumed at `resume_step` writes this event again: everything after the step, and an epoch's
    start at the step itself (resuming at an epoch boundary starts that epoch)."""
    if event.step > resume_step:
        return True
    return event.step == resume_step and any(v.tag.startswith(EPOCH_TAGS) for v in event.summary.value)


def drop_replayed_events(path, resume_step):
    """Rewrite one event file, atomically, without the events a run resumed at `resume_step` writes again
    (`_replayed`). A record torn by a killed process ends what the reader returns, so it goes too."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    records = list(RawEventFileLoader(str(path)).Load())
    kept = [r for r in records if not _replayed(Event.FromString(r), resume_step)]

    def write(tmp):
        with open(tmp, "wb") as f:
            writer = RecordWriter(f)
            for record in kept:
                writer.write(record)

    write_atomic(path, write)

