"""BERT WordPiece tokenizer, exactly as in Google's first (2018) release, which the original EmBERT code uses.

`FullTokenizer.tokenize(text)` runs four steps:

1. clean-up: drop NUL, U+FFFD and control characters (Unicode category C*, except tab, newline and carriage return,
   which count as whitespace); map whitespace (space, tab, newline, CR, category Zs) to a space;
2. split on whitespace (Python's `str.split()`, as the original);
3. per word: when `do_lower_case`, lower-case and strip accents (NFD, then drop category Mn); then split off every
   punctuation character as a word of its own (ASCII 33-47, 58-64, 91-96, 123-126 and Unicode category P*);
4. WordPiece: greedy longest-match-first against the vocabulary, continuation pieces prefixed with `##`; a word
   that cannot be covered, or is longer than 100 characters, becomes `[UNK]`.

Unlike later releases (Google's from November 2018 on, Hugging Face's `BertTokenizer`) it does NOT put spaces around
CJK ideographs (so `铁木真` stays one word, here `[UNK]`), and it does not NFC-normalise the text first.

Speed, with identical outputs: steps 3-4 depend on the whitespace-separated word alone, so their result (as ids)
is memoised per word (natural text repeats a few words a great deal; `encode(text)` returns those ids directly);
step 1 is one `str.translate` through a table that classifies each distinct character once; and WordPiece never
tries a candidate piece longer than the longest vocabulary entry, since none could match.
"""
import functools
import unicodedata
from pathlib import Path

UNK_TOKEN = "[UNK]"
# Tokens every BERT vocabulary has: a file lacking one of them is not a BERT WordPiece vocabulary.
REQUIRED_TOKENS = ("[PAD]", UNK_TOKEN, "[CLS]", "[SEP]")
CONTINUATION_PREFIX = "##"
# Google's WordpieceTokenizer(max_input_chars_per_word=100): longer words become [UNK] without trying.
MAX_INPUT_CHARS_PER_WORD = 100
# Distinct words kept memoised per tokenizer: covers the vocabulary of any GLUE training set (a few hundred
# thousand distinct words) at a few hundred bytes each.
WORD_CACHE_SIZE = 1 << 20

# ASCII characters that are not letters, digits or space count as punctuation, as in the original
# ("^", "$" and "`" are not Unicode punctuation, but are split off all the same).
_ASCII_PUNCTUATION_RANGES = ((33, 47), (58, 64), (91, 96), (123, 126))


def load_vocab(vocab_file):
    """Read a BERT vocab.txt (one token per line, id = 0-based line number) into a dict token -> id.

    Lines are split on "\\n" and stripped, as the original does. Raises a one-line error naming the file when it
    is missing, empty, repeats a token, or lacks one of [PAD] [UNK] [CLS] [SEP].
    """
    path = Path(vocab_file)
    if not path.is_file():
        raise FileNotFoundError(f"vocab file not found: {path} (expected a BERT vocab.txt, one token per line)")
    # newline="": only "\n" ends a line, as in the original (strip() then drops the "\r" of Windows line ends).
    with open(path, encoding="utf-8", newline="") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    if not lines:
        raise ValueError(f"vocab file {path} is empty (expected a BERT vocab.txt, one token per line)")
    vocab = {}
    for line_number, line in enumerate(lines, start=1):
        token = line.strip()
        if token in vocab:
            raise ValueError(
                f"vocab file {path} line {line_number}: duplicate token {token!r} (first on line {vocab[token] + 1}); "
                "a BERT vocab.txt lists each token once"
            )
        vocab[token] = line_number - 1
    missing = [token for token in REQUIRED_TOKENS if token not in vocab]
    if missing:
        raise ValueError(
            f"vocab file {path} lacks {' '.join(missing)}: not a BERT WordPiece vocab "
            f"(expected all of {' '.join(REQUIRED_TOKENS)})"
        )
    return vocab


def _is_whitespace(char):
    # Tab, newline and CR are control characters in Unicode, but BERT treats them as whitespace.
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def _is_control(char):
    if char in "\t\n\r":
        return False
    return unicodedata.category(char).startswith("C")


@functools.lru_cache(maxsize=1 << 16)  # called only on word-memo misses; text uses far fewer distinct characters
def _is_punctuation(char):
    code = ord(char)
    if any(low <= code <= high for low, high in _ASCII_PUNCTUATION_RANGES):
        return True
    return unicodedata.category(char).startswith("P")


class _CleanupTable(dict):
    """`str.translate` table for step 1, filled lazily: code point -> None (drop), " " (whitespace) or itself.

    One entry per distinct character ever seen: a few thousand for any real corpus.
    """

    def __missing__(self, code):
        char = chr(code)
        if code == 0 or code == 0xFFFD or _is_control(char):
            value = None
        elif _is_whitespace(char):
            value = " "
        else:
            value = code
        self[code] = value
        return value


_CLEANUP_TABLE = _CleanupTable()


