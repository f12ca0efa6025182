"""PyG transforms on connectome graphs: which keep the layout, what validate_connectome says
about the ones that do not, and graphode's transforms that keep every attribute right."""

import warnings

import pytest
import torch
import torch_geometric.transforms as T
from torch_geometric.data import Batch
from torch_geometric.utils import subgraph as pyg_subgraph

from graphode.connectome import ConnectomeFormatError, load_connectome, node_index, validate_connectome
from graphode.connectome.transforms import (
    DegreePreservingShuffle,
    RemoveIsolatedNeurons,
    RemoveSelfConnections,
    ReorderNeurons,
    SortEdges,
    Subgraph,
    Threshold,
    reverse_cuthill_mckee,
)
from graphode.flyvis import fly_visual_system

# Neurons 10..80: a reciprocal pair with opposite signs (10 <-> 20), a self-connection (30),
# an isolated neuron (60, only in the node table) and a second component (70 -> 80).
IDS = [10, 20, 30, 40, 50, 60, 70, 80]
EDGES = [  # pre, post, syn_count, sign
    (10, 20, 3, 1), (20, 10, 5, -1), (20, 30, 2, 1), (30, 20, 3, 1), (30, 30, 4, 1),
    (40, 10, 1, -1), (10, 30, 7, 1), (50, 40, 6, 1), (70, 80, 2, 1),
]
TYPES = ["A", "B", "A", "C", "B", "C", "A", "B"]


def _id(i, kind):
    return i if kind == "int" else f"n{i}"  # "n10" < ... < "n80": the same order as the integers


def source(kind, edges=EDGES, ids=IDS):
    edge_list = {"pre": [_id(e[0], kind) for e in edges], "post": [_id(e[1], kind) for e in edges],
                 "syn_count": [float(e[2]) for e in edges], "sign": [e[3] for e in edges]}
    nodes = {"id": [_id(i, kind) for i in ids], "cell_type": TYPES[:len(ids)],
             "size": [float(i) / 10 for i in ids], "region": [("left", "right")[k % 2] for k in range(len(ids))],
             "big": [i > 40 for i in ids]}
    return edge_list, nodes


def load_small(edges, ids):
    edge_list, nodes = source("int", edges, ids)
    return load_connectome(edge_list, nodes=nodes)


def load(kind, neurons=None, **kw):
    edge_list, nodes = source(kind)
    if neurons is not None:
        neurons = [_id(i, kind) for i in neurons]
    return load_connectome(edge_list, nodes=nodes, input_types="A", neurons=neurons, **kw)


def ids_of(g):
    return g.node_id.tolist() if "node_id" in g else list(g.node_names)


def decoded(g):
    """Every value by neuron id and cell-type name, independent of the codes' vocabularies."""
    ids, (src, dst) = ids_of(g), g.edge_index.tolist()
    neurons = [(ids[i], g.cell_type_names[g.cell_type[i]], bool(g.input_mask[i]),
                float(g.node_size[i]), g.region_names[g.region[i]], bool(g.big[i]))
               for i in range(g.num_nodes)]
    edges = [(ids[s], ids[t], float(g.syn_count[k]), float(g.sign[k]), float(g.syn_weight[k]),
              g.edge_type_names[g.edge_type[k]]) for k, (s, t) in enumerate(zip(src, dst))]
    return neurons, edges


def assert_same_graph(a, b):
    assert sorted(a.keys()) == sorted(b.keys()) and a.num_nodes == b.num_nodes
    for key in a.keys():
        if isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


# ------------------------------------------------------------ PyG's transforms, measured
def _index_subgraph(g):
    out = g.clone()
    out.edge_index = pyg_subgraph(torch.tensor([0, 1, 2, 4]), g.edge_index, relabel_nodes=True,
                                  num_nodes=g.num_nodes)[0]
    return out


