"""GPU benchmark: the torch-biopl tutorial's way (baseline) and graphode, side by side, in one run.

Prints markdown tables (and writes them to ``--out``):

1. the measured device-to-device copy bandwidth, from which every memory floor is computed;
2. recurrent input (message passing) forward and forward+backward (gradients to states and
   to every synapse value) at the fly visual system scale (45,669 neurons, 1,513,231
   synapses) and at whole-fly-brain scale (139k neurons, 15M synapses, synthetic), B = 256:
   the baselines (torch CSR ``sparse.mm`` with torch's own backward, gather + ``index_add_``)
   and graphode's backends, each with its distance to the memory floor;
3. a full training step (Dopri5, same tolerances, same batch) at the fly visual system
   scale: the torch-biopl tutorial's model as the tutorial runs it (torch sparse autograd,
   backprop through the step-size controller) and the same model run by graphode, plus
   graphode's own model;
4. a whole-brain-scale training step with the continuous adjoint (time, peak memory).

Run on the GPU: ``PYTHONPATH=. python benchmarks/bench_gpu.py --out benchmarks/results/bench_gpu_h100.md``
(the file name names the GPU).
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

from graphode.dynamics import BoundDynamics
from graphode.flyvis import fly_visual_system
from graphode.inputs import random_pixels
from graphode.layer import ConnectomeConv, SparseGraph, available_backends
from graphode import solve
from graphode.connectome.synthetic import random_connectome


def timed(fn, repeats: int = 10, warmup: int = 3) -> float:
    """Median milliseconds of ``fn()`` with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def copy_bandwidth() -> float:
    """Bytes per second of a large device-to-device copy (read + write counted)."""
    a = torch.empty(2**28, dtype=torch.float32, device="cuda")
    b = torch.empty_like(a)
    ms = timed(lambda: b.copy_(a), repeats=20)
    return 2 * 4 * 2**28 / (ms / 1e3)


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


