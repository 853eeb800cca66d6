"""The multi-task training loop shared by run_multi_task.py (EmBERT), run_multi_task_gated.py (Gated-BERT) and the
other methods' scripts, and what the prediction script must do the same way (the method registry, the input checks,
rebuilding a run's model, predicting a split).

The training scripts differ only in their `Method`: the model module they build, how the task-sampling exponent
anneals, which parameters each phase freezes, and whether batches pad to max_seq_length. `main` reads top to bottom:
check every input (nothing is written before they pass), data, model, output directory, optimizer, resume, then the
loop (sample a task, `training_step`, log), evaluation and checkpoints.

Files written to --output_dir (rank 0 only, every write atomic):
  args.json            every resolved argument (paths absolute)
  config.json          the model config, plus the model type, task names and label lists (rebuilds the model)
  vocab.txt            a copy of --vocab_file, so the directory predicts on its own
  train.log            what the console shows, as plain text
  train_log.jsonl      per logging interval and task: global_step, epoch, task, loss, lr, steps; per epoch:
                       task_counts (batches drawn per task) and alpha
  eval_results.jsonl   per evaluation: epoch, global_step, scores {task: {metric: value}}, task_scores, glue_score, best
  best_model.pth       state dict of the model with the best dev score (the final model without --do_eval)
  last_checkpoint.pth  model, optimizer, scheduler, sampler, RNG states and step: --resume continues from it
  tensorboard/         --report_to tensorboard: the same curves as event files
Problems joined by & in --tasks form a group: one task row (task embedding, gate, PAL) and one sampler unit, its
problems' heads reading one encoder pass; args.json and config.json then record the groups ("task_groups").
A mask_lm or pretrain problem is a group of its own: its batches are masked afresh each step (from the seed, the step
and the micro-batch, so a resumed run masks exactly as the interrupted one), its dev set once with DEV_MASKING_SEED.
Epochs: the JSON lines' "epoch" is the 0-based index of the epoch; everything a person reads (console, train.log,
progress bars) numbers epochs from 1. Exit status: 0 when the run finished, 130 after Ctrl-C (SIGINT) and 143 after
SIGTERM once the resumable checkpoint is saved (the shell's 128 + signal number).
"""
import argparse
import contextlib
import dataclasses
import errno
import json
import logging
import math
import os
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

import glue_processors
import modeling
import modeling_gated
import modeling_pals
import optimization
import problems
import reporting
import tokenization
from glue_processors import IGNORE_INDEX, LM_TYPES
from modeling import BERT_PARAMETER, HEAD_INPUTS, load_mapped_state, map_state_dict, read_state_dict

# The BERT-and-PALs recipe (SPEC 6.2): an "epoch" is 300 optimizer steps per task.
STEPS_PER_TASK_PER_EPOCH = 300
# Annealed sampling: p_t proportional to N_t^alpha, alpha from ALPHA_START down to ALPHA_END (PALs paper).
ALPHA_START, ALPHA_END = 1.0, 0.2
SAMPLE_EXPONENTS = {"prop": 1.0, "sqrt": 0.5, "uniform": 0.0}  # uniform: N^0, every group equally likely
SAMPLE_MODES = ("anneal", "prop", "sqrt", "uniform", "rr")
# Batches pad to the longest sequence rounded up to this multiple: masked padding changes no result, and few
# distinct shapes keep tensor cores busy and torch.compile's recompilations bounded.
PAD_MULTIPLE = 8
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Output file names (module docstring).
ARGS_FILE, CONFIG_FILE, VOCAB_FILE = "args.json", "config.json", "vocab.txt"
TEXT_LOG, TRAIN_LOG, EVAL_LOG = "train.log", "train_log.jsonl", "eval_results.jsonl"
BEST_MODEL, LAST_CHECKPOINT = "best_model.pth", "last_checkpoint.pth"
EPOCH_MODEL = "model_epoch_{}.pth"  # Gated-BERT keeps the model of every epoch, as the original
REPORT_DIR = "tensorboard"  # --report_to tensorboard: the event files
# Every file or folder a training run writes: what --overwrite_output_dir may remove, and nothing else.
RUN_FILES = (ARGS_FILE, CONFIG_FILE, VOCAB_FILE, TEXT_LOG, TRAIN_LOG, EVAL_LOG, BEST_MODEL, LAST_CHECKPOINT)
RUN_FILE_PATTERNS = (EPOCH_MODEL.format("*"),)  # and a killed write's .*.tmp, removed at every start
# --metric_for_best_model's default: the mean of the tasks' scores (the GLUE score).
MEAN_SCORE = "mean"
# The dev sets of mask_lm / pretrain problems are masked once with this seed (not --seed): every epoch and every run
# scores the same masked tokens.
DEV_MASKING_SEED = 0
# Arguments a resumed run must share with the run it continues.
RESUME_INVARIANTS = ("tasks", "problems", "sample", "seed", "train_batch_size", "gradient_accumulation_steps",
                     "learning_rate", "num_train_epochs", "steps_per_epoch", "warmup_proportion", "optimizer",
                     "max_seq_length", "bert_config_file", "h_aug", "freeze", "max_steps", "warmup_steps",
                     "weight_decay", "eval_steps", "max_train_samples", "max_eval_samples", "metric_for_best_model")
# Arguments holding paths: stored absolute in args.json, so a run directory works from any working directory.
PATH_ARGUMENTS = ("data_dir", "vocab_file", "bert_config_file", "init_checkpoint", "output_dir", "cache_dir",
                  "problems")
# Exit status of a run interrupted by a signal once its checkpoint is saved: the shell's convention, 128 + signal.
SIGNAL_EXIT_BASE = 128
# Bytes per megabyte in messages.
MB = 2 ** 20

logger = logging.getLogger("embert")


def embert_alpha(epoch, num_epochs):
    """Sampling exponent for epoch `epoch` (0-based): 1.0 at the first epoch down to 0.2 at the last."""
    return ALPHA_START - (ALPHA_START - ALPHA_END) * epoch / max(num_epochs - 1, 1)


@dataclass(frozen=True)
class Method:
    """What distinguishes one multi-task method's training from another's."""

    name: str  # written to config.json: run_test_multi_task.py picks the method by it
    modeling: ModuleType  # provides BertConfig and BertForMultiTask
    anneal_alpha: Callable = embert_alpha  # (epoch, num_epochs) -> sampling exponent for --sample anneal
    frozen_parameters: Callable | None = None  # (model, task_id, epoch) -> parameters this step must not update
    pad_to_max_length: bool = False  # pad every batch to --max_seq_length (Gated-BERT's gate reads it all)
    checkpoint_every_epoch: bool = False  # also keep model_epoch_N.pth after every epoch
    configure: Callable | None = None  # (config, max_seq_length, h_aug) -> config: model sizes taken from flags


# Every method, by the name a run's config.json records; each training script runs one of them.
METHODS = {method.name: method for method in (
    Method("embert", modeling),
    Method("gated", modeling_gated, anneal_alpha=modeling_gated.anneal_alpha,
           frozen_parameters=modeling_gated.frozen_parameters, pad_to_max_length=True, checkpoint_every_epoch=True,
           configure=modeling_gated.configure),
    Method("pals", modeling_pals, configure=modeling_pals.configure),
)}


