"""The networks the evaluations put on a backbone: the linear head (linear probe, fine-tuning),
backbone + head (fine-tuning) and the features of DINO's linear protocol. A torch module, which
the eval scripts import inside their functions, after parsing."""

from __future__ import annotations

import torch
from torch import nn


def new_head(dim: int, num_classes: int) -> nn.Linear:
    """nn.Linear with weights N(0, 0.01) and bias 0, as DINO's linear classifier."""
    head = nn.Linear(dim, num_classes)
    nn.init.normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    return head


class Classifier(nn.Module):
    """Backbone + linear head on its features."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = new_head(backbone.embed_dim, num_classes)

    def forward(self, x):
        return self.head(self.backbone(x))


class DINOLinearFeatures(nn.Module):
    """eval_linear.py's features of a frozen backbone: a ViT's CLS tokens of the last
    `n_last_blocks` blocks concatenated, with `avgpool` the last block's mean patch token beside it
    (interleaved by the official `cat(dim=-1).reshape`); a ResNet's pooled features."""

    def __init__(self, backbone: nn.Module, n_last_blocks: int = 4, avgpool: bool = False):
        super().__init__()
        self.backbone, self.n_last_blocks, self.avgpool = backbone, n_last_blocks, avgpool
        self.vit = hasattr(backbone, "get_intermediate_layers")
        self.embed_dim = backbone.embed_dim * ((n_last_blocks + avgpool) if self.vit else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.vit:
            return self.backbone(x)
        tokens = self.backbone.get_intermediate_layers(x, self.n_last_blocks)
        out = torch.cat([t[:, 0] for t in tokens], dim=-1)
        if self.avgpool:
            out = torch.cat((out.unsqueeze(-1), tokens[-1][:, 1:].mean(1).unsqueeze(-1)), dim=-1)
            out = out.reshape(out.shape[0], -1)
        return out
