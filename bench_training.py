"""bench.py's timed paths on the five GLUE tasks' batches: the batches drawn, the FLOP model, the runners of paths
(1) to (3), the timing and its summaries, and the train, fwdbwd, eval, gated and pals sections (bench.py's docstring
says what each measures)."""
import argparse
import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.profiler import record_function

import evaluation
import modeling
import modeling_gated
import modeling_pals
import optimization
from features import make_batch, take_examples
from glue_processors import TASKS, load_features
from hardware import AUTOCAST_DTYPES, PAD_MULTIPLE, compile_encoder, to_device
from original_reference import OriginalBertAdam, use_original_attention
from sampler import STEPS_PER_TASK_PER_EPOCH, TaskSampler, embert_alpha
from train_step import LossTally, training_step

# The five GLUE tasks whose training sets are in ../shared/glue (QQP, MNLI and QNLI train are too large to be there).
BENCH_TASKS = ("cola", "mrpc", "rte", "sts", "sst")
# The seed run's command: batch 32, length 128, lr 2e-5, 25 epochs of 300 steps per task; with its eight tasks,
# 60,000 optimizer steps.
BATCH_SIZE, MAX_SEQ_LENGTH, LEARNING_RATE, WARMUP_PROPORTION = 32, 128, 2e-5, 0.1
SEED_RUN_EPOCHS, SEED_RUN_STEPS, SEED = 25, 60_000, 1
# The original Gated code's reported speed: about 0.6 s per step on a V100 in fp32 (about 10 hours for a run), the
# anchor printed beside the projection of ours.
ORIGINAL_V100_SECONDS_PER_STEP = 0.6
# Calls per measurement of the per-step batch pipeline (sampler draw, make_batch, copy to the device).
PIPELINE_CALLS = 200
# Batches drawn (not run) to check that the timed batches' padding is typical of the whole seed run.
REFERENCE_DRAWS = 2000
# Rows of torch.profiler's table shown and saved.
PROFILE_ROWS = 20
# Model FLOPs per parameter and token (or sequence) of a training step: a multiply-add forward (2), twice that again
# backward (4); forward only: 2.
TRAIN_FLOPS_PER_PARAMETER, FORWARD_FLOPS_PER_PARAMETER = 6, 2
# torch.optim.Optimizer labels its step and zero_grad for the profiler as "Optimizer.step#<class>.step".
OPTIMIZER_EVENT_PREFIX = "Optimizer."
MICROSECONDS = 1e6


# ----------------------------------------------------------------------------------------------------------------------
# Batches, FLOPs

@dataclass(frozen=True)
class Draw:
    """One training step's batch: the task, the epoch of the seed run it comes from, the example indices (B,)."""
    task: int
    epoch: int
    indices: torch.Tensor