# name -> (transform, ints, strings): "ok <kept neurons>" (valid, every value right), a
# validate_connectome message (pattern), or an exception type raised by the transform.
PYG = {
    "ToUndirected": (T.ToUndirected(), "summed signs 0.0, 2.0 .*ToUndirected", None),
    "AddSelfLoops": (T.AddSelfLoops(), r"'syn_count' has 9 entries for E = 17 .*added.*AddSelfLoops", None),
    "RemoveSelfLoops": (T.RemoveSelfLoops(), r"'syn_count' has 9 entries for E = 8 .*RemoveSelfConnections",
                        None),
    "RemoveIsolatedNodes": (T.RemoveIsolatedNodes(), [10, 20, 30, 40, 50, 70, 80], TypeError),
    "Data.subgraph (mask)": (lambda g: g.subgraph(torch.tensor([1, 1, 1, 0, 1, 0, 0, 0]).bool()),
                             [10, 20, 30, 50], None),
    "Data.subgraph (index order)": (lambda g: g.subgraph(torch.tensor([2, 0, 1])),
                                    r"must be sorted by \(target, source\).*SortEdges", None),
    "utils.subgraph": (_index_subgraph, r"'syn_count' has 9 entries for E = 6 .*removed", None),
    "LargestConnectedComponents": (T.LargestConnectedComponents(), [10, 20, 30, 40, 50], None),
    "RemoveDuplicatedEdges": (T.RemoveDuplicatedEdges(), r"must be sorted by \(target, source\).*"
                              "RemoveDuplicatedEdges", None),
}


@pytest.mark.parametrize("kind", ["int", "str"])
@pytest.mark.parametrize("name", list(PYG))
def test_pyg_transform_matrix(name, kind):
    transform, expected, on_strings = PYG[name]
    if kind == "str" and on_strings is not None:
        expected = on_strings
    g = load(kind)
    if isinstance(expected, type):
        with pytest.raises(expected):
            transform(g.clone())
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LargestConnectedComponents' scipy/torch notices
        out = transform(g.clone())
    if isinstance(expected, list):  # safe here: valid, and every value equals a fresh load
        validate_connectome(out)
        assert decoded(out) == decoded(load(kind, neurons=expected))
    else:
        with pytest.raises(ConnectomeFormatError, match=expected):
            validate_connectome(out)


def test_remove_duplicated_edges_reorders_edge_index_alone():
    # the values are then those of other connections: why SortEdges cannot repair it
    g = load("int")
    out = T.RemoveDuplicatedEdges()(g.clone())
    assert torch.equal(out.syn_count, g.syn_count) and not torch.equal(out.edge_index, g.edge_index)


def test_data_subgraph_takes_connections_for_neurons_when_n_equals_e():
    # N = E = 3: Data.subgraph slices syn_count and sign by the kept neurons (sorted by target:
    # 3->1 (3 synapses), 1->2 (1), 2->3 (2); neurons 1, 2 keep 1->2 but the counts [3, 1])
    edges = [(1, 2, 1, 1), (2, 3, 2, -1), (3, 1, 3, 1)]
    g = load_small(edges, [1, 2, 3])
    out = g.subgraph(torch.tensor([0, 1]))
    assert out.edge_index.size(1) == 1 and out.syn_count.tolist() == [3.0, 1.0]
    with pytest.raises(ConnectomeFormatError, match=r"'syn_count' has 2 entries for E = 1 .*Subgraph"):
        validate_connectome(out)
    ambiguous = r"'big', 'node_size', 'region' have N = E = 3 .*node_keys=\('big', 'node_size', 'region'\)"
    with pytest.raises(ConnectomeFormatError, match=ambiguous):
        Subgraph([0, 1])(g)
    kept = Subgraph([0, 1], node_keys=("node_size", "region", "big"))(g)
    assert kept.syn_count.tolist() == [1.0] and kept.sign.tolist() == [1.0]
    assert kept.node_size.tolist() == pytest.approx([0.1, 0.2])


# ------------------------------------------------------------ validate_connectome's messages
def test_lengths_are_checked_before_the_order():
    g = load("int")
    g.edge_index = g.edge_index[:, [1, 0, 2, 3, 4, 5, 6, 7, 8]]
    g.sign = g.sign[:-1]
    with pytest.raises(ConnectomeFormatError, match=r"'sign' has 8 entries for E = 9 connections"):
        validate_connectome(g)


def test_signs_are_checked_before_the_order():
    g = load("int")
    g.edge_index = g.edge_index[:, [1, 0, 2, 3, 4, 5, 6, 7, 8]]
    g.sign[3] = 2.0
    with pytest.raises(ConnectomeFormatError, match=r"summed signs 2.0 \(1 connections\)"):
        validate_connectome(g)


