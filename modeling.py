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
so every format loads through checkpoints.load_pretrained with a plain name mapping. The heads are built by each
problem's type (problem_types.py, heads.py); the forward returns one `MultiTaskOutput` whatever they are.
"""
import dataclasses
import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import heads as head_modules
import problem_types

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
        self.inputs = None  # images and feature vectors: modeling_inputs.add_input_embeddings sets it when needed

    def forward(self, input_ids, token_type_ids, position_ids, inputs=None):  # any shape (...) -> (..., H)
        """inputs: a batch's images and feature vectors, a function of the summed embeddings that puts theirs in
        (modeling_inputs.InputEmbeddings, bound by BertModel.forward); None for text."""
        embeddings = (self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
                      + self.token_type_embeddings(token_type_ids))
        if inputs is not None:
            embeddings = inputs(embeddings)
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

    def forward(self, input_ids, token_type_ids, attention_mask, task_id=0, token_index=None, packed_output=False,
                inputs=None):
        """input_ids, token_type_ids, attention_mask (1 = token, 0 = padding, real tokens first): (B, T).
        token_index: the flat positions of the real tokens, attention_mask.flatten().nonzero() (B*T positions),
        given by the caller to spare a device-to-host sync on CUDA (glue_processors.make_batch builds it).

        inputs: the batch's images and feature vectors (features.make_batch's "inputs"), or None (text).

        Returns the last hidden states and the pooled [CLS] output (B, H). The hidden states are (B, T, H) (zeros at
        padding when packed), or with `packed_output` the real tokens' states (N, H) in row-major order, as the
        per-token layers computed them (a per-token head reads them without padding them first).
        """
        B, T = input_ids.shape
        if token_index is None and (self.pack_tokens or packed_output or inputs is not None):
            token_index = attention_mask.flatten().nonzero().squeeze(1)
        layout = TokenLayout(attention_mask[:, None, None, :].bool(), token_index if self.pack_tokens else None, B, T)
        positions = torch.arange(T, device=input_ids.device).expand(B, T)
        if inputs is not None:  # the patches' and vectors' embeddings put into their rows (modeling_inputs.py)
            inputs = partial(self.embeddings.inputs, inputs=inputs, token_index=token_index, packed=self.pack_tokens)
        hidden_states = self.embeddings(layout.pack(input_ids), layout.pack(token_type_ids), layout.pack(positions),
                                        inputs)
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
    """`cls` of a BERT checkpoint: the masked-LM head and, when a problem predicts next sentences, next-sentence
    prediction (2 logits from the pooled output: 0 = B follows A, 1 = B is a random sentence)."""

    def __init__(self, config, next_sentence):
        super().__init__()
        self.predictions = BertLMPredictionHead(config)
        if next_sentence:
            self.seq_relationship = nn.Linear(config.hidden_size, NSP_CLASSES)


@dataclass
class MultiTaskOutput:
    """What BertForMultiTask.forward returns, whatever the heads: one entry per head asked for, in that order."""

    logits: list  # a head's logits: (B, L), (N, L), (M, V), heads.PreTrainingLogits, or a seq2seq head's
    # modeling_seq2seq.EncoderMemory (its decoder runs in its type's loss, and in generation)
    losses: list | None = None  # each head's loss (a 0-dim tensor), when labels were given


class BertForMultiTask(nn.Module):
    """Shared BERT (or EmBERT) encoder, one head per problem, built by its type.

    `num_labels_per_task[t]` is the number of outputs of head t and `types[t]` its problem type's name (a key of
    problem_types.TYPES), which builds the head and decides its loss; by default GLUE's by width
    (problem_types.glue_types). `num_groups`: the rows of the task embeddings (EmBERT), one per group of problems
    trained together on one batch ("a&b" in --tasks); by default one per head, and then a task id indexes both.
    `problems`: each head's problem_record.Problem, for a type whose head needs more than its width (a seq2seq
    decoder: its layers and vocabulary).
    """

    def __init__(self, config, num_labels_per_task, types=None, num_groups=None, problems=None):
        super().__init__()
        num_tasks = num_groups or len(num_labels_per_task)
        if config.num_tasks is not None and config.num_tasks != num_tasks:
            raise ValueError(f"config.num_tasks is {config.num_tasks} but {num_tasks} task rows were asked for "
                             f"({len(num_labels_per_task)} heads: {list(num_labels_per_task)})")
        names = list(types or problem_types.glue_types(num_labels_per_task))
        if len(names) != len(num_labels_per_task) or any(name not in problem_types.TYPES for name in names):
            raise ValueError(f"types {names} must name one of {list(problem_types.TYPES)} per head")
        config = dataclasses.replace(config, num_tasks=num_tasks)
        self.config = config
        self.num_labels_per_task = list(num_labels_per_task)
        self.head_types = [problem_types.get(name) for name in names]
        self.bert = BertModel(config)
        # classifier.N is problem N's head (the original code's name); a masked-LM problem's head holds no
        # parameters (it reads the shared `cls`, BERT's pre-training heads), so every other head keeps its name.
        self.classifier = nn.ModuleList(kind.build_head(config, n, problem) for n, kind, problem
                                        in zip(num_labels_per_task, self.head_types,
                                               problems or [None] * len(self.head_types)))
        if any(kind.reads == "masked" for kind in self.head_types):
            self.cls = BertPreTrainingHeads(config, any(kind.next_sentence for kind in self.head_types))
        self.apply(partial(init_weights, std=config.initializer_range))

    def forward(self, input_ids, token_type_ids, attention_mask, task_id, labels=None, token_index=None, heads=None,
                masked_index=None, denominators=None, example_index=None, inputs=None):
        """The logits of `heads` (head indices, default [task_id]) reading one encoder pass of task row `task_id`,
        and with `labels` (one per head) their losses. A head on the pooled output gives (B, num_labels) logits for
        labels (B,) or (B, L); a head on the tokens (N, num_labels) for the N real tokens in row-major order, labels
        (N,); a masked-LM head (M, vocab_size) for the M masked tokens at `masked_index` (positions among the N
        packed tokens, (M,)), labels (M,) their original ids. token_index: optional, see BertModel.forward.
        denominators: one per head, what a per-token loss divides its sum by (problem_types.token_loss; None: its
        count of labelled tokens, a mean), or a per-example loss on word inputs. example_index: (E,), the rows a head
        on the pooled output reads when not every row is an example (a cut sentence's first row only); its logits
        are then (E, num_labels). inputs: the batch's images and feature vectors (see BertModel.forward)."""
        heads = [task_id] if heads is None else heads
        kinds = [self.head_types[h] for h in heads]
        per_token = any(kind.reads != "pooled" for kind in kinds)
        encoded = self.encode(input_ids, token_type_ids, attention_mask, task_id, token_index, per_token, inputs)
        encoded.masked_index, encoded.example_index = masked_index, example_index
        logits = [self.classifier[h](encoded) for h in heads]
        if labels is None:
            return MultiTaskOutput(logits)
        denominators = denominators or [None] * len(heads)
        return MultiTaskOutput(logits, [kind.loss(output, target, denominator) for kind, output, target, denominator
                                        in zip(kinds, logits, labels, denominators)])

    def encode(self, input_ids, token_type_ids, attention_mask, task_id, token_index, per_token, inputs=None):
        """The encoder's pooled output and, for a per-token head, the real tokens' states (N, H), as a
        heads.EncoderOutput. When the layers run padded (Gated-BERT, and --compile's CUDA graphs, which need fixed
        shapes) the encoder returns (B, T, H) and the real tokens are gathered here, outside it, so a graph never
        sees the batch's varying token count."""
        packed_output = per_token and self.bert.pack_tokens
        if per_token and token_index is None:
            token_index = attention_mask.flatten().nonzero().squeeze(1)
        hidden, pooled = self.bert(input_ids, token_type_ids, attention_mask, task_id, token_index,
                                   packed_output=packed_output, inputs=inputs)
        if per_token and not packed_output:
            hidden = hidden.reshape(-1, hidden.shape[-1])[token_index]  # (N, H)
        return head_modules.EncoderOutput(pooled, hidden if per_token else None,
                                   pretraining=getattr(self, "cls", None),
                                   word_embeddings=self.bert.embeddings.word_embeddings.weight,
                                   attention_mask=attention_mask, token_index=token_index if per_token else None)

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
    """New parameters: N(0, std) weights and zero biases; LayerNorm starts as the identity."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=std)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)



def count_parameters(model):
    return sum(p.numel() for p in model.parameters())
