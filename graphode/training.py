"""Training loop: data, optimisation, evaluation, checkpoints, metrics and plots.

:func:`train` runs a :class:`~graphode.models.ConnectomeClassifier` on an image dataset and
writes into ``out_dir``:

``checkpoint.pt``
    model, optimiser, schedule, RNG state and history after every epoch, written atomically
    (temporary file + ``os.replace``). It holds only tensors and plain data and is read with
    ``torch.load(weights_only=True)``, so loading it cannot run code; a SHA-256 checksum of
    its content is verified on load, so a damaged file is an error, never a silent change
    (see :func:`save_checkpoint`). ``resume=True`` continues exactly where it stopped (the
    data order of each epoch depends only on the seed and the epoch), and refuses to go on
    with options other than the checkpoint's (see :func:`train`). Bit-exact resumption needs
    a fixed ``backend``: ``"auto"`` measures again in the new process and may choose another
    backend, equal up to floating-point rounding.
``metrics.csv`` / ``metrics.json``
    one row per epoch (loss, accuracy, solver work, time); ``steps.csv`` one row per step.
``curves.png``
    training loss and accuracy per step with the test accuracy per epoch.

It runs unchanged under ``torchrun`` (see :mod:`graphode.distributed`).
"""

from __future__ import annotations

import csv
import json
import math
import pickle
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, Subset, TensorDataset
from tqdm.auto import tqdm

from ._atomic import atomic_write
from ._integrity import content_sha256
from .datasets import random_shift
from .models import DEFAULT_CONFIG, ConnectomeClassifier

__all__ = [
    "TrainConfig", "LearningRateSchedule", "train", "evaluate", "save_checkpoint", "load_checkpoint", "ablate",
    "check_train_config", "CheckpointError", "ResumeMismatchError", "DatasetUnavailableError", "RESUME_FREE_OPTIONS",
    "RESUME_FREE_MODEL_OPTIONS", "CHECKPOINT_FORMAT", "ABLATIONS",
]


@dataclass
class TrainConfig:
    """Everything a training run needs; ``model`` holds :data:`~graphode.models.DEFAULT_CONFIG` overrides.

    Shapes:
        images ``[n, 28, 28]`` in batches ``[batch_size, 28, 28]`` (split over the processes).
    """

    model: dict[str, Any] = field(default_factory=dict)
    dataset: str = "mnist"  # mnist | synthetic
    train_limit: int | None = 36000
    test_limit: int | None = None
    batch_size: int = 64
    eval_batch_size: int = 500
    epochs: int = 1
    lr: float = 2e-2
    dynamics_lr: float | None = None  # learning rate of synapses, tau and bias (default: lr)
    weight_decay: float = 0.0
    schedule: str = "cosine"  # cosine | constant: learning rate per step
    warmup_steps: int = 0  # linear warm-up from 0 before the schedule
    augment_shift: int = 0  # random translation of training images by up to this many pixels
    device: str = "auto"
    seed: int = 0
    out_dir: str = "runs/graphode"
    resume: bool = False  # continue from out_dir/checkpoint.pt, which must exist
    stop_after_epoch: int | None = None  # end this process after that epoch (a later resume goes on)
    data_root: str | None = None
    download: bool = False
    progress: bool = True
    resume_if_present: bool = False  # resume when out_dir holds a checkpoint, else start a new run
    resume_anyway: bool = False  # when resuming: go on although options differ from the checkpoint's

    def model_config(self) -> dict[str, Any]:
        """The full model config: :data:`~graphode.models.DEFAULT_CONFIG` updated with ``model``."""
        cfg = dict(DEFAULT_CONFIG)
        cfg.update(self.model)
        return cfg


class CheckpointError(ValueError):
    """A checkpoint file cannot be used: unreadable, truncated, corrupted, or holding objects
    other than tensors and plain data. The message names the file."""


