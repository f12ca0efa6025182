"""Behaviour tests for graphode.connectome (edge lists <-> PyG Data)."""

from __future__ import annotations

import logging
import sys
import warnings

import networkx as nx
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from torch_geometric.data import Batch, Data

from graphode.connectome import (
    ConnectomeFileNotFoundError,
    ConnectomeFormatError,
    from_networkx,
    from_scipy,
    load_connectome,
    load_graph,
    node_index,
    save_graph,
    to_networkx,
    to_scipy,
    validate_connectome,
)

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support:UserWarning")

# Hand-written connectome with FlyWire-sized 64-bit ids.  Sorted ids give the codes
# D=0, B=1, A=2, C=3.
A, B, C, D = 720575940612345678, 720575940600000001, 720575940699999999, 12
ROWS = [  # pre, post, syn_count, sign
    (A, B, 5, 1),
    (B, C, 3, -1),
    (C, A, 2, 1),
    (A, C, 7, 1),
    (D, A, 1, -1),
    (C, C, 4, 1),
]
# Sorted by (post, pre) in codes: (2,1) (0,2) (3,2) (1,3) (2,3) (3,3)
EDGE_INDEX = [[2, 0, 3, 1, 2, 3], [1, 2, 2, 3, 3, 3]]
SYN_COUNT = [5.0, 1.0, 2.0, 3.0, 7.0, 4.0]
SIGN = [1.0, -1.0, 1.0, -1.0, 1.0, 1.0]
INT_IDS = [D, B, A, C]
NAMES = {A: "AVAR", B: "AVAL", C: "DB1", D: "ADAL"}  # same sort order as the ints
STR_IDS = ["ADAL", "AVAL", "AVAR", "DB1"]


def table(ids: str = "int") -> pd.DataFrame:
    df = pd.DataFrame(ROWS, columns=["pre", "post", "syn_count", "sign"])
    if ids == "str":
        df["pre"] = df["pre"].map(NAMES)
        df["post"] = df["post"].map(NAMES)
    return df


def adjacency() -> torch.Tensor:
    """The same graph as A[post, pre] = sign * count, COO [4, 4]."""
    ei = torch.tensor(EDGE_INDEX)
    vals = torch.tensor(SYN_COUNT, dtype=torch.float64) * torch.tensor(SIGN,
                                                                      dtype=torch.float64)
    return torch.sparse_coo_tensor(ei.flip(0), vals, (4, 4), check_invariants=True)


def assert_expected(g: Data) -> None:
    assert g.num_nodes == 4
    assert g.edge_index.dtype == torch.long
    assert g.edge_index.tolist() == EDGE_INDEX
    assert g.syn_count.dtype == torch.float32 and g.syn_count.tolist() == SYN_COUNT
    assert g.sign.dtype == torch.float32 and g.sign.tolist() == SIGN
    assert torch.equal(g.syn_weight, g.syn_count)
    assert g.cell_type.tolist() == [0, 0, 0, 0] and g.cell_type_names == ["unknown"]
    assert g.input_mask.dtype == torch.bool and not g.input_mask.any()
    assert not g.output_mask.any()
    g.validate(raise_on_error=True)
    validate_connectome(g)


def write(df: pd.DataFrame, fmt: str, tmp_path):
    """``df`` as the source kind ``fmt``."""
    if fmt == "csv":
        path = tmp_path / "edges.csv"
        df.to_csv(path, index=False)
    elif fmt == "csv.gz":
        path = tmp_path / "edges.csv.gz"
        df.to_csv(path, index=False)
    elif fmt == "tsv":
        path = tmp_path / "edges.tsv"
        df.to_csv(path, sep="\t", index=False)
    elif fmt == "txt":
        path = tmp_path / "edges.txt"
        df.to_csv(path, sep=" ", index=False)
    elif fmt == "parquet":
        path = tmp_path / "edges.parquet"
        df.to_parquet(path)
    elif fmt == "npz":
        path = tmp_path / "edges.npz"
        np.savez(path, **{c: np.asarray(df[c].tolist()) for c in df.columns})
    elif fmt == "DataFrame":
        return df
    elif fmt == "dict":
        return {c: df[c].tolist() for c in df.columns}
    elif fmt == "structured":
        return df.to_records(index=False)
    else:
        raise AssertionError(fmt)
    return path


