"""The classifier: config round trip, state dict, errors, config keys."""

from __future__ import annotations

import json

import pytest
import torch

from graphode.connectome import build_connectome
from graphode.models import DEFAULT_CONFIG, ConnectomeClassifier


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


def test_classifier_passes_keep_group_mean_and_old_configs_load():
    spec = {"name": "random", "num_nodes": 40, "num_edges": 160, "seed": 0}
    common = dict(connectome=spec, input="random", image_size=(4, 4), num_records=2, hidden=8, backend="pyg")
    model = ConnectomeClassifier.from_config({**common, "keep_group_mean": True})
    assert model.readout.keep_group_mean and model.readout.activity.in_features == 6
    cfg = model.to_config()
    assert cfg["keep_group_mean"] is True
    assert ConnectomeClassifier.from_config(cfg).to_config() == cfg

    # a config written before the key existed: the default (off) applies, with its warning
    old = {k: v for k, v in {**DEFAULT_CONFIG, **common}.items() if k != "keep_group_mean"}
    with pytest.warns(UserWarning, match="keep_group_mean"):
        model = ConnectomeClassifier.from_config(old)
    assert not model.readout.keep_group_mean and model.readout.activity.in_features == 2
    assert model.to_config()["keep_group_mean"] is False
