"""Checkpoints: every format the project meets, read and mapped onto our parameter names in one place, and the
models built from them.

`--init_checkpoint` and `run_test_multi_task.py --model_dir` take, by content rather than file name: Google's BERT
converted to PyTorch the old way (`LayerNorm.gamma/beta`), Hugging Face BERT (`bert.` prefix or none) as .bin or
.safetensors or a directory holding one, this project's own files, and the original EmBERT / Gated-BERT / PALs code's
state dicts. Every encoder weight must be present; task parameters (task embeddings, heads, adapters, gates) may be
absent and start fresh unless the model must be complete (prediction). Any key the model does not have, and any
shape mismatch, is an error naming the keys and the file: nothing is silently left random.
"""
import json
import logging
import re
import zipfile
from pathlib import Path

import torch

import problem_types
import modeling_inputs
import tokenization

logger = logging.getLogger("embert")

# Names of plain BERT's parameters (after mapping): these must all come from a pretrained checkpoint. Everything
# else (task embeddings, heads, Gated-BERT's adapters and gates) may start fresh.
BERT_PARAMETER = re.compile(
    r"bert\.(embeddings\.(word_embeddings|position_embeddings|token_type_embeddings|LayerNorm)"
    r"|encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.(dense|LayerNorm)"
    r"|intermediate\.dense|output\.(dense|LayerNorm))"
    r"|pooler\.dense)\.(weight|bias)")
# Keys a checkpoint may hold that no model here uses: position-id buffers and the masked-LM decoder's weight (a copy
# of the word embeddings, to which our head is tied).
IGNORED_KEY = re.compile(r"(^|\.)(position_ids|cls\.predictions\.decoder\.weight)$")
# The masked-LM output bias: Hugging Face's files hold it twice (decoder.bias is tied to predictions.bias).
LM_BIAS_KEYS = ("cls.predictions.decoder.bias", "cls.predictions.bias")
# Prefixes left by wrappers: DistributedDataParallel ("module.") and torch.compile ("_orig_mod.").
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# File names looked for, in this order, when --init_checkpoint is a directory.
CHECKPOINT_FILES = ("model.safetensors", "pytorch_model.bin", "best_model.pth")


# Leading bytes by which a checkpoint's format is recognised (by content, not by file name): torch.save's zip
# archive (torch >= 1.6), its older pickle stream (protocol 2 or later starts with 0x80), and safetensors' 8-byte
# little-endian header length followed by the JSON header.
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_MAGIC = b"\x80"
SAFETENSORS_LENGTH_BYTES = 8
# Bytes read to recognise a file, and characters of it quoted when it is text.
SNIFF_BYTES, QUOTED_CHARS = 64, 40


