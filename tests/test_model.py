"""SFCN depth adapts to the input; a batch of one trains at every supported size."""

from __future__ import annotations

import pytest
import torch

from fedqc.models import build_model
from fedqc.models.sfcn import n_pool_blocks


@pytest.mark.parametrize("name, shape", [("sfcn", s) for s in [(8, 8, 8), (16, 16, 16), (32, 32, 32), (48, 40, 48),
                                                                 (64, 64, 64), (16, 16), (64, 48)]]
                         + [("densenet121", (64, 64)), ("resnet18", (32, 32))])
def test_batch_of_one_trains(name, shape):
    """3D and 2D (the input shape's length): a batch of one scan trains, with layers of that dimension."""
    torch.manual_seed(0)
    encoder, classifier = build_model(name, input_shape=shape, width=0.25)
    conv = torch.nn.Conv2d if len(shape) == 2 else torch.nn.Conv3d
    assert all(isinstance(m, conv) for m in encoder.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)))
    opt = torch.optim.Adam(list(encoder.parameters()) + list(classifier.parameters()))
    encoder.train(), classifier.train()
    before = [p.clone() for p in encoder.parameters()]
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        classifier(encoder(torch.randn(1, 1, *shape))).squeeze(1), torch.ones(1))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, encoder.parameters()))


def test_pooling_depth():
    assert n_pool_blocks((32, 32, 32)) == 4  # a fifth pool would leave 1³
    assert n_pool_blocks((160, 192, 160)) == 5
    assert n_pool_blocks((8, 8, 8)) == 2


def test_densenet_by_name_and_size_limit():
    with pytest.raises(ValueError, match="at least 64"):
        build_model("densenet121", input_shape=(32, 32, 32))
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet", input_shape=(32, 32, 32))
