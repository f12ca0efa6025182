"""Bad connectome input is refused with an error naming the file, row and value; nothing is
silently dropped, merged, coerced or corrupted (and a fuzz of the edge-list loader)."""

import bz2
import gzip
import lzma
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch

from graphode.connectome import ConnectomeFormatError, load_connectome, load_graph, save_graph

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def test_duplicate_column_names_in_a_header(tmp_path):
    path = tmp_path / "edges.csv"
    path.write_text("pre,post,syn_count,syn_count\n1,2,3,4\n")
    with pytest.raises(ConnectomeFormatError, match=r"edges.csv: column name\(s\) \['syn_count'\] appear more than once"):
        load_connectome(path, default_sign=1)
    df = pd.DataFrame([[1, 2, 3, 4]], columns=["pre", "post", "w", "w"])
    with pytest.raises(ConnectomeFormatError, match=r"<DataFrame edge list>: column name\(s\) \['w'\]"):
        load_connectome(df, default_sign=1)


def test_two_candidate_id_columns_are_an_error_naming_both():
    edges = {"pre": [1, 2], "post": [2, 3], "pre_root_id": [10, 20], "post_root_id": [20, 30]}
    with pytest.raises(ConnectomeFormatError, match=r"could be the pre column: \['pre', 'pre_root_id'\]; name"):
        load_connectome(edges, default_sign=1)
    g = load_connectome(edges, pre="pre_root_id", post="post_root_id", default_sign=1)
    assert g.node_id.tolist() == [10, 20, 30]
    with pytest.raises(ConnectomeFormatError, match=r"could be the weight column: \['syn_count', 'weight'\]"):
        load_connectome({"pre": [1], "post": [2], "syn_count": [3], "weight": [4]}, default_sign=1)


def test_one_stray_string_does_not_turn_every_id_into_a_name(tmp_path):
    path = tmp_path / "edges.csv"
    path.write_text("pre,post\n1,2\n2,3\nx,1\n")
    with pytest.raises(ConnectomeFormatError, match=r"edges.csv: row 2: presynaptic id 'x' is not an integer "
                                                    r"while other ids \(e.g. '1'\) are"):
        load_connectome(path, default_sign=1)
    with pytest.raises(ConnectomeFormatError, match="row 2: presynaptic id 'x'"):
        load_connectome({"pre": [1, 2, "x"], "post": [2, 3, 1]}, default_sign=1)
    g = load_connectome(path, default_sign=1, ids="str")  # the explicit way: names
    assert g.node_names == ["1", "2", "3", "x"]
    with pytest.raises(ConnectomeFormatError, match=r"row 2: presynaptic id 'x' is not an integer"):
        load_connectome(path, default_sign=1, ids="int")
    with pytest.raises(ConnectomeFormatError, match="ids must be one of"):
        load_connectome(path, default_sign=1, ids="names")


@pytest.mark.parametrize("bad, why", [
    ("AVAR ", "leading or trailing whitespace"), (" AVAR", "leading or trailing whitespace"),
    ("AV\x00AR", "control character"), ("A\nB", "control character"), ("   ", "is empty"),
])
def test_names_that_would_split_or_invent_neurons(bad, why):
    with pytest.raises(ConnectomeFormatError, match=rf"row 1: postsynaptic id {bad!r}".replace("\\", "\\\\")
                       .replace("(", r"\(").replace("[", r"\[") + f".*{why}"):
        load_connectome(pd.DataFrame({"pre": ["AVAL", "AVAL"], "post": ["AVAR", bad]}), default_sign=1)


def test_nul_row_in_a_file(tmp_path):
    path = tmp_path / "edges.csv"
    path.write_bytes(b"pre,post\nAVAL,AVAR\n\x00,AVAL\n")
    with pytest.raises(ConnectomeFormatError, match=r"edges.csv: row 1: presynaptic id '\\x00' holds a control"):
        load_connectome(path, default_sign=1)


