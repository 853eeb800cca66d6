"""The CUDA paths: the model's math on the GPU against the CPU, bf16 and fp16 autocast against fp32, fused AdamW,
and both training scripts and run_test_multi_task.py end to end on the GPU with their defaults (bf16 autocast,
pinned non-blocking copies, fused AdamW).

These skip on a machine without CUDA, CI included (it has no GPU): run them on a GPU machine with
`python -m pytest tests/test_cuda.py`. DDP over NCCL needs two GPUs and is not covered here; tests/
test_run_multi_task.py checks DDP's math over gloo.
"""
import copy
import json
import subprocess
import sys

import pytest
import torch
from torch._dynamo.utils import counters

import hardware
import modeling
import modeling_gated
import modeling_pals
import multitask
import optimization
import run_files
import run_multi_task
import run_multi_task_gated
import run_test_multi_task
from conftest import ROOT, fixture_glue_dir, minilm_dir
from features import make_batch
from glue_processors import load_features
from helpers import interrupt_at_step, read_jsonl

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICE = torch.device("cuda")

# MiniLM's shape with two layers: real head size (32) and widths, random weights.
SIZES = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=2, num_attention_heads=12, intermediate_size=1536,
             max_position_embeddings=512, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
HEADS = [2, 3, 1]  # a 2-way, a 3-way and a regression head
MAX_SEQ_LENGTH = 128
# fp32 on the GPU against the CPU: reordered sums only (TF32 is off by default for matmuls).
FP32_TOLERANCE = dict(rtol=1e-4, atol=1e-5)
# Relative error ||low - fp32|| / ||fp32|| of the logits under autocast: bf16 keeps 8 mantissa bits, fp16 11.
AUTOCAST_REL_ERROR = {torch.bfloat16: 3e-2, torch.float16: 5e-3}
# Per-step losses of a bf16 run against an fp32 run from the same start over 60 steps: bf16's rounding, compounded.
BF16_LOSS_TOLERANCE = 5e-2


def real_batch(task, size=16, pad_to=None):
    """The first `size` training examples of a fixture GLUE task, tokenized with the real vocabulary."""
    features = load_features(fixture_glue_dir(), task, "train", minilm_dir() / "vocab.txt", True, MAX_SEQ_LENGTH,
                             cache_dir=None)
    return make_batch(features, list(range(size)), pad_to=pad_to)


def build(module, our_attn=True):
    torch.manual_seed(0)
    config = module.BertConfig(**SIZES, our_attn=our_attn)
    model = module.BertForMultiTask(config, HEADS)
    for name, param in model.named_parameters():  # the task embeddings and gates start at zero: make them matter
        if "task_emb" in name or "weight_layer" in name:
            torch.nn.init.normal_(param, std=0.02)
    return model


