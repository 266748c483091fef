"""DINO: the loss, centering, sharpening and schedules on hand-computed cases, the teacher's
EMA, multi-crop, the frozen last layer, and short end-to-end runs on CPU."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dino.data import DINOViews
from dino.model import DINO, DINOHead, DINOLoss, MultiCropNetwork

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def tiny_args(**over) -> argparse.Namespace:
    """The options DINO reads, at a size a unit test can afford (ViT-tiny, 16 px, patch 8)."""
    args = dict(arch="vit_tiny", image_size=16, patch_size=8, drop_path=0.1, out_dim=32, use_bn_in_head=False,
                norm_last_layer=True, momentum_teacher=0.996, warmup_teacher_temp=0.04, teacher_temp=0.04,
                warmup_teacher_temp_epochs=0, freeze_last_layer=1, local_crops_number=2,
                global_crops_scale=(0.4, 1.0), local_crops_scale=(0.05, 0.4), epochs=4)
    args.update(over)
    return argparse.Namespace(**args)


def crops_for(args, batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    size, small = args.image_size, args.image_size // 2
    crops = ([torch.randn(batch, 3, size, size, generator=g) for _ in range(2)]
             + [torch.randn(batch, 3, small, small, generator=g) for _ in range(args.local_crops_number)])
    return crops, torch.full((batch,), -1)  # (views, labels), as the loader gives them


# --- the loss by hand ---------------------------------------------------------------------------

def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def expected_dino_loss(student, teacher, center, ncrops, tau_t, tau_s=0.1):
    """Algorithm 1 written out with numpy: every (teacher global q, student view v != q) pair."""
    B = teacher.shape[0] // 2
    q = [np_softmax((teacher[i * B:(i + 1) * B] - center) / tau_t) for i in range(2)]
    p = [np_softmax(student[v * B:(v + 1) * B] / tau_s) for v in range(ncrops)]
    ce, kl, pairs = 0.0, 0.0, 0
    for iq in range(2):
        for v in range(ncrops):
            if v == iq:
                continue
            ce += np.mean(np.sum(-q[iq] * np.log(p[v]), -1))
            kl += np.mean(np.sum(q[iq] * (np.log(q[iq]) - np.log(p[v])), -1))
            pairs += 1
    entropy = np.mean([np.mean(np.sum(-qi * np.log(qi), -1)) for qi in q])
    return ce / pairs, kl / pairs, entropy, pairs


@pytest.mark.parametrize("ncrops", [2, 3])
def test_loss_matches_hand_computation_with_centering_sharpening_and_pairing(ncrops):
    rng = np.random.default_rng(ncrops)
    B, K = 2, 5
    student = rng.normal(size=(ncrops * B, K)) * 0.3
    teacher = rng.normal(size=(2 * B, K)) * 0.1
    center = rng.normal(size=(1, K)) * 0.05
    loss_fn = DINOLoss(K, ncrops, warmup_teacher_temp=0.04, teacher_temp=0.04, warmup_teacher_temp_epochs=0,
                       epochs=1).eval()
    loss_fn.center.copy_(torch.tensor(center))
    loss, stats = loss_fn(torch.tensor(student), torch.tensor(teacher), epoch=0)

    ce, kl, entropy, pairs = expected_dino_loss(student, teacher, center, ncrops, tau_t=0.04)
    assert pairs == 2 * (ncrops - 1)
    assert loss.item() == pytest.approx(ce, rel=1e-5)
    assert stats["kl"].item() == pytest.approx(kl, rel=1e-4, abs=1e-6)
    assert stats["teacher_entropy"].item() == pytest.approx(entropy, rel=1e-5)
    # Pairing rule: including the q = v pairs would give a different (smaller) number here.
    q0 = np_softmax((teacher[:B] - center) / 0.04)
    same_view = np.mean(np.sum(-q0 * np.log(np_softmax(student[:B] / 0.1)), -1))
    assert abs(same_view - ce) > 1e-3


def test_loss_two_crops_by_hand_on_a_three_way_case():
    # K = 3, B = 1, zero center: q = softmax(t / 0.04), p = softmax(s / 0.1), loss averages two pairs.
    teacher = torch.tensor([[0.04, 0.0, 0.0], [0.0, 0.08, 0.0]])
    student = torch.tensor([[0.1, 0.0, 0.0], [0.0, 0.0, 0.2]])
    loss_fn = DINOLoss(3, 2, 0.04, 0.04, 0, epochs=1).eval()
    loss, _ = loss_fn(student, teacher, epoch=0)
    e = np.e
    q0 = np.array([e, 1, 1]) / (e + 2)              # logits (1, 0, 0)
    q1 = np.array([1, e ** 2, 1]) / (e ** 2 + 2)    # logits (0, 2, 0)
    logp0 = np.log(np.array([e, 1, 1]) / (e + 2))   # student crop 0: (1, 0, 0)
    logp1 = np.log(np.array([1, 1, e ** 2]) / (e ** 2 + 2))  # student crop 1: (0, 0, 2)
    expected = (-(q0 * logp1).sum() - (q1 * logp0).sum()) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_center_is_an_exact_ema_of_the_teacher_batch_mean_and_moves_only_in_training():
    K = 4
    teacher = torch.arange(12, dtype=torch.float32).reshape(3 * 2, 2).repeat(1, 2)[:, :K]
    student = torch.randn(2 * 3, K)
    loss_fn = DINOLoss(K, 2, 0.04, 0.04, 0, epochs=1)
    c0 = torch.tensor([[1.0, -2.0, 0.5, 3.0]])
    loss_fn.center.copy_(c0)
    loss_fn.eval()
    loss_fn(student, teacher, 0)
    assert torch.equal(loss_fn.center, c0)
    loss_fn.train()
    loss_fn(student, teacher, 0)
    expected = 0.9 * c0 + 0.1 * teacher.mean(0, keepdim=True)
    torch.testing.assert_close(loss_fn.center, expected, rtol=0, atol=1e-6)
    assert "center" in loss_fn.state_dict()


def test_teacher_temperature_warms_up_linearly_per_epoch_then_stays():
    loss_fn = DINOLoss(8, 4, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=3, epochs=5)
    assert [loss_fn.teacher_temp(e) for e in range(6)] == pytest.approx([0.04, 0.055, 0.07, 0.07, 0.07, 0.07])
    # The temperature used in the loss is the schedule's: a sharper teacher (epoch 0) has lower entropy.
    t, s = torch.randn(4, 8), torch.randn(8, 8)
    h0 = loss_fn.eval()(s, t, 0)[1]["teacher_entropy"]
    h3 = loss_fn(s, t, 3)[1]["teacher_entropy"]
    assert h0 < h3
    with pytest.raises(ValueError, match="warmup_teacher_temp_epochs"):
        DINOLoss(8, 4, 0.04, 0.07, warmup_teacher_temp_epochs=6, epochs=5)


# --- the head and the networks ------------------------------------------------------------------

def test_head_l2_bottleneck_and_unit_norm_prototypes():
    torch.manual_seed(0)
    head = DINOHead(16, 10, hidden_dim=32, bottleneck_dim=8)
    x = torch.randn(5, 16)
    out = head(x)
    assert out.shape == (5, 10)
    w = head.last_layer.weight
    torch.testing.assert_close(w.norm(dim=1), torch.ones(10))  # g fixed to 1: prototypes on the sphere
    z = F.normalize(head.mlp(x), dim=-1)
    torch.testing.assert_close(out, z @ w.t())                 # cosine similarities, |out| <= 1
    trainable = {n for n, p in head.named_parameters() if p.requires_grad}
    assert "last_layer.parametrizations.weight.original0" not in trainable
    assert "last_layer.parametrizations.weight.original1" in trainable
    free = DINOHead(16, 10, norm_last_layer=False, use_bn=True, hidden_dim=32, bottleneck_dim=8)
    assert free.last_layer.parametrizations.weight.original0.requires_grad
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in free.mlp) == 2


def test_multi_crop_network_runs_one_backbone_forward_per_resolution():
    torch.manual_seed(0)
    calls = []
    backbone = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 6))
    backbone.register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape[0]))
    net = MultiCropNetwork(backbone, DINOHead(6, 7, hidden_dim=16, bottleneck_dim=4)).eval()
    crops = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4),
             torch.randn(2, 3, 4, 4)]
    out, features = net(crops)
    assert calls == [4, 6]
    assert out.shape == (10, 7) and features.shape == (10, 6)
    one_by_one = torch.cat([net.head(backbone(c)) for c in crops])
    torch.testing.assert_close(out, one_by_one)


def test_teacher_starts_as_copy_without_drop_path_and_gets_no_gradient():
    torch.manual_seed(0)
    args = tiny_args()
    dino = DINO(args, steps_per_epoch=2)
    s, t = dino.student.state_dict(), dino.teacher.state_dict()
    assert s.keys() == t.keys()
    assert all(torch.equal(s[k], t[k]) for k in s)
    assert dino.student.backbone.kwargs["drop_path_rate"] == 0.1
    assert dino.eval_backbone is dino.teacher.backbone and dino.eval_backbone.kwargs["drop_path_rate"] == 0.0
    assert not any(p.requires_grad for p in dino.teacher.parameters())

    out = dino(crops_for(args, batch=4), step=0)
    assert set(out) >= {"loss", "teacher_entropy", "kl", "feature_std", "teacher_temp", "momentum"}
    out["loss"].backward()
    assert all(p.grad is None for p in dino.teacher.parameters())
    assert dino.student.backbone.patch_embed.proj.weight.grad.abs().sum() > 0
    assert dino.student.head.last_layer.parametrizations.weight.original1.grad is not None
    # KL = loss − entropy (every teacher view is paired with ncrops − 1 student views).
    assert out["kl"].item() == pytest.approx(out["loss"].item() - out["teacher_entropy"].item(), abs=1e-5)
    assert 0 < out["feature_std"].item() < 1
    # The trainable groups hold no teacher parameter and no fixed g.
    group_params = {id(p) for g in dino.param_groups() for p in g["params"]}
    assert not group_params & {id(p) for p in dino.teacher.parameters()}
    assert id(dino.student.head.last_layer.parametrizations.weight.original0) not in group_params


def test_momentum_schedule_is_a_per_step_cosine_to_one_and_ema_is_exact():
    torch.manual_seed(0)
    args = tiny_args(epochs=2)
    dino = DINO(args, steps_per_epoch=5)  # 10 steps
    assert dino.momentum(0) == pytest.approx(0.996)
    assert dino.momentum(5) == pytest.approx(0.998)          # half-way up the cosine
    assert dino.momentum(9) == pytest.approx(1 - 0.002 * (1 + np.cos(np.pi * 9 / 10)))
    assert dino.momentum(50) == dino.momentum(9)             # past the end: the last value

    with torch.no_grad():  # make student and teacher differ
        for p in dino.student.parameters():
            p.add_(torch.randn_like(p))
    before_t = {k: v.clone() for k, v in dino.teacher.state_dict().items()}
    before_s = dino.student.state_dict()
    dino.after_step(3)
    m = dino.momentum(3)
    for k, v in dino.teacher.state_dict().items():
        torch.testing.assert_close(v, m * before_t[k] + (1 - m) * before_s[k], rtol=0, atol=1e-6)


def test_last_layer_is_frozen_during_the_first_epoch_then_trained():
    torch.manual_seed(0)
    args = tiny_args(freeze_last_layer=1, drop_path=0.0)
    dino = DINO(args, steps_per_epoch=2)
    opt = torch.optim.AdamW(dino.param_groups(), lr=1e-3, weight_decay=0.04)
    v = dino.student.head.last_layer.parametrizations.weight.original1
    for step, frozen in [(0, True), (1, True), (2, False)]:
        before = v.detach().clone()
        opt.zero_grad(set_to_none=True)
        dino(crops_for(args, seed=step), step)["loss"].backward()
        assert v.grad is not None and v.grad.abs().sum() > 0  # backward does reach it...
        dino.before_optimizer_step(step)
        assert (v.grad is None) == frozen                     # ...but it is cancelled in epoch 0
        opt.step()
        assert torch.equal(v, before) == frozen


def test_dino_views_give_two_global_and_n_local_crops():
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (2, 3, 32, 32), dtype=np.uint8))
    args = tiny_args(image_size=32, local_crops_number=3, color_jitter=(0.4, 0.4, 0.2, 0.1), gray_p=0.2)
    views = DINOViews(args)(images, torch.Generator().manual_seed(0))
    assert [tuple(v.shape) for v in views] == [(2, 3, 32, 32)] * 2 + [(2, 3, 16, 16)] * 3
    assert all(v.dtype == torch.float32 for v in views)
    args.local_crops_number = 0
    assert len(DINOViews(args)(images, torch.Generator().manual_seed(0))) == 2
    args.local_crops_number, args.local_crops_size = 2, 32  # DINO-Twins' local crops at the global size
    assert [v.shape[-1] for v in DINOViews(args)(images, torch.Generator().manual_seed(0))] == [32] * 4


# --- end-to-end through the engine ------------------------------------------------------------

TINY = ["--data", "shapes", "--arch", "vit_tiny", "--image-size", "16", "--patch-size", "8", "--out-dim", "64",
        "--local-crops-number", "2", "--workers", "0", "--device", "cpu", "--eval-every", "0",
        "--warmup-epochs", "0"]


class ExplodingDINO(DINO):
    """DINO whose loss becomes NaN from the second epoch on, as an overflowing fp16 run would."""

    def forward(self, batch, step):
        out = super().forward(batch, step)
        if step >= self.steps_per_epoch:
            out["loss"] = out["loss"] * float("nan")
        return out


def test_nan_loss_stops_with_dino_hints_and_keeps_the_last_good_checkpoint(tmp_path, data_root):
    from common import engine
    from common.checkpoint import load_checkpoint
    from dino import train

    def build(args, steps_per_epoch):
        train.check_arguments(args)
        return ExplodingDINO(args, steps_per_epoch), DINOViews(args)

    argv = [*TINY, "--data-root", str(data_root), "--max-images", "32", "--batch-size", "16", "--epochs", "2",
            "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as stop:
        engine.main("dino", train.add_arguments, build, defaults=train.DEFAULTS, argv=argv)
    message = str(stop.value)
    assert "NaN" in message and "\n" not in message
    assert "--amp off" in message and "--teacher-temp" in message and "--out-dim" in message
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt", method="dino", arch="vit_tiny")
    assert ckpt["step"] == 2 and ckpt["epoch"] == 1  # the end of the last good epoch
    state = ckpt["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert state["loss_fn.center"].abs().sum() > 0  # the center is saved with the model
    # The eval network is the teacher's backbone.
    for k, v in ckpt["backbone"].items():
        assert torch.equal(v, state[f"teacher.backbone.{k}"])


def test_bad_option_combinations_fail_with_one_line_and_zero_local_crops_work():
    from common.options import base_parser, parse_args
    from dino import train

    parser = base_parser("dino", **train.DEFAULTS)
    train.add_arguments(parser)
    for argv, message in [
        (["--warmup-teacher-temp-epochs", "5", "--epochs", "2"], "--warmup-teacher-temp-epochs 5"),
        (["--local-crops-scale", "0.4", "0.05"], "--local-crops-scale"),
        (["--teacher-temp", "0"], "--teacher-temp"),
        (["--local-crops-number", "-1"], "--local-crops-number"),
    ]:
        args = parse_args(parser, [*TINY, "--epochs", "4", *argv])
        with pytest.raises(SystemExit) as stop:
            train.build(args, steps_per_epoch=2)
        assert str(stop.value).startswith("error: ") and message in str(stop.value), argv
        assert "\n" not in str(stop.value)
    # Without local crops DINO is still DINO: the two global crops teach each other.
    args = parse_args(parser, [*TINY, "--local-crops-number", "0"])
    dino, views = train.build(args, steps_per_epoch=2)
    assert dino.ncrops == 2 and views.n_local == 0


def test_issue_command_runs_on_coco_on_cpu(tmp_path, shared_data):
    # The issue's command, plus only the size options that keep the suite fast and an --out.
    cmd = [sys.executable, "dino/train.py", "--data", "coco", "--data-root", str(shared_data / "coco"),
           "--batch-size", "64", "--arch", "vit_tiny", "--max-steps", "2",
           "--image-size", "16", "--patch-size", "8", "--out-dim", "256", "--local-crops-number", "2",
           "--out", str(tmp_path / "run")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-1000:] + proc.stderr[-2000:]
    assert "kNN monitoring is skipped" in proc.stdout  # COCO images carry no labels

    from common.checkpoint import load_checkpoint
    from common.logging import read_metrics

    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert rows and rows[-1]["step"] == 2
    for r in rows:
        assert math.isfinite(r["loss"]) and 0 <= r["teacher_entropy"] <= math.log(256) + 1e-3
        assert r["kl"] >= -1e-4 and r["feature_std"] > 0 and r["teacher_temp"] == 0.04
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["args"]["out_dim"] == 256 and config["args"]["momentum_teacher"] == 0.996
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt", method="dino", arch="vit_tiny")
    assert ckpt["step"] == 2 and ckpt["backbone_kwargs"]["drop_path_rate"] == 0.0


def test_two_epochs_on_shapes_lower_the_loss_without_collapse(tmp_path, data_root):
    from common.logging import read_metrics
    from dino import train

    # A short-run recipe: BatchNorm in the head spreads the nearly identical features of a freshly
    # initialised ViT, and a fast teacher (0.9) lets 24 steps show the dynamics.
    summary = train.main([*TINY, "--data-root", str(data_root), "--max-images", "384", "--batch-size", "32",
                          "--epochs", "2", "--out-dim", "256", "--use-bn-in-head", "--lr", "0.004",
                          "--warmup-epochs", "1", "--momentum-teacher", "0.9", "--drop-path", "0",
                          "--eval-every", "1", "--log-every", "1", "--out", str(tmp_path)])
    assert summary["step"] == 24 and summary["reason"] == "end"
    rows = read_metrics(tmp_path / "metrics.jsonl")
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 25))
    loss = np.array([r["loss"] for r in steps])
    assert loss[-4:].mean() < loss[:4].mean() - 0.5, loss.round(3)
    # No collapse: the teacher is neither uniform (entropy ln K) nor one-hot (entropy 0).
    entropy = np.array([r["teacher_entropy"] for r in steps])
    assert (entropy > 0.05).all() and (entropy < np.log(256) - 0.05).all(), entropy.round(3)
    assert all(r["feature_std"] > 0.01 and r["kl"] >= -1e-4 for r in steps)
    momentum = [r["momentum"] for r in steps]
    assert momentum[0] == pytest.approx(0.9) and np.all(np.diff(momentum) > 0) and momentum[-1] < 1
    epochs = [r for r in rows if "knn_top1" in r]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert all(0 <= r["knn_top1"] <= 100 and math.isfinite(r["val_loss"]) for r in epochs)
    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == [
        "epoch0000.pt", "epoch0001.pt", "epoch0002.pt"]
    assert (tmp_path / "diagnostics.png").exists()  # the collapse curves: entropy, KL, feature std


def test_resnet_arch_takes_the_official_resnet50_recipe_where_the_command_line_is_silent(capsys):
    from common.options import parse_cli
    from dino import train

    def resolved(*argv):
        args = parse_cli("dino", train.add_arguments, train.DEFAULTS, list(argv))
        return args, train.apply_resnet_recipe(args, list(argv))

    args, taken = resolved("--arch", "resnet50")
    assert (args.optimizer, args.lr, args.weight_decay, args.weight_decay_end) == ("sgd", 0.03, 1e-4, 1e-4)
    assert tuple(args.global_crops_scale) == (0.14, 1.0) and tuple(args.local_crops_scale) == (0.05, 0.14)
    assert set(taken) == set(train.RESNET_RECIPE) and "official ResNet-50 recipe" in capsys.readouterr().out
    # what the user sets stays; a user's weight decay is held constant, as the recipe's
    args, taken = resolved("--arch", "resnet18", "--lr", "0.1", "--global-crops-scale", "0.3", "1",
                           "--weight-decay", "5e-4")
    assert (args.lr, tuple(args.global_crops_scale), args.optimizer) == (0.1, (0.3, 1.0), "sgd")
    assert args.weight_decay == args.weight_decay_end == 5e-4 and "lr" not in taken
    # a ViT keeps the ViT recipe (AdamW, weight decay 0.04 -> 0.4)
    args, taken = resolved("--arch", "vit_small")
    assert taken == {} and (args.optimizer, args.lr, args.weight_decay_end) == ("adamw", 5e-4, 0.4)
