"""The multi-task methods: what distinguishes one method's training from another's. Each training script runs one;
a run's config.json records its name, so run_test_multi_task.py rebuilds the same model."""
from dataclasses import dataclass
from types import ModuleType
from typing import Callable

import modeling
import modeling_gated
import modeling_pals
from sampler import embert_alpha

@dataclass(frozen=True)
class Method:
    """What distinguishes one multi-task method's training from another's."""

    name: str  # written to config.json: run_test_multi_task.py picks the method by it
    modeling: ModuleType  # provides BertConfig and BertForMultiTask
    script: str  # the training script that runs it (named in messages)
    anneal_alpha: Callable = embert_alpha  # (epoch, num_epochs) -> sampling exponent for --sample anneal
    frozen_parameters: Callable | None = None  # (model, task_id, epoch) -> parameters this step must not update
    pad_to_max_length: bool = False  # pad every batch to --max_seq_length (Gated-BERT's gate reads it all)
    checkpoint_every_epoch: bool = False  # also keep model_epoch_N.pth after every epoch
    configure: Callable | None = None  # (config, max_seq_length, h_aug) -> config: model sizes taken from flags


# Every method, by the name a run's config.json records; each training script runs one of them.
METHODS = {method.name: method for method in (
    Method("embert", modeling, "run_multi_task.py"),
    Method("gated", modeling_gated, "run_multi_task_gated.py", anneal_alpha=modeling_gated.anneal_alpha,
           frozen_parameters=modeling_gated.frozen_parameters, pad_to_max_length=True, checkpoint_every_epoch=True,
           configure=modeling_gated.configure),
    Method("pals", modeling_pals, "run_multi_task_pals.py", configure=modeling_pals.configure),
)}