def forward_backward(model, batch, task_id, device, dtype=None):
    batch = hardware.to_device(batch, device)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        output = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"], task_id,
                       labels=[batch["labels"]], token_index=batch.get("token_index"))
    logits, loss = output.logits[0], output.losses[0]
    model.zero_grad()
    loss.backward()
    return logits.float(), loss.float(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def relative_error(low, reference):
    return ((low - reference).norm() / reference.norm()).item()


@pytest.mark.parametrize("module, task, task_id, pad", [
    (modeling, "rte", 0, None), (modeling, "sts", 2, None), (modeling_gated, "mrpc", 0, MAX_SEQ_LENGTH)])
def test_fp32_on_cuda_equals_the_cpu(module, task, task_id, pad):
    """Logits, loss and every gradient: SDPA's CUDA kernel with a padding mask, the packed per-token layers, the
    gated adapters."""
    batch = real_batch(task, pad_to=pad)
    cpu = build(module)
    gpu = copy.deepcopy(cpu).to(DEVICE)
    expected = forward_backward(cpu, batch, task_id, torch.device("cpu"))
    got = forward_backward(gpu, batch, task_id, DEVICE)
    torch.testing.assert_close(got[0].cpu(), expected[0], **FP32_TOLERANCE)
    torch.testing.assert_close(got[1].cpu(), expected[1], **FP32_TOLERANCE)
    assert got[2].keys() == expected[2].keys()
    for name, grad in expected[2].items():
        torch.testing.assert_close(got[2][name].cpu(), grad, rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("module", [modeling, modeling_gated])
def test_autocast_stays_close_to_fp32(module, dtype):
    device = DEVICE
    pad = MAX_SEQ_LENGTH if module is modeling_gated else None
    batch = real_batch("cola", size=32, pad_to=pad)
    model = build(module).to(device)
    reference = forward_backward(model, batch, 1 if module is modeling else 0, device)[0]
    low = forward_backward(model, batch, 1 if module is modeling else 0, device, dtype)[0]
    assert torch.isfinite(low).all()
    assert relative_error(low, reference) < AUTOCAST_REL_ERROR[dtype]


def test_packed_equals_padded_on_cuda():
    device = DEVICE
    packed = build(modeling).to(device)
    padded = copy.deepcopy(packed)
    padded.bert.pack_tokens = False
    batch = real_batch("mrpc")
    a, b = (forward_backward(m, batch, 0, device) for m in (packed, padded))
    torch.testing.assert_close(a[0], b[0], **FP32_TOLERANCE)
    for name, grad in b[2].items():
        torch.testing.assert_close(a[2][name], grad, rtol=1e-3, atol=1e-5, msg=name)


def test_compiled_encoder_with_cuda_graphs_equals_eager():
    """hardware.compile_encoder (--compile): the graphs' logits and gradients are eager's, in fp32, over three
    passes of three batch widths (the first pass compiles, the second records the graphs, the third replays them)."""
    device = DEVICE
    eager = build(modeling).to(device)
    compiled = copy.deepcopy(eager)
    hardware.compile_encoder(compiled, device)
    skips = counters["inductor"]["cudagraph_skips"]
    batches = [(real_batch(task), task_id) for task, task_id in (("rte", 0), ("cola", 1), ("sts", 2))]
    assert len({b["input_ids"].shape[1] for b, _ in batches}) == 3
    for _ in range(3):
        for batch, task_id in batches:
            expected, got = (forward_backward(m, batch, task_id, device) for m in (eager, compiled))
            torch.testing.assert_close(got[0], expected[0], **FP32_TOLERANCE)
            for name, grad in expected[2].items():
                torch.testing.assert_close(got[2][name], grad, rtol=1e-3, atol=1e-5, msg=name)
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    assert counters["inductor"]["cudagraph_skips"] == skips  # the graphs ran: not eager compared with eager


def test_fused_adamw_equals_the_foreach_kernel():
    device = DEVICE
    fused_model = build(modeling).to(device)
    foreach_model = copy.deepcopy(fused_model)
    fused = optimization.build_optimizer(fused_model, "adamw", 1e-3, device_type="cuda")
    assert fused.defaults["fused"]
    foreach = torch.optim.AdamW(optimization.param_groups(foreach_model), lr=1e-3, betas=optimization.ADAM_BETAS,
                                eps=optimization.ADAM_EPS, foreach=True)
    for step, task in enumerate(("rte", "cola", "sts")):
        for model, optimizer in ((fused_model, fused), (foreach_model, foreach)):
            forward_backward(model, real_batch(task), [0, 1, 2][step], device)
            optimization.clip_gradients(model, optimizer)
            optimizer.step()
    for (name, a), b in zip(fused_model.named_parameters(), foreach_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


# ------------------------------------------------------------------------------------------- the scripts on CUDA

def command(method, output_dir, tmp_path, *extra, dropout=0.1):
    """The seed command's flags on the fixture GLUE rows, a 2-layer MiniLM-shaped encoder with dropout on (so that
    resuming must restore the CUDA generator's state), the device's default precision."""
    config = tmp_path / f"config_{dropout}.json"
    config.write_text(json.dumps({**SIZES, "hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout,
                                  "our_attn": True}))
    return [method.__file__, "--seed", "1", "--output_dir", str(output_dir), "--tasks", "cola,mrpc,rte,sts,sst",
            "--sample", "anneal", "--multi", "--do_train", "--do_eval", "--do_lower_case",
            "--data_dir", str(fixture_glue_dir()), "--vocab_file", str(minilm_dir() / "vocab.txt"),
            "--bert_config_file", str(config), "--max_seq_length", "64", "--train_batch_size", "16",
            "--learning_rate", "1e-4", "--num_train_epochs", "2", "--steps_per_epoch", "30", "--eval_batch_size", "64",
            "--log_steps", "1", "--cache_dir", str(tmp_path / "cache"), *extra]


def train(argv, method):
    multitask.main(multitask.parse_args(method.__doc__, argv[1:]), method.METHOD)


@pytest.mark.parametrize("method", [run_multi_task, run_multi_task_gated])
def test_training_and_predicting_on_cuda(method, tmp_path):
    out = tmp_path / "run"
    train(command(method, out, tmp_path), method)
    args = json.loads((out / "args.json").read_text())
    assert args["precision"] == hardware.resolve_precision("auto", DEVICE)
    losses = [r["loss"] for r in read_jsonl(out / "train_log.jsonl") if "loss" in r]
    assert len(losses) == 60 and all(0 < loss < 1e3 for loss in losses)
    checkpoint = torch.load(out / "last_checkpoint.pth", weights_only=False)
    assert checkpoint["global_step"] == 60
    assert all(t.device.type == "cpu" for t in checkpoint["model"].values())  # loadable on a machine without CUDA

    predicted = tmp_path / "dev"
    run_test_multi_task.main(run_test_multi_task.parse_args(
        ["--model_dir", str(out), "--output_dir", str(predicted), "--split", "dev"]))
    best = [r for r in read_jsonl(out / run_files.EVAL_LOG) if r["best"]][-1]
    results = json.loads((predicted / run_test_multi_task.DEV_RESULTS).read_text())
    assert results["glue_score"] == pytest.approx(best["glue_score"], abs=1e-6)  # the same batches and kernels


def test_ctrl_c_then_resume_on_cuda(tmp_path):
    """An interrupted and resumed run follows the uninterrupted one: the same tasks and examples, the dropout masks
    of the restored CUDA generator. Not bit for bit: some CUDA backward kernels add in a varying order."""
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    train(command(run_multi_task, straight, tmp_path), run_multi_task)
    process = subprocess.Popen([sys.executable, *command(run_multi_task, interrupted, tmp_path)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    interrupt_at_step(process, interrupted / "train_log.jsonl", 5, timeout=300)
    stopped_at = torch.load(interrupted / "last_checkpoint.pth", weights_only=False)["global_step"]
    assert 5 <= stopped_at < 60, "the run ended before the interrupt"

    train([*command(run_multi_task, interrupted, tmp_path), "--resume"], run_multi_task)
    a, b = (read_jsonl(d / "train_log.jsonl") for d in (straight, interrupted))
    assert [r.get("task") for r in a] == [r.get("task") for r in b]
    for x, y in zip(a, b):
        if "loss" in x:  # another dropout mask moves a loss by percents; summation order by far less
            assert y["loss"] == pytest.approx(x["loss"], rel=1e-3), x["global_step"]


@pytest.mark.parametrize("accumulation", ["1", "2"])  # 2: compiled without CUDA graphs (hardware.compile_encoder)
def test_compile_trains_and_saves_the_usual_parameter_names(tmp_path, accumulation):
    out = tmp_path / "compiled"
    train(command(run_multi_task, out, tmp_path, "--compile", "--gradient_accumulation_steps", accumulation),
          run_multi_task)
    assert all(0 < r["loss"] < 1e3 for r in read_jsonl(out / "train_log.jsonl") if "loss" in r)
    assert len(read_jsonl(out / run_files.EVAL_LOG)) == 2
    saved = torch.load(out / "best_model.pth", weights_only=True)
    config = json.loads((out / "config.json").read_text())
    expected = modeling.BertForMultiTask(modeling.BertConfig.from_dict(config), [2, 2, 2, 1, 2]).state_dict()
    assert saved.keys() == expected.keys()


def test_bf16_run_follows_the_fp32_run(tmp_path):
    """The default CUDA run (bf16 autocast, fused AdamW) against --precision fp32, dropout off: the same batches, so
    every logged loss of the 60 steps agrees within BF16_LOSS_TOLERANCE (relative)."""
    losses = {}
    for precision in ("bf16", "fp32"):
        out = tmp_path / precision
        train(command(run_multi_task, out, tmp_path, "--precision", precision, dropout=0.0), run_multi_task)
        losses[precision] = [r["loss"] for r in read_jsonl(out / "train_log.jsonl") if "loss" in r]
    assert len(losses["fp32"]) == 60
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=BF16_LOSS_TOLERANCE)


def test_fp16_with_loss_scaling_trains(tmp_path):
    out = tmp_path / "fp16"
    train(command(run_multi_task, out, tmp_path, "--precision", "fp16"), run_multi_task)
    assert all(0 < r["loss"] < 1e3 for r in read_jsonl(out / "train_log.jsonl") if "loss" in r)
    assert json.loads((out / "args.json").read_text())["precision"] == "fp16"


def test_a_state_dict_saved_from_cuda_holds_each_shared_tensor_once(tmp_path):
    """PALs' state dict names each shared projection under the encoder and under every layer's PAL: saved from the GPU,
    the file holds one copy (as from the CPU), and loads back with the aliases in agreement."""
    config = modeling_pals.BertConfig(**SIZES, hidden_size_aug=204)
    model = modeling_pals.BertForMultiTask(config, HEADS).to(DEVICE)
    state = model.state_dict()
    run_files.save_torch(state, tmp_path / "pals.pth")
    saved = torch.load(tmp_path / "pals.pth", weights_only=True)
    for names in modeling_pals.shared_names(model.config):
        pointers = {saved[name].untyped_storage().data_ptr() for name in names}
        assert len(pointers) == 1, names
    on_cpu = modeling_pals.BertForMultiTask(config, HEADS)
    on_cpu.load_state_dict(saved)
    for name, value in on_cpu.state_dict().items():
        torch.testing.assert_close(value, state[name].cpu(), rtol=0, atol=0, msg=name)