def checkpoint_format(path):
    """"safetensors" or "torch" by the file's first bytes; ValueError describing the file otherwise."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    if size == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes)")
    if head.startswith((ZIP_MAGIC, PICKLE_MAGIC)):
        return "torch"
    header_length = int.from_bytes(head[:SAFETENSORS_LENGTH_BYTES], "little")
    if len(head) > SAFETENSORS_LENGTH_BYTES and head[SAFETENSORS_LENGTH_BYTES:][:1] == b"{":
        if SAFETENSORS_LENGTH_BYTES + header_length > size:
            raise ValueError(f"checkpoint {path} is truncated: {size} bytes, fewer than its safetensors header's own "
                             f"{SAFETENSORS_LENGTH_BYTES + header_length}")
        return "safetensors"
    text = head.decode("utf-8", errors="replace")[:QUOTED_CHARS]
    if "\ufffd" not in text and all(c.isprintable() or c.isspace() for c in text):
        looks = f"it starts with text: {text.strip()!r}"
    else:
        looks = f"its first bytes are {head[:SAFETENSORS_LENGTH_BYTES].hex(' ')}"
    raise ValueError(f"checkpoint {path} is not a PyTorch or safetensors file ({looks})")


def safetensors_size(path):
    """The bytes a safetensors file must have: its header's length plus the end of the last tensor's data."""
    with open(path, "rb") as f:
        header_length = int.from_bytes(f.read(SAFETENSORS_LENGTH_BYTES), "little")
        header = json.loads(f.read(header_length))
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    return SAFETENSORS_LENGTH_BYTES + header_length + max(ends, default=0)


def _starts_with(path, magic):
    with open(path, "rb") as f:
        return f.read(len(magic)) == magic


def unreadable(path, fmt, error):
    """A one-line ValueError for a checkpoint file its reader rejected: truncated (with sizes) or damaged."""
    size = path.stat().st_size
    if fmt == "safetensors":
        try:
            expected = safetensors_size(path)
        except (ValueError, KeyError, TypeError):
            return ValueError(f"checkpoint {path} is a damaged safetensors file (its header is not valid JSON)")
        if size < expected:
            return ValueError(f"checkpoint {path} is truncated: {size} of {expected} bytes")
    elif not zipfile.is_zipfile(path) and _starts_with(path, ZIP_MAGIC):
        return ValueError(f"checkpoint {path} is truncated: {size} bytes of a PyTorch zip archive whose end (the zip "
                          "directory) is missing")
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ValueError(f"checkpoint {path} is damaged: it is a {fmt} file that cannot be read ({first_line})")


def load_torch_file(path, weights_only=True):
    """torch.load onto the CPU; any unreadable file (not a checkpoint, truncated, damaged) becomes one ValueError that
    names the file and what it looks like."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    fmt = checkpoint_format(path)
    if fmt != "torch":
        raise ValueError(f"checkpoint {path} is a safetensors file, not a PyTorch training checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as err:  # torch.load raises RuntimeError, EOFError, UnpicklingError, ... for a bad file
        raise unreadable(path, fmt, err) from None


def read_state_dict(path):
    """A state dict from a safetensors or torch file (told apart by content), a training checkpoint's "model" entry,
    or a directory holding one of CHECKPOINT_FILES."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in CHECKPOINT_FILES if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(f"no checkpoint in directory {path}: looked for {', '.join(CHECKPOINT_FILES)}")
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if checkpoint_format(path) == "safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(path), path
        except Exception as err:  # SafetensorError and others, for a truncated or damaged file
            raise unreadable(path, "safetensors", err) from None
    state = load_torch_file(path)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):  # a resumable training checkpoint
        state = state["model"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"checkpoint {path} is not a state dict of tensors")
    return state, path


def map_key(key):
    """Our name for a checkpoint key, or None for keys no model here uses."""
    while key.startswith(WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    if IGNORED_KEY.search(key):
        return None
    # Google BERT converted the old way, and the original EmBERT code, name LayerNorm parameters gamma and beta.
    key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", key)
    key = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key)
    if key == LM_BIAS_KEYS[0]:
        key = LM_BIAS_KEYS[1]
    if not key.startswith(("bert.", "classifier.", "cls.")):  # a bare encoder's state dict (no "bert." prefix)
        key = "bert." + key
    return key


def map_state_dict(raw):
    """A checkpoint's tensors under our parameter names (keys no model here uses dropped)."""
    return {name: value for key, value in raw.items() if (name := map_key(key)) is not None}


def unused_pretraining_heads(model, state):
    """The checkpoint's keys of BERT's pre-training heads that `model` does not use: all of `cls.*` for a model
    without mask_lm / pretrain problems, `cls.seq_relationship.*` for one without next-sentence prediction. (Any other
    key the model lacks stays an error: a misnamed head is not silently left fresh.)"""
    cls = getattr(model, "cls", None)
    unused = "cls." if cls is None else None if hasattr(cls, "seq_relationship") else "cls.seq_relationship."
    return [key for key in state if unused is not None and key.startswith(unused)]


def load_pretrained(model, path, require_all=False):
    """Load a checkpoint into `model`, by content rather than file name. Returns the names left freshly initialised.

    Accepted: Google BERT converted to PyTorch the old way, Hugging Face BERT (`bert.` prefix or none) as .bin or
    .safetensors or a directory holding one, our own checkpoints, and the original EmBERT / Gated-BERT code's state
    dicts. Every BERT encoder weight must be present; task parameters (task embeddings, heads, adapters, gates) may be
    absent and stay fresh unless `require_all` (loading a trained multi-task model). Any key the model does not have,
    and any shape mismatch, is an error naming the keys and the file: nothing is silently left random.
    """
    raw, path = read_state_dict(path)
    return load_mapped_state(model, map_state_dict(raw), path, require_all)


def load_mapped_state(model, state, source, require_all=False):
    """`load_pretrained` for a state dict already under our names (`map_state_dict`); `source` names it in errors."""
    own = model.state_dict()
    unused = set(unused_pretraining_heads(model, state))
    state = {key: value for key, value in state.items() if key not in unused}
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        if any(k.startswith("classifier.") for k in unexpected):
            hint = "its task heads do not match this model's task list"
        elif any("_task_emb" in k for k in unexpected):
            hint = "it has task embeddings: check the config's our_attn"
        else:
            hint = "check the model type (EmBERT or Gated-BERT) and the config"
        raise ValueError(f"checkpoint {source} has {len(unexpected)} parameter(s) this model does not "
                         f"({hint}): {first_names(unexpected)}")
    missing = [k for k in own if k not in state and (require_all or BERT_PARAMETER.fullmatch(k))]
    if missing:
        raise ValueError(f"checkpoint {source} lacks {len(missing)} parameter(s): {first_names(missing)}")
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise ValueError(f"checkpoint {source}: {key} has shape {tuple(value.shape)} but the model's is "
                             f"{tuple(own[key].shape)}{model.shape_hint(state)}")
    model.load_state_dict(state, strict=False)
    return [k for k in own if k not in state]


def first_names(names, shown=8):
    return ", ".join(names[:shown]) + (" ..." if len(names) > shown else "")



def configure_model(method, config, max_seq_length, h_aug=None):
    """The model config as the method builds it from the flags (Gated-BERT: the gate's input length, the rank)."""
    return method.configure(config, max_seq_length, h_aug) if method.configure else config


def check_model_inputs(config, vocab_file, max_seq_length, config_source):
    """What training and prediction both check before building a model: the vocabulary fits the config's embedding
    table and max_seq_length its position table. Returns the vocabulary's size; ValueError (one line) otherwise."""
    vocab_size = len(tokenization.load_vocab(vocab_file))
    if max_seq_length > config.max_position_embeddings:
        raise ValueError(f"--max_seq_length {max_seq_length} is more than the config's max_position_embeddings "
                         f"{config.max_position_embeddings} ({config_source})")
    if vocab_size > config.vocab_size:
        raise ValueError(f"--vocab_file {vocab_file} has {vocab_size} tokens but the config's vocab_size is "
                         f"{config.vocab_size} ({config_source}): they must come from the same model")
    if vocab_size < config.vocab_size:
        logger.warning(f"--vocab_file has {vocab_size} tokens, the config's vocab_size is {config.vocab_size}: the "
                       "extra embedding rows are never used")
    return vocab_size


def read_checkpoint(path):
    """A checkpoint's tensors under our parameter names, the raw key names (their format says where the file comes
    from) and the file read; ValueError/OSError with a one-line message for anything unreadable."""
    raw, path = read_state_dict(path)
    return map_state_dict(raw), list(raw), path


def build_model(method, config, tasks, state=None, source=None, require_all=False, num_groups=None):
    """The method's BertForMultiTask with one head per problem of `tasks` (its width and type) and `num_groups` task
    rows (default one per problem), the mapped `state` (read from `source`) loaded into it. Returns the model and the
    names of the parameters left freshly initialised; ValueError (one line naming the keys and the file) when the
    checkpoint does not fit."""
    model = method.modeling.BertForMultiTask(config, [t.num_labels for t in tasks], [t.type for t in tasks],
                                             num_groups, list(tasks))
    modeling_inputs.add_input_embeddings(model, tasks)  # images and feature vectors, when a problem has them
    fresh = load_mapped_state(model, state, source, require_all) if state is not None else list(model.state_dict())
    for head, task in enumerate(tasks):  # a head none of whose parameters came from the checkpoint: its type's start
        names = [name for name in model.state_dict() if name.startswith(f"classifier.{head}.")]
        if names and set(names) <= set(fresh):
            problem_types.of(task).initialize_head(task, model, head)
    return model, fresh
