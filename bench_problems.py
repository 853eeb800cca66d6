"""bench.py's sections beyond the GLUE training paths: group (an & group's step against its problems' own steps, on
People's Daily), mlm (a masked-LM step against transformers' BertForMaskedLM) and data (featurising the GLUE files);
bench.py's docstring says what each measures."""
import dataclasses
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

import features as feats
import optimization
import problems
import tokenization
from bench_training import (BATCH_SIZE, LEARNING_RATE, MAX_SEQ_LENGTH, SEED_RUN_STEPS, TRAIN_FLOPS_PER_PARAMETER,
                            WARMUP_PROPORTION, FlopModel, Setting, add_mfu, draw_batches, head_batch, padded_width,
                            print_section, summarize, timed_rounds, transformers_config, transformers_optimizer,
                            transformers_update)
from checkpoints import build_model
from features import IGNORE_INDEX
from glue_processors import TASKS, load_examples, load_features, task_file
from hardware import AUTOCAST_DTYPES, batch_padding, to_device
from masking import Masking
from methods import METHODS
from run_files import fail
from sampler import embert_alpha
from train_step import BatchPlan, LossTally, token_denominators, training_batch, training_step

# The group section's & group: People's Daily problems with the same inputs (pku.PKU_PROBLEMS), its first
# member also the single-problem path's problem.
GROUP_PROBLEMS = ("pku_cws", "pku_ner", "pku_entity_types")
# The mlm section's loss check: float32 sums in another order (packed against padded, M rows against B x T) differ
# by 3e-6 at most on the fixture's and ../shared's batches (a loss near ln(vocab_size) = 10.3); the task row's
# embeddings left out of transformers' Q/K/V biases move a fresh MiniLM-sized model's loss by about 1e-3.
MLM_LOSS_TOLERANCE = 1e-4
# Rounds of the prediction head timed alone (its share of a step is an estimate beside the median step: one round).
HEAD_ROUNDS = 1
# BertForMaskedLM's output layer is tied to its word embeddings and output bias: these keys load with those.
TRANSFORMERS_TIED_KEYS = frozenset({"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"})
# The data section: official size of MNLI train and its file size in bytes (from its Git LFS pointer), for the
# synthetic stand-in; its row has 12 columns (pairs in 8 and 9, the label last).
MNLI_TRAIN_EXAMPLES, MNLI_TRAIN_BYTES, MNLI_TRAIN_COLUMNS = 392_702, 409_801_190, 12


# ----------------------------------------------------------------------------------------------------------------------
# The group section's paths

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
    accumulation 1): the batch as train_step.training_batch builds it (bench_training.head_batch: make_batch from the
    first member's features, each member's labels from its own, their inputs being the same), the copy to the device,
    then train_step.training_step itself, its loss added to a train_step.LossTally. `loss_weights`: each head's
    problem's loss_weight."""
    device = setting.device
    model.to(device).train()
    optimizer = optimization.build_optimizer(model, "adamw", LEARNING_RATE, device_type=device.type)
    scheduler = optimization.linear_warmup_decay(optimizer, SEED_RUN_STEPS, WARMUP_PROPORTION)
    scaler = torch.amp.GradScaler(device.type, enabled=setting.autocast_dtype == torch.float16)  # as ours_runner
    tally = LossTally.zeros(len(setting.train_sets), device)
    weights = [torch.tensor([loss_weights[h] for h in step_members(task_id, heads)], device=device)
               for task_id, heads in plan]  # on the device once, as multitask.main does

    def train_step(draw):
        for (task_id, heads), step_weights in zip(plan, weights):
            members = step_members(task_id, heads)
            inputs = head_batch(model, setting.train_sets, members, draw.indices)
            tally.add(members, training_step(model, model, [to_device(inputs, device)], task_id, members, optimizer,
                                             scheduler, scaler, step_weights, setting.autocast_dtype))

    return ProblemPath(name, model, plan, train_step)


