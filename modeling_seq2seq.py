"""A BERT decoder for sequence-to-sequence problems (BERT2BERT, Rothe et al. 2020), and generation from it.

The decoder is BERT's, as Hugging Face's `BertLMHeadModel` builds it with cross-attention: embeddings (word, learned
position, segment 0, LayerNorm), then per layer causal self-attention, cross-attention to the encoder's final states
of the example's real tokens, and the feed-forward block, each post-LayerNorm with a residual; then the masked-LM
style output head (dense, activation, LayerNorm, the word-embedding matrix plus a bias). Parameter names are
Hugging Face's under the problem's head (`classifier.N.layer.K.crossattention.self.query.weight`, ...), so
`encoder_decoder_state` maps a `transformers.EncoderDecoderModel` onto ours and the same weights give the same
numbers. The word embeddings are the encoder's (`seq2seq_text`: WordPiece in and out) or the head's own symbol table
(`seq2seq_tag`); either way the output layer is tied to them.

Generation (`generate`): batched greedy search, and beam search with Hugging Face's scoring (a finished beam's
log-probability / its length ** length_penalty; its default stopping rule, early_stopping=False), both stopping at
the end token or after max_target_length tokens. A `DecoderCache` holds each layer's self-attention keys and values
(written in place, one position per step) and its cross-attention keys and values, computed once per example.
"""
import dataclasses
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

import modeling

# Beam search's stand-in for minus infinity, as Hugging Face's: added to a candidate's score to rule it out while
# keeping sums finite (a beam that starts at it never comes back: log-probabilities add at most ~1e2).
EXCLUDED_SCORE = -1.0e9
# Beam search keeps this many candidates per beam at each step, so that num_beams of them still run when up to
# num_beams of the best end (Hugging Face's: (number of end tokens + 1) x num_beams).
CANDIDATES_PER_BEAM = 2

# A seq2seq decoder's initialisation: fresh (N(0, initializer_range)), or BERT2BERT's (Rothe et al. 2020) from the
# encoder: its top layers' self-attention and feed-forward weights and its position and segment embeddings copied,
# the cross-attention fresh.
DECODER_INITS = ("random", "encoder")


def _positive_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True)
class DecoderSettings:
    """A seq2seq problem's decoder and generation; the problems-file keys of the same names."""
    max_target_length: int = 64  # target tokens, the end token included: longer training targets are cut
    decoder_layers: int = 3
    decoder_init: str = "random"  # one of DECODER_INITS
    num_beams: int = 1  # beam search width at evaluation and prediction (1: greedy)
    length_penalty: float = 1.0  # a finished beam scores its log-probability / length ** length_penalty
    bleu_tokenize: str = "13a"  # seq2seq_text: sacrebleu's tokenizer for BLEU ("zh" for Chinese)

    def __post_init__(self):
        """One-line ValueError naming the key of a bad value."""
        for key in ("max_target_length", "decoder_layers", "num_beams"):
            if not _positive_int(getattr(self, key)):
                raise ValueError(f"{key} must be a positive integer, got {getattr(self, key)!r}")
        if self.decoder_init not in DECODER_INITS:
            raise ValueError(f"decoder_init must be one of {', '.join(DECODER_INITS)}, got {self.decoder_init!r}")
        if isinstance(self.length_penalty, bool) or not isinstance(self.length_penalty, (int, float)):
            raise ValueError(f"length_penalty must be a number, got {self.length_penalty!r}")
        from sacrebleu.metrics import bleu  # its tokenizer table (there is no public list of the names)
        if self.bleu_tokenize not in bleu._TOKENIZERS:
            raise ValueError(f"bleu_tokenize {self.bleu_tokenize!r} is not one of sacrebleu's tokenizers "
                             f"({', '.join(bleu._TOKENIZERS)})")


DECODER_KEYS = tuple(item.name for item in fields(DecoderSettings))


@dataclass
class EncoderMemory:
    """What a seq2seq head's forward gives: the encoder's final states, which its loss and generation decode from."""

    states: torch.Tensor  # (B, S, H), zeros at padding
    key_mask: torch.Tensor  # (B, 1, 1, S) bool: True at the example's real tokens
    words: torch.Tensor  # (V, H): the decoder's word embeddings, its output layer too
    decoder: nn.Module  # the Seq2SeqHead