TABLE_FORMATS = ["csv", "csv.gz", "tsv", "txt", "parquet", "npz", "DataFrame", "dict",
                 "structured"]


@pytest.mark.parametrize("fmt", TABLE_FORMATS)
def test_table_formats_give_the_same_graph_with_64bit_ids(fmt, tmp_path):
    g = load_connectome(write(table(), fmt, tmp_path))
    assert_expected(g)
    assert g.node_id.dtype == torch.long and g.node_id.tolist() == INT_IDS
    assert "node_names" not in g


@pytest.mark.parametrize("fmt", ["csv", "tsv", "txt", "parquet", "npz", "DataFrame",
                                 "dict"])
def test_string_ids(fmt, tmp_path):
    g = load_connectome(write(table("str"), fmt, tmp_path))
    assert_expected(g)
    assert g.node_names == STR_IDS and "node_id" not in g


@pytest.mark.parametrize("fmt", ["pt-coo", "pt-csr", "coo", "csr"])
def test_sparse_adjacency_gives_the_same_graph(fmt, tmp_path):
    adj = adjacency()
    if fmt.endswith("csr"):
        adj = adj.to_sparse_csr()
    if fmt.startswith("pt"):
        torch.save(adj, tmp_path / "adj.pt")
        adj = tmp_path / "adj.pt"
    g = load_connectome(adj)
    assert_expected(g)
    assert g.node_id.tolist() == [0, 1, 2, 3]


def test_sparse_keeps_isolated_nodes_and_raw_duplicate_entries():
    # Node 4 has no connection; the two uncoalesced (0 -> 1) entries are summed by the
    # loader, not by coalesce(), so signs are checked per entry.
    adj = torch.sparse_coo_tensor([[1, 1, 2], [0, 0, 1]], [2.0, 3.0, -1.0], (5, 5),
                                  check_invariants=True)
    g = load_connectome(adj)
    assert g.num_nodes == 5
    assert g.edge_index.tolist() == [[0, 1], [1, 2]]
    assert g.syn_count.tolist() == [5.0, 1.0] and g.sign.tolist() == [1.0, -1.0]
    bad = torch.sparse_coo_tensor([[1, 1], [0, 0]], [2.0, -3.0], (2, 2),
                                  check_invariants=True)
    with pytest.raises(ConnectomeFormatError, match="conflicting signs"):
        load_connectome(bad)
    out_of_range = torch.sparse_coo_tensor([[0, 3], [1, 1]], [1.0, 1.0], (3, 3),
                                           check_invariants=False)
    with pytest.raises(ConnectomeFormatError, match=r"entry 1 .*post=3.*outside \[0, 3\)"):
        load_connectome(out_of_range)


def test_explicit_separator(tmp_path):
    path = tmp_path / "edges.csv"
    table().to_csv(path, sep=";", index=False)
    assert_expected(load_connectome(path, sep=";"))
    with pytest.raises(ConnectomeFormatError, match="no pre column"):
        load_connectome(path)  # read with ",": one column named "pre;post;..."


def test_relabelling_maps_back_to_original_ids():
    g = load_connectome(table())
    pairs = {(g.node_id[s].item(), g.node_id[t].item()) for s, t in g.edge_index.T}
    assert pairs == {(p, q) for p, q, _, _ in ROWS}
    assert node_index(g, [A, D, C]).tolist() == [2, 0, 3]
    assert node_index(g, torch.tensor([B])).tolist() == [1]
    with pytest.raises(ConnectomeFormatError, match="not in the graph: 99"):
        node_index(g, [A, 99])
    h = load_connectome(table("str"))
    assert node_index(h, ["DB1", "ADAL"]).tolist() == [3, 0]
    names = [(h.node_names[s], h.node_names[t]) for s, t in h.edge_index.T.tolist()]
    assert set(names) == {(NAMES[p], NAMES[q]) for p, q, _, _ in ROWS}


def test_flywire_columns_are_detected_and_neuropils_merged():
    df = pd.DataFrame({
        "pre_root_id": [A, A, B, C],
        "post_root_id": [B, B, C, A],
        "neuropil": ["ME_R", "LO_R", "ME_R", "ME_R"],
        "syn_count": [5, 6, 3, 2],
        "nt_type": ["ACH", "ACH", "GABA", "GLUT"],
    })
    g = load_connectome(df, duplicates="sum")  # one row per neuropil: parts of one connection
    # codes: B=0, A=1, C=2 -> (A->B), (C->A), (B->C) sorted by target
    assert g.edge_index.tolist() == [[1, 2, 0], [0, 1, 2]]
    assert g.syn_count.tolist() == [11.0, 2.0, 3.0]
    assert g.sign.tolist() == [1.0, -1.0, -1.0]


