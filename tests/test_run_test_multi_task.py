"""run_test_multi_task.py: GLUE submission files from trained runs (EmBERT and Gated-BERT), the dev split against the
metrics the training run logged, checkpoint files of ours and of the original code, and one-line errors on bad input.

The runs are real: run_multi_task.py and run_multi_task_gated.py train in-process, once for the module, on the real
GLUE rows of tests/fixtures/glue, with the real MiniLM WordPiece vocabulary. Their encoder is a tiny random one
(hidden 32), not MiniLM: on one thread of this 2-core CPU MiniLM predicts about 2,000 tokens/s, and the
../shared/glue test files hold about 700,000 tokens. The original-format checkpoint test uses the real MiniLM weights.
"""
import dataclasses
import json
import re
import shutil
import zipfile

import pytest
import torch
from safetensors.torch import load_file

import checkpoints
import glue_processors
import modeling
import modeling_gated
import multitask
import problem_types
import problems
import run_files
import run_multi_task
import run_multi_task_gated
import run_multi_task_pals
import run_test_multi_task
from conftest import fixture_glue_dir, minilm_dir, require, shared_glue_dir
from glue_processors import ALL_TASKS, TASKS
from metrics import multi_label_metrics
from helpers import tiny_dict

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only add waiting

# A tiny encoder over MiniLM's real vocabulary (bert-base-uncased, 30522 tokens); odd sizes, as Google BERT's tests.
TINY = tiny_dict(vocab_size=30522, max_position_embeddings=128, our_attn=True)
MAX_SEQ_LENGTH = 64  # short: Gated-BERT pads every example to it
OTHER_LENGTH = TINY["max_position_embeddings"]  # a valid length that Gated-BERT's gate was not built for
GATED_RANK = 6  # --h_aug of the Gated run: the adapters' rank, odd on purpose
EVAL_BATCH_SIZE = 128  # one batch per fixture dev set
FIVE_TASKS = ("cola", "mrpc", "rte", "sts", "sst")  # the small GLUE tasks with real training data in ../shared/glue

# The GLUE server's label vocabulary per submission file, written out here rather than taken from the task table.
BINARY, NLI, ENTAILMENT = {"0", "1"}, {"entailment", "neutral", "contradiction"}, {"entailment", "not_entailment"}
SERVER_LABELS = {"CoLA.tsv": BINARY, "SST-2.tsv": BINARY, "MRPC.tsv": BINARY, "QQP.tsv": BINARY, "WNLI.tsv": BINARY,
                 "MNLI-m.tsv": NLI, "MNLI-mm.tsv": NLI, "AX.tsv": NLI, "QNLI.tsv": ENTAILMENT, "RTE.tsv": ENTAILMENT}
STS_FILE, STS_MAX = "STS-B.tsv", 5.0
# Where each submission file's rows come from (glue_data layout).
TEST_FILES = {"CoLA.tsv": "CoLA/test.tsv", "SST-2.tsv": "SST-2/test.tsv", "MRPC.tsv": "MRPC/test.tsv",
              "STS-B.tsv": "STS-B/test.tsv", "QQP.tsv": "QQP/test.tsv", "MNLI-m.tsv": "MNLI/test_matched.tsv",
              "MNLI-mm.tsv": "MNLI/test_mismatched.tsv", "QNLI.tsv": "QNLI/test.tsv", "RTE.tsv": "RTE/test.tsv",
              "WNLI.tsv": "WNLI/test.tsv", "AX.tsv": "diagnostic/diagnostic.tsv"}
# ../shared/glue lacks the MNLI and QQP test files (SPEC 3).
ABSENT_FROM_SHARED = ("MNLI-m.tsv", "MNLI-mm.tsv", "QQP.tsv")
# STS-B is written rounded to problem_types.SUBMISSION_DECIMALS (half a unit of error), and batched and one-by-one runs differ by float
# rounding (far below FLOAT_NOISE).
FLOAT_NOISE = 1e-5
STS_TOLERANCE = 0.5 * 10 ** -problem_types.SUBMISSION_DECIMALS + FLOAT_NOISE


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, one_thread):
    """Files the module's tests share: the tiny config, a feature cache, the MiniLM folder."""
    root = tmp_path_factory.mktemp("run_test")
    config = root / "tiny_config.json"
    config.write_text(json.dumps(TINY))
    return {"root": root, "config": config, "cache": root / "cache", "minilm": minilm_dir()}


@pytest.fixture(scope="module")
def runs(workspace):
    """Output directories of two real training runs on the fixture GLUE rows (2 epochs of 2 steps, dev evaluation
    after each): EmBERT on all eight tasks (so it has the MNLI head that predicts AX), Gated-BERT on the five."""
    dirs = {}
    for method, tasks in ((run_multi_task, "all"), (run_multi_task_gated, ",".join(FIVE_TASKS))):
        output_dir = workspace["root"] / method.METHOD.name
        argv = ["--seed", "1", "--output_dir", str(output_dir), "--tasks", tasks, "--sample", "anneal", "--multi",
                "--do_train", "--do_eval", "--do_lower_case", "--data_dir", str(fixture_glue_dir()),
                "--vocab_file", str(workspace["minilm"] / "vocab.txt"), "--bert_config_file", str(workspace["config"]),
                "--max_seq_length", str(MAX_SEQ_LENGTH), "--train_batch_size", "8", "--eval_batch_size",
                str(EVAL_BATCH_SIZE), "--num_train_epochs", "2", "--steps_per_epoch", "2", "--h_aug", str(GATED_RANK),
                "--no_cuda", "--cache_dir", str(workspace["cache"])]
        multitask.main(multitask.parse_args(method.__doc__, argv), method.METHOD)
        dirs[method.METHOD.name] = output_dir
    return dirs