class DecoderAttention(nn.Module):
    """Multi-head attention of the decoder: self-attention (causal, or one new position against the cache) or
    cross-attention (queries from the decoder, keys and values from the encoder's states)."""

    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_prob = config.attention_probs_dropout_prob

    def heads(self, x):  # (B, T, H) -> (B, nh, T, hs)
        B, T, H = x.shape
        return x.view(B, T, self.num_heads, H // self.num_heads).transpose(1, 2)

    def keys_values(self, states):
        """(B, S, H) -> keys and values (B, nh, S, hs), from one fused matmul."""
        weight = torch.cat([self.key.weight, self.value.weight])  # (2H, H)
        bias = torch.cat([self.key.bias, self.value.bias])
        return tuple(self.heads(x) for x in F.linear(states, weight, bias).chunk(2, dim=-1))

    def fused(self):
        """The query, key and value projections as one: weight (3H, H), bias (3H,)."""
        return (torch.cat([self.query.weight, self.key.weight, self.value.weight]),
                torch.cat([self.query.bias, self.key.bias, self.value.bias]))

    def self_projections(self, x, fused=None):
        """(B, T, H) -> queries, keys, values (B, nh, T, hs), from one matmul (`fused`: self.fused(), made once)."""
        return tuple(self.heads(y) for y in F.linear(x, *(fused or self.fused())).chunk(3, dim=-1))

    def attend(self, q, k, v, mask=None, causal=False):
        """(B, nh, T, hs) queries against (B, nh, S, hs) keys and values -> (B, T, H)."""
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                                 dropout_p=self.dropout_prob if self.training else 0.0)
        B, nh, T, hs = context.shape
        return context.transpose(1, 2).reshape(B, T, nh * hs)


class DecoderBlock(nn.Module):
    """An attention module and its output (dense, dropout, residual, LayerNorm): `attention` or `crossattention`."""

    def __init__(self, config):
        super().__init__()
        self.self = DecoderAttention(config)
        self.output = modeling.BertSelfOutput(config, config.hidden_size)


class DecoderLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attention = DecoderBlock(config)
        self.crossattention = DecoderBlock(config)
        self.intermediate = modeling.BertIntermediate(config)
        self.output = modeling.BertSelfOutput(config, config.intermediate_size)

    def forward(self, x, cross, cross_mask, cache=None, index=None):
        """x (B, T, H); cross: this layer's cross-attention keys and values (B, nh, S, hs), cross_mask (B, 1, 1, S).
        Without a cache, causal self-attention over the T positions; with one, x is position cache.length alone
        (T = 1), its keys and values written into the cache, attending to every position so far."""
        q, k, v = self.attention.self.self_projections(x, None if cache is None else cache.fused[index])
        if cache is None:
            context = self.attention.self.attend(q, k, v, causal=True)
        else:
            k, v = cache.append(index, k, v)
            context = self.attention.self.attend(q, k, v)
        x = self.attention.output(context, x)
        cross_q = self.crossattention.self.heads(self.crossattention.self.query(x))
        x = self.crossattention.output(self.crossattention.self.attend(cross_q, *cross, mask=cross_mask), x)
        return self.output(self.intermediate(x), x)


class DecoderEmbeddings(nn.Module):
    """Word (own table, or the encoder's given), learned position and segment-0 embeddings, LayerNorm, dropout."""

    def __init__(self, config, vocab_size):
        super().__init__()
        if vocab_size is not None:
            self.word_embeddings = nn.Embedding(vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, ids, words, first_position=0):  # ids (B, T), words (V, H) -> (B, T, H)
        positions = torch.arange(first_position, first_position + ids.shape[1], device=ids.device)
        # Every decoder position is segment 0, as Hugging Face's decoder without token_type_ids.
        embedded = F.embedding(ids, words) + self.position_embeddings(positions) + self.token_type_embeddings.weight[0]
        return self.dropout(self.LayerNorm(embedded))


