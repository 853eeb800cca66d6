"""The multi-task training loop shared by run_multi_task.py (EmBERT), run_multi_task_gated.py (Gated-BERT) and
run_multi_task_pals.py (PALs): the flags, the run plan, and the loop (--resume's decisions are resume.py's).

The scripts differ only in their `methods.Method`. `main` reads top to bottom: check every input into an immutable
`Plan`, decide what --resume does, data, model, resume state, optimizer and schedule (everything that can refuse a run
has run before anything is written), output directory, then the loop (sample a group, `train_step.training_step`,
log), evaluations and checkpoints.

Files written to --output_dir (rank 0 only, every write atomic; names in run_files.py):
  args.json            every resolved argument (paths absolute)
  config.json          the model config, plus the method, the problems in head order, their labels, the groups
                       ("task_groups", when --tasks joined problems with &) and the user's problem records
  vocab.txt            a copy of --vocab_file, so the directory predicts on its own
  train.log            what the console shows, as plain text
  train_log.jsonl      per logging interval and problem: global_step, epoch, task, loss, lr, steps; per epoch:
                       task_counts (steps drawn per group) and alpha
  eval_results.jsonl   per evaluation: epoch, global_step, scores {problem: {metric: value}}, task_scores,
                       mean_score (and glue_score, the same mean, while GLUE tasks are in the run), best
  best_model.pth       state dict of the model with the best dev score (the final model without --do_eval)
  last_checkpoint.pth  model, optimizer, scheduler, sampler, RNG states and step: --resume continues from it
  tensorboard/         --report_to tensorboard: the same curves as event files
A masked-LM problem is a group of its own: its batches are masked afresh each step (from the seed, the step and the
micro-batch, so a resumed run masks exactly as the interrupted one), its dev set once (masking.DEV_MASKING_SEED).
Epochs: the JSON lines' "epoch" is the 0-based index of the epoch; everything a person reads (console, train.log,
progress bars) numbers epochs from 1. Exit status: 0 when the run finished, 130 after Ctrl-C (SIGINT) and 143 after
SIGTERM once the resumable checkpoint is saved (the shell's 128 + signal number).
"""
import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

import checkpoints
import evaluation
import masking
import metrics
import modalities
import optimization
import problem_types
import problems
import problems_file
import reporting
import resume
import tokenization
from cli import StopRequest, check_output_dir, fail
from features import first_examples
from hardware import AUTOCAST_DTYPES, batch_padding, compile_encoder, resolve_precision, select_device
from run_files import (ARGS_FILE, BEST_MODEL, CLOCK_FORMAT, CONFIG_FILE, EPOCH_MODEL, EVAL_LOG, LAST_CHECKPOINT,
                       REPORT_DIR, TEXT_LOG, TRAIN_LOG, VOCAB_FILE, append_jsonl, attach_log_file, remove_run_files,
                       save_json, save_torch, setup_logging)
from sampler import SAMPLE_MODES, STEPS_PER_TASK_PER_EPOCH, TaskSampler
from train_step import BatchPlan, LossTally, token_denominators, training_batch, training_step

# Arguments holding paths: stored absolute in args.json, so a run directory works from any working directory.
PATH_ARGUMENTS = ("data_dir", "vocab_file", "bert_config_file", "init_checkpoint", "output_dir", "cache_dir",
                  "problems")
MEAN_SCORE = evaluation.MEAN_SCORE

logger = logging.getLogger("embert")


