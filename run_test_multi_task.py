r"""Predict the test (or dev) sets with a trained EmBERT / Gated-BERT / PALs model: a GLUE leaderboard submission, and
the prediction files of any other problem the model has a head for.

A training run's output directory (the model is rebuilt from its config.json, vocab.txt and best_model.pth):
    python run_test_multi_task.py --model_dir saved/embert --output_dir submissions/embert
A checkpoint file: ours (its heads are --tasks, as in its training run), or one written by the original EmBERT or
Gated-BERT code (its heads are the eight of --tasks all, in that order; the key names say which model it is):
    python run_test_multi_task.py --model_dir embert_model.bin --bert_config_file configs/embert_config.json \
        --vocab_file $BERT_DIR/vocab.txt --do_lower_case --data_dir $GLUE_DIR/ --output_dir submissions/embert
The dev sets instead (prints the metrics and writes dev_results.json): add --split dev.
CPU: add --no_cuda. On CUDA the model runs in bf16 autocast where the GPU supports it.

Writes to --output_dir the GLUE server's files, each `index<TAB>prediction` with the index of the test file:
CoLA.tsv, SST-2.tsv, MRPC.tsv, STS-B.tsv, QQP.tsv, MNLI-m.tsv, MNLI-mm.tsv, QNLI.tsv, RTE.tsv, WNLI.tsv, AX.tsv,
and submission.zip holding them, ready to upload. Labels are the server's: 0/1 (CoLA, SST-2, MRPC, QQP, WNLI),
entailment/neutral/contradiction (MNLI, and AX, predicted with the MNLI head), entailment/not_entailment (QNLI, RTE),
a similarity in [0, 5] for STS-B; WNLI is the majority class unless the model has a WNLI head. A task whose file
is missing is reported by name and skipped; the others are still written. With --split dev the same files hold
the dev-set predictions (index = row number), and dev_results.json the metrics.
"""
import argparse
import dataclasses
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import evaluation
import masking
import modeling_pals
import problem_types
import problems
import problems_file
import readers
import tokenization
from checkpoints import build_model, check_model_inputs, configure_model, read_checkpoint
from cli import check_output_dir, exit_on_interrupt, fail
from features import example_rows
from glue_processors import ALL_TASKS, TASKS
from hardware import AUTOCAST_DTYPES, batch_padding, resolve_precision, select_device
from methods import METHODS, Method
from problem_record import problem_from_record
from run_files import ARGS_FILE, BEST_MODEL, CONFIG_FILE, VOCAB_FILE, save_json, write_atomic

SUBMISSION_ZIP, DEV_RESULTS = "submission.zip", "dev_results.json"
# Defaults for a bare checkpoint file, which has no args.json: the paper's (and the training scripts') sequence
# length, and a batch larger than training's 8, since prediction keeps no activations for a backward pass.
DEFAULT_MAX_SEQ_LENGTH = 128
DEFAULT_EVAL_BATCH_SIZE = 64

