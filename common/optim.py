"""Optimisers and parameter groups shared by the methods."""

from __future__ import annotations

import torch
from torch import nn

from common.options import OPTIMIZERS


def param_groups(module: nn.Module) -> list[dict]:
    """Trainable parameters in two groups: weights with weight decay, and biases and
    normalisation parameters (every 1-D tensor) without it — and without LARS adaptation, as in
    the BYOL / Barlow Twins official code."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    groups = [{"params": decay}]
    if no_decay:
        groups.append({"params": no_decay, "apply_wd": False, "lars_exclude": True})
    return groups


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017) as in facebookresearch/barlowtwins:
    for each tensor, the update is scaled by the trust ratio η·‖w‖/‖g + wd·w‖. Groups with
    `lars_exclude=True` (biases and norms) get neither weight decay nor adaptation."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.9, eta: float = 0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta,
                                      lars_exclude=False))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                dp = p.grad
                if not g["lars_exclude"]:
                    dp = dp.add(p, alpha=g["weight_decay"])
                    p_norm, d_norm = torch.norm(p), torch.norm(dp)
                    one = torch.ones_like(p_norm)
                    q = torch.where(p_norm > 0, torch.where(d_norm > 0, g["eta"] * p_norm / d_norm, one), one)
                    dp = dp.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])
        return loss


def build_optimizer(groups: list[dict], args) -> torch.optim.Optimizer:
    """The learning rate and weight decay set here are overwritten every step by the engine's
    schedules; a group's `lr_scale` and `apply_wd` are kept for that."""
    for g in groups:
        g.setdefault("lr_scale", 1.0)
        g.setdefault("apply_wd", True)
        g["weight_decay"] = args.weight_decay if g["apply_wd"] else 0.0
    betas = (0.9, getattr(args, "adam_beta2", 0.999))  # a method may expose β2 (colorization: paper 0.99)
    if args.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=args.lr, betas=betas)
    if args.optimizer == "adam":
        return torch.optim.Adam(groups, lr=args.lr, betas=betas)
    if args.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum)
    if args.optimizer == "lars":
        return LARS(groups, lr=args.lr, momentum=args.momentum, eta=args.lars_eta)
    raise SystemExit(f"error: unknown --optimizer {args.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
