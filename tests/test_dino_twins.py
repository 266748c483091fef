"""DINO-Twins: the combined loss against its parents' own classes on a fixed batch, each ablation
switch changing exactly what it names, gradients to the student only, the original repository's
defaults, one-line errors, and a short end-to-end run on `shapes`."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from barlow_twins.model import barlow_twins_loss, cross_correlation
from common.options import base_parser, parse_args
from dino.model import DINO, DINOLoss
from dino_twins import train as dt_train
from dino_twins.model import DINOTwins, crop_pairs

# ViT-tiny at 16 px with patch 8: the smallest network the real options can build.
TINY = ["--arch", "vit_tiny", "--image-size", "16", "--patch-size", "8", "--drop-path", "0", "--out-dim", "32",
        "--bt-projector", "24-16", "--local-crops-number", "2", "--epochs", "4", "--warmup-epochs", "0",
        "--warmup-teacher-temp-epochs", "0"]


pytestmark = pytest.mark.usefixtures("one_thread")


def parse(*argv):
    parser = base_parser("dino_twins", **dt_train.DEFAULTS)
    dt_train.add_arguments(parser)
    return parse_args(parser, list(argv))


def tiny(*argv, seed=0) -> DINOTwins:
    torch.manual_seed(seed)
    return DINOTwins(parse(*TINY, *argv), steps_per_epoch=2)


def crops_for(batch=6, ncrops=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    crops = [torch.randn(batch, 3, 16, 16, generator=g) for _ in range(2)]
    crops += [torch.randn(batch, 3, 8, 8, generator=g) for _ in range(ncrops - 2)]
    return crops, torch.full((batch,), -1)


def reference_parts(model: DINOTwins, crops, *argv, center=None, epoch=0):
    """DINO's loss (a fresh DINOLoss of the parent) and the mean Barlow Twins loss over every
    ordered pair of crops (the original's loop), from the model's own networks."""
    args = parse(*TINY, *argv)
    with torch.no_grad():
        teacher_output, _ = model.teacher(crops[:2])
        student_output, features = model.student(crops)
        dino = DINOLoss(args.out_dim, len(crops), args.warmup_teacher_temp, args.teacher_temp,
                        args.warmup_teacher_temp_epochs, args.epochs).eval()
        if center is not None:
            dino.center.copy_(center)
        dino_loss, _ = dino(student_output, teacher_output, epoch)
        z = [model.projector(f) for f in features.chunk(len(crops))]
        ordered = [barlow_twins_loss(cross_correlation(z[a], z[b]), args.bt_lambda)
                   for a in range(len(z)) for b in range(len(z)) if a != b]
    return dino_loss, torch.stack(ordered).mean()


# --- the combined loss --------------------------------------------------------------------------

def test_crop_pairs_are_every_unordered_pair_once_global_pair_first():
    assert crop_pairs(4) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert crop_pairs(2) == [(0, 1)]
    # Why unordered pairs give the original's ordered-pair mean: swapping the crops transposes C.
    g = torch.Generator().manual_seed(1)
    za, zb = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g) * 3 + 1
    torch.testing.assert_close(barlow_twins_loss(cross_correlation(za, zb), 0.005),
                               barlow_twins_loss(cross_correlation(zb, za), 0.005))


def test_combined_loss_is_dino_plus_weighted_barlow_twins_on_a_fixed_batch():
    model = tiny("--bt-weight", "0.3")
    crops, labels = crops_for()
    dino_ref, bt_ref = reference_parts(model, crops, "--bt-weight", "0.3")  # before the forward moves the center
    out = model((crops, labels), step=0)
    torch.testing.assert_close(out["dino_loss"], dino_ref)
    torch.testing.assert_close(out["bt_loss"], bt_ref)
    torch.testing.assert_close(out["loss"], dino_ref + 0.3 * bt_ref)
    assert out["bt_loss"].item() > 1.0  # the Barlow term is not negligible in this check
    # Both parents' collapse diagnostics are logged.
    assert set(out) >= {"teacher_entropy", "kl", "teacher_temp", "momentum", "feature_std", "z_std", "c_on_diag",
                        "c_off_diag", "dino_loss", "bt_loss"}
    assert out["kl"].item() == pytest.approx(out["dino_loss"].item() - out["teacher_entropy"].item(), abs=1e-5)


def test_bt_crops_global_uses_the_pair_of_global_crops_only():
    model = tiny("--bt-crops", "global", "--bt-weight", "0.3")
    crops, labels = crops_for()
    with torch.no_grad():
        _, features = model.student(crops)
        z = [model.projector(f) for f in features.chunk(4)[:2]]
        expected = barlow_twins_loss(cross_correlation(z[0], z[1]), 0.005)
    out = model((crops, labels), step=0)
    torch.testing.assert_close(out["bt_loss"], expected)
    assert model.bt_pairs == [(0, 1)]


# --- the switches -------------------------------------------------------------------------------

def test_bt_weight_zero_is_exactly_dino_over_two_training_steps():
    args = parse(*TINY, "--bt-weight", "0")
    torch.manual_seed(0)
    dino = DINO(args, steps_per_epoch=2)
    twins = tiny("--bt-weight", "0")
    assert twins.projector is None  # nothing unused for DDP
    count = lambda m: sum(p.numel() for g in m.param_groups() for p in g["params"])  # noqa: E731
    assert count(twins) == count(dino)
    opts = [torch.optim.AdamW(m.param_groups(), lr=1e-3) for m in (dino, twins)]
    for step in range(2):  # the second step sees a moved center, an EMA'd teacher and updated weights
        batch = crops_for(seed=step)
        outs = [m(batch, step) for m in (dino, twins)]
        torch.testing.assert_close(outs[1]["loss"], outs[0]["loss"], rtol=1e-6, atol=1e-6)
        for m, opt, out in zip((dino, twins), opts, outs):
            opt.zero_grad()
            out["loss"].backward()
            m.before_optimizer_step(step)
            opt.step()
            m.after_step(step)
    torch.testing.assert_close(twins.dino.loss_fn.center, dino.loss_fn.center)


def test_no_centering_keeps_the_center_at_zero_and_changes_nothing_else():
    base, fixed = tiny(), tiny("--no-centering")
    for step in range(2):  # no optimiser step: the two differ only by their centers
        batch = crops_for(seed=step)
        centered, uncentered = base(batch, step), fixed(batch, step)
        assert torch.equal(fixed.dino.loss_fn.center, torch.zeros(1, 32))
        torch.testing.assert_close(uncentered["bt_loss"], centered["bt_loss"])
        assert uncentered["teacher_temp"] == centered["teacher_temp"]
        if step == 0:  # both centers start at 0
            torch.testing.assert_close(uncentered["dino_loss"], centered["dino_loss"])
    assert base.dino.loss_fn.center.abs().sum() > 0
    # The uncentered loss is DINO's loss with a zero center; the centered one is not.
    crops = crops_for(seed=1)[0]
    dino_ref, _ = reference_parts(fixed, crops, center=torch.zeros(1, 32), epoch=0)
    torch.testing.assert_close(uncentered["dino_loss"], dino_ref)
    assert abs(centered["dino_loss"].item() - dino_ref.item()) > 1e-4


def test_no_sharpening_sets_the_teacher_temperature_to_the_students_and_changes_nothing_else():
    base = tiny("--teacher-temp", "0.04")
    flat = tiny("--teacher-temp", "0.04", "--no-sharpening")
    assert [flat.dino.loss_fn.teacher_temp(e) for e in range(5)] == [0.1] * 5 == [flat.dino.loss_fn.student_temp] * 5
    assert base.dino.loss_fn.teacher_temp(0) == 0.04
    batch = crops_for()
    sharp, soft = base(batch, 0), flat(batch, 0)
    assert soft["teacher_temp"] == 0.1 and sharp["teacher_temp"] == 0.04
    assert soft["teacher_entropy"] > sharp["teacher_entropy"]  # a softer teacher
    torch.testing.assert_close(soft["bt_loss"], sharp["bt_loss"])
    # The center is a mean of the raw teacher outputs: the same with or without sharpening.
    torch.testing.assert_close(flat.dino.loss_fn.center, base.dino.loss_fn.center)
    assert flat.dino.loss_fn.center.abs().sum() > 0


def test_dino_weight_zero_is_pure_barlow_twins_on_the_same_backbone():
    model = tiny("--dino-weight", "0", "--bt-weight", "1")
    assert model.dino is None and model.teacher is None  # no head, no teacher
    assert model.eval_backbone is model.student.backbone
    assert all(n.startswith(("backbone_only.backbone.", "projector.")) for n, _ in model.named_parameters())
    crops, labels = crops_for()
    with torch.no_grad():
        z = [model.projector(model.student.backbone(c)) for c in crops]
        expected = torch.stack([barlow_twins_loss(cross_correlation(z[a], z[b]), 0.005)
                                for a, b in crop_pairs(4)]).mean()
    out = model((crops, labels), 0)
    torch.testing.assert_close(out["loss"], expected)
    assert "teacher_entropy" not in out and "dino_loss" not in out
    out["loss"].backward()
    assert model.student.backbone.patch_embed.proj.weight.grad.abs().sum() > 0
    assert model.projector[0].weight.grad.abs().sum() > 0


# --- gradients and the teacher ------------------------------------------------------------------

def test_gradients_reach_the_student_and_projector_only_and_the_teacher_follows_the_ema():
    model = tiny("--bt-weight", "0.3")
    out = model(crops_for(), 0)
    out["loss"].backward()
    assert not any(p.requires_grad for p in model.teacher.parameters())
    assert all(p.grad is None for p in model.teacher.parameters())
    assert model.student.backbone.patch_embed.proj.weight.grad.abs().sum() > 0
    assert model.student.head.mlp[0].weight.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.projector.parameters())
    in_groups = {id(p) for g in model.param_groups() for p in g["params"]}
    assert not in_groups & {id(p) for p in model.teacher.parameters()}
    assert {id(p) for p in model.projector.parameters()} <= in_groups

    teacher_before = model.teacher.backbone.patch_embed.proj.weight.detach().clone()
    torch.optim.SGD(model.param_groups(), lr=0.5).step()
    model.after_step(0)
    m = model.dino.momentum(0)
    student = model.student.backbone.patch_embed.proj.weight.detach()
    torch.testing.assert_close(model.teacher.backbone.patch_embed.proj.weight, m * teacher_before + (1 - m) * student)
    assert model.eval_backbone is model.teacher.backbone


# --- options ------------------------------------------------------------------------------------

def test_defaults_are_the_original_repositorys_and_documented_in_help():
    args = parse()
    assert (args.bt_weight, args.bt_lambda, args.bt_projector, args.bt_crops) == (0.0025, 0.005, "2048-2048-2048",
                                                                                     "all")
    assert (args.out_dim, args.teacher_temp, args.warmup_teacher_temp, args.warmup_teacher_temp_epochs) == (
        2048, 0.07, 0.04, 10)
    assert (args.momentum_teacher, args.local_crops_number, args.norm_last_layer, args.freeze_last_layer) == (
        0.9995, 3, False, 0)
    assert tuple(args.global_crops_scale) == (0.5, 1.0) and tuple(args.local_crops_scale) == (0.05, 0.5)
    assert (args.lr, args.batch_size, args.epochs, args.image_size, args.weight_decay) == (3e-4, 256, 400, 32, 0.0)
    parser = base_parser("dino_twins", **dt_train.DEFAULTS)
    dt_train.add_arguments(parser)
    text = " ".join(parser.format_help().split())
    for phrase in ("DINO-Twins repository: 0.07", "bt_beta = 0.005 × 0.5 = 0.0025", "original: 0.005",
                   "every pair of the student's crops", "--no-centering", "--no-sharpening"):
        assert phrase in text, phrase
    # min_lr: the original's cosine ends at 0.1 × the peak lr; local crops at the global size
    args = parse(*TINY, "--batch-size", "64", "--lr", "5e-4")
    assert args.local_crops_size is None
    dt_train.build(args, 2)
    assert args.min_lr == pytest.approx(0.1 * 5e-4 * 64 / 256)
    assert args.local_crops_size == args.image_size == 16
    assert "lr × batch/256 (default: 0.0003)" in " ".join(dt_train_help().split())


def dt_train_help() -> str:
    import subprocess
    import sys

    return subprocess.run([sys.executable, "dino_twins/train.py", "--help"], capture_output=True, text=True,
                          check=True, cwd=Path(dt_train.__file__).resolve().parents[1]).stdout


@pytest.mark.parametrize("argv, message", [
    (["--dino-weight", "0", "--bt-weight", "0"], "leave no loss"),
    (["--dino-weight", "0", "--no-centering"], "does not build"),
    (["--bt-weight", "-1"], "--bt-weight must be >= 0"),
    (["--bt-projector", "wide"], "--bt-projector must be layer widths"),
    (["--student-temp", "0"], "--student-temp must be positive"),
])
def test_bad_options_fail_in_one_line(argv, message):
    with pytest.raises(SystemExit) as e:
        dt_train.build(parse(*TINY, *argv), 2)
    text = str(e.value)
    assert text.startswith("error: ") and message in text and "\n" not in text


# --- end to end ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_epochs_on_shapes_lower_the_loss_without_collapse(tmp_path, data_root):
    from common.checkpoint import load_checkpoint
    from common.logging import read_metrics

    argv = ["--data", "shapes", "--data-root", str(data_root), "--out", str(tmp_path), "--arch", "vit_tiny",
            "--patch-size", "8", "--image-size", "16", "--drop-path", "0", "--max-images", "128", "--batch-size", "16",
            "--epochs", "2", "--warmup-epochs", "0", "--warmup-teacher-temp-epochs", "0", "--local-crops-number", "2",
            "--out-dim", "64", "--bt-projector", "64-64", "--lr", "4e-3", "--momentum-teacher", "0.95",
            "--teacher-temp", "0.04", "--norm-last-layer", "--workers", "0", "--eval-every", "0", "--log-every", "1",
            "--device", "cpu", "--resume", "never"]
    summary = dt_train.main(argv)
    assert summary["reason"] == "end" and summary["step"] == 16
    rows = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r]
    losses = [r["loss"] for r in rows]
    assert len(losses) == 16 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.3, losses
    # Neither of DINO's collapse modes (one prototype: entropy → 0; uniform: entropy → ln K), and
    # the features keep a spread (about 1/√192 ≈ 0.07 when spread, 0 when collapsed; 16 steps on
    # the light-on-dark shapes leave about 0.01).
    assert all(0.5 < r["teacher_entropy"] < math.log(64) - 0.5 for r in rows)
    assert rows[-1]["feature_std"] > 0.005 and rows[-1]["z_std"] > 0.05
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt", method="dino_twins")
    assert ckpt["step"] == 16 and ckpt["args"]["bt_weight"] == 0.0025
    # The evaluated backbone is the teacher's; the projector and the center are resumable state.
    teacher = {k[len("dino.teacher.backbone."):]: v for k, v in ckpt["model"].items()
               if k.startswith("dino.teacher.backbone.")}
    assert teacher.keys() == ckpt["backbone"].keys()
    assert all(torch.equal(teacher[k], ckpt["backbone"][k]) for k in teacher)
    assert "dino.loss_fn.center" in ckpt["model"] and any(k.startswith("projector.") for k in ckpt["model"])
    assert (tmp_path / "cross_correlation_epoch0001.png").exists()
    assert (tmp_path / "cross_correlation_epoch0002.png").exists()


# --- the benchmark ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compare():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_dino_twins.py"
    spec = importlib.util.spec_from_file_location("compare_dino_twins", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_trains_every_method_on_equal_terms(compare):
    import barlow_twins.train as bt_train
    import dino.train as dino_train

    bench = compare.parse(["--seeds", "0", "1", "--epochs", "30", "--batch-size", "64", "--arch", "resnet50"])
    assert bench.warmup_epochs == 3 and bench.data == "cifar10"
    resolved = {}
    for name, module, defaults in (("dino", dino_train, dino_train.DEFAULTS),
                                   ("barlow_twins", bt_train, bt_train.DEFAULTS),
                                   ("dino_twins", dt_train, dt_train.DEFAULTS)):
        parser = base_parser(name, **defaults)
        module.add_arguments(parser)
        argv = compare.train_argv(bench, name, compare.variants(bench.bt_projector)[name][1], 1, Path("r") / name)
        resolved[name] = vars(parse_args(parser, argv))
    shared = ("data", "data_root", "arch", "image_size", "batch_size", "epochs", "warmup_epochs", "seed", "eval_every")
    for key in shared:
        assert resolved["dino"][key] == resolved["barlow_twins"][key] == resolved["dino_twins"][key], key
    # DINO trains with DINO-Twins' DINO options and optimiser, as the DINO-Twins comparison did,
    # local crops included: resized to the global 32 px, not dino/train.py's own 16 px.
    assert resolved["dino"]["local_crops_size"] == resolved["dino_twins"]["local_crops_size"] == 32
    for key in (*dt_train.ORIGINAL_DINO, "lr", "optimizer", "weight_decay",
                "weight_decay_end", "clip_grad", "drop_path", "warmup_teacher_temp_epochs"):
        same = [tuple(v) if isinstance(v, (list, tuple)) else v for v in (resolved["dino"][key],
                                                                           resolved["dino_twins"][key])]
        assert same[0] == same[1], key
    assert resolved["dino"]["min_lr"] == pytest.approx(0.1 * 3e-4 * 64 / 256)
    assert resolved["barlow_twins"]["projector"] == resolved["dino_twins"]["bt_projector"] == "2048-2048-2048"
    assert resolved["barlow_twins"]["optimizer"] == "lars"  # its own paper recipe otherwise
    small = compare.parse(["--local-crops-size", "16"])  # the CPU miniature's: both methods alike
    for name in ("dino", "dino_twins"):
        argv = compare.train_argv(small, name, compare.variants(small.bt_projector)[name][1], 0, Path("r"))
        assert argv[argv.index("--local-crops-size") + 1] == "16" and argv.count("--local-crops-size") == 1
    with pytest.raises(SystemExit, match="--local-crops-size 40 must be between 8 and --image-size 32"):
        compare.parse(["--local-crops-size", "40"])


def test_benchmark_table_is_mean_and_sample_std_over_seeds(compare):
    assert compare.mean_std([70.0, 72.0, 74.0]) == {"mean": 72.0, "std": 2.0, "n": 3}
    assert compare.mean_std([5.0]) == {"mean": 5.0, "std": None, "n": 1}
    results = {"dino_twins": {"description": "DINO-Twins", "knn_top1": compare.mean_std([60.0, 62.0]),
                              "linear_top1": compare.mean_std([80.0, 84.0]),
                              "runs": [{"seed": 0}, {"seed": 1}, {"seed": 2, "error": "NaN"}]}}
    settings = dict(data="cifar10", arch="resnet50", patch_size=4, image_size=32, batch_size=256, epochs=100,
                    seeds=[0, 1, 2])
    table = compare.markdown_table(results, settings)
    assert "| DINO-Twins | 61.0 ± 1.4 | 82.0 ± 2.8 | 2 (1 failed) | 85.3 % |" in table