def finite_float(text):
    """argparse type of every float flag: a number, never NaN or infinity (which no setting means)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


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
    parser.add_argument("--learning_rate", type=finite_float, default=5e-5, help="peak learning rate")
    parser.add_argument("--num_train_epochs", type=finite_float, default=3.0,
                        help="epochs of --steps_per_epoch optimizer steps (fractions allowed)")
    parser.add_argument("--max_steps", type=int, default=None,
                        help="train exactly this many optimizer steps (overrides --num_train_epochs)")
    parser.add_argument("--steps_per_epoch", type=int, default=None,
                        help=f"optimizer steps per epoch (default {STEPS_PER_TASK_PER_EPOCH} x number of tasks)")
    parser.add_argument("--warmup_proportion", type=finite_float, default=0.1,
                        help="fraction of all steps with linear warm-up of the learning rate")
    parser.add_argument("--warmup_steps", type=int, default=None,
                        help="steps of linear warm-up (overrides --warmup_proportion)")
    parser.add_argument("--weight_decay", type=finite_float, default=optimization.WEIGHT_DECAY,
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
                        help=f"continue from --output_dir/{LAST_CHECKPOINT} (start fresh in an empty or absent folder)")
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
    if args.learning_rate <= 0:
        parser.error(f"--learning_rate must be positive, got {args.learning_rate}")
    if args.weight_decay < 0:
        parser.error(f"--weight_decay must be at least 0, got {args.weight_decay}")
    if args.num_train_epochs <= 0:
        parser.error(f"--num_train_epochs must be positive, got {args.num_train_epochs}")
    if not 0 <= args.warmup_proportion < 1:
        parser.error(f"--warmup_proportion must be in [0, 1), got {args.warmup_proportion}")
    if not (args.do_train or args.do_eval):
        parser.error("nothing to do: give --do_train, --do_eval or both")
    return args


@dataclass
class Run:
    """A training run's processes and their settings: what the functions of `main` share besides the plan."""

    args: argparse.Namespace
    method: object  # methods.Method
    device: torch.device
    rank: int
    world_size: int
    precision: str
    reporter: object = field(default_factory=reporting.NullReporter)  # --report_to, on rank 0

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def distributed(self):
        return self.world_size > 1

    @property
    def output_dir(self):
        return Path(self.args.output_dir)

    @property
    def checkpoint_path(self):
        return self.output_dir / LAST_CHECKPOINT

    @property
    def autocast_dtype(self):
        return AUTOCAST_DTYPES.get(self.precision)

    def barrier(self):
        if self.distributed:
            dist.barrier()


@dataclass(frozen=True)
class Plan:
    """What the flags resolve to, checked before anything is written; nothing changes it afterwards."""

    problems: tuple  # the run's problems (problem_record.Problem), in head order
    groups: tuple  # the head indices of each group (--tasks a&b|c: ((0, 1), (2,))): one task row each, sampled
    user_problems: dict  # --problems: name -> Problem
    config: object  # the method's BertConfig
    steps_per_epoch: int
    total_steps: int
    num_epochs: int
    micro_batch: int  # examples per micro-batch and process
    pad_to: int | None  # hardware.batch_padding
    masking: masking.Masking | None  # the vocabulary's special tokens, for masked-LM problems
    resolved: dict  # args.json
    record: dict  # config.json (model_config_record)

    @property
    def names(self):
        return [p.name for p in self.problems]

    @property
    def chained(self):
        """Whether --tasks joined problems with &."""
        return any(len(group) > 1 for group in self.groups)

    @property
    def row_of(self):
        """Each head's task row: its group."""
        return problems.group_rows(self.groups)

    @property
    def group_names(self):
        return [problems.group_name([self.problems[h].name for h in group]) for group in self.groups]


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


def read_user_problems(path):
    """--problems: the user's problems by name ({} without the flag); a one-line error naming file, line and key."""
    if path is None:
        return {}
    try:
        return problems_file.read_problems_file(path)
    except (OSError, ValueError) as err:
        fail(f"--problems: {err}")


def resolve_task_groups(spec, task_id, user_problems):
    """--tasks -> groups of problem names; a list of names (an already resolved run) is one problem per group."""
    if not isinstance(spec, str):
        return [[name] for name in spec]
    try:
        return problems.resolve_groups(spec, task_id, user_problems)
    except ValueError as err:  # its messages start with --tasks
        fail(str(err))


def check_dev_sets(run_problems):
    """--do_eval evaluates the problems that have a dev set: none is an error, some a warning naming the others."""
    without = [p.name for p in run_problems if not p.dev_splits]
    if len(without) == len(run_problems):
        fail(f"--do_eval: no problem of --tasks has a dev set ({', '.join(without)}: give a \"dev\" file in the "
             "problems file), so there is nothing to evaluate; drop --do_eval to keep the last model")
    if without:
        logger.warning(f"--do_eval: {', '.join(without)} {'has' if len(without) == 1 else 'have'} no dev set and "
                       f"{'is' if len(without) == 1 else 'are'} not evaluated; the dev score is the mean of "
                       f"{', '.join(p.name for p in run_problems if p.dev_splits)}")


