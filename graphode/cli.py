"""The ``graphode`` command line.

``graphode train``   train a connectome model (defaults: MNIST through the fly visual system)
``graphode ablate``  the same run on the real connectome, a degree-preserving shuffle, and
                     without recurrent connections, side by side
``graphode info``    sizes and cell types of a connectome

``--connectome FILE`` trains on an edge list of your own (CSV/TSV/Parquet/NPZ/PT; see
:func:`graphode.connectome.load_connectome`), with ``--nodes FILE`` for a node table (cell
types, transmitters), ``--nt-sign``/``--default-sign`` for the signs, ``--normalize`` for the
synapse magnitudes (``in_syn`` by default) and ``--input-types``/``--output-types`` for the
neurons the image drives and the readout reads. These options are saved in the model config
(``{"path": FILE, **load_connectome options}``), so ``--resume`` and a saved model rebuild the
same graph. For a file the model's defaults follow what it holds: the random input (onto the
input neurons, or all neurons without ``--input-types``); with cell types the pooled readout
over the output neurons (all without ``--output-types``) and one weight per cell-type pair;
without cell types the linear readout and one weight per connection.

Examples (from ``graphode --help``; a file named ``edges.csv`` with columns ``pre,post,syn_count``
and ``nodes.csv`` with ``id,cell_type,nt_type``)::

    graphode train --connectome edges.csv --input random --readout linear
    graphode train --connectome edges.csv --nodes nodes.csv --nt-sign ACH=+1 --nt-sign GABA=-1 --output-types T4,T5
    graphode info --connectome edges.csv --nodes nodes.csv

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
import warnings
from dataclasses import fields
from typing import Any, Callable, NoReturn

from .connectome import build_connectome, connectome_spec
from .models import DEFAULT_CONFIG
from .training import CheckpointError, DatasetUnavailableError, ResumeMismatchError, TrainConfig

__all__ = ["main", "build_parser", "train_config_from_args"]

TRAIN_EXAMPLES = """examples:
  graphode train                                   # CPU default: fly visual system (extent 4), MNIST
  graphode train --extent 15 --device cuda --batch-size 256 --train-limit 0 --epochs 6 --schedule cosine
  graphode train --connectome edges.csv --input random --readout linear  # your edge list (pre,post,syn_count)
  graphode train --connectome edges.csv --weights per_edge --default-sign +1  # one weight per connection
  graphode train --connectome edges.csv --reorder rcm --input random --readout linear  # connected neurons close
  graphode train --connectome edges.csv --nodes nodes.csv --nt-sign ACH=+1 --nt-sign GABA=-1 --output-types T4,T5
  graphode train --connectome edges.csv --nodes nodes.csv --input-types R1 --readout linear --weights fixed
  graphode train --out-dir runs/a --epochs 4 --stop-after-epoch 2  # a run to continue:
  graphode train --out-dir runs/a --epochs 4 --resume  # continue runs/a with the options it was started with
  graphode train --out-dir runs/a --epochs 6 --resume --resume-anyway --lr 0.005  # ... longer, another learning rate
"""
EPILOG = TRAIN_EXAMPLES + """  graphode ablate --train-limit 3000
  graphode info --extent 15
  graphode info --connectome edges.csv --nodes nodes.csv
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


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown (except None: those options say what they default to), examples kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if action.default is None else super()._get_help_string(action)


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


def _sign(text: str) -> int:
    """``+1``/``1``/``-1`` as an int (argparse ``type``)."""
    if text.strip() in ("+1", "1", "+1.0", "1.0"):
        return 1
    if text.strip() in ("-1", "-1.0"):
        return -1
    raise argparse.ArgumentTypeError(f"must be +1 or -1, got {text!r}")