@pytest.mark.parametrize("damage, message", [
    (lambda g: g.__setattr__("cell_type", g.cell_type[:-1]),
     r"'cell_type' has 7 entries for N = 8 neurons .*Subgraph or RemoveIsolatedNeurons"),
    (lambda g: g.__setattr__("node_names", g.node_names + ["n90"]), r"'node_names' has 9 entries for N = 8"),
    (lambda g: g.__setattr__("x", torch.zeros(7, 2)), r"'x' has 7 entries for N = 8"),
    (lambda g: g.__setattr__("edge_attr", torch.zeros(10, 2)), r"'edge_attr' has 10 entries for E = 9 .*removed"),
    (lambda g: g.sign.__setitem__(0, 0.5), r"sign values must be \+1. or -1., got 0.5 \(1 connections\)$"),
    (lambda g: g.edge_type.__setitem__(0, 9), r"'edge_type' codes must lie in \[0, 5\).*got 9.*ToUndirected"),
    (lambda g: g.__setattr__("cell_type_names", ["A", "B"]), r"'cell_type' codes must lie in \[0, 2\).*got 2"),
    (lambda g: g.__setattr__("edge_index", g.edge_index[:, [0, 0, 2, 3, 4, 5, 6, 7, 8]]),
     r"holds the connection 1 -> 0 twice \(positions 0 and 1\)"),
])
def test_validate_names_the_damage(damage, message):
    g = load("str")
    damage(g)
    with pytest.raises(ConnectomeFormatError, match=message):
        validate_connectome(g)


# ------------------------------------------------------------ graphode's transforms
@pytest.mark.parametrize("kind", ["int", "str"])
def test_subgraph_recoded_equals_loading_those_neurons(kind):
    g = load(kind)
    keep = [10, 30, 40, 70, 80]
    expected = load(kind, neurons=keep)
    mask = torch.tensor([i in keep for i in IDS])
    assert_same_graph(Subgraph(mask, recode=True)(g), expected)
    assert_same_graph(Subgraph([6, 0, 3, 2, 7], recode=True)(g), expected)  # any order
    assert_same_graph(Subgraph(node_index(g, [_id(i, kind) for i in keep]), recode=True)(g), expected)
    kept = Subgraph(mask)(g)  # vocabularies kept: codes still those of the full graph
    assert kept.cell_type_names == g.cell_type_names and kept.edge_type_names == g.edge_type_names
    assert torch.equal(kept.cell_type, g.cell_type[mask])
    assert decoded(kept) == decoded(expected)


def test_subgraph_by_hand():
    g = load("int")
    out = Subgraph([0, 1, 2])(g)  # neurons 10, 20, 30
    assert out.num_nodes == 3 and out.node_id.tolist() == [10, 20, 30]
    assert out.edge_index.tolist() == [[1, 0, 2, 0, 1, 2], [0, 1, 1, 2, 2, 2]]
    assert out.syn_count.tolist() == [5, 3, 3, 7, 2, 4] and out.sign.tolist() == [-1, 1, 1, 1, 1, 1]
    assert [out.edge_type_names[c] for c in out.edge_type] == ["B->A", "A->B", "A->B", "A->A", "B->A", "A->A"]
    assert out.input_mask.tolist() == [True, False, True] and out.big.tolist() == [False] * 3
    assert g.num_nodes == 8 and g.edge_index.size(1) == 9  # the input is left alone


def test_subgraph_keeps_weights_unnormalised():
    g = load("int", normalize="in_syn")
    out = Subgraph([0, 1, 2])(g)
    # the kept connections of 20 -> 10 (weight 5/6) and the rest, as in the full graph
    kept = [0, 2, 3, 4, 5, 6]  # positions of the six kept connections in g
    assert torch.equal(out.syn_weight, g.syn_weight[kept])
    assert out.syn_weight[0].item() == pytest.approx(5 / 6)


