"""BERT and EmBERT: multi-task BERT with task-embedded attention (Maziarka & Danel, IJCNN 2021).

BERT is Google's post-LayerNorm Transformer encoder. EmBERT adds, in every layer l, three task-embedding tables
E_q[l], E_k[l], E_v[l] of shape [num_tasks, hidden]; for a batch of task t the projections become

    Q = X W_q + b_q + E_q[l, t],   K = X W_k + b_k + E_k[l, t],   V = X W_v + b_v + E_v[l, t]

and everything else is BERT. The three embeddings are folded into the bias of one fused QKV projection, so the task
embeddings cost no extra matrix multiply. Two facts worth knowing: E_k shifts every score of a query by the same
constant, which softmax cancels (its gradient is exactly zero); E_v is a per-task output bias when attention dropout
is off. Both are kept, as in the paper and the released weights. With `our_attn` false the model is plain multi-task
BERT (the "Shared" baseline of the BERT-and-PALs paper): one encoder, one head per task.

Speed: the embeddings, projections, feed-forward layers and LayerNorms act on each token alone, so they run on the
batch's real tokens only, packed into (N, H); only attention sees the padded (B, T) layout, where padding keys are
masked. The results on real tokens are those of the padded computation, at a fraction of its FLOPs (GLUE batches
padded to their longest sequence are about half padding).

Parameter names are those of the pretrained checkpoints (Hugging Face's, which are Google's with `LayerNorm.weight/bias`
for `gamma/beta`), the task embeddings and heads those of the original EmBERT code (`query_task_emb`, `classifier.N`),
so every format loads through `load_pretrained` with a plain name mapping.
"""
import dataclasses
import json
import re
import zipfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# Activations a BERT config may name ("gelu" is the exact erf form, as Google's BERT).
ACTIVATIONS = {
    "gelu": F.gelu,
    "relu": F.relu,
    "gelu_new": partial(F.gelu, approximate="tanh"),
    "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),
    "silu": F.silu,
    "swish": F.silu,
}
# Keys without which a JSON file is not a BERT config.
REQUIRED_CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


@dataclass
class BertConfig:
    """Model settings, read from a Google-style `bert_config.json` (Hugging Face `config.json` files work too).

    Unknown keys (a Hugging Face config's `model_type`, `architectures`, ...) are kept in `extra` and written back.
    """

    vocab_size: int  # rows of the word-embedding table (30522 for bert-base-uncased)
    hidden_size: int = 768  # width of every layer
    num_hidden_layers: int = 12
    num_attention_heads: int = 12  # must divide hidden_size
    intermediate_size: int = 3072  # width of the feed-forward layer
    hidden_act: str = "gelu"  # a key of ACTIVATIONS
    hidden_dropout_prob: float = 0.1  # dropout on embeddings, sub-layer outputs and the pooled output
    attention_probs_dropout_prob: float = 0.1  # dropout on attention probabilities
    max_position_embeddings: int = 512  # longest sequence the position table holds
    type_vocab_size: int = 2  # segment ids: 0 for sentence A, 1 for sentence B
    initializer_range: float = 0.02  # std of the normal init of new parameters
    layer_norm_eps: float = 1e-12  # Google BERT's LayerNorm epsilon
    our_attn: bool = False  # EmBERT task-embedded attention on (true) or plain multi-task BERT (false)
    num_tasks: int | None = None  # set by BertForMultiTask from its heads; the original scripts set it first
    extra: dict = field(default_factory=dict)  # keys this dataclass does not know, kept verbatim

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                             f"{self.num_attention_heads}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not one of {sorted(ACTIVATIONS)}")

    @classmethod
    def from_dict(cls, values, source="config"):
        missing = [key for key in REQUIRED_CONFIG_KEYS if key not in values]
        if missing:
            raise ValueError(f"{source} is not a BERT config: it lacks {', '.join(missing)}")
        types = {f.name: f.type for f in dataclasses.fields(cls) if f.name != "extra"}
        for key, expected in types.items():
            value = values.get(key)
            if value is not None and not _has_type(value, expected):
                raise ValueError(f"{source}: {key} must be of type {expected}, got {value!r}")
        extra = {k: v for k, v in values.items() if k not in types}
        return cls(**{k: v for k, v in values.items() if k in types}, extra=extra)

    @classmethod
    def from_json_file(cls, path):
        path = Path(path)
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"config file {path} does not exist") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"config file {path} is not valid JSON: {err}") from None
        if not isinstance(values, dict):
            raise ValueError(f"config file {path} is not a BERT config: expected a JSON object")
        return cls.from_dict(values, source=f"config file {path}")

    def to_dict(self):
        values = dataclasses.asdict(self)
        return {**values.pop("extra"), **values}

    def to_json_file(self, path):
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _has_type(value, annotation):
    """Whether a JSON value fits a config field's annotation (bool is not an int here; an int is a float)."""
    names = str(annotation)
    if isinstance(value, bool):
        return "bool" in names
    if isinstance(value, int):
        return "int" in names or "float" in names
    if isinstance(value, float):
        return "float" in names
    return isinstance(value, str) and "str" in names


