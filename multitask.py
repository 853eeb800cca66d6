"""The multi-task GLUE training loop shared by run_multi_task.py (EmBERT) and run_multi_task_gated.py (Gated-BERT),
and what the prediction script must do the same way (rebuilding a run's model, predicting a split).

The two training scripts differ only in their `Method`: the model module they build, how the task-sampling exponent
anneals, which parameters each phase freezes, and whether batches pad to max_seq_length. `main` reads top to bottom:
set-up, data, model, optimizer, resume, loop (sample a task, step, log), evaluation, checkpoints.

Files written to --output_dir (rank 0 only, every write atomic):
  args.json            every resolved argument
  config.json          the model config, plus the model type, task names and label lists (rebuilds the model)
  vocab.txt            a copy of --vocab_file, so the directory predicts on its own
  train.log            what the console shows, as plain text
  train_log.jsonl      per logging interval and task: global_step, epoch, task, loss, lr, steps; per epoch:
                       task_counts (batches drawn per task) and alpha
  eval_results.jsonl   per evaluation: epoch, global_step, scores {task: {metric: value}}, task_scores, glue_score
  best_model.pth       state dict of the model with the best dev GLUE score (the final model without --do_eval)
  last_checkpoint.pth  model, optimizer, scheduler, sampler, RNG states and step: --resume continues from it
"""
import argparse
import contextlib
import dataclasses
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
import optimization
import tokenization
from glue_processors import TASKS
from modeling import BERT_PARAMETER, load_pretrained

# The BERT-and-PALs recipe (SPEC 6.2): an "epoch" is 300 optimizer steps per task.
STEPS_PER_TASK_PER_EPOCH = 300
# Annealed sampling: p_t proportional to N_t^alpha, alpha from ALPHA_START down to ALPHA_END (PALs paper).
ALPHA_START, ALPHA_END = 1.0, 0.2
SAMPLE_EXPONENTS = {"prop": 1.0, "sqrt": 0.5}
SAMPLE_MODES = ("anneal", "prop", "sqrt", "rr")
# Batches pad to the longest sequence rounded up to this multiple: masked padding changes no result, and few
# distinct shapes keep tensor cores busy and torch.compile's recompilations bounded.
PAD_MULTIPLE = 8
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Output file names (module docstring).
ARGS_FILE, CONFIG_FILE, VOCAB_FILE = "args.json", "config.json", "vocab.txt"
TEXT_LOG, TRAIN_LOG, EVAL_LOG = "train.log", "train_log.jsonl", "eval_results.jsonl"
BEST_MODEL, LAST_CHECKPOINT = "best_model.pth", "last_checkpoint.pth"
# Arguments a resumed run must share with the run it continues.
RESUME_INVARIANTS = ("tasks", "sample", "seed", "train_batch_size", "gradient_accumulation_steps", "learning_rate",
                     "num_train_epochs", "steps_per_epoch", "warmup_proportion", "optimizer", "max_seq_length",
                     "bert_config_file", "h_aug", "freeze")

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


