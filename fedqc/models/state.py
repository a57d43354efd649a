"""Networks and Adam ↔ the travelling state (:data:`fedqc.protocol.State`), copied exactly both ways."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedqc.config import ModelSpec
from fedqc.models import network
from fedqc.protocol import State


def pack(encoder: nn.Module, classifier: nn.Module, optimizer: torch.optim.Optimizer | None) -> State:
    """Copy weights, buffers and optimizer state into numpy arrays."""
    state = {f"encoder.{k}": v.detach().cpu().numpy().copy() for k, v in encoder.state_dict().items()}
    state |= {f"classifier.{k}": v.detach().cpu().numpy().copy() for k, v in classifier.state_dict().items()}
    if optimizer is not None:
        for i, s in optimizer.state_dict()["state"].items():
            for name, value in s.items():
                state[f"optim.{i}.{name}"] = torch.as_tensor(value).detach().cpu().numpy().copy()
    return state


def unpack(state: State, encoder: nn.Module, classifier: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """Load ``state`` into the modules and (when given) the optimizer."""
    for prefix, module in (("encoder.", encoder), ("classifier.", classifier)):
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
    """Freshly initialised weights (seeded), no optimizer state yet."""
    torch.manual_seed(seed)
    encoder, classifier = network(model)
    return pack(encoder, classifier, None)
