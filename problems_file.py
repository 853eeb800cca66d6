"""The user's problems file (--problems): a JSON object of named problems, each checked key by key into a
problem_record.Problem. Paths are relative to the file and stored absolute; every error is one line naming the file
and the problem (and, for a data file, its line).

    {"emotion": {"type": "multi_cls", "format": "tsv", "train": "emo/train.tsv", "dev": "emo/dev.tsv",
                 "text": ["word"], "label": "labels", "label_separator": ","},
     "ner":     {"type": "seq_tag", "format": "conll", "train": "ner/train.txt", "dev": "ner/dev.txt",
                 "token_column": 0, "label_column": -1},
     "news_lm": {"type": "mask_lm", "format": "text", "train": "news.txt"},
     "ner_lm":  {"type": "mask_lm", "inputs_of": "ner"},
     "titles":  {"type": "seq2seq_text", "format": "tsv", "train": "news/train.tsv", "dev": "news/dev.tsv",
                 "text": ["article"], "label": "title", "max_target_length": 32, "num_beams": 4}}

Which types a format holds and which keys a type takes are the type's (problem_types.TYPES: `formats`, `keys`).
"""
import dataclasses
import json
import logging
import math
import re
from pathlib import Path

import modalities
import problem_types
import readers
from glue_processors import TASK_ALIASES
from modalities import ImageInput, VectorInput
from problem_record import ConllSplit, JsonlSplit, Problem, TextSplit, TsvSplit
from problem_types import DEFAULT_LABEL_SEPARATOR
from problems import MLM_SUFFIX, PROBLEMS, canonical_problem_name, get_problem, mlm_problem

logger = logging.getLogger(__name__)

# The user's problem names become file names and parts of the --tasks grammar (& | ,).
PROBLEM_NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*")
USER_FORMATS = ("tsv", "jsonl", "conll", "text")
SPLIT_KEYS = ("train", "dev", "test")
COMMON_KEYS = ("type", "format", *SPLIT_KEYS, "labels", "loss_weight", "inputs_of")
# Inputs beside the text (tsv and jsonl): an image's column and settings, feature vectors' column and their limit.
IMAGE_KEYS = ("image", "image_size", "patch_size", "channels")
VECTOR_KEYS = ("features", "max_features")
FORMAT_KEYS = {"tsv": ("text", "label", "index", *IMAGE_KEYS, *VECTOR_KEYS),
               "jsonl": ("text", "label", "index", *IMAGE_KEYS, *VECTOR_KEYS),
               "conll": ("token_column", "label_column"),
               "text": ()}
TYPE_KEYS = tuple(dict.fromkeys(key for problem_type in problem_types.TYPES.values() for key in problem_type.keys))
# Keys of a problem whose labels come from its own text (a masked LM): none of these applies to it.
LABEL_KEYS = ("label", "labels", "label_scale", "label_separator", "index", "test")
INPUTS_OF_KEYS = ("type", "inputs_of", "loss_weight")  # a mask_lm problem on another problem's inputs
ALL_KEYS = tuple(dict.fromkeys((*COMMON_KEYS, *(key for keys in FORMAT_KEYS.values() for key in keys), *TYPE_KEYS)))
MAX_TEXT_FIELDS = 2  # a sentence or a pair


def _unique_keys(pairs):
    """json object_pairs_hook: a key given twice is an error (json would silently keep the last)."""
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"key {key!r} given twice")
        result[key] = value
    return result


