"""Linear probe maths: separable features, per-class seeded label fractions, held-out split."""

import numpy as np
import pytest
import torch

from eval.linear import choose_weight_decay, evaluate, heldout_split, sample_label_fraction, standardise, train_probe

pytestmark = pytest.mark.usefixtures("one_thread")



def clusters(n_per_class, seed, dim=16, classes=4):
    centres = torch.eye(classes, dim) * 6.0 + 3.0  # far apart, and far from the origin
    y = torch.arange(classes).repeat_interleave(n_per_class)
    return centres[y] + torch.randn(len(y), dim, generator=torch.Generator().manual_seed(seed + 1)), y


def test_probe_separates_linearly_separable_features():
    x, y = clusters(40, 0)
    x_test, y_test = clusters(25, 10)
    (mean, std), (x, x_test) = standardise(x, x_test)
    head = train_probe(x, y, num_classes=4, epochs=30, lr=0.1, batch_size=32, seed=0)
    acc = evaluate(head, x_test, y_test)
    assert acc[1] == 100.0 and acc[5] == 100.0


def test_standardise_uses_train_statistics():
    train = torch.tensor([[1.0, 10.0], [3.0, 30.0]])
    (mean, std), (a, b) = standardise(train, torch.tensor([[2.0, 40.0]]))
    assert torch.allclose(mean, torch.tensor([2.0, 20.0])) and torch.allclose(std, torch.tensor([1.0, 10.0]))
    assert torch.allclose(a, torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))
    assert torch.allclose(b, torch.tensor([[0.0, 2.0]]))


def test_label_fraction_is_per_class_seeded_and_at_least_one():
    targets = np.array([0] * 100 + [1] * 50 + [2] * 3 + [3] * 1 + [-1] * 20)
    rng = np.random.default_rng(0)
    targets = targets[rng.permutation(len(targets))]
    chosen = sample_label_fraction(targets, 0.1, seed=3)
    counts = np.bincount(targets[chosen], minlength=4)
    assert counts.tolist() == [10, 5, 1, 1]  # round(0.3) = 0 -> at least one
    assert (targets[chosen] >= 0).all() and len(set(chosen.tolist())) == len(chosen)
    assert np.array_equal(chosen, sample_label_fraction(targets, 0.1, seed=3))
    assert not np.array_equal(chosen, sample_label_fraction(targets, 0.1, seed=4))
    everything = sample_label_fraction(targets, 1.0, seed=0)
    assert np.array_equal(everything, np.flatnonzero(targets >= 0))
    assert np.bincount(targets[sample_label_fraction(targets, 0.2, 0)]).tolist() == [20, 10, 1, 1]
    with pytest.raises(ValueError):
        sample_label_fraction(targets, 0.0)


def test_heldout_split_is_stratified_and_needs_two_per_class():
    y = np.array([0] * 10 + [1] * 5 + [2] * 2)
    fit, held = heldout_split(y, 0.2, seed=0)
    assert np.bincount(y[held]).tolist() == [2, 1, 1]
    assert sorted(np.concatenate([fit, held]).tolist()) == list(range(len(y)))
    assert heldout_split(np.array([0, 0, 1]), 0.2) is None
    wd, how, scores = choose_weight_decay(torch.randn(3, 4), torch.tensor([0, 0, 1]), 2, 2, 0.1, 8, 0)
    assert wd == 0.0 and "fewer than 2" in how and scores == {}


# --- DINO's linear protocol (facebookresearch/dino eval_linear.py) -------------------------------

def test_dino_features_are_the_last_blocks_cls_tokens_or_cls_and_mean_patch():
    from common.backbones import build_backbone
    from eval.heads import DINOLinearFeatures
    from eval.linear import dino_blocks

    torch.manual_seed(0)
    vit = build_backbone("vit_tiny", image_size=16, patch_size=8).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        tokens, normed = vit.prepare_tokens(x), []
        for blk in vit.blocks:
            tokens = blk(tokens)
            normed.append(vit.norm(tokens))
        four = DINOLinearFeatures(vit, 4, False)(x)
        assert four.shape == (2, 4 * 192) and torch.allclose(four, torch.cat([t[:, 0] for t in normed[-4:]], 1))
        pooled = DINOLinearFeatures(vit, 1, True)(x)
        # the official cat(dim=-1).reshape interleaves: cls_0, mean_0, cls_1, mean_1, ...
        cls, mean = normed[-1][:, 0], normed[-1][:, 1:].mean(1)
        assert pooled.shape == (2, 384)
        assert torch.allclose(pooled[:, 0::2], cls) and torch.allclose(pooled[:, 1::2], mean)
        resnet = build_backbone("resnet18", image_size=16).eval()
        assert torch.allclose(DINOLinearFeatures(resnet, 4, False)(x), resnet(x))
    assert dino_blocks("vit_small") == (4, False) and dino_blocks("vit_base") == (1, True)


def test_protocol_dino_end_to_end(tmp_path, data_root, capsys):
    import json

    from common.backbones import build_backbone
    from common.checkpoint import save_checkpoint
    from eval import linear

    torch.manual_seed(0)
    net = build_backbone("vit_tiny", image_size=16, patch_size=8)
    save_checkpoint({"method": "dino", "arch": "vit_tiny", "backbone_kwargs": net.kwargs, "backbone": net.state_dict(),
                     "epoch": 1, "step": 1, "args": {"image_size": 16}}, tmp_path / "vit.pt")
    r = linear.main(["--checkpoint", str(tmp_path / "vit.pt"), "--data", "shapes", "--data-root", str(data_root),
                     "--out", str(tmp_path / "out"), "--device", "cpu", "--protocol", "dino", "--max-train", "40",
                     "--max-test", "20", "--epochs", "2", "--probe-batch-size", "16"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["protocol"]["name"] == "dino"
    protocol = r["protocol"]
    assert protocol["n_last_blocks"] == 4 and protocol["avgpool_patchtokens"] is False
    assert protocol["feature_dim"] == 4 * 192 and protocol["lr"] == pytest.approx(0.001 * 16 / 256)
    assert protocol["optimizer"] == "SGD, momentum 0.9, no weight decay" and r["n_test"] == 20
    assert len(r["curves"]["1"]["epoch"]) == 2 and r["best_top1_over_epochs"] == max(r["curves"]["1"]["test_top1"])
    assert (tmp_path / "out" / "linear-dino.json").exists()
    with pytest.raises(SystemExit, match="goes with --n-last-blocks 1"):
        linear.main(["--checkpoint", str(tmp_path / "vit.pt"), "--data", "shapes", "--data-root", str(data_root),
                     "--out", str(tmp_path / "out"), "--device", "cpu", "--protocol", "dino", "--n-last-blocks", "4",
                     "--avgpool-patchtokens", "--max-train", "20", "--max-test", "10", "--epochs", "1"])