def parse_args(description, argv=None):
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Data and tasks.
    parser.add_argument("--data_dir", required=True,
                        help="data directory: GLUE's glue_data layout (CoLA/, MRPC/, ...), People's Daily as "
                             "pku199801/199801.txt")
    parser.add_argument("--tasks", default="all",
                        help="'all' (cola,mrpc,mnli,rte,sts,sst,qqp,qnli), 'inf' (qnli,mnli,rte), 'single' "
                             "(with --task_id) or problem names (GLUE's, pku_cws, pku_pos, pku_ner, pku_entity_types, "
                             "those of --problems): a&b|c trains a and b together on one batch (same inputs) and "
                             "samples the groups a&b and c; a comma is a |")
    parser.add_argument("--problems", default=None,
                        help="a JSON file of the user's own problems (type, format, files, columns, labels), added "
                             "to the predefined ones for this run")
    parser.add_argument("--task_id", type=int, default=None, help="index into the 'all' order for --tasks single")
    parser.add_argument("--vocab_file", required=True, help="BERT vocab.txt the model was pre-trained with")
    parser.add_argument("--do_lower_case", action="store_true", help="lower-case and strip accents (uncased models)")
    parser.add_argument("--max_seq_length", type=int, default=128,
                        help="longest sequence after WordPiece; longer pairs are truncated longest-first")
    parser.add_argument("--max_train_samples", type=int, default=None,
                        help="train on only the first N examples of each task (quick debugging runs)")
    parser.add_argument("--max_eval_samples", type=int, default=None,
                        help="evaluate on only the first N examples of each dev set (quick debugging runs)")
    parser.add_argument("--cache_dir", default=None,
                        help="where tokenized features are cached (default $EMBERT_CACHE or ~/.cache/embert)")
    parser.add_argument("--num_workers", type=int, default=None,
                        help="tokenizer worker processes for the first, uncached pass (default: all cores)")
    # Model.
    parser.add_argument("--bert_config_file", required=True, help="BERT config JSON (our_attn: true for EmBERT)")
    parser.add_argument("--init_checkpoint", default=None,
                        help="pretrained weights: Google/Hugging Face BERT (.bin, .safetensors or a directory), or "
                             "a checkpoint of this code or of the original EmBERT/Gated-BERT code")
    parser.add_argument("--h_aug", type=int, default=None,
                        help="Gated-BERT: rank of the query/key adapters; PALs: the PAL width, a multiple of 6 "
                             "(default: the config's hidden_size_aug, else 204); ignored by EmBERT")
    parser.add_argument("--multi", action="store_true",
                        help="the original's multi-task switch; training here is always multi-task over --tasks")
    parser.add_argument("--freeze", action="store_true",
                        help="freeze the pretrained BERT weights; train only task embeddings, adapters, PALs and "
                             "heads")
    # Training.
    parser.add_argument("--output_dir", required=True, help="where logs, checkpoints and the best model go")
    parser.add_argument("--do_train", action="store_true", help="train")
    parser.add_argument("--do_eval", action="store_true", help="evaluate on every task's dev set after each epoch")
    parser.add_argument("--sample", default="rr", choices=SAMPLE_MODES,
                        help="which group of tasks each step trains: anneal (p ~ N^alpha, alpha 1 -> 0.2), prop "
                             "(p ~ N), sqrt (p ~ sqrt N), uniform (every group alike) or rr (round robin)")
    parser.add_argument("--train_batch_size", type=int, default=32,
                        help="examples per optimizer step, over all accumulation steps and processes")
    parser.add_argument("--eval_batch_size", type=int, default=8, help="examples per evaluation batch")
    parser.add_argument("--learning_rate", type=float, default=5e-5, help="peak learning rate")
    parser.add_argument("--num_train_epochs", type=float, default=3.0,
                        help="epochs of --steps_per_epoch optimizer steps (fractions allowed)")
    parser.add_argument("--max_steps", type=int, default=None,
                        help="train exactly this many optimizer steps (overrides --num_train_epochs)")
    parser.add_argument("--steps_per_epoch", type=int, default=None,
                        help=f"optimizer steps per epoch (default {STEPS_PER_TASK_PER_EPOCH} x number of tasks)")
    parser.add_argument("--warmup_proportion", type=float, default=0.1,
                        help="fraction of all steps with linear warm-up of the learning rate")
    parser.add_argument("--warmup_steps", type=int, default=None,
                        help="steps of linear warm-up (overrides --warmup_proportion)")
    parser.add_argument("--weight_decay", type=float, default=optimization.WEIGHT_DECAY,
                        help="decoupled weight decay on every parameter but biases and LayerNorms")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1,
                        help="micro-batches per optimizer step (one task per step)")
    parser.add_argument("--optimizer", "--optim", dest="optimizer", default="adamw", choices=optimization.OPTIMIZERS,
                        help="adamw (torch.optim.AdamW, global clipping) or bertadam (the original update exactly)")
    parser.add_argument("--seed", type=int, default=42, help="seeds initialisation, sampling and dropout")
    parser.add_argument("--eval_steps", type=int, default=None,
                        help="also evaluate every this many optimizer steps (always at the end of each epoch)")
    parser.add_argument("--metric_for_best_model", default=MEAN_SCORE,
                        help="what picks best_model.pth: 'mean' (the mean of the tasks' scores: the GLUE score), a "
                             "task (its score, e.g. mrpc) or task/metric (e.g. mrpc/f1)")
    parser.add_argument("--save_checkpoints_steps", type=int, default=None,
                        help="also write the resumable checkpoint every this many steps (it is always written at "
                             "the end of each epoch and on Ctrl-C)")
    parser.add_argument("--log_steps", type=int, default=50, help="optimizer steps per train_log.jsonl interval")
    parser.add_argument("--report_to", default=None, choices=reporting.REPORT_TO_CHOICES,
                        help=f"also write the training curves and dev metrics as TensorBoard event files, under "
                             f"--output_dir/{REPORT_DIR} (needs the tensorboard package)")
    parser.add_argument("--resume", action="store_true",
                        help=f"continue from --output_dir/{LAST_CHECKPOINT} (start fresh if there is none)")
    parser.add_argument("--overwrite_output_dir", action="store_true",
                        help="replace the run in a non-empty --output_dir (only once every input has been checked; "
                             "only the files a run writes are removed)")
    # Hardware and speed.
    parser.add_argument("--no_cuda", action="store_true", help="run on the CPU even when CUDA is available")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                        help="autocast precision, fp32 master weights (auto: bf16 on CUDA where supported, else fp32)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the encoder (on CUDA with CUDA graphs, batches padded, not packed)")
    parser.add_argument("--local_rank", type=int, default=-1,
                        help="set by the legacy torch.distributed.launch; torchrun sets LOCAL_RANK instead")
    args = parser.parse_args(argv)
    for flag in ("train_batch_size", "eval_batch_size", "gradient_accumulation_steps", "max_seq_length", "log_steps"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    for flag in ("steps_per_epoch", "save_checkpoints_steps", "h_aug", "max_steps", "eval_steps", "max_train_samples",
                 "max_eval_samples"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.warmup_steps is not None and args.warmup_steps < 0:
        parser.error(f"--warmup_steps must be at least 0, got {args.warmup_steps}")
    if args.weight_decay < 0:
        parser.error(f"--weight_decay must be at least 0, got {args.weight_decay}")
    if args.num_train_epochs <= 0:
        parser.error(f"--num_train_epochs must be positive, got {args.num_train_epochs}")
    if not 0 <= args.warmup_proportion < 1:
        parser.error(f"--warmup_proportion must be in [0, 1), got {args.warmup_proportion}")
    if not (args.do_train or args.do_eval):
        parser.error("nothing to do: give --do_train, --do_eval or both")
    return args


def read_user_problems(path):
    """--problems: the user's problems by name ({} without the flag); a one-line error naming file, line and key."""
    if path is None:
        return {}
    try:
        return problems.read_problems_file(path)
    except (OSError, ValueError) as err:
        fail(f"--problems: {err}")


def resolve_task_groups(spec, task_id, user_problems):
    try:
        return problems.resolve_groups(spec, task_id, user_problems)
    except ValueError as err:  # its messages start with --tasks
        fail(str(err))


def check_best_model_metric(name, tasks):
    """--metric_for_best_model must name the mean, one of the run's problems, or one of a problem's dev metrics."""
    metrics = {t.name: {m for names in t.metrics.values() for m in names} for t in tasks}
    task, _, metric = name.partition("/")
    if name == MEAN_SCORE or (task in metrics and (not metric or metric in metrics[task])):
        return
    choices = [MEAN_SCORE, *metrics, *(f"{t}/{m}" for t, names in metrics.items() for m in sorted(names))]
    fail(f"--metric_for_best_model {name!r} is not one of: {', '.join(choices)}")


class TaskSampler:
    """Which task (or & group: a group is sampled as one task, by its examples' count) each optimizer step trains,
    and which examples each batch holds (SPEC 6.2).

    Everything drawn is a pure function of the seed, the epoch and per-task counters: a resumed run draws what an
    uninterrupted one would, and every DDP rank draws the same without communicating. Each task's examples form an
    endless stream of permutations, a fresh one per pass, so every batch is full and the data is reshuffled each pass.
    """

    SCHEDULE, DATA = 0, 1  # seed streams

    def __init__(self, sizes, mode, steps_per_epoch, num_epochs, seed, anneal_alpha):
        self.sizes, self.mode, self.seed = list(sizes), mode, seed
        self.steps_per_epoch, self.num_epochs, self.anneal_alpha = steps_per_epoch, num_epochs, anneal_alpha
        self.consumed = [0] * len(sizes)  # examples drawn so far per task, over all passes
        self._permutation = {}  # task -> (pass, permutation of that pass)

    def alpha(self, epoch):
        return self.anneal_alpha(epoch, self.num_epochs) if self.mode == "anneal" else SAMPLE_EXPONENTS.get(self.mode)

    def probabilities(self, epoch):
        """p_t proportional to N_t^alpha, (num_tasks,); None for round robin."""
        if self.mode == "rr":
            return None
        weights = torch.tensor(self.sizes, dtype=torch.float64) ** self.alpha(epoch)
        return weights / weights.sum()

    def tasks_for_epoch(self, epoch):
        """The task of every optimizer step of `epoch`, (steps_per_epoch,) int64."""
        if self.mode == "rr":  # the original's rr always trained task 0; here every task in turn
            first = epoch * self.steps_per_epoch
            return torch.arange(first, first + self.steps_per_epoch) % len(self.sizes)
        generator = torch.Generator().manual_seed(hash((self.seed, self.SCHEDULE, epoch)))
        return torch.multinomial(self.probabilities(epoch), self.steps_per_epoch, replacement=True,
                                 generator=generator)

    def next_indices(self, task, count):
        """The next `count` example indices of `task`'s stream, (count,) int64."""
        size, chunks = self.sizes[task], []
        while count > 0:
            pass_, offset = divmod(self.consumed[task], size)
            if self._permutation.get(task, (None,))[0] != pass_:
                generator = torch.Generator().manual_seed(hash((self.seed, self.DATA, task, pass_)))
                self._permutation[task] = (pass_, torch.randperm(size, generator=generator))
            chunk = self._permutation[task][1][offset:offset + count]
            chunks.append(chunk)
            self.consumed[task] += len(chunk)
            count -= len(chunk)
        return torch.cat(chunks)

    def state_dict(self):
        return {"consumed": list(self.consumed)}

    def load_state_dict(self, state):
        self.consumed = list(state["consumed"])


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
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
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


def fail(message):
    """Stop with a one-line error (no traceback): the message says what to change."""
    raise SystemExit(f"error: {message}")


def tensor_bytes(obj):
    """Bytes of the tensors in `obj` (nested dicts, lists, tuples): about the size of its torch.save file."""
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def write_atomic(path, write, size=None):
    """Write through a temporary file in the same directory, then rename: a crash never leaves a torn file, and a
    full disk leaves the previous file as it was and stops with one line saying so (`size`: bytes about to be
    written, for that message)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
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
        fail(f"no space left on the device writing {path} ({needed}{shutil.disk_usage(path.parent).free / MB:.1f} "
             f"MB free); {kept}. Free some space and run again (with --resume to continue a run)")
    finally:
        tmp.unlink(missing_ok=True)


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

    write_atomic(path, write, size=tensor_bytes(obj))


def save_json(obj, path):
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


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
    write_atomic(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8"))


def absolute_paths(args):
    """args as a dict with every path argument made absolute (args.json: the run directory works from anywhere)."""
    return {k: (str(Path(v).absolute()) if k in PATH_ARGUMENTS and v is not None else v) for k, v in vars(args).items()}


def resolve_precision(name, device):
    if name == "auto":
        # Native bf16 only (Ampere and newer): a V100 emulates it, slower than fp32.
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    return name


def select_device(no_cuda, local_rank=0):
    """CUDA device `local_rank` unless --no_cuda or there is none; the CPU otherwise."""
    if torch.cuda.is_available() and not no_cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def batch_padding(method, max_seq_length):
    """pad_to for make_batch: max_seq_length for a method whose model reads every position (Gated-BERT's gate), else
    None (the longest example of the batch)."""
    return max_seq_length if method.pad_to_max_length else None


def to_device(batch, device):
    """Pinned host memory and non-blocking copies on CUDA: the copy overlaps the previous step's kernels. A list
    (an & group's labels, one tensor per problem) is copied item by item."""
    if device.type != "cuda":
        return batch
    copy = lambda v: v.pin_memory().to(device, non_blocking=True)  # noqa: E731
    return {k: [copy(x) for x in v] if isinstance(v, list) else copy(v) for k, v in batch.items()}


def compile_encoder(model, device, cuda_graphs=True):
    """--compile: torch.compile the encoder in place (parameter names, and so saved state dicts, stay unchanged).

    On CUDA, with `cuda_graphs`, also CUDA graphs (mode "reduce-overhead"): at batch 32 a BERT-base step launches about
    a thousand small kernels and the host, not the GPU, sets the pace (bench.py --profile on an H100: the GPU busy
    ~7 ms of a ~40 ms step); a graph replays them with one launch. Graphs need shapes that repeat, so the tokens are
    not packed: batches padded to a multiple of PAD_MULTIPLE take at most max_seq_length / PAD_MULTIPLE widths, one
    graph per width and task. The results are the packed ones (tests/test_modeling.py::
    test_packed_tokens_equal_the_padded_computation). Without graphs where gradients accumulate over micro-batches:
    a graph's next replay overwrites the gradient buffers the previous backward left in .grad."""
    if device.type == "cuda" and cuda_graphs:
        model.bert.pack_tokens = False
        model.bert.compile(mode="reduce-overhead")
    else:
        model.bert.compile()


def configure_model(method, config, max_seq_length, h_aug=None):
    """The model config as the method builds it from the flags (Gated-BERT: the gate's input length, the rank)."""
    return method.configure(config, max_seq_length, h_aug) if method.configure else config


def check_model_inputs(config, vocab_file, max_seq_length, config_source):
    """What training and prediction both check before building a model: the vocabulary fits the config's embedding
    table and max_seq_length its position table. Returns the vocabulary's size; ValueError (one line) otherwise."""
    vocab_size = len(tokenization.load_vocab(vocab_file))
    if max_seq_length > config.max_position_embeddings:
        raise ValueError(f"--max_seq_length {max_seq_length} is more than the config's max_position_embeddings "
                         f"{config.max_position_embeddings} ({config_source})")
    if vocab_size > config.vocab_size:
        raise ValueError(f"--vocab_file {vocab_file} has {vocab_size} tokens but the config's vocab_size is "
                         f"{config.vocab_size} ({config_source}): they must come from the same model")
    if vocab_size < config.vocab_size:
        logger.warning(f"--vocab_file has {vocab_size} tokens, the config's vocab_size is {config.vocab_size}: the "
                       "extra embedding rows are never used")
    return vocab_size


def read_checkpoint(path):
    """A checkpoint's tensors under our parameter names, the raw key names (their format says where the file comes
    from) and the file read; ValueError/OSError with a one-line message for anything unreadable."""
    raw, path = read_state_dict(path)
    return map_state_dict(raw), list(raw), path


def build_model(method, config, tasks, state=None, source=None, require_all=False, num_groups=None):
    """The method's BertForMultiTask with one head per problem of `tasks` (its width and type) and `num_groups` task
    rows (default one per problem), the mapped `state` (read from `source`) loaded into it. Returns the model and the
    names of the parameters left freshly initialised; ValueError (one line naming the keys and the file) when the
    checkpoint does not fit."""
    model = method.modeling.BertForMultiTask(config, [t.num_labels for t in tasks], [t.type for t in tasks],
                                             num_groups)
    fresh = load_mapped_state(model, state, source, require_all) if state is not None else list(model.state_dict())
    return model, fresh


def model_config_record(config, method_name, tasks, max_seq_length, do_lower_case, groups=None, user_problems=None):
    """config.json: the model config plus what rebuilds the model and its tokenizer from the run directory: the
    problems (Problem objects) in head order, their labels, the groups trained together ("task_groups", names, when
    --tasks joined some with &), and the records of those not predefined (the user's, X_mlm, and the user problems
    whose inputs an X_mlm reads), so that the directory predicts on its own."""
    record = {**config.to_dict(), "model": method_name, "task_names": [t.name for t in tasks],
              "task_labels": {t.name: list(t.labels) if t.labels else None for t in tasks},
              "max_seq_length": max_seq_length, "do_lower_case": do_lower_case}
    if groups is not None:
        record["task_groups"] = groups
    sources = [problems.get_problem(t.inputs_of, user_problems) for t in tasks if t.inputs_of is not None]
    user = {t.name: t.to_record() for t in [*tasks, *sources] if t.name not in problems.PROBLEMS}
    if user:
        record["problems"] = user
    return record


def packed_positions(features, indices):
    """Where the real tokens of the examples at `indices` sit in the features' packed input_ids, in the model's token
    order (row-major: example by example), (N,) int64."""
    starts = features.offsets[indices]
    lengths = features.offsets[indices + 1] - starts
    row_starts = torch.cumsum(lengths, 0) - lengths  # where each example's tokens start among the batch's N
    within = torch.arange(int(lengths.sum())) - torch.repeat_interleave(row_starts, lengths)
    return torch.repeat_interleave(starts, lengths) + within


@torch.no_grad()
def predict(model, features, task_id, batch_size, device, autocast_dtype=None, pad_to=None, desc=None, head=None):
    """Logits of head `head` (default: `task_id`) through task row `task_id`, on the CPU, float32, in the features'
    order: (N, num_labels) for a head on the pooled output, (total tokens, num_labels) in input_ids order for a head
    on the tokens (seq_tag).

    Batches hold examples of similar length (sorted longest first), so padding to the longest costs little.
    """
    head_id = task_id if head is None else head
    per_token = HEAD_INPUTS[model.problem_types[head_id]] == "tokens"
    rows = int(features.offsets[-1]) if per_token else len(features)
    logits_out = torch.empty(rows, model.num_labels_per_task[head_id], device=device)
    for indices, batch, logits in eval_batches(model, features, task_id, batch_size, device, autocast_dtype, pad_to,
                                               desc, head):
        where = packed_positions(features, indices) if per_token else indices
        logits_out[where.to(device)] = logits.float()
    return logits_out.cpu()


def eval_batches(model, features, task_id, batch_size, device, autocast_dtype, pad_to, desc, head, masked=False):
    """The model (in eval mode, restored after) over `features` in batches of similar length (sorted longest first,
    so padding to the longest costs little): yields each batch's example indices, the batch on the device (with
    with_masked_positions when `masked`) and the logits of head `head` (default: `task_id`) through task row
    `task_id`."""
    was_training = model.training
    model.eval()
    order = torch.argsort(features.lengths, descending=True, stable=True)
    for start in tqdm(range(0, len(features), batch_size), desc=desc, leave=False, disable=desc is None):
        indices = order[start:start + batch_size]
        batch = glue_processors.make_batch(features, indices, pad_to=pad_to, pad_multiple=PAD_MULTIPLE)
        batch = to_device(with_masked_positions(batch) if masked else batch, device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits, _ = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], task_id,
                              token_index=batch["token_index"], heads=None if head is None else [head],
                              masked_index=batch.get("masked_index"))
        yield indices, batch, logits if head is None else logits[0]
    model.train(was_training)


def evaluate(model, eval_sets, tasks, batch_size, device, autocast_dtype, pad_to, group_of=None):
    """Metrics on whole dev sets: {problem: {metric: value}} and the mean of the problems' scores (the GLUE score on
    GLUE's tasks). `tasks`: the model's problems (Problem objects) in head order; eval_sets: (name, split, features);
    group_of: each head's task row, when problems were trained in & groups (None: head i is row i)."""
    by_name = {t.name: t for t in tasks}
    scores = {}
    for name, split, features in eval_sets:
        head = list(by_name).index(name)
        task_id, head = (head, None) if group_of is None else (group_of[head], head)
        if by_name[name].type in LM_TYPES:  # dev features masked once (load_data): sums over their masked tokens
            predictions = lm_statistics(model, features, task_id, batch_size, device, autocast_dtype, pad_to,
                                        desc=f"eval {name}", head=head)
        else:
            logits = predict(model, features, task_id, batch_size, device, autocast_dtype, pad_to,
                             desc=f"eval {name}", head=head)
            predictions = problems.predictions_from_logits(by_name[name], logits)
        scores.setdefault(name, {}).update(problems.problem_metrics(by_name[name], split, predictions, features))
    return scores, mean_score(scores, by_name)


LM_STATISTICS = ("masked", "loss", "correct", "pairs", "next_correct")  # lm_statistics' sums, in this order


@torch.no_grad()
def lm_statistics(model, features, task_id, batch_size, device, autocast_dtype=None, pad_to=None, desc=None,
                  head=None):
    """A mask_lm / pretrain problem's sums over masked features (problems.mask_tokens): masked tokens, their summed
    cross-entropy and correct predictions; pretrain also pairs and correct next-sentence predictions. Python numbers,
    from one host sync at the end (problems.problem_metrics turns them into accuracy and perplexity)."""
    pretrain = model.problem_types[task_id if head is None else head] == "pretrain"
    sums = torch.zeros(len(LM_STATISTICS), dtype=torch.float64, device=device)
    for _, batch, logits in eval_batches(model, features, task_id, batch_size, device, autocast_dtype, pad_to, desc,
                                         head, masked=True):
        words, labels = (logits[0] if pretrain else logits).float(), batch["masked_labels"]  # (M, V), (M,)
        batch_sums = [labels.numel(), torch.nn.functional.cross_entropy(words, labels, reduction="sum"),
                      (words.argmax(-1) == labels).sum()]
        if pretrain:
            batch_sums += [len(batch["labels"]), (logits[1].argmax(-1) == batch["labels"]).sum()]
        for i, value in enumerate(batch_sums):
            sums[i] += value
    return dict(zip(LM_STATISTICS, sums.tolist()))


def with_masked_positions(batch):
    """A batch of masked features (problems.mask_tokens): in place of the per-token labels, where the M masked
    tokens sit among the N packed ones, "masked_index" (M,), and their original ids, "masked_labels" (M,); computed
    on the host, so the model needs no sync to find them."""
    token_labels = batch.pop("token_labels")
    batch["masked_index"] = (token_labels != IGNORE_INDEX).nonzero().squeeze(1)
    batch["masked_labels"] = token_labels[batch["masked_index"]]
    return batch


def mean_score(scores, by_name):
    """The mean over problems of each one's score (problems.problem_score): the GLUE score on GLUE's tasks. mask_lm
    and pretrain problems count only when there are no others (then it is minus their mean dev loss)."""
    kept = {t: m for t, m in scores.items() if by_name[t].type not in LM_TYPES} or scores
    return sum(problems.problem_score(by_name[t], m) for t, m in kept.items()) / len(kept)


def format_scores(scores, overall, label="GLUE"):
    parts = [f"{task} " + " ".join(f"{metric} {value:.2f}" for metric, value in metrics.items())
             for task, metrics in scores.items()]
    return " | ".join(parts + [f"{label} {overall:.2f}"])


def overall_label(tasks):
    """What the mean score is called in the log: GLUE when every problem it averages is GLUE's (masked-LM problems,
    left out of the mean, do not count)."""
    scored = [t for t in tasks if t.type not in LM_TYPES] or tasks
    return "GLUE" if all(t.name in glue_processors.TASKS for t in scored) else "mean"


def first_examples(features, count):
    """The first `count` examples of `features` (--max_train_samples, --max_eval_samples); all when fewer."""
    n = len(features)
    if count is None or count >= n:
        return features
    tokens = int(features.offsets[count])
    total = int(features.offsets[-1])
    cut = {}
    for field in dataclasses.fields(features):
        value = getattr(features, field.name)
        if field.name == "offsets":
            cut[field.name] = value[:count + 1]
        elif torch.is_tensor(value) and value.shape[0] == total:  # packed per-token values
            cut[field.name] = value[:tokens]
        elif torch.is_tensor(value) or isinstance(value, list):  # one value per example
            cut[field.name] = value[:count]
        else:
            cut[field.name] = value
    return type(features)(**cut)


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM ask the loop to save a resumable checkpoint and exit at the next step boundary;
    a second Ctrl-C interrupts at once."""

    def __init__(self):
        self.signum = None
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

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


@dataclass
class Run:
    """A training run's processes and resolved settings: what the functions of `main` share."""

    args: argparse.Namespace
    method: Method
    device: torch.device
    rank: int
    world_size: int
    precision: str
    config: object = None  # the method's BertConfig, once checked
    steps_per_epoch: int = 0
    total_steps: int = 0
    num_epochs: int = 0
    micro_batch: int = 0  # examples per micro-batch and process
    resolved: dict = None  # args.json
    user_problems: dict = None  # --problems: name -> Problem
    heads: list = None  # the run's problems (Problem objects), in head order
    groups: list = None  # head indices of each group (--tasks a&b|c: [[0, 1], [2]]): sampled, one task row each
    masking: problems.Masking | None = None  # the vocabulary's special tokens, for mask_lm / pretrain problems
    reporter: object = dataclasses.field(default_factory=reporting.NullReporter)  # --report_to, on rank 0

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def distributed(self):
        return self.world_size > 1

    @property
    def tasks(self):
        return self.args.tasks

    @property
    def output_dir(self):
        return Path(self.args.output_dir)

    @property
    def checkpoint_path(self):
        return self.output_dir / LAST_CHECKPOINT

    @property
    def autocast_dtype(self):
        return AUTOCAST_DTYPES.get(self.precision)

    @property
    def chained(self):
        """Whether --tasks joined problems with &: then groups and heads are numbered apart."""
        return any(len(group) > 1 for group in self.groups)

    @property
    def group_of(self):
        """Each head's group (task row), or None when every group is one problem (head i is row i)."""
        return [g for g, group in enumerate(self.groups) for _ in group] if self.chained else None

    @property
    def group_names(self):
        return [problems.group_name([self.heads[h].name for h in group]) for group in self.groups]

    @property
    def pad_to(self):
        return batch_padding(self.method, self.args.max_seq_length)

    def barrier(self):
        if self.distributed:
            dist.barrier()


@dataclass
class Progress:
    """Where training stands: saved in the checkpoint, restored by --resume."""

    global_step: int = 0
    best_score: float = -math.inf  # of --metric_for_best_model


def start_processes(args, method):
    """Processes (torchrun's environment), device and precision; console logging."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", max(args.local_rank, 0)))
    device = select_device(args.no_cuda, local_rank)
    if world_size > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if world_size > 1 else 0
    setup_logging(rank == 0)
    return Run(args, method, device, rank, world_size, resolve_precision(args.precision, device))


def check_inputs(run):
    """Every check of the flags, data files, config and vocabulary that needs no tokenizing; nothing is written."""
    args, method, output_dir = run.args, run.method, run.output_dir
    if output_dir.is_dir() and any(output_dir.iterdir()) and not args.resume and not args.overwrite_output_dir:
        fail(f"--output_dir {args.output_dir} is not empty: pass --resume to continue that run or "
             "--overwrite_output_dir")
    try:
        reporting.check_report_to(args.report_to)  # an optional package: missing, say so before any work
    except ValueError as err:
        fail(str(err))
    run.user_problems = read_user_problems(args.problems)
    if isinstance(args.tasks, str):
        name_groups = resolve_task_groups(args.tasks, args.task_id, run.user_problems)
        args.tasks = [name for group in name_groups for name in group]  # head order
    else:  # a list of names (an already resolved run): one problem per group
        name_groups = [[name] for name in args.tasks]
    run.heads = [problems.get_problem(t, run.user_problems) for t in args.tasks]
    run.groups = [[args.tasks.index(name) for name in group] for group in name_groups]
    check_best_model_metric(args.metric_for_best_model, run.heads)
    missing = problems.missing_problem_files(args.data_dir, run.tasks,
                                             ["train"] * args.do_train + ["dev"] * args.do_eval, run.user_problems)
    if missing:
        fail(f"--data_dir {args.data_dir} lacks {len(missing)} file(s) for --tasks {','.join(run.tasks)}: "
             f"{', '.join(map(str, missing))}")
    try:
        config = method.modeling.BertConfig.from_json_file(args.bert_config_file)
        config = configure_model(method, config, args.max_seq_length, args.h_aug)
        check_model_inputs(config, args.vocab_file, args.max_seq_length, args.bert_config_file)
        if any(t.type in LM_TYPES for t in run.heads):
            run.masking = problems.Masking.from_vocab(tokenization.load_vocab(args.vocab_file))
    except (OSError, ValueError) as err:
        fail(str(err))
    if method.name == "embert" and not _declares_our_attn(args.bert_config_file):
        logger.warning(f"--bert_config_file {args.bert_config_file} does not set our_attn: training the shared "
                       "encoder (multi-task BERT without task embeddings); add \"our_attn\": true for EmBERT")
    run.config = config
    run.steps_per_epoch = args.steps_per_epoch or STEPS_PER_TASK_PER_EPOCH * len(run.groups)
    run.total_steps = args.max_steps or max(1, int(args.num_train_epochs * run.steps_per_epoch))
    run.num_epochs = math.ceil(run.total_steps / run.steps_per_epoch)
    run.micro_batch, remainder = divmod(args.train_batch_size, args.gradient_accumulation_steps * run.world_size)
    if remainder or run.micro_batch == 0:
        fail(f"--train_batch_size {args.train_batch_size} must be a multiple of --gradient_accumulation_steps "
             f"{args.gradient_accumulation_steps} x {run.world_size} process(es)")
    if args.warmup_steps is not None and args.warmup_steps >= run.total_steps:
        fail(f"--warmup_steps {args.warmup_steps} must be fewer than the run's {run.total_steps} steps")
    run.resolved = {**absolute_paths(args), "steps_per_epoch": run.steps_per_epoch, "total_steps": run.total_steps,
                    "num_epochs": run.num_epochs, "precision": run.precision, "world_size": run.world_size,
                    "method": method.name, "model_trained": model_description(method, config)}
    if run.chained:
        run.resolved["task_groups"] = name_groups


def _declares_our_attn(config_file):
    return "our_attn" in json.loads(Path(config_file).read_text(encoding="utf-8"))


def model_description(method, config):
    """What a run trains, in words: the method, or the shared encoder for EmBERT's script without our_attn."""
    return "shared encoder" if method.name == "embert" and not config.our_attn else method.name


def load_data(run):
    """Training and dev features (tokenized once, cached on disk); rank 0 builds the cache, the others read it."""
    args = run.args

    def features(task, split, limit):
        try:
            data = problems.load_problem_features(task, split, args.data_dir, args.vocab_file, args.do_lower_case,
                                                  args.max_seq_length, cache_dir=args.cache_dir,
                                                  num_workers=args.num_workers, user_problems=run.user_problems)
        except (OSError, ValueError) as err:  # a malformed file: its name and line are in the message
            fail(str(err))
        data = first_examples(data, limit)
        if task.type in LM_TYPES:
            if not problems.maskable(data, run.masking).any():
                fail(f"{problems.problem_file(args.data_dir, task, split)}: {task.name} {split} has no word piece to "
                     "mask (only [CLS] and [SEP] after tokenizing)")
            if split != "train":
                data = problems.mask_tokens(data, run.masking, problems.seeded_generator(DEV_MASKING_SEED))
        return data

    if run.distributed and not run.is_main:
        dist.barrier()
    train_sets = [features(t, "train", args.max_train_samples) for t in run.heads] if args.do_train else []
    eval_sets = [(t.name, s, features(t, s, args.max_eval_samples))
                 for t in run.heads for s in t.dev_splits] if args.do_eval else []
    if run.distributed and run.is_main:
        dist.barrier()
    if args.do_train:
        check_same_inputs(run, train_sets)
    return train_sets, eval_sets


def check_same_inputs(run, train_sets):
    """Problems joined by & train on one batch: their training examples must be the same, in the same order (the
    tokenized ids are compared); a one-line error names the first example that differs."""
    for group in run.groups:
        first = train_sets[group[0]]
        for other in group[1:]:
            data = train_sets[other]
            same = len(data) == len(first) and all(torch.equal(getattr(data, name), getattr(first, name))
                                                   for name in ("offsets", "input_ids", "segment_a_len"))
            if same:
                continue
            count = min(len(data), len(first))
            differs = next((i for i in range(count)
                            if not torch.equal(first.input_ids[first.offsets[i]:first.offsets[i + 1]],
                                               data.input_ids[data.offsets[i]:data.offsets[i + 1]])
                            or first.segment_a_len[i] != data.segment_a_len[i]), count)
            fail(f"--tasks: {run.heads[group[0]].name} & {run.heads[other].name} must have the same inputs, but "
                 f"their training examples differ from example {differs} on ({len(first)} and {len(data)} "
                 "examples); train them in separate groups with | instead")


def load_model(run):
    """The method's model with the run's heads, from --init_checkpoint (every encoder weight must be there; without
    --do_train every parameter)."""
    args = run.args
    state = source = None
    if args.init_checkpoint:
        try:
            state, _, source = read_checkpoint(args.init_checkpoint)
        except (OSError, ValueError) as err:
            fail(f"--init_checkpoint: {err}")
    torch.manual_seed(args.seed)
    try:
        # Evaluating without training needs a trained model: every task parameter must come from the file.
        model, fresh = build_model(run.method, run.config, run.heads, state, source, require_all=not args.do_train,
                                   num_groups=len(run.groups))
    except ValueError as err:
        fail(f"--init_checkpoint: {err}")
    if args.freeze:
        for name, p in model.named_parameters():
            p.requires_grad_(not BERT_PARAMETER.fullmatch(name))
    return model, fresh


def read_resume_state(run):
    """The checkpoint --resume continues from (None to start afresh), checked against the flags; nothing written."""
    if not (run.args.resume and run.checkpoint_path.is_file()):
        return None
    previous_args = run.output_dir / ARGS_FILE
    try:
        previous = json.loads(previous_args.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        fail(f"--resume: cannot read {previous_args} ({err}); start afresh with --overwrite_output_dir")
    changed = [f"--{k} (was {previous[k]!r}, now {run.resolved[k]!r})"
               for k in RESUME_INVARIANTS if k in previous and previous[k] != run.resolved[k]]
    if previous.get("task_groups") != run.resolved.get("task_groups"):
        changed.append(f"--tasks (groups were {previous.get('task_groups')}, now {run.resolved.get('task_groups')})")
    if changed:
        fail(f"--resume must repeat the interrupted run's settings; changed: {', '.join(changed)}")
    try:
        return modeling.load_torch_file(run.checkpoint_path, weights_only=False)
    except (OSError, ValueError) as err:
        fail(f"--resume: {err}; start afresh with --overwrite_output_dir")


def prepare_output_dir(run, resuming):
    """From here on the run writes files: its directory, train.log, and (afresh) args.json, config.json, vocab.txt,
    after the previous run's files are removed. Leftovers of a write that was killed are removed either way."""
    output_dir = run.output_dir
    if run.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        for stale in output_dir.glob(".*.tmp"):
            stale.unlink()
        if not resuming:
            remove_run_files(output_dir)
        attach_log_file(output_dir / TEXT_LOG)
        if not resuming:
            save_json(run.resolved, output_dir / ARGS_FILE)
            save_json(model_config_record(run.config, run.method.name, run.heads, run.args.max_seq_length,
                                          run.args.do_lower_case, run.resolved.get("task_groups"), run.user_problems),
                      output_dir / CONFIG_FILE)
            shutil.copyfile(run.args.vocab_file, output_dir / VOCAB_FILE)
    run.barrier()


def remove_run_files(output_dir):
    """The files a training run writes (RUN_FILES, RUN_FILE_PATTERNS, REPORT_DIR), and nothing else the folder
    holds."""
    for name in RUN_FILES:
        (output_dir / name).unlink(missing_ok=True)
    for pattern in RUN_FILE_PATTERNS:
        for path in output_dir.glob(pattern):
            path.unlink()
    shutil.rmtree(output_dir / REPORT_DIR, ignore_errors=True)  # the event files of --report_to


def restore(run, state, model, optimizer, scheduler, scaler, sampler, progress):
    """Continue from a checkpoint: weights, optimizer, schedule, sampler, step and the dropout random streams."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    sampler.load_state_dict(state["sampler"])
    progress.global_step, progress.best_score = state["global_step"], state["best_score"]
    if len(state["rng"]) == run.world_size:  # the dropout streams continue exactly
        torch.set_rng_state(state["rng"][run.rank]["cpu"])
        if run.device.type == "cuda" and state["rng"][run.rank]["cuda"] is not None:
            torch.cuda.set_rng_state(state["rng"][run.rank]["cuda"])
    else:
        logger.warning(f"resuming {len(state['rng'])} process(es)' run with {run.world_size}: same data and tasks, "
                       "new dropout random streams")
    if run.is_main:
        truncate_jsonl(run.output_dir / TRAIN_LOG, progress.global_step)
        truncate_jsonl(run.output_dir / EVAL_LOG, progress.global_step)
    logger.info(f"resumed from {run.checkpoint_path} at step {progress.global_step}")


def save_checkpoint(run, model, optimizer, scheduler, scaler, sampler, progress):
    """The resumable state of every rank (RNG states differ per rank), written by rank 0."""
    rng = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if run.device.type == "cuda" else None}
    rngs = [None] * run.world_size
    if run.distributed:
        dist.all_gather_object(rngs, rng)
    else:
        rngs = [rng]
    if run.is_main:
        save_torch({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                    "sampler": sampler.state_dict(), "rng": rngs, "global_step": progress.global_step,
                    "best_score": progress.best_score, "args": run.resolved}, run.checkpoint_path)


def best_model_score(scores, overall, name, by_name):
    """The value --metric_for_best_model names in one evaluation's scores (higher is better: a perplexity counts
    negated)."""
    if name == MEAN_SCORE:
        return overall
    task, _, metric = name.partition("/")
    if not metric:
        return problems.problem_score(by_name[task], scores[task])
    return -scores[task][metric] if metric in problems.LOWER_IS_BETTER else scores[task][metric]


def run_evaluation(run, model, eval_sets, progress, epoch):
    """Evaluate on rank 0, log, keep the best model; the other ranks wait."""
    if run.is_main:
        by_name = {t.name: t for t in run.heads}
        scores, overall = evaluate(model, eval_sets, run.heads, run.args.eval_batch_size, run.device,
                                   run.autocast_dtype, run.pad_to, run.group_of)
        score = best_model_score(scores, overall, run.args.metric_for_best_model, by_name)
        is_best = score > progress.best_score
        # "glue_score": the mean score, under the name GLUE runs have always written.
        append_jsonl(run.output_dir / EVAL_LOG, {
            "epoch": epoch, "global_step": progress.global_step, "scores": scores, "glue_score": overall,
            "task_scores": {t: problems.problem_score(by_name[t], m) for t, m in scores.items()}, "best": is_best})
        where = f"epoch {epoch + 1} step {progress.global_step}" if epoch is not None else run.args.init_checkpoint
        logger.info(f"dev, {where}: {format_scores(scores, overall, overall_label(run.heads))}")
        run.reporter.dev(progress.global_step, scores, overall)
        if is_best and run.args.do_train:
            progress.best_score = score
            save_torch(model.state_dict(), run.output_dir / BEST_MODEL)
    run.barrier()


def training_step(net, model, batches, task_id, optimizer, scheduler, scaler, autocast_dtype=None, frozen=(),
                  heads=None, loss_weights=None, denominators=None):
    """One optimizer step of one task: forward and backward over its micro-batches (make_batch dicts on the model's
    device; the gradient is their mean, times the problem's loss_weight, `loss_weights` (1,) on the device), the
    `frozen` parameters' gradients dropped (no update at all: the optimizers skip parameters without one), unscale
    (fp16), clip, update, schedule. Returns the mean loss as a device tensor
    (no host sync). `net` is the model or its DistributedDataParallel wrapper, which syncs on the last micro-batch.

    An & group: `heads` (head indices) read one encoder pass of task row `task_id`, each batch holds their labels
    as "group_labels", and the step's loss is the sum of their losses times `loss_weights` ((len(heads),) on the
    device); returns each head's mean loss, (len(heads),). `denominators`: the per-token losses' (token_denominators;
    one per head in a group); None: each micro-batch's mean."""
    device_type = next(model.parameters()).device.type
    total = 0.0
    for i, batch in enumerate(batches):
        skip_sync = isinstance(net, DistributedDataParallel) and i < len(batches) - 1
        with (net.no_sync() if skip_sync else contextlib.nullcontext()), \
                torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            if heads is None:
                _, loss = net(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], task_id,
                              batch_labels(batch), token_index=batch["token_index"],
                              masked_index=batch.get("masked_index"), denominators=denominators)
                tallied = loss / len(batches)
                loss = tallied if loss_weights is None else tallied * loss_weights[0]  # x 1.0 is exact
            else:
                _, losses = net(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], task_id,
                                batch["group_labels"], token_index=batch["token_index"], heads=heads,
                                masked_index=batch.get("masked_index"), denominators=denominators)
                tallied = torch.stack(losses) / len(batches)  # (k,)
                loss = (tallied * loss_weights).sum()
        scaler.scale(loss).backward()
        total = total + tallied.detach()
    for p in frozen:
        p.grad = None
    scaler.unscale_(optimizer)
    optimization.clip_gradients(model, optimizer)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return total


def training_batch(run, train_sets, heads, indices, masking_seeds):
    """This process's micro-batch, on the device, of the group `heads`: its slice of the `indices` every process drew
    (N processes train on what one would). A mask_lm / pretrain problem's drawn examples are masked together, by a
    generator seeded with `masking_seeds` (seed, step, micro-batch): the same masks with any number of processes,
    and again after --resume.

    Also returns, per head, how many labelled tokens all processes' examples hold (None for a per-example head): what
    token_denominators needs, known here on the host with no communication."""
    data, problem = train_sets[heads[0]], run.heads[heads[0]]
    mine = slice(run.rank * run.micro_batch, (run.rank + 1) * run.micro_batch)
    if problem.type in LM_TYPES:  # a group of its own (problems.resolve_groups)
        drawn = problems.mask_tokens(take_examples(data, indices), run.masking,
                                     problems.seeded_generator(*masking_seeds))
        batch = to_device(with_masked_positions(glue_processors.make_batch(
            drawn, torch.arange(len(indices))[mine], pad_to=run.pad_to, pad_multiple=PAD_MULTIPLE)), run.device)
        if run.chained:
            batch["group_labels"] = [batch_labels(batch)]
        return batch, [int((drawn.token_labels != IGNORE_INDEX).sum())]
    batch = glue_processors.make_batch(data, indices[mine], pad_to=run.pad_to, pad_multiple=PAD_MULTIPLE)
    if run.chained:  # the same inputs (check_same_inputs): only the labels differ
        batch["group_labels"] = [example_labels(train_sets[h], indices[mine]) for h in heads]
    counts = [None if train_sets[h].token_labels is None
              else int((example_labels(train_sets[h], indices) != IGNORE_INDEX).sum()) for h in heads]
    return to_device(batch, run.device), counts


def token_denominators(counts, world_size):
    """Per head, what each micro-batch's per-token loss divides its sum by: the step's labelled tokens (over every
    micro-batch and process) per micro-batch and process, so that the gradient, averaged over micro-batches
    (training_step) and processes (DistributedDataParallel), is that of the mean over all the step's tokens: N
    processes or K micro-batches train exactly as one batch. None for a per-example head (a plain mean). counts: per
    micro-batch, training_batch's per-head counts."""
    shares = len(counts) * world_size
    return [None if column[0] is None else max(sum(column), 1) / shares for column in zip(*counts)]


def take_examples(features, indices):
    """The examples at `indices` as Features of their own: ids, segments and per-example labels (what masking and
    make_batch read)."""
    lengths = features.lengths[indices]
    offsets = torch.zeros(len(indices) + 1, dtype=torch.int64)
    torch.cumsum(lengths, 0, out=offsets[1:])
    return glue_processors.Features(input_ids=features.input_ids[packed_positions(features, indices)],
                                    offsets=offsets, segment_a_len=features.segment_a_len[indices],
                                    labels=None if features.labels is None else features.labels[indices])


def example_labels(features, indices):
    """A problem's labels of the examples at `indices`, as make_batch gives them: per example, or per real token
    (seq_tag), packed in the model's token order."""
    if features.labels is not None:
        return features.labels[indices]
    return features.token_labels[packed_positions(features, indices)]


def batch_labels(batch):
    """What the head's loss compares with: per-example labels, or per-token ones (seq_tag: make_batch's
    token_labels, packed as the model's tokens); mask_lm the masked tokens' ids, pretrain those and the
    next-sentence labels (with_masked_positions)."""
    if "masked_labels" in batch:
        return batch["masked_labels"] if "labels" not in batch else (batch["masked_labels"], batch["labels"])
    return batch["labels"] if "labels" in batch else batch["token_labels"]


@dataclass
class LossTally:
    """Per-task loss sums and step counts since the last log flush, kept on the device (no host sync per step); a NaN
    or inf loss makes its task's sum non-finite, so the sums double as the divergence check. The last entry carries
    the stop request (a signal number) through the all-reduce, so that every rank agrees to stop."""

    sums: torch.Tensor  # (num_tasks + 1,)
    steps: list

    @classmethod
    def zeros(cls, num_tasks, device):
        return cls(torch.zeros(num_tasks + 1, device=device), [0] * num_tasks)

    def add(self, heads, losses):
        """losses: (len(heads),) or a 0-dim tensor for one head, as training_step returns. One plain index per head:
        indexing with a list would copy it to the device every step."""
        for i, head in enumerate(heads):
            self.sums[head] += losses if losses.ndim == 0 else losses[i]
            self.steps[head] += 1


def flush_log(run, tally, stop, scheduler, progress, epoch, bar):
    """Write a train_log.jsonl line per task trained since the last flush, show the losses on the progress bar, and
    return whether to stop. The loop's only host sync and, with several processes, its only all-reduce."""
    tally.sums[-1] = float(stop.signum or 0)
    if run.distributed:
        dist.all_reduce(tally.sums)
    *sums, stop_votes = tally.sums.tolist()
    if not all(math.isfinite(s) for s in sums):
        fail(f"the training loss became NaN or infinite at or before step {progress.global_step}; the last good "
             f"checkpoint is {run.checkpoint_path}. Lower --learning_rate or try --precision fp32")
    lr = scheduler.get_last_lr()[0]
    losses = {task: sums[t] / run.world_size / tally.steps[t] for t, task in enumerate(run.tasks) if tally.steps[t]}
    if run.is_main:
        for t, task in enumerate(run.tasks):
            if tally.steps[t]:
                append_jsonl(run.output_dir / TRAIN_LOG, {"global_step": progress.global_step, "epoch": epoch,
                                                          "task": task, "loss": losses[task],
                                                          "steps": tally.steps[t], "lr": lr})
        bar.set_postfix_str(" ".join(f"{task} {loss:.3f}" for task, loss in losses.items()) + f" lr {lr:.2e}")
        run.reporter.train(progress.global_step, losses, lr)
    tally.sums.zero_()
    tally.steps[:] = [0] * len(tally.steps)
    return stop_votes > 0


def main(args, method):
    # ---------------------------------------------------------------- every input checked before anything is written
    run = start_processes(args, method)
    check_inputs(run)
    train_sets, eval_sets = load_data(run)
    model, fresh = load_model(run)
    resume_state = read_resume_state(run)

    # ---------------------------------------------------------------- output directory, model on the device
    prepare_output_dir(run, resuming=resume_state is not None)
    if args.init_checkpoint:
        logger.info(f"loaded {args.init_checkpoint}; {len(fresh)} task parameter tensor(s) start fresh")
    else:
        logger.warning("no --init_checkpoint: the encoder starts from random weights")
    model.to(run.device)
    if not args.do_train:
        logger.info(f"{run.resolved['model_trained']}: evaluating {args.init_checkpoint or 'the untrained model'} on "
                    f"the dev sets of {','.join(run.tasks)} | {run.device.type} {run.precision}")
        run_evaluation(run, model, eval_sets, Progress(), epoch=None)
        return finish(run)
    for task, data in zip(run.tasks, train_sets):
        logger.info(f"{task}: {len(data)} training examples")
    logger.info(f"{run.resolved['model_trained']}: tasks {'|'.join(run.group_names)} | {run.device.type} "
                f"{run.precision} | "
                f"{run.world_size} process(es) | {run.num_epochs} epoch(s) x {run.steps_per_epoch} steps "
                f"({run.total_steps} in all), batch {args.train_batch_size}")
    if args.compile:
        compile_encoder(model, run.device, cuda_graphs=args.gradient_accumulation_steps == 1)
        if run.device.type == "cuda" and args.gradient_accumulation_steps > 1:
            logger.warning("--compile with --gradient_accumulation_steps above 1: compiled without CUDA graphs, "
                           "which would overwrite the gradients accumulated between micro-batches")
    net = DistributedDataParallel(model, device_ids=[run.device.index] if run.device.type == "cuda" else None,
                                  find_unused_parameters=True) if run.distributed else model  # other tasks' heads idle

    # ---------------------------------------------------------------- optimizer, schedule, sampler, resume
    optimizer = optimization.build_optimizer(model, args.optimizer, args.learning_rate, args.weight_decay,
                                             device_type=run.device.type)
    warmup = args.warmup_proportion if args.warmup_steps is None else args.warmup_steps / run.total_steps
    scheduler = optimization.linear_warmup_decay(optimizer, run.total_steps, warmup)
    scaler = torch.amp.GradScaler(run.device.type, enabled=run.precision == "fp16")
    sampler = TaskSampler([len(train_sets[group[0]]) for group in run.groups], args.sample, run.steps_per_epoch,
                          run.num_epochs, args.seed, method.anneal_alpha)
    progress = Progress()
    torch.manual_seed(args.seed + run.rank)  # dropout differs between ranks, as between the examples of one batch
    if resume_state is not None:
        restore(run, resume_state, model, optimizer, scheduler, scaler, sampler, progress)
    checkpoint = lambda: save_checkpoint(run, model, optimizer, scheduler, scaler, sampler, progress)  # noqa: E731
    if run.is_main:
        run.reporter = reporting.open_reporter(args.report_to, run.output_dir / REPORT_DIR,
                                               resume_step=progress.global_step if resume_state else None)
    if progress.global_step >= run.total_steps:  # a finished run resumed: nothing to train, nothing to evaluate again
        logger.info(f"the run already finished at step {progress.global_step}")
        return finish(run)

    # ---------------------------------------------------------------- training loop
    stop = StopRequest()
    tally = LossTally.zeros(len(run.tasks), run.device)
    # Each group's loss_weights, on the device once (a tensor built in the step would be a host-to-device copy).
    group_weights = [torch.tensor([run.heads[h].loss_weight for h in group], device=run.device)
                     for group in run.groups]
    micro_batches = args.gradient_accumulation_steps
    model.train()
    stopping = False
    try:
        for epoch in range(progress.global_step // run.steps_per_epoch, run.num_epochs):
            schedule = sampler.tasks_for_epoch(epoch).tolist()
            epoch_steps = min(run.steps_per_epoch, run.total_steps - epoch * run.steps_per_epoch)
            first_step = progress.global_step - epoch * run.steps_per_epoch
            if first_step == 0 and run.is_main:
                counts = {name: schedule[:epoch_steps].count(g) for g, name in enumerate(run.group_names)}
                append_jsonl(run.output_dir / TRAIN_LOG, {"global_step": progress.global_step, "epoch": epoch,
                                                          "task_counts": counts, "alpha": sampler.alpha(epoch)})
                run.reporter.epoch(progress.global_step, sampler.alpha(epoch),
                                   {name: count / epoch_steps for name, count in counts.items()})
            with tqdm(total=epoch_steps, initial=first_step, desc=f"epoch {epoch + 1}/{run.num_epochs}",
                      disable=not run.is_main) as bar:
                for i in range(first_step, epoch_steps):
                    group = schedule[i]  # one task row; its problems' heads
                    heads = run.groups[group]
                    draws = [training_batch(run, train_sets, heads,
                                            sampler.next_indices(group, run.micro_batch * run.world_size),
                                            masking_seeds=(args.seed, progress.global_step, micro))
                             for micro in range(micro_batches)]
                    batches = [batch for batch, _ in draws]
                    frozen = method.frozen_parameters(model, group, epoch) if method.frozen_parameters else ()
                    denominators = token_denominators([counts for _, counts in draws], run.world_size)
                    tally.add(heads, training_step(net, model, batches, group, optimizer, scheduler, scaler,
                                                   run.autocast_dtype, frozen, heads if run.chained else None,
                                                   group_weights[group],
                                                   denominators if run.chained else denominators[0]))
                    progress.global_step += 1
                    bar.update()
                    end_of_epoch = i == epoch_steps - 1
                    # One process stops at once; several agree at the next log flush (at most --log_steps later).
                    if progress.global_step % args.log_steps == 0 or end_of_epoch or (
                            stop.requested and not run.distributed):
                        stopping = flush_log(run, tally, stop, scheduler, progress, epoch, bar)
                    if end_of_epoch:
                        break
                    if args.do_eval and args.eval_steps and progress.global_step % args.eval_steps == 0:
                        run_evaluation(run, model, eval_sets, progress, epoch)
                    if stopping or (args.save_checkpoints_steps and
                                    progress.global_step % args.save_checkpoints_steps == 0):
                        checkpoint()
                    if stopping:
                        break
            if stopping and not end_of_epoch:
                break
            if args.do_eval:
                run_evaluation(run, model, eval_sets, progress, epoch)
            elif run.is_main:  # without evaluation the "best" model is the latest one
                save_torch(model.state_dict(), run.output_dir / BEST_MODEL)
            if method.checkpoint_every_epoch and run.is_main:
                save_torch(model.state_dict(), run.output_dir / EPOCH_MODEL.format(epoch))
            checkpoint()
            if stopping:
                break
    finally:
        stop.restore()
    if stopping:
        logger.info(f"saved {run.checkpoint_path} at step {progress.global_step}; continue with --resume")
        finish(run)
        raise SystemExit(stop.exit_status())
    best = overall_label(run.heads) if args.metric_for_best_model == MEAN_SCORE else args.metric_for_best_model
    lower_is_better = args.metric_for_best_model.partition("/")[2] in problems.LOWER_IS_BETTER
    logger.info(f"done: {progress.global_step} steps" +  # best_score holds a perplexity negated (best_model_score)
                (f"; best dev {best} {-progress.best_score if lower_is_better else progress.best_score:.2f}"
                 if args.do_eval else ""))
    return finish(run)


def finish(run):
    run.reporter.close()
    if run.distributed:
        dist.destroy_process_group()