def message_passing(name: str, data, b: int, bw: float) -> list[dict]:
    n, e = int(data.num_nodes), int(data.num_edges)
    graph = SparseGraph.from_edge_index(data.edge_index.cuda(), n)
    w0 = (data.sign * data.syn_weight).cuda()
    x0 = torch.rand(n, b, device="cuda")
    f_fwd, f_all = floors_ms(n, e, b, bw)
    rows = []

    def record(label, fwd, fwdbwd):
        try:
            t_f = timed(fwd)
            t_a = timed(fwdbwd, repeats=5)
            rows.append({"scale": name, "method": label, "fwd_ms": t_f, "fwdbwd_ms": t_a,
                         "fwd_x_floor": t_f / f_fwd, "fwdbwd_x_floor": t_a / f_all,
                         # rows of x gathered per synapse: what the kernel really reads (mostly from L2)
                         "gather_tbs": e * b * 4 / (t_f / 1e3) / 1e12})
        except torch.OutOfMemoryError:
            rows.append({"scale": name, "method": label, "fwd_ms": float("nan"), "fwdbwd_ms": float("nan"),
                         "fwd_x_floor": float("nan"), "fwdbwd_x_floor": float("nan"), "note": "out of memory"})
        gc.collect()
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

    variants = [(bk, "identity") for bk in available_backends("cuda") if bk != "torch_scatter"]
    if "triton" in available_backends("cuda"):
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
    field = TutorialField(data).cuda()
    term = to.ODETerm(field, with_args=True)
    step = to.Dopri5(term=term)
    ctrl = to.IntegralController(atol=atol, rtol=rtol, term=term)
    solver = to.AutoDiffAdjoint(step, ctrl, backprop_through_step_size_control=backprop_step_control)
    params = list(field.parameters()) + list(readout.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    b = images.size(0)
    x = images.flatten(1)

    def forward():
        y0 = torch.zeros(b, field.n, device="cuda")
        t = torch.tensor([0.0, 1.0], device="cuda").expand(b, 2)
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

    sol = run()  # warm-up (and allocator growth)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times, nfe = [], []
    for _ in range(3):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        sol = run()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        stats = sol.stats
        nfe.append(int(stats["n_f_evals"].max()) if isinstance(stats, dict) else stats.n_f_evals + stats.backward_f_evals)
    times.sort()
    return {"seconds": times[1], "f_evals": nfe[-1], "peak_gb": torch.cuda.max_memory_allocated() / 1e9}


def graphode_step(data, images, labels, readout, dynamics, input_map, rtol, atol, gradient, t_eval=None) -> dict:
    params = list(dynamics.parameters()) + list(readout.parameters()) + list(input_map.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    b = images.size(0)

    def forward():
        drive = input_map(images)
        v0 = torch.zeros(b, int(data.num_nodes), device="cuda")
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
    parser.add_argument("--skip-brain", action="store_true")
    parser.add_argument("--skip-steps", action="store_true", help="message passing only (no training steps)")
    parser.add_argument("--skip-message-passing", action="store_true", help="training steps only")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this benchmark needs a GPU"
    torch.backends.cuda.matmul.allow_tf32 = False
    out = []

    def emit(line=""):
        print(line, flush=True)
        out.append(line)

    def save():
        if args.out:
            with open(args.out, "w") as fh:
                fh.write("\n".join(out) + "\n")

    dev = torch.cuda.get_device_name()
    emit(f"# graphode GPU benchmark\n\n{datetime.date.today()} · {dev} · torch {torch.__version__} · "
         f"torchode {to.__version__ if hasattr(to, '__version__') else '1.0.1'} · B = {args.batch} · fp32")
    bw = copy_bandwidth()
    emit(f"\nMeasured copy bandwidth: {bw / 1e12:.2f} TB/s (read + write); memory floors below use it.\n")

    fly = fly_visual_system(15)
    rows = [] if args.skip_message_passing else message_passing("fly visual system (45,669 / 1,513,231)", fly, args.batch, bw)
    if not args.skip_brain:
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
        if "triton" in available_backends("cuda"):
            emit(f"\n## Triton kernel block shapes, fly visual system, B = {args.batch}, relu\n")
            for line in triton_configs(fly, args.batch):
                emit(line)

    if args.skip_steps:
        save()
        return
    # Training steps at fly scale.
    b = args.batch
    g = torch.Generator().manual_seed(0)
    images = torch.rand(b, 28, 28, generator=g).cuda()
    labels = torch.randint(10, (b,), generator=g).cuda()
    n = int(fly.num_nodes)
    step_rows = []
    torch.manual_seed(0)
    readout = torch.nn.Sequential(torch.nn.Linear(n, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)).cuda()
    tutorial = tutorial_step(fly, images, labels, readout, args.rtol, args.atol, backprop_step_control=True)
    step_rows.append(("torch-biopl tutorial's model, as the tutorial runs it (torch sparse autograd, backprop through step control)", tutorial))
    print("step", step_rows[-1], flush=True)
    torch.cuda.empty_cache()
    field = TutorialField(fly).cuda()
    for backend in [bk for bk in ("csr", "triton") if bk in available_backends("cuda")]:
        dyn = TutorialDynamicsForGraphode(field, fly, backend).cuda()
        proj = random_pixels(fly, 784).cuda()
        # the tutorial's pixel map as graphode's SparseProjection (same neurons as TutorialField)
        proj.index[0] = field.pix_to
        res = graphode_step(fly, images, labels, readout, dyn, proj, args.rtol, args.atol, "autodiff")
        step_rows.append((f"the tutorial's model run by graphode (autodiff, backend={backend})", res))
        print("step", step_rows[-1], flush=True)
        torch.cuda.empty_cache()
    from graphode.inputs import hex_retina

    fly_cuda = fly.cuda()
    runs = [("autodiff", "csr"), ("autodiff", "triton"), ("checkpoint", "csr"), ("adjoint", "csr"), ("adjoint", "triton")]
    for gradient, backend in runs:
        if backend not in available_backends("cuda"):
            continue
        dyn = BoundDynamics(fly_cuda, tau=0.2, bias=0.5, backend=backend).cuda()
        retina = hex_retina(fly_cuda).cuda()
        res = graphode_step(fly_cuda, images, labels, readout, dyn, retina, args.rtol, args.atol, gradient)
        step_rows.append((f"graphode model (signed, normalised, relu), gradient={gradient}, backend={backend}", res))
        print("step", step_rows[-1], flush=True)
        torch.cuda.empty_cache()
    emit(f"\n## Training step at fly visual system scale (Dopri5 rtol = {args.rtol}, atol = {args.atol}, B = {b})\n")
    emit("| run | seconds / step | speed-up vs the tutorial | function evals (fwd+bwd) | peak GB |")
    emit("|---|---|---|---|---|")
    base = step_rows[0][1]["seconds"]
    for label, r in step_rows:
        emit(f"| {label} | {r['seconds']:.3f} | {base / r['seconds']:.1f}× | {r['f_evals']} | {r['peak_gb']:.1f} |")

    if not args.skip_brain:
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
    save()
    print(json.dumps({"done": True}))


if __name__ == "__main__":
    main()
