"""Gated-BERT: EmBERT whose last layer replaces task-embedded attention with gated attention.

Differences from modeling.py (everything else is imported from it):
- `BertConfig` gains `hidden_size_aug` (rank r of the query/key adapters, default 204 as the original) and
  `max_seq_length` (the gate reads the whole padded sequence, so it fixes the input length; default 128).
- The last layer's self-attention is `GatedSelfAttention`: no task embeddings; for each task s a low-rank query and
  key adapter A_s(X) = (X W1_s + c1_s) W2_s + c2_s, a full value adapter V_s(X) = X Wv_s + cv_s, five per-task scalars,
  and two gate layers mapping the flattened sequence (B, max_seq_length * hidden) to softmax weights over tasks.
  For a batch of task t:
      Q = X Wq + bq + aq1[t] Aq_t(X) + aq2[t] sum_{s != t} g_q[:, s] Aq_s(X)
      K = X Wk + bk + ak1[t] Ak_t(X) + ak2[t] sum_{s != t} g_k[:, s] Ak_s(X)
      V = X Wv + bv + av[t] V_t(X)
  (the softmax runs over all tasks, own included; the own-task weight itself is not used).
- Every batch must be padded to exactly `max_seq_length`, and every layer computes every position (no token
  packing): the gate reads the hidden states of padding positions too. The gate layers start at zero.
- `frozen_parameters` says which parameters each training phase leaves untouched, and `anneal_alpha` restarts the
  sampling temperature every phase (both used by run_multi_task_gated.py).
Parameter names follow the original Gated-BERT code (`query_list`, `query_list2`, `key_list`, `key_list2`,
`value_list`, `weight_layer_q/k`, `weight_task_emb_{q_1,k_1,q_2,k_2,v}`), so its checkpoints load unchanged.
"""
import dataclasses
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

import modeling

# The original trains in phases of 20 epochs: sampling temperature restarts and freezing changes at each boundary.
PHASE_EPOCHS = 20


@dataclass
class BertConfig(modeling.BertConfig):
    """modeling.BertConfig plus the gated layer's sizes."""

    hidden_size_aug: int = 204  # rank r of the query/key adapters (the original's default; --h_aug overrides)
    max_seq_length: int = 128  # the length every batch is padded to: the gate layers read the whole sequence


class GatedSelfAttention(modeling.BertSelfAttention):
    """Shared Q/K/V projections plus per-task adapters mixed by input-dependent gates (the last layer only)."""

    def __init__(self, config):
        super().__init__(dataclasses.replace(config, our_attn=False))  # no task embeddings in this layer
        H, r, S = config.hidden_size, config.hidden_size_aug, config.num_tasks
        self.max_seq_length = config.max_seq_length
        self.query_list = nn.ModuleList(nn.Linear(H, r) for _ in range(S))  # W1_s, c1_s of the query adapters
        self.query_list2 = nn.ModuleList(nn.Linear(r, H) for _ in range(S))  # W2_s, c2_s
        self.key_list = nn.ModuleList(nn.Linear(H, r) for _ in range(S))
        self.key_list2 = nn.ModuleList(nn.Linear(r, H) for _ in range(S))
        self.value_list = nn.ModuleList(nn.Linear(H, H) for _ in range(S))
        self.weight_layer_q = nn.Linear(config.max_seq_length * H, S)
        self.weight_layer_k = nn.Linear(config.max_seq_length * H, S)
        # Per-task scalars: own adapter (1), other tasks' gated adapters (2), value adapter.
        self.weight_task_emb_q_1 = nn.Embedding(S, 1)
        self.weight_task_emb_k_1 = nn.Embedding(S, 1)
        self.weight_task_emb_q_2 = nn.Embedding(S, 1)
        self.weight_task_emb_k_2 = nn.Embedding(S, 1)
        self.weight_task_emb_v = nn.Embedding(S, 1)

    def gates(self, hidden_states):
        """Softmax weights over tasks for the query and key adapters, (B, S) each."""
        B, T, H = hidden_states.shape
        if T != self.max_seq_length:
            raise ValueError(f"Gated-BERT's gate reads exactly max_seq_length={self.max_seq_length} tokens, got a "
                             f"batch of length {T}: pad every batch to max_seq_length")
        flat = hidden_states.reshape(B, T * H)
        return self.weight_layer_q(flat).softmax(-1), self.weight_layer_k(flat).softmax(-1)

    def project(self, hidden_states, task_id):
        q, k, v = super().project(hidden_states, task_id)  # the shared projections, (B, T, H) each
        gate_q, gate_k = self.gates(hidden_states)
        q = q + mix_adapters(hidden_states, self.query_list, self.query_list2, task_id, gate_q,
                             self.weight_task_emb_q_1.weight[task_id], self.weight_task_emb_q_2.weight[task_id])
        k = k + mix_adapters(hidden_states, self.key_list, self.key_list2, task_id, gate_k,
                             self.weight_task_emb_k_1.weight[task_id], self.weight_task_emb_k_2.weight[task_id])
        v = v + self.weight_task_emb_v.weight[task_id] * self.value_list[task_id](hidden_states)
        return q, k, v


