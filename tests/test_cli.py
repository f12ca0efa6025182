"""The console script: one-line usage errors with status 2, --debug, option ranges, resume checks."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from graphode import cli
from graphode.cli import build_parser, main, train_config_from_args
from graphode.connectome import ReorderNeurons, build_connectome
from graphode.flyvis import fly_visual_system
from graphode.inputs import random_pixels
from graphode.models import ConnectomeClassifier
from graphode.training import RESUME_FREE_MODEL_OPTIONS, RESUME_FREE_OPTIONS, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--extent", "1", "--dataset", "synthetic", "--lr", "0.01", "--schedule", "constant", "--train-limit", "32",
        "--test-limit", "16", "--batch-size", "16", "--hidden", "8", "--num-records", "2", "--backend", "csr",
        "--no-progress"]


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


# -- a connectome file of one's own ------------------------------------------------------------
FAST = ["--dataset", "synthetic", "--schedule", "constant", "--train-limit", "32", "--test-limit", "16",
        "--batch-size", "16", "--hidden", "8", "--num-records", "2", "--backend", "csr", "--no-progress", "--device", "cpu"]
TYPES = ("R1", "L1", "T4", "T5")


def _write_connectome(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``edges.csv`` (pre, post, syn_count) and ``nodes.csv`` (id, cell_type, nt_type) in ``folder``."""
    rng = np.random.default_rng(0)
    n = 48
    edges = pd.DataFrame({"pre": rng.integers(0, n, 300), "post": rng.integers(0, n, 300),
                          "syn_count": rng.integers(1, 50, 300)}).drop_duplicates(["pre", "post"])
    nodes = pd.DataFrame({"id": np.arange(n), "cell_type": [TYPES[i % 4] for i in range(n)],
                          "nt_type": ["GABA" if i % 3 == 0 else "ACH" for i in range(n)],
                          "sensory": np.arange(n) < 5})
    edges.to_csv(folder / "edges.csv", index=False)
    nodes.to_csv(folder / "nodes.csv", index=False)
    return edges, nodes


@pytest.fixture
def files(tmp_path, monkeypatch):
    """A small edge list and node table in the working directory (tmp_path), as the examples name them."""
    monkeypatch.chdir(tmp_path)
    return _write_connectome(tmp_path)


def _examples(text: str) -> list[str]:
    return [m.group(1).split("#")[0].strip() for m in re.finditer(r"^\s*graphode ((?:train|ablate|info)\b.*)$", text, re.M)]


def _help(*argv: str) -> str:
    out = io.StringIO()
    with pytest.raises(SystemExit), contextlib.redirect_stdout(out):
        main([*argv, "--help"])
    return out.getvalue()


def _shrunk(example: str, index: int) -> list[str]:
    """An example's arguments with options appended (argparse: the last value wins) that make it tiny."""
    argv = shlex.split(example)
    fly = "--connectome" not in argv
    if argv[0] == "info":
        return argv + (["--extent", "1"] if fly else [])
    extra = FAST + ["--method", "euler", "--dt0", "0.05"] + (["--extent", "1"] if fly else [])
    if "--out-dir" not in argv:
        extra += ["--out-dir", f"runs/example{index}"]
    return argv + extra


@pytest.mark.slow
def test_every_help_and_docstring_example_runs(files, capsys):
    """Each example of `graphode --help`, `graphode train --help` and the module docstring runs
    (made tiny), in order, in a folder holding edges.csv and nodes.csv; trained losses are finite."""
    examples = _examples(_help()) + _examples(_help("train")) + _examples(cli.__doc__)
    assert len(examples) >= 12 and any("--nodes" in e for e in examples) and any(e.startswith("info") for e in examples)
    assert set(_examples(cli.__doc__)) <= set(_examples(_help())) and set(_examples(_help("train"))) <= set(_examples(_help()))
    for i, example in enumerate(dict.fromkeys(examples)):  # each once, in order (the resume examples need runs/a)
        argv = _shrunk(example, i)
        assert main(argv) == 0, (example, capsys.readouterr().err)
        if argv[0] == "train":
            out = Path(argv[len(argv) - 1 - argv[::-1].index("--out-dir") + 1])  # the last --out-dir
            history = json.loads((out / "metrics.json").read_text())
            assert history and all(math.isfinite(h["train_loss"]) and math.isfinite(h["test_loss"]) for h in history)
    out = capsys.readouterr().out
    assert "resumed from" in out and '"neurons": 48' in out