class Seq2SeqHead(nn.Module):
    """A seq2seq problem's decoder in its classifier.N slot. `vocab_size`: its own symbol table's size, or None to
    read and write the encoder's WordPiece vocabulary (tied to the encoder's word embeddings)."""

    def __init__(self, config, num_layers, vocab_size=None):
        super().__init__()
        self.own_vocabulary = vocab_size is not None
        self.embeddings = DecoderEmbeddings(config, vocab_size)
        self.layer = nn.ModuleList(DecoderLayer(config) for _ in range(num_layers))
        # The output head: BERT's masked-LM head (transform, tied word matrix, a bias per word).
        self.predictions = modeling.BertLMPredictionHead(
            dataclasses.replace(config, vocab_size=vocab_size or config.vocab_size))

    def forward(self, encoded):
        """heads.EncoderOutput -> EncoderMemory: the real tokens' states (N, H) padded back to (B, S, H)."""
        B, S = encoded.attention_mask.shape
        tokens = encoded.tokens
        states = tokens.new_zeros(B * S, tokens.shape[-1]).index_copy(0, encoded.token_index, tokens).view(B, S, -1)
        words = self.embeddings.word_embeddings.weight if self.own_vocabulary else encoded.word_embeddings
        return EncoderMemory(states, encoded.attention_mask[:, None, None, :].bool(), words, self)

    def cross_keys_values(self, memory):
        """Each layer's cross-attention keys and values of the encoder's states, (B, nh, S, hs) each."""
        return [layer.crossattention.self.keys_values(memory.states) for layer in self.layer]

    def hidden_states(self, memory, ids, cross=None):
        """Teacher forcing: decoder input ids (B, T) -> the last layer's states (B, T, H), causally."""
        cross = self.cross_keys_values(memory) if cross is None else cross
        x = self.embeddings(ids, memory.words)
        for layer, keys_values in zip(self.layer, cross):
            x = layer(x, keys_values, memory.key_mask)
        return x

    def logits(self, memory, states):
        """(..., H) -> (..., V)."""
        return self.predictions(states, memory.words)

    def step(self, memory, ids, cache):
        """Generation's decoder step: the last tokens (R,) -> next-token logits (R, V) in float32. With a cache, one
        position is computed and cached; without (cache.keys None), the whole prefix cache.prefix is run again."""
        if cache.keys is None:  # the uncached reference: every position recomputed from the tokens so far
            cache.prefix = torch.cat([cache.prefix, ids[:, None]], dim=1)
            x = self.hidden_states(cache.memory_view(memory), cache.prefix, cache.cross)[:, -1]
        else:
            x = self.embeddings(ids[:, None], memory.words, first_position=cache.length)
            for index, layer in enumerate(self.layer):
                x = layer(x, cache.cross[index], cache.key_mask, cache, index)
            cache.length += 1
            x = x[:, 0]
        return self.logits(memory, x).float()


@dataclass
class DecoderCache:
    """Generation's state for R = B x beams rows: per layer, the self-attention keys and values of the positions so
    far, (R, nh, max_length, hs) written in place, and the cross-attention keys and values and key mask of each row's
    example (computed once, repeated per beam). `keys` None: decode without a cache (the tests' reference),
    recomputing the prefix at every step."""

    cross: list  # per layer (keys, values), (R, nh, S, hs) each
    key_mask: torch.Tensor  # (R, 1, 1, S)
    keys: list | None  # per layer (R, nh, max_length, hs)
    values: list | None
    fused: list | None = None  # per layer its self-attention's fused projection (DecoderAttention.fused), made once
    length: int = 0  # positions cached
    prefix: torch.Tensor | None = None  # uncached: the tokens so far, (R, t)

    @classmethod
    def start(cls, head, memory, beams, max_length, use_cache=True):
        """The cache of `beams` rows per example of `memory`, for up to max_length positions."""
        cross = [tuple(x.repeat_interleave(beams, dim=0) for x in kv) for kv in head.cross_keys_values(memory)]
        key_mask = memory.key_mask.repeat_interleave(beams, dim=0)
        rows = key_mask.shape[0]
        if not use_cache:
            return cls(cross, key_mask, None, None, prefix=key_mask.new_zeros(rows, 0, dtype=torch.int64))
        k = cross[0][0]  # (R, nh, S, hs): the cache's heads, head size and dtype
        shape = (rows, k.shape[1], max_length, k.shape[-1])
        return cls(cross, key_mask, [k.new_empty(shape) for _ in head.layer], [k.new_empty(shape) for _ in head.layer],
                   [layer.attention.self.fused() for layer in head.layer])

    def append(self, index, k, v):
        """Layer `index`'s keys and values of the new position (R, nh, 1, hs) -> those of every position so far."""
        self.keys[index][:, :, self.length] = k[:, :, 0]
        self.values[index][:, :, self.length] = v[:, :, 0]
        return self.keys[index][:, :, :self.length + 1], self.values[index][:, :, :self.length + 1]

    def reorder(self, rows):
        """Beam search: row r continues row rows[r]'s hypothesis (rows (R,) int64)."""
        if self.keys is None:
            self.prefix = self.prefix[rows]
            return
        for cached in (*self.keys, *self.values):
            cached[:, :, :self.length] = cached[rows, :, :self.length]

    def memory_view(self, memory):
        """The memory with the cache's per-row key mask (beams repeat each example)."""
        return dataclasses.replace(memory, key_mask=self.key_mask)


