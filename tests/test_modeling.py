"""modeling.py: parameter counts, golden values on the real MiniLM weights and equality with transformers' BertModel,
EmBERT's task embeddings, padding, our SDPA attention against the original's math, every checkpoint format, clear
errors on bad input, initialisation and the losses.

Tiny models use deliberately odd sizes (vocab 99, hidden 32, 4 heads, intermediate 37), as Google BERT's tests do, so
that a transposed or mixed-up dimension cannot go unnoticed. Everything runs on CPU in fp32, in eval mode.
"""
import copy
import dataclasses
import json
import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

import original_reference
from conftest import ROOT, minilm_dir, require
from helpers import (PAD_ID, TINY, TINY_HEADS, assert_std, bert_checkpoint, hugging_face_extras, layer_norm_names,
                     make_batch, write_state)
from checkpoints import load_pretrained
from modeling import BertConfig, BertForMultiTask, count_parameters

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only add waiting

# ---------------------------------------------------------------------------------------------------- shared helpers

# Heads of the eight GLUE tasks in task-id order (SPEC 3): STS-B (task 4) is the 1-output regression head.
GLUE_NUM_LABELS = [2, 2, 3, 2, 1, 2, 2, 2]
# SPEC 5.2: EmBERT with these heads on configs/embert_config.json (BERT-base).
EMBERT_BASE_PARAMETERS = 109_715_728
# The same without task embeddings (our_attn false): 8 tasks x 3 tables x 768 x 12 layers = 221,184 fewer.
SHARED_BASE_PARAMETERS = 109_494_544
# SPEC 5.2: 3 x hidden x layers per task for BERT-base (+0.025% per task, as the paper's abstract says).
BASE_PARAMETERS_PER_TASK = 27_648

# all-MiniLM-L6-v2 on [CLS] hello world [SEP] (bert-base-uncased ids), fp32, taken from transformers' BertModel.
HELLO_WORLD_IDS = [101, 7592, 2088, 102]
MINILM_HIDDEN_CLS = [0.17644, 0.03937, 0.07790, 0.25854]  # last hidden state [0, 0, :4]
MINILM_HIDDEN_HELLO = [-0.45138, 0.28485, 0.43093, -0.16806]  # last hidden state [0, 1, :4]
MINILM_POOLED = [-0.03966, 0.02217, -0.01131, 0.02776]  # pooled output [0, :4]
MINILM_HIDDEN_SUM = 18.67056
MINILM_POOLED_SUM = 0.31697
GOLDEN_ATOL = 1e-4  # the golden values are written to 5 decimals
# bert-base-uncased ids of [CLS] and [SEP], and of "the": the first whole word, past the special, [unusedN] and
# single-character tokens.
CLS_ID, SEP_ID, FIRST_WORDPIECE_ID = 101, 102, 1996

EQUAL_ATOL = 1e-5  # two fp32 computations of the same math (different kernels or summation orders)


def tiny_config(**overrides):
    return BertConfig(**{**TINY, **overrides})


def tiny_model(our_attn=True, seed=0, heads=TINY_HEADS, **overrides):
    """A freshly initialised tiny model in eval mode; its task embeddings are random (N(0, 0.02)), not zero."""
    torch.manual_seed(seed)
    return BertForMultiTask(tiny_config(our_attn=our_attn, **overrides), heads).eval()


def assert_close(actual, expected, atol=EQUAL_ATOL):
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol)


def assert_same_logits(model_a, model_b):
    """Bit-identical logits for every task: what a save and reload must give."""
    batch = make_batch([7, 3, 11], seed=5)
    with torch.no_grad():
        for task in range(len(TINY_HEADS)):
            assert torch.equal(model_a(*batch, task).logits[0], model_b(*batch, task).logits[0])


def import_transformers():
    try:
        import transformers
    except ImportError:
        require(False, "needs transformers (a test-only dependency) for the reference BertModel")
    return transformers


# ---------------------------------------------------------------------------------------------------- 1. size

def test_parameter_counts_bert_base_with_eight_glue_heads():
    config = BertConfig.from_json_file(ROOT / "configs" / "embert_config.json")
    assert config.our_attn
    with torch.device("meta"):  # shapes only: no memory, no init cost
        embert = BertForMultiTask(config, GLUE_NUM_LABELS)
        shared = BertForMultiTask(dataclasses.replace(config, our_attn=False), GLUE_NUM_LABELS)
    assert count_parameters(embert) == EMBERT_BASE_PARAMETERS
    assert count_parameters(shared) == SHARED_BASE_PARAMETERS
    assert (EMBERT_BASE_PARAMETERS - SHARED_BASE_PARAMETERS) // len(GLUE_NUM_LABELS) == BASE_PARAMETERS_PER_TASK


