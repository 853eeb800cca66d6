"""bench_onnx.py, bench.py's onnx section: a smoke run on real GLUE dev rows with a tiny model (one graph exported,
both paths timed over the same batches, their outputs checked equal first), and the note without the extras."""
import json
from types import SimpleNamespace

import pytest
import torch

import bench_onnx
import export_onnx
import modeling
from conftest import fixture_glue_dir, minilm_dir
from helpers import tiny_dict

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only add waiting

TASKS = ("cola", "sts")  # a single-sentence task and a pair task
EXAMPLES, BATCH = 12, 8  # per task: a full batch and a partial one
MAX_SEQ_LENGTH = 64


def section_args(tmp_path):
    """The bench.py flags the section reads."""
    return SimpleNamespace(seed=1, data_dir=fixture_glue_dir(), vocab_file=minilm_dir() / "vocab.txt",
                           cache_dir=tmp_path / "cache", eval_examples=EXAMPLES, eval_batch_size=BATCH, repeats=2)


def test_onnx_section_times_both_paths_on_the_same_batches(tmp_path, capsys):
    config = modeling.BertConfig(**tiny_dict(vocab_size=30522, max_position_embeddings=MAX_SEQ_LENGTH, our_attn=True))
    threads = torch.get_num_threads()
    section = bench_onnx.measure(section_args(tmp_path), config, TASKS, MAX_SEQ_LENGTH)
    assert torch.get_num_threads() == threads  # one thread inside the section only
    assert json.loads(json.dumps(section)) == section  # what bench.py writes to --json
    assert section["sequences"] == EXAMPLES * len(TASKS) and section["examples_per_task"] == dict.fromkeys(
        TASKS, EXAMPLES)
    assert section["max_abs_diff"] < export_onnx.MAX_ABS_DIFF and section["threads"] == 1
    for path in section["paths"].values():
        assert len(path["seconds_per_round"]) == 2 and path["sequences_per_s"] > 0
        low, high = path["sequences_per_s_range"]
        assert low <= path["sequences_per_s"] <= high
    assert section["ratio_onnxruntime_over_ours"] > 0
    bench_onnx.print_onnx_section("onnx", section, None)
    printed = capsys.readouterr().out
    assert "onnxruntime / ours:" in printed and f"{EXAMPLES * len(TASKS)} dev sequences per round" in printed


def test_batches_are_those_of_the_evaluation(tmp_path):
    features = bench_onnx.dev_sample(section_args(tmp_path), TASKS, MAX_SEQ_LENGTH)[0]
    batches = bench_onnx.padded_batches(features, BATCH)
    widths = [batch["input_ids"].shape[1] for batch in batches]
    assert [len(batch["input_ids"]) for batch in batches] == [BATCH, EXAMPLES - BATCH]
    assert widths == sorted(widths, reverse=True) and all(width % 8 == 0 for width in widths)  # longest first
    assert sum(int(batch["attention_mask"].sum()) for batch in batches) == int(features.lengths.sum())


def test_without_the_extras_the_section_says_why(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(export_onnx, "ONNX_PACKAGES", ("onnx", "no_such_onnx_runtime"))
    assert bench_onnx.onnx_section(SimpleNamespace(args=section_args(tmp_path))) == {}  # no report entry
    assert capsys.readouterr().out == ("note: onnx section skipped: no_such_onnx_runtime not installed (pip install "
                                       "-r requirements-dev.txt)\n")