def generate(head, memory, start_id, end_id, pad_id, max_target_length, num_beams=1, length_penalty=1.0,
             use_cache=True):
    """Token ids (B, L) generated from `memory` (B examples): each row the tokens after the start token up to and with
    its end token (or max_target_length tokens), then pad_id. Greedy for num_beams 1, else beam search."""
    if num_beams == 1:
        return greedy_search(head, memory, start_id, end_id, pad_id, max_target_length, use_cache)
    return beam_search(head, memory, start_id, end_id, pad_id, max_target_length, num_beams, length_penalty,
                       use_cache)


def greedy_search(head, memory, start_id, end_id, pad_id, max_target_length, use_cache=True):
    """The most likely next token at every step; a finished row (its end token out) continues with pad_id."""
    B = memory.states.shape[0]
    cache = DecoderCache.start(head, memory, 1, max_target_length, use_cache)
    tokens = torch.full((B,), start_id, dtype=torch.int64, device=memory.states.device)
    finished = torch.zeros(B, dtype=torch.bool, device=tokens.device)
    out = []
    for _ in range(max_target_length):
        tokens = head.step(memory, tokens, cache).argmax(-1)
        tokens = torch.where(finished, pad_id, tokens)
        out.append(tokens)
        finished |= tokens == end_id
        if bool(finished.all()):
            break
    return torch.stack(out, dim=1)


def beam_search(head, memory, start_id, end_id, pad_id, max_target_length, num_beams, length_penalty=1.0,
                use_cache=True):
    """Hugging Face's beam search (its vectorised version, transformers >= 4.50, early_stopping=False), batched.

    Each step every beam's next-token log-probabilities are added to its score; the best CANDIDATES_PER_BEAM x
    num_beams continuations per example are kept, the best num_beams that did not end run on, and those among the
    best num_beams that end (the end token, or the length limit) join the example's finished hypotheses, scored by
    log-probability / (tokens generated, the end included) ** length_penalty, keeping the best num_beams. An example
    is done when its best running score, divided by its current length ** length_penalty, can no longer beat its
    worst finished one (all num_beams slots filled); the search ends when every example is done or every candidate
    ended. Returns the best finished hypothesis per example, (B, L) as greedy_search's.
    """
    B, K, device = memory.states.shape[0], num_beams, memory.states.device
    keep = CANDIDATES_PER_BEAM * K
    max_length = max_target_length + 1  # the start token, then the generated ones
    cache = DecoderCache.start(head, memory, K, max_target_length, use_cache)
    running = torch.full((B, K, max_length), pad_id, dtype=torch.int64, device=device)
    running[:, :, 0] = start_id
    running_scores = torch.zeros(B, K, device=device)
    running_scores[:, 1:] = EXCLUDED_SCORE  # only the first beam's continuations at the first step: no duplicates
    finished = running.clone()
    finished_scores = torch.full((B, K), EXCLUDED_SCORE, device=device)
    is_finished = torch.zeros(B, K, dtype=torch.bool, device=device)
    improvable = torch.ones(B, 1, dtype=torch.bool, device=device)
    among_best = torch.arange(keep, device=device) < K  # (keep,): candidates that may join the finished ones
    batch_offset = torch.arange(B, device=device)[:, None] * K
    length = 1  # tokens in each running sequence, the start token included
    while True:
        log_probs = F.log_softmax(head.step(memory, running[:, :, length - 1].reshape(-1), cache), dim=-1)
        V = log_probs.shape[-1]
        scores = (log_probs.view(B, K, V) + running_scores[:, :, None]).view(B, K * V)
        top_scores, top_index = torch.topk(scores, keep)  # (B, keep)
        from_beam, token = top_index // V, top_index % V
        candidates = running.gather(1, from_beam[:, :, None].expand(B, keep, max_length)).clone()
        candidates[:, :, length] = token
        ends = (token == end_id) | (length + 1 >= max_length)  # (B, keep)

        # The best num_beams candidates that did not end run on.
        open_scores = top_scores + ends.float() * EXCLUDED_SCORE
        next_beams = torch.topk(open_scores, K).indices  # (B, K)
        running = candidates.gather(1, next_beams[:, :, None].expand(B, K, max_length))
        running_scores = open_scores.gather(1, next_beams)
        source_beam = from_beam.gather(1, next_beams)

        # Candidates among the best num_beams that ended join the finished hypotheses, scored per length.
        just_finished = ends & among_best
        final_scores = top_scores / (length ** length_penalty)
        final_scores = final_scores + (~improvable).float() * EXCLUDED_SCORE + (~just_finished) * EXCLUDED_SCORE
        merged_scores = torch.cat([finished_scores, final_scores], dim=1)
        best = torch.topk(merged_scores, K).indices
        finished = torch.cat([finished, candidates], dim=1).gather(1, best[:, :, None].expand(B, K, max_length))
        finished_scores = merged_scores.gather(1, best)
        is_finished = torch.cat([is_finished, just_finished], dim=1).gather(1, best)

        cache.reorder((batch_offset + source_beam).view(-1))
        length += 1
        best_possible = running_scores[:, :1] / ((length - 1) ** length_penalty)
        worst_finished = torch.where(is_finished, finished_scores.min(dim=1, keepdim=True).values, EXCLUDED_SCORE)
        improvable = improvable & (best_possible > worst_finished).any(dim=-1, keepdim=True)
        if not bool(improvable.any()) or bool(ends.all()):
            break
    return finished[:, 0, 1:length]


