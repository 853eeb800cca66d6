"""Benchmarks: our training step against the original's computation, measured side by side.

The original EmBERT code's math is written out plainly here (separate Q/K/V projections with the task embeddings
added, an additive -10000 padding mask and an explicit softmax), so the tests can prove our fused, SDPA-based model
computes the same thing on the same weights, and the benchmark can time both.
"""
import math

import torch
import torch.nn.functional as F

import modeling

# The original code's additive mask on padding keys.
ORIGINAL_MASK_VALUE = -10000.0


class OriginalSelfAttention(modeling.BertSelfAttention):
    """The original EmBERT self-attention, computed as its code does, on our parameters (same names, same weights)."""

    def forward(self, hidden_states, attention_mask, task_id):
        B, T, H = hidden_states.shape
        q, k, v = self.query(hidden_states), self.key(hidden_states), self.value(hidden_states)
        if self.our_attn:
            q = q + self.query_task_emb.weight[task_id]
            k = k + self.key_task_emb.weight[task_id]
            v = v + self.value_task_emb.weight[task_id]
        q, k, v = (x.view(B, T, self.num_heads, H // self.num_heads).transpose(1, 2) for x in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(H // self.num_heads)  # (B, nh, T, T)
        scores = scores + (~attention_mask).to(scores.dtype) * ORIGINAL_MASK_VALUE
        probs = F.dropout(scores.softmax(dim=-1), self.dropout_prob, self.training)
        return (probs @ v).transpose(1, 2).reshape(B, T, H)


def use_original_attention(model):
    """Switch every EmBERT self-attention of `model` to the original's computation, keeping its parameters."""
    for module in model.modules():
        if type(module) is modeling.BertSelfAttention:
            module.__class__ = OriginalSelfAttention
    return model
