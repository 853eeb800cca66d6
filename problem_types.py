"""The registry of problem types: everything that depends on a problem's type, in one object per type.

    type        head (reads)            labels in Features                 prediction             file
    cls         PooledHead (pooled)     labels int64 [N] class index       argmax (S,)            .tsv
    regression  PooledHead (pooled)     labels float32 [N] label / scale   logits[:, 0] (S,)      .tsv
    multi_cls   PooledHead (pooled)     labels float32 [N, L] multi-hot    sigmoid > 0.5 (S, L)   .tsv
    seq_tag     TokenHead (tokens)      token_labels int64 [total tokens]  argmax per token       .conll
    mask_lm     MaskedLMHead (masked)   masked afresh every step           sums over masked       none
    pretrain    PreTrainingHead         NSP labels int64 [N]; masked too   sums over masked       none
    seq2seq_*   Seq2SeqHead (tokens)    labels int64 [N, T]: start, target generation (greedy,  .tsv
                                        tokens, end, IGNORE_INDEX after    beam search)

A type object says what its head reads and builds it, its loss and how the loss is normalised (per example, or over
the step's labelled tokens), how its labels are parsed, checked, encoded and batched, how predictions are made from
the model's outputs on a split (given the pass over the split, so that a type may decode with the model), its
metrics and score, its prediction file, and which problems-file keys and formats it takes. Code elsewhere asks a
problem's type object (`of(problem)`) and never compares a type with a name.

The three types on the pooled output label an example: one row of their features per example for text inputs;
for word inputs (a sentence cut into rows for the tagging problems it shares them with) each sentence's first row,
its labels those of the whole sentence (features.example_rows): trained, scored and written once per example (S).

A new type is a subclass of `ProblemType` (a head class in heads.py when none of the existing ones reads the encoder
its way) and a line in `TYPES`; a larger one may live in a module of its own that calls `register`, as the seq2seq
types do (seq2seq_types.py, imported at the end of this module).
"""
import math
import re

import torch
import torch.nn.functional as F

import features as feats
import heads
import metrics
from features import IGNORE_INDEX
from run_files import write_text

# multi_cls: a label is predicted when its sigmoid exceeds this (the seed's threshold).
MULTI_LABEL_THRESHOLD = 0.5
# Significant digits of a regression prediction in a problem's .tsv file; GLUE's server files (STS-B) are written
# with fixed decimals, as the original submissions.
REGRESSION_DIGITS, SUBMISSION_DECIMALS = 6, 3
PREDICTION_HEADER = "index\tprediction"
# multi_cls labels joined in one field (tsv, jsonl), and in its prediction files.
DEFAULT_LABEL_SEPARATOR = ","
# seq_tag labels read as spans: word-segmentation tags b/m/e/s (seqeval reads them as B/I/E/S of one type), or
# tags with a B-/I-/E-/S- prefix (and O outside spans).
BMES_TO_SEQEVAL = {"b": "B", "m": "I", "e": "E", "s": "S"}
SPAN_TAG_PATTERN = re.compile(r"[BIES]-.+")
OUTSIDE_TAG = "O"
SPAN_METRICS = ("f1", "precision", "recall")
MULTI_LABEL_METRICS = ("micro_f1", "macro_f1", "exact_match")
MASK_LM_METRICS = ("acc", "perplexity")  # on the masked tokens
PRETRAIN_METRICS = ("mlm_acc", "nsp_acc", "perplexity")  # perplexity: the masked LM's
# A masked-LM problem's evaluation sums, in this order (LMType.predict).
LM_STATISTICS = ("masked", "loss", "correct", "pairs", "next_correct")
# Labels listed in an error message; a longer list (pku_pos has 176) is cut, with its length.
SHOWN_LABELS = 20


def span_scheme(labels):
    """"bmes" (word-segmentation tags), "prefixed" (B-/I-/E-/S-<type> and O) or None (tags that are not spans)."""
    if set(labels) <= set(BMES_TO_SEQEVAL):
        return "bmes"
    if all(label == OUTSIDE_TAG or SPAN_TAG_PATTERN.fullmatch(label) for label in labels) and \
            any(label != OUTSIDE_TAG for label in labels):
        return "prefixed"
    return None


