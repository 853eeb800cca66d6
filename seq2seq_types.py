"""The sequence-to-sequence problem types, seq2seq_text and seq2seq_tag: a BERT decoder (modeling_seq2seq.Seq2SeqHead)
on the encoder's token states generates the target; registered in problem_types.TYPES like every other type.

Labels: per example [start, target..., end], int64 (N, longest + 2) padded with IGNORE_INDEX (Features.labels); the
training targets cut to max_target_length tokens, the end token included. The loss is the cross-entropy of the
teacher-forced decoder over the target tokens, normalised over the step's target tokens (labelled_tokens), so
gradient accumulation and torchrun train as one batch. Prediction generates (greedy, or beam search) batch by batch
from the encoder's states; metrics compare the decoded sequences with the references decoded alike.
"""
import functools
import logging
from dataclasses import dataclass

import torch

import metrics
import modeling_seq2seq
import problem_types
import tokenization
from features import IGNORE_INDEX, PAD_ID
from modeling_seq2seq import DECODER_KEYS, DecoderSettings
from problem_types import ProblemType, _labelled, token_loss

logger = logging.getLogger("embert")

GENERATED_TEXT_METRICS = ("bleu", "exact_match")  # seq2seq_text
GENERATED_SYMBOL_METRICS = ("seq_acc", "token_error_rate")  # seq2seq_tag
# seq2seq_tag's decoder vocabulary: these three, then the problem's symbols in its labels' order.
SYMBOL_PAD, SYMBOL_START, SYMBOL_END = 0, 1, 2
SYMBOL_SPECIALS = 3
# BERT's usual detokenisation: word pieces joined by spaces, a continuation piece's " ##" removed.
CONTINUATION = " ##"


@dataclass
class GeneratedSplit:
    """A seq2seq problem's predictions on a split: per example, the generated text (seq2seq_text) or symbols
    (seq2seq_tag, a tuple), and the references put through the same decoding (None on an unlabelled split)."""

    predicted: list
    references: list | None