def read_problems_file(path):
    """The user's problems JSON -> {name: Problem}, every field checked (one-line errors naming file and problem).

    Paths are relative to the problems file and stored absolute. Labels, when not given: the sorted training labels
    (for seq_tag also the dev labels, with a warning).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"problems file {readers.missing_file(path)} (expected a JSON object of named "
                                "problems)")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} line {error.lineno}: not valid JSON ({error.msg})") from None
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    if not isinstance(spec, dict) or not spec:
        raise ValueError(f"{path}: expected a JSON object {{name: problem, ...}} with at least one problem")
    found = {}
    for name, body in spec.items():  # those reading another's inputs after the others: they may name a later one
        if not (isinstance(body, dict) and "inputs_of" in body):
            found[name] = _problem_from_spec(name, body, path)
    for name, body in spec.items():
        if name not in found:
            source = body["inputs_of"]
            if isinstance(source, str) and source in spec and source not in found:  # not built yet: an inputs_of one
                raise ValueError(f"{path}: problem {name!r}: inputs_of {source!r} is itself a mask_lm problem; name "
                                 "a problem with inputs of its own")
            found[name] = _inputs_of_problem(name, body, path, found)
    return {name: found[name] for name in spec}


def _inputs_of_problem(name, spec, problems_file, user_problems):
    """{"type": "mask_lm", "inputs_of": "<problem>"}: masked LM on another problem's train and dev inputs."""
    where = f"{problems_file}: problem {name!r}"
    _check_name(name, where)
    readers_of_inputs = [name for name, t in problem_types.TYPES.items() if t.takes_inputs_of]
    if spec.get("type") not in readers_of_inputs:
        raise ValueError(f"{where}: inputs_of is for {' and '.join(readers_of_inputs)} problems, not "
                         f"{spec.get('type')!r}")
    extra = [key for key in spec if key not in INPUTS_OF_KEYS]
    if extra:
        raise ValueError(f"{where}: a problem with inputs_of reads that problem's files; drop {extra[0]!r} (its keys: "
                         f"{', '.join(INPUTS_OF_KEYS)})")
    _check_loss_weight(spec, where)
    try:
        source = get_problem(spec["inputs_of"], user_problems) if isinstance(spec["inputs_of"], str) else None
        if source is None:
            raise ValueError(f"inputs_of must be a problem's name, got {spec['inputs_of']!r}")
        if problem_types.of(source).masks_inputs:
            raise ValueError(f"inputs_of {source.name!r} is itself a {source.type} problem; name a problem with "
                             "inputs of its own")
        derived = mlm_problem(source)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    return dataclasses.replace(derived, name=name, loss_weight=float(spec.get("loss_weight", 1.0)))


def _check_name(name, where):
    if not PROBLEM_NAME_PATTERN.fullmatch(name):
        raise ValueError(f"{where}: a name is lower-case letters, digits and _, starting with a letter")
    if name in PROBLEMS or name in TASK_ALIASES:
        raise ValueError(f"{where}: the name clashes with the predefined problem {canonical_problem_name(name)}")
    if name.endswith(MLM_SUFFIX):
        raise ValueError(f"{where}: names ending in {MLM_SUFFIX} are the predefined masked-LM problems (X{MLM_SUFFIX} "
                         "for every problem X); choose another name")


def _check_loss_weight(spec, where):
    if "loss_weight" in spec:
        weight = spec["loss_weight"]
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            raise ValueError(f"{where}: loss_weight must be a positive number (the factor of its loss in a step)")
        if not math.isfinite(weight):
            raise ValueError(f"{where}: loss_weight must be a finite number, got {weight!r}")