def run_script(*argv):
    run_test_multi_task.main(run_test_multi_task.parse_args([*map(str, argv), "--no_cuda"]))


def error_of(*argv):
    """The message of the run's one-line error (SystemExit, no traceback)."""
    with pytest.raises(SystemExit) as info:
        run_script(*argv)
    message = str(info.value)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def read_tsv(path):
    """Rows of a tab-separated file, split on "\\n" only (GLUE texts hold other line-break characters)."""
    lines = path.read_text(encoding="utf-8-sig").split("\n")
    return [line.split("\t") for line in lines if line]


def read_submission(path):
    rows = read_tsv(path)
    assert rows[0] == ["index", "prediction"], path
    assert all(len(row) == 2 for row in rows), path
    return [row[0] for row in rows[1:]], [row[1] for row in rows[1:]]


def check_labels(name, predictions):
    """Every prediction is in the GLUE server's vocabulary for that file."""
    if name == STS_FILE:
        assert all(0.0 <= float(value) <= STS_MAX for value in predictions)
    else:
        assert set(predictions) <= SERVER_LABELS[name], name


def written_files(output_dir):
    return {path.name for path in output_dir.glob("*.tsv")}


def check_zip(output_dir):
    """submission.zip holds exactly the written files, at its root, byte for byte."""
    with zipfile.ZipFile(output_dir / run_test_multi_task.SUBMISSION_ZIP) as archive:
        assert sorted(archive.namelist()) == sorted(written_files(output_dir))
        for name in archive.namelist():
            assert archive.read(name) == (output_dir / name).read_bytes(), name


def model_outputs(model, features, task_id, pad_to=None):
    """The model's outputs (N, num_labels), one example at a time and un-padded (padded to `pad_to` for
    Gated-BERT): a reference that shares nothing with the script's batching, sorting or padding."""
    outputs = []
    with torch.no_grad():
        for i in range(len(features)):
            ids = features.input_ids[features.offsets[i]:features.offsets[i + 1]].long()
            types = (torch.arange(len(ids)) >= features.segment_a_len[i]).long()
            width = pad_to or len(ids)
            mask = (torch.arange(width) < len(ids)).long()
            ids, types = (torch.nn.functional.pad(x, (0, width - len(ids))) for x in (ids, types))
            outputs.append(model(ids[None], types[None], mask[None], task_id).logits[0][0])
    return torch.stack(outputs)


def check_against_model(output_dir, model, heads, data_dir, vocab_file, max_seq_length, cache_dir, pad_to=None):
    """Each written file holds what the model predicts, with the head of the file's task (AX: MNLI's) and its
    labels in head order; WNLI without a head: the majority class "0"."""
    for name in written_files(output_dir):
        task, split = next((t, s) for t in TASKS for s in TASKS[t].test_splits if TASKS[t].submission_file(s) == name)
        features = glue_processors.load_features(data_dir, task, split, vocab_file, do_lower_case=True,
                                                 max_seq_length=max_seq_length, cache_dir=cache_dir)
        _, predictions = read_submission(output_dir / name)
        head = "mnli" if task == "ax" else task
        if head not in heads:
            assert task == "wnli" and set(predictions) == {"0"}
            continue
        outputs = model_outputs(model, features, heads.index(head), pad_to)
        if TASKS[head].type == "regression":
            expected = (outputs[:, 0] * STS_MAX).clamp(0, STS_MAX)
            assert torch.allclose(torch.tensor([float(p) for p in predictions]), expected, rtol=0, atol=STS_TOLERANCE)
        else:
            assert predictions == [TASKS[head].labels[i] for i in outputs.argmax(-1).tolist()], name


# ------------------------------------------------------------------------------------------------ trained runs

@pytest.mark.parametrize("method, expected", [
    ("embert", {"CoLA.tsv", "SST-2.tsv", "MRPC.tsv", "STS-B.tsv", "QNLI.tsv", "RTE.tsv", "WNLI.tsv", "AX.tsv"}),
    ("gated", {"CoLA.tsv", "SST-2.tsv", "MRPC.tsv", "STS-B.tsv", "RTE.tsv", "WNLI.tsv"}),
])
def test_test_split_writes_the_submission(runs, tmp_path, capsys, method, expected):
    glue = shared_glue_dir()
    run_script("--model_dir", runs[method], "--output_dir", tmp_path, "--data_dir", glue)
    out = capsys.readouterr().out
    assert written_files(tmp_path) == expected
    for name in expected:
        indices, predictions = read_submission(tmp_path / name)
        test_rows = read_tsv(glue / TEST_FILES[name])
        assert test_rows[0][0] in ("index", "id")
        assert indices == [row[0] for row in test_rows[1:]], name  # same rows, same order, index from the file
        check_labels(name, predictions)
    check_zip(tmp_path)
    not_written = out.split("not written: ")[1]
    if method == "embert":  # it has the MNLI and QQP heads, but ../shared/glue lacks their test files
        for name in ABSENT_FROM_SHARED:
            assert f"{name} ({glue / TEST_FILES[name]} not found)" in not_written
    else:  # the five-task Gated-BERT model has no MNLI, QQP or QNLI head, so no AX either
        assert "AX.tsv (the model has no mnli head)" in not_written
        assert "QNLI.tsv (the model has no qnli head)" in not_written


