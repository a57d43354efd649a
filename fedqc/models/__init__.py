"""Networks by name: ``sfcn`` (default, the reference), MONAI's ``densenet121`` and ``resnet18``.

Every network is an (encoder, classifier) pair, saved separately as the reference does;
the classifier maps encoder features to one logit per target (``label``, then
``model.targets``). The input shape's length (2 or 3)
chooses 2D or 3D layers (MONAI's ``spatial_dims``); ``norm`` the normalisation layers
(MONAI's ``norm`` argument for DenseNet121: GroupNorm with 8 groups, InstanceNorm with a
learned scale and shift; MONAI 1.6's ResNet passes it to its first layer only, so the
config allows resnet18 with BatchNorm alone).
"""

from __future__ import annotations

import torch
from torch import nn

from fedqc.config.schema import MODEL_MIN_SIDE, MODELS, ModelSpec
from fedqc.errors import UserError
from fedqc.models.sfcn import SFCNEncoder

MONAI_NORMS = {"batch": "batch", "group": ("group", {"num_groups": 8}), "instance": ("instance", {"affine": True})}


def build_model(name: str = "sfcn", *, input_shape: tuple[int, ...], width: float = 1.0,
                norm: str = "batch", outputs: int = 1) -> tuple[nn.Module, nn.Module]:
    """Return ``(encoder, classifier)`` for ``name`` on (1, *input_shape) inputs (2D or 3D), ``outputs`` logits."""
    dims = len(input_shape)
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    if min(input_shape) < MODEL_MIN_SIDE[name]:
        raise UserError(f"{name} needs inputs of at least {MODEL_MIN_SIDE[name]} voxels a side "
                        f"(its last BatchNorm sees 1 voxel below that); got {tuple(input_shape)}")
    if name == "sfcn":
        encoder = SFCNEncoder(tuple(input_shape), width=width, norm=norm)
        return encoder, nn.Linear(encoder.out_features, outputs)
    n_features = max(8, round(64 * width))
    if name == "densenet121":
        from monai.networks.nets import DenseNet121

        encoder = DenseNet121(spatial_dims=dims, in_channels=1, out_channels=n_features, norm=MONAI_NORMS[norm])
    else:
        from monai.networks.nets import resnet18

        encoder = resnet18(spatial_dims=dims, n_input_channels=1, num_classes=n_features, norm=MONAI_NORMS[norm])
    return encoder, nn.Linear(n_features, outputs)


def network(spec: ModelSpec) -> tuple[nn.Module, nn.Module]:
    """``(encoder, classifier)`` as a config's ``model:`` describes them."""
    return build_model(spec.name, input_shape=tuple(spec.input_shape), width=spec.width, norm=spec.norm,
                       outputs=1 + len(spec.targets))


MARKER_CLASSES = ("0", "1")


def bias_classes(spec: ModelSpec) -> tuple[str, ...]:
    """The bias head's classes in output order: the config's, or absent and present for a planted marker."""
    if spec.bias_classes:
        return tuple(spec.bias_classes)
    if spec.bias_target == "marker":
        return MARKER_CLASSES
    raise UserError(f"model.bias_classes: the {spec.bias_target} classes were not resolved (list them in the config)")


def bias_head(spec: ModelSpec, classifier: nn.Module) -> nn.Module | None:
    """The bias head of ``model.unlearn`` (None without one): a linear layer from the classifier's input features
    to one logit per bias class, so that it sees exactly what the classifier sees."""
    if spec.unlearn == "none":
        return None
    return nn.Linear(classifier.in_features, len(bias_classes(spec)))


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