def draw_batches(sizes, count, seed, anneal_alpha, batch_size=BATCH_SIZE):
    """`count` batches at steps spread evenly over the seed's 25-epoch run, each task drawn by the anneal sampler
    (p_t ~ N_t^alpha, alpha 1 -> 0.2 for EmBERT), then that task's next `batch_size` examples."""
    steps_per_epoch = STEPS_PER_TASK_PER_EPOCH * len(sizes)
    total_steps = SEED_RUN_EPOCHS * steps_per_epoch
    sampler = TaskSampler(sizes, "anneal", steps_per_epoch, SEED_RUN_EPOCHS, seed, anneal_alpha)
    schedules, draws = {}, []
    for k in range(count):
        epoch, step = divmod(k * total_steps // count, steps_per_epoch)
        if epoch not in schedules:
            schedules[epoch] = sampler.tasks_for_epoch(epoch)
        task = int(schedules[epoch][step])
        draws.append(Draw(task, epoch, sampler.next_indices(task, batch_size)))
    return draws


def padding_statistics(train_sets, draws):
    """Mean real tokens per batch, and mean tokens per batch padded to the longest (rounded up to PAD_MULTIPLE)."""
    real = padded = 0
    for draw in draws:
        lengths = train_sets[draw.task].lengths[draw.indices]
        real += int(lengths.sum())
        padded += len(lengths) * padded_width(lengths, None)
    return {"real_tokens_per_batch": real / len(draws), "padded_to_longest_tokens_per_batch": padded / len(draws)}


def padded_width(lengths, pad_to):
    """The batch width make_batch gives: pad_to, or the longest example rounded up to PAD_MULTIPLE."""
    if pad_to is not None:
        return pad_to
    return -(-int(lengths.max()) // PAD_MULTIPLE) * PAD_MULTIPLE


@dataclass(frozen=True)
class FlopModel:
    """Parameters multiplied once per token and once per sequence (per task), and the attention's sizes."""
    per_token: int
    per_sequence: list  # per task
    layers: int
    hidden: int  # attention width per layer: hidden_size, plus hidden_size_aug for the PAL's attention

    @classmethod
    def of(cls, model):
        encoder = model.bert.encoder
        per_token = sum(p.numel() for n, p in encoder.named_parameters() if "task_emb" not in n
                        and ".weight_layer_" not in n and ".value_list." not in n and ".multi_layers." not in n)
        heads = [sum(p.numel() for p in head.parameters()) for head in model.classifier]
        per_sequence = sum(p.numel() for p in model.bert.pooler.parameters())
        gated = encoder.layer[-1].attention.self
        if isinstance(gated, modeling_gated.GatedSelfAttention):
            per_token += sum(p.numel() for p in gated.value_list[0].parameters())  # the own task's value adapter
            per_sequence += sum(p.numel() for gate in (gated.weight_layer_q, gated.weight_layer_k)
                                for p in gate.parameters())
        attention_width = model.config.hidden_size
        if isinstance(encoder, modeling_pals.BertEncoder):  # one task's PAL per layer, its V_E/V_D in each of them
            per_token += sum(p.numel() for layer in encoder.layer for p in layer.multi_layers[0].parameters())
            attention_width += model.config.hidden_size_aug
        return cls(per_token, [per_sequence + head for head in heads], model.config.num_hidden_layers,
                   attention_width)

    def batch_flops(self, task, lengths, training):
        """Useful FLOPs of one batch with real lengths `lengths` (B,): bench.py's docstring."""
        per_parameter = TRAIN_FLOPS_PER_PARAMETER if training else FORWARD_FLOPS_PER_PARAMETER
        squares = float((lengths.double() ** 2).sum())
        return (per_parameter * (self.per_token * int(lengths.sum()) + self.per_sequence[task] * len(lengths))
                + 2 * per_parameter * self.layers * self.hidden * squares)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------------------------------
# The paths

@dataclass
class Runner:
    """One path: a training step, a forward+backward pass and a forward-only pass over an evaluation set."""
    name: str
    model: torch.nn.Module
    pad_to: int | None  # training batch width: None = the longest example, rounded up to PAD_MULTIPLE
    train_step: Callable  # Draw -> None
    forward_backward: Callable  # Draw -> None, gradients left in .grad
    predict: Callable | None = None  # (task, Features) -> ours: predictions (predict_split); others: CPU logits
    eval_pad_to: int | None = None  # evaluation batch width, as pad_to


@dataclass
class Setting:
    """What every path of a run shares."""
    device: torch.device
    autocast_dtype: torch.dtype | None  # ours and transformers; the original is fp32
    train_sets: list  # Features per task
    eval_batch_size: int
    max_seq_length: int = MAX_SEQ_LENGTH

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)


@dataclass
class BenchRun:
    """What the sections read: the flags, the device, its precision, the model's sizes and the GPU's peak; the five
    GLUE tasks' training sets and draws once load_glue_batches has read them."""
    args: argparse.Namespace
    device: torch.device
    precision: str  # as hardware.resolve_precision gives it: "fp32" or "bf16"
    config: modeling.BertConfig
    peak: float | None  # dense bf16 TFLOP/s; None: no MFU
    setting: Setting | None = None
    timed: list | None = None  # Draw per timed step
    warmup: list | None = None  # Draw per warm-up step


def head_batch(model, train_sets, heads, indices, pad_to=None):
    """The batch train_step.training_batch builds for heads on the pooled output or the tokens (one process, one
    micro-batch), on the host: make_batch of the first head's features, and "head_labels", each head's labels of the
    examples at `indices` from its own features (an & group's problems have the same inputs), as its type reads
    them. Without the labelled-token counts: each per-token loss divides by its batch's own count (one micro-batch)."""
    batch = make_batch(train_sets[heads[0]], indices, pad_to=pad_to, pad_multiple=PAD_MULTIPLE)
    for key in ("labels", "token_labels"):  # the first head's; each head's come from its own features below
        batch.pop(key, None)
    batch["head_labels"] = [model.head_types[h].example_labels(train_sets[h], indices) for h in heads]
    return batch


def ours_runner(model, setting, name="ours", pad_to=None, frozen_parameters=None):
    """Path (1): one step of multitask.main's loop (one process, gradient accumulation 1): the batch built and copied
    as it builds it (head_batch, then hardware.to_device), then train_step.training_step itself with the task's
    loss_weight, its loss added to a train_step.LossTally as the loop adds it. The record_function labels cost
    nothing without an active profiler and name the phases in --profile. Evaluation: evaluation.predict_split."""
    device = setting.device
    model.to(device).train()
    optimizer = optimization.build_optimizer(model, "adamw", LEARNING_RATE, device_type=device.type)
    scheduler = optimization.linear_warmup_decay(optimizer, SEED_RUN_STEPS, WARMUP_PROPORTION)
    # As multitask.main: loss scaling only for fp16 (disabled, scale/unscale_/update do nothing, for bf16 and fp32).
    scaler = torch.amp.GradScaler(device.type, enabled=setting.autocast_dtype == torch.float16)
    tally = LossTally.zeros(len(setting.train_sets), device)
    # Each task's loss_weight, on the device once, as multitask.main's group_weights.
    weights = [torch.tensor([TASKS[task].loss_weight], device=device) for task in BENCH_TASKS]

    def batch_on_device(draw):
        with record_function("make_batch"):
            return to_device(head_batch(model, setting.train_sets, [draw.task], draw.indices, pad_to), device)

    def forward_backward(draw):
        """The forward and backward pass of training_step, without its optimizer step (the fwdbwd section)."""
        batch = batch_on_device(draw)
        with record_function("forward"), setting.autocast():
            loss = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], draw.task,
                         batch["head_labels"], token_index=batch["token_index"]).losses[0]
        with record_function("backward"):
            scaler.scale(loss).backward()

    def train_step(draw):
        batches = [batch_on_device(draw)]
        frozen = frozen_parameters(model, draw.task, draw.epoch) if frozen_parameters else ()
        with record_function("training_step"):
            tally.add([draw.task], training_step(model, model, batches, draw.task, [draw.task], optimizer,
                                                 scheduler, scaler, weights[draw.task], setting.autocast_dtype,
                                                 frozen))

    def predict(task, features):
        return evaluation.predict_split(model, TASKS[BENCH_TASKS[task]], features, task, task,
                                        setting.eval_batch_size, device, setting.autocast_dtype, pad_to=pad_to)

    return Runner(name, model, pad_to, train_step, forward_backward, predict, eval_pad_to=pad_to)


