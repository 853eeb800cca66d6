"""PALs: multi-task BERT with projected attention layers (Stickland & Murray, "BERT and PALs", ICML 2019).

Differences from modeling.py (everything else is imported from it):
- `BertConfig` gains `hidden_size_aug` (the PAL's width, 204 as the original's `pals_config.json`, --h_aug through
  `configure`; a multiple of the PAL's 6 heads) and the original config's switches `mult` and `pals`, which must be
  true (false selects variants of the original code that are not PALs). `our_attn` must be false: PALs has no task
  embeddings.
- Every layer l has, for every task t, a projected attention layer (`PAL`) beside its feed-forward block, reading the
  layer's input h:
      PAL_t,l(h) = GELU(V_D,t · A_t,l(V_E,t · h))
  V_E,t: H -> hidden_size_aug and V_D,t: hidden_size_aug -> H are linear layers with bias, one pair per task shared
  by all layers; A_t,l is BERT self-attention in hidden_size_aug dimensions with 6 heads (query, key, value with bias,
  the layer's key mask, softmax, attention dropout) and no output projection.
- The layer's output is LayerNorm(dropout(W_out · intermediate) + attention_output + PAL_t,l(h)): the PAL is added to
  the residual input of the output LayerNorm (`BertLayer`).
- The shared V_E,t and V_D,t are one module each, registered under `bert.encoder.mult_aug_dense.{t}` and
  `mult_aug_dense2.{t}` and, as the original does, under every layer's `multi_layers.{t}.aug_dense` and `aug_dense2`:
  `state_dict()` lists every alias (the original's checkpoints hold them all), `parameters()` each tensor once.
  `load_state_dict` refuses a state dict whose aliases disagree, naming them.
Parameter names are the original BERT-and-PALs code's (`multi_layers.{t}.attn.query`, `mult_aug_dense`, ...), so its
checkpoints load through checkpoints.load_pretrained unchanged, and Google / Hugging Face BERT weights leave only the
PALs and the heads fresh. The PAL's per-token parts (V_E, V_D, its query/key/value) run on the packed real tokens like
the rest of the layer, its attention on the padded layout (modeling.TokenLayout). At BERT-base sizes with the eight
GLUE heads: 124,053,232 parameters (plain multi-task BERT: 109,494,544; the paper's 1.13x).
"""
import dataclasses
import re
from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

import checkpoints
import modeling

# The PAL's attention heads: the original builds it as BERTSelfAttention(config, 6), whatever the model's size.
PAL_ATTENTION_HEADS = 6
# The shared projections under the encoder (canonical names) and under each layer's PAL (aliases), per task.
SHARED_PROJECTIONS = {"mult_aug_dense": "aug_dense", "mult_aug_dense2": "aug_dense2"}
# A mapped checkpoint key only PALs models have: V_E of the first task. Its shape is (hidden_size_aug, hidden).
PALS_KEY = re.compile(r"bert\.encoder\.mult_aug_dense\.0\.weight")


@dataclass
class BertConfig(modeling.BertConfig):
    """modeling.BertConfig plus the PAL's width and the original PALs config's switches."""

    hidden_size_aug: int = 204  # width of every PAL (the original's pals_config.json); --h_aug overrides
    mult: bool = True  # the original's "a module per task in every layer" switch: PALs needs it on
    pals: bool = True  # the original's "those modules are PALs" switch (off: low-rank adapters, not implemented)

    def __post_init__(self):
        super().__post_init__()
        if not (self.mult and self.pals):
            raise ValueError(f"mult is {self.mult} and pals is {self.pals}: a PALs model needs both true (the "
                             "original's plain multi-task BERT is run_multi_task.py with our_attn false)")
        if self.our_attn:
            raise ValueError("our_attn is true: PALs has no task-embedded attention; set it false (EmBERT is "
                             "run_multi_task.py)")
        if self.hidden_size_aug < 1 or self.hidden_size_aug % PAL_ATTENTION_HEADS:
            raise ValueError(f"hidden_size_aug {self.hidden_size_aug} must be a positive multiple of the PAL's "
                             f"{PAL_ATTENTION_HEADS} attention heads")

    @classmethod
    def from_dict(cls, values, source="config"):
        """modeling.BertConfig.from_dict; the checks above name `source` too."""
        try:
            return super().from_dict(values, source)
        except ValueError as err:  # modeling's own messages already start with the source
            message = str(err)
            raise ValueError(message if message.startswith(source) else f"{source}: {message}") from None


class PAL(nn.Module):
    """One task's projected attention layer in one layer: GELU(V_D · A(V_E · h)), V_E and V_D shared by all layers."""

    def __init__(self, config, aug_dense, aug_dense2):
        super().__init__()
        self.aug_dense = aug_dense  # V_E: (H -> hidden_size_aug), the task's, shared
        self.aug_dense2 = aug_dense2  # V_D: (hidden_size_aug -> H), the task's, shared
        # BERT self-attention in the small space; its result is the heads' context vectors, with no output projection.
        self.attn = modeling.BertSelfAttention(dataclasses.replace(
            config, hidden_size=config.hidden_size_aug, num_attention_heads=PAL_ATTENTION_HEADS))

    def forward(self, hidden_states, layout):
        """hidden_states (N, H) packed or (B, T, H) padded, as `layout` says; returns the same shape."""
        projected = self.aug_dense(hidden_states)  # (N, hidden_size_aug)
        attended = self.attn(projected, layout, task_id=None)  # no task embeddings: the task id is not read
        return F.gelu(self.aug_dense2(attended))  # the exact erf GELU, as the original's `gelu`


