"""Sweep candidate defaults of the CPU main job (fly visual system, extent 4, MNIST).

Each variant trains for one pass over ``--train-limit`` images and is evaluated on
``--test-limit`` test images; prints a markdown table. Runs anywhere (the GPU only makes the
sweep quicker: the chosen default is then timed on the CPU).
"""

from __future__ import annotations

import argparse
import json
import time

from graphode.training import TrainConfig, train

VARIANTS = {
    "default": {},
    "dynamics_lr=3e-4": {"dynamics_lr": 3e-4},
    "weights=per_edge_type": {"model": {"weights": "per_edge_type"}},
    "hidden=128": {"model": {"hidden": 128}},
    "t_end=2, records=8": {"model": {"t_end": 2.0, "num_records": 8}},
    "lr=1e-2": {"lr": 1e-2},
    "readout=linear (the torch-biopl tutorial's)": {"model": {"readout": "linear"}},
    "input=random (the torch-biopl tutorial's)": {"model": {"input": "random"}},
    "lr=1e-2, per_edge_type": {"lr": 1e-2, "model": {"weights": "per_edge_type"}},
    "lr=1e-2, per_edge_type, batch 32": {"lr": 1e-2, "batch_size": 32, "model": {"weights": "per_edge_type"}},
    "lr=1e-2, per_edge_type, extent 6": {"lr": 1e-2, "model": {"weights": "per_edge_type", "connectome": {"name": "fly_visual_system", "extent": 6}}},
    "lr=1e-2, extent 6": {"lr": 1e-2, "model": {"connectome": {"name": "fly_visual_system", "extent": 6}}},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--train-limit", type=int, default=12000)
    p.add_argument("--test-limit", type=int, default=2000)
    p.add_argument("--extent", type=int, default=4)
    p.add_argument("--device", default="auto")
    p.add_argument("--out-dir", default="runs/sweep")
    p.add_argument("--only", nargs="*", default=None)
    args = p.parse_args()
    rows = []
    for name, over in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        over = json.loads(json.dumps(over))
        model = {"connectome": {"name": "fly_visual_system", "extent": args.extent}, **over.pop("model", {})}
        cfg = TrainConfig(model=model, train_limit=args.train_limit, test_limit=args.test_limit, device=args.device,
                          progress=False, out_dir=f"{args.out_dir}/{name.replace(' ', '_')}", **over)
        t0 = time.perf_counter()
        final = train(cfg)["final"]
        rows.append((name, final, time.perf_counter() - t0))
        print(f"{name}: {json.dumps(final)}", flush=True)
    print("\n| variant | test accuracy | train accuracy | f-evals/step | seconds |\n|---|---|---|---|---|")
    for name, f, s in rows:
        print(f"| {name} | {f['test_accuracy']:.4f} | {f['train_accuracy']:.4f} | {f['f_evals_per_step']:.0f} | {s:.0f} |")


if __name__ == "__main__":
    main()
