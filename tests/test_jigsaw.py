"""Jigsaw: the maximal-Hamming permutation set, tiles and their reassembly, the context-free
network, and a short run on `shapes` that learns better than chance."""

from __future__ import annotations

import argparse
import itertools
import json
import math

import numpy as np
import pytest
import torch

from common.logging import read_metrics
from jigsaw.data import (
    JigsawViews,
    PermutationError,
    assemble,
    cut_tiles,
    generate_permutations,
    hamming_stats,
    lexicographic_permutations,
    load_permutations,
    normalize_tiles,
    puzzle_geometry,
    read_permutations,
    shuffle_tiles,
)
from jigsaw.model import Jigsaw, plot_puzzles

# --- permutations -------------------------------------------------------------------------------


def brute_force_stats(perms):
    d = [sum(a != b for a, b in zip(p, q)) for p, q in itertools.combinations(perms.tolist(), 2)]
    return min(d), sum(d) / len(d)


def test_lexicographic_permutations_match_itertools():
    assert np.array_equal(lexicographic_permutations(5), np.array(list(itertools.permutations(range(5)))))


def test_permutation_set_is_valid_unique_and_reports_its_distances():
    perms, stats = generate_permutations(100, grid=3, seed=0)
    assert perms.shape == (100, 9)
    assert (np.sort(perms, 1) == np.arange(9)).all()  # every row is a permutation of the 9 tiles
    assert len(np.unique(perms, axis=0)) == 100
    lo, mean = brute_force_stats(perms)
    assert stats == {"min_hamming": lo, "mean_hamming": pytest.approx(mean)}
    # greedy max-min keeps the set far apart: random 100 of 9! have pairs at distance 2
    assert stats["min_hamming"] >= 6
    # the grid-2 set of all 24 orderings: minimal distance 2 (a swap), mean 3 + 3/23 by counting
    all4, stats4 = generate_permutations(24, grid=2, seed=0)
    assert len(np.unique(all4, axis=0)) == 24
    assert stats4["min_hamming"] == 2 and stats4["mean_hamming"] == pytest.approx(brute_force_stats(all4)[1])


def test_greedy_choice_by_hand_on_2x2():
    # after the first permutation, the next is the farthest: all four tiles moved (distance 4)
    perms, stats = generate_permutations(2, grid=2, seed=0)
    assert (perms[0] != perms[1]).all() and stats == {"min_hamming": 4.0, "mean_hamming": 4.0}
    # among the 24 orderings at most 4 are pairwise at distance 4 (a Latin square's rows)
    four, s4 = generate_permutations(4, grid=2, seed=0)
    assert s4["min_hamming"] == 4.0


def test_permutations_are_deterministic_and_seeds_differ(tmp_path):
    a, sa = generate_permutations(30, grid=3, seed=1)
    b, sb = generate_permutations(30, grid=3, seed=1)
    c, _ = generate_permutations(30, grid=3, seed=2)
    assert np.array_equal(a, b) and sa == sb
    assert not np.array_equal(a, c)
    # cached on first use, read back on the second, and a corrupt cache is regenerated
    cached, _ = load_permutations(30, 3, 1, tmp_path)
    files = list(tmp_path.glob("*.npy"))
    assert [f.name for f in files] == ["permutations-grid3-n30-seed1.npy"] and np.array_equal(cached, a)
    again, stats = load_permutations(30, 3, 1, tmp_path)
    assert np.array_equal(again, a) and stats == sa
    files[0].write_bytes(b"not a numpy file")
    assert np.array_equal(load_permutations(30, 3, 1, tmp_path)[0], a)


def test_impossible_permutation_sets_fail_clearly():
    with pytest.raises(PermutationError, match="24 orderings"):
        generate_permutations(100, grid=2)
    with pytest.raises(PermutationError, match="grid must be one of"):
        generate_permutations(10, grid=4)


def hamming_of(perms):
    return hamming_stats(np.asarray(perms))


