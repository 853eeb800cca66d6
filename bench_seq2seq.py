"""bench.py's seq2seq section: a seq2seq training step and generation, ours against transformers.EncoderDecoderModel
(BERT2BERT: a BERT encoder and a BertLMHeadModel decoder with cross-attention) and its `generate`, with the same
weights on the same real batches of cmudict_g2p (words spelled out -> phonemes, <--problems_data_dir>/cmudict).

  ours          the model --tasks cmudict_g2p builds (cmudict_g2p's 3-layer decoder, random weights; our_attn off so
                that both models hold the same parameters): a training step as multitask.main's loop runs it
                (train_step.training_batch, the loss over the step's target tokens, train_step.training_step with
                AdamW); generation as prediction runs it (one encoder pass per batch, then
                modeling_seq2seq.generate: the cross-attention keys and values once, the self-attention cache
                written in place, batched greedy or beam search)
  transformers  EncoderDecoderModel with our weights, given the same batches padded (labels -100 after each
                target; it shifts them right itself), torch.optim.AdamW with clip_grad_norm_; generation with
                generate(num_beams=...), its default cache

Before timing, the two losses on one batch (fp32, no dropout) must agree within SEQ2SEQ_LOSS_TOLERANCE and the greedy
and beam outputs on one generation batch must be equal, or the section stops with an error. A random model rarely
emits its end token, so generation runs GENERATION_LENGTH tokens per example on both paths. Skipped, with a note,
without transformers (or with --no_transformers) or without CMUdict.
"""
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

import checkpoints
import modeling_seq2seq
import optimization
import problems
from bench_training import (BATCH_SIZE, LEARNING_RATE, MAX_SEQ_LENGTH, SEED_RUN_STEPS, WARMUP_PROPORTION,
                            print_section, summarize, timed_rounds, transformers_optimizer, transformers_update)
from features import IGNORE_INDEX, PAD_ID, make_batch
from hardware import AUTOCAST_DTYPES, PAD_MULTIPLE, to_device
from methods import METHODS
from seq2seq_types import SYMBOL_END, SYMBOL_START
from train_step import BatchPlan, token_denominators, training_batch, training_step

SEQ2SEQ_PROBLEM = "cmudict_g2p"
# float32 sums in another order (the output layer on the target tokens alone, against every padded position)
# differ by about 1e-6 on a loss near ln(72) = 4.3.
SEQ2SEQ_LOSS_TOLERANCE = 1e-4
GENERATION_BEAMS = (1, 4)  # greedy, and beam search as the comparison asks
GENERATION_LENGTH = 16  # tokens generated per example: longer than 99.5% of CMUdict's pronunciations (and the end)
GENERATION_BATCHES = 3  # dev batches of --eval_batch_size words, per round


@dataclass
class Seq2SeqPath:
    """A path of the section: a training step on a Draw's indices, and generation of one dev batch."""
    name: str
    train_step: Callable  # indices (B,) -> None
    generate: Callable  # (batch, num_beams) -> (B, L) token ids after the start token


def ours_path(model, problem, train_set, device, autocast_dtype):
    optimizer = optimization.build_optimizer(model, "adamw", LEARNING_RATE, device_type=device.type)
    scheduler = optimization.linear_warmup_decay(optimizer, SEED_RUN_STEPS, WARMUP_PROPORTION)
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
    plan = BatchPlan(rank=0, micro_batch=BATCH_SIZE, pad_to=None, device=device, masking=None)
    weights = torch.ones(1, device=device)

    def train_step(indices):
        model.train()
        batch, counts = training_batch(plan, [problem], [train_set], [0], indices, masking_seeds=None)
        training_step(model, model, [batch], 0, [0], optimizer, scheduler, scaler, weights, autocast_dtype,
                      denominators=token_denominators([counts], 1))

    @torch.no_grad()
    def generate(batch, num_beams):
        model.eval()
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            memory = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], 0,
                           token_index=batch["token_index"], heads=[0]).logits[0]
            return modeling_seq2seq.generate(memory.decoder, memory, SYMBOL_START, SYMBOL_END, PAD_ID,
                                             GENERATION_LENGTH, num_beams, problem.decoder.length_penalty)

    return Seq2SeqPath("ours", train_step, generate)


