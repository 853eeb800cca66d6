"""Devices, precision and speed: where the model runs, in which autocast precision, how batches reach the device,
and torch.compile."""
import torch

# Batches pad to the longest sequence rounded up to this multiple: masked padding changes no result, and few
# distinct shapes keep tensor cores busy and torch.compile's recompilations bounded.
PAD_MULTIPLE = 8

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(name, device):
    if name == "auto":
        # Native bf16 only (Ampere and newer): a V100 emulates it, slower than fp32.
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    return name


def select_device(no_cuda, local_rank=0):
    """CUDA device `local_rank` unless --no_cuda or there is none; the CPU otherwise."""
    if torch.cuda.is_available() and not no_cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def batch_padding(method, max_seq_length):
    """pad_to for make_batch: max_seq_length for a method whose model reads every position (Gated-BERT's gate), else
    None (the longest example of the batch)."""
    return max_seq_length if method.pad_to_max_length else None


def to_device(batch, device):
    """Pinned host memory and non-blocking copies on CUDA: the copy overlaps the previous step's kernels. A list
    (an & group's labels, one tensor per problem) is copied item by item, a dict (a batch's images and vectors) key
    by key; numbers stay as they are."""
    if device.type != "cuda":
        return batch
    def copy(value):
        if isinstance(value, list):
            return [copy(x) for x in value]
        if isinstance(value, dict):
            return {k: copy(v) for k, v in value.items()}
        return value.pin_memory().to(device, non_blocking=True) if torch.is_tensor(value) else value
    return {k: copy(v) for k, v in batch.items()}


def compile_encoder(model, device, cuda_graphs=True):
    """--compile: torch.compile the encoder in place (parameter names, and so saved state dicts, stay unchanged).

    On CUDA, with `cuda_graphs`, also CUDA graphs (mode "reduce-overhead"): a BERT step launches many small kernels,
    and a graph replays them with one launch. Graphs need shapes that repeat, so the tokens are not packed: batches
    padded to a multiple of PAD_MULTIPLE take at most max_seq_length / PAD_MULTIPLE widths, one graph per width and
    group (the results are the packed ones). Without graphs where gradients accumulate over micro-batches: a graph's
    next replay overwrites the gradient buffers the previous backward left in .grad."""
    if device.type == "cuda" and cuda_graphs:
        model.bert.pack_tokens = False
        model.bert.compile(mode="reduce-overhead")
    else:
        model.bert.compile()