class ResumeMismatchError(ValueError):
    """``resume=True`` with options that differ from those the checkpoint was written with.

    ``differences`` lists ``(option, saved, requested)``; ``model`` options are named
    ``model.KEY``. ``unfit`` is set when ``resume_anyway`` was given but the saved
    parameters cannot be loaded into the requested model (why, in words).
    """

    def __init__(self, path: Path, differences: list[tuple[str, Any, Any]], unfit: str | None = None):
        self.path, self.differences, self.unfit = Path(path), list(differences), unfit
        lines = "; ".join(f"{name}: saved {saved!r}, requested {req!r}" for name, saved, req in self.differences)
        model = any(name.startswith("model.") for name, _, _ in self.differences)
        train = any(not name.startswith("model.") for name, _, _ in self.differences)
        what = "model and training options" if model and train else "model options" if model else "training options"
        if unfit is None:
            fix = ("Resume with the saved values, use another out_dir for a new run, or pass resume_anyway=True "
                   "(--resume-anyway) to go on with the requested ones")
        else:  # resume_anyway was given, but the saved parameters do not fit the requested model
            fix = (f"The saved parameters do not fit the requested model ({unfit}), even with resume_anyway: "
                   "resume with the saved model options, or use another out_dir for a new run")
        super().__init__(f"cannot resume from {path}: it was written with different {what} ({lines}). {fix}")


class DatasetUnavailableError(RuntimeError):
    """The requested dataset cannot be loaded here (no local copy and no download)."""