def original_runner(model, setting, frozen_parameters=None):
    """Path (2): the original's computation (bench.py's docstring); plain synchronous copies to the device, as its
    `t.to(device)`; evaluation in file order, padded to max_seq_length, logits to the host per batch, as it did."""
    device, pad_to = setting.device, setting.max_seq_length
    use_original_attention(model).to(device).train()
    optimizer = OriginalBertAdam(optimization.param_groups(model), lr=LEARNING_RATE)
    scheduler = optimization.linear_warmup_decay(optimizer, SEED_RUN_STEPS, WARMUP_PROPORTION)

    def batch_on_device(features, indices):
        batch = make_batch(features, indices, pad_to=pad_to)
        return {k: v.to(device) for k, v in batch.items()}

    def forward_backward(draw):
        batch = batch_on_device(setting.train_sets[draw.task], draw.indices)
        loss = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], draw.task,
                     [batch["labels"]]).losses[0]
        loss.backward()

    def train_step(draw):
        forward_backward(draw)
        if frozen_parameters is not None:
            for p in frozen_parameters(model, draw.task, draw.epoch):
                p.grad = None
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=False)  # PyTorch 0.4's model.zero_grad() zeroed gradients in place

    @torch.no_grad()
    def predict(task, features):
        model.eval()
        logits = []
        for start in range(0, len(features), setting.eval_batch_size):
            batch = batch_on_device(features, torch.arange(start, min(start + setting.eval_batch_size,
                                                                      len(features))))
            logits.append(model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                                task).logits[0].cpu())
        model.train()
        return torch.cat(logits)

    return Runner("original", model, pad_to, train_step, forward_backward, predict, eval_pad_to=pad_to)


def transformers_config(transformers, config, **extra):
    """transformers.BertConfig with the sizes and settings of our `config` (plus `extra`)."""
    return transformers.BertConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, intermediate_size=config.intermediate_size,
        hidden_act=config.hidden_act, hidden_dropout_prob=config.hidden_dropout_prob,
        attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        max_position_embeddings=config.max_position_embeddings, type_vocab_size=config.type_vocab_size,
        layer_norm_eps=config.layer_norm_eps, **extra)


def transformers_optimizer(model, device):
    """torch.optim.AdamW as a Hugging Face user sets it up (foreach on CPU, fused on CUDA), with our schedule."""
    # Hugging Face's run_glue rule: no decay for biases and LayerNorm weights.
    decay = [p for n, p in model.named_parameters() if not n.endswith("bias") and "LayerNorm" not in n]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": optimization.WEIGHT_DECAY},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=LEARNING_RATE,
                                  fused=fused or None, foreach=None if fused else True)
    return optimizer, optimization.linear_warmup_decay(optimizer, SEED_RUN_STEPS, WARMUP_PROPORTION)