def encoder_decoder_state(hf_state, head):
    """A transformers.EncoderDecoderModel's state dict (BERT encoder, BertLMHeadModel decoder) under our names, the
    decoder in classifier.`head`. The decoder's word embeddings (its output matrix too: they are tied) become
    classifier.N.embeddings.word_embeddings, a seq2seq_tag head's own table; a seq2seq_text head has none (it reads
    the encoder's), so its caller drops that key once it has checked it equals the encoder's."""
    state = {}
    for key, value in hf_state.items():
        if key.startswith("encoder."):
            state["bert." + key.removeprefix("encoder.")] = value
        elif key.startswith("decoder.bert.embeddings."):
            state[f"classifier.{head}.embeddings." + key.removeprefix("decoder.bert.embeddings.")] = value
        elif key.startswith("decoder.bert.encoder.layer."):
            state[f"classifier.{head}.layer." + key.removeprefix("decoder.bert.encoder.layer.")] = value
        elif key.startswith("decoder.cls.predictions.") and key != "decoder.cls.predictions.decoder.weight":
            name = key.removeprefix("decoder.cls.predictions.").replace("decoder.bias", "bias")
            state[f"classifier.{head}.predictions." + name] = value
    return {key: value for key, value in state.items() if not key.endswith("position_ids")}


def initialize_from_encoder(head, model):
    """BERT2BERT's warm start: the top len(head.layer) encoder layers' self-attention and feed-forward weights and
    the encoder's position and segment embeddings and their LayerNorm copied into the decoder (cross-attention and
    the output head stay fresh). ValueError when the encoder has fewer layers than the decoder."""
    encoder_layers = model.bert.encoder.layer
    if len(head.layer) > len(encoder_layers):
        raise ValueError(f"decoder_init encoder: decoder_layers {len(head.layer)} is more than the encoder's "
                         f"{len(encoder_layers)} layers")
    with torch.no_grad():
        for source, target in zip(encoder_layers[len(encoder_layers) - len(head.layer):], head.layer):
            own = target.state_dict()
            for name, value in source.state_dict().items():
                if name in own and own[name].shape == value.shape:  # not EmBERT's task embeddings, gates, PALs
                    own[name].copy_(value)
        embeddings = model.bert.embeddings
        for name in ("position_embeddings", "token_type_embeddings", "LayerNorm"):
            for param, value in zip(getattr(head.embeddings, name).parameters(),
                                    getattr(embeddings, name).parameters()):
                param.copy_(value)
