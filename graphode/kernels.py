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

A third pair serves the Runge–Kutta solver (:mod:`graphode.runge_kutta`): a stage input
``y0 + dt_b · Σ_j c_j k_j`` in one pass over its ``[B, N]`` operands (torch needs one
kernel per term), and its backward, all the scaled gradients ``c_j · dt_b · g`` from one
read of ``g`` (:class:`FusedCombination`). A fourth computes the vector field's leaky
integrator ``(b - v + a + u) / τ`` and, backward, ``±g/τ`` with the batch sums that are the
gradients of ``b`` and ``τ`` (:class:`LeakyIntegrator`).

The kernels run on CUDA tensors; with ``TRITON_INTERPRET=1`` Triton runs them on the CPU,
which is how the tests check them without a GPU. Accumulation is in the input dtype
(float32 or float64; the stage sums take float32 only).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._activations import activation_code

try:  # triton ships with torch on Linux; keep graphode importable without it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

__all__ = ["triton_available", "TritonSpMM", "FusedCombination", "LeakyIntegrator"]

def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def fusing(t: Tensor, fuse: bool | None = None) -> bool:
    """Whether the solver's fused kernels run for tensors on ``t``'s device, under the
    fusion policy ``fuse``: None (default) on CUDA only; True also in Triton's interpreter
    (``TRITON_INTERPRET=1``, for tests on a CPU; the interpreter is slow); False never."""
    if fuse is False or triton is None:
        return False
    return t.is_cuda or (fuse is True and interpreting())


def triton_available(device: torch.device | str | None = None) -> bool:
    """Whether the Triton kernels can run on ``device`` (CUDA, or any device in interpreter mode).

    Shapes:
        no tensors: a device → bool.
    """
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
        ACT=activation_code(activation), BLOCK_E=block_e, BLOCK_B=block_b, num_warps=warps,
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
        ACT=activation_code(activation), NEED_X=need_x, NEED_W=need_w,
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
    @once_differentiable  # the kernels have no derivative of their own: double backward raises
    def backward(ctx, grad_out: Tensor):
        w_sorted, x = ctx.saved_tensors
        graph = ctx.graph
        grad_x, grad_w = spmm_backward(
            graph.colptr, graph.t_row, graph.t_perm, w_sorted.detach(), x.detach(), grad_out, ctx.activation,
            need_x=ctx.needs_input_grad[1], need_w=ctx.needs_input_grad[0],
        )
        return grad_w, grad_x, None, None


# -- Runge–Kutta stage combinations ----------------------------------------------------------
MAX_TERMS = 7  # the most stages a tableau here combines (Dopri5, Tsit5: 7)