def parse_args(description, argv=None):
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Data and tasks.
    parser.add_argument("--data_dir", required=True, help="GLUE data directory (glue_data layout: CoLA/, MRPC/, ...)")
    parser.add_argument("--tasks", default="all",
                        help="'all' (cola,mrpc,mnli,rte,sts,sst,qqp,qnli), 'inf' (qnli,mnli,rte), 'single' "
                             "(with --task_id) or a comma list of task names")
    parser.add_argument("--task_id", type=int, default=None, help="index into the 'all' order for --tasks single")
    parser.add_argument("--vocab_file", required=True, help="BERT vocab.txt the model was pre-trained with")
    parser.add_argument("--do_lower_case", action="store_true", help="lower-case and strip accents (uncased models)")
    parser.add_argument("--max_seq_length", type=int, default=128,
                        help="longest sequence after WordPiece; longer pairs are truncated longest-first")
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
                        help="Gated-BERT: rank of the query/key adapters (default: the config's hidden_size_aug, "
                             "else 204); ignored by EmBERT")
    parser.add_argument("--multi", action="store_true",
                        help="the original's multi-task switch; training here is always multi-task over --tasks")
    parser.add_argument("--freeze", action="store_true",
                        help="freeze the pretrained BERT weights; train only task embeddings, adapters and heads")
    # Training.
    parser.add_argument("--output_dir", required=True, help="where logs, checkpoints and the best model go")
    parser.add_argument("--do_train", action="store_true", help="train")
    parser.add_argument("--do_eval", action="store_true", help="evaluate on every task's dev set after each epoch")
    parser.add_argument("--sample", default="rr", choices=SAMPLE_MODES,
                        help="task sampling: anneal (p ~ N^alpha, alpha 1 -> 0.2), prop (p ~ N), sqrt "
                             "(p ~ sqrt N) or rr (round robin)")
    parser.add_argument("--train_batch_size", type=int, default=32,
                        help="examples per optimizer step, over all accumulation steps and processes")
    parser.add_argument("--eval_batch_size", type=int, default=8, help="examples per evaluation batch")
    parser.add_argument("--learning_rate", type=float, default=5e-5, help="peak learning rate")
    parser.add_argument("--num_train_epochs", type=float, default=3.0,
                        help="epochs of --steps_per_epoch optimizer steps (fractions allowed)")
    parser.add_argument("--steps_per_epoch", type=int, default=None,
                        help=f"optimizer steps per epoch (default {STEPS_PER_TASK_PER_EPOCH} x number of tasks)")
    parser.add_argument("--warmup_proportion", type=float, default=0.1,
                        help="fraction of all steps with linear warm-up of the learning rate")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1,
                        help="micro-batches per optimizer step (one task per step)")
    parser.add_argument("--optimizer", "--optim", dest="optimizer", default="adamw", choices=optimization.OPTIMIZERS,
                        help="adamw (torch.optim.AdamW, global clipping) or bertadam (the original update exactly)")
    parser.add_argument("--seed", type=int, default=42, help="seeds initialisation, sampling and dropout")
    parser.add_argument("--save_checkpoints_steps", type=int, default=None,
                        help="also write the resumable checkpoint every this many steps (it is always written at "
                             "the end of each epoch and on Ctrl-C)")
    parser.add_argument("--log_steps", type=int, default=50, help="optimizer steps per train_log.jsonl interval")
    parser.add_argument("--resume", action="store_true",
                        help=f"continue from --output_dir/{LAST_CHECKPOINT} (start fresh if there is none)")
    parser.add_argument("--overwrite_output_dir", action="store_true", help="allow a non-empty --output_dir")
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
    for flag in ("steps_per_epoch", "save_checkpoints_steps", "h_aug"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.num_train_epochs <= 0:
        parser.error(f"--num_train_epochs must be positive, got {args.num_train_epochs}")
    if not 0 <= args.warmup_proportion < 1:
        parser.error(f"--warmup_proportion must be in [0, 1), got {args.warmup_proportion}")
    if not (args.do_train or args.do_eval):
        parser.error("nothing to do: give --do_train, --do_eval or both")
    try:
        args.tasks = glue_processors.resolve_tasks(args.tasks, args.task_id)
    except ValueError as err:
        parser.error(f"--tasks: {err}")
    return args


class TaskSampler:
    """Which task each optimizer step trains, and which examples each batch holds (SPEC 6.2).

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


def setup_logging(output_dir, is_main):
    """Console (through tqdm, so progress bars stay intact) and train.log; silent on ranks other than 0."""
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    formatter = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")

    class TqdmHandler(logging.Handler):
        def emit(self, record):
            tqdm.write(self.format(record), file=sys.stderr)

    handlers = [TqdmHandler()]
    if is_main:
        handlers.append(logging.FileHandler(output_dir / TEXT_LOG, encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)


def fail(message):
    """Stop with a one-line error (no traceback): the message says what to change."""
    raise SystemExit(f"error: {message}")


def write_atomic(path, write):
    """Write through a temporary file in the same directory, then rename: a crash never leaves a torn file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def cpu_copy(obj):
    """`obj` with every tensor in its dicts, lists and tuples on the CPU: files written from a GPU run then load on
    any machine without map_location."""
    if torch.is_tensor(obj):
        return obj.cpu()
    if isinstance(obj, dict):
        copied = type(obj)((k, cpu_copy(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):  # a state dict's per-module versions, which load_state_dict reads
            copied._metadata = obj._metadata
        return copied
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v) for v in obj)
    return obj


def save_torch(obj, path):
    obj = cpu_copy(obj)
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def save_json(obj, path):
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


def append_jsonl(path, record):
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def truncate_jsonl(path, global_step):
    """Drop records written after `global_step` (by a run that crashed past its last checkpoint)."""
    if path.exists():
        lines = [line for line in path.read_text().splitlines() if json.loads(line)["global_step"] <= global_step]
        write_atomic(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in lines)))


