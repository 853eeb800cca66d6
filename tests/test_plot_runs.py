"""plot_runs.py: the figure of two runs (one trained here by run_multi_task.py, one with realistic logs of a problems
run with an "&" group) is a PNG; --table prints each run's best evaluation; missing, malformed and partly written
log files give one-line errors or a note."""
import json
import math
import struct
import subprocess
import sys

import pytest

import plot_runs
from conftest import ROOT, fixture_glue_dir, minilm_dir

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """Two epochs of four steps of a tiny EmBERT on RTE and STS-B: the real script on real rows (its scores do not
    matter here, so no pretrained weights: the run takes seconds)."""
    out = tmp_path_factory.mktemp("runs") / "embert"
    config = tmp_path_factory.mktemp("config") / "tiny.json"
    config.write_text(json.dumps({"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2,
                                  "num_attention_heads": 4, "intermediate_size": 37, "our_attn": True}))
    command = ["run_multi_task.py", "--output_dir", out, "--tasks", "rte,sts", "--sample", "anneal", "--do_train",
               "--do_eval", "--do_lower_case", "--data_dir", fixture_glue_dir(), "--vocab_file",
               minilm_dir() / "vocab.txt", "--bert_config_file", config, "--train_batch_size", 8,
               "--num_train_epochs", 2, "--steps_per_epoch", 4, "--eval_batch_size", 64, "--log_steps", 2,
               "--cache_dir", tmp_path_factory.mktemp("cache"), "--no_cuda"]
    result = subprocess.run([sys.executable, *map(str, command)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def write_problems_run(run_dir, best_epoch=1):
    """Logs as run_multi_task.py writes them for a run of RTE and an "&" group of two problems, three epochs of 20
    steps, logged every 10 steps; its best evaluation is `best_epoch`, not the last."""
    run_dir.mkdir(parents=True)
    train, evals, best = [], [], -1.0
    for epoch in range(3):
        start = 20 * epoch
        train.append({"global_step": start, "epoch": epoch, "task_counts": {"rte": 8, "pku_cws&pku_ner": 12},
                      "alpha": 1.0 - 0.4 * epoch})
        for step in (start + 10, start + 20):
            for problem, loss in (("rte", 0.7 - step / 100), ("pku_cws", 1.5 - step / 50), ("pku_ner", 2.0)):
                train.append({"global_step": step, "epoch": epoch, "task": problem, "loss": loss, "steps": 5,
                              "lr": 1e-4 * (1 - step / 60)})
        scores = {"rte": {"acc": 55.0 + epoch}, "pku_cws": {"f1": 80.0 + epoch},
                  "pku_ner": {"f1": 40.0 + 3 * epoch, "acc": 90.25}}
        glue = 70.0 + (5.0 if epoch == best_epoch else epoch)
        evals.append({"epoch": epoch, "global_step": start + 20, "scores": scores,
                      "task_scores": {p: sum(m.values()) / len(m) for p, m in scores.items()}, "glue_score": glue,
                      "best": glue > best})
        best = max(best, glue)
    write_jsonl(run_dir / plot_runs.TRAIN_LOG, train)
    write_jsonl(run_dir / plot_runs.EVAL_LOG, evals)
    return run_dir


def table_rows(text):
    """{run name: [[numbers of a cell], ...]} from the Markdown table, and its header cells."""
    lines = text.strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        name, *cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
        rows[name] = [[None if v == "-" else float(v) for v in cell.split(" / ")] for cell in cells]
    return header, rows


def best_line(run_dir):
    records = [json.loads(line) for line in (run_dir / plot_runs.EVAL_LOG).read_text().splitlines()]
    return max(records, key=lambda r: r["glue_score"])


def error_of(argv):
    with pytest.raises(SystemExit) as exc:
        plot_runs.main([str(a) for a in argv])
    message = str(exc.value)
    assert message.startswith("error: ") and "\n" not in message
    return message


def test_figure_and_table_of_two_runs(trained_run, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="needs matplotlib: pip install matplotlib")
    problems_run = write_problems_run(tmp_path / "problems")
    figure = tmp_path / "figure" / "runs.png"
    plot_runs.main([str(trained_run), str(problems_run), "--output", str(figure), "--table"])
    data = figure.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 1000 and height > 500 and len(data) > 20_000

    header, rows = table_rows(capsys.readouterr().out)
    assert header[1:] == ["RTE acc", "STS-B Pearson / Spearman", "pku_cws F1", "pku_ner F1 / acc",
                          "mean of its problems"]
    for name, run_dir, problems in (("embert", trained_run, ("rte", "sts")),
                                    ("problems", problems_run, ("rte", "pku_cws", "pku_ner"))):
        best = best_line(run_dir)
        assert best["best"]
        expected = {p: [round(v, 1) for v in best["scores"][p].values()] for p in problems}
        cells = dict(zip(("rte", "sts", "pku_cws", "pku_ner", "mean"), rows[name]))
        assert {p: cells[p] for p in problems} == expected
        assert cells["mean"] == [round(best["glue_score"], 1)]
    assert best_line(problems_run)["epoch"] == 1  # the best evaluation, not the last


def test_table_without_matplotlib(tmp_path, monkeypatch, capsys):
    run_dir = write_problems_run(tmp_path / "run")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    plot_runs.main([str(run_dir), "--table", "--names", "EmBERT"])
    _, rows = table_rows(capsys.readouterr().out)
    assert rows["EmBERT"][-1] == [75.0]
    assert "pip install matplotlib" in error_of([run_dir, "--output", tmp_path / "runs.png"])


def test_missing_files(tmp_path):
    run_dir = write_problems_run(tmp_path / "run")
    (run_dir / plot_runs.EVAL_LOG).unlink()
    assert str(run_dir / plot_runs.EVAL_LOG) in error_of([run_dir, "--table"])  # nothing to tabulate yet
    (run_dir / plot_runs.TRAIN_LOG).unlink()
    assert f"{run_dir / plot_runs.TRAIN_LOG} does not exist" in error_of([run_dir, "--table"])
    assert "is not a directory" in error_of([tmp_path / "nowhere", "--table"])


@pytest.mark.parametrize("name", [plot_runs.TRAIN_LOG, plot_runs.EVAL_LOG])
def test_malformed_lines(tmp_path, name):
    run_dir = write_problems_run(tmp_path / "run")
    path = run_dir / name
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1][:-5]] + lines[2:]) + "\n")  # a torn line in the middle
    assert f"{path}, line 2: not valid JSON" in error_of([run_dir, "--table"])
    path.write_text("\n".join(lines[:-1] + [lines[-1][:-5]]) + "\n")  # the last line complete, yet bad
    assert f"{path}, line {len(lines)}: not valid JSON" in error_of([run_dir, "--table"])
    path.write_text("\n".join(lines + ['{"global_step": 3}']) + "\n")
    assert f"{path}, line {len(lines) + 1}: expected a JSON object with the keys" in error_of([run_dir, "--table"])