@pytest.mark.parametrize("method", ["embert", "gated"])
def test_dev_split_reproduces_the_logged_best_metrics(runs, tmp_path, capsys, method):
    """--split dev from the run directory alone (data, batch size and length from its files) gives exactly what
    the training run logged at the epoch whose model best_model.pth holds."""
    run_script("--model_dir", runs[method], "--output_dir", tmp_path, "--split", "dev")
    records = [json.loads(line) for line in (runs[method] / run_files.EVAL_LOG).read_text().splitlines()]
    best = [record for record in records if record["best"]][-1]
    results = json.loads((tmp_path / run_test_multi_task.DEV_RESULTS).read_text())
    assert results["glue_score"] == best["glue_score"]  # the same batches through the same code: bit for bit
    assert results["mean_score"] == results["glue_score"]  # GLUE tasks only: the mean score is the GLUE score
    assert {t: s for t, s in results["scores"].items() if t != "wnli"} == best["scores"]
    assert set(results["scores"]["wnli"]) == {"acc"}  # the majority-class baseline, reported but not averaged
    assert f"GLUE {best['glue_score']:.2f}" in capsys.readouterr().out
    for name in written_files(tmp_path):
        indices, predictions = read_submission(tmp_path / name)
        assert indices == [str(i) for i in range(len(indices))]  # dev files: the index is the row number
        check_labels(name, predictions)
    assert not (tmp_path / run_test_multi_task.SUBMISSION_ZIP).exists()  # dev predictions are not for upload


def test_index_comes_from_the_test_file(runs, tmp_path):
    """GLUE's test indices happen to be row numbers: rows in reverse order tell the two apart."""
    data_dir = tmp_path / "glue"
    (data_dir / "RTE").mkdir(parents=True)
    header, *rows = read_tsv(fixture_glue_dir() / TEST_FILES["RTE.tsv"])
    (data_dir / TEST_FILES["RTE.tsv"]).write_text("".join("\t".join(row) + "\n" for row in [header, *rows[::-1]]),
                                                   encoding="utf-8")
    run_script("--model_dir", runs["embert"], "--output_dir", tmp_path / "out", "--tasks", "rte", "--data_dir",
               data_dir)
    indices, _ = read_submission(tmp_path / "out" / "RTE.tsv")
    assert indices == [row[0] for row in rows[::-1]] != [str(i) for i in range(len(rows))]


def test_task_subset_from_a_run(runs, tmp_path, capsys):
    run_script("--model_dir", runs["embert"], "--output_dir", tmp_path, "--tasks", "rte,ax", "--data_dir",
               fixture_glue_dir())
    assert written_files(tmp_path) == {"RTE.tsv", "AX.tsv"}
    assert "CoLA.tsv (not in --tasks)" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ checkpoint files

def tiny_model(module, heads, seed=0, **overrides):
    torch.manual_seed(seed)
    config = module.BertConfig(**{**TINY, **overrides})
    return module.BertForMultiTask(config, [TASKS[t].num_labels for t in heads]).eval()


def to_original_names(state):
    """Our state dict under the original EmBERT / Gated-BERT code's names: LayerNorm gamma and beta (SPEC 5.5)."""
    return {re.sub(r"LayerNorm\.weight$", "LayerNorm.gamma", re.sub(r"LayerNorm\.bias$", "LayerNorm.beta", k)): v
            for k, v in state.items()}


@pytest.mark.parametrize("heads", [ALL_TASKS, ("wnli", "mnli")])
def test_our_checkpoint_file_predicts_with_the_right_heads(workspace, tmp_path, heads):
    """A bare state dict of ours: its heads are --tasks. Every file, AX with the MNLI head, WNLI with its own head
    when it has one, against the model itself run example by example."""
    model = tiny_model(modeling, heads)
    torch.save(model.state_dict(), tmp_path / "model.pth")
    vocab = workspace["minilm"] / "vocab.txt"
    output_dir = tmp_path / "out"
    run_script("--model_dir", tmp_path / "model.pth", "--tasks", ",".join(heads), "--bert_config_file",
               workspace["config"], "--vocab_file", vocab, "--do_lower_case", "--data_dir", fixture_glue_dir(),
               "--output_dir", output_dir, "--max_seq_length", MAX_SEQ_LENGTH, "--cache_dir", workspace["cache"])
    expected = set(TEST_FILES) if heads == ALL_TASKS else {"WNLI.tsv", "MNLI-m.tsv", "MNLI-mm.tsv", "AX.tsv"}
    assert written_files(output_dir) == expected
    check_against_model(output_dir, model, list(heads), fixture_glue_dir(), vocab, MAX_SEQ_LENGTH,
                        workspace["cache"])
    check_zip(output_dir)


