"""Masked LM and BERT pre-training as problems (issue 12): BERT's masking (rates on a large draw of real text, never
[CLS]/[SEP], seeded), the pre-training heads loaded from a Hugging Face BertForPreTraining and tied to the word
embeddings, next-sentence pairs, the losses, the --tasks grammar with X_mlm, the LM metrics and model selection, and
the problems file's mask_lm / pretrain keys and errors."""
import json
import math
import random
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import checkpoints
import evaluation
import features as feats
import glue_processors
import masking
import modeling
import pku
import problem_record
import problem_types
import problems
import train_step
from conftest import FIXTURES, ROOT, fixture_glue_dir, minilm_dir, require
from features import IGNORE_INDEX, Example, Features, make_batch
from heads import PreTrainingLogits
from helpers import TINY, write_problems
from masking import (
    MASK_RATE, MASK_TOKEN_SHARE, NSP_IS_NEXT, NSP_RANDOM, NSP_RANDOM_SHARE, RANDOM_TOKEN_SHARE, Masking, mask_tokens,
    next_sentence_examples, seeded_generator,
)
from modeling import BertConfig, BertForMultiTask
from problem_record import Problem
from problem_types import TYPES
from problems import get_problem, read_examples, resolve_groups
from problems_file import read_problems_file
from tokenization import FullTokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

LM_PROBLEMS_FILE = FIXTURES / "problems" / "lm.json"
DOCUMENTS = FIXTURES / "problems" / "documents"
PKU_FILE = ROOT.parent / "shared" / "pku199801" / "199801.txt"

# Masking draws: a run of real word pieces at least this long, so the binomial shares are tight (15% of 150k pieces
# is ~22k chosen; the std of the 80% share is then ~0.3 points).
MIN_DRAWN_PIECES = 150_000
REAL_MAX_SEQ_LENGTH = 128
SENTENCES_PER_LONG_TEXT = 8  # real sentences joined into one text: ~100 pieces, so per-text rounding barely matters
SIGMAS = 4.5  # a seeded draw is checked within this many binomial standard deviations (p ~ 7e-6 two-sided)
SEED = 20240612

# The model tests' tiny, deliberately odd BERT is helpers.TINY (vocab 99, hidden 32, ...); its vocabulary's ids:
PAD_ID, CLS_ID, SEP_ID, MASK_ID = 0, 2, 3, 4  # the tiny vocabulary's specials (ids 5..98 are words)
FIRST_WORD_ID = 5
TINY_MASKING = Masking(MASK_ID, (PAD_ID, CLS_ID, SEP_ID), TINY["vocab_size"])
EQUAL_ATOL = 1e-5  # two fp32 computations of the same math (different kernels or summation orders)


# ---- helpers ----------------------------------------------------------------------------------------------------

def packed(rows, segment_a=None, labels=None):
    """Features from lists of ids ([CLS] ... [SEP] each); segment_a: segment-A lengths (default: the whole row)."""
    lengths = torch.tensor([len(row) for row in rows], dtype=torch.int64)
    offsets = torch.zeros(len(rows) + 1, dtype=torch.int64)
    torch.cumsum(lengths, 0, out=offsets[1:])
    segment_a = lengths if segment_a is None else torch.tensor(segment_a)
    return Features(input_ids=torch.tensor([i for row in rows for i in row], dtype=torch.int32), offsets=offsets,
                    segment_a_len=segment_a.to(torch.int32), labels=labels)


def per_text(features, flags):
    """int64 [N]: how many of each text's tokens are flagged (flags: bool, aligned to the packed input_ids)."""
    text_of = torch.repeat_interleave(torch.arange(len(features)), features.lengths)
    return torch.zeros(len(features), dtype=torch.int64).index_add_(0, text_of, flags.long())


def chosen_per_text(features, masked):
    """int64 [N]: masked tokens per text."""
    return per_text(features, masked.token_labels != IGNORE_INDEX)


def maskable_per_text(features, masking):
    """int64 [N]: tokens per text that masking may choose (all but the special ones)."""
    return per_text(features, ~torch.isin(features.input_ids.long(), torch.tensor(masking.special_ids)))


def within_sigmas(observed_share, p, n):
    """A share of n Bernoulli(p) draws is within SIGMAS binomial standard deviations of p."""
    return abs(observed_share - p) <= SIGMAS * math.sqrt(p * (1 - p) / n)


def tiny_config(**overrides):
    return BertConfig(**{**TINY, **overrides})


def tiny_model(kinds, seed=0):
    """A fresh tiny model in eval mode with a head per problem type (2 classes for the others; an LM problem's
    classifier slot is empty, as Problem.num_labels 0 gives it)."""
    torch.manual_seed(seed)
    num_labels = [0 if TYPES[kind].reads == "masked" else 2 for kind in kinds]
    return BertForMultiTask(tiny_config(), num_labels, kinds).eval()


def random_rows(lengths, seed, low=FIRST_WORD_ID, high=TINY["vocab_size"]):
    """Random word ids as [CLS] words [SEP] rows of the given total lengths."""
    g = torch.Generator().manual_seed(seed)
    return [[CLS_ID, *torch.randint(low, high, (n - 2,), generator=g).tolist(), SEP_ID] for n in lengths]


def masked_batch(features, seed):
    """mask_tokens + make_batch + with_masked_positions, as train_step.training_batch builds an LM batch; and the
    masked features."""
    masked = mask_tokens(features, TINY_MASKING, seeded_generator(seed))
    return masking.with_masked_positions(make_batch(masked, torch.arange(len(features)))), masked


