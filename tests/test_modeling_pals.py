"""modeling_pals.py: parameter counts, the PAL layer against a plain computation of its formula, equality with plain
multi-task BERT when the PALs are silent, the shared projections (one tensor per task, under every alias), packed
against padded tokens, original BERT-and-PALs checkpoints (and refusing disagreeing aliases), BERT checkpoints, the
config's checks and initialisation.

Tiny models use deliberately odd sizes (vocab 99, hidden 32, 4 heads, intermediate 37, PAL width 18 = 6 heads of 3),
as Google BERT's tests do, so that a transposed or mixed-up dimension cannot go unnoticed. CPU, fp32.
"""
import copy
import dataclasses
import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import modeling
import optimization
from conftest import ROOT
from helpers import (TINY_HEADS, assert_std, bert_checkpoint, hugging_face_extras, make_batch, tiny_dict,
                     write_state)
from checkpoints import load_pretrained, map_state_dict
from modeling import TokenLayout, count_parameters
from modeling_pals import (PAL_ATTENTION_HEADS, PALS_KEY, BertConfig, BertForMultiTask, check_aliases, configure,
                           hidden_size_aug_of, shared_names)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only add waiting

# Heads of the eight GLUE tasks in the --tasks all order (cola, mrpc, mnli, rte, sts, sst, qqp, qnli).
GLUE_NUM_LABELS = [2, 2, 3, 2, 1, 2, 2, 2]
# The counts at BERT-base sizes with these heads: PALs (r = 204), and plain multi-task BERT (SPEC 5.2).
PALS_BASE_PARAMETERS = 124_053_232
SHARED_BASE_PARAMETERS = 109_494_544
DEFAULT_H_AUG = 204  # the original's pals_config.json
MINILM_SIZES = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)

TINY = tiny_dict(hidden_size_aug=18)
LENGTHS = [9, 4, 13]  # real tokens per row: padded to the longest or beyond
TASK = 1  # the batch's task: other tasks on both sides of it
LABELS = torch.tensor([0, 2, 1])  # task TASK's labels for the rows of LENGTHS

EQUAL_ATOL = 1e-5  # the same math computed two ways in fp32 (different kernels or summation orders)
CLEAR_CHANGE = 1000 * EQUAL_ATOL  # an output change this large is an effect, not rounding
ORIGINAL_MASK_VALUE = -10000.0  # the original's additive mask on padding keys
LEARNING_RATE = 1e-3  # large enough that one update visibly moves every parameter that gets a gradient


def tiny_config(**overrides):
    return BertConfig(**{**TINY, **overrides})


def tiny_model(seed=0, **overrides):
    """A freshly initialised tiny PALs model in eval mode (every new parameter N(0, 0.02), biases zero)."""
    torch.manual_seed(seed)
    return BertForMultiTask(tiny_config(**overrides), TINY_HEADS).eval()


