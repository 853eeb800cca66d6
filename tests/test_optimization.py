"""optimization.py: parameter groups, the warmup/decay schedule, BertAdam against a hand computation, and AdamW +
global clipping against plain torch."""
import copy
import io
import math

import pytest
import torch
from torch import nn

from optimization import (ADAM_EPS, MAX_GRAD_NORM, BertAdam, build_optimizer, check_partition, clip_gradients,
                          linear_warmup_decay, param_groups)


class Tiny(nn.Module):
    """Every kind of parameter the BERT models have: word and task embedding tables, Linear, LayerNorm."""

    def __init__(self):
        super().__init__()
        self.word_embeddings = nn.Embedding(7, 4)
        self.task_emb = nn.Embedding(3, 4)
        self.dense = nn.Linear(4, 5)
        self.LayerNorm = nn.LayerNorm(5)
        self.head = nn.Linear(5, 2)

    def forward(self, ids, task):
        h = self.word_embeddings(ids) + self.task_emb(task)[:, None]  # (B, T, 4)
        return self.head(self.LayerNorm(self.dense(h))).mean()


def tiny_loss(model, seed, scale):
    """A scalar loss on a fixed random batch; `scale` makes the gradients large enough to be clipped."""
    g = torch.Generator().manual_seed(seed)
    ids, task = torch.randint(0, 7, (3, 6), generator=g), torch.randint(0, 3, (3,), generator=g)
    return scale * model(ids, task) ** 2


# ---------------------------------------------------------------- parameter groups

