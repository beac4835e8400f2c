"""The public names renamed to American spelling in 0.2 keep working, with a FutureWarning."""

import pickle

import numpy as np
import pytest
import torch
from torch import nn

from sklearn_selflabel.augment import NeighborViews, NeighbourViews
from sklearn_selflabel.modules import MultiHeadClassifier, SelfLabelModule
from sklearn_selflabel.propagation import neighbor_link_partition, neighbour_link_partition


def _module(**kwargs) -> SelfLabelModule:
    return SelfLabelModule(
        nn.Linear(3, 4),
        MultiHeadClassifier(4, 2, 1),
        torch.zeros(3),
        torch.full((3,), 2.0),
        nn.Identity(),
        **kwargs,
    )


def test_neighbour_link_partition_warns_and_partitions_as_the_new_name():
    features = torch.from_numpy(np.random.default_rng(0).normal(size=(60, 5))).float()
    expected = neighbor_link_partition(features, 3, random_state=0)
    with pytest.warns(FutureWarning, match="neighbor_link_partition"):
        labels = neighbour_link_partition(features, 3, random_state=0)
    np.testing.assert_array_equal(labels, expected)


def test_neighbour_views_warns_and_is_the_new_class():
    neighbors = torch.tensor([[1], [0]])
    with pytest.warns(FutureWarning, match="NeighborViews"):
        views = NeighbourViews(neighbors, torch.Generator())
    assert isinstance(views, NeighborViews)
    assert torch.equal(views.neighbors, neighbors)


def test_normalise_rows_and_standardise_warn_and_act_as_the_new_names():
    with pytest.warns(FutureWarning, match="normalize_rows"):
        module = _module(normalise_rows=True)
    assert module.normalize_rows
    rows = torch.tensor([[3.0, 4.0, 0.0]])
    with pytest.warns(FutureWarning, match="standardize"):
        old = module.standardise(rows)
    torch.testing.assert_close(old, module.standardize(rows))
    torch.testing.assert_close(old, torch.tensor([[0.3, 0.4, 0.0]]))


def test_a_module_pickled_with_the_old_attribute_name_loads():
    module = _module(normalize_rows=True)
    state = module.__dict__.copy()
    state["normalise_rows"] = state.pop("normalize_rows")
    restored = SelfLabelModule.__new__(SelfLabelModule)
    restored.__setstate__(state)
    assert restored.normalize_rows
    assert pickle.loads(pickle.dumps(restored)).normalize_rows
