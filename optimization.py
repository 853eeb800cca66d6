"""Optimizers and learning-rate schedule for multi-task BERT training.

Two optimizers, picked by name in `build_optimizer`:

* "adamw" (default): `torch.optim.AdamW` (fused on CUDA), eps 1e-6, betas 0.9/0.999, global gradient clipping at
  norm 1.0 done by the trainer through `clip_gradients`.
* "bertadam": `BertAdam`, the update of the original code (pytorch-pretrained-bert's BertAdam, used by BERT-and-PALs,
  EmBERT and Gated-BERT), reproduced exactly. Its learning-rate schedule is applied outside, by the same
  `linear_warmup_decay` LambdaLR as AdamW's.

How BertAdam differs from torch.optim.AdamW (m, v: first and second moment; g: gradient; t: 1-based step):

| aspect          | BertAdam (original)                              | torch.optim.AdamW                               |
|-----------------|--------------------------------------------------|-------------------------------------------------|
| bias correction | none: update = m / (sqrt(v) + eps)               | m / (1 - b1^t) and v / (1 - b2^t)               |
|                 | (first steps are ~3x larger: m ~ 0.1 g,          |                                                 |
|                 | sqrt(v) ~ 0.03 |g|; warmup hides it)             |                                                 |
| eps placement   | outside the sqrt, on the uncorrected sqrt(v)     | outside the sqrt, on sqrt(v / (1 - b2^t))       |
| weight decay    | lr * (update + wd * p): decoupled, added to the  | p *= 1 - lr * wd before the step: decoupled,    |
|                 | update before lr scales it                       | the same amount (not L2 added to the gradient)  |
| clipping        | each tensor's gradient to norm 1.0 on its own,   | none inside; `clip_gradients` clips the global  |
|                 | inside step() (gradients are clipped in place)   | norm over all parameters to 1.0                 |

Both skip parameters whose `.grad` is None entirely (no moment update, no decay): the trainers freeze parameters
that way (requires_grad=False, or zero_grad(set_to_none=True), torch's default), so every parameter stays in the
optimizer for the whole run even when the frozen set changes between phases (Gated-BERT).
"""
import numbers
from collections import defaultdict

import torch

# Gradient clipping norm of the original BERT code (Google's run_classifier.py and BertAdam's max_grad_norm).
MAX_GRAD_NORM = 1.0
# Adam hyper-parameters of Google BERT's AdamWeightDecayOptimizer, kept by BertAdam and by the EmBERT code.
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-6
# Weight decay of Google BERT's fine-tuning and of the EmBERT/PALs code.
WEIGHT_DECAY = 0.01
# Guard against a zero norm in torch.nn.utils.clip_grad_norm_ (clip factor max_norm / (norm + 1e-6)), which the
# original BertAdam called on each tensor; kept so the per-tensor clip matches it.
CLIP_NORM_EPS = 1e-6


def uses_weight_decay(name):
    """The grouping rule: no decay for biases and LayerNorm parameters, decay for all else (task embeddings included,
    as the original)."""
    return not (name == "bias" or name.endswith(".bias") or "LayerNorm" in name)


def check_partition(model, groups):
    """Raise if a parameter of `model` is in no group or in several (by identity: tied weights count once)."""
    names = {id(p): n for n, p in model.named_parameters()}
    counts = defaultdict(int)
    for group in groups:
        for p in group["params"]:
            counts[id(p)] += 1
    missing = [n for i, n in names.items() if counts[i] == 0]
    repeated = [names.get(i, "<not a parameter of the model>") for i, c in counts.items() if c > 1]
    foreign = [i for i in counts if i not in names]
    if missing or repeated or foreign:
        raise ValueError(
            f"optimization.py: each model parameter must be in exactly one optimizer group; in none: {missing}; "
            f"in several: {repeated}; {len(foreign)} tensor(s) not in the model")


def param_groups(model, weight_decay=WEIGHT_DECAY):
    """Two optimizer groups by `uses_weight_decay`: [decayed, not decayed]. Each group also carries the parameter names
    under "names" (torch optimizers keep extra group keys and ignore them in the update; handy for logs and tests).

    Frozen parameters are included: the optimizers skip parameters without a gradient (module docstring)."""
    decay = {"params": [], "names": [], "weight_decay": weight_decay}
    no_decay = {"params": [], "names": [], "weight_decay": 0.0}
    for name, p in model.named_parameters():
        group = decay if uses_weight_decay(name) else no_decay
        group["params"].append(p)
        group["names"].append(name)
    groups = [decay, no_decay]
    check_partition(model, groups)
    return groups


