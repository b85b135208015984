"""The batched grid fit: every (image, beta) at one layer in one pass equals fitting each beta alone."""

from __future__ import annotations

import pytest
import torch

from infoflow.iba.per_sample import PerSampleIBA
from infoflow.models import get_model


def _fitted(layer: str = "conv3", **kwargs) -> tuple[PerSampleIBA, torch.Tensor]:
    torch.manual_seed(0)
    model = get_model("shapesnet")
    images = torch.randn(32, *model.input_size)
    iba = PerSampleIBA(model, layer, seed=3, steps=4, copies=3, **kwargs)
    iba.fit([{"image": images[i : i + 16]} for i in range(0, 32, 16)])
    return iba, images[:3]


@pytest.mark.parametrize("batch_size", [2, 16])
def test_grid_equals_one_fit_per_beta(batch_size: int) -> None:
    iba, x = _fitted(batch_size=batch_size)
    target = torch.tensor([0, 2, 1])
    betas = [0.1, 10.0, 1000.0]
    grid = iba.explain_grid(x, target, betas)
    assert grid.heatmap.shape == (3, 3, 64, 64) and grid.prob_with.shape == (3, 3)
    for b, beta in enumerate(betas):
        iba.beta = beta
        single = iba.explain(x, target)  # image i draws seed 3 + i, as element (i, b) of the grid
        scale = float(single.heatmap.max())
        assert torch.allclose(grid.heatmap[:, b], single.heatmap, atol=1e-4 * scale), beta
        assert torch.allclose(grid.prob_with[:, b], single.prob_with, atol=1e-5)
        assert torch.allclose(grid.prob_without[:, b], single.prob_without, atol=1e-6)
    # the betas really differ: more penalty, less information
    totals = grid.total_bits
    assert (totals[:, 0] > totals[:, 2]).all()


def test_grid_without_betas_is_an_error() -> None:
    iba, x = _fitted()
    with pytest.raises(ValueError, match="beta"):
        iba.explain_grid(x, 0, [])