# ---------------------------------------------------------------------------------------------------- 2. real weights

@pytest.fixture(scope="module")
def minilm():
    """all-MiniLM-L6-v2 loaded into BertForMultiTask with one head, eval mode, fp32."""
    folder = minilm_dir()
    config = BertConfig.from_json_file(folder / "config.json")
    model = BertForMultiTask(config, [2]).eval()
    fresh = load_pretrained(model, folder)
    assert fresh == ["classifier.0.weight", "classifier.0.bias"]  # a BERT-only checkpoint: only the head is new
    return folder, model


def test_minilm_golden_values(minilm):
    _, model = minilm
    ids = torch.tensor([HELLO_WORLD_IDS])
    with torch.no_grad():
        hidden, pooled = model.bert(ids, torch.zeros_like(ids), torch.ones_like(ids))
    assert_close(hidden[0, 0, :4], torch.tensor(MINILM_HIDDEN_CLS), atol=GOLDEN_ATOL)
    assert_close(hidden[0, 1, :4], torch.tensor(MINILM_HIDDEN_HELLO), atol=GOLDEN_ATOL)
    assert_close(pooled[0, :4], torch.tensor(MINILM_POOLED), atol=GOLDEN_ATOL)
    assert hidden.sum().item() == pytest.approx(MINILM_HIDDEN_SUM, abs=GOLDEN_ATOL)
    assert pooled.sum().item() == pytest.approx(MINILM_POOLED_SUM, abs=GOLDEN_ATOL)


def test_minilm_equals_transformers_bert_on_padded_batch(minilm):
    transformers = import_transformers()
    folder, model = minilm
    reference = transformers.BertModel.from_pretrained(folder, attn_implementation="eager").eval()
    lengths = [7, 19, 12, 3]  # varied, padded to 24 (5 more than the longest)
    ids, types, mask = make_batch(lengths, pad_to=24, seed=1, low=FIRST_WORDPIECE_ID, high=model.config.vocab_size,
                                  cls_sep=(CLS_ID, SEP_ID))
    with torch.no_grad():
        hidden, pooled = model.bert(ids, types, mask)
        expected = reference(input_ids=ids, token_type_ids=types, attention_mask=mask)
    assert_close(pooled, expected.pooler_output)
    real = mask.bool()  # padded positions' outputs are not used by anything, and differ between implementations
    assert_close(hidden[real], expected.last_hidden_state[real])


# ---------------------------------------------------------------------------------------------------- 3-4. EmBERT

def test_zero_task_embeddings_equal_shared_bert():
    embert = tiny_model(our_attn=True)
    for name, param in embert.named_parameters():
        if name.endswith("_task_emb.weight"):
            nn.init.zeros_(param)
    shared = BertForMultiTask(tiny_config(our_attn=False), TINY_HEADS).eval()
    state = {k: v for k, v in embert.state_dict().items() if "_task_emb" not in k}
    shared.load_state_dict(state)  # strict: the two models differ by exactly the task embeddings
    batch = make_batch([9, 4, 13], seed=2)
    with torch.no_grad():
        for task in range(len(TINY_HEADS)):
            hidden_e, pooled_e = embert.bert(*batch, task)
            hidden_s, pooled_s = shared.bert(*batch, task)
            assert_close(hidden_e, hidden_s)
            assert_close(pooled_e, pooled_s)
            assert_close(embert(*batch, task).logits[0], shared(*batch, task).logits[0])


# BERT's N(0, 0.02) init leaves a fresh tiny model's attention nearly uniform, which hides a query shift (its logits
# move by 3e-5); five times that makes attention peaked, as in a trained model, and the query's effect plain (> 0.08).
SENSITIVE_INIT_STD = 0.1
# Rounding moves outputs by under 1e-6 when the key embedding shifts scores; a change 1,000 times larger is an effect.
KEY_ATOL = 1e-5
CLEAR_CHANGE = 1000 * KEY_ATOL
KEY_GRAD_ATOL = 1e-8  # the same margin for gradients: the key embedding's is under 1e-9


def task_outputs(model, batch, task):
    with torch.no_grad():
        hidden, pooled = model.bert(*batch, task)
        return hidden[batch[2].bool()], pooled, model(*batch, task).logits[0]


