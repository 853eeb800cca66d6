"""bench.py's onnx section: evaluation on the CPU with one thread, an exported graph on onnxruntime against our
PyTorch evaluation, on the same dev batches.

    python bench.py --device cpu --sections onnx

The model: EmBERT at bench.py's sizes (random weights, one head per task), exported as export_onnx.py exports a run
(one graph per task, its task row fixed inside, every layer on the padded layout). The batches: a sample of each
task's dev set (--eval_examples per task, 0 = all), sorted longest first and padded to the longest (rounded up to
PAD_MULTIPLE), --eval_batch_size each, as evaluation.SplitPass makes them. Timed per task set, rounds interleaved:
  ours         evaluation.predict_split, as training's evaluation and run_test_multi_task.py run it (packed tokens:
               the per-token layers on real tokens only)
  onnxruntime  make_batch, then the task's graph on onnxruntime's CPU provider (default graph optimizations) over
               the padded batch
Both on one intra-op thread. Before timing, the two must agree on the first batch of every task within
export_onnx.MAX_ABS_DIFF. Reported: sequences/s of the median round, the range over rounds, and how many times
faster onnxruntime is than ours (median of the per-round ratios). Skipped, with a note, without onnx, onnxscript or
onnxruntime.
"""
import statistics
import tempfile
import time
from pathlib import Path

import torch

import evaluation
import export_onnx
import modeling
from features import make_batch, take_examples
from glue_processors import TASKS, load_features
from hardware import PAD_MULTIPLE
from run_files import fail

PATHS = ("ours", "onnxruntime")


def dev_sample(args, tasks, max_seq_length):
    """[(task row, Features)]: --eval_examples dev examples per task drawn with --seed, in file order."""
    generator = torch.Generator().manual_seed(args.seed)
    sets = []
    for row, name in enumerate(tasks):
        features = load_features(args.data_dir, name, "dev", args.vocab_file, True, max_seq_length,
                                 cache_dir=args.cache_dir)
        if args.eval_examples and args.eval_examples < len(features):
            keep = torch.randperm(len(features), generator=generator)[:args.eval_examples].sort().values
            features = take_examples(features, keep)
        sets.append((row, features))
    return sets


def padded_batches(features, batch_size):
    """The batches evaluation.SplitPass makes: longest first, padded to the longest rounded up to PAD_MULTIPLE."""
    order = torch.argsort(features.lengths, descending=True, stable=True)
    return [make_batch(features, order[start:start + batch_size], pad_multiple=PAD_MULTIPLE)
            for start in range(0, len(features), batch_size)]


def onnxruntime_pass(session, features, batch_size):
    """One task set through its graph: every batch built and run, its logits kept (as evaluation keeps them)."""
    return [session.run(None, {name: batch[name].numpy() for name in export_onnx.INPUT_NAMES})[0]
            for batch in padded_batches(features, batch_size)]


def onnx_section(args, config, tasks, max_seq_length):
    """Evaluation sequences/s, ours against onnxruntime (module docstring); None, with a note, without the extras."""
    missing = export_onnx.missing_packages()
    if missing:
        print(f"onnx section skipped: {', '.join(missing)} not installed (pip install -r requirements-dev.txt)")
        return None
    import onnxruntime
    torch.manual_seed(args.seed)
    problems = [TASKS[name] for name in tasks]
    model = modeling.BertForMultiTask(config, [p.num_labels for p in problems], [p.type for p in problems]).eval()
    sets = dev_sample(args, tasks, max_seq_length)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        sessions, agreement = [], 0.0
        with tempfile.TemporaryDirectory() as folder:
            for row, features in sets:
                graph = export_onnx.GroupGraph(model, row, [row])
                path = Path(folder) / export_onnx.graph_file([tasks[row]])
                indices = torch.argsort(features.lengths, descending=True)[:args.eval_batch_size]
                export_onnx.export_graph(graph, make_batch(features, indices, pad_multiple=PAD_MULTIPLE),
                                         [tasks[row]], path)
                session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                difference, _ = export_onnx.max_difference(session, model, graph, features, indices, None)
                if difference > export_onnx.MAX_ABS_DIFF:
                    fail(f"onnx section: {tasks[row]}'s graph differs from PyTorch by {difference:.2e}")
                agreement = max(agreement, difference)
                sessions.append(session)
        device = torch.device("cpu")
        runs = {"ours": lambda row, features: evaluation.predict_split(model, problems[row], features, row, row,
                                                                       args.eval_batch_size, device),
                "onnxruntime": lambda row, features: onnxruntime_pass(sessions[row], features, args.eval_batch_size)}
        for run in runs.values():  # warm-up: the first task's set once
            run(*sets[0])
        print(f"{time.strftime('%H:%M:%S')} timed: onnx ({len(runs)} paths x {args.repeats} rounds x "
              f"{sum(len(f) for _, f in sets)} dev examples)", flush=True)
        seconds = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                for row, features in sets:
                    run(row, features)
                seconds[name].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    sequences = sum(len(features) for _, features in sets)
    return {"threads": 1, "batch_size": args.eval_batch_size, "sequences": sequences,
            "examples_per_task": {tasks[row]: len(features) for row, features in sets},
            "max_abs_diff": agreement,
            "paths": {name: {"seconds_per_round": rounds, "sequences_per_s": sequences / statistics.median(rounds),
                             "sequences_per_s_range": [sequences / max(rounds), sequences / min(rounds)]}
                      for name, rounds in seconds.items()},
            "ratio_onnxruntime_over_ours": statistics.median(
                ours / other for ours, other in zip(seconds["ours"], seconds["onnxruntime"]))}


def print_onnx_section(title, section, device):
    """bench.py's printer for the section."""
    print(f"\n{title}")
    for name, path in section["paths"].items():
        low, high = path["sequences_per_s_range"]
        print(f"  {name:<12} {path['sequences_per_s']:9.1f} sequences/s (rounds {low:.1f}-{high:.1f})")
    print(f"  onnxruntime / ours: {section['ratio_onnxruntime_over_ours']:.2f}x; {section['sequences']} dev "
          f"sequences per round, batch {section['batch_size']}, one thread; outputs agree within "
          f"{section['max_abs_diff']:.1e}")
