"""What a run writes, and how: the run directory's file names, one atomic writer for every file (checkpoints, JSON,
prediction files, feature caches, event files), the JSON-lines logs, and the console/train.log logging.

A write goes to a temporary file in the same directory, is flushed to disk, then renamed over the target: a crash
leaves the previous file or the new one, never a torn one. A full disk leaves the previous file as it was and raises
`NoSpaceLeft`, whose message says so in one line.
"""
import errno
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from cli import deferred_interrupts, fail

# Files and folders of a training run's --output_dir.
ARGS_FILE, CONFIG_FILE, VOCAB_FILE = "args.json", "config.json", "vocab.txt"
TEXT_LOG, TRAIN_LOG, EVAL_LOG = "train.log", "train_log.jsonl", "eval_results.jsonl"
BEST_MODEL, LAST_CHECKPOINT = "best_model.pth", "last_checkpoint.pth"
EPOCH_MODEL = "model_epoch_{}.pth"  # Gated-BERT keeps the model of every epoch, as the original
REPORT_DIR = "tensorboard"  # --report_to tensorboard: the event files
# Every file or folder a training run writes: what --overwrite_output_dir may remove, and nothing else.
RUN_FILES = (ARGS_FILE, CONFIG_FILE, VOCAB_FILE, TEXT_LOG, TRAIN_LOG, EVAL_LOG, BEST_MODEL, LAST_CHECKPOINT)
RUN_FILE_PATTERNS = (EPOCH_MODEL.format("*"),)  # and a killed write's .*.tmp, removed at every start
# Bytes per megabyte in messages.
MB = 2 ** 20
CLOCK_FORMAT = "%H:%M:%S"  # the time of day that starts every console and train.log line

logger = logging.getLogger("embert")


class NoSpaceLeft(OSError):
    """A write stopped by a full disk; the message names the file, the space needed and what was kept."""


def write_atomic(path, write, size=None):
    """Write through a temporary file in the same directory (`write(tmp_path)`), then rename. `size`: bytes about
    to be written, for the full-disk message. A Ctrl-C meanwhile acts once the file is complete."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with deferred_interrupts():
            write(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        # torch's writer reports a failed write as a RuntimeError ("iostream error") that does not say why.
        full = getattr(err, "errno", None) == errno.ENOSPC or (
            isinstance(err, RuntimeError) and size is not None and shutil.disk_usage(path.parent).free < size)
        if not full:
            raise
        needed = f"about {size / MB:.1f} MB needed, " if size else ""
        kept = f"the previous {path.name} is kept" if path.exists() else "nothing was written"
        raise NoSpaceLeft(errno.ENOSPC, f"no space left on the device writing {path} ({needed}"
                                        f"{shutil.disk_usage(path.parent).free / MB:.1f} MB free); {kept}") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_or_fail(path, write, size=None):
    """write_atomic for the run's own files: a full disk stops the run with one line saying how to go on."""
    try:
        write_atomic(path, write, size)
    except NoSpaceLeft as err:
        fail(f"{err.strerror}. Free some space and run again (with --resume to continue a run)")


def write_text(path, text):
    """A UTF-8 text file, written atomically (its folder made if needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def tensor_bytes(obj):
    """Bytes of the tensors in `obj` (nested dicts, lists, tuples): about the size of its torch.save file."""
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def cpu_copy(obj, copies=None):
    """`obj` with every tensor in its dicts, lists and tuples on the CPU: files written from a GPU run then load on
    any machine without map_location. Tensors that are views of the same memory (a state dict's aliases of one
    parameter: PALs' shared projections) become one CPU tensor, so the file holds them once, as a CPU run's does."""
    copies = {} if copies is None else copies
    if torch.is_tensor(obj):
        view = (obj.device, obj.untyped_storage().data_ptr(), obj.storage_offset(), obj.shape, obj.stride(), obj.dtype)
        if view not in copies:
            copies[view] = obj.cpu()
        return copies[view]
    if isinstance(obj, dict):
        copied = type(obj)((k, cpu_copy(v, copies)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):  # a state dict's per-module versions, which load_state_dict reads
            copied._metadata = obj._metadata
        return copied
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v, copies) for v in obj)
    return obj


def save_torch(obj, path):
    obj = cpu_copy(obj)

    def write(tmp):
        with open(tmp, "wb") as f:  # a Python file: a full disk raises OSError(ENOSPC), not torch's iostream error
            torch.save(obj, f)

    write_or_fail(path, write, size=tensor_bytes(obj))


def save_json(obj, path):
    write_or_fail(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


def append_jsonl(path, record):
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def truncate_jsonl(path, global_step):
    """Drop the records a resumed run writes again: those after `global_step` (by a run that crashed past its last
    checkpoint), and an epoch's task_counts line at `global_step` itself (a run resumed at an epoch boundary starts
    that epoch again). A last line torn by a killed write goes too."""
    if not path.exists():
        return
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        try:
            json.loads(lines[-1])
        except json.JSONDecodeError:
            lines.pop()
    kept = []
    for line in lines:
        record = json.loads(line)
        step = record["global_step"]
        if step < global_step or (step == global_step and "task_counts" not in record):
            kept.append(line)
    write_or_fail(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8"))


class BufferedRecords(logging.Handler):
    """Keeps the records logged before the output directory may be written (inputs are checked first), so that
    train.log still holds them once it exists."""

    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


def setup_logging(is_main):
    """Console (through tqdm, so progress bars stay intact), and a buffer for train.log (`attach_log_file`); silent
    on ranks other than 0."""
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if is_main else logging.WARNING)

    class TqdmHandler(logging.Handler):
        def emit(self, record):
            tqdm.write(self.format(record), file=sys.stderr)

    for handler in (TqdmHandler(), BufferedRecords()):
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", CLOCK_FORMAT))
        logger.addHandler(handler)


def attach_log_file(path):
    """From now on log to `path` as well, starting with what was logged before it could be written."""
    buffer = next(h for h in logger.handlers if isinstance(h, BufferedRecords))
    logger.removeHandler(buffer)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(buffer.formatter)
    for record in buffer.records:
        handler.emit(record)
    logger.addHandler(handler)


def remove_run_files(output_dir):
    """The files a training run writes (RUN_FILES, RUN_FILE_PATTERNS, REPORT_DIR), and nothing else the folder
    holds."""
    for name in RUN_FILES:
        (output_dir / name).unlink(missing_ok=True)
    for pattern in RUN_FILE_PATTERNS:
        for path in output_dir.glob(pattern):
            path.unlink()
    shutil.rmtree(output_dir / REPORT_DIR, ignore_errors=True)  # the event files of --report_to
