"""SFCN encoder (Peng et al. 2021, as used by the reference method) and its classifier, in 3D or 2D.

Encoder: blocks of conv3×3(×3) + BatchNorm + max-pool + ReLU with 32-64-128-256-256
channels (× ``width``), then a 1×1(×1) conv to 64 (× ``width``) + BatchNorm + ReLU,
average pool, dropout 0.2, flatten. ``norm`` swaps BatchNorm for GroupNorm (groups of
up to 8 channels) or InstanceNorm (with a learned scale and shift), which normalise
each scan by itself: no running statistics to follow the last site trained. The input shape's length (2 or 3) chooses the
spatial dimensions: the 2D variant is the same network with 2D layers, for slices and
photographs. The number of pooling blocks adapts to the input: at most five, and never
so many that the last map is smaller than 2 voxels on a side — at 32³ a fifth pool
leaves 1³, where BatchNorm cannot train a batch of one scan (and QC trains single
scans). Classifier: one linear layer to a single logit.
"""

from __future__ import annotations

import math

from torch import nn

CHANNELS = (32, 64, 128, 256, 256)
LAYERS = {  # spatial dimensions → (convolution, batch norm, instance norm, max pool, average pool)
    2: (nn.Conv2d, nn.BatchNorm2d, nn.InstanceNorm2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d),
    3: (nn.Conv3d, nn.BatchNorm3d, nn.InstanceNorm3d, nn.MaxPool3d, nn.AdaptiveAvgPool3d),
}
GROUPS = 8  # GroupNorm: at most this many groups (the largest divisor of the channels)


def norm_layer(norm: str, dims: int, channels: int) -> nn.Module:
    """The normalisation ``norm`` (``batch``, ``group`` or ``instance``) over ``channels`` in ``dims`` dimensions."""
    if norm == "group":
        return nn.GroupNorm(math.gcd(GROUPS, channels), channels)
    if norm == "instance":
        return LAYERS[dims][2](channels, affine=True)
    return LAYERS[dims][1](channels)


def n_pool_blocks(input_shape: tuple[int, ...]) -> int:
    """Pooling blocks such that the smallest side stays >= 2 voxels (max 5)."""
    return max(1, min(len(CHANNELS), int(math.log2(min(input_shape))) - 1))


class SFCNEncoder(nn.Sequential):
    """SFCN feature extractor for a (1, *input_shape) input; ``out_features`` is the size of its flat output."""

    def __init__(self, input_shape: tuple[int, ...], width: float = 1.0, dropout: float = 0.2, norm: str = "batch"):
        dims = len(input_shape)
        conv, _, _, pool, avg = LAYERS[dims]
        chans = [max(1, round(c * width)) for c in CHANNELS[: n_pool_blocks(input_shape)]]
        layers: list[nn.Module] = []
        c_in = 1
        for c in chans:
            layers += [conv(c_in, c, 3, padding=1), norm_layer(norm, dims, c), pool(2), nn.ReLU(inplace=True)]
            c_in = c
        self.out_features = max(1, round(64 * width))
        layers += [conv(c_in, self.out_features, 1), norm_layer(norm, dims, self.out_features), nn.ReLU(inplace=True),
                   avg(1), nn.Dropout(dropout), nn.Flatten()]
        super().__init__(*layers)