@pytest.mark.parametrize("table,changes_outputs", [("key", False), ("query", True), ("value", True)])
def test_task_embedding_effect(table, changes_outputs):
    """Softmax cancels the key embedding (it shifts all of a query's scores by one constant); Q and V ones matter."""
    model = tiny_model(initializer_range=SENSITIVE_INIT_STD)
    task = 1
    batch = make_batch([9, 4, 13], seed=3)
    before = task_outputs(model, batch, task)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            emb = getattr(layer.attention.self, f"{table}_task_emb").weight
            emb.copy_(torch.randn(emb.shape, generator=g))  # std 1: 50 times the init, a large shift
    after = task_outputs(model, batch, task)
    for old, new in zip(before, after):
        if changes_outputs:
            assert (old - new).abs().max() > CLEAR_CHANGE
        else:
            assert_close(new, old, atol=KEY_ATOL)


def test_key_task_embedding_gradient_is_zero():
    """SPEC 5.2: the key embedding's gradient is exactly zero (rounding leaves under 1e-9; Q and V get over 1e-3)."""
    model = tiny_model(initializer_range=SENSITIVE_INIT_STD)
    task = 1
    loss = model(*make_batch([9, 4, 13], seed=3), task, labels=[torch.tensor([0, 2, 1])]).losses[0]
    loss.backward()
    for layer in model.bert.encoder.layer:
        attention = layer.attention.self
        assert attention.key_task_emb.weight.grad.abs().max() < KEY_GRAD_ATOL
        for table in (attention.query_task_emb, attention.value_task_emb):
            assert table.weight.grad[task].abs().max() > 1000 * KEY_GRAD_ATOL
            assert table.weight.grad[[0, 2]].abs().max() == 0  # only the batch's task row is used


# ---------------------------------------------------------------------------------------------------- 5. padding

@pytest.mark.parametrize("our_attn", [True, False])
def test_padding_changes_nothing(our_attn):
    model = tiny_model(our_attn=our_attn)
    lengths = [5, 11, 8]
    singles = [make_batch([n], seed=10 + row) for row, n in enumerate(lengths)]  # each sequence alone, unpadded
    tasks = range(len(TINY_HEADS))
    with torch.no_grad():
        alone = {(row, task): (*model.bert(*single, task), model(*single, task).logits[0])
                 for row, single in enumerate(singles) for task in tasks}  # hidden (1, n, H), pooled, logits
        for extra in (0, 1, 6, 20):  # padding past the longest sequence, several lengths
            T = max(lengths) + extra
            # Padding is PAD_ID for the ids and 0 for segments and mask: all zeros. Each (3, T).
            batch = [torch.cat([F.pad(single[i], (0, T - single[i].shape[1]), value=PAD_ID) for single in singles])
                     for i in range(3)]
            for task in tasks:
                hidden, pooled = model.bert(*batch, task)
                logits = model(*batch, task).logits[0]
                for row, n in enumerate(lengths):
                    hidden_1, pooled_1, logits_1 = alone[row, task]
                    assert_close(hidden[row, :n], hidden_1[0])
                    assert_close(pooled[row], pooled_1[0])
                    assert_close(logits[row], logits_1[0])


@pytest.mark.parametrize("our_attn", [True, False])
def test_packed_tokens_equal_the_padded_computation(our_attn):
    """The per-token layers on real tokens only (the default) give what every position padded gives, gradients too;
    a token_index passed by the caller equals the one the model would compute."""
    packed = tiny_model(our_attn=our_attn)
    padded = copy.deepcopy(packed)
    padded.bert.pack_tokens = False
    batch = make_batch([9, 4, 13], pad_to=16, seed=3)
    labels = torch.tensor([0, 2, 1])
    token_index = batch[2].flatten().nonzero().squeeze(1)
    results = []
    for model, index in ((packed, None), (packed, token_index), (padded, None)):
        model.zero_grad()
        hidden, pooled = model.bert(*batch, 1, token_index=index)
        output = model(*batch, 1, [labels], token_index=index)
        logits, loss = output.logits[0], output.losses[0]
        loss.backward()
        results.append((hidden[batch[2].bool()], pooled, logits, loss,
                        *(p.grad.clone() for p in model.parameters() if p.grad is not None)))
    for a, b, c in zip(*results, strict=True):
        assert_close(a, b)
        assert_close(a, c)
    hidden, _ = packed.bert(*batch, 1)
    assert not hidden[~batch[2].bool()].any()  # packed: nothing is computed at padding


# ---------------------------------------------------------------------------------------------------- 6. original math

