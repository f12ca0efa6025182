"""Real export layouts load right with documented options only (built here, never downloaded):
a FlyWire-style neuron + connection table and a C. elegans-style table with one row per
(pre, post, transmitter)."""

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from graphode.connectome import ConnectomeFormatError, load_connectome, node_index

R1, R2, L1, MI1, T4A, T4B = 720575940600000001, 720575940600000002, 720575940611111111, \
    720575940622222222, 720575940633333333, 720575940644444444


def flywire_neurons() -> pd.DataFrame:
    # FlyWire's neuron table: one transmitter per neuron (nt_type), several annotation columns
    return pd.DataFrame({
        "root_id": [R1, R2, L1, MI1, T4A, T4B],
        "cell_type": ["R1-6", "R1-6", "L1", "Mi1", "T4a", "T4b"],
        "super_class": ["sensory", "sensory", "optic", "optic", "optic", "optic"],
        "side": ["right", "right", "right", "right", "right", None],
        "nt_type": ["HIST", "HIST", "GLUT", "GABA", "ACH", "ACH"],
        "pos_x": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        "supervoxel_id": [81064146591211761, 81064146591211762, 81064146591211763,
                          81064146591211764, 81064146591211765, 81064146591211766],
    })


def flywire_connections() -> pd.DataFrame:
    # one row per (pre, post, neuropil): R1 -> L1 appears twice (ME_R, LA_R)
    return pd.DataFrame({
        "pre_root_id": [R1, R1, R2, L1, MI1, T4A],
        "post_root_id": [L1, L1, L1, MI1, T4A, T4B],
        "neuropil": ["LA_R", "ME_R", "LA_R", "ME_R", "ME_R", "LO_R"],
        "syn_count": [30, 12, 25, 8, 6, 4],
    })


def by_pair(g, pre, post):
    a, b = node_index(g, [pre, post]).tolist()
    k = ((g.edge_index[0] == a) & (g.edge_index[1] == b)).nonzero()
    assert k.numel() == 1
    return float(g.syn_count[k]), float(g.sign[k])


def test_flywire_neuron_table_transmitters_sign_every_connection():
    g, report = load_connectome(flywire_connections(), nodes=flywire_neurons(), nt_signs={"hist": -1},
                                duplicates="sum", return_report=True)
    assert by_pair(g, R1, L1) == (42.0, -1.0)  # histamine (mapped), neuropil rows summed
    assert by_pair(g, L1, MI1) == (8.0, -1.0)  # glutamate: inhibitory in the fly
    assert by_pair(g, MI1, T4A) == (6.0, -1.0)  # GABA
    assert by_pair(g, T4A, T4B) == (4.0, 1.0)  # ACh
    assert report.sign_source == "node-table transmitter column 'nt_type'"
    assert report.duplicate_pairs == 1 and report.duplicates_merged == 1 and report.duplicates == "sum"
    # every other column is metadata: text as codes + names, integers exact, floats as floats
    order = [R1, R2, L1, MI1, T4A, T4B]
    idx = node_index(g, order)
    assert [g.super_class_names[c] for c in g.super_class[idx]] == ["sensory"] * 2 + ["optic"] * 4
    assert [g.side_names[c] for c in g.side[idx]] == ["right"] * 5 + ["unknown"]
    assert [g.nt_type_names[c] for c in g.nt_type[idx]] == ["HIST", "HIST", "GLUT", "GABA", "ACH", "ACH"]
    assert g.supervoxel_id.dtype == torch.int64
    assert g.supervoxel_id[idx].tolist() == flywire_neurons().supervoxel_id.tolist()
    assert g.pos_x[idx].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert set(report.node_columns) == {"super_class", "side", "nt_type", "pos_x", "supervoxel_id"}


def test_unmapped_node_transmitter_is_an_error_naming_it():
    with pytest.raises(ConnectomeFormatError, match=r"transmitters of the presynaptic neurons.*'HIST'"):
        load_connectome(flywire_connections(), nodes=flywire_neurons(), duplicates="sum")


