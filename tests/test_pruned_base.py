"""The sweep's saved pruning: only the Linear weights pruning changed are saved, and
PrunedWeightsModifier puts exactly those back, refusing a file that does not fit the model."""

from __future__ import annotations

import pytest
import torch
from llmcompressor.core import State
from safetensors.torch import load_file, save_file

from hsr_plugin.pruned_base import PRUNED_WEIGHTS_FILE, PrunedWeightsModifier, save_pruned_weights


def _pair():
    torch.manual_seed(0)
    dense = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    pruned = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    pruned.load_state_dict(dense.state_dict())
    with torch.no_grad():
        pruned[2].weight[0, :2] = 0.0
    return dense, pruned


def test_only_changed_linear_weights_are_saved(tmp_path):
    dense, pruned = _pair()
    path = save_pruned_weights(pruned, tmp_path / "sweep" / "base", reference=dense)
    assert path == tmp_path / "sweep" / "base" / PRUNED_WEIGHTS_FILE
    saved = load_file(str(path))
    assert list(saved) == ["2"] and torch.equal(saved["2"], pruned[2].weight.detach())
    with pytest.raises(ValueError) as err:
        save_pruned_weights(dense, tmp_path / "none", reference=dense)
    assert str(err.value) == "the pruning stage changed no Linear weight: nothing to sweep over"
    assert not (tmp_path / "none").exists()


def test_the_modifier_applies_the_saved_weights(tmp_path):
    dense, pruned = _pair()
    path = save_pruned_weights(pruned, tmp_path, reference=dense)
    target = _pair()[0]
    modifier = PrunedWeightsModifier(path=str(path))
    state = State(model=target)
    assert modifier.on_initialize(state) is True
    modifier.on_calibration_end(state, None)
    assert torch.equal(target[2].weight, pruned[2].weight) and torch.equal(
        target[0].weight, dense[0].weight
    )
    assert modifier.on_finalize(state) is True


def test_a_file_that_does_not_fit_the_model_is_refused(tmp_path):
    dense, _ = _pair()
    save_file({"9": torch.zeros(2, 3)}, str(tmp_path / "foreign.safetensors"))
    foreign = PrunedWeightsModifier(path=str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ValueError) as err:
        foreign.on_initialize(State(model=dense))
    assert (
        str(err.value)
        == f"{tmp_path / 'foreign.safetensors'}: 9 is not a Linear layer of this model"
    )
    save_file({"2": torch.zeros(3, 3)}, str(tmp_path / "shape.safetensors"))
    shaped = PrunedWeightsModifier(path=str(tmp_path / "shape.safetensors"))
    with pytest.raises(ValueError) as err:
        shaped.on_calibration_end(State(model=dense), None)
    assert str(err.value) == f"{tmp_path / 'shape.safetensors'}: 2 has shape (3, 3)"