def test_subgraph_carries_extra_attributes():
    g = load("int")
    g.x = torch.arange(16.0).reshape(8, 2)
    g.edge_attr = torch.arange(27.0).reshape(9, 3)
    g.y = torch.tensor([4])
    g.labels = [f"L{i}" for i in range(8)]  # a per-neuron list
    g.kind = "demo"
    out = Subgraph([1, 2, 4])(g)  # 20, 30, 50: connections 20->30, 30->20, 30->30
    assert torch.equal(out.x, g.x[[1, 2, 4]]) and out.labels == ["L1", "L2", "L4"]
    assert torch.equal(out.edge_attr, g.edge_attr[[3, 5, 6]])
    assert out.edge_index.tolist() == [[1, 0, 1], [0, 1, 1]]
    assert torch.equal(out.y, g.y) and out.kind == "demo"


@pytest.mark.parametrize("nodes, message", [
    (torch.tensor([0.0, 1.0]), "BoolTensor"),
    (torch.ones(7, dtype=torch.bool), "7 entries for N = 8"),
    ([0, 8], r"out of range \[0, 8\)"),
    ([-1], "out of range"),
    ([1, 2, 1], "repeated: 1"),
    ([], "keeps no neuron"),
])
def test_subgraph_bad_nodes(nodes, message):
    with pytest.raises(ConnectomeFormatError, match=message):
        Subgraph(nodes)(load("int"))


def test_transforms_refuse_a_batch_and_bad_options():
    batch = Batch.from_data_list([load("int"), load("int")])
    with pytest.raises(ConnectomeFormatError, match="before batching"):
        RemoveSelfConnections()(batch)
    with pytest.raises(TypeError, match="recode"):
        Subgraph([0], recode="yes")
    with pytest.raises(TypeError, match="node_keys"):
        Subgraph([0], node_keys="x")
    with pytest.raises(ConnectomeFormatError, match="'nope'"):
        Subgraph([0], edge_keys=("nope",))(load("int"))


@pytest.mark.parametrize("kind", ["int", "str"])
def test_remove_self_connections_equals_loading_without(kind):
    g = load(kind)
    out = RemoveSelfConnections(recode=True)(g)
    assert_same_graph(out, load(kind, self_loops=False))
    assert out.num_nodes == 8 and out.edge_index.size(1) == 8
    assert not bool((out.edge_index[0] == out.edge_index[1]).any())


@pytest.mark.parametrize("kind", ["int", "str"])
def test_threshold_equals_loading_with_threshold(kind):
    g = load(kind)
    out = Threshold(3, recode=True)(g)
    assert_same_graph(out, load(kind, threshold=3))
    assert out.num_nodes == 8  # neurons stay, connected or not
    assert sorted(out.syn_count.tolist()) == [3, 3, 4, 5, 6, 7]
    assert Threshold(3)(g).edge_type_names == g.edge_type_names


@pytest.mark.parametrize("min_count", [float("nan"), float("inf"), "3", True, None])
def test_threshold_bad_min_count(min_count):
    with pytest.raises(ConnectomeFormatError, match="min_count must be a finite number"):
        Threshold(min_count)


@pytest.mark.parametrize("kind", ["int", "str"])
def test_remove_isolated_neurons(kind):
    g = load(kind)
    out = RemoveIsolatedNeurons(recode=True)(g)
    assert ids_of(out) == [_id(i, kind) for i in (10, 20, 30, 40, 50, 70, 80)]
    assert_same_graph(out, load(kind, neurons=[10, 20, 30, 40, 50, 70, 80]))
    # after a threshold of 3, 70 -> 80 (2 synapses) is gone: 70 and 80 are isolated as well
    thin = RemoveIsolatedNeurons()(Threshold(3)(g))
    assert ids_of(thin) == [_id(i, kind) for i in (10, 20, 30, 40, 50)]


def test_a_self_connection_is_a_connection():
    edges = [(1, 2, 1, 1), (3, 3, 2, 1)]
    g = load_small(edges, [1, 2, 3, 4])
    assert RemoveIsolatedNeurons()(g).node_id.tolist() == [1, 2, 3]


def test_sort_edges_restores_the_layout():
    g = load("str")
    g.edge_attr = torch.arange(9.0)
    perm = torch.tensor([4, 8, 0, 3, 1, 7, 2, 6, 5])
    shuffled = g.clone()
    for key in ("syn_count", "sign", "syn_weight", "edge_type", "edge_attr"):
        shuffled[key] = g[key][perm]
    shuffled.edge_index = g.edge_index[:, perm]
    with pytest.raises(ConnectomeFormatError, match="SortEdges"):
        validate_connectome(shuffled)
    assert_same_graph(SortEdges()(shuffled), g)


