"""results.json and the Reading of REPORT.md on a hand-made manifest: every record has every key,
null where a value does not apply or its step failed, with the test count of each accuracy; the
tables are rendered from the records; the verdict on known numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from test_report import add_step

from eval import pipeline, report

ARCHS = {"byol": "resnet18", "dino": "vit_tiny", "jigsaw": "resnet18"}


def fake_manifest(tmp_path: Path) -> dict:
    """BYOL (ResNet) that learned, DINO (ViT) that did not, Jigsaw with a failed fine-tuning; the
    baselines of both backbones and the raw pixels at 16 px; one seed."""
    steps = []

    def step(id_, row, kind, status="ok", result=None, files=None):
        add_step(steps, tmp_path, id_, row, kind, 0, status, result, files, wall_s=2.0,
                 command=f"python eval/{kind}.py --for {id_}")

    def knn(top1, n=500):
        return {"top1": top1, "by_k": {"20": {"top1": top1}}, "n_test": n, "n_train": 1000, "num_classes": 10,
                "image_size": 16}

    def linear(p10, p100):
        return {"by_label_fraction": {"0.1": {"top1": p10}, "1": {"top1": p100}}, "n_test": 500, "image_size": 16}

    tsne = {"checkpoints": [{"silhouette_cosine": -0.1, "n_points": 500}, {"silhouette_cosine": 0.3, "n_points": 500}]}
    metrics = "\n".join(json.dumps(r) for r in ({"step": 10, "epoch": 1, "loss": 3.0, "perm_acc": 20.0},
                                                 {"step": 32, "epoch": 1, "val_loss": 2.5, "val_perm_acc": 37.5}))
    step("byol/s0/train", "byol", "train")
    step("byol/s0/knn", "byol", "knn", result=knn(80.0))
    step("byol/s0/linear", "byol", "linear", result=linear(70.0, 75.0))
    step("byol/s0/finetune", "byol", "finetune", result={"top1": 78.0, "n_test": 500})
    step("byol/s0/tsne", "byol", "tsne", result=tsne)
    step("dino/s0/train", "dino", "train")
    step("dino/s0/knn", "dino", "knn", result=knn(52.0))
    step("dino/s0/jaccard", "dino", "jaccard", result={"jaccard": 30.0, "n_images": 200,
                                                       "rows": {"random_init": {"dino_best_head": 20.0}}})
    step("jigsaw/s0/train", "jigsaw", "train", files={"metrics.jsonl": metrics,
                                                      "config.json": json.dumps({"args": {"num_permutations": 24}})})
    step("jigsaw/s0/knn", "jigsaw", "knn", result=knn(30.0))
    step("jigsaw/s0/finetune", "jigsaw", "finetune", status="failed")
    for arch, top1 in (("resnet18", 40.0), ("vit_tiny", 45.0)):
        step(f"baselines/{arch}/s0/knn", f"random init {arch}", "knn", result=knn(top1))
        step(f"baselines/{arch}/s0/scratch", f"supervised {arch}", "scratch", result={"top1": 60.0, "n_test": 500})
    step("baselines/pixels16/s0/knn", "raw pixels", "knn", result=knn(50.0))
    step("baselines/pixels16/s0/linear", "raw pixels", "linear", status="failed")
    methods = list(ARCHS)
    return {"command": "./run_all.sh --methods byol dino jigsaw", "profile": "smoke", "methods": methods, "seeds": [0],
            "runs": str(tmp_path), "data": "shapes", "eval_data": "shapes", "mask_data": "shapes", "device": "cpu",
            "launcher": "fork", "started": "now", "wall_s": 12.5, "host": {},
            "settings": {"common_train": "--epochs 1", "train": {m: [a, ""] for m, a in ARCHS.items()},
                         "eval": {}, "protocol": pipeline.PROTOCOL},
            "steps": steps}


@pytest.fixture
def written(tmp_path):
    manifest = fake_manifest(tmp_path)
    md = report.write_report(manifest, tmp_path / "reports").read_text()
    return md, json.loads((tmp_path / "reports" / "results.json").read_text())


def record(results: dict, method: str) -> dict:
    found = [r for r in results["records"] if r["method"] == method]
    assert len(found) == 1, method
    return found[0]


def test_results_json_has_every_key_with_nulls_and_test_counts(written):
    _, results = written
    assert "percent" in results["units"]
    assert results["profile"] == "smoke" and results["wall_s"] == 12.5 and results["seeds"] == [0]
    assert results["command"].startswith("./run_all.sh") and "byol/s0/knn" in results["commands"]
    assert results["settings"]["protocol"] == pipeline.PROTOCOL
    names = [r["method"] for r in results["records"]]
    assert names == ["dino", "byol", "jigsaw", "random init vit_tiny", "supervised vit_tiny", "random init resnet18",
                     "supervised resnet18", "raw pixels"]  # the report's method order, then the baselines
    for r in results["records"]:
        assert set(report.RECORD_KEYS) <= set(r), r["method"]
    byol = record(results, "byol")
    assert (byol["backbone"], byol["seed"], byol["knn_top1"], byol["linear_10"], byol["linear_100"]) == \
        ("resnet18", 0, 80.0, 70.0, 75.0)
    assert byol["finetune_20"] == 78.0 and byol["scratch_20"] == 60.0  # scratch: the same backbone's baseline
    assert byol["tsne_silhouette_first"] == -0.1 and byol["tsne_silhouette_last"] == 0.3
    assert byol["jaccard_best_head"] is None and byol["pretext"] is None  # do not apply to BYOL on a ResNet
    assert byol["n_test"] == {"knn_top1": 500, "linear_10": 500, "linear_100": 500, "finetune_20": 500,
                              "scratch_20": 500, "tsne_silhouette_first": 500, "tsne_silhouette_last": 500}
    assert byol["missing"] == {} and byol["image_size"] == 16
    dino = record(results, "dino")
    assert dino["jaccard_best_head"] == 30.0 and dino["n_test"]["jaccard_best_head"] == 200
    assert dino["linear_10"] is None and "linear_10" not in dino["missing"]  # not planned here: no status
    jigsaw = record(results, "jigsaw")
    assert jigsaw["finetune_20"] is None and jigsaw["missing"] == {"finetune_20": "failed"}
    assert jigsaw["pretext"]["value"] == 37.5 and jigsaw["pretext"]["split"] == "held-out"  # not the training batch
    assert jigsaw["pretext"]["chance"] == pytest.approx(100 / 24)
    assert record(results, "random init vit_tiny")["jaccard_best_head"] == 20.0  # scored by the DINO run
    assert record(results, "random init resnet18")["jaccard_best_head"] is None
    assert record(results, "supervised resnet18")["scratch_20"] == 60.0
    pixels = record(results, "raw pixels")
    assert pixels["backbone"] is None and pixels["image_size"] == 16 and pixels["knn_top1"] == 50.0
    assert pixels["missing"] == {"linear_10": "failed", "linear_100": "failed"}


def test_reading_comes_first_with_one_verdict_per_method(written):
    md, _ = written
    assert md.index("## Reading") < md.index("## Results")
    lines = md.splitlines()
    verdicts = {m: next(ln for ln in lines if ln.startswith(f"- **{report.TITLES[m]}**")) for m in ARCHS}
    # BYOL: 80 vs max(random init 40, raw pixels 50) = 50; noise 1.96·√(.8·.2/500 + .5·.5/500) = 5.6 points
    assert verdicts["byol"] == ("- **BYOL** (baseline: raw pixels at 16 px): learned: kNN 80.0 % vs baseline "
                                "50.0 % (margin 30.0 points, noise ±5.6)")
    # DINO: 52 vs 50 (raw pixels beats its random ViT, 45)
    assert verdicts["dino"] == ("- **DINO** (baseline: raw pixels at 16 px): not distinguishable from its "
                                "baseline: kNN 52.0 % vs baseline 50.0 % (margin 2.0 points, noise ±6.2)")
    assert verdicts["jigsaw"].startswith("- **Jigsaw** (baseline: raw pixels at 16 px): below its baseline")
    byol_row = next(ln for ln in lines if ln.startswith("| BYOL (resnet18) |"))
    assert "80.0 ± 3.5 (n = 500)" in byol_row  # 1.96·√(.8·.2/500) = 3.51
    assert "78.0 / 60.0" in byol_row and "-0.10 → 0.30" in byol_row
    dino_row = next(ln for ln in lines if ln.startswith("| DINO (vit_tiny) |"))
    assert "30.0 / 20.0" in dino_row  # Jaccard against the random ViT
    assert "permutation accuracy 37.5 % (chance 4.2 %, held-out)" in md


def test_tables_are_rendered_from_the_records(tmp_path):
    class Edited(report.Report):
        def records(self):
            rows = super().records()
            next(r for r in rows if r["method"] == "byol")["knn_top1"] = 99.0  # only results.json says so
            return rows

    md = Edited(fake_manifest(tmp_path), tmp_path / "reports").write().read_text()
    assert record(json.loads((tmp_path / "reports" / "results.json").read_text()), "byol")["knn_top1"] == 99.0
    row = next(ln for ln in md.splitlines() if ln.startswith("| BYOL | resnet18 |"))
    assert row.split("|")[3].strip() == "99.0"
    assert "| raw pixels (baseline) | 16 px | 50.0 | *failed* | *failed* |" in md
    assert "| random init (baseline) | vit_tiny | 45.0 |" in md


def summary(*values, n=500):
    return report.summarise([{"knn_top1": v, "n_test": {"knn_top1": n}} for v in values], "knn_top1")


def test_noise_band_and_verdict_on_known_numbers():
    s = summary(80.0)
    assert s["binomial_se"] == pytest.approx(100 * math.sqrt(0.8 * 0.2 / 500)) and s["std"] is None
    assert s["se"] == pytest.approx(s["binomial_se"])
    two = summary(60.0, 64.0)  # the seed std of the mean joins the binomial error (same test queries)
    assert two["mean"] == 62.0 and two["std"] == pytest.approx(math.sqrt(8))
    assert two["se"] == pytest.approx(math.sqrt(100 ** 2 * 0.62 * 0.38 / 500 + 8 / 2))
    assert report.verdict(summary(80.0), summary(50.0)) == \
        "learned: kNN 80.0 % vs baseline 50.0 % (margin 30.0 points, noise ±5.6)"
    assert report.verdict(summary(52.0), summary(50.0)).startswith("not distinguishable from its baseline")
    # the same 4-point margin is noise on 100 queries and signal on 20000
    assert report.verdict(summary(54.0, n=100), summary(50.0, n=100)).startswith("not distinguishable")
    assert report.verdict(summary(54.0, n=20000), summary(50.0, n=20000)).startswith("learned")
    assert report.verdict(summary(40.0), summary(60.0)).startswith("below its baseline")
    assert report.verdict(None, summary(50.0)) == "no kNN result"
    assert report.verdict(summary(50.0), None) == "no baseline result to compare with"
    assert report.summarise([{"knn_top1": None, "n_test": {}}], "knn_top1") is None


def test_colorization_stands_beside_the_random_lightness_network(tmp_path):
    """The Reading judges Colorization against the random network it started from, the one that sees
    L only (`random init cnn_tiny-L`), and its fine-tuning against that network from scratch."""
    steps = []

    def step(id_, row, kind, result=None):
        add_step(steps, tmp_path, id_, row, kind, 0, "ok", result, wall_s=2.0)

    def knn(top1):
        return {"top1": top1, "n_test": 1000, "n_train": 5000, "num_classes": 10, "image_size": 32}

    for method, top1 in (("barlow_twins", 57.0), ("colorization", 23.0)):
        step(f"{method}/s0/train", method, "train")
        step(f"{method}/s0/knn", method, "knn", knn(top1))
        step(f"{method}/s0/finetune", method, "finetune", {"top1": 90.0, "n_test": 1000})
    for base, top1, scratch in (("cnn_tiny", 26.0, 89.0), ("cnn_tiny-L", 45.6, 80.0)):
        step(f"baselines/{base}/s0/knn", f"random init {base}", "knn", knn(top1))
        step(f"baselines/{base}/s0/scratch", f"supervised {base}", "scratch", {"top1": scratch, "n_test": 1000})
    step("baselines/pixels32/s0/knn", "raw pixels", "knn", knn(35.0))
    train = {"barlow_twins": ["cnn_tiny", ""], "colorization": ["cnn_tiny", ""]}
    manifest = {"command": "./run_all.sh --profile cpu", "profile": "cpu", "methods": list(train), "seeds": [0],
                "runs": str(tmp_path), "data": "shapes", "eval_data": "shapes", "mask_data": "shapes",
                "device": "cpu", "launcher": "fork", "started": "now", "wall_s": 1.0, "host": {},
                "settings": {"common_train": "", "train": train, "eval": {}, "protocol": pipeline.PROTOCOL,
                             "baselines": {"barlow_twins": "cnn_tiny", "colorization": "cnn_tiny-L"}},
                "steps": steps}
    md = report.write_report(manifest, tmp_path / "reports").read_text()
    records = {(r["method"], r["backbone"]): r
               for r in json.loads((tmp_path / "reports" / "results.json").read_text())["records"]}
    assert records[("colorization", "cnn_tiny")]["scratch_20"] == 80.0
    assert records[("barlow_twins", "cnn_tiny")]["scratch_20"] == 89.0
    assert records[("random init cnn_tiny-L", "cnn_tiny-L")]["knn_top1"] == 45.6
    assert "| Colorization (cnn_tiny) | 23.0 ± 2.6 (n = 1000) | 45.6 ± 3.1 | 35.0 ± 3.0 |" in md
    assert "- **Colorization** (baseline: random init cnn_tiny-L): below its baseline: kNN 23.0 %" in md
    assert "- **Barlow Twins** (baseline: raw pixels at 32 px): learned" in md
    assert "| random init (baseline) | cnn_tiny-L | 45.6 |" in md


def test_a_method_on_a_second_backbone_is_a_row_of_its_own(tmp_path):
    """DINO-Twins on cnn_tiny (its profile backbone) and on vit_micro (ALSO): one record each, both
    in the tables, the ViT's Jaccard judged against the random ViT with the noise over images."""
    steps = []

    def step(id_, row, kind, result=None):
        add_step(steps, tmp_path, id_, row, kind, 0, "ok", result, wall_s=2.0)

    def knn(top1):
        return {"top1": top1, "n_test": 1000, "n_train": 5000, "num_classes": 10, "image_size": 32}

    step("dino_twins/s0/train", "dino_twins", "train")
    step("dino_twins/s0/knn", "dino_twins", "knn", knn(60.0))
    step("dino_twins/vit_micro/s0/train", "dino_twins vit_micro", "train")
    step("dino_twins/vit_micro/s0/knn", "dino_twins vit_micro", "knn", knn(24.0))
    rows = {"checkpoint": {"dino_best_head": 46.0, "dino_best_head_se": 1.2},
            "random_init": {"dino_best_head": 29.7, "dino_best_head_se": 1.0}}
    step("dino_twins/vit_micro/s0/jaccard", "dino_twins vit_micro", "jaccard",
         {"jaccard": 46.0, "n_images": 200, "rows": rows})
    for arch, top1 in (("cnn_tiny", 26.0), ("vit_micro", 15.0)):
        step(f"baselines/{arch}/s0/knn", f"random init {arch}", "knn", knn(top1))
    step("baselines/pixels32/s0/knn", "raw pixels", "knn", knn(35.0))
    manifest = {"command": "./run_all.sh --profile cpu", "profile": "cpu", "methods": ["dino_twins"], "seeds": [0],
                "runs": str(tmp_path), "data": "shapes", "eval_data": "shapes", "mask_data": "shapes",
                "device": "cpu", "launcher": "fork", "started": "now", "wall_s": 1.0, "host": {},
                "settings": {"common_train": "--epochs 10", "train": {"dino_twins": ["cnn_tiny", "--epochs 14"]},
                             "also": {"dino_twins": ["vit_micro", "--epochs 6"]}, "eval": {},
                             "protocol": pipeline.PROTOCOL},
                "steps": steps}
    md = report.write_report(manifest, tmp_path / "reports").read_text()
    records = json.loads((tmp_path / "reports" / "results.json").read_text())["records"]
    assert [(r["method"], r["backbone"]) for r in records] == [
        ("dino_twins", "cnn_tiny"), ("dino_twins", "vit_micro"), ("random init cnn_tiny", "cnn_tiny"),
        ("supervised cnn_tiny", "cnn_tiny"), ("random init vit_micro", "vit_micro"),
        ("supervised vit_micro", "vit_micro"), ("raw pixels", None)]
    cnn, vit, random_vit = records[0], records[1], records[4]
    assert (cnn["knn_top1"], cnn["jaccard_best_head"], vit["knn_top1"]) == (60.0, None, 24.0)
    assert (vit["jaccard_best_head"], vit["jaccard_best_head_se"]) == (46.0, 1.2)
    assert (random_vit["jaccard_best_head"], random_vit["jaccard_best_head_se"]) == (29.7, 1.0)
    assert "| DINO-Twins | cnn_tiny | 60.0 |" in md and "| DINO-Twins | vit_micro | 24.0 |" in md
    assert "| DINO-Twins | vit_micro | `--epochs 14 --epochs 6` |" in md  # Settings: its options on top
    # kNN: 24 trails the raw pixels' 35; attention: 46.0 vs 29.7, noise 1.96·√(1.2² + 1.0²) = 3.1
    assert "- **DINO-Twins vit_micro** (baseline: raw pixels at 32 px): below its baseline" in md
    assert ("- **DINO-Twins vit_micro**, attention (best head's 60 % mask against the ground truth; baseline: "
            "the random vit_micro; noise: the standard error over images): learned: Jaccard 46.0 % vs baseline "
            "29.7 % (margin 16.3 points, noise ±3.1)") in md
    assert "Not applicable to DINO-Twins (cnn_tiny): a convolutional backbone has no self-attention." in md
