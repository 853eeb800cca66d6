"""Examples and their tokenised features: packed ids, word rows, batches, and the on-disk feature cache.

Text inputs are `[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]`, kept un-padded and packed: the ids of example i are
`input_ids[offsets[i]:offsets[i + 1]]`, the first `segment_a_len[i]` of them in segment 0. Word inputs (a list of
words per sentence, as tagging problems read them) become one row per piece of a sentence, `[CLS] pieces [SEP]`: a
sentence longer than max_seq_length allows is cut into consecutive rows at word boundaries, never truncated or
dropped, so every word gets exactly one prediction (on its first piece). A problem that labels the whole example
(cls, regression, multi_cls) on word inputs reads only each sentence's first row: its input is the sentence cut to
max_seq_length at a word boundary, as a long text is truncated, and it is trained, scored and written once per
sentence (`example_rows`); an & group keeps one encoder pass over all the rows. `make_batch` pads a batch with
vectorised tensor ops; `cached_features` keeps features on disk under a name that hashes everything they depend on.
"""
import array
import hashlib
import logging
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import modalities
from run_files import write_atomic

logger = logging.getLogger(__name__)

# Bump when anything that changes features without changing their inputs changes (tokenizer, truncation, layout):
# it is part of every cache key, so old cache files are no longer found.
FEATURE_FORMAT_VERSION = 1
# Google's BERT pads input_ids with 0 ([PAD] is line 0 of every BERT vocabulary).
PAD_ID = 0
# Token label where there is none to learn ([CLS], [SEP], padding, a word's later pieces): the default
# ignore_index of torch.nn.functional.cross_entropy.
IGNORE_INDEX = -100
# Fewest tokens a sequence can have: [CLS] [SEP] [SEP] (a pair with both sentences truncated away).
MIN_SEQ_LENGTH = 3
# Rows of a word input: [CLS] pieces [SEP].
SPECIAL_TOKENS_PER_ROW = 2
# Below this many examples, starting worker processes costs more than it saves (about 0.5 s of tokenizing).
PARALLEL_MIN_EXAMPLES = 20_000
# Examples per task sent to a worker: large enough to amortise pickling, small enough to balance the load.
WORKER_CHUNK_EXAMPLES = 4096
HASH_BLOCK_BYTES = 1 << 20


@dataclass(slots=True)
class Example:
    guid: str  # "<task>-<split>-<line number>"
    text_a: str
    text_b: str | None  # None for single-sentence tasks
    label: str | float | None  # label string; the 0-5 score for STS-B; None on test
    index: str | None = None  # test rows: the file's index/id column
    image: object = None  # an image (an absolute file path, a nested list of pixels or a uint8 array), or None
    vectors: object = None  # feature vectors (a list of lists or an absolute .npy path), or None


@dataclass(slots=True)
class TaggedSentence:
    """A sentence as words (tokens): one tag per word, or None on an unlabelled split."""
    guid: str  # "<problem>-<split>-<line number of its first word>"
    tokens: list
    tags: list | None
    image: object = None  # as Example's (a jsonl sentence's image), or None
    vectors: object = None  # as Example's, or None


@dataclass(eq=False)
class Features:
    """The tokenised examples of one split, un-padded and packed (N examples, "rows").

    The ids of example i are input_ids[offsets[i]:offsets[i + 1]]: [CLS] A [SEP] or [CLS] A [SEP] B [SEP]; the first
    segment_a_len[i] of them ([CLS] A [SEP]) have segment id 0, the rest (B [SEP]) segment id 1.

    Problems whose input is a list of words (seq_tag, and People's Daily's entity types) have one row per piece of
    a sentence: [CLS] words [SEP], all segment 0; a sentence too long for max_seq_length is cut into consecutive
    rows at word boundaries. `sentence`, `first_word` and `word_starts` map the rows back to the words of the file.
    A per-example problem's labels sit on every row of a sentence, and only its first row is an example
    (example_rows).
    """
    input_ids: torch.Tensor  # int32 [total tokens], all examples concatenated
    offsets: torch.Tensor  # int64 [N + 1]
    segment_a_len: torch.Tensor  # int32 [N]
    # cls: int64 [N] class index; regression: float32 [N] label / label_scale (STS-B: score / 5);
    # multi_cls: float32 [N, L] multi-hot (word inputs: the sentence's, on each of its rows); None for seq_tag and
    # on test
    labels: torch.Tensor | None
    index: list | None = field(default=None)  # test splits: the file's index/id value per example
    # seq_tag with labels: int64 [total tokens], aligned to input_ids: the label id at each word's first piece,
    # IGNORE_INDEX at [CLS], [SEP] and every other piece
    token_labels: torch.Tensor | None = None
    sentence: torch.Tensor | None = None  # word inputs: int64 [N], the source sentence (0-based, file order) of row i
    first_word: torch.Tensor | None = None  # word inputs: int64 [N], that sentence's word that row i starts with
    # word inputs: int64 [total words]: the position in input_ids of each word's first piece, in file order
    # (sentence by sentence, word by word), so token_values[word_starts] lists one value per word of the file
    word_starts: torch.Tensor | None = None
    # Problems with images or feature vectors (modalities.py): int8 [total tokens], aligned to input_ids, each token's
    # modality (TEXT, IMAGE, VECTORS); the images uint8 [N, C, H, W]; the vectors float32 [N, V, width]; patch_size
    modality: torch.Tensor | None = None
    images: torch.Tensor | None = None
    vectors: torch.Tensor | None = None
    patch_size: int | None = None

    @property
    def lengths(self):
        """int64 [N]: tokens per example, [CLS] and [SEP]s included."""
        return self.offsets[1:] - self.offsets[:-1]

    def __len__(self):
        return self.segment_a_len.numel()


