"""The ``graphode`` command line.

``graphode train``   train a connectome model (defaults: MNIST through the fly visual system)
``graphode ablate``  the same run on the real connectome, a degree-preserving shuffle, and
                     without recurrent connections, side by side
``graphode info``    sizes and cell types of a connectome
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields

from .models import DEFAULT_CONFIG
from .training import TrainConfig

__all__ = ["main", "build_parser"]

EPILOG = """examples:
  graphode train                                   # CPU default: fly visual system (extent 4), MNIST
  graphode train --extent 15 --device cuda --batch-size 256 --train-limit 0 --epochs 6 --schedule cosine
  graphode train --connectome edges.csv --input random --readout linear
  graphode ablate --train-limit 3000
  graphode info --extent 15
"""


def _none_or_int(text: str) -> int | None:
    value = int(text)
    return None if value <= 0 else value


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connectome and model")
    g.add_argument("--connectome", default="fly_visual_system",
                   help="'fly_visual_system' (built in), 'random', or an edge-list file (CSV/TSV/Parquet/NPZ/PT)")
    g.add_argument("--extent", type=int, default=4, help="fly visual system lattice radius in columns (15 = full, 45,669 neurons)")
    g.add_argument("--input", choices=["retina", "random"], default=DEFAULT_CONFIG["input"],
                   help="image onto photoreceptors (retina) or each pixel onto a random neuron (the seed's mapping)")
    g.add_argument("--readout", choices=["pooled", "linear"], default=DEFAULT_CONFIG["readout"])
    g.add_argument("--aggr", choices=["sum", "mean", "max", "attention"], default=DEFAULT_CONFIG["aggr"], help="pooling of the readout")
    g.add_argument("--activation", default=DEFAULT_CONFIG["activation"], help="relu, softplus, tanh, sigmoid")
    g.add_argument("--weights", choices=["per_edge", "per_edge_type", "fixed"], default=DEFAULT_CONFIG["weights"],
                   help="learnable synapses: one per connection, one per cell-type pair, or none")
    g.add_argument("--backend", default=DEFAULT_CONFIG["backend"], help="auto, pyg, torch_scatter, sparse_tensor, csr, triton (CUDA)")
    g.add_argument("--t-end", type=float, default=DEFAULT_CONFIG["t_end"], help="simulated time")
    g.add_argument("--tau", type=float, default=DEFAULT_CONFIG["tau"], help="initial time constant")
    g.add_argument("--hidden", type=int, default=DEFAULT_CONFIG["hidden"], help="readout width")
    g.add_argument("--num-records", type=int, default=DEFAULT_CONFIG["num_records"], help="activity snapshots read out")
    s = p.add_argument_group("solver")
    s.add_argument("--method", choices=["dopri5", "tsit5", "euler", "heun"], default=DEFAULT_CONFIG["method"])
    s.add_argument("--rtol", type=float, default=DEFAULT_CONFIG["rtol"])
    s.add_argument("--atol", type=float, default=DEFAULT_CONFIG["atol"])
    s.add_argument("--dt0", type=float, default=None, help="initial step (adaptive) or step (euler/heun)")
    s.add_argument("--max-steps", type=int, default=DEFAULT_CONFIG["max_steps"])
    s.add_argument("--gradient", choices=["autodiff", "checkpoint", "adjoint"], default=DEFAULT_CONFIG["gradient"])
    s.add_argument("--checkpoints", type=int, default=DEFAULT_CONFIG["checkpoints"], help="segments for checkpoint/adjoint")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    t = p.add_argument_group("training")
    d = TrainConfig()  # the defaults live there, as the model's live in DEFAULT_CONFIG
    t.add_argument("--dataset", choices=["mnist", "synthetic"], default=d.dataset)
    t.add_argument("--data-root", default=d.data_root, help="torchvision MNIST folder (with --download when online)")
    t.add_argument("--download", action="store_true", help="let torchvision download MNIST (needs internet)")
    t.add_argument("--train-limit", type=_none_or_int, default=d.train_limit, help="training images (0 = all 60,000)")
    t.add_argument("--test-limit", type=_none_or_int, default=d.test_limit, help="test images (default or 0: all 10,000)")
    t.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch size (split across processes)")
    t.add_argument("--epochs", type=int, default=d.epochs)
    t.add_argument("--lr", type=float, default=d.lr)
    t.add_argument("--schedule", choices=["constant", "cosine"], default=d.schedule,
                   help="learning rate per step: constant, or cosine decay to 0 over all epochs")
    t.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="linear learning-rate warm-up steps")
    t.add_argument("--augment-shift", type=int, default=d.augment_shift, help="shift training images randomly by up to this many pixels")
    t.add_argument("--weight-decay", type=float, default=d.weight_decay)
    t.add_argument("--dynamics-lr", type=float, default=d.dynamics_lr, help="learning rate of synapses, tau and bias (default: --lr)")
    t.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:1 …")
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--out-dir", default=d.out_dir, help="checkpoints, metrics and plots go here")
    t.add_argument("--resume", action="store_true", help="continue from OUT_DIR/checkpoint.pt")
    t.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; 1-2 on a busy shared machine)")
    t.add_argument("--stop-after-epoch", type=int, default=d.stop_after_epoch,
                   help="end after this epoch, checkpoint written (for time-limited jobs; --resume goes on)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graphode",
        description="Connectome-constrained neural ODEs: simulate and train neuron dynamics on a connectome graph.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p_train = sub.add_parser("train", help="train a model (default: MNIST through the fly visual system, on CPU)",
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_model_args(p_train)
    _add_train_args(p_train)
    p_ablate = sub.add_parser("ablate", help="real connectome vs shuffled vs no recurrence, side by side",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_model_args(p_ablate)
    _add_train_args(p_ablate)
    p_info = sub.add_parser("info", help="print a connectome's size and cell types")
    p_info.add_argument("--connectome", default="fly_visual_system")
    p_info.add_argument("--extent", type=int, default=15)
    return parser


def _connectome_spec(args: argparse.Namespace) -> dict:
    if args.connectome in ("fly_visual_system", "fly", "flyvis"):
        return {"name": "fly_visual_system", "extent": args.extent}
    if args.connectome == "random":
        return {"name": "random", "num_nodes": 5000, "num_edges": 100_000}
    return {"path": args.connectome}


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    model = {
        "connectome": _connectome_spec(args), "input": args.input, "readout": args.readout, "aggr": args.aggr,
        "activation": args.activation, "weights": args.weights, "backend": args.backend, "t_end": args.t_end,
        "tau": args.tau, "hidden": args.hidden, "num_records": args.num_records, "method": args.method, "rtol": args.rtol,
        "atol": args.atol, "dt0": args.dt0, "max_steps": args.max_steps, "gradient": args.gradient,
        "checkpoints": args.checkpoints,
    }
    names = {f.name for f in fields(TrainConfig)}
    kw = {k: v for k, v in vars(args).items() if k in names and k != "model"}
    return TrainConfig(model=model, progress=not args.no_progress, **kw)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "info":
        from .models import build_connectome

        data = build_connectome(_connectome_spec(args))
        info = {
            "neurons": int(data.num_nodes), "connections": int(data.num_edges),
            "cell_types": len(data.cell_type_names) if getattr(data, "cell_type_names", None) else None,
            "inputs": int(data.input_mask.sum()) if getattr(data, "input_mask", None) is not None else None,
            "outputs": int(data.output_mask.sum()) if getattr(data, "output_mask", None) is not None else None,
            "inhibitory_fraction": round(float((data.sign < 0).float().mean()), 4),
        }
        print(json.dumps(info, indent=2))
        return 0
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    cfg = train_config_from_args(args)
    if args.command == "train":
        from .training import train

        result = train(cfg)
        final = result["final"]
        if os.environ.get("RANK", "0") == "0":  # under torchrun, one line for the whole job
            print(
                f"done: train accuracy {final['train_accuracy']:.4f}, test accuracy {final['test_accuracy']:.4f} "
                f"({final['seconds']:.0f}s for the last epoch); metrics and plots in {result['out_dir']}"
            )
        return 0
    if args.command == "ablate":
        from .training import ablate

        ablate(cfg)
        return 0
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