def transformers_update(model, optimizer, scheduler):
    """Path (3)'s update after the backward pass: clip the global norm, step, schedule, drop the gradients."""
    torch.nn.utils.clip_grad_norm_(model.parameters(), optimization.MAX_GRAD_NORM)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def transformers_runner(config, setting):
    """Path (3), or None with a printed note when transformers is not installed."""
    try:
        import transformers
    except ImportError:
        print("note: transformers is not installed: path (3) skipped (pip install transformers to include it)")
        return None
    device = setting.device
    hf_config = transformers_config(transformers, config, num_labels=2)
    model = transformers.BertForSequenceClassification(hf_config).to(device).train()
    optimizer, scheduler = transformers_optimizer(model, device)

    def forward_backward(draw):
        batch = to_device(make_batch(setting.train_sets[draw.task], draw.indices, pad_multiple=PAD_MULTIPLE),
                          device)
        # A 2-way stand-in for STS-B's regression target: the head's size, not the label, matters for speed.
        labels = batch["labels"] if not batch["labels"].is_floating_point() else (batch["labels"] > 0.5).long()
        with setting.autocast():
            loss = model(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"],
                         attention_mask=batch["attention_mask"], labels=labels).loss
        loss.backward()

    def train_step(draw):
        forward_backward(draw)
        transformers_update(model, optimizer, scheduler)

    @torch.no_grad()
    def predict(task, features):
        """As evaluation.predict_split: batches sorted by length, padded to the longest, logits gathered on the
        device."""
        model.eval()
        order = torch.argsort(features.lengths, descending=True, stable=True)
        logits_out = torch.empty(len(features), hf_config.num_labels, device=device)
        order_on_device = order.to(device)
        for start in range(0, len(features), setting.eval_batch_size):
            batch = to_device(make_batch(features, order[start:start + setting.eval_batch_size],
                                         pad_multiple=PAD_MULTIPLE), device)
            with setting.autocast():
                logits = model(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"],
                               attention_mask=batch["attention_mask"]).logits
            logits_out[order_on_device[start:start + setting.eval_batch_size]] = logits.float()
        model.train()
        return logits_out.cpu()

    return Runner("transformers", model, None, train_step, forward_backward, predict)


# ----------------------------------------------------------------------------------------------------------------------
# Timing

class StepClock:
    """Times each call without adding host syncs: CUDA events recorded around it on the current stream (read after
    the round's single synchronisation), or perf_counter on the CPU, where every op has finished when it returns."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.marks = []

    def run(self, function, *args):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            function(*args)
            end.record()
        else:
            start = time.perf_counter()
            function(*args)
            end = time.perf_counter()
        self.marks.append((start, end))

    def seconds(self):
        """Seconds of each call since the last reading (synchronises CUDA once)."""
        if self.cuda:
            torch.cuda.synchronize()
            times = [start.elapsed_time(end) / 1e3 for start, end in self.marks]  # elapsed_time is in ms
        else:
            times = [end - start for start, end in self.marks]
        self.marks = []
        return times


def forward_backward_pass(runner, draw):
    """The forward+backward section's item: one forward and backward pass, then the gradients dropped."""
    runner.forward_backward(draw)
    runner.model.zero_grad(set_to_none=True)


def timed_rounds(runners, warmup, timed, repeats, device, run):
    """Seconds of each timed item, per round, per runner: `run(runner, item)` over the warm-up items once, then
    `repeats` rounds over the timed items, the runners interleaved within each round."""
    for runner in runners:
        for item in warmup:
            run(runner, item)
    synchronize(device)
    clock = StepClock(device)
    seconds = {runner.name: [] for runner in runners}
    for _ in range(repeats):
        for runner in runners:
            for item in timed:
                clock.run(run, runner, item)
            seconds[runner.name].append(clock.seconds())
    return seconds


