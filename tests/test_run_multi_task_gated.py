"""run_multi_task_gated.py end to end: the seed's Gated command on real GLUE rows and MiniLM weights.

Gated-BERT pads every batch to max_seq_length (128), so on a CPU it costs several times EmBERT's step: the test runs the
seed command on the GLUE rows shipped in tests/fixtures with 4 batches of 8 per epoch (the full-data run: README).
"""
import json

import pytest
import torch

import multitask
import run_multi_task_gated
from conftest import fixture_glue_dir, minilm_dir
from helpers import OUTPUT_FILES, SMALL_TASKS, read_jsonl, seed_command

GATED_STEPS = 4  # optimizer steps per epoch


@pytest.mark.slow
def test_seed_gated_command_trains_and_writes_a_checkpoint_per_epoch(tmp_path, minilm_embert_config):
    out = tmp_path / "gated"
    argv = [*seed_command(out, fixture_glue_dir(), minilm_embert_config, minilm_dir(), tmp_path / "cache"),
            "--train_batch_size", 8, "--steps_per_epoch", GATED_STEPS]
    multitask.main(multitask.parse_args(run_multi_task_gated.__doc__, [str(a) for a in argv]),
                   run_multi_task_gated.METHOD)
    for name in (*OUTPUT_FILES, "model_epoch_0.pth", "model_epoch_1.pth"):
        assert (out / name).is_file(), name
    log = read_jsonl(out / "train_log.jsonl")
    epochs = [r for r in log if "task_counts" in r]
    assert all(sum(r["task_counts"].values()) == GATED_STEPS for r in epochs)
    assert epochs[1]["alpha"] == pytest.approx(1 - 0.8 / 19)  # Gated-BERT anneals over 20-epoch phases
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "gated" and config["max_seq_length"] == 128 and config["hidden_size_aug"] == 204
    assert len(read_jsonl(out / "eval_results.jsonl")) == 2
    epoch_0 = torch.load(out / "model_epoch_0.pth", weights_only=True)
    epoch_1 = torch.load(out / "model_epoch_1.pth", weights_only=True)
    gate = "bert.encoder.layer.5.attention.self.weight_layer_q.weight"
    assert epoch_0[gate].shape == (5, 128 * 384)
    assert not epoch_0[gate].any() and not epoch_1[gate].any()  # phase 0 (epochs 0-19): gates frozen at zero
    for t, task in enumerate(SMALL_TASKS.split(",")):  # a task's adapters move only on its own steps
        adapter = f"bert.encoder.layer.5.attention.self.query_list.{t}.weight"
        drawn = epochs[1]["task_counts"][task] > 0
        assert torch.equal(epoch_0[adapter], epoch_1[adapter]) != drawn, task
