"""Plots and a results table of training runs, read from their log files alone (finished, running or interrupted).

    python plot_runs.py runs/embert runs/shared --output runs.png          # one figure, the runs overlaid
    python plot_runs.py runs/embert runs/shared --table                    # Markdown table of best-epoch dev scores
    python plot_runs.py runs/a runs/b --names EmBERT,shared --output runs.png --table

The figure (matplotlib, an optional install: `pip install matplotlib`; the table works without it), every panel over
the global step, one colour per run:
  - each problem's training loss: an exponential moving average, the raw logged values faint;
  - each problem's dev score (the mean of its metrics) and the overall dev score, a point per evaluation;
  - the learning rate;
  - per run, each epoch's sampling shares (the batches drawn per task or group) as a stacked bar over the epoch's steps.

The table has the README's results format: per problem its metrics joined by " / ", then the mean score, of each
run's best evaluation (the model it kept: by default the highest overall score), the best cell of each column in bold.

Read from each RUN_DIR (written by run_multi_task.py, multitask.py's docstring):
  train_log.jsonl      {"global_step", "epoch", "task", "loss", "steps", "lr"} per problem and log flush; per epoch
                       {"global_step", "epoch", "task_counts": {task or group: batches}, "alpha"}
  eval_results.jsonl   {"epoch", "global_step", "scores": {problem: {metric: value}}, "task_scores", "mean_score",
                       "best"} per evaluation ("glue_score" in runs written before mean_score existed); absent until
                       a run's first evaluation (the figure then has no dev points)
A missing file or a malformed line is a one-line error naming it. A running (or killed) run may have written part of
its last line: a last line without its newline that is not valid JSON is skipped, with a note.
"""
import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cli import check_output_file, exit_on_interrupt, fail

LM_METRIC = "perplexity"  # a masked LM's (problem_types.MASK_LM_METRICS, PRETRAIN_METRICS)
# File names as run_files.py names them (not imported: it imports torch, which reading logs does not need).
TRAIN_LOG, EVAL_LOG = "train_log.jsonl", "eval_results.jsonl"
LOSS_KEYS = ("global_step", "epoch", "task", "loss", "lr")
EPOCH_KEYS = ("global_step", "epoch", "task_counts", "alpha")
# An evaluation's mean score: "mean_score"; logs written before it existed name it "glue_score".
EVAL_KEYS = (("epoch", "global_step", "scores", "task_scores", "mean_score"),
             ("epoch", "global_step", "scores", "task_scores", "glue_score"))
# The loss curve's smoothing: TensorBoard's default (its smoothing slider at 0.6), with its start-up bias correction.
LOSS_SMOOTHING = 0.6
RAW_ALPHA = 0.25  # opacity of the raw loss points under the smoothed curve
# Table headers: GLUE's own spellings of the task and metric names (as the README's tables print them); other
# problems and metrics appear under their names in the logs.
DISPLAY_NAMES = {"cola": "CoLA", "mrpc": "MRPC", "rte": "RTE", "sts": "STS-B", "sst": "SST-2", "qqp": "QQP",
                 "mnli": "MNLI", "qnli": "QNLI", "wnli": "WNLI", "mcc": "MCC", "f1": "F1", "pearson": "Pearson",
                 "spearman": "Spearman", "acc_m": "m", "acc_mm": "mm"}
MAX_COLUMNS = 6  # panels per figure row; a section with more wraps onto the next row
PANEL_INCHES = (3.4, 2.6)  # width, height of one panel
DPI = 110
DEFAULT_FIGURE_SUFFIX = ".png"  # what matplotlib writes for a file name without a suffix, made explicit


def note(message):
    print(f"note: {message}", file=sys.stderr)


@dataclass
class Run:
    """What one run directory logged."""
    name: str
    losses: dict = field(default_factory=dict)  # problem -> {global_step: mean loss since the previous flush}
    lr: dict = field(default_factory=dict)  # global_step -> learning rate
    epochs: dict = field(default_factory=dict)  # epoch -> (first global step, {group: batches drawn})
    evals: list = field(default_factory=list)  # eval_results.jsonl records