def _shown(labels):
    listed = ", ".join(labels[:SHOWN_LABELS])
    return listed if len(labels) <= SHOWN_LABELS else f"{listed}, ... ({len(labels)} in all)"


def _labelled(problem, examples):
    """True when every example has labels (a word input: tags), False when none has; an error for a mix."""
    labelled = [(example.tags if isinstance(example, feats.TaggedSentence) else example.label) is not None
                for example in examples]
    if any(labelled) and not all(labelled):
        raise ValueError(f"{problem.name}: some examples have labels and some do not")
    return all(labelled)


def token_loss(logits, labels, denominator=None):
    """Cross-entropy summed over the labelled tokens (IGNORE_INDEX is no loss) and divided by `denominator`: by
    default this batch's count of labelled tokens (its mean; 0 when it has none, where a mean would be NaN). A training
    step passes the whole step's count per micro-batch and process (train_step.token_denominators), so that the step's
    loss is the mean over all its tokens however the batch is split: N processes then train exactly as one."""
    total = F.cross_entropy(logits.float(), labels, reduction="sum")
    if denominator is None:
        denominator = (labels != IGNORE_INDEX).sum().clamp(min=1)
    return total / denominator


class ProblemType:
    """What one type of problem decides. The defaults are those of a classification problem on the pooled output."""

    name = None
    head = heads.PooledHead  # the head module class (its `reads` below)
    reads = "pooled"  # what the head reads: "pooled" (B, H), "tokens" (N, H) or "masked" (M, H)
    has_label_list = True  # the problem lists its labels (the head's output order)
    per_token = False  # loss and labels per token: the loss is normalised over the step's labelled tokens
    word_inputs = False  # an input is a list of words, one label each (a jsonl sentence; CoNLL)
    masks_inputs = False  # masked afresh every step: a group of its own, dev masked once, out of the mean score
    next_sentence = False  # also predicts next sentences (BERT's seq_relationship head)
    file_suffix = ".tsv"  # of its prediction file; None: it writes none
    formats = ("tsv", "jsonl")  # problems-file formats it reads
    keys = ()  # problems-file keys it takes beyond the common ones and its format's
    min_labels = 1  # fewest labels found in a training file
    scaled = False  # takes label_scale (targets are label / label_scale)
    takes_inputs_of = False  # may read another problem's inputs (X_mlm, "inputs_of")
    generates = False  # a decoder generates its output sequence (Problem.decoder holds its settings)
    not_exported = None  # why export_onnx.py leaves the type's problems out of the graphs (None: it exports them)

    # ---------------------------------------------------------------- the record

    def check_record(self, problem):
        """One-line ValueError for a record the type cannot have."""
        if (problem.decoder is not None) != self.generates:
            raise ValueError(f"problem {problem.name}: a {self.name} problem "
                             f"{'needs decoder settings' if self.generates else 'has no decoder'}")
        if (problem.labels is None) == self.has_label_list:
            raise ValueError(f"problem {problem.name}: a {self.name} problem "
                             f"{'needs its list of labels' if self.has_label_list else 'has no labels'}")
        if problem.inputs_of is not None and not self.takes_inputs_of:
            raise ValueError(f"problem {problem.name}: inputs_of is for mask_lm problems, not {self.name}")
        if problem.label_scale is not None and not (self.scaled and 0 < problem.label_scale < math.inf):
            raise ValueError(f"problem {problem.name}: label_scale must be a positive number, and only for regression")

    def num_outputs(self, problem):
        """Outputs of the problem's own head (its classifier.N)."""
        return len(problem.labels)

    def build_head(self, config, num_outputs, problem=None):
        return self.head(config, num_outputs)

    def initialize_head(self, problem, model, head):
        """Initialise head `head` of `model` once the checkpoint is loaded, when none of its parameters came from it
        (checkpoints.build_model); by default its fresh N(0, initializer_range) weights stay."""

    def settings_from_spec(self, spec):
        """Problem fields of the type's own problems-file keys (ValueError naming a bad key)."""
        return {}

    def default_metrics(self, labels):
        """Metric names of a user problem's dev split."""
        return ("acc",)

    # ---------------------------------------------------------------- labels

    def parse_label(self, value, separator, where):
        """A tsv field or JSON value -> the label as the type keeps it (cls: str)."""
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return str(value)  # a JSON 1 is the label "1"
        raise ValueError(f"{where}: label {value!r} is not a string")

    def label_values(self, example):
        """The label strings of an example, as checked against the problem's labels."""
        if isinstance(example, feats.TaggedSentence):
            return example.tags or ()
        return () if example.label is None else (example.label,)

    def check_labels(self, problem, path, examples, lines_of):
        """Every label must be one of the problem's: a one-line error names file, line and label."""
        known = set(problem.labels)
        if examples and isinstance(examples[0], feats.TaggedSentence) and not self.per_token:
            known.add(OUTSIDE_TAG)  # word inputs of a per-example problem: O marks a word of no label
        for i, example in enumerate(examples):
            for value in self.label_values(example):
                if value not in known:
                    if isinstance(example, feats.TaggedSentence) and lines_of is not None:
                        number = lines_of[i] + example.tags.index(value)  # conll: one token per line
                    else:
                        number = int(example.guid.rsplit("-", 1)[1])
                    raise ValueError(f"{path} line {number}: label {value!r} is not one of {problem.name}'s labels "
                                     f"({_shown(problem.labels)})")

    def label_encoder(self, tokenizer, split):
        """What features.convert_examples calls to encode a split's labels (encode_labels); a type whose labels are
        text tokenizes them."""
        return self.encode_labels

    def encode_labels(self, problem, examples, features):
        """(Features.labels, Features.token_labels) of a split's examples; (None, None) when it has no labels."""
        if not _labelled(problem, examples):
            return None, None
        label_ids = {label: i for i, label in enumerate(problem.labels)}
        return torch.tensor([label_ids[example.label] for example in examples], dtype=torch.int64), None

    def example_labels(self, features, indices):
        """The labels of the rows at `indices` as the loss reads them: per example, (E,) or (E, L), for the rows
        that stand for examples (all of them for text inputs; features.example_indices)."""
        return features.labels[feats.example_indices(features, indices)]

    def labelled_tokens(self, features, indices):
        """What the loss of the rows at `indices` averages over when micro-batches may hold different amounts of it:
        a per-token type's labelled tokens; here, on word inputs, the examples among the rows (a cut sentence's later
        rows are none); None (a plain mean over the micro-batch's examples) for text inputs."""
        return None if features.first_word is None else len(feats.example_indices(features, indices))

    # ---------------------------------------------------------------- the model

    def loss(self, logits, labels, denominator=None):
        """logits (E, L), labels (E,) class index; the sum divided by `denominator` when given, else the mean."""
        if denominator is None:
            return F.cross_entropy(logits.float(), labels)
        return F.cross_entropy(logits.float(), labels, reduction="sum") / denominator

    def decide(self, logits):
        """A split's logits (on the CPU, float32) -> its predictions."""
        return logits.argmax(-1)

    def predict(self, problem, split_pass):
        """The predictions on one split: `split_pass` runs the model over it (evaluation.SplitPass). A head on the
        pooled output gives (S, num_labels) logits, one per example in file order (features.example_rows), a head on
        the tokens (total tokens, num_labels) in input_ids order."""
        features = split_pass.features
        rows = int(features.offsets[-1]) if self.reads == "tokens" else len(features)
        logits_out = torch.empty(rows, self.num_outputs(problem), device=split_pass.device)
        for indices, batch, logits in split_pass.batches():
            if self.reads == "tokens":
                where = feats.packed_positions(features, indices)
            else:  # the logits of the rows that stand for examples, in the order of `indices`
                where = feats.example_indices(features, indices)
            logits_out[where.to(split_pass.device)] = logits.float()
        if self.reads != "tokens":
            logits_out = logits_out[feats.example_rows(features).to(split_pass.device)]
        return self.decide(logits_out.cpu())

    # ---------------------------------------------------------------- metrics, score, prediction file

    def gold(self, features):
        """The labels of a split's S examples, as `predict` orders them."""
        return features.labels[feats.example_rows(features)]

    def metrics(self, problem, split, predictions, features):
        return metrics.compute_metrics(problem, split, predictions, self.gold(features))

    def score(self, problem, values):
        """One problem's score for the best-model choice (higher is better): GLUE rows the mean of their metrics,
        others the first."""
        if not values:
            raise ValueError(f"{problem.name}: a score needs at least one metric")
        return metrics.mean_of(values) if problem.score_rule == "mean" else next(iter(values.values()))

    def prediction_values(self, problem, predictions):
        """One Python value per example (row) of `decide`'s predictions: cls its label."""
        return [problem.labels[i] for i in torch.as_tensor(predictions).tolist()]

    def prediction_strings(self, problem, predictions):
        """The prediction file's field per example: the value as text."""
        return self.prediction_values(problem, predictions)

    def input_values(self, problem, predictions, features):
        """One value per input the features were made from (inference.Predictor): an example's."""
        return self.prediction_values(problem, predictions)

    def export_logits(self, logits):
        """The head's logits as the exported graph outputs them: (B, L) from the pooled output, (B, T, L) at every
        input position from the tokens (a word's tag is read at its first piece)."""
        return logits

    def write(self, problem, split, predictions, features, path, read_examples):
        """`index<TAB>prediction` per example: the file's index on test (GLUE's, or the row number), else the row.
        `read_examples()` gives the split's examples (a type that writes them back reads them)."""
        values = self.prediction_strings(problem, predictions)
        indices = features.index if features.index is not None else range(len(values))
        lines = [PREDICTION_HEADER, *(f"{index}\t{value}" for index, value in zip(indices, values, strict=True))]
        write_text(path, "\n".join(lines) + "\n")