def resolve_precision(name, device):
    if name == "auto":
        # Native bf16 only (Ampere and newer): a V100 emulates it, slower than fp32.
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    return name


def to_device(batch, device):
    """Pinned host memory and non-blocking copies on CUDA: the copy overlaps the previous step's kernels."""
    if device.type != "cuda":
        return batch
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}


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


def model_config_record(config, method_name, tasks, max_seq_length, do_lower_case):
    """config.json: the model config plus what rebuilds the model and its tokenizer from the run directory."""
    return {**config.to_dict(), "model": method_name, "task_names": list(tasks),
            "task_labels": {t: list(TASKS[t].labels) if TASKS[t].labels else None for t in tasks},
            "max_seq_length": max_seq_length, "do_lower_case": do_lower_case}


@torch.no_grad()
def predict(model, features, task_id, batch_size, device, autocast_dtype=None, pad_to=None, desc=None):
    """Logits (N, num_labels) float32 on the CPU, in the features' order.

    Batches hold examples of similar length (sorted longest first), so padding to the longest costs little.
    """
    was_training = model.training
    model.eval()
    order = torch.argsort(features.lengths, descending=True, stable=True)
    logits_out = torch.empty(len(features), model.num_labels_per_task[task_id], device=device)
    order_on_device = order.to(device)
    for start in tqdm(range(0, len(features), batch_size), desc=desc, leave=False, disable=desc is None):
        batch = to_device(glue_processors.make_batch(features, order[start:start + batch_size], pad_to=pad_to,
                                                     pad_multiple=PAD_MULTIPLE), device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits, _ = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], task_id,
                              token_index=batch["token_index"])
        logits_out[order_on_device[start:start + batch_size]] = logits.float()
    model.train(was_training)
    return logits_out.cpu()


def logits_to_predictions(task, logits):
    """Class indices, or the regression output (STS-B: score / 5)."""
    return logits[:, 0] if TASKS[task].is_regression else logits.argmax(-1)


def evaluate(model, eval_sets, tasks, batch_size, device, autocast_dtype, pad_to):
    """Official GLUE metrics on whole dev sets: {task: {metric: value}} and the GLUE score (mean of task means)."""
    scores = {}
    for task, split, features in eval_sets:
        task_id = tasks.index(task)
        logits = predict(model, features, task_id, batch_size, device, autocast_dtype, pad_to, desc=f"eval {task}")
        metrics = glue_processors.compute_metrics(task, split, logits_to_predictions(task, logits), features.labels)
        scores.setdefault(task, {}).update(metrics)
    return scores, glue_processors.glue_score(scores)