def hf_bert_for_pretraining(seed=0):
    """transformers' BertForPreTraining with TINY's shape, every weight random (the heads too: their defaults are
    LayerNorm = identity and zero biases, which would hide a mis-loaded parameter)."""
    try:
        import transformers
    except ImportError:
        require(False, "needs transformers (a test-only dependency) for the reference BertForPreTraining")
    config = transformers.BertConfig(**TINY, attn_implementation="eager")
    torch.manual_seed(seed)
    model = transformers.BertForPreTraining(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():  # tied parameters are listed once, and stay tied
            parameter.normal_(1.0 if name.endswith("LayerNorm.weight") else 0.0, 0.1)
    return model


# ---- masking on real text -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm_tokenizer():
    return FullTokenizer(minilm_dir() / "vocab.txt", do_lower_case=True)


@pytest.fixture(scope="module")
def real_sentences():
    """Every sentence of the SST-2 and CoLA fixture rows (train and dev): ~770 real English sentences."""
    glue = fixture_glue_dir()
    return [example.text_a for task in ("sst", "cola") for split in ("train", "dev")
            for example in glue_processors.load_examples(glue, task, split)]


@pytest.fixture(scope="module")
def long_real_texts(minilm_tokenizer, real_sentences):
    """Real sentences, shuffled and joined SENTENCES_PER_LONG_TEXT at a time into [CLS] text [SEP] rows, reshuffled
    until there are MIN_DRAWN_PIECES word pieces: a large draw with little per-text rounding."""
    vocab = minilm_tokenizer.vocab
    pieces = [minilm_tokenizer.encode(sentence) for sentence in real_sentences]
    rows, total, shuffle = [], 0, random.Random(SEED)
    while total < MIN_DRAWN_PIECES:
        order = list(range(len(pieces)))
        shuffle.shuffle(order)
        for start in range(0, len(order), SENTENCES_PER_LONG_TEXT):
            row = [vocab["[CLS]"], *(i for j in order[start:start + SENTENCES_PER_LONG_TEXT] for i in pieces[j]),
                   vocab["[SEP]"]]
            rows.append(row)
            total += len(row) - 2
    return packed(rows)


@pytest.fixture(scope="module")
def real_pairs_and_singles(minilm_tokenizer):
    """Real GLUE features as the runs pack them: MRPC sentence pairs ([CLS] A [SEP] B [SEP]), SST-2 single sentences
    and phrases (some of 1-3 pieces), and one empty text ([CLS] [SEP], nothing to mask)."""
    glue = fixture_glue_dir()
    examples = [*glue_processors.load_examples(glue, "mrpc", "train"),
                *glue_processors.load_examples(glue, "sst", "train"),
                *glue_processors.load_examples(glue, "sst", "dev"), Example("empty-0", "", None, "0")]
    ids, offsets, segment_a = feats.pack_texts(examples, minilm_tokenizer, REAL_MAX_SEQ_LENGTH, num_workers=1)
    return Features(input_ids=ids, offsets=offsets, segment_a_len=segment_a, labels=None)


@pytest.fixture(scope="module")
def minilm_masking(minilm_tokenizer):
    return Masking.from_vocab(minilm_tokenizer.vocab)


def test_masking_chooses_15_percent_of_a_large_real_draw_never_cls_or_sep(long_real_texts, minilm_masking,
                                                                          minilm_tokenizer):
    features, vocab = long_real_texts, minilm_tokenizer.vocab
    masked = mask_tokens(features, minilm_masking, seeded_generator(SEED, 0))
    ids, chosen = features.input_ids.long(), masked.token_labels != IGNORE_INDEX
    maskable = maskable_per_text(features, minilm_masking)
    assert int(maskable.sum()) >= MIN_DRAWN_PIECES

    # Exactly the rounded 15% of each text (BERT's num_to_predict), so the overall share is 15% up to rounding:
    # at most half a token per text.
    counts = chosen_per_text(features, masked)
    assert ((counts - MASK_RATE * maskable).abs() <= 0.5 + 1e-6).all()
    share = chosen.sum().item() / maskable.sum().item()
    rounding = 0.5 * len(features) / maskable.sum().item()
    assert rounding < 0.005
    assert abs(share - MASK_RATE) <= rounding

    special = (ids == vocab["[CLS]"]) | (ids == vocab["[SEP]"])
    assert special.sum() == 2 * len(features) and not chosen[special].any()
    assert torch.equal(masked.token_labels[chosen], ids[chosen])  # the label is the original piece
    assert torch.equal(masked.input_ids[~chosen], features.input_ids[~chosen])  # nothing else touched
    assert masked.input_ids.dtype == features.input_ids.dtype and masked.token_labels.dtype == torch.int64
    assert torch.equal(masked.offsets, features.offsets) and torch.equal(masked.segment_a_len, features.segment_a_len)


def test_masking_replaces_80_percent_by_mask_10_by_random_pieces_keeps_10(long_real_texts, minilm_masking):
    features = long_real_texts
    masked = mask_tokens(features, minilm_masking, seeded_generator(SEED, 1))
    chosen = masked.token_labels != IGNORE_INDEX
    original, now = features.input_ids.long()[chosen], masked.input_ids.long()[chosen]
    n = chosen.sum().item()
    as_mask = now == minilm_masking.mask_id
    unchanged = now == original
    replaced = ~as_mask & ~unchanged
    vocab_size = minilm_masking.vocab_size
    # A random piece is the original (or [MASK]) with probability 1 / vocab_size: counted as kept (or masked).
    assert within_sigmas(as_mask.sum().item() / n, MASK_TOKEN_SHARE + RANDOM_TOKEN_SHARE / vocab_size, n)
    assert within_sigmas(replaced.sum().item() / n, RANDOM_TOKEN_SHARE * (1 - 2 / vocab_size), n)
    assert within_sigmas(unchanged.sum().item() / n, 1 - MASK_TOKEN_SHARE - RANDOM_TOKEN_SHARE
                         + RANDOM_TOKEN_SHARE / vocab_size, n)
    # The random pieces come uniformly from the whole vocabulary, not from the text: their mean id is the uniform
    # mean (vocab_size - 1) / 2 within SIGMAS standard errors (std of a uniform id: vocab_size / sqrt(12)).
    random_ids = now[replaced].double()
    assert abs(random_ids.mean().item() - (vocab_size - 1) / 2) <= SIGMAS * vocab_size / math.sqrt(
        12 * random_ids.numel())
    assert random_ids.max() > 0.9 * vocab_size and random_ids.min() < 0.1 * vocab_size


def test_masking_rounds_per_text_with_at_least_one_and_spares_every_sep_of_a_pair(real_pairs_and_singles,
                                                                                  minilm_masking, minilm_tokenizer):
    features, vocab = real_pairs_and_singles, minilm_tokenizer.vocab
    masked = mask_tokens(features, minilm_masking, seeded_generator(SEED, 2))
    maskable = maskable_per_text(features, minilm_masking)
    counts = chosen_per_text(features, masked)
    # round(15% of the maskable pieces), at least one when there is any (short SST-2 phrases), none in the empty text
    expected_low = torch.tensor([max(1, math.floor(Fraction(15, 100) * m)) if m else 0 for m in maskable.tolist()])
    expected_high = torch.tensor([max(1, math.ceil(Fraction(15, 100) * m)) if m else 0 for m in maskable.tolist()])
    assert ((counts >= expected_low) & (counts <= expected_high)).all()
    assert maskable[-1] == 0 and counts[-1] == 0  # the empty text
    assert ((maskable > 0) & (maskable * MASK_RATE < 0.5)).sum() > 10  # short phrases, where 15% rounds to 0
    assert (counts[maskable > 0] >= 1).all()
    ids, chosen = features.input_ids.long(), masked.token_labels != IGNORE_INDEX
    special = (ids == vocab["[CLS]"]) | (ids == vocab["[SEP]"])
    assert (features.segment_a_len < features.lengths).sum() > 0  # pairs: two [SEP]s per text
    assert special.sum() == 2 * len(features) + (features.segment_a_len < features.lengths).sum()
    assert not chosen[special].any()


def test_masking_draws_every_position_of_a_text_alike(real_sentences, minilm_tokenizer, minilm_masking):
    """The chosen pieces are a uniform sample of each text's: over many copies of one real text, each position is
    chosen with frequency round(15% x pieces) / pieces (no position, first or last, favoured)."""
    vocab = minilm_tokenizer.vocab
    text = max(real_sentences, key=lambda s: len(minilm_tokenizer.encode(s)))
    row = [vocab["[CLS]"], *minilm_tokenizer.encode(text), vocab["[SEP]"]]
    copies = 3000
    features = packed([row] * copies)
    masked = mask_tokens(features, minilm_masking, seeded_generator(SEED, 3))
    chosen = (masked.token_labels != IGNORE_INDEX).reshape(copies, len(row)).double()
    pieces = len(row) - 2
    p = round(MASK_RATE * pieces) / pieces
    frequency = chosen.mean(0)
    assert frequency[0] == 0 and frequency[-1] == 0
    assert ((frequency[1:-1] - p).abs() <= SIGMAS * math.sqrt(p * (1 - p) / copies)).all()


def test_masking_is_fixed_by_its_seed(long_real_texts, minilm_masking):
    features = feats.take_examples(long_real_texts, torch.arange(200))  # ~20k pieces
    first = mask_tokens(features, minilm_masking, seeded_generator(SEED, 7, 0))
    again = mask_tokens(features, minilm_masking, seeded_generator(SEED, 7, 0))
    assert torch.equal(first.input_ids, again.input_ids) and torch.equal(first.token_labels, again.token_labels)
    # another step, micro-batch or seed: another masking, whose chosen positions overlap only by chance (~15%)
    for seeds in ((SEED, 8, 0), (SEED, 7, 1), (SEED + 1, 7, 0), (SEED, 70), (SEED, 0, 7)):
        other = mask_tokens(features, minilm_masking, seeded_generator(*seeds))
        a, b = first.token_labels != IGNORE_INDEX, other.token_labels != IGNORE_INDEX
        assert not torch.equal(a, b)
        assert (a & b).sum() < 0.3 * a.sum()
    # seeded_generator is a pure function of its integers: the same stream however often it is made
    draw = lambda *seeds: torch.rand(5, generator=seeded_generator(*seeds))  # noqa: E731
    assert torch.equal(draw(1, 2, 3), draw(1, 2, 3))
    assert not torch.equal(draw(12, 3), draw(1, 23)) and not torch.equal(draw(1, 2), draw(2, 1))


def test_masked_tokens_survive_batching(real_pairs_and_singles, minilm_masking):
    """with_masked_positions after make_batch (padded, examples in any order): masked_index points at the masked
    tokens among the batch's N real ones, masked_labels holds their original ids."""
    features = real_pairs_and_singles
    masked = mask_tokens(features, minilm_masking, seeded_generator(SEED, 4))
    indices = torch.randperm(len(features), generator=torch.Generator().manual_seed(SEED))[:40]
    plain = make_batch(features, indices)
    batch = masking.with_masked_positions(make_batch(masked, indices))
    assert "token_labels" not in batch
    real_now = batch["input_ids"].flatten()[batch["token_index"]]  # (N,)
    real_before = plain["input_ids"].flatten()[plain["token_index"]]
    assert torch.equal(batch["masked_labels"], real_before[batch["masked_index"]])
    changed = (real_now != real_before).nonzero().squeeze(1)
    assert torch.isin(changed, batch["masked_index"]).all()  # nothing changed outside the masked positions
    assert batch["masked_index"].numel() == chosen_per_text(features, masked)[indices].sum()
    assert (real_now[batch["masked_index"]] == minilm_masking.mask_id).float().mean() > 0.5


def test_masking_from_vocab_needs_mask_cls_and_sep(minilm_tokenizer):
    vocab = minilm_tokenizer.vocab
    masking = Masking.from_vocab(vocab)
    assert masking.mask_id == vocab["[MASK]"] and masking.vocab_size == len(vocab)
    assert set(masking.special_ids) == {vocab["[CLS]"], vocab["[SEP]"], vocab["[PAD]"]}
    with pytest.raises(ValueError, match=r"no \[MASK\] token"):
        Masking.from_vocab({token: i for token, i in vocab.items() if token != "[MASK]"})


# ---- the pre-training heads from a Hugging Face checkpoint --------------------------------------------------------

@pytest.mark.parametrize("kind", ["mask_lm", "pretrain"])
def test_lm_heads_load_from_hugging_face_bert_for_pretraining_and_give_its_logits(kind):
    reference = hf_bert_for_pretraining()
    state = reference.state_dict()
    model = tiny_model(["cls", kind], seed=1)
    fresh = checkpoints.load_mapped_state(model, checkpoints.map_state_dict(state), "hf")
    assert fresh == ["classifier.0.weight", "classifier.0.bias"]  # the cls problem's head; all of `cls` loaded
    own = model.state_dict()
    for key, value in own.items():
        if key.startswith("cls."):
            assert torch.equal(value, state[key]), key
    assert torch.equal(own["cls.predictions.bias"], state["cls.predictions.decoder.bias"])
    assert ("cls.seq_relationship.weight" in own) == (kind == "pretrain")

    features = packed(random_rows([9, 5, 12, 7], seed=3), segment_a=[5, 5, 6, 7])  # three pairs, one single
    batch, _ = masked_batch(features, seed=3)
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], 1,
                       token_index=batch["token_index"], masked_index=batch["masked_index"]).logits[0]
        expected = reference(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"],
                             attention_mask=batch["attention_mask"])
    words = expected.prediction_logits.flatten(0, 1)[batch["token_index"]][batch["masked_index"]]  # (M, V)
    if kind == "pretrain":
        logits, next_sentence = logits.masked_lm, logits.next_sentence
        torch.testing.assert_close(next_sentence, expected.seq_relationship_logits, rtol=0, atol=EQUAL_ATOL)
    assert logits.shape == (batch["masked_index"].numel(), TINY["vocab_size"])
    torch.testing.assert_close(logits, words, rtol=0, atol=EQUAL_ATOL)


