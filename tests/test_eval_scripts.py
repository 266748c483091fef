"""Every eval script end to end on tiny checkpoints and the embedded `shapes` data (16 px images,
about a hundred images, one or two epochs): JSON written and printed, PNG written, caches reused,
numbers consistent with the library functions, one-line errors on bad checkpoints."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common.backbones import build_backbone
from common.checkpoint import save_checkpoint
from common.datasets import build_dataset
from eval import attention, finetune, jaccard, knn, linear, retrieval, tsne
from eval.features import subset_indices
from eval.knn import knn_accuracy

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpts(module_tmp):
    """A ViT-tiny/8 and a ResNet-18 at 16 px in the common checkpoint format (random weights)."""
    folder = module_tmp("ckpts")
    paths = {}
    for arch, method in (("vit_tiny", "dino"), ("resnet18", "byol")):
        torch.manual_seed(0)
        net = build_backbone(arch, image_size=16, patch_size=8)
        paths[arch] = folder / f"{arch}.pt"
        save_checkpoint({"method": method, "arch": arch, "backbone_kwargs": net.kwargs,
                         "backbone": net.state_dict(), "epoch": 3, "step": 30,
                         "args": {"image_size": 16, "data": "shapes"}}, paths[arch])
    return paths


def run(main, argv, capsys) -> dict:
    """main(argv) in-process; checks that the last stdout line is the JSON written to --out."""
    result = main([str(a) for a in argv])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == json.loads(json.dumps(result))
    return result


def expected_labelled(data_root, max_train, fraction):
    targets = np.asarray(build_dataset("shapes", data_root, "train").targets)[subset_indices(5000, max_train)]
    return sum(max(1, round(fraction * n)) for n in np.bincount(targets) if n)


def common_args(ckpt, data_root, out):
    return ["--checkpoint", ckpt, "--data", "shapes", "--data-root", data_root, "--out", out, "--device", "cpu"]


def test_knn_script_as_a_subprocess_then_from_the_cache(ckpts, data_root, tmp_path, capsys):
    argv = common_args(ckpts["vit_tiny"], data_root, tmp_path) + ["--max-train", 100, "--max-test", 40,
                                                                    "--k", 5, 20]
    env = {**os.environ, "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, "eval/knn.py", *map(str, argv)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert printed == json.loads((tmp_path / "knn.json").read_text())
    assert (tmp_path / "knn.png").stat().st_size > 0
    assert printed["protocol"]["T"] == 0.07 and printed["protocol"]["k"] == [5, 20]
    assert printed["n_train"] == 100 and printed["n_test"] == 40 and printed["num_classes"] == 10
    assert printed["method"] == "dino" and printed["arch"] == "vit_tiny" and printed["image_size"] == 16
    assert printed["top1"] == printed["by_k"]["20"]["top1"]

    cache = sorted((tmp_path / "features").glob("*.pt"))
    assert len(cache) == 2
    stamps = [p.stat().st_mtime_ns for p in cache]
    again = run(knn.main, argv, capsys)  # in-process, features from the cache
    assert [p.stat().st_mtime_ns for p in sorted((tmp_path / "features").glob("*.pt"))] == stamps
    assert again["by_k"] == printed["by_k"]
    # the numbers are knn_accuracy of the cached features
    train = torch.load(next(p for p in cache if "-train-" in p.name))
    test = torch.load(next(p for p in cache if "-test-" in p.name))
    top1, top5 = knn_accuracy(train["features"], train["labels"], test["features"], test["labels"], 5,
                              num_classes=10)
    assert (again["by_k"]["5"]["top1"], again["by_k"]["5"]["top5"]) == pytest.approx((top1, top5))


def test_linear_script_label_fractions_and_augment(ckpts, data_root, tmp_path, capsys):
    base = common_args(ckpts["vit_tiny"], data_root, tmp_path) + ["--max-train", 100, "--max-test", 40]
    r = run(linear.main, base + ["--label-fraction", 0.1, 1.0, "--epochs", 3], capsys)
    assert set(r["by_label_fraction"]) == {"0.1", "1"}
    assert r["by_label_fraction"]["0.1"]["n_labelled"] == expected_labelled(data_root, 100, 0.1)
    assert r["by_label_fraction"]["1"]["n_labelled"] == 100
    assert r["top1"] == r["by_label_fraction"]["1"]["top1"] and 0 <= r["top1"] <= r["top5"] <= 100
    assert r["protocol"]["epochs"] == 3 and r["protocol"]["augment"] is False
    assert len(r["curves"]["1"]["train_loss"]) == 3
    assert (tmp_path / "linear.json").exists() and (tmp_path / "linear.png").exists()
    r = run(linear.main, base + ["--label-fraction", 0.2, "--epochs", 1, "--augment", "--weight-decay", 1e-4],
            capsys)
    assert r["protocol"]["augment"] is True and r["by_label_fraction"]["0.2"]["weight_decay"] == 1e-4
    assert (tmp_path / "linear-augment.json").exists() and (tmp_path / "linear-augment.png").exists()


def test_finetune_script_pretrained_and_from_scratch(ckpts, data_root, tmp_path, capsys):
    base = common_args(ckpts["vit_tiny"], data_root, tmp_path) + [
        "--max-train", 60, "--max-test", 20, "--label-fraction", 0.2, "--epochs", 1, "--train-batch-size", 8]
    pre = run(finetune.main, base, capsys)
    scratch = run(finetune.main, base + ["--from-scratch"], capsys)
    assert pre["from_scratch"] is False and scratch["from_scratch"] is True
    for r, name in ((pre, "finetune-pretrained-0.2"), (scratch, "finetune-scratch-0.2")):
        assert r["n_labelled"] == expected_labelled(data_root, 60, 0.2)
        assert r["n_test"] == 20 and 0 <= r["top1"] <= 100
        assert r["protocol"]["epochs"] == 1 and r["protocol"]["label_fraction"] == 0.2
        assert (tmp_path / f"{name}.json").exists() and (tmp_path / f"{name}.png").exists()
        assert r["curve"]["knn_top1"] == [r["knn_top1"]] and 0 <= r["knn_top1"] <= 100


def test_finetune_knn_is_eval_knn_of_the_backbone(ckpts, data_root, tmp_path, capsys):
    # lr 0 and a ViT (no BatchNorm statistics to move): the backbone leaves fine-tuning unchanged, so
    # its kNN must be eval/knn.py's on the checkpoint, to the digit.
    base = common_args(ckpts["vit_tiny"], data_root, tmp_path) + ["--max-train", 60, "--max-test", 20]
    tuned = run(finetune.main, base + ["--label-fraction", 1, "--epochs", 1, "--train-batch-size", 30,
                                       "--lr", 0, "--min-lr", 0, "--warmup-epochs", 0], capsys)
    frozen = run(knn.main, base + ["--k", 20], capsys)
    assert tuned["knn_top1"] == frozen["top1"]


def test_tsne_script_side_by_side(ckpts, data_root, tmp_path, capsys):
    r = run(tsne.main, common_args(ckpts["vit_tiny"], data_root, tmp_path)[:2] + [ckpts["resnet18"]]
            + common_args(ckpts["vit_tiny"], data_root, tmp_path)[2:]
            + ["--max-test", 40, "--titles", "ViT", "ResNet"], capsys)
    assert [c["title"] for c in r["checkpoints"]] == ["ViT", "ResNet"]
    assert [c["arch"] for c in r["checkpoints"]] == ["vit_tiny", "resnet18"]
    assert all(c["n_points"] == 40 and -1 <= c["silhouette_cosine"] <= 1 for c in r["checkpoints"])
    assert (tmp_path / "tsne.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="one title per checkpoint"):
        tsne.main(list(map(str, common_args(ckpts["vit_tiny"], data_root, tmp_path))) + ["--titles", "a", "b"])
    with pytest.raises(SystemExit, match="at least 2 labelled test images .* got 1; raise --max-test") as e:
        tsne.main(list(map(str, common_args(ckpts["vit_tiny"], data_root, tmp_path))) + ["--max-test", "1"])
    assert "\n" not in str(e.value)


def test_retrieval_script(ckpts, data_root, tmp_path, capsys):
    r = run(retrieval.main, common_args(ckpts["resnet18"], data_root, tmp_path)
            + ["--max-train", 80, "--max-test", 30, "--num-queries", 3], capsys)
    assert len(r["queries"]) == 3
    for q in r["queries"]:
        assert len(q["neighbour_indices"]) == 5 and q["similarities"] == sorted(q["similarities"], reverse=True)
        assert all(-1 <= s <= 1 + 1e-6 for s in q["similarities"])
    shown = [sum(y == q["query_label"] for y in q["neighbour_labels"]) for q in r["queries"]]
    assert r["precision_at_5_shown"] == pytest.approx(100 * sum(shown) / 15)
    assert 0 <= r["precision_at_5"] <= 100 and (tmp_path / "retrieval.png").exists()


def test_attention_and_jaccard_scripts(ckpts, data_root, tmp_path, capsys):
    base = common_args(ckpts["vit_tiny"], data_root, tmp_path)
    r = run(attention.main, base + ["--num-images", 2, "--image-size", 32], capsys)
    assert r["num_heads"] == 3 and len(r["images"]) == 2
    assert r["images"][0]["patch_grid"] == [4, 4]
    assert all(0 < f <= 1 for f in r["images"][0]["kept_patch_fraction_per_head"])
    assert (tmp_path / "attention.png").exists()

    r = run(jaccard.main, base + ["--max-images", 8, "--random-init-baseline", "--seed", 0], capsys)
    assert r["n_images"] + r["n_skipped_no_object"] == 8 and r["mask_kind"] == "object"
    row = r["rows"]["checkpoint"]
    assert 0 <= row["dino_best_head"] <= 100 and len(row["per_head"]) == 3
    assert all(0 <= j <= 100 for j in row["per_head"])
    # this checkpoint is a seed-0 random ViT, so the seed-0 baseline row is the same network
    assert r["rows"]["random_init"]["dino_best_head"] == pytest.approx(row["dino_best_head"])
    assert (tmp_path / "jaccard.json").exists() and (tmp_path / "jaccard.png").exists()

    for main in (attention.main, jaccard.main):
        with pytest.raises(SystemExit, match="needs a ViT checkpoint") as e:
            main(list(map(str, common_args(ckpts["resnet18"], data_root, tmp_path))))
        assert "\n" not in str(e.value)


def test_jaccard_on_voc_object_masks_and_coco_class_masks(ckpts, shared_data, tmp_path, capsys):
    """The real layouts: VOC's SegmentationObject with void 255 borders, COCO class-index PNGs."""
    base = ["--checkpoint", ckpts["vit_tiny"], "--device", "cpu", "--split", "train", "--num-examples", 1]
    voc = run(jaccard.main, base + ["--data", "voc2012", "--data-root", shared_data / "voc2012-sample",
                                    "--out", tmp_path / "voc"], capsys)
    assert voc["n_images"] == 1 and voc["mask_kind"] == "object" and voc["rows"]["checkpoint"]["n_objects"] == 2
    coco = run(jaccard.main, base + ["--data", "coco", "--data-root", shared_data, "--max-images", 3,
                                     "--out", tmp_path / "coco"], capsys)
    assert coco["mask_kind"] == "class"
    assert coco["n_images"] + coco["n_skipped_no_object"] + coco["n_skipped_no_mask"] == 3
    assert 0 <= coco["jaccard"] <= 100


@pytest.mark.parametrize("main", [knn.main, linear.main, finetune.main, tsne.main, retrieval.main,
                                  attention.main, jaccard.main])
def test_bad_checkpoint_is_a_one_line_error(main, data_root, tmp_path):
    not_a_checkpoint = tmp_path / "notes.pt"
    not_a_checkpoint.write_text("not a checkpoint")
    for path, expected in ((tmp_path / "missing.pt", "does not exist"), (not_a_checkpoint, "not a readable")):
        with pytest.raises(SystemExit) as e:
            main(["--checkpoint", str(path), "--data-root", str(data_root), "--out", str(tmp_path / "o")])
        message = str(e.value)
        assert message.startswith("error:") and expected in message and "\n" not in message
