"""py: the original code's computations equal ours on the same weights (the per-tensor BertAdam
loop against optimization.BertAdam, the original Gated-BERT attention and PALs' plain attention against ours), and the
original's attention ignores padding keys as its -10000 mask made it.

The original EmBERT attention against ours is tested in tests/test_modeling.py (test_sdpa_equals_original_attention).
"""
import copy

import pytest
import torch

import modeling
import modeling_gated
import modeling_pals
import optimization
from helpers import TINY_HEADS, tiny_dict
from original_reference import (OriginalBertAdam, OriginalGatedSelfAttention, OriginalSelfAttention,
                                use_original_attention)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only add waiting

# Odd tiny sizes (Google BERT's test style), so that a transposed or mixed-up dimension cannot go unnoticed.
TINY = tiny_dict(our_attn=True)
LENGTHS = [12, 7, 9]  # real tokens per row: one full row, two padded
GATED_LENGTH = 12  # the gated tiny model's max_seq_length: every batch is padded to it
PALS_HIDDEN_SIZE_AUG = 18  # a multiple of modeling_pals.PAL_ATTENTION_HEADS (6), odd against hidden 32
EQUAL_ATOL = 1e-5  # the same math by a different route (per-task loop against fused matmuls), fp32


def batch(lengths, width, seed=0):
    """input_ids, token_type_ids, attention_mask (B, width) for rows of the given real lengths."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, TINY["vocab_size"], (len(lengths), width), generator=g)
    mask = (torch.arange(width) < torch.tensor(lengths)[:, None]).long()
    segments = (torch.arange(width) >= torch.tensor(lengths)[:, None] // 2).long() * mask
    return ids * mask, segments, mask


def loss_of(model, task, labels, lengths=LENGTHS, width=GATED_LENGTH, scale=1.0):
    return scale * model(*batch(lengths, width), task, labels=[labels]).losses[0]


# ---------------------------------------------------------------------------------------------------- equal math

def test_original_bert_adam_loop_equals_bert_adam():
    torch.manual_seed(0)
    model = modeling.BertForMultiTask(modeling.BertConfig(**TINY), TINY_HEADS).eval()  # no dropout: equal grads
    twin = copy.deepcopy(model)
    lr = 1e-2  # large, so that a wrong term moves the weights visibly
    ours = optimization.BertAdam(optimization.param_groups(model), lr=lr)
    loop = OriginalBertAdam(optimization.param_groups(twin), lr=lr)
    for step, task in enumerate((0, 2)):  # the second step: moments carried over, another task's head
        labels = torch.tensor([0, 1, 1]) if task == 0 else torch.tensor([0.2, 0.9, 0.5])
        for m, optimizer in ((model, ours), (twin, loop)):
            # Scaled so that some tensors' gradient norms exceed 1 and the per-tensor clip acts.
            loss_of(m, task, labels, scale=100.0).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, atol=EQUAL_ATOL, rtol=0, msg=name)
        assert bool(ours.state[a]) == bool(loop.state[b]), name  # task 1's head never had a gradient: skipped
        if ours.state[a]:
            torch.testing.assert_close(ours.state[a]["exp_avg"], loop.state[b]["next_m"], msg=name)
            torch.testing.assert_close(ours.state[a]["exp_avg_sq"], loop.state[b]["next_v"], msg=name)
    assert not ours.state[model.classifier[1].weight]


def test_original_bert_adam_clips_each_tensor():
    """One step from zero moments: update = (1 - b1) g' / (sqrt(1 - b2) |g'| + eps) with g' the clipped gradient."""
    p = torch.nn.Parameter(torch.zeros(4))
    optimizer = OriginalBertAdam([p], lr=1.0, weight_decay=0.0)
    p.grad = torch.tensor([30.0, 40.0, 0.0, 0.0])  # norm 50: clipped to norm 1
    optimizer.step()
    clipped = p.grad  # clipped in place, as the original
    torch.testing.assert_close(clipped, torch.tensor([0.6, 0.8, 0.0, 0.0]), atol=1e-6, rtol=0)
    b1, b2 = optimization.ADAM_BETAS
    expected = -(1 - b1) * clipped / ((1 - b2) ** 0.5 * clipped.abs() + optimization.ADAM_EPS)
    torch.testing.assert_close(p.detach(), expected)