class ClassificationType(ProblemType):
    name = "cls"
    min_labels = 2


class RegressionType(ProblemType):
    name = "regression"
    has_label_list = False
    scaled = True
    keys = ("label_scale",)

    def num_outputs(self, problem):
        return 1

    def default_metrics(self, labels):
        return ("pearson", "spearman")

    def parse_label(self, value, separator, where):
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"{where}: label {value!r} is not a number (a regression target)")

    def check_labels(self, problem, path, examples, lines_of):
        if problem.label_scale is None:
            return
        for example, number in zip(examples, lines_of):
            if example.label is not None and not 0.0 <= example.label <= problem.label_scale:
                raise ValueError(f"{path} line {number}: label {example.label:g} is outside "
                                 f"[0, {problem.label_scale:g}] (label_scale)")

    def encode_labels(self, problem, examples, features):
        """float32 [N]: label / label_scale (STS-B: score / 5, as the original), or the label."""
        if not _labelled(problem, examples):
            return None, None
        scale = problem.label_scale
        return torch.tensor([example.label if scale is None else example.label / scale for example in examples],
                            dtype=torch.float32), None

    def loss(self, logits, labels, denominator=None):
        """logits (E, 1), labels (E,) the target; the summed squares divided by `denominator` when given."""
        if denominator is None:
            return F.mse_loss(logits.float().squeeze(-1), labels.float())
        return F.mse_loss(logits.float().squeeze(-1), labels.float(), reduction="sum") / denominator

    def decide(self, logits):
        return logits[:, 0]  # in label / label_scale units

    def prediction_values(self, problem, predictions):
        """The value x label_scale, clipped to [0, label_scale]: in the label's units, as floats."""
        values = torch.as_tensor(predictions).float().cpu()
        if problem.label_scale is not None:
            values = (values * problem.label_scale).clamp(0.0, problem.label_scale)
        return values.tolist()

    def prediction_strings(self, problem, predictions):
        """The values with REGRESSION_DIGITS significant digits; GLUE's server files with fixed decimals."""
        spec = f".{SUBMISSION_DECIMALS}f" if problem.submission_files else f".{REGRESSION_DIGITS}g"
        return [f"{value:{spec}}" for value in self.prediction_values(problem, predictions)]

    def export_logits(self, logits):
        """(B,): the one output, before label_scale."""
        return logits[:, 0]