@pytest.mark.parametrize("our_attn", [True, False])
@pytest.mark.parametrize("task,labels", [(1, [0, 2, 1]), (2, [0.2, 0.9, 0.5])])
def test_sdpa_equals_original_attention(our_attn, task, labels):
    ours = tiny_model(our_attn=our_attn, num_hidden_layers=3)
    original = original_reference.use_original_attention(copy.deepcopy(ours))
    switched = [m for m in original.modules() if isinstance(m, original_reference.OriginalSelfAttention)]
    assert len(switched) == 3  # the comparison is not vacuous: every layer runs the original's math
    batch = make_batch([9, 4, 13], pad_to=16, seed=6)
    labels = torch.tensor(labels)
    outputs = {}
    for name, model in (("ours", ours), ("original", original)):
        hidden, pooled = model.bert(*batch, task)
        output = model(*batch, task, labels=[labels])
        logits, loss = output.logits[0], output.losses[0]
        loss.backward()
        outputs[name] = hidden[batch[2].bool()], pooled, logits, loss
    for a, b in zip(outputs["ours"], outputs["original"]):
        assert_close(a, b)
    grads = dict(original.named_parameters())
    for name, param in ours.named_parameters():
        if param.grad is None:  # the other tasks' heads
            assert grads[name].grad is None, name
        else:
            assert_close(param.grad, grads[name].grad)


# ---------------------------------------------------------------------------------------------------- 7. checkpoints

def original_embert_checkpoint(config, num_labels_per_task, seed=0):
    """A state dict of the original EmBERT code's BertForMultiTask, under its own names (SPEC 5.5)."""
    state = bert_checkpoint(config, "bert.", "old", seed)
    g = torch.Generator().manual_seed(seed + 1)
    for n in range(config.num_hidden_layers):
        for table in ("query", "key", "value"):
            state[f"bert.encoder.layer.{n}.attention.self.{table}_task_emb.weight"] = torch.randn(
                len(num_labels_per_task), config.hidden_size, generator=g)
    for task, labels in enumerate(num_labels_per_task):
        state[f"classifier.{task}.weight"] = torch.randn(labels, config.hidden_size, generator=g)
        state[f"classifier.{task}.bias"] = torch.randn(labels, generator=g)
    return state


def our_name(checkpoint_name, layer_norm):
    """The documented correspondence (SPEC 5.5): the encoder sits under `bert.`; LayerNorm gamma/beta = weight/bias."""
    scale, shift = layer_norm_names(layer_norm)
    name = re.sub(rf"LayerNorm\.{scale}$", "LayerNorm.weight", checkpoint_name)
    name = re.sub(rf"LayerNorm\.{shift}$", "LayerNorm.bias", name)
    return name if name.startswith(("bert.", "classifier.")) else "bert." + name


def assert_loaded(model, checkpoint, layer_norm):
    """Every checkpoint tensor sits, unchanged, in the parameter it names."""
    params = dict(model.named_parameters())
    for name, value in checkpoint.items():
        assert torch.equal(params[our_name(name, layer_norm)], value), name


def task_parameter_names(config, num_tasks):
    """What a BERT-only checkpoint leaves fresh: task embeddings (with our_attn) and heads."""
    names = [f"bert.encoder.layer.{n}.attention.self.{table}_task_emb.weight"
             for n in range(config.num_hidden_layers) for table in ("query", "key", "value")] if config.our_attn else []
    return names + [f"classifier.{t}.{p}" for t in range(num_tasks) for p in ("weight", "bias")]


@pytest.mark.parametrize("suffix", [".pth", ".bin", ".safetensors"])
def test_own_state_dict_round_trip(tmp_path, suffix):
    source = tiny_model(seed=0)
    path = write_state(source.state_dict(), tmp_path / f"model{suffix}")
    target = tiny_model(seed=1)
    assert load_pretrained(target, path, require_all=True) == []
    assert_same_logits(source, target)


def test_resumable_checkpoint_round_trip(tmp_path):
    source = tiny_model(seed=0)
    optimizer = torch.optim.AdamW(source.parameters())
    loss = source(*make_batch([5, 8]), 0, labels=[torch.tensor([0, 1])]).losses[0]
    loss.backward()
    optimizer.step()
    checkpoint = {"model": source.state_dict(), "optimizer": optimizer.state_dict(), "step": 1,
                  "config": source.config.to_dict()}
    path = tmp_path / "last.pt"
    torch.save(checkpoint, path)
    target = tiny_model(seed=1)
    assert load_pretrained(target, path, require_all=True) == []
    assert_same_logits(source, target)


@pytest.mark.parametrize("wrapper", ["module.", "_orig_mod.", "module._orig_mod."])
def test_wrapper_prefixes_are_stripped(tmp_path, wrapper):
    """DistributedDataParallel saves under "module.", a torch.compile'd model under "_orig_mod."."""
    source = tiny_model(seed=0)
    state = {wrapper + k: v for k, v in source.state_dict().items()}
    target = tiny_model(seed=1)
    assert load_pretrained(target, write_state(state, tmp_path / "model.pth"), require_all=True) == []
    assert_same_logits(source, target)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")  # torch's own import of torch.compile
