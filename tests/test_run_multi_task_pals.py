"""run_multi_task_pals.py end to end: the seed command with the PALs config on real GLUE rows and MiniLM weights, and
--freeze training only the PALs and the heads.

The runs use the GLUE rows shipped in tests/fixtures with a few batches of 8 per epoch (the full-data run: README).
"""
import json
import re

import pytest
import torch

import checkpoints
import modeling_pals
import multitask
import run_multi_task_pals
from checkpoints import BERT_PARAMETER
from conftest import fixture_glue_dir, minilm_dir
from helpers import OUTPUT_FILES, SMALL_TASKS, read_jsonl, seed_command

pytestmark = pytest.mark.usefixtures("one_thread")  # a busy machine's thread pool waits for its slowest thread

PALS_STEPS = 4  # optimizer steps per epoch
PAL_WIDTH, PAL_HEADS = 204, 6  # the issue: MiniLM's PALs are still 204 wide with 6 heads
H_AUG = 102  # a --h_aug that halves the PAL width (still 6 heads, of 17)
# The task a head's or a PAL's parameter belongs to: classifier.{t}, ...multi_layers.{t}..., mult_aug_dense{,2}.{t}.
TASK_OF = re.compile(r"(?:classifier|multi_layers|mult_aug_dense2?)\.(\d+)\.")


@pytest.fixture(scope="module")
def minilm_pals_config(tmp_path_factory):
    """MiniLM's own config.json with the original PALs config's keys added (PALs on the MiniLM architecture)."""
    config = json.loads((minilm_dir() / "config.json").read_text())
    path = tmp_path_factory.mktemp("config") / "minilm_pals.json"
    path.write_text(json.dumps({**config, "hidden_size_aug": PAL_WIDTH, "mult": True, "pals": True}))
    return path


def run(argv):
    multitask.main(multitask.parse_args(run_multi_task_pals.__doc__, [str(a) for a in argv]),
                   run_multi_task_pals.METHOD)


def pals_command(out, config, cache, *extra):
    return [*seed_command(out, fixture_glue_dir(), config, minilm_dir(), cache), "--train_batch_size", 8,
            "--steps_per_epoch", PALS_STEPS, *extra]


@pytest.mark.slow
def test_seed_pals_command_trains_and_writes_the_run_files(tmp_path, minilm_pals_config):
    out = tmp_path / "pals"
    run(pals_command(out, minilm_pals_config, tmp_path / "cache"))
    for name in OUTPUT_FILES:
        assert (out / name).is_file(), name
    log = read_jsonl(out / "train_log.jsonl")
    epochs = [r for r in log if "task_counts" in r]
    assert all(sum(r["task_counts"].values()) == PALS_STEPS for r in epochs)
    assert epochs[0]["alpha"] == 1.0 and epochs[1]["alpha"] == pytest.approx(0.2)  # annealed as EmBERT
    assert all(r["loss"] > 0 for r in log if "loss" in r)
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "pals" and config["mult"] and config["pals"] and not config["our_attn"]
    assert config["hidden_size_aug"] == PAL_WIDTH and config["task_names"] == SMALL_TASKS.split(",")
    assert len(read_jsonl(out / "eval_results.jsonl")) == 2
    best = torch.load(out / "best_model.pth", weights_only=True)
    assert best["bert.encoder.layer.5.multi_layers.0.attn.query.weight"].shape == (PAL_WIDTH, PAL_WIDTH)
    # The file holds the original's aliases, equal; the model rebuilt from the run's config loads it whole.
    rebuilt = modeling_pals.BertForMultiTask(modeling_pals.BertConfig.from_dict(config), [2, 2, 2, 1, 2])
    assert rebuilt.bert.encoder.layer[0].multi_layers[0].attn.num_heads == PAL_HEADS
    assert checkpoints.load_mapped_state(rebuilt, best, out / "best_model.pth", require_all=True) == []
    for names in modeling_pals.shared_names(rebuilt.config):
        assert all(torch.equal(best[name], best[names[0]]) for name in names), names


def test_freeze_trains_only_the_pals_and_the_heads(tmp_path, minilm_pals_config):
    """Also --h_aug: the PALs are H_AUG wide, as the original's flag made them."""
    out = tmp_path / "frozen"
    command = pals_command(out, minilm_pals_config, tmp_path / "cache", "--freeze", "--num_train_epochs", 1,
                           "--learning_rate", 1e-3, "--h_aug", H_AUG)
    run([flag for flag in command if flag != "--do_eval"])  # without evaluation best_model.pth is the final model
    trained = torch.load(out / "best_model.pth", weights_only=True)
    minilm, _ = checkpoints.read_state_dict(minilm_dir() / "model.safetensors")
    pretrained = checkpoints.map_state_dict(minilm)
    # The model's fresh parameters as the run drew them: multitask.main seeds with --seed, then builds the model.
    torch.manual_seed(1)
    config = modeling_pals.BertConfig.from_json_file(minilm_pals_config)
    config = modeling_pals.configure(config, 128, H_AUG)
    assert json.loads((out / "config.json").read_text())["hidden_size_aug"] == H_AUG
    assert trained["bert.encoder.mult_aug_dense.0.weight"].shape == (H_AUG, config.hidden_size)
    fresh = modeling_pals.BertForMultiTask(config, [2, 2, 2, 1, 2]).state_dict()
    drawn = {task for r in read_jsonl(out / "train_log.jsonl") if "task_counts" in r
             for task, count in r["task_counts"].items() if count}
    task_ids = [t for t, task in enumerate(SMALL_TASKS.split(",")) if task in drawn]
    assert task_ids
    for name, value in trained.items():
        if BERT_PARAMETER.fullmatch(name):  # every pretrained weight: frozen
            assert torch.equal(value, pretrained[name]), name
        else:  # PALs and heads: a trained task's moved, an untrained task's did not
            task = int(TASK_OF.search(name)[1])
            assert torch.equal(value, fresh[name]) != (task in task_ids), name