def _device(name: str) -> torch.device:
    """``name`` as a device ("auto": CUDA when available); a ValueError names a bad or absent device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device {name!r} is not a device; use auto, cpu, cuda or cuda:K") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: CUDA is not available here; use device 'cpu' or 'auto'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here (cuda:0 …)")
    return dev


def check_train_config(cfg: TrainConfig) -> None:
    """Raise a ValueError naming the first out-of-range option of ``cfg`` (model options
    are checked by the model itself).

    Shapes:
        no tensors.
    """
    def need(ok: bool, name: str, what: str) -> None:
        if not ok:
            raise ValueError(f"{name} must be {what}, got {getattr(cfg, name)!r}")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_num(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    for name in ("train_limit", "test_limit"):
        v = getattr(cfg, name)
        need(v is None or (is_int(v) and v >= 1), name, "an integer >= 1 or None (all)")
    for name in ("batch_size", "eval_batch_size", "epochs"):
        need(is_int(getattr(cfg, name)) and getattr(cfg, name) >= 1, name, "an integer >= 1")
    need(is_num(cfg.lr) and cfg.lr > 0, "lr", "a finite number > 0")
    need(cfg.dynamics_lr is None or (is_num(cfg.dynamics_lr) and cfg.dynamics_lr >= 0), "dynamics_lr",
         "a finite number >= 0 (0 freezes synapses, tau and bias) or None (= lr)")
    need(is_num(cfg.weight_decay) and cfg.weight_decay >= 0, "weight_decay", "a finite number >= 0")
    need(is_int(cfg.warmup_steps) and cfg.warmup_steps >= 0, "warmup_steps", "an integer >= 0")
    need(is_int(cfg.augment_shift) and cfg.augment_shift >= 0, "augment_shift", "an integer >= 0")
    need(is_int(cfg.seed) and 0 <= cfg.seed < 2**63, "seed", "an integer in [0, 2**63)")
    need(cfg.stop_after_epoch is None or (is_int(cfg.stop_after_epoch) and cfg.stop_after_epoch >= 1),
         "stop_after_epoch", "an integer >= 1 or None")
    if cfg.resume_anyway and not (cfg.resume or cfg.resume_if_present):
        raise ValueError("resume_anyway=True (--resume-anyway) only applies with resume=True (--resume) "
                         "or resume_if_present=True (--resume-if-present)")
    LearningRateSchedule(cfg.schedule, 1, cfg.warmup_steps)  # raises on an unknown schedule


def load_dataset(cfg: TrainConfig) -> tuple[TensorDataset, TensorDataset]:
    """``(train, test)`` datasets of images ``[n, 28, 28]`` and labels ``[n]``."""
    if cfg.dataset == "mnist":
        from .datasets import load_mnist

        kw = dict(root=cfg.data_root, download=cfg.download)
        try:
            xtr, ytr = load_mnist("train", limit=cfg.train_limit, **kw)
            xte, yte = load_mnist("test", limit=cfg.test_limit, **kw)
        except RuntimeError as exc:  # load_mnist: no source of MNIST is available
            raise DatasetUnavailableError(str(exc)) from exc
    elif cfg.dataset == "synthetic":
        from .datasets import synthetic_digits

        xtr, ytr = synthetic_digits(cfg.train_limit or 2000, seed=cfg.seed)
        xte, yte = synthetic_digits(cfg.test_limit or 500, seed=cfg.seed + 1)
    else:
        raise ValueError(f"unknown dataset {cfg.dataset!r}; choose mnist or synthetic")
    for split, x in (("train", xtr), ("test", xte)):
        if len(x) == 0:
            raise ValueError(f"the {split} split of {cfg.dataset!r} is empty (limit={getattr(cfg, split + '_limit')})")
    return TensorDataset(xtr, ytr), TensorDataset(xte, yte)


# -- learning rate -----------------------------------------------------------------------------
class LearningRateSchedule:
    """Factor on the base learning rate at optimiser step ``k`` (0-based), for ``LambdaLR``.

    ``constant``: 1 after the warm-up. ``cosine``: from 1 down to 0 at ``total_steps``
    along half a cosine, after the warm-up. The warm-up rises linearly from ``1/warmup``.
    A class rather than a closure, so that ``LambdaLR.state_dict`` saves it with the run.

    Shapes:
        step ``k`` (int) → factor (float).
    """

    def __init__(self, kind: str, total_steps: int, warmup_steps: int = 0):
        if kind not in ("constant", "cosine"):
            raise ValueError(f"unknown learning-rate schedule {kind!r}; choose constant or cosine")
        if warmup_steps < 0 or total_steps < 1:
            raise ValueError(f"need total_steps >= 1 and warmup_steps >= 0, got {total_steps} and {warmup_steps}")
        self.kind, self.total_steps, self.warmup_steps = kind, int(total_steps), int(warmup_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


# -- checkpoints ----------------------------------------------------------------------------
CHECKPOINT_FORMAT = "graphode-checkpoint-1"
_INTEGRITY_KEYS = ("format", "sha256")
_STATE_KEYS = ("model", "optimizer", "schedule", "rng", "epoch", "history", "steps")  # what train() resumes from


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically as a checkpoint that :func:`load_checkpoint` verifies.

    ``state`` may hold only tensors and plain data (dict, list, tuple, str, int, float,
    bool, None), so that ``torch.load(weights_only=True)`` reads it without running code;
    anything else is a TypeError naming its place in ``state``. The file is a dict: the
    entries of ``state`` plus ``"format"`` (:data:`CHECKPOINT_FORMAT`) and ``"sha256"``, a
    checksum of the content, so ``torch.load(path, weights_only=True)["model"]`` still works.
    The checksum detects damage (a truncated copy, flipped bits), not deliberate tampering.

    Shapes:
        tensors of any shape, stored dense.
    """
    clash = [k for k in _INTEGRITY_KEYS if k in state]
    if clash:
        raise ValueError(f"checkpoint state must not use the reserved keys {clash}")
    digest = content_sha256(state, "checkpoint entry state")
    payload = {"format": CHECKPOINT_FORMAT, **state, "sha256": digest}
    atomic_write(path, lambda fh: torch.save(payload, fh))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and verify a checkpoint written by :func:`save_checkpoint`; returns its ``state``.

    Loads with ``torch.load(weights_only=True)`` onto the CPU, so a file holding other
    objects (a pickle that would run code) is refused before anything in it runs.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file is unreadable or truncated, holds objects other than
            tensors and plain data, is not a graphode checkpoint, or its content does not
            match its checksum (it was damaged after it was written). The message names
            the file.

    Shapes:
        the tensors as saved, on the CPU.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"refusing to load {path}: it holds objects other than tensors and plain data, which could run code "
            f"when loaded ({reason}). Only load checkpoints written by graphode from sources you trust"
        ) from exc
    except Exception as exc:  # a truncated, damaged or foreign file
        raise CheckpointError(f"cannot read checkpoint {path}: truncated, damaged or not a torch file ({exc})") from exc
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        found = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
        raise CheckpointError(
            f"{path} is not a graphode training checkpoint of format {CHECKPOINT_FORMAT!r} (found {found!r}); "
            "only files written by save_checkpoint carry the checksum it verifies: train again in a new out_dir"
        )
    state = {k: v for k, v in blob.items() if k not in _INTEGRITY_KEYS}
    stored = blob.get("sha256")
    try:
        actual = content_sha256(state, "checkpoint entry state")
    except TypeError as exc:
        raise CheckpointError(f"{path} is damaged: {exc}") from exc
    if stored != actual:
        raise CheckpointError(
            f"{path} is damaged: its content does not match its checksum (stored sha256 {str(stored)[:16]}…, "
            f"content {actual[:16]}…). Resume from an intact copy, or train again in a new out_dir"
        )
    return state