def test_google_style_names_of_the_heads_map_too():
    """Google BERT converted the old way names LayerNorm parameters gamma/beta; a DDP-saved one has "module."."""
    state = hf_bert_for_pretraining().state_dict()
    old_names = lambda key: ("module." + key).replace("LayerNorm.weight", "LayerNorm.gamma").replace(  # noqa: E731
        "LayerNorm.bias", "LayerNorm.beta")
    renamed = {old_names(key): value for key, value in state.items()}
    mapped = checkpoints.map_state_dict(renamed)
    model = tiny_model(["pretrain"])
    assert checkpoints.load_mapped_state(model, mapped, "google") == []
    assert torch.equal(model.cls.predictions.transform.LayerNorm.weight,
                       state["cls.predictions.transform.LayerNorm.weight"])
    assert "cls.predictions.decoder.weight" not in mapped and "cls.predictions.decoder.bias" not in mapped


def test_mlm_decoder_is_the_word_embedding_matrix():
    reference = hf_bert_for_pretraining()
    model = tiny_model(["pretrain"])
    names = [name for name, _ in model.named_parameters()]
    assert not any("decoder" in name for name in names)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731 (parameters() lists a tied one once)
    assert count(model) == count(reference)  # BertForPreTraining, whose decoder is tied too
    hidden = TINY["hidden_size"]
    assert count(tiny_model(["mask_lm"])) == count(reference) - (hidden + 1) * modeling.NSP_CLASSES

    model = tiny_model(["mask_lm"]).train()
    rows = random_rows([10, 8], seed=5, high=FIRST_WORD_ID + 20)  # words 5..24 only: 25..98 never in the input
    batch, _ = masked_batch(packed(rows), seed=5)
    unseen = torch.arange(FIRST_WORD_ID + 20, TINY["vocab_size"])
    unseen = unseen[~torch.isin(unseen, batch["input_ids"])]
    loss = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], 0,
                 [batch["masked_labels"]], token_index=batch["token_index"],
                 masked_index=batch["masked_index"]).losses[0]
    loss.backward()
    # Rows of pieces absent from the input get a gradient only through the decoder: it reads the embeddings.
    assert model.bert.embeddings.word_embeddings.weight.grad[unseen].abs().sum(1).gt(0).all()

    # Changing the embedding of one unseen piece changes that piece's logit column, and no other.
    model.eval()
    piece = int(unseen[0])
    args = (batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], 0)
    kwargs = dict(token_index=batch["token_index"], masked_index=batch["masked_index"])
    with torch.no_grad():
        before = model(*args, **kwargs).logits[0]
        # not a constant: the head's LayerNorm output sums to 0 at initialisation (weight 1, bias 0), so a constant
        # added to a row would leave its logit as it was
        model.bert.embeddings.word_embeddings.weight[piece] += torch.randn(
            hidden, generator=torch.Generator().manual_seed(5))
        after = model(*args, **kwargs).logits[0]
    differs = (after - before).abs().gt(1e-6).any(0)
    assert differs.nonzero().squeeze(1).tolist() == [piece]