def _problem_from_spec(name, spec, problems_file):
    where = f"{problems_file}: problem {name!r}"
    _check_name(name, where)
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: expected a JSON object of keys ({', '.join(ALL_KEYS)})")
    unknown = [key for key in spec if key not in ALL_KEYS]
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r} (expected some of {', '.join(ALL_KEYS)})")
    type_, format_ = spec.get("type"), spec.get("format")
    if type_ not in problem_types.TYPES:
        raise ValueError(f"{where}: type {type_!r} is not one of {', '.join(problem_types.TYPES)}")
    if format_ not in USER_FORMATS:
        raise ValueError(f"{where}: format {format_!r} is not one of {', '.join(USER_FORMATS)}")
    ptype = problem_types.get(type_)
    if format_ not in ptype.formats:
        holding = [name for name, t in problem_types.TYPES.items() if format_ in t.formats]
        raise ValueError(f"{where}: a {type_} problem reads {' or '.join(ptype.formats)} files, and {format_} files "
                         f"hold {' or '.join(holding)} problems (got type {type_}, format {format_})")
    if ptype.masks_inputs:
        given = [key for key in LABEL_KEYS if key in spec]
        if given:
            raise ValueError(f"{where}: a {type_} problem learns from the text alone; drop {given[0]!r}")
    misplaced = [key for key in spec if key not in COMMON_KEYS and key not in FORMAT_KEYS[format_]
                 and key not in TYPE_KEYS]
    if misplaced:
        raise ValueError(f"{where}: key {misplaced[0]!r} does not apply to format {format_} "
                         f"(its keys: {', '.join((*COMMON_KEYS, *FORMAT_KEYS[format_]))})")
    foreign = [key for key in spec if key in TYPE_KEYS and key not in ptype.keys]
    if foreign:
        owner = next(name for name, t in problem_types.TYPES.items() if foreign[0] in t.keys)
        if foreign[0] == "label_scale":
            raise ValueError(f"{where}: label_scale must be a positive number, and only for regression")
        raise ValueError(f"{where}: {foreign[0]} is for {owner} problems, not {type_}")
    if "label_scale" in spec:
        scale = spec["label_scale"]
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            raise ValueError(f"{where}: label_scale must be a positive number, and only for regression")
        if not math.isfinite(scale):
            raise ValueError(f"{where}: label_scale must be a finite number, got {scale!r}")
    _check_loss_weight(spec, where)
    try:
        settings = ptype.settings_from_spec(spec)  # the type's own keys (a seq2seq decoder's)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    image = _image_from_spec(spec, where)
    if "train" not in spec:
        raise ValueError(f"{where}: needs a train file (\"train\": path relative to the problems file)")

    files = {}
    for split in SPLIT_KEYS:
        if split not in spec:
            continue
        if not isinstance(spec[split], str) or not spec[split]:
            raise ValueError(f"{where}: {split} must be a file path (relative to the problems file)")
        file = (problems_file.parent / spec[split]).resolve()
        if not file.is_file():
            raise FileNotFoundError(f"{where}: {split} file {readers.missing_file(file)} (paths are relative to the "
                                    "problems file's folder)")
        files[split] = str(file)
    splits = {split: _split_from_spec(spec, format_, file, where, problems_file.parent.resolve())
              for split, file in files.items()}

    labels = spec.get("labels")
    if labels is not None:
        if not ptype.has_label_list:
            raise ValueError(f"{where}: a {type_} problem has no labels")
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
            raise ValueError(f"{where}: labels must be a non-empty list of non-empty strings")
        if len(set(labels)) != len(labels):
            raise ValueError(f"{where}: labels repeat {next(x for x in labels if labels.count(x) > 1)!r}")
        labels = tuple(labels)
    elif ptype.has_label_list:
        labels = _labels_from_data(name, ptype, splits, where)
    for split, fmt in splits.items():
        if format_ == "tsv":  # the columns, now; the rows and their labels when the split is read
            with open(fmt.file, encoding="utf-8-sig", newline="") as f:
                header = f.readline().rstrip("\r\n")
            readers.tsv_columns(fmt.file, fmt, split, header)
    metrics = {"dev": tuple(ptype.default_metrics(labels))} if "dev" in splits else {}
    vectors = _vectors_from_spec(name, ptype, spec, splits, where) if "features" in spec else None
    return Problem(name, "", splits, labels, metrics, type=type_,
                   label_scale=float(spec["label_scale"]) if "label_scale" in spec else None,
                   loss_weight=float(spec.get("loss_weight", 1.0)), image=image, vectors=vectors, **settings)


def _positive_int(spec, key, where):
    value = spec[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}: {key} must be a positive integer, got {value!r}")
    return value