# The original code (and Google BERT converted the old way) names LayerNorm parameters gamma and beta; ours and
# Hugging Face's weight and bias. An original-format file is a trained model with the eight --tasks all heads.
ORIGINAL_FORMAT_KEY = re.compile(r"LayerNorm\.(gamma|beta)$")
GATE_KEY = re.compile(r"\.attention\.self\.weight_layer_q\.weight$")  # only Gated-BERT has gates
ADAPTER_KEY = re.compile(r"\.attention\.self\.query_list\.0\.weight$")  # (hidden_size_aug, hidden)
HEAD_KEY = re.compile(r"classifier\.(\d+)\.weight")  # (num_labels, hidden)
LM_HEAD = "cls"  # shown for a masked-LM problem, which has no classifier of its own


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # The model.
    parser.add_argument("--model_dir", required=True,
                        help=f"a training run's --output_dir ({CONFIG_FILE}, {ARGS_FILE}, {BEST_MODEL}) or a "
                             "checkpoint file (ours, or the original EmBERT / Gated-BERT / PALs code's)")
    parser.add_argument("--model", choices=sorted(METHODS), default=None,
                        help="model type of a checkpoint file (default: detected from its keys)")
    parser.add_argument("--bert_config_file", default=None,
                        help="checkpoint file only: the BERT config JSON it was trained with (our_attn: true for "
                             "EmBERT; configs/pals_config.json's keys for PALs)")
    parser.add_argument("--vocab_file", default=None, help="checkpoint file only: the BERT vocab.txt it used")
    parser.add_argument("--do_lower_case", action="store_true", default=None,
                        help="checkpoint file only: lower-case and strip accents (uncased models)")
    parser.add_argument("--tasks", default=None,
                        help="tasks to predict: 'all', 'inf' or a comma list (wnli and ax allowed); default every "
                             "task the model has a head for, plus wnli and ax. For a checkpoint file of ours it "
                             "names the heads instead, as in its training run (default all)")
    # Data.
    parser.add_argument("--data_dir", default=None,
                        help="GLUE data directory (glue_data layout); default: the training run's --data_dir")
    parser.add_argument("--problems", default=None,
                        help="a problems file (as run_multi_task.py's): for a run directory, its records replace the "
                             "run's own for the problems it names (their files moved, say; type, labels and "
                             "label_scale must stay); for a checkpoint file, the problems --tasks may name")
    parser.add_argument("--split", choices=("test", "dev"), default="test",
                        help="test: the leaderboard submission; dev: the same files for the dev sets, and metrics")
    parser.add_argument("--max_seq_length", type=int, default=None,
                        help=f"longest sequence after WordPiece (default: the run's, else {DEFAULT_MAX_SEQ_LENGTH}); "
                             "Gated-BERT must use the length it was trained with")
    parser.add_argument("--cache_dir", default=None,
                        help="where tokenized features are cached (default: the run's, else $EMBERT_CACHE or "
                             "~/.cache/embert)")
    # Output and hardware.
    parser.add_argument("--output_dir", required=True, help="where the submission files go")
    parser.add_argument("--overwrite_output_dir", action="store_true",
                        help="write into a non-empty --output_dir (the files of an earlier prediction are replaced)")
    parser.add_argument("--eval_batch_size", type=int, default=None,
                        help=f"examples per batch (default: the run's, else {DEFAULT_EVAL_BATCH_SIZE})")
    parser.add_argument("--no_cuda", action="store_true", help="run on the CPU even when CUDA is available")
    parser.add_argument("--num_beams", type=int, default=None,
                        help="beam search width of the seq2seq problems' generation (default: each problem's "
                             "num_beams; 1 is greedy)")
    args = parser.parse_args(argv)
    for flag in ("max_seq_length", "eval_batch_size", "num_beams"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    return args


@dataclass
class LoadedModel:
    """A trained model and what predicting with it needs."""

    model: nn.Module
    method: Method
    heads: list  # the names of the model's problems, in head order (one head each)
    tasks: list  # the names of the problems to predict
    vocab_file: Path
    do_lower_case: bool
    max_seq_length: int
    run_args: dict  # the training run's resolved arguments (args.json); empty for a checkpoint file
    user_problems: dict  # the run's own problems (config.json's "problems"), by name
    row_of: list  # each head's task row (its group: config.json's task_groups when the run trained & groups)

    def problem(self, name):
        return problems.get_problem(name, self.user_problems)


# ------------------------------------------------------------------------------------------------ loading the model

def parse_task_list(spec, user_problems=None):
    """--tasks for prediction: 'all', 'inf' or a comma list, where problems without training data (AX) are allowed."""
    try:
        if spec.strip().lower() in ("all", "inf"):
            return problems.resolve_problems(spec)
        return list(dict.fromkeys(problems.canonical_problem_name(name, user_problems) for name in spec.split(",")))
    except ValueError as err:
        fail(f"--tasks: {err}")


def head_task(problem):
    """The problem whose head predicts `problem` (a Problem): its own, or its row's head_of (AX: MNLI's)."""
    return problem.head_of or problem.name


def head_of(problem, heads):
    """The name of the head that predicts `problem`, or None when the model has no such head."""
    return head_task(problem) if head_task(problem) in heads else None


def can_predict(problem, heads):
    """With a head, or with the row's default label (WNLI's majority class) in a model of GLUE heads."""
    glue_model = any(head in TASKS for head in heads)
    return head_of(problem, heads) is not None or (problem.default_label is not None and glue_model)


def tasks_to_predict(spec, heads, user_problems=None):
    """--tasks, checked against the heads; by default every head, and every predefined problem the heads can
    predict besides (AX with an MNLI head; WNLI's majority class in a GLUE model)."""
    if spec is None:
        return [*heads, *(name for name, p in problems.PROBLEMS.items() if name not in heads and can_predict(p, heads))]
    tasks = parse_task_list(spec, user_problems)
    for task in tasks:
        problem = problems.get_problem(task, user_problems)
        if not can_predict(problem, heads):
            fail(f"--tasks {spec}: the model has no {head_task(problem)} head (its heads: {','.join(heads)})")
    return tasks


def check_heads(state, heads, path, source, user_problems=None):
    """The checkpoint's heads must be those of `heads`, in order: same count, same number of outputs each."""
    sizes = {int(match[1]): value.shape[0] for key, value in state.items() if (match := HEAD_KEY.fullmatch(key))}
    found = [sizes.get(i) for i in range(max(sizes, default=-1) + 1)]
    # None: no classifier of its own (mask_lm, pretrain: BERT's pre-training heads, `cls`)
    expected = [problems.get_problem(t, user_problems).num_labels or None for t in heads]
    if found + [None] * (len(expected) - len(found)) != expected:
        shown = lambda widths: [LM_HEAD if n is None else n for n in widths]  # noqa: E731
        fail(f"checkpoint {path} has {len(sizes)} heads with {shown(found)} outputs, but {source} names "
             f"{len(heads)} tasks ({','.join(heads)}) needing {shown(expected)}")


def read_mapped_state(path):
    """The checkpoint's tensors under our parameter names, and whether it is in the original code's format."""
    try:
        state, raw_keys, path = read_checkpoint(path)
    except (OSError, ValueError) as err:
        fail(f"--model_dir: {err}")
    return state, any(ORIGINAL_FORMAT_KEY.search(key) for key in raw_keys), path


def load_model(method, config, heads, state, path, user_problems=None, num_groups=None):
    """The method's BertForMultiTask with one head per problem (and `num_groups` task rows), every parameter loaded
    from `state` (read from `path`)."""
    try:
        model, _ = build_model(method, config, [problems.get_problem(t, user_problems) for t in heads], state, path,
                               require_all=True, num_groups=num_groups)
    except ValueError as err:
        fail(str(err))
    return model.eval()


def read_user_problems(path):
    try:
        return problems_file.read_problems_file(path)
    except (OSError, ValueError) as err:
        fail(f"--problems: {err}")


def replace_problems(run_problems, path, config_path):
    """The run's own problems (config.json's records), those named in the problems file at `path` replaced by its
    records: the same problem, its files elsewhere. What the heads were trained on must not change."""
    given = read_user_problems(path)
    others = [name for name in given if name not in run_problems]
    if others:
        print(f"--problems {path}: {', '.join(others)} {'is' if len(others) == 1 else 'are'} not among the run's own "
              f"problems ({', '.join(run_problems) or 'none'}); ignored")
    replaced = {name: problem for name, problem in given.items() if name in run_problems}
    for name, problem in replaced.items():
        old = run_problems[name]
        for key in ("type", "labels", "label_scale", "inputs_of"):
            if getattr(problem, key) != getattr(old, key):
                fail(f"--problems {path}: {name}'s {key} is {getattr(problem, key)!r}, but the run trained it with "
                     f"{getattr(old, key)!r} ({config_path}); only its files may change")
    return {**run_problems, **replaced}


def load_run_directory(args, model_file=BEST_MODEL):
    """A training run's output directory: the model (`model_file`: its best model, or LAST_CHECKPOINT's), tokenizer
    settings and defaults all come from its files."""
    directory = Path(args.model_dir)
    needed = [directory / name for name in (CONFIG_FILE, VOCAB_FILE, model_file)]
    absent = [path.name for path in needed if not path.is_file()]
    if absent:
        fail(f"--model_dir {directory} lacks {', '.join(absent)}: expected a training run's --output_dir "
             f"({CONFIG_FILE}, {ARGS_FILE}, {VOCAB_FILE}, {BEST_MODEL}) or a checkpoint file")
    config_path, vocab_file, checkpoint = needed
    given = [f"--{flag}" for flag in ("bert_config_file", "vocab_file", "do_lower_case")
             if getattr(args, flag) is not None]
    if given:
        fail(f"{', '.join(given)}: only for a checkpoint file; run directory {directory} has its own "
             f"{CONFIG_FILE} and {VOCAB_FILE}")
    try:
        record = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        fail(f"{config_path} is not valid JSON: {err}")
    name = record.get("model")
    if name not in METHODS:
        fail(f"{config_path}: \"model\" is {name!r}, expected one of {', '.join(METHODS)} (written by "
             f"run_multi_task.py, run_multi_task_gated.py or run_multi_task_pals.py)")
    if args.model is not None and args.model != name:
        fail(f"--model {args.model} disagrees with {config_path}, which says {name}")
    method, heads = METHODS[name], record["task_names"]
    try:
        user_problems = {n: problem_from_record(r) for n, r in record.get("problems", {}).items()}
    except (KeyError, TypeError, ValueError) as err:
        fail(f"{config_path}: its problems cannot be rebuilt ({err})")
    if args.problems is not None:
        user_problems = replace_problems(user_problems, args.problems, config_path)
    try:
        table = {task: problems.get_problem(task, user_problems) for task in heads}
    except (KeyError, TypeError, ValueError) as err:
        fail(f"{config_path}: its problems cannot be rebuilt ({err})")
    for task, problem in table.items():  # the head's output order fixes each class index's meaning
        labels = list(problem.labels) if problem.labels else None
        if record["task_labels"][task] != labels:
            fail(f"{config_path}: {task}'s labels are {record['task_labels'][task]}, this code's are {labels}")
    # The record is the model config plus the keys model_config_record adds; BertConfig keeps those as extras.
    config = method.modeling.BertConfig.from_dict(record, source=str(config_path))
    max_seq_length = args.max_seq_length or record["max_seq_length"]
    if method.pad_to_max_length and max_seq_length != record["max_seq_length"]:
        fail(f"--max_seq_length {max_seq_length}: Gated-BERT's gate reads exactly the {record['max_seq_length']} "
             f"tokens it was trained with ({config_path})")
    groups = record.get("task_groups")
    row_of = problems.group_rows([[name] for name in heads] if groups is None else groups)
    if groups is not None and [name for group in groups for name in group] != heads:
        fail(f"{config_path}: task_groups {groups} do not list the heads {heads} in order")
    state, _, checkpoint = read_mapped_state(checkpoint)
    check_heads(state, heads, checkpoint, config_path, user_problems)
    args_file = directory / ARGS_FILE
    model = load_model(method, config, heads, state, checkpoint, user_problems, None if groups is None else len(groups))
    return LoadedModel(model, method, heads, tasks_to_predict(args.tasks, heads, user_problems), vocab_file,
                       record["do_lower_case"], max_seq_length,
                       json.loads(args_file.read_text(encoding="utf-8")) if args_file.is_file() else {},
                       user_problems, row_of)


def load_checkpoint_file(args):
    """A bare state dict: ours (heads = --tasks) or the original code's (heads = ALL_TASKS), with the flags' files."""
    path = Path(args.model_dir)
    if args.bert_config_file is None or args.vocab_file is None:
        fail(f"--model_dir {path} is a checkpoint file: give --bert_config_file and --vocab_file (and "
             "--do_lower_case for an uncased model) as its training run had them")
    state, original, path = read_mapped_state(path)
    pals_width = modeling_pals.hidden_size_aug_of(state)  # None unless the checkpoint has PALs
    name = args.model or ("gated" if any(GATE_KEY.search(key) for key in state)
                          else "pals" if pals_width is not None else "embert")
    method = METHODS[name]
    user_problems = read_user_problems(args.problems) if args.problems is not None else {}
    if original:
        heads, source = list(ALL_TASKS), "the original code's --tasks all order"
        tasks = tasks_to_predict(args.tasks, heads)
    else:  # --tasks describes the heads, as in the training run; all of them are predicted
        try:
            heads = problems.resolve_problems(args.tasks or "all", user_problems=user_problems)
        except ValueError as err:
            fail(f"--tasks: {err}")
        source, tasks = f"--tasks {args.tasks or 'all'}", tasks_to_predict(None, heads, user_problems)
    check_heads(state, heads, path, source, user_problems)
    try:
        config = method.modeling.BertConfig.from_json_file(args.bert_config_file)
    except (OSError, ValueError) as err:
        fail(f"--bert_config_file: {err}")
    max_seq_length = args.max_seq_length or DEFAULT_MAX_SEQ_LENGTH
    if method.pad_to_max_length:
        # As in training. The gate's input size fixes max_seq_length: a mismatch fails to load, naming both lengths.
        # The adapters' rank is a shape only (the original's --h_aug): take the checkpoint's.
        rank = next((value.shape[0] for key, value in state.items() if ADAPTER_KEY.search(key)), None)
        config = configure_model(method, config, max_seq_length, rank)
    elif name == "pals":  # the PAL width is a shape only (the original's --h_aug): take the checkpoint's
        config = configure_model(method, config, max_seq_length, pals_width)
    return LoadedModel(load_model(method, config, heads, state, path, user_problems), method, heads, tasks,
                       Path(args.vocab_file), bool(args.do_lower_case), max_seq_length, {}, user_problems,
                       problems.group_rows([[name] for name in heads]))


# ------------------------------------------------------------------------------------------------ submission files

@dataclass(frozen=True)
class Job:
    """One prediction file: a problem's data split, the file's name, and whether it is one of the GLUE server's."""

    problem: object  # a Problem
    split: str
    file_name: str
    glue: bool


def prediction_jobs(loaded, split):
    """Every file `loaded.tasks` give for --split test or dev: GLUE's submission files (a dev split under its test
    split's name: dev_matched -> test_matched -> MNLI-m.tsv), and <name>.tsv / <name>.conll for other problems."""
    jobs = []
    for task in loaded.tasks:
        problem = loaded.problem(task)
        if problem_types.of(problem).masks_inputs:  # scored on its masked dev texts: metrics, no file (no test split)
            jobs += [Job(problem, s, f"{problem.name} {s} (masked LM)", glue=False)
                     for s in problem.expand_splits(split)]
        elif problem.submission_files:
            for test_split in problem.test_splits:
                data_split = test_split if split == "test" else test_split.replace("test", "dev", 1)
                if data_split in problem.splits:
                    jobs.append(Job(problem, data_split, problem.submission_file(test_split), glue=True))
        else:
            jobs += [Job(problem, s, problems.prediction_file_name(problem, s), glue=False)
                     for s in problem.expand_splits(split)]
    return jobs


def prediction_files(loaded):
    """Every file this script may write for this model: what --overwrite_output_dir replaces, and nothing else."""
    glue = [task.submission_file(split) for task in TASKS.values() for split in task.test_splits]
    own = [problems.prediction_file_name(loaded.problem(t), s) for t in loaded.tasks
           if problem_types.of(loaded.problem(t)).file_suffix is not None
           for kind in ("dev", "test") for s in loaded.problem(t).expand_splits(kind)]
    return [*glue, *own, SUBMISSION_ZIP, DEV_RESULTS]


def write_zip(path, files):
    """The files at the archive's root, as the GLUE server expects them."""
    def write(tmp):
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in files:
                archive.write(file, arcname=file.name)
    write_atomic(path, write)


def not_written(loaded, split, written, missing):
    """Each of the GLUE server's files, and each asked-for problem's file, that was not written, with the reason."""
    notes = []
    # The GLUE server's files are listed for a model that has a GLUE head or was asked for a GLUE task; a model of
    # other problems only is no GLUE submission, and its absent files are no news.
    glue = any(name in TASKS for name in (*loaded.heads, *loaded.tasks))
    for task, problem in (TASKS.items() if glue else ()):
        for test_split in problem.test_splits:
            name = problem.submission_file(test_split)
            if name in written:
                continue
            if name in missing:
                reason = f"{missing[name]} not found"
            elif task in loaded.tasks:  # asked for, but the task has no such split (AX has no dev set)
                reason = f"{task} has no {split} set"
            elif not can_predict(problem, loaded.heads):
                reason = f"the model has no {head_task(problem)} head"
            else:
                reason = "not in --tasks"
            notes.append(f"{name} ({reason})")
    for task in loaded.tasks:
        problem = loaded.problem(task)
        if problem.submission_files:
            continue
        if problem_types.of(problem).masks_inputs and split != "dev":
            notes.append(f"{task} ({problem.type}: no prediction file; --split dev reports its metrics)")
        elif not problem.expand_splits(split):
            notes.append(f"{task} ({task} has no {split} set)")
        notes += [f"{name} ({missing[name]} not found)" for name in missing
                  if name.startswith((f"{task}.", f"{task}-", f"{task} "))]
    return notes


def record_source(loaded, problem, args):
    """For a problem whose files are the paths of a user problem's record (not under --data_dir): where that record
    comes from and how to point it elsewhere; None for the others."""
    own = problem.inputs_of if problem.inputs_of in loaded.user_problems else problem.name
    if own not in loaded.user_problems:
        return None
    source = f"--problems {args.problems}" if args.problems else f"the run's {CONFIG_FILE}"
    return f"{own}'s paths are those of its record in {source}; --problems FILE gives them new ones"


# ------------------------------------------------------------------------------------------------ main

def main(args):
    # ---------------------------------------------------------------- set-up: model, data settings, device
    check_output_dir(args.output_dir, "--output_dir")
    if not Path(args.model_dir).exists():
        fail(f"--model_dir {args.model_dir} does not exist")
    loaded = load_run_directory(args) if Path(args.model_dir).is_dir() else load_checkpoint_file(args)
    model, run_args = loaded.model, loaded.run_args
    data_dir = args.data_dir or run_args.get("data_dir")
    if data_dir is None:
        fail("--data_dir is required with a checkpoint file")
    cache_dir = args.cache_dir or run_args.get("cache_dir")
    batch_size = args.eval_batch_size or run_args.get("eval_batch_size", DEFAULT_EVAL_BATCH_SIZE)
    try:
        check_model_inputs(model.config, loaded.vocab_file, loaded.max_seq_length, "the model's config")
    except (OSError, ValueError) as err:
        fail(str(err))
    output_dir = Path(args.output_dir)
    if output_dir.is_dir() and any(output_dir.iterdir()) and not args.overwrite_output_dir:
        fail(f"--output_dir {output_dir} is not empty: pass --overwrite_output_dir to replace its predictions")
    device = select_device(args.no_cuda)
    precision = resolve_precision("auto", device)  # bf16 on CUDA where the GPU supports it, else fp32
    model.to(device)
    pad_to = batch_padding(loaded.method, loaded.max_seq_length)
    masked = [t for t in loaded.tasks if problem_types.of(loaded.problem(t)).masks_inputs]
    masking_spec = masking.Masking.from_vocab(tokenization.load_vocab(loaded.vocab_file)) if masked else None
    print(f"{loaded.method.name} model {args.model_dir} (heads {','.join(loaded.heads)}) | {device.type} "
          f"{precision} | {args.split} sets of {','.join(loaded.tasks)}")
    origin = "--data_dir" if args.data_dir else f"the training run's --data_dir ({ARGS_FILE})"
    print(f"reading the {args.split} files from {data_dir} ({origin})")

    # ---------------------------------------------------------------- data: every file read before any prediction
    if args.split == "test" and len(masked) == len(loaded.tasks):
        fail(f"--split test: {','.join(loaded.tasks)} are masked-LM / pre-training problems, with no test predictions; "
             "--split dev reports their metrics")
    jobs, missing, features = prediction_jobs(loaded, args.split), {}, {}
    for job in jobs:
        path = problems.problem_file(data_dir, job.problem, job.split)
        if not path.is_file():
            missing[job.file_name] = path
            source = record_source(loaded, job.problem, args)
            print(f"{job.file_name}: skipped, {path} not found" + (f" ({source})" if source else ""))
            continue
        try:
            data = problems.load_problem_features(
                job.problem, job.split, data_dir, loaded.vocab_file, loaded.do_lower_case, loaded.max_seq_length,
                cache_dir=cache_dir, user_problems=loaded.user_problems)
        except ValueError as err:  # a malformed file: stop before writing a partial submission
            fail(str(err))
        # A masked LM's dev set masked as the training run masked it, so it scores the same tokens.
        features[job.file_name] = evaluation.dev_set(job.problem, data, masking_spec)
    if not features:
        sources = sorted({source for job in jobs if (source := record_source(loaded, job.problem, args))})
        if not sources:
            fail(f"--data_dir {data_dir} has none of the {args.split} files of {','.join(loaded.tasks)}")
        under = sorted({job.problem.name for job in jobs if record_source(loaded, job.problem, args) is None})
        fail(f"none of the {args.split} files of {','.join(loaded.tasks)} was found: " +
             "; ".join(([f"--data_dir {data_dir} holds none of {','.join(under)}'s"] if under else []) + sources))

    # ---------------------------------------------------------------- predict, write one file per split
    output_dir.mkdir(parents=True, exist_ok=True)
    for name in prediction_files(loaded):  # an earlier prediction's (--overwrite_output_dir), maybe of another --split
        (output_dir / name).unlink(missing_ok=True)
    written, scores = [], {}
    for job in jobs:
        if job.file_name in missing:
            continue
        problem, data, head = job.problem, features[job.file_name], head_of(job.problem, loaded.heads)
        if head is None:  # WNLI without a head of its own: its row's default (majority) class for every example
            predictor = problem
            predictions = torch.full((len(data),), problem.labels.index(problem.default_label))
        else:  # with the problem's own head, or the one its row names (AX: MNLI's)
            index = loaded.heads.index(head)
            predictor = loaded.problem(head)
            if args.num_beams is not None and predictor.decoder is not None:  # a seq2seq problem's beam width
                beams = dataclasses.replace(predictor.decoder, num_beams=args.num_beams)
                predictor = dataclasses.replace(predictor, decoder=beams)
            predictions = evaluation.predict_split(model, predictor, data, loaded.row_of[index], index, batch_size,
                                                   device, AUTOCAST_DTYPES.get(precision), pad_to,
                                                   desc=f"{problem.name} {job.split}", vocab_file=loaded.vocab_file)
        if args.split == "dev":
            scores.setdefault(problem.name, {}).update(
                evaluation.split_metrics(problem, job.split, predictions, data))
        if problem_types.of(problem).masks_inputs:
            print(f"{job.file_name}: {int(predictions['masked'])} masked tokens of {len(data)} texts, scored")
            continue
        problem_types.of(predictor).write(problem, job.split, predictions, data, output_dir / job.file_name,
                                          lambda: readers.read_examples(problem, job.split, data_dir))
        written.append(job)
        examples = len(example_rows(data))  # a cut sentence is one example in several rows (pieces)
        if problem_types.of(problem).per_token:
            print(f"{job.file_name}: {examples} sentences in {len(data)} pieces")
        else:
            print(f"{job.file_name}: {examples} predictions")

    # ---------------------------------------------------------------- the zip or the dev metrics; what is missing
    submission = [output_dir / job.file_name for job in written if job.glue]
    if args.split == "test" and submission:
        write_zip(output_dir / SUBMISSION_ZIP, submission)
        print(f"{output_dir / SUBMISSION_ZIP}: {len(submission)} files")
    elif args.split == "dev":
        # The mean averages the problems the model has a head for, as the training run's does; a majority-class
        # WNLI is reported but not averaged (None when it is all there is).
        by_name = {t: loaded.problem(t) for t in scores}
        head_scores = {t: s for t, s in scores.items() if t in loaded.heads}
        overall = evaluation.mean_score(head_scores, by_name) if head_scores else None
        save_json({"model_dir": str(Path(args.model_dir).absolute()),
                   **evaluation.score_record(scores, overall,
                                             [loaded.problem(t) for t in dict.fromkeys([*loaded.heads, *scores])])},
                  output_dir / DEV_RESULTS)
        label = evaluation.overall_label([loaded.problem(t) for t in loaded.heads])
        print(f"dev: {evaluation.format_scores(scores, overall, label)}" if head_scores else f"dev: {scores}")
    notes = not_written(loaded, args.split, {job.file_name for job in written}, missing)
    if notes:
        print(f"not written: {'; '.join(notes)}")


if __name__ == "__main__":
    with exit_on_interrupt():
        main(parse_args())