def randomize_pals(model, seed):
    """Give every PAL the scale of a trained one: unit-variance outputs of each linear map (weights N(0, 1 / fan_in),
    biases N(0, 1)), so that its attention is peaked and its output plainly moves the layer's."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".multi_layers." in name:  # every PAL parameter, the shared projections included (named via layer 0)
                fan_in = param.shape[-1] if name.endswith("weight") else 1
                param.copy_(torch.randn(param.shape, generator=g) / math.sqrt(fan_in))
    return model


def sensitive_model(seed=0):
    return randomize_pals(tiny_model(seed), seed + 1)


def assert_close(actual, expected, atol=EQUAL_ATOL):
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol)


# ---------------------------------------------------------------------------------------------------- 1. size

def pals_minus_shared(config, num_tasks):
    """Per task: V_E (H -> r) and V_D (r -> H) once, and a 3-projection r x r attention with biases in every layer."""
    H, r, L = config.hidden_size, config.hidden_size_aug, config.num_hidden_layers
    shared_projections = (H * r + r) + (r * H + H)
    attention = 3 * (r * r + r)
    return num_tasks * (shared_projections + L * attention)


def test_config_file_has_the_original_keys():
    values = json.loads((ROOT / "configs" / "pals_config.json").read_text())
    assert values["mult"] is True and values["pals"] is True and values["hidden_size_aug"] == DEFAULT_H_AUG
    assert not values.get("our_attn", False)
    config = BertConfig.from_json_file(ROOT / "configs" / "pals_config.json")
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (768, 12, 12)
    assert config.to_dict()["mult"] and config.to_dict()["pals"]  # written back into a run's config.json


def test_parameter_counts_bert_base_with_eight_glue_heads():
    config = BertConfig.from_json_file(ROOT / "configs" / "pals_config.json")
    plain = modeling.BertConfig.from_dict({k: v for k, v in config.to_dict().items()
                                           if k not in ("hidden_size_aug", "mult", "pals")})
    with torch.device("meta"):  # shapes only: no memory, no init cost
        pals = BertForMultiTask(config, GLUE_NUM_LABELS)
        shared = modeling.BertForMultiTask(plain, GLUE_NUM_LABELS)
    assert count_parameters(pals) == PALS_BASE_PARAMETERS
    assert count_parameters(shared) == SHARED_BASE_PARAMETERS
    assert PALS_BASE_PARAMETERS - SHARED_BASE_PARAMETERS == pals_minus_shared(config, len(GLUE_NUM_LABELS))
    assert round(PALS_BASE_PARAMETERS / SHARED_BASE_PARAMETERS, 2) == 1.13  # the paper's "1.13x"


def test_minilm_sizes_keep_the_pal_204_wide_with_6_heads():
    config = BertConfig(vocab_size=30522, **MINILM_SIZES)
    with torch.device("meta"):
        model = BertForMultiTask(config, GLUE_NUM_LABELS)
        plain = modeling.BertForMultiTask(modeling.BertConfig(vocab_size=30522, **MINILM_SIZES), GLUE_NUM_LABELS)
    attention = model.bert.encoder.layer[0].multi_layers[0].attn
    assert attention.num_heads == PAL_ATTENTION_HEADS and attention.query.weight.shape == (DEFAULT_H_AUG,
                                                                                           DEFAULT_H_AUG)
    assert count_parameters(model) - count_parameters(plain) == pals_minus_shared(config, len(GLUE_NUM_LABELS))


# ---------------------------------------------------------------------------------------------------- 2. the formula

def linear(module, x):
    return x @ module.weight.T + module.bias


def erf_gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def reference_pal(pal, h, mask):
    """PAL(h) = GELU(V_D · A(V_E · h)) written out as the original computes it. h (B, T, H), mask (B, T) with 1 at
    real tokens; returns (B, T, H)."""
    x = linear(pal.aug_dense, h)  # (B, T, r)
    B, T, r = x.shape
    size = r // PAL_ATTENTION_HEADS

    def heads(y):  # (B, T, r) -> (B, 6, T, r / 6)
        return y.view(B, T, PAL_ATTENTION_HEADS, size).permute(0, 2, 1, 3)

    q, k, v = heads(linear(pal.attn.query, x)), heads(linear(pal.attn.key, x)), heads(linear(pal.attn.value, x))
    scores = q @ k.transpose(-1, -2) / math.sqrt(size) + (1.0 - mask[:, None, None, :].float()) * ORIGINAL_MASK_VALUE
    context = (scores.softmax(dim=-1) @ v).permute(0, 2, 1, 3).reshape(B, T, r)  # heads concatenated, no output map
    return erf_gelu(linear(pal.aug_dense2, context))


def reference_layer(layer, h, mask, task):
    """LayerNorm(W_out · GELU(W_in · a) + b_out + a + PAL_t(h)), a = BERT's attention sub-layer's output (tested in
    tests/test_modeling.py). Eval mode: no dropout. h (B, T, H) padded."""
    layout = TokenLayout(mask[:, None, None, :].bool(), None, *mask.shape)
    attended = layer.attention(h, layout, task)
    out = linear(layer.output.dense, erf_gelu(linear(layer.intermediate.dense, attended)))
    norm = layer.output.LayerNorm
    return F.layer_norm(out + attended + reference_pal(layer.multi_layers[task], h, mask), (h.shape[-1],),
                        norm.weight, norm.bias, norm.eps)


@pytest.mark.parametrize("task", range(len(TINY_HEADS)))
def test_pal_equals_its_formula(task):
    model = sensitive_model()
    pal = model.bert.encoder.layer[1].multi_layers[task]
    mask = make_batch(LENGTHS, pad_to=16)[2]
    h = torch.randn(*mask.shape, TINY["hidden_size"], generator=torch.Generator().manual_seed(3))
    real = mask.bool()
    with torch.no_grad():
        expected = reference_pal(pal, h, mask)[real]
        padded = pal(h, TokenLayout(mask[:, None, None, :].bool(), None, *mask.shape))[real]
        index = mask.flatten().nonzero().squeeze(1)
        packed = pal(h[real], TokenLayout(mask[:, None, None, :].bool(), index, *mask.shape))  # (N, H)
    assert_close(padded, expected)
    assert_close(packed, expected)
    assert expected.abs().max() > CLEAR_CHANGE  # the PAL's output is far from zero: the comparison is not vacuous


@pytest.mark.parametrize("task", range(len(TINY_HEADS)))
def test_model_equals_layers_written_out(task):
    """The whole encoder (packed, the default) against the layer formula applied layer by layer on the padded batch."""
    model = sensitive_model()
    ids, types, mask = make_batch(LENGTHS, pad_to=16, seed=2)
    real = mask.bool()
    with torch.no_grad():
        hidden, pooled = model.bert(ids, types, mask, task)
        h = model.bert.embeddings(ids, types, torch.arange(ids.shape[1]).expand_as(ids))
        for layer in model.bert.encoder.layer:
            h = reference_layer(layer, h, mask, task)
        assert_close(hidden[real], h[real])
        assert_close(pooled, torch.tanh(linear(model.bert.pooler.dense, h[:, 0])))
        # The PALs matter: the same model with the batch task's V_D silenced gives other hidden states.
        model.bert.encoder.mult_aug_dense2[task].weight.zero_()
        model.bert.encoder.mult_aug_dense2[task].bias.zero_()
        assert (model.bert(ids, types, mask, task)[0][real] - hidden[real]).abs().max() > CLEAR_CHANGE


def test_silent_pals_equal_plain_multi_task_bert():
    """With every V_D at zero, PAL = GELU(0) = 0: the model is plain multi-task BERT, whose parameters it holds under
    the same names."""
    pals = sensitive_model()
    with torch.no_grad():
        for up in pals.bert.encoder.mult_aug_dense2:
            up.weight.zero_()
            up.bias.zero_()
    plain = modeling.BertForMultiTask(modeling.BertConfig(**{k: v for k, v in TINY.items() if k != "hidden_size_aug"}),
                                      TINY_HEADS).eval()
    own = plain.state_dict()
    plain.load_state_dict({k: v for k, v in pals.state_dict().items() if k in own})  # strict: every plain parameter
    pals_only = set(pals.state_dict()) - set(own)
    assert all(re.fullmatch(r"bert\.encoder\.(layer\.\d+\.multi_layers|mult_aug_dense2?)\.\d+\..*", k)
               for k in pals_only), pals_only
    batch = make_batch(LENGTHS, seed=4)
    with torch.no_grad():
        for task in range(len(TINY_HEADS)):
            assert_close(pals(*batch, task).logits[0], plain(*batch, task).logits[0])


# ---------------------------------------------------------------------------------------------------- 3. sharing

def test_shared_projections_are_one_module_under_every_name():
    model = tiny_model()
    encoder = model.bert.encoder
    for layer in encoder.layer:
        for t, pal in enumerate(layer.multi_layers):
            assert pal.aug_dense is encoder.mult_aug_dense[t] and pal.aug_dense2 is encoder.mult_aug_dense2[t]
    state = model.state_dict()
    groups = shared_names(model.config)
    assert len(groups) == 2 * 2 * len(TINY_HEADS)  # V_E and V_D, weight and bias, per task
    for names in groups:  # every alias in the state dict, as in the original's checkpoints, one storage
        assert len({state[name].data_ptr() for name in names}) == 1, names
    aliases = sum(len(names) - 1 for names in groups)
    assert len(state) == len(dict(model.named_parameters())) + aliases  # parameters() lists each tensor once


def test_shared_projection_gradient_sums_every_layer():
    """The gradient of a task's shared V_E / V_D is the sum of what each layer's PAL sends: the same as untied
    per-layer copies' gradients added up."""
    shared = sensitive_model()  # eval mode: no dropout, so the two models' forward passes are the same
    untied = copy.deepcopy(shared)
    for layer in untied.bert.encoder.layer:
        for pal in layer.multi_layers:
            pal.aug_dense, pal.aug_dense2 = copy.deepcopy(pal.aug_dense), copy.deepcopy(pal.aug_dense2)
    batch = make_batch(LENGTHS, seed=5)
    for model in (shared, untied):
        model(*batch, TASK, labels=[LABELS]).losses[0].backward()
    for name in ("aug_dense", "aug_dense2"):
        for param in ("weight", "bias"):
            summed = sum(getattr(getattr(layer.multi_layers[TASK], name), param).grad
                         for layer in untied.bert.encoder.layer)
            assert_close(getattr(getattr(shared.bert.encoder.layer[0].multi_layers[TASK], name), param).grad, summed)