class BertEmbeddings(nn.Module):
    """Word + position + segment embeddings, LayerNorm, dropout."""

    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids, position_ids):  # any shape (...) -> (..., H)
        embeddings = (self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
                      + self.token_type_embeddings(token_type_ids))
        return self.dropout(self.LayerNorm(embeddings))


@dataclass
class TokenLayout:
    """Where a batch's real tokens are. Packed (token_index given), hidden states are (N, H) over the N real tokens in
    row-major order; padded (token_index None), they are (B, T, H). Attention always runs on (B, T)."""

    key_mask: torch.Tensor  # (B, 1, 1, T) bool: True where a key may be attended
    token_index: torch.Tensor | None  # (N,) int64: flat positions b * T + t of the real tokens
    batch_size: int
    seq_len: int

    def pad(self, x):
        """(N, C) -> (B, T, C), zeros at padding; the identity when not packed."""
        if self.token_index is None:
            return x
        flat = x.new_zeros(self.batch_size * self.seq_len, x.shape[-1]).index_copy(0, self.token_index, x)
        return flat.view(self.batch_size, self.seq_len, -1)

    def pack(self, x):
        """(B, T, ...) -> (N, ...); the identity when not packed."""
        if self.token_index is None:
            return x
        return x.reshape(self.batch_size * self.seq_len, *x.shape[2:])[self.token_index]


class BertSelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention; with `our_attn`, EmBERT's task embeddings on Q, K and V."""

    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_prob = config.attention_probs_dropout_prob
        self.our_attn = config.our_attn
        if config.our_attn:
            self.query_task_emb = nn.Embedding(config.num_tasks, config.hidden_size)
            self.key_task_emb = nn.Embedding(config.num_tasks, config.hidden_size)
            self.value_task_emb = nn.Embedding(config.num_tasks, config.hidden_size)

    def project(self, hidden_states, task_id):
        """Q, K and V, each shaped as hidden_states (N, H) or (B, T, H), from one fused matmul."""
        weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])  # (3H, H)
        bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])  # (3H,)
        if self.our_attn:
            # The task's three embedding rows are constant over batch and positions: they are a bias.
            bias = bias + torch.cat([self.query_task_emb.weight[task_id], self.key_task_emb.weight[task_id],
                                     self.value_task_emb.weight[task_id]])
        return F.linear(hidden_states, weight, bias).chunk(3, dim=-1)

    def forward(self, hidden_states, layout, task_id):
        """hidden_states (N, H) packed or (B, T, H) padded, as `layout` says; returns the same shape."""
        B, T, H = layout.batch_size, layout.seq_len, hidden_states.shape[-1]
        q, k, v = (layout.pad(x).view(B, T, self.num_heads, H // self.num_heads).transpose(1, 2)  # (B, nh, T, hs)
                   for x in self.project(hidden_states, task_id))
        # Masking with a boolean is exact: the original's additive -10000 underflows to a zero probability too.
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=layout.key_mask,
                                                 dropout_p=self.dropout_prob if self.training else 0.0)
        return layout.pack(context.transpose(1, 2).reshape(B, T, H))


