"""SynapseWeights against hand-computed weights, signs and gradients."""

import pytest
import torch
from torch_geometric.data import Data

from graphode.synapses import SynapseWeights, inverse_softplus, vocabulary_size


def _syn_inputs(e=12, seed=20):
    g = torch.Generator().manual_seed(seed)
    sign = torch.where(torch.rand(e, generator=g) < 0.4, -1.0, 1.0)
    mag = 0.05 + torch.rand(e, generator=g)
    etype = torch.randint(0, 4, (e,), generator=g)
    etype[:4] = torch.arange(4)  # every type present
    return sign, mag, etype


def _per_edge(sign, mag, **kw):
    return SynapseWeights("per_edge", sign=sign, magnitude=mag, **kw)


def test_inverse_softplus():
    y = torch.tensor([1e-6, 1e-3, 0.5, 3.0, 40.0], dtype=torch.float64)
    for beta in (1.0, 20.0):
        torch.testing.assert_close(torch.nn.functional.softplus(beta * inverse_softplus(y, beta)) / beta, y, rtol=1e-10, atol=0)


@pytest.mark.parametrize("dale", [True, False])
def test_per_edge_init(dale):
    sign, mag, _ = _syn_inputs()
    syn = _per_edge(sign, mag, gain=2.5, dale=dale)
    torch.testing.assert_close(syn(sign, mag), 2.5 * mag * sign, rtol=1e-6, atol=1e-6)
    assert [n for n, _ in syn.named_parameters()] == ["theta"]
    assert syn.theta.shape == sign.shape


def test_dale_signs_survive_large_updates():
    sign, mag, _ = _syn_inputs()
    syn = _per_edge(sign, mag, dale=True).double()
    w_of = lambda: syn(sign.double(), mag.double())  # noqa: E731
    opt = torch.optim.SGD(syn.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        # d/dw of this loss is 50·sign: a plain step w -= 0.1·50·sign would flip every sign
        (w_of() * sign).sum().mul(50.0).backward()
        opt.step()
        w = w_of().detach()
        assert torch.isfinite(w).all()
        assert torch.equal(torch.sign(w), sign.double())  # same signs, magnitudes > 0
    assert (w_of().detach().abs() < 1e-3).all()  # the magnitudes did shrink towards zero


def test_free_signs_without_dale():
    sign, mag, _ = _syn_inputs()
    syn = _per_edge(sign, mag, dale=False)
    opt = torch.optim.SGD(syn.parameters(), lr=10.0)
    (syn(sign, mag) * sign).sum().backward()
    opt.step()
    w = syn(sign, mag).detach()
    assert torch.equal(torch.sign(w), -sign)  # every sign flipped
    torch.testing.assert_close(w, sign * mag - 10.0 * sign)


def test_per_edge_weights_refuse_another_graph():
    sign, mag, _ = _syn_inputs()
    syn = _per_edge(sign, mag)
    with pytest.raises(ValueError, match="12 synapses, not 11"):
        syn(sign[:-1], mag[:-1])


def test_per_edge_type_shares_one_strength_per_type_across_graphs():
    sign = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0])
    mag = torch.tensor([0.5, 0.25, 1.0, 2.0, 0.125])
    etype = torch.tensor([0, 1, 0, 2, 1])
    syn = SynapseWeights("per_edge_type", num_edge_types=3, gain=2.0)
    assert syn.theta.shape == (3,)
    torch.testing.assert_close(syn(sign, mag, etype), torch.tensor([1.0, -0.5, 2.0, -4.0, 0.25]), rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        syn.theta.copy_(torch.log(torch.exp(torch.tensor([3.0, 0.5, 2.0])) - 1))  # softplus = 3, 0.5, 2
    torch.testing.assert_close(syn(sign, mag, etype), torch.tensor([3.0, -0.25, 6.0, -8.0, 0.125]), rtol=1e-5, atol=1e-6)
    # another graph with the same vocabulary reads the same strengths
    torch.testing.assert_close(syn(sign[:2], mag[:2], torch.tensor([2, 2])), torch.tensor([2.0, -1.0]), rtol=1e-5, atol=1e-6)
    # the gradient of one strength collects all its edges: d/dθ_0 Σ w = σ(θ_0)·(1 + 2)
    syn(sign, mag, etype).sum().backward()
    sig = torch.sigmoid(syn.theta.detach())
    expected = torch.stack([sig[0] * 2.0 * (0.5 + 1.0), sig[1] * 2.0 * (-0.25 + 0.125), sig[2] * 2.0 * (-2.0)])
    torch.testing.assert_close(syn.theta.grad, expected, rtol=1e-5, atol=1e-6)


def test_fixed_has_no_parameters():
    sign, mag, _ = _syn_inputs()
    syn = SynapseWeights("fixed", gain=0.5)
    assert list(syn.parameters()) == []
    torch.testing.assert_close(syn(sign, mag), 0.5 * sign * mag)
    assert not syn(sign, mag).requires_grad


def test_from_data_sizes_the_vocabulary_and_falls_back_to_syn_count():
    sign, mag, etype = _syn_inputs()
    data = Data(sign=sign, syn_count=mag, edge_type=etype)
    torch.testing.assert_close(SynapseWeights.from_data(data, mode="fixed").of(data), sign * mag)
    data = Data(sign=sign, syn_weight=mag / 2, syn_count=mag, edge_type=etype)
    syn = SynapseWeights.from_data(data, mode="per_edge_type")
    assert syn.num_edge_types == 4
    torch.testing.assert_close(syn.of(data), sign * mag / 2, rtol=1e-6, atol=1e-6)
    data.edge_type_names = [f"t{i}" for i in range(6)]  # names of types no edge realises count too
    assert vocabulary_size(data, "edge_type") == 6


def test_synapse_bad_inputs():
    sign, mag, etype = _syn_inputs()
    with pytest.raises(ValueError, match=r"\[E\]"):
        _per_edge(sign, mag[:-1])
    with pytest.raises(ValueError, match=">= 0"):
        _per_edge(sign, -mag)
    with pytest.raises(ValueError, match="finite"):
        _per_edge(sign, torch.where(torch.arange(len(mag)) == 0, float("nan"), mag))
    with pytest.raises(ValueError, match="sign"):
        _per_edge(sign * 0.5, mag)
    with pytest.raises(ValueError, match="unknown weight mode"):
        SynapseWeights("per_neuron")
    with pytest.raises(ValueError, match="dale=False"):
        SynapseWeights("per_edge_type", num_edge_types=4, dale=False)
    with pytest.raises(ValueError, match="num_edge_types"):
        SynapseWeights("per_edge_type")
    with pytest.raises(ValueError, match="from_data"):
        SynapseWeights("per_edge")
    with pytest.raises(ValueError, match="edge_type"):
        SynapseWeights("per_edge_type", num_edge_types=4)(sign, mag)
    for gain in (0.0, -1.0, float("nan")):  # a negative gain would flip every sign
        with pytest.raises(ValueError, match="gain"):
            SynapseWeights("fixed", gain=gain)
