"""Sampling the group each optimizer step trains, and the examples of its batches (the BERT-and-PALs recipe).

An "epoch" is STEPS_PER_TASK_PER_EPOCH optimizer steps per group. A group is drawn per step with p proportional to
N^alpha (N: its training examples as loaded): `anneal` lowers alpha from 1.0 at the first epoch to 0.2 at the last,
`prop` keeps 1, `sqrt` 0.5, `uniform` 0; `rr` takes the groups in turn.
"""
import torch

# The BERT-and-PALs recipe: an "epoch" is 300 optimizer steps per group.
STEPS_PER_TASK_PER_EPOCH = 300

# Annealed sampling: p_t proportional to N_t^alpha, alpha from ALPHA_START down to ALPHA_END (PALs paper).
ALPHA_START, ALPHA_END = 1.0, 0.2

SAMPLE_EXPONENTS = {"prop": 1.0, "sqrt": 0.5, "uniform": 0.0}  # uniform: N^0, every group equally likely

SAMPLE_MODES = ("anneal", "prop", "sqrt", "uniform", "rr")


def embert_alpha(epoch, num_epochs):
    """Sampling exponent for epoch `epoch` (0-based): 1.0 at the first epoch down to 0.2 at the last."""
    return ALPHA_START - (ALPHA_START - ALPHA_END) * epoch / max(num_epochs - 1, 1)


class TaskSampler:
    """Which task (or & group: a group is sampled as one task, by its examples' count) each optimizer step trains,
    and which examples each batch holds.

    Everything drawn is a pure function of the seed, the epoch and per-task counters: a resumed run draws what an
    uninterrupted one would, and every DDP rank draws the same without communicating. Each task's examples form an
    endless stream of permutations, a fresh one per pass, so every batch is full and the data is reshuffled each pass.
    """

    SCHEDULE, DATA = 0, 1  # seed streams

    def __init__(self, sizes, mode, steps_per_epoch, num_epochs, seed, anneal_alpha):
        self.sizes, self.mode, self.seed = list(sizes), mode, seed
        self.steps_per_epoch, self.num_epochs, self.anneal_alpha = steps_per_epoch, num_epochs, anneal_alpha
        self.consumed = [0] * len(sizes)  # examples drawn so far per task, over all passes
        self._permutation = {}  # task -> (pass, permutation of that pass)

    def alpha(self, epoch):
        return self.anneal_alpha(epoch, self.num_epochs) if self.mode == "anneal" else SAMPLE_EXPONENTS.get(self.mode)

    def probabilities(self, epoch):
        """p_t proportional to N_t^alpha, (num_tasks,); None for round robin."""
        if self.mode == "rr":
            return None
        weights = torch.tensor(self.sizes, dtype=torch.float64) ** self.alpha(epoch)
        return weights / weights.sum()

    def tasks_for_epoch(self, epoch):
        """The task of every optimizer step of `epoch`, (steps_per_epoch,) int64."""
        if self.mode == "rr":  # the original's rr always trained task 0; here every task in turn
            first = epoch * self.steps_per_epoch
            return torch.arange(first, first + self.steps_per_epoch) % len(self.sizes)
        generator = torch.Generator().manual_seed(hash((self.seed, self.SCHEDULE, epoch)))
        return torch.multinomial(self.probabilities(epoch), self.steps_per_epoch, replacement=True,
                                 generator=generator)

    def next_indices(self, task, count):
        """The next `count` example indices of `task`'s stream, (count,) int64."""
        size, chunks = self.sizes[task], []
        while count > 0:
            pass_, offset = divmod(self.consumed[task], size)
            if self._permutation.get(task, (None,))[0] != pass_:
                generator = torch.Generator().manual_seed(hash((self.seed, self.DATA, task, pass_)))
                self._permutation[task] = (pass_, torch.randperm(size, generator=generator))
            chunk = self._permutation[task][1][offset:offset + count]
            chunks.append(chunk)
            self.consumed[task] += len(chunk)
            count -= len(chunk)
        return torch.cat(chunks)

    def state_dict(self):
        return {"consumed": list(self.consumed)}

    def load_state_dict(self, state):
        self.consumed = list(state["consumed"])