def test_partly_written_last_line_of_a_running_run(tmp_path, capsys):
    """The last line, without its newline, is cut: skipped with a note; the table is the complete lines' best."""
    run_dir = write_problems_run(tmp_path / "run", best_epoch=2)
    path = run_dir / plot_runs.EVAL_LOG
    text = path.read_text()
    path.write_text(text[:-20])
    plot_runs.main([str(run_dir), "--table"])
    captured = capsys.readouterr()
    assert f"note: {path}, line 3: skipped a partly written last line" in captured.err
    assert table_rows(captured.out)[1]["run"][-1] == [71.0]  # epoch 1 (71), not the cut-off best, epoch 2 (75)


def test_epoch_written_again_by_a_resumed_run_counts_once(tmp_path):
    run_dir = write_problems_run(tmp_path / "run")
    path = run_dir / plot_runs.TRAIN_LOG
    path.write_text(path.read_text() + json.dumps({"global_step": 40, "epoch": 2, "task_counts": {"rte": 20},
                                                   "alpha": 0.2}) + "\n")
    run = plot_runs.load_run(run_dir, "run")
    assert sorted(run.epochs) == [0, 1, 2] and run.epochs[2] == (40, {"rte": 20})


def test_smoothing_keeps_a_constant_and_lags_a_step():
    assert plot_runs.smoothed([2.0] * 5) == pytest.approx([2.0] * 5)  # no pull toward 0 at the start
    curve = plot_runs.smoothed([1.0] * 5 + [0.0] * 5)
    assert curve[4] == pytest.approx(1.0) and 0.0 < curve[5] < 1.0 and curve[-1] < curve[5]