def test_models_without_lm_problems_load_a_pretraining_checkpoint_and_ignore_its_heads():
    state = checkpoints.map_state_dict(hf_bert_for_pretraining().state_dict())
    plain = tiny_model(["cls", "seq_tag"])
    assert not hasattr(plain, "cls")
    assert sorted(checkpoints.unused_pretraining_heads(plain, state)) == sorted(k for k in state if k.startswith("cls."))
    fresh = checkpoints.load_mapped_state(plain, state, "hf")
    assert fresh == ["classifier.0.weight", "classifier.0.bias", "classifier.1.weight", "classifier.1.bias"]
    assert torch.equal(plain.bert.embeddings.word_embeddings.weight, state["bert.embeddings.word_embeddings.weight"])
    masked_lm = tiny_model(["mask_lm"])  # no next-sentence head: seq_relationship is not its
    assert checkpoints.unused_pretraining_heads(masked_lm, state) == ["cls.seq_relationship.weight",
                                                                   "cls.seq_relationship.bias"]
    assert checkpoints.load_mapped_state(masked_lm, state, "hf") == []
    # A checkpoint without heads (a bare encoder, like MiniLM's) leaves `cls` fresh.
    encoder_only = {key: value for key, value in state.items() if not key.startswith("cls.")}
    fresh_lm = tiny_model(["mask_lm"])
    assert checkpoints.load_mapped_state(fresh_lm, encoder_only, "encoder") == [
        name for name in fresh_lm.state_dict() if name.startswith("cls.")]


# ---- next-sentence pairs ------------------------------------------------------------------------------------------

def synthetic_documents(sizes, first_line=1):
    """Documents of distinct sentences "d<doc> s<sentence>", numbered as lines of a file with blank separators."""
    documents, line = [], first_line
    for d, size in enumerate(sizes):
        documents.append([(line + s, f"d{d} s{s}") for s in range(size)])
        line += size + 1
    return documents


def document_of(sentence):
    return int(sentence.split()[0][1:])


def test_next_sentence_pairs_stay_in_their_document_or_take_b_from_another():
    problem = get_problem("pku_pretrain")
    documents = synthetic_documents([4, 1, 3, 2, 5])  # the one-sentence document only lends random Bs
    examples = next_sentence_examples(problem, "train", documents, "docs.txt")
    expected_a = [(number, sentence) for document in documents for number, sentence in document[:-1]]
    assert [example.text_a for example in examples] == [sentence for _, sentence in expected_a]
    # the guid names the file line of sentence A
    assert [int(example.guid.split("-")[2]) for example in examples] == [number for number, _ in expected_a]
    following = {a: b for document in documents for (_, a), (_, b) in zip(document, document[1:])}
    all_sentences = {sentence for document in documents for _, sentence in document}
    assert {example.label for example in examples} == {NSP_IS_NEXT, NSP_RANDOM}
    for example in examples:
        if example.label == NSP_IS_NEXT:
            assert example.text_b == following[example.text_a]
        else:
            assert example.text_b in all_sentences
            assert document_of(example.text_b) != document_of(example.text_a)
    assert next_sentence_examples(problem, "train", documents, "docs.txt") == examples  # the same pairs every call