class MultiLabelType(ProblemType):
    name = "multi_cls"
    keys = ("label_separator",)

    def default_metrics(self, labels):
        return MULTI_LABEL_METRICS

    def parse_label(self, value, separator, where):
        """A JSON list, or labels joined by `separator` ("" is the empty set)."""
        if isinstance(value, list):
            items = value
        elif isinstance(value, str):
            items = value.split(separator) if value.strip() else []
        else:
            raise ValueError(f"{where}: labels {value!r} are neither a JSON list nor a {separator!r}-joined string")
        if any(not isinstance(item, (str, int)) or isinstance(item, bool) for item in items):
            raise ValueError(f"{where}: labels {value!r} must be non-empty strings")
        items = [str(item).strip() for item in items]  # "joy, positive": the space is no part of a label
        if "" in items:
            raise ValueError(f"{where}: labels {value!r} must be non-empty strings")
        return tuple(dict.fromkeys(items))

    def label_values(self, example):
        if isinstance(example, feats.TaggedSentence):
            return example.tags or ()
        return example.label or ()

    def encode_labels(self, problem, examples, features):
        """float32 [N, L]: 1 where row i has label j. Word inputs: every row of a sentence has the sentence's labels,
        those (other than O) of all its words, the first row's being the example's (features.example_rows)."""
        if not _labelled(problem, examples):
            return None, None
        label_ids = {label: j for j, label in enumerate(problem.labels)}
        if isinstance(examples[0], feats.TaggedSentence):
            pairs = [(number, tag) for number, example in enumerate(examples) for tag in example.tags
                     if tag != OUTSIDE_TAG]
        else:
            pairs = [(number, label) for number, example in enumerate(examples) for label in example.label]
        rows = torch.tensor([number for number, _ in pairs], dtype=torch.int64)
        columns = torch.tensor([label_ids[label] for _, label in pairs], dtype=torch.int64)
        multi_hot = torch.zeros(len(examples), len(problem.labels), dtype=torch.float32)  # (S, L)
        multi_hot[rows, columns] = 1.0
        return (multi_hot if features.sentence is None else multi_hot[features.sentence]), None

    def loss(self, logits, labels, denominator=None):
        """logits (E, L), labels (E, L) multi-hot: the mean over labels of the mean over examples, or of the sum
        divided by `denominator` when given."""
        if denominator is None:
            return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        summed = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="sum")
        return summed / (denominator * logits.shape[-1])

    def decide(self, logits):
        return torch.sigmoid(logits.float()) > MULTI_LABEL_THRESHOLD

    def metrics(self, problem, split, predictions, features):
        try:
            return metrics.multi_label_metrics(problem.metrics[split], predictions, self.gold(features))
        except ValueError as error:
            raise ValueError(f"{problem.name} {split}: {error}") from None

    def prediction_values(self, problem, predictions):
        """The labels predicted for each example (a sentence of words: from its first row), in the problem's label
        order."""
        return [[label for label, on in zip(problem.labels, row) if on]
                for row in torch.as_tensor(predictions).bool().tolist()]

    def prediction_strings(self, problem, predictions):
        """The labels predicted, joined by ","."""
        return [DEFAULT_LABEL_SEPARATOR.join(labels) for labels in self.prediction_values(problem, predictions)]


