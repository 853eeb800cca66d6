"""modeling_gated.py: parameter counts, equality with EmBERT when the gated terms are off, the gated attention against
a plain per-task loop of SPEC 5.3, what the gates and the other tasks' adapters can and cannot change, the freezing
phases through both optimizers, initialisation, the fixed padded length, original Gated-BERT checkpoints and the
sampling schedule.

Tiny models use deliberately odd sizes (vocab 99, hidden 32, 4 heads, intermediate 37, adapter rank 5, 12 tokens), as
Google BERT's tests do, so that a transposed or mixed-up dimension cannot go unnoticed. CPU, fp32.
"""
import dataclasses
import math
import re

import pytest
import torch
import torch.nn.functional as F

import modeling
import optimization
from conftest import ROOT
from helpers import TINY_HEADS, assert_std, bert_checkpoint, tiny_dict
from checkpoints import load_pretrained
from modeling import count_parameters
from modeling_gated import BertConfig, BertForMultiTask, GatedSelfAttention, anneal_alpha, frozen_parameters

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only add waiting

# ---------------------------------------------------------------------------------------------------- shared helpers

# Heads of the eight GLUE tasks in task-id order (SPEC 3): STS-B (task 4) is the 1-output regression head.
GLUE_NUM_LABELS = [2, 2, 3, 2, 1, 2, 2, 2]
# SPEC 5.2 and 5.3: EmBERT and Gated-BERT (r = 204, length 128) with these heads on configs/embert_config.json.
EMBERT_BASE_PARAMETERS = 109_715_728
GATED_BASE_PARAMETERS = 121_024_008
# The original's defaults (SPEC 5.3): adapter rank and the padded length the gate reads.
DEFAULT_H_AUG, DEFAULT_MAX_SEQ_LENGTH = 204, 128
# The five per-task scalar tables of the gated layer (original names).
SCALARS = ("q_1", "k_1", "q_2", "k_2", "v")
# The per-task adapter lists of the gated layer (original names): low-rank query and key pairs, full value adapter.
ADAPTER_LISTS = ("query_list", "query_list2", "key_list", "key_list2", "value_list")

TINY = tiny_dict(num_hidden_layers=3, our_attn=True, hidden_size_aug=5, max_seq_length=12)
TINY_LABELS = {0: [0, 1, 1], 1: [2, 0, 1], 2: [0.2, 0.9, 0.5]}  # one label per row of `make_batch()`, per task
LENGTHS = [12, 7, 9]  # real tokens per row, padded to max_seq_length: one full row, two padded
PAD_ID = 0  # Google BERT's [PAD] id, what the features pad with (SPEC 3)
TASK = 1  # the batch's task in the tests below: other tasks on both sides of it

EQUAL_ATOL = 1e-6  # the same math computed the same way, up to rounding
FORMULA_ATOL = 1e-5  # the same math by a different route (per-task loop against the fused matmuls)
# BERT's N(0, 0.02) init leaves a tiny model's attention nearly uniform and its later layers almost deaf to the
# gated layer; five times that makes attention peaked and an effect plain, as in a trained model.
SENSITIVE_INIT_STD = 0.1
CLEAR_CHANGE = 1000 * EQUAL_ATOL  # an output change this large is an effect, not rounding
# Per-task scalars drawn from [0.5, 1.5]: away from zero, so every gated term visibly matters.
SCALAR_LOW, SCALAR_HIGH = 0.5, 1.5


def tiny_config(**overrides):
    return BertConfig(**{**TINY, **overrides})


def tiny_model(seed=0, **overrides):
    """A freshly initialised tiny Gated-BERT in eval mode (gates at zero, everything else N(0, std))."""
    torch.manual_seed(seed)
    return BertForMultiTask(tiny_config(**overrides), TINY_HEADS).eval()


def gated_layer(model):
    return model.bert.encoder.layer[-1].attention.self