@pytest.mark.parametrize("optimizer_name", optimization.OPTIMIZERS)
def test_an_update_reaches_every_layer(optimizer_name):
    model = tiny_model().train()
    optimizer = optimization.build_optimizer(model, optimizer_name, LEARNING_RATE)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model(*make_batch(LENGTHS, seed=6), TASK, labels=[LABELS]).losses[0].backward()
    optimizer.step()
    after = model.state_dict()
    for names in shared_names(model.config):
        task = int(names[0].split(".")[3])  # bert.encoder.mult_aug_dense{,2}.{t}.{param}
        moved = [not torch.equal(after[name], before[name]) for name in names]
        assert moved == [task == TASK] * len(names), names  # the batch task's copies all moved, the others' none
        assert all(torch.equal(after[name], after[names[0]]) for name in names), names
    for n in range(TINY["num_hidden_layers"]):  # and each layer's own PAL attention of the batch task
        key = f"bert.encoder.layer.{n}.multi_layers.{TASK}.attn.query.weight"
        assert not torch.equal(after[key], before[key]), key


# ---------------------------------------------------------------------------------------------------- 4. packing

def test_packed_tokens_equal_the_padded_computation():
    """The PALs' per-token parts on real tokens only (the default) give what every position padded gives, gradients
    too."""
    packed = sensitive_model()
    padded = copy.deepcopy(packed)
    padded.bert.pack_tokens = False
    batch = make_batch(LENGTHS, pad_to=16, seed=3)
    results = []
    for model in (packed, padded):
        hidden, pooled = model.bert(*batch, TASK)
        output = model(*batch, TASK, [LABELS])
        logits, loss = output.logits[0], output.losses[0]
        loss.backward()
        results.append((hidden[batch[2].bool()], pooled, logits, loss,
                        *(p.grad for p in model.parameters() if p.grad is not None)))
    assert len(results[0]) == len(results[1])
    for a, b in zip(*results):
        assert_close(a, b)