def test_next_sentence_random_half_from_all_other_documents():
    problem = get_problem("pku_pretrain")
    documents = synthetic_documents([21] * 200)
    examples = next_sentence_examples(problem, "train", documents, "docs.txt")
    assert len(examples) == 200 * 20
    random_pairs = [example for example in examples if example.label == NSP_RANDOM]
    assert within_sigmas(len(random_pairs) / len(examples), NSP_RANDOM_SHARE, len(examples))
    assert all(document_of(e.text_b) != document_of(e.text_a) for e in random_pairs)
    # ~2000 random Bs over 199 other documents each: nearly every document lends some, from any of its positions
    assert len({document_of(e.text_b) for e in random_pairs}) > 190
    assert len({e.text_b.split()[1] for e in random_pairs}) == 21
    assert all(e.text_b == f"d{document_of(e.text_a)} s{int(e.text_a.split()[1][1:]) + 1}"
               for e in examples if e.label == NSP_IS_NEXT)


def test_next_sentence_needs_two_documents_and_a_pair():
    problem = get_problem("pku_pretrain")
    with pytest.raises(ValueError, match=r"^docs\.txt: pku_pretrain \(dev\) needs at least two documents .* found 1$"):
        next_sentence_examples(problem, "dev", synthetic_documents([5]), "docs.txt")
    with pytest.raises(ValueError, match=r"^docs\.txt: pku_pretrain \(dev\): no document has two sentences"):
        next_sentence_examples(problem, "dev", synthetic_documents([1, 1, 1]), "docs.txt")


def file_documents(path):
    """The blank-line separated documents of a text file, as [[(line number, sentence), ...], ...]."""
    documents, document = [], []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            document.append((number, line.strip()))
        elif document:
            documents.append(document)
            document = []
    return documents + ([document] if document else [])


@pytest.fixture(scope="module")
def lm_problems():
    return read_problems_file(LM_PROBLEMS_FILE)


def test_text_reader_documents_and_lines(lm_problems):
    documents = file_documents(DOCUMENTS / "train.txt")
    assert len(documents) >= 2
    pairs = read_examples("news_pretrain", "train", "", lm_problems)
    # in file order: a pair per sentence that has a next one in its document (the file repeats some sentences, so
    # pairs are matched by position)
    expected = [(number, a, b, d) for d, document in enumerate(documents)
                for (number, a), (_, b) in zip(document, document[1:])]
    assert len(pairs) == len(expected)
    others = [{s for e, other in enumerate(documents) if e != d for _, s in other} for d in range(len(documents))]
    for example, (number, a, b, d) in zip(pairs, expected):
        assert example.text_a == a and int(example.guid.split("-")[2]) == number
        if example.label == NSP_IS_NEXT:
            assert example.text_b == b
        else:
            assert example.label == NSP_RANDOM and example.text_b in others[d]
    assert {example.label for example in pairs} == {NSP_IS_NEXT, NSP_RANDOM}

    lines = read_examples("news_lm", "dev", "", lm_problems)
    dev = [line.strip() for line in (DOCUMENTS / "dev.txt").read_text(encoding="utf-8").splitlines() if line.strip()]
    assert [example.text_a for example in lines] == dev
    assert all(example.text_b is None and example.label is None for example in lines)

    reviews = read_examples("review_texts_lm", "train", "", lm_problems)
    assert reviews[0].text_a == "a warm and lovely film" and all(example.label is None for example in reviews)


def test_pku_pretrain_paragraphs_are_documents():
    require(PKU_FILE.is_file(), f"needs People's Daily in {PKU_FILE}")
    data_dir = PKU_FILE.parent.parent
    train = read_examples("pku_pretrain", "train", data_dir)
    dev = read_examples("pku_pretrain", "dev", data_dir)
    line = lambda example: int(example.guid.split("-")[2])  # noqa: E731 (the paragraph's line in 199801.txt)
    assert not {line(e) for e in train} & {line(e) for e in dev}  # a paragraph is in one split only
    for examples in (train, dev):
        assert all(example.text_a and example.text_b for example in examples)
        assert within_sigmas(sum(e.label == NSP_RANDOM for e in examples) / len(examples), NSP_RANDOM_SHARE,
                             len(examples))
    assert 0.05 < len(dev) / (len(train) + len(dev)) < 0.2  # a tenth of the paragraphs
    paragraph = {}
    for number, words in pku.pku_sentences(PKU_FILE):
        paragraph.setdefault(number, []).append("".join(word for word, _ in words))
    for example in dev[:500]:
        sentences = paragraph[line(example)]
        assert example.text_a in sentences
        if example.label == NSP_IS_NEXT:
            assert example.text_b == sentences[sentences.index(example.text_a) + 1]


def test_lm_features_from_the_problems_file(lm_problems, tmp_path):
    vocab = minilm_dir() / "vocab.txt"
    load = lambda name, split: problems.load_problem_features(  # noqa: E731
        name, split, fixture_glue_dir(), vocab, True, REAL_MAX_SEQ_LENGTH, cache_dir=tmp_path, num_workers=1,
        user_problems=lm_problems)
    pairs = load("news_pretrain", "train")
    examples = read_examples("news_pretrain", "train", "", lm_problems)
    assert torch.equal(pairs.labels, torch.tensor([example.label for example in examples]))
    assert pairs.token_labels is None and (pairs.segment_a_len < pairs.lengths).all()  # every one a pair
    texts = load("news_lm", "train")
    assert texts.labels is None and texts.token_labels is None
    cola = load("cola", "train")
    cola_texts = load("cola_texts", "train")
    assert cola_texts.labels is None and torch.equal(cola_texts.input_ids, cola.input_ids)
    assert torch.equal(cola_texts.offsets, cola.offsets)
    with pytest.raises(ValueError, match="test"):
        load("cola_texts", "test")  # X_mlm has X's train and dev splits only


# ---- losses -------------------------------------------------------------------------------------------------------