def test_max_mean_criterion_maximises_the_mean_distance_by_hand():
    # 2x2 from 0123 (seed 0 may start elsewhere: take the first row as given). The second pick is
    # the farthest (distance 4) under both criteria; they part when min and mean disagree.
    mm, _ = generate_permutations(24, grid=2, seed=0, criterion="max-mean")
    assert sorted(map(tuple, mm)) == sorted(itertools.permutations(range(4)))  # all 24, each once
    first = mm[0]
    d = lambda a, b: int((np.asarray(a) != np.asarray(b)).sum())  # noqa: E731
    for k in range(1, 6):  # each pick has the largest summed distance to the rows before it
        chosen, rest = mm[:k], [p for p in itertools.permutations(range(4)) if p not in set(map(tuple, mm[:k]))]
        best = max(sum(d(p, c) for c in chosen) for p in rest)
        assert sum(d(mm[k], c) for c in chosen) == best and d(mm[1], first) == 4
    mean_set, mean_stats = generate_permutations(1000, grid=3, seed=0, criterion="max-mean")
    min_set, min_stats = generate_permutations(1000, grid=3, seed=0, criterion="max-min")
    assert min_stats["min_hamming"] > mean_stats["min_hamming"] and len(np.unique(mean_set, axis=0)) == 1000
    with pytest.raises(PermutationError, match="unknown permutation criterion"):
        generate_permutations(10, criterion="max-max")


def test_published_permutation_files_are_read_and_validated(tmp_path):
    perms, _ = generate_permutations(50, grid=3, seed=0)
    np.save(tmp_path / "zero.npy", perms)
    np.save(tmp_path / "one.npy", (perms + 1).astype(np.float64))  # 1-based, as MATLAB-era files
    for name in ("zero", "one"):
        read, stats = read_permutations(tmp_path / f"{name}.npy", grid=3)
        assert read.dtype == np.int64 and np.array_equal(read, perms) and stats == hamming_stats(perms)
    bad = {"shape": perms[:, :4], "rows": perms[:1], "perm": np.where(perms == 8, 7, perms),
           "dup": np.concatenate([perms, perms[3:4]]), "float": perms + 0.5}
    messages = {"shape": r"has shape \(50, 4\); expected N × 9", "rows": r"shape \(1, 9\)",
                "perm": "row 0 .* is not a permutation of 0..8", "dup": "rows 3 and 50 are the same permutation",
                "float": "expected integers"}
    for key, array in bad.items():
        np.save(tmp_path / f"{key}.npy", array)
        with pytest.raises(PermutationError, match=messages[key]) as e:
            read_permutations(tmp_path / f"{key}.npy", grid=3)
        assert "\n" not in str(e.value)
    (tmp_path / "text.npy").write_text("not numpy")
    with pytest.raises(PermutationError, match="not a readable .npy"):
        read_permutations(tmp_path / "text.npy")


def test_hamming_stats_by_hand():
    assert hamming_of([[0, 1, 2], [1, 0, 2], [2, 1, 0]]) == {"min_hamming": 2.0, "mean_hamming": pytest.approx(7 / 3)}


# --- tiles --------------------------------------------------------------------------------------

def test_geometry_scales_the_paper_down():
    assert puzzle_geometry(225, 3) == {"resize": 256, "crop": 225, "cell": 75, "tile": 64}  # the paper
    assert puzzle_geometry(64, 3) == {"resize": 73, "crop": 63, "cell": 21, "tile": 18}
    assert puzzle_geometry(64, 3, patch_multiple=8)["tile"] == 16  # whole ViT patches
    with pytest.raises(PermutationError, match="too small"):
        puzzle_geometry(16, 3, patch_multiple=8)


def test_tiles_reassemble_into_the_crop():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 12, 12, generator=g)
    order = torch.tensor([2, 0, 3, 1])
    # tiles as big as the cells: cut, shuffle, reassemble gives the crop back exactly
    puzzle = shuffle_tiles(cut_tiles(image[None], grid=2, tile=6), order[None])[0]
    assert torch.equal(puzzle[0], image[:, 6:12, 0:6])  # position 0 shows cell 2 (bottom left)
    assert torch.equal(assemble(puzzle, order, grid=2), image)
    # smaller tiles: each tile lies inside its own cell (a random sub-crop), per image of a batch
    batch = torch.stack([image, image.flip(-1)])
    tiles = cut_tiles(batch, grid=2, tile=4, generator=torch.Generator().manual_seed(1))
    assert tiles.shape == (2, 4, 3, 4, 4)
    for b in range(2):
        for i, tile in enumerate(tiles[b]):
            r, c = divmod(i, 2)
            cell = batch[b, :, 6 * r:6 * r + 6, 6 * c:6 * c + 6]
            assert any(torch.equal(tile, cell[:, y:y + 4, x:x + 4]) for y in range(3) for x in range(3)), i


