"""What every script does at its command line: one-line errors, the output folder checked before any work, and
Ctrl-C. Standard library only, so that a script guards its own imports with it (importing torch takes seconds) and
plot_runs.py, which needs no torch, uses it too.

- `fail`: stop with a one-line error (no traceback).
- `check_output_dir` / `check_output_file`: a folder (or a file's folder) this process can write in, checked
  before anything is read or written; nothing is created.
- `exit_on_interrupt`: a script's whole body; a Ctrl-C anywhere outside the training loop ends it with one line and
  exit status 130 (the shell's 128 + SIGINT).
- `StopRequest`: inside the training loop, the first Ctrl-C or SIGTERM asks for a resumable checkpoint and an exit at
  the next step boundary; a second Ctrl-C interrupts at once.
- `deferred_interrupts`: around a file write, Ctrl-C and SIGTERM wait until the file is complete, then act.
"""
import contextlib
import logging
import signal
import sys
import tempfile
import threading
from pathlib import Path

# Exit status of a process stopped by a signal: the shell's convention, 128 + the signal's number.
SIGNAL_EXIT_BASE = 128
# The signals a run turns into a clean stop.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# What a training script says when interrupted outside its loop (which saves a checkpoint first).
RESUME_HINT = "files are only ever replaced whole; a run continues from its last checkpoint with --resume"

logger = logging.getLogger("embert")


def fail(message):
    """Stop with a one-line error (no traceback): the message says what to change."""
    raise SystemExit(f"error: {message}")


def _writable_folder(path, what):
    """One-line error unless `path` is a folder, or a folder can be made there, that this process may write in.
    Creates nothing: a probe file without a name (O_TMPFILE where the system has it) is opened and closed in the
    nearest folder that exists."""
    path = Path(path).absolute()
    if path.exists() and not path.is_dir():
        fail(f"{what} {path} is a file, not a folder")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        fail(f"{what} {path} lies under {existing}, which is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        fail(f"{what} {path} cannot be written: {existing} is not writable ({err.strerror})")


def check_output_dir(path, flag):
    """`flag`'s folder can hold the script's files (it exists or can be made, and is writable)."""
    _writable_folder(path, flag)


def check_output_file(path, flag):
    """`flag`'s file can be written: not a folder, and its folder exists or can be made, and is writable."""
    path = Path(path)
    if path.is_dir():
        fail(f"{flag} {path} is a folder; expected a file name")
    _writable_folder(path.absolute().parent, f"{flag} {path}: its folder")


@contextlib.contextmanager
def exit_on_interrupt(hint=None):
    """Run a script's body; a KeyboardInterrupt (Ctrl-C while importing, reading data, predicting, or a second Ctrl-C
    during training) ends the process with one line (and `hint`) and status 130 instead of a traceback."""
    try:
        yield
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C)" + (f"; {hint}" if hint else ""), file=sys.stderr)
        raise SystemExit(SIGNAL_EXIT_BASE + signal.SIGINT) from None


@contextlib.contextmanager
def deferred_interrupts():
    """Hold Ctrl-C and SIGTERM back while the block runs (a file write: torch's writer fails half-way when
    interrupted), then hand them to the handlers that were in place. Signals are only handled in the main thread;
    elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for signum in received:
            handler = previous[signum]
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM ask the loop to save a resumable checkpoint and exit at the next step boundary;
    a second Ctrl-C interrupts at once (or, during a file write, once the file is complete)."""

    def __init__(self):
        self.signum = None
        self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}

    @property
    def requested(self):
        return self.signum is not None

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        logger.warning(f"{signal.Signals(signum).name}: saving a resumable checkpoint at the end of this step")

    def exit_status(self):
        """128 + the signal's number; SIGINT's for a process that learnt of the stop from another rank."""
        return SIGNAL_EXIT_BASE + (self.signum or signal.SIGINT)

    def restore(self):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