def check_best_model_metric(name, run_problems):
    """--metric_for_best_model must name the mean, one of the run's problems with a dev set, or one of a problem's
    dev metrics."""
    metrics = {p.name: {m for names in p.metrics.values() for m in names} for p in run_problems if p.dev_splits}
    problem, _, metric = name.partition("/")
    if name == MEAN_SCORE or (problem in metrics and (not metric or metric in metrics[problem])):
        return
    choices = [MEAN_SCORE, *metrics, *(f"{p}/{m}" for p, names in metrics.items() for m in sorted(names))]
    fail(f"--metric_for_best_model {name!r} is not one of: {', '.join(choices)}")


def absolute_paths(args):
    """args as a dict with every path argument made absolute (args.json: the run directory works from anywhere)."""
    return {k: (str(Path(v).absolute()) if k in PATH_ARGUMENTS and v is not None else v) for k, v in vars(args).items()}


def check_inputs(run):
    """Every check of the flags, data files, config and vocabulary that needs no tokenizing, into the run's Plan;
    nothing is written."""
    args, method, output_dir = run.args, run.method, run.output_dir
    check_output_dir(output_dir, "--output_dir")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not args.resume and not args.overwrite_output_dir:
        fail(f"--output_dir {args.output_dir} is not empty: pass --resume to continue that run or "
             "--overwrite_output_dir")
    try:
        reporting.check_report_to(args.report_to)  # an optional package: missing, say so before any work
    except ValueError as err:
        fail(str(err))
    user_problems = read_user_problems(args.problems)
    name_groups = resolve_task_groups(args.tasks, args.task_id, user_problems)
    names = [name for group in name_groups for name in group]  # head order
    run_problems = tuple(problems.get_problem(name, user_problems) for name in names)
    if args.do_eval:
        check_dev_sets(run_problems)
    check_best_model_metric(args.metric_for_best_model, run_problems)
    missing = problems.missing_problem_files(args.data_dir, names, ["train"] * args.do_train + ["dev"] * args.do_eval,
                                             user_problems)
    if missing:
        fail(f"--data_dir {args.data_dir} lacks {len(missing)} file(s) for --tasks {','.join(names)}: "
             f"{', '.join(f'{path} (a folder, not a file)' if path.is_dir() else str(path) for path in missing)}")
    masking_spec = None
    try:
        config = method.modeling.BertConfig.from_json_file(args.bert_config_file)
        config = checkpoints.configure_model(method, config, args.max_seq_length, args.h_aug)
        checkpoints.check_model_inputs(config, args.vocab_file, args.max_seq_length, args.bert_config_file)
        if any(problem_types.of(p).masks_inputs for p in run_problems):
            masking_spec = masking.Masking.from_vocab(tokenization.load_vocab(args.vocab_file))
    except (OSError, ValueError) as err:
        fail(str(err))
    if method.name == "embert" and not _declares_our_attn(args.bert_config_file):
        logger.warning(f"--bert_config_file {args.bert_config_file} does not set our_attn: training the shared "
                       "encoder (multi-task BERT without task embeddings); add \"our_attn\": true for EmBERT")
    steps_per_epoch = args.steps_per_epoch or STEPS_PER_TASK_PER_EPOCH * len(name_groups)
    total_steps = args.max_steps or max(1, int(args.num_train_epochs * steps_per_epoch))
    micro_batch, remainder = divmod(args.train_batch_size, args.gradient_accumulation_steps * run.world_size)
    if remainder or micro_batch == 0:
        fail(f"--train_batch_size {args.train_batch_size} must be a multiple of --gradient_accumulation_steps "
             f"{args.gradient_accumulation_steps} x {run.world_size} process(es)")
    if args.warmup_steps is not None and args.warmup_steps >= total_steps:
        fail(f"--warmup_steps {args.warmup_steps} must be fewer than the run's {total_steps} steps")
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    resolved = {**absolute_paths(args), "tasks": names, "steps_per_epoch": steps_per_epoch,
                "total_steps": total_steps, "num_epochs": num_epochs, "precision": run.precision,
                "world_size": run.world_size, "method": method.name,
                "model_trained": model_description(method, config)}
    if any(len(group) > 1 for group in name_groups):
        resolved["task_groups"] = name_groups
    groups = tuple(tuple(names.index(name) for name in group) for group in name_groups)
    record = model_config_record(config, method.name, run_problems, args.max_seq_length, args.do_lower_case,
                                 resolved.get("task_groups"), user_problems)
    return Plan(run_problems, groups, user_problems, config, steps_per_epoch, total_steps, num_epochs, micro_batch,
                batch_padding(method, args.max_seq_length), masking_spec, resolved, record)


