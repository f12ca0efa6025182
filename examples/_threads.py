"""The ``--threads`` option shared by the examples."""

from __future__ import annotations

import argparse

import torch


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: 1 with --quick, where the work is small, else torch's choice)")


def apply_threads(args: argparse.Namespace) -> None:
    """Set torch's thread count from ``--threads`` (1 under ``--quick``)."""
    if args.threads or args.quick:
        # Small graphs gain little from several threads, and on a shared CPU oversubscribed
        # threads slow a solve down many times (10x measured on 2 busy cores).
        torch.set_num_threads(args.threads or 1)
