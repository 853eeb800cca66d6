r"""Export a trained EmBERT / Gated-BERT / PALs run as ONNX graphs that a runtime without this code serves, each
checked against PyTorch as soon as it is written.

    python export_onnx.py --model_dir runs/quickstart --output_dir runs/quickstart/onnx
    python export_onnx.py --model_dir runs/quickstart --output_dir runs/quickstart/onnx --checkpoint last

Writes to --output_dir one graph per group of the run (a group: the problems trained together on one task row,
"a&b" in --tasks; one problem alone otherwise), with the group's row fixed inside it: EmBERT's task embeddings,
Gated-BERT's gate and adapters, PALs' layers. Inputs: int64 `input_ids`, `token_type_ids` and `attention_mask` of
shape [batch, sequence], both axes dynamic (sequence at most max_seq_length; Gated-BERT's graph pads to it inside,
as its gate reads exactly that many positions). Outputs, float32, one per problem of the group, named by the problem:
[batch, labels] logits for cls and multi_cls, [batch] for regression (before label_scale), [batch, sequence,
labels] logits at every input position for seq_tag (a word's tag is read at its first piece).

`export.json` beside them says how to use them: `vocab_file` (copied beside it), `do_lower_case`, `max_seq_length`,
and `groups`: [{"file": <graph>, "problems": {name: {"type", "labels" (output order), "output" (the output's name),
"label_scale" (regression)}}}]. Problems whose head predicts something a served graph is not asked for (masked LM,
pre-training) are left out, each with one line saying so.

Every graph is checked right after it is written: onnxruntime on the graph against the PyTorch model as evaluation
runs it, on a batch of the run's dev inputs of different lengths (so the batch holds padding); the largest absolute
difference is printed, and above MAX_ABS_DIFF the export stops with an error. Needs the optional extras onnx,
onnxscript (PyTorch's exporter) and onnxruntime: `pip install -r requirements-dev.txt`.
"""
import argparse
import json
import logging
import shutil
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import heads as head_modules
import inference
import modalities
import problem_types
import problems
from features import make_batch
from hardware import PAD_MULTIPLE, batch_padding
from run_files import fail, write_atomic, write_text

EXPORT_FILE = "export.json"
INPUT_NAMES = ("input_ids", "token_type_ids", "attention_mask")
# The check's tolerance: float32 kernels of onnxruntime and PyTorch differ by rounding (about 1e-6 on these models);
# a larger difference is a wrong graph.
MAX_ABS_DIFF = 1e-3
# Dev inputs in the check's batch, of lengths spread from the shortest to the longest.
CHECK_EXAMPLES = 16
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="a training run's --output_dir")
    parser.add_argument("--output_dir", required=True, help="where the graphs, export.json and vocab.txt go")
    parser.add_argument("--checkpoint", choices=tuple(inference.CHECKPOINT_FILES), default="best",
                        help="best: the run's best model (best_model.pth); last: its last checkpoint's model")
    parser.add_argument("--data_dir", default=None,
                        help="where the check reads the run's dev inputs (default: the training run's --data_dir)")
    return parser.parse_args(argv)


def missing_packages():
    """The packages of ONNX_PACKAGES that cannot be imported."""
    missing = []
    for name in ONNX_PACKAGES:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    return missing


def require_onnx():
    """onnxruntime, once onnx, onnxscript and onnxruntime are all importable; a one-line error naming the missing."""
    missing = missing_packages()
    if missing:
        fail(f"export_onnx.py needs {', '.join(missing)}: pip install {' '.join(ONNX_PACKAGES)} (optional extras in "
             "requirements-dev.txt)")
    import onnxruntime
    return onnxruntime


class GroupGraph(nn.Module):
    """One group of a multi-task model with plain tensor inputs: the group's task row fixed, every layer on the
    padded (B, T) layout (no packing: a graph has no data-dependent token count), one output per head."""

    def __init__(self, model, row, heads, pad_to=None):
        super().__init__()
        self.model, self.row, self.heads, self.pad_to = model, row, list(heads), pad_to

    def forward(self, input_ids, token_type_ids, attention_mask):  # (B, T) int64 each
        length = input_ids.shape[1]
        if self.pad_to is not None:  # Gated-BERT: its gate reads exactly pad_to positions
            input_ids, token_type_ids, attention_mask = (F.pad(x, (0, self.pad_to - length))
                                                         for x in (input_ids, token_type_ids, attention_mask))
        hidden, pooled = self.model.bert(input_ids, token_type_ids, attention_mask, self.row)  # (B, T', H), (B, H)
        encoded = head_modules.EncoderOutput(pooled, hidden[:, :length])  # a token head reads every position
        return tuple(self.model.head_types[h].export_logits(self.model.classifier[h](encoded)) for h in self.heads)


def groups_of(loaded):
    """[(row, [head indices])] of the model's groups, in row order."""
    rows = {}
    for head, row in enumerate(loaded.row_of):
        rows.setdefault(row, []).append(head)
    return sorted(rows.items())


def graph_file(names):
    return "+".join(names) + ".onnx"


def check_batch(loaded, problem, data_dir, cache_dir):
    """The check's dev inputs: CHECK_EXAMPLES examples of the problem's first dev split, lengths spread from the
    shortest to the longest. Returns the features, their indices and the split."""
    if not problem.dev_splits:
        fail(f"{problem.name} has no dev split to check its graph on")
    split = problem.dev_splits[0]
    path = problems.problem_file(data_dir, problem, split)
    if not path.is_file():
        fail(f"{path} not found: the export is checked on the run's dev inputs; give --data_dir")
    try:
        data = problems.load_problem_features(problem, split, data_dir, loaded.vocab_file, loaded.do_lower_case,
                                              loaded.max_seq_length, cache_dir=cache_dir,
                                              user_problems=loaded.user_problems)
    except ValueError as err:
        fail(str(err))
    by_length = torch.argsort(data.lengths, stable=True)
    picks = torch.linspace(0, len(data) - 1, max(2, min(CHECK_EXAMPLES, len(data)))).round().long()
    return data, by_length[picks], split