def test_param_groups_rule():
    torch.manual_seed(0)
    decay, no_decay = param_groups(Tiny(), 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert decay["names"] == ["word_embeddings.weight", "task_emb.weight", "dense.weight", "head.weight"]
    assert no_decay["names"] == ["dense.bias", "LayerNorm.weight", "LayerNorm.bias", "head.bias"]


def test_param_groups_tied_weight_counted_once():
    model = Tiny()
    model.tied = nn.Linear(4, 7, bias=False)
    model.tied.weight = model.word_embeddings.weight  # shared (7, 4) tensor, as a tied output layer
    decay, _ = param_groups(model, 0.01)
    assert decay["names"].count("word_embeddings.weight") == 1 and "tied.weight" not in decay["names"]


def test_check_partition_names_offenders():
    model = Tiny()
    decay, no_decay = param_groups(model, 0.01)
    missing = {"params": decay["params"][1:]}  # drops word_embeddings.weight
    with pytest.raises(ValueError, match=r"in none: \['word_embeddings.weight'\]"):
        check_partition(model, [missing, no_decay])
    twice = {"params": no_decay["params"] + [model.dense.weight]}
    with pytest.raises(ValueError, match=r"in several: \['dense.weight'\]"):
        check_partition(model, [decay, twice])
    with pytest.raises(ValueError, match="1 tensor"):
        check_partition(model, [decay, no_decay, {"params": [nn.Parameter(torch.zeros(1))]}])


# ---------------------------------------------------------------- schedule

def lrs_over(num_steps, warmup_proportion, base_lr=0.1):
    """Learning rate seen by optimizer step k (after k scheduler steps), for k = 0 .. num_steps + 1."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base_lr)
    sched = linear_warmup_decay(opt, num_steps, warmup_proportion)
    lrs = []
    for _ in range(num_steps + 2):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_schedule_warmup_then_linear_decay():
    lrs = lrs_over(100, 0.1)  # 10 warmup steps, then 90 decay steps
    expected = {0: 0.0, 5: 0.05, 9: 0.09, 10: 0.1, 11: 0.1 * 89 / 90, 55: 0.05, 99: 0.1 / 90, 100: 0.0, 101: 0.0}
    for step, lr in expected.items():
        assert lrs[step] == pytest.approx(lr, abs=1e-12), step
    assert max(lrs) == pytest.approx(0.1)
    # Continuous at the end of warmup: neighbouring steps differ by one step's slope, not the original's 10% drop.
    assert abs(lrs[11] - lrs[10]) < 0.1 / 80


def test_schedule_fractional_warmup_and_no_warmup():
    lrs = lrs_over(25, 0.1)  # warmup over 2.5 steps, as the original's fraction
    assert lrs[1] == pytest.approx(0.1 / 2.5) and lrs[3] == pytest.approx(0.1 * 22 / 22.5)
    lrs = lrs_over(100, 0.0)
    assert lrs[0] == 0.1 and lrs[50] == pytest.approx(0.05) and lrs[100] == 0.0


@pytest.mark.parametrize("steps, warmup", [(0, 0.1), (10.5, 0.1), (100, 1.0), (100, -0.1)])
def test_schedule_rejects_bad_arguments(steps, warmup):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="optimization.py"):
        linear_warmup_decay(opt, steps, warmup)


# ---------------------------------------------------------------- BertAdam

B1, B2, WD, LR = 0.9, 0.999, 0.01, 0.1


def reference_bertadam(params, moments, grads, weight_decays, clip):
    """The original update written out, one tensor at a time, in float64. clip: "tensor" (the original) or "global"."""
    if clip == "global":
        total = math.sqrt(sum(float(g.norm()) ** 2 for g in grads))
        grads = [g * min(1.0, MAX_GRAD_NORM / (total + 1e-6)) for g in grads]
    out = []
    for p, g, (m, v), wd in zip(params, grads, moments, weight_decays):
        if clip == "tensor":
            g = g * min(1.0, MAX_GRAD_NORM / (float(g.norm()) + 1e-6))
        m = B1 * m + (1 - B1) * g
        v = B2 * v + (1 - B2) * g * g
        update = m / (v.sqrt() + ADAM_EPS) + wd * p
        out.append((p - LR * update, (m, v)))
    return [p for p, _ in out], [mv for _, mv in out]


def two_tensor_setup():
    """a (decayed): step-1 gradient of norm 5 (clipped per tensor), step-2 of norm 0.5; b (not decayed): norms 0.3
    then 0.2; frozen: never gets a gradient. Global clipping would rescale b at step 1 but not at step 2."""
    torch.manual_seed(0)
    a, b, frozen = (nn.Parameter(torch.randn(shape)) for shape in [(3, 4), (5,), (2,)])
    opt = BertAdam([{"params": [a, frozen], "weight_decay": WD}, {"params": [b], "weight_decay": 0.0}], lr=LR)
    unit = lambda shape: (lambda t: t / t.norm())(torch.randn(shape))  # noqa: E731
    grads = [[5.0 * unit((3, 4)), 0.3 * unit(5)], [0.5 * unit((3, 4)), 0.2 * unit(5)]]
    return (a, b, frozen), opt, grads


def test_bertadam_matches_hand_computation_and_differs_from_global_clipping():
    (a, b, frozen), opt, grads = two_tensor_setup()
    frozen_before = frozen.detach().clone()
    start = [a.detach().double(), b.detach().double()]
    ref = {"tensor": (start, [(torch.zeros_like(t), torch.zeros_like(t)) for t in start])}
    ref["global"] = ref["tensor"]
    for step_grads in grads:
        a.grad, b.grad = (g.clone() for g in step_grads)
        opt.step()
        for clip in ref:
            ref[clip] = reference_bertadam(*ref[clip], [g.double() for g in step_grads], [WD, 0.0], clip)
        for p, expected in zip([a, b], ref["tensor"][0]):
            torch.testing.assert_close(p.detach().double(), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(opt.state[a]["exp_avg"].double(), ref["tensor"][1][0][0], rtol=1e-6, atol=1e-7)
    assert (b.detach().double() - ref["global"][0][1]).abs().max() > 1e-3  # global clipping gives another result
    assert torch.equal(frozen, frozen_before) and frozen not in opt.state


def test_bertadam_state_dict_round_trip():
    (a, b, frozen), opt, grads = two_tensor_setup()
    sched = linear_warmup_decay(opt, 10, 0.2)
    twin_params = [nn.Parameter(p.detach().clone()) for p in (a, b, frozen)]
    for step_grads in grads:
        a.grad, b.grad = (g.clone() for g in step_grads)
        opt.step()
        sched.step()
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in (a, b)], "opt": opt.state_dict(), "sched": sched.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)

    with torch.no_grad():
        for twin, value in zip(twin_params, saved["params"]):
            twin.copy_(value)
    twin_opt = BertAdam([{"params": twin_params[::2], "weight_decay": WD},
                         {"params": twin_params[1:2], "weight_decay": 0.0}], lr=LR)
    twin_sched = linear_warmup_decay(twin_opt, 10, 0.2)
    twin_opt.load_state_dict(saved["opt"])
    twin_sched.load_state_dict(saved["sched"])
    assert twin_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    for step_grads in reversed(grads):
        for pair in ((a, b), twin_params[:2]):
            pair[0].grad, pair[1].grad = (g.clone() for g in step_grads)
        for o, s in ((opt, sched), (twin_opt, twin_sched)):
            o.step()
            s.step()
        assert all(torch.equal(p, q) for p, q in zip((a, b, frozen), twin_params))


def test_bertadam_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="b2 must be in"):
        BertAdam([nn.Parameter(torch.zeros(1))], lr=0.1, b2=1.0)


# ---------------------------------------------------------------- build_optimizer, AdamW

def test_adamw_with_clip_gradients_equals_plain_torch():
    torch.manual_seed(0)
    model = Tiny()
    reference = copy.deepcopy(model)
    opt = build_optimizer(model, "adamw", lr=1e-2, weight_decay=0.01)
    decay, no_decay = param_groups(reference, 0.01)
    ref_opt = torch.optim.AdamW([{"params": decay["params"]}, {"params": no_decay["params"], "weight_decay": 0.0}],
                                lr=1e-2, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, foreach=False)
    assert opt.param_groups[1]["names"] == no_decay["names"]
    for step in range(4):
        for m, o in ((model, opt), (reference, ref_opt)):
            o.zero_grad()
            tiny_loss(m, step, scale=100.0).backward()
        norm = clip_gradients(model, opt)
        ref_norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
        assert isinstance(norm, torch.Tensor) and norm > MAX_GRAD_NORM  # clipping active
        torch.testing.assert_close(norm, ref_norm)
        opt.step()
        ref_opt.step()
        for (name, p), q in zip(model.named_parameters(), reference.parameters()):
            torch.testing.assert_close(p, q, msg=name)


def test_build_optimizer_choices():
    model = Tiny()
    assert build_optimizer(model, "adamw", 1e-3, device_type="cuda").defaults["fused"] is True
    assert build_optimizer(model, "adamw", 1e-3).defaults["fused"] is True  # torch has a fused CPU kernel too
    assert build_optimizer(model, "adamw", 1e-3, device_type="mps").defaults["foreach"] is True
    bert_adam = build_optimizer(model, "bertadam", 1e-3)
    assert isinstance(bert_adam, BertAdam) and [g["weight_decay"] for g in bert_adam.param_groups] == [0.01, 0.0]
    tiny_loss(model, 0, scale=100.0).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    assert clip_gradients(model, bert_adam) is None  # BertAdam clips per tensor inside step()
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        build_optimizer(model, "sgd", 1e-3)
