"""People's Daily 1998 (<data_dir>/pku199801/199801.txt, its README): Chinese word segmentation, part-of-speech
tagging, named entities and entity types as seq_tag / multi_cls problems of characters, and its paragraphs as
documents for BERT's pre-training.

Every line of 199801.txt is a paragraph of `word/TAG` items; a sentence ends after 。！？. Sentence i (0-based, file
order) is dev when i % 10 == 9, a tenth of the corpus; pku_pretrain's paragraphs are split the same way by paragraph,
its training paragraphs leaving out the other problems' dev sentences.
"""
import functools
from pathlib import Path

from features import TaggedSentence
from masking import next_sentence_examples
from problem_record import PkuDocumentsSplit, PkuSplit, Problem
from problem_types import BMES_TO_SEQEVAL, MULTI_LABEL_METRICS, OUTSIDE_TAG, PRETRAIN_METRICS, SPAN_METRICS


PKU_DIRECTORY, PKU_FILE = "pku199801", "199801.txt"

# A sentence ends after each of these words; the mark stays with its sentence.
PKU_SENTENCE_END_WORDS = frozenset("。！？")

# Sentence i (0-based, file order) is dev when i % PKU_DEV_EVERY == PKU_DEV_REMAINDER: a tenth of the corpus.
PKU_DEV_EVERY, PKU_DEV_REMAINDER = 10, 9

# The 44 part-of-speech tags of 199801.txt (every one it uses), sorted.
PKU_POS_TAGS = ("Ag", "Bg", "Dg", "Mg", "Ng", "Rg", "Tg", "Vg", "Yg", "a", "ad", "an", "b", "c", "d", "e", "f", "h",
                "i", "j", "k", "l", "m", "n", "na", "nr", "ns", "nt", "nx", "nz", "o", "p", "q", "r", "s", "t", "u",
                "v", "vd", "vn", "vvn", "w", "y", "z")


# Word tags of the entities: a run of consecutive nr words is one person; each ns / nt word one location /
# organisation; t words are times (for the entity-type problem only).
PKU_PERSON, PKU_ENTITY_TAGS = "nr", {"ns": "LOC", "nt": "ORG"}

PKU_ENTITY_TYPES = {"nr": "PER", "ns": "LOC", "nt": "ORG", "t": "TIME"}


def _bmes(length):
    """Character positions in a word of `length` characters: s, or b m ... m e."""
    return ["s"] if length == 1 else ["b", *["m"] * (length - 2), "e"]


def _cws_tags(words):
    return [tag for word, _ in words for tag in _bmes(len(word))]


def _pos_tags(words):
    return [f"{BMES_TO_SEQEVAL[position]}-{pos}" for word, pos in words for position in _bmes(len(word))]


def _ner_tags(words):
    tags, previous_pos = [], None
    for word, pos in words:
        if pos == PKU_PERSON:
            begins = previous_pos != PKU_PERSON  # a surname and a given name are one person
            tags += [f"{'B' if begins and i == 0 else 'I'}-PER" for i in range(len(word))]
        elif pos in PKU_ENTITY_TAGS:
            tags += [f"{'B' if i == 0 else 'I'}-{PKU_ENTITY_TAGS[pos]}" for i in range(len(word))]
        else:
            tags += [OUTSIDE_TAG] * len(word)
        previous_pos = pos
    return tags


def _entity_type_tags(words):
    """Per character: the entity type of its word, or O; a row's multi_cls labels are the types it contains."""
    return [PKU_ENTITY_TYPES.get(pos, OUTSIDE_TAG) for word, pos in words for _ in word]


PKU_TAGGERS = {"cws": _cws_tags, "pos": _pos_tags, "ner": _ner_tags, "entity_types": _entity_type_tags}


@functools.lru_cache(maxsize=2)  # the four PKU problems read the same file; keyed by path, size and mtime
def _pku_sentences(path, size, mtime_ns):
    """199801.txt -> [(line number, [(word, pos), ...]), ...]: lines split after every 。！？ word."""
    sentences = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            words, start = [], line_number
            for item in line.split():
                word, slash, pos = item.rpartition("/")
                if not slash or not word or not pos:
                    raise ValueError(f"{path} line {line_number}: {item!r} is not word/TAG")
                words.append((word, pos))
                if word in PKU_SENTENCE_END_WORDS:
                    sentences.append((start, words))
                    words = []
            if words:
                sentences.append((start, words))
    return sentences


def pku_sentences(path):
    """The sentences of 199801.txt as (line number, [(word, pos), ...]), in file order (cached per file version)."""
    stat = Path(path).stat()
    return _pku_sentences(str(path), stat.st_size, stat.st_mtime_ns)


def read_pku(problem, split, fmt, path):
    tagger = PKU_TAGGERS[fmt.tags]
    examples = []
    for i, (line_number, words) in enumerate(pku_sentences(path)):
        if (i % PKU_DEV_EVERY == PKU_DEV_REMAINDER) == (fmt.part == "dev"):
            examples.append(TaggedSentence(f"{problem.name}-{split}-{line_number}",
                                           [char for word, _ in words for char in word], tagger(words)))
    return examples, None


def read_pku_documents(problem, split, fmt, path):
    """Paragraph j is dev when j % PKU_DEV_EVERY == PKU_DEV_REMAINDER. In a training paragraph the other PKU
    problems' dev sentences (sentence i with i % PKU_DEV_EVERY == PKU_DEV_REMAINDER) are left out (None): no pair
    holds them, so a run of pku_pretrain beside pku_cws never trains on pku_cws's dev set."""
    paragraphs = {}  # line number -> [(line number, text or None), ...]: pku_sentences numbers a sentence by its line
    for i, (line_number, words) in enumerate(pku_sentences(path)):
        left_out = fmt.part == "train" and i % PKU_DEV_EVERY == PKU_DEV_REMAINDER
        paragraphs.setdefault(line_number, []).append((line_number,
                                                       None if left_out else "".join(word for word, _ in words)))
    documents = [document for j, document in enumerate(paragraphs.values())
                 if (j % PKU_DEV_EVERY == PKU_DEV_REMAINDER) == (fmt.part == "dev")
                 and any(sentence is not None for _, sentence in document)]
    return next_sentence_examples(problem, split, documents, path), None


def _pku_problem(name, tags, type, labels, metrics):
    splits = {part: PkuSplit(PKU_FILE, part, tags) for part in ("train", "dev")}
    return Problem(name, PKU_DIRECTORY, splits, labels, {"dev": metrics}, type=type)


PKU_PROBLEMS = {
    "pku_cws": _pku_problem("pku_cws", "cws", "seq_tag", ("b", "m", "e", "s"), SPAN_METRICS),
    "pku_pos": _pku_problem("pku_pos", "pos", "seq_tag", tuple(f"{position}-{pos}" for pos in PKU_POS_TAGS
                                                               for position in "BIES"), (*SPAN_METRICS, "acc")),
    "pku_ner": _pku_problem("pku_ner", "ner", "seq_tag",
                            (OUTSIDE_TAG, "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"), SPAN_METRICS),
    "pku_entity_types": _pku_problem("pku_entity_types", "entity_types", "multi_cls", ("PER", "LOC", "ORG", "TIME"),
                                     MULTI_LABEL_METRICS),
    "pku_pretrain": Problem("pku_pretrain", PKU_DIRECTORY,
                            {part: PkuDocumentsSplit(PKU_FILE, part) for part in ("train", "dev")}, None,
                            {"dev": PRETRAIN_METRICS}, type="pretrain"),
}