def test_channel_jitter_shifts_channels_independently():
    image = torch.arange(3 * 16 * 16, dtype=torch.float32).view(1, 3, 16, 16)
    tiles = cut_tiles(image, grid=2, tile=4, channel_jitter=2, generator=torch.Generator().manual_seed(0))[0]
    # each channel's tile is a window of that channel; the windows' origins differ between channels
    origins = [[divmod(int(tiles[i, ch, 0, 0]) - ch * 256, 16) for ch in range(3)] for i in range(4)]
    assert any(len(set(o)) > 1 for o in origins)
    for i, o in enumerate(origins):
        r, c = divmod(i, 2)
        assert all(8 * r <= y <= 8 * r + 4 and 8 * c <= x <= 8 * c + 4 for y, x in o)
        for ch, (y, x) in enumerate(o):  # a whole window of its own channel
            assert torch.equal(tiles[i, ch], image[0, ch, y:y + 4, x:x + 4])


def test_each_tile_is_normalised_on_its_own():
    tiles = torch.rand(4, 3, 5, 5) * torch.tensor([1.0, 5.0, 0.1, 2.0]).view(4, 1, 1, 1) + 3
    out = normalize_tiles(tiles)
    assert torch.allclose(out.mean((-1, -2)), torch.zeros(4, 3), atol=1e-5)
    assert torch.allclose(out.std((-1, -2)), torch.ones(4, 3), atol=1e-4)
    assert torch.equal(normalize_tiles(torch.ones(1, 3, 4, 4)), torch.zeros(1, 3, 4, 4))  # flat: no NaN


def test_views_give_tiles_and_a_permutation_index():
    perms, _ = generate_permutations(10, grid=3, seed=0)
    views = JigsawViews(64, perms, grid=3, gray_prob=1.0, channel_jitter=0)
    assert views.load.size == 73  # the loader resizes to the paper's 256/225 of the puzzle crop
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 3, 73, 73), dtype=np.uint8))
    tiles, index = views(images, torch.Generator().manual_seed(0))
    assert tiles.shape == (4, 9, 3, 18, 18) and index.shape == (4,) and 0 <= index.min() and index.max() < 10
    assert torch.allclose(tiles[:, :, 0], tiles[:, :, 1]) and torch.allclose(tiles[:, :, 0], tiles[:, :, 2])  # grey
    torch.testing.assert_close(tiles.mean((-1, -2)), torch.zeros(4, 9, 3), atol=1e-5, rtol=0)  # per tile
    assert JigsawViews(64, perms).channel_jitter == 1  # the paper's 2 px at 225 px, scaled to a 63 px crop
    again, index2 = views(images, torch.Generator().manual_seed(0))
    assert torch.equal(tiles, again) and torch.equal(index, index2)  # a function of the generator only
    # the puzzle is the permutation of the cells: un-shuffling by the true order puts tiles back in place
    views = JigsawViews(64, perms, grid=3, gray_prob=0.0, channel_jitter=0)
    g = views.geometry
    flat = torch.zeros(1, 3, 73, 73, dtype=torch.uint8)
    for cell in range(9):  # a different grey level per cell
        r, c = divmod(cell, 3)
        flat[..., r * g["cell"]:(r + 1) * g["cell"] + 5, c * g["cell"]:(c + 1) * g["cell"] + 5] = 20 * cell + 10
    tiles, index = views(flat.expand(2, 3, 73, 73), torch.Generator().manual_seed(3))
    # normalised tiles of flat cells are 0: compare the shuffled order through the raw cut instead
    x = flat.float()[:, :, :63, :63] / 255
    raw = cut_tiles(x, 3, g["tile"], 0, torch.Generator().manual_seed(0))
    assert torch.equal(shuffle_tiles(raw.expand(2, -1, -1, -1, -1), perms[index.numpy()]).mean((2, 3, 4)),
                       raw[0].mean((1, 2, 3))[torch.as_tensor(perms[index.numpy()])])


# --- the network --------------------------------------------------------------------------------

def jigsaw_args(**over):
    args = dict(arch="resnet18", image_size=16, patch_size=4, drop_path=0.0, grid=2, tile_dim=16, hidden_dim=32)
    args.update(over)
    return argparse.Namespace(**args)