def test_unused_transmitter_column_is_named_in_a_warning():
    edges = flywire_connections().assign(sign=[1, 1, 1, -1, -1, 1])
    with pytest.warns(UserWarning, match=r"sign column 'sign'.*not used for signs: node-table transmitter "
                                         r"column 'nt_type'"):
        g = load_connectome(edges, nodes=flywire_neurons(), duplicates="sum")
    assert by_pair(g, L1, MI1) == (8.0, -1.0)  # the edge list's own sign column decides


def test_glob_patterns_select_types():
    g = load_connectome(flywire_connections(), nodes=flywire_neurons(), nt_signs={"hist": -1},
                        duplicates="sum", input_types="R*", output_types="T4[ab]", cell_types=["R*", "L1", "T4?"])
    assert g.num_nodes == 5 and g.cell_type_names == ["L1", "R1-6", "T4a", "T4b"]  # Mi1 left out
    assert int(g.input_mask.sum()) == 2 and int(g.output_mask.sum()) == 2
    with pytest.raises(ConnectomeFormatError, match=r"unknown cell type.*'KC\*'"):
        load_connectome(flywire_connections(), nodes=flywire_neurons(), nt_signs={"hist": -1},
                        duplicates="sum", cell_types=["KC*"])


def celegans_chemical() -> pd.DataFrame:
    # one row per (pre, post, transmitter): co-transmission repeats the same synapses
    return pd.DataFrame({
        "pre": ["AFDL", "AFDL", "AIYL", "AIYL", "ASEL", "AWCL"],
        "post": ["AIYL", "AIYL", "AIZL", "AIZL", "AIYL", "AIYL"],
        "syn_count": [25, 25, 10, 10, 7, 3],
        "nt": ["ACh", "ACh", "ACh", "GABA", "Glu", "Glu"],
    })


def test_celegans_per_transmitter_rows_never_double_counts():
    df = celegans_chemical()
    with pytest.raises(ConnectomeFormatError, match=r"duplicates='sum'.*'max' or 'first'"):
        load_connectome(df)  # the default names the choice instead of guessing
    vertebrate = {"glutamate": 1, "glu": 1}
    with pytest.warns(UserWarning, match=r"1 connection\(s\) have rows with conflicting signs.*AIYL"):
        g, report = load_connectome(df, nt_signs=vertebrate, duplicates="first", return_report=True)
    assert by_pair(g, "AFDL", "AIYL") == (25.0, 1.0)  # 25, not 50
    assert by_pair(g, "AIYL", "AIZL") == (10.0, 1.0)  # ACh listed first
    assert by_pair(g, "ASEL", "AIYL") == (7.0, 1.0)  # glutamate excitatory in worms
    assert (report.duplicate_pairs, report.duplicates_merged, report.sign_conflicts) == (2, 2, 1)
    with pytest.raises(ConnectomeFormatError, match="conflicting signs.*AIYL"):
        load_connectome(df, nt_signs=vertebrate, duplicates="sum")


def test_duplicates_max_keeps_the_largest_row():
    df = pd.DataFrame({"pre": [1, 1, 1, 2], "post": [2, 2, 2, 1], "syn_count": [3, 9, 9, 4], "sign": [1, 1, 1, -1]})
    g = load_connectome(df, duplicates="max")
    assert g.syn_count.tolist() == [4.0, 9.0]
    with pytest.raises(ConnectomeFormatError, match="duplicates must be one of"):
        load_connectome(df, duplicates="mean")


