"""The ``graphode`` command line.

``graphode train``   train a connectome model (defaults: MNIST through the fly visual system)
``graphode ablate``  the same run on the real connectome, a degree-preserving shuffle, and
                     without recurrent connections, side by side
``graphode info``    sizes and cell types of a connectome

Exit status: 0 on success; 2 for a usage error (a bad option value, a missing or malformed
input file, a checkpoint that cannot be resumed), reported as one line
``graphode: error: ...`` on stderr; 1 when a run fails (the ODE solve or the loss broke
down), also one line. ``--debug`` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import fields
from typing import Any, Callable, NoReturn

from .connectome import build_connectome, connectome_spec
from .models import DEFAULT_CONFIG
from .training import CheckpointError, DatasetUnavailableError, ResumeMismatchError, TrainConfig

__all__ = ["main", "build_parser", "train_config_from_args"]

EPILOG = """examples:
  graphode train                                   # CPU default: fly visual system (extent 4), MNIST
  graphode train --extent 15 --device cuda --batch-size 256 --train-limit 0 --epochs 6 --schedule cosine
  graphode train --connectome edges.csv --input random --readout linear
  graphode train --out-dir runs/a --epochs 4 --resume  # continue runs/a with the options it was started with
  graphode train --out-dir runs/a --epochs 4 --resume --resume-anyway --lr 0.005  # ... with another learning rate
  graphode ablate --train-limit 3000
  graphode info --extent 15