def make_batch(lengths=LENGTHS, pad_to=TINY["max_seq_length"], seed=0):
    """Random sequences of the given lengths padded with PAD_ID: input_ids, token_type_ids, attention_mask, (B, T).
    The second half of each sequence is segment 1, as a sentence pair."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), pad_to), PAD_ID)
    types, mask = torch.zeros_like(ids), torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(1, TINY["vocab_size"], (n,), generator=g)
        types[row, n // 2:n] = 1
        mask[row, :n] = 1
    return ids, types, mask


def labels_for(task):
    return torch.tensor(TINY_LABELS[task])


def outputs(model, batch, task):
    """Last hidden states of the real tokens, pooled output and logits: everything a change could reach."""
    with torch.no_grad():
        hidden, pooled = model.bert(*batch, task)
        return hidden[batch[2].bool()], pooled, model(*batch, task).logits[0]


def assert_same_outputs(before, after, atol=EQUAL_ATOL):
    for old, new in zip(before, after):
        torch.testing.assert_close(new, old, rtol=0, atol=atol)


def assert_changed(before, after):
    hidden_before, hidden_after = before[0], after[0]
    assert (hidden_after - hidden_before).abs().max() > CLEAR_CHANGE


def randomize_gated_layer(model, seed):
    """Give the gated layer the scale of a trained one: unit-variance adapter and gate outputs (weights
    N(0, 1 / fan_in), biases N(0, 1)), scalars in [SCALAR_LOW, SCALAR_HIGH], non-zero gates."""
    g = torch.Generator().manual_seed(seed)
    attention = gated_layer(model)
    with torch.no_grad():
        for name, param in attention.named_parameters():
            if name.startswith(ADAPTER_LISTS + ("weight_layer_",)):
                fan_in = param.shape[-1] if name.endswith("weight") else 1
                param.copy_(torch.randn(param.shape, generator=g) / math.sqrt(fan_in))
            elif name.startswith("weight_task_emb_"):
                param.copy_(torch.empty(param.shape).uniform_(SCALAR_LOW, SCALAR_HIGH, generator=g))
    return model


def sensitive_model(seed=0):
    """A tiny model whose outputs plainly feel every term of the gated attention."""
    return randomize_gated_layer(tiny_model(seed, initializer_range=SENSITIVE_INIT_STD), seed + 1)


# ---------------------------------------------------------------------------------------------------- 1. size

def gated_minus_embert(config, num_tasks):
    """SPEC 5.3: per-task adapters, five scalars per task and two gates, less the last layer's task embeddings."""
    H, r, T, S = config.hidden_size, config.hidden_size_aug, config.max_seq_length, num_tasks
    low_rank = H * r + r + r * H + H  # down (H -> r) and up (r -> H) projections with biases
    adapters = S * (2 * low_rank + H * H + H)  # query and key low-rank adapters, full value adapter
    scalars = len(SCALARS) * S
    gates = 2 * (T * H * S + S)  # query and key gates: (T x H) -> S logits each
    last_layer_task_embeddings = 3 * S * H
    return adapters + scalars + gates - last_layer_task_embeddings