class BertLayer(modeling.BertLayer):
    """A BERT layer whose output LayerNorm also adds the batch task's PAL of the layer's input."""

    def __init__(self, config, aug_dense, aug_dense2):
        super().__init__(config)
        self.multi_layers = nn.ModuleList(PAL(config, down, up) for down, up in zip(aug_dense, aug_dense2))

    def forward(self, hidden_states, layout, task_id):
        attended = self.attention(hidden_states, layout, task_id)
        residual = attended + self.multi_layers[task_id](hidden_states, layout)
        return self.output(self.intermediate(attended), residual)


class BertEncoder(modeling.BertEncoder):
    """The PAL layers, and each task's V_E / V_D once more under the encoder's own names (the original's)."""

    def __init__(self, config):
        super().__init__(dataclasses.replace(config, num_hidden_layers=0))  # an empty layer list, filled below
        H, r = config.hidden_size, config.hidden_size_aug
        aug_dense = nn.ModuleList(nn.Linear(H, r) for _ in range(config.num_tasks))
        aug_dense2 = nn.ModuleList(nn.Linear(r, H) for _ in range(config.num_tasks))
        self.layer.extend(BertLayer(config, aug_dense, aug_dense2) for _ in range(config.num_hidden_layers))
        self.mult_aug_dense = aug_dense
        self.mult_aug_dense2 = aug_dense2


class BertForMultiTask(modeling.BertForMultiTask):
    """modeling.BertForMultiTask with a PAL per task in every layer."""

    def __init__(self, config, num_labels_per_task, types=None, num_groups=None, problems=None):
        # modeling's model without layers (embeddings, pooler, heads, initialised), then the PAL encoder: building
        # plain layers only to replace them would allocate and initialise the whole encoder twice.
        super().__init__(dataclasses.replace(config, num_hidden_layers=0), num_labels_per_task, types, num_groups,
                         problems)
        self.config = self.bert.config = dataclasses.replace(self.config, num_hidden_layers=config.num_hidden_layers)
        self.bert.encoder = BertEncoder(self.config)
        for module in self.bert.encoder.modules():  # modules() yields each shared projection once
            modeling.init_weights(module, std=self.config.initializer_range)

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """nn.Module.load_state_dict, once the state dict's copies of every shared projection agree: a shared module
        is loaded from each of its names in turn, so disagreeing copies would silently leave the last one."""
        check_aliases(state_dict, self.config)
        return super().load_state_dict(state_dict, strict, assign)

    def shape_hint(self, state):
        hint = super().shape_hint(state)  # a hidden_size mismatch also changes the PALs' shapes
        if hint:
            return hint
        width = hidden_size_aug_of(state)
        if width is not None and width != self.config.hidden_size_aug:
            return f" (the config's hidden_size_aug is {self.config.hidden_size_aug}, the checkpoint's is {width})"
        return ""


def configure(config, max_seq_length, h_aug):
    """The model config as the training flags make it: --h_aug sets the PAL width, as the original's flag did.
    max_seq_length changes nothing: PALs batches pad to their longest example, as EmBERT's."""
    return config if h_aug is None else dataclasses.replace(config, hidden_size_aug=h_aug)


def shared_names(config):
    """Every name of each shared projection tensor: [[canonical, alias in layer 0, ..., alias in layer L-1], ...]."""
    groups = []
    for encoder_name, pal_name in SHARED_PROJECTIONS.items():
        for t in range(config.num_tasks):
            for param in ("weight", "bias"):
                groups.append([f"bert.encoder.{encoder_name}.{t}.{param}"]
                              + [f"bert.encoder.layer.{n}.multi_layers.{t}.{pal_name}.{param}"
                                 for n in range(config.num_hidden_layers)])
    return groups


def check_aliases(state, config):
    """Raise ValueError naming every key of `state` (our names) whose shared-projection copy differs from the first
    copy of that tensor in the state dict (the canonical name when present)."""
    disagreeing = []
    for names in shared_names(config):
        present = [name for name in names if name in state]
        disagreeing += [f"{name} != {present[0]}" for name in present[1:]
                        if state[name].shape != state[present[0]].shape or not state[name].equal(state[present[0]])]
    if disagreeing:
        raise ValueError(f"the copies of PALs' shared projections disagree in {len(disagreeing)} place(s): "
                         f"{checkpoints.first_names(disagreeing)}; V_E and V_D of a task are one tensor shared by every "
                         "layer, so a PALs checkpoint holds equal copies")


def hidden_size_aug_of(state):
    """The PAL width of a mapped PALs state dict (from V_E's shape), or None when it has no PALs."""
    down = next((value for key, value in state.items() if PALS_KEY.fullmatch(key)), None)
    return None if down is None else down.shape[0]