if triton is not None:

    # The [B, N] operands are walked as the [R, C] row-major matrix their memory is:
    # [N, B] for node-major states (the sample is the column), [B, N] otherwise (the row).

    @triton.jit
    def _tile(dt, R, C, NODE_MAJOR: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        """This program's tile: memory offsets ``[BLOCK_R, BLOCK_C]``, their mask, and each
        element's step size (the sample is the column when node-major, else the row)."""
        # a 1-D grid of tiles: a flat [1, X] operand (the adjoint's augmented state) has
        # more column blocks than a grid's second axis may hold (65,535)
        pid = tl.program_id(0)
        tiles_c = tl.cdiv(C, BLOCK_C)
        rows = (pid // tiles_c) * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = (pid % tiles_c) * BLOCK_C + tl.arange(0, BLOCK_C)
        mask = (rows < R)[:, None] & (cols < C)[None, :]
        offs = rows.to(tl.int64)[:, None] * C + cols[None, :]
        if NODE_MAJOR:
            step = tl.load(dt + cols, mask=cols < C)[None, :]
        else:
            step = tl.load(dt + rows, mask=rows < R)[:, None]
        return offs, mask, step

    @triton.jit
    def _combination_fwd_kernel(
        out, y0, dt, k0, k1, k2, k3, k4, k5, k6, c0, c1, c2, c3, c4, c5, c6, R, C,
        TERMS: tl.constexpr, HAS_Y0: tl.constexpr, NODE_MAJOR: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        offs, mask, step = _tile(dt, R, C, NODE_MAJOR, BLOCK_R, BLOCK_C)
        acc = c0 * tl.load(k0 + offs, mask=mask)
        if TERMS > 1:
            acc += c1 * tl.load(k1 + offs, mask=mask)
        if TERMS > 2:
            acc += c2 * tl.load(k2 + offs, mask=mask)
        if TERMS > 3:
            acc += c3 * tl.load(k3 + offs, mask=mask)
        if TERMS > 4:
            acc += c4 * tl.load(k4 + offs, mask=mask)
        if TERMS > 5:
            acc += c5 * tl.load(k5 + offs, mask=mask)
        if TERMS > 6:
            acc += c6 * tl.load(k6 + offs, mask=mask)
        acc = acc * step
        if HAS_Y0:
            acc += tl.load(y0 + offs, mask=mask)
        tl.store(out + offs, acc, mask=mask)

    @triton.jit
    def _combination_bwd_kernel(
        g, dt, o0, o1, o2, o3, o4, o5, o6, c0, c1, c2, c3, c4, c5, c6, R, C,
        TERMS: tl.constexpr, NODE_MAJOR: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        offs, mask, step = _tile(dt, R, C, NODE_MAJOR, BLOCK_R, BLOCK_C)
        gd = tl.load(g + offs, mask=mask) * step
        tl.store(o0 + offs, c0 * gd, mask=mask)
        if TERMS > 1:
            tl.store(o1 + offs, c1 * gd, mask=mask)
        if TERMS > 2:
            tl.store(o2 + offs, c2 * gd, mask=mask)
        if TERMS > 3:
            tl.store(o3 + offs, c3 * gd, mask=mask)
        if TERMS > 4:
            tl.store(o4 + offs, c4 * gd, mask=mask)
        if TERMS > 5:
            tl.store(o5 + offs, c5 * gd, mask=mask)
        if TERMS > 6:
            tl.store(o6 + offs, c6 * gd, mask=mask)


def _combination_grid(shape: torch.Size, node_major: bool) -> tuple[int, int, tuple[int], int, int]:
    """(R, C, grid, BLOCK_R, BLOCK_C) for ``[B, N]`` operands of the given layout."""
    b, n = shape
    r, c = (n, b) if node_major else (b, n)
    block_c = min(256, triton.next_power_of_2(max(c, 1)))
    block_r = min(max(1, 2048 // block_c), triton.next_power_of_2(max(r, 1)))
    block_c = min(triton.next_power_of_2(max(c, 1)), 2048 // block_r)  # few rows: wider tiles
    return r, c, (triton.cdiv(r, block_r) * triton.cdiv(c, block_c),), block_r, block_c


def _layout_of(tensors: list[Tensor]) -> bool | None:
    """True for node-major ``[B, N]`` (strides ``(1, B)``), False for row-major, None when
    the tensors differ in layout or are not dense (the kernels index raw memory)."""
    first = tensors[0]
    b, n = first.shape
    if first.is_contiguous():
        node_major = False
    elif first.t().is_contiguous():
        node_major = True
    else:
        return None
    if any(t.shape != first.shape or t.stride() != first.stride() for t in tensors[1:]):
        return None
    return node_major


def combination_supported(y0: Tensor | None, dt: Tensor, stages: list[Tensor], fuse: bool | None = None) -> bool:
    """Whether the fused kernels take these operands: float32 on CUDA (:func:`fusing`; the coefficients
    are passed as float32 scalars, so float64 stays with torch), 1–7 equally laid out dense
    ``[B, N]`` tensors, ``dt [B, 1]`` on their device and not requiring grad."""
    if triton is None or not stages or len(stages) > MAX_TERMS:
        return False
    tensors = stages if y0 is None else [y0, *stages]
    first = tensors[0]
    return (
        fusing(first, fuse) and first.dim() == 2 and first.dtype == torch.float32
        and all(t.dtype == torch.float32 and t.device == first.device for t in tensors)
        and dt.shape == (first.size(0), 1) and dt.dtype == torch.float32 and dt.device == first.device
        and not dt.requires_grad  # the kernels treat step sizes as constants
        and _layout_of(tensors) is not None
    )


def _padded(items: list, fill) -> list:
    return list(items) + [fill] * (MAX_TERMS - len(items))


def combination_forward(y0: Tensor | None, dt: Tensor, coefficients: list[float], stages: list[Tensor]) -> Tensor:
    """``y0 + dt · Σ_j coefficients[j] · stages[j]`` (without ``y0`` if None) in one kernel;
    ``y0, stages[j]: [B, N]``, ``dt: [B, 1]``. Check :func:`combination_supported` first."""
    tensors = stages if y0 is None else [y0, *stages]
    node_major = _layout_of(tensors)
    out = torch.empty_like(stages[0])
    if out.numel() == 0:
        return out
    r, c, grid, block_r, block_c = _combination_grid(out.shape, node_major)
    _combination_fwd_kernel[grid](
        out, stages[0] if y0 is None else y0, dt.contiguous(), *_padded(stages, stages[0]),
        *_padded([float(c) for c in coefficients], 0.0), r, c,
        TERMS=len(stages), HAS_Y0=y0 is not None, NODE_MAJOR=node_major, BLOCK_R=block_r, BLOCK_C=block_c,
    )
    return out


def combination_backward(grad: Tensor, dt: Tensor, coefficients: list[float]) -> list[Tensor]:
    """``[c_j · dt · grad for each coefficient c_j]`` from one read of ``grad [B, N]``."""
    grad = grad if _layout_of([grad]) is not None else grad.contiguous()
    node_major = _layout_of([grad])
    outs = [torch.empty_like(grad) for _ in coefficients]
    if grad.numel() == 0:
        return outs
    r, c, grid, block_r, block_c = _combination_grid(grad.shape, node_major)
    _combination_bwd_kernel[grid](
        grad, dt.contiguous(), *_padded(outs, outs[0]), *_padded([float(c) for c in coefficients], 0.0),
        r, c, TERMS=len(coefficients), NODE_MAJOR=node_major, BLOCK_R=block_r, BLOCK_C=block_c,
    )
    return outs


class FusedCombination(torch.autograd.Function):
    """``y0 + dt · Σ_j c_j k_j`` with one kernel forward and one backward.

    Shapes: forward(dt ``[B, 1]``, coefficients (floats), y0 ``[B, N]`` or None, *stages
    ``[B, N]``) → ``[B, N]``. ``dt`` is a constant to the gradient (step sizes are, in
    graphode's solves; :func:`combination_supported` refuses a ``dt`` that requires grad).
    Under ``create_graph`` the backward is computed with torch ops, so that it can be
    differentiated again.
    """

    @staticmethod
    def forward(ctx, dt: Tensor, coefficients: tuple[float, ...], y0: Tensor | None, *stages: Tensor) -> Tensor:
        ctx.save_for_backward(dt)
        ctx.coefficients, ctx.has_y0 = coefficients, y0 is not None
        return combination_forward(y0, dt.detach(), list(coefficients), [k.detach() for k in stages])

    @staticmethod
    def backward(ctx, grad: Tensor):
        (dt,) = ctx.saved_tensors
        needed = ctx.needs_input_grad[3:]
        if torch.is_grad_enabled():  # create_graph: differentiable torch expressions
            grads = [grad * (c * dt) if need else None for c, need in zip(ctx.coefficients, needed)]
        else:
            coefficients = [c for c, need in zip(ctx.coefficients, needed) if need]
            scaled = iter(combination_backward(grad, dt, coefficients) if coefficients else [])
            grads = [next(scaled) if need else None for need in needed]
        return (None, None, grad if ctx.has_y0 else None, *grads)


# -- the leaky integrator: rhs = (b - v + a + u) / τ --------------------------------------
if triton is not None:

    @triton.jit
    def _leaky_fwd_kernel(
        out, v, a, u, bias, tau, N, B,
        HAS_A: tl.constexpr, HAS_U: tl.constexpr, BIAS_PER_NODE: tl.constexpr, TAU_PER_NODE: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
        row_ok = rows < N
        mask = row_ok[:, None] & (cols < B)[None, :]
        offs = rows.to(tl.int64)[:, None] * B + cols[None, :]
        b = tl.load(bias + rows, mask=row_ok) if BIAS_PER_NODE else tl.load(bias + rows * 0, mask=row_ok)
        t = tl.load(tau + rows, mask=row_ok, other=1.0) if TAU_PER_NODE else tl.load(tau + rows * 0, mask=row_ok, other=1.0)
        s = b[:, None] - tl.load(v + offs, mask=mask)
        if HAS_A:
            s += tl.load(a + offs, mask=mask)
        if HAS_U:
            s += tl.load(u + offs, mask=mask)
        tl.store(out + offs, s / t[:, None], mask=mask)

    @triton.jit
    def _leaky_bwd_kernel(
        g, rhs, tau, grad_s, grad_neg, grad_bias, grad_tau, N, B,
        TAU_PER_NODE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr,
    ):
        # one program per block of neurons, over all B columns: the per-neuron sums over the
        # batch (gradients of b and τ) stay in registers. With s = b - v + a + u:
        # ∂rhs/∂(a, u, b) = 1/τ, ∂rhs/∂v = -1/τ, ∂rhs/∂τ = -s/τ² = -rhs/τ.
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        t = tl.load(tau + rows, mask=row_ok, other=1.0) if TAU_PER_NODE else tl.load(tau + rows * 0, mask=row_ok, other=1.0)
        sum_gs = tl.zeros((BLOCK_N,), dtype=tl.float32 if g.dtype.element_ty == tl.float32 else tl.float64)
        sum_gsr = tl.zeros((BLOCK_N,), dtype=tl.float32 if g.dtype.element_ty == tl.float32 else tl.float64)
        for start in range(0, B, BLOCK_B):
            cols = start + tl.arange(0, BLOCK_B)
            mask = row_ok[:, None] & (cols < B)[None, :]
            offs = rows.to(tl.int64)[:, None] * B + cols[None, :]
            gs = tl.load(g + offs, mask=mask, other=0.0) / t[:, None]
            tl.store(grad_s + offs, gs, mask=mask)
            tl.store(grad_neg + offs, -gs, mask=mask)
            sum_gs += tl.sum(gs, axis=1)
            sum_gsr += tl.sum(gs * tl.load(rhs + offs, mask=mask, other=0.0), axis=1)
        tl.store(grad_bias + rows, sum_gs, mask=row_ok)
        tl.store(grad_tau + rows, -sum_gsr, mask=row_ok)


def leaky_supported(
    v: Tensor, a: Tensor | None, u: Tensor | None, bias: Tensor, tau: Tensor, fuse: bool | None = None
) -> bool:
    """Whether the fused leaky-integrator kernels take these operands: :func:`fusing`,
    float32 or float64, ``v, a, u: [B, N]`` all node-major (strides ``(1, B)``),
    ``bias, tau: [N]`` or ``[1]`` of the same dtype."""
    if not fusing(v, fuse) or v.dim() != 2 or v.dtype not in (torch.float32, torch.float64):
        return False
    n = v.size(1)
    states = [x for x in (v, a, u) if x is not None]
    vectors_ok = all(
        x.dim() == 1 and x.numel() in (1, n) and x.dtype == v.dtype and x.device == v.device and x.is_contiguous()
        for x in (bias, tau)
    )
    return vectors_ok and all(
        x.shape == v.shape and x.dtype == v.dtype and x.device == v.device and x.t().is_contiguous() for x in states
    )


def _leaky_launch(v: Tensor):
    n, b = v.size(1), v.size(0)
    block_b = min(256, triton.next_power_of_2(max(b, 1)))
    block_n = max(1, 2048 // block_b)
    return n, b, block_n, block_b


def _leaky_backward_torch(ctx, grad: Tensor, rhs: Tensor, tau: Tensor):
    gs = grad / tau
    need = ctx.needs_input_grad

    def per_vector(x: Tensor, per_node: bool) -> Tensor:
        return x.sum(0) if per_node else x.sum().reshape(1)

    return (
        -gs if need[0] else None,
        gs if need[1] else None,
        gs if need[2] else None,
        per_vector(gs, ctx.bias_per_node) if need[3] else None,
        per_vector(-gs * rhs, tau.numel() == rhs.size(1)) if need[4] else None,
    )


class LeakyIntegrator(torch.autograd.Function):
    """``(b - v + a + u) / τ`` in one kernel forward and one backward (which also reduces
    the gradients of ``b`` and ``τ`` over the batch). Check :func:`leaky_supported` first.

    Shapes: forward(v ``[B, N]``, a ``[B, N]`` or None, u ``[B, N]`` or None, bias ``[N]``
    or ``[1]``, tau ``[N]`` or ``[1]``) → ``[B, N]`` node-major. Under ``create_graph`` the
    backward is computed with torch ops, so that it can be differentiated again.
    """

    @staticmethod
    def forward(ctx, v: Tensor, a: Tensor | None, u: Tensor | None, bias: Tensor, tau: Tensor) -> Tensor:
        n, b, block_n, block_b = _leaky_launch(v)
        out = torch.empty_like(v)  # empty_like keeps v's node-major strides
        if v.numel():
            _leaky_fwd_kernel[(triton.cdiv(n, block_n), triton.cdiv(b, block_b))](
                out, v, v if a is None else a, v if u is None else u, bias, tau, n, b,
                HAS_A=a is not None, HAS_U=u is not None, BIAS_PER_NODE=bias.numel() == n, TAU_PER_NODE=tau.numel() == n,
                BLOCK_N=block_n, BLOCK_B=block_b,
            )
        # the output alone serves the backward: one saved [B, N] per evaluation, as torch's
        # division saves, where saving v, a and u would hold two more
        ctx.save_for_backward(out, tau)
        ctx.bias_per_node = bias.numel() == n
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        rhs, tau = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: differentiable torch expressions
            return _leaky_backward_torch(ctx, grad, rhs, tau)
        grad = grad if grad.t().is_contiguous() else grad.t().contiguous().t()
        n, b, block_n, block_b = _leaky_launch(rhs)
        grad_s, grad_neg = torch.empty_like(rhs), torch.empty_like(rhs)
        grad_bias = torch.empty(n, dtype=rhs.dtype, device=rhs.device)
        grad_tau = torch.empty(n, dtype=rhs.dtype, device=rhs.device)
        if rhs.numel():
            _leaky_bwd_kernel[(triton.cdiv(n, block_n),)](
                grad, rhs, tau, grad_s, grad_neg, grad_bias, grad_tau, n, b,
                TAU_PER_NODE=tau.numel() == n, BLOCK_N=block_n, BLOCK_B=block_b,
            )
        else:
            grad_bias.zero_(), grad_tau.zero_()
        need = ctx.needs_input_grad
        return (
            grad_neg if need[0] else None,
            grad_s if need[1] else None,
            grad_s if need[2] else None,
            (grad_bias if ctx.bias_per_node else grad_bias.sum().reshape(1)) if need[3] else None,
            (grad_tau if tau.numel() == n else grad_tau.sum().reshape(1)) if need[4] else None,
        )
