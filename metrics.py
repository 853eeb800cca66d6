"""Metrics on a whole split, in percent, from the field's reference libraries (scikit-learn, scipy, seqeval,
sacrebleu).

A problem's row names its metrics per dev split (GLUE's as the benchmark reports them); its type decides which
family they come from (problem_types.py): class and regression metrics (`compute_metrics`), multi-label F1
(`multi_label_metrics`), span F1 of tagged sentences (`span_metrics`), a masked LM's accuracy and perplexity from
sums over its masked tokens (`masked_lm_metrics`), and generated sequences' BLEU (sacrebleu) or exact match
(`generated_text_metrics`), and sequence accuracy and token error rate (rapidfuzz's Levenshtein distance,
`generated_symbol_metrics`).
"""
import math
import sys
import warnings

import numpy as np
import sacrebleu
import torch
from rapidfuzz.distance import Levenshtein
from scipy import stats
from seqeval import metrics as seqeval_metrics
from sklearn import metrics as sk_metrics

LARGEST_EXP_ARGUMENT = math.log(sys.float_info.max)  # math.exp overflows above it
# Metrics where a smaller value is better (model selection negates them).
LOWER_IS_BETTER = ("perplexity", "token_error_rate")


def _accuracy(predictions, labels):
    return float(np.mean(predictions == labels))


def _correlation(function):
    def metric(predictions, labels):
        # Undefined for a constant input; reported as 0 (no correlation), as scikit-learn does for MCC, so that a
        # collapsed model scores as chance instead of turning the mean score into NaN.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", stats.ConstantInputWarning)
            value = function(predictions, labels)[0]
        return 0.0 if math.isnan(value) else float(value)
    return metric


METRIC_FUNCTIONS = {
    "acc": _accuracy,
    "acc_m": _accuracy,  # MNLI matched
    "acc_mm": _accuracy,  # MNLI mismatched
    "f1": lambda predictions, labels: float(sk_metrics.f1_score(labels, predictions)),  # class 1 is positive
    "mcc": lambda predictions, labels: float(sk_metrics.matthews_corrcoef(labels, predictions)),
    "pearson": _correlation(stats.pearsonr),
    "spearman": _correlation(stats.spearmanr),
}


def as_numpy(values):
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        if values.is_floating_point():
            values = values.double()  # numpy has no bfloat16 (the model's output under autocast)
    return np.asarray(values)


def compute_metrics(problem, split, predictions, labels):
    """A cls or regression problem's dev metrics on a whole split, in percent (x100).

    predictions: class indices, or regression outputs (Pearson and Spearman do not change when the outputs and
    targets are both scaled: STS-B's score / 5 targets give the same values as 0-5 scores).
    """
    if split not in problem.metrics:
        raise ValueError(f"problem {problem.name} has no metrics for split {split!r}; its dev splits: "
                         f"{list(problem.metrics)}")
    predictions, labels = as_numpy(predictions), as_numpy(labels)
    if predictions.shape != labels.shape or predictions.ndim != 1 or predictions.size == 0:
        raise ValueError(f"{problem.name} {split}: predictions {predictions.shape} and labels {labels.shape} "
                         "must be the same non-empty 1-D shape")
    return {name: 100.0 * METRIC_FUNCTIONS[name](predictions, labels) for name in problem.metrics[split]}


def multi_label_metrics(names, predictions, labels):
    """micro_f1, macro_f1 and exact_match (the whole label set right) of bool [N, L] predictions and labels."""
    predicted, gold = as_numpy(predictions).astype(bool), as_numpy(labels).astype(bool)
    if predicted.shape != gold.shape:
        raise ValueError(f"predictions {predicted.shape} and labels {gold.shape} differ")
    values = {  # zero_division=0: a label never predicted nor present counts as F1 0, not a warning
        "micro_f1": lambda: sk_metrics.f1_score(gold, predicted, average="micro", zero_division=0),
        "macro_f1": lambda: sk_metrics.f1_score(gold, predicted, average="macro", zero_division=0),
        "exact_match": lambda: sk_metrics.accuracy_score(gold, predicted),
    }
    return {name: 100.0 * float(values[name]()) for name in names}


def span_metrics(names, predicted, gold):
    """Span F1 / precision / recall as seqeval reads them (default mode), and acc, the share of words tagged right,
    of tag lists per sentence (seqeval's spellings: B-/I-/E-/S- prefixes and O)."""
    values = {
        "f1": lambda: seqeval_metrics.f1_score(gold, predicted, zero_division=0),
        "precision": lambda: seqeval_metrics.precision_score(gold, predicted, zero_division=0),
        "recall": lambda: seqeval_metrics.recall_score(gold, predicted, zero_division=0),
        "acc": lambda: seqeval_metrics.accuracy_score(gold, predicted),
    }
    return {name: 100.0 * float(values[name]()) for name in names}


def generated_text_metrics(names, predicted, references, tokenize):
    """bleu (sacrebleu's corpus BLEU, with its tokenizer `tokenize`) and exact_match (% of texts equal to their
    reference) of generated texts against one reference each."""
    values = {"bleu": lambda: sacrebleu.corpus_bleu(predicted, [references], tokenize=tokenize).score,
              "exact_match": lambda: 100.0 * _accuracy(np.array(predicted, dtype=object),
                                                       np.array(references, dtype=object))}
    return {name: float(values[name]()) for name in names}


def generated_symbol_metrics(names, predicted, references):
    """seq_acc (% of sequences exactly right) and token_error_rate (100 x the summed Levenshtein distances over the
    summed reference lengths) of generated symbol sequences (tuples of strings)."""
    values = {"seq_acc": lambda: 100.0 * float(np.mean([p == r for p, r in zip(predicted, references, strict=True)])),
              "token_error_rate": lambda: 100.0 * sum(Levenshtein.distance(p, r) for p, r in zip(predicted, references))
              / sum(map(len, references))}
    return {name: float(values[name]()) for name in names}


def perplexity(mean_loss):
    """exp(mean cross-entropy); infinite for a diverged model's loss, where exp overflows."""
    return math.exp(mean_loss) if mean_loss < LARGEST_EXP_ARGUMENT else math.inf


def mean_of(metrics):
    """The mean of a problem's metrics (GLUE's task score: MRPC (F1 + accuracy) / 2, say)."""
    if not metrics:
        raise ValueError("a score needs at least one metric")
    return sum(metrics.values()) / len(metrics)