def _declares_our_attn(config_file):
    return "our_attn" in json.loads(Path(config_file).read_text(encoding="utf-8"))


def model_description(method, config):
    """What a run trains, in words: the method, or the shared encoder for EmBERT's script without our_attn."""
    return "shared encoder" if method.name == "embert" and not config.our_attn else method.name


def load_data(run, plan):
    """Training and dev features (tokenized once, cached on disk); rank 0 builds the cache, the others read it."""
    args = run.args

    def features(problem, split, limit):
        try:
            data = problems.load_problem_features(problem, split, args.data_dir, args.vocab_file, args.do_lower_case,
                                                  args.max_seq_length, cache_dir=args.cache_dir,
                                                  num_workers=args.num_workers, user_problems=plan.user_problems)
        except (OSError, ValueError) as err:  # a malformed file: its name and line are in the message
            fail(str(err))
        data = first_examples(data, limit)
        if problem_types.of(problem).masks_inputs and not masking.maskable(data, plan.masking).any():
            fail(f"{problems.problem_file(args.data_dir, problem, split)}: {problem.name} {split} has no word piece "
                 "to mask (only [CLS] and [SEP] after tokenizing)")
        return data if split == "train" else evaluation.dev_set(problem, data, plan.masking)

    if run.distributed and not run.is_main:
        dist.barrier()
    train_sets = [features(p, "train", args.max_train_samples) for p in plan.problems] if args.do_train else []
    eval_sets = [(p.name, s, features(p, s, args.max_eval_samples))
                 for p in plan.problems for s in p.dev_splits] if args.do_eval else []
    if run.distributed and run.is_main:
        dist.barrier()
    if args.do_train:
        check_same_inputs(plan, train_sets)
    return train_sets, eval_sets


def check_same_inputs(plan, train_sets):
    """Problems joined by & train on one batch: their training examples must be the same, in the same order (the
    tokenized ids are compared); a one-line error names the first example that differs."""
    for group in plan.groups:
        first = train_sets[group[0]]
        for other in group[1:]:
            data = train_sets[other]
            same = len(data) == len(first) and all(torch.equal(getattr(data, name), getattr(first, name))
                                                   for name in ("offsets", "input_ids", "segment_a_len")) \
                and modalities.same_inputs(data, first)
            if same:
                continue
            a, b = plan.problems[group[0]].name, plan.problems[other].name
            if len(first) != len(data):
                how = f"{a} has {len(first)} training examples and {b} {len(data)}"
            else:
                differs = next(i for i in range(len(first))
                               if not torch.equal(first.input_ids[first.offsets[i]:first.offsets[i + 1]],
                                                  data.input_ids[data.offsets[i]:data.offsets[i + 1]])
                               or first.segment_a_len[i] != data.segment_a_len[i])
                how = f"their training examples differ from example {differs} on (0-based; {len(first)} each)"
            fail(f"--tasks: {a} & {b} must have the same inputs, but {how}; train them in separate groups with | "
                 "instead")