class SequenceTaggingType(ProblemType):
    name = "seq_tag"
    head = heads.TokenHead
    reads = "tokens"
    per_token = True
    word_inputs = True
    file_suffix = ".conll"
    formats = ("conll", "jsonl")  # jsonl: a list of words and a list of tags per line (an image, vectors beside)

    def default_metrics(self, labels):
        return SPAN_METRICS if span_scheme(labels) else ("acc",)

    def encode_labels(self, problem, examples, features):
        """int64 [total tokens]: each word's label id on its first piece, IGNORE_INDEX everywhere else."""
        if not _labelled(problem, examples):
            return None, None
        label_ids = {label: j for j, label in enumerate(problem.labels)}
        token_labels = torch.full((features.input_ids.numel(),), IGNORE_INDEX, dtype=torch.int64)
        token_labels[features.word_starts] = torch.tensor(
            [label_ids[tag] for example in examples for tag in example.tags], dtype=torch.int64)
        return None, token_labels

    def example_labels(self, features, indices):
        """(N,): the labels of the examples' real tokens, packed in the model's token order."""
        return features.token_labels[feats.packed_positions(features, indices)]

    def labelled_tokens(self, features, indices):
        """The labelled tokens of the rows at `indices`: a per-token loss's share."""
        return int((self.example_labels(features, indices) != IGNORE_INDEX).sum())

    def loss(self, logits, labels, denominator=None):
        """(N,) per packed token. [CLS], [SEP] and non-first word pieces are labelled IGNORE_INDEX: no loss there,
        and padding is never a class (bert-multitask-learning's bug)."""
        return token_loss(logits, labels, denominator)

    def input_values(self, problem, predictions, features):
        """One tag per word of each input sentence (the rows of a cut sentence joined)."""
        return self.sentence_tags(problem, features, predictions)

    def sentence_tags(self, problem, features, token_values):
        """Per-token label ids in input_ids order (predictions, or token_labels) -> one list of tags per sentence of
        the file, in file order."""
        return [[problem.labels[value] for value in values] for values in feats.word_values(features, token_values)]

    def metrics(self, problem, split, predictions, features):
        def to_seqeval(tags):
            if span_scheme(problem.labels) == "bmes":
                return [[BMES_TO_SEQEVAL[tag] for tag in sentence] for sentence in tags]
            return tags
        predicted = to_seqeval(self.sentence_tags(problem, features, predictions))
        gold = to_seqeval(self.sentence_tags(problem, features, features.token_labels))
        return metrics.span_metrics(problem.metrics[split], predicted, gold)

    def write(self, problem, split, predictions, features, path, read_examples):
        """One token per line, exactly as in the input: token, gold (when the split has labels) and predicted tag; a
        blank line after each sentence, in file order."""
        sentences = read_examples()
        predicted = self.sentence_tags(problem, features, predictions)
        if [len(sentence.tokens) for sentence in sentences] != [len(tags) for tags in predicted]:
            raise ValueError(f"{problem.name} {split}: the features do not match its {split} file (another file, or "
                             "another max_seq_length?)")
        lines = []
        for sentence, tags in zip(sentences, predicted):
            gold = sentence.tags if sentence.tags is not None else [None] * len(tags)
            for token, gold_tag, tag in zip(sentence.tokens, gold, tags):
                lines.append(f"{token}\t{tag}" if gold_tag is None else f"{token}\t{gold_tag}\t{tag}")
            lines.append("")
        write_text(path, "\n".join(lines) + "\n")


