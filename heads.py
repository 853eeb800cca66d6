"""Heads: one module per way of reading the encoder, built by a problem's type (problem_types.py).

The encoder gives an `EncoderOutput`; a head turns it into its problem's logits. Each head sits in the model's
`classifier.N` slot (N: the problem's position in the run), so its parameters keep the original EmBERT code's names
(`classifier.N.weight`, `classifier.N.bias`). The masked-LM heads have no parameters of their own: they read BERT's
pre-training heads (`cls`, shared by every masked-LM problem of the model, tied to the word embeddings), which keep
the pretrained checkpoints' names (`cls.predictions.*`, `cls.seq_relationship.*`).
"""
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class EncoderOutput:
    """What the heads read from one encoder pass over a batch of B examples with N real tokens."""

    pooled: torch.Tensor  # (B, H): tanh(dense(h[CLS]))
    tokens: torch.Tensor | None  # (N, H): the real tokens' states, row-major; None when no head reads them
    masked_index: torch.Tensor | None = None  # (M,): where the masked tokens sit among the N
    pretraining: nn.Module | None = None  # the model's `cls` (modeling.BertPreTrainingHeads), for masked-LM heads
    word_embeddings: torch.Tensor | None = None  # (V, H): the masked-LM decoder's tied weight
    attention_mask: torch.Tensor | None = None  # (B, T): 1 at real tokens (a seq2seq decoder pads `tokens` back)
    token_index: torch.Tensor | None = None  # (N,): the real tokens' flat positions b * T + t, with `tokens`
    # (E,): the rows that stand for an example (word inputs: the rows that start a sentence); None: every row
    example_index: torch.Tensor | None = None


@dataclass
class PreTrainingLogits:
    """BERT's pre-training outputs: masked-LM logits (M, V) and next-sentence logits (B, 2)."""

    masked_lm: torch.Tensor
    next_sentence: torch.Tensor


class PooledHead(nn.Linear):
    """dropout(pooled) -> linear: (B, H) -> (B, num_labels), or (E, num_labels) for the E rows of `example_index`
    (a sentence's later pieces are no examples). cls, regression (one output) and multi_cls."""

    def __init__(self, config, num_labels):
        super().__init__(config.hidden_size, num_labels)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, encoded):
        pooled = encoded.pooled if encoded.example_index is None else encoded.pooled[encoded.example_index]
        return super().forward(self.dropout(pooled))


class TokenHead(PooledHead):
    """dropout(token states) -> linear: (N, H) -> (N, num_labels), one row per real token. seq_tag."""

    def forward(self, encoded):
        return nn.Linear.forward(self, self.dropout(encoded.tokens))


class MaskedLMHead(nn.Module):
    """The shared masked-LM head at the masked tokens: (M, H) -> (M, V). No parameters of its own (`cls`)."""

    def forward(self, encoded):
        return encoded.pretraining.predictions(encoded.tokens[encoded.masked_index], encoded.word_embeddings)


class PreTrainingHead(MaskedLMHead):
    """Masked LM at the masked tokens and next-sentence prediction from the pooled output: PreTrainingLogits."""

    def forward(self, encoded):
        return PreTrainingLogits(super().forward(encoded), encoded.pretraining.seq_relationship(encoded.pooled))
