"""The DINO-Twins CIFAR-10 table (ArthurZucker/DeepLearningProject) on equal terms: DINO, Barlow Twins
and DINO-Twins with the same backbone, batch, epochs, image size, data and seeds, each scored by
weighted kNN and a linear probe (top-1 %, mean ± std over seeds).

    python benchmarks/compare_dino_twins.py --data cifar10 --data-root data/cifar10-subset --seeds 0 1 2
    python benchmarks/compare_dino_twins.py --arch resnet50 --epochs 200                # its R50 rows
    python benchmarks/compare_dino_twins.py --arch vit_tiny --patch-size 4 --batch-size 128   # its ViT-T/4 row
    python benchmarks/compare_dino_twins.py --methods dino_twins dino_twins_no_centering dino_no_centering \\
        dino_twins_no_sharpening dino_no_sharpening barlow_twins_multicrop     # the secondary claim's ablations
    python benchmarks/compare_dino_twins.py --arch cnn_small --batch-size 128 --epochs 3 \\
        --local-crops-size 16 --bt-projector 512-512-512                    # CPU miniature, 33 min on 2 cores
    python benchmarks/compare_dino_twins.py --smoke                                      # seconds: the pipeline

Each run trains through its method's own `train.py` `main(argv)` (engine, options, checkpoint), then
`eval/knn.py` (k = 20, T = 0.07, train split as bank, test split as queries) and `eval/linear.py`
(linear probe on frozen, standardised features; weight decay chosen on a held-out 20 %) score the
checkpoint's backbone (DINO and DINO-Twins: the teacher's). Shared by every run: --data, --arch,
--patch-size, --image-size, --batch-size, --epochs, --warmup-epochs, the seed; by DINO and DINO-Twins
their crops (2 global, 3 local of --local-crops-size, by default resized to the global size as in
the DINO-Twins repository). As the DINO-Twins project did ("the
Dino Resnet-50 and Dino-Twins Resnet-50 models were trained with the same hyperparameters"), DINO
gets DINO-Twins' DINO options (the original repository's, dino_twins/train.py ORIGINAL_DINO) and
its optimiser (Adam, lr 5e-4 × batch/256, no weight decay); Barlow Twins keeps
barlow_twins/train.py's paper recipe (LARS, λ 0.0051) with DINO-Twins' projector width. Writes
<out>/compare_dino_twins.json and .md; re-running resumes finished or interrupted runs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's code first (docs/ARCHITECTURE.md)
if str(REPO / "benchmarks") not in sys.path:  # the sibling ssl_benchmark.py, also when loaded by path
    sys.path.insert(0, str(REPO / "benchmarks"))

from ssl_benchmark import to_argv  # noqa: E402  (options dict -> CLI words, one implementation)

from common.options import ARCH_CHOICES  # noqa: E402  (torch-free)

K = 20  # DINO's headline k

# CIFAR-10 linear accuracy reported by ArthurZucker/DeepLearningProject (full CIFAR-10, its own training lengths).
REPORTED = {("barlow_twins", "resnet50"): 80.3, ("dino", "resnet50"): 48.7, ("dino_twins", "resnet50"): 85.3,
            ("dino_twins", "vit_tiny"): 78.2}


def dino_twins_dino_options() -> list[str]:
    """DINO-Twins' DINO and optimiser options as CLI words, for DINO to train on equal terms."""
    from dino_twins.train import DEFAULTS, ORIGINAL_DINO

    # The teacher-temperature warm-up follows --warmup-epochs, like the lr's (train_argv).
    options = {dest: value for dest, (value, _) in ORIGINAL_DINO.items() if dest != "warmup_teacher_temp_epochs"}
    options.update({k: DEFAULTS[k] for k in ("lr", "optimizer", "weight_decay", "clip_grad", "drop_path")})
    options["weight_decay_end"] = DEFAULTS["weight_decay"]  # dino/train.py would raise it to 0.4
    return to_argv(options)