class MaskedLMType(ProblemType):
    """Masked LM: the labels are the text itself, masked afresh every step (masking.py); scored from sums over the
    masked tokens of a dev set masked once, with no prediction file."""

    name = "mask_lm"
    head = heads.MaskedLMHead
    reads = "masked"
    has_label_list = False
    per_token = True
    masks_inputs = True
    takes_inputs_of = True
    file_suffix = None
    not_exported = "its head predicts the masked tokens of inputs masked for it, which a served graph is not given"
    formats = ("text", "tsv", "jsonl")

    def num_outputs(self, problem):
        return 0  # no classifier of its own: BERT's pre-training heads, `cls`, shared

    def build_head(self, config, num_outputs, problem=None):
        return self.head()

    def default_metrics(self, labels):
        return MASK_LM_METRICS

    def check_labels(self, problem, path, examples, lines_of):
        """Nothing to check: the labels are made from the text itself."""

    def encode_labels(self, problem, examples, features):
        return None, None

    def loss(self, logits, labels, denominator=None):
        """logits (M, V), labels (M,): the original ids of the masked tokens."""
        return token_loss(logits, labels, denominator)

    def masked_logits(self, logits):
        return logits

    def masked_labels(self, batch):
        """What the loss compares with in a masked batch (masking.with_masked_positions): the masked tokens' ids."""
        return batch["masked_labels"]

    def predict(self, problem, split_pass):
        """Sums over a split's masked tokens (its features masked already): masked tokens, their summed cross-entropy
        and correct predictions (pretrain also pairs and correct next-sentence predictions), as Python numbers from
        one host sync at the end."""
        sums = torch.zeros(len(LM_STATISTICS), dtype=torch.float64, device=split_pass.device)
        for _, batch, logits in split_pass.batches(masked=True):
            words, labels = self.masked_logits(logits).float(), batch["masked_labels"]  # (M, V), (M,)
            batch_sums = [labels.numel(), F.cross_entropy(words, labels, reduction="sum"),
                          (words.argmax(-1) == labels).sum()]
            if self.next_sentence:
                batch_sums += [len(batch["labels"]), (logits.next_sentence.argmax(-1) == batch["labels"]).sum()]
            for i, value in enumerate(batch_sums):
                sums[i] += value
        return dict(zip(LM_STATISTICS, sums.tolist()))

    def metrics(self, problem, split, statistics, features):
        """Accuracy in percent on the masked tokens (and on next-sentence prediction), and the masked LM's
        perplexity, exp(mean cross-entropy)."""
        if not statistics["masked"]:
            raise ValueError(f"{problem.name} {split}: no token was masked (are the texts empty?)")
        accuracy = 100.0 * statistics["correct"] / statistics["masked"]
        perplexity = metrics.perplexity(statistics["loss"] / statistics["masked"])
        if not self.next_sentence:
            return {"acc": accuracy, "perplexity": perplexity}
        return {"mlm_acc": accuracy, "nsp_acc": 100.0 * statistics["next_correct"] / statistics["pairs"],
                "perplexity": perplexity}

    def score(self, problem, values):
        """Minus the dev loss (-ln perplexity): higher is better."""
        return -math.log(values["perplexity"])

    def write(self, problem, split, predictions, features, path, read_examples):
        raise ValueError(f"{problem.name} is a {self.name} problem: it is scored on its masked tokens, with no "
                         "prediction file")


