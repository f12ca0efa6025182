"""Fused Triton kernels for the message-passing layer (``ConnectomeConv(backend="triton")``).

Two kernels cover forward and backward of ``y = A f(x)`` with ``A[i, j] = w_ij`` on a CSR
graph and node-major states ``x [N, B]``:

forward, one program per target row ``i`` (and column block)::

    y[i, :] = Σ_{e ∈ row i} w_e · f(x[src_e, :])

``f`` is applied while the source rows are gathered, so ``f(x)`` is never written out.

backward, one program per *source* ``j`` over the transposed (source-sorted) structure::

    grad_x[j, :] = f'(x[j, :]) ⊙ Σ_{e: j → i} w_e · g[i, :]
    grad_w[e]    = Σ_b g[i_e, b] · f(x[j, b])

Both gradients read the same rows ``g[i, :]``, so one pass over the edges serves the state
and the synapse gradient (the ``csr`` backend needs two: a transposed SpMM and a sampled
dense-dense product). Each program owns its edges, so no atomics are needed and the
result is deterministic.

The kernels run on CUDA tensors; with ``TRITON_INTERPRET=1`` Triton runs them on the CPU,
which is how the tests check them without a GPU. Accumulation is in the input dtype
(float32 or float64).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:  # triton ships with torch on Linux; keep graphode importable without it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

__all__ = ["triton_available", "KERNEL_ACTIVATIONS", "spmm_forward", "spmm_backward", "TritonSpMM"]

# Activation codes understood by the kernels.
KERNEL_ACTIVATIONS = {"identity": 0, "relu": 1, "tanh": 2, "sigmoid": 3, "softplus": 4}


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_available(device: torch.device | str | None = None) -> bool:
    """Whether the Triton kernels can run on ``device`` (CUDA, or any device in interpreter mode)."""
    if triton is None:
        return False
    if interpreting():
        return True
    return torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")


if triton is not None:

    @triton.jit
    def _act(x, ACT: tl.constexpr):
        if ACT == 1:
            return tl.maximum(x, 0.0)
        elif ACT == 2:
            return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)
        elif ACT == 3:
            return 1.0 / (1.0 + tl.exp(-x))
        elif ACT == 4:  # torch's softplus: linear above 20
            return tl.where(x > 20.0, x, tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x))))
        else:
            return x

    @triton.jit
    def _act_grad(x, ACT: tl.constexpr):
        if ACT == 1:
            return tl.where(x > 0.0, 1.0, 0.0)
        elif ACT == 2:
            t = _act(x, 2)
            return 1.0 - t * t
        elif ACT == 3:
            s = _act(x, 3)
            return s * (1.0 - s)
        elif ACT == 4:  # softplus' = sigmoid, 1 where softplus is linear
            return tl.where(x > 20.0, 1.0, _act(x, 3))
        else:
            return x * 0.0 + 1.0

    @triton.jit
    def _spmm_fwd_kernel(
        rowptr, src, w, x, out, B, stride_x, stride_out,
        ACT: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_B: tl.constexpr,
    ):
        row = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
        cmask = cols < B
        start = tl.load(rowptr + row)
        end = tl.load(rowptr + row + 1)
        acc = tl.zeros((BLOCK_B,), dtype=out.dtype.element_ty)
        for e0 in range(start, end, BLOCK_E):
            eidx = e0 + tl.arange(0, BLOCK_E)
            emask = eidx < end
            s = tl.load(src + eidx, mask=emask, other=0)
            ww = tl.load(w + eidx, mask=emask, other=0.0)
            xv = tl.load(x + s[:, None] * stride_x + cols[None, :], mask=emask[:, None] & cmask[None, :], other=0.0)
            acc += tl.sum(ww[:, None] * _act(xv, ACT), axis=0)
        tl.store(out + row * stride_out + cols, acc, mask=cmask)

    @triton.jit
    def _spmm_bwd_kernel(
        colptr, t_row, t_perm, w, x, g, grad_x, grad_w, B, stride_x, stride_g, stride_gx,
        ACT: tl.constexpr, NEED_X: tl.constexpr, NEED_W: tl.constexpr,
        BLOCK_E: tl.constexpr, BLOCK_B: tl.constexpr,
    ):
        j = tl.program_id(0)
        start = tl.load(colptr + j)
        end = tl.load(colptr + j + 1)
        for b0 in range(0, B, BLOCK_B):
            cols = b0 + tl.arange(0, BLOCK_B)
            cmask = cols < B
            xv = tl.load(x + j * stride_x + cols, mask=cmask, other=0.0)
            fx = tl.where(cmask, _act(xv, ACT), 0.0)
            acc = tl.zeros((BLOCK_B,), dtype=x.dtype.element_ty)
            for e0 in range(start, end, BLOCK_E):
                eidx = e0 + tl.arange(0, BLOCK_E)
                emask = eidx < end
                tgt = tl.load(t_row + eidx, mask=emask, other=0)
                pe = tl.load(t_perm + eidx, mask=emask, other=0)
                gv = tl.load(g + tgt[:, None] * stride_g + cols[None, :], mask=emask[:, None] & cmask[None, :], other=0.0)
                if NEED_X:
                    ww = tl.load(w + pe, mask=emask, other=0.0)
                    acc += tl.sum(ww[:, None] * gv, axis=0)
                if NEED_W:
                    part = tl.sum(gv * fx[None, :], axis=1)
                    # This program owns these edges: accumulate over column blocks in place.
                    prev = tl.load(grad_w + pe, mask=emask, other=0.0)
                    tl.store(grad_w + pe, prev + part, mask=emask)
            if NEED_X:
                tl.store(grad_x + j * stride_gx + cols, acc * _act_grad(xv, ACT), mask=cmask)


def _blocks(b: int, backward: bool = False) -> tuple[int, int, int]:
    """(BLOCK_E, BLOCK_B, num_warps) for ``B`` columns, from a sweep on an H100 (fly visual
    system, B = 256; ``benchmarks/RESULTS.md``): the forward is fastest with one program
    covering 256 columns and 16 edges at a time, the backward (which also reduces every
    edge over the columns) with 64 columns and 64 edges."""
    if backward:
        block_b = min(64, triton.next_power_of_2(max(b, 1)))
        return min(64, max(16, 4096 // block_b)), block_b, 2
    block_b = min(256, triton.next_power_of_2(max(b, 1)))
    return max(8, min(32, 4096 // block_b)), block_b, 4 if block_b >= 128 else 2


def _check(x: Tensor, w: Tensor) -> None:
    if x.dim() != 2:
        raise ValueError(f"x must be [N, B], got {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float64) or w.dtype != x.dtype:
        raise TypeError(f"the Triton kernels take float32 or float64 states and weights of the same dtype, got {x.dtype} and {w.dtype}")


def spmm_forward(
    rowptr: Tensor, src: Tensor, w_sorted: Tensor, x: Tensor, activation: str, *, blocks: tuple[int, int, int] | None = None,
) -> Tensor:
    """``y[i] = Σ_{e ∈ row i} w_e f(x[src_e])``: ``rowptr [N+1]``, ``src [E]``, ``w_sorted [E]``
    (target-sorted), ``x [N, B]`` → ``[N, B]``. ``blocks``: (BLOCK_E, BLOCK_B, num_warps)
    instead of the default, for tuning."""
    _check(x, w_sorted)
    x = x.contiguous()
    n, b = x.shape
    out = torch.empty_like(x)
    if n == 0 or b == 0:
        return out
    block_e, block_b, warps = blocks or _blocks(b)
    grid = (n, triton.cdiv(b, block_b))
    _spmm_fwd_kernel[grid](
        rowptr, src, w_sorted.contiguous(), x, out, b, x.stride(0), out.stride(0),
        ACT=KERNEL_ACTIVATIONS[activation], BLOCK_E=block_e, BLOCK_B=block_b, num_warps=warps,
    )
    return out


def spmm_backward(
    colptr: Tensor, t_row: Tensor, t_perm: Tensor, w_sorted: Tensor, x: Tensor, grad_out: Tensor,
    activation: str, need_x: bool = True, need_w: bool = True, *, blocks: tuple[int, int, int] | None = None,
) -> tuple[Tensor | None, Tensor | None]:
    """Gradients of ``y = A f(x)`` for the upstream ``grad_out [N, B]``: ``(grad_x [N, B],
    grad_w [E])``, ``grad_w`` in target-sorted edge order (None where not needed)."""
    _check(x, w_sorted)
    x, grad_out = x.contiguous(), grad_out.contiguous()
    n, b = x.shape
    grad_x = torch.empty_like(x) if need_x else None  # every entry is written by the kernel
    grad_w = torch.zeros_like(w_sorted) if need_w else None  # accumulated over column blocks
    if n == 0 or b == 0 or not (need_x or need_w):  # nothing to compute: grad_x has no entries
        return grad_x, grad_w
    block_e, block_b, warps = blocks or _blocks(b, backward=True)
    _spmm_bwd_kernel[(n,)](
        colptr, t_row, t_perm, w_sorted.contiguous(), x, grad_out,
        grad_x if need_x else x, grad_w if need_w else w_sorted,  # placeholders are never written
        b, x.stride(0), grad_out.stride(0), x.stride(0),
        ACT=KERNEL_ACTIVATIONS[activation], NEED_X=need_x, NEED_W=need_w,
        BLOCK_E=block_e, BLOCK_B=block_b, num_warps=warps,
    )
    return grad_x, grad_w


class TritonSpMM(torch.autograd.Function):
    """``y = A f(x)`` with both kernels; ``graph`` is a :class:`~graphode.layer.SparseGraph`.

    Shapes: forward(w_sorted ``[E]``, x ``[N, B]``, graph, activation) → ``[N, B]``.
    """

    @staticmethod
    def forward(ctx, w_sorted: Tensor, x: Tensor, graph, activation: str) -> Tensor:
        ctx.graph, ctx.activation = graph, activation
        ctx.save_for_backward(w_sorted, x)
        return spmm_forward(graph.rowptr, graph.src, w_sorted.detach(), x.detach(), activation)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        w_sorted, x = ctx.saved_tensors
        graph = ctx.graph
        grad_x, grad_w = spmm_backward(
            graph.colptr, graph.t_row, graph.t_perm, w_sorted.detach(), x.detach(), grad_out, ctx.activation,
            need_x=ctx.needs_input_grad[1], need_w=ctx.needs_input_grad[0],
        )
        return grad_w, grad_x, None, None
