"""Plain helpers and constants shared by several test modules (fixtures and the skip/fail rule: conftest.py).

Tiny models use deliberately odd sizes (vocab 99, hidden 32, 4 heads, intermediate 37), as Google BERT's tests do, so
that a transposed or mixed-up dimension cannot go unnoticed.
"""
import json
import math
import signal
import time

import pytest
import torch
from safetensors.torch import save_file

import cli
from conftest import require

# ---------------------------------------------------------------------------------------------------- tiny models

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64)
# Three heads: binary and 3-way classification, and a regression head (as STS-B).
TINY_HEADS = [2, 3, 1]
PAD_ID = 0  # Google BERT's [PAD] id, what the features pad with

INIT_STD = 0.02  # the config's initializer_range
# n normal draws estimate the std with a relative standard error of 1 / sqrt(2 n) and the mean with std / sqrt(n);
# allow 5 of them. Even the smallest tensor (a 32-draw head) then rejects torch's defaults: nn.Linear's
# uniform init has std 1 / sqrt(3 fan_in), 0.10 at fan_in 32 (5 times INIT_STD), nn.Embedding's is N(0, 1).
STANDARD_ERRORS = 5


def tiny_dict(**overrides):
    """A new dict: TINY with `overrides` (a changed key keeps its place, a new one goes last)."""
    return {**TINY, **overrides}


