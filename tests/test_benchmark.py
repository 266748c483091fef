"""benchmarks/ssl_benchmark.py: the throughput arithmetic on hand-made cases, the markdown table
update, and the smoke recipe end to end (BYOL, 16 px, 32 CIFAR-10 images, 2 steps)."""

import importlib.util
import json
import math
from argparse import Namespace
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("ssl_benchmark", REPO / "benchmarks" / "ssl_benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ideal_ratio_ratio_and_efficiency_by_hand(bench):
    # BYOL at S = 16: 2 online views (1 each) + 2 target forwards (1/3 each) = 8/3 -> ideal 3/8.
    byol = bench.method_views("byol", Namespace(image_size=16))
    assert bench.ideal_ratio(byol, 16) == pytest.approx(3 / 8)
    # Barlow Twins: both views with gradients -> 1/2.
    assert bench.ideal_ratio(bench.method_views("barlow_twins", Namespace(image_size=32)), 32) == pytest.approx(0.5)
    # DINO ViT-S/16 at 224 with 6 local crops of 96 px: 2 + 6·(96/224)² + 2/3 = 2 + 54/49 + 2/3.
    dino = bench.method_views("dino", Namespace(image_size=224, local_crops_number=6))
    assert [(v["side"], v["grad"], v["count"]) for v in dino] == [(224, True, 2), (96, True, 6), (224, False, 2)]
    assert bench.ideal_ratio(dino, 224) == pytest.approx(1 / (2 + 54 / 49 + 2 / 3))
    # DINO-Twins without the DINO term has no teacher: 2 global + 2 local 16 px crops at S = 32.
    twins = bench.method_views("dino_twins", Namespace(image_size=32, local_crops_number=2, dino_weight=0.0))
    assert bench.ideal_ratio(twins, 32) == pytest.approx(1 / (2 + 2 * 0.25))
    # 30 source img/s against a 120 img/s backbone: ratio 1/4; against ideal 3/8, efficiency 2/3.
    r = bench.throughput_ratios(30.0, 120.0, 3 / 8)
    assert (r["ratio"], r["ideal_ratio"]) == (pytest.approx(0.25), 3 / 8)
    assert r["efficiency"] == pytest.approx(2 / 3)


def test_train_throughput_skips_the_warm_up(bench):
    # 100 steps logged every 10, 50 per epoch: the warm-up is min(1 epoch, 10 % of 100) = 10 steps,
    # so the row at step 10 (interval 0-10) is dropped and the kNN row (no img_per_s) is ignored.
    rows = [{"step": s, "img_per_s": 1000.0 if s == 10 else float(s)} for s in range(10, 101, 10)]
    rows.insert(5, {"step": 50, "epoch": 1, "knn_top1": 40.0})
    tp = bench.train_throughput(rows, steps_per_epoch=50)
    assert tp == {"img_per_s": 60.0, "rows": 9, "warmup_steps_excluded": 10, "steps": 100}
    # A run too short to have rows after the warm-up falls back to every row.
    assert bench.train_throughput([{"step": 1, "img_per_s": 4.0}], 2)["img_per_s"] == 4.0
    with pytest.raises(ValueError, match="img_per_s"):
        bench.train_throughput([{"step": 1, "knn_top1": 3.0}], 2)


def test_argv_overrides_and_extra_arguments(bench):
    opts = bench.build_parser().parse_args(["--method", "barlow_twins", "--recipe", "cpu", "--epochs", "3",
                                            "--data-root", "d", "--out", "o"])
    train, b, run_dir, argv = bench.resolve(opts, ["--lambd", "0.01"])
    assert train["epochs"] == 3 and train["batch_size"] == 128 and b["bench_iters"] == 10
    assert run_dir == Path("o") and argv[-2:] == ["--lambd", "0.01"]
    assert argv[argv.index("--epochs") + 1] == "3" and argv[argv.index("--resume") + 1] == "never"
    assert bench.to_argv({"use_bn_in_head": True, "norm_last_layer": False, "scale": (0.4, 1.0), "x": None}) == [
        "--use-bn-in-head", "--no-norm-last-layer", "--scale", "0.4", "1.0"]


def test_doc_rows_are_replaced_by_key_and_appended_otherwise(bench, tmp_path):
    doc = tmp_path / "bench.md"
    n = len(bench.DOC_COLUMNS)
    first = ["cpu", "CPU 2 cores", "resnet18 16 px"] + ["1"] * (n - 3)
    bench.update_doc(doc, "byol", first)
    bench.update_doc(doc, "byol", first[:3] + ["2"] * (n - 3))  # same key: replaced
    bench.update_doc(doc, "byol", ["gpu", "H100", "resnet50 224 px"] + ["3"] * (n - 3))  # new key: appended
    bench.update_doc(doc, "dino", first)  # another method: its own section
    lines = doc.read_text().splitlines()
    byol = lines.index("### byol")
    assert lines[byol + 2] == bench._table_line(bench.DOC_COLUMNS)
    assert lines[byol + 4] == bench._table_line(first[:3] + ["2"] * (n - 3))
    assert lines[byol + 5].startswith("| gpu | H100 |")
    assert lines[lines.index("### dino") + 4] == bench._table_line(first)
    assert sum(line.startswith("| cpu |") for line in lines) == 2

    # A section heading written by hand, without a table yet, gets the table under it.
    doc.write_text("# B\n\n### barlow_twins\n\n## Notes\n")
    bench.update_doc(doc, "barlow_twins", first)
    assert doc.read_text().splitlines() == ["# B", "", "### barlow_twins", "", bench._table_line(bench.DOC_COLUMNS),
                                            bench._table_line(["---"] * n), bench._table_line(first), "", "## Notes"]


def test_smoke_recipe_end_to_end(bench, shared_data, tmp_path):
    out, doc = tmp_path / "run", tmp_path / "bench.md"
    r = bench.main(["--method", "byol", "--recipe", "smoke", "--data", "cifar10", "--data-root",
                    str(shared_data / "cifar10-subset"), "--device", "cpu", "--out", str(out), "--doc", str(doc)])
    saved = json.loads((out / "benchmark.json").read_text())
    assert saved["method"] == "byol" and saved["recipe"] == "smoke" and saved["steps"] == 2
    for key in ("args", "environment", "hardware", "wall_time_s", "train_wall_time_s", "throughput", "knn",
                "knn_by_epoch", "views", "train_command", "recipe_settings"):
        assert key in saved, key
    assert saved["args"]["image_size"] == 16 and saved["args"]["batch_size"] == 16
    assert saved["environment"]["torch"] and saved["hardware"]["device"] == "cpu"

    tp = saved["throughput"]
    assert tp["train"]["img_per_s"] > 0 and tp["backbone"]["img_per_s"] > 0
    assert tp["backbone"]["batch_size"] == 16 and tp["backbone"]["timed_iters"] == 2
    assert tp["ratio"] == pytest.approx(tp["train"]["img_per_s"] / tp["backbone"]["img_per_s"])
    assert tp["ideal_ratio"] == pytest.approx(3 / 8)
    assert tp["efficiency"] == pytest.approx(tp["ratio"] / tp["ideal_ratio"])

    knn = saved["knn"]
    assert knn["protocol"]["k"] == 20 and knn["protocol"]["T"] == 0.07
    assert knn["trained"]["step"] == 2 and knn["random_init"]["step"] == 0
    assert set(knn["raw_pixels"]) == {"16", "32"}  # the training size and CIFAR's native size
    for result in (knn["trained"], knn["random_init"], *knn["raw_pixels"].values()):
        assert 0 <= result["knn_top1"] <= result["knn_top5"] <= 100
        assert math.isclose(result["knn_top1"] * 32 / 100, round(result["knn_top1"] * 32 / 100))  # 32 queries
    assert [e["epoch"] for e in saved["knn_by_epoch"]] == [1]
    assert r["knn"]["trained"]["knn_top1"] == knn["trained"]["knn_top1"]
    row = next(line for line in doc.read_text().splitlines() if line.startswith("| smoke |"))
    assert f"| {tp['ratio']:.3f} | 0.375 |" in row