@pytest.mark.parametrize("arch", ["resnet18", "vit_tiny"])
def test_context_free_network_shares_the_backbone_across_tiles(arch, tmp_path):
    torch.manual_seed(0)
    perms, stats = generate_permutations(4, grid=2, seed=0)
    tile = 4 if arch == "vit_tiny" else 7
    model = Jigsaw(jigsaw_args(arch=arch), perms, tile, stats).eval()
    tiles, index = torch.randn(3, 4, 3, tile, tile), torch.tensor([0, 1, 3])
    out = model(((tiles, index), torch.full((3,), -1)), 0)
    assert out["loss"].item() == pytest.approx(math.log(4), abs=1.0) and 0 <= out["perm_acc"] <= 100
    assert model.eval_backbone is model.backbone and model.backbone.kwargs["image_size"] == 16
    # the eval backbone maps whole images to embeddings
    assert model.eval_backbone(torch.randn(2, 3, 16, 16)).shape == (2, model.backbone.embed_dim)
    assert model.on_epoch_end(1, tmp_path) == {"perm_min_hamming": 4.0, "perm_mean_hamming": 4.0}
    assert (tmp_path / "puzzles.png").stat().st_size > 0


def test_puzzle_figure_reassembles_true_and_predicted_orders(tmp_path):
    perms = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    tiles = torch.randn(2, 4, 3, 5, 5)
    path = plot_puzzles((tiles, torch.tensor([0, 1]), torch.tensor([0, 0]), False), perms, 2, tmp_path / "p.png")
    assert path.exists() and path.stat().st_size > 0


# --- end to end ---------------------------------------------------------------------------------

def test_two_epochs_on_shapes_learn_the_puzzles(tmp_path, data_root):
    from jigsaw.train import main

    out = tmp_path / "run"
    # 2x2 puzzles of 7 px tiles, two permutations (chance 50%), the same 64 images in both epochs,
    # a constant lr of 3e-4 (lr × batch/256, cosine to the same --min-lr)
    main(["--data", "shapes", "--data-root", str(data_root), "--out", str(out), "--max-images", "64",
          "--image-size", "16", "--grid", "2", "--num-permutations", "2", "--gray-prob", "0",
          "--channel-jitter", "0", "--batch-size", "4", "--epochs", "2", "--warmup-epochs", "0",
          "--lr", "0.0192", "--min-lr", "3e-4", "--workers", "0", "--log-every", "1", "--eval-every", "0",
          "--device", "cpu", "--perm-cache", str(tmp_path / "cache")])
    rows = read_metrics(out / "metrics.jsonl")
    steps = [r for r in rows if "perm_acc" in r]
    assert len(steps) == 32
    first, second = steps[:16], steps[16:]
    mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
    assert mean(second, "loss") < mean(first, "loss")
    assert mean(second, "perm_acc") > 50  # chance with two permutations
    epoch1 = next(r for r in rows if r.get("epoch") == 1 and "val_loss" in r)
    assert epoch1["perm_min_hamming"] == 4.0 and "val_perm_acc" in epoch1
    assert json.loads((out / "config.json").read_text())["args"]["permutation_min_hamming"] == 4.0
    assert (out / "puzzles.png").stat().st_size > 0
    assert list((tmp_path / "cache").glob("*.npy"))


def test_training_runs_on_a_1000_permutation_file(tmp_path, data_root):
    """A set of 1000 in the published files' layout (1-based, N × 9) drives a few training steps."""
    from jigsaw.train import main

    perms, stats = generate_permutations(1000, grid=3, seed=3, criterion="max-mean")
    np.save(tmp_path / "permutations_1000.npy", perms + 1)
    out = tmp_path / "run"
    main(["--data", "shapes", "--data-root", str(data_root), "--out", str(out), "--max-images", "8",
          "--image-size", "32", "--permutations", str(tmp_path / "permutations_1000.npy"), "--batch-size", "4",
          "--epochs", "1", "--max-steps", "2", "--warmup-epochs", "0", "--workers", "0", "--eval-every", "0",
          "--device", "cpu", "--tile-dim", "16", "--hidden-dim", "16", "--log-every", "1"])
    config = json.loads((out / "config.json").read_text())["args"]
    assert config["num_permutations"] == 1000 and config["permutation_min_hamming"] == stats["min_hamming"]
    assert len([r for r in read_metrics(out / "metrics.jsonl") if "perm_acc" in r]) == 2
    with pytest.raises(SystemExit, match="is not a permutation"):
        np.save(tmp_path / "bad.npy", np.zeros((1000, 9), dtype=np.int64))
        main(["--data", "shapes", "--data-root", str(data_root), "--out", str(tmp_path / "bad"), "--device", "cpu",
              "--permutations", str(tmp_path / "bad.npy"), "--max-images", "8", "--image-size", "32",
              "--batch-size", "4"])
