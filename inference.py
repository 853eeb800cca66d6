"""Using a trained model from Python: a `Predictor` on raw inputs (sentences, sentence pairs, word lists).

    from inference import Predictor
    p = Predictor.from_run("runs/quickstart", device="cpu")    # the best model; checkpoint="last" for the last
    p.problems                                                  # {"cola": "cls", "sts": "regression", ...}
    p.predict("sst", ["a gripping, funny film", "dull"])        # ["1", "0"]: labels as the prediction files write them
    p.predict("mrpc", [("He left.", "He went away.")])          # pairs as tuples
    p.predict("pku_ner", [["北", "京", "是", "首", "都"]])           # seq_tag: one tag list per word list
    p.predict("emotion", ["furious"])                           # multi_cls: a list of labels per input

The run is loaded by run_test_multi_task.py's own loader, raw inputs become Features through the tokenization and
feature code of training (features.convert_examples: texts cut as training cuts them, word lists split into rows at
word boundaries, so every word gets a tag), and the model runs through evaluation.predict_split, whose predictions
the problem's type turns into values (problem_types: `input_values`, built on what its prediction files write). So a
prediction here equals the prediction file's for the same input: a label, a regression value x label_scale clipped
to [0, label_scale] (the file writes it rounded), the labels of a multi_cls input, the tags of a word list.
"""
from pathlib import Path

import torch

import evaluation
import features as feats
import modalities
import problem_types
import problems
import run_test_multi_task
from features import Example, TaggedSentence
from hardware import AUTOCAST_DTYPES, batch_padding, resolve_precision
from cmudict import spelled_out
from problem_record import PAIR_INPUT, SPELLED_INPUT, TEXT_INPUT, WORDS_INPUT
from run_files import BEST_MODEL, LAST_CHECKPOINT
from tokenization import FullTokenizer

# from_run's `checkpoint`: the run's best model, or the model of its last checkpoint (what --resume continues).
CHECKPOINT_FILES = {"best": BEST_MODEL, "last": LAST_CHECKPOINT}
# What one input of each kind is, in error messages.
INPUT_FORMS = {TEXT_INPUT: "one text (a str)", PAIR_INPUT: "a sentence pair (a tuple of two str)",
               WORDS_INPUT: "a list of words (a non-empty list of str)",
               SPELLED_INPUT: "one word as written (a str; spelled out as the training inputs are)"}


def load_run(run_dir, checkpoint="best"):
    """A training run directory's model and settings (run_test_multi_task.LoadedModel), on the CPU, in eval mode;
    a one-line ValueError for a run that cannot be loaded."""
    if checkpoint not in CHECKPOINT_FILES:
        raise ValueError(f"checkpoint {checkpoint!r}: expected one of {', '.join(CHECKPOINT_FILES)}")
    if not Path(run_dir).is_dir():
        raise ValueError(f"{run_dir} is not a training run's directory (its --output_dir)")
    # The prediction script's own flags with their defaults: the run's files decide everything.
    args = run_test_multi_task.parse_args(["--model_dir", str(run_dir), "--output_dir", str(run_dir)])
    try:
        return run_test_multi_task.load_run_directory(args, CHECKPOINT_FILES[checkpoint])
    except SystemExit as refusal:  # the loader's one-line error (run_files.fail), as a library error
        raise ValueError(str(refusal).removeprefix("error: ")) from None


def input_kind(value):
    """How an input looks, for an error message."""
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    return f"a {type(value).__name__}"


def examples_of(problem, inputs):
    """Raw inputs -> the Examples (texts) or TaggedSentences (word lists) the problem's files would give; a one-line
    ValueError naming the first input that is not what the problem reads."""
    form = problem.inputs
    if isinstance(inputs, (str, bytes)) or not isinstance(inputs, (list, tuple)):
        raise ValueError(f"{problem.name}: inputs must be a list with {INPUT_FORMS[form]} per input, got "
                         f"{input_kind(inputs)}")
    examples = []
    for i, value in enumerate(inputs):
        guid = f"{problem.name}-input-{i}"
        if form == TEXT_INPUT and isinstance(value, str):
            examples.append(Example(guid, value, None, None))
        elif form == SPELLED_INPUT and isinstance(value, str) and value:
            examples.append(Example(guid, spelled_out(value), None, None))
        elif form == PAIR_INPUT and isinstance(value, (tuple, list)) and len(value) == 2 \
                and all(isinstance(text, str) for text in value):
            examples.append(Example(guid, value[0], value[1], None))
        elif form == WORDS_INPUT and isinstance(value, (list, tuple)) and value \
                and all(isinstance(word, str) for word in value):
            examples.append(TaggedSentence(guid, list(value), None))
        else:
            raise ValueError(f"{problem.name} takes {INPUT_FORMS[form]} per input; input {i} is {input_kind(value)}")
    return examples