def summarize(seconds, per_round, references=("ours", "ours_compiled")):
    """Per path: throughputs of the median round (the headline), and of the "best" round made of each item's fastest
    time over the rounds (the least disturbed estimate on a busy machine); how many times faster each of our paths
    (`references`) is than each other path (median of the per-round ratios, and the ratio of the best rounds), as
    "ours/original". `seconds` = {path: [[s per item] per round]};
    `per_round` = {path: {"steps", "sequences", "real_tokens", "padded_tokens", "flops"}} of one round, flops being
    the model FLOPs (bench.py's docstring)."""
    paths = {}
    for name, rounds in seconds.items():
        work = per_round[name]
        totals = [sum(items) for items in rounds]
        median, best = statistics.median(totals), sum(min(times) for times in zip(*rounds))
        paths[name] = {
            "seconds_per_round": totals,
            "best_round_seconds": best,
            "steps_per_s": work["steps"] / median,
            "steps_per_s_best": work["steps"] / best,
            "steps_per_s_range": [work["steps"] / max(totals), work["steps"] / min(totals)],
            "sequences_per_s": work["sequences"] / median,
            "real_tokens_per_s": work["real_tokens"] / median,
            "real_tokens_per_batch": work["real_tokens"] / work["steps"],
            "padded_tokens_per_batch": work["padded_tokens"] / work["steps"],
            "model_tflops_per_s": work["flops"] / median / 1e12,
        }
    ratios, best_ratios = {}, {}
    for reference in (r for r in references if r in paths):
        ours = paths[reference]
        for name, path in paths.items():
            if name not in references:
                ratios[f"{reference}/{name}"] = statistics.median(
                    other / mine for mine, other in zip(ours["seconds_per_round"], path["seconds_per_round"]))
                best_ratios[f"{reference}/{name}"] = path["best_round_seconds"] / ours["best_round_seconds"]
    return {"paths": paths, "ratios": ratios, "ratios_best": best_ratios}


def add_mfu(section, peak):
    for path in section["paths"].values():
        path["mfu"] = path["model_tflops_per_s"] / peak if peak else None


def training_work(runners, draws, setting, flops):
    """Steps, sequences, tokens and model FLOPs of one round over `draws`, per runner."""
    work = {}
    for runner in runners:
        totals = dict(steps=len(draws), sequences=0, real_tokens=0, padded_tokens=0, flops=0.0)
        for draw in draws:
            lengths = setting.train_sets[draw.task].lengths[draw.indices]
            totals["sequences"] += len(lengths)
            totals["real_tokens"] += int(lengths.sum())
            totals["padded_tokens"] += len(lengths) * padded_width(lengths, runner.pad_to)
            totals["flops"] += flops.batch_flops(draw.task, lengths, training=True)
        work[runner.name] = totals
    return work


def eval_work(runner, eval_sets, batch_size, flops):
    """One round of evaluation: every task's set in batches; sorted longest first unless padded to a fixed width."""
    totals = dict(steps=0, sequences=0, real_tokens=0, padded_tokens=0, flops=0.0)
    for task, features in eval_sets:
        lengths = features.lengths
        if runner.eval_pad_to is None:  # sorted by length, as evaluation.predict_split
            lengths = lengths.sort(descending=True).values
        for start in range(0, len(lengths), batch_size):
            chunk = lengths[start:start + batch_size]
            totals["steps"] += 1
            totals["sequences"] += len(chunk)
            totals["real_tokens"] += int(chunk.sum())
            totals["padded_tokens"] += len(chunk) * padded_width(chunk, runner.eval_pad_to)
            totals["flops"] += flops.batch_flops(task, chunk, training=False)
    return totals


def dynamo_counts():
    """Graphs compiled by torch.compile so far and graph breaks (torch._dynamo's counters)."""
    from torch._dynamo.utils import counters
    return {"graphs": counters["stats"]["unique_graphs"], "frames": counters["frames"]["total"],
            "graph_breaks": sum(counters["graph_break"].values())}


# ----------------------------------------------------------------------------------------------------------------------
# Sections

def load_glue_batches(run):
    """Read the five tasks' training sets and draw the timed and warm-up batches into `run`; the report's task counts
    and padding of the draws."""
    args = run.args
    train_sets = [load_features(args.data_dir, t, "train", args.vocab_file, True, MAX_SEQ_LENGTH,
                                cache_dir=args.cache_dir) for t in BENCH_TASKS]
    run.setting = Setting(run.device, AUTOCAST_DTYPES.get(run.precision), train_sets, args.eval_batch_size)
    sizes = [len(f) for f in train_sets]
    run.timed = draw_batches(sizes, args.steps, args.seed, embert_alpha)
    run.warmup = draw_batches(sizes, args.warmup, args.seed + 1, embert_alpha)
    # The speed-up from padding to the longest depends on the batches drawn: compare with the whole run's.
    return {"task_counts": {t: sum(d.task == i for d in run.timed) for i, t in enumerate(BENCH_TASKS)},
            "padding": {"timed_batches": padding_statistics(train_sets, run.timed),
                        f"{REFERENCE_DRAWS}_batches_over_the_run": padding_statistics(
                            train_sets, draw_batches(sizes, REFERENCE_DRAWS, args.seed, embert_alpha))}}