def _nt_sign(text: str) -> tuple[str, int]:
    """``NAME=+1`` / ``NAME=-1`` as ``(NAME, sign)`` (argparse ``type``)."""
    name, eq, value = text.partition("=")
    if not eq or not name.strip():
        raise argparse.ArgumentTypeError(f"must be NAME=+1 or NAME=-1 (a transmitter and its sign), got {text!r}")
    try:
        return name.strip(), _sign(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be NAME=+1 or NAME=-1 (a transmitter and its sign), got {text!r}") from None


def _names(text: str) -> str | list[str]:
    """Comma-separated cell-type names or patterns, or one name (which may be a boolean node-table column)."""
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"must be cell type names separated by commas (or a boolean node-table "
                                         f"column), got {text!r}")
    return items[0] if len(items) == 1 else items


# Options of a connectome file (load_connectome's): argparse dest -> spelling.
_FILE_OPTIONS = {
    "nodes": "--nodes", "pre": "--pre", "post": "--post", "weight": "--weight", "nt_sign": "--nt-sign",
    "default_sign": "--default-sign", "normalize": "--normalize", "duplicates": "--duplicates",
    "input_types": "--input-types", "output_types": "--output-types",
}


def _add_connectome_args(p: argparse.ArgumentParser, extent_help: str) -> None:
    g = p.add_argument_group("connectome")
    g.add_argument("--connectome", default="fly_visual_system",
                   help="'fly_visual_system' (built in), 'random', or an edge-list file (CSV/TSV/Parquet/NPZ/PT)")
    g.add_argument("--extent", type=_NONNEGATIVE_INT, default=None, help=extent_help)
    g.add_argument("--reorder", choices=["rcm", "cell_type"], default=None,
                   help="renumber the neurons: rcm keeps connected neurons close (faster message passing on a GPU "
                        "for exports numbered by ids), cell_type groups them by type")
    f = p.add_argument_group("connectome file (--connectome FILE only)")
    f.add_argument("--nodes", metavar="FILE", help="node table: an id column, optionally cell types and transmitters")
    f.add_argument("--pre", metavar="COLUMN", help="presynaptic id column of the edge list (default: detected)")
    f.add_argument("--post", metavar="COLUMN", help="postsynaptic id column (default: detected)")
    f.add_argument("--weight", metavar="COLUMN", help="synapse count column (default: detected; none: 1 per row)")
    f.add_argument("--nt-sign", type=_nt_sign, action="append", metavar="NAME=+1|-1",
                   help="sign of a neurotransmitter, over the built-in ones (ACh +1, GABA -1, glutamate -1); repeatable")
    f.add_argument("--default-sign", type=_sign, metavar="{+1,-1}",
                   help="sign of connections with no other sign (unknown or no transmitter)")
    f.add_argument("--normalize", choices=["in_syn", "in_degree", "none"], default=None,
                   help="synapse magnitudes: count / input synapses of the target (in_syn, the default for a file), "
                        "count / inputs of the target (in_degree), or raw counts (none)")
    f.add_argument("--duplicates", choices=["error", "sum", "max", "first"], default=None,
                   help="what repeated (pre, post) rows mean (default: an error showing an example)")
    f.add_argument("--input-types", type=_names, metavar="TYPES",
                   help="input neurons: cell types (comma separated, glob patterns allowed) or a boolean node-table "
                        "column; the random input drives only these (default: all neurons)")
    f.add_argument("--output-types", type=_names, metavar="TYPES",
                   help="output neurons, read by the pooled readout: cell types or a boolean node-table column "
                        "(default: all neurons)")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    _add_connectome_args(p, "fly visual system lattice radius in columns (default 4; 15 = full, 45,669 neurons)")
    g = p.add_argument_group("model")
    g.add_argument("--input", choices=["retina", "random"], default=None,
                   help="image onto photoreceptors (retina; default for the fly visual system) or each pixel onto a "
                        "random neuron (the torch-biopl tutorial's mapping; default for a file)")
    g.add_argument("--readout", choices=["pooled", "linear"], default=None,
                   help="pooled per cell type over the output neurons (default; needs cell types, so for a file "
                        "--nodes with a cell-type column) or linear over every neuron (default for a file without "
                        "cell types)")
    g.add_argument("--aggr", choices=["sum", "mean", "max", "attention"], default=DEFAULT_CONFIG["aggr"],
                   help="pooling of the readout (for a file, sum and mean also encode each cell type's mean activity)")
    g.add_argument("--activation", default=DEFAULT_CONFIG["activation"], help="relu, softplus, tanh, sigmoid")
    g.add_argument("--weights", choices=["per_edge", "per_edge_type", "fixed"], default=None,
                   help="learnable synapses: one per connection, one per cell-type pair (default; needs cell types), "
                        "or none; for a file without cell types the default is per_edge")
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
                             formatter_class=_Formatter, epilog=TRAIN_EXAMPLES)
    _add_model_args(p_train)
    _add_train_args(p_train)
    p_ablate = sub.add_parser("ablate", help="real connectome vs shuffled vs no recurrence, side by side",
                              formatter_class=_Formatter)
    _add_model_args(p_ablate)
    _add_train_args(p_ablate)
    p_info = sub.add_parser("info", help="print a connectome's size and cell types", formatter_class=_Formatter)
    _add_connectome_args(p_info, "fly visual system lattice radius in columns (default 15, the full system)")
    for p in (p_train, p_ablate, p_info):  # `graphode --debug train` and `graphode train --debug` both work
        _add_debug(p, argparse.SUPPRESS)
    return parser