def truncated_pair_lengths(len_a, len_b, max_length):
    """Lengths after Google's _truncate_seq_pair: drop the last token of the longer side (B on a tie) until they fit.

    One token at a time from the longer side keeps as much of the shorter sentence as possible, which matters
    more than truncating both by the same fraction.
    """
    while len_a + len_b > max_length:
        if len_a > len_b:
            len_a -= 1
        else:
            len_b -= 1
    return len_a, len_b


def _encode(tokenizer, texts, max_seq_length):
    """(text_a, text_b or None) pairs -> packed ids (int32), lengths (int64), segment-A lengths (int32), as numpy."""
    cls_id, sep_id = tokenizer.vocab["[CLS]"], tokenizer.vocab["[SEP]"]
    ids = array.array("i")
    lengths = array.array("q")
    segment_a = array.array("i")
    for text_a, text_b in texts:
        a = tokenizer.encode(text_a)
        if text_b is None:
            a = a[:max_seq_length - 2]  # room for [CLS] and [SEP]
            sequence = [cls_id, *a, sep_id]
            segment_a.append(len(sequence))
        else:
            b = tokenizer.encode(text_b)
            len_a, len_b = truncated_pair_lengths(len(a), len(b), max_seq_length - 3)  # [CLS], [SEP], [SEP]
            sequence = [cls_id, *a[:len_a], sep_id, *b[:len_b], sep_id]
            segment_a.append(len_a + 2)
        ids.extend(sequence)
        lengths.append(len(sequence))
    return (np.frombuffer(ids, dtype=np.int32), np.frombuffer(lengths, dtype=np.int64),
            np.frombuffer(segment_a, dtype=np.int32))


# Worker processes get the tokenizer once, through the pool initializer, then only text chunks.
_worker_tokenizer = None


def _init_worker(tokenizer):
    global _worker_tokenizer
    _worker_tokenizer = tokenizer
    # Ctrl-C reaches the whole process group: the parent stops the pool, so a worker's own traceback would only add
    # noise to the one line the script prints.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _encode_in_worker(job):
    texts, max_seq_length = job
    return _encode(_worker_tokenizer, texts, max_seq_length)