def test_compiled_model_state_dict_loads(tmp_path):
    source = tiny_model(seed=0)
    state = torch.compile(source).state_dict()  # keys "_orig_mod.*"; nothing is compiled until it is called
    assert all(k.startswith("_orig_mod.") for k in state)
    target = tiny_model(seed=1)
    assert load_pretrained(target, write_state(state, tmp_path / "model.pth"), require_all=True) == []
    assert_same_logits(source, target)


@pytest.mark.parametrize("our_attn", [True, False])
@pytest.mark.parametrize("where", ["pytorch_model.bin", "model.safetensors", "dir/pytorch_model.bin",
                                   "dir/model.safetensors"])
def test_hugging_face_checkpoint(tmp_path, where, our_attn):
    config = tiny_config(our_attn=our_attn)
    checkpoint = bert_checkpoint(config, "bert.", "hf")
    path = tmp_path / where
    path.parent.mkdir(exist_ok=True)
    write_state({**checkpoint, **hugging_face_extras(config)}, path)
    model = BertForMultiTask(config, TINY_HEADS)
    fresh = load_pretrained(model, path.parent if where.startswith("dir/") else path)
    assert fresh == task_parameter_names(config, len(TINY_HEADS))
    assert_loaded(model, checkpoint, "hf")


@pytest.mark.parametrize("layer_norm", ["hf", "old"])
def test_unprefixed_bert_checkpoint(tmp_path, layer_norm):
    """No prefix: MiniLM's own file ("hf" names) and Google BERT converted to PyTorch the old way (gamma/beta)."""
    config = tiny_config()
    checkpoint = bert_checkpoint(config, "", layer_norm)
    extras = {"embeddings.position_ids": torch.arange(config.max_position_embeddings)[None]}
    path = write_state({**checkpoint, **extras}, tmp_path / "bert.bin")
    model = BertForMultiTask(config, TINY_HEADS)
    assert load_pretrained(model, path) == task_parameter_names(config, len(TINY_HEADS))
    assert_loaded(model, checkpoint, layer_norm)


def test_original_embert_checkpoint(tmp_path):
    config = tiny_config(our_attn=True)
    checkpoint = original_embert_checkpoint(config, TINY_HEADS)
    model = BertForMultiTask(config, TINY_HEADS)
    assert len(checkpoint) == len(dict(model.named_parameters()))  # one checkpoint tensor per parameter
    assert load_pretrained(model, write_state(checkpoint, tmp_path / "embert.bin"), require_all=True) == []
    assert_loaded(model, checkpoint, "old")  # every parameter got its value: none was left fresh


def test_real_minilm_file_and_directory_load_the_same(minilm):
    folder, model = minilm
    from_file = BertForMultiTask(model.config, [2])
    load_pretrained(from_file, folder / "model.safetensors")
    for name, param in from_file.bert.named_parameters():
        assert torch.equal(param, model.bert.get_parameter(name)), name


# ---------------------------------------------------------------------------------------------------- 8. bad input

def test_missing_encoder_weight_is_named(tmp_path):
    config = tiny_config()
    checkpoint = bert_checkpoint(config, "bert.", "hf")
    del checkpoint["bert.encoder.layer.1.output.dense.weight"]
    path = write_state(checkpoint, tmp_path / "bert.bin")
    with pytest.raises(ValueError, match=re.escape(f"checkpoint {path} lacks 1 parameter(s): "
                                                   "bert.encoder.layer.1.output.dense.weight")):
        load_pretrained(BertForMultiTask(config, TINY_HEADS), path)


def test_require_all_names_the_fresh_task_parameters(tmp_path):
    config = tiny_config(our_attn=True)
    path = write_state(bert_checkpoint(config, "bert.", "hf"), tmp_path / "bert.bin")
    with pytest.raises(ValueError, match=re.escape(f"checkpoint {path} lacks 12 parameter(s): "
                                                   "bert.encoder.layer.0.attention.self.query_task_emb.weight")):
        load_pretrained(BertForMultiTask(config, TINY_HEADS), path, require_all=True)


@pytest.mark.parametrize("setting,value,key,hint", [
    ("hidden_size", 36, "bert.embeddings.word_embeddings.weight",
     "(the config's hidden_size is 32, the checkpoint's is 36)"),
    ("vocab_size", 100, "bert.embeddings.word_embeddings.weight",
     "(the config's vocab_size is 99, the checkpoint's is 100)"),
    ("intermediate_size", 38, "bert.encoder.layer.0.intermediate.dense.weight", ""),
])
def test_shape_mismatch_names_key_shapes_and_setting(tmp_path, setting, value, key, hint):
    other = tiny_config(**{setting: value})
    checkpoint = bert_checkpoint(other, "bert.", "hf")
    path = write_state(checkpoint, tmp_path / "bert.bin")
    model = BertForMultiTask(tiny_config(), TINY_HEADS)
    expected = model.get_parameter(key).shape
    message = (f"checkpoint {path}: {key} has shape {tuple(checkpoint[key].shape)} but the model's is "
               f"{tuple(expected)}{' ' + hint if hint else ''}")
    with pytest.raises(ValueError, match=re.escape(message) + "$"):
        load_pretrained(model, path)


