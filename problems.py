"""The problem table and the names in --tasks: GLUE's problems (glue_processors.TASKS), People's Daily's (pku.py),
X_mlm for every problem X (masked LM on X's inputs) and the user's (problems_file.py); the `&`/`|` grammar of
groups; and the features of a named problem's split, cached on disk.

A problem is a named dataset of one type (problem_record.Problem). A group is what `&` joins: problems with the same
inputs trained together on one batch, through one encoder pass and one task row (EmBERT's task embedding,
Gated-BERT's gate, PALs' layer); `|` (or a comma) separates groups, sampled one per optimizer step. A head is a
problem's output layer.
"""
import hashlib
import json
import re
from pathlib import Path

import features as feats
import glue_processors
import images
import modalities
import problem_types
import masking
import readers
from cmudict import CMUDICT_PROBLEMS
from fashion_mnist import FASHION_PROBLEMS
from features import Features
from glue_processors import TASK_ALIASES, TASKS
from pku import PKU_PROBLEMS
from problem_record import IdxSplit, Problem, SplitFormat
from tokenization import FullTokenizer

# Bump when features of the non-GLUE problems change without their inputs changing (word rows, the cut, labels);
# part of their cache key, beside features.FEATURE_FORMAT_VERSION.
PROBLEM_FEATURE_FORMAT_VERSION = 2

# The predefined problems: GLUE's rows (the same objects as glue_processors.TASKS), People's Daily's, CMUdict's and
# Fashion-MNIST's. Every problem X of another type also has X_mlm (mlm_problem), masked LM on X's inputs.
PROBLEMS = {**TASKS, **PKU_PROBLEMS, **CMUDICT_PROBLEMS, **FASHION_PROBLEMS}
MLM_SUFFIX = "_mlm"


def mlm_problem(source):
    """X_mlm: masked LM on the inputs of problem X (its train and dev splits; its labels unused): the text is masked,
    X's images and feature vectors stay as context."""
    if problem_types.of(source).masks_inputs:
        raise ValueError(f"{source.name} is already a {source.type} problem; {source.name}{MLM_SUFFIX} is not defined")
    splits = {split: fmt for split, fmt in source.splits.items() if split == "train" or split in source.dev_splits}
    return Problem(source.name + MLM_SUFFIX, source.directory, splits, None,
                   {split: problem_types.MASK_LM_METRICS for split in source.dev_splits},
                   type=problem_types.MaskedLMType.name, inputs_of=source.name, image=source.image,
                   vectors=source.vectors)


def canonical_problem_name(name, user_problems=None):
    """A predefined name (case-insensitive, GLUE's spellings too: "STS-B" -> "sts") or a user problem's name."""
    key = str(name).strip().lower()
    key = TASK_ALIASES.get(key, key)
    if key in PROBLEMS or key in (user_problems or {}):
        return key
    base = key.removesuffix(MLM_SUFFIX)
    if base != key and (TASK_ALIASES.get(base, base) in PROBLEMS or base in (user_problems or {})):
        return TASK_ALIASES.get(base, base) + MLM_SUFFIX
    valid = [*PROBLEMS, *(user_problems or {})]
    raise ValueError(f"unknown problem {name!r}; valid names: {', '.join(valid)} (also {', '.join(TASK_ALIASES)}, and "
                     f"X{MLM_SUFFIX}: masked LM on the inputs of problem X)")


def get_problem(problem, user_problems=None):
    """A `Problem`, given one or its name (predefined, X_mlm, or in `user_problems` from read_problems_file)."""
    if isinstance(problem, Problem):
        return problem
    name = canonical_problem_name(problem, user_problems)
    if name in PROBLEMS:
        return PROBLEMS[name]
    if name in (user_problems or {}):
        return user_problems[name]
    return mlm_problem(get_problem(name.removesuffix(MLM_SUFFIX), user_problems))