@dataclass
class TrainingPaths:
    """What the train, fwdbwd and eval sections share: the model every path copied, the paths, its FLOP model."""
    model: torch.nn.Module
    runners: list  # Runner per path: ours, original, transformers (unless left out)
    flops: FlopModel


def training_sections(run):
    """The train, fwdbwd and eval sections asked for, measured on the same paths (1), (2), (3) in that order; then
    --profile of path (1), and the seed run's projection from the train section."""
    args, setting = run.args, run.setting
    torch.manual_seed(args.seed)
    model = modeling.BertForMultiTask(run.config, [TASKS[t].num_labels for t in BENCH_TASKS])
    runners = [ours_runner(copy.deepcopy(model), setting), original_runner(copy.deepcopy(model), setting)]
    hf = None if args.no_transformers else transformers_runner(run.config, setting)
    runners += [hf] if hf else []
    paths = TrainingPaths(model, runners, FlopModel.of(model))
    parts = {"train": train_section, "fwdbwd": fwdbwd_section, "eval": eval_section}
    results = {name: part(run, paths) for name, part in parts.items() if name in args.sections}
    if args.profile:
        results["profile"] = profile_ours(runners[0], run.warmup + run.timed, args.profile, setting.device)
    if "train" in results:
        results["projection"] = projection(results["train"])
    return results


def train_section(run, paths):
    """One optimizer step of every path, and of path (1) compiled with --compile (its compilations counted); the host
    cost of path (1)'s batch pipeline."""
    args, setting = run.args, run.setting
    train_runners = list(paths.runners)
    if args.compile:
        compiled_model = copy.deepcopy(paths.model)
        compile_encoder(compiled_model, device=setting.device)  # as run_multi_task.py --compile
        train_runners.append(ours_runner(compiled_model, setting, name="ours_compiled"))
        before = dynamo_counts()
        print("compiling path (1): warm-up over every timed batch, so each batch width compiles before timing",
              flush=True)
        for draw in run.warmup + run.timed:
            train_runners[-1].train_step(draw)
        warmed = dynamo_counts()
    print(f"\n{time.strftime('%H:%M:%S')} timed: train ({len(train_runners)} paths x {args.repeats} rounds x "
          f"{len(run.timed)} steps)", flush=True)
    seconds = timed_rounds(train_runners, run.warmup, run.timed, args.repeats, setting.device,
                           lambda runner, draw: runner.train_step(draw))
    section = summarize(seconds, training_work(train_runners, run.timed, setting, paths.flops))
    add_mfu(section, run.peak)
    section["pipeline_us"] = pipeline_costs(setting, run.timed)
    if args.compile:
        after = dynamo_counts()
        # Each frame compilation after the first is a recompilation (a new batch width, say).
        section["compile"] = {
            "frames_compiled": warmed["frames"] - before["frames"],
            "recompilations": warmed["frames"] - before["frames"] - 1,
            "graphs": warmed["graphs"] - before["graphs"],
            "graph_breaks": warmed["graph_breaks"] - before["graph_breaks"],
            "frames_compiled_while_timed": after["frames"] - warmed["frames"]}
    return section


def fwdbwd_section(run, paths):
    """One forward and backward pass of every path, no optimizer."""
    print(f"{time.strftime('%H:%M:%S')} timed: forward+backward ({len(paths.runners)} paths x {run.args.repeats} "
          f"rounds x {len(run.timed)} steps)", flush=True)
    seconds = timed_rounds(paths.runners, run.warmup, run.timed, run.args.repeats, run.device, forward_backward_pass)
    section = summarize(seconds, training_work(paths.runners, run.timed, run.setting, paths.flops))
    add_mfu(section, run.peak)
    return section


def eval_section(run, paths):
    """Forward-only throughput over a sample of each task's dev set (--eval_examples per task; 0 = all of it)."""
    args, setting, runners = run.args, run.setting, paths.runners
    generator = torch.Generator().manual_seed(args.seed)
    eval_sets = []
    for t, name in enumerate(BENCH_TASKS):
        features = load_features(args.data_dir, name, "dev", args.vocab_file, True, MAX_SEQ_LENGTH,
                                 cache_dir=args.cache_dir)
        if args.eval_examples and args.eval_examples < len(features):
            keep = torch.randperm(len(features), generator=generator)[:args.eval_examples].sort().values
            features = take_examples(features, keep)  # in file order: the original evaluated in file order
        eval_sets.append((t, features))
    print(f"{time.strftime('%H:%M:%S')} timed: eval ({len(runners)} paths x {args.repeats} rounds x "
          f"{sum(len(f) for _, f in eval_sets)} dev examples)", flush=True)
    # One timed item = every task's set; the warm-up item = the first task's.
    seconds = timed_rounds(runners, [eval_sets[:1]], [eval_sets], args.repeats, setting.device,
                           lambda runner, sets: [runner.predict(task, features) for task, features in sets])
    work = {runner.name: eval_work(runner, eval_sets, setting.eval_batch_size, paths.flops) for runner in runners}
    section = summarize(seconds, work)
    add_mfu(section, run.peak)
    section["examples_per_task"] = {BENCH_TASKS[t]: len(f) for t, f in eval_sets}
    section["batch_size"] = setting.eval_batch_size
    return section


