"""BERT's pre-training inputs: masked tokens (google-research/bert's create_pretraining_data) and next-sentence pairs.

Training batches are masked afresh every step from a generator seeded by (seed, step, micro-batch), so a resumed run
and any number of processes mask exactly as one uninterrupted process; a dev set is masked once, with
DEV_MASKING_SEED, so every evaluation scores the same tokens.
"""
import dataclasses
import random
from dataclasses import dataclass

import numpy as np
import torch

import modalities
from features import IGNORE_INDEX, Example

# BERT's masking (google-research/bert, create_pretraining_data.py): MASK_RATE of each text's word pieces are
# predicted (rounded, at least one), never [CLS] or [SEP] (padding is not in the packed features at all); of those,
# MASK_TOKEN_SHARE become [MASK], RANDOM_TOKEN_SHARE a word piece drawn uniformly from the whole vocabulary, the rest
# stay as they are.
MASK_RATE = 0.15

MASK_TOKEN_SHARE, RANDOM_TOKEN_SHARE = 0.8, 0.1

MASK_TOKEN = "[MASK]"

NEVER_MASKED = ("[CLS]", "[SEP]", "[PAD]")

REQUIRED_TOKENS = (MASK_TOKEN, "[CLS]", "[SEP]")  # what a vocabulary needs for masked LM ([PAD] is optional)

SEED_MODULUS = 2 ** 64
# The dev sets of masked-LM problems are masked once with this seed (not --seed): every epoch and every run scores
# the same masked tokens.
DEV_MASKING_SEED = 0


@dataclass(frozen=True)
class Masking:
    """What masking needs from the vocabulary."""
    mask_id: int
    special_ids: tuple  # never chosen
    vocab_size: int  # random replacements are ids in [0, vocab_size)

    @classmethod
    def from_vocab(cls, vocab):
        """From a tokenization.load_vocab dict; an error names a missing special token."""
        missing = [token for token in REQUIRED_TOKENS if token not in vocab]
        if missing:
            raise ValueError(f"the vocabulary has no {missing[0]} token, which masked LM needs")
        return cls(vocab[MASK_TOKEN], tuple(vocab[token] for token in NEVER_MASKED if token in vocab), len(vocab))


def mask_tokens(features, masking, generator):
    """Features with BERT's masking applied: input_ids masked, token_labels the original id at each chosen position
    and IGNORE_INDEX elsewhere (the other fields, NSP labels included, kept). Every draw comes from `generator`, so a
    seeded generator gives the same masking on any machine and batch split.

    Per text, exactly round(MASK_RATE x its maskable pieces) are chosen (at least one when it has any): a random key per
    token, the non-maskable ones keyed last, and each text's k smallest keys chosen, with one sort for all texts.
    """
    ids = features.input_ids.long()  # (n,) packed, every text's tokens in a row
    n, lengths = ids.numel(), features.lengths
    text_of = torch.repeat_interleave(torch.arange(len(features)), lengths)  # (n,)
    candidates = maskable(features, masking)
    per_text = torch.zeros(len(features), dtype=torch.int64).index_add_(0, text_of, candidates.long())
    chosen_per_text = torch.where(per_text > 0, torch.round(per_text * MASK_RATE).long().clamp(min=1), 0)
    # Keys in [0, 1) for maskable tokens, 1 for the others; + 2 x text number keeps each text's tokens together. float64
    # holds the sum closely enough: with 10^7 texts (keys below 2^25) 27 bits of each key's fraction remain.
    keys = torch.rand(n, generator=generator, dtype=torch.float64)
    keys = torch.where(candidates, keys, 1.0) + 2.0 * text_of
    order = torch.argsort(keys)
    rank = torch.empty(n, dtype=torch.int64)
    rank[order] = torch.arange(n) - features.offsets[:-1][text_of]  # sorted, text t's tokens sit at its offsets
    chosen = rank < chosen_per_text[text_of]
    action = torch.rand(n, generator=generator)
    random_ids = torch.randint(masking.vocab_size, (n,), generator=generator)
    masked = torch.where(chosen & (action < MASK_TOKEN_SHARE), masking.mask_id,
                         torch.where(chosen & (action < MASK_TOKEN_SHARE + RANDOM_TOKEN_SHARE), random_ids, ids))
    return dataclasses.replace(features, input_ids=masked.to(features.input_ids.dtype),
                               token_labels=torch.where(chosen, ids, IGNORE_INDEX))


