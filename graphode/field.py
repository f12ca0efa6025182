"""The protocol between :func:`~graphode.solve` and a vector field.

A solve evaluates its vector field tens of times with the same arguments and the same
parameters. :class:`VectorField` splits one evaluation into three named steps, so that
each piece of work is done once, where the gradient method allows:

``prepare(*args) -> inputs``
    once per solve, from the solver's ``args`` (for
    :class:`~graphode.dynamics.ConnectomeDynamics`: the graph and the stimulus). Work that
    depends on the arguments only: wrapping a stimulus, reading a graph's attributes,
    checking codes against vocabularies. Never differentiated through parameters.
``derive(inputs) -> derived``
    the tensors computed from the module's parameters (synaptic weights ``[E]``, time
    constants and resting drive ``[N]``): once per solve under autodiff, once per segment
    under ``Checkpoint`` (its recomputation derives them again), at every evaluation of the
    continuous adjoint's backward pass (each evaluation is differentiated on its own).
``evaluate(t, y, inputs, derived) -> dy/dt``
    the evaluation itself, ``t [B]``, ``y [B, N]`` → ``[B, N]``.

``time_scale(inputs, derived) -> float | None``
    optional: the field's shortest time scale (for :class:`~graphode.dynamics.ConnectomeDynamics`
    the smallest time constant), which sets the continuous adjoint's segment length.

``forward(t, y, *args)`` chains the three, so a field is also an ordinary module; a solve
calls ``evaluate`` directly, so forward hooks on the field do not run there (hooks on its
submodules, e.g. a message-passing layer, do). A plain
callable ``f(t, y, *args)`` is a field too: :func:`as_field` wraps it (nothing to prepare or
derive).

Tensors that the continuous adjoint returns gradients for are the field's parameters and
the tensors of ``args`` that require grad (:func:`arg_tensors`): plain tensors and
:class:`~graphode.dynamics.Stimulus` values. Graph objects in ``args`` are constants.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from torch import Tensor, nn

__all__ = ["VectorField"]


class VectorField(nn.Module):
    """Base class of vector fields solved by :func:`~graphode.solve` (module docs).

    Shapes: evaluate(t ``[B]``, y ``[B, N]``, inputs, derived) → ``[B, N]``.
    """

    def prepare(self, *args: Any) -> Any:
        """The solver's ``args`` → the inputs of every evaluation (default: ``args``)."""
        return args

    def derive(self, inputs: Any) -> Any:
        """Parameters → the tensors every evaluation reads (default: None)."""
        return None

    def evaluate(self, t: Tensor, y: Tensor, inputs: Any, derived: Any) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def time_scale(self, inputs: Any, derived: Any) -> float | None:
        """The field's shortest time scale (None: unknown). The continuous adjoint keeps
        its segments a few of these long (:class:`~graphode.gradients.Adjoint`)."""
        return None

    def forward(self, t: Tensor, y: Tensor, *args: Any) -> Tensor:
        inputs = self.prepare(*args)
        return self.evaluate(t, y, inputs, self.derive(inputs))


class _CallableField(VectorField):
    """A plain ``f(t, y, *args)`` as a :class:`VectorField`; its parameters are ``f``'s when
    ``f`` is a module."""

    def __init__(self, fn: Callable[..., Tensor]):
        super().__init__()
        if isinstance(fn, nn.Module):
            self.fn = fn
        else:
            self.__dict__["fn"] = fn

    def evaluate(self, t: Tensor, y: Tensor, inputs: Sequence[Any], derived: Any) -> Tensor:
        return self.fn(t, y, *inputs)


def as_field(field: Callable[..., Tensor]) -> VectorField:
    """``field`` itself if it is a :class:`VectorField`, else the callable wrapped as one."""
    if isinstance(field, VectorField):
        return field
    if not callable(field):
        raise TypeError(f"field must be a VectorField or a callable f(t, y, *args), got {type(field).__name__}")
    return _CallableField(field)


def arg_tensors(args: Sequence[Any]) -> list[Tensor]:
    """Tensors that ``args`` depend on: plain tensors and ``obj.tensors()`` (a Stimulus)."""
    out: list[Tensor] = []
    for a in args:
        if isinstance(a, Tensor):
            out.append(a)
        elif hasattr(a, "tensors"):
            out.extend(a.tensors())
    return out


def detached_args(args: Sequence[Any]) -> tuple[tuple[Any, ...], list[Tensor], list[Tensor]]:
    """``args`` with every tensor of :func:`arg_tensors` that requires grad replaced by a
    detached leaf; returns ``(args, originals, leaves)``, pairwise in the same order.

    The continuous adjoint differentiates each backward evaluation with respect to these
    leaves; their history (a weight computed from a parameter, say) is then followed once,
    by autograd, from the gradients the adjoint returns for the originals. An object whose
    ``tensors()`` require grad must rebuild itself from new ones (``with_tensors``).
    """
    originals: list[Tensor] = []
    leaves: list[Tensor] = []

    def leaf(t: Tensor) -> Tensor:
        if not t.requires_grad:
            return t
        out = t.detach().requires_grad_(True)
        originals.append(t)
        leaves.append(out)
        return out

    out = []
    for a in args:
        if isinstance(a, Tensor):
            out.append(leaf(a))
        elif hasattr(a, "tensors") and any(t.requires_grad for t in a.tensors()):
            if not hasattr(a, "with_tensors"):
                raise TypeError(
                    f"{type(a).__name__} holds tensors that require grad but has no with_tensors(): the adjoint "
                    "cannot return their gradients; use gradient='autodiff' or 'checkpoint'"
                )
            out.append(a.with_tensors([leaf(t) for t in a.tensors()]))
        else:
            out.append(a)
    return tuple(out), originals, leaves
