"""export_onnx.py: the graphs of an EmBERT, a Gated-BERT and a PALs run compute what the PyTorch model computes
(within 1e-4, on batches of real dev inputs with padding, of other shapes than the export's), export.json describes
them, masked-LM problems are left out with a line, the README's client predicts what run_test_multi_task.py writes,
and a missing extra is a one-line error.

The runs are real and tiny: the training scripts train a 2-layer hidden-32 encoder over MiniLM's real vocabulary on
the GLUE rows of tests/fixtures/glue (and the user's CoNLL fixture), a few steps each.
"""
import contextlib
import io
import json
import re

import numpy as np
import pytest
import torch

import export_onnx
import inference
import multitask
import readers
import run_multi_task
import run_multi_task_gated
import run_multi_task_pals
import run_test_multi_task
from conftest import ROOT, fixture_glue_dir, minilm_dir
from features import make_batch
from helpers import tiny_dict
from problems import get_problem, load_problem_features

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only add waiting

TINY = tiny_dict(vocab_size=30522, max_position_embeddings=128)
MAX_SEQ_LENGTH = 32  # short: Gated-BERT pads every example to it
PROBLEMS_FILE = fixture_glue_dir().parent / "problems" / "problems.json"
# ONNX against PyTorch: float32 kernels that add in another order.
TOLERANCE = 1e-4
# The README client's STS-B values against STS-B.tsv's three decimals (half a unit), plus that rounding noise.
STS_TOLERANCE = 0.5e-3 + TOLERANCE
GATE_STD = 0.1  # the Gated test's gate weights: random, so the gates read every position, padding included
METHODS = {"embert": (run_multi_task, {"our_attn": True}), "gated": (run_multi_task_gated, {"our_attn": True}),
           "pals": (run_multi_task_pals, {"hidden_size_aug": 12, "mult": True, "pals": True})}
# EmBERT: GLUE's single sentences, pairs with a scaled regression, a seq_tag head, and a masked LM left out.
TASKS = {"embert": "cola,sts,ner|cola_mlm", "gated": "cola,sts", "pals": "cola,sts"}


def train_and_export(root, name):
    """A tiny run of method `name` (run_multi_task*.py), exported: (run directory, export directory, what
    export_onnx.main printed)."""
    script, extra = METHODS[name]
    config = root / f"{name}_config.json"
    config.write_text(json.dumps({**TINY, **extra}))
    run = root / name
    argv = ["--seed", "1", "--output_dir", str(run), "--tasks", TASKS[name], "--problems", str(PROBLEMS_FILE),
            "--sample", "rr", "--do_train", "--do_eval", "--do_lower_case", "--data_dir", str(fixture_glue_dir()),
            "--vocab_file", str(minilm_dir() / "vocab.txt"), "--bert_config_file", str(config),
            "--max_seq_length", str(MAX_SEQ_LENGTH), "--train_batch_size", "8", "--eval_batch_size", "32",
            "--num_train_epochs", "1", "--steps_per_epoch", "4", "--learning_rate", "1e-3", "--h_aug", "6",
            "--no_cuda", "--cache_dir", str(root / "cache")]
    multitask.main(multitask.parse_args(script.__doc__, argv), script.METHOD)
    if name == "gated":  # phase 0 leaves the gates at zero (uniform): make them read the padded sequence
        state = torch.load(run / multitask.BEST_MODEL, weights_only=True)
        generator = torch.Generator().manual_seed(0)
        for key in [k for k in state if "weight_layer_" in k]:
            state[key] = torch.randn(state[key].shape, generator=generator) * GATE_STD
        torch.save(state, run / multitask.BEST_MODEL)
    out = root / f"{name}_onnx"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        export_onnx.main(export_onnx.parse_args(["--model_dir", str(run), "--output_dir", str(out)]))
    return run, out, printed.getvalue()


# Each method's run, trained and exported once for the module. A tiny graph takes seconds to export (torch.export
# traces the model, then it is translated and optimised): the Gated-BERT and PALs runs are in the slow tests.
@pytest.fixture(scope="module")
def embert(tmp_path_factory, one_thread):
    return train_and_export(tmp_path_factory.mktemp("export"), "embert")


