"""bench.py: its FLOP count against BERT-base's 0.52 GFLOP per training token, the GPU peak table, the batches it
draws, its ratios, and a smoke run of every section (not timed: 2 warm-up + 2 timed steps of the tiny config on real
GLUE rows); the group section on the first lines of the real People's Daily file; the mlm section on real SST-2 rows,
its transformers model given our weights computing our logits and loss.

The original code's computations that its path (2) runs are tested in tests/test_original_reference.py.
"""
import json
import math

import pytest
import torch

import bench
import bench_problems
import bench_training
import masking
import modeling
import modeling_gated
import modeling_pals
import sampler
from conftest import ROOT, fixture_glue_dir, minilm_dir, require
from helpers import TINY_HEADS, tiny_dict

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only add waiting

# Odd tiny sizes (Google BERT's test style), so that a transposed or mixed-up dimension cannot go unnoticed.
TINY = tiny_dict(our_attn=True)
GATED_LENGTH = 12  # the gated tiny model's max_seq_length
# Training BERT-base at length 128 costs about 0.52 GFLOP per token (6 x its 85M encoder parameters, plus attention).
BASE_GFLOP_PER_TOKEN = 0.52
ANCHOR_ROUNDING = 0.01  # the anchor has two digits
# The group section's test: the first lines (paragraphs) of People's Daily, enough for several batches of 32 rows.
PEOPLE_DAILY = ROOT.parent / "shared" / "pku199801" / "199801.txt"
PEOPLE_DAILY_LINES = 60
# The mlm section's test: SST-2's short sentences keep transformers' logits at every position cheap.
MLM_TEST_PROBLEM = "sst_mlm"
# Two float32 computations of the same logits (packed against padded, another summation order).
LOGITS_ATOL = 1e-5
METRICS = ("steps_per_s", "sequences_per_s", "real_tokens_per_s", "real_tokens_per_batch", "padded_tokens_per_batch",
           "model_tflops_per_s")


# ---------------------------------------------------------------------------------------------------- FLOPs, peaks

def test_flops_match_spec_anchor_for_bert_base():
    config = modeling.BertConfig.from_json_file(bench.CONFIG_FILES["base"])
    with torch.device("meta"):  # sizes only: no memory, no initialisation cost
        model = modeling.BertForMultiTask(config, [2] * len(bench_training.BENCH_TASKS))
    flops = bench_training.FlopModel.of(model)
    full = torch.tensor([bench_training.MAX_SEQ_LENGTH])
    per_token = flops.batch_flops(0, full, training=True) / bench_training.MAX_SEQ_LENGTH
    assert per_token / 1e9 == pytest.approx(BASE_GFLOP_PER_TOKEN, abs=ANCHOR_ROUNDING / 2)
    assert flops.batch_flops(0, full, training=False) == pytest.approx(flops.batch_flops(0, full, True) / 3)
    # Padding is not counted: two sequences of 64 tokens cost less than one of 128 (attention is quadratic).
    assert flops.batch_flops(0, torch.tensor([64, 64]), True) < flops.batch_flops(0, full, True)


def test_gated_flops_count_own_value_adapter_only():
    config = modeling_gated.BertConfig(**TINY, hidden_size_aug=5, max_seq_length=GATED_LENGTH)
    model = modeling_gated.BertForMultiTask(config, TINY_HEADS)
    embert = modeling.BertForMultiTask(modeling.BertConfig(**TINY), TINY_HEADS)
    gated, flops = model.bert.encoder.layer[-1].attention.self, bench_training.FlopModel.of(model)
    adapters = sum(p.numel() for lists in (gated.query_list, gated.query_list2, gated.key_list, gated.key_list2)
                   for p in lists.parameters())
    value = sum(p.numel() for p in gated.value_list[0].parameters())
    # Every task's query/key adapters run on every token, only the batch's own value adapter does.
    assert flops.per_token == bench_training.FlopModel.of(embert).per_token + adapters + value
    gates = sum(p.numel() for gate in (gated.weight_layer_q, gated.weight_layer_k) for p in gate.parameters())
    assert flops.per_sequence[0] == bench_training.FlopModel.of(embert).per_sequence[0] + gates