# ---------------------------------------------------------------------------------------------------- 5. checkpoints

def original_pals_checkpoint(config, num_labels_per_task, seed=0):
    """Random weights of the original BERT-and-PALs code's BertForMultiTask under its own names: the BERT encoder
    (`bert.` prefix, LayerNorm gamma/beta), each layer's PALs' attention, each task's V_E / V_D under the encoder and
    again, equal, under every layer's PAL, and the heads."""
    H, r, S = config.hidden_size, config.hidden_size_aug, len(num_labels_per_task)
    g = torch.Generator().manual_seed(seed + 1)
    state = bert_checkpoint(config, "bert.", "old", seed)
    for t in range(S):
        projections = {"aug_dense.weight": torch.randn(r, H, generator=g),
                       "aug_dense.bias": torch.randn(r, generator=g),
                       "aug_dense2.weight": torch.randn(H, r, generator=g),
                       "aug_dense2.bias": torch.randn(H, generator=g)}
        for name, value in projections.items():
            state[f"bert.encoder.mult_{name.replace('.', f'.{t}.')}"] = value
        for n in range(config.num_hidden_layers):
            pal = f"bert.encoder.layer.{n}.multi_layers.{t}"
            for name, value in projections.items():
                state[f"{pal}.{name}"] = value.clone()  # an alias: equal values (the original saved one storage)
            for proj in ("query", "key", "value"):
                state[f"{pal}.attn.{proj}.weight"] = torch.randn(r, r, generator=g)
                state[f"{pal}.attn.{proj}.bias"] = torch.randn(r, generator=g)
    for task, labels in enumerate(num_labels_per_task):
        state[f"classifier.{task}.weight"] = torch.randn(labels, H, generator=g)
        state[f"classifier.{task}.bias"] = torch.randn(labels, generator=g)
    return state