@pytest.fixture(scope="module")
def gated(tmp_path_factory, one_thread):
    return train_and_export(tmp_path_factory.mktemp("export"), "gated")


@pytest.fixture(scope="module")
def pals(tmp_path_factory, one_thread):
    return train_and_export(tmp_path_factory.mktemp("export"), "pals")


def padded_dev_batch(loaded, problem, count=5):
    """`count` dev examples of `problem`, the shortest and the longest among them, padded to the longest (rounded up
    to 8): a batch with padding, of another size than the export's."""
    data = load_problem_features(problem, problem.dev_splits[0], fixture_glue_dir(), loaded.vocab_file,
                                 loaded.do_lower_case, loaded.max_seq_length, user_problems=loaded.user_problems)
    by_length = torch.argsort(data.lengths, stable=True)
    indices = by_length[torch.linspace(0, len(data) - 1, min(count, len(data))).long()].flip(0)
    return data, indices, make_batch(data, indices)


@pytest.mark.parametrize("method", ["embert", pytest.param("gated", marks=pytest.mark.slow),
                                    pytest.param("pals", marks=pytest.mark.slow)])
def test_graphs_compute_what_the_model_computes(request, method):
    import onnxruntime
    run, out, printed = request.getfixturevalue(method)
    record = json.loads((out / export_onnx.EXPORT_FILE).read_text())
    loaded = inference.load_run(run)
    assert (out / record["vocab_file"]).read_bytes() == (run / "vocab.txt").read_bytes()
    assert record["do_lower_case"] is True and record["max_seq_length"] == MAX_SEQ_LENGTH
    exported = [name for group in record["groups"] for name in group["problems"]]
    assert exported == [name for name in loaded.heads if name != "cola_mlm"]
    pad_to = MAX_SEQ_LENGTH if method == "gated" else None
    for group in record["groups"]:
        session = onnxruntime.InferenceSession(str(out / group["file"]))
        assert [i.name for i in session.get_inputs()] == list(export_onnx.INPUT_NAMES)
        assert all(i.type == "tensor(int64)" and len(i.shape) == 2 and all(isinstance(d, str) for d in i.shape)
                   for i in session.get_inputs())  # both axes dynamic
        assert [o.name for o in session.get_outputs()] == [info["output"] for info in group["problems"].values()]
        name, info = next(iter(group["problems"].items()))
        problem = loaded.problem(name)
        head = loaded.heads.index(name)
        data, indices, batch = padded_dev_batch(loaded, problem)
        assert (batch["attention_mask"] == 0).any()  # padding in the batch
        output = session.run([name], {key: batch[key].numpy() for key in export_onnx.INPUT_NAMES})[0]
        reference_batch = make_batch(data, indices, pad_to=pad_to)
        with torch.no_grad():
            logits = loaded.model(reference_batch["input_ids"], reference_batch["token_type_ids"],
                                  reference_batch["attention_mask"], loaded.row_of[head],
                                  token_index=reference_batch["token_index"], heads=[head]).logits[0]
        output = torch.from_numpy(output)
        if problem.type == "seq_tag":  # (B, T, L): compared at the real tokens, the model's (N, L)
            assert output.shape == (*batch["input_ids"].shape, len(problem.labels))
            output = output[batch["attention_mask"].bool()]
        elif problem.type == "regression":
            assert output.shape == (len(indices),) and info["label_scale"] == problem.label_scale
            logits = logits[:, 0]
        else:
            assert output.shape == (len(indices), len(problem.labels)) and info["labels"] == list(problem.labels)
        assert (output - logits).abs().max().item() < TOLERANCE, (method, name)
        assert info["type"] == problem.type and group["file"] == f"{name}.onnx"
    differences = [float(d) for d in re.findall(r"max \|onnxruntime - PyTorch\| (\S+) on", printed)]
    assert len(differences) == len(record["groups"]) and max(differences) < TOLERANCE


def test_masked_lm_problems_are_left_out_with_a_line(embert):
    _, out, printed = embert
    assert re.search(r"^cola_mlm left out: a mask_lm problem, its head predicts the masked tokens of inputs "
                     r"masked for it", printed, re.MULTILINE)
    assert not (out / "cola_mlm.onnx").exists()