def test_cell_type_alias_columns_pick_the_first_and_keep_the_rest():
    nodes = pd.DataFrame({"bodyId": [1, 2, 3], "type": ["KCab", "KCg", "MBON01"],
                          "instance": ["KCab_R", "KCg_R", "MBON01(y5B'2a)_R"]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no sign source: all +1 with a warning
        g = load_connectome({"bodyId_pre": [1, 2], "bodyId_post": [3, 3], "weight": [5, 6]}, nodes=nodes)
    assert g.cell_type_names == ["KCab", "KCg", "MBON01"]
    assert g.instance_names == ["KCab_R", "KCg_R", "MBON01(y5B'2a)_R"]
    assert np.array_equal(g.instance.numpy(), [0, 1, 2])


def celegans_with_gap_junctions() -> pd.DataFrame:
    # WormWiring-style: one table, a type column; electrical junctions listed in both directions
    return pd.DataFrame({
        "source": ["AFDL", "AIYL", "AIYL", "AWCL", "AIYL", "RIAL"],
        "target": ["AIYL", "AIZL", "AWCL", "AIYL", "RIAL", "AIYL"],
        "type": ["chemical", "chemical", "electrical", "electrical", "electrical", "electrical"],
        "syn_count": [25, 10, 3, 3, 2, 2],
        "nt": ["ACh", "Glu", None, None, None, None],
    })


def dense_gap(g) -> np.ndarray:
    m = np.zeros((g.num_nodes, g.num_nodes))
    m[g.gap_index[1].numpy(), g.gap_index[0].numpy()] = g.gap_weight.numpy()
    return m


def test_gap_junctions_from_rows_of_the_edge_table():
    nodes = pd.DataFrame({"id": ["AFDL", "AIYL", "AIZL", "AWCL", "RIAL"],
                          "cell_type": ["AFD", "AIY", "AIZ", "AWC", "RIA"]})
    g, report = load_connectome(celegans_with_gap_junctions(), nodes=nodes, gap_junctions=("type", "electrical"),
                                nt_signs={"glu": 1}, return_report=True)
    assert g.num_edges == 2 and by_pair(g, "AFDL", "AIYL") == (25.0, 1.0) and by_pair(g, "AIYL", "AIZL") == (10.0, 1.0)
    i = dict(zip(["AFDL", "AIYL", "AIZL", "AWCL", "RIAL"], node_index(g, ["AFDL", "AIYL", "AIZL", "AWCL", "RIAL"]).tolist()))
    want = np.zeros((5, 5))
    for a, b, w in (("AIYL", "AWCL", 3.0), ("AIYL", "RIAL", 2.0)):
        want[i[a], i[b]] = want[i[b], i[a]] = w
    assert np.array_equal(dense_gap(g), want)  # symmetric, each listing counted once
    assert (report.gap_rows, report.gap_rows_merged, report.gap_junctions) == (4, 2, 2)
    assert sorted(g.gap_type_names) == ["AIY<->AWC", "AIY<->RIA"]
    from graphode.connectome import validate_connectome

    validate_connectome(g)  # includes check_gap_junctions


def test_gap_junctions_from_their_own_table_and_the_dynamics_read_them():
    from graphode import BoundDynamics

    chem = {"pre": ["A", "B"], "post": ["B", "C"], "syn_count": [1.0, 2.0]}
    gaps = pd.DataFrame({"pre": ["A", "C"], "post": ["C", "D"], "conductance": [0.5, 0.25]})
    g = load_connectome(chem, gap_junctions=gaps, default_sign=1)
    assert g.node_names == ["A", "B", "C", "D"]  # D only has a gap junction: still a neuron
    assert dense_gap(g)[0, 2] == 0.5 and dense_gap(g)[3, 2] == 0.25
    dyn = BoundDynamics(g, weights="fixed", gap_junctions="fixed")
    v = torch.tensor([[1.0, 0.0, -1.0, 2.0]])
    out = dyn(torch.zeros(1), v)
    w = torch.zeros(4, 4)
    w[g.edge_index[1], g.edge_index[0]] = g.sign * g.syn_weight
    gm = torch.from_numpy(dense_gap(g)).float()
    ref = -v + torch.relu(v) @ w.t() + v @ gm.t() - v * gm.sum(1)  # tau = 1, b = 0
    assert torch.allclose(out, ref / dyn.tau(), atol=1e-6)
    with pytest.raises(ConnectomeFormatError, match=r"gap junction 'A' <-> 'C' is listed in rows 0, 1 with different"):
        load_connectome(chem, gap_junctions={"pre": ["A", "C"], "post": ["C", "A"], "weight": [1, 2]}, default_sign=1)
    with pytest.raises(ConnectomeFormatError, match="row 0: gap junction from neuron 'A' to itself"):
        load_connectome(chem, gap_junctions={"pre": ["A"], "post": ["A"]}, default_sign=1)
    with pytest.raises(ConnectomeFormatError, match=r"no row has type == 'EJ'"):
        load_connectome(celegans_with_gap_junctions(), gap_junctions=("type", "EJ"), default_sign=1)
