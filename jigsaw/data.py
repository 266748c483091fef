"""Jigsaw puzzles (Noroozi & Favaro 2016, "Unsupervised Learning of Visual Representations by
Solving Jigsaw Puzzles"): the permutation set and the tiles.

Permutation set (Sec. 3.2, Table 3): out of the (grid²)! orderings, N are chosen greedily so that
they are as far apart as possible in Hamming distance: start from a random permutation, then
repeatedly add the candidate whose minimal distance to the chosen set is largest (ties: the
largest mean distance, then the first in lexicographic order). A set with a large minimal
distance makes the task harder and the features better (Table 3).

Tiles (Sec. 3.1-3.3, at the paper's 225 px crop scaled to any size): resize the image, take a
random crop of grid × cell pixels, split it into grid × grid cells (75 px in the paper) and take a
random tile (64 px: about 0.85 of a cell) inside each, so that neighbouring tiles do not share
edges (a gap of about 11 px, and a random jitter). Shortcuts the paper closes: low-level edge
continuity (the gap), chromatic aberration (random grayscale, and each colour channel jittered
by a pixel or two), and mean/contrast statistics (each tile normalised on its own).
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

GRIDS = (2, 3)
TILE_FRACTION = 64 / 75  # tile / cell in the paper
RESIZE_FRACTION = 256 / 225  # resized image / puzzle crop in the paper


class PermutationError(ValueError):
    """A permutation set that cannot be built (one-line message)."""


# --- the permutation set -------------------------------------------------------------------------

def hamming_stats(perms: np.ndarray) -> dict:
    """Minimal and mean Hamming distance over all pairs of distinct permutations."""
    perms = np.asarray(perms)
    if len(perms) < 2:
        return {"min_hamming": 0.0, "mean_hamming": 0.0}
    d = np.zeros((len(perms), len(perms)), dtype=np.int32)
    for k in range(perms.shape[1]):  # one position at a time keeps memory at N² integers
        d += perms[:, None, k] != perms[None, :, k]
    off = ~np.eye(len(perms), dtype=bool)
    return {"min_hamming": float(d[off].min()), "mean_hamming": float(d[off].mean())}


def lexicographic_permutations(n: int) -> np.ndarray:
    """All n! permutations of 0..n-1 in lexicographic order, (n!)×n uint8, built with numpy (the
    same rows as itertools.permutations, thirty times faster for n = 9)."""
    perms = np.zeros((1, 0), dtype=np.uint8)
    for m in range(1, n + 1):
        # every permutation of 0..m-1 = a first element f, then a permutation of the rest in order
        perms = np.concatenate([np.concatenate([np.full((len(perms), 1), f, np.uint8),
                                                perms + (perms >= f).astype(np.uint8)], 1) for f in range(m)])
    return perms


def generate_permutations(num_permutations: int, grid: int = 3, seed: int = 0) -> tuple[np.ndarray, dict]:
    """The greedy maximal-Hamming-distance set: (N × grid² int64 array, hamming_stats)."""
    if grid not in GRIDS:
        raise PermutationError(f"grid must be one of {GRIDS}, got {grid}")
    tiles = grid * grid
    total = math.factorial(tiles)
    if not 1 <= num_permutations <= total:
        raise PermutationError(f"a {grid}x{grid} puzzle has {total} orderings; choose 1..{total} permutations, "
                               f"not {num_permutations}")
    candidates = lexicographic_permutations(tiles)
    columns = [np.ascontiguousarray(candidates[:, k]) for k in range(tiles)]
    min_dist = np.full(total, tiles + 1, dtype=np.uint8)
    sum_dist = np.zeros(total, dtype=np.uint16 if tiles * num_permutations < 2 ** 16 else np.int32)
    score = np.empty(total, dtype=np.int32)
    scale = tiles * num_permutations + 1  # the minimal distance first, the sum breaks ties
    chosen = [int(np.random.default_rng(seed).integers(total))]
    while True:
        newest = candidates[chosen[-1]]
        d = (columns[0] != newest[0]).view(np.uint8).copy()  # Hamming distance to the newest, per candidate
        for k in range(1, tiles):
            d += (columns[k] != newest[k]).view(np.uint8)
        np.minimum(min_dist, d, out=min_dist)  # chosen rows drop to 0 and are never picked again
        sum_dist += d
        if len(chosen) == num_permutations:
            break
        np.multiply(min_dist, np.int32(scale), out=score)
        score += sum_dist
        chosen.append(int(score.argmax()))
    perms = candidates[chosen].astype(np.int64)
    return perms, hamming_stats(perms)


def _valid(perms, num_permutations: int, grid: int) -> bool:
    n = grid * grid
    return (isinstance(perms, np.ndarray) and perms.shape == (num_permutations, n)
            and bool((np.sort(perms, 1) == np.arange(n)).all())
            and len(np.unique(perms, axis=0)) == num_permutations)


def default_cache_dir(data_root: str | os.PathLike | None) -> Path:
    """<data root>/jigsaw when it can be written, else ~/.cache/ssl-lab/jigsaw."""
    if data_root is not None:
        root = Path(data_root)
        probe = root if root.exists() else root.parent
        if os.access(probe if probe.exists() else Path.cwd(), os.W_OK):
            return root / "jigsaw"
    return Path.home() / ".cache" / "ssl-lab" / "jigsaw"


def load_permutations(num_permutations: int, grid: int = 3, seed: int = 0,
                      cache_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, dict]:
    """generate_permutations, cached as <cache_dir>/permutations-grid{g}-n{N}-seed{s}.npy; a cache
    file that is not a valid set of that size is regenerated. Returns (perms, stats)."""
    name = f"permutations-grid{grid}-n{num_permutations}-seed{seed}.npy"
    path = None if cache_dir is None else Path(cache_dir) / name
    if path is not None and path.exists():
        try:
            perms = np.load(path)
        except (OSError, ValueError):
            perms = None
        if _valid(perms, num_permutations, grid):
            return perms.astype(np.int64), hamming_stats(perms)
    perms, stats = generate_permutations(num_permutations, grid, seed)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npy")
            with os.fdopen(fd, "wb") as f:
                np.save(f, perms)
            os.replace(tmp, path)  # atomic: concurrent runs never read half a file
        except OSError:
            pass  # an unwritable cache only costs the regeneration next time
    return perms, stats


# --- tiles ---------------------------------------------------------------------------------------

def puzzle_geometry(image_size: int, grid: int = 3, patch_multiple: int = 1) -> dict:
    """Sizes scaled from the paper's 256 -> 225 crop -> 75 px cells -> 64 px tiles. `patch_multiple`
    rounds the tile down to a multiple of a ViT's patch size."""
    if grid not in GRIDS:
        raise PermutationError(f"grid must be one of {GRIDS}, got {grid}")
    cell = image_size // grid
    tile = max(1, round(cell * TILE_FRACTION))
    if patch_multiple > 1:
        tile = tile // patch_multiple * patch_multiple
        if tile < patch_multiple:
            raise PermutationError(f"--image-size {image_size} gives {cell} px cells, too small for "
                                   f"{patch_multiple} px patches; use a larger --image-size, a smaller "
                                   "--patch-size or --grid 2")
    return {"resize": round(image_size * RESIZE_FRACTION), "crop": cell * grid, "cell": cell, "tile": tile}