def transformers_model(transformers, model, problem):
    """EncoderDecoderModel holding `model`'s weights (its encoder, and head 0's decoder)."""
    config = model.config
    common = dict(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                  num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
                  intermediate_size=config.intermediate_size, hidden_act=config.hidden_act,
                  hidden_dropout_prob=config.hidden_dropout_prob,
                  attention_probs_dropout_prob=config.attention_probs_dropout_prob,
                  max_position_embeddings=config.max_position_embeddings, type_vocab_size=config.type_vocab_size,
                  layer_norm_eps=config.layer_norm_eps)
    head = model.classifier[0]
    decoder = transformers.BertConfig(**{**common, "vocab_size": head.embeddings.word_embeddings.num_embeddings,
                                         "num_hidden_layers": len(head.layer)},
                                      is_decoder=True, add_cross_attention=True)
    hf = transformers.EncoderDecoderModel(encoder=transformers.BertModel(transformers.BertConfig(**common)),
                                          decoder=transformers.BertLMHeadModel(decoder))
    hf.config.decoder_start_token_id, hf.config.pad_token_id = SYMBOL_START, PAD_ID
    ours = model.state_dict()
    names = modeling_seq2seq.encoder_decoder_state({key: key for key in hf.state_dict()}, 0)  # ours -> theirs
    missing, unexpected = hf.load_state_dict({names[key]: ours[key] for key in names}, strict=False)
    # Tied in transformers, loaded under their other names: the output matrix is the decoder's word embeddings, the
    # output bias is cls.predictions.decoder.bias.
    tied = {"decoder.cls.predictions.decoder.weight", "decoder.cls.predictions.bias"}
    if set(missing) - tied or unexpected or set(names) != set(ours):
        raise RuntimeError(f"bench.py seq2seq section: the weights do not map one to one (transformers lacks "
                           f"{sorted(set(missing) - tied)[:3]}, ours lacks {sorted(set(ours) - set(names))[:3]})")
    return hf


def transformers_path(hf, train_set, device, autocast_dtype):
    optimizer, scheduler = transformers_optimizer(hf, device)

    def train_step(indices):
        hf.train()
        batch = to_device(make_batch(train_set, indices, pad_multiple=PAD_MULTIPLE), device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      labels=targets(batch["labels"])).loss
        loss.backward()
        transformers_update(hf, optimizer, scheduler)

    @torch.no_grad()
    def generate(batch, num_beams):
        hf.eval()
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            return hf.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               decoder_start_token_id=SYMBOL_START, eos_token_id=SYMBOL_END, pad_token_id=PAD_ID,
                               max_new_tokens=GENERATION_LENGTH, num_beams=num_beams, do_sample=False,
                               early_stopping=False)[:, 1:]

    return Seq2SeqPath("transformers", train_step, generate)


def targets(labels):
    """Our labels [start, target..., end] (IGNORE_INDEX after) -> transformers' labels: the same without the start,
    cut to the longest (B, T)."""
    labels = labels[:, 1:]
    return labels[:, :int((labels != IGNORE_INDEX).sum(1).max())].contiguous()


def check_same_loss(model, hf, train_set, device):
    """The losses on one training batch (fp32, eval mode: no dropout) must agree; RuntimeError otherwise. Returns
    them."""
    batch = to_device(make_batch(train_set, torch.arange(BATCH_SIZE), pad_multiple=PAD_MULTIPLE), device)
    model.eval(), hf.eval()
    with torch.no_grad():
        ours = float(model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], 0,
                           [batch["labels"]], token_index=batch["token_index"], heads=[0]).losses[0])
        theirs = float(hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          labels=targets(batch["labels"])).loss)
    if not abs(ours - theirs) <= SEQ2SEQ_LOSS_TOLERANCE:  # a NaN fails too
        raise RuntimeError(f"bench.py seq2seq section: ours and EncoderDecoderModel disagree on one batch's loss with "
                           f"the same weights ({ours:.6f} against {theirs:.6f}): not the same computation")
    return {"ours": ours, "transformers": theirs, "abs_diff": abs(ours - theirs), "tolerance": SEQ2SEQ_LOSS_TOLERANCE}


