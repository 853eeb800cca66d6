"""cli.py: output folders checked before any work (a file, under a file, read-only), Ctrl-C as one line and exit 130,
and a write that a Ctrl-C lets finish."""
import os
import signal

import pytest

import cli


def one_line(error):
    message = str(error.value)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def test_an_output_folder_that_is_a_file_or_lies_under_one_is_refused(tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("mine\n")
    with pytest.raises(SystemExit) as error:
        cli.check_output_dir(file, "--output_dir")
    assert f"--output_dir {file} is a file, not a folder" in one_line(error)
    with pytest.raises(SystemExit) as error:
        cli.check_output_dir(file / "run" / "x", "--output_dir")
    assert f"lies under {file}, which is a file" in one_line(error)
    assert file.read_text() == "mine\n" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_read_only_output_folder_is_refused_and_nothing_is_created(read_only_folder):
    with pytest.raises(SystemExit) as error:
        cli.check_output_dir(read_only_folder / "run", "--output_dir")
    assert f"cannot be written: {read_only_folder} is not writable" in one_line(error)
    with pytest.raises(SystemExit) as error:
        cli.check_output_file(read_only_folder / "figure.png", "--output")
    assert "is not writable" in one_line(error)
    assert list(read_only_folder.iterdir()) == []


def test_a_writable_or_absent_output_folder_passes_and_nothing_is_created(tmp_path):
    cli.check_output_dir(tmp_path / "a" / "b", "--output_dir")
    cli.check_output_file(tmp_path / "c" / "figure.png", "--output")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SystemExit) as error:
        cli.check_output_file(tmp_path, "--output")
    assert "is a folder; expected a file name" in one_line(error)


def test_exit_on_interrupt_is_one_line_and_130(capsys):
    with pytest.raises(SystemExit) as error:
        with cli.exit_on_interrupt("continue with --resume"):
            raise KeyboardInterrupt
    assert error.value.code == 130
    assert capsys.readouterr().err == "interrupted (Ctrl-C); continue with --resume\n"


def test_a_ctrl_c_during_a_write_acts_once_the_write_is_done():
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with cli.deferred_interrupts():
            os.kill(os.getpid(), signal.SIGINT)  # Python's own handler would raise KeyboardInterrupt here
            steps.append("written")
        steps.append("after")  # not reached: the interrupt comes as the block ends
    assert steps == ["written"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_stop_request_during_a_write_is_kept_and_a_second_ctrl_c_interrupts_after_it():
    stop = cli.StopRequest()
    try:
        with cli.deferred_interrupts():
            os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.exit_status() == 143
        steps = []
        with pytest.raises(KeyboardInterrupt):
            with cli.deferred_interrupts():
                os.kill(os.getpid(), signal.SIGINT)  # the second: interrupts, but only once the write is complete
                steps.append("written")
        assert steps == ["written"]
    finally:
        stop.restore()