class BertSelfOutput(nn.Module):
    """Dense, dropout, residual, LayerNorm: shared by the attention and the feed-forward sub-layers."""

    def __init__(self, config, in_features):
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, residual):
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + residual)


class BertAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config, config.hidden_size)

    def forward(self, hidden_states, layout, task_id):
        return self.output(self.self(hidden_states, layout, task_id), hidden_states)


class BertIntermediate(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = ACTIVATIONS[config.hidden_act]

    def forward(self, hidden_states):  # (B, T, H) -> (B, T, intermediate)
        return self.activation(self.dense(hidden_states))


class BertLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertSelfOutput(config, config.intermediate_size)

    def forward(self, hidden_states, layout, task_id):
        attended = self.attention(hidden_states, layout, task_id)
        return self.output(self.intermediate(attended), attended)


class BertEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden_states, layout, task_id):
        for layer in self.layer:
            hidden_states = layer(hidden_states, layout, task_id)
        return hidden_states


class BertPooler(nn.Module):
    """tanh(dense(h[CLS])): the sentence representation the heads read."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, first_token_states):  # (B, H) -> (B, H)
        return torch.tanh(self.dense(first_token_states))


class BertModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)
        # Run the per-token layers on real tokens only (module docstring). Off for a model that reads the hidden
        # states of padding positions (Gated-BERT's gate) or computes as the original did (bench.py).
        self.pack_tokens = True

    def forward(self, input_ids, token_type_ids, attention_mask, task_id=0, token_index=None, packed_output=False):
        """input_ids, token_type_ids, attention_mask (1 = token, 0 = padding, real tokens first): (B, T).
        token_index: the flat positions of the real tokens, attention_mask.flatten().nonzero() (B*T positions),
        given by the caller to spare a device-to-host sync on CUDA (glue_processors.make_batch builds it).

        Returns the last hidden states and the pooled [CLS] output (B, H). The hidden states are (B, T, H) (zeros at
        padding when packed), or with `packed_output` the real tokens' states (N, H) in row-major order, as the
        per-token layers computed them (a per-token head reads them without padding them first).
        """
        B, T = input_ids.shape
        if token_index is None and (self.pack_tokens or packed_output):
            token_index = attention_mask.flatten().nonzero().squeeze(1)
        layout = TokenLayout(attention_mask[:, None, None, :].bool(), token_index if self.pack_tokens else None, B, T)
        positions = torch.arange(T, device=input_ids.device).expand(B, T)
        hidden_states = self.embeddings(layout.pack(input_ids), layout.pack(token_type_ids), layout.pack(positions))
        hidden_states = self.encoder(hidden_states, layout, task_id)  # (N, H) packed or (B, T, H)
        if not packed_output:
            hidden_states = layout.pad(hidden_states)  # (B, T, H)
            return hidden_states, self.pooler(hidden_states[:, 0])
        if not self.pack_tokens:
            hidden_states = hidden_states.reshape(B * T, -1)[token_index]  # (N, H)
        lengths = attention_mask.sum(1)
        first_tokens = torch.cumsum(lengths, 0) - lengths  # (B,): where each row's [CLS] sits among the N tokens
        return hidden_states, self.pooler(hidden_states[first_tokens])


NSP_CLASSES = 2  # next-sentence prediction: B follows A, or not
IGNORE_INDEX = -100  # a token without a label (glue_processors.IGNORE_INDEX): F.cross_entropy's default ignore_index


class BertLMPredictionHead(nn.Module):
    """BERT's masked-LM head: dense, activation, LayerNorm, then the word-embedding matrix (tied, so no decoder weight
    of its own: the checkpoints' `cls.predictions.decoder.weight` is a copy of the embeddings) plus a bias per word."""

    def __init__(self, config):
        super().__init__()
        self.transform = nn.Module()
        self.transform.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.activation = ACTIVATIONS[config.hidden_act]
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden_states, word_embeddings):  # (M, H), (V, H) -> (M, V)
        hidden_states = self.transform.LayerNorm(self.activation(self.transform.dense(hidden_states)))
        return F.linear(hidden_states, word_embeddings, self.bias)


