"""One optimizer step of one group: its micro-batches (this process's slice of what every process drew), forward and
backward through one encoder pass for all of the group's heads, clipping and the update; and the loss tally that
the log reads.

Per-example losses are means over a micro-batch's examples (every micro-batch has equally many). Per-token losses
(tagging, masked LM), and per-example losses on word inputs (only a sentence's first row is an example, so
micro-batches hold different numbers of them), divide their sums by the whole step's labelled units (tokens,
examples) per micro-batch and process (`token_denominators`), so N processes or K micro-batches train exactly as
one batch.
"""
import contextlib
from dataclasses import dataclass

import torch
from torch.nn.parallel import DistributedDataParallel

import masking
import optimization
import problem_types
from features import IGNORE_INDEX, make_batch, take_examples
from hardware import PAD_MULTIPLE, to_device


def training_step(net, model, batches, row, heads, optimizer, scheduler, scaler, loss_weights, autocast_dtype=None,
                  frozen=(), denominators=None):
    """One optimizer step of the group of `heads` (head indices) through task row `row`: forward and backward over
    its micro-batches (make_batch dicts on the model's device, each with "head_labels", one entry per head), the
    step's loss the sum of the heads' losses times `loss_weights` ((len(heads),) on the device), each the mean over
    the micro-batches; the `frozen` parameters' gradients dropped (no update at all: the optimizers skip parameters
    without one); unscale (fp16), clip, update, schedule. `denominators`: per head, what a per-token loss divides
    its sum by (token_denominators). Returns each head's loss, (len(heads),) on the device (no host sync). `net` is
    the model or its DistributedDataParallel wrapper, which syncs on the last micro-batch."""
    device_type = next(model.parameters()).device.type
    total = 0.0
    for i, batch in enumerate(batches):
        skip_sync = isinstance(net, DistributedDataParallel) and i < len(batches) - 1
        with (net.no_sync() if skip_sync else contextlib.nullcontext()), \
                torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            output = net(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], row,
                         batch["head_labels"], token_index=batch["token_index"], heads=heads,
                         masked_index=batch.get("masked_index"), denominators=denominators,
                         example_index=batch.get("example_index"), inputs=batch.get("inputs"))
            tallied = torch.stack(output.losses) / len(batches)  # (k,)
            loss = (tallied * loss_weights).sum()  # a factor of 1.0 is exact
        scaler.scale(loss).backward()
        total = total + tallied.detach()
    for p in frozen:
        p.grad = None
    scaler.unscale_(optimizer)
    optimization.clip_gradients(model, optimizer)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return total


@dataclass(frozen=True)
class BatchPlan:
    """What building a process's micro-batch needs from the run."""

    rank: int
    micro_batch: int  # examples per micro-batch and process
    pad_to: int | None  # hardware.batch_padding
    device: torch.device
    masking: masking.Masking | None  # the vocabulary's special tokens, for masked-LM problems


def training_batch(plan, problems, train_sets, heads, indices, masking_seeds):
    """This process's micro-batch, on the device, of the group `heads`: its slice of the `indices` every process drew
    (N processes train on what one would), with "head_labels", one entry per head as its type's loss reads them. A
    masked-LM problem's drawn examples are masked together, by a generator seeded with `masking_seeds` (seed, step,
    micro-batch): the same masks with any number of processes, and again after --resume.

    Also returns, per head, how many labelled units all processes' rows hold (ProblemType.labelled_tokens: tokens,
    or examples of word inputs; None for a plain mean): what token_denominators needs, known here on the host with
    no communication."""
    data, ptype = train_sets[heads[0]], problem_types.of(problems[heads[0]])
    mine = slice(plan.rank * plan.micro_batch, (plan.rank + 1) * plan.micro_batch)
    if ptype.masks_inputs:  # a group of its own (problems.resolve_groups)
        drawn = masking.mask_tokens(take_examples(data, indices), plan.masking,
                                    masking.seeded_generator(*masking_seeds))
        batch = masking.with_masked_positions(make_batch(drawn, torch.arange(len(indices))[mine], pad_to=plan.pad_to,
                                                         pad_multiple=PAD_MULTIPLE))
        batch["head_labels"] = [ptype.masked_labels(batch)]
        return to_device(batch, plan.device), [int((drawn.token_labels != IGNORE_INDEX).sum())]
    batch = make_batch(data, indices[mine], pad_to=plan.pad_to, pad_multiple=PAD_MULTIPLE)
    for key in ("labels", "token_labels"):  # the first problem's; each head's come from its own features below
        batch.pop(key, None)
    kinds = [problem_types.of(problems[h]) for h in heads]
    # The group's problems have the same inputs (multitask.check_same_inputs): only the labels differ.
    batch["head_labels"] = [kind.example_labels(train_sets[h], indices[mine]) for kind, h in zip(kinds, heads)]
    counts = [kind.labelled_tokens(train_sets[h], indices) for kind, h in zip(kinds, heads)]
    return to_device(batch, plan.device), counts


def token_denominators(counts, world_size):
    """Per head, what each micro-batch's summed loss divides its sum by: the step's labelled units (over every
    micro-batch and process) per micro-batch and process, so that the gradient, averaged over micro-batches
    (training_step) and processes (DistributedDataParallel), is that of the mean over all the step's tokens (or
    examples). None for a plain mean per micro-batch. counts: per micro-batch, training_batch's per-head counts."""
    shares = len(counts) * world_size
    return [None if column[0] is None else max(sum(column), 1) / shares for column in zip(*counts)]


@dataclass
class LossTally:
    """Per-head loss sums and step counts since the last log flush, kept on the device (no host sync per step); a NaN
    or inf loss makes its head's sum non-finite, so the sums double as the divergence check. The last entry carries
    the stop request (a signal number) through the all-reduce, so that every rank agrees to stop."""

    sums: torch.Tensor  # (num_heads + 1,)
    steps: list

    @classmethod
    def zeros(cls, num_heads, device):
        return cls(torch.zeros(num_heads + 1, device=device), [0] * num_heads)

    def add(self, heads, losses):
        """losses: (len(heads),), as training_step returns. One plain index per head: indexing with a list would copy
        it to the device every step."""
        for i, head in enumerate(heads):
            self.sums[head] += losses[i]
            self.steps[head] += 1