def cut_tiles(image: torch.Tensor, grid: int, tile: int, channel_jitter: int = 0) -> torch.Tensor:
    """C×H×W (H = W = grid·cell) -> grid²×C×tile×tile in row-major cell order: a random tile inside
    each cell, every channel shifted by its own offset in [-channel_jitter, channel_jitter]."""
    C, H, W = image.shape
    cell = H // grid
    if H != W or H != grid * cell:
        raise ValueError(f"cut_tiles expects a square crop of grid·cell pixels, got {H}x{W}")
    room = cell - tile - 2 * channel_jitter
    if room < 0:
        raise ValueError(f"a {tile} px tile with {channel_jitter} px channel jitter does not fit a {cell} px cell")
    out = torch.empty(grid * grid, C, tile, tile, dtype=image.dtype)
    origin = torch.randint(0, room + 1, (grid * grid, 2)) + channel_jitter
    shift = torch.randint(-channel_jitter, channel_jitter + 1, (grid * grid, C, 2))
    for i in range(grid * grid):
        r, c = divmod(i, grid)
        for ch in range(C):
            y = r * cell + int(origin[i, 0] + shift[i, ch, 0])
            x = c * cell + int(origin[i, 1] + shift[i, ch, 1])
            out[i, ch] = image[ch, y:y + tile, x:x + tile]
    return out