def hand_cross_entropy(logits, labels):
    """Mean of -log softmax(logits)[label], written out."""
    return -(logits.log_softmax(-1).gather(1, labels[:, None]).squeeze(1)).mean()


def test_group_loss_of_a_mask_lm_batch_is_its_loss_table_entry():
    model = tiny_model(["cls", "mask_lm", "pretrain"], seed=2)
    batch, _ = masked_batch(packed(random_rows([11, 6, 9], seed=6)), seed=6)
    inputs = (batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    labels = TYPES["mask_lm"].masked_labels(batch)
    assert labels is batch["masked_labels"] and "labels" not in batch  # no NSP labels: a mask_lm batch
    with torch.no_grad():
        output = model(*inputs, 1, [labels], token_index=batch["token_index"], heads=[1],
                       masked_index=batch["masked_index"])
        logits, losses = output.logits, output.losses
        output = model(*inputs, 1, [labels], token_index=batch["token_index"], masked_index=batch["masked_index"])
        alone, alone_loss = output.logits[0], output.losses[0]
    assert logits[0].shape == (labels.numel(), TINY["vocab_size"])
    torch.testing.assert_close(losses[0], TYPES["mask_lm"].loss(logits[0], labels), rtol=0, atol=0)
    torch.testing.assert_close(losses[0], hand_cross_entropy(logits[0], labels), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(alone_loss, losses[0], rtol=0, atol=EQUAL_ATOL)
    torch.testing.assert_close(alone, logits[0], rtol=0, atol=EQUAL_ATOL)


def test_pretrain_loss_is_masked_lm_plus_next_sentence_cross_entropy():
    model = tiny_model(["cls", "mask_lm", "pretrain"], seed=2)
    next_labels = torch.tensor([NSP_IS_NEXT, NSP_RANDOM, NSP_RANDOM, NSP_IS_NEXT])
    features = packed(random_rows([11, 6, 9, 14], seed=7), segment_a=[6, 3, 5, 8], labels=next_labels)
    batch, masked = masked_batch(features, seed=7)
    assert torch.equal(masked.labels, next_labels)  # masking keeps the NSP labels
    labels = TYPES["pretrain"].masked_labels(batch)
    assert labels[0] is batch["masked_labels"] and torch.equal(labels[1], next_labels)
    with torch.no_grad():
        output = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], 2, [labels],
                       token_index=batch["token_index"], heads=[2], masked_index=batch["masked_index"])
    (logits,), (loss,) = output.logits, output.losses
    assert isinstance(logits, PreTrainingLogits)
    words, next_sentence = logits.masked_lm, logits.next_sentence
    assert next_sentence.shape == (len(features), modeling.NSP_CLASSES)
    by_hand = hand_cross_entropy(words, labels[0]) + hand_cross_entropy(next_sentence, next_labels)
    torch.testing.assert_close(loss, by_hand, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(loss, TYPES["pretrain"].loss(logits, labels), rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["mask_lm", "pretrain"])
def test_micro_batches_with_step_denominators_train_as_one_batch(kind):
    """The masked-LM loss summed over K micro-batches (each divided by token_denominators' share, then by K as
    training_step does) is the mean over every masked token of the step, however unevenly the masks fall."""
    model = tiny_model([kind], seed=4)
    next_labels = torch.tensor([0, 1, 1, 0, 1, 0]) if kind == "pretrain" else None
    features = packed(random_rows([40, 6, 5, 22, 9, 14], seed=10), labels=next_labels)
    masked = mask_tokens(features, TINY_MASKING, seeded_generator(SEED, 10))
    micro = [torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])]  # 6 + 1 + 1 masked tokens against 3 + 1 + 2
    counts = [[int(chosen_per_text(features, masked)[indices].sum())] for indices in micro]  # per micro-batch
    assert counts[0] != counts[1]
    denominators = train_step.token_denominators(counts, world_size=1)
    assert denominators == [sum(c[0] for c in counts) / len(micro)]

    def loss_of(indices, denominator):
        batch = masking.with_masked_positions(make_batch(masked, indices))
        with torch.no_grad():
            output = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], 0,
                           [TYPES[kind].masked_labels(batch)], token_index=batch["token_index"],
                           masked_index=batch["masked_index"], denominators=[denominator])
        return output.losses[0]

    step = sum(loss_of(i, denominators[0]) for i in micro) / len(micro)
    whole = loss_of(torch.arange(len(features)), None)  # one batch: the plain mean
    torch.testing.assert_close(step, whole, rtol=1e-6, atol=1e-6)


def test_masked_lm_loss_of_a_batch_with_nothing_masked_is_zero():
    empty = torch.zeros(0, TINY["vocab_size"], requires_grad=True)
    loss = TYPES["mask_lm"].loss(empty, torch.zeros(0, dtype=torch.int64))
    assert loss.item() == 0.0 and not torch.isnan(loss)
    loss.backward()  # and trains nothing, without NaN gradients
    assert torch.equal(empty.grad, torch.zeros_like(empty))


def test_take_examples_gives_the_drawn_examples_as_features():
    features = packed(random_rows([5, 9, 4, 7], seed=8), segment_a=[5, 4, 4, 3], labels=torch.tensor([0, 1, 1, 0]))
    indices = torch.tensor([3, 1, 3])
    taken = feats.take_examples(features, indices)
    assert len(taken) == 3
    for i, j in enumerate(indices.tolist()):
        assert torch.equal(taken.input_ids[taken.offsets[i]:taken.offsets[i + 1]],
                           features.input_ids[features.offsets[j]:features.offsets[j + 1]])
    assert torch.equal(taken.segment_a_len, features.segment_a_len[indices])
    assert torch.equal(taken.labels, features.labels[indices])


# ---- --tasks with masked LM ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, groups", [
    ("sst|sst_mlm", [["sst"], ["sst_mlm"]]),
    ("SST-2_mlm, cola", [["sst_mlm"], ["cola"]]),  # aliases, any case
    ("pku_cws&pku_ner|pku_pretrain|pku_cws_mlm", [["pku_cws", "pku_ner"], ["pku_pretrain"], ["pku_cws_mlm"]]),
    ("news_pretrain|cola_texts | cola_mlm|news_lm", [["news_pretrain"], ["cola_texts"], ["cola_mlm"], ["news_lm"]]),
])
def test_tasks_grammar_with_masked_lm(spec, groups, lm_problems):
    assert resolve_groups(spec, user_problems=lm_problems) == groups