def test_neuprint_columns_and_node_table_are_detected():
    edges = pd.DataFrame({"bodyId_pre": [10, 20, 20], "bodyId_post": [20, 30, 10],
                          "roi": ["EB", "FB", "EB"], "weight": [4, 1, 9]})
    nodes = pd.DataFrame({"bodyId": [30, 10, 20], "type": ["EPG", "PEN", "EPG"],
                          "instance": ["EPG_R", "PEN_L", "EPG_L"]})
    with pytest.warns(UserWarning, match="all 3 synapses were taken as excitatory"):
        g = load_connectome(edges, nodes=nodes)
    assert g.node_id.tolist() == [10, 20, 30]
    assert g.edge_index.tolist() == [[1, 0, 1], [0, 1, 2]]
    assert g.syn_count.tolist() == [9.0, 4.0, 1.0]
    assert g.cell_type_names == ["EPG", "PEN"]
    assert g.cell_type.tolist() == [1, 0, 0]
    assert g.edge_type_names == ["EPG->EPG", "EPG->PEN", "PEN->EPG"]
    assert [g.edge_type_names[t] for t in g.edge_type] == ["EPG->PEN", "PEN->EPG",
                                                          "EPG->EPG"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h = load_connectome(edges, default_sign=-1)
    assert h.sign.tolist() == [-1.0, -1.0, -1.0]


def test_explicit_column_names():
    df = pd.DataFrame({"from": [1, 2], "to": [2, 1], "n": [3, 4], "s": [1, -1]})
    g = load_connectome(df, pre="from", post="to", weight="n", sign="s")
    assert g.syn_count.tolist() == [4.0, 3.0] and g.sign.tolist() == [-1.0, 1.0]


def nt_table(nts):
    return pd.DataFrame({"pre": list(range(len(nts))), "post": [99] * len(nts),
                         "nt": nts})


def test_neurotransmitter_signs_case_insensitive():
    g = load_connectome(nt_table(["ACH", "acetylcholine", "GABA", "Glu", "glutamate",
                                  "GLUT"]))
    assert g.sign.tolist() == [1.0, 1.0, -1.0, -1.0, -1.0, -1.0]


def test_neurotransmitter_override_and_extension():
    g = load_connectome(nt_table(["ACh", "Glutamate", "SER", "histamine"]),
                        nt_signs={"glutamate": 1, "Ser": -1, "HISTAMINE": -1})
    assert g.sign.tolist() == [1.0, 1.0, -1.0, -1.0]


def test_modulators_and_unknown_neurotransmitters_need_a_mapping():
    with pytest.raises(ConnectomeFormatError) as err:
        load_connectome(nt_table(["ACH", "SER", "DA", "foo", "foo", None]))
    msg = str(err.value)
    assert "'SER' (1 rows; modulatory" in msg and "'DA'" in msg
    assert "'foo' (2 rows; unknown)" in msg and "<missing> (1 rows)" in msg
    assert "nt_signs=" in msg and "default_sign=" in msg
    g, report = load_connectome(nt_table(["ACH", "OCT", "GABA"]), default_sign=1,
                                return_report=True)
    assert g.sign.tolist() == [1.0, 1.0, -1.0] and report.default_signed == 1


def test_bad_nt_sign_and_default_sign_values():
    with pytest.raises(ValueError, match="nt_signs"):
        load_connectome(nt_table(["ACH"]), nt_signs={"ach": 2})
    with pytest.raises(ValueError, match="default_sign"):
        load_connectome(nt_table(["ACH"]), default_sign=0)


def test_signed_weights_give_signs():
    df = pd.DataFrame({"pre": [1, 2, 3], "post": [0, 0, 0], "weight": [2.5, -4.0, 0.0]})
    g = load_connectome(df)
    assert g.syn_count.tolist() == [2.5, 4.0, 0.0] and g.sign.tolist() == [1.0, -1.0, 1.0]
    df["nt_type"] = ["ACH", "ACH", "GABA"]
    with pytest.raises(ConnectomeFormatError, match="ambiguous"):
        load_connectome(df)


def test_duplicates_summed_by_hand():
    df = pd.DataFrame({"pre": [1, 2, 1, 1, 2], "post": [2, 1, 2, 2, 2],
                       "syn_count": [3, 4, 5, 1, 2], "sign": [-1, 1, -1, -1, 1]})
    g, report = load_connectome(df, duplicates="sum", return_report=True)
    # (1->2): 3+5+1 = 9 (inhibitory); (2->1): 4; (2->2): 2
    assert g.edge_index.tolist() == [[1, 0, 1], [0, 1, 1]]
    assert g.syn_count.tolist() == [4.0, 9.0, 2.0]
    assert g.sign.tolist() == [1.0, -1.0, 1.0]
    assert report.duplicates_merged == 2 and report.num_edges == 3
    with pytest.raises(ConnectomeFormatError, match=r"pre=1 post=2 in rows 0, 2, 3"):
        load_connectome(df)  # the default: repeated rows are an error naming them


def test_duplicates_with_conflicting_signs_error():
    df = pd.DataFrame({"pre": [5, 5], "post": [6, 6], "sign": [1, -1]})
    with pytest.raises(ConnectomeFormatError, match=r"conflicting signs.*pre=5 post=6"):
        load_connectome(df, duplicates="sum")


def test_threshold_applies_after_merging_and_reports(caplog):
    df = pd.DataFrame({"pre": [1, 1, 2, 3], "post": [2, 2, 3, 1],
                       "syn_count": [2, 2, 3, 5], "sign": [1, 1, 1, 1]})
    with caplog.at_level(logging.INFO, logger="graphode.connectome"):
        g, report = load_connectome(df, threshold=4, duplicates="sum", return_report=True)
    assert g.syn_count.tolist() == [5.0, 4.0]  # 3->1 (5), 1->2 (2+2)
    assert g.num_nodes == 3  # node 3's input was dropped, node 3 stays
    assert report.below_threshold == 1 and report.num_edges == 2
    assert "dropped 1 below threshold=4 connection(s)" in caplog.text


def test_self_loops_dropped_and_counted():
    g, report = load_connectome(table(), self_loops=False, return_report=True)
    assert report.self_loops_dropped == 1 and g.num_edges == 5
    assert not bool((g.edge_index[0] == g.edge_index[1]).any())
    assert g.num_nodes == 4
    kept = load_connectome(table())
    assert bool((kept.edge_index[0] == kept.edge_index[1]).any())


def test_report_counts_add_up():
    _, r = load_connectome(table(), neurons=[A, B, C], self_loops=False, threshold=3,
                           return_report=True)
    assert r.rows == r.outside_subset + r.duplicates_merged + r.self_loops_dropped \
        + r.below_threshold + r.num_edges
    assert (r.outside_subset, r.self_loops_dropped, r.below_threshold) == (1, 1, 1)


def test_subset_by_neurons_is_induced():
    g, report = load_connectome(table(), neurons=[A, C, str(D)], return_report=True)
    # kept ids D, A, C -> codes 0, 1, 2; edges among them: C->A, A->C, D->A, C->C
    assert g.node_id.tolist() == [D, A, C]
    assert g.edge_index.tolist() == [[0, 2, 1, 2], [1, 1, 2, 2]]
    assert g.syn_count.tolist() == [1.0, 2.0, 7.0, 4.0]
    assert report.outside_subset == 2
    with pytest.raises(ConnectomeFormatError, match="not in the connectome: 7"):
        load_connectome(table(), neurons=[A, 7])
    h = load_connectome(table("str"), neurons=["AVAR", "DB1"])
    assert h.node_names == ["AVAR", "DB1"] and h.num_edges == 3


def node_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "root_id": [C, A, B, D, 42],
        "cell_type": ["Mi1", "L1", "L1", None, "T4"],
        "size_nm": [1.5, 2.0, 3.0, 4.0, 5.0],
        "side": ["L", "R", "L", "R", "L"],
        "x": [10, 20, 30, 40, 50],
        "is_input": [False, True, True, False, False],
    })