class Seq2SeqType(ProblemType):
    """Sequence to sequence: a BERT decoder (modeling_seq2seq.Seq2SeqHead) on the encoder's token states generates
    the target. Labels: per example [start, target..., end], int64 (N, longest + 2) padded with IGNORE_INDEX, the
    training targets cut to max_target_length tokens (the end included); the loss is the cross-entropy of the
    teacher-forced decoder over the target tokens, normalised over the step's target tokens (labelled_tokens)."""

    head = modeling_seq2seq.Seq2SeqHead
    reads = "tokens"
    not_exported = "its decoder generates token by token (greedy or beam search), which one graph does not hold"
    has_label_list = False
    generates = True
    formats = ("tsv", "jsonl")
    keys = tuple(key for key in DECODER_KEYS if key != "bleu_tokenize")

    def num_outputs(self, problem):
        return 0  # no classifier.N.weight: the head is a decoder (its vocabulary is its type's)

    def vocabulary_size(self, problem):
        """The head's own vocabulary size, or None to share the encoder's."""
        return None

    def build_head(self, config, num_outputs, problem=None):
        if problem is None:
            raise ValueError(f"a {self.name} head is built from its problem (its decoder settings)")
        if problem.decoder.max_target_length > config.max_position_embeddings:
            raise ValueError(f"problem {problem.name}: max_target_length {problem.decoder.max_target_length} is more "
                             f"than the config's max_position_embeddings {config.max_position_embeddings} (the "
                             "decoder's positions)")
        return self.head(config, problem.decoder.decoder_layers, self.vocabulary_size(problem))

    def initialize_head(self, problem, model, head):
        if problem.decoder.decoder_init == "encoder":
            modeling_seq2seq.initialize_from_encoder(model.classifier[head], model)

    def settings_from_spec(self, spec):
        return {"decoder": DecoderSettings(**{key: spec[key] for key in self.keys if key in spec})}

    def default_metrics(self, labels):
        return GENERATED_TEXT_METRICS

    def label_encoder(self, tokenizer, split):
        return functools.partial(self.encode_targets, tokenizer=tokenizer, split=split)

    def special_ids(self, tokenizer):
        """(start, end) ids of the decoder's vocabulary."""
        return tokenizer.vocab["[CLS]"], tokenizer.vocab["[SEP]"]  # BERT2BERT's

    def targets(self, problem, examples, tokenizer):
        """Each example's target token ids, without start and end."""
        return [tokenizer.encode(example.label) for example in examples]

    def encode_targets(self, problem, examples, features, tokenizer, split):
        """int64 (N, 2 + longest target): [start, target..., end] per example, IGNORE_INDEX after. A training target
        longer than max_target_length (the end token included) keeps its first max_target_length - 1 tokens and
        its end token, with one warning for the split."""
        if not _labelled(problem, examples):
            return None, None
        start, end = self.special_ids(tokenizer)
        targets = self.targets(problem, examples, tokenizer)
        empty = next((example for example, target in zip(examples, targets) if not target), None)
        if empty is not None:
            raise ValueError(f"{problem.name} {split} line {empty.guid.rsplit('-', 1)[1]}: the target {empty.label!r} "
                             "has no tokens")
        room = problem.decoder.max_target_length - 1
        longer = sum(len(target) > room for target in targets)
        if split == "train" and longer:
            logger.warning(f"{problem.name} {split}: {longer} of {len(targets)} targets are longer than "
                           f"max_target_length {problem.decoder.max_target_length} (end token included): cut")
            targets = [target[:room] for target in targets]
        labels = torch.full((len(targets), 2 + max(map(len, targets))), IGNORE_INDEX, dtype=torch.int64)
        for row, target in enumerate(targets):
            labels[row, :len(target) + 2] = torch.tensor([start, *target, end])
        return labels, None

    def example_labels(self, features, indices):
        """(B, T): the examples' labels, cut to the longest of them."""
        labels = features.labels[indices]
        return labels[:, :int((labels != IGNORE_INDEX).sum(1).max())]

    def labelled_tokens(self, features, indices):
        return int((features.labels[indices][:, 1:] != IGNORE_INDEX).sum())

    def loss(self, memory, labels, denominator=None):
        """memory: the head's EncoderMemory, labels (B, T) [start, target..., end]: the decoder reads labels[:, :-1]
        (causally: what follows a row's end token changes none of its logits) and predicts labels[:, 1:]; the
        output layer runs on the target tokens alone."""
        inputs, targets = labels[:, :-1].clamp(min=PAD_ID), labels[:, 1:]
        states = memory.decoder.hidden_states(memory, inputs)  # (B, T - 1, H)
        real = targets != IGNORE_INDEX
        return token_loss(memory.decoder.logits(memory, states[real]), targets[real], denominator)

    def generation_ids(self, problem, split_pass):
        """(start, end) of generation: an encoder input's first and last tokens, [CLS] and [SEP]."""
        features = split_pass.features
        return int(features.input_ids[0]), int(features.input_ids[features.offsets[1] - 1])

    def decode(self, problem, ids, split_pass):
        """A token id list (no start, no end) -> what is scored and written: the word pieces joined, " ##" removed."""
        if split_pass.vocab_file is None:
            raise ValueError(f"{problem.name}: decoding generated word pieces needs the vocabulary file")
        pieces = _id_to_piece(str(split_pass.vocab_file))
        return " ".join(pieces[i] for i in ids).replace(CONTINUATION, "")

    def predict(self, problem, split_pass):
        """Generation over the split (greedy, or beam search with num_beams), batch by batch from the encoder's
        states; the references decoded from the labels alike."""
        settings, device = problem.decoder, split_pass.device
        start, end = self.generation_ids(problem, split_pass)
        generated = [None] * len(split_pass.features)
        for indices, batch, memory in split_pass.batches():
            with torch.no_grad(), torch.autocast(device.type, dtype=split_pass.autocast_dtype,
                                                 enabled=split_pass.autocast_dtype is not None):
                ids = modeling_seq2seq.generate(memory.decoder, memory, start, end, PAD_ID,
                                                settings.max_target_length, settings.num_beams,
                                                settings.length_penalty)
            for i, row in zip(indices.tolist(), ids.tolist()):
                generated[i] = row[:row.index(end)] if end in row else row
        labels = split_pass.features.labels
        references = None if labels is None else [
            self.decode(problem, [i for i in row[1:] if i not in (IGNORE_INDEX, end)], split_pass)
            for row in labels.tolist()]
        return GeneratedSplit([self.decode(problem, row, split_pass) for row in generated], references)

    def metrics(self, problem, split, predictions, features):
        return metrics.generated_text_metrics(problem.metrics[split], predictions.predicted, predictions.references,
                                              problem.decoder.bleu_tokenize)

    def prediction_values(self, problem, predictions):
        """The generated text (seq2seq_text) or list of symbols (seq2seq_tag) per example."""
        return [value if isinstance(value, str) else list(value) for value in predictions.predicted]


