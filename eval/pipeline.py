"""The driver behind `./run_all.sh`: train every method, judge it with every protocol, write the report.

For each method and seed: train → kNN (k = 20 headline) → linear probe on 10 % and 100 % of the labels
→ fine-tuning on 20 % → t-SNE of the run's snapshots (initialisation, epoch 1, middle, last) →
retrieval grid → for ViT backbones attention maps and the Jaccard index of their masks. Per backbone
and seed the baselines: kNN and linear probe of the randomly initialised network, and the same
network trained supervised from scratch on the same 20 % of the labels (as DINO on Imagenette with
20 % labels against supervised from scratch). A network that sees another input (Colorization's: the
lightness only) has baselines of its own (INPUT).

A step is one command (printed, logged and recorded exactly as it would be typed). It is skipped
when its marker `<out>/step.json` says it succeeded with the same command after the steps it needs,
and its result is still there; `--force` re-runs everything. A training step that was interrupted
resumes from its checkpoint (the engine's `--resume auto`). A failing step is recorded and the rest
still runs (steps that need it are "blocked"); the exit code is 1 when any step failed, was blocked or
could not run because its script is missing, 130 when interrupted.

Up to `--jobs` steps run at once, each as soon as the steps it needs have ended. The `fork` launcher
(default on Linux for the smoke and cpu profiles) imports torch once and runs each command in a
forked child, which saves the 3-10 s that every `python script.py` spends importing; the
`subprocess` launcher (gpu profile, other platforms) runs the plain commands. POSIX only (run_all.sh
is a bash script): Linux, macOS, WSL.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's code first (docs/ARCHITECTURE.md)

from common import recipes  # noqa: E402  (torch-free: the cpu profile's training options)

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("dino", "byol", "barlow_twins", "dino_twins", "jigsaw", "colorization")
PROFILES = ("smoke", "cpu", "gpu")

# --- the profiles ---------------------------------------------------------------------------------
# Everything a profile changes is in these tables; every other option keeps the paper default that
# the method's train.py (or the eval script) documents in its --help.
#
# smoke: proves the whole pipeline on CPU in about two minutes (tests): 16 px, 64 images, 1 epoch.
# cpu:   the whole protocol on the embedded `shapes` data (all 5000 training and 1000 test images,
#        32 px) on a 2-core CPU in about 40 minutes, two steps at a time with one thread each. Every
#        method trains with its cpu recipe (common/recipes.py, also `train.py --recipe cpu`, where each
#        setting's reason is written): the CPU-sized `cnn_tiny`, AdamW, small heads, strong colour
#        jitter, 10-16 epochs. A CNN has no self-attention, so DINO-Twins also trains the small ViT
#        `vit_micro` (ALSO below) for the attention maps and the Jaccard.
# gpu:   the reference comparisons on a real dataset (the DINO-Twins CIFAR-10 table: Barlow Twins and
#        DINO-Twins with ResNet-50, DINO-Twins' ViT-T/4 for DINO; sthalles/PyTorch-BYOL's STL-10 recipe; the
#        pretext tasks of "Self-supervised learning in the 'wild'" at 64 px), 200 epochs, the paper batch
#        sizes, one GPU, bf16.
DATA = {  # profile: (training and evaluation data, data with segmentation masks for Jaccard)
    "smoke": ("shapes", "shapes"),
    "cpu": ("shapes", "shapes"),
    "gpu": ("cifar10", "shapes"),
}

COMMON_TRAIN = {  # options every method's train.py gets in the profile
    "smoke": "--image-size 16 --max-images 64 --epochs 1 --batch-size 32 --warmup-epochs 0 --workers 0 "
             "--log-every 1",
    "cpu": f"{recipes.COMMON} --workers 0 --log-every 10",
    "gpu": "--image-size 32 --epochs 200 --workers 8 --download",
}

TRAIN = {  # profile → method → (backbone, the method's options on top of COMMON_TRAIN)
    "smoke": {
        "dino":         ("vit_tiny", "--patch-size 4 --out-dim 256 --local-crops-number 2"),
        "byol":         ("resnet18", "--hidden-dim 256 --out-dim 64"),
        "barlow_twins": ("resnet18", "--projector 256-256-256"),
        "dino_twins":   ("vit_tiny", "--patch-size 4 --out-dim 256 --local-crops-number 2 --bt-projector 256-256-256 "
                                     "--warmup-teacher-temp-epochs 0"),
        "jigsaw":       ("resnet18", "--num-permutations 24 --grid 2"),
        "colorization": ("resnet18", ""),
    },
    "cpu": {method: (recipes.ARCH, recipes.CPU[method]) for method in METHODS},
    "gpu": {
        "dino":         ("vit_tiny", "--patch-size 4 --batch-size 128 --out-dim 65536 --local-crops-number 6"),
        "byol":         ("resnet50", "--batch-size 256 --optimizer sgd --lr 0.12 --momentum 0.9 "
                                     "--weight-decay 4e-4 --tau 0.996"),
        "barlow_twins": ("resnet50", "--batch-size 256"),
        "dino_twins":   ("resnet50", "--batch-size 256 --local-crops-number 6"),
        "jigsaw":       ("resnet50", "--batch-size 256 --num-permutations 1000 --grid 3 --image-size 64"),
        "colorization": ("resnet50", "--batch-size 256 --image-size 64"),
    },
}
# A method trained once more on another backbone, a row of its own: profile -> method -> (backbone,
# options on top of the method's TRAIN options). cpu: every method learns on cnn_tiny, which has no
# self-attention, so DINO-Twins also trains the small ViT for the attention maps and the Jaccard
# (common/recipes.py VIT says why multi-crop and how many epochs).
ALSO = {"smoke": {}, "cpu": {"dino_twins": (recipes.VIT, recipes.VIT_OPTIONS)}, "gpu": {}}

EVAL = {  # profile → evaluation → options ("*": every evaluation script)
    "smoke": {"*": "--max-train 96 --max-test 48 --batch-size 48", "tsne": "--max-test 32",
              "linear": "--epochs 5 --weight-decay 0", "finetune": "--epochs 1 --warmup-epochs 0",
              "attention": "--num-images 2", "jaccard": "--max-images 8 --num-examples 2",
              "retrieval": "--num-queries 3"},
    "cpu": {"*": "--batch-size 256", "linear": "--epochs 100", "finetune": "--epochs 15 --warmup-epochs 1 --lr 2e-3",
            "tsne": "--max-test 500", "attention": "--num-images 4", "jaccard": "--max-images 200"},
    "gpu": {"*": "--batch-size 512 --workers 8", "linear": "--epochs 100", "finetune": "--epochs 50",
            "tsne": "--max-test 2000", "jaccard": "--max-images 1000"},
}

# What every profile measures (the report's columns): these options are the protocol, not a size.
PROTOCOL = {
    "knn": "", "linear": "--label-fraction 0.1 1", "finetune": "--label-fraction 0.2",
    "scratch": "--label-fraction 0.2 --from-scratch", "tsne": "", "retrieval": "",
    "attention": "", "jaccard": "--random-init-baseline",
}
SCRIPTS = {"knn": "eval/knn.py", "linear": "eval/linear.py", "finetune": "eval/finetune.py",
           "scratch": "eval/finetune.py", "tsne": "eval/tsne.py", "retrieval": "eval/retrieval.py",
           "attention": "eval/attention.py", "jaccard": "eval/jaccard.py"}
VIT_ONLY = ("attention", "jaccard")
MARKER = "step.json"
LOG = "step.log"


@dataclass
class Step:
    id: str                       # e.g. "dino/s0/knn"
    row: str                      # the report row: a method, "random init <arch>" or "supervised <arch>"
    kind: str                     # train, knn, linear, finetune, scratch, tsne, retrieval, attention, jaccard
    seed: int
    script: str                   # relative to the repository root
    args: list[str]
    out: Path                     # the step's own folder (a run directory for training)
    needs: list[str] = field(default_factory=list)
    snapshots: Path | None = None  # t-SNE: the checkpoints are the snapshots found here when it runs
    after: list[str] = field(default_factory=list)  # steps to let end first, whatever their outcome
    status: str = "planned"
    reason: str = ""
    wall_s: float | None = None

    def argv(self) -> list[str]:
        args = list(self.args)
        if self.snapshots is not None:
            found = sorted(glob.glob(str(self.snapshots / "epoch*.pt")))
            args = ["--checkpoint", *(found or [str(self.snapshots / "epoch*.pt")]), *args]
        return args

    def command(self) -> str:
        return shlex.join(["python", self.script, *self.argv()])


# --- planning -------------------------------------------------------------------------------------

def _split(options: str) -> list[str]:
    return shlex.split(options) if options else []


def merge(*option_lists: list[str]) -> list[str]:
    """Concatenate option lists; an option given again replaces its earlier value (as argparse would
    read it), so that each command names every option once."""
    groups: dict[str, list[str]] = {}
    for options in option_lists:
        flag = None
        for token in options:
            if token.startswith("--"):
                flag = token
                groups.pop(flag, None)  # re-inserted last: the command reads in override order
                groups[flag] = [token]
            elif flag is None:
                raise ValueError(f"option value {token!r} without an option before it")
            else:
                groups[flag].append(token)
    return [t for group in groups.values() for t in group]


def _extra(extras: list[tuple[str | None, str, str]], method: str | None, kind: str) -> list[str]:
    return [a for m, k, opts in extras if k == kind and m in (None, method) for a in _split(opts)]


def _value(args: list[str], flag: str) -> str | None:
    """The value of `flag` in a merged option list (each option appears once), None when absent."""
    return args[args.index(flag) + 1] if flag in args[:-1] else None


# A method whose network sees another input than the RGB image gets baselines of its own network:
# Colorization's backbone sees the lightness L alone (colorization/model.py lightness_backbone). On
# `shapes`, whose colours are random, that random network is far stronger than the RGB one (kNN
# 45.6 % against 26.0 % in the cpu report), so the RGB network would be the wrong yardstick.
INPUT = {"colorization": "L"}


def baseline_key(method: str, arch: str) -> str:
    """The name of the random-init and supervised baselines a run is judged against: its backbone,
    with the input it sees when that is not RGB (cnn_tiny-L)."""
    return f"{arch}-{INPUT[method]}" if method in INPUT else arch


def trained_rows(profile: str, methods: list[str]) -> list[tuple[str, str, str, tuple[str, ...]]]:
    """(report row, method, backbone, option strings) of every training run, in the order they run:
    each method on its profile backbone (row: the method), then on its ALSO backbone (row: "method
    backbone"), which gets the method's options and its own on top."""
    rows = []
    for method in methods:
        arch, options = TRAIN[profile][method]
        rows.append((method, method, arch, (options,)))
        if method in ALSO[profile]:
            also, more = ALSO[profile][method]
            rows.append((f"{method} {also}", method, also, (options, more)))
    return rows


def plan(cfg) -> list[Step]:
    """Every step of the profile for the chosen methods and seeds, in the order they run."""
    data, mask_data = DATA[cfg.profile]
    data = cfg.data or data
    eval_data = cfg.eval_data or data
    mask_data = cfg.mask_data or mask_data
    tag = Path(data).name if ("/" in data or Path(data).exists()) else data
    root = ["--data-root", cfg.data_root] if cfg.data_root else []
    device = ["--device", cfg.device]
    ev = EVAL[cfg.profile]

    def eval_args(kind, method, checkpoint, out, eval_on=eval_data, pixels=None):
        sized = "finetune" if kind == "scratch" else kind  # the baseline trains exactly as the fine-tuning
        cache = ["--cache-dir", str(out.parent / "features")] if kind in ("knn", "linear", "retrieval", "tsne") else []
        ckpt = [] if checkpoint is None else ["--checkpoint", str(checkpoint)]
        if pixels is not None:  # the raw-pixels baseline: no network, nothing to cache
            ckpt, cache = ["--raw-pixels", "--image-size", pixels], []
        return merge([*ckpt, "--data", eval_on, *root, "--out", str(out), *device, "--seed", str(method[1]), *cache],
                     _split(ev.get("*", "")), _split(ev.get(sized, "")), _split(PROTOCOL[kind]),
                     _extra(cfg.extra, method[0], kind))

    steps, first_run_of, sizes = [], {}, {}
    for seed in cfg.seeds:
        for row, method, arch, options in trained_rows(cfg.profile, cfg.methods):
            run = cfg.runs / method / f"{cfg.profile}-{tag}-{arch}-s{seed}"
            prefix = row.replace(" ", "/")  # dino/s0/train; dino_twins/vit_micro/s0/train
            train = Step(f"{prefix}/s{seed}/train", row, "train", seed, f"{method}/train.py",
                         merge(["--data", data, *root, "--arch", arch], _split(COMMON_TRAIN[cfg.profile]),
                               *map(_split, options), ["--seed", str(seed), *device, "--out", str(run)],
                               _extra(cfg.extra, method, "train")), run)
            steps.append(train)
            first_run_of.setdefault((baseline_key(method, arch), seed), run)
            ckpt = run / "checkpoint.pt"
            for kind in ("knn", "linear", "finetune", "tsne", "retrieval", "attention", "jaccard"):
                if kind in VIT_ONLY and not arch.startswith("vit"):
                    continue
                out = run / "eval" / kind
                on = mask_data if kind == "jaccard" else eval_data
                step = Step(f"{prefix}/s{seed}/{kind}", row, kind, seed, SCRIPTS[kind],
                            eval_args(kind, (method, seed), None if kind == "tsne" else ckpt, out, on),
                            out, needs=[train.id])
                if kind == "tsne":
                    step.snapshots = run / "snapshots"
                if kind in ("linear", "retrieval"):
                    # they read the features kNN extracts into the shared cache: one writer at a time
                    step.after = [f"{prefix}/s{seed}/knn"]
                if kind == "knn":  # the size its kNN sees: an eval --image-size, else the training's
                    size = _value(step.args, "--image-size") or _value(train.args, "--image-size")
                    if size is not None:  # unknown only if no table names it: then no raw-pixels row for it
                        sizes.setdefault(size, None)
                steps.append(step)
        # Baselines per backbone (and input, baseline_key): the first run's initialisation snapshot
        # (epoch 0, before any update) is the random network; the supervised run only takes its
        # architecture from it.
        for (arch, s), run in first_run_of.items():
            if s != seed:
                continue
            base = cfg.runs / "baselines" / f"{cfg.profile}-{tag}-{arch}-s{seed}"
            needs = [next(st.id for st in steps if st.kind == "train" and st.out == run)]
            init = run / "snapshots" / "epoch0000.pt"
            for kind, row, checkpoint in (("knn", f"random init {arch}", init),
                                          ("linear", f"random init {arch}", init),
                                          ("scratch", f"supervised {arch}", run / "checkpoint.pt")):
                out = base / kind
                steps.append(Step(f"baselines/{arch}/s{seed}/{kind}", row, kind, seed, SCRIPTS[kind],
                                  eval_args(kind, ("baselines", seed), checkpoint, out), out, needs=needs,
                                  after=[f"baselines/{arch}/s{seed}/knn"] if kind == "linear" else []))
        # The baseline that needs no training: the pixels themselves, at each image size a method's
        # kNN sees (the report sets each method beside the one of its own size).
        for size in sizes:
            base = cfg.runs / "baselines" / f"{cfg.profile}-{tag}-pixels{size}-s{seed}"
            for kind in ("knn", "linear"):
                out = base / kind
                steps.append(Step(f"baselines/pixels{size}/s{seed}/{kind}", "raw pixels", kind, seed, SCRIPTS[kind],
                                  eval_args(kind, ("baselines", seed), None, out, pixels=size), out))
    return steps


# --- markers --------------------------------------------------------------------------------------

def read_marker(step: Step) -> dict | None:
    try:
        return json.loads((step.out / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_marker(step: Step, marker: dict) -> None:
    step.out.mkdir(parents=True, exist_ok=True)
    tmp = step.out / f".{MARKER}.tmp"
    tmp.write_text(json.dumps(marker, indent=2) + "\n")
    os.replace(tmp, step.out / MARKER)


def result_json(step: Step) -> Path | None:
    """The step's result: the evaluation's JSON in its folder, the checkpoint of a training run."""
    if step.kind == "train":
        return step.out / "checkpoint.pt" if (step.out / "checkpoint.pt").exists() else None
    found = sorted(p for p in step.out.glob("*.json") if p.name != MARKER)
    return found[0] if found else None


def is_done(step: Step, markers: dict[str, dict]) -> bool:
    m = read_marker(step)
    if not m or m.get("status") != "ok" or m.get("command") != step.command():
        return False
    for dep in step.needs:
        if dep not in markers or (m.get("after") or {}).get(dep) != markers[dep].get("finished"):
            return False  # what it was computed from has changed since
    return result_json(step) is not None


# --- running ---------------------------------------------------------------------------------------

class Job:
    """One running command: a forked child (the fork launcher) or a `python script` process."""

    def __init__(self, step: Step, pid: int, started: float, marker: dict):
        self.step, self.pid, self.started, self.marker = step, pid, started, marker
        self.interrupted = False


class Launcher:
    """Starts commands with their output in a log file; `reap` collects those that ended."""

    def __init__(self, kind: str, threads: int | None = None):
        self.kind, self.threads = kind, threads
        if kind == "fork":
            warm_imports()

    def start(self, script: Path, argv: list[str], log: Path) -> int:
        with log.open("a") as f:
            f.write(f"$ {shlex.join(['python', str(script.relative_to(ROOT)), *argv])}\n")
        sys.stdout.flush()
        sys.stderr.flush()
        if self.kind == "fork":
            pid = os.fork()
            if pid == 0:
                _child(script, argv, log, self.threads)  # never returns
            return pid
        env = {**os.environ, **({"OMP_NUM_THREADS": str(self.threads)} if self.threads else {})}
        with log.open("a") as f:
            proc = subprocess.Popen([sys.executable, str(script), *argv], cwd=ROOT, stdout=f,
                                    stderr=subprocess.STDOUT, env=env)
        proc.returncode = 0  # reaped below with os.wait4 (for its CPU time), not by Popen
        return proc.pid

    @staticmethod
    def reap(jobs: dict[int, Job], block: bool) -> list[tuple[Job, int, float]]:
        """(job, exit code, CPU seconds) of every job that ended; waits for one when `block`."""
        ended = []
        while not ended:
            for pid in list(jobs):
                try:
                    got, status, usage = os.wait4(pid, os.WNOHANG)
                except ChildProcessError:
                    got, status, usage = pid, 1 << 8, None
                if got:
                    cpu = usage.ru_utime + usage.ru_stime if usage else 0.0
                    ended.append((jobs.pop(pid), os.waitstatus_to_exitcode(status), cpu))
            if ended or not block or not jobs:
                break
            time.sleep(0.1)
        return ended


def _child(script: Path, argv: list[str], log: Path, threads: int | None) -> None:
    """In the forked child: become `python script argv...` with stdout/stderr in the log."""
    import runpy

    code = 1
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if threads:
            import torch

            torch.set_num_threads(threads)
            os.environ["OMP_NUM_THREADS"] = str(threads)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        sys.argv = [str(script), *argv]
        sys.path.insert(0, str(script.parent))
        os.chdir(ROOT)
        runpy.run_path(str(script), run_name="__main__")
        code = 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def warm_imports() -> None:
    """What every step imports, loaded once before forking (no threads or CUDA are started here)."""
    import importlib

    import matplotlib

    matplotlib.use("Agg")
    for name in ("torch", "torchvision", "matplotlib.pyplot", "sklearn.manifold", "sklearn.metrics",
                 "common.engine", "common.datasets", "common.backbones", "common.augment", "common.loader",
                 "common.figures", "eval.cli", "eval.features", "eval.knn", "eval.attention"):
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 — a broken module fails its own step, with its traceback in the log
            pass


def prepare_data(cfg) -> None:
    """Open the data sets once before the steps start, so that a generated one (`shapes`) is made
    once rather than by two steps at the same time; a data set that does not open is left for the
    steps to report."""
    try:
        from common.datasets import build_dataset
    except Exception:  # noqa: BLE001 — reported by the steps
        return
    names = {cfg.data or DATA[cfg.profile][0], cfg.eval_data or cfg.data or DATA[cfg.profile][0],
             cfg.mask_data or DATA[cfg.profile][1]}
    for name in names:
        try:
            build_dataset(name, cfg.data_root, "train")
        except Exception:  # noqa: BLE001 — reported by the steps, with the registry's message
            pass


def last_line(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    errors = [ln for ln in lines if ln.startswith("error:") or "Error" in ln.split(":")[0]]
    return (errors[-1] if errors else lines[-1] if lines else "")[:300]


def prepare(step: Step, cfg, markers: dict[str, dict]) -> dict | None:
    """Settle a step that needs no command (done, blocked, missing) or return its new marker."""
    for dep in step.needs:
        if dep not in markers or markers[dep].get("status") != "ok":
            step.status, step.reason = "blocked", f"needs {dep}, which did not succeed"
            return None
    if not (ROOT / step.script).exists():
        step.status, step.reason = "missing", f"{step.script} does not exist (yet)"
        return None
    if step.snapshots is not None and not glob.glob(str(step.snapshots / "epoch*.pt")):
        step.status, step.reason = "failed", f"no snapshots in {step.snapshots} (the engine writes them)"
        return None
    if not cfg.force and is_done(step, markers):
        step.status = "done"
        markers[step.id] = read_marker(step)
        step.wall_s = markers[step.id].get("wall_s")
        return None
    old = read_marker(step)
    # An interrupted or failed training run with the same command resumes from its checkpoint;
    # anything else starts afresh.
    resumable = (step.kind == "train" and not cfg.force and old is not None and old.get("command") == step.command()
                 and old.get("status") in ("running", "failed", "interrupted"))
    if step.out.exists() and not resumable:
        _clear(step.out, cfg.runs)
    step.out.mkdir(parents=True, exist_ok=True)
    marker = {"id": step.id, "command": step.command(), "status": "running", "started": time.time(),
              "log": str(step.out / LOG), "launcher": cfg.launcher, "threads": cfg.threads,
              "after": {d: markers[d].get("finished") for d in step.needs}}
    write_marker(step, marker)
    return marker


def finish(job: Job, rc: int, cpu: float, markers: dict[str, dict]) -> None:
    step, marker = job.step, job.marker
    log = step.out / LOG
    marker.update(rc=rc, wall_s=round(time.time() - job.started, 2), cpu_s=round(cpu, 2), finished=time.time())
    step.wall_s = marker["wall_s"]
    if job.interrupted:
        marker["status"], step.status = "interrupted", "interrupted"
        marker["reason"] = step.reason = "interrupted; re-run the same command to continue"
        write_marker(step, marker)
        return
    if rc == 0 and result_json(step) is None:
        rc, step.reason = 1, "exited 0 but wrote no result"
    elif rc != 0:
        step.reason = f"exit code {rc}: {last_line(log)}"
    marker["status"] = step.status = "ok" if rc == 0 else "failed"
    marker["reason"] = step.reason
    result = result_json(step)
    marker["result"] = str(result) if result else None
    write_marker(step, marker)
    markers[step.id] = marker


def run_all(steps: list[Step], cfg, launcher: Launcher) -> bool:
    """Run the steps, up to --jobs at a time, each as soon as the steps it needs have ended, in plan
    order otherwise. Returns False when interrupted (Ctrl-C or SIGTERM): running steps are left to
    save and stop, later ones are not started."""
    markers: dict[str, dict] = {}
    pending, jobs = list(steps), {}
    ended = 0
    unsettled = {s.id for s in steps}

    def report(step):
        nonlocal ended
        ended += 1
        unsettled.discard(step.id)
        took = f" ({step.wall_s:.1f} s)" if step.wall_s is not None and step.status != "done" else ""
        print(f"[{ended:3d}/{len(steps)}] {step.id:34s} {step.status}{took}"
              f"{': ' + step.reason if step.reason else ''}", flush=True)

    def on_term(signum, frame):
        for pid in jobs:
            os.kill(pid, signal.SIGTERM)
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, on_term)
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background
    interrupted = False
    try:
        while pending or jobs:
            try:
                while pending and len(jobs) < cfg.jobs:
                    step = next((s for s in pending if not any(d in unsettled for d in (*s.needs, *s.after))), None)
                    if step is None:
                        break
                    pending.remove(step)
                    marker = prepare(step, cfg, markers)
                    if marker is None:
                        report(step)
                        continue
                    pid = launcher.start(ROOT / step.script, step.argv(), step.out / LOG)
                    jobs[pid] = Job(step, pid, time.time(), marker)
                for job, rc, cpu in launcher.reap(jobs, block=True):
                    finish(job, rc, cpu, markers)
                    report(job.step)
            except KeyboardInterrupt:
                # The children got the same Ctrl-C (or our SIGTERM) and are saving: wait for them.
                interrupted = True
                pending.clear()
                for job in jobs.values():
                    job.interrupted = True
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)
    for step in steps:
        if step.status == "planned":
            step.status, step.reason = "not run", "the pipeline was interrupted before this step"
    return not interrupted


def _clear(path: Path, runs: Path) -> None:
    """Remove a step's previous outputs, but only ever inside the runs folder."""
    path, runs = path.resolve(), runs.resolve()
    if runs in path.parents:
        shutil.rmtree(path)


# --- the command line -----------------------------------------------------------------------------

def has_cuda() -> bool:
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # asks NVML: safe before fork
    import torch

    return torch.cuda.is_available()


def parse_extra(values: list[str]) -> list[tuple[str | None, str, str]]:
    kinds = ("train", *SCRIPTS)
    out = []
    for v in values:
        key, sep, options = v.partition("=")
        method, _, kind = key.rpartition(".")
        if not sep or kind not in kinds or (method and method not in (*METHODS, "baselines")):
            raise SystemExit(f"error: --extra {v!r} must look like [METHOD.]STEP=OPTIONS with STEP one of "
                             f"{', '.join(kinds)} (e.g. dino.train='--out-dim 1024')")
        try:
            shlex.split(options)
        except ValueError as e:  # e.g. an unterminated quote
            raise SystemExit(f"error: --extra {v!r} does not split into options ({e}); "
                             "balance its quotes, e.g. --extra \"dino.train=--out-dim 1024\"") from None
        out.append((method or None, kind, options))
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="./run_all.sh", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train every method, evaluate it with every protocol and write reports/REPORT.md. "
                    "Resumable: a step whose result exists is skipped; re-run the same command after an "
                    "interruption.",
        epilog="profiles (tables in eval/pipeline.py):\n"
               "  smoke  whole pipeline in minutes on CPU (tests): 16 px, 64 images, 1 epoch\n"
               "  cpu    every protocol and figure on `shapes` on a 2-core CPU (docs/report-cpu: 41 minutes)\n"
               "  gpu    the reference settings on CIFAR-10 (ResNet-50 / ViT-T/4, 200 epochs), one GPU\n"
               "exit code: 0 all steps succeeded, 1 a step failed / was blocked / is missing, 130 interrupted")
    p.add_argument("--profile", choices=PROFILES, default=None, help="default: gpu with a GPU, cpu without")
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help=f"methods to run (default: all: {' '.join(METHODS)}; commas also separate)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0],
                   help="seeds; several give mean ± std in the report")
    p.add_argument("--data", default=None, help="training (and evaluation) data: registry name or path "
                                                "(default: the profile's)")
    p.add_argument("--data-root", default=None, help="where datasets live (default: $SSL_DATA or ./data)")
    p.add_argument("--eval-data", default=None, help="labelled data for kNN / linear / fine-tuning / t-SNE / "
                                                     "retrieval (default: --data)")
    p.add_argument("--mask-data", default=None, help="data with segmentation masks for Jaccard (default: shapes)")
    p.add_argument("--runs", default=str(ROOT / "runs"), help="where run directories go")
    p.add_argument("--out", default=str(ROOT / "reports"), help="where REPORT.md, its figures and pipeline.json go")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"), help="device of every step")
    p.add_argument("--force", action="store_true", help="re-run steps whose results exist")
    p.add_argument("--extra", action="append", default=[], metavar="[METHOD.]STEP=OPTIONS",
                   help="more options for one step, e.g. dino.train='--out-dim 1024' or linear='--epochs 50'")
    p.add_argument("--launcher", choices=("fork", "subprocess"), default=None,
                   help="fork: import torch once, run each step in a forked child (default on Linux for "
                        "smoke and cpu); subprocess: plain `python script.py` per step")
    p.add_argument("--jobs", type=int, default=None,
                   help="steps run at the same time (default: smoke and cpu: one per CPU core, at most 2; gpu: 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of every step (default: 1 when several steps run at once, which on small "
                        "tensors beats one step with 2 threads and degrades far less on a busy machine; "
                        "torch's choice otherwise)")
    p.add_argument("--dry-run", action="store_true", help="print the steps and their status, run nothing")
    return p


