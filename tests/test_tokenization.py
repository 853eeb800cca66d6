"""Tests of tokenization.py: exact WordPieces on a tiny vocabulary and on real GLUE rows with MiniLM's vocab, vocab
validation, and parity with the reference (transformers' slow BERT tokenizer set up as Google's 2018 release) on
every real GLUE text."""
import functools
import multiprocessing
import os
import pickle
import re
import sys
import time

import pytest

from conftest import fixture_glue_dir, minilm_dir, require, shared_glue_dir, shared_glue_partial_dir
from glue_processors import TASKS, load_examples, task_file
from tokenization import (
    MAX_INPUT_CHARS_PER_WORD, FullTokenizer, clean_text, load_vocab, split_on_punctuation, strip_accents,
)

# A deliberately small vocabulary, in the spirit of Google's tokenization_test.py.
TINY_VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "want", "##want", "##ed", "wa", "un", "runn", "##ing", ",", "low", "##est", "cafe", "café", "Café",
    "don", "'", "t", "!", "$", "^", "`", "¿", "—", "a", "b", "c", "铁", "##木", "##真", "[", "cl", "##s", "]",
]


def write_vocab(tmp_path, tokens, name="vocab.txt"):
    path = tmp_path / name
    path.write_text("".join(token + "\n" for token in tokens), encoding="utf-8")
    return path


@pytest.fixture
def tiny(tmp_path):
    return FullTokenizer(write_vocab(tmp_path, TINY_VOCAB), do_lower_case=True)


# ---- tiny vocabulary: every step of the pipeline ----------------------------------------------------------------

def test_google_example_lower_case_accents_and_wordpiece(tiny):
    # Google's own test sentence: lower-casing, accent stripping (é -> e), punctuation split, ## continuations.
    assert tiny.tokenize("UNwant\u00E9d,running") == ["un", "##want", "##ed", ",", "runn", "##ing"]
    assert tiny.convert_tokens_to_ids(tiny.tokenize("UNwant\u00E9d,running")) == [9, 6, 7, 12, 10, 11]


def test_longest_match_first(tiny):
    # "want" is preferred to "wa" + ..., and "lowest" = "low" + "##est".
    assert tiny.tokenize("wanted lowest") == ["want", "##ed", "low", "##est"]


def test_punctuation_ascii_ranges_and_unicode_categories(tiny):
    # "$", "^", "`" are not Unicode punctuation but are in BERT's ASCII ranges; "¿" (Po) and "—" (Pd) are Unicode P*.
    assert tiny.tokenize("don't!") == ["don", "'", "t", "!"]
    assert tiny.tokenize("a$b^c`a") == ["a", "$", "b", "^", "c", "`", "a"]
    assert tiny.tokenize("¿a—b") == ["¿", "a", "—", "b"]
    assert split_on_punctuation("don't!") == ["don", "'", "t", "!"]
    assert split_on_punctuation("!!") == ["!", "!"]


def test_control_characters_dropped_and_whitespace_normalised(tiny):
    # NUL, U+FFFD, a control (BEL) and a format character (BOM, category Cf) vanish without splitting the word;
    # tab, newline, CR and no-break space (Zs) split words.
    assert tiny.tokenize("w\x00a\ufffdn\x07t\ufeffed") == ["want", "##ed"]
    assert tiny.tokenize("a\tb\nc\rb\u00a0a") == ["a", "b", "c", "b", "a"]
    assert clean_text("a\x00b\tc\u00a0d\x0be") == "ab c de"  # \x0b (vertical tab) is a control character here
    # str.split() also splits at U+2028 (line separator, category Zl), which the clean-up keeps: as the original.
    assert tiny.tokenize("a\u2028b") == ["a", "b"]


def test_unknown_words_become_one_unk(tiny):
    assert tiny.tokenize("xyz") == ["[UNK]"]
    # A word is all-or-nothing: "wantx" does not become "want" + [UNK].
    assert tiny.tokenize("wantx want") == ["[UNK]", "want"]


