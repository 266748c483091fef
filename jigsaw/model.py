"""The context-free network of Noroozi & Favaro 2016 (Sec. 3, Fig. 3).

Each tile goes through the same backbone on its own (shared weights: the tiles of all puzzles
form one batch of B·T images), so the backbone cannot see the other tiles and must describe each
tile by its content. A shared per-tile layer (the paper's fc6, on the flattened last feature map
as AlexNet's fc6 on conv5, before the backbone's pooling) follows; the T tile vectors are
concatenated in puzzle order and an MLP (fc7, fc8) classifies which of the N permutations
shuffled them. Only the backbone is kept for evaluation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from colorization.model import spatial_features
from common.backbones import build_backbone
from common.engine import SSLMethod
from jigsaw.data import assemble

FIGURE_PUZZLES = 4


class ContextFreeHead(nn.Module):
    """fc6 shared by the tiles (on the flattened feature map, so it sees where things are inside the
    tile), concatenation in puzzle order, fc7, fc8 -> permutation logits; ReLU and dropout 0.5
    after fc6 and fc7, as in the paper's AlexNet-based network."""

    def __init__(self, map_dim: int, num_tiles: int, num_permutations: int, tile_dim: int = 512,
                 hidden_dim: int = 1024, dropout: float = 0.5):
        super().__init__()
        self.num_tiles = num_tiles
        self.fc6 = nn.Sequential(nn.Flatten(), nn.Linear(map_dim, tile_dim), nn.ReLU(inplace=True),
                                 nn.Dropout(dropout))
        self.fc7 = nn.Sequential(nn.Linear(num_tiles * tile_dim, hidden_dim), nn.ReLU(inplace=True),
                                 nn.Dropout(dropout))
        self.fc8 = nn.Linear(hidden_dim, num_permutations)

    def forward(self, tile_features: torch.Tensor) -> torch.Tensor:
        """(B·T)×D×h×w, tile-major within each puzzle -> B×N."""
        x = self.fc6(tile_features).reshape(-1, self.num_tiles * self.fc6[1].out_features)
        return self.fc8(self.fc7(x))


class Jigsaw(SSLMethod):
    name = "jigsaw"
    nan_hint = "lower --lr or use --clip-grad"

    def __init__(self, args, permutations: np.ndarray, tile_size: int, hamming: dict | None = None):
        super().__init__()
        self.grid = args.grid
        # Built for the evaluation image size, so the checkpoint's backbone_kwargs describe the
        # network eval runs on whole images (ResNet: the small stem for images <= 64 px, which
        # then also serves the tiles).
        self.backbone = build_backbone(args.arch, image_size=args.image_size, patch_size=args.patch_size,
                                       drop_path_rate=args.drop_path)
        self.register_buffer("permutations", torch.as_tensor(np.asarray(permutations), dtype=torch.long))
        num_permutations, num_tiles = self.permutations.shape
        self.head = ContextFreeHead(self._map_dim(tile_size), num_tiles, num_permutations, args.tile_dim,
                                    args.hidden_dim)
        self.hamming = dict(hamming or {})
        self._figure_batch = None

    @torch.no_grad()
    def _map_dim(self, tile_size: int) -> int:
        was_training = self.backbone.training
        self.backbone.eval()
        n = spatial_features(self.backbone, torch.zeros(1, 3, tile_size, tile_size)).numel()
        self.backbone.train(was_training)
        return n

    def forward(self, batch, step: int) -> dict:
        (tiles, index), _ = batch
        B, T = tiles.shape[:2]
        features = spatial_features(self.backbone, tiles.flatten(0, 1))
        logits = self.head(features)
        loss = F.cross_entropy(logits.float(), index)
        predicted = logits.detach().argmax(1)
        out = {"loss": loss, "perm_acc": (predicted == index).float().mean() * 100}
        stash = self._figure_batch
        if (stash is None) if self.training else (stash is None or stash[3]):
            # a few puzzles for the epoch figure: the first held-out batch, else the first training one
            keep = slice(0, min(FIGURE_PUZZLES, B))
            self._figure_batch = (tiles[keep].detach().float().cpu(), index[keep].cpu(), predicted[keep].cpu(),
                                  self.training)
        return out

    @property
    def eval_backbone(self) -> nn.Module:
        return self.backbone

    def on_epoch_end(self, epoch: int, run_dir: Path) -> dict:
        row = {}
        if epoch == 1:
            row.update({f"perm_{k}": v for k, v in self.hamming.items()})
        if self._figure_batch is not None:
            plot_puzzles(self._figure_batch, self.permutations.cpu(), self.grid, Path(run_dir) / "puzzles.png",
                         title=f"epoch {epoch}")
            self._figure_batch = None
        return row


def _display(tiles: torch.Tensor) -> torch.Tensor:
    """Per-tile min-max to [0, 1] (the tiles are normalised on their own)."""
    flat = tiles.flatten(1)
    lo, hi = flat.min(1).values.view(-1, 1, 1, 1), flat.max(1).values.view(-1, 1, 1, 1)
    return (tiles - lo) / (hi - lo).clamp(min=1e-6)


def plot_puzzles(figure_batch, permutations: torch.Tensor, grid: int, path: Path, title: str = "") -> Path:
    """One row per puzzle: the tiles as the network sees them, the true order, the predicted order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tiles, index, predicted, from_training = figure_batch
    identity = list(range(grid * grid))
    rows = len(tiles)
    fig, axes = plt.subplots(rows, 3, figsize=(7.5, 2.6 * rows), squeeze=False)
    for r in range(rows):
        shown = _display(tiles[r])
        gap = max(1, shown.shape[-1] // 12)
        truth, guess = permutations[index[r]], permutations[predicted[r]]
        right = int((truth == guess).sum())
        panels = [(assemble(shown, identity, grid, gap), "input (shuffled)"),
                  (assemble(shown, truth, grid, gap), f"true order (#{int(index[r])})"),
                  (assemble(shown, guess, grid, gap),
                   f"predicted (#{int(predicted[r])}): {right}/{grid * grid} tiles placed")]
        for ax, (img, name) in zip(axes[r], panels):
            ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy())
            ax.set_title(name, fontsize=8, color="black" if name[0] != "p" or right == grid * grid else "firebrick")
            ax.axis("off")
    split = "training" if from_training else "held-out"
    fig.suptitle(f"Jigsaw puzzles ({split}) {title}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