def make_batch(lengths, pad_to=None, seed=0, low=1, high=TINY["vocab_size"], cls_sep=None):
    """Random sequences of the given lengths, padded with PAD_ID to `pad_to` (default: the longest).

    Returns input_ids, token_type_ids, attention_mask, each (B, T). The second half of each sequence is segment 1, as
    a sentence pair; `cls_sep` = (cls id, sep id) puts them at the two ends, as real features have.
    """
    g = torch.Generator().manual_seed(seed)
    T = pad_to or max(lengths)
    ids = torch.full((len(lengths), T), PAD_ID)
    types = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(low, high, (n,), generator=g)
        if cls_sep:
            ids[row, 0], ids[row, n - 1] = cls_sep
        types[row, n // 2:n] = 1
        mask[row, :n] = 1
    return ids, types, mask


def assert_std(values, name):
    """`values` look drawn from N(0, INIT_STD), within STANDARD_ERRORS standard errors."""
    n = values.numel()
    assert values.std().item() == pytest.approx(INIT_STD, rel=STANDARD_ERRORS / math.sqrt(2 * n)), name
    assert abs(values.mean().item()) < STANDARD_ERRORS * INIT_STD / math.sqrt(n), name


# ---------------------------------------------------------------------------------------------------- checkpoints

def write_state(state, path):
    """Write a state dict as safetensors or a torch file, chosen by the suffix; returns the path."""
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        torch.save(state, path)
    return path


def layer_norm_names(style):
    return {"hf": ("weight", "bias"), "old": ("gamma", "beta")}[style]


def bert_checkpoint(config, prefix, layer_norm, seed=0):
    """Random weights under Google BERT's parameter names, written out here as the checkpoints have them.

    `prefix`: "bert." (Hugging Face BertFor*, the original EmBERT code) or "" (a bare encoder); `layer_norm`: "hf"
    (LayerNorm.weight/bias) or "old" (LayerNorm.gamma/beta: Google BERT converted the old way, the original code).
    """
    H, I = config.hidden_size, config.intermediate_size
    scale, shift = layer_norm_names(layer_norm)
    shapes = {
        "embeddings.word_embeddings.weight": (config.vocab_size, H),
        "embeddings.position_embeddings.weight": (config.max_position_embeddings, H),
        "embeddings.token_type_embeddings.weight": (config.type_vocab_size, H),
        f"embeddings.LayerNorm.{scale}": (H,),
        f"embeddings.LayerNorm.{shift}": (H,),
        "pooler.dense.weight": (H, H),
        "pooler.dense.bias": (H,),
    }
    for n in range(config.num_hidden_layers):
        shapes.update({
            f"encoder.layer.{n}.attention.self.query.weight": (H, H),
            f"encoder.layer.{n}.attention.self.query.bias": (H,),
            f"encoder.layer.{n}.attention.self.key.weight": (H, H),
            f"encoder.layer.{n}.attention.self.key.bias": (H,),
            f"encoder.layer.{n}.attention.self.value.weight": (H, H),
            f"encoder.layer.{n}.attention.self.value.bias": (H,),
            f"encoder.layer.{n}.attention.output.dense.weight": (H, H),
            f"encoder.layer.{n}.attention.output.dense.bias": (H,),
            f"encoder.layer.{n}.attention.output.LayerNorm.{scale}": (H,),
            f"encoder.layer.{n}.attention.output.LayerNorm.{shift}": (H,),
            f"encoder.layer.{n}.intermediate.dense.weight": (I, H),
            f"encoder.layer.{n}.intermediate.dense.bias": (I,),
            f"encoder.layer.{n}.output.dense.weight": (H, I),
            f"encoder.layer.{n}.output.dense.bias": (H,),
            f"encoder.layer.{n}.output.LayerNorm.{scale}": (H,),
            f"encoder.layer.{n}.output.LayerNorm.{shift}": (H,),
        })
    g = torch.Generator().manual_seed(seed)
    return {prefix + name: torch.randn(shape, generator=g) for name, shape in shapes.items()}


def hugging_face_extras(config):
    """Keys a Hugging Face BertForPreTraining checkpoint has that no model here uses."""
    H = config.hidden_size
    return {
        "bert.embeddings.position_ids": torch.arange(config.max_position_embeddings)[None],
        "cls.predictions.bias": torch.zeros(config.vocab_size),
        "cls.predictions.transform.dense.weight": torch.zeros(H, H),
        "cls.predictions.transform.dense.bias": torch.zeros(H),
        "cls.predictions.transform.LayerNorm.weight": torch.ones(H),
        "cls.predictions.transform.LayerNorm.bias": torch.zeros(H),
        "cls.seq_relationship.weight": torch.zeros(2, H),
        "cls.seq_relationship.bias": torch.zeros(2),
    }


# ---------------------------------------------------------------------------------------------------- training runs

SMALL_TASKS = "cola,mrpc,rte,sts,sst"
OUTPUT_FILES = ("args.json", "config.json", "vocab.txt", "train.log", "train_log.jsonl", "eval_results.jsonl",
                "best_model.pth", "last_checkpoint.pth")


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def seed_command(output_dir, data_dir, config, minilm, cache_dir):
    """The README's seed command with the substitutions of the CPU reproduction."""
    return ["--seed", 1, "--output_dir", output_dir, "--tasks", SMALL_TASKS, "--sample", "anneal", "--multi",
            "--do_train", "--do_eval", "--do_lower_case", "--data_dir", f"{data_dir}/", "--vocab_file",
            minilm / "vocab.txt", "--bert_config_file", config, "--init_checkpoint", minilm / "model.safetensors",
            "--max_seq_length", 128, "--train_batch_size", 32, "--learning_rate", 2e-5, "--num_train_epochs", 2,
            "--gradient_accumulation_steps", 1, "--steps_per_epoch", 20, "--no_cuda", "--cache_dir", cache_dir,
            "--eval_batch_size", 64]


def interrupt_at_step(process, log, global_step, timeout=120, signum=signal.SIGINT):
    """Ctrl-C (SIGINT, or `signum`) a running training process once its `log` (train_log.jsonl) has reached
    `global_step`; its output, once it has saved its checkpoint and exited with 128 + the signal's number."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if log.exists() and any(r.get("global_step", 0) >= global_step for r in read_jsonl(log) if "loss" in r):
            process.send_signal(signum)
            break
        time.sleep(0.005)
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == cli.SIGNAL_EXIT_BASE + signum, output
    return output


def write_problems(tmp_path, spec, files=None):
    """A problems file in tmp_path with `spec` and the data `files` ({relative path: text}) beside it."""
    for name, text in (files or {}).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    path = tmp_path / "problems.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------- TensorBoard

def tensorboard_reader():
    """TensorBoard's event_accumulator module, or skip (fail in CI) without tensorboard."""
    try:
        from tensorboard.backend.event_processing import event_accumulator
    except ImportError:
        require(False, "needs tensorboard: pip install tensorboard")
    return event_accumulator


def read_scalars(log_dir):
    """{tag: [(step, value), ...]} as TensorBoard reads the directory (every point kept: size guidance 0)."""
    event_accumulator = tensorboard_reader()
    accumulator = event_accumulator.EventAccumulator(str(log_dir), size_guidance={event_accumulator.SCALARS: 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def run_training(argv, method=None):
    """multitask.main in this process, as run_multi_task.py (or the method's script) runs it with `argv`."""
    import multitask
    import run_multi_task
    multitask.main(multitask.parse_args(run_multi_task.__doc__, [str(a) for a in argv]), method or run_multi_task.METHOD)
