"""The memory layout of batched neuron states.

The ODE state is ``[B, N]`` (torchode: one row per sample, each with its own time and step
size), while message passing works on ``[N, B]`` rows of one neuron's states across the
batch (one sparse product for the whole batch, contiguous gathers). graphode stores the
``[B, N]`` state *node-major*, with strides ``(1, B)``: its transpose is the contiguous
``[N, B]`` the sparse product reads, the product's ``[N, B]`` output transposes back to the
same layout, and every elementwise op of the solver keeps it. Without this, each field
evaluation copied the state into ``[N, B]`` and the result back, forward and backward
(about a quarter of a training step on the fly visual system, profiled on an H100).
"""

from __future__ import annotations

import torch
from torch import Tensor


def node_major(v: Tensor) -> Tensor:
    """``v [B, N]`` with the same values, stored so that ``v.t()`` is contiguous
    (differentiable; no copy when it already is)."""
    if v.dim() != 2 or v.t().is_contiguous():
        return v
    return v.t().contiguous().t()


class _NodeMajorGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v: Tensor) -> Tensor:
        return v.view_as(v)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return node_major(grad)


def node_major_grad(v: Tensor) -> Tensor:
    """``v`` itself, whose gradient is passed on node-major.

    Gradients that reach the solver from outside (the readout's, through torchode's
    ``[B, T, N]`` output buffer) arrive row-major. Mixed with the node-major tensors the
    field saved, every elementwise op of its backward would run strided. Applied to the
    field's output, this converts such a gradient once, where it enters.
    """
    if not (torch.is_grad_enabled() and v.requires_grad):
        return v
    return _NodeMajorGrad.apply(v)
