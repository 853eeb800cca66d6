"""Every script command in the README parses with the script's own argument parser (flags exist, values are valid),
and the README holds the install and test blocks that .ci/run executes."""
import re
import shlex

import pytest

import export_onnx
import multitask
import run_multi_task
import run_multi_task_gated
import run_multi_task_pals
import run_test_multi_task
from conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
PARSERS = {
    "run_multi_task.py": lambda argv: multitask.parse_args(run_multi_task.__doc__, argv),
    "run_multi_task_gated.py": lambda argv: multitask.parse_args(run_multi_task_gated.__doc__, argv),
    "run_multi_task_pals.py": lambda argv: multitask.parse_args(run_multi_task_pals.__doc__, argv),
    "run_test_multi_task.py": run_test_multi_task.parse_args,
    "export_onnx.py": export_onnx.parse_args,
}


def readme_commands():
    """(script, argv) of every `python <script>` line of the README's shell blocks, continuations joined."""
    commands = []
    for block in re.findall(r"```shell\n(.*?)```", README, flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            if line.split()[:1] != ["python"] or line.split()[1:2] == ["-c"]:  # not a script (inline Python)
                continue
            words = shlex.split(line.split("#")[0])
            if len(words) > 1 and words[1] in PARSERS:
                # Shell variables stand for paths or numbers (a loop's --seed $seed): "1" parses as either.
                commands.append((words[1], [re.sub(r"\$\(.*\)|\$\w+", "1", w) for w in words[2:]]))
    return commands


@pytest.mark.parametrize("script, argv", readme_commands(), ids=lambda value: str(value)[:40])
def test_readme_command_parses(script, argv):
    PARSERS[script](argv)


def test_readme_has_the_seed_commands_and_the_ci_blocks():
    scripts = [script for script, _ in readme_commands()]
    assert scripts.count("run_multi_task.py") >= 2 and "run_multi_task_gated.py" in scripts
    assert "run_test_multi_task.py" in scripts and "run_multi_task_pals.py" in scripts
    for name in ("install", "test", "test-slow"):
        assert re.search(rf"<!-- ci:{name} -->\n```shell\n.+\n```\n<!-- /ci:{name} -->", README)


def shell_commands(text):
    """The `python <script> ...` commands of shell text, continuations joined, as word lists (up to a pipe)."""
    joined = text.replace("\\\n", " ").splitlines()
    return [shlex.split(line.split(" | ")[0]) for line in joined
            if line.split()[:1] == ["python"] and line.split()[1:2] != ["-c"]]


def test_quickstart_script_runs_the_readme_quick_start():
    """scripts/quickstart.sh runs the README's four quick-start commands with the same flags, writing under $RUNS
    (runs/ by default) and its figure into the run directory, not over the repository's docs/quickstart_runs.png."""
    section = README.split("## Quick start on a CPU")[1].split("\n## ")[0]
    readme = next(block for block in re.findall(r"```shell\n(.*?)```", section, flags=re.DOTALL) if "python" in block)
    script = (ROOT / "scripts" / "quickstart.sh").read_text(encoding="utf-8")
    from_readme = [[word.replace("runs/", "$RUNS/") for word in words] for words in shell_commands(readme)]
    from_script = shell_commands(script)
    assert len(from_readme) == 4 and from_script == from_readme
    assert "docs/" not in script and "quickstart/quickstart_runs.png" in script
    assert "scripts/quickstart.sh" in section