def test_embert_checkpoint_into_shared_model_is_refused(tmp_path):
    path = write_state(tiny_model(our_attn=True).state_dict(), tmp_path / "embert.pth")
    with pytest.raises(ValueError, match=re.escape(f"checkpoint {path} has 6 parameter(s) this model does not "
                                                   "(it has task embeddings: check the config's our_attn): "
                                                   "bert.encoder.layer.0.attention.self.key_task_emb.weight")):
        load_pretrained(tiny_model(our_attn=False), path)


def test_checkpoint_with_more_heads_is_refused(tmp_path):
    path = write_state(tiny_model(heads=TINY_HEADS + [2]).state_dict(), tmp_path / "four_tasks.pth")
    with pytest.raises(ValueError, match=r"has \d+ parameter\(s\) this model does not \(its task heads do not match "
                                         r"this model's task list\): .*classifier\.3\.bias"):
        load_pretrained(tiny_model(heads=TINY_HEADS), path)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match=re.escape(f"checkpoint {path} is not a state dict of tensors")):
        load_pretrained(tiny_model(), path)


def test_directory_without_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=re.escape(f"no checkpoint in directory {tmp_path}: looked for "
                                                          "model.safetensors, pytorch_model.bin, best_model.pth")):
        load_pretrained(tiny_model(), tmp_path)


def test_missing_checkpoint_file(tmp_path):
    path = tmp_path / "nope.bin"
    with pytest.raises(FileNotFoundError, match=re.escape(f"checkpoint {path} does not exist")):
        load_pretrained(tiny_model(), path)


def test_config_that_is_not_bert(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"hidden_size": 32, "d_model": 32}))
    with pytest.raises(ValueError, match=re.escape(f"config file {path} is not a BERT config: it lacks vocab_size, "
                                                   "num_hidden_layers, num_attention_heads, intermediate_size")):
        BertConfig.from_json_file(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=re.escape(f"config file {path} is not a BERT config: expected a JSON object")):
        BertConfig.from_json_file(path)


def test_config_invalid_json(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"vocab_size": 99,}')
    with pytest.raises(ValueError, match=re.escape(f"config file {path} is not valid JSON: ") + ".*line 1"):
        BertConfig.from_json_file(path)


def test_config_file_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(f"config file {tmp_path / 'no.json'} does not exist")):
        BertConfig.from_json_file(tmp_path / "no.json")


def test_config_bad_values():
    with pytest.raises(ValueError, match="hidden_size 32 is not divisible by num_attention_heads 5"):
        tiny_config(num_attention_heads=5)
    with pytest.raises(ValueError, match="hidden_act 'tanh' is not one of"):
        tiny_config(hidden_act="tanh")


def test_num_tasks_disagreeing_with_heads():
    with pytest.raises(ValueError, match=re.escape("config.num_tasks is 3 but 2 task rows were asked for (2 heads: "
                                                   "[2, 1])")):
        BertForMultiTask(tiny_config(num_tasks=3), [2, 1])


# ---------------------------------------------------------------------------------------------------- 9. init, config

def test_initialisation():
    torch.manual_seed(0)
    model = BertForMultiTask(tiny_config(our_attn=True), TINY_HEADS)
    weights = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            weights.append(module.weight.detach().flatten())
            assert_std(module.weight.detach(), name)
        if isinstance(module, nn.Linear):
            assert torch.equal(module.bias, torch.zeros_like(module.bias)), name
        if isinstance(module, nn.LayerNorm):
            assert torch.equal(module.weight, torch.ones_like(module.weight)), name
            assert torch.equal(module.bias, torch.zeros_like(module.bias)), name
    assert_std(torch.cat(weights), "all weights together")  # about 20,000 draws: std within 2.5%


def test_model_does_not_mutate_the_config():
    config = tiny_config()
    model = BertForMultiTask(config, TINY_HEADS)
    assert config.num_tasks is None and model.config.num_tasks == len(TINY_HEADS)
    assert model.bert.config.num_tasks == len(TINY_HEADS)