class BertPreTrainingHeads(nn.Module):
    """`cls` of a BERT checkpoint: the masked-LM head and, for "pretrain" problems, next-sentence prediction (2 logits
    from the pooled output: 0 = B follows A, 1 = B is a random sentence)."""

    def __init__(self, config, next_sentence):
        super().__init__()
        self.predictions = BertLMPredictionHead(config)
        if next_sentence:
            self.seq_relationship = nn.Linear(config.hidden_size, NSP_CLASSES)


def _token_loss(logits, labels, denominator=None):
    """Cross-entropy summed over the labelled tokens (label -100, glue_processors.IGNORE_INDEX, is no loss) and divided
    by `denominator`: by default this batch's count of labelled tokens (its mean; 0 when it has none, where a mean
    would be NaN). A training step passes the count of the whole step's batch per micro-batch and process
    (multitask.token_denominators), so that the step's loss is the mean over all its tokens however the batch is split
    between micro-batches and processes: N processes then train exactly as one."""
    total = F.cross_entropy(logits.float(), labels, reduction="sum")
    if denominator is None:
        denominator = (labels != IGNORE_INDEX).sum().clamp(min=1)
    return total / denominator


# What a problem's type decides in the model (problems.TYPES decides the rest: labels, metrics, prediction files):
# the encoder output its head reads, "pooled" (the [CLS] state through the pooler, (B, H)), "tokens" (the states of
# the real tokens, packed row-major, (N, H)) or "masked" (the states of the M masked tokens, (M, H), through the
# masked-LM head; "pretrain" also reads the pooled output for next-sentence prediction), and its loss on the head's
# logits, (logits, labels, denominator) -> loss, where a per-token loss divides its sum by `denominator` (_token_loss;
# per-example losses are means over the batch's examples, which every micro-batch has equally many of).
# google-research/bert's create_model shape: the encoder returns states, a head per problem turns them into logits
# and a loss.
HEAD_INPUTS = {"cls": "pooled", "regression": "pooled", "multi_cls": "pooled", "seq_tag": "tokens",
               "mask_lm": "masked", "pretrain": "masked"}
LOSSES = {
    "cls": lambda logits, labels, denominator=None: F.cross_entropy(logits.float(), labels),  # labels (B,) class index
    # labels (B,): the target
    "regression": lambda logits, labels, denominator=None: F.mse_loss(logits.float().squeeze(-1), labels.float()),
    # labels (B, L): multi-hot
    "multi_cls": lambda logits, labels, denominator=None: F.binary_cross_entropy_with_logits(logits.float(),
                                                                                             labels.float()),
    # (N,) per packed token. [CLS], [SEP] and non-first word pieces are labelled -100: no loss there, and padding is
    # never a class (bert-multitask-learning's bug)
    "seq_tag": _token_loss,
    "mask_lm": _token_loss,  # logits (M, V), labels (M,): the original ids of the masked tokens
    # logits ((M, V), (B, 2)), labels ((M,), (B,)): BERT's pre-training loss, masked LM plus next sentence
    "pretrain": lambda logits, labels, denominator=None: (_token_loss(logits[0], labels[0], denominator)
                                                          + F.cross_entropy(logits[1].float(), labels[1])),
}
LM_TYPES = tuple(kind for kind, reads in HEAD_INPUTS.items() if reads == "masked")  # heads in `cls`, no classifier.N