def load_model(run, plan):
    """The method's model with the run's heads, from --init_checkpoint (every encoder weight must be there; without
    --do_train every parameter)."""
    args = run.args
    state = source = None
    if args.init_checkpoint:
        try:
            state, _, source = checkpoints.read_checkpoint(args.init_checkpoint)
        except (OSError, ValueError) as err:
            fail(f"--init_checkpoint: {err}")
    torch.manual_seed(args.seed)
    try:
        # Evaluating without training needs a trained model: every task parameter must come from the file.
        model, fresh = checkpoints.build_model(run.method, plan.config, plan.problems, state, source,
                                               require_all=not args.do_train, num_groups=len(plan.groups))
    except ValueError as err:
        fail(f"--init_checkpoint: {err}")
    if args.freeze:
        for name, p in model.named_parameters():
            p.requires_grad_(not checkpoints.BERT_PARAMETER.fullmatch(name))
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


def prepare_output_dir(run, plan, resuming):
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
            save_json(plan.resolved, output_dir / ARGS_FILE)
            save_json(plan.record, output_dir / CONFIG_FILE)
            shutil.copyfile(run.args.vocab_file, output_dir / VOCAB_FILE)
    run.barrier()


def build_optimization(run, plan, model):
    """The optimizer and the learning-rate schedule; their constructors' refusals as one-line errors."""
    args = run.args
    warmup = args.warmup_proportion if args.warmup_steps is None else args.warmup_steps / plan.total_steps
    try:
        optimizer = optimization.build_optimizer(model, args.optimizer, args.learning_rate, args.weight_decay,
                                                 device_type=run.device.type)
        return optimizer, optimization.linear_warmup_decay(optimizer, plan.total_steps, warmup)
    except ValueError as err:
        fail(f"the optimizer refused its settings: {err}")


def save_checkpoint(run, plan, model, optimizer, scheduler, scaler, sampler, progress):
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
                    "best_score": progress.best_score, "args": plan.resolved}, run.checkpoint_path)


def run_evaluation(run, plan, model, eval_sets, progress, epoch):
    """Evaluate on rank 0, log, keep the best model; the other ranks wait."""
    if run.is_main:
        by_name = {p.name: p for p in plan.problems}
        scores, overall = evaluation.evaluate(model, eval_sets, plan.problems, run.args.eval_batch_size, run.device,
                                              run.autocast_dtype, plan.pad_to, plan.row_of, run.args.vocab_file)
        score = evaluation.best_model_score(scores, overall, run.args.metric_for_best_model, by_name)
        is_best = score > progress.best_score
        append_jsonl(run.output_dir / EVAL_LOG, {"epoch": epoch, "global_step": progress.global_step,
                                                 **evaluation.score_record(scores, overall, plan.problems),
                                                 "best": is_best})
        where = f"epoch {epoch + 1} step {progress.global_step}" if epoch is not None else run.args.init_checkpoint
        label = evaluation.overall_label(plan.problems)
        logger.info(f"dev, {where}: {evaluation.format_scores(scores, overall, label)}")
        run.reporter.dev(progress.global_step, scores, overall)
        if is_best and run.args.do_train:
            progress.best_score = score
            save_torch(model.state_dict(), run.output_dir / BEST_MODEL)
    run.barrier()


def flush_log(run, plan, tally, stop, scheduler, progress, epoch, bar):
    """Write a train_log.jsonl line per problem trained since the last flush, show the losses on the progress bar,
    and return whether to stop. The loop's only host sync and, with several processes, its only all-reduce."""
    tally.sums[-1] = float(stop.signum or 0)
    if run.distributed:
        dist.all_reduce(tally.sums)
    *sums, stop_votes = tally.sums.tolist()
    if not all(math.isfinite(s) for s in sums):
        kept = (f"the last good checkpoint, {run.checkpoint_path}, is kept" if run.checkpoint_path.is_file()
                else "no checkpoint had been written yet")
        fail(f"the training loss became NaN or infinite at or before step {progress.global_step}; {kept}. Start "
             "afresh (--overwrite_output_dir) with a lower --learning_rate, or try --precision fp32")
    lr = scheduler.get_last_lr()[0]
    losses = {name: sums[h] / run.world_size / tally.steps[h] for h, name in enumerate(plan.names) if tally.steps[h]}
    if run.is_main:
        for h, name in enumerate(plan.names):
            if tally.steps[h]:
                append_jsonl(run.output_dir / TRAIN_LOG, {"global_step": progress.global_step, "epoch": epoch,
                                                          "task": name, "loss": losses[name],
                                                          "steps": tally.steps[h], "lr": lr})
        summary = " ".join(f"{name} {loss:.3f}" for name, loss in losses.items()) + f" lr {lr:.2e}"
        if bar.disable:  # stderr is a file or a pipe: a plain line per flush, not a bar redrawn with carriage returns
            print(f"{time.strftime(CLOCK_FORMAT)} epoch {epoch + 1}/{plan.num_epochs} step {progress.global_step}/"
                  f"{plan.total_steps}: {summary}", file=sys.stderr, flush=True)
        else:
            bar.set_postfix_str(summary)
        run.reporter.train(progress.global_step, losses, lr)
    tally.sums.zero_()
    tally.steps[:] = [0] * len(tally.steps)
    return stop_votes > 0