# -- resume checks ---------------------------------------------------------------------------
#: TrainConfig fields that may differ on resume: where and how the run executes, not what it
#: computes. ``epochs`` may also differ (to extend or shorten a run), except with the cosine
#: schedule, whose shape depends on it.
RESUME_FREE_OPTIONS = (
    "out_dir", "resume", "resume_if_present", "resume_anyway", "stop_after_epoch", "device", "progress", "data_root",
    "download", "eval_batch_size",
)
#: Model options that may differ on resume: ``backend`` picks the kernel that computes the
#: same operation (results equal up to floating-point rounding, as with another device).
RESUME_FREE_MODEL_OPTIONS = ("backend",)


def _resume_differences(state: dict[str, Any], cfg: TrainConfig) -> list[tuple[str, Any, Any]]:
    """``(option, saved, requested)`` for each option of ``cfg`` that differs from the checkpoint's."""
    diffs: list[tuple[str, Any, Any]] = []
    saved_model = {**DEFAULT_CONFIG, **state.get("model_config", {})}  # keys added since take their defaults
    requested_model = cfg.model_config()
    for cfgs in (saved_model, requested_model):
        cfgs["image_size"] = list(cfgs["image_size"])
    for key in sorted(set(saved_model) | set(requested_model)):
        if key in RESUME_FREE_MODEL_OPTIONS:
            continue
        a, b = saved_model.get(key), requested_model.get(key)
        if a != b:
            diffs.append((f"model.{key}", a, b))
    defaults = asdict(TrainConfig())
    saved_train = {**defaults, **state.get("train_config", {})}
    requested_train = asdict(cfg)
    free = set(RESUME_FREE_OPTIONS) | {"model"}
    if saved_train["schedule"] != "cosine" and requested_train["schedule"] != "cosine":
        free.add("epochs")
    for f in fields(TrainConfig):
        if f.name in free:
            continue
        a, b = saved_train.get(f.name), requested_train[f.name]
        if a != b:
            diffs.append((f.name, a, b))
    return diffs


# -- evaluation -----------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: ConnectomeClassifier, loader: DataLoader, device: torch.device) -> dict[str, float]:
    """Mean cross-entropy and accuracy over ``loader`` (summed across processes when distributed).

    Shapes:
        batches of images ``[B, H, W]`` and labels ``[B]`` → mean loss and accuracy (floats).
    """
    from .distributed import all_reduce_sum

    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        totals[0] += F.cross_entropy(logits, labels, reduction="sum").double()
        totals[1] += (logits.argmax(1) == labels).sum()
        totals[2] += labels.numel()
    totals = all_reduce_sum(totals)
    model.train(was_training)
    n = max(float(totals[2]), 1.0)
    return {"loss": float(totals[0]) / n, "accuracy": float(totals[1]) / n}