def test_pals_flops_count_the_batch_tasks_pal_in_every_layer():
    config = modeling_pals.BertConfig(**{**TINY, "our_attn": False}, hidden_size_aug=18)
    model = modeling_pals.BertForMultiTask(config, TINY_HEADS)
    plain = modeling.BertForMultiTask(modeling.BertConfig(**{**TINY, "our_attn": False}), TINY_HEADS)
    flops, pal = bench_training.FlopModel.of(model), model.bert.encoder.layer[0].multi_layers[0]
    one_pal = sum(p.numel() for p in pal.parameters())  # its V_E and V_D, and its attention's projections
    assert one_pal == (32 * 18 + 18) + (18 * 32 + 32) + 3 * (18 * 18 + 18)
    # The shared V_E / V_D run once in every layer; the other tasks' PALs not at all.
    assert flops.per_token == bench_training.FlopModel.of(plain).per_token + TINY["num_hidden_layers"] * one_pal
    assert flops.hidden == TINY["hidden_size"] + 18  # the PAL's attention beside the layer's
    assert flops.per_sequence == bench_training.FlopModel.of(plain).per_sequence


def test_group_step_flops_count_each_head_on_what_it_reads():
    model = modeling.BertForMultiTask(modeling.BertConfig(**TINY), [4, 3], ["seq_tag", "multi_cls"], num_groups=1)
    lengths = torch.tensor([5, 9, 7])
    tagger, types = (sum(p.numel() for p in head.parameters()) for head in model.classifier)
    per_parameter = bench_training.TRAIN_FLOPS_PER_PARAMETER
    one, both = (bench_problems.problem_step_flops(model, heads, lengths) for heads in ([0], [0, 1]))
    # The second head adds its own work only (no second encoder pass): per sequence, as it reads the pooled output.
    assert both - one == per_parameter * types * len(lengths)
    # A seq_tag head runs on every real token; the encoder and pooler part is FlopModel's.
    encoder = (bench_training.FlopModel.of(model).batch_flops(1, lengths, training=True)
               - per_parameter * types * len(lengths))
    assert one == encoder + per_parameter * tagger * int(lengths.sum())


def test_mlm_step_flops_count_the_head_on_masked_tokens_only():
    config = modeling.BertConfig(**TINY)
    model = modeling.BertForMultiTask(config, [0], ["mask_lm"])
    lengths = torch.tensor([5, 9, 7])
    # The prediction head: transform (dense H x H, LayerNorm), the tied vocabulary matrix (V x H) and its bias (V).
    head = (32 * 32 + 32) + 2 * 32 + 99 * 32 + 99
    assert bench_problems.mlm_step_flops(model, lengths, 4) - bench_problems.mlm_step_flops(model, lengths, 0) == \
        bench_training.TRAIN_FLOPS_PER_PARAMETER * head * 4
    # The encoder as FlopModel counts it, less the pooler (no pooled output read); nothing per sequence.
    pooler = sum(p.numel() for p in model.bert.pooler.parameters())
    assert bench_problems.mlm_step_flops(model, lengths, 0) == (
        bench_training.FlopModel.of(model).batch_flops(0, lengths, True)
        - bench_training.TRAIN_FLOPS_PER_PARAMETER * pooler * len(lengths))


@pytest.mark.parametrize("name,peak", [
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H100 NVL", 835.0),
    ("NVIDIA H200", 989.0), ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA A100 80GB PCIe", 312.0),
    ("Tesla V100-SXM2-16GB", 125.0), ("Tesla V100-PCIE-32GB", 112.0), ("Tesla V100S-PCIE-32GB", 130.0)])
def test_peak_table(name, peak):
    assert bench.lookup_peak(name)[0] == peak


def test_unknown_gpu_has_no_peak():
    assert bench.lookup_peak("NVIDIA GeForce GTX 1080") is None


# ---------------------------------------------------------------------------------------------------- batches

def test_draws_are_reproducible_and_follow_the_sampler():
    sizes = [8551, 3668, 2490, 5749, 67349]  # CoLA, MRPC, RTE, STS-B, SST-2 train
    draws = bench_training.draw_batches(sizes, 40, seed=1, anneal_alpha=sampler.embert_alpha)
    again = bench_training.draw_batches(sizes, 40, seed=1, anneal_alpha=sampler.embert_alpha)
    assert [(d.task, d.epoch, d.indices.tolist()) for d in draws] == [(d.task, d.epoch, d.indices.tolist())
                                                                      for d in again]
    assert [d.epoch for d in draws] == sorted(d.epoch for d in draws)  # spread over the run, in order
    assert draws[0].epoch == 0 and draws[-1].epoch == bench_training.SEED_RUN_EPOCHS - 1
    for d in draws:
        assert d.indices.shape == (bench_training.BATCH_SIZE,) and int(d.indices.max()) < sizes[d.task]
        assert len(set(d.indices.tolist())) == bench_training.BATCH_SIZE  # one pass: no example twice in a batch


def test_padded_width():
    assert bench_training.padded_width(torch.tensor([3, 17, 9]), None) == 24  # longest, rounded up to PAD_MULTIPLE
    assert bench_training.padded_width(torch.tensor([3, 17, 9]), 128) == 128