def our_name(key):
    """The documented correspondence: LayerNorm gamma/beta are weight/bias; every other name is the original's."""
    return re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key))


def test_original_pals_checkpoint_loads(tmp_path):
    config = tiny_config()
    checkpoint = original_pals_checkpoint(config, TINY_HEADS)
    model = tiny_model()
    assert {our_name(k) for k in checkpoint} == set(model.state_dict())  # the same names, aliases included
    assert load_pretrained(model, write_state(checkpoint, tmp_path / "pals.bin"), require_all=True) == []
    state = model.state_dict()
    for key, value in checkpoint.items():
        assert torch.equal(state[our_name(key)], value), key


@pytest.mark.parametrize("key", ["bert.encoder.layer.1.multi_layers.2.aug_dense2.bias",
                                 "bert.encoder.mult_aug_dense.0.weight"])
def test_checkpoint_whose_aliases_disagree_is_refused(tmp_path, key):
    config = tiny_config()
    checkpoint = original_pals_checkpoint(config, TINY_HEADS)
    checkpoint[key] = checkpoint[key] + 1.0
    path = write_state(checkpoint, tmp_path / "pals.bin")
    if key.startswith("bert.encoder.mult_"):  # the canonical copy differs from every layer's
        t = key.split(".")[3]
        expected = f"bert.encoder.layer.0.multi_layers.{t}.aug_dense.weight != {key}"
        count = TINY["num_hidden_layers"]
    else:
        expected = f"{key} != bert.encoder.mult_aug_dense2.2.bias"
        count = 1
    message = f"the copies of PALs' shared projections disagree in {count} place(s): {expected}"
    with pytest.raises(ValueError, match=re.escape(message)):
        load_pretrained(tiny_model(), path, require_all=True)
    with pytest.raises(ValueError, match=re.escape(message)):  # loading directly checks too (resuming a run)
        tiny_model().load_state_dict(map_state_dict(checkpoint))


def test_check_aliases_accepts_a_state_dict_without_them():
    """A BERT checkpoint has no PALs at all; a state dict with only the canonical names has nothing to compare."""
    config = tiny_config(num_tasks=len(TINY_HEADS))
    check_aliases(map_state_dict(bert_checkpoint(config, "", "hf")), config)
    canonical = {names[0]: torch.zeros(1) for names in shared_names(config)}
    check_aliases(canonical, config)


@pytest.mark.parametrize("prefix", ["bert.", ""])
def test_bert_checkpoint_leaves_pals_and_heads_fresh(tmp_path, prefix):
    config = tiny_config()
    checkpoint = bert_checkpoint(config, prefix, "hf")
    path = write_state({**checkpoint, **hugging_face_extras(config)}, tmp_path / "model.safetensors")
    model = tiny_model()
    fresh = load_pretrained(model, path)
    assert all(re.fullmatch(r"bert\.encoder\.(layer\.\d+\.multi_layers|mult_aug_dense2?)\.\d+\..*|classifier\..*", k)
               for k in fresh), fresh
    assert len(fresh) == len(model.state_dict()) - len(checkpoint)
    params = dict(model.named_parameters())
    for key, value in checkpoint.items():
        assert torch.equal(params[key if key.startswith("bert.") else "bert." + key], value), key


