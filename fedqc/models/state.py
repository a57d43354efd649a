"""Networks and Adam ↔ the travelling state (:data:`fedqc.protocol.State`), copied exactly both ways.

A model with an unlearning head (``model.unlearn``) carries it as ``bias.<param>``; its
parameters come last in the optimizer, so its Adam state travels as ``optim.<i>`` too.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedqc.config import ModelSpec
from fedqc.models import bias_head, network
from fedqc.protocol import State


def _modules(encoder: nn.Module, classifier: nn.Module, head: nn.Module | None) -> dict[str, nn.Module]:
    return {"encoder.": encoder, "classifier.": classifier} | ({"bias.": head} if head is not None else {})


def pack(encoder: nn.Module, classifier: nn.Module, optimizer: torch.optim.Optimizer | None,
         head: nn.Module | None = None) -> State:
    """Copy weights, buffers and optimizer state into numpy arrays."""
    state = {f"{prefix}{k}": v.detach().cpu().numpy().copy()
             for prefix, module in _modules(encoder, classifier, head).items() for k, v in module.state_dict().items()}
    if optimizer is not None:
        for i, s in optimizer.state_dict()["state"].items():
            for name, value in s.items():
                state[f"optim.{i}.{name}"] = torch.as_tensor(value).detach().cpu().numpy().copy()
    return state


def unpack(state: State, encoder: nn.Module, classifier: nn.Module, optimizer: torch.optim.Optimizer | None,
           head: nn.Module | None = None) -> None:
    """Load ``state`` into the modules and (when given) the optimizer; a state with a bias head and a model
    without one (or the reverse) do not fit: torch's ``load_state_dict`` says which keys are missing."""
    if head is None and any(k.startswith("bias.") for k in state):
        raise ValueError("the travelling state has a bias head (bias.*) and this model has none: model.unlearn differs")
    for prefix, module in _modules(encoder, classifier, head).items():
        module.load_state_dict({k[len(prefix):]: torch.from_numpy(np.array(v))
                                for k, v in state.items() if k.startswith(prefix)})
    if optimizer is None:
        return
    opt_state: dict[int, dict] = {}
    for key, value in state.items():
        if key.startswith("optim."):
            _, i, name = key.split(".", 2)
            opt_state.setdefault(int(i), {})[name] = torch.from_numpy(np.array(value))
    sd = optimizer.state_dict()
    optimizer.load_state_dict({"state": opt_state, "param_groups": sd["param_groups"]})


def initial_state(model: ModelSpec, seed: int) -> State:
    """Freshly initialised weights (seeded), no optimizer state yet; a bias head is drawn after the network, so
    encoder and classifier start the same with and without one."""
    torch.manual_seed(seed)
    encoder, classifier = network(model)
    return pack(encoder, classifier, None, bias_head(model, classifier))