def read_jsonl(path, required):
    """The records of a JSON-lines log, each a dict with the keys one of `required`'s tuples names. A last line
    without its newline that does not parse was being written when the file was read (or the writer was killed):
    skipped with a note. Any other bad line is an error naming the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        fail(f"{path} does not exist: is {path.parent} a run directory of run_multi_task.py?")
    except (OSError, UnicodeDecodeError) as err:
        fail(f"{path} cannot be read: {err}")
    lines = text.split("\n")  # the element after the last newline is "" for a complete file
    records = []
    for number, line in enumerate(lines, start=1):
        torn = number == len(lines)
        if torn and not line:
            break
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if torn:
                note(f"{path}, line {number}: skipped a partly written last line (a running or killed run)")
                break
            fail(f"{path}, line {number}: not valid JSON ({err.msg} at column {err.colno})")
        if not isinstance(record, dict) or not any(all(k in record for k in keys) for keys in required):
            expected = " or ".join("{" + ", ".join(keys) + "}" for keys in required)
            fail(f"{path}, line {number}: expected a JSON object with the keys {expected}")
        records.append((number, record))
    return records


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_table(value, depth=1):
    """A {name: number} dict (depth 1) or a {name: {name: number}} dict (depth 2)."""
    return isinstance(value, dict) and all(is_number(v) if depth == 1 else is_table(v) for v in value.values())


def check(condition, path, number, expected):
    if not condition:
        fail(f"{path}, line {number}: expected {expected}")


def load_run(run_dir, name):
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        fail(f"{run_dir} is not a directory (expected a run's --output_dir)")
    run = Run(name)
    train_log, eval_log = run_dir / TRAIN_LOG, run_dir / EVAL_LOG
    for number, r in read_jsonl(train_log, (LOSS_KEYS, EPOCH_KEYS)):
        check(isinstance(r["global_step"], int), train_log, number, "an integer global_step")
        if "task_counts" in r:
            check(is_table(r["task_counts"]), train_log, number, "task_counts mapping group names to batch counts")
            # A later line for the same epoch (a resumed run starting it again) replaces the earlier one.
            run.epochs[r["epoch"]] = (r["global_step"], r["task_counts"])
        else:
            check(is_number(r["loss"]) and is_number(r["lr"]), train_log, number, "numbers for loss and lr")
            run.losses.setdefault(str(r["task"]), {})[r["global_step"]] = r["loss"]
            run.lr[r["global_step"]] = r["lr"]
    if eval_log.exists():
        for number, r in read_jsonl(eval_log, EVAL_KEYS):
            r.setdefault("mean_score", r.get("glue_score"))
            check(isinstance(r["global_step"], int) and is_number(r["mean_score"]) and is_table(r["scores"], depth=2)
                  and is_table(r["task_scores"]), eval_log, number,
                  "an integer global_step, a number mean_score, scores {problem: {metric: number}} and task_scores "
                  "{problem: number}")
            run.evals.append(r)
    return run


def best_eval(run, eval_log):
    """The evaluation of the model the run kept (best_model.pth): the last one marked "best", which is the one with
    the highest overall score unless --metric_for_best_model chose another score. Logs without the marks: the highest
    overall score (the first of equals, as training keeps the first best)."""
    if not run.evals:
        fail(f"{eval_log} has no evaluation yet (or the run trained without --do_eval): no scores to tabulate")
    marked = [record for record in run.evals if record.get("best")]
    return marked[-1] if marked else max(run.evals, key=lambda record: record["mean_score"])


def display(name):
    return DISPLAY_NAMES.get(name, name)


def results_table(runs, run_dirs):
    """The README's results table (Markdown) of each run's best evaluation."""
    bests = [best_eval(run, Path(d) / EVAL_LOG) for run, d in zip(runs, run_dirs)]
    columns = {}  # problem -> its metric names, in the order the logs list them
    for best in bests:
        for problem, metrics in best["scores"].items():
            columns.setdefault(problem, list(metrics))
    rows = []
    for best in bests:
        cells = [[best["scores"].get(p, {}).get(m) for m in metrics] for p, metrics in columns.items()]
        rows.append(cells + [[best["mean_score"]]])
    same_problems = all(best["scores"].keys() == bests[0]["scores"].keys() for best in bests)
    # Bold a column's best cell where several runs have it: by the problem's logged score (the mean of GLUE's
    # metrics, a masked LM's minus its loss: the lower perplexity wins), the last column by the mean score, which
    # compares only over the same problems.
    scores = [[best["task_scores"].get(p) for p in columns] + [best["mean_score"]] for best in bests]
    bold = [[False] * len(rows[0]) for _ in rows]
    for c in range(len(rows[0]) - (not same_problems)):
        values = {r: row[c] for r, row in enumerate(scores) if row[c] is not None}
        for r, value in values.items():
            bold[r][c] = len(values) > 1 and value == max(values.values())

    def cell_text(values, strong):
        if all(v is None for v in values):
            return "-"  # the run has no such problem
        text = " / ".join("-" if v is None else f"{v:.1f}" for v in values)
        return f"**{text}**" if strong else text

    header = ["run"] + [f"{display(p)} {' / '.join(map(display, m))}" for p, m in columns.items()]
    # Masked-LM problems (scored by perplexity) count in the mean only when a run has nothing else.
    averaged = [p for p, metrics in columns.items() if LM_METRIC not in metrics] or list(columns)
    header.append(f"mean of {len(averaged)}" if same_problems else "mean of its problems")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run, row, strong in zip(runs, rows, bold):
        lines.append("| " + " | ".join([run.name] + [cell_text(v, s) for v, s in zip(row, strong)]) + " |")
    return "\n".join(lines)


def smoothed(values, weight=LOSS_SMOOTHING):
    """Exponential moving average, divided by (1 - weight^n) so that the first points are not pulled toward 0."""
    out, average = [], 0.0
    for n, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight ** n))
    return out


def load_matplotlib():
    """matplotlib, drawing to files only; a one-line error without it."""
    try:
        import matplotlib
    except ImportError:
        fail("the figure needs matplotlib: pip install matplotlib (--table works without it)")
    matplotlib.use("Agg")  # files only, no display
    return matplotlib


def figure_path(output):
    """--output as the file that will be written: a name without a suffix gets .png (as matplotlib would write it);
    a suffix matplotlib has no writer for is an error naming those it has. Checked before any log is read."""
    from matplotlib.backend_bases import FigureCanvasBase
    path = Path(output)
    if path.is_dir():
        fail(f"--output {output} is a folder; expected a file name such as {path / 'runs.png'}")
    if not path.suffix:
        path = path.with_name(path.name + DEFAULT_FIGURE_SUFFIX)
    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix[1:].lower() not in formats:
        fail(f"--output {output}: matplotlib writes no {path.suffix} files; give one of the suffixes "
             f"{', '.join('.' + name for name in sorted(formats))}")
    check_output_file(path, "--output")
    return path


def plot(runs, output):
    """Draw the figure (module docstring) to `output` (figure_path's)."""
    import matplotlib.pyplot as plt

    problems = list(dict.fromkeys(p for run in runs for p in [*run.losses, *(run.evals[0]["scores"] if run.evals
                                                                             else [])]))
    groups = list(dict.fromkeys(g for run in runs for _, counts in run.epochs.values() for g in counts))
    sections = [[("loss", p) for p in problems] + [("lr", None)],
                [("dev", p) for p in problems] + [("score", None)],
                [("shares", run) for run in runs] + [("groups", None)]]
    columns = min(MAX_COLUMNS, max(map(len, sections)))
    rows = sum(math.ceil(len(s) / columns) for s in sections)
    fig, axes = plt.subplots(rows, columns, figsize=(PANEL_INCHES[0] * columns, PANEL_INCHES[1] * rows),
                             squeeze=False, constrained_layout=True)
    run_colours = {run.name: plt.cm.tab10(i % 10) for i, run in enumerate(runs)}
    group_colours = {g: plt.cm.tab20(i % 20) for i, g in enumerate(groups)}
    cells = iter(axes.flat)
    for section in sections:
        for kind, subject in section:
            draw_panel(next(cells), kind, subject, runs, run_colours, group_colours)
        for _ in range(-len(section) % columns):  # the rest of the section's last row stays empty
            next(cells).set_visible(False)
    fig.legend(handles=[plt.Line2D([], [], color=c, label=n) for n, c in run_colours.items()],
               loc="outside upper center", ncols=len(runs), frameon=False)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=DPI)
    plt.close(fig)