def problem_step_flops(model, heads, lengths):
    """Model FLOPs of one training step of the problems `heads` (head indices) reading one encoder pass over a batch
    of real lengths `lengths` (B,): the encoder and the pooler (which always runs) as FlopModel counts them, plus
    each head on what it reads, every real token for a head whose type reads the tokens (seq_tag), the pooled output
    otherwise."""
    pooler = sum(p.numel() for p in model.bert.pooler.parameters())
    flops = dataclasses.replace(FlopModel.of(model), per_sequence=[pooler]).batch_flops(0, lengths, training=True)
    for head in heads:
        per_token = model.head_types[head].reads == "tokens"
        reads = int(lengths.sum()) if per_token else len(lengths)
        flops += TRAIN_FLOPS_PER_PARAMETER * sum(p.numel() for p in model.classifier[head].parameters()) * reads
    return flops


# ----------------------------------------------------------------------------------------------------------------------
# The mlm section's paths

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
    accumulation 1): `masked_batch(item)` (train_step.training_batch and the loss denominator), then
    train_step.training_step itself, its loss added to a train_step.LossTally."""
    device = setting.device
    model.to(device).train()
    optimizer = optimization.build_optimizer(model, "adamw", LEARNING_RATE, device_type=device.type)
    scheduler = optimization.linear_warmup_decay(optimizer, SEED_RUN_STEPS, WARMUP_PROPORTION)
    scaler = torch.amp.GradScaler(device.type, enabled=setting.autocast_dtype == torch.float16)  # as ours_runner
    tally = LossTally.zeros(1, device)
    weights = torch.tensor([loss_weight], device=device)  # on the device once, as multitask.main's group_weights

    def train_step(item):
        batch, denominator = masked_batch(item)
        tally.add([0], training_step(model, model, [batch], 0, [0], optimizer, scheduler, scaler, weights,
                                     setting.autocast_dtype, denominators=[denominator]))

    def head_inputs(batch, denominator):  # the states of the M masked tokens (M, H)
        hidden = torch.randn(len(batch["masked_index"]), model.config.hidden_size, device=device, requires_grad=True)
        return hidden, batch["masked_labels"], denominator

    def head_loss(hidden, labels, denominator):  # (M, H) -> logits (M, V) -> the loss, as BertForMultiTask's forward
        logits = model.cls.predictions(hidden, model.bert.embeddings.word_embeddings.weight)
        return model.head_types[0].loss(logits, labels, denominator)

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
    labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)  # (B, T)
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
        ours = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], task_id,
                     batch["head_labels"], token_index=batch["token_index"], masked_index=batch["masked_index"],
                     denominators=[denominator]).losses[0]
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
# Sections

def group_section(run):
    """An & group's training step against one problem's and against the three problems' steps one after another
    (bench.py's docstring), on the same People's Daily batches; no report entry, with a one-line note, without
    People's Daily."""
    args, device, config = run.args, run.device, run.config
    data_file = problems.problem_file(args.problems_data_dir, GROUP_PROBLEMS[0], "train")
    if not data_file.is_file():
        print(f"note: group section skipped: People's Daily is not at {data_file} (--problems_data_dir)")
        return {}
    records = [problems.get_problem(name) for name in GROUP_PROBLEMS]
    train_sets = [problems.load_problem_features(problem, "train", args.problems_data_dir, args.vocab_file, True,
                                                 MAX_SEQ_LENGTH, cache_dir=args.cache_dir) for problem in records]
    first = train_sets[0]
    for problem, features in zip(records[1:], train_sets[1:]):
        if not all(torch.equal(getattr(features, name), getattr(first, name))
                   for name in ("offsets", "input_ids", "segment_a_len")):
            fail(f"group section: {problem.name}'s training inputs differ from {records[0].name}'s ({data_file}); "
                 "an & group needs the same inputs")
    setting = Setting(device, AUTOCAST_DTYPES.get(run.precision), train_sets, args.eval_batch_size)
    timed = draw_batches([len(first)], args.steps, args.seed, embert_alpha)
    warmup = draw_batches([len(first)], args.warmup, args.seed + 1, embert_alpha)
    everyone = list(range(len(records)))
    weights = [problem.loss_weight for problem in records]

    def model(heads, num_groups):
        """As checkpoints.build_model for --tasks with these problems; the same initial weights for every path."""
        torch.manual_seed(args.seed)
        return build_model(METHODS["embert"], config, [records[h] for h in heads], num_groups=num_groups)[0]

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
    add_mfu(section, run.peak)
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
    return {"group": section}


def mlm_section(run):
    """A masked-LM training step, ours against transformers' BertForMaskedLM with the same weights, on the same
    masked batches of --mlm_problem (bench.py's docstring); no report entry, with a one-line note, without
    transformers."""
    args, device, config = run.args, run.device, run.config
    try:
        import transformers
    except ImportError:
        transformers = None
    if transformers is None or args.no_transformers:
        why = "--no_transformers is given" if transformers else "transformers is not installed (pip install it)"
        print(f"note: mlm section skipped: it compares with transformers' BertForMaskedLM, and {why}")
        return {}
    problem = problems.get_problem(args.mlm_problem)
    features = problems.load_problem_features(problem, "train", args.data_dir, args.vocab_file, True, MAX_SEQ_LENGTH,
                                              cache_dir=args.cache_dir)
    setting = Setting(device, AUTOCAST_DTYPES.get(run.precision), [features], args.eval_batch_size)
    # What training_batch reads of multitask.main's run: one process, one micro-batch of BATCH_SIZE, EmBERT's padding
    # (to the longest), the vocabulary's special tokens; the problem is the only group.
    batch_plan = BatchPlan(rank=0, micro_batch=BATCH_SIZE, pad_to=batch_padding(METHODS["embert"], MAX_SEQ_LENGTH),
                           device=device, masking=Masking.from_vocab(tokenization.load_vocab(args.vocab_file)))
    # Items (step, Draw): the step seeds the masking of the draw, as the global step does in multitask.main; the
    # warm-up's steps follow the timed ones', so no two items are masked alike.
    timed = list(enumerate(draw_batches([len(features)], args.steps, args.seed, embert_alpha)))
    warmup = list(enumerate(draw_batches([len(features)], args.warmup, args.seed + 1, embert_alpha),
                            start=len(timed)))

    def masked_batch(item):
        """multitask.main's batch of one step (one micro-batch) on the device, and its head's loss denominator."""
        step, draw = item
        batch, counts = training_batch(batch_plan, [problem], [features], [0], draw.indices,
                                       masking_seeds=(args.seed, step, 0))
        return batch, token_denominators([counts], world_size=1)[0]

    torch.manual_seed(args.seed)
    model, _ = build_model(METHODS["embert"], config, [problem])  # as --tasks <problem>
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
    add_mfu(section, run.peak)
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
    return {"mlm": section}


def count_encoder_passes(path, draw):
    """Encoder forward passes in one untimed training step of `path` on `draw`, counted by a forward hook."""
    calls = []
    hook = path.model.bert.register_forward_hook(lambda *_: calls.append(None))
    try:
        path.train_step(draw)
    finally:
        hook.remove()
    return len(calls)


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


def data_section(run):
    """Featurise every GLUE file in --data_dir cold in one process and in --workers processes, then from the cache.

    "Cold" = reading the file, hashing it, tokenising with a fresh tokenizer (empty word memo) and writing the cache.
    The parallel run sends every file to the worker pool, however small, to measure the parallel speed-up itself
    (load_features keeps sets under features.PARALLEL_MIN_EXAMPLES in-process). --synthetic_mnli adds a file the size
    of MNLI's training set (the real one is not in ../shared) made of real GLUE sentence pairs, to time the cached load
    of the largest task; its cold throughput is flattered by repeated sentences and is not reported.
    """
    args = run.args
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
            threshold, feats.PARALLEL_MIN_EXAMPLES = feats.PARALLEL_MIN_EXAMPLES, 0
            try:
                _, parallel = timed_call(load_features, args.data_dir, name, split, cache_dir=parallel_cache,
                                         num_workers=args.workers, **common)
            finally:
                feats.PARALLEL_MIN_EXAMPLES = threshold
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
    return {"data": section}


# ----------------------------------------------------------------------------------------------------------------------
# Report


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