def test_own_state_dict_round_trip(tmp_path):
    source = sensitive_model()
    path = tmp_path / "best_model.pth"
    torch.save(source.state_dict(), path)
    target = tiny_model(seed=1)
    assert load_pretrained(target, path, require_all=True) == []
    resumed = tiny_model(seed=2)
    resumed.load_state_dict(torch.load(path, weights_only=True))  # strict, as --resume loads
    batch = make_batch(LENGTHS, seed=5)
    with torch.no_grad():
        for task in range(len(TINY_HEADS)):
            expected = source(*batch, task).logits[0]
            assert torch.equal(target(*batch, task).logits[0], expected)
            assert torch.equal(resumed(*batch, task).logits[0], expected)
    encoder = target.bert.encoder
    assert encoder.layer[1].multi_layers[2].aug_dense is encoder.mult_aug_dense[2]  # loading kept the sharing


def test_checkpoint_with_another_pal_width_is_refused(tmp_path):
    path = tmp_path / "pals.pth"
    torch.save(tiny_model(hidden_size_aug=12).state_dict(), path)
    message = ("bert.encoder.layer.0.multi_layers.0.aug_dense.weight has shape (12, 32) but the model's is (18, 32) "
               "(the config's hidden_size_aug is 18, the checkpoint's is 12)")
    with pytest.raises(ValueError, match=re.escape(message)):
        load_pretrained(tiny_model(), path)


def test_pals_checkpoints_are_told_apart_by_key():
    pals = map_state_dict(original_pals_checkpoint(tiny_config(), TINY_HEADS))
    assert any(PALS_KEY.fullmatch(k) for k in pals) and hidden_size_aug_of(pals) == TINY["hidden_size_aug"]
    embert = modeling.BertForMultiTask(modeling.BertConfig(**{k: v for k, v in TINY.items() if k != "hidden_size_aug"},
                                                           our_attn=True), TINY_HEADS).state_dict()
    assert not any(PALS_KEY.fullmatch(k) for k in embert) and hidden_size_aug_of(embert) is None


# ---------------------------------------------------------------------------------------------------- 6. config, init

@pytest.mark.parametrize("overrides,message", [
    (dict(our_attn=True), "our_attn is true: PALs has no task-embedded attention"),
    (dict(mult=False), "mult is False and pals is True: a PALs model needs both true"),
    (dict(pals=False), "mult is True and pals is False: a PALs model needs both true"),
    (dict(hidden_size_aug=20), "hidden_size_aug 20 must be a positive multiple of the PAL's 6 attention heads"),
])
def test_config_refuses_what_is_not_pals(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        tiny_config(**overrides)


def test_config_from_file_names_the_file(tmp_path):
    path = tmp_path / "embert.json"
    path.write_text(json.dumps({**TINY, "our_attn": True}))
    with pytest.raises(ValueError, match=re.escape(f"config file {path}: our_attn is true")):
        BertConfig.from_json_file(path)


def test_h_aug_sets_the_pal_width():
    config = tiny_config()
    assert configure(config, 128, None) == config  # no --h_aug: the config's width; the length changes nothing
    assert configure(config, 64, 24).hidden_size_aug == 24
    with pytest.raises(ValueError, match="hidden_size_aug 25 must be a positive multiple"):
        configure(config, 128, 25)


def test_initialisation():
    model = tiny_model()
    encoder = model.bert.encoder
    weights = [m.weight.detach().flatten() for layer in encoder.layer for pal in layer.multi_layers
               for m in (pal.attn.query, pal.attn.key, pal.attn.value)]
    weights += [m.weight.detach().flatten() for m in (*encoder.mult_aug_dense, *encoder.mult_aug_dense2)]
    assert_std(torch.cat(weights), "every PAL weight together")
    for name, param in model.named_parameters():
        if ".multi_layers." in name and name.endswith("bias"):
            assert not param.any(), name
    assert len(encoder.layer) == model.config.num_hidden_layers == TINY["num_hidden_layers"]
    assert model.bert.config is model.config  # the full config everywhere, not the one the base was built from
    assert isinstance(encoder.layer[0].multi_layers[0].aug_dense, nn.Linear)


def test_model_does_not_mutate_the_config():
    config = tiny_config()
    before = dataclasses.asdict(config)
    BertForMultiTask(config, TINY_HEADS)
    assert dataclasses.asdict(config) == before