def linear_warmup_decay(optimizer, num_training_steps, warmup_proportion):
    """LambdaLR: lr factor = step / W during warmup (W = warmup_proportion * num_training_steps, possibly fractional,
    as the original), then (num_training_steps - step) / (num_training_steps - W), reaching 0 at num_training_steps
    and staying there. Continuous at step W (factor 1 = the base lr). warmup_proportion 0 = no warmup.

    The original (pytorch-pretrained-bert's warmup_linear) used 1 - step / num_training_steps after warmup, so the lr
    dropped from 1.0 to 1 - warmup_proportion at the end of warmup (10% with the default 0.1): a formula slip, fixed.
    Call scheduler.step() once per optimizer step."""
    if not isinstance(num_training_steps, numbers.Integral) or num_training_steps <= 0:
        raise ValueError(f"optimization.py: num_training_steps must be a positive int, got {num_training_steps!r}")
    if not 0.0 <= warmup_proportion < 1.0:
        raise ValueError(f"optimization.py: warmup_proportion (--warmup_proportion) must be in [0, 1), "
                         f"got {warmup_proportion!r}")
    warmup_steps = warmup_proportion * num_training_steps

    def factor(step):
        if step < warmup_steps:
            return step / warmup_steps
        return max(0.0, (num_training_steps - step) / (num_training_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class BertAdam(torch.optim.Optimizer):
    """The original BertAdam update (module docstring), with the lr schedule applied outside (by a LambdaLR).

    Per parameter p with a gradient g, in this order:
        g *= min(1, max_grad_norm / (||g|| + 1e-6))   per tensor, in place (skipped if max_grad_norm is 0)
        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
        update = m / (sqrt(v) + eps) (+ weight_decay * p);  p -= lr * update
    Computed with torch._foreach_* ops, one batch of tensors per (group, device, dtype)."""

    def __init__(self, params, lr, b1=ADAM_BETAS[0], b2=ADAM_BETAS[1], eps=ADAM_EPS, weight_decay=WEIGHT_DECAY,
                 max_grad_norm=MAX_GRAD_NORM):
        defaults = dict(lr=lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, max_grad_norm=max_grad_norm)
        for key, value in defaults.items():
            valid = 0.0 <= value < 1.0 if key in ("b1", "b2") else value >= 0.0
            if not valid:
                expected = "in [0, 1)" if key in ("b1", "b2") else ">= 0"
                raise ValueError(f"optimization.py: BertAdam {key} must be {expected}, got {value!r}")
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            # foreach ops need one device and dtype per call.
            buckets = defaultdict(list)
            for p in group["params"]:
                if p.grad is None:  # frozen this step: no moments, no decay
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("optimization.py: BertAdam does not support sparse gradients")
                buckets[(p.device, p.dtype)].append(p)
            for params in buckets.values():
                self._update(params, group)
        return loss

    def _update(self, params, group):
        for p in params:
            if not self.state[p]:  # first step for p: moments start at zero
                self.state[p]["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                self.state[p]["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        grads = [p.grad for p in params]
        m = [self.state[p]["exp_avg"] for p in params]
        v = [self.state[p]["exp_avg_sq"] for p in params]
        b1, b2 = group["b1"], group["b2"]

        if group["max_grad_norm"] > 0:
            # One clip factor per tensor (0-dim tensors, no host sync), as clip_grad_norm_(p, max_grad_norm) per p.
            coefs = torch._foreach_add(torch._foreach_norm(grads), CLIP_NORM_EPS)
            torch._foreach_reciprocal_(coefs)
            torch._foreach_mul_(coefs, group["max_grad_norm"])
            torch._foreach_clamp_max_(coefs, 1.0)
            torch._foreach_mul_(grads, coefs)

        torch._foreach_mul_(m, b1)
        torch._foreach_add_(m, grads, alpha=1.0 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, grads, grads, value=1.0 - b2)

        denom = torch._foreach_sqrt(v)
        torch._foreach_add_(denom, group["eps"])
        update = torch._foreach_div(m, denom)
        if group["weight_decay"] > 0.0:
            torch._foreach_add_(update, params, alpha=group["weight_decay"])
        torch._foreach_add_(params, update, alpha=-group["lr"])


OPTIMIZERS = ("adamw", "bertadam")
# Devices with a fused AdamW kernel in torch >= 2.4.
FUSED_ADAMW_DEVICES = ("cuda", "cpu")


def build_optimizer(model, name, lr, weight_decay=WEIGHT_DECAY, device_type="cpu"):
    """The optimizer for `--optimizer name` over `param_groups(model, weight_decay)`. device_type is the type of the
    model's device ("cuda", "cpu", ...): AdamW uses torch's fused kernel where it has one (CUDA, and the CPU, where it
    is about 5x faster than the foreach kernel on MiniLM), the foreach kernel elsewhere."""
    groups = param_groups(model, weight_decay)
    if name == "adamw":
        fused = device_type in FUSED_ADAMW_DEVICES
        return torch.optim.AdamW(groups, lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS, fused=fused or None,
                                 foreach=None if fused else True)
    if name == "bertadam":
        return BertAdam(groups, lr=lr)
    raise ValueError(f"optimization.py: unknown optimizer {name!r} (--optimizer), expected one of {OPTIMIZERS}")


def clip_gradients(model_or_params, optimizer):
    """Clip the global gradient norm to MAX_GRAD_NORM before optimizer.step(); returns the total norm before clipping
    (a 0-dim tensor on the device, no host sync). BertAdam clips each tensor inside its step, as the original, so
    nothing is done for it and None is returned. With fp16 loss scaling, unscale the gradients first."""
    if isinstance(optimizer, BertAdam):
        return None
    params = model_or_params.parameters() if isinstance(model_or_params, torch.nn.Module) else model_or_params
    return torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
