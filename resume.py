"""--resume: whether a run directory is continued, started afresh or left alone, decided before any data is read; the
checkpoint read; the state restored.

A directory with `last_checkpoint.pth` is continued when the run's settings are the same: the flags in args.json
(RESUME_INVARIANTS) and the model record in config.json (the method, the problems, their labels and records, the
model config). Without a checkpoint, an empty or absent directory starts afresh (a scheduler's `until ... --resume`
loop starts that way), and so does one holding only what this same command writes before its first checkpoint; a
directory holding anything more (another run's files, or this run's best model and logs) is refused, naming what it
holds and the two ways on.
"""
import json
import logging

import torch

import checkpoints
from cli import fail
from methods import METHODS
from run_files import ARGS_FILE, CONFIG_FILE, EVAL_LOG, LAST_CHECKPOINT, REPORT_DIR, TEXT_LOG, TRAIN_LOG, VOCAB_FILE, \
    truncate_jsonl

# Arguments a resumed run must share with the run it continues.
RESUME_INVARIANTS = ("tasks", "problems", "sample", "seed", "train_batch_size", "gradient_accumulation_steps",
                     "learning_rate", "num_train_epochs", "steps_per_epoch", "warmup_proportion", "optimizer",
                     "max_seq_length", "bert_config_file", "h_aug", "freeze", "max_steps", "warmup_steps",
                     "weight_decay", "eval_steps", "max_train_samples", "max_eval_samples", "metric_for_best_model")
# What a run writes before its first checkpoint: a directory holding only these (of the same run) starts afresh.
STARTUP_FILES = frozenset((ARGS_FILE, CONFIG_FILE, VOCAB_FILE, TEXT_LOG, TRAIN_LOG, REPORT_DIR))
# Names shown of a directory's contents in a message.
SHOWN_ENTRIES = 8

logger = logging.getLogger("embert")


def read_json(path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        fail(f"--resume: cannot read {path} ({err}); start afresh with --overwrite_output_dir")


def changed_flags(previous, resolved):
    """The flags of args.json (`previous`) that the resolved arguments change, in words."""
    changed = [f"--{k} (was {previous[k]!r}, now {resolved[k]!r})"
               for k in RESUME_INVARIANTS if k in previous and previous[k] != resolved[k]]
    if previous.get("task_groups") != resolved.get("task_groups"):
        changed.append(f"--tasks (groups were {previous.get('task_groups')}, now {resolved.get('task_groups')})")
    return changed


def changed_model(previous, record):
    """What differs between config.json (`previous`) and the record this run would write, in words: the method
    first, then each problem's labels and record, then the other model settings."""
    record = json.loads(json.dumps(record))  # tuples as lists, as config.json holds them
    if previous.get("model") != record["model"]:
        method = METHODS.get(previous.get("model"))
        by = f"{method.script} ({method.name})" if method else repr(previous.get("model"))
        return [f"the run was trained by {by}, this is {METHODS[record['model']].script} ({record['model']}): "
                f"resume it with its own script"]
    changed = []
    labels, previous_labels = record["task_labels"], previous.get("task_labels", {})
    for name in labels:
        if name in previous_labels and previous_labels[name] != labels[name]:
            changed.append(f"{name}'s labels (were {previous_labels[name]}, now {labels[name]})")
    previous_problems = previous.get("problems", {})
    for name, problem in record.get("problems", {}).items():
        old = previous_problems.get(name)
        if old is not None and old != problem:
            keys = [key for key in problem if old.get(key) != problem[key] and key != "labels"]
            if keys:
                changed.append(f"problem {name}'s {', '.join(keys)} (in --problems)")
    skipped = {"model", "task_labels", "problems", "task_names", "task_groups"}  # compared above or as flags
    changed += [f"{key} (was {previous.get(key)!r}, now {record.get(key)!r})"
                for key in sorted((set(previous) | set(record)) - skipped) if previous.get(key) != record.get(key)]
    return changed


def check(run, plan):
    """Before any data is read: True to continue the run in --output_dir, False to start afresh; a one-line error
    when --resume must not do either. Nothing is written."""
    args, output_dir = run.args, run.output_dir
    if not args.resume:
        return False
    if run.checkpoint_path.is_file():
        changed = changed_flags(read_json(output_dir / ARGS_FILE), plan.resolved)
        if changed:
            fail(f"--resume must repeat the interrupted run's settings; changed: {', '.join(changed)}")
        changed = changed_model(read_json(output_dir / CONFIG_FILE), plan.record)
        if changed:
            fail(f"--resume: {output_dir / CONFIG_FILE} differs from this run's model: {'; '.join(changed)}; start "
                 "afresh in another --output_dir, or with --overwrite_output_dir")
        return True
    if args.overwrite_output_dir or not output_dir.is_dir():
        return False
    entries = sorted(p.name for p in output_dir.iterdir() if not (p.name.startswith(".") and p.name.endswith(".tmp")))
    if not entries or (set(entries) <= STARTUP_FILES and same_run(output_dir, plan)):
        if entries:
            logger.info(f"--resume: no {LAST_CHECKPOINT} in {output_dir} yet: this run stopped before its first "
                        "checkpoint, so it starts afresh")
        return False
    shown = ", ".join(entries[:SHOWN_ENTRIES]) + (f" and {len(entries) - SHOWN_ENTRIES} more"
                                                  if len(entries) > SHOWN_ENTRIES else "")
    fail(f"--resume: {output_dir} holds {shown} but no {LAST_CHECKPOINT}, so there is nothing to continue: put the "
         f"run's {LAST_CHECKPOINT} back to continue it, or pass --overwrite_output_dir to replace it")


def same_run(output_dir, plan):
    """Whether args.json and config.json are this run's own (the same settings and model)."""
    try:
        previous_args = json.loads((output_dir / ARGS_FILE).read_text(encoding="utf-8"))
        previous_record = json.loads((output_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return not changed_flags(previous_args, plan.resolved) and not changed_model(previous_record, plan.record)


def read_state(run):
    """The checkpoint --resume continues from (its dict, on the CPU); a one-line error when it cannot be read."""
    try:
        return checkpoints.load_torch_file(run.checkpoint_path, weights_only=False)
    except (OSError, ValueError) as err:
        fail(f"--resume: {err}; start afresh with --overwrite_output_dir")


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
