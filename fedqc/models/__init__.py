"""Networks by name: ``sfcn`` (default, the reference) or MONAI's ``densenet121``.

Every network is an (encoder, classifier) pair, saved separately as the reference does;
the classifier maps encoder features to a single logit.
"""

from __future__ import annotations

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