def test_config_round_trip_keeps_extra_keys(tmp_path):
    hugging_face = {**TINY, "model_type": "bert", "architectures": ["BertModel"], "pad_token_id": 0,
                    "position_embedding_type": "absolute", "transformers_version": "4.8.2", "layer_norm_eps": 1e-12}
    config = BertConfig.from_dict(hugging_face)
    assert config.extra == {"model_type": "bert", "architectures": ["BertModel"], "pad_token_id": 0,
                            "position_embedding_type": "absolute", "transformers_version": "4.8.2"}
    values = config.to_dict()
    assert values.items() >= hugging_face.items()  # every key written back, with its value
    assert "extra" not in values  # extra keys sit at the top level, as in the file they came from
    assert BertConfig.from_dict(values) == config
    path = tmp_path / "config.json"
    dataclasses.replace(config, num_tasks=3, our_attn=True).to_json_file(path)
    reread = BertConfig.from_json_file(path)
    assert reread == dataclasses.replace(config, num_tasks=3, our_attn=True)
    assert json.loads(path.read_text())["model_type"] == "bert"


def test_real_minilm_config_round_trip():
    path = minilm_dir() / "config.json"
    original = json.loads(path.read_text())
    config = BertConfig.from_json_file(path)
    assert (config.hidden_size, config.num_hidden_layers, config.our_attn) == (384, 6, False)
    assert config.to_dict().items() >= original.items()


# ---------------------------------------------------------------------------------------------------- 10. losses

def test_classification_loss_is_cross_entropy():
    model = tiny_model()
    batch = make_batch([6, 9, 4], seed=8)
    labels = torch.tensor([2, 0, 1])
    output = model(*batch, 1, labels=[labels])
    logits, loss = output.logits[0], output.losses[0]
    assert logits.shape == (3, TINY_HEADS[1])
    assert_close(loss, F.cross_entropy(logits, labels), atol=1e-7)
    assert model(*batch, 1).losses is None


def test_regression_loss_is_mse():
    model = tiny_model()
    batch = make_batch([6, 9, 4], seed=8)
    targets = torch.tensor([0.2, 0.96, 0.5])  # STS-B scores / 5
    output = model(*batch, 2, labels=[targets])
    logits, loss = output.logits[0], output.losses[0]
    assert logits.shape == (3, 1)
    assert_close(loss, ((logits[:, 0] - targets) ** 2).mean(), atol=1e-7)


# ---------------------------------------------------------------------------------------------------- unreadable files

def tiny_state(tmp_path):
    model = BertForMultiTask(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                        intermediate_size=37), [2])
    return model, model.state_dict()


@pytest.mark.parametrize("name, content, message", [
    ("weights.pth", b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\n",
     r"weights.pth is not a PyTorch or safetensors file \(it starts with text: 'version https://git-lfs"),
    ("model.safetensors", b"hello, I am a text file\n", r"model.safetensors is not a PyTorch or safetensors file"),
    ("empty.bin", b"", r"empty.bin is empty \(0 bytes\)"),
])
def test_a_file_that_is_no_checkpoint_is_named_in_one_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as error:
        load_pretrained(tiny_state(tmp_path)[0], path)
    assert "\n" not in str(error.value)