"""

RESUME_HELP = (
    "continue from OUT_DIR/checkpoint.pt, which must exist; the options must be those the run was started with "
    "(else an error lists each difference), except --out-dir, --device, --threads, --stop-after-epoch, "
    "--no-progress, --data-root, --download and --backend, and --epochs unless --schedule is cosine"
)


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line: ``graphode: error: ...``, status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"graphode: error: {_one_line(message)} (see '{self.prog} --help')\n")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _number(kind: type, *, low: float | None = None, strict: bool = False, zero_is_none: bool = False,
            high: float | None = None) -> Callable[[str], Any]:
    """An argparse ``type`` parsing ``kind`` (int, or a finite float) within ``[low, high)``
    (``(low, high)`` when ``strict``); ``zero_is_none`` turns 0 into None. A bad value is an
    error naming the value and the allowed range (argparse adds the option)."""
    what = "an integer" if kind is int else "a number"
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if strict else '>='} {low}")
    if high is not None:
        bounds.append(f"< {high}")
    allowed = what + (" " + " and ".join(bounds) if bounds else "") + (" (0 = all)" if zero_is_none else "")

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}")
        too_low = low is not None and (value <= low if strict else value < low)
        if too_low or (high is not None and value >= high):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}")
        return None if zero_is_none and value == 0 else value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


_COUNT = _number(int, low=1)  # 1, 2, ...
_NONNEGATIVE_INT = _number(int, low=0)
_POSITIVE = _number(float, low=0, strict=True)
_NONNEGATIVE = _number(float, low=0)
_LIMIT = _number(int, low=0, zero_is_none=True)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connectome and model")
    g.add_argument("--connectome", default="fly_visual_system",
                   help="'fly_visual_system' (built in), 'random', or an edge-list file (CSV/TSV/Parquet/NPZ/PT)")
    g.add_argument("--extent", type=_NONNEGATIVE_INT, default=4, help="fly visual system lattice radius in columns (15 = full, 45,669 neurons)")
    g.add_argument("--input", choices=["retina", "random"], default=DEFAULT_CONFIG["input"],
                   help="image onto photoreceptors (retina) or each pixel onto a random neuron (the torch-biopl tutorial's mapping)")
    g.add_argument("--readout", choices=["pooled", "linear"], default=DEFAULT_CONFIG["readout"])
    g.add_argument("--aggr", choices=["sum", "mean", "max", "attention"], default=DEFAULT_CONFIG["aggr"], help="pooling of the readout")
    g.add_argument("--activation", default=DEFAULT_CONFIG["activation"], help="relu, softplus, tanh, sigmoid")
    g.add_argument("--weights", choices=["per_edge", "per_edge_type", "fixed"], default=DEFAULT_CONFIG["weights"],
                   help="learnable synapses: one per connection, one per cell-type pair, or none")
    g.add_argument("--backend", default=DEFAULT_CONFIG["backend"], help="auto, pyg, torch_scatter, sparse_tensor, csr, triton (CUDA)")
    g.add_argument("--t-end", type=_POSITIVE, default=DEFAULT_CONFIG["t_end"], help="simulated time")
    g.add_argument("--tau", type=_POSITIVE, default=DEFAULT_CONFIG["tau"], help="initial time constant")
    g.add_argument("--hidden", type=_COUNT, default=DEFAULT_CONFIG["hidden"], help="readout width")
    g.add_argument("--num-records", type=_COUNT, default=DEFAULT_CONFIG["num_records"], help="activity snapshots read out")
    s = p.add_argument_group("solver")
    s.add_argument("--method", choices=["dopri5", "tsit5", "euler", "heun"], default=DEFAULT_CONFIG["method"])
    s.add_argument("--rtol", type=_POSITIVE, default=DEFAULT_CONFIG["rtol"], help="relative tolerance (> 0)")
    s.add_argument("--atol", type=_POSITIVE, default=DEFAULT_CONFIG["atol"], help="absolute tolerance (> 0)")
    s.add_argument("--dt0", type=_POSITIVE, default=None, help="initial step (adaptive) or step (euler/heun)")
    s.add_argument("--max-steps", type=_COUNT, default=DEFAULT_CONFIG["max_steps"], help="solver steps allowed per solve")
    s.add_argument("--gradient", choices=["autodiff", "checkpoint", "adjoint"], default=DEFAULT_CONFIG["gradient"])
    s.add_argument("--checkpoints", type=_COUNT, default=DEFAULT_CONFIG["checkpoints"], help="segments for checkpoint/adjoint")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    t = p.add_argument_group("training")
    d = TrainConfig()  # the defaults live there, as the model's live in DEFAULT_CONFIG
    t.add_argument("--dataset", choices=["mnist", "synthetic"], default=d.dataset)
    t.add_argument("--data-root", default=d.data_root, help="torchvision MNIST folder (with --download when online)")
    t.add_argument("--download", action="store_true", help="let torchvision download MNIST (needs internet)")
    t.add_argument("--train-limit", type=_LIMIT, default=d.train_limit, help="training images (0 = all 60,000)")
    t.add_argument("--test-limit", type=_LIMIT, default=d.test_limit, help="test images (default or 0: all 10,000)")
    t.add_argument("--batch-size", type=_COUNT, default=d.batch_size, help="global batch size (split across processes)")
    t.add_argument("--epochs", type=_COUNT, default=d.epochs, help="epochs in all (a resumed run counts the saved ones)")
    t.add_argument("--lr", type=_POSITIVE, default=d.lr, help="learning rate (> 0)")
    t.add_argument("--schedule", choices=["constant", "cosine"], default=d.schedule,
                   help="learning rate per step: constant, or cosine decay to 0 over all epochs")
    t.add_argument("--warmup-steps", type=_NONNEGATIVE_INT, default=d.warmup_steps, help="linear learning-rate warm-up steps")
    t.add_argument("--augment-shift", type=_NONNEGATIVE_INT, default=d.augment_shift, help="shift training images randomly by up to this many pixels")
    t.add_argument("--weight-decay", type=_NONNEGATIVE, default=d.weight_decay, help="Adam weight decay (>= 0)")
    t.add_argument("--dynamics-lr", type=_NONNEGATIVE, default=d.dynamics_lr,
                   help="learning rate of synapses, tau and bias (default: --lr; 0 freezes them)")
    t.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:1 …")
    t.add_argument("--seed", type=_number(int, low=0, high=2**63), default=d.seed)
    t.add_argument("--out-dir", default=d.out_dir, help="checkpoints, metrics and plots go here")
    t.add_argument("--resume", action="store_true", help=RESUME_HELP)
    t.add_argument("--resume-if-present", action="store_true",
                   help="as --resume when OUT_DIR/checkpoint.pt exists, else start a new run (for job scripts "
                        "restarted unchanged, e.g. elastic torchrun jobs)")
    t.add_argument("--resume-anyway", action="store_true",
                   help="with --resume or --resume-if-present: go on although options differ from the "
                        "checkpoint's (each difference is printed); the requested values apply from the checkpoint on")
    t.add_argument("--threads", type=_COUNT, default=None,
                   help="torch CPU threads (default: torch's choice; 1-2 on a busy shared machine)")
    t.add_argument("--stop-after-epoch", type=_COUNT, default=d.stop_after_epoch,
                   help="end after this epoch, checkpoint written (for time-limited jobs; --resume goes on)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_debug(p: argparse.ArgumentParser, default: Any) -> None:
    p.add_argument("--debug", action="store_true", default=default,
                   help="on an error, show the full traceback instead of one line")


def build_parser() -> argparse.ArgumentParser:
    """The ``graphode`` argument parser (commands ``train``, ``ablate``, ``info``).

    Numeric options are range-checked while parsing: a bad value is a usage error naming
    the option, the value and what is allowed.
    """
    parser = _Parser(
        prog="graphode",
        description="Connectome-constrained neural ODEs: simulate and train neuron dynamics on a connectome graph.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    _add_debug(parser, False)
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
    p_info.add_argument("--extent", type=_NONNEGATIVE_INT, default=15)
    for p in (p_train, p_ablate, p_info):  # `graphode --debug train` and `graphode train --debug` both work
        _add_debug(p, argparse.SUPPRESS)
    return parser


def _connectome_spec(args: argparse.Namespace) -> dict:
    spec = connectome_spec(args.connectome)
    if spec.get("name") == "fly_visual_system":
        spec["extent"] = args.extent
    elif spec.get("name") == "random":
        spec.update(num_nodes=5000, num_edges=100_000)
    return spec


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`~graphode.training.TrainConfig` of parsed ``train``/``ablate`` arguments."""
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