# -- the loop -------------------------------------------------------------------------------
def _resume_state(cfg: TrainConfig, ckpt_path: Path, dist: Any) -> dict[str, Any] | None:
    """The verified checkpoint to resume from, on every process (rank 0 reads it and sends
    it: no shared file system needed), or None for a new run (``resume_if_present`` without
    a checkpoint); raises the same error on every process."""
    found: Any = None
    new_run = cfg.resume_if_present and not cfg.resume
    if dist.is_main and not (new_run and not ckpt_path.is_file()):
        try:
            if not ckpt_path.is_file():
                raise FileNotFoundError(
                    f"cannot resume: no checkpoint at {ckpt_path}; point out_dir (--out-dir) at the run to continue, "
                    "or leave out resume (--resume) to start a new run"
                )
            found = load_checkpoint(ckpt_path)
            missing = [k for k in _STATE_KEYS if k not in found]
            if missing:
                raise CheckpointError(f"{ckpt_path} lacks the entries {missing} of a training checkpoint")
        except (FileNotFoundError, CheckpointError) as exc:
            found = exc
    found = dist.broadcast(found)
    if isinstance(found, BaseException):
        raise found
    if found is None:
        dist.print(f"no checkpoint at {ckpt_path} yet: starting a new run")
        return None
    differences = _resume_differences(found, cfg)
    if differences and not cfg.resume_anyway:
        raise ResumeMismatchError(ckpt_path, differences)
    for name, saved, requested in differences:
        dist.print(f"warning: resuming with {name} = {requested!r} (checkpoint: {saved!r}), as resume_anyway asks")
    return found


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train, evaluate every epoch, checkpoint; returns the final metrics and history.

    Options are checked first (:func:`check_train_config`), so a typo fails at once.

    With ``cfg.resume`` the run continues from ``out_dir/checkpoint.pt``, which must exist
    (a FileNotFoundError names the path otherwise) and pass :func:`load_checkpoint`'s
    checks. ``cfg.resume_if_present`` resumes in the same way when the checkpoint exists
    and starts a new run when it does not (for job scripts restarted as they are, such as
    elastic ``torchrun`` jobs).

    The requested model and training options are compared with the saved ones before
    anything is built: a difference raises :class:`ResumeMismatchError` naming each option
    with its saved and requested value. Free to differ are :data:`RESUME_FREE_OPTIONS`
    (``out_dir``, ``device``, ``stop_after_epoch``, progress, data location and download,
    ``eval_batch_size``), the model's ``backend`` (:data:`RESUME_FREE_MODEL_OPTIONS`), and
    ``epochs`` unless the schedule is cosine (whose shape depends on it). With
    ``cfg.resume_anyway`` the differences are reported and the run goes on: weights,
    optimiser moments, step count, RNG state and history come from the checkpoint, the
    requested options apply from there on (learning rates, weight decay and schedule
    included); a model whose parameters do not fit the saved ones still fails.

    Shapes:
        batches of images ``[B, 28, 28]`` and labels ``[B]``.
    """
    from .distributed import DistributedContext, all_reduce_max, all_reduce_sum

    check_train_config(cfg)
    dist = DistributedContext.from_env(device=cfg.device)
    device = dist.device if dist.enabled else _device(cfg.device)
    out_dir = Path(cfg.out_dir)
    ckpt_path = out_dir / "checkpoint.pt"
    state = _resume_state(cfg, ckpt_path, dist) if cfg.resume or cfg.resume_if_present else None

    torch.manual_seed(cfg.seed)
    model_cfg = cfg.model_config()
    model = ConnectomeClassifier.from_config(model_cfg).to(device)
    net = dist.wrap(model)
    dynamics_params = list(model.dynamics.parameters())
    dyn_ids = {id(p) for p in dynamics_params}
    groups = [
        {"params": [p for p in model.parameters() if id(p) not in dyn_ids]},
        {"params": dynamics_params, "lr": cfg.dynamics_lr if cfg.dynamics_lr is not None else cfg.lr},
    ]
    optimizer = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)

    train_set, test_set = load_dataset(cfg)
    if cfg.batch_size % dist.world_size:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the {dist.world_size} processes")
    # DistributedSampler with one replica is a seeded per-epoch shuffle: resume is exact.
    sampler = DistributedSampler(train_set, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=cfg.seed)
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size // dist.world_size, sampler=sampler)
    if len(train_set) % dist.world_size:
        dist.print(f"warning: {len(train_set)} training samples do not split evenly over {dist.world_size} processes; "
                   "DistributedSampler repeats a few to pad, so results differ slightly from one process")
    # Every test sample exactly once (DistributedSampler would pad with repeats); eval-mode
    # outputs do not depend on batch mates, so the sums over processes are the full test set's.
    test_loader = DataLoader(Subset(test_set, range(dist.rank, len(test_set), dist.world_size)), batch_size=cfg.eval_batch_size)

    lr_factor = LearningRateSchedule(cfg.schedule, cfg.epochs * len(train_loader), cfg.warmup_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    history: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []
    start_epoch = 0
    if state is not None:
        base_lrs = list(schedule.base_lrs)  # the requested learning rates
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            differences = _resume_differences(state, cfg)
            if not differences:
                raise CheckpointError(f"{ckpt_path} does not fit the model it was written with ({reason})") from exc
            raise ResumeMismatchError(ckpt_path, differences, unfit=reason) from exc
        schedule.load_state_dict(state["schedule"])
        # The step count from the checkpoint, the schedule itself as requested (equal to the
        # saved one unless resume_anyway let options differ): LambdaLR's load_state_dict
        # wrote the saved schedule's fields into lr_factor, so build it again.
        lr_factor = LearningRateSchedule(cfg.schedule, cfg.epochs * len(train_loader), cfg.warmup_steps)
        schedule.lr_lambdas = [lr_factor] * len(optimizer.param_groups)
        if cfg.resume_anyway:
            schedule.base_lrs = base_lrs
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["initial_lr"], group["weight_decay"] = base, cfg.weight_decay
                group["lr"] = base * lr_factor(schedule.last_epoch)
            schedule._last_lr = [g["lr"] for g in optimizer.param_groups]
        torch.set_rng_state(state["rng"])
        history, steps, start_epoch = state["history"], state["steps"], state["epoch"] + 1
        dist.print(f"resumed from {ckpt_path} after epoch {state['epoch'] + 1}")

    last_epoch = cfg.epochs if cfg.stop_after_epoch is None else min(cfg.epochs, cfg.stop_after_epoch)
    if state is not None and start_epoch >= last_epoch:
        dist.print(f"nothing to train: {ckpt_path} already holds {start_epoch} epoch(s) and the run ends after "
                   f"epoch {last_epoch}; raise epochs to train further")
    for epoch in range(start_epoch, last_epoch):
        sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        totals = torch.zeros(3, dtype=torch.float64, device=device)
        local: list[torch.Tensor] = []  # per step: loss sum, correct, count, f_evals (this process)
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not (cfg.progress and dist.is_main))
        lrs: list[float] = []  # the learning rate each step ran at
        for images, labels in bar:
            images = random_shift(images, cfg.augment_shift)
            images, labels = images.to(device), labels.to(device)
            lrs.append(optimizer.param_groups[0]["lr"])
            logits = net(images)
            loss = F.cross_entropy(logits, labels)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {float(loss)} at epoch {epoch + 1}, step {len(steps) + len(local) + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            correct = (logits.argmax(1) == labels).sum()
            step_row = torch.stack([loss.detach().double() * labels.numel(), correct.double(), torch.tensor(labels.numel(), dtype=torch.float64, device=device)])
            totals += step_row  # this process's shard: the progress bar only
            local.append(torch.cat([step_row, step_row.new_tensor([model.last_solution.stats.n_f_evals])]))
            bar.set_postfix(loss=f"{totals[0] / totals[2]:.3f}", acc=f"{totals[1] / totals[2]:.3f}", nfe=model.last_solution.stats.n_f_evals)
        # Metrics of the global batches: sums over processes (every process takes the same
        # number of steps); the solver work of a step is the largest of any process, as
        # the step count of a batch is the largest of its samples.
        local_t = torch.stack(local) if local else torch.zeros(0, 4, dtype=torch.float64, device=device)
        per_step = all_reduce_sum(local_t[:, :3]).cpu()
        nfe = all_reduce_max(local_t[:, 3]).cpu()
        for (loss_sum, correct, count), lr in zip(per_step.tolist(), lrs):
            steps.append({"step": len(steps) + 1, "epoch": epoch + 1, "loss": loss_sum / count, "accuracy": correct / count, "lr": lr})
        totals = per_step.sum(0)
        f_evals = float(nfe.sum())
        test = evaluate(model, test_loader, device)
        row = {
            "epoch": epoch + 1,
            "train_loss": float(totals[0] / totals[2]),
            "train_accuracy": float(totals[1] / totals[2]),
            "test_loss": test["loss"],
            "test_accuracy": test["accuracy"],
            "f_evals_per_step": f_evals / max(len(train_loader), 1),
            "seconds": time.perf_counter() - t0,
        }
        history.append(row)
        dist.print(
            f"epoch {epoch + 1}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f} | "
            f"test loss {row['test_loss']:.4f} acc {row['test_accuracy']:.4f} | {row['seconds']:.1f}s"
        )
        if dist.is_main:
            state = {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(), "rng": torch.get_rng_state(),
                "epoch": epoch, "history": history, "steps": steps, "model_config": model.to_config(),
                "train_config": asdict(cfg),
            }
            save_checkpoint(ckpt_path, state)
            write_metrics(out_dir, history, steps)
        dist.barrier()
    dist.close()
    return {"final": history[-1] if history else {}, "history": history, "out_dir": str(out_dir)}


def write_metrics(out_dir: Path, history: list[dict[str, Any]], steps: list[dict[str, Any]]) -> None:
    """``metrics.csv``/``metrics.json`` (per epoch), ``steps.csv`` and ``curves.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in (("metrics.csv", history), ("steps.csv", steps)):
        if rows:
            text = _csv_text(rows)
            atomic_write(out_dir / name, lambda fh, t=text: fh.write(t.encode()))
    atomic_write(out_dir / "metrics.json", lambda fh: fh.write(json.dumps(history, indent=2).encode()))
    plot_curves(out_dir / "curves.png", history, steps)