def test_sort_edges_after_data_subgraph_in_index_order():
    g = load("int")
    out = SortEdges()(g.subgraph(torch.tensor([2, 0, 1])))  # neurons 30, 10, 20 in that order
    assert out.node_id.tolist() == [30, 10, 20]
    assert sorted(decoded(out)[1]) == sorted(decoded(load("int", neurons=[10, 20, 30]))[1])


def test_sort_edges_refuses_what_sorting_cannot_fix():
    g = load("int")
    g.sign = g.sign[:-1]
    with pytest.raises(ConnectomeFormatError, match="'sign' has 8 entries for E = 9"):
        SortEdges()(g)
    g = load("int")
    g.edge_index = torch.cat([g.edge_index, g.edge_index[:, :1]], 1)
    for key in ("syn_count", "sign", "syn_weight", "edge_type"):
        g[key] = torch.cat([g[key], g[key][:1]])
    with pytest.raises(ConnectomeFormatError, match="20 -> 0|1 -> 0 is listed more than once"):
        SortEdges()(g)


def test_degree_preserving_shuffle_carries_edge_attr():
    g = load("int")
    g.edge_attr = g.syn_count * 10
    out = DegreePreservingShuffle(seed=3)(g)
    validate_connectome(out)
    assert torch.equal(out.edge_attr, out.syn_count * 10)


def test_graphode_transforms_validate_their_input():
    g = load("int")
    g.sign = g.sign[:-1]
    for transform in (Subgraph([0]), RemoveIsolatedNeurons(), RemoveSelfConnections(), Threshold(1)):
        with pytest.raises(ConnectomeFormatError, match="'sign' has 8 entries"):
            transform(g)


def test_subgraph_carries_gap_junctions_with_their_neurons():
    import numpy as np

    from graphode.connectome import load_connectome, node_index
    from graphode.connectome.transforms import RemoveIsolatedNeurons, Subgraph

    chem = {"pre": ["A", "B", "C"], "post": ["B", "C", "A"], "syn_count": [1.0, 2.0, 3.0]}
    gaps = {"pre": ["A", "B", "A"], "post": ["B", "C", "D"], "weight": [0.5, 0.25, 2.0]}
    g = load_connectome(chem, gap_junctions=gaps, default_sign=1)
    sub = Subgraph(node_index(g, ["A", "B", "D"]))(g)
    want = load_connectome({"pre": ["A"], "post": ["B"], "syn_count": [1.0]},
                           gap_junctions={"pre": ["A", "A"], "post": ["B", "D"], "weight": [0.5, 2.0]},
                           default_sign=1)
    assert sub.node_names == want.node_names == ["A", "B", "D"]
    assert torch.equal(sub.gap_index, want.gap_index) and torch.equal(sub.gap_weight, want.gap_weight)
    alone = RemoveIsolatedNeurons()(g)  # D has a gap junction only: no chemical connection
    assert alone.node_names == ["A", "B", "C"]
    pairs = {tuple(np.array(alone.node_names)[p].tolist()) for p in alone.gap_index.t().tolist()}
    assert pairs == {("A", "B"), ("B", "A"), ("B", "C"), ("C", "B")}


def test_degree_preserving_shuffle():
    data = fly_visual_system(2)
    shuffled = DegreePreservingShuffle(seed=1)(data)
    n = data.num_nodes
    for row in (0, 1):
        assert torch.equal(torch.bincount(shuffled.edge_index[row], minlength=n), torch.bincount(data.edge_index[row], minlength=n))
    src, dst = shuffled.edge_index
    assert not bool((src == dst).any())
    key = dst * n + src
    assert key.unique().numel() == key.numel()
    assert bool((key[1:] > key[:-1]).all())
    assert not torch.equal(shuffled.edge_index, data.edge_index)
    sums = torch.zeros(n).index_add_(0, dst, shuffled.syn_weight)
    torch.testing.assert_close(sums, torch.zeros(n).index_add_(0, data.edge_index[1], data.syn_weight))


# ------------------------------------------------------------ ReorderNeurons
GAPS = {"pre": [10, 20, 40, 70], "post": [50, 30, 80, 20], "weight": [0.5, 0.25, 2.0, 1.5]}