def draw_panel(ax, kind, subject, runs, run_colours, group_colours):
    from matplotlib.patches import Patch
    ax.tick_params(labelsize="small")
    ax.set_xlabel("global step", fontsize="small")
    if kind == "loss":
        ax.set_title(f"train loss: {subject}", fontsize="medium")
        for run in runs:
            points = sorted(run.losses.get(subject, {}).items())
            if points:
                steps, losses = zip(*points)
                ax.plot(steps, losses, color=run_colours[run.name], alpha=RAW_ALPHA, linewidth=0.8)
                ax.plot(steps, smoothed(losses), color=run_colours[run.name])
    elif kind == "lr":
        ax.set_title("learning rate", fontsize="medium")
        for run in runs:
            ax.plot(*zip(*sorted(run.lr.items())) if run.lr else ([], []), color=run_colours[run.name])
        ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    elif kind in ("dev", "score"):
        ax.set_title(f"dev: {subject}" if kind == "dev" else "dev: overall score", fontsize="medium")
        for run in runs:
            points = [(r["global_step"], r["task_scores"][subject] if kind == "dev" else r["mean_score"])
                      for r in run.evals if kind == "score" or subject in r["task_scores"]]
            if points:
                ax.plot(*zip(*points), marker="o", color=run_colours[run.name])
    elif kind == "groups":  # the colours of the shares panels, in a panel of its own
        ax.axis("off")
        ax.legend(handles=[Patch(color=c, label=g) for g, c in group_colours.items()], title="share of the steps",
                  loc="center left", fontsize="small", frameon=False)
    else:  # shares: subject is a run; one bar per epoch, as wide as the epoch's steps
        ax.set_title(f"sampling shares: {subject.name}", fontsize="medium")
        for epoch, (start, counts) in sorted(subject.epochs.items()):
            total, bottom = sum(counts.values()), 0.0
            for group, count in counts.items():
                share = count / total if total else 0.0
                ax.bar(start, share, width=total, bottom=bottom, align="edge", color=group_colours[group],
                       edgecolor="white", linewidth=0.5)
                bottom += share
        ax.set_ylim(0, 1)