def test_reorder_is_saved_in_the_spec_and_rebuilds_the_renumbered_graph(files, tmp_path):
    argv = ["train", "--connectome", "edges.csv", "--reorder", "rcm", "--input", "random", "--readout", "linear",
            *FAST, "--out-dir", "run"]
    assert main(argv) == 0
    spec = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["model_config"]["connectome"]
    assert spec["reorder"] == "rcm"
    plain = build_connectome({k: v for k, v in spec.items() if k != "reorder"})
    assert torch.equal(build_connectome(spec).original_index, ReorderNeurons("rcm")(plain).original_index)


def test_file_options_are_saved_and_rebuild_the_graph(files, tmp_path):
    """The connectome spec in the checkpoint rebuilds the graph the options asked for: signs from the
    presynaptic transmitter (with an --nt-sign override) and in_syn magnitudes, checked against pandas."""
    edges, nodes = files
    argv = ["train", "--connectome", "edges.csv", "--nodes", "nodes.csv", "--nt-sign", "ACH=-1", "--nt-sign",
            "GABA=+1", "--output-types", "T4,T5", *FAST, "--out-dir", "run"]
    assert main(argv) == 0
    saved = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["model_config"]
    spec = saved["connectome"]
    assert spec == {"path": str(tmp_path / "edges.csv"), "nodes": str(tmp_path / "nodes.csv"),
                    "nt_signs": {"ach": -1, "gaba": 1}, "output_types": ["T4", "T5"], "normalize": "in_syn"}
    assert (saved["input"], saved["readout"], saved["weights"], saved["keep_group_mean"]) == (
        "random", "pooled", "per_edge_type", True)
    model = ConnectomeClassifier.from_config(saved)
    data = build_connectome(spec)
    pre, post = data.edge_index.numpy()
    ref = edges.set_index(["pre", "post"])["syn_count"]
    count = ref.loc[list(zip(pre, post))].to_numpy().astype(float)
    into = edges.groupby("post")["syn_count"].sum()
    np.testing.assert_allclose(data.syn_weight.numpy(), count / into.loc[post].to_numpy(), rtol=1e-6)
    gaba = nodes.set_index("id")["nt_type"].loc[pre].to_numpy() == "GABA"
    np.testing.assert_array_equal(data.sign.numpy(), np.where(gaba, 1.0, -1.0))  # the overrides flip both
    outputs = nodes["cell_type"].isin(["T4", "T5"]).to_numpy()
    np.testing.assert_array_equal(model.output_mask.numpy(), outputs)
    # resuming with the same command finds the same options; another normalisation is a difference
    assert main([*argv, "--epochs", "2", "--resume"]) == 0
    assert main([*argv, "--epochs", "3", "--resume", "--normalize", "in_degree"]) == 2


def test_random_input_drives_the_input_neurons_or_all(files):
    _, nodes = files
    typed = train_config_from_args(build_parser().parse_args(
        ["train", "--connectome", "edges.csv", "--nodes", "nodes.csv", "--input-types", "R1,T5", *FAST]))
    model = ConnectomeClassifier.from_config(typed.model_config())
    driven = set(model.input_map.index[0].tolist())
    assert driven == set(nodes.index[nodes["cell_type"].isin(["R1", "T5"])])  # 784 pixels reach all 24 of them
    column = train_config_from_args(build_parser().parse_args(
        ["train", "--connectome", "edges.csv", "--nodes", "nodes.csv", "--input-types", "sensory", *FAST]))
    model = ConnectomeClassifier.from_config(column.model_config())
    assert set(model.input_map.index[0].tolist()) == {0, 1, 2, 3, 4}  # a boolean node-table column
    plain = train_config_from_args(build_parser().parse_args(
        ["train", "--connectome", "edges.csv", "--default-sign", "+1", *FAST]))
    assert (plain.model["input"], plain.model["readout"], plain.model["weights"]) == ("random", "linear", "per_edge")
    model = ConnectomeClassifier.from_config(plain.model_config())
    assert set(model.input_map.index[0].tolist()) == set(range(48))
    # without neurons= the mapping is the torch-biopl tutorial's: pixel k onto randint(N)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(model.input_map.index[0], torch.randint(48, (784,), generator=gen))