def load_with_gaps(kind):
    edge_list, nodes = source(kind)
    gaps = {k: ([_id(i, kind) for i in v] if k != "weight" else v) for k, v in GAPS.items()}
    return load_connectome(edge_list, nodes=nodes, input_types="A", output_types="B", gap_junctions=gaps)


def span(edge_index):
    """Largest and mean ``|pre − post|`` of a graph's connections."""
    d = (edge_index[0] - edge_index[1]).abs().double()
    return int(d.max()), float(d.mean())


def renumbered(edge_index, n, seed):
    """``edge_index`` with its neurons renumbered at random (as an export by 64-bit ids)."""
    new = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return new[edge_index]


def ring(n):
    i = torch.arange(n)
    return torch.stack([i, (i + 1) % n])


def grid(w, h):
    i = torch.arange(w * h).reshape(h, w)
    right = torch.stack([i[:, :-1].flatten(), i[:, 1:].flatten()])
    down = torch.stack([i[:-1].flatten(), i[1:].flatten()])
    return torch.cat([right, down], 1)


@pytest.mark.parametrize("kind", ["int", "str"])
@pytest.mark.parametrize("order", ["rcm", "cell_type", "random"])
def test_reorder_keeps_the_graph(order, kind):
    g = load_with_gaps(kind)
    g.x = torch.arange(16.0).reshape(8, 2)
    g.edge_attr = torch.arange(27.0).reshape(9, 3)
    g.labels = [f"L{i}" for i in range(8)]
    g.y = torch.tensor([4])
    if order == "random":
        order = torch.randperm(8, generator=torch.Generator().manual_seed(5))
    out = ReorderNeurons(order)(g)
    validate_connectome(out)
    orig = out.original_index
    # the requested permutation itself, not merely a consistent one
    expected = {"rcm": lambda: reverse_cuthill_mckee(g.edge_index, 8),
                "cell_type": lambda: torch.sort(g.cell_type, stable=True).indices}
    want = order if isinstance(order, torch.Tensor) else expected[order]()
    assert orig.tolist() == want.tolist()
    # per neuron: every attribute follows its neuron; ids map to the new indices
    for key in ("cell_type", "input_mask", "output_mask", "node_size", "region", "big", "x"):
        assert torch.equal(out[key], g[key][orig]), key
    assert ids_of(out) == [ids_of(g)[i] for i in orig.tolist()]
    assert out.labels == [f"L{i}" for i in orig.tolist()]
    assert node_index(out, ids_of(g)).tolist() == torch.argsort(orig).tolist()
    assert out.cell_type_names == g.cell_type_names and out.y.tolist() == [4]
    # per connection: the same set of (old pre, old post, values) after mapping back
    def connections(h, back):
        src, dst = back[h.edge_index]
        return sorted(zip(src.tolist(), dst.tolist(), h.syn_count.tolist(), h.sign.tolist(), h.syn_weight.tolist(),
                          h.edge_type.tolist(), h.edge_attr.tolist()))
    assert connections(out, orig) == connections(g, torch.arange(8))
    assert sorted(decoded(out)[1]) == sorted(decoded(g)[1])  # by ids and names too
    # gap junctions: the same pairs, weights and types
    def gaps(h, back):
        a, b = back[h.gap_index]
        return sorted(zip(a.tolist(), b.tolist(), h.gap_weight.tolist(), h.gap_type.tolist()))
    assert gaps(out, orig) == gaps(g, torch.arange(8)) and len(gaps(g, torch.arange(8))) == 8


def test_reorder_back_and_composed():
    g = load_with_gaps("int")
    first = ReorderNeurons(torch.tensor([3, 7, 0, 5, 1, 6, 2, 4]))(g)
    second = ReorderNeurons("cell_type")(first)
    # original_index names the first numbering after two reorderings
    assert second.node_id.tolist() == [g.node_id[i].item() for i in second.original_index.tolist()]
    back = ReorderNeurons(torch.argsort(second.original_index))(second)
    assert back.original_index.tolist() == list(range(8))
    del back.original_index
    assert_same_graph(back, g)  # edge order, gap order aside: every tensor equal
    ident = ReorderNeurons(torch.arange(8))(g)
    assert torch.equal(ident.edge_index, g.edge_index) and torch.equal(ident.gap_index, g.gap_index)


