"""bench.py --sections seq2seq on real CMUdict batches: ours against transformers' EncoderDecoderModel, the loss and
the generated outputs checked equal before timing; its JSON round trip; skipped with a note without CMUdict."""
import json

import pytest

import bench
import bench_seq2seq
from conftest import ROOT, minilm_dir, require


def transformers_or_skip():
    try:
        import transformers  # noqa: F401
    except ImportError:
        require(False, "needs transformers: pip install -r requirements-dev.txt")


def run_bench(tmp_path, *flags):
    out = tmp_path / "bench.json"
    report = bench.main(["--device", "cpu", "--model", "tiny", "--sections", "seq2seq", "--vocab_file",
                         str(minilm_dir() / "vocab.txt"), "--cache_dir", str(tmp_path / "cache"), *map(str, flags),
                         "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(report))
    return saved


@pytest.mark.slow
def test_seq2seq_section_on_real_cmudict_batches(tmp_path, capsys):
    transformers_or_skip()
    data_dir = ROOT.parent / "shared"
    require((data_dir / "cmudict" / "cmudict.dict").is_file(), f"needs CMUdict in {data_dir / 'cmudict'}")
    saved = run_bench(tmp_path, "--warmup", 1, "--steps", 2, "--repeats", 1, "--eval_batch_size", 8,
                      "--problems_data_dir", data_dir)["seq2seq"]
    assert saved["problem"] == "cmudict_g2p"
    check = saved["loss_check"]
    assert check["abs_diff"] <= bench_seq2seq.SEQ2SEQ_LOSS_TOLERANCE and 3 < check["ours"] < 6  # near ln(72)
    for key in ("train", "greedy", "beam4"):
        assert set(saved[key]["paths"]) == {"ours", "transformers"}, key
        assert saved[key]["ratios"]["ours/transformers"] > 0, key
    assert saved["train"]["paths"]["ours"]["sequences_per_s"] > 0
    assert "greedy and beam outputs equal" in capsys.readouterr().out


def test_seq2seq_section_without_cmudict_says_why(tmp_path, capsys):
    transformers_or_skip()
    saved = run_bench(tmp_path, "--warmup", 0, "--steps", 1, "--repeats", 1, "--problems_data_dir",
                      tmp_path / "nothing")
    assert "seq2seq" not in saved
    assert "note: seq2seq section skipped: problem cmudict_g2p: train file not found" in capsys.readouterr().out