def main(argv=None):
    parser = argparse.ArgumentParser(description="\n\n".join(__doc__.split("\n\n")[:2]),  # summary, examples
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a run's --output_dir")
    parser.add_argument("--output", default=None, help="write the figure to this file (PNG, PDF or SVG by its suffix)")
    parser.add_argument("--table", action="store_true",
                        help="print the Markdown table of each run's best-epoch dev scores (needs no matplotlib)")
    parser.add_argument("--names", default=None,
                        help="comma-separated run names for the legend and table (default: the directory names)")
    args = parser.parse_args(argv)
    if args.output is None and not args.table:
        fail("nothing to do: give --output FILE.png, --table, or both")
    names = args.names.split(",") if args.names else [Path(d).resolve().name for d in args.run_dirs]
    if len(names) != len(args.run_dirs):
        fail(f"--names gives {len(names)} name(s) for {len(args.run_dirs)} RUN_DIR(s)")
    if args.output:
        load_matplotlib()
        output = figure_path(args.output)
    runs = [load_run(d, name) for d, name in zip(args.run_dirs, names)]
    for run, run_dir in zip(runs, args.run_dirs):
        if not run.evals:
            note(f"{Path(run_dir) / EVAL_LOG}: no evaluation yet, so no dev points for {run.name}")
    if args.output:
        plot(runs, output)
        print(f"wrote {output}", file=sys.stderr)
    if args.table:
        print(results_table(runs, args.run_dirs))


if __name__ == "__main__":
    with exit_on_interrupt():
        main()