def _connectome_spec(args: argparse.Namespace) -> dict:
    """The connectome spec of ``--connectome`` and its options; options that do not apply to
    the named connectome are a ValueError naming them."""
    spec = connectome_spec(args.connectome)
    given = [flag for dest, flag in _FILE_OPTIONS.items() if getattr(args, dest, None) is not None]
    if "name" in spec:
        if given:
            raise ValueError(f"{', '.join(given)}: only for a connectome file (--connectome FILE), not for the "
                             f"built-in {spec['name']!r}")
        if spec["name"] == "fly_visual_system":
            spec["extent"] = args.extent if args.extent is not None else 15 if args.command == "info" else 4
        elif args.extent is not None:
            raise ValueError(f"--extent: only for the fly visual system, not for the built-in {spec['name']!r}")
        else:
            spec.update(num_nodes=5000, num_edges=100_000)
        return _with_reorder(spec, args)
    if args.extent is not None:
        raise ValueError(f"--extent: only for the fly visual system, not for a connectome file ({args.connectome})")
    for key in ("input_types", "output_types"):
        if getattr(args, key) is not None and args.nodes is None:
            raise ValueError(f"{_FILE_OPTIONS[key]} selects neurons by cell type or node-table column, which needs "
                             "a node table (--nodes FILE)")
    spec["path"] = os.path.abspath(spec["path"])  # a saved model or a resumed run reads the same file
    if args.nodes is not None:
        spec["nodes"] = os.path.abspath(args.nodes)
    for key in ("pre", "post", "weight", "default_sign", "duplicates", "input_types", "output_types"):
        if getattr(args, key) is not None:
            spec[key] = getattr(args, key)
    if args.nt_sign:
        signs: dict[str, int] = {}
        for name, sign in args.nt_sign:
            if signs.get(name.lower(), sign) != sign:
                raise ValueError(f"--nt-sign: {name!r} given both +1 and -1")
            signs[name.lower()] = sign
        spec["nt_signs"] = signs
    normalize = args.normalize or "in_syn"  # raw counts as weights saturate every neuron
    spec["normalize"] = None if normalize == "none" else normalize
    return _with_reorder(spec, args)


def _with_reorder(spec: dict, args: argparse.Namespace) -> dict:
    if getattr(args, "reorder", None) is not None:
        spec["reorder"] = args.reorder
    return spec