def test_original_embert_checkpoint_with_minilm_weights(workspace, tmp_path):
    """The original code's state dict (SPEC 5.5: `bert.` prefix, gamma/beta, task embeddings, eight heads in --tasks
    all order) of real MiniLM weights plus random task parameters; compared with a model assembled by hand."""
    minilm = workspace["minilm"]
    encoder = {k: v for k, v in load_file(minilm / "model.safetensors").items() if not k.endswith("position_ids")}
    config = modeling.BertConfig.from_json_file(minilm / "config.json")
    config = dataclasses.replace(config, our_attn=True)
    g = torch.Generator().manual_seed(0)
    task_embeddings = {(n, table): 0.02 * torch.randn(len(ALL_TASKS), config.hidden_size, generator=g)
                       for n in range(config.num_hidden_layers) for table in ("query", "key", "value")}
    heads = [(0.02 * torch.randn(TASKS[t].num_labels, config.hidden_size, generator=g),
              0.02 * torch.randn(TASKS[t].num_labels, generator=g)) for t in ALL_TASKS]
    original = to_original_names({f"bert.{k}": v for k, v in encoder.items()})
    original.update({f"bert.encoder.layer.{n}.attention.self.{table}_task_emb.weight": value
                     for (n, table), value in task_embeddings.items()})
    for t, (weight, bias) in enumerate(heads):
        original[f"classifier.{t}.weight"], original[f"classifier.{t}.bias"] = weight, bias
    torch.save(original, tmp_path / "embert_original.bin")
    config_file = tmp_path / "embert_config.json"
    config.to_json_file(config_file)

    output_dir = tmp_path / "out"
    run_script("--model_dir", tmp_path / "embert_original.bin", "--bert_config_file", config_file, "--vocab_file",
               minilm / "vocab.txt", "--do_lower_case", "--data_dir", fixture_glue_dir(), "--output_dir", output_dir,
               "--tasks", "sts,ax", "--cache_dir", workspace["cache"])
    assert written_files(output_dir) == {"STS-B.tsv", "AX.tsv"}

    # The same model put together attribute by attribute: MiniLM's encoder, then each task parameter in place.
    reference = modeling.BertForMultiTask(config, [TASKS[t].num_labels for t in ALL_TASKS]).eval()
    checkpoints.load_pretrained(reference, minilm / "model.safetensors")
    with torch.no_grad():
        for (n, table), value in task_embeddings.items():
            getattr(reference.bert.encoder.layer[n].attention.self, f"{table}_task_emb").weight.copy_(value)
        for head, (weight, bias) in zip(reference.classifier, heads):
            head.weight.copy_(weight)
            head.bias.copy_(bias)
    check_against_model(output_dir, reference, list(ALL_TASKS), fixture_glue_dir(), minilm / "vocab.txt",
                        run_test_multi_task.DEFAULT_MAX_SEQ_LENGTH, workspace["cache"])


@pytest.fixture
def original_gated_checkpoint(tmp_path):
    """A tiny Gated-BERT under the original code's names, its gate reading MAX_SEQ_LENGTH tokens; the config file
    (like the original's embert_config.json) does not say the adapters' rank."""
    model = tiny_model(modeling_gated, ALL_TASKS, max_seq_length=MAX_SEQ_LENGTH, hidden_size_aug=GATED_RANK)
    path = tmp_path / "gated_original.bin"
    torch.save(to_original_names(model.state_dict()), path)
    return model, path


def test_original_gated_checkpoint(workspace, tmp_path, original_gated_checkpoint):
    model, path = original_gated_checkpoint
    vocab = workspace["minilm"] / "vocab.txt"
    output_dir = tmp_path / "out"
    run_script("--model_dir", path, "--bert_config_file", workspace["config"], "--vocab_file", vocab,
               "--do_lower_case", "--data_dir", fixture_glue_dir(), "--output_dir", output_dir, "--max_seq_length",
               MAX_SEQ_LENGTH, "--tasks", "rte,ax", "--cache_dir", workspace["cache"])
    assert written_files(output_dir) == {"RTE.tsv", "AX.tsv"}
    check_against_model(output_dir, model, list(ALL_TASKS), fixture_glue_dir(), vocab, MAX_SEQ_LENGTH,
                        workspace["cache"], pad_to=MAX_SEQ_LENGTH)


# ------------------------------------------------------------------------------------------------ bad input

def checkpoint_file_flags(workspace, tmp_path):
    return ["--vocab_file", workspace["minilm"] / "vocab.txt", "--do_lower_case", "--data_dir", fixture_glue_dir(),
            "--output_dir", tmp_path / "out", "--cache_dir", workspace["cache"]]