def test_node_table_join():
    g = load_connectome(table(), nodes=node_frame(), input_types=["L1"],
                        output_types="is_input")
    # nodes: D, 42 (isolated, only in the node table), B, A, C
    assert g.node_id.tolist() == [D, 42, B, A, C] and g.num_nodes == 5
    assert g.cell_type_names == ["L1", "Mi1", "T4", "unknown"]
    assert g.cell_type.tolist() == [3, 2, 0, 0, 1]
    assert g.size_nm.dtype == torch.float32 and g.size_nm.tolist() == [4, 5, 3, 2, 1.5]
    assert g.node_x.tolist() == [40, 50, 30, 20, 10]  # "x" is reserved by PyG
    assert "x" not in g
    # text columns are kept as codes + names, like cell_type (D, 42, B, A, C)
    assert g.side_names == ["L", "R"] and [g.side_names[c] for c in g.side] == ["R", "L", "L", "R", "L"]
    assert g.node_x.dtype == torch.int64  # integer columns stay exact
    assert g.input_mask.tolist() == [False, False, True, True, False]
    assert g.output_mask.tolist() == [False, False, True, True, False]
    assert "is_input" not in g  # consumed by output_types=
    etypes = [g.edge_type_names[t] for t in g.edge_type]
    assert etypes == ["L1->L1", "unknown->L1", "Mi1->L1", "L1->Mi1", "L1->Mi1",
                      "Mi1->Mi1"]
    assert g.edge_type_names == sorted(set(etypes), key=lambda s: (
        g.cell_type_names.index(s.split("->")[0]), g.cell_type_names.index(s.split("->")[1])))
    validate_connectome(g)