class Seq2SeqTextType(Seq2SeqType):
    name = "seq2seq_text"
    keys = DECODER_KEYS

    def parse_label(self, value, separator, where):
        if not isinstance(value, str):
            raise ValueError(f"{where}: the target (label) {value!r} is not a string")
        if not value.strip():
            raise ValueError(f"{where}: the target (label) is empty")
        return value

    def check_labels(self, problem, path, examples, lines_of):
        """Any text (parse_label refused empty ones)."""


class Seq2SeqTagType(Seq2SeqType):
    """The target is a sequence of the problem's symbols (its labels), decoded with a symbol table of its own."""

    name = "seq2seq_tag"
    has_label_list = True

    def vocabulary_size(self, problem):
        return SYMBOL_SPECIALS + len(problem.labels)

    def default_metrics(self, labels):
        return GENERATED_SYMBOL_METRICS

    def parse_label(self, value, separator, where):
        """Symbols separated by whitespace, or a JSON list of them."""
        if isinstance(value, str):
            symbols = value.split()
        elif isinstance(value, list) and all(isinstance(item, str) and item and not item.isspace() for item in value):
            symbols = value
        else:
            raise ValueError(f"{where}: the target (label) {value!r} is neither symbols separated by spaces nor a "
                             "JSON list of non-empty strings")
        if not symbols:
            raise ValueError(f"{where}: the target (label) is empty")
        return tuple(symbols)

    def label_values(self, example):
        return example.label or ()

    def special_ids(self, tokenizer):
        return SYMBOL_START, SYMBOL_END

    def targets(self, problem, examples, tokenizer):
        ids = {symbol: SYMBOL_SPECIALS + j for j, symbol in enumerate(problem.labels)}
        return [[ids[symbol] for symbol in example.label] for example in examples]

    def generation_ids(self, problem, split_pass):
        return SYMBOL_START, SYMBOL_END

    def decode(self, problem, ids, split_pass):
        """Symbol ids -> the symbols (a tuple); a special id generated mid-sequence shows as its name."""
        names = ("<pad>", "<start>", "<end>", *problem.labels)
        return tuple(names[i] for i in ids)

    def metrics(self, problem, split, predictions, features):
        return metrics.generated_symbol_metrics(problem.metrics[split], predictions.predicted, predictions.references)

    def prediction_strings(self, problem, predictions):
        return [" ".join(symbols) for symbols in predictions.predicted]  # as the targets: one space between symbols


@functools.lru_cache(maxsize=4)
def _id_to_piece(vocab_file):
    """A vocabulary's word pieces in id order."""
    return list(tokenization.load_vocab(vocab_file))


problem_types.register(Seq2SeqTextType(), Seq2SeqTagType())