def test_error_directory_without_checkpoint(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["embert"], run)
    (run / run_files.BEST_MODEL).unlink()
    assert f"lacks {run_files.BEST_MODEL}" in error_of("--model_dir", run, "--output_dir", tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    message = error_of("--model_dir", empty, "--output_dir", tmp_path / "out")
    assert f"lacks {run_files.CONFIG_FILE}, {run_files.VOCAB_FILE}, {run_files.BEST_MODEL}" in message


def test_error_heads_do_not_match_the_tasks(workspace, tmp_path):
    torch.save(tiny_model(modeling, ALL_TASKS).state_dict(), tmp_path / "model.pth")
    message = error_of("--model_dir", tmp_path / "model.pth", "--tasks", "cola,mrpc", "--bert_config_file",
                       workspace["config"], *checkpoint_file_flags(workspace, tmp_path))
    assert "has 8 heads with [2, 2, 3, 2, 1, 2, 2, 2] outputs" in message and "--tasks cola,mrpc" in message
    # An original-format checkpoint must have the eight heads of --tasks all.
    five = tiny_model(modeling, FIVE_TASKS)
    torch.save(to_original_names(five.state_dict()), tmp_path / "original.bin")
    message = error_of("--model_dir", tmp_path / "original.bin", "--bert_config_file", workspace["config"],
                       *checkpoint_file_flags(workspace, tmp_path))
    assert "has 5 heads" in message and "--tasks all order" in message


def test_error_config_disagrees_with_the_checkpoint(workspace, tmp_path, original_gated_checkpoint):
    torch.save(tiny_model(modeling, ALL_TASKS).state_dict(), tmp_path / "model.pth")
    wider = tmp_path / "wider.json"
    wider.write_text(json.dumps({**TINY, "hidden_size": 48}))
    message = error_of("--model_dir", tmp_path / "model.pth", "--bert_config_file", wider,
                       *checkpoint_file_flags(workspace, tmp_path))
    assert "the config's hidden_size is 48, the checkpoint's is 32" in message
    # Gated-BERT: the gate's input size fixes the sequence length.
    _, gated = original_gated_checkpoint
    message = error_of("--model_dir", gated, "--bert_config_file", workspace["config"], "--max_seq_length",
                       OTHER_LENGTH, *checkpoint_file_flags(workspace, tmp_path))
    assert (f"gate reads sequences of {MAX_SEQ_LENGTH} tokens, this run pads to --max_seq_length {OTHER_LENGTH}"
            in message)
    # --model overrides what the keys say.
    message = error_of("--model_dir", gated, "--model", "embert", "--bert_config_file", workspace["config"],
                       *checkpoint_file_flags(workspace, tmp_path))
    assert "this model does not" in message and "attention.self.key_list.0" in message


def test_error_test_file_without_index_column(runs, tmp_path):
    data_dir = tmp_path / "glue"
    shutil.copytree(fixture_glue_dir(), data_dir)
    cola = data_dir / "CoLA" / "test.tsv"
    rows = read_tsv(cola)
    cola.write_text("".join(row[1] + "\n" for row in rows), encoding="utf-8")  # the sentence column only
    message = error_of("--model_dir", runs["gated"], "--output_dir", tmp_path / "out", "--data_dir", data_dir)
    assert str(cola) in message


def test_error_flags_for_a_file_given_with_a_run(runs, workspace, tmp_path):
    message = error_of("--model_dir", runs["embert"], "--vocab_file", workspace["minilm"] / "vocab.txt",
                       "--output_dir", tmp_path)
    assert "--vocab_file: only for a checkpoint file" in message
    message = error_of("--model_dir", runs["gated"], "--output_dir", tmp_path, "--max_seq_length", OTHER_LENGTH)
    assert f"Gated-BERT's gate reads exactly the {MAX_SEQ_LENGTH} tokens it was trained with" in message


def test_error_checkpoint_file_without_its_config(workspace, tmp_path):
    torch.save(tiny_model(modeling, ALL_TASKS).state_dict(), tmp_path / "model.pth")
    message = error_of("--model_dir", tmp_path / "model.pth", *checkpoint_file_flags(workspace, tmp_path))
    assert "give --bert_config_file and --vocab_file" in message


def test_error_truncated_best_model_names_the_file(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["embert"], run)
    best = run / run_files.BEST_MODEL
    best.write_bytes(best.read_bytes()[:4096])
    message = error_of("--model_dir", run, "--output_dir", tmp_path / "out")
    assert f"--model_dir: checkpoint {best} is truncated" in message


def test_non_empty_output_dir_is_refused_unless_overwritten(runs, tmp_path, capsys):
    out = tmp_path / "out"
    run_script("--model_dir", runs["embert"], "--output_dir", out, "--split", "dev", "--tasks", "rte,sts")
    assert (out / run_test_multi_task.DEV_RESULTS).is_file()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "is not empty: pass --overwrite_output_dir" in error_of("--model_dir", runs["embert"], "--output_dir", out,
                                                                  "--tasks", "rte")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    (out / "my_notes.txt").write_text("kept")
    capsys.readouterr()
    run_script("--model_dir", runs["embert"], "--output_dir", out, "--tasks", "rte", "--overwrite_output_dir")
    printed = capsys.readouterr().out
    assert f"reading the test files from {fixture_glue_dir()} (the training run's --data_dir" in printed
    # the dev split's files are gone (no stale dev_results.json beside test predictions); other files stay
    assert sorted(p.name for p in out.iterdir()) == ["RTE.tsv", "my_notes.txt", run_test_multi_task.SUBMISSION_ZIP]


# ---------------------------------------------------------------------------------------------------- other problems

PROBLEMS_FILE = fixture_glue_dir().parent / "problems" / "problems.json"
USER_PROBLEMS = ("emotion", "ner", "senti", "score")


@pytest.fixture(scope="module")
def user_run(workspace):
    """A run on the user's four problems of tests/fixtures/problems (one of each type), from its problems file."""
    output_dir = workspace["root"] / "user"
    argv = ["--output_dir", str(output_dir), "--tasks", ",".join(USER_PROBLEMS), "--problems", str(PROBLEMS_FILE),
            "--sample", "rr", "--do_train", "--do_eval", "--do_lower_case", "--data_dir", str(fixture_glue_dir()),
            "--vocab_file", str(workspace["minilm"] / "vocab.txt"), "--bert_config_file", str(workspace["config"]),
            "--max_seq_length", "16", "--train_batch_size", "4", "--eval_batch_size", "3", "--num_train_epochs",
            "2", "--steps_per_epoch", "4", "--learning_rate", "1e-3", "--no_cuda", "--cache_dir",
            str(workspace["cache"])]
    multitask.main(multitask.parse_args(run_multi_task.__doc__, argv), run_multi_task.METHOD)
    return output_dir


def test_user_problems_train_with_their_types_metrics_and_records(user_run):
    evals = [json.loads(line) for line in (user_run / run_files.EVAL_LOG).read_text().splitlines()]
    assert {t: set(m) for t, m in evals[-1]["scores"].items()} == {
        "emotion": {"micro_f1", "macro_f1", "exact_match"}, "ner": {"f1", "precision", "recall"},
        "senti": {"acc"}, "score": {"pearson", "spearman"}}
    config = json.loads((user_run / run_files.CONFIG_FILE).read_text())
    assert set(config["problems"]) == set(USER_PROBLEMS)  # the run directory predicts on its own
    assert config["problems"]["ner"]["type"] == "seq_tag"
    state = load_first_tensor_shapes(user_run / run_files.BEST_MODEL)
    labels = config["task_labels"]
    assert state["classifier.0.weight"] == (len(labels["emotion"]), TINY["hidden_size"])  # multi-label: one per label
    assert state["classifier.1.weight"] == (len(labels["ner"]), TINY["hidden_size"])  # one output per tag
    assert state["classifier.3.weight"] == (1, TINY["hidden_size"])  # regression


def load_first_tensor_shapes(path):
    return {k: tuple(v.shape) for k, v in torch.load(path, weights_only=True).items()}


def test_user_problems_dev_split_reproduces_the_logged_metrics(user_run, tmp_path, capsys):
    out = tmp_path / "dev"
    run_script("--model_dir", user_run, "--output_dir", out, "--split", "dev")
    best = [json.loads(line) for line in (user_run / run_files.EVAL_LOG).read_text().splitlines()]
    best = [e for e in best if e["best"]][-1]
    results = json.loads((out / run_test_multi_task.DEV_RESULTS).read_text())
    for task, metrics in best["scores"].items():
        assert results["scores"][task] == pytest.approx(metrics, abs=1e-9), task
    assert results["mean_score"] == pytest.approx(best["mean_score"], abs=1e-9)
    assert "glue_score" not in results and "glue_score" not in best  # no GLUE task in the run
    # The CoNLL file: every token of the dev file once, as written there, with its gold and predicted tag.
    gold_lines = [line.split() for line in (PROBLEMS_FILE.parent / "ner" / "dev.txt").read_text().splitlines()
                  if line.strip() and not line.startswith("-DOCSTART-")]
    written = [line.split("\t") for line in (out / "ner.conll").read_text().splitlines() if line]
    assert [(w[0], w[1]) for w in written] == [(g[0], g[-1]) for g in gold_lines]
    assert {w[2] for w in written} <= set(json.loads((user_run / "config.json").read_text())["task_labels"]["ner"])
    assert (out / "emotion.tsv").read_text().startswith("index\tprediction\n")


def test_user_problems_test_split_writes_their_files(user_run, tmp_path, capsys):
    out = tmp_path / "test"
    run_script("--model_dir", user_run, "--output_dir", out)
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["emotion.tsv", "ner.conll"]  # senti and score have no test set
    assert "senti has no test set" in printed and "score has no test set" in printed
    assert ".tsv (the model has no" not in printed  # no GLUE head, no GLUE submission: its files are no news
    test_tokens = [line.split()[0] for line in (PROBLEMS_FILE.parent / "ner" / "test.txt").read_text().splitlines()
                   if line.strip()]
    written = [line.split("\t") for line in (out / "ner.conll").read_text().splitlines() if line]
    assert [w[0] for w in written] == test_tokens and all(len(w) == 2 for w in written)
    rows = (out / "emotion.tsv").read_text().splitlines()
    assert len(rows) == len((PROBLEMS_FILE.parent / "emotion" / "test.tsv").read_text().splitlines())


@pytest.mark.parametrize("where", ["a file", "under a file", "read-only"])
def test_an_output_dir_that_cannot_be_written_is_refused_first(user_run, tmp_path, read_only_folder, where):
    file = tmp_path / "notes.txt"
    file.write_text("mine\n")
    out = {"a file": file, "under a file": file / "pred", "read-only": read_only_folder / "pred"}[where]
    assert f"--output_dir {out}" in error_of("--model_dir", user_run, "--output_dir", out)
    assert file.read_text() == "mine\n" and not list(read_only_folder.iterdir())


def test_a_run_whose_data_moved_predicts_with_a_problems_file(workspace, tmp_path):
    """config.json records a user problem's absolute paths. Once the files move, the error names that record and
    --problems (not --data_dir, which the problem ignores); --problems FILE with the new paths predicts as before the
    move; a record whose labels differ from the trained ones is refused."""
    data = tmp_path / "data"
    shutil.copytree(PROBLEMS_FILE.parent / "senti", data / "senti")
    senti = json.loads(PROBLEMS_FILE.read_text())["senti"]
    (data / "senti.json").write_text(json.dumps({"senti": senti}))
    run_dir = tmp_path / "run"
    argv = ["--output_dir", str(run_dir), "--tasks", "senti", "--problems", str(data / "senti.json"), "--do_train",
            "--do_lower_case", "--data_dir", str(fixture_glue_dir()), "--vocab_file",
            str(workspace["minilm"] / "vocab.txt"), "--bert_config_file", str(workspace["config"]),
            "--max_seq_length", "16", "--train_batch_size", "4", "--num_train_epochs", "1", "--steps_per_epoch", "2",
            "--no_cuda", "--cache_dir", str(workspace["cache"])]
    multitask.main(multitask.parse_args(run_multi_task.__doc__, argv), run_multi_task.METHOD)
    run_script("--model_dir", run_dir, "--output_dir", tmp_path / "before", "--split", "dev")
    moved = tmp_path / "moved"
    shutil.move(data, moved)
    message = error_of("--model_dir", run_dir, "--output_dir", tmp_path / "lost", "--split", "dev")
    assert "senti's paths are those of its record in the run's config.json; --problems FILE gives them new ones" in \
        message and not message.startswith("error: --data_dir")
    run_script("--model_dir", run_dir, "--output_dir", tmp_path / "after", "--split", "dev", "--problems",
               moved / "senti.json")
    assert (tmp_path / "after" / "senti.tsv").read_bytes() == (tmp_path / "before" / "senti.tsv").read_bytes()
    (moved / "swapped.json").write_text(json.dumps({"senti": {**senti, "labels": ["pos", "neg"]}}))
    assert "senti's labels is ('pos', 'neg'), but the run trained it with ('neg', 'pos')" in error_of(
        "--model_dir", run_dir, "--output_dir", tmp_path / "swapped", "--split", "dev", "--problems",
        moved / "swapped.json")


# ---------------------------------------------------------------------------------------------------- PALs

PAL_WIDTH = 12  # a multiple of the PAL's 6 attention heads, odd against the tiny hidden size on purpose


@pytest.fixture(scope="module")
def pals_run(workspace):
    """A PALs run (run_multi_task_pals.py) on the eight tasks of the fixture rows (the original code's heads)."""
    config = workspace["root"] / "tiny_pals_config.json"
    config.write_text(json.dumps({**{k: v for k, v in TINY.items() if k != "our_attn"}, "hidden_size_aug": PAL_WIDTH,
                                  "mult": True, "pals": True}))
    output_dir = workspace["root"] / "pals"
    argv = ["--seed", "1", "--output_dir", str(output_dir), "--tasks", "all", "--sample", "anneal",
            "--do_train", "--do_eval", "--do_lower_case", "--data_dir", str(fixture_glue_dir()),
            "--vocab_file", str(workspace["minilm"] / "vocab.txt"), "--bert_config_file", str(config),
            "--max_seq_length", str(MAX_SEQ_LENGTH), "--train_batch_size", "8", "--eval_batch_size",
            str(EVAL_BATCH_SIZE), "--num_train_epochs", "2", "--steps_per_epoch", "2", "--no_cuda", "--cache_dir",
            str(workspace["cache"])]
    multitask.main(multitask.parse_args(run_multi_task_pals.__doc__, argv), run_multi_task_pals.METHOD)
    return output_dir, config


def test_pals_run_directory_and_original_checkpoint_predict_the_logged_scores(pals_run, workspace, tmp_path):
    run, config = pals_run
    records = [json.loads(line) for line in (run / run_files.EVAL_LOG).read_text().splitlines()]
    best = [record for record in records if record["best"]][-1]
    run_script("--model_dir", run, "--output_dir", tmp_path / "dir", "--split", "dev")
    results = json.loads((tmp_path / "dir" / run_test_multi_task.DEV_RESULTS).read_text())
    assert results["glue_score"] == best["glue_score"]
    # The same weights as the original PALs code writes them (gamma/beta, every alias of the shared projections).
    state = torch.load(run / run_files.BEST_MODEL, weights_only=True)
    assert any(".multi_layers.0.aug_dense.weight" in k for k in state)
    assert "bert.encoder.mult_aug_dense.0.weight" in state
    original = tmp_path / "pals_model.bin"
    torch.save(to_original_names(state), original)
    flags = ["--bert_config_file", config, "--vocab_file", workspace["minilm"] / "vocab.txt", "--do_lower_case",
             "--data_dir", fixture_glue_dir(), "--max_seq_length", MAX_SEQ_LENGTH, "--eval_batch_size",
             EVAL_BATCH_SIZE, "--cache_dir", workspace["cache"]]
    run_script("--model_dir", original, "--output_dir", tmp_path / "file", "--split", "dev", *flags)
    from_file = json.loads((tmp_path / "file" / run_test_multi_task.DEV_RESULTS).read_text())
    assert from_file["scores"] == results["scores"]
    run_script("--model_dir", run, "--output_dir", tmp_path / "test")
    assert (tmp_path / "test" / run_test_multi_task.SUBMISSION_ZIP).is_file()
    assert written_files(tmp_path / "test") == set(SERVER_LABELS) | {STS_FILE}  # all eleven


# ---------------------------------------------------------------------------------------------------- & groups

CHAINED = "pku_cws&pku_ner&pku_entity_types|pku_pos"


@pytest.fixture(scope="module")
def chained_run(workspace):
    """People's Daily as one & group of three problems and one | group (real data in ../shared)."""
    shared = shared_glue_dir().parent
    require((shared / "pku199801" / "199801.txt").is_file(), f"needs People's Daily in {shared / 'pku199801'}")
    output_dir = workspace["root"] / "chained"
    argv = ["--output_dir", str(output_dir), "--tasks", CHAINED, "--sample", "uniform", "--do_train", "--do_eval",
            "--do_lower_case", "--data_dir", str(shared), "--vocab_file", str(workspace["minilm"] / "vocab.txt"),
            "--bert_config_file", str(workspace["config"]), "--max_seq_length", "32", "--train_batch_size", "8",
            "--eval_batch_size", "512", "--num_train_epochs", "2", "--steps_per_epoch", "3", "--learning_rate",
            "1e-3", "--log_steps", "3", "--no_cuda", "--cache_dir", str(workspace["cache"])]
    multitask.main(multitask.parse_args(run_multi_task.__doc__, argv), run_multi_task.METHOD)
    return output_dir


@pytest.mark.slow
def test_chained_run_logs_per_problem_and_predicts_its_logged_scores(chained_run, tmp_path):
    log = [json.loads(line) for line in (chained_run / run_files.TRAIN_LOG).read_text().splitlines()]
    counts = [r["task_counts"] for r in log if "task_counts" in r]
    assert all(set(c) == {"pku_cws&pku_ner&pku_entity_types", "pku_pos"} and sum(c.values()) == 3 for c in counts)
    losses = [r for r in log if "loss" in r]
    by_step = {}
    for r in losses:
        by_step.setdefault(r["global_step"], {})[r["task"]] = r["steps"]
    for steps in by_step.values():  # an & group's members are trained on the same steps: equal counts
        members = [steps[t] for t in ("pku_cws", "pku_ner", "pku_entity_types") if t in steps]
        assert len(set(members)) <= 1 and len(members) in (0, 3)
    config = json.loads((chained_run / run_files.CONFIG_FILE).read_text())
    assert config["task_groups"] == [["pku_cws", "pku_ner", "pku_entity_types"], ["pku_pos"]]
    state = torch.load(chained_run / run_files.BEST_MODEL, weights_only=True)
    assert state["bert.encoder.layer.0.attention.self.query_task_emb.weight"].shape[0] == 2  # a row per group
    assert state["classifier.3.weight"].shape[0] == len(config["task_labels"]["pku_pos"])  # a head per problem
    run_script("--model_dir", chained_run, "--output_dir", tmp_path, "--split", "dev")
    best = [json.loads(line) for line in (chained_run / run_files.EVAL_LOG).read_text().splitlines()]
    best = [e for e in best if e["best"]][-1]
    results = json.loads((tmp_path / run_test_multi_task.DEV_RESULTS).read_text())
    assert results["scores"] == best["scores"] and results["mean_score"] == best["mean_score"]
    assert {p.name for p in tmp_path.iterdir()} >= {"pku_cws.conll", "pku_ner.conll", "pku_pos.conll",
                                                    "pku_entity_types.tsv"}
    # pku_entity_types labels a sentence: one line per dev sentence (many are cut into pieces at length 32), and
    # its logged metrics are those of the file, recomputed per sentence.
    problem = problems.get_problem("pku_entity_types")
    sentences = problems.read_examples(problem, "dev", shared_glue_dir().parent)
    rows = [line.split("\t") for line in (tmp_path / "pku_entity_types.tsv").read_text().splitlines()[1:]]
    assert [int(index) for index, _ in rows] == list(range(len(sentences)))
    predicted = torch.tensor([[label in value.split(",") for label in problem.labels] for _, value in rows])
    gold = torch.tensor([[float(label in s.tags) for label in problem.labels] for s in sentences])
    assert multi_label_metrics(problem.metrics["dev"], predicted, gold) == best["scores"]["pku_entity_types"]


def test_problems_joined_by_and_need_the_same_inputs(workspace, tmp_path):
    argv = ["--output_dir", str(tmp_path / "out"), "--tasks", "senti&emotion", "--problems", str(PROBLEMS_FILE),
            "--do_train", "--do_lower_case", "--data_dir", str(fixture_glue_dir()), "--vocab_file",
            str(workspace["minilm"] / "vocab.txt"), "--bert_config_file", str(workspace["config"]),
            "--max_seq_length", "16", "--no_cuda", "--cache_dir", str(workspace["cache"])]
    with pytest.raises(SystemExit, match=r"senti & emotion must have the same inputs, but their training examples "
                                         r"differ from example 0 on .*use \| instead|separate groups with \|"):
        multitask.main(multitask.parse_args(run_multi_task.__doc__, argv), run_multi_task.METHOD)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- masked LM problems

LM_PROBLEMS_FILE = fixture_glue_dir().parent / "problems" / "lm.json"


@pytest.fixture(scope="module")
def masked_run(workspace):
    """CoLA beside masked LM on its texts (cola_mlm) and pre-training on the news documents (lm.json)."""
    output_dir = workspace["root"] / "masked"
    argv = ["--output_dir", str(output_dir), "--tasks", "cola|cola_mlm|news_pretrain", "--problems",
            str(LM_PROBLEMS_FILE), "--sample", "rr", "--do_train", "--do_eval", "--do_lower_case", "--data_dir",
            str(fixture_glue_dir()), "--vocab_file", str(workspace["minilm"] / "vocab.txt"), "--bert_config_file",
            str(workspace["config"]), "--max_seq_length", "32", "--train_batch_size", "4", "--eval_batch_size", "16",
            "--num_train_epochs", "2", "--steps_per_epoch", "6", "--learning_rate", "1e-3", "--no_cuda",
            "--cache_dir", str(workspace["cache"])]
    multitask.main(multitask.parse_args(run_multi_task.__doc__, argv), run_multi_task.METHOD)
    return output_dir


def test_masked_problems_are_scored_with_split_dev_and_write_no_file(masked_run, tmp_path, capsys):
    out = tmp_path / "dev"
    run_script("--model_dir", masked_run, "--output_dir", out, "--split", "dev")
    evals = [json.loads(line) for line in (masked_run / run_files.EVAL_LOG).read_text().splitlines()]
    best = [e for e in evals if e["best"]][-1]
    assert set(best["scores"]["cola_mlm"]) == {"acc", "perplexity"}
    assert set(best["scores"]["news_pretrain"]) == {"mlm_acc", "nsp_acc", "perplexity"}
    # The best model is CoLA's: the masked problems are left out of the mean.
    assert best["glue_score"] == pytest.approx(best["task_scores"]["cola"])
    results = json.loads((out / run_test_multi_task.DEV_RESULTS).read_text())
    for task, metrics in best["scores"].items():  # the same masked dev tokens as the training run's evaluation
        assert results["scores"][task] == pytest.approx(metrics, abs=1e-9), task
    assert {path.name for path in out.iterdir()} == {"CoLA.tsv", "WNLI.tsv", run_test_multi_task.DEV_RESULTS}
    test_out = tmp_path / "test"
    run_script("--model_dir", masked_run, "--output_dir", test_out)
    assert "cola_mlm (mask_lm: no prediction file; --split dev reports its metrics)" in capsys.readouterr().out
    assert "CoLA.tsv" in written_files(test_out)
    config = json.loads((masked_run / run_files.CONFIG_FILE).read_text())
    assert config["problems"]["cola_mlm"]["inputs_of"] == "cola"  # rebuilt from the run directory alone
    state = torch.load(masked_run / run_files.BEST_MODEL, weights_only=True)
    assert "classifier.1.weight" not in state and "cls.predictions.bias" in state  # the LM head is BERT's, shared
    assert "cls.seq_relationship.weight" in state and "cls.predictions.decoder.weight" not in state