def test_reorder_by_cell_type_by_hand():
    g = load("int")  # types A B A C B C A B of neurons 10..80
    out = ReorderNeurons("cell_type")(g)
    assert out.original_index.tolist() == [0, 2, 6, 1, 4, 7, 3, 5]
    assert [out.cell_type_names[c] for c in out.cell_type] == ["A"] * 3 + ["B"] * 3 + ["C"] * 2
    assert out.node_id.tolist() == [10, 30, 70, 20, 50, 80, 40, 60]


def test_reverse_cuthill_mckee_by_hand():
    # Spine 5 - 0 - 1, then 1 - {2, 3}, 2 - {7, 8}, 3 - 9 (both directions of 0 - 1, a
    # self-connection on 5); a second component 6 - 10; 4 isolated. Root: the least degree,
    # lowest index: 5. Levels: [5], [0], [1], [3 (degree 2), 2 (degree 3)], [9 (reached by 3),
    # 7, 8 (by 2)]; from 9, the least-degree neuron of the last level, the search is no deeper.
    pairs = [(5, 0), (0, 1), (1, 0), (1, 2), (3, 1), (2, 7), (8, 2), (3, 9), (5, 5), (10, 6)]
    assert reverse_cuthill_mckee(torch.tensor(pairs).t(), 11).tolist() == [10, 6, 8, 7, 9, 2, 3, 1, 0, 5, 4]
    # 3 - 0 - {1, 2}, 1 - {4, 5}, 2 - 6: from 3 (least degree) four levels, from 6 (in the last
    # level) five: [6], [2], [0], [3 (degree 1), 1 (degree 3)], [4, 5]; from 4 no deeper.
    pairs = [(3, 0), (0, 1), (0, 2), (1, 4), (5, 1), (2, 6), (9, 8)]
    assert reverse_cuthill_mckee(torch.tensor(pairs).t(), 10).tolist() == [9, 8, 5, 4, 1, 3, 0, 2, 6, 7]
    path = torch.tensor([[3, 0, 4, 1], [0, 4, 1, 2]])  # 3 - 0 - 4 - 1 - 2
    assert reverse_cuthill_mckee(path, 5).tolist() == [3, 0, 4, 1, 2]
    assert reverse_cuthill_mckee(torch.zeros(2, 0, dtype=torch.long), 3).tolist() == [0, 1, 2]


@pytest.mark.parametrize("edges, n, best", [(ring(300), 300, 2), (grid(12, 25), 300, 12)])
def test_rcm_recovers_a_lattice_from_random_numbering(edges, n, best):
    shuffled = renumbered(edges, n, seed=0)
    assert span(edges)[0] <= n - 1 and span(shuffled)[0] > n // 2  # random numbering: bandwidth ~N
    order = reverse_cuthill_mckee(shuffled, n)
    new = torch.argsort(order)
    after = span(new[shuffled])
    assert best <= after[0] <= 2 * best and after[1] <= best
    assert span(shuffled)[1] > 10 * after[1]


def test_rcm_on_a_connectome_and_against_scipy():
    from graphode.connectome import random_connectome

    g = random_connectome(3000, 30000, locality=0.01, seed=0)
    shuffled = ReorderNeurons(torch.randperm(3000, generator=torch.Generator().manual_seed(1)))(g)
    out = ReorderNeurons("rcm")(shuffled)
    before, after = span(shuffled.edge_index), span(out.edge_index)
    assert before[0] > 2500 and after[0] < 600 and after[1] < before[1] / 5
    torch.testing.assert_close(out.syn_weight.sum(), g.syn_weight.sum())
    sparse = pytest.importorskip("scipy.sparse")
    from scipy.sparse.csgraph import reverse_cuthill_mckee as scipy_rcm

    ei = shuffled.edge_index.numpy()
    a = sparse.csr_matrix((torch.ones(ei.shape[1]).numpy(), (ei[1], ei[0])), shape=(3000, 3000))
    new = torch.argsort(torch.from_numpy(scipy_rcm(a, symmetric_mode=False).astype("int64")))
    theirs = span(new[shuffled.edge_index])
    assert after[0] <= 1.25 * theirs[0] and after[1] <= 1.25 * theirs[1]  # as good (another root)


