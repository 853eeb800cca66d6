"""The original code's computations, written plainly on our parameters: the faithful eager fp32 baseline that bench.py
times as its path (2), and the reference that the tests prove our faster code equal to (same names, same weights).

What each reproduces:
  original_attention          the attention of the original EmBERT / Gated-BERT / BERT-and-PALs code (all three copy
                              Google BERT's PyTorch port): explicit scores QK^T / sqrt(head size), an additive -10000
                              on padding keys, softmax, dropout, weighted sum, every position computed, padding
                              included. Ours: scaled_dot_product_attention with a boolean mask, on real tokens only.
  OriginalSelfAttention       EmBERT's self-attention: separate Q/K/V projections, the task's query/key/value
                              embeddings added to them (our_attn), then original_attention. Ours fuses the three
                              projections into one matmul with the task embeddings as its bias. With our_attn off it is
                              plain BERT attention, which is also what a PAL's attention is in the BERT-and-PALs code.
  OriginalGatedSelfAttention  Gated-BERT's last-layer attention: every task's query/key adapters A_s(X) one after
                              another in a Python loop, scaled by the gates, then original_attention. Ours runs all
                              the adapters in two matmuls (modeling_gated.mix_adapters).
  use_original_attention      switches a model's attentions to the two classes above (and turns off token packing),
                              keeping its parameters: the original's forward and backward on our weights.
  OriginalBertAdam            the original BertAdam update as its per-tensor loop ran it: per-tensor gradient
                              clipping, no bias correction. Ours (optimization.BertAdam) uses foreach ops.

Why a module of its own: tests (tests/test_original_reference.py, tests/test_modeling.py) and bench.py both use
these, and none of the training or prediction scripts does; nothing here is tuned for speed, on purpose.
"""
import math

import torch
import torch.nn.functional as F

import modeling
import modeling_gated
import optimization

# The original code's additive mask on padding keys (Google BERT's PyTorch port).
ORIGINAL_MASK_VALUE = -10000.0


def original_attention(q, k, v, attention_mask, num_heads, dropout_prob, training):
    """The original's attention on (B, T, H) projections: explicit scores, an additive -10000 mask on padding keys
    (attention_mask (B, 1, 1, T) bool, True = may be attended), softmax, dropout, weighted sum. Returns (B, T, H)."""
    B, T, H = q.shape
    q, k, v = (x.view(B, T, num_heads, H // num_heads).transpose(1, 2) for x in (q, k, v))  # (B, nh, T, hs)
    scores = q @ k.transpose(-1, -2) / math.sqrt(H // num_heads)  # (B, nh, T, T)
    scores = scores + (~attention_mask).to(scores.dtype) * ORIGINAL_MASK_VALUE
    probs = F.dropout(scores.softmax(dim=-1), dropout_prob, training)
    return (probs @ v).transpose(1, 2).reshape(B, T, H)


class OriginalSelfAttention(modeling.BertSelfAttention):
    """The original EmBERT self-attention, computed as its code does, on our parameters (same names, same weights)."""

    def forward(self, hidden_states, layout, task_id):
        q, k, v = self.query(hidden_states), self.key(hidden_states), self.value(hidden_states)  # (B, T, H) each
        if self.our_attn:
            q = q + self.query_task_emb.weight[task_id]
            k = k + self.key_task_emb.weight[task_id]
            v = v + self.value_task_emb.weight[task_id]
        return original_attention(q, k, v, layout.key_mask, self.num_heads, self.dropout_prob, self.training)


class OriginalGatedSelfAttention(modeling_gated.GatedSelfAttention):
    """The original Gated-BERT last-layer attention as its code computes it: every task's query and key adapters
    A_s(X) one after another in a Python loop, own task scaled by aq1/ak1[t], the others by aq2/ak2[t] times their
    gate weight, then the explicit softmax attention."""

    def forward(self, hidden_states, layout, task_id):
        gate_q, gate_k = self.gates(hidden_states)  # (B, S) each
        q, k, v = self.query(hidden_states), self.key(hidden_states), self.value(hidden_states)  # (B, T, H) each
        for s in range(len(self.query_list)):
            adapted_q = self.query_list2[s](self.query_list[s](hidden_states))  # (B, T, H)
            adapted_k = self.key_list2[s](self.key_list[s](hidden_states))
            if s == task_id:
                q = q + self.weight_task_emb_q_1.weight[task_id] * adapted_q
                k = k + self.weight_task_emb_k_1.weight[task_id] * adapted_k
            else:
                q = q + self.weight_task_emb_q_2.weight[task_id] * gate_q[:, s, None, None] * adapted_q
                k = k + self.weight_task_emb_k_2.weight[task_id] * gate_k[:, s, None, None] * adapted_k
        v = v + self.weight_task_emb_v.weight[task_id] * self.value_list[task_id](hidden_states)
        return original_attention(q, k, v, layout.key_mask, self.num_heads, self.dropout_prob, self.training)


def use_original_attention(model):
    """Switch every self-attention of `model` (EmBERT's, Gated-BERT's gated layer, PALs' own attentions) to the
    original's computation, keeping its parameters; every layer then computes every position, padding included, as
    the original did. Changes `model` in place and returns it."""
    model.bert.pack_tokens = False
    for module in model.modules():
        if type(module) is modeling.BertSelfAttention:
            module.__class__ = OriginalSelfAttention
        elif type(module) is modeling_gated.GatedSelfAttention:
            module.__class__ = OriginalGatedSelfAttention
    return model


class OriginalBertAdam(torch.optim.Optimizer):
    """The original BertAdam update written plainly, one parameter tensor at a time, as the original code's loop ran
    it (optimization.BertAdam computes the same with foreach ops; tests/test_original_reference.py checks that they
    agree).

    Per parameter with a gradient: clip that tensor's gradient to norm max_grad_norm; m = b1 m + (1 - b1) g;
    v = b2 v + (1 - b2) g^2; update = m / (sqrt(v) + eps) + weight_decay * p; p -= lr * update. No bias correction.
    The learning rate comes from group["lr"], set each step by the same LambdaLR schedule as the other paths (the
    original evaluated its schedule inside this loop, once per tensor: a few Python float operations). Today's
    clip_grad_norm_ never waits for the device; PyTorch 0.4's compared the norm on the host, a sync per tensor: on
    CUDA this loop is, if anything, faster than the original's ran."""

    def __init__(self, params, lr, b1=optimization.ADAM_BETAS[0], b2=optimization.ADAM_BETAS[1],
                 eps=optimization.ADAM_EPS, weight_decay=optimization.WEIGHT_DECAY,
                 max_grad_norm=optimization.MAX_GRAD_NORM):
        super().__init__(params, dict(lr=lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                                      max_grad_norm=max_grad_norm))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["next_m"], state["next_v"] = torch.zeros_like(p), torch.zeros_like(p)
                if group["max_grad_norm"] > 0:
                    torch.nn.utils.clip_grad_norm_(p, group["max_grad_norm"])
                grad, m, v = p.grad, state["next_m"], state["next_v"]
                m.mul_(group["b1"]).add_(grad, alpha=1 - group["b1"])
                v.mul_(group["b2"]).addcmul_(grad, grad, value=1 - group["b2"])
                update = m / (v.sqrt() + group["eps"])
                if group["weight_decay"] > 0:
                    update += group["weight_decay"] * p
                p.add_(update, alpha=-group["lr"])
