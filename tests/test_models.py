"""Input mappings, readouts, the classifier, training/resume, ablations and the CLI."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace

import pytest
import torch
from torch_geometric.data import Batch, Data

from graphode.cli import main as cli_main
from graphode.flyvis import fly_visual_system
from graphode.inputs import SparseProjection, hex_retina, random_pixels
from graphode.connectome import build_connectome
from graphode.models import ConnectomeClassifier
from graphode.readout import CellTypeNorm, LinearReadout, PooledReadout
from graphode.training import LearningRateSchedule, TrainConfig, ablate, train
from graphode.connectome.transforms import DegreePreservingShuffle


# -- inputs ------------------------------------------------------------------------------------
def test_hex_retina_geometry_hand_computed():
    # 5 input neurons and 1 other; inputs centred at (0, 0), radius 1, 5x5 image, margin 1:
    # half-width = 5/2 - 0.5 - 1 = 1 pixel per unit, row = 2 - y, col = 2 + x.
    pos = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.5, 0.5], [-0.5, -0.5], [9.0, 9.0]])
    data = Data(pos=pos, input_mask=torch.tensor([True] * 5 + [False]), num_nodes=6)
    dense = hex_retina(data, (5, 5), margin=1.0).dense()
    expected = torch.zeros(6, 25)
    expected[0, 2 * 5 + 2] = 1.0  # centre pixel
    expected[1, 2 * 5 + 3] = 1.0
    expected[2, 2 * 5 + 1] = 1.0
    for r, c in ((1, 2), (1, 3), (2, 2), (2, 3)):  # (row 1.5, col 2.5): four equal weights
        expected[3, r * 5 + c] = 0.25
    for r, c in ((2, 1), (2, 2), (3, 1), (3, 2)):  # (row 2.5, col 1.5)
        expected[4, r * 5 + c] = 0.25
    torch.testing.assert_close(dense, expected)


def test_fly_retina_reads_a_linear_ramp_exactly():
    data = fly_visual_system(3)
    retina = hex_retina(data, (28, 28))
    rows = torch.arange(28.0).view(28, 1).expand(28, 28)
    image = (rows / 27.0).unsqueeze(0)  # intensity = row / 27: bilinear is exact on it
    drive = retina(image)[0]
    inputs = data.input_mask
    assert bool((drive[~inputs] == 0).all())
    # photoreceptors of one column read the same value; higher columns (larger y) are darker
    uv = data.uv[inputs]
    col_id = (uv[:, 0] + 10) * 100 + (uv[:, 1] + 10)
    values = drive[inputs]
    for c in col_id.unique():
        v = values[col_id == c]
        torch.testing.assert_close(v, v[:1].expand_as(v))
    y = data.pos[inputs, 1]
    order = torch.argsort(y)
    assert bool((values[order][1:] <= values[order][:-1] + 1e-6).all())
    assert 0.0 < float(values.min()) < float(values.max()) < 1.0


def test_random_pixels_and_projection_errors():
    data = Data(num_nodes=50)
    proj = random_pixels(data, 16, seed=3)
    dense = proj.dense()
    assert dense.shape == (50, 16)
    assert torch.equal(dense.sum(0), torch.ones(16))  # each pixel drives exactly one neuron
    assert torch.equal(random_pixels(data, 16, seed=3).index, proj.index)
    x = torch.rand(2, 4, 4)
    torch.testing.assert_close(proj(x), x.flatten(1) @ dense.t())
    with pytest.raises(ValueError, match="outside"):
        SparseProjection(torch.tensor([[60], [0]]), torch.ones(1), 50, 16)
    with pytest.raises(ValueError, match="NaN"):
        SparseProjection(torch.tensor([[1], [0]]), torch.tensor([float("nan")]), 50, 16)
    with pytest.raises(ValueError, match="features"):
        proj(torch.rand(2, 15))


# -- readouts ----------------------------------------------------------------------------------
def test_cell_type_norm_per_sample_and_group():
    a = torch.tensor([[[1.0], [3.0], [10.0], [10.0]]])  # B=1, M=4, R=1
    group = torch.tensor([0, 0, 1, 1])
    out = CellTypeNorm(eps=1e-12)(a, group, 2)
    torch.testing.assert_close(out[0, :2, 0], torch.tensor([-1.0, 1.0]))
    assert bool((out[0, 2:] == 0).all())  # no spatial variation: nothing left


@pytest.mark.parametrize("aggr", ["sum", "mean"])
def test_pooled_readout_equals_manual_pooling(aggr):
    torch.manual_seed(0)
    b, r, n = 3, 2, 12
    states = torch.randn(b, r, n, dtype=torch.float64)
    out_mask = torch.tensor([False, True] * 6)
    cell_type = torch.arange(n) % 3
    pos = torch.randn(n, 2, dtype=torch.float64)
    ro = PooledReadout(r, 4, 3, hidden=5, aggr=aggr).double()
    idx = torch.nonzero(out_mask).flatten()
    h = ro.encode(states[:, :, idx].transpose(1, 2), cell_type[idx], pos[idx])  # [B, M, H]
    pooled = torch.stack([sum(h[bb, m] for m in range(len(idx))) for bb in range(b)])
    if aggr == "mean":
        pooled = pooled / len(idx)
    torch.testing.assert_close(ro(states, out_mask, cell_type, pos), ro.head(pooled))


@pytest.mark.parametrize("aggr", ["sum", "mean"])
@pytest.mark.parametrize("keep_group_mean", [False, True])
def test_contracted_pool_has_the_gradients_of_pyg_aggregation(aggr, keep_group_mean):
    """The single-graph sum/mean pool is computed by contraction; its values and gradients
    (to the states and every parameter) equal encode() + the PyG aggregation module."""
    torch.manual_seed(2)
    b, r, n = 4, 3, 20
    states = torch.randn(b, r, n, dtype=torch.float64, requires_grad=True)
    out_mask = torch.rand(n) < 0.8
    cell_type = torch.arange(n) % 4
    pos = torch.randn(n, 2, dtype=torch.float64)
    ro = PooledReadout(r, 3, 4, hidden=6, aggr=aggr, keep_group_mean=keep_group_mean).double()
    weights = torch.randn(b, 3, dtype=torch.float64)

    def generic():
        idx = torch.nonzero(out_mask).flatten()
        h = ro.encode(states[:, :, idx].transpose(1, 2), cell_type[idx], pos[idx])
        return ro.head(ro.aggr(h, index=torch.zeros_like(idx), dim_size=1, dim=1).squeeze(1))

    def grads(fn):
        ro.zero_grad()
        states.grad = None
        out = fn()
        (out * weights).sum().backward()
        return out.detach(), [states.grad.clone()] + [p.grad.clone() for p in ro.parameters()]

    out_fast, g_fast = grads(lambda: ro(states, out_mask, cell_type, pos))
    out_ref, g_ref = grads(generic)
    torch.testing.assert_close(out_fast, out_ref)
    for got, want in zip(g_fast, g_ref):
        torch.testing.assert_close(got, want)


def test_pooled_readout_on_a_batch_of_graphs_equals_each_graph():
    torch.manual_seed(1)
    ro = PooledReadout(2, 3, 4, hidden=6, aggr="sum").double()
    graphs = []
    for n in (7, 9):
        graphs.append(Data(num_nodes=n, cell_type=torch.arange(n) % 4, pos=torch.randn(n, 2, dtype=torch.float64),
                           output_mask=torch.rand(n) < 0.7))
    batch = Batch.from_data_list(graphs)
    states = torch.randn(2, 2, batch.num_nodes, dtype=torch.float64)
    joint = ro(states, batch.output_mask, batch.cell_type, batch.pos, batch=batch.batch, num_graphs=2).view(2, 2, 3)
    # positions are scaled by the largest coordinate of the input: give each graph the same scale
    start = 0
    for g, d in enumerate(graphs):
        sl = slice(start, start + d.num_nodes)
        ref = ro(states[:, :, sl], d.output_mask, d.cell_type, d.pos * 0 + batch.pos[sl])
        if not torch.allclose(batch.pos.abs().max(), d.pos.abs().max()):
            start += d.num_nodes
            continue  # Fourier scaling differs for the graph without the largest coordinate
        torch.testing.assert_close(joint[:, g], ref)
        start += d.num_nodes


def test_linear_readout_uses_final_state():
    ro = LinearReadout(6, 3)
    s = torch.randn(2, 4, 6)
    s2 = s.clone()
    s2[:, :-1] = 0
    ro.eval()
    torch.testing.assert_close(ro(s), ro(s2))


# -- model -------------------------------------------------------------------------------------
SPEC = {"name": "fly_visual_system", "extent": 1}


def test_classifier_config_round_trip_and_state_dict(tmp_path):
    torch.manual_seed(0)
    model = ConnectomeClassifier(build_connectome(SPEC), connectome=SPEC, hidden=8, num_records=2)
    images = torch.rand(3, 28, 28)
    model.eval()
    with torch.no_grad():
        ref = model(images)
    path = tmp_path / "m.pt"
    torch.save({"config": model.to_config(), "state": model.state_dict()}, path)
    blob = torch.load(path, weights_only=False)
    clone = ConnectomeClassifier.from_config(json.loads(json.dumps(blob["config"])))
    clone.load_state_dict(blob["state"])
    clone.eval()
    with torch.no_grad():
        torch.testing.assert_close(clone(images), ref)
    assert model.last_solution.ys.shape == (3, 2, model.num_nodes)


def test_classifier_errors():
    data = build_connectome(SPEC)
    with pytest.raises(ValueError, match="unknown config"):
        ConnectomeClassifier(data, colour="blue")
    with pytest.raises(ValueError, match="connectome"):
        ConnectomeClassifier.from_config({"hidden": 8})
    with pytest.raises(ValueError, match="readout"):
        ConnectomeClassifier(data, readout="magic")


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


# -- training ----------------------------------------------------------------------------------
def _tiny(tmp_path, **kw) -> TrainConfig:
    # A fixed backend: "auto" measures again in a resumed process and may pick another
    # backend, equal only up to rounding.
    base = TrainConfig(model={"connectome": SPEC, "hidden": 8, "num_records": 2, "backend": "csr"}, dataset="synthetic",
                       train_limit=48, test_limit=16, batch_size=16, epochs=1, progress=False, out_dir=str(tmp_path))
    return replace(base, **kw)


def test_learning_rate_schedule_values():
    cos = LearningRateSchedule("cosine", total_steps=10, warmup_steps=2)
    assert [cos(k) for k in (0, 1)] == [0.5, 1.0]  # linear warm-up
    assert cos(2) == 1.0 and cos(10) == 0.0 and cos(50) == 0.0
    assert math.isclose(cos(6), 0.5)  # half-way through the decay
    assert LearningRateSchedule("constant", 5)(4) == 1.0
    with pytest.raises(ValueError, match="schedule"):
        LearningRateSchedule("linear", 5)


def test_resume_continues_exactly(tmp_path):
    # A cosine schedule: resuming must also restore where the learning rate was.
    full = train(_tiny(tmp_path / "full", epochs=2, schedule="cosine", warmup_steps=2, augment_shift=1))
    train(_tiny(tmp_path / "part", epochs=2, schedule="cosine", warmup_steps=2, augment_shift=1, stop_after_epoch=1))
    resumed = train(_tiny(tmp_path / "part", epochs=2, schedule="cosine", warmup_steps=2, augment_shift=1, resume=True))
    with open(tmp_path / "part" / "steps.csv") as fh:
        lrs = [float(row["lr"]) for row in csv.DictReader(fh)]
    sched = LearningRateSchedule("cosine", total_steps=6, warmup_steps=2)  # 48 / 16 = 3 steps per epoch
    assert lrs == pytest.approx([1e-2 * sched(k) for k in range(6)])
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed["history"] == full["history"] or [h["test_accuracy"] for h in resumed["history"]] == [
        h["test_accuracy"] for h in full["history"]
    ]
    files = sorted(p.name for p in (tmp_path / "part").iterdir())
    assert files == ["checkpoint.pt", "curves.png", "metrics.csv", "metrics.json", "steps.csv"]  # no temp files left


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"stop_after_epoch": 0}, "stop_after_epoch"), ({"augment_shift": -1}, "augment_shift"),
     ({"schedule": "linear"}, "schedule"), ({"warmup_steps": -2}, "warmup_steps")],
)
def test_bad_training_options_fail_before_training(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        train(_tiny(tmp_path, **kw))
    assert not (tmp_path / "checkpoint.pt").exists()


def test_resume_refuses_another_model(tmp_path):
    train(_tiny(tmp_path))
    other = _tiny(tmp_path, epochs=2, resume=True, model={"connectome": SPEC, "hidden": 4, "num_records": 2, "backend": "csr"})
    with pytest.raises(ValueError, match="different model"):
        train(other)


def test_training_learns_synthetic_digits(tmp_path):
    model = {"connectome": {"name": "fly_visual_system", "extent": 2}, "hidden": 16, "num_records": 2, "backend": "csr"}
    cfg = _tiny(tmp_path, model=model, train_limit=480, test_limit=100, epochs=6, batch_size=32)
    final = train(cfg)["final"]
    assert final["test_accuracy"] > 0.3  # 10 classes: chance is 0.1 (measured 0.43)


def test_ablation_runs_three_variants(tmp_path):
    rows = ablate(_tiny(tmp_path))
    assert [r["variant"] for r in rows] == ["connectome", "shuffled", "no_recurrence"]
    assert (tmp_path / "ablation.md").exists() and (tmp_path / "ablation.png").exists()


def test_cli_train_and_info(tmp_path, capsys):
    assert cli_main(["info", "--extent", "1"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["neurons"] == fly_visual_system(1).num_nodes
    code = cli_main(["train", "--extent", "1", "--dataset", "synthetic", "--train-limit", "32", "--test-limit", "16",
                     "--batch-size", "16", "--no-progress", "--out-dir", str(tmp_path)])
    assert code == 0
    assert "test accuracy" in capsys.readouterr().out
    assert (tmp_path / "curves.png").exists()
    with pytest.raises(SystemExit):
        cli_main(["train", "--gradient", "magic"])