# name -> (train module, extra train.py words, what it is). The extra words of the DINO-Twins
# variants are relative to dino_twins/train.py's own defaults.
def variants(bt_projector: str) -> dict[str, tuple[str, list[str], str]]:
    dino_options = dino_twins_dino_options()
    return {
        "dino": ("dino.train", dino_options, "DINO (dino/train.py with DINO-Twins' DINO and optimiser options)"),
        "barlow_twins": ("barlow_twins.train", ["--projector", bt_projector],
                         "Barlow Twins (barlow_twins/train.py: paper recipe, LARS, λ 0.0051)"),
        "dino_twins": ("dino_twins.train", [], "DINO-Twins (DINO + 0.0025 × Barlow Twins, λ 0.005)"),
        "dino_twins_no_centering": ("dino_twins.train", ["--no-centering"], "DINO-Twins, center fixed at 0"),
        "dino_twins_no_sharpening": ("dino_twins.train", ["--no-sharpening"],
                                     "DINO-Twins, teacher temperature = student's"),
        "dino_no_centering": ("dino_twins.train", ["--bt-weight", "0", "--no-centering"],
                              "DINO (dino_twins/train.py --bt-weight 0), center fixed at 0"),
        "dino_no_sharpening": ("dino_twins.train", ["--bt-weight", "0", "--no-sharpening"],
                               "DINO (dino_twins/train.py --bt-weight 0), teacher temperature = student's"),
        "barlow_twins_multicrop": ("dino_twins.train", ["--dino-weight", "0"],
                                   "Barlow Twins on DINO-Twins' crops and optimiser (--dino-weight 0)"),
    }


DEFAULT_METHODS = ("dino", "barlow_twins", "dino_twins")

# --smoke: the whole pipeline on 32 images in seconds; nothing in it is a meaningful number.
SMOKE = dict(arch="resnet18", image_size=16, batch_size=16, epochs=1, max_images=32, seeds=[0], knn_max_train=64,
             knn_max_test=32, linear_epochs=2, bt_projector="64-64")
SMOKE_DINO = ["--out-dim", "64", "--local-crops-number", "1"]


def mean_std(values: list[float]) -> dict:
    """Mean and sample standard deviation (n − 1; None below two values)."""
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values)}


def cell(stat: dict) -> str:
    if stat["mean"] is None:
        return "—"
    std = "—" if stat["std"] is None else f"{stat['std']:.1f}"
    return f"{stat['mean']:.1f} ± {std}"


def markdown_table(results: dict, settings: dict) -> str:
    lines = [f"DINO vs Barlow Twins vs DINO-Twins on {settings['data']} — {settings['arch']}"
             f"{'/' + str(settings['patch_size']) if settings['arch'].startswith('vit') else ''}, "
             f"{settings['image_size']} px, batch {settings['batch_size']}, epochs {settings['epochs']}, "
             f"seeds {' '.join(map(str, settings['seeds']))}",
             "",
             f"| method | kNN top-1 (k = {K}) | linear top-1 | runs | DeepLearningProject reports (linear) |",
             "|---|---|---|---|---|"]
    for name, r in results.items():
        failed = sum(1 for run in r["runs"] if run.get("error"))
        runs = f"{len(r['runs']) - failed}" + (f" ({failed} failed)" if failed else "")
        reported = REPORTED.get((name, settings["arch"]))
        lines.append(f"| {r['description']} | {cell(r['knn_top1'])} | {cell(r['linear_top1'])} | {runs} | "
                     f"{'—' if reported is None else f'{reported} %'} |")
    lines += ["", "Top-1 in %, mean ± sample standard deviation over seeds. DeepLearningProject's numbers are for full "
              "CIFAR-10 with its own training lengths (R50 rows, and DINO-Twins ViT-T/4 78.2 %)."]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default="cifar10", help="dataset registry name or path")
    p.add_argument("--data-root", default=None, help="dataset root (default: $SSL_DATA or ./data)")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=list(variants("1")),
                   help="which runs to compare")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one run per method and seed")
    p.add_argument("--arch", default="resnet18",
                   choices=[a for a in ARCH_CHOICES if a != "vit_base"],
                   help="the backbone of every run (DeepLearningProject: resnet50, and vit_tiny with patch 4; "
                        "cnn_small / vit_micro: the CPU-sized miniature)")
    p.add_argument("--patch-size", type=int, default=4, help="ViT patch size (DeepLearningProject's ViT-T/4 at 32 px)")
    p.add_argument("--image-size", type=int, default=32, help="training image size (CIFAR-10: 32)")
    p.add_argument("--batch-size", type=int, default=256,
                   help="global batch of every run (DeepLearningProject: 256; ViT 128)")
    p.add_argument("--epochs", type=int, default=100, help="epochs of every run")
    p.add_argument("--warmup-epochs", type=int, default=None,
                   help="lr warm-up (and DINO's teacher-temperature warm-up) of every run (default: min(10, "
                        "epochs // 10); the original: 10 of 400)")
    p.add_argument("--local-crops-size", type=int, default=None,
                   help="side of the local crops of DINO and DINO-Twins alike (default: the global --image-size, "
                        "as the DINO-Twins repository resizes them; DINO's own ratio is 96/224)")
    p.add_argument("--bt-projector", default="2048-2048-2048",
                   help="projector of Barlow Twins and of DINO-Twins' Barlow term (original: 2048 wide)")
    p.add_argument("--max-images", type=int, default=None, help="train on the first N images only")
    p.add_argument("--knn-max-train", type=int, default=None, help="kNN / probe: at most N train images")
    p.add_argument("--knn-max-test", type=int, default=None, help="kNN / probe: at most N test images")
    p.add_argument("--linear-epochs", type=int, default=100, help="linear probe epochs (DINO: 100)")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "mps", "cpu"))
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"))
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: train.py's)")
    p.add_argument("--out", default=None,
                   help="output folder (default runs/compare_dino_twins/<data>-<arch>-<size>px-b<batch>-e<epochs>)")
    p.add_argument("--smoke", action="store_true",
                   help="seconds-long pipeline check: ResNet-18, 16 px, 32 images, 1 epoch, 1 seed, tiny heads")
    p.add_argument("--dry-run", action="store_true", help="print the train.py commands and stop")
    return p


