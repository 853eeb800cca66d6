"""Scoring a split: the model over one split's features, its problem type's predictions and metrics, and the scores
that pick the best model. Training (each evaluation) and run_test_multi_task.py (prediction files, --split dev) both
go through `predict_split` and `evaluate`, so their numbers are the same.
"""
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

import masking
import metrics
import problem_types
from features import make_batch
from glue_processors import TASKS
from hardware import PAD_MULTIPLE, to_device

# --metric_for_best_model's default: the mean of the problems' scores (the GLUE score on GLUE's tasks).
MEAN_SCORE = "mean"


@dataclass
class SplitPass:
    """The model over one split's features, as a problem type's `predict` reads it: head `head` through task row
    `row`, in batches of similar length (sorted longest first, so padding to the longest costs little)."""

    model: torch.nn.Module
    features: object  # features.Features
    row: int  # the task row (the problem's group)
    head: int  # the problem's head
    batch_size: int
    device: torch.device
    autocast_dtype: torch.dtype | None = None
    pad_to: int | None = None  # hardware.batch_padding
    desc: str | None = None  # progress bar label (None: no bar)
    vocab_file: object = None  # the vocabulary (a path), where a type decodes generated word pieces

    @torch.no_grad()
    def batches(self, masked=False):
        """Yields each batch's row indices, the batch on the device (with masking.with_masked_positions when
        `masked`) and the head's logits (a head on the pooled output: for the rows that stand for examples,
        features.example_indices); the model is in eval mode meanwhile, restored after."""
        model, features = self.model, self.features
        was_training = model.training
        model.eval()
        order = torch.argsort(features.lengths, descending=True, stable=True)
        for start in tqdm(range(0, len(features), self.batch_size), desc=self.desc, leave=False,
                          disable=True if self.desc is None else None):  # None: off when stderr is no terminal
            indices = order[start:start + self.batch_size]
            batch = make_batch(features, indices, pad_to=self.pad_to, pad_multiple=PAD_MULTIPLE)
            batch = to_device(masking.with_masked_positions(batch) if masked else batch, self.device)
            with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
                output = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], self.row,
                               token_index=batch["token_index"], heads=[self.head],
                               masked_index=batch.get("masked_index"), example_index=batch.get("example_index"),
                               inputs=batch.get("inputs"))
            yield indices, batch, output.logits[0]
        model.train(was_training)


def predict_split(model, problem, features, row, head, batch_size, device, autocast_dtype=None, pad_to=None,
                  desc=None, vocab_file=None):
    """`problem`'s predictions on one split (its type's: labels, values, tags; a masked LM's sums over its masked
    tokens; generated text), from head `head` through task row `row`."""
    split_pass = SplitPass(model, features, row, head, batch_size, device, autocast_dtype, pad_to, desc, vocab_file)
    return problem_types.of(problem).predict(problem, split_pass)


def split_metrics(problem, split, predictions, features):
    """The problem's dev metrics on a whole split, in percent."""
    if split not in problem.metrics:
        raise ValueError(f"problem {problem.name} has no metrics for split {split!r}; its dev splits: "
                         f"{list(problem.metrics)}")
    ptype = problem_types.of(problem)
    if features.labels is None and features.token_labels is None and not ptype.masks_inputs:
        raise ValueError(f"{problem.name} {split}: the features have no labels to score against")
    return ptype.metrics(problem, split, predictions, features)


def dev_set(problem, features, masking_spec):
    """A dev split's features as every evaluation scores them: a masked LM's masked once (masking.mask_dev_set)."""
    return masking.mask_dev_set(features, masking_spec) if problem_types.of(problem).masks_inputs else features


def evaluate(model, eval_sets, problems, batch_size, device, autocast_dtype, pad_to, row_of, vocab_file=None):
    """Metrics on whole dev sets: {problem: {metric: value}} and the mean of the problems' scores. `problems`: the
    model's problems in head order; eval_sets: (name, split, features) with dev_set's features; row_of: each head's
    task row; vocab_file: the run's vocabulary (generated word pieces are decoded with it)."""
    by_name = {p.name: p for p in problems}
    heads = list(by_name)
    scores = {}
    for name, split, features in eval_sets:
        head = heads.index(name)
        predictions = predict_split(model, by_name[name], features, row_of[head], head, batch_size, device,
                                    autocast_dtype, pad_to, desc=f"eval {name}", vocab_file=vocab_file)
        scores.setdefault(name, {}).update(split_metrics(by_name[name], split, predictions, features))
    return scores, mean_score(scores, by_name)


def problem_score(problem, values):
    """One problem's score for the best-model choice (higher is better)."""
    return problem_types.of(problem).score(problem, values)


def mean_score(scores, by_name):
    """The mean over problems of each one's score: the GLUE score on GLUE's tasks. Masked-LM problems count only
    when there are no others (then it is minus their mean dev loss)."""
    kept = {name: m for name, m in scores.items() if not problem_types.of(by_name[name]).masks_inputs} or scores
    return sum(problem_score(by_name[name], m) for name, m in kept.items()) / len(kept)


def scored_problems(problems):
    """The problems the mean score averages: all but the masked LMs (all of them when there are only masked LMs)."""
    return [p for p in problems if not problem_types.of(p).masks_inputs] or list(problems)


def overall_label(problems):
    """What the mean score is called in the log: GLUE when every problem it averages is GLUE's."""
    return "GLUE" if all(p.name in TASKS for p in scored_problems(problems)) else MEAN_SCORE


def format_scores(scores, overall, label="GLUE"):
    parts = [f"{name} " + " ".join(f"{metric} {value:.2f}" for metric, value in values.items())
             for name, values in scores.items()]
    return " | ".join(parts + [f"{label} {overall:.2f}"])


def best_model_score(scores, overall, name, by_name):
    """The value --metric_for_best_model names in one evaluation's scores (higher is better: a perplexity counts
    negated)."""
    if name == MEAN_SCORE:
        return overall
    problem, _, metric = name.partition("/")
    if not metric:
        return problem_score(by_name[problem], scores[problem])
    return -scores[problem][metric] if metric in metrics.LOWER_IS_BETTER else scores[problem][metric]


def score_record(scores, overall, problems):
    """eval_results.jsonl's (and dev_results.json's) scores: per problem and metric, each problem's score, the mean
    score, and, while the run has GLUE tasks, the same mean as "glue_score" (the name scripts have always read).
    `problems`: every problem of `scores` (and the model's)."""
    by_name = {p.name: p for p in problems}
    record = {"scores": scores, "mean_score": overall,
              "task_scores": {name: problem_score(by_name[name], m) for name, m in scores.items()}}
    if any(p.name in TASKS for p in problems):
        record["glue_score"] = overall
    return record
