"""Model + optimizer state as one flat ``{key: numpy array}`` dict — what travels.

Keys are ``encoder.<param>``, ``classifier.<param>`` and ``optim.<i>.<field>`` (Adam's
``step``, ``exp_avg``, ``exp_avg_sq`` for parameter *i*), so the optimizer state travels
with the model and a transport only ever carries named arrays.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

State = dict[str, np.ndarray]
PARTS = ("encoder", "classifier", "optim")


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
    """Load ``state`` into the modules and (when given) the optimizer, exactly."""
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


def weights(state: State) -> State:
    """The model's arrays only (what scoring needs), without the optimizer's."""
    return {k: v for k, v in state.items() if not k.startswith("optim.")}


def split_parts(state: State) -> dict[str, dict[str, torch.Tensor]]:
    """``{"encoder": ..., "classifier": ..., "optim": ...}`` of tensors, for checkpoints."""
    parts: dict[str, dict[str, torch.Tensor]] = {p: {} for p in PARTS}
    for key, value in state.items():
        part, rest = key.split(".", 1)
        parts[part][rest] = torch.from_numpy(np.array(value))
    return parts


def join_parts(parts: dict[str, dict[str, torch.Tensor]]) -> State:
    return {f"{p}.{k}": v.numpy() for p in PARTS for k, v in parts.get(p, {}).items()}


def same(a: State, b: State) -> bool:
    """Bit-identical comparison of two states."""
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def check_update(sent: State, reply: State) -> str | None:
    """Why a site's reply cannot be adopted, or None.

    The reply must carry exactly the keys that were sent (plus the optimizer state when
    none was sent yet), each with the sent shape and dtype, and only finite values.
    """
    missing = sorted(set(sent) - set(reply))
    extra = sorted(set(reply) - set(sent))
    if missing:
        return f"missing arrays: {missing[:3]}"
    if extra and (any(k.startswith("optim.") for k in sent) or not all(k.startswith("optim.") for k in extra)):
        return f"unexpected arrays: {extra[:3]}"
    for key, value in reply.items():
        ref = sent.get(key)
        if ref is not None and (value.shape != ref.shape or value.dtype != ref.dtype):
            return f"{key}: shape/dtype {value.shape}/{value.dtype}, expected {ref.shape}/{ref.dtype}"
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            return f"{key}: non-finite values"
    return None