def test_node_table_from_csv_with_explicit_columns(tmp_path):
    path = tmp_path / "neurons.csv"
    pd.DataFrame({"neuron": STR_IDS, "klass": ["a", "b", "a", "c"]}).to_csv(path,
                                                                            index=False)
    g = load_connectome(table("str"), nodes=path, node_id="neuron", cell_type="klass")
    assert g.cell_type.tolist() == [0, 1, 0, 2]
    with pytest.raises(ConnectomeFormatError, match=r"'kind'.*available columns"):
        load_connectome(table("str"), nodes=path, node_id="neuron", cell_type="kind")


def test_subset_by_cell_types():
    g = load_connectome(table(), nodes=node_frame(), cell_types=["L1", "T4"])
    assert g.node_id.tolist() == [42, B, A]
    assert g.edge_index.tolist() == [[2], [1]] and g.syn_count.tolist() == [5.0]
    with pytest.raises(ConnectomeFormatError, match="unknown cell type.*'Tm9'"):
        load_connectome(table(), nodes=node_frame(), cell_types=["Tm9"])
    with pytest.raises(ConnectomeFormatError, match="cell_types= needs a node table"):
        load_connectome(table(), cell_types=["L1"])
    with pytest.raises(ConnectomeFormatError, match="input_types=.*node table"):
        load_connectome(table(), input_types=["L1"])


def test_node_table_missing_and_duplicate_ids():
    nodes = node_frame()
    with pytest.raises(ConnectomeFormatError,
                       match=rf"1 neuron\(s\) of the edge list .* missing .*: {B}"):
        load_connectome(table(), nodes=nodes[nodes.root_id != B])
    dup = pd.concat([nodes, nodes.iloc[[1]]])
    with pytest.raises(ConnectomeFormatError, match=rf"more than once .*{A}"):
        load_connectome(table(), nodes=dup)


def test_normalize_in_syn_sums_to_one_per_target():
    g = load_connectome(table(), normalize="in_syn")
    assert g.syn_count.tolist() == SYN_COUNT  # raw counts kept
    # target 1: 5 -> 1; target 2: 1, 2 -> 1/3, 2/3; target 3: 3, 7, 4 -> /14
    expected = [1.0, 1 / 3, 2 / 3, 3 / 14, 7 / 14, 4 / 14]
    assert torch.allclose(g.syn_weight, torch.tensor(expected))
    sums = torch.zeros(4).index_add_(0, g.edge_index[1], g.syn_weight)
    assert torch.allclose(sums[1:], torch.ones(3)) and sums[0] == 0  # node 0: no inputs


def test_normalize_in_degree():
    g = load_connectome(table(), normalize="in_degree")
    expected = [5.0, 1 / 2, 2 / 2, 3 / 3, 7 / 3, 4 / 3]
    assert torch.allclose(g.syn_weight, torch.tensor(expected))
    with pytest.raises(ValueError, match="normalize"):
        load_connectome(table(), normalize="out_syn")


