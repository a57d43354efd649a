"""A site's verification scans' activations, kept between the passes of federated BatchNorm pooling.

Pooling is sequential (:mod:`fedqc.strategies.calibration`): the inputs of BatchNorm layer
k depend on the pooled statistics of the layers before it, so the server sets layer k
before it asks for layer k+1 — one round trip per layer. Forwarding every scan from its
image in every pass costs one network forward per layer. Instead a site keeps, for the
scans it was asked about, the input of the first layer a pass asked for; the next pass
starts from there, so each scan goes through each block once in all. The kept
activations are what the network would compute from the images again (the same layers
on the same batches), so the moments are the same: no approximation.

A kept activation is used only for the same scans and while the layers before it hold
exactly the weights and statistics it was computed with (compared value by value); anything
else forwards from the images. It never leaves the site. One process keeps at most
:data:`KEPT_BYTES` over all the sites it serves; a site whose activations do not fit
forwards from its images.

This needs an encoder that is a sequence whose BatchNorm layers are its own children
(SFCN); other networks (MONAI's DenseNet121 and ResNet) forward from the images.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import nn

from fedqc.protocol import ScanProblem

KEPT_BYTES = 2 * 2**30  # activations one process keeps over all its sites (at 32³, half-width SFCN: 2 MB a scan)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def batchnorm_positions(encoder: nn.Module, classifier: nn.Module) -> list[int] | None:
    """The positions of the BatchNorm layers among the encoder's children, in order, when the encoder is a sequence
    holding every BatchNorm layer of encoder and classifier as a child; None otherwise."""
    if not isinstance(encoder, nn.Sequential):
        return None
    positions = [i for i, child in enumerate(encoder) if isinstance(child, BATCHNORMS)]
    every = sum(isinstance(m, BATCHNORMS) for module in (encoder, classifier) for m in module.modules())
    return positions if positions and len(positions) == every else None


def children(encoder: nn.Sequential, start: int, stop: int) -> nn.Sequential:
    """The encoder's children ``start`` to ``stop`` (excluded) as one module (a plain sequence: slicing a subclass
    would call its constructor)."""
    return nn.Sequential(*list(encoder)[start:stop])


def _values(encoder: nn.Sequential, position: int) -> list[torch.Tensor]:
    """The weights and buffers of the children before ``position``: what an activation there depends on."""
    return list(children(encoder, 0, position).state_dict().values())


@dataclass
class Kept:
    """Activations entering child ``position`` of the encoder, batch by batch (tensor, the scans in it), for
    ``subjects``; ``skipped``: the scans that could not be read; ``values``: what the children before held."""

    subjects: tuple[str, ...]
    position: int
    batches: list[tuple[torch.Tensor, list[str]]]
    skipped: list[ScanProblem]
    values: list[torch.Tensor]

    def __post_init__(self) -> None:
        self.nbytes = sum(x.element_size() * x.nelement() for x, _ in self.batches)

    def usable(self, encoder: nn.Sequential, subjects: tuple[str, ...], position: int) -> bool:
        """Whether these activations serve a pass over ``subjects`` that needs the input of child ``position``."""
        return (self.subjects == subjects and self.position <= position
                and all(torch.equal(a, b) for a, b in zip(self.values, _values(encoder, self.position), strict=True)))


_kept: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # site → its Kept; gone with the site


def kept(site: object) -> Kept | None:
    return _kept.get(site)


def keep(site: object, encoder: nn.Sequential, subjects: tuple[str, ...], position: int,
         batches: list[tuple[torch.Tensor, list[str]]], skipped: list[ScanProblem]) -> None:
    """Keep ``batches`` (entering child ``position``) for ``site`` in place of what it kept, if they fit in
    :data:`KEPT_BYTES` beside the other sites' activations; otherwise keep nothing for it."""
    _kept.pop(site, None)
    entry = Kept(subjects, position, batches, skipped, [t.detach().clone() for t in _values(encoder, position)])
    if entry.nbytes + sum(k.nbytes for k in _kept.values()) <= KEPT_BYTES:
        _kept[site] = entry