def test_parameter_counts_bert_base_with_eight_glue_heads():
    config = BertConfig.from_json_file(ROOT / "configs" / "embert_config.json")
    assert config.our_attn
    # The config file sets neither: the original's defaults apply.
    assert (config.hidden_size_aug, config.max_seq_length) == (DEFAULT_H_AUG, DEFAULT_MAX_SEQ_LENGTH)
    smaller = dataclasses.replace(config, hidden_size_aug=DEFAULT_H_AUG // 2)  # what --h_aug 102 does
    with torch.device("meta"):  # shapes only: no memory, no init cost
        gated = BertForMultiTask(config, GLUE_NUM_LABELS)
        embert = modeling.BertForMultiTask(modeling.BertConfig.from_json_file(ROOT / "configs" / "embert_config.json"),
                                           GLUE_NUM_LABELS)
        gated_smaller = BertForMultiTask(smaller, GLUE_NUM_LABELS)
    assert count_parameters(gated) == GATED_BASE_PARAMETERS
    assert count_parameters(embert) == EMBERT_BASE_PARAMETERS
    num_tasks = len(GLUE_NUM_LABELS)
    assert GATED_BASE_PARAMETERS - EMBERT_BASE_PARAMETERS == gated_minus_embert(config, num_tasks)
    assert count_parameters(gated_smaller) == EMBERT_BASE_PARAMETERS + gated_minus_embert(smaller, num_tasks)


# ---------------------------------------------------------------------------------------------------- 2. = EmBERT

def test_zero_scalars_and_gates_equal_embert():
    """With every adapter scalar and gate weight at zero, the gated layer is a plain BERT layer: the model is EmBERT
    whose last layer has zero task embeddings. The shared parts are the same modules under the same names."""
    gated = tiny_model(initializer_range=SENSITIVE_INIT_STD)
    attention = gated_layer(gated)
    with torch.no_grad():
        for scalar in SCALARS:
            getattr(attention, f"weight_task_emb_{scalar}").weight.zero_()
    assert not attention.weight_layer_q.weight.any() and not attention.weight_layer_k.weight.any()  # zero at init
    embert = modeling.BertForMultiTask(modeling.BertConfig(**{k: v for k, v in TINY.items()
                                                            if k not in ("hidden_size_aug", "max_seq_length")}),
                                       TINY_HEADS).eval()
    own = embert.state_dict()
    state = {k: v for k, v in gated.state_dict().items() if k in own}
    last = TINY["num_hidden_layers"] - 1
    for table in ("query", "key", "value"):
        name = f"bert.encoder.layer.{last}.attention.self.{table}_task_emb.weight"
        state[name] = torch.zeros_like(own[name])
    embert.load_state_dict(state)  # strict: the gated model holds every EmBERT parameter but the three tables
    gated_only = set(gated.state_dict()) - set(own)
    assert all(re.fullmatch(rf"bert\.encoder\.layer\.{last}\.attention\.self\.({'|'.join(ADAPTER_LISTS)}|"
                            r"weight_layer_[qk]|weight_task_emb_\w+)\..*", k) for k in gated_only), gated_only
    batch = make_batch(seed=2)
    for task in range(len(TINY_HEADS)):
        assert_same_outputs(outputs(embert, batch, task), outputs(gated, batch, task))


# ---------------------------------------------------------------------------------------------------- 3. the formula

def reference_project(attention, x, task):
    """Q, K, V of SPEC 5.3 for task `task`, one task at a time, as written there. x: (B, T, H)."""
    B, T, H = x.shape

    def linear(module, inputs):
        return inputs @ module.weight.T + module.bias

    def adapter(down, up, s):  # A_s(x) = (x W1_s + c1_s) W2_s + c2_s, (B, T, H)
        return linear(up[s], linear(down[s], x))

    def scalar(name):
        return getattr(attention, f"weight_task_emb_{name}").weight[task, 0]

    flat = x.reshape(B, T * H)
    gate_q = torch.softmax(linear(attention.weight_layer_q, flat), dim=-1)  # (B, S)
    gate_k = torch.softmax(linear(attention.weight_layer_k, flat), dim=-1)
    q = linear(attention.query, x) + scalar("q_1") * adapter(attention.query_list, attention.query_list2, task)
    k = linear(attention.key, x) + scalar("k_1") * adapter(attention.key_list, attention.key_list2, task)
    for s in range(len(attention.query_list)):
        if s != task:
            q = q + scalar("q_2") * gate_q[:, s, None, None] * adapter(attention.query_list, attention.query_list2, s)
            k = k + scalar("k_2") * gate_k[:, s, None, None] * adapter(attention.key_list, attention.key_list2, s)
    v = linear(attention.value, x) + scalar("v") * linear(attention.value_list[task], x)
    return q, k, v


@pytest.mark.parametrize("task", range(len(TINY_HEADS)))
def test_project_equals_per_task_loop(task):
    attention = gated_layer(sensitive_model())
    x = torch.randn(4, TINY["max_seq_length"], TINY["hidden_size"], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for ours, expected in zip(attention.project(x, task), reference_project(attention, x, task)):
            torch.testing.assert_close(ours, expected, rtol=0, atol=FORMULA_ATOL)


@pytest.mark.parametrize("which", [0, 1], ids=["query_gate", "key_gate"])
@pytest.mark.parametrize("column,matters", [(TASK, False), (TASK + 1, True)], ids=["own_task", "other_task"])
def test_only_other_tasks_gate_weights_matter(monkeypatch, which, column, matters):
    """The softmax runs over all tasks, but the own task's weight multiplies nothing (SPEC 5.3)."""
    model = sensitive_model()
    batch = make_batch(seed=4)
    before = outputs(model, batch, TASK)
    shift = 0.5 * F.one_hot(torch.tensor(column), len(TINY_HEADS))  # (S,): moves one column of one gate
    unpatched = GatedSelfAttention.gates

    def shifted_gates(self, hidden_states):
        gates = list(unpatched(self, hidden_states))
        gates[which] = gates[which] + shift
        return tuple(gates)

    monkeypatch.setattr(GatedSelfAttention, "gates", shifted_gates)
    after = outputs(model, batch, TASK)
    if matters:
        assert_changed(before, after)
    else:
        assert_same_outputs(before, after)


# ---------------------------------------------------------------------------------------------------- 4. other tasks

def perturb(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn(param.shape, generator=g))


@pytest.mark.parametrize("adapters,through_gate", [
    (("query_list", "query_list2"), True),
    (("key_list", "key_list2"), True),
    (("value_list",), False),
])
@pytest.mark.parametrize("other_scale", ["zero", "nonzero"])
def test_other_tasks_adapters_act_only_through_the_gate(adapters, through_gate, other_scale):
    """Task s's query/key adapters reach task t's output only through aq2[t] g_q[:, s] (ak2[t] g_k[:, s]); task s's
    value adapter never does."""
    model = sensitive_model()
    attention = gated_layer(model)
    if other_scale == "zero":
        with torch.no_grad():
            attention.weight_task_emb_q_2.weight[TASK] = 0
            attention.weight_task_emb_k_2.weight[TASK] = 0
    batch = make_batch(seed=5)
    before = outputs(model, batch, TASK)
    for s in range(len(TINY_HEADS)):
        if s != TASK:
            for name in adapters:
                perturb(getattr(attention, name)[s], seed=10 + s)
    after = outputs(model, batch, TASK)
    if through_gate and other_scale == "nonzero":
        assert_changed(before, after)
    else:
        assert_same_outputs(before, after)


# ---------------------------------------------------------------------------------------------------- 5. freezing

LEARNING_RATE = 1e-3  # large enough that every update moves an fp32 parameter of size ~0.02


def step(model, optimizer, tasks, frozen=()):
    """One optimizer step as the training loop takes it: backward on the tasks' batches, frozen gradients dropped
    (None: the optimizers skip the parameter entirely), global clipping, step."""
    loss = sum(model(*make_batch(seed=20 + task), task, labels=[labels_for(task)]).losses[0] for task in tasks)
    loss.backward()
    for p in frozen:
        p.grad = None
    optimization.clip_gradients(model, optimizer)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def expected_frozen(phase, task):
    """SPEC 6.2, by name: phase 0 freezes the other tasks' adapters and both gates, phase 1 the other tasks' adapters,
    phase 2 also every layer's shared query, key and value projections."""
    last = TINY["num_hidden_layers"] - 1
    gated = f"bert.encoder.layer.{last}.attention.self"
    names = {f"{gated}.{adapters}.{s}.{p}" for adapters in ADAPTER_LISTS for s in range(len(TINY_HEADS))
             if s != task for p in ("weight", "bias")}
    if phase == 0:
        names |= {f"{gated}.weight_layer_{g}.{p}" for g in "qk" for p in ("weight", "bias")}
    if phase >= 2:
        names |= {f"bert.encoder.layer.{n}.attention.self.{proj}.{p}" for n in range(TINY["num_hidden_layers"])
                  for proj in ("query", "key", "value") for p in ("weight", "bias")}
    return names


@pytest.mark.parametrize("optimizer_name", optimization.OPTIMIZERS)
@pytest.mark.parametrize("epoch,phase", [(0, 0), (19, 0), (20, 1), (39, 1), (40, 2)])
def test_frozen_parameters_stay_bit_identical(optimizer_name, epoch, phase):
    model = tiny_model().train()
    optimizer = optimization.build_optimizer(model, optimizer_name, LEARNING_RATE)
    # A first step on every task with nothing frozen gives every parameter momentum (and Adam state): a frozen
    # parameter that the optimizer did not skip would move even with a zero gradient.
    step(model, optimizer, range(len(TINY_HEADS)))
    assert all(optimizer.state[p] for p in model.parameters())
    names = {id(p): n for n, p in model.named_parameters()}
    frozen = frozen_parameters(model, TASK, epoch)
    assert {names[id(p)] for p in frozen} == expected_frozen(phase, TASK)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    step(model, optimizer, [TASK], frozen)
    # Besides the frozen ones, the other tasks' heads: not in the graph of a task-TASK batch, they get no gradient.
    untouched = expected_frozen(phase, TASK) | {f"classifier.{t}.{p}" for t in range(len(TINY_HEADS)) if t != TASK
                                                 for p in ("weight", "bias")}
    unchanged = {n for n, p in model.named_parameters() if torch.equal(p, before[n])}
    assert unchanged == untouched, (sorted(unchanged - untouched), sorted(untouched - unchanged))


@pytest.mark.parametrize("optimizer_name", optimization.OPTIMIZERS)
def test_zero_gates_learn_from_phase_1(optimizer_name):
    """The gates start at exactly zero; their gradient there is not zero, so from phase 1 a single step moves them."""
    model = tiny_model().train()
    attention = gated_layer(model)
    optimizer = optimization.build_optimizer(model, optimizer_name, LEARNING_RATE)
    step(model, optimizer, [TASK], frozen_parameters(model, TASK, epoch=20))
    for gate in (attention.weight_layer_q, attention.weight_layer_k):
        assert gate.weight.any() and gate.bias.any()


# ---------------------------------------------------------------------------------------------------- 6. init

def test_initialisation():
    model = tiny_model()
    attention = gated_layer(model)
    for gate in (attention.weight_layer_q, attention.weight_layer_k):
        assert not gate.weight.any() and not gate.bias.any()
    x = torch.randn(2, TINY["max_seq_length"], TINY["hidden_size"])
    for gate in attention.gates(x):  # uniform over the S tasks
        assert torch.equal(gate, torch.full((2, len(TINY_HEADS)), 1 / len(TINY_HEADS)))
    for name in ADAPTER_LISTS:
        for s, linear in enumerate(getattr(attention, name)):
            assert_std(linear.weight.detach(), f"{name}.{s}.weight")
            assert not linear.bias.any(), f"{name}.{s}.bias"
    scalars = torch.cat([getattr(attention, f"weight_task_emb_{s}").weight.detach().flatten() for s in SCALARS])
    assert_std(scalars, "weight_task_emb_* together")
    assert not hasattr(attention, "query_task_emb")  # the gated layer has no task embeddings


# ---------------------------------------------------------------------------------------------------- 7. padding

@pytest.mark.parametrize("length", [TINY["max_seq_length"] - 1, TINY["max_seq_length"] + 1])
def test_batch_not_padded_to_max_seq_length_is_refused(length):
    model = tiny_model()
    message = (f"Gated-BERT's gate reads exactly max_seq_length={TINY['max_seq_length']} tokens, got a batch of "
               f"length {length}: pad every batch to max_seq_length")
    with pytest.raises(ValueError, match=re.escape(message)):
        model(*make_batch([length, 5, 3], pad_to=length), TASK)


def test_checkpoint_for_another_max_seq_length_is_refused(tmp_path):
    longer = TINY["max_seq_length"] + 4
    path = tmp_path / "gated.pth"
    torch.save(tiny_model(max_seq_length=longer).state_dict(), path)
    model = tiny_model()
    last, S, H = TINY["num_hidden_layers"] - 1, len(TINY_HEADS), TINY["hidden_size"]
    message = (f"checkpoint {path}: bert.encoder.layer.{last}.attention.self.weight_layer_q.weight has shape "
               f"{(S, longer * H)} but the model's is {(S, TINY['max_seq_length'] * H)} (the checkpoint's gate reads "
               f"sequences of {longer} tokens, this run pads to --max_seq_length {TINY['max_seq_length']})")
    with pytest.raises(ValueError, match=re.escape(message) + "$"):
        load_pretrained(model, path)


# ---------------------------------------------------------------------------------------------------- 8. checkpoints

def original_gated_checkpoint(config, num_labels_per_task, seed=0):
    """Random weights of the original Gated-BERT code's BertForMultiTask, under its own names (SPEC 5.5): the BERT
    encoder as the original EmBERT code names it (`bert.` prefix, LayerNorm gamma/beta), task embeddings in layers
    0..L-2, the gated parts in layer L-1, heads."""
    H, r, S = config.hidden_size, config.hidden_size_aug, len(num_labels_per_task)
    last = config.num_hidden_layers - 1
    shapes = {}
    for n in range(last):
        shapes.update({f"bert.encoder.layer.{n}.attention.self.{name}_task_emb.weight": (S, H)
                       for name in ("query", "key", "value")})
    gated = f"bert.encoder.layer.{last}.attention.self"
    for s in range(S):
        shapes.update({
            f"{gated}.query_list.{s}.weight": (r, H),
            f"{gated}.query_list.{s}.bias": (r,),
            f"{gated}.query_list2.{s}.weight": (H, r),
            f"{gated}.query_list2.{s}.bias": (H,),
            f"{gated}.key_list.{s}.weight": (r, H),
            f"{gated}.key_list.{s}.bias": (r,),
            f"{gated}.key_list2.{s}.weight": (H, r),
            f"{gated}.key_list2.{s}.bias": (H,),
            f"{gated}.value_list.{s}.weight": (H, H),
            f"{gated}.value_list.{s}.bias": (H,),
        })
    shapes.update({
        f"{gated}.weight_layer_q.weight": (S, config.max_seq_length * H),
        f"{gated}.weight_layer_q.bias": (S,),
        f"{gated}.weight_layer_k.weight": (S, config.max_seq_length * H),
        f"{gated}.weight_layer_k.bias": (S,),
        f"{gated}.weight_task_emb_q_1.weight": (S, 1),
        f"{gated}.weight_task_emb_k_1.weight": (S, 1),
        f"{gated}.weight_task_emb_q_2.weight": (S, 1),
        f"{gated}.weight_task_emb_k_2.weight": (S, 1),
        f"{gated}.weight_task_emb_v.weight": (S, 1),
    })
    for task, labels in enumerate(num_labels_per_task):
        shapes[f"classifier.{task}.weight"] = (labels, H)
        shapes[f"classifier.{task}.bias"] = (labels,)
    g = torch.Generator().manual_seed(seed)
    return {**bert_checkpoint(config, "bert.", "old", seed),
            **{name: torch.randn(shape, generator=g) for name, shape in shapes.items()}}


def test_original_gated_checkpoint_loads(tmp_path):
    config = tiny_config()
    checkpoint = original_gated_checkpoint(config, TINY_HEADS)
    path = tmp_path / "gated_bert.bin"
    torch.save(checkpoint, path)
    model = tiny_model()
    assert load_pretrained(model, path, require_all=True) == []
    params = dict(model.named_parameters())
    # The documented correspondence (SPEC 5.5): LayerNorm gamma/beta are weight/bias; every other name is ours.
    ours = {re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", k)): v
            for k, v in checkpoint.items()}
    assert set(ours) == set(params)  # one checkpoint tensor per parameter: none was left fresh
    for name, value in ours.items():
        assert torch.equal(params[name], value), name


# ---------------------------------------------------------------------------------------------------- 9. sampling

ALPHA_START, ALPHA_END = 1.0, 0.2  # the PALs paper's annealing range (SPEC 6.2)
PHASE_STARTS, PHASE_ENDS = (0, 20, 40), (19, 39)


@pytest.mark.parametrize("num_epochs", [25, 60])
def test_anneal_alpha_restarts_every_phase(num_epochs):
    for epoch in PHASE_STARTS:
        assert anneal_alpha(epoch, num_epochs) == ALPHA_START
    for epoch in PHASE_ENDS:
        assert anneal_alpha(epoch, num_epochs) == pytest.approx(ALPHA_END, abs=1e-12)
    for first, last in zip(PHASE_STARTS, PHASE_ENDS):  # linear in between: equal steps of 0.8 / 19
        alphas = [anneal_alpha(e, num_epochs) for e in range(first, last + 1)]
        steps = [b - a for a, b in zip(alphas, alphas[1:])]
        assert steps == pytest.approx([(ALPHA_END - ALPHA_START) / (last - first)] * len(steps), abs=1e-12)


def test_hidden_size_mismatch_is_not_blamed_on_max_seq_length(tmp_path):
    path = tmp_path / "gated.pth"
    torch.save(tiny_model(hidden_size=36).state_dict(), path)
    with pytest.raises(ValueError, match=re.escape("(the config's hidden_size is 32, the checkpoint's is 36)") + "$"):
        load_pretrained(tiny_model(), path)