def normalize_tiles(tiles: torch.Tensor, min_std: float = 1 / 255) -> torch.Tensor:
    """Each tile and channel to zero mean and unit standard deviation on its own (the paper's
    defence against matching tiles by their statistics); `min_std` (one grey level) keeps flat
    tiles from amplifying noise."""
    flat = tiles.flatten(-2)
    mean = flat.mean(-1, keepdim=True)
    std = flat.std(-1, keepdim=True).clamp(min=min_std)
    return ((flat - mean) / std).view_as(tiles)


def shuffle_tiles(tiles: torch.Tensor, order) -> torch.Tensor:
    """Position t of the puzzle shows the tile of cell order[t]."""
    return tiles[torch.as_tensor(order, dtype=torch.long)]


def assemble(tiles: torch.Tensor, order, grid: int, gap: int = 0) -> torch.Tensor:
    """Inverse of shuffle_tiles + cut: put tile t back into cell order[t] and stitch the grid
    (optionally `gap` pixels apart, for figures). T×C×h×w -> C×H×W."""
    T, C, h, w = tiles.shape
    order = torch.as_tensor(order, dtype=torch.long).tolist()
    canvas = torch.zeros(C, grid * h + (grid - 1) * gap, grid * w + (grid - 1) * gap, dtype=tiles.dtype)
    for t, cell in enumerate(order):
        r, c = divmod(cell, grid)
        canvas[:, r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = tiles[t]
    return canvas


class JigsawViews:
    """PIL image -> (tiles grid²×3×tile×tile, permutation index): the 'views' of one sample."""

    def __init__(self, image_size: int, permutations: np.ndarray, grid: int = 3, gray_prob: float = 0.3,
                 channel_jitter: int | None = None, patch_multiple: int = 1):
        self.grid = grid
        self.geometry = puzzle_geometry(image_size, grid, patch_multiple)
        self.permutations = torch.as_tensor(np.asarray(permutations), dtype=torch.long)
        if self.permutations.shape[1] != grid * grid:
            raise PermutationError(f"permutations of {self.permutations.shape[1]} tiles do not fit a "
                                   f"{grid}x{grid} grid")
        g = self.geometry
        if channel_jitter is None:  # the paper's ±2 px at a 225 px crop, scaled, and never more than fits
            channel_jitter = round(2 * g["crop"] / 225)
        self.channel_jitter = max(0, min(channel_jitter, (g["cell"] - g["tile"]) // 2))
        self.gray_prob = gray_prob
        self.crop = v2.Compose([
            v2.Resize(g["resize"], interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
            v2.RandomCrop(g["crop"]),
        ])

    def __call__(self, image: Image.Image):
        image = self.crop(image.convert("RGB"))
        if torch.rand(()) < self.gray_prob:
            image = image.convert("L").convert("RGB")
        x = torch.from_numpy(np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0)
        tiles = normalize_tiles(cut_tiles(x, self.grid, self.geometry["tile"], self.channel_jitter))
        index = int(torch.randint(len(self.permutations), ()))
        return shuffle_tiles(tiles, self.permutations[index]), index

    def __repr__(self):
        g = self.geometry
        return (f"{type(self).__name__}(grid={self.grid}, resize={g['resize']}, crop={g['crop']}, cell={g['cell']}, "
                f"tile={g['tile']}, permutations={len(self.permutations)}, gray_prob={self.gray_prob}, "
                f"channel_jitter={self.channel_jitter})")
