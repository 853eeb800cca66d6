"""bench.py's onnx section: evaluation on the CPU with one thread, an exported graph on onnxruntime against our
PyTorch evaluation, on the same dev batches.

    python bench.py --device cpu --sections onnx

The model: EmBERT at bench.py's sizes (random weights, one head per task), its first task's row and head exported
as export_onnx.py exports a group (the row fixed inside, every layer on the padded layout). Every task's dev batches
go through that one graph, and through the same row and head in PyTorch: the row changes no cost, and one export
keeps the section short. The batches: a sample of each task's dev set (--eval_examples per task, 0 = all), sorted
longest first and padded to the longest (rounded up to PAD_MULTIPLE), --eval_batch_size each, as
evaluation.SplitPass makes them. Timed per round over every task's set, the paths interleaved:
  ours         evaluation.predict_split, as training's evaluation and run_test_multi_task.py run it (packed tokens:
               the per-token layers on real tokens only)
  onnxruntime  make_batch, then the graph on onnxruntime's CPU provider (its default graph optimizations) over the
               padded batch
Both on one intra-op thread. Before timing, the two must agree on the longest batch of every task within
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
from bench_training import BENCH_TASKS, MAX_SEQ_LENGTH
import export_onnx
import modeling
from features import make_batch, take_examples
from glue_processors import TASKS, load_features
from hardware import PAD_MULTIPLE
from run_files import fail

# The exported row and head: the first task's.
ROW = 0


def dev_sample(args, tasks, max_seq_length):
    """Features per task: --eval_examples dev examples drawn with --seed, in file order."""
    generator = torch.Generator().manual_seed(args.seed)
    sets = []
    for name in tasks:
        features = load_features(args.data_dir, name, "dev", args.vocab_file, True, max_seq_length,
                                 cache_dir=args.cache_dir)
        if args.eval_examples and args.eval_examples < len(features):
            keep = torch.randperm(len(features), generator=generator)[:args.eval_examples].sort().values
            features = take_examples(features, keep)
        sets.append(features)
    return sets


def padded_batches(features, batch_size):
    """The batches evaluation.SplitPass makes: longest first, padded to the longest rounded up to PAD_MULTIPLE."""
    order = torch.argsort(features.lengths, descending=True, stable=True)
    return [make_batch(features, order[start:start + batch_size], pad_multiple=PAD_MULTIPLE)
            for start in range(0, len(features), batch_size)]


def onnxruntime_pass(session, features, batch_size):
    """One task's set through the graph: every batch built and run, its logits kept (as evaluation keeps them)."""
    return [session.run(None, {name: batch[name].numpy() for name in export_onnx.INPUT_NAMES})[0]
            for batch in padded_batches(features, batch_size)]


def onnx_section(run):
    """bench.py's measurement: {"onnx": ...} on the five GLUE tasks' dev sets (bench_training.BenchRun's flags and
    sizes); no report entry, with a one-line note, without the extras."""
    missing = export_onnx.missing_packages()
    if missing:
        print(f"note: onnx section skipped: {', '.join(missing)} not installed (pip install -r requirements-dev.txt)")
        return {}
    return {"onnx": measure(run.args, run.config, BENCH_TASKS, MAX_SEQ_LENGTH)}


def measure(args, config, tasks, max_seq_length):
    """Evaluation sequences/s of `tasks`' dev samples, ours against onnxruntime (module docstring)."""
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
        graph = export_onnx.GroupGraph(model, ROW, [ROW])
        longest = [torch.argsort(features.lengths, descending=True)[:args.eval_batch_size] for features in sets]
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / export_onnx.graph_file([tasks[ROW]])
            export_onnx.export_graph(graph, make_batch(sets[ROW], longest[ROW], pad_multiple=PAD_MULTIPLE),
                                     [tasks[ROW]], path)
            session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        agreement = max(export_onnx.max_difference(session, model, graph, features, indices, None)[0]
                        for features, indices in zip(sets, longest))
        if agreement > export_onnx.MAX_ABS_DIFF:
            fail(f"onnx section: onnxruntime's outputs differ from PyTorch's by {agreement:.2e}")
        device = torch.device("cpu")
        runs = {"ours": lambda features: evaluation.predict_split(model, problems[ROW], features, ROW, ROW,
                                                                  args.eval_batch_size, device),
                "onnxruntime": lambda features: onnxruntime_pass(session, features, args.eval_batch_size)}
        for run in runs.values():  # warm-up: the first task's set once
            run(sets[0])
        print(f"{time.strftime('%H:%M:%S')} timed: onnx ({len(runs)} paths x {args.repeats} rounds x "
              f"{sum(map(len, sets))} dev examples)", flush=True)
        seconds = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                for features in sets:
                    run(features)
                seconds[name].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    sequences = sum(map(len, sets))
    return {"threads": 1, "batch_size": args.eval_batch_size, "sequences": sequences,
            "examples_per_task": {task: len(features) for task, features in zip(tasks, sets)},
            "max_abs_diff": agreement,
            "paths": {name: {"seconds_per_round": rounds, "sequences_per_s": sequences / statistics.median(rounds),
                             "sequences_per_s_range": [sequences / max(rounds), sequences / min(rounds)]}
                      for name, rounds in seconds.items()},
            "ratio_onnxruntime_over_ours": statistics.median(
                ours / other for ours, other in zip(seconds["ours"], seconds["onnxruntime"]))}


def print_onnx_section(title, section, device):
    """bench.py's printer for the section."""
    print(f"\n== {title} ==")
    for name, path in section["paths"].items():
        low, high = path["sequences_per_s_range"]
        print(f"  {name:<12} {path['sequences_per_s']:9.1f} sequences/s (rounds {low:.1f}-{high:.1f})")
    print(f"  onnxruntime / ours: {section['ratio_onnxruntime_over_ours']:.2f}x; {section['sequences']} dev "
          f"sequences per round, batch {section['batch_size']}, one thread; outputs agree within "
          f"{section['max_abs_diff']:.1e}")