def _image_from_spec(spec, where):
    """The problem's ImageInput (None without "image"); its settings checked, and those of "features"."""
    for column, keys in (("image", IMAGE_KEYS), ("features", VECTOR_KEYS)):
        settings = [key for key in keys[1:] if key in spec]
        if settings and column not in spec:
            raise ValueError(f"{where}: {settings[0]} is a setting of \"{column}\", which the problem does not give")
    if "max_features" in spec:
        _positive_int(spec, "max_features", where)
    image = None
    if "image" in spec:
        size = spec.get("image_size", list(modalities.DEFAULT_IMAGE_SIZE))
        if not (isinstance(size, list) and len(size) == 2 and
                all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in size)):
            raise ValueError(f"{where}: image_size must be [height, width] in pixels, got {size!r}")
        patch = _positive_int(spec, "patch_size", where) if "patch_size" in spec else modalities.DEFAULT_PATCH_SIZE
        channels = spec.get("channels", modalities.DEFAULT_CHANNELS)
        if channels not in modalities.CHANNEL_CHOICES or isinstance(channels, bool):
            raise ValueError(f"{where}: channels must be 1 (grey) or 3 (RGB), got {channels!r}")
        if size[0] % patch or size[1] % patch:
            raise ValueError(f"{where}: image_size {size} is not a whole number of {patch} x {patch} patches "
                             "(patch_size must divide the height and the width)")
        image = ImageInput(tuple(size), patch, channels)
    return image


def _vectors_from_spec(name, ptype, spec, splits, where):
    """The problem's VectorInput: the width of the training file's first features, and max_features."""
    fmt = splits["train"]
    examples, _ = readers.READERS[fmt.format](readers.LabelContext(name, ptype.name), "train", fmt, Path(fmt.file))
    return VectorInput(modalities.first_width(examples, fmt.file),
                       spec.get("max_features", modalities.DEFAULT_MAX_FEATURES))


def _split_from_spec(spec, format_, file, where, root):
    if format_ == "text":
        return TextSplit(file)
    if format_ == "conll":
        columns = {key: spec.get(key, default) for key, default in (("token_column", 0), ("label_column", -1))}
        for key, value in columns.items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{where}: {key} must be a column number (0-based; -1 = the last)")
        if columns["token_column"] == columns["label_column"]:
            raise ValueError(f"{where}: token_column and label_column are the same column")
        return ConllSplit(file, **columns)
    text = spec.get("text")
    text = [text] if isinstance(text, str) else text
    others = "image" in spec or "features" in spec  # then the text is optional
    if not (others and text is None) and (not isinstance(text, list) or not 1 <= len(text) <= MAX_TEXT_FIELDS or
                                         not all(isinstance(name, str) and name for name in text)):
        raise ValueError(f"{where}: text must name one or two {'columns' if format_ == 'tsv' else 'keys'} "
                         "(a sentence or a pair)" + ("" if others else ", unless the problem gives an image or "
                                                     "features"))
    if problem_types.get(spec["type"]).word_inputs and len(text or ()) != 1:
        raise ValueError(f"{where}: a {spec['type']} problem's text is one key, holding a list of words")
    for key in ("label", "index", "label_separator", "image", "features"):
        if key in spec and (not isinstance(spec[key], str) or not spec[key]):
            raise ValueError(f"{where}: {key} must be a non-empty string")
    if "label" not in spec and not problem_types.get(spec["type"]).masks_inputs:
        raise ValueError(f"{where}: needs \"label\", the {'column' if format_ == 'tsv' else 'key'} of the labels")
    split_class = TsvSplit if format_ == "tsv" else JsonlSplit
    return split_class(file, tuple(text or ()), spec.get("label"), spec.get("index"),
                       spec.get("label_separator", DEFAULT_LABEL_SEPARATOR), spec.get("image"), spec.get("features"),
                       str(root) if others else None)


def _labels_from_data(name, ptype, splits, where):
    """The sorted labels of the training file (of a per-token type: and of the dev file, with a warning for those
    only there)."""
    def labels_in(split):
        fmt = splits[split]
        examples, _ = readers.READERS[fmt.format](readers.LabelContext(name, ptype.name), split, fmt, Path(fmt.file))
        return {value for example in examples for value in ptype.label_values(example)}

    labels = labels_in("train")
    if ptype.per_token and "dev" in splits:
        extra = labels_in("dev") - labels
        if extra:
            logger.warning("%s: dev labels not in the training file: %s (added to the labels; the model never sees "
                           "them in training)", where, ", ".join(sorted(extra)))
            labels |= extra
    if len(labels) < ptype.min_labels:
        raise ValueError(f"{where}: the training file has {len(labels)} label(s) {sorted(labels)}; a {ptype.name} "
                         f"problem needs at least {ptype.min_labels} (or give \"labels\")")
    return tuple(sorted(labels))