# ------------------------------------------------------------------ bad input
def test_file_not_found(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(ConnectomeFileNotFoundError, match="nope.csv: file not found"):
        load_connectome(missing)
    with pytest.raises(ValueError):
        load_connectome(missing)
    with pytest.raises(FileNotFoundError):
        load_connectome(table(), nodes=tmp_path / "nodes.csv")


def test_unsupported_extension(tmp_path):
    path = tmp_path / "edges.xlsx"
    path.write_text("pre,post\n1,2\n")
    with pytest.raises(ConnectomeFormatError, match=r"edges.xlsx.*unsupported .*'.xlsx'"):
        load_connectome(path)
    with pytest.raises(ConnectomeFormatError, match="unsupported edge list source"):
        load_connectome([(1, 2)])


def test_missing_columns_list_available(tmp_path):
    path = tmp_path / "edges.csv"
    pd.DataFrame({"a": [1], "b": [2]}).to_csv(path, index=False)
    with pytest.raises(ConnectomeFormatError,
                       match=r"edges.csv: no pre column .*available columns: \['a', 'b'\]"):
        load_connectome(path)
    with pytest.raises(ConnectomeFormatError, match=r"'syn'.*weight=.*\['pre', 'post'"):
        load_connectome(table(), weight="syn")


def test_non_numeric_weight_names_row(tmp_path):
    path = tmp_path / "edges.csv"
    path.write_text("pre,post,syn_count,sign\n1,2,3,1\n2,3,lots,1\n")
    with pytest.raises(ConnectomeFormatError,
                       match=r"edges.csv: row 1: weight column 'syn_count' has "
                             r"non-numeric value 'lots'"):
        load_connectome(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights(bad):
    df = table()
    df["syn_count"] = df["syn_count"].astype(float)
    df.loc[2, "syn_count"] = bad
    with pytest.raises(ConnectomeFormatError, match="row 2: weight column .*non-finite"):
        load_connectome(df)


def test_negative_counts_with_sign_column():
    df = table()
    df.loc[3, "syn_count"] = -7
    with pytest.raises(ConnectomeFormatError, match=r"row 3: negative synapse count.*'sign'"):
        load_connectome(df)


def test_bad_sign_values():
    df = table()
    df.loc[1, "sign"] = 0
    with pytest.raises(ConnectomeFormatError, match="row 1: sign column 'sign' has value 0"):
        load_connectome(df)


def test_empty_edge_list_and_empty_after_filtering(tmp_path):
    path = tmp_path / "edges.csv"
    path.write_text("pre,post,syn_count\n")
    with pytest.raises(ConnectomeFormatError, match="edges.csv: empty edge list"):
        load_connectome(path)
    (tmp_path / "blank.csv").write_text("")
    with pytest.raises(ConnectomeFormatError, match="blank.csv: file is empty"):
        load_connectome(tmp_path / "blank.csv")
    with pytest.raises(ConnectomeFormatError, match="no connections left.*6 below"):
        load_connectome(table(), threshold=100)


def test_pt_files_that_are_not_sparse_square_matrices(tmp_path):
    cases = {
        "dense.pt": (torch.eye(3), "dense tensor"),
        "cube.pt": (torch.eye(4).reshape(2, 2, 4).to_sparse(), "must be 2-D"),
        "rect.pt": (torch.ones(2, 3).to_sparse(), r"must be square .*\(2, 3\)"),
        "dict.pt": ({"a": torch.ones(1)}, "found dict"),
    }
    for name, (obj, msg) in cases.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(ConnectomeFormatError, match=rf"{name}: .*{msg}"):
            load_connectome(tmp_path / name)


def test_npz_arrays_must_be_1d_and_equal_length(tmp_path):
    np.savez(tmp_path / "a.npz", pre=np.array([[1, 2]]), post=np.array([2, 3]))
    with pytest.raises(ConnectomeFormatError, match=r"a.npz: array 'pre' must be 1-D"):
        load_connectome(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", pre=np.array([1, 2, 3]), post=np.array([2, 3]))
    with pytest.raises(ConnectomeFormatError, match=r"b.npz: .*different lengths"):
        load_connectome(tmp_path / "b.npz")


def test_float_ids():
    g = load_connectome({"pre": [1.0, 2.0], "post": [2.0, 3.0], "sign": [1, 1]})
    assert g.node_id.tolist() == [1, 2, 3]
    with pytest.raises(ConnectomeFormatError, match=r"row 1: postsynaptic id 3.5 is not "
                                                    r"an integer"):
        load_connectome({"pre": [1.0, 2.0], "post": [2.0, 3.5], "sign": [1, 1]})
    with pytest.raises(ConnectomeFormatError, match="row 0: missing or non-finite"):
        load_connectome({"pre": [np.nan, 2.0], "post": [2.0, 3.0], "sign": [1, 1]})
    with pytest.raises(ConnectomeFormatError, match="above 2\\*\\*53"):
        load_connectome({"pre": [7.2e17], "post": [1.0], "sign": [1]})


def test_missing_id_in_csv(tmp_path):
    path = tmp_path / "edges.csv"
    path.write_text(f"pre,post,sign\n{A},{B},1\n,{B},1\n")
    with pytest.raises(ConnectomeFormatError, match="row 1: missing or non-finite "
                                                    "presynaptic id"):
        load_connectome(path)


def test_parquet_without_pyarrow(tmp_path, monkeypatch):
    path = tmp_path / "edges.parquet"
    table().to_parquet(path)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ImportError, match="pip install pyarrow"):
        load_connectome(path)


# -------------------------------------------------------------- save / convert
def assert_identical(g: Data, h: Data) -> None:
    assert set(g.keys()) == set(h.keys())
    for key in g.keys():
        a, b = g[key], h[key]
        if isinstance(a, torch.Tensor):
            assert a.dtype == b.dtype and torch.equal(a, b), key
        else:
            assert a == b and type(a) is type(b), key


@pytest.mark.parametrize("ids", ["int", "str"])
def test_save_load_round_trip(ids, tmp_path):
    nodes = node_frame()
    if ids == "str":
        nodes = nodes[nodes.root_id != 42].assign(root_id=lambda d: d.root_id.map(NAMES))
    g = load_connectome(table(ids), nodes=nodes, normalize="in_syn", input_types="L1")
    path = tmp_path / "graph.pt"
    save_graph(g, path)
    save_graph(g, path)  # overwrite in place
    assert [p.name for p in tmp_path.iterdir()] == ["graph.pt"]  # no temp file left
    h = load_graph(path)
    assert_identical(g, h)
    with pytest.raises(ConnectomeFormatError, match="written by save_graph"):
        load_connectome(path)
    torch.save(adjacency(), tmp_path / "adj.pt")
    with pytest.raises(ConnectomeFormatError, match="adj.pt: not a graph written by "
                                                    "save_graph"):
        load_graph(tmp_path / "adj.pt")


def test_save_refuses_unstorable_and_invalid_graphs(tmp_path):
    g = load_connectome(table())
    g.meta = {"a": 1}
    with pytest.raises(ConnectomeFormatError, match="'meta'"):
        save_graph(g, tmp_path / "g.pt")
    del g.meta
    g.sign[0] = 0.0
    with pytest.raises(ConnectomeFormatError, match="sign"):
        save_graph(g, tmp_path / "g.pt")
    assert not list(tmp_path.iterdir())


def test_scipy_round_trip():
    g = load_connectome(table())
    w = to_scipy(g)
    assert isinstance(w, sp.csr_matrix) and w.shape == (4, 4)
    dense = np.zeros((4, 4))
    for (s, t), c, z in zip(np.array(EDGE_INDEX).T, SYN_COUNT, SIGN):
        dense[t, s] = c * z
    assert np.array_equal(w.toarray(), dense)
    assert np.array_equal(to_scipy(g, "binary").toarray(), dense != 0)
    assert np.array_equal(to_scipy(g, "syn_count").toarray(), np.abs(dense))
    h = from_scipy(w)
    for key in ("edge_index", "syn_count", "sign", "syn_weight"):
        assert torch.equal(g[key], h[key]), key
    assert from_scipy(sp.csr_matrix(w), normalize="in_syn").syn_weight[0] == 1.0
    with pytest.raises(ValueError, match="weighted"):
        to_scipy(g, "abs")
    with pytest.raises(ConnectomeFormatError, match="square"):
        from_scipy(sp.csr_matrix(np.ones((2, 3))))


@pytest.mark.parametrize("with_nodes", [False, True])
def test_networkx_round_trip(with_nodes):
    kwargs = dict(nodes=node_frame(), input_types=["L1"]) if with_nodes else {}
    g = load_connectome(table(), **kwargs)
    G = to_networkx(g)
    assert isinstance(G, nx.DiGraph) and G.number_of_edges() == 6
    a, b = node_index(g, [A, B]).tolist()
    assert G.edges[a, b] == {"syn_count": 5.0, "sign": 1.0, "syn_weight": 5.0,
                             **({"edge_type": "L1->L1"} if with_nodes else {})}
    assert G.nodes[a]["node_id"] == A
    assert_identical(g, from_networkx(G))
    with pytest.raises(ConnectomeFormatError, match="undirected"):
        from_networkx(G.to_undirected())


def test_from_networkx_plain_graph():
    G = nx.MultiDiGraph()
    G.add_edge("a", "b", weight=2.0)
    G.add_edge("a", "b", weight=3.0)
    G.add_edge("b", "c", weight=-1.0)
    G.add_node("z")
    g = from_networkx(G)
    assert g.node_names == ["a", "b", "c", "z"]
    assert g.syn_count.tolist() == [5.0, 1.0] and g.sign.tolist() == [1.0, -1.0]


# ------------------------------------------------------------------ validation
def _dup_last_edge(g: Data) -> None:
    g.edge_index = torch.cat([g.edge_index, g.edge_index[:, -1:]], 1)
    for key in ("syn_count", "sign", "syn_weight"):
        g[key] = torch.cat([g[key], g[key][-1:]])


def _set(key, value):
    return lambda g: g.__setattr__(key, value(g))


def _poke(key, index, value):
    return lambda g: g[key].__setitem__(index, value)


BROKEN = {
    "no num_nodes": (lambda g: g.__delattr__("num_nodes"), "num_nodes"),
    "unsorted": (_set("edge_index", lambda g: g.edge_index[:, [1, 0, 2, 3, 4, 5]]),
                 "sorted"),
    "duplicate": (_dup_last_edge, "duplicate"),
    "int32 index": (_set("edge_index", lambda g: g.edge_index.int()), "LongTensor"),
    "out of range": (_poke("edge_index", (0, 0), 9), "larger indices"),
    "sign 0.5": (_poke("sign", 2, 0.5), "sign"),
    "negative count": (_poke("syn_count", 1, -1.0), "syn_count"),
    "nan count": (_poke("syn_count", 1, float("nan")), "syn_count"),
    "float64 count": (_set("syn_count", lambda g: g.syn_count.double()), "syn_count"),
    "short sign": (_set("sign", lambda g: g.sign[:-1]), r"sign.*\[E=6\]"),
    "no syn_weight": (lambda g: g.__delattr__("syn_weight"), "syn_weight"),
    "bad type code": (_poke("cell_type", 0, 3), "cell_type' codes"),
    "float mask": (_set("input_mask", lambda g: g.input_mask.float()), "input_mask"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_validate_rejects_broken_graphs(case):
    g = load_connectome(table())
    validate_connectome(g)
    breaker, msg = BROKEN[case]
    breaker(g)
    with pytest.raises(ValueError, match=msg):
        validate_connectome(g)


def test_validate_rejects_non_data():
    with pytest.raises(ConnectomeFormatError, match="expected a torch_geometric Data"):
        validate_connectome({"edge_index": torch.zeros(2, 0)})


def test_batch_offsets_and_concatenation():
    g1 = load_connectome(table())
    g2 = load_connectome(table(), neurons=[A, B, C], self_loops=False)
    batch = Batch.from_data_list([g1, g2])
    assert batch.num_nodes == 7
    expected = torch.cat([g1.edge_index, g2.edge_index + 4], dim=1)
    assert torch.equal(batch.edge_index, expected)
    assert torch.equal(batch.syn_count, torch.cat([g1.syn_count, g2.syn_count]))
    assert torch.equal(batch.sign, torch.cat([g1.sign, g2.sign]))
    assert torch.equal(batch.node_id, torch.cat([g1.node_id, g2.node_id]))
    batch.validate(raise_on_error=True)
    validate_connectome(batch)
    back = batch.get_example(1)
    assert torch.equal(back.edge_index, g2.edge_index)