def test_complex_weights_are_refused():
    for source in ({"pre": [1, 2], "post": [2, 3], "syn_count": np.array([1 + 2j, 3])},
                   pd.DataFrame({"pre": [1, 2], "post": [2, 3], "syn_count": np.array([1 + 2j, 3])})):
        with pytest.raises(ConnectomeFormatError, match="'syn_count' holds complex numbers"):
            load_connectome(source, default_sign=1)


def test_missing_values_in_numeric_node_columns_warn_and_stay_missing():
    with pytest.warns(UserWarning, match=r"node column 'area' has 1 missing value\(s\); they are NaN in data.area"):
        g = load_connectome({"pre": [1, 2], "post": [2, 3]}, nodes={"id": [1, 2, 3], "area": [1.0, np.nan, 2.0]},
                            default_sign=1)
    assert torch.isnan(g.area[1]) and g.area[[0, 2]].tolist() == [1.0, 2.0]


def test_empty_node_tables(tmp_path):
    path = tmp_path / "nodes.csv"
    path.write_text("id,cell_type\n")
    for nodes, name in (({"id": []}, "<dict node table>"), (path, "nodes.csv")):
        with pytest.raises(ConnectomeFormatError, match=f"{name}: the node table has no rows"):
            load_connectome({"pre": [1, 2], "post": [2, 3]}, nodes=nodes, default_sign=1)


GOOD = b"pre\tpost\tsyn_count\n1\t2\t3\n2\t3\t5\n"


@pytest.mark.parametrize("suffix, compress", [(".gz", gzip.compress), (".bz2", bz2.compress),
                                              (".xz", lzma.compress)])
def test_corrupt_and_truncated_compressed_files(tmp_path, suffix, compress):
    whole = tmp_path / f"edges.txt{suffix}"
    whole.write_bytes(compress(GOOD))
    g = load_connectome(whole, default_sign=1)  # .txt.gz: the separator is read after decompressing
    assert g.syn_count.tolist() == [3.0, 5.0]
    cut = tmp_path / f"cut.tsv{suffix}"
    cut.write_bytes(compress(GOOD)[:-8])
    with pytest.raises(ConnectomeFormatError, match=r"cut.tsv.*(truncated|cannot read)"):
        load_connectome(cut, default_sign=1)
    junk = tmp_path / f"junk.tsv{suffix}"
    junk.write_bytes(b"not compressed at all" * 4)
    with pytest.raises(ConnectomeFormatError, match=rf"junk.tsv{suffix}: cannot read as a {suffix} file"):
        load_connectome(junk, default_sign=1)


def test_corrupt_zip(tmp_path):
    path = tmp_path / "edges.csv.zip"
    path.write_bytes(b"PK\x03\x04 not a zip archive")
    with pytest.raises(ConnectomeFormatError, match=r"edges.csv.zip: cannot read as a .zip file"):
        load_connectome(path, default_sign=1)
    good = tmp_path / "good.csv.zip"
    with zipfile.ZipFile(good, "w") as z:
        z.writestr("good.csv", "pre,post\n1,2\n")
    assert load_connectome(good, default_sign=1).num_edges == 1


def test_saved_graph_checksum_detects_changed_bytes(tmp_path):
    g = load_connectome({"pre": [1, 2], "post": [2, 3], "syn_count": [7.0, 5.0]}, default_sign=1)
    path = tmp_path / "g.pt"
    save_graph(g, path)
    assert load_graph(path).syn_count.tolist() == [7.0, 5.0]
    raw = bytearray(path.read_bytes())
    at = raw.find(np.float32(7.0).tobytes() + np.float32(5.0).tobytes())
    assert at >= 0
    raw[at:at + 4] = np.float32(700.0).tobytes()  # the count 7 becomes 700, the file still unpickles
    path.write_bytes(bytes(raw))
    with pytest.raises(ConnectomeFormatError, match=r"g.pt: damaged: the content checksum does not match"):
        load_graph(path)
    old = torch.load(tmp_path / "g.pt", weights_only=True)
    old["version"] = 1
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(ConnectomeFormatError, match="unsupported save_graph version 1"):
        load_graph(tmp_path / "old.pt")


