"""Every bad argument of ``corrmm``: one line on stderr, exit status 2, no traceback; ``--version``;
help for every option and a description for every subcommand; redirected output free of progress bars."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import corrmm
from corrmm.cli import COMMANDS, build_parser, main

SRC = str(Path(corrmm.__file__).resolve().parents[1])
NO_GPU = not torch.cuda.is_available()

BAD_ARGUMENTS = [
    ["demo", "--algo", "bogus"],
    ["demo", "--algo", "fft"],            # the network has a stride-2 layer: fft cannot serve it
    ["demo", "--batch-size", "0"],
    ["demo", "--batch-size", "-3"],
    ["demo", "--epochs", "0"],
    ["demo", "--epochs", "two"],
    ["demo", "--lr", "0"],
    ["demo", "--lr", "nan"],
    ["demo", "--device", "tpu"],
    ["demo", "--device", "not a device"],
    ["demo", "--no-such-option"],
    ["check", "--dtype", "float8"],
    ["check", "--device", "gpu"],
    ["bench", "--algos", "bogus"],
    ["bench", "--dtype", "fp8"],
    ["bench", "--suite", "no-such-suite"],
    ["bench", "--rep-ms", "-1"],
    ["bench", "--threads", "0"],
    ["bench", "--json", "/no/such/folder/out.json"],
    ["bench", "--plot", "/"],
    ["bogus-command"],
]
if NO_GPU:
    BAD_ARGUMENTS += [["demo", "--device", "cuda"], ["check", "--device", "cuda"], ["bench", "--device", "cuda:0"]]


@pytest.mark.parametrize("argv", BAD_ARGUMENTS, ids=" ".join)
def test_bad_arguments_give_one_line_and_status_2(argv, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "error: " in lines[0], captured.err
    assert "Traceback" not in captured.err + captured.out


def test_the_fft_error_says_why(capsys):
    main(["demo", "--algo", "fft"])
    assert "fft needs stride 1" in capsys.readouterr().err


def test_a_malformed_environment_variable_is_a_usage_error(monkeypatch, capsys):
    from corrmm import config

    monkeypatch.setitem(config._environment_errors, "CORRMM_POISON",
                        ValueError("CORRMM_POISON='maybe' is not an on/off value"))
    assert main(["check"]) == 2
    assert capsys.readouterr().err.strip() == "corrmm: error: CORRMM_POISON='maybe' is not an on/off value"


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"corrmm {corrmm.__version__}"


def test_every_subcommand_has_a_description_and_every_option_help():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    assert set(subparsers) == set(COMMANDS)
    for name, sub in subparsers.items():
        assert sub.description and len(sub.description.strip()) > 20, name
        for action in sub._actions:
            assert action.help, f"corrmm {name} {action.option_strings} has no help text"


def test_subprocess_error_has_no_traceback():
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-m", "corrmm", "demo", "--algo", "bogus"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert "invalid choice: 'bogus'" in done.stderr


def test_redirected_demo_output_has_no_progress_bar():
    """stdout and stderr both to pipes (not terminals): the table rows are whole lines, no bar anywhere."""
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-m", "corrmm", "demo", "--epochs", "1", "--device", "cpu"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stdout + done.stderr and "batch/s" not in done.stdout + done.stderr
    assert re.search(r"^\s*1\s+[\d.]+\s+[\d.]+$", done.stdout, re.MULTILINE), done.stdout