def seq2seq_section(run):
    """bench.py's seq2seq section (this module's docstring): {"seq2seq": result}, or {} with a one-line note."""
    args, device = run.args, run.device
    try:
        import transformers
    except ImportError:
        transformers = None
    if transformers is None or args.no_transformers:
        why = "--no_transformers is given" if transformers else "transformers is not installed (pip install it)"
        print(f"note: seq2seq section skipped: it compares with transformers' EncoderDecoderModel, and {why}")
        return {}
    problem = problems.get_problem(SEQ2SEQ_PROBLEM)
    # Random weights either way; a fresh decoder also fits an encoder of fewer layers than the decoder (--model tiny).
    problem = dataclasses.replace(problem, decoder=dataclasses.replace(problem.decoder, decoder_init="random"))
    load = lambda split: problems.load_problem_features(  # noqa: E731
        problem, split, args.problems_data_dir, args.vocab_file, True, MAX_SEQ_LENGTH, cache_dir=args.cache_dir)
    try:
        train_set, dev_set = load("train"), load("dev")
    except FileNotFoundError as error:
        print(f"note: seq2seq section skipped: {error}")
        return {}
    autocast_dtype = AUTOCAST_DTYPES.get(run.precision)
    torch.manual_seed(args.seed)
    config = dataclasses.replace(run.config, our_attn=False)
    model, _ = checkpoints.build_model(METHODS["embert"], config, [problem])  # as --tasks cmudict_g2p
    model.to(device)
    hf = transformers_model(transformers, model, problem).to(device)

    g = torch.Generator().manual_seed(args.seed)
    draws = [torch.randint(len(train_set), (BATCH_SIZE,), generator=g) for _ in range(args.warmup + args.steps)]
    warmup, timed = draws[:args.warmup], draws[args.warmup:]
    dev_batches = [to_device(make_batch(dev_set, torch.arange(k, k + args.eval_batch_size), pad_multiple=PAD_MULTIPLE),
                             device) for k in range(0, GENERATION_BATCHES * args.eval_batch_size, args.eval_batch_size)]
    loss_check = check_same_loss(model, hf, train_set, device)
    ours, theirs = ours_path(model, problem, train_set, device, autocast_dtype), \
        transformers_path(hf, train_set, device, autocast_dtype)
    for beams in GENERATION_BEAMS:  # before any training step changes the weights (both paths train alike)
        mine, other = ours.generate(dev_batches[0], beams).tolist(), theirs.generate(dev_batches[0], beams).tolist()
        if cut(mine) != cut(other):
            raise RuntimeError(f"bench.py seq2seq section: ours and EncoderDecoderModel.generate disagree with "
                               f"num_beams {beams} on the same weights: not the same search")
    paths = [ours, theirs]
    result = {"problem": problem.name, "loss_check": loss_check, "generation_length": GENERATION_LENGTH}
    lengths = train_set.lengths
    print(f"{time.strftime('%H:%M:%S')} timed: seq2seq train ({len(paths)} paths x {args.repeats} rounds x "
          f"{len(timed)} steps of {problem.name})", flush=True)
    seconds = timed_rounds(paths, warmup, timed, args.repeats, device, lambda path, indices: path.train_step(indices))
    work = {path.name: dict(steps=len(timed), sequences=BATCH_SIZE * len(timed),
                            real_tokens=sum(int(lengths[d].sum()) for d in timed),
                            padded_tokens=sum(BATCH_SIZE * int(lengths[d].max()) for d in timed), flops=0.0)
            for path in paths}
    result["train"] = summarize(seconds, work, references=("ours",))
    for beams in GENERATION_BEAMS:
        print(f"{time.strftime('%H:%M:%S')} timed: seq2seq generation, num_beams {beams}", flush=True)
        seconds = timed_rounds(paths, dev_batches[:1], dev_batches, args.repeats, device,
                               lambda path, batch, beams=beams: path.generate(batch, beams))
        tokens = [int(b["attention_mask"].sum()) for b in dev_batches]
        work = {path.name: dict(steps=len(dev_batches), sequences=args.eval_batch_size * len(dev_batches),
                                real_tokens=sum(tokens), padded_tokens=sum(b["input_ids"].numel() for b in dev_batches),
                                flops=0.0) for path in paths}
        result[generation_key(beams)] = summarize(seconds, work, references=("ours",))
    return {"seq2seq": result}


def generation_key(beams):
    return "greedy" if beams == 1 else f"beam{beams}"


def cut(rows):
    """Generated rows up to their end token (transformers pads after it, ours too; either may stop sooner)."""
    return [row[:row.index(SYMBOL_END)] if SYMBOL_END in row else row for row in rows]


def print_seq2seq_section(title, section, device):
    print_section(f"{title}: a training step", section["train"], device)
    for beams in GENERATION_BEAMS:
        print_section(f"{title}: generation of {GENERATION_LENGTH} tokens, num_beams {beams} (steps = batches)",
                      section[generation_key(beams)], device)
    check = section["loss_check"]
    print(f"loss on one batch, same weights (fp32, no dropout): ours {check['ours']:.6f}, transformers "
          f"{check['transformers']:.6f} (difference {check['abs_diff']:.1e}); greedy and beam outputs equal")