def test_ratios_are_ours_and_ours_compiled_against_every_other_path():
    seconds = {"ours": [[1.0, 1.0], [2.0, 2.0]], "ours_compiled": [[0.5, 0.5], [0.5, 0.5]],
               "original": [[4.0, 4.0], [4.0, 6.0]]}
    work = {"steps": 2, "sequences": 64, "real_tokens": 100, "padded_tokens": 200, "flops": 1e12}
    section = bench_training.summarize(seconds, {name: work for name in seconds})
    assert section["ratios"] == {"ours/original": pytest.approx(3.25), "ours_compiled/original": pytest.approx(9.0)}
    # best rounds: each batch's fastest time (ours 1 + 1, original 4 + 4, compiled 0.5 + 0.5)
    assert section["ratios_best"] == {"ours/original": 4.0, "ours_compiled/original": 8.0}
    assert section["paths"]["ours"]["steps_per_s"] == pytest.approx(2 / 3)  # the median of 2 and 4 seconds


# ---------------------------------------------------------------------------------------------------- smoke run

def run_bench(tmp_path, *flags):
    """bench.main on the CPU with the tiny model and `flags`; its report, checked equal to the JSON file it wrote."""
    out = tmp_path / "bench.json"
    report = bench.main(["--device", "cpu", "--model", "tiny", *map(str, flags), "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(report))
    return saved


def test_smoke_every_section(tmp_path, capsys):
    try:
        import transformers  # noqa: F401
    except ImportError:
        require(False, "needs transformers for path (3): pip install -r requirements-dev.txt")
    vocab = minilm_dir() / "vocab.txt"
    saved = run_bench(tmp_path, "--warmup", 2, "--steps", 2, "--repeats", 1,
                      "--sections", ",".join(s for s in bench.SECTIONS if s != "mlm"),  # mlm: its own test below
                      "--eval_examples", 16, "--eval_batch_size", 8, "--data_dir", fixture_glue_dir(),
                      "--vocab_file", vocab, "--cache_dir", tmp_path / "cache", "--workers", 2, "--profile", 1,
                      "--problems_data_dir", tmp_path / "no_people_daily")
    for section, paths in (("train", ("ours", "original", "transformers")),
                           ("fwdbwd", ("ours", "original", "transformers")),
                           ("eval", ("ours", "original", "transformers")), ("gated", ("ours", "original")),
                           ("pals", ("ours", "pals"))):
        assert set(saved[section]["paths"]) == set(paths), section
        for name in paths:
            for metric in METRICS:
                assert saved[section]["paths"][name][metric] > 0, (section, name, metric)
            assert saved[section]["paths"][name]["mfu"] is None  # CPU: no peak
        assert set(saved[section]["ratios"]) == {f"ours/{p}" for p in paths if p != "ours"}
        assert all(r > 0 for r in saved[section]["ratios"].values())
    # Padding: the original computes on 128 columns, ours on the longest example rounded up.
    train = saved["train"]["paths"]
    assert train["original"]["padded_tokens_per_batch"] == bench_training.BATCH_SIZE * bench_training.MAX_SEQ_LENGTH
    assert train["ours"]["padded_tokens_per_batch"] <= train["original"]["padded_tokens_per_batch"]
    assert train["ours"]["real_tokens_per_batch"] == train["original"]["real_tokens_per_batch"]
    assert saved["gated"]["paths"]["ours"]["padded_tokens_per_batch"] == (bench_training.BATCH_SIZE
                                                                          * bench_training.MAX_SEQ_LENGTH)
    assert saved["pals"]["parameters"]["pals"] > saved["pals"]["parameters"]["ours"]
    assert all(v > 0 for v in saved["train"]["pipeline_us"].values())
    assert saved["projection"]["hours"]["ours"] > 0
    for statistics in saved["padding"].values():  # the timed batches and a large sample of the run's
        assert 0 < statistics["real_tokens_per_batch"] <= statistics["padded_to_longest_tokens_per_batch"]
    assert saved["profile"]["top_ops"] and saved["profile"]["phases_cpu_ms_per_step"]
    data = saved["data"]
    assert data["examples"] > 0 and data["parallel_speedup"] > 0 and data["files"]
    assert all(seconds > 0 for seconds in data["cached_load_s_per_task"].values())
    assert saved["device"] == "cpu" and saved["model"] == "tiny" and saved["config"]["num_hidden_layers"] == 2
    printed = capsys.readouterr().out
    for title in ("== train: one optimizer step ==", "== forward+backward (no optimizer) ==", "== data: "):
        assert title in printed
    # Without People's Daily the group section says so in one line and leaves no entry.
    assert "group" not in saved
    assert [line for line in printed.splitlines() if "group section skipped" in line] == [
        f"note: group section skipped: People's Daily is not at "
        f"{tmp_path / 'no_people_daily' / 'pku199801' / '199801.txt'} (--problems_data_dir)"]


def test_group_section_on_real_people_daily(tmp_path, capsys):
    require(PEOPLE_DAILY.is_file(), f"needs People's Daily in {PEOPLE_DAILY.parent}")
    data_dir = tmp_path / "data"
    (data_dir / "pku199801").mkdir(parents=True)
    lines = PEOPLE_DAILY.read_text(encoding="utf-8").splitlines(keepends=True)[:PEOPLE_DAILY_LINES]
    (data_dir / "pku199801" / "199801.txt").write_text("".join(lines), encoding="utf-8")
    saved = run_bench(tmp_path, "--sections", "group", "--warmup", 1, "--steps", 2, "--repeats", 2,
                      "--problems_data_dir", data_dir, "--vocab_file", minilm_dir() / "vocab.txt",
                      "--cache_dir", tmp_path / "cache")
    group = saved["group"]
    paths = group["paths"]
    assert set(paths) == {"group", "single", "three_singles"}
    for name, path in paths.items():
        for metric in (*METRICS, "problem_steps_per_s"):
            assert path[metric] > 0, (name, metric)
        assert len(path["seconds_per_round"]) == 2
    # One encoder pass for the & group's three problems, as for one problem; three for the three one by one.
    assert {name: p["encoder_passes_per_batch"] for name, p in paths.items()} == {
        "group": 1, "single": 1, "three_singles": 3}
    # The same batches on every path: the same tokens per encoder pass.
    assert len({p["real_tokens_per_batch"] for p in paths.values()}) == 1
    assert len({p["padded_tokens_per_batch"] for p in paths.values()}) == 1
    # A group step trains three problems; three_singles takes three optimizer steps per batch, one problem each.
    assert paths["group"]["problem_steps_per_s"] == pytest.approx(3 * paths["group"]["steps_per_s"])
    assert paths["three_singles"]["problem_steps_per_s"] == pytest.approx(paths["three_singles"]["steps_per_s"])
    assert paths["three_singles"]["sequences_per_s"] == pytest.approx(
        paths["three_singles"]["steps_per_s"] * bench_training.BATCH_SIZE)
    rounds = {name: p["seconds_per_round"] for name, p in paths.items()}
    expected = sorted(t / g for t, g in zip(rounds["three_singles"], rounds["group"]))
    assert group["time_ratios"]["three_singles/group"] == pytest.approx(sum(expected) / 2)  # median of two rounds
    assert set(group["time_ratios"]) == set(group["time_ratios_best"]) == {"group/single", "three_singles/group"}
    assert all(ratio > 0 for ratio in group["time_ratios_best"].values())
    assert group["problems"] == ["pku_cws", "pku_ner", "pku_entity_types"] and group["train_examples"] > 0
    printed = capsys.readouterr().out
    assert "== group train: pku_cws&pku_ner&pku_entity_types" in printed and "three_singles/group" in printed


def transformers_or_skip():
    try:
        import transformers
    except ImportError:
        require(False, "needs transformers for the mlm section: pip install -r requirements-dev.txt")
    return transformers


def test_transformers_masked_lm_computes_our_logits_with_the_task_row_folded():
    transformers = transformers_or_skip()
    torch.manual_seed(0)
    # A masked LM on task row 1 beside a classifier on row 0: the row's embeddings must be the ones folded in.
    model = modeling.BertForMultiTask(modeling.BertConfig(**TINY), [2, 0], ["cls", "mask_lm"]).eval()
    for layer in model.bert.encoder.layer:  # task embeddings far from their near-zero start, so a wrong row shows
        for part in ("query", "key", "value"):
            torch.nn.init.normal_(getattr(layer.attention.self, f"{part}_task_emb").weight)
    lengths = torch.tensor([9, 16, 12])
    mask = (torch.arange(16) < lengths[:, None]).long()  # (3, 16)
    input_ids = torch.randint(5, TINY["vocab_size"], (3, 16)) * mask
    token_type_ids = (torch.arange(16) >= 5).long() * mask
    token_index = mask.flatten().nonzero().squeeze(1)  # every real token, masked or not: all logits compared
    with torch.no_grad():
        ours = model(input_ids, token_type_ids, mask, 1, token_index=token_index,
                     masked_index=torch.arange(len(token_index))).logits[0]  # (N, V)
        logits = {}
        for row in (0, 1):
            hf = bench_problems.transformers_masked_lm(transformers, model, row).eval()
            padded = hf(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=mask).logits  # (B, T, V)
            logits[row] = padded.reshape(-1, TINY["vocab_size"])[token_index]  # (N, V)
    assert ours.shape == (int(lengths.sum()), TINY["vocab_size"])
    torch.testing.assert_close(logits[1], ours, atol=LOGITS_ATOL, rtol=0)
    assert (logits[0] - ours).abs().max() > 100 * LOGITS_ATOL  # the other row's embeddings: another model


def test_transformers_mlm_labels_sit_at_the_masked_tokens_places():
    # Two rows of 3 and 2 real tokens padded to 4; the packed tokens 1 and 4 masked (row 0 col 1, row 1 col 1).
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    batch = {"input_ids": torch.tensor([[2, 7, 3, 0], [2, 7, 0, 0]]), "token_type_ids": torch.zeros(2, 4).long(),
             "attention_mask": mask, "token_index": mask.flatten().nonzero().squeeze(1),
             "masked_index": torch.tensor([1, 4]), "masked_labels": torch.tensor([11, 12])}
    labels = bench_problems.transformers_mlm_inputs(batch)["labels"]
    assert labels.tolist() == [[-100, 11, -100, -100], [-100, 12, -100, -100]]


def test_mlm_section_on_real_glue_rows(tmp_path, capsys):
    transformers_or_skip()
    saved = run_bench(tmp_path, "--sections", "mlm", "--mlm_problem", MLM_TEST_PROBLEM, "--warmup", 1, "--steps", 2,
                      "--repeats", 2, "--data_dir", fixture_glue_dir(), "--vocab_file", minilm_dir() / "vocab.txt",
                      "--cache_dir", tmp_path / "cache")
    mlm = saved["mlm"]
    paths = mlm["paths"]
    assert set(paths) == {"ours", "transformers"}
    for name, path in paths.items():
        for metric in (*METRICS, "head_seconds_per_step"):
            assert path[metric] > 0, (name, metric)
        assert 0 < path["vocab_logits_share"] < 1, name
        assert len(path["seconds_per_round"]) == 2 and path["mfu"] is None  # CPU: no peak
    assert set(mlm["ratios"]) == set(mlm["ratios_best"]) == {"ours/transformers"}
    assert mlm["ratios"]["ours/transformers"] > 0
    # The same batches: the same tokens; ours computes vocabulary logits at the masked tokens, transformers everywhere.
    assert paths["ours"]["real_tokens_per_batch"] == paths["transformers"]["real_tokens_per_batch"]
    assert paths["ours"]["vocab_logit_rows_per_batch"] == mlm["masked_tokens_per_batch"]
    assert paths["transformers"]["vocab_logit_rows_per_batch"] == paths["transformers"]["padded_tokens_per_batch"]
    # BERT's rate: about 15% of the word pieces ([CLS] and [SEP], two per SST-2 sentence, never).
    pieces = paths["ours"]["real_tokens_per_batch"] - 2 * bench_training.BATCH_SIZE
    assert mlm["masked_tokens_per_batch"] == pytest.approx(masking.MASK_RATE * pieces, rel=0.2)
    # The same math: the two losses on one batch with the same weights, near ln(vocab) for a fresh model.
    check = mlm["loss_check"]
    assert abs(check["ours"] - check["transformers"]) == check["abs_diff"] <= bench_problems.MLM_LOSS_TOLERANCE
    assert check["ours"] == pytest.approx(math.log(saved["config"]["vocab_size"]), abs=0.5)
    assert mlm["problem"] == MLM_TEST_PROBLEM and mlm["train_examples"] > 0
    printed = capsys.readouterr().out
    assert f"== mlm train: {MLM_TEST_PROBLEM} (masked LM), ours against transformers.BertForMaskedLM ==" in printed
    assert "loss on one batch, same weights" in printed


def test_mlm_section_without_transformers_says_why(tmp_path, capsys):
    report = bench.main(["--device", "cpu", "--model", "tiny", "--sections", "mlm", "--no_transformers",
                         "--vocab_file", str(minilm_dir() / "vocab.txt"), "--json", str(tmp_path / "bench.json")])
    assert "mlm" not in report
    assert [line for line in capsys.readouterr().out.splitlines() if "mlm section skipped" in line] == [
        "note: mlm section skipped: it compares with transformers' BertForMaskedLM, and --no_transformers is given"]


def test_bad_sections_flag_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--sections", "train,speed"])
    assert "--sections: unknown speed" in capsys.readouterr().err
