"""The CMU Pronouncing Dictionary (<data_dir>/cmudict/cmudict.dict, its README): grapheme-to-phoneme conversion as a
seq2seq_tag problem, cmudict_g2p.

Each line is a word (lower case; `word(2)` marks its second pronunciation), its phonemes with stress digits, and an
optional `# comment` (dropped). The split is by word, so no pronunciation of a dev or test word is trained on:
int(md5(word).hexdigest(), 16) % 20 is 0 for dev, 1 for test, anything else train. Training examples are every
pronunciation of every training word, in file order; dev has one example per word (in the order of its first line)
whose reference is its first pronunciation; test one per word, unlabelled. The input is the word spelled out, its
characters separated by spaces (`read` -> `r e a d`), so that each letter is one token: word pieces would hide the
letters. Examples keep the word as written in their index, which the prediction files show.
"""
import hashlib
import re

from features import Example
from problem_record import CmudictSplit, DecoderSettings, Problem

CMUDICT_DIRECTORY, CMUDICT_FILE = "cmudict", "cmudict.dict"
# A word's part: md5(word) % CMUDICT_PARTS, CMUDICT_DEV for dev, CMUDICT_TEST for test, else train.
CMUDICT_PARTS, CMUDICT_DEV, CMUDICT_TEST = 20, 0, 1
VARIANT = re.compile(r"(.+)\(\d+\)")  # word(2): a further pronunciation of word
COMMENT = "#"
# The 39 phonemes of cmudict: 15 vowels, each with stress 0, 1 or 2, and 24 consonants; 69 symbols, sorted.
CMUDICT_VOWELS = ("AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW")
CMUDICT_CONSONANTS = ("B", "CH", "D", "DH", "F", "G", "HH", "JH", "K", "L", "M", "N", "NG", "P", "R", "S", "SH", "T",
                      "TH", "V", "W", "Y", "Z", "ZH")
CMUDICT_SYMBOLS = tuple(sorted((*CMUDICT_CONSONANTS, *(f"{v}{stress}" for v in CMUDICT_VOWELS for stress in "012"))))


def word_part(word):
    """"train", "dev" or "test": where a word (without its (2) mark) belongs."""
    remainder = int(hashlib.md5(word.encode("utf-8")).hexdigest(), 16) % CMUDICT_PARTS
    return "dev" if remainder == CMUDICT_DEV else "test" if remainder == CMUDICT_TEST else "train"


def spelled_out(word):
    """The model's input: each character one token (`read` -> `r e a d`)."""
    return " ".join(word)


def read_entries(path):
    """cmudict.dict -> [(line number, word, phonemes tuple), ...] in file order; a line without phonemes is a
    one-line error."""
    entries = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            fields = line.split(COMMENT, 1)[0].split()
            if not fields:
                continue
            if len(fields) < 2:
                raise ValueError(f"{path} line {number}: {line.strip()!r} is not a word and its phonemes")
            variant = VARIANT.fullmatch(fields[0])
            entries.append((number, variant[1] if variant else fields[0], tuple(fields[1:])))
    return entries


def read_cmudict(problem, split, fmt, path):
    """One split's examples (readers.READERS' "cmudict" format): text_a the word spelled out, label its phonemes,
    index the word."""
    examples, lines_of, seen = [], [], set()
    for number, word, phonemes in read_entries(path):
        if word_part(word) != fmt.part or (fmt.part != "train" and word in seen):
            continue
        seen.add(word)
        examples.append(Example(f"{problem.name}-{split}-{number}", spelled_out(word), None,
                                None if fmt.part == "test" else phonemes, word))
        lines_of.append(number)
    return examples, lines_of


CMUDICT_PROBLEMS = {
    "cmudict_g2p": Problem("cmudict_g2p", CMUDICT_DIRECTORY,
                           {part: CmudictSplit(CMUDICT_FILE, part) for part in ("train", "dev", "test")},
                           CMUDICT_SYMBOLS, {"dev": ("seq_acc", "token_error_rate")}, type="seq2seq_tag",
                           decoder=DecoderSettings(decoder_init="encoder")),
}