def clean_text(text):
    """Step 1: drop NUL, U+FFFD and control characters; map every whitespace character to a space."""
    return text.translate(_CLEANUP_TABLE)


def strip_accents(text):
    """NFD-decompose, then drop the combining marks (category Mn): "Café" -> "Cafe"."""
    return "".join(char for char in unicodedata.normalize("NFD", text) if unicodedata.category(char) != "Mn")


def split_on_punctuation(word):
    """Split every punctuation character off as a word of its own: "don't!" -> ["don", "'", "t", "!"]."""
    parts = []
    start = 0
    for i, char in enumerate(word):
        if _is_punctuation(char):
            if start < i:
                parts.append(word[start:i])
            parts.append(char)
            start = i + 1
    if start < len(word):
        parts.append(word[start:])
    return parts


class FullTokenizer:
    """Clean-up, whitespace and punctuation split, lower-casing, then WordPiece (the module docstring has the steps).

    Attributes: `vocab` (token -> id), `inv_vocab` (id -> token), `do_lower_case`, `vocab_file`.
    """

    def __init__(self, vocab_file, do_lower_case=True):
        self.vocab_file = str(vocab_file)
        self.vocab = load_vocab(vocab_file)
        self.inv_vocab = {token_id: token for token, token_id in self.vocab.items()}
        self.do_lower_case = do_lower_case
        # No candidate piece longer than the longest vocabulary entry can match, so WordPiece starts there.
        self._longest_token = max(len(token) for token in self.vocab)
        self._init_word_cache()

    def _init_word_cache(self):
        self._word_ids = functools.lru_cache(maxsize=WORD_CACHE_SIZE)(self._word_ids_uncached)

    # The memo holds a bound method, which cannot be pickled: worker processes get the tokenizer without it.
    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_word_ids"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._init_word_cache()

    def tokenize(self, text):
        """Text -> list of WordPiece tokens."""
        return [self.inv_vocab[token_id] for token_id in self.encode(text)]

    def encode(self, text):
        """Text -> token ids: `convert_tokens_to_ids(tokenize(text))` in one step (the memo holds ids)."""
        ids = []
        for word in clean_text(text).split():
            ids.extend(self._word_ids(word))
        return ids

    def encode_words(self, words):
        """Words already split by the caller (a CoNLL sentence's tokens, a Chinese sentence's characters) -> one
        non-empty tuple of piece ids per word, in order: `word_pieces[i]` are the pieces of `words[i]`, so a word's
        label can sit on its first piece.

        Each word goes through the same clean-up, lower-casing, punctuation split and WordPiece as in `encode`
        (`encode_words([w])[0] == tuple(encode(w))` whenever that is non-empty). A word that gives no pieces at all
        (only control characters, U+FFFD or whitespace, which clean-up drops) becomes [UNK]: it is still a token of
        the input that needs a label and a prediction.
        """
        unk = (self.vocab[UNK_TOKEN],)
        word_pieces = []
        for word in words:
            parts = clean_text(word).split()  # usually one part; clean-up can also split at inner whitespace
            if len(parts) == 1:
                pieces = self._word_ids(parts[0])
            else:
                pieces = tuple(piece for part in parts for piece in self._word_ids(part))
            word_pieces.append(pieces or unk)
        return word_pieces

    def convert_tokens_to_ids(self, tokens):
        try:
            return [self.vocab[token] for token in tokens]
        except KeyError as error:
            raise KeyError(f"token {error.args[0]!r} is not in the vocabulary {self.vocab_file}") from None

    def convert_ids_to_tokens(self, ids):
        try:
            return [self.inv_vocab[int(token_id)] for token_id in ids]
        except KeyError as error:
            raise KeyError(
                f"id {error.args[0]} is outside the vocabulary {self.vocab_file} ({len(self.vocab)} tokens)"
            ) from None

    def _word_ids_uncached(self, word):
        """Steps 3-4 for one whitespace-separated word, as ids; a tuple, so the memoised value cannot be mutated."""
        if self.do_lower_case:
            word = strip_accents(word.lower())
        ids = []
        for part in split_on_punctuation(word):
            ids.extend(self.vocab[piece] for piece in self._wordpiece(part))
        return tuple(ids)

    def _wordpiece(self, word):
        """Greedy longest-match-first: "unaffable" -> ["un", "##aff", "##able"]; [UNK] if it cannot be covered."""
        if len(word) > MAX_INPUT_CHARS_PER_WORD:
            return [UNK_TOKEN]
        pieces = []
        start = 0
        while start < len(word):
            end = min(len(word), start + self._longest_token)
            while end > start:
                piece = word[start:end] if start == 0 else CONTINUATION_PREFIX + word[start:end]
                if piece in self.vocab:
                    break
                end -= 1
            else:
                return [UNK_TOKEN]  # no prefix of the rest is in the vocabulary
            pieces.append(piece)
            start = end
        return pieces
