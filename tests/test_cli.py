import os
import subprocess
import sys

import pytest

from numgru import cli


def test_help_lists_demo(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    assert "demo" in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "usage" in capsys.readouterr().out


def test_bad_options(capsys):
    with pytest.raises(SystemExit):
        cli.main(["demo", "--task", "dance"])
    assert cli.main(["demo", "--threads", "0"]) == 2
    assert "--threads" in capsys.readouterr().err


def test_commands_are_extensible(capsys):
    extra = cli.Command("hello", "say hello",
                        lambda parser: parser.add_argument("--name"),
                        lambda args: print(f"hello {args.name}") or 0)
    cli.COMMANDS.append(extra)
    try:
        assert cli.main(["hello", "--name", "gru"]) == 0
    finally:
        cli.COMMANDS.remove(extra)
    assert capsys.readouterr().out == "hello gru\n"


def test_classify_demo_short_run(capsys):
    assert cli.main(["demo", "--max-iter", "2", "--threads", "1",
                     "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "Iteration 1, loss = " in out and "Iteration 2, loss = " in out
    assert "test accuracy: " in out and "fit time: " in out
    # compilation happens before training, so the first epoch is not slowed by it
    assert out.index("kernels ready in") < out.index("Iteration 1, loss = ")


def test_forecast_demo_beats_seasonal_naive(capsys):
    assert cli.main(["demo", "--task", "forecast", "--quiet",
                     "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "the GRU beats the seasonal naive forecast" in out
    result = cli.forecast_airline(max_iter=200, n_jobs=1)
    assert result["rmse"] < result["naive_rmse"]
    assert result["mae"] < result["naive_mae"]
    assert result["n_test"] == 29
    assert result["compile_time"] >= 0 and result["fit_time"] > 0


def test_python_dash_m_entry_point():
    completed = subprocess.run(
        [sys.executable, "-m", "numgru", "demo", "--help"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ,
             "PYTHONPATH": os.pathsep.join(sys.path)})
    assert completed.returncode == 0
    for option in ("--task", "--backend", "--threads", "--seed"):
        assert option in completed.stdout


def test_output_piped_into_a_closed_reader_ends_quietly():
    command = (f"{sys.executable} -m numgru demo --task forecast --max-iter 30 "
               f"| head -n 1")
    completed = subprocess.run(
        command, shell=True, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert completed.stdout.startswith("Airline passengers")
    assert "Traceback" not in completed.stderr, completed.stderr
    assert "BrokenPipeError" not in completed.stderr, completed.stderr