def glue_problem_types(num_labels_per_task):
    """GLUE's heads by their width, as the original code chose its loss: 1 output is regression (STS-B)."""
    return ["regression" if n == 1 else "cls" for n in num_labels_per_task]


class BertForMultiTask(nn.Module):
    """Shared BERT (or EmBERT) encoder, one linear head per task.

    `num_labels_per_task[t]` is the number of outputs of head t and `problem_types[t]` its problem type (a key of
    HEAD_INPUTS), which decides what the head reads and its loss; by default GLUE's (`glue_problem_types`).
    `num_groups`: the rows of the task embeddings (EmBERT), one per group of problems trained together on one batch
    ("a&b" in --tasks); by default one per head, and then a task id indexes both.
    """

    def __init__(self, config, num_labels_per_task, problem_types=None, num_groups=None):
        super().__init__()
        num_tasks = num_groups or len(num_labels_per_task)
        if config.num_tasks is not None and config.num_tasks != num_tasks:
            raise ValueError(f"config.num_tasks is {config.num_tasks} but {num_tasks} task rows were asked for "
                             f"({len(num_labels_per_task)} heads: {list(num_labels_per_task)})")
        problem_types = list(problem_types or glue_problem_types(num_labels_per_task))
        unknown = [kind for kind in problem_types if kind not in HEAD_INPUTS]
        if len(problem_types) != len(num_labels_per_task) or unknown:
            raise ValueError(f"problem_types {problem_types} must name one of {list(HEAD_INPUTS)} per head")
        config = dataclasses.replace(config, num_tasks=num_tasks)
        self.config = config
        self.num_labels_per_task = list(num_labels_per_task)
        self.problem_types = problem_types
        self.bert = BertModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        # classifier.N is problem N's head; a masked-LM or pre-training problem's slot holds no parameters (its head
        # is the shared `cls`, BERT's pre-training heads), so every other head keeps its index and its name.
        self.classifier = nn.ModuleList(nn.Identity() if kind in LM_TYPES else nn.Linear(config.hidden_size, n)
                                        for n, kind in zip(num_labels_per_task, problem_types))
        if any(kind in LM_TYPES for kind in problem_types):
            self.cls = BertPreTrainingHeads(config, next_sentence="pretrain" in problem_types)
        self.apply(partial(init_weights, std=config.initializer_range))

    def forward(self, input_ids, token_type_ids, attention_mask, task_id, labels=None, token_index=None, heads=None,
                masked_index=None, denominators=None):
        """Logits of head `task_id`, and its loss when labels are given (else None). A "pooled" head gives
        (B, num_labels) logits for labels (B,) or (B, L); a "tokens" head (N, num_labels) for the N real tokens in
        row-major order, labels (N,) (make_batch's token_labels); a masked-LM head (M, vocab_size) for the M masked
        tokens at `masked_index` (positions among the N packed tokens, (M,)), labels (M,) their original ids, and a
        pre-training head the pair ((M, vocab_size), (B, 2)) for labels ((M,), (B,)). token_index: optional, see
        BertModel.forward. denominators: what a per-token loss divides its sum by (see _token_loss; default: its
        count of labelled tokens, a mean).

        heads: the heads of a group (list of head indices) reading one encoder pass of task row `task_id`; then the
        logits, the labels (when given), the denominators (when given) and the losses are lists, one per head."""
        kinds = [self.problem_types[h] for h in ([task_id] if heads is None else heads)]
        per_token = any(HEAD_INPUTS[kind] != "pooled" for kind in kinds)
        hidden, pooled = self.encode(input_ids, token_type_ids, attention_mask, task_id, token_index, per_token)
        if heads is None:
            logits = self.head_logits(task_id, hidden, pooled, masked_index)
            return logits, None if labels is None else LOSSES[kinds[0]](logits, labels, denominators)
        all_logits = [self.head_logits(head, hidden, pooled, masked_index) for head in heads]
        denominators = denominators or [None] * len(heads)
        losses = [None if labels is None else LOSSES[kind](logits, labels[i], denominators[i])
                  for i, (kind, logits) in enumerate(zip(kinds, all_logits))]
        return all_logits, losses

    def head_logits(self, head, hidden, pooled, masked_index):
        """One head's logits from the encoder's outputs: hidden (N, H) packed (for heads not on "pooled"), pooled
        (B, H)."""
        kind = self.problem_types[head]
        if kind in LM_TYPES:  # BERT's pre-training heads read the states as they are (no dropout of their own)
            words = self.cls.predictions(hidden[masked_index], self.bert.embeddings.word_embeddings.weight)
            return words if kind == "mask_lm" else (words, self.cls.seq_relationship(pooled))
        return self.classifier[head](self.dropout(hidden if HEAD_INPUTS[kind] == "tokens" else pooled))

    def encode(self, input_ids, token_type_ids, attention_mask, task_id, token_index, per_token):
        """The encoder's pooled output and, for a per-token head, the real tokens' states (N, H). When the layers run
        padded (Gated-BERT, and --compile's CUDA graphs, which need fixed shapes) the encoder returns (B, T, H) and
        the real tokens are gathered here, outside it, so a graph never sees the batch's varying token count."""
        packed_output = per_token and self.bert.pack_tokens
        hidden, pooled = self.bert(input_ids, token_type_ids, attention_mask, task_id, token_index,
                                   packed_output=packed_output)
        if per_token and not packed_output:
            if token_index is None:
                token_index = attention_mask.flatten().nonzero().squeeze(1)
            hidden = hidden.reshape(-1, hidden.shape[-1])[token_index]  # (N, H)
        return hidden, pooled

    def shape_hint(self, state):
        """Name the config setting a checkpoint's shape mismatch most likely comes from ("" if none)."""
        words = state.get("bert.embeddings.word_embeddings.weight")
        if words is None:
            return ""
        if words.shape[1] != self.config.hidden_size:
            return f" (the config's hidden_size is {self.config.hidden_size}, the checkpoint's is {words.shape[1]})"
        if words.shape[0] != self.config.vocab_size:
            return f" (the config's vocab_size is {self.config.vocab_size}, the checkpoint's is {words.shape[0]})"
        return ""