def format_scores(scores, glue):
    parts = [f"{task} " + " ".join(f"{metric} {value:.2f}" for metric, value in metrics.items())
             for task, metrics in scores.items()]
    return " | ".join(parts + [f"GLUE {glue:.2f}"])


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM ask the loop to save a resumable checkpoint and exit at the next step boundary;
    a second Ctrl-C interrupts at once."""

    def __init__(self):
        self.requested = False
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning(f"{signal.Signals(signum).name}: saving a resumable checkpoint at the end of this step")

    def restore(self):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def main(args, method):
    # ---------------------------------------------------------------- set-up: processes, device, output directory
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    distributed = world_size > 1
    local_rank = int(os.environ.get("LOCAL_RANK", max(args.local_rank, 0)))
    use_cuda = torch.cuda.is_available() and not args.no_cuda
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if distributed:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if distributed else 0
    is_main = rank == 0
    precision = resolve_precision(args.precision, device)
    autocast_dtype = AUTOCAST_DTYPES.get(precision)

    output_dir = Path(args.output_dir)
    checkpoint_path = output_dir / LAST_CHECKPOINT
    resuming = args.resume and checkpoint_path.is_file()
    if output_dir.is_dir() and any(output_dir.iterdir()) and not args.resume and not args.overwrite_output_dir:
        fail(f"--output_dir {output_dir} is not empty: pass --resume to continue that run or --overwrite_output_dir")
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        if not resuming:
            for name in (TRAIN_LOG, EVAL_LOG, TEXT_LOG):
                (output_dir / name).unlink(missing_ok=True)
    if distributed:
        dist.barrier()
    setup_logging(output_dir, is_main)
    tasks = args.tasks
    eval_splits = [(t, s) for t in tasks for s in TASKS[t].dev_splits] if args.do_eval else []
    missing = glue_processors.missing_files(args.data_dir, tasks, ["train"] * args.do_train + ["dev"] * args.do_eval)
    if missing:
        fail(f"--data_dir {args.data_dir} lacks {len(missing)} file(s) for --tasks {','.join(tasks)}: "
             f"{', '.join(map(str, missing))}")

    try:
        config = method.modeling.BertConfig.from_json_file(args.bert_config_file)
        vocab_size = len(tokenization.load_vocab(args.vocab_file))  # checked here; features tokenize later
    except (OSError, ValueError) as err:
        fail(str(err))
    if method.pad_to_max_length:  # Gated-BERT: the gate's input size is max_seq_length x hidden
        config = dataclasses.replace(config, max_seq_length=args.max_seq_length,
                                     hidden_size_aug=args.h_aug or config.hidden_size_aug)
    if args.max_seq_length > config.max_position_embeddings:
        fail(f"--max_seq_length {args.max_seq_length} is more than the config's max_position_embeddings "
             f"{config.max_position_embeddings} ({args.bert_config_file})")
    if vocab_size > config.vocab_size:
        fail(f"--vocab_file {args.vocab_file} has {vocab_size} tokens but the config's vocab_size is "
             f"{config.vocab_size} ({args.bert_config_file}): they must come from the same model")
    if vocab_size < config.vocab_size:
        logger.warning(f"--vocab_file has {vocab_size} tokens, the config's vocab_size is "
                       f"{config.vocab_size}: the extra embedding rows are never used")
    steps_per_epoch = args.steps_per_epoch or STEPS_PER_TASK_PER_EPOCH * len(tasks)
    total_steps = max(1, int(args.num_train_epochs * steps_per_epoch))
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    micro_batch, remainder = divmod(args.train_batch_size, args.gradient_accumulation_steps * world_size)
    if remainder or micro_batch == 0:
        fail(f"--train_batch_size {args.train_batch_size} must be a multiple of --gradient_accumulation_steps "
             f"{args.gradient_accumulation_steps} x {world_size} process(es)")
    resolved = {**vars(args), "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
                "num_epochs": num_epochs, "precision": precision, "world_size": world_size, "method": method.name}
    if resuming:
        previous = json.loads((output_dir / ARGS_FILE).read_text())
        changed = [f"--{k} (was {previous.get(k)!r}, now {resolved[k]!r})"
                   for k in RESUME_INVARIANTS if previous.get(k) != resolved[k]]
        if changed:
            fail(f"--resume must repeat the interrupted run's settings; changed: {', '.join(changed)}")
    elif is_main:
        save_json(resolved, output_dir / ARGS_FILE)
        save_json(model_config_record(config, method.name, tasks, args.max_seq_length, args.do_lower_case),
                  output_dir / CONFIG_FILE)
        shutil.copyfile(args.vocab_file, output_dir / VOCAB_FILE)
    logger.info(f"{method.name}: tasks {','.join(tasks)} | {device.type} {precision} | {world_size} process(es) | "
                f"{num_epochs} epoch(s) x {steps_per_epoch} steps, batch {args.train_batch_size}")

    # ---------------------------------------------------------------- data: tokenized once, cached on disk
    def features(task, split):
        try:
            return glue_processors.load_features(args.data_dir, task, split, args.vocab_file, args.do_lower_case,
                                                 args.max_seq_length, cache_dir=args.cache_dir,
                                                 num_workers=args.num_workers)
        except (OSError, ValueError) as err:  # a malformed file: its name and line are in the message
            fail(str(err))

    if distributed and not is_main:  # rank 0 tokenizes and caches; the others then read its cache
        dist.barrier()
    train_sets = [features(t, "train") for t in tasks] if args.do_train else []
    eval_sets = [(t, s, features(t, s)) for t, s in eval_splits]
    if distributed and is_main:
        dist.barrier()
    for task, data in zip(tasks, train_sets):
        logger.info(f"{task}: {len(data)} training examples")
    pad_to = args.max_seq_length if method.pad_to_max_length else None

    # ---------------------------------------------------------------- model
    torch.manual_seed(args.seed)
    model = method.modeling.BertForMultiTask(config, [TASKS[t].num_labels for t in tasks])
    if args.init_checkpoint:
        try:
            # Evaluating without training needs a trained model: every task parameter must come from the file.
            fresh = load_pretrained(model, args.init_checkpoint, require_all=not args.do_train)
        except (OSError, ValueError) as err:
            fail(f"--init_checkpoint: {err}")
        logger.info(f"loaded {args.init_checkpoint}; {len(fresh)} task parameter tensor(s) start fresh")
    else:
        logger.warning("no --init_checkpoint: the encoder starts from random weights")
    if args.freeze:
        for name, p in model.named_parameters():
            p.requires_grad_(not BERT_PARAMETER.fullmatch(name))
    model.to(device)
    if args.compile:
        compile_encoder(model, device, cuda_graphs=args.gradient_accumulation_steps == 1)
        if use_cuda and args.gradient_accumulation_steps > 1:
            logger.warning("--compile with --gradient_accumulation_steps above 1: compiled without CUDA graphs, "
                           "which would overwrite the gradients accumulated between micro-batches")
    net = DistributedDataParallel(model, device_ids=[local_rank] if use_cuda else None,
                                  find_unused_parameters=True) if distributed else model  # other tasks' heads idle

    # ---------------------------------------------------------------- optimizer, schedule, sampler
    optimizer = optimization.build_optimizer(model, args.optimizer, args.learning_rate, device_type=device.type)
    scheduler = optimization.linear_warmup_decay(optimizer, total_steps, args.warmup_proportion)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    sampler = TaskSampler([len(d) for d in train_sets], args.sample, steps_per_epoch, num_epochs, args.seed,
                          method.anneal_alpha)
    global_step, best_score = 0, -math.inf
    torch.manual_seed(args.seed + rank)  # dropout differs between ranks, as between the examples of one batch
    if resuming:
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        sampler.load_state_dict(state["sampler"])
        global_step, best_score = state["global_step"], state["best_score"]
        if len(state["rng"]) == world_size:  # the dropout streams continue exactly
            torch.set_rng_state(state["rng"][rank]["cpu"])
            if use_cuda and state["rng"][rank]["cuda"] is not None:
                torch.cuda.set_rng_state(state["rng"][rank]["cuda"])
        else:
            logger.warning(f"resuming {len(state['rng'])} process(es)' run with {world_size}: same data and tasks, "
                           "new dropout random streams")
        if is_main:
            truncate_jsonl(output_dir / TRAIN_LOG, global_step)
            truncate_jsonl(output_dir / EVAL_LOG, global_step)
        logger.info(f"resumed from {checkpoint_path} at step {global_step}")

    def save_checkpoint():
        """The resumable state of every rank (RNG states differ per rank), written by rank 0."""
        rng = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if use_cuda else None}
        rngs = [None] * world_size
        if distributed:
            dist.all_gather_object(rngs, rng)
        else:
            rngs = [rng]
        if is_main:
            save_torch({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                        "sampler": sampler.state_dict(), "rng": rngs, "global_step": global_step,
                        "best_score": best_score, "args": resolved}, checkpoint_path)

    def run_evaluation(epoch):
        """Evaluate on rank 0, log, keep the best model; the other ranks wait."""
        nonlocal best_score
        if is_main:
            scores, glue = evaluate(model, eval_sets, tasks, args.eval_batch_size, device, autocast_dtype, pad_to)
            is_best = glue > best_score
            append_jsonl(output_dir / EVAL_LOG, {
                "epoch": epoch, "global_step": global_step, "scores": scores, "glue_score": glue,
                "task_scores": {t: glue_processors.task_score(m) for t, m in scores.items()}, "best": is_best})
            logger.info(f"dev, epoch {epoch} step {global_step}: {format_scores(scores, glue)}")
            if is_best and args.do_train:
                best_score = glue
                save_torch(model.state_dict(), output_dir / BEST_MODEL)
        if distributed:
            dist.barrier()

    if not args.do_train:
        run_evaluation(epoch=None)
        return

    # ---------------------------------------------------------------- training loop
    stop = StopRequest()
    # Per-task loss sums then the stop flag, accumulated on the device (no host sync per step). A NaN or inf loss
    # makes its task's sum non-finite, so the sums double as the divergence check.
    tallies = torch.zeros(len(tasks) + 1, device=device)
    step_counts = [0] * len(tasks)
    model.train()

    def flush_log(epoch):
        """Write a train_log.jsonl line per task trained since the last flush; return whether to stop. The loop's
        only host sync and, with several processes, its only all-reduce: there every rank agrees to stop or not."""
        tallies[-1] = float(stop.requested)
        if distributed:
            dist.all_reduce(tallies)
        *sums, stop_votes = tallies.tolist()
        if not all(math.isfinite(s) for s in sums):
            fail(f"the training loss became NaN or infinite at or before step {global_step}; the last good "
                 f"checkpoint is {checkpoint_path}. Lower --learning_rate or try --precision fp32")
        lr = scheduler.get_last_lr()[0]
        for t, task in enumerate(tasks):
            if step_counts[t] and is_main:
                append_jsonl(output_dir / TRAIN_LOG, {"global_step": global_step, "epoch": epoch, "task": task,
                                                      "loss": sums[t] / world_size / step_counts[t],
                                                      "steps": step_counts[t], "lr": lr})
        tallies.zero_()
        step_counts[:] = [0] * len(tasks)
        return stop_votes > 0

    stopping = False
    try:
        for epoch in range(global_step // steps_per_epoch, num_epochs):
            schedule = sampler.tasks_for_epoch(epoch).tolist()
            epoch_steps = min(steps_per_epoch, total_steps - epoch * steps_per_epoch)
            first_step = global_step - epoch * steps_per_epoch
            if first_step == 0 and is_main:
                counts = {task: schedule[:epoch_steps].count(t) for t, task in enumerate(tasks)}
                append_jsonl(output_dir / TRAIN_LOG, {"global_step": global_step, "epoch": epoch,
                                                      "task_counts": counts, "alpha": sampler.alpha(epoch)})
            bar = tqdm(range(first_step, epoch_steps), desc=f"epoch {epoch + 1}/{num_epochs}", disable=not is_main)
            for i in bar:
                task = schedule[i]
                for micro in range(args.gradient_accumulation_steps):
                    indices = sampler.next_indices(task, micro_batch * world_size)[rank * micro_batch:
                                                                                   (rank + 1) * micro_batch]
                    batch = to_device(glue_processors.make_batch(train_sets[task], indices, pad_to=pad_to,
                                                                 pad_multiple=PAD_MULTIPLE), device)
                    last_micro = micro == args.gradient_accumulation_steps - 1
                    with (net.no_sync() if distributed and not last_micro else contextlib.nullcontext()), \
                            torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                        _, loss = net(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], task,
                                      batch["labels"], token_index=batch["token_index"])
                        loss = loss / args.gradient_accumulation_steps
                    scaler.scale(loss).backward()
                    tallies[task] += loss.detach()
                if method.frozen_parameters:  # frozen = no update at all: the optimizers skip gradient-less ones
                    for p in method.frozen_parameters(model, task, epoch):
                        p.grad = None
                scaler.unscale_(optimizer)
                optimization.clip_gradients(model, optimizer)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                global_step += 1
                step_counts[task] += 1
                end_of_epoch = i == epoch_steps - 1
                # One process stops at once; several agree at the next log flush (at most --log_steps later).
                if global_step % args.log_steps == 0 or end_of_epoch or (stop.requested and not distributed):
                    stopping = flush_log(epoch)
                if end_of_epoch:
                    break
                if stopping or (args.save_checkpoints_steps and global_step % args.save_checkpoints_steps == 0):
                    save_checkpoint()
                if stopping:
                    break
            bar.close()
            if stopping and not end_of_epoch:
                break
            if args.do_eval:
                run_evaluation(epoch)
            elif is_main:  # without evaluation the "best" model is the latest one
                save_torch(model.state_dict(), output_dir / BEST_MODEL)
            if method.checkpoint_every_epoch and is_main:
                save_torch(model.state_dict(), output_dir / f"model_epoch_{epoch}.pth")
            save_checkpoint()
            if stopping:
                break
    finally:
        stop.restore()
    if stopping:
        logger.info(f"saved {checkpoint_path} at step {global_step}; continue with --resume")
    else:
        logger.info(f"done: {global_step} steps" + (f"; best dev GLUE score {best_score:.2f}" if args.do_eval else ""))
    if distributed:
        dist.destroy_process_group()
