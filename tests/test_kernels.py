"""graphode's Triton kernels against dense float64 references.

Without a GPU the kernels run in Triton's interpreter: ``conftest.py`` sets
``TRITON_INTERPRET=1`` before anything imports Triton, and the same kernel code runs on the
CPU. On a CUDA machine the kernels are compiled, and the last test also compares them with
the ``csr`` backend at a realistic size.
"""

from __future__ import annotations

import pytest
import torch

import graphode.kernels as kernels
from graphode.flyvis import fly_visual_system
from graphode.layer import ConnectomeConv, SparseGraph, available_backends
from graphode.synapses import SynapseWeights

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("single_thread")]
pytest.importorskip("triton")


ON_CPU = not torch.cuda.is_available()
if ON_CPU and not kernels.interpreting():
    pytest.skip("no GPU and TRITON_INTERPRET is not set (conftest.py sets it)", allow_module_level=True)
DEVICE = "cpu" if ON_CPU else "cuda"


def _graph(n, e, seed):
    g = torch.Generator().manual_seed(seed)
    edge_index = torch.randint(0, n - 1, (2, e), generator=g)  # node n-1 has no inputs; duplicates and self-loops occur
    w = torch.randn(e, dtype=torch.float64, generator=g)
    return edge_index, w


@pytest.mark.parametrize("activation", sorted(kernels.KERNEL_ACTIVATIONS))
@pytest.mark.parametrize("b", [3, 300])  # 300 > one 256-column block: the block loops run twice
def test_kernels_match_dense_reference(activation, b, dense, ref_act):
    n = 9
    edge_index, w = _graph(n, 40, seed=b)
    x = 3 * torch.randn(n, b, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x = torch.where(x.abs() < 0.05, x + 0.1, x)  # away from relu's kink
    f = ref_act[activation]
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    ref = dense(edge_index, wr, n) @ f(xr)
    g_out = torch.randn(n, b, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ref.backward(g_out)

    graph = SparseGraph.from_edge_index(edge_index.to(DEVICE), n)
    ws = graph.sorted_weights(w.to(DEVICE))
    x, g_out = x.to(DEVICE), g_out.to(DEVICE)
    y = kernels.spmm_forward(graph.rowptr, graph.src, ws, x, activation)
    torch.testing.assert_close(y.cpu(), ref.detach(), rtol=1e-12, atol=1e-12)
    gx, gw_sorted = kernels.spmm_backward(graph.colptr, graph.t_row, graph.t_perm, ws, x, g_out, activation)
    torch.testing.assert_close(gx.cpu(), xr.grad, rtol=1e-12, atol=1e-12)
    gw = torch.empty_like(gw_sorted)
    gw[graph.perm if graph.perm is not None else slice(None)] = gw_sorted  # back to the user's edge order
    torch.testing.assert_close(gw.cpu(), wr.grad, rtol=1e-12, atol=1e-12)
    # Only one of the two gradients.
    gx_only, none_w = kernels.spmm_backward(graph.colptr, graph.t_row, graph.t_perm, ws, x, g_out, activation, need_w=False)
    none_x, gw_only = kernels.spmm_backward(graph.colptr, graph.t_row, graph.t_perm, ws, x, g_out, activation, need_x=False)
    assert none_w is None and none_x is None
    torch.testing.assert_close(gx_only, gx, rtol=0, atol=0)
    torch.testing.assert_close(gw_only, gw_sorted, rtol=0, atol=0)


def test_triton_backend_gradcheck_and_float32():
    edge_index, w = _graph(7, 25, seed=3)
    x = torch.randn(7, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    edge_index, w, x = edge_index.to(DEVICE), w.to(DEVICE), x.to(DEVICE)
    conv = ConnectomeConv("tanh", backend="triton")
    assert torch.autograd.gradcheck(lambda x_, w_: conv(x_, edge_index, w_), (x.requires_grad_(), w.requires_grad_()))
    ref = ConnectomeConv("tanh", backend="csr")(x.float(), edge_index, w.float())
    torch.testing.assert_close(conv(x.float(), edge_index, w.float()), ref, rtol=1e-5, atol=1e-5)


def test_triton_backend_on_the_fly_visual_system_equals_csr():
    data = fly_visual_system(1).to(DEVICE)
    weights = SynapseWeights.from_data(data, mode="per_edge")
    w = weights().detach()
    x = torch.randn(data.num_nodes, 5, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    outs, grads = [], []
    for backend in ("csr", "triton"):
        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = ConnectomeConv("relu", backend=backend)(xr, data.edge_index, wr)
        (y * torch.linspace(-1, 1, 5, device=DEVICE)).sum().backward()
        outs.append(y.detach())
        grads.append((xr.grad, wr.grad))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-4, atol=1e-4)


def test_triton_backend_edge_cases_and_errors():
    conv = ConnectomeConv("relu", backend="triton")
    x = torch.randn(4, 2, dtype=torch.float64, device=DEVICE)
    empty = torch.zeros(2, 0, dtype=torch.long, device=DEVICE)
    zeros = torch.zeros(4, 2, dtype=torch.float64, device=DEVICE)
    torch.testing.assert_close(conv(x, empty, torch.zeros(0, dtype=torch.float64, device=DEVICE)), zeros)
    with pytest.raises(ValueError, match="fuses the activation"):
        ConnectomeConv(lambda v: v * 2, backend="triton")

    def relu(v):  # a user's function that shares a name with a kernel activation
        return v.clamp(0, 6)

    with pytest.raises(ValueError, match="fuses the activation"):
        ConnectomeConv(relu, backend="triton")
    with pytest.raises(TypeError, match="float32 or float64"):
        kernels.spmm_forward(torch.zeros(5, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0), x.cpu().half(), "relu")
    if ON_CPU:
        assert "triton" in available_backends("cpu")  # under the interpreter


def test_triton_backend_needs_cuda_outside_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "triton" not in available_backends("cpu")
    edge_index, w = _graph(5, 8, seed=0)
    with pytest.raises(RuntimeError, match="CUDA"):
        ConnectomeConv("relu", backend="triton")(torch.randn(5, 2, dtype=torch.float64), edge_index, w)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compiled kernels need a CUDA GPU")
def test_compiled_kernels_on_cuda_equal_csr():
    data = fly_visual_system(4)
    w = SynapseWeights.from_data(data, mode="per_edge")().detach().cuda()
    ei = data.edge_index.cuda()
    x = torch.randn(data.num_nodes, 300, device="cuda")
    for activation in sorted(kernels.KERNEL_ACTIVATIONS):
        res = []
        for backend in ("csr", "triton"):
            xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
            y = ConnectomeConv(activation, backend=backend)(xr, ei, wr)
            y.backward(torch.ones_like(y))
            res.append((y.detach(), xr.grad, wr.grad))
        for a, b in zip(*res):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