def gated_pair():
    """A tiny Gated-BERT with non-zero gates and scalars (every gated term matters) and its original-math twin."""
    torch.manual_seed(0)
    config = modeling_gated.BertConfig(**TINY, hidden_size_aug=5, max_seq_length=GATED_LENGTH)
    ours = modeling_gated.BertForMultiTask(config, TINY_HEADS).eval()
    gated = ours.bert.encoder.layer[-1].attention.self
    with torch.no_grad():
        for gate in (gated.weight_layer_q, gated.weight_layer_k):
            gate.weight.normal_(0.0, 0.1)
        for name in ("q_1", "k_1", "q_2", "k_2", "v"):
            getattr(gated, f"weight_task_emb_{name}").weight.uniform_(0.5, 1.5)
    original = use_original_attention(copy.deepcopy(ours))
    switched = [type(layer.attention.self) for layer in original.bert.encoder.layer]
    assert switched == [OriginalSelfAttention, OriginalGatedSelfAttention]  # not vacuous
    return ours, original


def assert_equal_forward_backward(ours, original, task, labels):
    """Hidden states on real tokens, pooled output, logits, loss and every gradient equal (to fp32 rounding)."""
    labels = torch.tensor(labels)
    outputs = {}
    for name, model in (("ours", ours), ("original", original)):
        inputs = batch(LENGTHS, GATED_LENGTH)
        hidden, pooled = model.bert(*inputs, task)
        output = model(*inputs, task, labels=[labels])
        logits, loss = output.logits[0], output.losses[0]
        loss.backward()
        outputs[name] = hidden[inputs[2].bool()], pooled, logits, loss
    for a, b in zip(outputs["ours"], outputs["original"]):
        torch.testing.assert_close(a, b, atol=EQUAL_ATOL, rtol=0)
    grads = dict(original.named_parameters())
    for name, param in ours.named_parameters():
        if param.grad is None:
            assert grads[name].grad is None, name
        else:
            torch.testing.assert_close(param.grad, grads[name].grad, atol=EQUAL_ATOL, rtol=0, msg=name)


@pytest.mark.parametrize("task,labels", [(1, [0, 2, 1]), (2, [0.2, 0.9, 0.5])])
def test_original_gated_attention_equals_ours(task, labels):
    assert_equal_forward_backward(*gated_pair(), task, labels)


@pytest.mark.parametrize("task,labels", [(0, [1, 0, 1]), (2, [0.2, 0.9, 0.5])])
def test_original_attention_equals_ours_in_pals(task, labels):
    """PALs' layer attentions and each task's PAL attention (plain BERT attention in the small space)."""
    torch.manual_seed(0)
    config = modeling_pals.BertConfig(**{**TINY, "our_attn": False}, hidden_size_aug=PALS_HIDDEN_SIZE_AUG)
    ours = modeling_pals.BertForMultiTask(config, TINY_HEADS).eval()
    original = use_original_attention(copy.deepcopy(ours))
    switched = [m for m in original.modules() if isinstance(m, OriginalSelfAttention)]
    # Not vacuous: every layer's attention and every task's PAL attention in every layer run the original's math.
    assert len(switched) == TINY["num_hidden_layers"] * (1 + len(TINY_HEADS))
    assert_equal_forward_backward(ours, original, task, labels)


def test_original_attention_masks_padding_keys():
    """Changing padded tokens changes nothing of the original's attention on real tokens."""
    torch.manual_seed(0)
    model = use_original_attention(modeling.BertForMultiTask(modeling.BertConfig(**TINY), TINY_HEADS)).eval()
    ids, segments, mask = batch(LENGTHS, GATED_LENGTH)
    noisy = torch.where(mask.bool(), ids, torch.randint_like(ids, 1, TINY["vocab_size"]))
    a, b = model.bert(ids, segments, mask, 0)[0], model.bert(noisy, segments, mask, 0)[0]
    torch.testing.assert_close(a[mask.bool()], b[mask.bool()], atol=EQUAL_ATOL, rtol=0)