def test_per_edge_weights_train_on_normalised_counts_and_raw_counts_diverge(files, capsys):
    assert main(["train", "--connectome", "edges.csv", "--weights", "per_edge", "--default-sign", "+1", *FAST,
                 "--out-dir", "normalised"]) == 0
    history = json.loads(Path("normalised/metrics.json").read_text())
    assert all(math.isfinite(h["train_loss"]) for h in history)
    capsys.readouterr()
    assert main(["train", "--connectome", "edges.csv", "--weights", "per_edge", "--default-sign", "+1",
                 "--normalize", "none", *FAST, "--out-dir", "raw"]) == 1
    assert "diverged" in _one_error_line(capsys.readouterr().err)


def test_info_on_a_file_with_a_node_table(files, capsys):
    edges, nodes = files
    assert main(["info", "--connectome", "edges.csv", "--nodes", "nodes.csv", "--input-types", "R1"]) == 0
    info = json.loads(capsys.readouterr().out)
    gaba = nodes.set_index("id")["nt_type"].loc[edges["pre"]].to_numpy() == "GABA"
    assert info == {"neurons": 48, "connections": len(edges), "cell_types": 4, "inputs": 12, "outputs": None,
                    "inhibitory_fraction": round(float(gaba.mean()), 4)}
    assert main(["info", "--connectome", "edges.csv", "--default-sign", "-1"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["cell_types"] is None and info["inhibitory_fraction"] == 1.0


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "--nodes", "nodes.csv"], "--nodes: only for a connectome file"),
        (["info", "--connectome", "random", "--normalize", "none"], "--normalize: only for a connectome file"),
        (["train", "--connectome", "edges.csv", "--extent", "3"], "--extent: only for the fly visual system"),
        (["train", "--connectome", "edges.csv", "--readout", "pooled"], "(--nodes FILE); or use --readout linear"),
        (["train", "--connectome", "edges.csv", "--weights", "per_edge_type"], "--nodes FILE"),
        (["train", "--connectome", "edges.csv", "--input", "retina"], "use --input random"),
        (["train", "--connectome", "edges.csv", "--input-types", "R1"], "needs a node table (--nodes FILE)"),
        (["train", "--connectome", "edges.csv", "--nodes", "nodes.csv", "--output-types", "T4", "--readout", "linear"],
         "--output-types: the linear readout reads every neuron"),
        (["train", "--connectome", "edges.csv", "--nodes", "nodes.csv", "--input-types", "Q9"], "'Q9'; available: 'L1'"),
        (["train", "--connectome", "edges.csv", "--nt-sign", "GABA=+1", "--nt-sign", "gaba=-1"], "given both +1 and -1"),
    ],
)
def test_connectome_file_usage_errors_are_one_line(files, capsys, argv, expected):
    assert main([*argv, *(FAST + ["--out-dir", "never"] if argv[0] == "train" else [])]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # a file without signs also warns, in one line
    assert all(line.startswith("graphode: warning: ") for line in err[:-1]), err
    assert expected in _one_error_line(err[-1])
    assert not Path("never").exists()


@pytest.mark.parametrize(("option", "value"), [("--nt-sign", "GABA"), ("--nt-sign", "=1"), ("--nt-sign", "GABA=2"),
                                               ("--default-sign", "0"), ("--input-types", "R1,,T4")])
def test_bad_file_option_values_are_parse_errors(capsys, option, value):
    with pytest.raises(SystemExit) as info:
        main(["train", "--connectome", "edges.csv", f"{option}={value}"])
    assert info.value.code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"argument {option}:" in line and repr(value) in line


def test_random_input_neuron_choice_is_checked(files):
    data = build_connectome({"path": "edges.csv", "default_sign": 1})
    with pytest.raises(ValueError, match=r"BoolTensor \[48\] selecting at least one neuron, got torch.bool \[48\] selecting 0"):
        random_pixels(data, 10, neurons=torch.zeros(48, dtype=torch.bool))
    with pytest.raises(ValueError, match="got torch.int64"):
        random_pixels(data, 10, neurons=torch.ones(48, dtype=torch.long))
    with pytest.raises(ValueError, match="input_neurons must be 'all' or 'input_mask', got 'inputs'"):
        ConnectomeClassifier(data, input="random", readout="linear", weights="fixed", input_neurons="inputs")


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