def init_weights(module, std):
    """New parameters: N(0, std) weights and zero biases (SPEC 5.4); LayerNorm starts as the identity."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=std)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoints: every format the project meets, mapped onto our names in one place.

# Names of plain BERT's parameters (after mapping): these must all come from a pretrained checkpoint. Everything
# else (task embeddings, heads, Gated-BERT's adapters and gates) may start fresh.
BERT_PARAMETER = re.compile(
    r"bert\.(embeddings\.(word_embeddings|position_embeddings|token_type_embeddings|LayerNorm)"
    r"|encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.(dense|LayerNorm)"
    r"|intermediate\.dense|output\.(dense|LayerNorm))"
    r"|pooler\.dense)\.(weight|bias)")
# Keys a checkpoint may hold that no model here uses: position-id buffers and the masked-LM decoder's weight (a copy
# of the word embeddings, to which our head is tied).
IGNORED_KEY = re.compile(r"(^|\.)(position_ids|cls\.predictions\.decoder\.weight)$")
# The masked-LM output bias: Hugging Face's files hold it twice (decoder.bias is tied to predictions.bias).
LM_BIAS_KEYS = ("cls.predictions.decoder.bias", "cls.predictions.bias")
# Prefixes left by wrappers: DistributedDataParallel ("module.") and torch.compile ("_orig_mod.").
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# File names looked for, in this order, when --init_checkpoint is a directory.
CHECKPOINT_FILES = ("model.safetensors", "pytorch_model.bin", "best_model.pth")


# Leading bytes by which a checkpoint's format is recognised (by content, not by file name): torch.save's zip
# archive (torch >= 1.6), its older pickle stream (protocol 2 or later starts with 0x80), and safetensors' 8-byte
# little-endian header length followed by the JSON header.
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_MAGIC = b"\x80"
SAFETENSORS_LENGTH_BYTES = 8
# Bytes read to recognise a file, and characters of it quoted when it is text.
SNIFF_BYTES, QUOTED_CHARS = 64, 40


def checkpoint_format(path):
    """"safetensors" or "torch" by the file's first bytes; ValueError describing the file otherwise."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    if size == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes)")
    if head.startswith((ZIP_MAGIC, PICKLE_MAGIC)):
        return "torch"
    header_length = int.from_bytes(head[:SAFETENSORS_LENGTH_BYTES], "little")
    if len(head) > SAFETENSORS_LENGTH_BYTES and head[SAFETENSORS_LENGTH_BYTES:][:1] == b"{":
        if SAFETENSORS_LENGTH_BYTES + header_length > size:
            raise ValueError(f"checkpoint {path} is truncated: {size} bytes, fewer than its safetensors header's own "
                             f"{SAFETENSORS_LENGTH_BYTES + header_length}")
        return "safetensors"
    text = head.decode("utf-8", errors="replace")[:QUOTED_CHARS]
    if "\ufffd" not in text and all(c.isprintable() or c.isspace() for c in text):
        looks = f"it starts with text: {text.strip()!r}"
    else:
        looks = f"its first bytes are {head[:SAFETENSORS_LENGTH_BYTES].hex(' ')}"
    raise ValueError(f"checkpoint {path} is not a PyTorch or safetensors file ({looks})")