# -- fuzz: any edge table either loads with every count where it belongs, or is refused clearly ----
ids_int = st.integers(min_value=-(2**40), max_value=2**40)
ids_str = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF), min_size=0, max_size=6)
rows = st.integers(min_value=1, max_value=12)


@st.composite
def edge_tables(draw):
    n = draw(rows)
    kind = draw(st.sampled_from(["int", "str", "mixed"]))
    pool = {"int": ids_int, "str": ids_str, "mixed": st.one_of(ids_int, ids_str)}[kind]
    neurons = draw(st.lists(pool, min_size=1, max_size=6))
    pre = draw(st.lists(st.sampled_from(neurons), min_size=n, max_size=n))
    post = draw(st.lists(st.sampled_from(neurons), min_size=n, max_size=n))
    counts = draw(st.lists(st.one_of(st.integers(0, 1000), st.floats(allow_nan=True, allow_infinity=True,
                                                                         width=32)), min_size=n, max_size=n))
    signs = draw(st.lists(st.sampled_from([1, -1]), min_size=n, max_size=n))
    return pd.DataFrame({"pre": pd.Series(pre, dtype=object), "post": pd.Series(post, dtype=object),
                         "syn_count": counts, "sign": signs})


def _expected(df: pd.DataFrame) -> dict:
    return df.assign(key=list(zip(df.pre.map(str), df.post.map(str)))).groupby("key").syn_count.sum().to_dict()


@settings(max_examples=1000, deadline=None, derandomize=True)
@given(df=edge_tables(), via_csv=st.booleans())
def test_fuzz_edge_list_loader(tmp_path_factory, df, via_csv):
    source = df
    if via_csv:
        source = tmp_path_factory.mktemp("fuzz") / "edges.csv"
        df.to_csv(source, index=False)
    try:
        g = load_connectome(source, duplicates="sum", ids="str")
    except ConnectomeFormatError:
        return  # refused, with the library's own error (never an IndexError, KeyError, ...)
    if via_csv:  # what the file holds, read back as text
        df = pd.read_csv(source, dtype={"pre": str, "post": str}, keep_default_na=False)
    names = np.array(g.node_names, dtype=object)
    got = {(names[a], names[b]): c for (a, b), c in zip(g.edge_index.t().tolist(), g.syn_count.tolist())}
    want = _expected(df)
    assert set(got) == set(want)
    for key, count in want.items():
        assert got[key] == pytest.approx(float(np.float32(count)), rel=1e-6), key


# -- the dynamics and the solver refuse what would only fail later ---------------------------
def test_integer_y0_and_non_finite_stimuli_are_refused():
    from graphode import BoundDynamics, Stimulus, solve

    g = load_connectome({"pre": [0, 1], "post": [1, 2]}, default_sign=1)
    dyn = BoundDynamics(g, weights="fixed")
    with pytest.raises(TypeError, match=r"y0 must be a floating-point tensor .* got torch.int64"):
        solve(dyn, torch.zeros(1, 3, dtype=torch.long), (0.0, 1.0))
    u = torch.zeros(1, 3)
    u[0, 2] = float("nan")
    with pytest.raises(ValueError, match=r"stimulus values hold NaN or inf \(first at index \[0, 2\]\)"):
        solve(dyn, torch.zeros(1, 3), (0.0, 1.0), args=(u,))
    with pytest.raises(TypeError, match="stimulus values must be floating point"):
        Stimulus(values=torch.ones(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="stimulus times hold NaN"):
        Stimulus(values=torch.zeros(1, 2, 3), times=torch.tensor([0.0, float("nan")]))