def test_reordered_dynamics_equal_the_original_permuted():
    from graphode.dynamics import ConnectomeDynamics

    g = load_with_gaps("int")
    out = ReorderNeurons("rcm")(g)
    assert not torch.equal(out.original_index, torch.arange(8))
    torch.manual_seed(0)
    dyn = ConnectomeDynamics.from_data(g, activation="tanh", backend="csr", gap_junctions="per_type",
                                       tau=0.5, bias=0.1).double()
    with torch.no_grad():
        for p in dyn.parameters():
            p.add_(0.3 * torch.randn_like(p))
    gen = torch.Generator().manual_seed(2)
    v = torch.randn(3, 8, dtype=torch.float64, generator=gen)
    u = torch.randn(3, 8, dtype=torch.float64, generator=gen)
    t = torch.zeros(3, dtype=torch.float64)
    orig = out.original_index
    ref = dyn(t, v, g, u)
    assert ref.abs().min() > 0
    torch.testing.assert_close(dyn(t, v[:, orig], out, u[:, orig]), ref[:, orig], rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("order, message", [
    ("bandwidth", r"unknown order 'bandwidth'; choose from 'rcm', 'cell_type'"),
    (torch.tensor([0.0, 1.0]), "LongTensor"),
    ([0, 1, 2], "3 entries for N = 8"),
    ([0, 1, 2, 3, 4, 5, 6, 8], r"out of range \[0, 8\)"),
    ([0, 1, 2, 3, 4, 5, 6, 6], "not a permutation: indices 6 repeated"),
    (None, r"order must be 'rcm', 'cell_type' or a permutation \(LongTensor \[N\] or a sequence of ints\), got None"),
    (3, "got 3"),
])
def test_reorder_bad_order(order, message):
    with pytest.raises(ConnectomeFormatError, match=message):
        ReorderNeurons(order)(load("int"))


def test_reorder_refuses_what_it_cannot_order():
    g = load("int")
    del g.cell_type, g.cell_type_names, g.edge_type, g.edge_type_names
    with pytest.raises(ConnectomeFormatError, match="no cell_type"):
        ReorderNeurons("cell_type")(g)
    with pytest.raises(ConnectomeFormatError, match="before batching"):
        ReorderNeurons()(Batch.from_data_list([load("int"), load("int")]))
    with pytest.raises(ConnectomeFormatError, match="num_nodes must be an int > 0"):
        reverse_cuthill_mckee(g.edge_index, 0)
    with pytest.raises(ConnectomeFormatError, match=r"outside \[0, 5\)"):
        reverse_cuthill_mckee(g.edge_index, 5)


def test_a_connectome_spec_reorders_after_building():
    """``"reorder"`` in a spec gives the built graph renumbered by ReorderNeurons, the same
    as applying the transform by hand; another value type is an error naming the key."""
    from graphode.connectome import build_connectome

    spec = {"name": "fly_visual_system", "extent": 1}
    built = build_connectome({**spec, "reorder": "rcm"})
    expected = ReorderNeurons("rcm")(fly_visual_system(1))
    assert sorted(built.keys()) == sorted(expected.keys())
    for key in expected.keys():
        a, b = built[key], expected[key]
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b, key
    assert not torch.equal(built.original_index, torch.arange(built.num_nodes))
    with pytest.raises(ValueError, match="reorder must be 'rcm' or 'cell_type'"):
        build_connectome({**spec, "reorder": 3})


def test_original_index_is_a_layout_key():
    """A node-table column named original_index stays a column (node_original_index), and
    validate_connectome refuses an original_index that cannot be the old indices."""
    import pandas as pd

    edges = pd.DataFrame({"pre": [1, 2], "post": [2, 3], "syn_count": [1.0, 2.0]})
    nodes = pd.DataFrame({"id": [1, 2, 3], "original_index": [0.5, 7.25, 9.0]})
    g = load_connectome(edges, nodes=nodes, default_sign=1)
    assert "original_index" not in g and g.node_original_index.tolist() == [0.5, 7.25, 9.0]
    for bad, message in [(torch.tensor([0.0, 1.0, 2.0]), "torch.int64"), (torch.tensor([0, 0, 1]), "distinct"),
                         (torch.tensor([-1, 0, 1]), "distinct indices >= 0")]:
        h = g.clone()
        h.original_index = bad
        with pytest.raises(ConnectomeFormatError, match=message):
            validate_connectome(h)