def parse_args(argv=None):
    cfg = build_parser().parse_args(argv)
    methods = [m for v in (cfg.methods or METHODS) for m in v.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"error: unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    cfg.methods = list(dict.fromkeys(methods))
    cfg.seeds = list(dict.fromkeys(cfg.seeds))
    cfg.extra = parse_extra(cfg.extra)
    if cfg.profile is None:
        cfg.profile = "gpu" if has_cuda() else "cpu"
    if cfg.launcher is None:
        cfg.launcher = "fork" if (sys.platform.startswith("linux") and cfg.profile != "gpu") else "subprocess"
    if cfg.jobs is None:
        cfg.jobs = 1 if cfg.profile == "gpu" else max(1, min(2, os.cpu_count() or 1))
    if cfg.threads is None and cfg.jobs > 1 and cfg.profile != "gpu":
        cfg.threads = 1
    if cfg.jobs < 1 or (cfg.threads is not None and cfg.threads < 1):
        raise SystemExit("error: --jobs and --threads must be >= 1")
    if cfg.launcher == "fork" and not hasattr(os, "fork"):
        raise SystemExit("error: --launcher fork needs a platform with fork(); use --launcher subprocess")
    cfg.runs, cfg.out = _from_root(cfg.runs), _from_root(cfg.out)
    from common.options import output_problem

    for option, folder in (("--runs", cfg.runs), ("--out", cfg.out)):
        problem = output_problem(folder, option)
        if problem:
            raise SystemExit(f"error: {problem}")
    for name in ("data", "eval_data", "mask_data"):  # a path (not a registry name) is read from the root
        if getattr(cfg, name) and Path(getattr(cfg, name)).exists():
            setattr(cfg, name, str(_from_root(getattr(cfg, name))))
    if cfg.data_root:
        cfg.data_root = str(_from_root(cfg.data_root))
    return cfg


def _from_root(path) -> Path:
    """A path given on the command line, as the steps (run from the repository root) must see it:
    relative to the root when it lies inside, so that commands and reports stay portable."""
    path = Path(path).absolute()
    try:
        return path.relative_to(ROOT)
    except ValueError:
        return path


def host() -> dict:
    import torch

    return {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__}


def report_digest(steps: list[Step], cfg) -> str:
    """What the report is made of: every step's outcome, the options, and the report code itself."""
    h = hashlib.sha256()
    for s in steps:
        m = read_marker(s) or {}
        h.update(json.dumps([s.id, s.status if s.status != "done" else "ok", m.get("finished"),
                             s.reason]).encode())
    h.update(json.dumps([cfg.profile, cfg.methods, cfg.seeds]).encode())
    h.update((ROOT / "eval" / "report.py").read_bytes())
    return h.hexdigest()


def main(argv=None) -> int:
    cfg = parse_args(argv)
    os.chdir(ROOT)  # every command is run, and every relative path read, from the repository root
    steps = plan(cfg)
    if cfg.dry_run:
        markers = {}
        for s in steps:
            m = read_marker(s)
            done = m is not None and is_done(s, markers)
            if m:
                markers[s.id] = m
            print(f"{'done' if done else 'todo':4}  {s.command()}")
        return 0

    print(f"[run_all] profile {cfg.profile}, methods {' '.join(cfg.methods)}, seeds "
          f"{' '.join(map(str, cfg.seeds))}: {len(steps)} steps, {cfg.jobs} at a time "
          f"({cfg.launcher} launcher, {cfg.threads or 'default'} thread(s) each); runs in {cfg.runs}, "
          f"report in {cfg.out}", flush=True)
    t0, started = time.time(), time.strftime("%Y-%m-%d %H:%M:%S")
    launcher = Launcher(cfg.launcher, cfg.threads)
    if cfg.launcher == "fork":
        prepare_data(cfg)
    finished = run_all(steps, cfg, launcher)

    cfg.out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "command": shlex.join(["./run_all.sh", *(sys.argv[1:] if argv is None else argv)]),
        "profile": cfg.profile, "methods": cfg.methods, "seeds": cfg.seeds, "runs": str(cfg.runs),
        "data": cfg.data or DATA[cfg.profile][0], "eval_data": cfg.eval_data or cfg.data or DATA[cfg.profile][0],
        "mask_data": cfg.mask_data or DATA[cfg.profile][1], "device": cfg.device, "launcher": cfg.launcher,
        "threads": cfg.threads, "jobs": cfg.jobs,
        "started": started, "wall_s": round(time.time() - t0, 1), "host": host(),
        "settings": {"common_train": COMMON_TRAIN[cfg.profile],
                     "train": {m: list(TRAIN[cfg.profile][m]) for m in cfg.methods},
                     "also": {m: list(ALSO[cfg.profile][m]) for m in cfg.methods if m in ALSO[cfg.profile]},
                     "baselines": {row: baseline_key(method, arch)
                                   for row, method, arch, _ in trained_rows(cfg.profile, cfg.methods)},
                     "eval": EVAL[cfg.profile], "protocol": PROTOCOL},
        "steps": [{"id": s.id, "row": s.row, "kind": s.kind, "seed": s.seed, "script": s.script,
                   "command": s.command(), "out": str(s.out), "status": s.status, "reason": s.reason,
                   "wall_s": s.wall_s, "marker": read_marker(s)} for s in steps],
    }
    (cfg.out / "pipeline.json").write_text(json.dumps(manifest, indent=2) + "\n")

    from eval import report

    digest = report_digest(steps, cfg)
    stamp = cfg.out / ".report-digest"
    if (cfg.out / "REPORT.md").exists() and stamp.exists() and stamp.read_text() == digest and not cfg.force:
        print(f"[run_all] nothing changed: {cfg.out / 'REPORT.md'} is up to date", flush=True)
    else:
        report.write_report(manifest, cfg.out)
        stamp.write_text(digest)
        print(f"[run_all] wrote {cfg.out / 'REPORT.md'}", flush=True)

    bad = [s for s in steps if s.status in ("failed", "blocked", "missing", "interrupted", "not run")]
    counts = {k: sum(s.status == k for s in steps) for k in dict.fromkeys(s.status for s in steps)}
    print(f"[run_all] {', '.join(f'{v} {k}' for k, v in counts.items())} in {time.time() - t0:.0f} s", flush=True)
    if not finished:
        return 130
    if bad:
        for s in bad:
            print(f"[run_all] {s.status}: {s.id}: {s.reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