def test_over_long_words_become_unk(tiny):
    fits = "want" * (MAX_INPUT_CHARS_PER_WORD // 4)  # exactly 100 characters
    assert tiny.tokenize(fits) == ["want"] + ["##want"] * (MAX_INPUT_CHARS_PER_WORD // 4 - 1)
    assert tiny.tokenize(fits + "ed") == ["[UNK]"]  # 102 characters, coverable but too long


def test_cjk_ideographs_are_not_split(tiny):
    # The 2018 release has no CJK splitting: 铁木真 is one word, WordPiece'd like any other
    # (later releases would give 铁 木 真, three words).
    assert tiny.tokenize("铁木真") == ["铁", "##木", "##真"]
    assert tiny.tokenize("a铁木真b") == ["[UNK]"]


def test_without_lower_case_keeps_case_and_accents(tmp_path):
    cased = FullTokenizer(write_vocab(tmp_path, TINY_VOCAB), do_lower_case=False)
    assert cased.tokenize("Café café cafe") == ["Café", "café", "cafe"]
    assert cased.tokenize("UNwanted") == ["[UNK]"]
    assert strip_accents("Café") == "Cafe"


def test_special_token_strings_in_text_are_ordinary_text(tiny):
    # The original has no never_split list: a literal "[CLS]" in a text is lower-cased and split like any word.
    assert tiny.tokenize("[CLS]") == ["[", "cl", "##s", "]"]


def test_ids_round_trip_and_errors(tiny):
    tokens = ["un", "##want", "[UNK]"]
    ids = tiny.convert_tokens_to_ids(tokens)
    assert ids == [9, 6, 1]
    assert tiny.convert_ids_to_tokens(ids) == tokens
    assert tiny.vocab["want"] == 5 and tiny.inv_vocab[5] == "want"
    assert tiny.encode("UNwanted running") == tiny.convert_tokens_to_ids(tiny.tokenize("UNwanted running"))
    with pytest.raises(KeyError, match="'nope' is not in the vocabulary"):
        tiny.convert_tokens_to_ids(["nope"])
    with pytest.raises(KeyError, match="id 999 is outside the vocabulary"):
        tiny.convert_ids_to_tokens([999])


def test_memo_does_not_change_outputs_and_survives_pickling(tiny):
    text = "UNwanted, running! don't"
    first = tiny.tokenize(text)
    assert tiny.tokenize(text) == first
    assert tiny._word_ids.cache_info().hits > 0
    clone = pickle.loads(pickle.dumps(tiny))  # what worker processes receive
    assert clone.tokenize(text) == first


def test_encode_words_keeps_one_non_empty_piece_tuple_per_word(tiny):
    words = ["UNwanted", "running,", "\x07", "铁木真", "xyz", "\ufffd\x00", "a\u3000b"]
    pieces = tiny.encode_words(words)
    assert len(pieces) == len(words) and all(isinstance(p, tuple) and p for p in pieces)
    assert [tiny.convert_ids_to_tokens(p) for p in pieces] == [
        ["un", "##want", "##ed"], ["runn", "##ing", ","],
        ["[UNK]"],  # a control character alone: dropped by clean-up, so [UNK] keeps the word's place
        ["铁", "##木", "##真"], ["[UNK]"], ["[UNK]"],
        ["a", "b"],  # U+3000 is whitespace: clean-up splits the word, both parts stay this word's pieces
    ]
    # Joining the pieces of the words gives what encode gives the whole text (where no word vanishes).
    kept = [w for w in words if tiny.encode(w)]
    assert [i for p in tiny.encode_words(kept) for i in p] == tiny.encode(" ".join(kept))
    assert tiny.encode_words([]) == []


# ---- vocabulary validation ----------------------------------------------------------------------------------------

def test_load_vocab_ids_are_line_numbers(tmp_path):
    vocab = load_vocab(write_vocab(tmp_path, TINY_VOCAB))
    assert list(vocab) == TINY_VOCAB and list(vocab.values()) == list(range(len(TINY_VOCAB)))


def test_vocab_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match=f"vocab file not found: {missing}"):
        FullTokenizer(missing)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match=f"vocab file {empty} is empty"):
        FullTokenizer(empty)
    duplicate = write_vocab(tmp_path, TINY_VOCAB + ["want"], "duplicate.txt")
    with pytest.raises(ValueError, match=rf"vocab file {duplicate} line {len(TINY_VOCAB) + 1}: duplicate token 'want' "
                                         r"\(first on line 6\)"):
        FullTokenizer(duplicate)
    not_bert = write_vocab(tmp_path, ["<pad>", "<unk>", "[CLS]", "hello"], "sentencepiece.txt")
    with pytest.raises(ValueError, match=f"vocab file {not_bert} lacks \\[PAD\\] \\[UNK\\] \\[SEP\\]: not a BERT"):
        FullTokenizer(not_bert)


# ---- MiniLM's vocabulary (= bert-base-uncased) on real GLUE rows ---------------------------------------------------

@pytest.fixture(scope="module")
def minilm_tokenizer():
    return FullTokenizer(minilm_dir() / "vocab.txt", do_lower_case=True)


def fixture_text(task, split, guid, column="text_a"):
    example = next(e for e in load_examples(fixture_glue_dir(), task, split) if e.guid == guid)
    return getattr(example, column)