def safetensors_size(path):
    """The bytes a safetensors file must have: its header's length plus the end of the last tensor's data."""
    with open(path, "rb") as f:
        header_length = int.from_bytes(f.read(SAFETENSORS_LENGTH_BYTES), "little")
        header = json.loads(f.read(header_length))
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    return SAFETENSORS_LENGTH_BYTES + header_length + max(ends, default=0)


def _starts_with(path, magic):
    with open(path, "rb") as f:
        return f.read(len(magic)) == magic


def unreadable(path, fmt, error):
    """A one-line ValueError for a checkpoint file its reader rejected: truncated (with sizes) or damaged."""
    size = path.stat().st_size
    if fmt == "safetensors":
        try:
            expected = safetensors_size(path)
        except (ValueError, KeyError, TypeError):
            return ValueError(f"checkpoint {path} is a damaged safetensors file (its header is not valid JSON)")
        if size < expected:
            return ValueError(f"checkpoint {path} is truncated: {size} of {expected} bytes")
    elif not zipfile.is_zipfile(path) and _starts_with(path, ZIP_MAGIC):
        return ValueError(f"checkpoint {path} is truncated: {size} bytes of a PyTorch zip archive whose end (the zip "
                          "directory) is missing")
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ValueError(f"checkpoint {path} is damaged: it is a {fmt} file that cannot be read ({first_line})")


def load_torch_file(path, weights_only=True):
    """torch.load onto the CPU; any unreadable file (not a checkpoint, truncated, damaged) becomes one ValueError that
    names the file and what it looks like."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    fmt = checkpoint_format(path)
    if fmt != "torch":
        raise ValueError(f"checkpoint {path} is a safetensors file, not a PyTorch training checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as err:  # torch.load raises RuntimeError, EOFError, UnpicklingError, ... for a bad file
        raise unreadable(path, fmt, err) from None


def read_state_dict(path):
    """A state dict from a safetensors or torch file (told apart by content), a training checkpoint's "model" entry,
    or a directory holding one of CHECKPOINT_FILES."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in CHECKPOINT_FILES if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(f"no checkpoint in directory {path}: looked for {', '.join(CHECKPOINT_FILES)}")
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if checkpoint_format(path) == "safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(path), path
        except Exception as err:  # SafetensorError and others, for a truncated or damaged file
            raise unreadable(path, "safetensors", err) from None
    state = load_torch_file(path)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):  # a resumable training checkpoint
        state = state["model"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"checkpoint {path} is not a state dict of tensors")
    return state, path