def available_cpus():
    """CPUs this process may run on (its affinity mask, which job schedulers set), not all of the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _process_pool(num_workers, tokenizer):
    # fork (Linux) starts workers in milliseconds without re-importing torch; they run pure Python only.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    return context.Pool(num_workers, initializer=_init_worker, initargs=(tokenizer,))


def pack_texts(examples, tokenizer, max_seq_length, num_workers=None, desc="tokenizing"):
    """Examples' texts -> packed input_ids (int32 [total tokens]), offsets (int64 [N + 1]), segment_a_len (int32 [N]);
    big sets in `num_workers` processes (default: every CPU)."""
    if max_seq_length < MIN_SEQ_LENGTH:
        raise ValueError(
            f"max_seq_length must be at least {MIN_SEQ_LENGTH} ([CLS] A [SEP] B [SEP]), got {max_seq_length}"
        )
    texts = [(example.text_a, example.text_b) for example in examples]
    num_workers = available_cpus() if num_workers is None else num_workers
    chunks = [texts[start:start + WORKER_CHUNK_EXAMPLES] for start in range(0, len(texts), WORKER_CHUNK_EXAMPLES)]
    parts = []
    if num_workers > 1 and len(texts) >= PARALLEL_MIN_EXAMPLES:
        with _process_pool(min(num_workers, len(chunks)), tokenizer) as pool, \
                tqdm(total=len(texts), desc=desc, unit="ex", leave=False, disable=None) as progress:
            for part in pool.imap(_encode_in_worker, [(chunk, max_seq_length) for chunk in chunks]):
                parts.append(part)
                progress.update(len(part[1]))
    else:
        with tqdm(total=len(texts), desc=desc, unit="ex", leave=False, disable=None) as progress:
            for chunk in chunks:
                parts.append(_encode(tokenizer, chunk, max_seq_length))
                progress.update(len(chunk))
    ids, lengths, segment_a = (np.concatenate(arrays) for arrays in zip(*parts))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return torch.from_numpy(ids), torch.from_numpy(offsets), torch.from_numpy(segment_a)


def convert_examples(problem, examples, tokenizer, max_seq_length, encode_labels, num_workers=None,
                     desc="tokenizing", source=None):
    """Examples of one split of `problem` -> packed Features, with the labels `encode_labels(problem, examples,
    features)` gives ((labels, token_labels): the problem type's encoding).

    Text examples: [CLS] A [SEP] (B [SEP]) (pack_texts, in worker processes for big sets), then the image's patches
    and the feature vectors of a problem that has them (modalities.with_inputs; `source`, the data file, names it in
    errors). Word examples (TaggedSentence): one row per piece of a sentence (encode_word_rows), in one process.
    """
    if not examples:
        raise ValueError(f"no {problem.name} examples to convert")
    multimodal = modalities.has_inputs(problem)
    if isinstance(examples[0], TaggedSentence):
        row_length = modalities.text_length(problem, max_seq_length, SPECIAL_TOKENS_PER_ROW + 1) if multimodal \
            else max_seq_length
        ids, lengths, sentence, first_word, word_starts = encode_word_rows(
            tokenizer, [example.tokens for example in examples], row_length)
        features = Features(input_ids=torch.from_numpy(ids), offsets=torch.from_numpy(offsets_of(lengths)),
                            segment_a_len=torch.from_numpy(lengths.astype(np.int32)), labels=None,
                            sentence=torch.from_numpy(sentence), first_word=torch.from_numpy(first_word),
                            word_starts=torch.from_numpy(word_starts))
        if multimodal:  # each row of a sentence with the sentence's image and vectors
            features = modalities.with_inputs(problem, [examples[s] for s in sentence.tolist()], features,
                                              tokenizer.vocab["[SEP]"], source)
    else:
        text_length = modalities.text_length(problem, max_seq_length, MIN_SEQ_LENGTH) if multimodal \
            else max_seq_length
        input_ids, offsets, segment_a_len = pack_texts(examples, tokenizer, text_length, num_workers, desc)
        features = Features(input_ids=input_ids, offsets=offsets, segment_a_len=segment_a_len, labels=None,
                            index=None if examples[0].index is None else [example.index for example in examples])
        if multimodal:
            features = modalities.with_inputs(problem, examples, features, tokenizer.vocab["[SEP]"], source)
    features.labels, features.token_labels = encode_labels(problem, examples, features)
    return features


def encode_word_rows(tokenizer, sentences, max_seq_length):
    """Word lists -> rows [CLS] pieces [SEP], cut at word boundaries so that every word is in exactly one row.

    Returns numpy arrays: input_ids int32 [total tokens], lengths int64 [N], sentence int64 [N], first_word int64 [N],
    word_starts int64 [total words] (position of each word's first piece in input_ids, in file order).
    A word with more pieces than a row holds keeps its first max_seq_length - 2: its label and prediction sit on the
    first piece, and the rest of that one word cannot fit in any row.
    """
    if max_seq_length <= SPECIAL_TOKENS_PER_ROW:
        raise ValueError(f"max_seq_length must be at least {SPECIAL_TOKENS_PER_ROW + 1} ([CLS] a word [SEP]), "
                         f"got {max_seq_length}")
    budget = max_seq_length - SPECIAL_TOKENS_PER_ROW
    cls_id, sep_id = tokenizer.vocab["[CLS]"], tokenizer.vocab["[SEP]"]
    ids, lengths, sentence, first_word, word_starts = [], [], [], [], []
    for number, words in enumerate(sentences):
        if not words:
            raise ValueError(f"sentence {number} has no words (every sentence needs at least one row)")
        pieces = tokenizer.encode_words(words)
        w = 0
        while w < len(pieces):  # one row per pass
            row_start, used = len(ids), 0
            ids.append(cls_id)
            sentence.append(number)
            first_word.append(w)
            while w < len(pieces):
                word = pieces[w][:budget]
                if used + len(word) > budget:
                    break  # the next row starts with this word (it fits there: used was > 0 here)
                word_starts.append(len(ids))
                ids.extend(word)
                used += len(word)
                w += 1
            ids.append(sep_id)
            lengths.append(len(ids) - row_start)
    return (np.asarray(ids, dtype=np.int32), np.asarray(lengths, dtype=np.int64),
            np.asarray(sentence, dtype=np.int64), np.asarray(first_word, dtype=np.int64),
            np.asarray(word_starts, dtype=np.int64))


def offsets_of(lengths):
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def row_of_word(features):
    """int64 [total words]: the row holding each word (its first piece lies in [offsets[r], offsets[r + 1]))."""
    return torch.searchsorted(features.offsets, features.word_starts, right=True) - 1


def word_values(features, token_values):
    """Per-token values in input_ids order (predictions, or token_labels) -> one list per sentence of the file, in file
    order, of the values at its words' first pieces (the rows of a cut sentence joined)."""
    token_values = torch.as_tensor(token_values).cpu()
    if token_values.shape != features.input_ids.shape:
        raise ValueError(f"{tuple(token_values.shape)} token values for {features.input_ids.numel()} tokens (one per "
                         "packed token, in input_ids order)")
    values = token_values[features.word_starts].tolist()
    words_per_sentence = torch.bincount(features.sentence[row_of_word(features)]).tolist()
    sentences, start = [], 0
    for count in words_per_sentence:
        sentences.append(values[start:start + count])
        start += count
    return sentences


def example_indices(features, indices):
    """Of the rows at `indices`, those that stand for an example of a per-example problem, in order: all of them for
    text inputs; for word inputs the rows that start a sentence (a sentence's later pieces carry no example)."""
    return indices if features.first_word is None else indices[features.first_word[indices] == 0]


def example_rows(features):
    """int64 (S,): the rows of the features' S examples in a per-example problem, in file order (example_indices of
    every row)."""
    return example_indices(features, torch.arange(len(features)))


def packed_positions(features, indices):
    """Where the real tokens of the examples at `indices` sit in the features' packed input_ids, in the model's token
    order (row-major: example by example), (N,) int64."""
    starts = features.offsets[indices]
    lengths = features.offsets[indices + 1] - starts
    row_starts = torch.cumsum(lengths, 0) - lengths  # where each example's tokens start among the batch's N
    within = torch.arange(int(lengths.sum())) - torch.repeat_interleave(row_starts, lengths)
    return torch.repeat_interleave(starts, lengths) + within


def take_examples(features, indices):
    """The examples at `indices` as Features of their own: ids, segments and per-example labels (what masking and
    make_batch read)."""
    lengths = features.lengths[indices]
    offsets = torch.zeros(len(indices) + 1, dtype=torch.int64)
    torch.cumsum(lengths, 0, out=offsets[1:])
    positions = packed_positions(features, indices)
    return Features(input_ids=features.input_ids[positions],
                                    offsets=offsets, segment_a_len=features.segment_a_len[indices],
                                    labels=None if features.labels is None else features.labels[indices],
                                    **modalities.input_fields(features, indices, positions))


def first_examples(features, count):
    """The first `count` examples of `features` (--max_train_samples, --max_eval_samples); all when fewer."""
    n = len(features)
    if count is None or count >= n:
        return features
    tokens = int(features.offsets[count])
    total = int(features.offsets[-1])
    cut = {}
    for item in fields(features):
        value = getattr(features, item.name)
        if item.name == "offsets":
            cut[item.name] = value[:count + 1]
        elif torch.is_tensor(value) and value.shape[0] == total:  # packed per-token values
            cut[item.name] = value[:tokens]
        elif torch.is_tensor(value) or isinstance(value, list):  # one value per example
            cut[item.name] = value[:count]
        else:
            cut[item.name] = value
    return type(features)(**cut)


def make_batch(features, indices, pad_to=None, pad_multiple=8):
    """Pad the examples at `indices` into a batch of int64 [B, T] tensors (plus labels [B] unless on test, and the
    flat positions of the real tokens, token_index [N]; multi_cls labels are [B, L]; seq_tag features add
    token_labels [N], one per real token, in token_index order; word inputs example_index [E], the rows that start
    a sentence; features with images or feature vectors add "inputs", modalities.batch_inputs).

    T = the longest example rounded up to `pad_multiple` (padding is masked, so results do not change, and
    tensor-core friendly shapes repeat more often), or exactly `pad_to` (Gated-BERT's gate needs max_seq_length).
    Works on whichever device `features` live on, with no per-example Python loop.
    """
    indices = torch.as_tensor(indices, dtype=torch.int64, device=features.offsets.device)
    if indices.ndim != 1 or indices.numel() == 0:
        raise ValueError(f"make_batch needs a non-empty 1-D list of example indices, got shape {tuple(indices.shape)}")
    starts = features.offsets[indices]  # [B]
    lengths = features.offsets[indices + 1] - starts  # [B]
    longest = int(lengths.max())
    if pad_to is None:
        width = -(-longest // pad_multiple) * pad_multiple
    elif longest > pad_to:
        raise ValueError(f"an example has {longest} tokens, more than pad_to={pad_to}")
    else:
        width = pad_to
    positions = torch.arange(width, device=indices.device)  # [T]
    real = positions < lengths[:, None]  # [B, T]: True on real tokens
    gather_at = torch.where(real, starts[:, None] + positions, 0)  # [B, T]: padding reads token 0, then masked
    input_ids = torch.where(real, features.input_ids[gather_at].long(), PAD_ID)
    segment_b = positions >= features.segment_a_len[indices].long()[:, None]  # [B, T]
    batch = {
        "input_ids": input_ids,
        "token_type_ids": (real & segment_b).long(),
        "attention_mask": real.long(),
        # [N]: flat positions of the real tokens, for the model's packed layers; built here, on the host, so the
        # model need not ask the GPU for it (a sync).
        "token_index": real.flatten().nonzero().squeeze(1),
    }
    if features.labels is not None:
        batch["labels"] = features.labels[indices]  # [B], or [B, L] multi-hot (multi_cls)
    if features.token_labels is not None:
        # [N]: the labels of the real tokens in token_index order (row-major; boolean indexing keeps that order)
        batch["token_labels"] = features.token_labels[gather_at[real]]
    if features.first_word is not None:
        # [E]: the batch rows that start a sentence, the only ones a per-example head reads (example_indices)
        batch["example_index"] = (features.first_word[indices] == 0).nonzero().squeeze(1)
    if features.modality is not None:  # images and feature vectors: what the model puts in their tokens' rows
        batch["inputs"] = modalities.batch_inputs(features, indices, gather_at, real)
    return batch


def default_cache_dir():
    """$EMBERT_CACHE/features, or ~/.cache/embert/features (the data directory may be read-only)."""
    return Path(os.environ.get("EMBERT_CACHE", "~/.cache/embert")).expanduser() / "features"


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def save_features(features, path):
    """torch.save every field, atomically: concurrent readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {item.name: getattr(features, item.name) for item in fields(Features)}

    def write(tmp):
        with open(tmp, "wb") as f:
            torch.save(payload, f)

    write_atomic(path, write)


def cached_features(cache_path, build, what):
    """Features from `cache_path` when it holds them, else `build()`, saved there for the next run.

    Safe for concurrent callers (DDP ranks, say): each writes its own temporary file and renames it into place.
    They would all build, though: let one rank build the cache first. `what` names the data in log lines.
    """
    if cache_path.is_file():
        try:
            return Features(**torch.load(cache_path, weights_only=True))
        except Exception as error:  # a damaged cache file is rebuilt, never fatal
            logger.warning("ignoring unreadable feature cache %s (%s); rebuilding it", cache_path, error)
    start = time.perf_counter()
    features = build()
    seconds = time.perf_counter() - start
    try:
        save_features(features, cache_path)
        logger.info("tokenized %s (%d examples) in %.1f s; cached in %s", what, len(features), seconds, cache_path)
    except OSError as error:  # a read-only or full cache disk costs time on the next run, not this run
        logger.warning("tokenized %s in %.1f s but could not cache it in %s (%s); point $EMBERT_CACHE or "
                       "--cache_dir to a writable folder", what, seconds, cache_path.parent, error)
    return features