@pytest.mark.parametrize("task, split, guid, column, tokens, ids", [
    ("cola", "train", "cola-train-1", "text_a",
     ["our", "friends", "won", "'", "t", "buy", "this", "analysis", ",", "let", "alone", "the", "next", "one", "we",
      "propose", "."],
     [2256, 2814, 2180, 1005, 1056, 4965, 2023, 4106, 1010, 2292, 2894, 1996, 2279, 2028, 2057, 16599, 1012]),
    ("rte", "test", "rte-test-2", "text_a",  # "Mangla was summoned after Madhumita's sister Nidhi Shukla, ..."
     ["man", "##gl", "##a", "was", "summoned", "after", "mad", "##hum", "##ita", "'", "s", "sister", "ni", "##dhi",
      "shu", "##kla", ",", "who", "was", "the", "first", "witness", "in", "the", "case", "."],
     [2158, 23296, 2050, 2001, 11908, 2044, 5506, 28600, 6590, 1005, 1055, 2905, 9152, 19114, 18454, 26086, 1010,
      2040, 2001, 1996, 2034, 7409, 1999, 1996, 2553, 1012]),
    # "Möngke Khan succeeded Ögedei's son, Güyük, as Great Khan in 1251.": accents stripped
    ("qnli", "test", "qnli-test-57", "text_b",
     ["mon", "##g", "##ke", "khan", "succeeded", "og", "##ede", "##i", "'", "s", "son", ",", "guy", "##uk", ",", "as",
      "great", "khan", "in", "125", "##1", "."],
     [12256, 2290, 3489, 4967, 4594, 13958, 14728, 2072, 1005, 1055, 2365, 1010, 3124, 6968, 1010, 2004, 2307, 4967,
      1999, 8732, 2487, 1012]),
    # "... 47°39′N 9°19′E\ufeff / \ufeff47.650°N ...": the BOMs (Cf) are dropped, ′ (Po) is punctuation, ° (So) is not
    ("qnli", "dev", "qnli-dev-62", "text_b",
     ["it", "is", "located", "at", "approximately", "47", "##°", "##39", "′", "n", "9", "##°", "##19", "′", "e", "/",
      "47", ".", "650", "##°", "##n", "9", ".", "317", "##°", "##e", "/", "47", ".", "650", ";", "9", ".", "317", "."],
     [2009, 2003, 2284, 2012, 3155, 4700, 7737, 23499, 1531, 1050, 1023, 7737, 16147, 1531, 1041, 1013, 4700, 1012,
      13757, 7737, 2078, 1023, 1012, 26628, 7737, 2063, 1013, 4700, 1012, 13757, 1025, 1023, 1012, 26628, 1012]),
])
def test_real_glue_rows_with_minilm_vocab(minilm_tokenizer, task, split, guid, column, tokens, ids):
    text = fixture_text(task, split, guid, column)
    assert minilm_tokenizer.tokenize(text) == tokens
    assert minilm_tokenizer.convert_tokens_to_ids(tokens) == ids
    assert minilm_tokenizer.encode(text) == ids


# ---- parity with the reference on every real GLUE text ------------------------------------------------------------