def map_key(key):
    """Our name for a checkpoint key, or None for keys no model here uses."""
    while key.startswith(WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    if IGNORED_KEY.search(key):
        return None
    # Google BERT converted the old way, and the original EmBERT code, name LayerNorm parameters gamma and beta.
    key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", key)
    key = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key)
    if key == LM_BIAS_KEYS[0]:
        key = LM_BIAS_KEYS[1]
    if not key.startswith(("bert.", "classifier.", "cls.")):  # a bare encoder's state dict (no "bert." prefix)
        key = "bert." + key
    return key


def map_state_dict(raw):
    """A checkpoint's tensors under our parameter names (keys no model here uses dropped)."""
    return {name: value for key, value in raw.items() if (name := map_key(key)) is not None}


def unused_pretraining_heads(model, state):
    """The checkpoint's keys of BERT's pre-training heads that `model` does not use: all of `cls.*` for a model
    without mask_lm / pretrain problems, `cls.seq_relationship.*` for one without next-sentence prediction. (Any other
    key the model lacks stays an error: a misnamed head is not silently left fresh.)"""
    cls = getattr(model, "cls", None)
    unused = "cls." if cls is None else None if hasattr(cls, "seq_relationship") else "cls.seq_relationship."
    return [key for key in state if unused is not None and key.startswith(unused)]


def load_pretrained(model, path, require_all=False):
    """Load a checkpoint into `model`, by content rather than file name. Returns the names left freshly initialised.

    Accepted: Google BERT converted to PyTorch the old way, Hugging Face BERT (`bert.` prefix or none) as .bin or
    .safetensors or a directory holding one, our own checkpoints, and the original EmBERT / Gated-BERT code's state
    dicts. Every BERT encoder weight must be present; task parameters (task embeddings, heads, adapters, gates) may be
    absent and stay fresh unless `require_all` (loading a trained multi-task model). Any key the model does not have,
    and any shape mismatch, is an error naming the keys and the file: nothing is silently left random.
    """
    raw, path = read_state_dict(path)
    return load_mapped_state(model, map_state_dict(raw), path, require_all)


def load_mapped_state(model, state, source, require_all=False):
    """`load_pretrained` for a state dict already under our names (`map_state_dict`); `source` names it in errors."""
    own = model.state_dict()
    unused = set(unused_pretraining_heads(model, state))
    state = {key: value for key, value in state.items() if key not in unused}
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        if any(k.startswith("classifier.") for k in unexpected):
            hint = "its task heads do not match this model's task list"
        elif any("_task_emb" in k for k in unexpected):
            hint = "it has task embeddings: check the config's our_attn"
        else:
            hint = "check the model type (EmBERT or Gated-BERT) and the config"
        raise ValueError(f"checkpoint {source} has {len(unexpected)} parameter(s) this model does not "
                         f"({hint}): {_first(unexpected)}")
    missing = [k for k in own if k not in state and (require_all or BERT_PARAMETER.fullmatch(k))]
    if missing:
        raise ValueError(f"checkpoint {source} lacks {len(missing)} parameter(s): {_first(missing)}")
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise ValueError(f"checkpoint {source}: {key} has shape {tuple(value.shape)} but the model's is "
                             f"{tuple(own[key].shape)}{model.shape_hint(state)}")
    model.load_state_dict(state, strict=False)
    return [k for k in own if k not in state]


def _first(names, shown=8):
    return ", ".join(names[:shown]) + (" ..." if len(names) > shown else "")


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())