def _csv_text(rows: list[dict[str, Any]]) -> str:
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def plot_curves(path: Path, history: list[dict[str, Any]], steps: list[dict[str, Any]]) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="tight")
    ax_loss, ax_acc = fig.subplots(1, 2)
    x = [s["step"] for s in steps]
    window = max(1, len(steps) // 50)
    smooth = lambda v: [sum(v[max(0, i - window + 1) : i + 1]) / len(v[max(0, i - window + 1) : i + 1]) for i in range(len(v))]  # noqa: E731
    ax_loss.plot(x, smooth([s["loss"] for s in steps]), label="train (running mean)")
    ax_loss.axhline(math.log(10), color="grey", ls=":", label="chance (ln 10)")
    ax_acc.plot(x, smooth([s["accuracy"] for s in steps]), label="train (running mean)")
    steps_per_epoch = {s["epoch"]: s["step"] for s in steps}
    ex = [steps_per_epoch.get(h["epoch"], 0) for h in history]
    ax_loss.plot(ex, [h["test_loss"] for h in history], "o-", label="test")
    ax_acc.plot(ex, [h["test_accuracy"] for h in history], "o-", label="test")
    ax_acc.axhline(0.1, color="grey", ls=":", label="chance")
    ax_loss.set(xlabel="step", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="step", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.legend()
        ax.grid(alpha=0.3)
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=100))