def is_cjk(char):
    """The CJK ideograph ranges that later BERT releases split into single characters."""
    code = ord(char)
    return any(low <= code <= high for low, high in (
        (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
        (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)))


def all_real_glue_texts():
    """Every text (sentence A and B) of every file in ../shared/glue and ../shared/glue-partial."""
    texts = []
    for data_dir in (shared_glue_dir(), shared_glue_partial_dir()):
        for name, task in TASKS.items():
            for split in task.splits:
                if task_file(data_dir, name, split).is_file():
                    for example in load_examples(data_dir, name, split):
                        texts.append(example.text_a)
                        if example.text_b is not None:
                            texts.append(example.text_b)
    return texts


_reference = {}  # per worker process: split_cjk -> basic tokenizer, and "wordpiece" -> memoised WordPiece


def _reference_tokenize(split_cjk, text):
    """transformers' slow BERT tokenizer, stage by stage as Google's: basic tokenizer, then WordPiece per word.

    Called through its two stages rather than `.tokenize()`: that one keeps "[CLS]"-like strings whole through the
    special-token list even with split_special_tokens=True, which the 2018 original never did.
    """
    wordpiece = _reference["wordpiece"]
    return [piece for word in _reference[split_cjk].tokenize(text) for piece in wordpiece(word)]


def _reference_class():
    """transformers' slow (pure Python) BERT tokenizer: BertTokenizerLegacy from 5.0 on, BertTokenizer before."""
    try:
        from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy
        return BertTokenizerLegacy
    except ImportError:
        pass
    try:
        from transformers.models.bert.tokenization_bert import BertTokenizer
    except ImportError:
        return None
    return BertTokenizer if hasattr(BertTokenizer, "_tokenize") else None


def _make_references(vocab_file):
    reference_class = _reference_class()
    for split_cjk in (False, True):
        # strip_accents=None: accents are stripped exactly when lower-casing, as in the original.
        reference = reference_class(str(vocab_file), do_lower_case=True, tokenize_chinese_chars=split_cjk,
                                        strip_accents=None, never_split=None)
        assert not reference.basic_tokenizer.never_split
        _reference[split_cjk] = reference.basic_tokenizer
    # The reference's WordPiece is a pure function of the word (and the vocabulary, the same for both set-ups):
    # memoising it cuts the test's time by a fifth without changing a single output.
    _reference["wordpiece"] = functools.lru_cache(maxsize=None)(reference.wordpiece_tokenizer.tokenize)


def _compare_chunk(job):
    """(ours, vocab file, texts) -> texts where ours differs from the reference without / with CJK splitting."""
    ours, vocab_file, texts = job
    if not _reference:
        _make_references(vocab_file)
    differ_original, differ_cjk = [], []
    for text in texts:
        tokens, ids = ours.tokenize(text), ours.encode(text)
        original = _reference_tokenize(False, text)
        if tokens != original or ids != [ours.vocab[token] for token in original]:
            differ_original.append((text, tokens, original))
        if tokens != _reference_tokenize(True, text):
            differ_cjk.append(text)
    return differ_original, differ_cjk


def test_character_classes_match_the_reference_on_every_code_point(tmp_path):
    """Clean-up, punctuation split and accent stripping agree with the reference on all of Unicode, not only on the
    characters that GLUE happens to contain."""
    reference_class = _reference_class()
    require(reference_class is not None, "needs transformers (the reference tokenizer; a test dependency only)")
    basic = reference_class(str(write_vocab(tmp_path, TINY_VOCAB)), do_lower_case=True,
                            tokenize_chinese_chars=False).basic_tokenizer
    # Every code point but the surrogates.
    every_char = "".join(chr(code) for code in range(sys.maxunicode + 1) if not 0xD800 <= code <= 0xDFFF)
    assert clean_text(every_char) == basic._clean_text(every_char)
    lowered = every_char.lower()
    assert strip_accents(lowered) == basic._run_strip_accents(lowered)
    # The reference module's own punctuation test, applied to every character, predicts the split.
    is_punctuation = sys.modules[reference_class.__module__]._is_punctuation
    punctuation = "".join(char for char in every_char if is_punctuation(char))
    word = "".join(every_char.split())
    expected = [part for part in re.split(f"([{re.escape(punctuation)}])", word) if part]
    assert split_on_punctuation(word) == expected


def _cpu_count():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# The reference runs at about 7,000 texts/s per process: worker processes split the ~130,000 distinct texts.
PARITY_MAX_WORKERS = 8
PARITY_CHUNKS_PER_WORKER = 4


def test_reference_parity_on_every_real_glue_text(minilm_tokenizer):
    require(_reference_class() is not None, "needs transformers (the reference tokenizer; a test dependency only)")
    texts = all_real_glue_texts()
    # Identical texts give identical tokens, so each distinct text is checked once; none is left out.
    distinct = sorted(set(texts))
    assert len(texts) > 146_000 and len(distinct) > 130_000
    vocab_file = minilm_dir() / "vocab.txt"
    workers = min(_cpu_count(), PARITY_MAX_WORKERS)
    chunk = -(-len(distinct) // (PARITY_CHUNKS_PER_WORKER * workers))
    jobs = [(minilm_tokenizer, vocab_file, distinct[i:i + chunk]) for i in range(0, len(distinct), chunk)]
    start = time.perf_counter()
    methods = multiprocessing.get_all_start_methods()
    with multiprocessing.get_context("fork" if "fork" in methods else None).Pool(workers) as pool:
        results = pool.map(_compare_chunk, jobs)
    elapsed = time.perf_counter() - start
    differ_original = [item for part, _ in results for item in part]
    differ_cjk = [text for _, part in results for text in part]
    assert not differ_original, f"differs from the original on {len(differ_original)} texts: {differ_original[:3]}"
    # With CJK splitting on (Hugging Face's default), the only texts that change are those with CJK ideographs.
    assert differ_cjk, "expected some real GLUE texts with CJK ideographs (QNLI has them)"
    assert all(any(is_cjk(char) for char in text) for text in differ_cjk), differ_cjk
    occurrences = sum(text in set(differ_cjk) for text in texts)
    print(f"\n{len(distinct)} distinct texts ({len(texts)} in all) checked in {elapsed:.1f} s, {workers} processes; "
          f"with CJK splitting on, {len(differ_cjk)} distinct texts ({occurrences} in all) differ, all with CJK")