def gated_section(run):
    """Gated-BERT's training step: ours against the original's computation, both padded to max_seq_length."""
    args, setting = run.args, run.setting
    gated_config = modeling_gated.BertConfig.from_dict({**run.config.to_dict(), "max_seq_length": MAX_SEQ_LENGTH})
    sizes = [len(f) for f in setting.train_sets]
    timed = draw_batches(sizes, args.steps, args.seed, modeling_gated.anneal_alpha)
    warmup = draw_batches(sizes, args.warmup, args.seed + 1, modeling_gated.anneal_alpha)
    torch.manual_seed(args.seed)
    model = modeling_gated.BertForMultiTask(gated_config, [TASKS[t].num_labels for t in BENCH_TASKS])
    original_model = copy.deepcopy(model)
    runners = [ours_runner(model, setting, pad_to=MAX_SEQ_LENGTH, frozen_parameters=modeling_gated.frozen_parameters),
               original_runner(original_model, setting, frozen_parameters=modeling_gated.frozen_parameters)]
    print(f"{time.strftime('%H:%M:%S')} timed: gated train (2 paths x {args.repeats} rounds x {len(timed)} steps)",
          flush=True)
    seconds = timed_rounds(runners, warmup, timed, args.repeats, setting.device,
                           lambda runner, draw: runner.train_step(draw))
    section = summarize(seconds, training_work(runners, timed, setting, FlopModel.of(model)))
    add_mfu(section, run.peak)
    section["h_aug"] = gated_config.hidden_size_aug
    return {"gated": section}


def pals_section(run):
    """PALs' training step beside EmBERT's: path (1) for both, the same batches, the same settings."""
    args, setting = run.args, run.setting
    pals_config = modeling_pals.BertConfig.from_dict({**run.config.to_dict(), "our_attn": False})  # PAL width 204
    sizes = [len(f) for f in setting.train_sets]
    timed = draw_batches(sizes, args.steps, args.seed, embert_alpha)  # PALs anneal as EmBERT
    warmup = draw_batches(sizes, args.warmup, args.seed + 1, embert_alpha)
    heads = [TASKS[t].num_labels for t in BENCH_TASKS]
    torch.manual_seed(args.seed)
    embert = modeling.BertForMultiTask(run.config, heads)
    pals = modeling_pals.BertForMultiTask(pals_config, heads)
    runners = [ours_runner(embert, setting), ours_runner(pals, setting, name="pals")]
    print(f"{time.strftime('%H:%M:%S')} timed: PALs train beside EmBERT's (2 paths x {args.repeats} rounds x "
          f"{len(timed)} steps)", flush=True)
    seconds = timed_rounds(runners, warmup, timed, args.repeats, setting.device,
                           lambda runner, draw: runner.train_step(draw))
    work = {**training_work(runners[:1], timed, setting, FlopModel.of(embert)),
            **training_work(runners[1:], timed, setting, FlopModel.of(pals))}
    section = summarize(seconds, work)
    add_mfu(section, run.peak)
    section["hidden_size_aug"] = pals_config.hidden_size_aug
    section["parameters"] = {"ours": modeling.count_parameters(embert), "pals": modeling.count_parameters(pals)}
    return {"pals": section}


def pipeline_costs(setting, draws):
    """Microseconds per call of what path (1) does on the host before the model runs: the sampler's draw of a
    batch's indices, make_batch, the copy to the device (pinned, non-blocking; nothing on the CPU)."""
    sizes = [len(f) for f in setting.train_sets]
    sampler = TaskSampler(sizes, "anneal", STEPS_PER_TASK_PER_EPOCH * len(sizes), SEED_RUN_EPOCHS, SEED,
                          embert_alpha)
    calls = [draws[i % len(draws)] for i in range(PIPELINE_CALLS)]

    def per_call(function):
        synchronize(setting.device)
        start = time.perf_counter()
        for draw in calls:
            function(draw)
        synchronize(setting.device)
        return (time.perf_counter() - start) / len(calls) * MICROSECONDS

    def make(draw):
        return make_batch(setting.train_sets[draw.task], draw.indices, pad_multiple=PAD_MULTIPLE)

    batches = [make(draw) for draw in calls]
    copies = iter(batches)
    return {"sampler_next_indices": per_call(lambda draw: sampler.next_indices(draw.task, BATCH_SIZE)),
            "make_batch": per_call(make),
            "to_device": per_call(lambda draw: to_device(next(copies), setting.device))}