def parse(argv=None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.smoke:
        for k, v in SMOKE.items():
            setattr(args, k, v)
        args.workers = 0 if args.workers is None else args.workers
    if min(args.epochs, args.batch_size, args.image_size, args.linear_epochs) < 1:
        raise SystemExit("error: --epochs, --batch-size, --image-size and --linear-epochs must be >= 1")
    if args.local_crops_size is None:  # resolved here, so that the recorded settings name the size used
        args.local_crops_size = args.image_size
    if not 8 <= args.local_crops_size <= args.image_size:
        raise SystemExit(f"error: --local-crops-size {args.local_crops_size} must be between 8 and --image-size "
                         f"{args.image_size}")
    if args.warmup_epochs is None:
        args.warmup_epochs = min(10, args.epochs // 10)
    if not 0 <= args.warmup_epochs <= args.epochs:
        raise SystemExit(f"error: --warmup-epochs {args.warmup_epochs} must be between 0 and --epochs {args.epochs}")
    if len(set(args.seeds)) != len(args.seeds):
        raise SystemExit("error: --seeds has duplicates; give distinct seeds, e.g. --seeds 0 1 2")
    if args.out is None:
        tag = Path(args.data).name if ("/" in args.data or Path(args.data).exists()) else args.data
        name = f"{tag}-{args.arch}-{args.image_size}px-b{args.batch_size}-e{args.epochs}" + ("-smoke" if args.smoke
                                                                                              else "")
        args.out = str(Path("runs") / "compare_dino_twins" / name)
    return args


def train_argv(args, name: str, extra: list[str], seed: int, run_dir: Path) -> list[str]:
    words = ["--data", args.data, "--arch", args.arch, "--patch-size", str(args.patch_size),
             "--image-size", str(args.image_size), "--batch-size", str(args.batch_size), "--epochs", str(args.epochs),
             "--warmup-epochs", str(args.warmup_epochs), "--seed", str(seed), "--out", str(run_dir),
             "--device", args.device, "--amp", args.amp, "--eval-every", "0", "--resume", "auto"]
    words += ["--data-root", args.data_root] if args.data_root else []
    words += ["--workers", str(args.workers)] if args.workers is not None else []
    words += ["--max-images", str(args.max_images)] if args.max_images else []
    module = variants(args.bt_projector)[name][0]
    if module == "dino.train":  # DINO-Twins' cosine ends at 0.1 × the peak lr (dino/train.py: 1e-6)
        from dino_twins.train import DEFAULTS

        words += ["--min-lr", repr(0.1 * DEFAULTS["lr"] * args.batch_size / 256)]
    if module != "barlow_twins.train":
        # The same local crops for DINO as for DINO-Twins: dino/train.py would otherwise pick its own
        # smaller ones (96/224 of the global side), a quarter of the pixels of the original's.
        words += ["--local-crops-size", str(args.local_crops_size)]
        words += ["--warmup-teacher-temp-epochs", str(args.warmup_epochs)]
        words += SMOKE_DINO if args.smoke else []
    if module == "dino_twins.train":
        words += ["--bt-projector", args.bt_projector]
    return words + extra


def eval_argv(args, checkpoint: Path, out: Path) -> list[str]:
    words = ["--checkpoint", str(checkpoint), "--data", args.data, "--out", str(out), "--device", args.device]
    words += ["--data-root", args.data_root] if args.data_root else []
    words += ["--max-train", str(args.knn_max_train)] if args.knn_max_train else []
    words += ["--max-test", str(args.knn_max_test)] if args.knn_max_test else []
    words += ["--workers", str(args.workers)] if args.workers is not None else []
    return words


def run_one(args, name: str, seed: int, out: Path) -> dict:
    """Train (or resume) one run, then its kNN and linear-probe top-1; a failed run is recorded."""
    import eval.knn
    import eval.linear

    module, extra, _ = variants(args.bt_projector)[name]
    run_dir = out / name / f"seed{seed}"
    argv = train_argv(args, name, extra, seed, run_dir)
    record = {"seed": seed, "run_dir": str(run_dir), "train_argv": argv}
    t0 = time.time()
    try:
        record["train"] = importlib.import_module(module).main(argv)
    except SystemExit as e:  # e.g. the NaN guard of an ablation that diverges: keep going
        record["error"] = str(e)
        return record
    record["train_s"] = round(time.time() - t0, 1)
    checkpoint, t0 = run_dir / "checkpoint.pt", time.time()
    knn = eval.knn.main([*eval_argv(args, checkpoint, run_dir / "eval"), "--k", str(K)])
    linear = eval.linear.main([*eval_argv(args, checkpoint, run_dir / "eval"), "--epochs", str(args.linear_epochs)])
    record.update(knn_top1=knn["top1"], linear_top1=linear["top1"], eval_s=round(time.time() - t0, 1))
    return record


def main(argv=None) -> dict:
    args = parse(argv)
    out = Path(args.out)
    table = variants(args.bt_projector)
    if args.dry_run:
        for name in args.methods:
            for seed in args.seeds:
                module = table[name][0].replace(".", "/")
                words = train_argv(args, name, table[name][1], seed, out / name / f"seed{seed}")
                print(f"python {module}.py {' '.join(words)}")
        return {}
    settings = {k: getattr(args, k) for k in ("data", "data_root", "arch", "patch_size", "image_size", "batch_size",
                                                "epochs", "warmup_epochs", "seeds", "local_crops_size",
                                                "bt_projector", "max_images",
                                                "knn_max_train", "knn_max_test", "linear_epochs", "smoke")}
    results = {}
    for name in args.methods:
        runs = [run_one(args, name, seed, out) for seed in args.seeds]
        ok = [r for r in runs if not r.get("error")]
        results[name] = {"description": table[name][2], "train_module": table[name][0],
                         "knn_top1": mean_std([r["knn_top1"] for r in ok]),
                         "linear_top1": mean_std([r["linear_top1"] for r in ok]), "runs": runs}
        write(out, settings, results)  # partial results survive an interrupted benchmark
    text = write(out, settings, results)
    print(text)
    return {"settings": settings, "results": results, "table": text}


def write(out: Path, settings: dict, results: dict) -> str:
    import torch

    out.mkdir(parents=True, exist_ok=True)
    text = markdown_table(results, settings)
    payload = {"benchmark": "compare_dino_twins", "settings": settings, "results": results, "table": text,
               "environment": {"torch": torch.__version__, "python": platform.python_version(),
                               "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}}
    (out / "compare_dino_twins.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    (out / "compare_dino_twins.md").write_text(text + "\n")
    return text


if __name__ == "__main__":
    main()
