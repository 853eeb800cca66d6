"""The shared training loop's parts: task sampling (SPEC 6.2), log and checkpoint files (SPEC 6.5)."""
import json

import pytest
import torch

import modeling_gated
from run_files import truncate_jsonl, write_atomic
from sampler import TaskSampler, embert_alpha

# Training-set sizes of CoLA, MRPC, RTE, STS-B, SST-2 (SPEC 3).
SIZES = [8551, 3668, 2490, 5749, 67349]


def sampler(mode, sizes=SIZES, steps=100, epochs=25, seed=1, alpha=embert_alpha):
    return TaskSampler(sizes, mode, steps, epochs, seed, alpha)


def normalised_powers(sizes, alpha):
    weights = torch.tensor(sizes, dtype=torch.float64) ** alpha
    return weights / weights.sum()


@pytest.mark.parametrize("epoch", [0, 1, 12, 24])
def test_anneal_probabilities_follow_the_formula(epoch):
    alpha = 1 - 0.8 * epoch / (25 - 1)  # 1.0 at the first epoch, 0.2 at the last
    torch.testing.assert_close(sampler("anneal").probabilities(epoch), normalised_powers(SIZES, alpha))


def test_anneal_endpoints_and_single_epoch():
    assert sampler("anneal").alpha(0) == 1.0
    assert sampler("anneal").alpha(24) == pytest.approx(0.2)
    assert sampler("anneal", epochs=1).alpha(0) == 1.0  # one epoch: no annealing, no division by zero


@pytest.mark.parametrize("mode, alpha", [("prop", 1.0), ("sqrt", 0.5)])
def test_fixed_exponent_probabilities(mode, alpha):
    for epoch in (0, 7, 24):
        torch.testing.assert_close(sampler(mode).probabilities(epoch), normalised_powers(SIZES, alpha))


def test_gated_anneal_restarts_every_20_epochs():
    gated = sampler("anneal", epochs=60, alpha=modeling_gated.anneal_alpha)
    assert [gated.alpha(e) for e in (0, 20, 40)] == [1.0, 1.0, 1.0]
    assert gated.alpha(19) == pytest.approx(0.2) and gated.alpha(39) == pytest.approx(0.2)
    torch.testing.assert_close(gated.probabilities(25), normalised_powers(SIZES, 1 - 0.8 * 5 / 19))


def test_drawn_tasks_follow_the_probabilities():
    steps = 40_000
    drawn = sampler("anneal", steps=steps).tasks_for_epoch(3)
    frequencies = torch.bincount(drawn, minlength=len(SIZES)).double() / steps
    p = sampler("anneal").probabilities(3)
    assert torch.all((frequencies - p).abs() <= 4 * (p * (1 - p) / steps).sqrt())  # within 4 standard errors


def test_round_robin_visits_every_task_in_turn():
    rr = sampler("rr", steps=12)
    assert rr.probabilities(0) is None
    assert rr.tasks_for_epoch(0).tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    assert rr.tasks_for_epoch(1).tolist()[:3] == [2, 3, 4]  # the turn continues across epochs
    counts = torch.bincount(torch.cat([rr.tasks_for_epoch(e) for e in range(5)]), minlength=5)
    assert counts.tolist() == [12] * 5  # the original's rr trained only task 0


def test_schedule_depends_only_on_seed_and_epoch():
    a, b = sampler("anneal"), sampler("anneal")
    b.next_indices(0, 50)  # drawing data does not move the task schedule
    assert torch.equal(a.tasks_for_epoch(4), b.tasks_for_epoch(4))
    assert not torch.equal(a.tasks_for_epoch(4), a.tasks_for_epoch(5))
    assert not torch.equal(a.tasks_for_epoch(4), sampler("anneal", seed=2).tasks_for_epoch(4))


def test_every_pass_covers_each_example_once_then_reshuffles():
    s = sampler("prop", sizes=[10, 7])
    stream = torch.cat([s.next_indices(0, 3) for _ in range(10)])  # 30 indices: 3 passes over 10 examples
    passes = stream.view(3, 10)
    for p in passes:
        assert sorted(p.tolist()) == list(range(10))
    assert not torch.equal(passes[0], passes[1])  # the original replayed its first shuffle forever
    assert s.consumed == [30, 0]


def test_sampler_state_resumes_the_same_stream():
    s = sampler("prop", sizes=[10, 7])
    s.next_indices(1, 12)
    resumed = sampler("prop", sizes=[10, 7])
    resumed.load_state_dict(json.loads(json.dumps(s.state_dict())))  # survives a JSON/torch round trip
    assert torch.equal(s.next_indices(1, 9), resumed.next_indices(1, 9))


def test_truncate_jsonl_drops_records_after_the_checkpoint(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text("".join(json.dumps({"global_step": s, "loss": s / 10}) + "\n" for s in (10, 20, 30)))
    truncate_jsonl(path, 20)
    assert [json.loads(line)["global_step"] for line in path.read_text().splitlines()] == [10, 20]


def test_truncate_jsonl_drops_the_epoch_line_the_resumed_run_writes_again_and_a_torn_line(tmp_path):
    """Killed after the epoch-end checkpoint at step 20 and after writing the next epoch's task_counts (and half a
    loss line): the resumed run starts that epoch again, so neither may stay."""
    path = tmp_path / "log.jsonl"
    records = [{"global_step": 0, "task_counts": {"a": 20}}, {"global_step": 20, "loss": 1.0},
               {"global_step": 20, "task_counts": {"a": 20}}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"global_step": 25, "lo')
    truncate_jsonl(path, 20)
    assert [json.loads(line) for line in path.read_text().splitlines()] == records[:2]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "checkpoint.pth"
    torch.save({"step": 1}, path)

    def crash(tmp):
        tmp.write_bytes(b"half a checkpoint")
        raise OSError("No space left on device")

    with pytest.raises(OSError):
        write_atomic(path, crash)
    assert torch.load(path) == {"step": 1}
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_uniform_draws_every_group_alike():
    """--sample uniform (bert-multitask-learning's problem_balanced): p = 1/groups whatever their sizes."""
    draws = sampler("uniform", steps=8000)
    assert torch.allclose(draws.probabilities(3), torch.full((len(SIZES),), 1 / len(SIZES), dtype=torch.float64))
    counts = torch.bincount(draws.tasks_for_epoch(0), minlength=len(SIZES)).double() / 8000
    assert (counts - 1 / len(SIZES)).abs().max() < 0.02