def profile_ours(runner, draws, steps, device):
    """torch.profiler over `steps` training steps of path (1): the phases and the top ops by self time."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    runner.train_step(draws[0])
    synchronize(device)
    with torch.profiler.profile(activities=activities) as profiler:
        for i in range(steps):
            runner.train_step(draws[i % len(draws)])
        synchronize(device)
    averages = profiler.key_averages()
    sort_key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\nprofile of path (1), {steps} training steps, sorted by {sort_key}:")
    print(averages.table(sort_by=sort_key, row_limit=PROFILE_ROWS))

    def is_phase(key):
        """Our labels around the batch and train_step.training_step, and torch.optim's own around its step and
        zero_grad ("Optimizer.step#AdamW.step"): the step's forward and backward are training_step less these."""
        return key in ("make_batch", "training_step") or key.startswith(OPTIMIZER_EVENT_PREFIX)

    def row(event):
        record = {"name": event.key, "calls": event.count, "self_cpu_ms": event.self_cpu_time_total / 1e3,
                  "cpu_total_ms": event.cpu_time_total / 1e3}
        if device.type == "cuda":
            record["self_device_ms"] = event.self_device_time_total / 1e3
        return record

    ops = sorted((e for e in averages if not is_phase(e.key)), key=lambda e: getattr(e, sort_key), reverse=True)
    return {"steps": steps, "phases_cpu_ms_per_step": {e.key: e.cpu_time_total / 1e3 / steps for e in averages
                                                       if is_phase(e.key)},
            "top_ops": [row(e) for e in ops[:PROFILE_ROWS]]}


# ----------------------------------------------------------------------------------------------------------------------
# Report

def print_section(title, section, device):
    on_gpu = device.type == "cuda"
    print(f"\n== {title} ==")
    print(f"{'path':<15}{'steps/s':>9}{'(min-max)':>17}{'best':>8}{'seq/s':>9}{'real tok/s':>11}{'real tok/b':>11}"
          f"{'padded tok/b':>13}{'TFLOP/s' if on_gpu else 'GFLOP/s':>9}{'MFU':>7}{'ours/path':>11}{'(best)':>8}")
    for name, p in section["paths"].items():
        low, high = p["steps_per_s_range"]
        ratio, best = section["ratios"].get(f"ours/{name}"), section["ratios_best"].get(f"ours/{name}")
        flops = p["model_tflops_per_s"] * (1 if on_gpu else 1e3)
        mfu = f"{p['mfu']:.1%}" if p.get("mfu") else "-"
        print(f"{name:<15}{p['steps_per_s']:>9.3f}{f'({low:.3f}-{high:.3f})':>17}{p['steps_per_s_best']:>8.3f}"
              f"{p['sequences_per_s']:>9.1f}{p['real_tokens_per_s']:>11.0f}{p['real_tokens_per_batch']:>11.0f}"
              f"{p['padded_tokens_per_batch']:>13.0f}{flops:>9.2f}{mfu:>7}"
              f"{f'{ratio:.2f}x' if ratio else '':>11}{f'{best:.2f}x' if best else '':>8}")
    compiled = [f"{key.split('/')[1]} {ratio:.2f}x (best {section['ratios_best'][key]:.2f}x)"
                for key, ratio in section["ratios"].items() if key.startswith("ours_compiled/")]
    if compiled:
        print("ours_compiled, times as fast as: " + ", ".join(compiled))


def projection(train):
    """Hours for the seed's 60,000-step run at the train section's speeds, and the original's V100 anchor."""
    paths = train["paths"]
    hours = {name: SEED_RUN_STEPS / p["steps_per_s"] / 3600 for name, p in paths.items()}
    return {"steps": SEED_RUN_STEPS, "hours": hours,
            "original_v100_fp32_hours_spec9": SEED_RUN_STEPS * ORIGINAL_V100_SECONDS_PER_STEP / 3600,
            "note": "at this benchmark's task mix (five small GLUE tasks, shorter sentences than the seed run's "
                    "MNLI/QNLI/QQP), so padded-to-longest paths are flattered relative to the eight-task run"}