@pytest.mark.parametrize("spec, message", [
    ("sst&sst_mlm", r"sst_mlm masks its inputs, so it cannot share a batch with sst: chain it with \| instead of &"),
    ("cola_mlm&sst_mlm", r"cola_mlm masks its inputs.*with sst_mlm: chain it with \|"),
    ("pku_cws&pku_pretrain", r"pku_pretrain masks its inputs.*chain it with \|"),
    ("news_lm&cola", r"news_lm masks its inputs.*chain it with \|"),
    ("foo_mlm", r"unknown problem 'foo_mlm'.*X_mlm"),
    ("pku_pretrain_mlm", r"pku_pretrain is already a pretrain problem; pku_pretrain_mlm is not defined"),
    ("news_lm_mlm", r"news_lm is already a mask_lm problem"),
    ("sst_mlm|SST-2_mlm", "names sst_mlm twice"),
])
def test_tasks_grammar_errors_with_masked_lm(spec, message, lm_problems):
    with pytest.raises(ValueError, match=message) as error:
        resolve_groups(spec, user_problems=lm_problems)
    assert "\n" not in str(error.value)


def test_every_problem_has_a_masked_lm_twin():
    sst_mlm = get_problem("sst_mlm")
    assert sst_mlm.type == "mask_lm" and sst_mlm.inputs_of == "sst" and sst_mlm.labels is None
    assert set(sst_mlm.splits) == {"train", "dev"} and sst_mlm.metrics == {"dev": ("acc", "perplexity")}
    assert sst_mlm.splits["dev"] == get_problem("sst").splits["dev"]
    mnli_mlm = get_problem("mnli_mlm")  # both dev sets, no test
    assert set(mnli_mlm.splits) == {"train", "dev_matched", "dev_mismatched"}
    assert set(mnli_mlm.metrics) == {"dev_matched", "dev_mismatched"}
    assert get_problem("pku_ner_mlm").inputs_of == "pku_ner"
    assert problems.mlm_problem(get_problem("cola")) == get_problem("cola_mlm")


# ---- metrics and model selection ----------------------------------------------------------------------------------

def direct_statistics(model, features, task_id):
    """Sums over the masked tokens (and pairs) computed one example at a time: what predict_split must add up."""
    total = dict(masked=0, loss=0.0, correct=0, pairs=0, next_correct=0)
    with torch.no_grad():
        for i in range(len(features)):
            batch = masking.with_masked_positions(make_batch(features, [i]))
            logits = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], task_id,
                           masked_index=batch["masked_index"]).logits[0]
            words = logits.masked_lm if isinstance(logits, PreTrainingLogits) else logits
            total["masked"] += batch["masked_labels"].numel()
            total["loss"] += F.cross_entropy(words, batch["masked_labels"], reduction="sum").item()
            total["correct"] += (words.argmax(-1) == batch["masked_labels"]).sum().item()
            if isinstance(logits, PreTrainingLogits):
                total["pairs"] += 1
                total["next_correct"] += (logits.next_sentence.argmax(-1) == batch["labels"]).sum().item()
    return total