def seeded_generator(*seeds):
    """A CPU generator seeded from a tuple of integers (the run's seed, the step, the micro-batch): the same stream
    wherever and however often it is made, which is what makes masking resume bit-identically. Any integers (a
    negative --seed too: SeedSequence takes non-negative ones, so each is taken modulo 2^64)."""
    entropy = [seed % SEED_MODULUS for seed in seeds]
    return torch.Generator().manual_seed(int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]))


def maskable(features, masking):
    """bool [total tokens]: the word pieces masking may choose (not [CLS], [SEP] or [PAD]; only the text: an image's
    patches and feature vectors stay as context)."""
    words = ~torch.isin(features.input_ids, torch.tensor(masking.special_ids, dtype=features.input_ids.dtype))
    return words if features.modality is None else words & (features.modality == modalities.TEXT)


def mask_dev_set(features, masking):
    """A dev set's features masked once, as every evaluation of every run scores them."""
    return mask_tokens(features, masking, seeded_generator(DEV_MASKING_SEED))


def with_masked_positions(batch):
    """A batch of masked features (problems.mask_tokens): in place of the per-token labels, where the M masked
    tokens sit among the N packed ones, "masked_index" (M,), and their original ids, "masked_labels" (M,); computed
    on the host, so the model needs no sync to find them."""
    token_labels = batch.pop("token_labels")
    batch["masked_index"] = (token_labels != IGNORE_INDEX).nonzero().squeeze(1)
    batch["masked_labels"] = token_labels[batch["masked_index"]]
    return batch


# Next-sentence pairs as BERT's pre-training data: B is the sentence after A, or (this share of the pairs) a random
# sentence of another document. Drawn once, from a fixed seed, when a split's features are built: every run and epoch
# sees the same pairs (BERT's create_pretraining_data with one duplicate), while the masking varies per step.
NSP_RANDOM_SHARE = 0.5

NSP_PAIRS_SEED = 12345

NSP_IS_NEXT, NSP_RANDOM = 0, 1  # the pretrain problem's NSP labels, cls.seq_relationship's output order


def next_sentence_examples(problem, split, documents, source):
    """documents: [[(line number, sentence), ...], ...] -> one pair per sentence that has a next one in its document:
    Example(text_a=sentence, text_b=the next one (label NSP_IS_NEXT) or a random other document's (NSP_RANDOM)).
    A sentence None is left out: no pair holds it (every document needs at least one other sentence)."""
    if len(documents) < 2:
        raise ValueError(f"{source}: {problem.name} ({split}) needs at least two documents (separated by a blank line) "
                         f"to draw random next sentences from; found {len(documents)}")
    rng = random.Random(NSP_PAIRS_SEED)
    drawable = [[sentence for _, sentence in document if sentence is not None] for document in documents]
    examples = []
    for d, document in enumerate(documents):
        for (number, sentence), (_, following) in zip(document, document[1:]):
            if sentence is None or following is None:
                continue
            if rng.random() < NSP_RANDOM_SHARE:
                other = rng.randrange(len(documents) - 1)
                other += other >= d  # any document but this one
                text_b, label = rng.choice(drawable[other]), NSP_RANDOM
            else:
                text_b, label = following, NSP_IS_NEXT
            examples.append(Example(f"{problem.name}-{split}-{number}-{len(examples)}", sentence, text_b, label))
    if not examples:
        raise ValueError(f"{source}: {problem.name} ({split}): no document has two sentences (one sentence per line, "
                         "a blank line between documents)")
    return examples