# -- ablations -------------------------------------------------------------------------------
#: The variants :func:`ablate` trains: the connectome itself, a degree-preserving shuffle of
#: it (seeded by the run's seed), and the connectome without recurrent connections.
ABLATIONS = ("connectome", "shuffled", "no_recurrence")


def ablate(cfg: TrainConfig, variants: tuple[str, ...] = ABLATIONS) -> list[dict[str, Any]]:
    """Train the same model on the real connectome, a degree-preserving shuffle of it, and
    without recurrent connections; write ``ablation.md``/``ablation.json``/``ablation.png``.

    Shapes:
        as :func:`train`.
    """
    rows = []
    for name in variants:
        if name not in ABLATIONS:
            raise ValueError(f"unknown ablation {name!r}; choose from {', '.join(ABLATIONS)}")
        model = dict(cfg.model)
        model["connectome"] = dict(cfg.model_config()["connectome"])
        if name == "shuffled":
            model["connectome"]["shuffle"] = cfg.seed
        if name == "no_recurrence":
            model["recurrent"] = False
        sub = TrainConfig(**{**asdict(cfg), "model": model, "out_dir": str(Path(cfg.out_dir) / name)})
        result = train(sub)
        rows.append({"variant": name, **result["final"]})
    out = Path(cfg.out_dir)
    table = ["| variant | test accuracy | test loss | train accuracy | seconds |", "|---|---|---|---|---|"]
    table += [
        f"| {r['variant']} | {r['test_accuracy']:.4f} | {r['test_loss']:.4f} | {r['train_accuracy']:.4f} | {r['seconds']:.0f} |"
        for r in rows
    ]
    text = "\n".join(table) + "\n"
    atomic_write(out / "ablation.md", lambda fh: fh.write(text.encode()))
    atomic_write(out / "ablation.json", lambda fh: fh.write(json.dumps(rows, indent=2).encode()))
    _plot_ablation(out / "ablation.png", rows)
    print(text)
    return rows


def _plot_ablation(path: Path, rows: list[dict[str, Any]]) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.5), layout="tight")
    ax = fig.add_subplot(1, 1, 1)
    ax.bar([r["variant"] for r in rows], [r["test_accuracy"] for r in rows], color=["C0", "C1", "C2"][: len(rows)])
    ax.axhline(0.1, color="grey", ls=":", label="chance")
    ax.set(ylabel="test accuracy", ylim=(0, 1), title="connectome ablations")
    for i, r in enumerate(rows):
        ax.text(i, r["test_accuracy"] + 0.02, f"{r['test_accuracy']:.3f}", ha="center")
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=100))
