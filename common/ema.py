"""Exponential moving average of a whole network: the teacher of DINO, the target of BYOL."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target ← m·target + (1 − m)·online, for parameters and floating-point buffers (e.g. the
    BatchNorm running statistics); integer buffers such as `num_batches_tracked` are copied."""
    t_params = list(target.parameters())
    o_params = list(online.parameters())
    if len(t_params) != len(o_params):
        raise ValueError("EMA target and online networks have different parameters")
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, [p.detach() for p in o_params], alpha=1 - momentum)
    for tb, ob in zip(target.buffers(), online.buffers()):
        if tb.dtype.is_floating_point:
            tb.mul_(momentum).add_(ob.detach(), alpha=1 - momentum)
        else:
            tb.copy_(ob)


@torch.no_grad()
def copy_params_and_buffers(target: nn.Module, online: nn.Module) -> None:
    target.load_state_dict(online.state_dict())
