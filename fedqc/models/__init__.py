"""Networks by name: ``sfcn`` (default, the reference) or MONAI's ``densenet121``.

Every network is an (encoder, classifier) pair, saved separately as the reference does;
the classifier maps encoder features to a single logit.
"""

from __future__ import annotations

import torch
from torch import nn

from fedqc.errors import UserError
from fedqc.models.sfcn import SFCNEncoder

MODELS = ("sfcn", "densenet121")
DENSENET_MIN_SIDE = 64


def build_model(name: str = "sfcn", *, input_shape: tuple[int, int, int], width: float = 1.0) -> tuple[nn.Module, nn.Module]:
    """Return ``(encoder, classifier)`` for ``name``."""
    if name == "sfcn":
        encoder = SFCNEncoder(tuple(input_shape), width=width)
        n_features = encoder.out_features
    elif name == "densenet121":
        if min(input_shape) < DENSENET_MIN_SIDE:
            raise UserError(f"densenet121 needs inputs of at least {DENSENET_MIN_SIDE} voxels a side "
                             f"(its last BatchNorm sees 1 voxel below that); got {tuple(input_shape)}")
        from monai.networks.nets import DenseNet121

        n_features = max(8, round(64 * width))
        encoder = DenseNet121(spatial_dims=3, in_channels=1, out_channels=n_features)
    else:
        raise UserError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    return encoder, nn.Linear(n_features, 1)


def encode(encoder: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """``(features, taps, blocks)``: the encoder's output, and the spatial means of every ReLU's output along the
    way, concatenated (``blocks`` holds each one's width; the output alone for encoders that are not a sequence).

    Early taps see texture and contrast that the classifier's features have learned to
    ignore: what a feature-distance check of the image needs.
    """
    if not isinstance(encoder, nn.Sequential):
        features = encoder(x)
        return features, features, [features.shape[1]]
    taps = []
    for layer in encoder:
        x = layer(x)
        if isinstance(layer, nn.ReLU):
            taps.append(x.flatten(2).mean(2))
    return x, torch.cat(taps, dim=1), [t.shape[1] for t in taps]