def main(args, method):
    # ---------------------------------------------------------------- every input checked before anything is written
    run = start_processes(args, method)
    plan = check_inputs(run)
    resuming = resume.check(run, plan)
    train_sets, eval_sets = load_data(run, plan)
    model, fresh = load_model(run, plan)
    resume_state = resume.read_state(run) if resuming else None
    model.to(run.device)
    if args.do_train:  # torch checks the optimizer's and the schedule's arguments too: before any file is touched
        optimizer, scheduler = build_optimization(run, plan, model)

    # ---------------------------------------------------------------- output directory
    prepare_output_dir(run, plan, resuming)
    # A resumed run's weights all come from its checkpoint (resume.restore, below): nothing starts fresh.
    if resume_state is None and args.init_checkpoint:
        logger.info(f"loaded {args.init_checkpoint}; {len(fresh)} task parameter tensor(s) start fresh")
    elif resume_state is None:
        logger.warning("no --init_checkpoint: the encoder starts from random weights")
    if not args.do_train:
        logger.info(f"{plan.resolved['model_trained']}: evaluating {args.init_checkpoint or 'the untrained model'} "
                    f"on the dev sets of {','.join(plan.names)} | {run.device.type} {run.precision}")
        run_evaluation(run, plan, model, eval_sets, Progress(), epoch=None)
        return finish(run)
    for name, data in zip(plan.names, train_sets):
        logger.info(f"{name}: {len(data)} training examples")
    logger.info(f"{plan.resolved['model_trained']}: tasks {'|'.join(plan.group_names)} | {run.device.type} "
                f"{run.precision} | {run.world_size} process(es) | {plan.num_epochs} epoch(s) x "
                f"{plan.steps_per_epoch} steps ({plan.total_steps} in all), batch {args.train_batch_size}")
    if args.compile:
        compile_encoder(model, run.device, cuda_graphs=args.gradient_accumulation_steps == 1)
        if run.device.type == "cuda" and args.gradient_accumulation_steps > 1:
            logger.warning("--compile with --gradient_accumulation_steps above 1: compiled without CUDA graphs, "
                           "which would overwrite the gradients accumulated between micro-batches")
    net = DistributedDataParallel(model, device_ids=[run.device.index] if run.device.type == "cuda" else None,
                                  find_unused_parameters=True) if run.distributed else model  # other tasks' heads idle

    # ---------------------------------------------------------------- scaler, sampler, resume
    scaler = torch.amp.GradScaler(run.device.type, enabled=run.precision == "fp16")
    sampler = TaskSampler([len(train_sets[group[0]]) for group in plan.groups], args.sample, plan.steps_per_epoch,
                          plan.num_epochs, args.seed, method.anneal_alpha)
    progress = Progress()
    torch.manual_seed(args.seed + run.rank)  # dropout differs between ranks, as between the examples of one batch
    if resume_state is not None:
        resume.restore(run, resume_state, model, optimizer, scheduler, scaler, sampler, progress)
    checkpoint = lambda: save_checkpoint(run, plan, model, optimizer, scheduler, scaler, sampler, progress)  # noqa: E731
    if run.is_main:
        run.reporter = reporting.open_reporter(args.report_to, run.output_dir / REPORT_DIR,
                                               resume_step=progress.global_step if resume_state else None)
    if progress.global_step >= plan.total_steps:  # a finished run resumed: nothing to train, nothing to evaluate again
        logger.info(f"the run already finished at step {progress.global_step}")
        return finish(run)

    # ---------------------------------------------------------------- training loop
    stop = StopRequest()
    tally = LossTally.zeros(len(plan.problems), run.device)
    # Each group's loss_weights, on the device once (a tensor built in the step would be a host-to-device copy).
    group_weights = [torch.tensor([plan.problems[h].loss_weight for h in group], device=run.device)
                     for group in plan.groups]
    batch_plan = BatchPlan(run.rank, plan.micro_batch, plan.pad_to, run.device, plan.masking)
    micro_batches = args.gradient_accumulation_steps
    model.train()
    stopping = False
    try:
        for epoch in range(progress.global_step // plan.steps_per_epoch, plan.num_epochs):
            schedule = sampler.tasks_for_epoch(epoch).tolist()
            epoch_steps = min(plan.steps_per_epoch, plan.total_steps - epoch * plan.steps_per_epoch)
            first_step = progress.global_step - epoch * plan.steps_per_epoch
            if first_step == 0 and run.is_main:
                counts = {name: schedule[:epoch_steps].count(g) for g, name in enumerate(plan.group_names)}
                append_jsonl(run.output_dir / TRAIN_LOG, {"global_step": progress.global_step, "epoch": epoch,
                                                          "task_counts": counts, "alpha": sampler.alpha(epoch)})
                run.reporter.epoch(progress.global_step, sampler.alpha(epoch),
                                   {name: count / epoch_steps for name, count in counts.items()})
            with tqdm(total=epoch_steps, initial=first_step, desc=f"epoch {epoch + 1}/{plan.num_epochs}",
                      disable=None if run.is_main else True) as bar:  # None: off when stderr is no terminal
                for i in range(first_step, epoch_steps):
                    group = schedule[i]  # one task row; its problems' heads
                    heads = list(plan.groups[group])
                    draws = [training_batch(batch_plan, plan.problems, train_sets, heads,
                                            sampler.next_indices(group, plan.micro_batch * run.world_size),
                                            masking_seeds=(args.seed, progress.global_step, micro))
                             for micro in range(micro_batches)]
                    batches = [batch for batch, _ in draws]
                    frozen = method.frozen_parameters(model, group, epoch) if method.frozen_parameters else ()
                    denominators = token_denominators([counts for _, counts in draws], run.world_size)
                    tally.add(heads, training_step(net, model, batches, group, heads, optimizer, scheduler, scaler,
                                                   group_weights[group], run.autocast_dtype, frozen, denominators))
                    progress.global_step += 1
                    bar.update()
                    end_of_epoch = i == epoch_steps - 1
                    # One process stops at once; several agree at the next log flush (at most --log_steps later).
                    if progress.global_step % args.log_steps == 0 or end_of_epoch or (
                            stop.requested and not run.distributed):
                        stopping = flush_log(run, plan, tally, stop, scheduler, progress, epoch, bar)
                    if end_of_epoch:
                        break
                    if args.do_eval and args.eval_steps and progress.global_step % args.eval_steps == 0:
                        run_evaluation(run, plan, model, eval_sets, progress, epoch)
                    if stopping or (args.save_checkpoints_steps and
                                    progress.global_step % args.save_checkpoints_steps == 0):
                        checkpoint()
                    if stopping:
                        break
            if stopping and not end_of_epoch:
                break
            if args.do_eval:
                run_evaluation(run, plan, model, eval_sets, progress, epoch)
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
    best = evaluation.overall_label(plan.problems) if args.metric_for_best_model == MEAN_SCORE \
        else args.metric_for_best_model
    lower_is_better = args.metric_for_best_model.partition("/")[2] in metrics.LOWER_IS_BETTER
    logger.info(f"done: {progress.global_step} steps" +  # best_score holds a perplexity negated (best_model_score)
                (f"; best dev {best} {-progress.best_score if lower_is_better else progress.best_score:.2f}"
                 if args.do_eval else ""))
    return finish(run)


def finish(run):
    run.reporter.close()
    if run.distributed:
        dist.destroy_process_group()
