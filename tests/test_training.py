"""Training: learning, resume, the learning-rate schedule, ablations; checkpoints (no code
execution, checksums), resume checks and option checks."""

from __future__ import annotations

import csv
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from graphode.training import (
    CHECKPOINT_FORMAT, CheckpointError, LearningRateSchedule, ResumeMismatchError, TrainConfig, ablate,
    load_checkpoint, save_checkpoint, train,
)

SPEC = {"name": "fly_visual_system", "extent": 1}
MODEL = {"connectome": SPEC, "hidden": 8, "num_records": 2, "backend": "csr"}


def _tiny(out_dir, **kw) -> TrainConfig:
    # A fixed backend: "auto" measures again in a resumed process and may pick another
    # backend, equal only up to rounding.
    # lr and schedule pinned: the resume tests below name them as saved values.
    base = TrainConfig(model=dict(MODEL), dataset="synthetic", train_limit=32, test_limit=16, batch_size=16, epochs=1,
                       lr=1e-2, schedule="constant", progress=False, out_dir=str(out_dir))
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


# -- training runs, schedule, ablations ----------------------------------------------------------
def test_learning_rate_schedule_values():
    cos = LearningRateSchedule("cosine", total_steps=10, warmup_steps=2)
    assert [cos(k) for k in (0, 1)] == [0.5, 1.0]  # linear warm-up
    assert cos(2) == 1.0 and cos(10) == 0.0 and cos(50) == 0.0
    assert math.isclose(cos(6), 0.5)  # half-way through the decay
    assert LearningRateSchedule("constant", 5)(4) == 1.0
    with pytest.raises(ValueError, match="schedule"):
        LearningRateSchedule("linear", 5)


def test_resume_continues_exactly(tmp_path):
    # A cosine schedule: resuming must also restore where the learning rate was.
    full = train(_tiny(tmp_path / "full", train_limit=48, epochs=2, schedule="cosine", warmup_steps=2, augment_shift=1))
    train(_tiny(tmp_path / "part", train_limit=48, epochs=2, schedule="cosine", warmup_steps=2, augment_shift=1, stop_after_epoch=1))
    resumed = train(_tiny(tmp_path / "part", train_limit=48, epochs=2, schedule="cosine", warmup_steps=2, augment_shift=1, resume=True))
    with open(tmp_path / "part" / "steps.csv") as fh:
        lrs = [float(row["lr"]) for row in csv.DictReader(fh)]
    sched = LearningRateSchedule("cosine", total_steps=6, warmup_steps=2)  # 48 / 16 = 3 steps per epoch
    assert lrs == pytest.approx([1e-2 * sched(k) for k in range(6)])
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed["history"] == full["history"] or [h["test_accuracy"] for h in resumed["history"]] == [
        h["test_accuracy"] for h in full["history"]
    ]
    files = sorted(p.name for p in (tmp_path / "part").iterdir())
    assert files == ["checkpoint.pt", "curves.png", "metrics.csv", "metrics.json", "steps.csv"]  # no temp files left


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"stop_after_epoch": 0}, "stop_after_epoch"), ({"augment_shift": -1}, "augment_shift"),
     ({"schedule": "linear"}, "schedule"), ({"warmup_steps": -2}, "warmup_steps")],
)
def test_bad_training_options_fail_before_training(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        train(_tiny(tmp_path, train_limit=48, **kw))
    assert not (tmp_path / "checkpoint.pt").exists()


def test_resume_refuses_another_model(tmp_path):
    train(_tiny(tmp_path, train_limit=48))
    other = _tiny(tmp_path, train_limit=48, epochs=2, resume=True, model={"connectome": SPEC, "hidden": 4, "num_records": 2, "backend": "csr"})
    with pytest.raises(ValueError, match="different model"):
        train(other)


def test_training_learns_synthetic_digits(tmp_path):
    model = {"connectome": {"name": "fly_visual_system", "extent": 2}, "hidden": 16, "num_records": 2, "backend": "csr"}
    cfg = _tiny(tmp_path, model=model, train_limit=480, test_limit=100, epochs=6, batch_size=32)
    final = train(cfg)["final"]
    assert final["test_accuracy"] > 0.3  # 10 classes: chance is 0.1 (measured 0.43)


def test_ablation_runs_three_variants(tmp_path):
    rows = ablate(_tiny(tmp_path, train_limit=48))
    assert [r["variant"] for r in rows] == ["connectome", "shuffled", "no_recurrence"]
    assert (tmp_path / "ablation.md").exists() and (tmp_path / "ablation.png").exists()