def resolve_problems(spec, task_id=None, user_problems=None):
    """`--tasks` -> problem names in head order: "all", "inf", "single" (GLUE, as resolve_tasks) or any names, in
    groups (resolve_groups) or not."""
    return [name for group in resolve_groups(spec, task_id, user_problems) for name in group]


GROUP_SEPARATORS = re.compile(r"[|,]")  # "|" separates groups; a comma is a "|" (today's lists keep their meaning)

SAME_INPUTS = "&"  # joins problems with the same inputs into one group, trained together on one batch


def resolve_groups(spec, task_id=None, user_problems=None):
    """`--tasks` -> groups of problem names: "a&b|c" -> [["a", "b"], ["c"]]. "|" (or ",") separates groups, sampled
    one per step; "&" joins problems trained together on one batch. "all", "inf" and "single" give one problem per
    group. Spaces around the operators are allowed; a name twice, an empty group or an unknown name is an error."""
    key = spec.strip().lower()
    if key in ("all", "inf", "single"):
        return [[name] for name in glue_processors.resolve_tasks(key, task_id)]
    groups, seen = [], set()
    for group_spec in GROUP_SEPARATORS.split(spec):
        names = [item.strip() for item in group_spec.split(SAME_INPUTS)]
        if not all(names):
            raise ValueError(f"--tasks {spec!r} has an empty group or name; expected names joined by & inside a "
                             "group and groups separated by | (or a comma), like pku_cws&pku_ner|cola")
        group = []
        for item in names:
            try:
                name = canonical_problem_name(item, user_problems)
            except ValueError as error:
                raise ValueError(f"--tasks {spec!r}: {error}") from None
            if name in seen:
                raise ValueError(f"--tasks {spec!r} names {name} twice")
            problem = get_problem(name, user_problems)
            if "train" not in problem.splits:
                where = f" (it is predicted with the {problem.head_of} head)" if problem.head_of else ""
                raise ValueError(f"--tasks {spec!r}: {name} has no training data{where}")
            seen.add(name)
            group.append(name)
        masked = [name for name in group if problem_types.of(get_problem(name, user_problems)).masks_inputs]
        if masked and len(group) > 1:
            raise ValueError(f"--tasks {spec!r}: {masked[0]} masks its inputs, so it cannot share a batch with "
                             f"{[name for name in group if name != masked[0]][0]}: chain it with | instead of &")
        groups.append(group)
    return groups


def group_rows(groups):
    """Each head's task row, from the groups in head order: [["a", "b"], ["c"]] (or head indices) -> [0, 0, 1]."""
    return [row for row, group in enumerate(groups) for _ in group]


def group_name(group):
    """A group's name in logs (task_counts): its problems joined by "&"."""
    return SAME_INPUTS.join(group)


def problem_file(data_dir, problem, split):
    """Path of one split's file (a problem or its name): <data_dir>/<directory>/<file>."""
    return readers.problem_file(data_dir, get_problem(problem), split)


def missing_problem_files(data_dir, problems, splits, user_problems=None):
    """Every file that `problems` (names, the user's too) need for `splits` ("train", "dev", "test" or exact names)
    and that is absent."""
    return glue_processors.missing_files(data_dir, [get_problem(name, user_problems) for name in problems], splits)


def read_examples(problem, split, data_dir, user_problems=None):
    """One split's examples of a problem or a name: features.Example (text inputs) or TaggedSentence (word inputs),
    labels checked (readers.read_examples)."""
    return readers.read_examples(get_problem(problem, user_problems), split, data_dir)