def _file_model(args: argparse.Namespace, spec: dict) -> dict:
    """Input, readout and weight choices for a connectome file, from what it holds (it is read
    once here); a choice it cannot support is a ValueError naming the option and the fix."""
    data = build_connectome(spec)
    source = spec["path"]
    typed = getattr(data, "edge_type", None) is not None  # a node table with cell types
    no_types = ("needs cell types: give a node table with a cell-type column (--nodes FILE)"
                + ("" if args.nodes is None else f"; {args.nodes} has none"))
    if args.input == "retina":
        raise ValueError(f"--input retina needs the fly visual system's photoreceptor positions, which a connectome "
                         f"file has not ({source}): use --input random")
    model: dict[str, Any] = {"input": "random"}
    if args.input_types is not None:
        if not bool(data.input_mask.any()):
            raise ValueError(f"--input-types {args.input_types!r} selects no neuron of {source}")
        model["input_neurons"] = "input_mask"
    readout = args.readout or ("pooled" if typed else "linear")
    if readout == "pooled":
        if not typed:
            raise ValueError(f"--readout pooled pools the activity per cell type and {no_types}; or use --readout "
                             "linear")
        if args.output_types is None:
            spec["output_types"] = "*"  # every cell type: all neurons
        elif not bool(data.output_mask.any()):
            raise ValueError(f"--output-types {args.output_types!r} selects no neuron of {source}")
        # without positions a sum/mean pool sees only each cell type's normalised activity, which sums to zero
        model["keep_group_mean"] = args.aggr in ("sum", "mean")
    elif args.output_types is not None:
        fix = ("use --readout pooled to read the output neurons" if typed else
               "the pooled readout, which reads the output neurons, needs cell types (--nodes with a cell-type column)")
        raise ValueError(f"--output-types: the linear readout reads every neuron; {fix}")
    weights = args.weights or ("per_edge_type" if typed else "per_edge")
    if weights == "per_edge_type" and not typed:
        raise ValueError(f"--weights per_edge_type learns one weight per cell-type pair and {no_types}; or use "
                         "--weights per_edge (one per connection) or fixed")
    model.update(readout=readout, weights=weights)
    return model


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`~graphode.training.TrainConfig` of parsed ``train``/``ablate`` arguments.

    For a connectome file, the file is read once to choose the defaults of ``--input``,
    ``--readout`` and ``--weights`` from what it holds (see the module docs).
    """
    spec = _connectome_spec(args)
    if "name" in spec:
        choices = {key: getattr(args, key) or DEFAULT_CONFIG[key] for key in ("input", "readout", "weights")}
    else:
        choices = _file_model(args, spec)
    model = {
        "connectome": spec, **choices, "aggr": args.aggr,
        "activation": args.activation, "backend": args.backend, "t_end": args.t_end,
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
            return "--connectome/--extent/" + "/".join(_FILE_OPTIONS.values())
        if key == "input_neurons":
            return "--input-types"
        if key == "keep_group_mean":
            return "--readout/--aggr"
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
    shown = warnings.showwarning
    if not args.debug:  # a warning is one line too, without the source line that issued it
        warnings.showwarning = lambda message, *rest, **kw: print(
            f"{parser.prog}: warning: {_one_line(message)}", file=sys.stderr, flush=True)
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
    finally:
        warnings.showwarning = shown


def _run(args: argparse.Namespace) -> int:
    if args.command == "info":
        spec = _connectome_spec(args)
        data = build_connectome(spec)
        typed = "name" in spec or getattr(data, "edge_type", None) is not None  # a file: from a node table
        info = {
            "neurons": int(data.num_nodes), "connections": int(data.num_edges),
            "cell_types": len(data.cell_type_names) if typed and getattr(data, "cell_type_names", None) else None,
            # a file marks input/output neurons only when asked (--input-types/--output-types)
            "inputs": int(data.input_mask.sum()) if "name" in spec or "input_types" in spec else None,
            "outputs": int(data.output_mask.sum()) if "name" in spec or "output_types" in spec else None,
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
