"""Jigsaw puzzles (Noroozi & Favaro 2016, "Unsupervised Learning of Visual Representations by
Solving Jigsaw Puzzles"): the permutation set and the tiles.

Permutation set (Sec. 3.2, Table 3): out of the (grid²)! orderings, N are chosen greedily so that
they are far apart in Hamming distance, starting from a random permutation. The paper asks for
"maximal Hamming distance" without naming a criterion; two are offered (`--perm-criterion`):
- `max-min` (this project's default): add the candidate whose minimal distance to the chosen set
  is largest (ties: the largest mean distance, then the first in lexicographic order). It gives
  the largest minimal distance, the quantity Table 3 relates to the accuracy;
- `max-mean`: add the candidate whose mean distance to the chosen set is largest (ties: the
  first in lexicographic order), as the reference code's permutation selection does.
A published set can be used as it is with `--permutations FILE` (a .npy of N × grid² rows, 0- or
1-based, e.g. the 1000-permutation files distributed with the reference implementations).

Tiles (Sec. 3.1-3.3, at the paper's 225 px crop scaled to any size; made on the training device a
batch at a time, common.augment): resize the image, take a
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

from common.augment import Views, random_grayscale, to_float

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


CRITERIA = ("max-min", "max-mean")


def generate_permutations(num_permutations: int, grid: int = 3, seed: int = 0,
                          criterion: str = "max-min") -> tuple[np.ndarray, dict]:
    """The greedy maximal-Hamming-distance set (see the module docstring for the two criteria):
    (N × grid² int64 array, hamming_stats)."""
    if criterion not in CRITERIA:
        raise PermutationError(f"unknown permutation criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
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
    # max-min: the minimal distance first, the sum breaks ties; max-mean: the sum alone (the mean of
    # the chosen set's distances, up to the constant count), the chosen rows (min 0) left out
    scale = tiles * num_permutations + 1
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
        if criterion == "max-min":
            np.multiply(min_dist, np.int32(scale), out=score)
            score += sum_dist
        else:
            np.copyto(score, np.where(min_dist > 0, sum_dist.astype(np.int32), -1))
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


def read_permutations(path: str | os.PathLike, grid: int = 3) -> tuple[np.ndarray, dict]:
    """A published permutation set: a .npy of N × grid² integers, 0- or 1-based (1-based files,
    as MATLAB-era ones, are shifted to 0). Checked: the shape, every row a permutation, no row
    twice. Returns (N × grid² int64, hamming_stats)."""
    n = grid * grid
    try:
        perms = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise PermutationError(f"--permutations {path}: not a readable .npy file ({str(e).splitlines()[0]})") from None
    if perms.ndim != 2 or perms.shape[1] != n or len(perms) < 2:
        raise PermutationError(f"--permutations {path} has shape {perms.shape}; expected N × {n} (N >= 2) for "
                               f"--grid {grid}")
    if not (np.issubdtype(perms.dtype, np.integer) or (np.issubdtype(perms.dtype, np.floating)
                                                         and np.array_equal(perms, np.round(perms)))):
        raise PermutationError(f"--permutations {path} holds {perms.dtype} values; expected integers")
    perms = perms.astype(np.int64)
    base = 1 if perms.min() == 1 else 0
    perms = perms - base
    bad = np.flatnonzero(~(np.sort(perms, 1) == np.arange(n)).all(1))
    if len(bad):
        raise PermutationError(f"--permutations {path}: row {bad[0]} ({(perms[bad[0]] + base).tolist()}) is not a "
                               f"permutation of {base}..{n - 1 + base}")
    _, first, counts = np.unique(perms, axis=0, return_index=True, return_counts=True)
    if (counts > 1).any():
        row = perms[first[np.argmax(counts > 1)]]
        rows = np.flatnonzero((perms == row).all(1))
        raise PermutationError(f"--permutations {path}: rows {rows[0]} and {rows[1]} are the same permutation; "
                               "each class must be a different ordering")
    return perms, hamming_stats(perms)


def load_permutations(num_permutations: int, grid: int = 3, seed: int = 0, cache_dir: str | os.PathLike | None = None,
                      criterion: str = "max-min") -> tuple[np.ndarray, dict]:
    """generate_permutations, cached as <cache_dir>/permutations-grid{g}-n{N}-seed{s}[-max-mean].npy;
    a cache file that is not a valid set of that size is regenerated. Returns (perms, stats)."""
    suffix = "" if criterion == "max-min" else f"-{criterion}"
    name = f"permutations-grid{grid}-n{num_permutations}-seed{seed}{suffix}.npy"
    path = None if cache_dir is None else Path(cache_dir) / name
    if path is not None and path.exists():
        try:
            perms = np.load(path)
        except (OSError, ValueError):
            perms = None
        if _valid(perms, num_permutations, grid):
            return perms.astype(np.int64), hamming_stats(perms)
    perms, stats = generate_permutations(num_permutations, grid, seed, criterion)
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


def cut_tiles(images: torch.Tensor, grid: int, tile: int, channel_jitter: int = 0,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """B×C×H×W (H = W = grid·cell) -> B×grid²×C×tile×tile in row-major cell order: a random tile
    inside each cell, every channel shifted by its own offset in [-channel_jitter, channel_jitter]
    (the chromatic-aberration defence), for the whole batch in one gather."""
    B, C, H, W = images.shape
    cell = H // grid
    if H != W or H != grid * cell:
        raise ValueError(f"cut_tiles expects square crops of grid·cell pixels, got {H}x{W}")
    room = cell - tile - 2 * channel_jitter
    if room < 0:
        raise ValueError(f"a {tile} px tile with {channel_jitter} px channel jitter does not fit a {cell} px cell")
    T = grid * grid
    origin = torch.randint(0, room + 1, (B, T, 1, 2), generator=generator) + channel_jitter
    shift = torch.randint(-channel_jitter, channel_jitter + 1, (B, T, C, 2), generator=generator)
    cells = torch.stack(torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij"), -1).view(1, T, 1, 2)
    corner = (cells * cell + origin + shift).to(images.device)  # B×T×C×2: (row, column) of each tile
    span = torch.arange(tile, device=images.device)
    rows = (corner[..., 0, None] + span)[..., :, None]  # B×T×C×tile×1
    cols = (corner[..., 1, None] + span)[..., None, :]  # B×T×C×1×tile
    b = torch.arange(B, device=images.device).view(B, 1, 1, 1, 1)
    c = torch.arange(C, device=images.device).view(1, 1, C, 1, 1)
    return images[b, c, rows, cols]


def normalize_tiles(tiles: torch.Tensor, min_std: float = 1 / 255) -> torch.Tensor:
    """Each tile and channel to zero mean and unit standard deviation on its own (the paper's
    defence against matching tiles by their statistics); `min_std` (one grey level) keeps flat
    tiles from amplifying noise."""
    flat = tiles.flatten(-2)
    mean = flat.mean(-1, keepdim=True)
    std = flat.std(-1, keepdim=True).clamp(min=min_std)
    return ((flat - mean) / std).view_as(tiles)


def shuffle_tiles(tiles: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """B×T×… tiles and B×T orders: position t of puzzle b shows the tile of cell order[b, t]."""
    order = torch.as_tensor(order, dtype=torch.long, device=tiles.device)
    index = order.view(*order.shape, *([1] * (tiles.ndim - 2))).expand_as(tiles)
    return tiles.gather(1, index)


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


class JigsawViews(Views):
    """A loaded batch (uint8, resized to the paper's 256/225 of the puzzle crop) -> (tiles
    B×grid²×3×tile×tile, permutation indices B), made on the training device: a random crop of
    grid × cell pixels per image, greyscale with p `gray_prob`, a jittered tile inside each cell,
    each tile normalised on its own, then shuffled by a random permutation of the set."""

    def __init__(self, image_size: int, permutations: np.ndarray, grid: int = 3, gray_prob: float = 0.3,
                 channel_jitter: int | None = None, patch_multiple: int = 1):
        self.grid = grid
        self.geometry = puzzle_geometry(image_size, grid, patch_multiple)
        super().__init__(self.geometry["resize"])
        self.permutations = torch.as_tensor(np.asarray(permutations), dtype=torch.long)
        if self.permutations.shape[1] != grid * grid:
            raise PermutationError(f"permutations of {self.permutations.shape[1]} tiles do not fit a "
                                   f"{grid}x{grid} grid")
        g = self.geometry
        if channel_jitter is None:  # the paper's ±2 px at a 225 px crop, scaled, and never more than fits
            channel_jitter = round(2 * g["crop"] / 225)
        self.channel_jitter = max(0, min(channel_jitter, (g["cell"] - g["tile"]) // 2))
        self.gray_prob = gray_prob

    def __call__(self, images: torch.Tensor, generator: torch.Generator):
        g = self.geometry
        x = to_float(images)
        room = x.shape[-1] - g["crop"]
        corner = torch.randint(0, room + 1, (len(x), 2), generator=generator).tolist()
        x = torch.stack([im[:, i:i + g["crop"], j:j + g["crop"]] for im, (i, j) in zip(x, corner)])
        x = random_grayscale(x, self.gray_prob, generator)
        tiles = normalize_tiles(cut_tiles(x, self.grid, g["tile"], self.channel_jitter, generator))
        index = torch.randint(len(self.permutations), (len(x),), generator=generator)
        return shuffle_tiles(tiles, self.permutations[index]), index.to(x.device)

    def __repr__(self):
        g = self.geometry
        return (f"{type(self).__name__}(grid={self.grid}, resize={g['resize']}, crop={g['crop']}, cell={g['cell']}, "
                f"tile={g['tile']}, permutations={len(self.permutations)}, gray_prob={self.gray_prob}, "
                f"channel_jitter={self.channel_jitter})")