class Predictor:
    """A trained multi-task model predicting its problems on raw inputs, in batches (module docstring)."""

    def __init__(self, loaded, device="cpu", batch_size=None):
        self.loaded = loaded
        self.device = torch.device(device)
        self.model = loaded.model.to(self.device).eval()
        self.autocast_dtype = AUTOCAST_DTYPES.get(resolve_precision("auto", self.device))  # as run_test_multi_task
        self.pad_to = batch_padding(loaded.method, loaded.max_seq_length)
        self.batch_size = batch_size or loaded.run_args.get("eval_batch_size",
                                                            run_test_multi_task.DEFAULT_EVAL_BATCH_SIZE)
        self.tokenizer = FullTokenizer(loaded.vocab_file, do_lower_case=loaded.do_lower_case)

    @classmethod
    def from_run(cls, run_dir, device="cpu", checkpoint="best", batch_size=None):
        """The model of a training run's --output_dir: its best model (checkpoint="best") or its last checkpoint's
        ("last"); batch_size: inputs per forward pass (default: the run's --eval_batch_size)."""
        return cls(load_run(run_dir, checkpoint), device, batch_size)

    @property
    def problems(self):
        """The model's problems (one head each) and their types: {name: type}."""
        return {name: self.loaded.problem(name).type for name in self.loaded.heads}

    def problem(self, name):
        """The Problem of one of the model's heads, by name (GLUE's spellings too); a one-line ValueError naming
        what this model predicts otherwise."""
        predicted = [name for name in self.loaded.heads
                     if not problem_types.of(self.loaded.problem(name)).masks_inputs]
        try:
            canonical = problems.canonical_problem_name(name, self.loaded.user_problems)
        except ValueError:
            canonical = None
        if canonical not in self.loaded.heads:
            raise ValueError(f"unknown problem {name!r}: this model predicts {', '.join(predicted)}")
        problem = self.loaded.problem(canonical)
        if problem_types.of(problem).masks_inputs:
            raise ValueError(f"{canonical} is a {problem.type} problem: it is scored on masked tokens of its dev "
                             f"texts and predicts nothing from inputs; this model predicts {', '.join(predicted)}")
        if modalities.has_inputs(problem):
            raise ValueError(f"{canonical} reads images or feature vectors, which the Predictor does not take (texts "
                             "and word lists only); run_test_multi_task.py predicts its files")
        return problem

    def features(self, problem, inputs):
        """Raw inputs -> Features, through the tokenization and feature code of training (texts cut to
        max_seq_length as training cuts them; word lists split into rows at word boundaries)."""
        examples = examples_of(problem, inputs)
        kind = problem_types.of(problem)
        return feats.convert_examples(problem, examples, self.tokenizer, self.loaded.max_seq_length,
                                      kind.encode_labels, desc=f"tokenizing {problem.name} inputs")

    def predict(self, problem, inputs, batch_size=None):
        """One prediction per input, as the problem's prediction file holds it: cls a label; regression a float
        (x label_scale, clipped to [0, label_scale]); multi_cls a list of labels; seq_tag a list of tags, one per
        word of the input's word list."""
        problem = self.problem(problem)
        if isinstance(inputs, (list, tuple)) and not inputs:
            return []
        data = self.features(problem, inputs)
        head = self.loaded.heads.index(problem.name)
        predictions = evaluation.predict_split(self.model, problem, data, self.loaded.row_of[head], head,
                                               batch_size or self.batch_size, self.device, self.autocast_dtype,
                                               self.pad_to, vocab_file=self.loaded.vocab_file)
        return problem_types.of(problem).input_values(problem, predictions, data)