def mix_adapters(x, down, up, task_id, gate, own_scale, other_scale):
    """sum_s coef[:, s] A_s(x) with coef = own_scale for s = t and other_scale * gate[:, s] otherwise: (B, T, H).

    All S adapters in two matmuls: scaling the rank-r activations of adapter s by its coefficient before the up
    projection equals scaling its output, so the (S, B, T, H) stack of adapter outputs is never built.
    """
    B, T, _ = x.shape
    S, r = len(down), down[0].out_features
    own = torch.arange(S, device=x.device) == task_id  # (S,), built on the device: no host-to-device copy
    coef = torch.where(own, own_scale, other_scale * gate)  # (B, S)
    hidden = F.linear(x, torch.cat([m.weight for m in down]), torch.cat([m.bias for m in down]))  # (B, T, S*r)
    hidden = (hidden.view(B, T, S, r) * coef[:, None, :, None].to(hidden.dtype)).view(B, T, S * r)
    up_bias = coef.to(hidden.dtype) @ torch.stack([m.bias for m in up])  # (B, H): sum_s coef[:, s] c2_s
    return F.linear(hidden, torch.cat([m.weight for m in up], dim=1)) + up_bias[:, None, :]


class BertForMultiTask(modeling.BertForMultiTask):
    """modeling.BertForMultiTask with the last layer's self-attention gated."""

    def __init__(self, config, num_labels_per_task, types=None, num_groups=None, problems=None):
        super().__init__(config, num_labels_per_task, types, num_groups, problems)
        self.bert.pack_tokens = False  # the gate reads every position's hidden states, padding included
        gated = GatedSelfAttention(self.config)
        gated.apply(partial(modeling.init_weights, std=self.config.initializer_range))
        for gate in (gated.weight_layer_q, gated.weight_layer_k):  # uniform gates at the start
            nn.init.zeros_(gate.weight)
            nn.init.zeros_(gate.bias)
        self.bert.encoder.layer[-1].attention.self = gated

    def shape_hint(self, state):
        hint = super().shape_hint(state)  # a hidden_size or vocab_size mismatch also changes the gate's width
        if hint:
            return hint
        gate = state.get(f"bert.encoder.layer.{self.config.num_hidden_layers - 1}.attention.self.weight_layer_q.weight")
        if gate is not None and gate.shape[1] != self.config.max_seq_length * self.config.hidden_size:
            return (f" (the checkpoint's gate reads sequences of {gate.shape[1] // self.config.hidden_size} tokens, "
                    f"this run pads to --max_seq_length {self.config.max_seq_length})")
        return ""


def anneal_alpha(epoch, num_epochs):
    """Sampling exponent: 1.0 -> 0.2 over each 20-epoch phase, restarting at every phase (the original's schedule)."""
    return 1.0 - 0.8 * (epoch % PHASE_EPOCHS) / (PHASE_EPOCHS - 1)


def frozen_parameters(model, task_id, epoch):
    """Parameters a step on task `task_id` in `epoch` must leave untouched (no update, decay or momentum).

    Epochs 0-19: other tasks' adapters and both gate layers. Epochs 20-39: other tasks' adapters.
    From epoch 40: also every layer's shared query, key and value projections.
    """
    gated = model.bert.encoder.layer[-1].attention.self
    phase = epoch // PHASE_EPOCHS
    frozen = [p for adapters in (gated.query_list, gated.query_list2, gated.key_list, gated.key_list2,
                                 gated.value_list)
              for s, adapter in enumerate(adapters) if s != task_id for p in adapter.parameters()]
    if phase == 0:
        frozen += [*gated.weight_layer_q.parameters(), *gated.weight_layer_k.parameters()]
    if phase >= 2:
        frozen += [p for layer in model.bert.encoder.layer
                   for proj in (layer.attention.self.query, layer.attention.self.key, layer.attention.self.value)
                   for p in proj.parameters()]
    return frozen


def configure(config, max_seq_length, h_aug=None):
    """The config as run_multi_task_gated.py builds the model: the gate reads max_seq_length x hidden inputs, and
    --h_aug (when given) sets the adapters' rank."""
    return dataclasses.replace(config, max_seq_length=max_seq_length, hidden_size_aug=h_aug or config.hidden_size_aug)