@pytest.mark.slow
def test_gated_graph_pads_to_max_seq_length_inside(gated):
    """Batches shorter than max_seq_length give the padded model's outputs: the graph pads them for the gate."""
    import onnxruntime
    run, out, _ = gated
    loaded = inference.load_run(run)
    session = onnxruntime.InferenceSession(str(out / "sts.onnx"))
    data, _, _ = padded_dev_batch(loaded, get_problem("sts"))
    indices = torch.argsort(data.lengths, stable=True)[:7]  # the shortest: a batch narrower than max_seq_length
    batch = make_batch(data, indices)
    assert batch["input_ids"].shape[1] < MAX_SEQ_LENGTH and (batch["attention_mask"] == 0).any()
    full = make_batch(data, indices, pad_to=MAX_SEQ_LENGTH)
    short, padded = (session.run(["sts"], {key: b[key].numpy() for key in export_onnx.INPUT_NAMES})[0]
                     for b in (batch, full))
    assert np.abs(short - padded).max() < TOLERANCE


def test_readme_client_predicts_what_run_test_multi_task_writes(embert, tmp_path):
    run, out, _ = embert
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    code = re.search(r"<!-- onnx-client -->\n```python\n(.*?)```\n<!-- /onnx-client -->", readme, re.DOTALL)[1]
    assert len(code.splitlines()) <= 35
    client = {}
    exec(compile(code, "README.md client", "exec"), client)
    run_test_multi_task.main(run_test_multi_task.parse_args(
        ["--model_dir", str(run), "--output_dir", str(tmp_path), "--split", "dev", "--tasks", "cola,sts",
         "--no_cuda"]))
    for name, file in (("cola", "CoLA.tsv"), ("sts", "STS-B.tsv")):
        examples = readers.read_examples(get_problem(name), "dev", fixture_glue_dir())
        inputs = [e.text_a if e.text_b is None else (e.text_a, e.text_b) for e in examples]
        lines = (tmp_path / file).read_text(encoding="utf-8").splitlines()[1:]
        written = [line.split("\t")[1] for line in lines]
        predicted = client["predict"](str(out), name, inputs)
        if name == "sts":
            assert np.abs(np.array(predicted) - np.array(written, dtype=float)).max() <= STS_TOLERANCE
        else:
            assert predicted == written, name


def test_missing_extras_are_a_one_line_error(embert, tmp_path, monkeypatch):
    run, _, _ = embert
    monkeypatch.setattr(export_onnx, "ONNX_PACKAGES", ("onnx", "no_such_onnx_runtime"))
    with pytest.raises(SystemExit) as info:
        export_onnx.main(export_onnx.parse_args(["--model_dir", str(run), "--output_dir", str(tmp_path)]))
    assert str(info.value) == ("error: export_onnx.py needs no_such_onnx_runtime: pip install onnx "
                               "no_such_onnx_runtime (optional extras in requirements-dev.txt)")
    assert not any(tmp_path.iterdir())


def test_a_run_without_its_dev_files_names_the_flag(embert, tmp_path):
    run, _, _ = embert
    with pytest.raises(SystemExit, match=r"^error: .*CoLA/dev.tsv not found: the export is checked on the run's dev "
                                         r"inputs; give --data_dir$"):
        export_onnx.main(export_onnx.parse_args(["--model_dir", str(run), "--output_dir", str(tmp_path / "out"),
                                                 "--data_dir", str(tmp_path)]))


@pytest.mark.slow  # one more export, of seconds
def test_a_graph_that_differs_from_pytorch_stops_the_export(embert, tmp_path, monkeypatch):
    run, _, _ = embert
    shape = torch.Size([2, 8])
    monkeypatch.setattr(export_onnx, "max_difference", lambda *args: (0.5, shape))  # a wrong graph's difference
    with pytest.raises(SystemExit, match=r"^error: .*cola.onnx: onnxruntime's outputs differ from PyTorch's by "
                                         r"5.00e-01, more than 0.001$"):
        export_onnx.main(export_onnx.parse_args(["--model_dir", str(run), "--output_dir", str(tmp_path)]))
    assert not (tmp_path / export_onnx.EXPORT_FILE).exists()
