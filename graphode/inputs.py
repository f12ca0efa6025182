"""Input mappings: from a stimulus (e.g. an image) to a drive current per neuron.

Every mapping is a :class:`SparseProjection` from ``F`` stimulus features to ``N`` neurons,
``u[b, n] = Σ_f P[n, f] · x[b, f]``; they differ in how ``P`` is built:

:func:`hex_retina`
    the physically meaningful retina of the fly visual system: each photoreceptor
    (``data.input_mask``, R1–R8) reads the image intensity at its column's position, by
    bilinear interpolation. The hexagonal lattice is centred on the image and scaled so
    that its outermost columns sit ``margin`` pixels inside the image border. Two
    orientations (:func:`retina_pixel_coordinates`): ``"published"``, the published model's
    eye, where the image row grows with ``u + v/2`` and the image column with ``v``; and
    ``"lattice"`` (default), the Cartesian layout of ``data.pos`` drawn with y up, rotated by
    about 90° from it.
:func:`random_pixels`
    the torch-biopl tutorial's mapping: every pixel drives one uniformly random neuron.
:class:`SparseProjection`
    any user-supplied sparse matrix (fixed or learnable values).

:class:`NodeDrive` is the graph-level counterpart: a learnable, constant drive per neuron
computed from node features ``x [N, F]`` and a per-graph stimulus ``[G, S]`` (a graph-level
attribute of each ``Data``, which PyG stacks into ``[G, S]`` in a ``Batch``), for tasks
where every sample is a different graph.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["SparseProjection", "NodeDrive", "hex_retina", "random_pixels", "retina_pixel_coordinates", "ORIENTATIONS"]


class SparseProjection(nn.Module):
    """``u = P x`` for a sparse ``P [N, F]`` given by its non-zeros.

    Args:
        index: ``[2, K]`` LongTensor, row 0 the neuron, row 1 the feature.
        value: ``[K]`` entries of ``P``.
        num_nodes: N.
        num_features: F.
        learnable: make ``value`` a parameter.
        gain: a scalar multiplying ``P`` (learnable with ``learnable_gain``).

    Shapes:
        forward(x ``[B, F]`` or ``[B, *feature_shape]`` with ``prod = F``) → ``[B, N]``.
    """

    def __init__(
        self,
        index: Tensor,
        value: Tensor,
        num_nodes: int,
        num_features: int,
        *,
        learnable: bool = False,
        gain: float = 1.0,
        learnable_gain: bool = False,
    ):
        super().__init__()
        index = torch.as_tensor(index, dtype=torch.long)
        value = torch.as_tensor(value, dtype=torch.float32)
        if index.dim() != 2 or index.size(0) != 2 or value.shape != (index.size(1),):
            raise ValueError(f"index must be [2, K] and value [K]; got {tuple(index.shape)} and {tuple(value.shape)}")
        if index.numel() and (index[0].min() < 0 or index[0].max() >= num_nodes):
            raise ValueError(f"projection targets neurons outside [0, {num_nodes})")
        if index.numel() and (index[1].min() < 0 or index[1].max() >= num_features):
            raise ValueError(f"projection reads features outside [0, {num_features})")
        if not torch.isfinite(value).all():
            raise ValueError("projection values hold NaN or inf")
        self.num_nodes, self.num_features = int(num_nodes), int(num_features)
        self.register_buffer("index", index)
        if learnable:
            self.value = nn.Parameter(value)
        else:
            self.register_buffer("value", value)
        g = torch.tensor(float(gain))
        if learnable_gain:
            self.gain = nn.Parameter(g)
        else:
            self.register_buffer("gain", g)

    def dense(self) -> Tensor:
        """The projection as a dense ``[N, F]`` matrix (for inspection and tests)."""
        p = torch.zeros(self.num_nodes, self.num_features, dtype=self.value.dtype, device=self.value.device)
        return p.index_put_((self.index[0], self.index[1]), self.value, accumulate=True) * self.gain

    def forward(self, x: Tensor) -> Tensor:
        x = x.reshape(x.size(0), -1)
        if x.size(1) != self.num_features:
            raise ValueError(f"expected {self.num_features} stimulus features, got {x.size(1)}")
        contrib = x.index_select(1, self.index[1]) * (self.value * self.gain).to(x.dtype)
        out = x.new_zeros(x.size(0), self.num_nodes)
        return out.index_add(1, self.index[0], contrib)

    def extra_repr(self) -> str:
        return f"features={self.num_features}, nodes={self.num_nodes}, nnz={self.index.size(1)}"


class NodeDrive(nn.Module):
    """A learnable drive per neuron from its features and its graph's stimulus.

    ``d_i = MLP([x_i, s_{g(i)}])`` (a ``Linear`` when ``hidden=0``), with ``x [N, F]`` the
    node features (``graph.x``) and ``s [G, S]`` the per-graph stimulus
    (``graph[graph_key]``; each ``Data`` holds ``[1, S]``, a ``Batch`` stacks them) read at
    each node's graph (``graph.batch``). Given to
    :class:`~graphode.dynamics.ConnectomeDynamics` as ``node_input``, it is added to the
    resting drive ``b``: the features are read once per solve (:meth:`features`), the
    learnable map applied once per parameter derivation.

    Args:
        node_features: F (0: no node features).
        graph_features: S (0: no per-graph stimulus).
        hidden: width of a hidden layer (0: linear).
        graph_key: the graph-level attribute holding the stimulus.

    Shapes: features(graph) → ``[N, F + S]``; forward(features ``[N, F + S]``) → ``[N]``.
    """

    def __init__(self, node_features: int = 0, graph_features: int = 0, *, hidden: int = 0, graph_key: str = "stimulus"):
        super().__init__()
        if node_features < 0 or graph_features < 0 or node_features + graph_features == 0:
            raise ValueError(
                f"NodeDrive needs node_features and/or graph_features > 0, got {node_features} and {graph_features}"
            )
        if hidden < 0:
            raise ValueError(f"hidden must be >= 0, got {hidden}")
        self.node_features, self.graph_features, self.graph_key = int(node_features), int(graph_features), graph_key
        width = self.node_features + self.graph_features
        self.net = nn.Linear(width, 1) if hidden == 0 else nn.Sequential(
            nn.Linear(width, hidden), nn.Tanh(), nn.Linear(hidden, 1)
        )

    def features(self, graph) -> Tensor:
        """The inputs of every node: ``[N, F + S]`` (checked against the declared sizes)."""
        n = int(graph.num_nodes)
        parts = []
        if self.node_features:
            x = getattr(graph, "x", None)
            if x is None or x.dim() != 2 or x.shape != (n, self.node_features):
                got = None if x is None else tuple(x.shape)
                raise ValueError(f"NodeDrive reads graph.x as [{n}, {self.node_features}], got {got}")
            parts.append(x)
        if self.graph_features:
            s = getattr(graph, self.graph_key, None)
            batch = getattr(graph, "batch", None)
            if batch is None:
                num_graphs = 1
            else:  # a Batch knows its size; count only for a Data given a batch vector by hand
                num_graphs = int(graph.num_graphs) if hasattr(graph, "num_graphs") else int(batch.max()) + 1
            if s is None or s.dim() != 2 or s.shape != (num_graphs, self.graph_features):
                got = None if s is None else tuple(s.shape)
                raise ValueError(
                    f"NodeDrive reads graph.{self.graph_key} as [num_graphs={num_graphs}, {self.graph_features}] "
                    f"(each Data holding [1, {self.graph_features}]), got {got}"
                )
            parts.append(s.expand(n, -1) if batch is None else s[batch])
        out = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        if not torch.is_floating_point(out) or not bool(torch.isfinite(out).all()):
            raise ValueError("NodeDrive: node features and graph stimuli must be finite floating-point values")
        return out

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features.to(self.net_dtype())).squeeze(-1)

    def net_dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


ORIENTATIONS = ("lattice", "published")


def retina_pixel_coordinates(
    pos: Tensor, image_size: tuple[int, int], margin: float = 1.0, orientation: str = "lattice"
) -> Tensor:
    """Pixel coordinates ``(row, col)`` ``[K, 2]`` of lattice positions ``pos [K, 2]``.

    ``pos`` is the Cartesian layout of :func:`~graphode.flyvis.hex_to_cartesian`,
    ``(x, y) = (u + v/2, (√3/2)·v)`` for axial columns ``(u, v)``. The lattice is centred
    on the image and scaled so that its farthest position lands ``margin`` pixels inside the
    nearest border.

    ``orientation``:

    * ``"published"``: the published model's eye (flyvis' ``BoxEye``/``HexEye``):
      ``(row, col) = centre + s·(u + v/2, v)``, i.e. ``s·(x, 2y/√3)``. Image rows (downwards)
      follow ``u + v/2`` and image columns (rightwards) follow ``v``: the column ``(0, 1)``
      is right of and half a step below ``(0, 0)``, the column ``(1, 0)`` a full step below
      it. The lattice fills a square (both axes span ``±extent``); moving-stimulus angles
      of :mod:`graphode.flyvis.stimuli` are measured in this image plane.
    * ``"lattice"``: ``pos`` drawn with y up, ``(row, col) = centre + s·(−y, x)``, the
      lattice's own geometry (rotated by about 90° from the published eye).

    Shapes: ``pos [K, 2]`` → float ``[K, 2]``.
    """
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {', '.join(ORIENTATIONS)}, got {orientation!r}")
    h, w = image_size
    centre = pos.mean(0) if pos.numel() else torch.zeros(2)
    rel = pos - centre
    if orientation == "published":
        down, right = rel[:, 0], rel[:, 1] * (2.0 / 3.0**0.5)
        radius = float(torch.maximum(down.abs(), right.abs()).max()) if rel.numel() else 0.0
    else:
        down, right = -rel[:, 1], rel[:, 0]
        radius = float(rel.norm(dim=1).max()) if rel.numel() else 0.0
    half = min(h, w) / 2.0 - 0.5 - margin
    scale = half / radius if radius > 0 else 0.0
    row = (h - 1) / 2.0 + down * scale
    col = (w - 1) / 2.0 + right * scale
    return torch.stack([row, col], dim=1)


def _bilinear(coords: Tensor, image_size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """For each point ``[K, 2]`` (row, col): its 4 neighbour pixels' flat indices and weights.

    Returns ``(point [4K], pixel [4K], weight [4K])``; points outside the image are clamped.
    """
    h, w = image_size
    r = coords[:, 0].clamp(0, h - 1)
    c = coords[:, 1].clamp(0, w - 1)
    r0, c0 = r.floor().clamp(max=h - 2).long(), c.floor().clamp(max=w - 2).long()
    fr, fc = r - r0, c - c0
    point = torch.arange(coords.size(0)).repeat(4)
    pixel = torch.cat([r0 * w + c0, r0 * w + c0 + 1, (r0 + 1) * w + c0, (r0 + 1) * w + c0 + 1])
    weight = torch.cat([(1 - fr) * (1 - fc), (1 - fr) * fc, fr * (1 - fc), fr * fc])
    return point, pixel, weight


def hex_retina(
    data, image_size: tuple[int, int] = (28, 28), *, margin: float = 1.0, gain: float = 1.0, learnable_gain: bool = False,
    orientation: str = "lattice",
) -> SparseProjection:
    """Project images onto the photoreceptors of a hexagonal-lattice connectome.

    Each input neuron (``data.input_mask``) at Cartesian position ``data.pos`` reads the
    bilinearly interpolated pixel under it; photoreceptors of one column read the same value.

    Args:
        data: connectome with ``pos [N, 2]`` and ``input_mask [N]``.
        image_size: ``(H, W)``.
        margin: pixels between the outermost column and the image border.
        gain: drive per unit intensity.
        orientation: ``"lattice"`` (default) or ``"published"`` (the published model's eye:
            image rows follow ``u + v/2``, columns follow ``v``; see
            :func:`retina_pixel_coordinates`).
    Returns:
        :class:`SparseProjection` from ``H·W`` pixels to ``N`` neurons.

    Shapes: forward(images ``[B, H, W]``) → ``[B, N]``.
    """
    if getattr(data, "pos", None) is None or getattr(data, "input_mask", None) is None:
        raise ValueError("hex_retina needs data.pos and data.input_mask (e.g. fly_visual_system())")
    # The projection is built on the CPU (a one-off) and moved with the model.
    neurons = torch.nonzero(data.input_mask.cpu()).flatten()
    if neurons.numel() == 0:
        raise ValueError("data.input_mask selects no neurons")
    coords = retina_pixel_coordinates(data.pos.cpu()[neurons].float(), image_size, margin, orientation)
    point, pixel, weight = _bilinear(coords, image_size)
    keep = weight > 0
    index = torch.stack([neurons[point[keep]], pixel[keep]])
    return SparseProjection(
        index, weight[keep], int(data.num_nodes), image_size[0] * image_size[1], gain=gain, learnable_gain=learnable_gain
    )


def random_pixels(data, num_pixels: int = 784, *, seed: int = 0, gain: float = 1.0,
                  neurons: Tensor | None = None) -> SparseProjection:
    """The torch-biopl tutorial's mapping: pixel ``k`` drives neuron ``randint(N)`` with weight 1;
    with ``neurons`` (a BoolTensor ``[N]``, e.g. ``data.input_mask``) a uniformly random one of those.

    Shapes: the projection maps ``[B, num_pixels]`` to ``[B, N]``.
    """
    gen = torch.Generator().manual_seed(seed)
    n = int(data.num_nodes)
    if neurons is not None and (neurons.dtype != torch.bool or tuple(neurons.shape) != (n,) or not neurons.any()):
        raise ValueError(f"random_pixels: neurons must be a BoolTensor [{n}] selecting at least one neuron, got "
                         f"{neurons.dtype} {list(neurons.shape)} selecting {int(neurons.sum())}")
    pool = torch.arange(n) if neurons is None else torch.nonzero(neurons.cpu()).flatten()
    neurons = pool[torch.randint(len(pool), (num_pixels,), generator=gen)]
    index = torch.stack([neurons, torch.arange(num_pixels)])
    return SparseProjection(index, torch.ones(num_pixels), int(data.num_nodes), num_pixels, gain=gain)