# Model config keys set by an option of their own (the connectome by --connectome/--extent).
_MODEL_OPTIONS = {
    "input", "readout", "aggr", "activation", "weights", "backend", "t_end", "tau", "hidden", "num_records", "method",
    "rtol", "atol", "dt0", "max_steps", "gradient", "checkpoints",
}


def _option(name: str) -> str:
    """The command-line spelling of a TrainConfig field or ``model.KEY``."""
    if name.startswith("model."):
        key = name[len("model."):]
        if key == "connectome":
            return "--connectome/--extent"
        return "--" + key.replace("_", "-") if key in _MODEL_OPTIONS else f"model option {key!r}"
    if name == "progress":
        return "--no-progress"
    return "--" + name.replace("_", "-")


def _resume_message(exc: ResumeMismatchError) -> str:
    diffs = "; ".join(f"{_option(n)}: saved {a!r}, requested {b!r}" for n, a, b in exc.differences)
    head = f"cannot resume from {exc.path}: the run was started with other options ({diffs})"
    if exc.unfit is not None:
        return (f"{head}; the saved parameters do not fit the requested model ({exc.unfit}), even with "
                "--resume-anyway: resume with the saved model options, or use another --out-dir for a new run")
    return (f"{head}; resume with the saved values, use another --out-dir for a new run, or add --resume-anyway "
            "to go on with the requested ones")


# Errors of the input (options, files, checkpoints): status 2. Runs that break down: status 1.
_USAGE_ERRORS = (ValueError, OSError, CheckpointError, DatasetUnavailableError)


def _run_errors() -> tuple[type[BaseException], ...]:
    from .solvers import SolverError

    return (SolverError, FloatingPointError)


def _fail(parser: argparse.ArgumentParser, message: str, status: int) -> int:
    print(f"{parser.prog}: error: {_one_line(message)}", file=sys.stderr, flush=True)
    return status


def main(argv: list[str] | None = None) -> int:
    """Run the ``graphode`` command line on ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    A usage error found while parsing (unknown option, bad value) exits through
    ``SystemExit(2)`` as argparse does; errors found later return 2 (bad input) or 1 (the
    run broke down), each after one line on stderr. With ``--debug`` they propagate with
    their traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return _run(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        return _fail(parser, "interrupted", 130)
    except ResumeMismatchError as exc:
        if args.debug:
            raise
        return _fail(parser, _resume_message(exc), 2)
    except _USAGE_ERRORS as exc:
        if args.debug:
            raise
        return _fail(parser, str(exc) or type(exc).__name__, 2)
    except _run_errors() as exc:
        if args.debug:
            raise
        return _fail(parser, f"{exc} (run with --debug for the traceback)", 1)


def _run(args: argparse.Namespace) -> int:
    if args.command == "info":
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
    raise ValueError(f"unknown command {args.command!r}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