def test_truncated_safetensors_says_how_many_bytes(tmp_path):
    model, state = tiny_state(tmp_path)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    whole = path.read_bytes()
    path.write_bytes(whole[:len(whole) // 2])
    with pytest.raises(ValueError, match=rf"model.safetensors is truncated: {len(whole) // 2} of {len(whole)} bytes"):
        load_pretrained(model, path)


@pytest.mark.parametrize("fraction", [0.5, 0.999])
def test_truncated_torch_file_is_named(tmp_path, fraction):
    model, state = tiny_state(tmp_path)
    path = tmp_path / "best_model.pth"
    torch.save(state, path)
    whole = path.read_bytes()
    path.write_bytes(whole[:int(len(whole) * fraction)])
    with pytest.raises(ValueError, match=r"best_model.pth is truncated: \d+ bytes of a PyTorch zip archive") as error:
        load_pretrained(model, path)
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------------------------------------------- heads by type

def test_glue_model_keeps_its_heads_by_width():
    model = BertForMultiTask(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                        intermediate_size=37), [2, 3, 1])
    assert [t.name for t in model.head_types] == ["cls", "cls", "regression"]


def test_each_type_reads_its_input_and_trains_with_its_loss():
    """cls and regression as GLUE's; multi_cls: (B, L) logits against multi-hot labels with BCE; seq_tag: one row of
    logits per real token (packed, row-major), cross-entropy skipping the -100 labels."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForMultiTask(config, [2, 1, 5, 4], ["cls", "regression", "multi_cls", "seq_tag"]).eval()
    ids = torch.tensor([[2, 5, 7, 3, 0], [2, 9, 3, 0, 0]])
    mask = (ids > 0).long()
    types = torch.zeros_like(ids)
    hidden, pooled = model.bert(ids, types, mask, 0)

    def forward(task, labels):
        output = model(ids, types, mask, task, [labels])
        return output.logits[0], output.losses[0]

    logits, loss = forward(0, torch.tensor([1, 0]))
    assert torch.allclose(loss, F.cross_entropy(nn.Linear.forward(model.classifier[0], pooled), torch.tensor([1, 0])),
                          atol=1e-6)
    logits, loss = forward(1, torch.tensor([0.2, 0.8]))
    assert logits.shape == (2, 1) and torch.allclose(loss, F.mse_loss(logits[:, 0], torch.tensor([0.2, 0.8])))

    hot = torch.tensor([[1.0, 0, 0, 1, 0], [0, 0, 0, 0, 0]])  # an empty label set is allowed
    logits, loss = forward(2, hot)
    assert logits.shape == (2, 5)
    expected = -(hot * F.logsigmoid(logits) + (1 - hot) * F.logsigmoid(-logits)).mean()
    assert torch.allclose(loss, expected, atol=1e-6)

    tags = torch.tensor([-100, 1, 2, -100, -100, 3, -100])  # [CLS] w w [SEP] | [CLS] w [SEP]: 7 real tokens
    logits, loss = forward(3, tags)
    real = hidden[mask.bool()]  # (7, H) in row-major order
    assert logits.shape == (7, 4) and torch.allclose(logits, nn.Linear.forward(model.classifier[3], real), atol=1e-6)
    kept = tags != -100
    assert torch.allclose(loss, F.cross_entropy(logits[kept], tags[kept]), atol=1e-6)


def test_unknown_problem_type_is_refused():
    with pytest.raises(ValueError, match=r"types \['cls', 'ner'\] must name one of"):
        BertForMultiTask(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                    intermediate_size=37), [2, 3], ["cls", "ner"])


@pytest.mark.parametrize("pack_tokens", [True, False])
def test_packed_output_is_the_padded_output_at_real_tokens(pack_tokens):
    """What a per-token head reads (packed_output) is the padded computation's states at the real tokens, and the
    pooled output is the same, whether the layers ran packed or padded (Gated-BERT, --compile on CUDA)."""
    torch.manual_seed(0)
    model = BertForMultiTask(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=37), [3], ["seq_tag"]).eval()
    model.bert.pack_tokens = pack_tokens
    ids = torch.tensor([[2, 5, 7, 3, 0, 0], [2, 9, 3, 0, 0, 0], [2, 4, 4, 4, 6, 3]])
    mask, types = (ids > 0).long(), torch.zeros_like(ids)
    hidden, pooled = model.bert(ids, types, mask, 0)
    tokens, pooled_packed = model.bert(ids, types, mask, 0, packed_output=True)
    assert torch.equal(tokens, hidden[mask.bool()]) and torch.equal(pooled_packed, pooled)


def test_a_group_reads_one_encoder_pass_and_each_head_its_loss():
    """heads=[...]: the heads of an & group on one encoder pass of the group's task row; each head's loss is the one
    it has alone on the same batch, and a one-head group is the single-head forward."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, our_attn=True)
    # Heads: a seq_tag, a multi_cls and a cls problem in one group (task row 0), a cls problem alone (row 1).
    model = BertForMultiTask(config, [3, 2, 2, 2], ["seq_tag", "multi_cls", "cls", "cls"], num_groups=2).eval()
    assert model.bert.encoder.layer[0].attention.self.query_task_emb.weight.shape[0] == 2
    ids = torch.tensor([[2, 5, 7, 3, 0], [2, 9, 3, 0, 0]])
    mask, types = (ids > 0).long(), torch.zeros_like(ids)
    labels = [torch.tensor([-100, 1, 2, -100, -100, 0, -100]), torch.tensor([[1.0, 0], [0, 1]]), torch.tensor([1, 0])]
    output = model(ids, types, mask, 0, labels, heads=[0, 1, 2])
    logits, losses = output.logits, output.losses
    hidden, pooled = model.bert(ids, types, mask, 0, packed_output=True)
    for head, (head_logits, loss) in enumerate(zip(logits, losses)):
        states = hidden if head == 0 else pooled
        alone = model.head_types[head].loss(nn.Linear.forward(model.classifier[head], states), labels[head])
        assert torch.allclose(loss, alone, atol=1e-6)
    output = model(ids, types, mask, 1, [torch.tensor([0, 1])], heads=[3])
    [single], [single_loss] = output.logits, output.losses
    with pytest.raises(IndexError):
        model(ids, types, mask, 3, [torch.tensor([0, 1])])  # task row 3 does not exist: rows are groups
    assert single.shape == (2, 2) and torch.isfinite(single_loss)
