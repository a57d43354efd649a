"""Unlearning a bias at the site: the per-batch updates of ``model.unlearn``.

Both schemes train a bias head *h* on the encoder's features *f(x)* to predict a bias *b*
the site knows (a planted marker, its scanner, itself) and push the encoder to leave *h*
nothing to predict from:

- ``lntl`` — Kim et al., *Learning Not to Learn* (CVPR 2019). (1) Encoder and classifier
  take the task loss plus ``unlearn_weight`` (λ) times the negative entropy of *h(f(x))*;
  *h* does not move. (2) *h* learns *b* from *f(x)* through a gradient-reversal layer: one
  backward pass moves *h* toward predicting *b* and the encoder away from it, scaled by
  ``bias_weight`` (μ).
- ``confusion`` — HarmonyTM (the reference group's scanner unlearning in a travelling
  model, after Dinsdale et al.). (1) Encoder and classifier take the task loss. (2) *h*
  alone learns *b* (loss × ``bias_weight``, α) from the features of (1), detached. (3) The
  encoder alone takes ``unlearn_weight`` (β) times the confusion loss: the cross-entropy of
  *h(f(x))* against the uniform distribution, which pushes *h* toward chance. Not gradient
  reversal: the encoder never follows *h*'s loss reversed, only toward *h*'s uncertainty.

One Adam holds encoder, classifier and head. Adam is per parameter and skips a parameter
without a gradient, so stepping it with only some modules' gradients set is exactly the
separate optimizers both references use — and one optimizer state travels.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch import nn
from torch.nn import functional as F

TaskLoss = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # features → (reported loss, loss to minimise)


class GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``-scale``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def reverse_gradient(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    return GradientReversal.apply(x, scale)


def negative_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of Σ p log p of the softmax: lowest (−log K) when the head is at chance."""
    log_p = F.log_softmax(logits, dim=1)
    return (log_p.exp() * log_p).sum(1).mean()


def confusion_loss(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the softmax against the uniform distribution: −mean of log p over batch and classes."""
    return -F.log_softmax(logits, dim=1).mean()


def _hold(*modules: nn.Module) -> None:
    """Keep ``modules`` out of the next optimizer step (Adam skips a parameter without a gradient)."""
    for module in modules:
        for p in module.parameters():
            p.grad = None


def unlearning_step(kind: str, *, encoder: nn.Module, classifier: nn.Module, head: nn.Module,
                    optimizer: torch.optim.Optimizer, x: torch.Tensor, bias: torch.Tensor, task: TaskLoss,
                    bias_weight: float, unlearn_weight: float,
                    autocast: Callable[[], AbstractContextManager]) -> torch.Tensor:
    """One batch of ``kind`` (``lntl`` or ``confusion``); returns the task loss of its first update.

    ``task`` maps the encoder's features to the task loss (reported, and with any extra
    term the site adds, minimised); ``bias`` holds each scan's bias class.
    """
    optimizer.zero_grad(set_to_none=True)
    with autocast():
        features = encoder(x)
    loss, total = task(features)
    if kind == "lntl":
        with autocast():
            bias_logits = head(features).float()
        total = total + unlearn_weight * negative_entropy(bias_logits)
    total.backward()
    _hold(head)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if kind == "lntl":
        with autocast():
            bias_logits = head(reverse_gradient(encoder(x), bias_weight)).float()
        F.cross_entropy(bias_logits, bias).backward()
        optimizer.step()
        return loss
    with autocast():
        bias_logits = head(features.detach()).float()
    (bias_weight * F.cross_entropy(bias_logits, bias)).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    with autocast():
        bias_logits = head(encoder(x)).float()
    (unlearn_weight * confusion_loss(bias_logits)).backward()
    _hold(head)
    optimizer.step()
    return loss
