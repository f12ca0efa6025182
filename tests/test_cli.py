"""The console script: one-line usage errors with status 2, --debug, option ranges, resume checks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from graphode.cli import build_parser, main
from graphode.flyvis import fly_visual_system
from graphode.training import RESUME_FREE_MODEL_OPTIONS, RESUME_FREE_OPTIONS

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--extent", "1", "--dataset", "synthetic", "--train-limit", "32", "--test-limit", "16", "--batch-size", "16",
        "--hidden", "8", "--num-records", "2", "--backend", "csr", "--no-progress"]


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("graphode: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished one-epoch CLI run; tests copy it before touching it."""
    out = tmp_path_factory.mktemp("cli_run")
    assert main(["train", *TINY, "--out-dir", str(out)]) == 0
    return out


@pytest.fixture
def run_dir(run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


@pytest.mark.parametrize(
    ("option", "value", "allowed"),
    [
        ("--epochs", "0", "an integer >= 1"), ("--hidden", "0", "an integer >= 1"), ("--rtol", "-1", "a number > 0"),
        ("--atol", "0", "a number > 0"), ("--lr", "-0.1", "a number > 0"), ("--lr", "inf", "a number > 0"),
        ("--dynamics-lr", "-1", "a number >= 0"), ("--weight-decay", "-1e-4", "a number >= 0"),
        ("--batch-size", "0", "an integer >= 1"), ("--num-records", "0", "an integer >= 1"),
        ("--t-end", "0", "a number > 0"), ("--tau", "-0.2", "a number > 0"), ("--dt0", "0", "a number > 0"),
        ("--max-steps", "0", "an integer >= 1"), ("--checkpoints", "0", "an integer >= 1"),
        ("--warmup-steps", "-1", "an integer >= 0"), ("--augment-shift", "-2", "an integer >= 0"),
        ("--train-limit", "-1", "an integer >= 0 (0 = all)"), ("--test-limit", "-1", "an integer >= 0"),
        ("--seed", "-1", "an integer >= 0"), ("--threads", "0", "an integer >= 1"),
        ("--stop-after-epoch", "0", "an integer >= 1"), ("--extent", "-1", "an integer >= 0"),
        ("--epochs", "two", "an integer >= 1"),
    ],
)
def test_out_of_range_options_are_one_line_usage_errors(capsys, option, value, allowed):
    with pytest.raises(SystemExit) as info:
        main(["train", f"{option}={value}"])  # "=": argparse reads "-1e-4" alone as an option
    assert info.value.code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"argument {option}: must be {allowed}" in line and repr(value) in line


def test_numeric_options_all_have_a_range():
    """Every int/float option of train is parsed by a range-checking type."""
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    for action in train._actions:
        assert action.type not in (int, float), action.option_strings


def test_console_script_exit_status_and_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "graphode", "train", *TINY, "--resume", "--out-dir", str(tmp_path / "none")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    line = _one_error_line(proc.stderr)
    assert str(tmp_path / "none" / "checkpoint.pt") in line
    proc = subprocess.run([*cmd, "--debug"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "FileNotFoundError" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "graphode", "train", "--epochs", "0"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "--epochs" in _one_error_line(proc.stderr)


def test_debug_shows_the_error_itself(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        main(["train", *TINY, "--resume", "--out-dir", str(tmp_path), "--debug"])
    with pytest.raises(FileNotFoundError):
        main(["--debug", "info", "--connectome", str(tmp_path / "missing.csv")])


def test_missing_connectome_file_is_a_usage_error(tmp_path, capsys):
    missing = tmp_path / "edges.csv"
    assert main(["info", "--connectome", str(missing)]) == 2
    assert str(missing) in _one_error_line(capsys.readouterr().err)
    assert main(["train", "--connectome", str(missing), "--dataset", "synthetic", "--out-dir", str(tmp_path)]) == 2
    assert str(missing) in _one_error_line(capsys.readouterr().err)


def test_resume_anyway_needs_resume(tmp_path, capsys):
    assert main(["train", *TINY, "--resume-anyway", "--out-dir", str(tmp_path)]) == 2
    assert "--resume-anyway" in _one_error_line(capsys.readouterr().err)


def test_resume_mismatch_names_each_option(run_dir, capsys):
    before = (run_dir / "checkpoint.pt").read_bytes()
    code = main(["train", *TINY, "--epochs", "2", "--seed", "1", "--lr", "0.02", "--hidden", "8", "--resume",
                 "--out-dir", str(run_dir)])
    assert code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "--seed: saved 0, requested 1" in line and "--lr: saved 0.01, requested 0.02" in line
    assert "--resume-anyway" in line and str(run_dir / "checkpoint.pt") in line
    assert (run_dir / "checkpoint.pt").read_bytes() == before
    code = main(["train", *TINY, "--epochs", "2", "--seed", "1", "--lr", "0.02", "--resume", "--resume-anyway",
                 "--out-dir", str(run_dir)])
    assert code == 0
    assert "epoch 2:" in capsys.readouterr().out


def test_resume_accepts_where_and_how_it_runs(run_dir, tmp_path, capsys):
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)
    args = [*TINY, "--epochs", "3", "--stop-after-epoch", "2", "--device", "cpu", "--threads", "1", "--backend", "pyg"]
    assert main(["train", *args, "--resume", "--out-dir", str(moved)]) == 0
    assert "resumed from" in capsys.readouterr().out


def test_damaged_checkpoint_is_a_usage_error(run_dir, capsys):
    path = run_dir / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:-100])
    assert main(["train", *TINY, "--epochs", "2", "--resume", "--out-dir", str(run_dir)]) == 2
    assert str(path) in _one_error_line(capsys.readouterr().err)


def test_help_documents_resume_and_what_may_differ(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--resume-anyway" in text and "--resume-if-present" in text and "--debug" in text
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    flags = {s for a in train._actions for s in a.option_strings}
    resume_help = " ".join(next(a.help for a in train._actions if "--resume" in a.option_strings).split())
    for name in (*RESUME_FREE_OPTIONS, *RESUME_FREE_MODEL_OPTIONS):
        flag = "--no-progress" if name == "progress" else "--" + name.replace("_", "-")
        if flag in flags and not name.startswith("resume"):
            assert flag in resume_help, flag


def test_cli_train_and_info(tmp_path, capsys):
    assert main(["info", "--extent", "1"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["neurons"] == fly_visual_system(1).num_nodes
    code = main(["train", "--extent", "1", "--dataset", "synthetic", "--train-limit", "32", "--test-limit", "16",
                     "--batch-size", "16", "--no-progress", "--out-dir", str(tmp_path)])
    assert code == 0
    assert "test accuracy" in capsys.readouterr().out
    assert (tmp_path / "curves.png").exists()
    with pytest.raises(SystemExit):
        main(["train", "--gradient", "magic"])