@pytest.mark.parametrize("kind", ["mask_lm", "pretrain"])
def test_lm_statistics_give_accuracy_and_perplexity_over_the_masked_tokens(kind):
    model = tiny_model([kind], seed=3)
    # Half of every text is one word, and the head is biased toward it: a masked-token accuracy far from 0 and 100.
    frequent = FIRST_WORD_ID
    rows = [[CLS_ID, *[frequent if j % 2 else w for j, w in enumerate(row[1:-1])], SEP_ID]
            for row in random_rows([12, 30, 7, 19, 25, 9, 16], seed=9)]
    with torch.no_grad():
        model.cls.predictions.bias[frequent] += 5.0
    next_labels = torch.tensor([0, 1, 1, 0, 1, 0, 0]) if kind == "pretrain" else None
    features = packed(rows, segment_a=[len(row) // 2 for row in rows], labels=next_labels)
    masked = mask_tokens(features, TINY_MASKING, seeded_generator(masking.DEV_MASKING_SEED))
    problem = Problem("lm", "", {"dev": problem_record.TextSplit("dev.txt")}, None,
                      {"dev": problem_types.MASK_LM_METRICS if kind == "mask_lm" else problem_types.PRETRAIN_METRICS},
                      type=kind)
    statistics = evaluation.predict_split(model, problem, masked, 0, 0, batch_size=3, device=torch.device("cpu"))
    assert list(statistics) == list(problem_types.LM_STATISTICS)
    # the same in batches of another size
    assert evaluation.predict_split(model, problem, masked, 0, 0, batch_size=4, device=torch.device("cpu")) == \
        pytest.approx(statistics, rel=1e-6)
    direct = direct_statistics(model, masked, 0)
    assert statistics["masked"] == direct["masked"] == (masked.token_labels != IGNORE_INDEX).sum()
    assert statistics["correct"] == direct["correct"] and 0 < direct["correct"] < direct["masked"]
    assert statistics["loss"] == pytest.approx(direct["loss"], rel=1e-5)
    metrics = evaluation.split_metrics(problem, "dev", statistics, masked)
    accuracy = 100.0 * direct["correct"] / direct["masked"]
    perplexity = math.exp(direct["loss"] / direct["masked"])
    if kind == "mask_lm":
        assert metrics == {"acc": pytest.approx(accuracy), "perplexity": pytest.approx(perplexity, rel=1e-5)}
    else:
        assert statistics["pairs"] == len(features)
        assert metrics == {"mlm_acc": pytest.approx(accuracy), "perplexity": pytest.approx(perplexity, rel=1e-5),
                           "nsp_acc": pytest.approx(100.0 * direct["next_correct"] / len(features))}
    assert 1.0 < perplexity < TINY["vocab_size"] * 10


def test_model_selection_leaves_lm_problems_out_unless_alone():
    by_name = {name: get_problem(name) for name in ("sst", "cola", "sst_mlm", "pku_pretrain")}
    scores = {"sst": {"acc": 80.0}, "cola": {"mcc": 40.0}, "sst_mlm": {"acc": 30.0, "perplexity": 12.0},
              "pku_pretrain": {"mlm_acc": 20.0, "nsp_acc": 70.0, "perplexity": 50.0}}
    assert evaluation.mean_score(scores, by_name) == pytest.approx(60.0)
    only_lm = {name: scores[name] for name in ("sst_mlm", "pku_pretrain")}
    assert evaluation.mean_score(only_lm, by_name) == pytest.approx(-(math.log(12.0) + math.log(50.0)) / 2)
    assert evaluation.best_model_score(scores, 60.0, "sst_mlm/perplexity", by_name) == -12.0  # lower is better
    assert evaluation.best_model_score(scores, 60.0, "sst_mlm/acc", by_name) == 30.0
    assert evaluation.best_model_score(scores, 60.0, "sst_mlm", by_name) == pytest.approx(-math.log(12.0))
    # a masked LM is scored on its masked tokens: no predictions are written (its predict gives sums, not values)
    with pytest.raises(ValueError, match="no prediction file"):
        problems.prediction_file_name("sst_mlm", "dev")
    with pytest.raises(ValueError, match="no prediction file"):
        problem_types.of(by_name["sst_mlm"]).write(by_name["sst_mlm"], "dev", torch.zeros(2, dtype=torch.int64),
                                                   None, Path("unused.tsv"), lambda: [])


# ---- the problems file --------------------------------------------------------------------------------------------

def test_lm_problems_file(lm_problems):
    assert {name: problem.type for name, problem in lm_problems.items()} == {
        "news_pretrain": "pretrain", "news_lm": "mask_lm", "review_texts_lm": "mask_lm", "cola_texts": "mask_lm"}
    assert lm_problems["news_pretrain"].metrics == {"dev": problem_types.PRETRAIN_METRICS}
    assert lm_problems["news_lm"].splits["train"] == problem_record.TextSplit(str((DOCUMENTS / "train.txt").resolve()))
    assert lm_problems["review_texts_lm"].splits["train"].label is None
    cola_texts = lm_problems["cola_texts"]
    assert cola_texts.inputs_of == "cola" and cola_texts.loss_weight == 0.5 and set(cola_texts.splits) == {
        "train", "dev"}
    for problem in [*lm_problems.values(), get_problem("sst_mlm"), get_problem("pku_pretrain")]:  # config.json
        assert problem_record.problem_from_record(json.loads(json.dumps(problem.to_record()))) == problem


TEXT_FILES = {"t.txt": "one line\nanother\n\nthird\nfourth\n", "t.tsv": "text\tlabel\na b\tx\nc d\ty\n"}


@pytest.mark.parametrize("spec, message", [
    ({"news_mlm": {"type": "mask_lm", "format": "text", "train": "t.txt"}},
     r"problem 'news_mlm': names ending in _mlm are the predefined masked-LM problems"),
    ({"lm": {"type": "mask_lm", "format": "tsv", "train": "t.tsv", "text": "text", "label": "label"}},
     r"problem 'lm': a mask_lm problem learns from the text alone; drop 'label'"),
    ({"lm": {"type": "mask_lm", "format": "text", "train": "t.txt", "labels": ["a", "b"]}},
     r"problem 'lm': a mask_lm problem learns from the text alone; drop 'labels'"),
    ({"lm": {"type": "pretrain", "format": "text", "train": "t.txt", "test": "t.txt"}},
     r"problem 'lm': a pretrain problem learns from the text alone; drop 'test'"),
    ({"lm": {"type": "pretrain", "format": "tsv", "train": "t.tsv", "text": "text"}},
     r"problem 'lm': a pretrain problem reads text files, and tsv files hold .*mask_lm or .* problems "
     r"\(got type pretrain, format tsv\)"),
    ({"lm": {"type": "cls", "format": "text", "train": "t.txt"}},
     r"problem 'lm': a cls problem reads tsv or jsonl files, and text files hold mask_lm or pretrain problems "
     r"\(got type cls, format text\)"),
    ({"lm": {"type": "mask_lm", "format": "text", "train": "t.txt", "text": "text"}},
     r"problem 'lm': key 'text' does not apply to format text"),
    ({"lm": {"type": "cls", "inputs_of": "sst"}}, r"problem 'lm': inputs_of is for mask_lm problems, not 'cls'"),
    ({"lm": {"type": "mask_lm", "inputs_of": "sst", "train": "t.txt"}},
     r"problem 'lm': a problem with inputs_of reads that problem's files; drop 'train'"),
    ({"lm": {"type": "mask_lm", "inputs_of": "nothing"}}, r"problem 'lm': unknown problem 'nothing'"),
    ({"lm": {"type": "mask_lm", "inputs_of": 3}}, r"problem 'lm': inputs_of must be a problem's name, got 3"),
    ({"lm": {"type": "mask_lm", "inputs_of": "pku_pretrain"}},
     r"problem 'lm': inputs_of 'pku_pretrain' is itself a pretrain problem"),
    ({"a": {"type": "mask_lm", "format": "text", "train": "t.txt"}, "lm": {"type": "mask_lm", "inputs_of": "a"}},
     r"problem 'lm': inputs_of 'a' is itself a mask_lm problem"),
    ({"lm": {"type": "mask_lm", "inputs_of": "a"}, "a": {"type": "mask_lm", "inputs_of": "sst"}},
     r"problem 'lm': inputs_of 'a' is itself a mask_lm problem"),
    ({"lm": {"type": "mask_lm", "inputs_of": "sst", "loss_weight": 0}},
     r"problem 'lm': loss_weight must be a positive number"),
    ({"lm_x": {"type": "mask_lm", "inputs_of": "sst_mlm"}},
     r"problem 'lm_x': inputs_of 'sst_mlm' is itself a mask_lm problem"),
])
def test_lm_problems_file_errors(tmp_path, spec, message):
    path = write_problems(tmp_path, spec, TEXT_FILES)
    with pytest.raises(ValueError, match=message) as error:
        read_problems_file(path)
    text = str(error.value)
    assert text.startswith(f"{path}: problem ") and "\n" not in text


def test_inputs_of_may_name_a_problem_defined_later(tmp_path):
    path = write_problems(tmp_path, {
        "texts_lm": {"type": "mask_lm", "inputs_of": "reviews"},
        "reviews": {"type": "cls", "format": "tsv", "train": "t.tsv", "text": "text", "label": "label"}}, TEXT_FILES)
    found = read_problems_file(path)
    assert list(found) == ["texts_lm", "reviews"]
    assert found["texts_lm"].inputs_of == "reviews" and found["texts_lm"].splits == found["reviews"].splits