class PreTrainingType(MaskedLMType):
    """BERT's pre-training: masked LM plus next-sentence prediction on sentence pairs of documents."""

    name = "pretrain"
    head = heads.PreTrainingHead
    next_sentence = True
    takes_inputs_of = False
    formats = ("text",)

    def default_metrics(self, labels):
        return PRETRAIN_METRICS

    def encode_labels(self, problem, examples, features):
        """int64 [N]: readers.NSP_IS_NEXT or NSP_RANDOM per pair."""
        return torch.tensor([example.label for example in examples], dtype=torch.int64), None

    def loss(self, logits, labels, denominator=None):
        """logits PreTrainingLogits ((M, V), (B, 2)), labels ((M,), (B,)): masked LM plus next sentence."""
        return (token_loss(logits.masked_lm, labels[0], denominator)
                + F.cross_entropy(logits.next_sentence.float(), labels[1]))

    def masked_logits(self, logits):
        return logits.masked_lm

    def masked_labels(self, batch):
        return batch["masked_labels"], batch["labels"]


TYPES = {t.name: t for t in (ClassificationType(), RegressionType(), MultiLabelType(), SequenceTaggingType(),
                             MaskedLMType(), PreTrainingType())}
NAMES = tuple(TYPES)


def register(*types):
    """Add problem types to the registry (seq2seq_types.py adds seq2seq_text and seq2seq_tag when it is imported)."""
    global NAMES
    TYPES.update({t.name: t for t in types})
    NAMES = tuple(TYPES)


def get(name):
    """The type object of a type name; ValueError listing the names otherwise."""
    if name not in TYPES:
        raise ValueError(f"unknown type {name!r}; expected one of {', '.join(TYPES)}")
    return TYPES[name]


def of(problem):
    """The type object of a Problem."""
    return TYPES[problem.type]


def glue_types(num_labels_per_task):
    """GLUE's heads by their width, as the original code chose its loss: 1 output is regression (STS-B)."""
    return [RegressionType.name if n == 1 else ClassificationType.name for n in num_labels_per_task]


# The seq2seq types build on ProblemType in a module of their own, which registers them: imported last, so that it
# finds this module complete (and registers them the same when it is imported first).
import seq2seq_types  # noqa: E402,F401