def problem_cache_path(cache_dir, problem, split, data_file, vocab_file, do_lower_case, max_seq_length,
                       inputs_key=None):
    """Cache file for a non-GLUE problem's features: hashes its record (type, files, labels, ...), the file's
    contents, the vocabulary and the settings, and `inputs_key` (input_files_key) when the features read other
    files. (GLUE rows keep glue_processors.feature_cache_path.)"""
    pairs = (masking.NSP_PAIRS_SEED, masking.NSP_RANDOM_SHARE) if problem_types.of(problem).next_sentence else ()
    inputs = () if inputs_key is None else (inputs_key,)
    parts = (feats.FEATURE_FORMAT_VERSION, PROBLEM_FEATURE_FORMAT_VERSION,
             json.dumps(problem.to_record(), sort_keys=True), *pairs, split, feats.file_sha256(data_file),
             feats.file_sha256(vocab_file), bool(do_lower_case), int(max_seq_length), *inputs)
    key = hashlib.sha256("".join(f"{part}\n" for part in parts).encode()).hexdigest()
    return Path(cache_dir) / f"{problem.name}-{split}-len{max_seq_length}-{key}.pt"


def input_files_key(fmt, data_file, examples):
    """What a split's features read besides its data file, for their cache key (None: nothing): an idx split's labels
    file (hashed), or the image and .npy files its rows name (paths, sizes and times: images.files_key)."""
    if isinstance(fmt, IdxSplit):
        return feats.file_sha256(Path(data_file).parent / fmt.labels_file)
    if examples is not None:
        return images.files_key(modalities.referenced_files(examples))
    return None


def load_problem_features(problem, split, data_dir, vocab_file, do_lower_case, max_seq_length, cache_dir=None,
                          num_workers=None, user_problems=None):
    """Features of one split of any problem, from the on-disk cache when this exact input was tokenised before.

    GLUE rows go through glue_processors.load_features (the same features and cache files as always); X_mlm reads
    X's features, unlabelled.
    """
    problem = get_problem(problem, user_problems)
    if problem.inputs_of is not None:
        problem.split_format(split)
        data = load_problem_features(problem.inputs_of, split, data_dir, vocab_file, do_lower_case, max_seq_length,
                                     cache_dir, num_workers, user_problems)
        return Features(input_ids=data.input_ids, offsets=data.offsets, segment_a_len=data.segment_a_len, labels=None,
                        **modalities.input_fields(data))
    if isinstance(problem.split_format(split), SplitFormat):
        return glue_processors.load_features(data_dir, problem, split, vocab_file, do_lower_case, max_seq_length,
                                             cache_dir=cache_dir, num_workers=num_workers)
    data_file = readers.problem_file(data_dir, problem, split)
    if not data_file.is_file():
        raise FileNotFoundError(f"problem {problem.name}: {split} file {readers.missing_file(data_file)}")
    cache_dir = feats.default_cache_dir() if cache_dir is None else Path(cache_dir)
    fmt = problem.split_format(split)
    # Rows that may name image or .npy files are read first: the files they name are part of the cache key.
    examples = readers.read_examples(problem, split, data_dir) \
        if getattr(fmt, "image", None) or getattr(fmt, "features", None) else None
    cache_path = problem_cache_path(cache_dir, problem, split, data_file, vocab_file, do_lower_case, max_seq_length,
                                    input_files_key(fmt, data_file, examples))

    def build():
        tokenizer = FullTokenizer(vocab_file, do_lower_case=do_lower_case)
        return feats.convert_examples(problem, examples or readers.read_examples(problem, split, data_dir), tokenizer,
                                      max_seq_length, problem_types.of(problem).label_encoder(tokenizer, split),
                                      num_workers, desc=f"tokenizing {problem.name} {split}", source=data_file)

    return feats.cached_features(cache_path, build, f"{problem.name} {split}")


def prediction_file_name(problem, split):
    """<name>.tsv / <name>.conll (the type's suffix); <name>-<split>.<ext> for a problem with several splits of that
    kind (MNLI)."""
    problem = get_problem(problem)
    suffix = problem_types.of(problem).file_suffix
    if suffix is None:
        raise ValueError(f"{problem.name} is a {problem.type} problem: it is scored on its masked tokens, with no "
                         "prediction file")
    kind = "dev" if split.startswith("dev") else "test" if split.startswith("test") else split
    several = len(problem.expand_splits(kind)) > 1
    return f"{problem.name}{f'-{split}' if several else ''}{suffix}"
