"""GPU benchmark: the torch-biopl tutorial's way (baseline), graphode, and other ODE solvers, side by side, in one run.

Prints markdown tables (and writes them to ``--out``, atomically):

1. the measured device-to-device copy bandwidth, from which every memory floor is computed;
2. recurrent input (message passing) forward and forward+backward (gradients to states and
   to every synapse value) at the fly visual system scale (45,669 neurons, 1,513,231
   synapses) and at whole-fly-brain scale (139k neurons, 15M synapses, synthetic), B = 256:
   the baselines (torch CSR ``sparse.mm`` with torch's own backward, gather + ``index_add_``)
   and graphode's backends, each with its distance to the memory floor;
3. a full training step (Dopri5, same tolerances, same batch) at the fly visual system
   scale: the torch-biopl tutorial's model as the tutorial runs it (torch sparse autograd,
   backprop through the step-size control) and the same model run by graphode, plus
   graphode's own model;
4. peers (``benchmarks/peers.py``; ``--skip-peers`` skips them): graphode's own model
   (``BoundDynamics(fly, tau=0.2, bias=0.5)``, ``hex_retina``, an MLP readout) trained by
   other solvers on the same vector field, from the same initial parameters, images,
   labels and loss: graphode ``solve`` with ``autodiff`` (the reference gradient),
   ``checkpoint`` and ``adjoint``; torchode ``AutoDiffAdjoint(Dopri5, IntegralController)``;
   torchdiffeq ``odeint`` and ``odeint_adjoint`` (dopri5); explicit Euler at dt = 0.02 with
   backprop through the loop; diffrax (JAX) ``Dopri5`` + ``PIDController`` +
   ``RecursiveCheckpointAdjoint`` on the same model written in JAX (BCOO matrix), the
   whole step jitted. Each row: seconds per step (median after a warm-up), f-evals
   (forward + backward), peak GB, and ``‖g − g_autodiff‖ / ‖g_autodiff‖`` of the first
   step's gradient over the dynamics' parameters and over the readout's. A missing package
   or an out-of-memory is a row saying so;
5. a whole-brain-scale training step with the continuous adjoint (time, peak memory).

Run on the GPU: ``PYTHONPATH=. python benchmarks/bench_gpu.py --out benchmarks/results/bench_gpu_h200.md``
(the file name names the GPU; ``--skip-brain`` leaves out the whole-brain scale).
Smoke test on the CPU at small size (no whole-brain scale, no peak memory, wall-clock
timing): ``PYTHONPATH=. python benchmarks/bench_gpu.py --device cpu --extent 2 --batch 16``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import time

import torch
import torch.nn.functional as F
import torchode as to

import peers  # benchmarks/peers.py, beside this script
from timing import sync, timed  # benchmarks/timing.py, beside this script
from graphode._atomic import atomic_write
from graphode.dynamics import BoundDynamics
from graphode.flyvis import fly_visual_system
from graphode.inputs import random_pixels
from graphode.layer import ConnectomeConv, SparseGraph, available_backends
from graphode import solve
from graphode.connectome.synthetic import random_connectome


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def copy_bandwidth(device: str = "cuda") -> float:
    """Bytes per second of a large copy on ``device`` (read + write counted; 1 GiB on the
    GPU, 64 MiB on the CPU)."""
    numel = 2**28 if device == "cuda" else 2**24
    a = torch.empty(numel, dtype=torch.float32, device=device)
    b = torch.empty_like(a)
    ms = timed(lambda: b.copy_(a), repeats=20, device=device)
    return 2 * 4 * numel / (ms / 1e3)


def floors_ms(n: int, e: int, b: int, bw: float) -> tuple[float, float]:
    """Memory floors (ms) of forward and forward+backward of ``A x``.

    Forward: read the CSR structure (int64 column + fp32 value per synapse, one row pointer
    per neuron), read x and write y ([N, B] fp32 each). Backward: the transposed product
    (the same traffic again) plus the per-synapse gradient (structure + g + x read, one fp32
    per synapse written).
    """
    structure = e * (8 + 4) + (n + 1) * 8
    dense = n * b * 4
    fwd = structure + 2 * dense
    bwd = (structure + 2 * dense) + (structure + 2 * dense + e * 4)
    return fwd / bw * 1e3, (fwd + bwd) / bw * 1e3


def message_passing(name: str, data, b: int, bw: float, device: str = "cuda") -> list[dict]:
    n, e = int(data.num_nodes), int(data.num_edges)
    graph = SparseGraph.from_edge_index(data.edge_index.to(device), n)
    w0 = (data.sign * data.syn_weight).to(device)
    x0 = torch.rand(n, b, device=device)
    f_fwd, f_all = floors_ms(n, e, b, bw)
    rows = []

    def record(label, fwd, fwdbwd):
        try:
            t_f = timed(fwd, device=device)
            t_a = timed(fwdbwd, repeats=5, device=device)
            rows.append({"scale": name, "method": label, "fwd_ms": t_f, "fwdbwd_ms": t_a,
                         "fwd_x_floor": t_f / f_fwd, "fwdbwd_x_floor": t_a / f_all,
                         # rows of x gathered per synapse: what the kernel really reads (mostly from L2)
                         "gather_tbs": e * b * 4 / (t_f / 1e3) / 1e12})
        except torch.OutOfMemoryError:
            rows.append({"scale": name, "method": label, "fwd_ms": float("nan"), "fwdbwd_ms": float("nan"),
                         "fwd_x_floor": float("nan"), "fwdbwd_x_floor": float("nan"), "note": "out of memory"})
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()

    # Baseline 1: torch CSR sparse.mm with torch's own autograd through the values.
    def csr_torch_fwd():
        with torch.no_grad():
            return torch.sparse.mm(graph.csr(w0), x0)

    def csr_torch_all():
        w = w0.clone().requires_grad_(True)
        x = x0.clone().requires_grad_(True)
        torch.sparse.mm(torch.sparse_csr_tensor(graph.rowptr, graph.src, w, (n, n)), x).sum().backward()

    record("baseline: torch CSR sparse.mm (torch autograd)", csr_torch_fwd, csr_torch_all)

    # Baseline 2: gather + index_add_ (what a scatter implementation does).
    src, dst = graph.src, graph.dst

    def gather_fwd():
        with torch.no_grad():
            return torch.zeros_like(x0).index_add_(0, dst, x0[src] * w0[:, None])

    def gather_all():
        w = w0.clone().requires_grad_(True)
        x = x0.clone().requires_grad_(True)
        torch.zeros_like(x).index_add(0, dst, x[src] * w[:, None]).sum().backward()

    record("baseline: gather + index_add_", gather_fwd, gather_all)

    variants = [(bk, "identity") for bk in available_backends(device) if bk != "torch_scatter"]
    if "triton" in available_backends(device):
        variants.append(("triton", "relu"))  # the activation inside the kernel's gather
    for backend, activation in variants:
        conv = ConnectomeConv(activation=activation, backend=backend)

        def g_fwd(conv=conv):
            with torch.no_grad():
                return conv(x0, graph, w0)

        def g_all(conv=conv):
            w = w0.clone().requires_grad_(True)
            x = x0.clone().requires_grad_(True)
            conv(x, graph, w).sum().backward()

        fused = " with relu fused" if activation != "identity" else ""
        record(f"graphode: ConnectomeConv backend={backend}{fused}", g_fwd, g_all)
    return rows


def triton_configs(data, b: int) -> list[str]:
    """Forward and backward kernel times for a few block shapes (BLOCK_E, BLOCK_B, warps)."""
    from graphode import kernels

    n = int(data.num_nodes)
    graph = SparseGraph.from_edge_index(data.edge_index.cuda(), n)
    w = graph.sorted_weights((data.sign * data.syn_weight).cuda())
    x = torch.rand(n, b, device="cuda")
    g = torch.rand(n, b, device="cuda")
    lines = ["| BLOCK_E | BLOCK_B | warps | forward ms | backward ms |", "|---|---|---|---|---|"]
    for cfg in [(8, 256, 4), (16, 256, 4), (32, 256, 4), (16, 256, 8), (32, 256, 8), (16, 128, 4), (32, 128, 4), (64, 64, 2)]:
        tf = timed(lambda: kernels.spmm_forward(graph.rowptr, graph.src, w, x, "relu", blocks=cfg))
        tb = timed(lambda: kernels.spmm_backward(graph.colptr, graph.t_row, graph.t_perm, w, x, g, "relu", blocks=cfg))
        lines.append(f"| {cfg[0]} | {cfg[1]} | {cfg[2]} | {tf:.3f} | {tb:.3f} |")
    return lines


# -- training steps ---------------------------------------------------------------------------
class TutorialField(torch.nn.Module):
    """The torch-biopl tutorial's vector field: ``tau dh/dt = −h + relu(σ(W_ih x + W_hh h + b))`` with
    ``W_hh = |connectome|`` (learnable values, torch sparse autograd) and one random neuron
    per pixel."""

    def __init__(self, data, n_pixels: int = 784):
        super().__init__()
        n = int(data.num_nodes)
        self.n = n
        order = torch.argsort(data.edge_index[1] * n + data.edge_index[0])
        self.register_buffer("crow", torch.ops.aten._convert_indices_from_coo_to_csr(data.edge_index[1][order], n))
        self.register_buffer("col", data.edge_index[0][order].contiguous())
        self.values = torch.nn.Parameter(data.syn_count[order].abs().float())
        self.bias = torch.nn.Parameter(torch.zeros(n))
        g = torch.Generator().manual_seed(0)
        self.register_buffer("pix_to", torch.randint(n, (n_pixels,), generator=g))

    def forward(self, t, h, x):
        w = torch.sparse_csr_tensor(self.crow, self.col, self.values, (self.n, self.n))
        rec = torch.sparse.mm(w, h.t()).t()
        inp = torch.zeros_like(h).index_add(1, self.pix_to, x)
        return -h + F.relu(torch.sigmoid(inp + rec + self.bias))


def tutorial_step(data, images, labels, readout, rtol, atol, backprop_step_control: bool) -> dict:
    device = images.device
    field = TutorialField(data).to(device)
    term = to.ODETerm(field, with_args=True)
    step = to.Dopri5(term=term)
    ctrl = to.IntegralController(atol=atol, rtol=rtol, term=term)
    solver = to.AutoDiffAdjoint(step, ctrl, backprop_through_step_size_control=backprop_step_control)
    params = list(field.parameters()) + list(readout.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    b = images.size(0)
    x = images.flatten(1)

    def forward():
        y0 = torch.zeros(b, field.n, device=device)
        t = torch.tensor([0.0, 1.0], device=device).expand(b, 2)
        return solver.solve(to.InitialValueProblem(y0=y0, t_eval=t), args=x)

    return measure_step(forward, readout, labels, opt)


def measure_step(forward, readout, labels, opt) -> dict:
    """Time a training step: ``forward()`` solves, then readout, loss, backward, Adam step."""

    def run():
        sol = forward()
        loss = F.cross_entropy(readout(sol.ys[:, -1]), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return sol

    device = labels.device
    sol = run()  # warm-up (and allocator growth)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, nfe = [], []
    for _ in range(3):
        sync(device)
        t0 = time.perf_counter()
        sol = run()
        sync(device)
        times.append(time.perf_counter() - t0)
        stats = sol.stats
        nfe.append(int(stats["n_f_evals"].max()) if isinstance(stats, dict) else stats.n_f_evals + stats.backward_f_evals)
    times.sort()
    peak = torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None
    return {"seconds": times[1], "f_evals": nfe[-1], "peak_gb": peak}


def graphode_step(data, images, labels, readout, dynamics, input_map, rtol, atol, gradient, t_eval=None) -> dict:
    params = list(dynamics.parameters()) + list(readout.parameters()) + list(input_map.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    b = images.size(0)

    def forward():
        drive = input_map(images)
        v0 = torch.zeros(b, int(data.num_nodes), device=images.device)
        return solve(dynamics, v0, (0.0, 1.0), args=(drive,), rtol=rtol, atol=atol, gradient=gradient,
                     max_steps=100_000, t_eval=t_eval)

    return measure_step(forward, readout, labels, opt)


class TutorialDynamicsForGraphode(torch.nn.Module):
    """The tutorial's model expressed with graphode's layer (same maths as TutorialField)."""

    def __init__(self, tutorial_field: TutorialField, data, backend: str):
        super().__init__()
        self.tutorial = tutorial_field
        self.conv = ConnectomeConv(activation="identity", backend=backend)
        self.graph = SparseGraph.from_edge_index(
            torch.stack([tutorial_field.col, torch.repeat_interleave(torch.arange(tutorial_field.n, device=tutorial_field.col.device), tutorial_field.crow.diff())]),
            tutorial_field.n,
        )

    def forward(self, t, h, u):
        rec = self.conv(h.t(), self.graph, self.tutorial.values).t()
        return -h + F.relu(torch.sigmoid(u + rec + self.tutorial.bias))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rtol", type=float, default=1e-4)
    parser.add_argument("--atol", type=float, default=1e-4)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                        help="cpu: a smoke test at small size (no whole-brain scale, no peak memory)")
    parser.add_argument("--extent", type=int, default=15, help="the fly visual system's extent (15: 45,669 neurons)")
    parser.add_argument("--skip-brain", action="store_true")
    parser.add_argument("--skip-steps", action="store_true", help="message passing only (no training steps)")
    parser.add_argument("--skip-message-passing", action="store_true", help="training steps only")
    parser.add_argument("--skip-peers", action="store_true", help="without the peer solvers on graphode's field")
    parser.add_argument("--skip-triton-sweep", action="store_true", help="without the Triton block-shape sweep")
    parser.add_argument("--peer-backend", default="csr", help="graphode's message-passing backend in the peers section")
    parser.add_argument("--peer-repeats", type=int, default=3, help="timed steps per peer (after one warm-up step)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a GPU (or --device cpu for a smoke test at small size)")
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    skip_brain = args.skip_brain or device != "cuda"
    out = []

    def emit(line=""):
        print(line, flush=True)
        out.append(line)
        save()  # a run cut short keeps what it measured

    def save():
        if args.out:
            text = "\n".join(out) + "\n"
            atomic_write(args.out, lambda fh: fh.write(text.encode()))

    dev = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    emit(f"# graphode GPU benchmark\n\n{datetime.date.today()} · {dev} · torch {torch.__version__} · "
         f"torchode {to.__version__ if hasattr(to, '__version__') else '1.0.1'} · B = {args.batch} · fp32")
    bw = copy_bandwidth(device)
    emit(f"\nMeasured copy bandwidth: {bw / 1e12:.2f} TB/s (read + write); memory floors below use it.\n")

    fly = fly_visual_system(args.extent)
    scale = f"fly visual system ({int(fly.num_nodes):,} / {int(fly.num_edges):,})"
    rows = [] if args.skip_message_passing else message_passing(scale, fly, args.batch, bw, device)
    if device != "cuda" and not args.skip_brain:
        emit("whole-brain scale: skipped on the CPU\n")
    if not skip_brain:
        t0 = time.perf_counter()
        brain = random_connectome(139_000, 15_000_000, seed=0, locality=0.01, device="cuda")
        emit(f"whole-brain-scale synthetic graph built on the GPU in {time.perf_counter() - t0:.2f} s\n")
        if not args.skip_message_passing:
            rows += message_passing("whole-brain scale (139,000 / 15,000,000)", brain.cpu(), args.batch, bw)
    if not args.skip_message_passing:
        emit("## Message passing (recurrent input), B = %d\n" % args.batch)
        emit("| scale | method | forward ms | × floor | fwd+bwd ms | × floor | gathered TB/s (fwd) |")
        emit("|---|---|---|---|---|---|---|")
        for r in rows:
            emit(f"| {r['scale']} | {r['method']} | {r['fwd_ms']:.3f} | {r['fwd_x_floor']:.1f} | {r['fwdbwd_ms']:.3f} | {r['fwdbwd_x_floor']:.1f} |"
                 f" {r.get('gather_tbs', float('nan')):.2f} |" + (f" {r['note']}" if "note" in r else ""))
        if device == "cuda" and "triton" in available_backends("cuda") and not args.skip_triton_sweep:
            emit(f"\n## Triton kernel block shapes, fly visual system, B = {args.batch}, relu\n")
            for line in triton_configs(fly, args.batch):
                emit(line)

    if args.skip_steps:
        return
    # Training steps at fly scale.
    b = args.batch
    g = torch.Generator().manual_seed(0)
    images = torch.rand(b, 28, 28, generator=g).to(device)
    labels = torch.randint(10, (b,), generator=g).to(device)
    n = int(fly.num_nodes)
    step_rows = []
    torch.manual_seed(0)
    readout = torch.nn.Sequential(torch.nn.Linear(n, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)).to(device)
    tutorial = tutorial_step(fly, images, labels, readout, args.rtol, args.atol, backprop_step_control=True)
    step_rows.append(("torch-biopl tutorial's model, as the tutorial runs it (torch sparse autograd, backprop through step control)", tutorial))
    print("step", step_rows[-1], flush=True)
    peers._empty_cache(images.device)
    field = TutorialField(fly).to(device)
    for backend in [bk for bk in ("csr", "triton") if bk in available_backends(device)]:
        dyn = TutorialDynamicsForGraphode(field, fly, backend).to(device)
        proj = random_pixels(fly, 784).to(device)
        # the tutorial's pixel map as graphode's SparseProjection (same neurons as TutorialField)
        proj.index[0] = field.pix_to
        res = graphode_step(fly, images, labels, readout, dyn, proj, args.rtol, args.atol, "autodiff")
        step_rows.append((f"the tutorial's model run by graphode (autodiff, backend={backend})", res))
        print("step", step_rows[-1], flush=True)
        peers._empty_cache(images.device)
    from graphode.inputs import hex_retina

    fly_dev = fly.to(device)
    runs = [("autodiff", "csr"), ("autodiff", "triton"), ("checkpoint", "csr"), ("adjoint", "csr"), ("adjoint", "triton")]
    for gradient, backend in runs:
        if backend not in available_backends(device):
            continue
        dyn = BoundDynamics(fly_dev, tau=0.2, bias=0.5, backend=backend).to(device)
        retina = hex_retina(fly_dev).to(device)
        res = graphode_step(fly_dev, images, labels, readout, dyn, retina, args.rtol, args.atol, gradient)
        step_rows.append((f"graphode model (signed, normalised, relu), gradient={gradient}, backend={backend}", res))
        print("step", step_rows[-1], flush=True)
        peers._empty_cache(images.device)
    emit(f"\n## Training step at {scale} (Dopri5 rtol = {args.rtol}, atol = {args.atol}, B = {b})\n")
    emit("| run | seconds / step | speed-up vs the tutorial | function evals (fwd+bwd) | peak GB |")
    emit("|---|---|---|---|---|")
    base = step_rows[0][1]["seconds"]
    for label, r in step_rows:
        peak = "–" if r["peak_gb"] is None else f"{r['peak_gb']:.1f}"
        emit(f"| {label} | {r['seconds']:.3f} | {base / r['seconds']:.1f}× | {r['f_evals']} | {peak} |")
    del readout, field, dyn, retina
    peers._empty_cache(images.device)

    if not args.skip_peers:
        problem = peers.make_problem(fly, images, labels, rtol=args.rtol, atol=args.atol, backend=args.peer_backend)
        peer_rows = peers.run_peers(problem, repeats=args.peer_repeats)
        emit(f"\n## Peers: other solvers on graphode's model, {scale} (Dopri5 rtol = {args.rtol}, "
             f"atol = {args.atol}, B = {b}, backend={args.peer_backend})\n")
        emit("Same parameters, images, labels and loss in every row; the gradient is the first step's, against "
             "graphode's autodiff gradient. Rows that backpropagate through the forward solve have no backward "
             "evaluations; diffrax's count is 6·num_steps + 1 of its forward solve (its backward recomputations "
             "uncounted) and its peak is JAX's since the process started.\n")
        emit("Versions: " + ", ".join(f"{name} {_version(name)}" for name in ("torchode", "torchdiffeq", "jax", "diffrax")) + "\n")
        for line in peers.peers_table(peer_rows):
            emit(line)
        compile_s = peer_rows[-1][1].get("compile_s")
        if compile_s is not None:
            emit(f"\ndiffrax: the jitted step compiled in {compile_s:.1f} s (not in its time per step).")
        del problem
        peers._empty_cache(images.device)

    if not skip_brain:
        del rows
        torch.cuda.empty_cache()
        brain = brain.cuda() if brain.edge_index.device.type != "cuda" else brain
        proj = random_pixels(brain, 784).cuda()
        head = torch.nn.Sequential(torch.nn.Linear(139_000, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)).cuda()
        emit(f"\n## Whole-brain scale (139,000 neurons, 15,000,000 learnable synapses), B = {b}, Dopri5 rtol = atol = 1e-3\n")
        emit("| gradient | backend | seconds / step | function evals (fwd+bwd) | peak GB |")
        emit("|---|---|---|---|---|")
        for gradient, backend in (("adjoint", "csr"), ("adjoint", "triton"), ("checkpoint", "csr")):
            if backend not in available_backends("cuda"):
                continue
            dyn = BoundDynamics(brain, tau=0.2, bias=0.5, backend=backend, tau_mode="per_type", bias_mode="per_type").cuda()
            try:
                r = graphode_step(brain, images, labels, head, dyn, proj, 1e-3, 1e-3, gradient)
                emit(f"| {gradient} | {backend} | {r['seconds']:.2f} | {r['f_evals']} | {r['peak_gb']:.1f} |")
            except torch.OutOfMemoryError:
                emit(f"| {gradient} | {backend} | out of memory | | |")
            torch.cuda.empty_cache()
    print(json.dumps({"done": True}))


if __name__ == "__main__":
    main()
