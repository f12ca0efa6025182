"""Training loop: data, optimisation, evaluation, checkpoints, metrics and plots.

:func:`train` runs a :class:`~graphode.models.ConnectomeClassifier` on an image dataset and
writes into ``out_dir``:

``checkpoint.pt``
    model, optimiser, RNG states and history after every epoch, written atomically
    (temporary file + ``os.replace``); ``resume=True`` continues exactly where it stopped
    (the data order of each epoch depends only on the seed and the epoch). Bit-exact
    resumption needs a fixed ``backend``: ``"auto"`` measures again in the new process and
    may choose another backend, equal up to floating-point rounding.
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
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, Subset, TensorDataset
from tqdm.auto import tqdm

from ._atomic import atomic_write
from .datasets import random_shift
from .models import DEFAULT_CONFIG, ConnectomeClassifier

__all__ = ["TrainConfig", "LearningRateSchedule", "train", "evaluate", "save_checkpoint", "load_checkpoint", "ablate"]


@dataclass
class TrainConfig:
    """Everything a training run needs; ``model`` holds :data:`~graphode.models.DEFAULT_CONFIG` overrides."""

    model: dict[str, Any] = field(default_factory=dict)
    dataset: str = "mnist"  # mnist | synthetic
    train_limit: int | None = 36000
    test_limit: int | None = None
    batch_size: int = 64
    eval_batch_size: int = 500
    epochs: int = 1
    lr: float = 1e-2
    dynamics_lr: float | None = None  # learning rate of synapses, tau and bias (default: lr)
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | cosine: learning rate per step
    warmup_steps: int = 0  # linear warm-up from 0 before the schedule
    augment_shift: int = 0  # random translation of training images by up to this many pixels
    device: str = "auto"
    seed: int = 0
    out_dir: str = "runs/graphode"
    resume: bool = False
    stop_after_epoch: int | None = None  # end this process after that epoch (a later resume goes on)
    data_root: str | None = None
    download: bool = False
    progress: bool = True

    def model_config(self) -> dict[str, Any]:
        cfg = dict(DEFAULT_CONFIG)
        cfg.update(self.model)
        return cfg


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_dataset(cfg: TrainConfig) -> tuple[TensorDataset, TensorDataset]:
    """``(train, test)`` datasets of images ``[n, 28, 28]`` and labels ``[n]``."""
    if cfg.dataset == "mnist":
        from .datasets import load_mnist

        kw = dict(root=cfg.data_root, download=cfg.download)
        xtr, ytr = load_mnist("train", limit=cfg.train_limit, **kw)
        xte, yte = load_mnist("test", limit=cfg.test_limit, **kw)
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
def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda fh: torch.save(state, fh))


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file
        raise RuntimeError(f"cannot read checkpoint {path}: {exc}") from exc


# -- evaluation -----------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: ConnectomeClassifier, loader: DataLoader, device: torch.device) -> dict[str, float]:
    """Mean cross-entropy and accuracy over ``loader`` (summed across processes when distributed)."""
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
def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train, evaluate every epoch, checkpoint; returns the final metrics and history."""
    from .distributed import DistributedContext, all_reduce_max, all_reduce_sum

    # Checked before the model and data are built, so a typo fails at once.
    if cfg.stop_after_epoch is not None and cfg.stop_after_epoch < 1:
        raise ValueError(f"stop_after_epoch must be >= 1, got {cfg.stop_after_epoch}")
    if cfg.augment_shift < 0:
        raise ValueError(f"augment_shift must be >= 0, got {cfg.augment_shift}")
    LearningRateSchedule(cfg.schedule, 1, cfg.warmup_steps)  # raises on an unknown schedule or negative warm-up

    dist = DistributedContext.from_env(device=cfg.device)
    device = dist.device if dist.enabled else _device(cfg.device)
    out_dir = Path(cfg.out_dir)
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

    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, LearningRateSchedule(cfg.schedule, cfg.epochs * len(train_loader), cfg.warmup_steps)
    )
    history: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []
    start_epoch = 0
    ckpt_path = out_dir / "checkpoint.pt"
    # Rank 0 reads the checkpoint and sends it to the others: no shared file system needed.
    state = load_checkpoint(ckpt_path) if cfg.resume and dist.is_main and ckpt_path.exists() else None
    state = dist.broadcast(state) if cfg.resume else None
    if state is not None:
        # Keys added to DEFAULT_CONFIG since the checkpoint was written take their defaults.
        if {**DEFAULT_CONFIG, **state["model_config"]} != model.to_config():
            raise ValueError(f"{ckpt_path} was written by a different model config; use another out_dir")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if "schedule" in state:  # checkpoints from before schedules existed ran at a constant rate
            schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["rng"])
        history, steps, start_epoch = state["history"], state["steps"], state["epoch"] + 1
        dist.print(f"resumed from {ckpt_path} after epoch {state['epoch'] + 1}")

    last_epoch = cfg.epochs if cfg.stop_after_epoch is None else min(cfg.epochs, cfg.stop_after_epoch)
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
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
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=100))
    plt.close(fig)


# -- ablations -------------------------------------------------------------------------------
ABLATIONS = {
    "connectome": {},
    "shuffled": {"shuffle": True},
    "no_recurrence": {"recurrent": False},
}


def ablate(cfg: TrainConfig, variants: tuple[str, ...] = tuple(ABLATIONS)) -> list[dict[str, Any]]:
    """Train the same model on the real connectome, a degree-preserving shuffle of it, and
    without recurrent connections; write ``ablation.md``/``ablation.json``/``ablation.png``."""
    rows = []
    for name in variants:
        if name not in ABLATIONS:
            raise ValueError(f"unknown ablation {name!r}; choose from {sorted(ABLATIONS)}")
        model = dict(cfg.model)
        conn = dict(cfg.model_config()["connectome"])
        if ABLATIONS[name].get("shuffle"):
            conn["shuffle"] = cfg.seed
        model["connectome"] = conn
        model["recurrent"] = ABLATIONS[name].get("recurrent", model.get("recurrent", True))
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar([r["variant"] for r in rows], [r["test_accuracy"] for r in rows], color=["C0", "C1", "C2"][: len(rows)])
    ax.axhline(0.1, color="grey", ls=":", label="chance")
    ax.set(ylabel="test accuracy", ylim=(0, 1), title="connectome ablations")
    for i, r in enumerate(rows):
        ax.text(i, r["test_accuracy"] + 0.02, f"{r['test_accuracy']:.3f}", ha="center")
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=100))
    plt.close(fig)
