"""Connectome-like random graphs, fast enough for whole-brain sizes.

:func:`random_connectome` builds a directed graph with heavy-tailed in- and
out-degrees, heavy-tailed integer synapse counts, Dale's-law signs and random
cell types, in the same :class:`torch_geometric.data.Data` layout as the real
connectomes used elsewhere in :mod:`graphode`:

=====================  ==================  =====================================
attribute              shape / type        meaning
=====================  ==================  =====================================
``edge_index``         Long ``[2, E]``     row 0 presynaptic source, row 1
                                           postsynaptic target; sorted by
                                           (target, source); no duplicates,
                                           no self-loops
``syn_count``          float ``[E]``       synapse count per edge (integer
                                           valued, >= 1)
``sign``               float ``[E]``       -1 (inhibitory) or +1 (excitatory),
                                           constant per source (Dale's law)
``syn_weight``         float ``[E]``       ``syn_count`` / total ``syn_count``
                                           into the target; sums to 1 per
                                           target with inputs
``cell_type``          Long ``[N]``        code in ``[0, num_cell_types)``
``cell_type_names``    ``list[str]``       ``"type0"``, ``"type1"``, ...
``edge_type``          Long ``[E]``        ``cell_type[src] * num_cell_types
                                           + cell_type[dst]``
``edge_type_names``    ``list[str]``       ``"type0->type0"``, ... (every pair)
``input_mask``         Bool ``[N]``        neurons of the first
                                           ``ceil(0.1 * num_cell_types)`` types
``output_mask``        Bool ``[N]``        neurons of the last
                                           ``ceil(0.1 * num_cell_types)`` types
``num_nodes``          ``int``             N
=====================  ==================  =====================================

Everything is vectorised torch; 139,000 neurons and 15,000,000 edges build in
seconds on a GPU (see ``benchmarks/make_large_graph.py``).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch_geometric.data import Data

__all__ = ["random_connectome"]

# No node may expect more than this fraction of all possible partners: an
# uncapped Pareto hub would ask for more unique edges than exist, and the
# duplicate-rejection top-up would never finish.
_MAX_EXPECTED_DEGREE_FRACTION = 0.5
# Above this density, rejection sampling of unique pairs becomes wasteful, so
# weighted sampling without replacement over all pairs is used instead.
_DENSE_DENSITY = 0.3
# Largest number of candidate pairs the exact all-pairs sampler may allocate.
_DENSE_MAX_PAIRS = 1 << 25
_MAX_LOCAL_ROUNDS = 8
_MAX_ROUNDS = 64
# Synapse counts: 1 + floor(LogNormal(mu, sigma)); median about 3, long tail,
# roughly the shape of thresholded FlyWire / hemibrain counts.
_SYN_LOG_MU = 0.7
_SYN_LOG_SIGMA = 1.0
_IO_TYPE_FRACTION = 0.1


def random_connectome(
    num_nodes: int,
    num_edges: int,
    *,
    num_cell_types: int = 8,
    frac_inhibitory: float = 0.2,
    degree_exponent: float = 2.1,
    locality: float | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Data:
    """Sample a connectome-like directed graph with exactly ``num_edges`` edges.

    Each neuron gets independent in- and out-propensities drawn from a Pareto
    law with density ``p(w) ~ w ** -degree_exponent`` (capped so no neuron
    expects more than half of all possible partners). Each target draws a
    Poisson number of candidate inputs proportional to its in-propensity, and
    each candidate's source is drawn by inverse-CDF sampling
    (``torch.searchsorted``) on the cumulative out-propensities, so expected
    in- and out-degrees are proportional to the propensities and heavy-tailed.
    Duplicate (pre, post) pairs and self-loops are dropped and the deficit is
    redrawn until exactly ``num_edges`` unique edges remain; when more than 30%
    of all pairs are requested (or redrawing stalls on a small graph), an exact
    weighted sample without replacement over all pairs is used instead.

    Args:
        num_nodes: N, number of neurons (>= 1).
        num_edges: E, number of unique directed edges, ``0 <= E <= N * (N - 1)``.
        num_cell_types: number of random cell types (>= 2, so that the input
            and output types are disjoint). Types are assigned in balanced
            random order, so every type is present when ``N >= num_cell_types``.
        frac_inhibitory: probability that a neuron is inhibitory; all its
            outgoing edges then have ``sign == -1``.
        degree_exponent: tail exponent of the propensity law (> 1); smaller is
            heavier. Real connectomes sit around 2 to 3.
        locality: if given (> 0), sources are drawn near their target on the
            circular node index: the offset is normal with standard deviation
            ``locality * N`` (measured in out-propensity mass, so hubs keep
            their heavy tail). Real connectomes numbered by type or position
            have this structure, and sparse kernels run faster on it. A hub
            cannot have many more unique inputs than its window holds, so
            tight locality trims the in-degree tail. If the window is too
            narrow to place every edge, the remainder is drawn without
            locality and a warning says how many.
        seed: seed of the private ``torch.Generator``; the same seed on the
            same device gives the same graph.
        device: where to build (and leave) the tensors; default CPU.
        dtype: floating dtype of ``syn_count``, ``sign`` and ``syn_weight``.

    Returns:
        A validated :class:`~torch_geometric.data.Data` in the layout of the
        module docstring.

    Raises:
        TypeError: sizes that are not ints, or a non-floating ``dtype``.
        ValueError: out-of-range arguments, including ``num_edges > N * (N - 1)``.
        RuntimeError: if a too-dense request on a graph too large for the
            all-pairs sampler cannot be completed.
    """
    _check_args(
        num_nodes, num_edges, num_cell_types, frac_inhibitory, degree_exponent, locality, dtype
    )
    dev = torch.device(device) if device is not None else torch.device("cpu")
    gen = torch.Generator(device=dev)
    gen.manual_seed(seed)
    n = num_nodes

    in_prop = _pareto(n, degree_exponent, gen, dev)
    out_prop = _pareto(n, degree_exponent, gen, dev)
    if num_edges > 0:
        in_prop = _cap_propensities(in_prop, num_edges, n)
        out_prop = _cap_propensities(out_prop, num_edges, n)

    num_pairs = n * (n - 1)
    if num_edges == 0:
        keys = torch.empty(0, dtype=torch.long, device=dev)
    elif num_edges > _DENSE_DENSITY * num_pairs and num_pairs <= _DENSE_MAX_PAIRS:
        keys = _sample_all_pairs(in_prop, out_prop, num_edges, gen)
    else:
        keys = _sample_sparse(in_prop, out_prop, num_edges, locality, gen)

    dst = torch.div(keys, n, rounding_mode="floor")
    src = keys - dst * n
    edge_index = torch.stack([src, dst])

    syn_count = _synapse_counts(num_edges, gen, dev, dtype)
    inhibitory = torch.rand(n, generator=gen, device=dev) < frac_inhibitory
    sign = torch.where(inhibitory[src], -1.0, 1.0).to(dtype)
    into_target = torch.zeros(n, dtype=dtype, device=dev).index_add_(0, dst, syn_count)
    syn_weight = syn_count / into_target[dst]

    cell_type = torch.remainder(torch.randperm(n, generator=gen, device=dev), num_cell_types)
    edge_type = cell_type[src] * num_cell_types + cell_type[dst]
    num_io = max(1, math.ceil(_IO_TYPE_FRACTION * num_cell_types))

    data = Data(
        edge_index=edge_index,
        num_nodes=n,
        syn_count=syn_count,
        sign=sign,
        syn_weight=syn_weight,
        cell_type=cell_type,
        cell_type_names=[f"type{i}" for i in range(num_cell_types)],
        edge_type=edge_type,
        edge_type_names=[f"type{i}->type{j}" for i in range(num_cell_types) for j in range(num_cell_types)],
        input_mask=cell_type < num_io,
        output_mask=cell_type >= num_cell_types - num_io,
    )
    data.validate(raise_on_error=True)
    return data


def _check_args(
    num_nodes: int,
    num_edges: int,
    num_cell_types: int,
    frac_inhibitory: float,
    degree_exponent: float,
    locality: float | None,
    dtype: torch.dtype,
) -> None:
    for name, value in (
        ("num_nodes", num_nodes),
        ("num_edges", num_edges),
        ("num_cell_types", num_cell_types),
    ):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if num_nodes < 1:
        raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
    if num_edges < 0:
        raise ValueError(f"num_edges must be >= 0, got {num_edges}")
    max_edges = num_nodes * (num_nodes - 1)
    if num_edges > max_edges:
        raise ValueError(
            f"num_edges={num_edges} is impossible: {num_nodes} nodes allow at most "
            f"N*(N-1) = {max_edges} unique edges without self-loops"
        )
    if num_cell_types < 2:
        raise ValueError(
            f"num_cell_types must be >= 2 (input and output types are disjoint), "
            f"got {num_cell_types}"
        )
    if not 0.0 <= frac_inhibitory <= 1.0:
        raise ValueError(f"frac_inhibitory must be in [0, 1], got {frac_inhibitory}")
    if not degree_exponent > 1.0 or not math.isfinite(degree_exponent):
        raise ValueError(f"degree_exponent must be a finite number > 1, got {degree_exponent}")
    if locality is not None and (not locality > 0.0 or not math.isfinite(locality)):
        raise ValueError(f"locality must be None or a finite number > 0, got {locality}")
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")


def _pareto(n: int, exponent: float, gen: torch.Generator, dev: torch.device) -> torch.Tensor:
    """Pareto(x_min=1) samples with density ~ w**-exponent; float64 ``[n]``."""
    # 1 - U lies in (0, 1], so the power never divides by zero.
    u = 1.0 - torch.rand(n, generator=gen, device=dev, dtype=torch.float64)
    return u.pow(-1.0 / (exponent - 1.0))


def _cap_propensities(w: torch.Tensor, num_edges: int, n: int) -> torch.Tensor:
    """Clamp ``w`` ([N], float64) so no expected degree exceeds half the partners.

    Clamping lowers the total, which raises everyone's share, so a few fixed
    point iterations are needed; they converge fast because only the tail moves.
    """
    max_degree = _MAX_EXPECTED_DEGREE_FRACTION * max(n - 1, 1)
    for _ in range(20):
        limit = max_degree * w.sum() / num_edges
        if bool((w <= limit).all()):
            break
        w = w.clamp(max=limit)
    return w


def _draw_keys(
    in_weight: torch.Tensor,
    out_cdf: torch.Tensor,
    out_mid: torch.Tensor | None,
    locality: float | None,
    count: int,
    gen: torch.Generator,
) -> torch.Tensor:
    """Draw about ``count`` candidate edges as keys ``dst * N + src``.

    ``in_weight`` ([N], float64) is normalised in-propensity, ``out_cdf`` ([N])
    the normalised cumulative out-propensity and ``out_mid`` ([N] or None) the
    centre of each neuron's slice of out-propensity mass. Returns Long
    ``[M]``, M ~ Poisson(count), sorted by ``dst`` (not yet by ``src``), with
    self-loops dropped and duplicates left to the caller.
    """
    n = out_cdf.numel()
    dev = out_cdf.device
    # Poisson in-degrees + repeat_interleave give targets already in sorted
    # order, several times cheaper than inverse-CDF sampling of every target.
    in_deg = torch.poisson(in_weight * count, generator=gen).long()
    dst = torch.repeat_interleave(torch.arange(n, device=dev), in_deg)
    m = dst.numel()
    if locality is None or out_mid is None:
        u = torch.rand(m, generator=gen, device=dev, dtype=torch.float64)
    else:
        # Offsetting in out-propensity mass (not raw index) keeps the source
        # marginal proportional to out-propensity, so out-hubs survive.
        noise = torch.randn(m, generator=gen, device=dev, dtype=torch.float64)
        u = torch.remainder(out_mid[dst] + locality * noise, 1.0)
    src = torch.searchsorted(out_cdf, u, right=True).clamp_(max=n - 1)
    keep = src != dst
    return (dst * n + src)[keep]


def _normalised_cdf(w: torch.Tensor) -> torch.Tensor:
    cdf = torch.cumsum(w, 0)
    return cdf / cdf[-1]


def _merge_new(keys: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
    """Sorted union of sorted unique ``keys`` [K] and unsorted ``fresh`` [M].

    Merging by searchsorted costs O(K + M log M) instead of re-sorting all
    K + M keys every top-up round.
    """
    fresh = torch.unique(fresh)
    if keys.numel() == 0:
        return fresh
    pos = torch.searchsorted(keys, fresh)
    seen = keys[pos.clamp(max=keys.numel() - 1)] == fresh
    add, pos = fresh[~seen], pos[~seen]
    # Entry i of `add` lands after the pos[i] old keys and the i new ones before it.
    slot = pos + torch.arange(add.numel(), device=keys.device)
    merged = torch.empty(keys.numel() + add.numel(), dtype=keys.dtype, device=keys.device)
    is_new = torch.zeros(merged.numel(), dtype=torch.bool, device=keys.device)
    is_new[slot] = True
    merged[slot] = add
    merged[~is_new] = keys
    return merged


def _sample_sparse(
    in_prop: torch.Tensor,
    out_prop: torch.Tensor,
    num_edges: int,
    locality: float | None,
    gen: torch.Generator,
) -> torch.Tensor:
    """Unique sorted keys ``dst * N + src`` (Long ``[num_edges]``) by rejection + top-up."""
    n = in_prop.numel()
    in_weight = in_prop / in_prop.sum()
    out_cdf = _normalised_cdf(out_prop)
    out_mid = out_cdf - 0.5 * out_prop / out_prop.sum() if locality is not None else None

    keys = torch.empty(0, dtype=torch.long, device=in_prop.device)
    acceptance = 1.0
    local = locality
    for round_ in range(_MAX_ROUNDS):
        if local is not None and round_ == _MAX_LOCAL_ROUNDS:
            warnings.warn(
                f"locality={locality} is too narrow for {num_edges} edges on {n} nodes; "
                f"drawing the remaining {num_edges - keys.numel()} edges without locality",
                RuntimeWarning,
                stacklevel=3,
            )
            local, acceptance = None, 1.0
        need = num_edges - keys.numel()
        # Oversample by the last round's unique-yield so most runs need one or
        # two rounds; the floor keeps tiny deficits from taking many rounds.
        count = int(need / max(acceptance, 0.05) * 1.05) + 64
        before = keys.numel()
        keys = _merge_new(keys, _draw_keys(in_weight, out_cdf, out_mid, local, count, gen))
        acceptance = max((keys.numel() - before) / count, 1e-6)
        if keys.numel() >= num_edges:
            return _drop_random(keys, keys.numel() - num_edges, gen)

    if n * (n - 1) <= _DENSE_MAX_PAIRS:
        return _sample_all_pairs(in_prop, out_prop, num_edges, gen)
    raise RuntimeError(
        f"could not place {num_edges} unique edges on {n} nodes after {_MAX_ROUNDS} rounds "
        f"({keys.numel()} placed); the request is too dense for the sparse sampler, "
        f"lower num_edges or raise degree_exponent"
    )


def _drop_random(keys: torch.Tensor, surplus: int, gen: torch.Generator) -> torch.Tensor:
    """Remove ``surplus`` uniformly chosen entries of ``keys`` ([M]), keeping order."""
    if surplus == 0:
        return keys
    # The `surplus` largest of M uniform scores are a uniform random subset;
    # topk is O(M) for small surpluses where a full randperm is not.
    score = torch.rand(keys.numel(), generator=gen, device=keys.device)
    drop = torch.topk(score, surplus).indices
    keep = torch.ones(keys.numel(), dtype=torch.bool, device=keys.device)
    keep[drop] = False
    return keys[keep]


def _sample_all_pairs(
    in_prop: torch.Tensor, out_prop: torch.Tensor, num_edges: int, gen: torch.Generator
) -> torch.Tensor:
    """Exact weighted sample without replacement over all ``N*(N-1)`` pairs.

    Efraimidis-Spirakis: the ``num_edges`` smallest ``Exp(1) / w`` keys win,
    with pair weight ``w = in_prop[dst] * out_prop[src]``. Returns sorted
    unique keys ``dst * N + src`` (Long ``[num_edges]``); O(N^2) memory.
    """
    weight = in_prop[:, None] * out_prop[None, :]  # [dst, src]
    weight.fill_diagonal_(0.0)
    exp = torch.empty_like(weight).exponential_(generator=gen)
    score = (exp / weight).flatten()  # self-loops get +inf and never win
    chosen = torch.topk(score, num_edges, largest=False).indices
    # The flattened [dst, src] index already is the key dst * N + src.
    return torch.sort(chosen).values


def _synapse_counts(
    num_edges: int, gen: torch.Generator, dev: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Heavy-tailed integer-valued counts >= 1, ``[num_edges]`` of ``dtype``."""
    normal = torch.randn(num_edges, generator=gen, device=dev)
    counts = torch.exp_(normal.mul_(_SYN_LOG_SIGMA).add_(_SYN_LOG_MU)).floor_().add_(1.0)
    return counts.to(dtype)