def export_graph(graph, example, output_names, path):
    """torch.onnx.export of `graph` (in eval mode, its model on the padded layout meanwhile) on the example batch,
    batch and sequence axes dynamic, written atomically."""
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # the exporter's notes on absent torchvision ops
    bert = graph.model.bert
    packed, bert.pack_tokens = bert.pack_tokens, False
    try:
        with warnings.catch_warnings():  # the exporter's notes on axis names and deprecations, not ours
            warnings.simplefilter("ignore")
            program = torch.onnx.export(graph.eval(), tuple(example[name] for name in INPUT_NAMES),
                                        input_names=list(INPUT_NAMES), output_names=list(output_names),
                                        dynamic_shapes=tuple({0: batch, 1: sequence} for _ in INPUT_NAMES),
                                        dynamo=True, verbose=False)
    finally:
        bert.pack_tokens = packed
    write_atomic(path, lambda tmp: program.save(tmp))


def max_difference(session, model, graph, data, indices, pad_to):
    """The largest |onnxruntime - PyTorch| over the group's outputs on the examples at `indices`: PyTorch as
    evaluation runs it (packed tokens; padded to pad_to for Gated-BERT), onnxruntime on the batch padded to its
    longest. A token head's outputs are compared at the real tokens."""
    batch = make_batch(data, indices, pad_multiple=PAD_MULTIPLE)
    outputs = session.run(None, {name: batch[name].numpy() for name in INPUT_NAMES})
    reference = make_batch(data, indices, pad_to=pad_to, pad_multiple=PAD_MULTIPLE)
    with torch.no_grad():
        logits = model(reference["input_ids"], reference["token_type_ids"], reference["attention_mask"], graph.row,
                       token_index=reference["token_index"], heads=graph.heads).logits
    worst = 0.0
    for head, output, expected in zip(graph.heads, outputs, logits):
        kind = model.head_types[head]
        output = torch.from_numpy(output)
        if kind.reads == "tokens":  # (B, T, L) -> the real tokens' (N, L), in the model's row-major order
            output = output.reshape(-1, output.shape[-1])[batch["token_index"]]
        worst = max(worst, (output - kind.export_logits(expected)).abs().max().item())
    return worst, batch["input_ids"].shape


def problem_entry(problem, output):
    """export.json's record of one problem."""
    entry = {"type": problem.type, "output": output}
    if problem.labels is not None:
        entry["labels"] = list(problem.labels)
    if problem_types.of(problem).scaled:
        entry["label_scale"] = problem.label_scale
    return entry


def main(args):
    onnxruntime = require_onnx()
    try:
        loaded = inference.load_run(args.model_dir, args.checkpoint)
    except ValueError as err:
        fail(str(err))
    model = loaded.model.cpu().eval().float()
    data_dir = args.data_dir or loaded.run_args.get("data_dir")
    if data_dir is None:
        fail(f"{args.model_dir} has no args.json naming its --data_dir: give --data_dir for the check's dev inputs")
    pad_to = batch_padding(loaded.method, loaded.max_seq_length)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    vocab = Path(loaded.vocab_file).name
    if not ((output_dir / vocab).exists() and (output_dir / vocab).samefile(loaded.vocab_file)):  # the run's own
        shutil.copyfile(loaded.vocab_file, output_dir / vocab)
    record = {"vocab_file": vocab, "do_lower_case": loaded.do_lower_case, "max_seq_length": loaded.max_seq_length,
              "groups": []}
    for row, members in groups_of(loaded):
        kept = []
        for head in members:
            problem = loaded.problem(loaded.heads[head])
            reason = problem_types.of(problem).not_exported or modalities.not_exported(problem)
            if reason is None:
                kept.append(head)
            else:
                print(f"{problem.name} left out: a {problem.type} problem, {reason}")
        if not kept:
            continue
        names = [loaded.heads[head] for head in kept]
        graph = GroupGraph(model, row, kept, pad_to)
        first = loaded.problem(names[0])
        data, indices, split = check_batch(loaded, first, data_dir, loaded.run_args.get("cache_dir"))
        path = output_dir / graph_file(names)
        export_graph(graph, make_batch(data, indices, pad_multiple=PAD_MULTIPLE), names, path)
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        worst, shape = max_difference(session, model, graph, data, indices, pad_to)
        lengths = data.lengths[indices]
        print(f"{path.name}: {', '.join(names)}; max |onnxruntime - PyTorch| {worst:.2e} on {len(indices)} "
              f"{first.name} {split} inputs of {int(lengths.min())}-{int(lengths.max())} tokens padded to {shape[1]}")
        if worst > MAX_ABS_DIFF:
            fail(f"{path}: onnxruntime's outputs differ from PyTorch's by {worst:.2e}, more than {MAX_ABS_DIFF:g}")
        record["groups"].append({"file": path.name, "problems": {
            name: problem_entry(loaded.problem(name), name) for name in names}})
    if not record["groups"]:
        fail(f"{args.model_dir}: no problem of this model can be exported")
    write_text(output_dir / EXPORT_FILE, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {output_dir / EXPORT_FILE}: {len(record['groups'])} graph(s)")
    return record


if __name__ == "__main__":
    main(parse_args())