def test_table_bolds_each_columns_best(tmp_path, capsys):
    """Run b's best epoch (2) beats run a's (1) on every problem; their overall scores tie (both bold). A column only
    one run has is not bold."""
    runs = [write_problems_run(tmp_path / "a", best_epoch=1), write_problems_run(tmp_path / "b", best_epoch=2)]
    plot_runs.main([*map(str, runs), "--table"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[2] == "| a | 56.0 | 81.0 | 43.0 / 90.2 | **75.0** |"
    assert lines[3] == "| b | **57.0** | **82.0** | **46.0 / 90.2** | **75.0** |"
    only_a = tmp_path / "only_a"
    (only_a / "eval_results.jsonl").parent.mkdir()
    for name in (plot_runs.TRAIN_LOG, plot_runs.EVAL_LOG):
        (only_a / name).write_text((runs[0] / name).read_text().replace('"pku_cws"', '"msra_cws"'))
    plot_runs.main([str(only_a), str(runs[1]), "--table"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].endswith("| mean of its problems |")
    assert lines[0].startswith("| run | RTE acc | msra_cws F1 | pku_ner F1 / acc | pku_cws F1 |")
    assert lines[2] == "| only_a | 56.0 | 81.0 | 43.0 / 90.2 | - | 75.0 |"
    assert lines[3] == "| b | **57.0** | - | **46.0 / 90.2** | 82.0 | 75.0 |"


def test_table_bolds_the_lower_perplexity_and_leaves_masked_lm_out_of_the_mean(tmp_path, capsys):
    """A masked-LM problem's column is bold where its logged score (minus its dev loss) is highest: the lower
    perplexity, though its accuracy is lower; the mean counts only the other problem."""
    for name, (acc, perplexity) in {"a": (30.0, 20.0), "b": (25.0, 10.0)}.items():
        scores = {"rte": {"acc": 60.0}, "rte_mlm": {"acc": acc, "perplexity": perplexity}}
        (tmp_path / name).mkdir()
        write_jsonl(tmp_path / name / plot_runs.TRAIN_LOG, [])
        write_jsonl(tmp_path / name / plot_runs.EVAL_LOG, [{
            "epoch": 0, "global_step": 10, "scores": scores, "glue_score": 60.0, "best": True,
            "task_scores": {"rte": 60.0, "rte_mlm": -math.log(perplexity)}}])
    plot_runs.main([str(tmp_path / "a"), str(tmp_path / "b"), "--table"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "| run | RTE acc | rte_mlm acc / perplexity | mean of 1 |"
    assert lines[2] == "| a | **60.0** | 30.0 / 20.0 | **60.0** |"
    assert lines[3] == "| b | **60.0** | **25.0 / 10.0** | **60.0** |"


def test_table_takes_the_kept_model_when_another_metric_chose_it(tmp_path, capsys):
    """With --metric_for_best_model rte the kept model is epoch 2's (marked "best"), not epoch 1's higher mean."""
    run_dir = write_problems_run(tmp_path / "run", best_epoch=1)
    path = run_dir / plot_runs.EVAL_LOG
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for record in records:
        record["best"] = True  # rte's accuracy rises every epoch
    write_jsonl(path, records)
    plot_runs.main([str(run_dir), "--table"])
    assert table_rows(capsys.readouterr().out)[1]["run"][0] == [57.0]


@pytest.mark.parametrize("name, line, expected", [
    (plot_runs.TRAIN_LOG, {"global_step": 5, "epoch": 0, "task": "rte", "loss": "0.5", "lr": 1e-4},
     "numbers for loss and lr"),
    (plot_runs.TRAIN_LOG, {"global_step": 0, "epoch": 0, "task_counts": ["rte"], "alpha": 1.0},
     "task_counts mapping group names to batch counts"),
    (plot_runs.EVAL_LOG, {"epoch": 0, "global_step": 5, "scores": {"rte": 50.0}, "task_scores": {"rte": 50.0},
                          "glue_score": 50.0}, "scores {problem: {metric: number}}")])
def test_wrong_types(tmp_path, name, line, expected):
    run_dir = write_problems_run(tmp_path / "run")
    path = run_dir / name
    count = len(path.read_text().splitlines())
    path.write_text(path.read_text() + json.dumps(line) + "\n")
    message = error_of([run_dir, "--table"])
    assert message.startswith(f"error: {path}, line {count + 1}: expected") and expected in message


def test_a_name_without_suffix_gets_png_and_is_named(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="needs matplotlib: pip install matplotlib")
    run_dir = write_problems_run(tmp_path / "run")
    plot_runs.main([str(run_dir), "--output", str(tmp_path / "myfig")])
    assert (tmp_path / "myfig.png").read_bytes()[:8] == PNG_SIGNATURE and not (tmp_path / "myfig").exists()
    assert capsys.readouterr().err.splitlines()[-1] == f"wrote {tmp_path / 'myfig.png'}"


@pytest.mark.parametrize("where", ["an unknown suffix", "a folder", "under a file", "read-only"])
def test_an_output_that_cannot_be_written_is_refused_before_reading_the_logs(tmp_path, read_only_folder, where):
    pytest.importorskip("matplotlib", reason="needs matplotlib: pip install matplotlib")
    file = tmp_path / "notes.txt"
    file.write_text("mine\n")
    output, expected = {"an unknown suffix": (tmp_path / "fig.jpgx", "matplotlib writes no .jpgx files"),
                        "a folder": (tmp_path, "is a folder; expected a file name"),
                        "under a file": (file / "fig.png", f"its folder {file} is a file, not a folder"),
                        "read-only": (read_only_folder / "fig.png", "is not writable")}[where]
    assert expected in error_of([tmp_path / "no_run", "--output", output])  # refused before the missing run's logs
    assert file.read_text() == "mine\n" and not list(read_only_folder.iterdir())
