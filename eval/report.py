"""Assemble REPORT.md (and its figures beside it) from what `./run_all.sh` recorded.

Reads the pipeline's manifest (`<out>/pipeline.json`: every step, its command, status and marker)
and, for each step, its result JSON (the evaluation scripts' output) and the run directories
(`config.json`, `metrics.jsonl`, the figures the methods draw). Writes `<out>/results.json` first:
one record per (method, backbone, seed) and per baseline (random init and supervised per backbone,
raw pixels per image size), every number with the test count n it was measured on. Then
`<out>/REPORT.md`, rendered from it, and `<out>/figures/`: the Reading (each method's kNN against its
baselines with 95 % binomial noise, and a verdict), the results table (mean ± std over seeds), the
training and collapse curves of all methods on shared axes, and copies of every evaluation and
method figure. Anything that did not run is listed in "Not run" with the reason, never dropped.

    python eval/report.py --out reports          # re-assemble from reports/pipeline.json
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's code first (docs/ARCHITECTURE.md)

METHOD_ORDER = ("dino", "byol", "barlow_twins", "dino_twins", "jigsaw", "colorization")
TITLES = {"dino": "DINO", "byol": "BYOL", "barlow_twins": "Barlow Twins", "dino_twins": "DINO-Twins",
          "jigsaw": "Jigsaw", "colorization": "Colorization"}
# The fields of a results.json record: key → (evaluation, its value, the test queries it was measured
# on), read from the evaluation's JSON; percent, as the scripts write them.
FIELDS = {
    "knn_top1": ("knn", lambda j: _get(j, "by_k", "20", "top1", default=j.get("top1")), lambda j: j.get("n_test")),
    "linear_10": ("linear", lambda j: _get(j, "by_label_fraction", "0.1", "top1"), lambda j: j.get("n_test")),
    "linear_100": ("linear", lambda j: _get(j, "by_label_fraction", "1", "top1"), lambda j: j.get("n_test")),
    "finetune_20": ("finetune", lambda j: j.get("top1"), lambda j: j.get("n_test")),
    "scratch_20": ("scratch", lambda j: j.get("top1"), lambda j: j.get("n_test")),
    "retrieval_p5": ("retrieval", lambda j: j.get("precision_at_5"), lambda j: j.get("n_queries")),
    "jaccard_best_head": ("jaccard", lambda j: j.get("jaccard"), lambda j: j.get("n_images")),
    "jaccard_best_head_se": ("jaccard", lambda j: _get(j, "rows", "checkpoint", "dino_best_head_se"),
                             lambda j: j.get("n_images")),
    "tsne_silhouette_first": ("tsne", lambda j: _silhouette(j, 0), lambda j: _silhouette(j, 0, "n_points")),
    "tsne_silhouette_last": ("tsne", lambda j: _silhouette(j, -1), lambda j: _silhouette(j, -1, "n_points")),
}
RECORD_KEYS = ("method", "backbone", "seed", "knn_top1", "linear_10", "linear_100", "finetune_20", "scratch_20",
               "jaccard_best_head", "tsne_silhouette_first", "tsne_silhouette_last", "pretext")
UNITS = ("percent: accuracies (knn_top1, linear_*, finetune_20, scratch_20), retrieval_p5, jaccard_best_head "
         "and pretext values; tsne_silhouette_*: cosine silhouette of the classes, -1 to 1")
# (column, record key): the Results table
COLUMNS = (
    ("kNN@20 top-1", "knn_top1"), ("linear 10 %", "linear_10"), ("linear 100 %", "linear_100"),
    ("fine-tune 20 %", "finetune_20"), ("supervised from scratch 20 %", "scratch_20"),
    ("retrieval P@5", "retrieval_p5"), ("Jaccard (best head)", "jaccard_best_head"),
)
ACCURACIES = ("knn_top1", "linear_10", "linear_100", "finetune_20", "scratch_20")  # binomial: the figure's bars
# The pretext task's own score, from the run's metrics.jsonl: method → (metric, name, its chance level
# from (config.json, the metrics row), what that chance level is)
PRETEXT = {
    "jigsaw": ("perm_acc", "permutation accuracy",
               lambda cfg, row: 100 / n if (n := _get(cfg, "args", "num_permutations")) else None,
               "chance: 1 / number of permutations"),
    "colorization": ("ab_auc", "ab AUC",  # of the annealed-mean colours, error thresholds 0-150
                     lambda cfg, row: row.get("val_ab_auc_gray"), "grey: the AUC of predicting no colour"),
}
Z95 = 1.96  # two-sided 95 % of a normal
RUN_FIGURES = ("loss.png", "knn.png", "diagnostics.png")  # every run's, drawn by the engine
COLLAPSE = re.compile(r"(std|entropy|^kl$|diag)")
OK = ("ok", "done")


def _get(d, *keys, default=None):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def _load(path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, TypeError, json.JSONDecodeError):
        return None


def _metrics(run_dir: Path) -> list[dict]:
    rows = []
    path = run_dir / "metrics.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n − 1), None for a single value."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def fmt(values: list[float]) -> str:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return "—"
    mean, std = mean_std(values)
    return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f} (n={len(values)})"


def _number(value) -> float | None:
    """A finite number, else None (results.json holds no NaN)."""
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _silhouette(j: dict, index: int, field: str = "silhouette_cosine"):
    checkpoints = j.get("checkpoints") or []
    return checkpoints[index].get(field) if checkpoints else None


def binomial_se(p: float, n: int | None) -> float | None:
    """Standard error, in points, of an accuracy of p % measured on n test queries."""
    if not n:
        return None
    q = min(max(p / 100, 0.0), 1.0)
    return 100 * math.sqrt(q * (1 - q) / n)


def summarise(records: list[dict], key: str) -> dict | None:
    """Mean over the records (seeds) of one field, with its standard error: the value's own where
    every record carries one (`<key>_se`, e.g. the Jaccard's over images), else, for an accuracy, the
    binomial error of the n test queries. Every seed measures on the same queries or images, so more
    seeds do not shrink it; with several seeds the seed std of the mean (std / √seeds) is added in
    quadrature. None without values."""
    kept = [r for r in records if _number(r.get(key)) is not None]
    if not kept:
        return None
    mean, std = mean_std([r[key] for r in kept])
    ns = [n for r in kept if (n := (r.get("n_test") or {}).get(key))]
    n = min(ns) if ns else None
    own = [_number(r.get(f"{key}_se")) for r in kept]
    own_se = sum(own) / len(own) if None not in own else None
    binomial = binomial_se(mean, n) if own_se is None and key in ACCURACIES else None
    measured = own_se if own_se is not None else binomial
    se = None if measured is None else math.sqrt(measured ** 2 + (std or 0.0) ** 2 / len(kept))
    return {"mean": mean, "std": std, "seeds": len(kept), "n": n, "binomial_se": binomial, "se": se}


def verdict(method: dict | None, baseline: dict | None, name: str = "kNN") -> str:
    """Has the method learned? Its summary (kNN, or `name`) against its best baseline's: learned when
    the margin exceeds the 95 % noise of the difference, 1.96·√(se₁² + se₂²)."""
    if method is None:
        return f"no {name} result"
    if baseline is None:
        return "no baseline result to compare with"
    margin = method["mean"] - baseline["mean"]
    if method["se"] is None or baseline["se"] is None:
        return f"{name} {method['mean']:.1f} % vs baseline {baseline['mean']:.1f} %, noise unknown (no test counts)"
    noise = Z95 * math.sqrt(method["se"] ** 2 + baseline["se"] ** 2)
    numbers = (f"{name} {method['mean']:.1f} % vs baseline {baseline['mean']:.1f} % "
               f"(margin {margin:.1f} points, noise ±{noise:.1f})")
    if margin > noise:
        return f"learned: {numbers}"
    if margin < -noise:  # as clear as a win, the other way: saying "not distinguishable" would hide it
        return f"below its baseline: {numbers}"
    return f"not distinguishable from its baseline: {numbers}"


def band(summary: dict | None, digits: int = 1, with_n: bool = False) -> str:
    """'62.0 ± 4.3' (the 95 % binomial band), with the seed std where several seeds ran."""
    if summary is None:
        return "—"
    text = f"{summary['mean']:.{digits}f}"
    if summary["binomial_se"] is not None:
        text += f" ± {Z95 * summary['binomial_se']:.{digits}f}"
    notes = [f"n = {summary['n']}"] if with_n and summary["n"] else []
    if summary["std"] is not None:
        notes.append(f"seed std {summary['std']:.{digits}f} over {summary['seeds']} seeds")
    return text + (f" ({', '.join(notes)})" if notes else "")


def new_record(method: str, backbone: str | None, seed: int) -> dict:
    """A results.json record: every key present, None until an evaluation fills it; `n_test` holds
    each value's test queries, `missing` the status of a step that should have given one."""
    record = {k: None for k in RECORD_KEYS}
    record.update(method=method, backbone=backbone, seed=seed, image_size=None, num_classes=None,
                  retrieval_p5=None, jaccard_best_head_se=None, n_test={}, missing={})
    return record


class Trained(NamedTuple):
    """One training run's row of the report: a method on its profile backbone (row: the method), or
    on the second backbone the profile also trains it on (row: "method backbone", eval/pipeline.py ALSO)."""
    row: str
    method: str
    arch: str | None
    main: bool
    base: str | None  # the backbone of its baselines: arch, or arch-L for an L-input network (pipeline.INPUT)

    @property
    def label(self) -> str:
        return TITLES[self.method] if self.main else f"{TITLES[self.method]} {self.arch}"

    @property
    def slug(self) -> str:  # its figures' folder
        return self.row.replace(" ", "-")

    @property
    def vit(self) -> bool:
        return (self.arch or "").startswith("vit")


def _rel(path: Path, out: Path) -> str:
    return Path(path).relative_to(out).as_posix()


class Report:
    def __init__(self, manifest: dict, out: Path):
        self.m, self.out = manifest, Path(out)
        self.fig_dir = self.out / "figures"
        self.steps = manifest["steps"]
        self.by_id = {s["id"]: s for s in self.steps}
        self.lines: list[str] = []
        self.data: dict = {}  # results.json once written

    # --- data -------------------------------------------------------------------------------------
    def result(self, step: dict) -> dict | None:
        marker = step.get("marker") or {}
        if step["status"] not in OK or not marker.get("result") or step["kind"] == "train":
            return None
        return _load(marker["result"])

    def find(self, row: str, kind: str, seed: int | None = None) -> list[dict]:
        return [s for s in self.steps if s["row"] == row and s["kind"] == kind and (seed is None or s["seed"] == seed)]

    def methods(self) -> list[str]:
        return [m for m in METHOD_ORDER if m in self.m["methods"]]

    def trained(self) -> list[Trained]:
        """Every training run's row, each method's in METHOD_ORDER: its profile backbone, then its second."""
        settings = self.m["settings"]
        train, also, bases = settings["train"], settings.get("also", {}), settings.get("baselines", {})
        out = []
        for method in self.methods():
            arch = (train.get(method) or [None])[0]
            out.append(Trained(method, method, arch, True, bases.get(method, arch)))
            if method in also:
                row, arch = f"{method} {also[method][0]}", also[method][0]
                out.append(Trained(row, method, arch, False, bases.get(row, arch)))
        return out

    def bases(self) -> list[str | None]:
        """The backbones of the baselines, in the order of the runs judged against them."""
        return list(dict.fromkeys(t.base for t in self.trained()))

    def run_dir(self, row: str, seed: int) -> Path | None:
        steps = self.find(row, "train", seed)
        return Path(steps[0]["out"]) if steps else None

    def copy(self, src: Path, *parts: str) -> Path:
        dst = self.fig_dir.joinpath(*parts)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        return dst

    def image(self, src: Path, alt: str, *parts: str) -> str:
        return f"![{alt}]({_rel(self.copy(src, *parts), self.out)})"

    # --- results.json: every number of the tables, per row and seed ---------------------------------
    def fill(self, record: dict, key: str, steps: list[dict]) -> None:
        """Set `record[key]` (and its n) from the first of `steps` that gave a result; remember the
        status when none did, so the table can say *failed* rather than 'does not apply'."""
        kind, read, count = FIELDS[key]
        found = [j for s in steps if s["kind"] == kind and (j := self.result(s))]
        if not found:
            if steps:
                record["missing"][key] = next((s["status"] for s in steps if s["status"] not in OK), "no result")
            return
        j = found[0]
        record[key] = _number(read(j))
        if count(j):
            record["n_test"][key] = int(count(j))
        if kind in ("knn", "linear"):  # the size and classes of the accuracies (Jaccard reads other data)
            for field in ("image_size", "num_classes"):
                record[field] = record[field] or j.get(field)

    def records(self) -> list[dict]:
        """One record per (method, backbone, seed), then the baselines': random init and supervised per
        backbone, raw pixels per image size."""
        out, seeds = [], self.m["seeds"]
        for t in self.trained():
            for seed in seeds:
                r = new_record(t.method, t.arch, seed)
                for key, (kind, _, _) in FIELDS.items():
                    self.fill(r, key, self.find(f"supervised {t.base}" if kind == "scratch" else t.row, kind, seed))
                run = self.run_dir(t.row, seed)
                r["pretext"] = pretext(t.method, run) if run else None
                out.append(r)
        for arch in self.bases():
            vits = [t.row for t in self.trained() if t.base == arch and t.vit]
            for seed in seeds:
                r = new_record(f"random init {arch}", arch, seed)
                for key in ("knn_top1", "linear_10", "linear_100"):
                    self.fill(r, key, self.find(f"random init {arch}", FIELDS[key][0], seed))
                self.fill_random_jaccard(r, [s for row in vits for s in self.find(row, "jaccard", seed)])
                out.append(r)
                r = new_record(f"supervised {arch}", arch, seed)
                self.fill(r, "scratch_20", self.find(f"supervised {arch}", "scratch", seed))
                out.append(r)
        pixels: dict[tuple, dict] = {}
        for s in self.find("raw pixels", "knn") + self.find("raw pixels", "linear"):
            size = s["id"].split("/")[1].removeprefix("pixels")  # baselines/pixels<size>/s<seed>/<kind>
            r = pixels.setdefault((s["seed"], size), new_record("raw pixels", None, s["seed"]))
            r["image_size"] = int(size) if size.isdigit() else r["image_size"]  # known even if both failed
            for key in (("knn_top1",) if s["kind"] == "knn" else ("linear_10", "linear_100")):
                self.fill(r, key, [s])
        return out + sorted(pixels.values(), key=lambda r: (r["image_size"] or 0, r["seed"]))

    def fill_random_jaccard(self, record: dict, steps: list[dict]) -> None:
        """Every ViT run scores the same seeded random network beside its own: the first one's."""
        for s in steps:
            j = self.result(s)
            if j and (value := _number(_get(j, "rows", "random_init", "dino_best_head"))) is not None:
                record["jaccard_best_head"] = value
                record["jaccard_best_head_se"] = _number(_get(j, "rows", "random_init", "dino_best_head_se"))
                record["n_test"]["jaccard_best_head"] = _get(j, "rows", "random_init", "n_images",
                                                             default=j.get("n_images"))
                return
        if steps:
            record["missing"]["jaccard_best_head"] = next((s["status"] for s in steps if s["status"] not in OK),
                                                          "no result")

    def write_results(self) -> Path:
        """results.json, which the tables and the Reading are then rendered from."""
        m = self.m
        data = {
            "units": UNITS, "n_test": "per record, the number of test queries (images) each value was measured on",
            "missing": "per record, the status of a step that gave no value (a null without it does not apply)",
            "profile": m["profile"], "command": m["command"], "started": m.get("started"),
            "wall_s": m.get("wall_s"), "steps_wall_s": round(sum((s.get("marker") or {}).get("wall_s") or 0
                                                                 for s in self.steps), 1),
            "methods": self.methods(), "seeds": m["seeds"], "data": m.get("data"), "eval_data": m.get("eval_data"),
            "mask_data": m.get("mask_data"), "device": m.get("device"), "host": m.get("host", {}),
            "settings": m.get("settings"), "commands": {s["id"]: s["command"] for s in self.steps},
            "records": self.records(),
        }
        path = self.out / "results.json"
        path.write_text(json.dumps(data, indent=1) + "\n")
        return path

    def rows_of(self, method: str, **where) -> list[dict]:
        return [r for r in self.data["records"] if r["method"] == method
                and all(r.get(k) == v for k, v in where.items())]

    def records_of(self, t: Trained) -> list[dict]:
        return self.rows_of(t.method, backbone=t.arch)

    def pixel_sizes(self) -> list:
        return list(dict.fromkeys(r["image_size"] for r in self.rows_of("raw pixels")))

    # --- sections ---------------------------------------------------------------------------------
    def write(self) -> Path:
        if self.fig_dir.exists():
            shutil.rmtree(self.fig_dir)
        self.fig_dir.mkdir(parents=True)
        # results.json first: the Reading and the tables are rendered from what it holds
        self.data = json.loads(self.write_results().read_text())
        for section in (self.header, self.reading, self.results, self.curves, self.collapse, self.tsne, self.retrieval,
                        self.attention, self.colourisations, self.puzzles, self.cross_correlation,
                        self.other_figures, self.settings, self.runs, self.not_run):
            section()
            self.lines.append("")
        path = self.out / "REPORT.md"
        path.write_text("\n".join(self.lines).rstrip() + "\n")
        return path

    def add(self, *lines: str):
        self.lines.extend(lines)

    def header(self):
        m, host = self.m, self.m.get("host", {})
        wall = sum((s.get("marker") or {}).get("wall_s") or 0 for s in self.steps)
        cpu = sum((s.get("marker") or {}).get("cpu_s") or 0 for s in self.steps)
        self.add("# ssl-lab report", "",
                 f"Profile **{m['profile']}**; methods {', '.join(TITLES.get(x, x) for x in self.methods())}; "
                 f"seeds {', '.join(map(str, m['seeds']))}; training and evaluation data `{m['data']}` "
                 f"(evaluation: `{m['eval_data']}`, masks: `{m['mask_data']}`).", "",
                 f"- regenerate: `{m['command']}`",
                 f"- generated: {time.strftime('%Y-%m-%d %H:%M:%S')} (this invocation started {m['started']}, "
                 f"took {m['wall_s']:.0f} s)",
                 f"- the steps as they last ran: {wall / 60:.1f} min of wall time summed over steps "
                 f"({m.get('jobs', 1)} at a time), {cpu / 60:.1f} min of CPU time",
                 f"- host: {host.get('platform')}, {host.get('cpus')} CPUs, Python {host.get('python')}, "
                 f"torch {host.get('torch')}; device option `{m['device']}`, launcher `{m['launcher']}`, "
                 f"{m.get('threads') or 'default'} thread(s) per step",
                 f"- steps: {self._counts()}",
                 "- every number below, per seed and with the test count it was measured on: `results.json`")

    def _counts(self) -> str:
        counts: dict[str, int] = {}
        for s in self.steps:
            counts[s["status"]] = counts.get(s["status"], 0) + 1
        return ", ".join(f"{v} {k}" for k, v in counts.items())

    def reading(self):
        self.add("## Reading", "",
                 "Accuracies in % from `results.json`, ± the 95 % binomial band 1.96·√(p(1−p)/n) of the n test "
                 "queries (with several seeds, the seed std beside it). A method has learned something when its "
                 "kNN top-1 beats the better of its baselines — the randomly initialised network of the same "
                 "backbone and input (`-L`: Colorization's network, which sees the lightness only) and the raw "
                 "pixels at the same image size — by more than the 95 % noise of the "
                 "difference, 1.96·√(se₁² + se₂²) (se: the binomial standard error, with the seed std of the mean "
                 "in quadrature when several seeds ran); *below* when it trails by as much. Pretext: the task's own "
                 "score at the end of training beside its chance level.", "",
                 "| method | kNN@20 top-1 | random init | raw pixels | linear 10 % / 100 % | fine-tune 20 % / "
                 "scratch 20 % | Jaccard / random init ViT | t-SNE silhouette first → last | pretext |",
                 "|---|---|---|---|---|---|---|---|---|")
        verdicts = []
        for t in self.trained():
            row, line = self._reading_row(t)
            self.add(row)
            verdicts.append(line)
        for t in (t for t in self.trained() if t.vit):  # and what its attention learned
            own, init = (summarise(records, "jaccard_best_head")
                         for records in (self.records_of(t), self.rows_of(f"random init {t.base}")))
            verdicts.append(f"- **{t.label}**, attention (best head's 60 % mask against "
                            f"the ground truth; baseline: the random {t.arch}; noise: the standard error over "
                            f"images): {verdict(own, init, 'Jaccard')}")
        self.add("", *verdicts)

    def _reading_row(self, t: Trained) -> tuple[str, str]:
        """(the Reading's table row, its verdict line) of one training run."""
        own, init = self.records_of(t), self.rows_of(f"random init {t.base}")
        size = next((r["image_size"] for r in own if r["image_size"]), None)
        pixels = self.rows_of("raw pixels", image_size=size) if size else []
        knn, init_knn, pixels_knn = (summarise(records, "knn_top1") for records in (own, init, pixels))
        bases = {name: s for name, s in ((f"random init {t.base}", init_knn),
                                         (f"raw pixels at {size} px", pixels_knn)) if s}
        best = max(bases, key=lambda b: bases[b]["mean"], default=None)
        jaccard = f"{_mean(own, 'jaccard_best_head')} / {_mean(init, 'jaccard_best_head')}" if t.vit else "—"
        row = (f"| {TITLES[t.method]} ({t.arch}) | {band(knn, with_n=True)} | {band(init_knn)} | "
               f"{band(pixels_knn)} | {_mean(own, 'linear_10')} / {_mean(own, 'linear_100')} | "
               f"{_mean(own, 'finetune_20')} / {_mean(own, 'scratch_20')} | {jaccard} | "
               f"{_mean(own, 'tsne_silhouette_first', 2)} → {_mean(own, 'tsne_silhouette_last', 2)} | "
               f"{_pretext_text(own)} |")
        against = f" (baseline: {best})" if best else ""
        return row, f"- **{t.label}**{against}: {verdict(knn, bases.get(best))}"

    def results(self):
        knn = [j for s in self.steps if s["kind"] == "knn" and (j := self.result(s))]
        sizes = sorted({(j.get("n_test"), j.get("n_train")) for j in knn if j.get("n_test")})
        counts = "; ".join(f"{q} test queries against {b} train images" for q, b in sizes)
        self.add("## Results", "",
                 "Top-1 accuracy (%) on the test split of the evaluation data; Jaccard index (%) of the 60 % "
                 "attention-mass masks (DINO protocol: best head per object). Mean ± sample standard deviation "
                 f"over seeds when several ran. kNN: k = 20, T = 0.07, cosine on L2-normalised features"
                 f"{' (' + counts + ')' if counts else ''}. Linear: "
                 "probe on frozen features with 10 % / 100 % of the labels (per class). Fine-tune: whole backbone "
                 "+ linear head on 20 % of the labels; *supervised from scratch*: the same backbone, random "
                 "initialisation, same 20 % and schedule (DINO on Imagenette with 20 % labels against supervised "
                 "from scratch, as in 'A Deep Dive into the DINO Algorithm'). Baseline rows: the randomly "
                 "initialised network of each backbone (the first run's epoch-0 snapshot; `-L`: the network that sees "
                 "the lightness only, Colorization's), supervised training of the same network, "
                 "and the raw pixels (the eval view flattened, each channel standardised) at each image size. "
                 "`—`: does not apply (e.g. Jaccard needs a ViT); *failed* / *blocked* / *missing*: see Not run. "
                 "Every number, per seed and with its test count, is in `results.json`.",
                 "")
        header = ["method", "backbone", *(c[0] for c in COLUMNS)]
        self.add("| " + " | ".join(header) + " |", "|" + "---|" * len(header))
        rows = [(TITLES[t.method], t.arch, self.records_of(t), t.label) for t in self.trained()]
        rows += [("random init (baseline)", arch, self.rows_of(f"random init {arch}"), f"random init {arch}")
                 for arch in self.bases()]
        rows += [("raw pixels (baseline)", f"{size} px", self.rows_of("raw pixels", image_size=size),
                  f"raw pixels {size} px") for size in self.pixel_sizes()]
        for title, backbone, records, _ in rows:
            self.add(f"| {title} | {backbone} | " + " | ".join(_cell(records, key) for _, key in COLUMNS) + " |")
        self.add("")
        path = self._results_figure([(label, records) for *_, records, label in rows])
        if path:
            self.add(f"![results]({_rel(path, self.out)})", "",
                     "*Figure: the accuracies of the table as bars (mean over seeds); error bars: the 95 % "
                     "binomial band 1.96·√(p(1−p)/n) of the bar's n test queries, with the seed std of the mean "
                     "added in quadrature where several seeds ran; the grey band is chance ± 2 binomial standard "
                     "errors, the noise of a classifier with no signal. Fine-tuning from each method's backbone "
                     "versus the same backbone trained from scratch on the same 20 % of the labels.*")

    def _results_figure(self, rows: list[tuple[str, list[dict]]]) -> Path | None:
        """Bars of the accuracies: rows are (label, records)."""
        plt = _pyplot()
        names = {key: name for name, key in COLUMNS if key in ACCURACIES}
        rows = [(label, records) for label, records in rows if any(summarise(records, k) for k in names)]
        if not rows:
            return None
        fig, ax = plt.subplots(figsize=(max(8, 1.4 * len(rows) + 4), 4))
        width = 0.8 / len(names)
        for i, (key, name) in enumerate(names.items()):
            stats = [(k, s) for k, (_, records) in enumerate(rows) if (s := summarise(records, key))]  # no bar: —
            ax.bar([k + i * width for k, _ in stats], [s["mean"] for _, s in stats], width, label=name,
                   yerr=[Z95 * s["se"] if s["se"] is not None else 0 for _, s in stats], capsize=2,
                   error_kw={"lw": 0.8}, color=f"C{i}")
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(rows))], [t for t, _ in rows], rotation=20, ha="right")
        records = self.data["records"]
        classes = [r["num_classes"] for r in records if r["num_classes"]]
        n_test = [r["n_test"]["knn_top1"] for r in records if r["n_test"].get("knn_top1")]
        if classes:
            chance = 100 / classes[0]
            ax.axhline(chance, color="k", ls="--", lw=0.8, label=f"chance ({classes[0]} classes)")
            if n_test:  # where a classifier with no signal lands 95 % of the time on this many test images
                se = binomial_se(chance, min(n_test))
                ax.axhspan(chance - 2 * se, chance + 2 * se, color="k", alpha=0.1,
                           label=f"chance ± 2 s.e. ({min(n_test)} test images)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(f"Results on {self.m['eval_data']} ({self.m['profile']} profile)")
        ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
        ax.grid(axis="y", alpha=0.3)
        return _save(fig, self.fig_dir / "results.png")

    def _series(self, row: str, seed: int):
        run = self.run_dir(row, seed)
        return _metrics(run) if run else []

    def curves(self):
        self.add("## Training curves", "")
        plt = _pyplot()
        fig, (ax_loss, ax_knn) = plt.subplots(1, 2, figsize=(12, 4.2))
        any_loss = any_knn = False
        queries = set()
        for c, t in enumerate(self.trained()):
            for n, seed in enumerate(self.m["seeds"]):
                rows = self._series(t.row, seed)
                steps = [r for r in rows if isinstance(r.get("loss"), (int, float)) and "epoch" in r]
                label = t.label if n == 0 else None
                if steps and math.isfinite(steps[0]["loss"]) and steps[0]["loss"] != 0:
                    first = steps[0]["loss"]
                    ax_loss.plot([r["epoch"] for r in steps], [r["loss"] / first for r in steps],
                                 color=f"C{c}", lw=1.4 if n == 0 else 0.7, label=label)
                    any_loss = True
                knn = [r for r in rows if "knn_top1" in r and "loss" not in r]
                queries |= {r["knn_queries"] for r in knn if "knn_queries" in r}
                if knn:
                    ax_knn.plot([r["epoch"] for r in knn], [r["knn_top1"] for r in knn], "o-", color=f"C{c}",
                                lw=1.4 if n == 0 else 0.7, ms=3, label=label)
                    any_knn = True
        ax_loss.set(xlabel="epoch", ylabel="training loss / loss at the first logged step",
                    title="Training loss of every method (relative: each loss has its own scale)")
        lows, highs = ax_loss.get_ylim()
        log_scale = any_loss and lows > 0 and highs / lows > 20  # linear unless the losses span 20×
        if log_scale:
            ax_loss.set_yscale("log")
        n_queries = "/".join(map(str, sorted(queries))) + " test queries, " if queries else ""
        ax_knn.set(xlabel="epoch", ylabel="kNN top-1 (%)", title=f"kNN monitor on {self.m['eval_data']} "
                   f"({n_queries}k = 20, T = 0.07)")
        for ax, present in ((ax_loss, any_loss), (ax_knn, any_knn)):
            ax.grid(alpha=0.3)
            if present:
                ax.legend(fontsize=8)
            else:
                ax.text(0.5, 0.5, "nothing logged", ha="center", transform=ax.transAxes)
        path = _save(fig, self.fig_dir / "curves.png")
        self.add(f"![training curves]({_rel(path, self.out)})", "",
                 "*Left: each method's training loss divided by its first logged value"
                 + (" (log scale)" if log_scale else "") + ", so that losses of different scales share one axis; "
                 "thin lines are further seeds. Right: the engine's kNN monitor after every epoch"
                 + (f" on {n_queries.rstrip(', ')} (the table's kNN uses the counts under Results)"
                    if queries else "") + ".* Each run's own loss (with validation loss) and kNN curves are "
                 "in [Runs](#runs).")

    def collapse(self):
        from common.figures import diagnostic_dim, draw_reference, reference, run_config, title_and_label

        self.add("## Collapse diagnostics", "")
        seed = self.m["seeds"][0]
        # One panel per diagnostic and vector size d: stds of 256-d and 8192-d embeddings do not share
        # an axis (their healthy values, 1/√d, differ 5.7×).
        panels: dict[tuple[str, int | None], list[Trained]] = {}
        data, configs = {}, {}
        for t in self.trained():
            run = self.run_dir(t.row, seed)
            configs[t.row] = run_config(run) if run else {}
            rows = [r for r in self._series(t.row, seed) if "loss" in r]
            data[t.row] = rows
            for k in sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float))}):
                if COLLAPSE.search(k):
                    panels.setdefault((k, diagnostic_dim(k, configs[t.row])), []).append(t)
        if not panels:
            self.add("No run logged collapse diagnostics (see Not run).")
            return
        plt = _pyplot()
        cols = min(3, len(panels))
        nrows = math.ceil(len(panels) / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(4.8 * cols, 3.5 * nrows), squeeze=False)
        for ax, ((key, dim), runs) in zip(axes.flat, sorted(panels.items(), key=lambda kv: str(kv[0]))):
            drawn = set()
            for t in runs:
                colour = f"C{self.trained().index(t)}"  # the colour of its training curves
                rows = [r for r in data[t.row] if isinstance(r.get(key), (int, float)) and "epoch" in r]
                ax.plot([r["epoch"] for r in rows], [r[key] for r in rows], color=colour, label=t.label)
                ref = reference(key, configs[t.row])
                if ref is not None and ref[1] not in drawn:  # one line per distinct reference (e.g. ln K)
                    draw_reference(ax, ref, colour if key == "teacher_entropy" else "k")
                    drawn.add(ref[1])
            title, ylabel = title_and_label(key)
            ax.set(title=title + (f", d = {dim}" if dim else ""), xlabel="epoch", ylabel=ylabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        fig.suptitle(f"Collapse diagnostics (seed {seed}); dashed: the reference value")
        fig.tight_layout()
        path = _save(fig, self.fig_dir / "collapse.png")
        self.add(f"![collapse diagnostics]({_rel(path, self.out)})", "",
                 "*Feature and embedding std: per-dimension standard deviation of L2-normalised vectors, "
                 "against 1/√d (the value of vectors spread over the sphere; 0 = collapsed to a point), one panel "
                 "per size d. DINO's teacher entropy against ln K (uniform over the K prototypes, one of the two "
                 "collapses; 0 is the other, one-hot) and KL(teacher ‖ student) against 0 (collapse), the two "
                 "curves of DINO's collapse study. Barlow Twins' cross-correlation C against the identity: "
                 "mean diagonal → 1, mean |off-diagonal| → 0.*")

    def _eval_figures(self, title: str, kind: str, caption):
        self.add(f"## {title}", "")
        seed = self.m["seeds"][0]
        for t in self.trained():
            steps = self.find(t.row, kind, seed)
            if not steps:
                continue
            step = steps[0]
            j = self.result(step)
            pngs = sorted(Path(step["out"]).glob("*.png")) if j else []
            if not pngs:
                self.add(f"- {t.label}: *{step['status']}* (see Not run)")
                continue
            self.add(f"### {t.label}", "")
            for png in pngs:
                self.add(self.image(png, f"{t.row} {kind}", f"{t.slug}-s{seed}", png.name), "")
            self.add(caption(j), "")

    def tsne(self):
        def caption(j):
            parts = [f"{c.get('title')}: silhouette {c['silhouette_cosine']:.2f}"
                     for c in j.get("checkpoints", []) if c.get("silhouette_cosine") is not None]
            return (f"*t-SNE of {j.get('checkpoints', [{}])[0].get('n_points', '?')} test images of {j.get('data')} "
                    f"coloured by class, at the snapshots of the run (initialisation = epoch 0, epoch 1, the middle "
                    f"and the last epoch). Silhouette of the classes in feature space (cosine, −1…1): "
                    f"{'; '.join(parts) or 'n/a'}.*")
        self._eval_figures("t-SNE over epochs", "tsne", caption)

    def retrieval(self):
        def caption(j):
            p = j.get("precision_at_5")
            return (f"*First column: query images from the test split; then their 5 nearest neighbours in the train "
                    f"split by cosine similarity of the backbone features, with labels and similarities. "
                    f"Precision@5 over all {j.get('n_queries')} queries: "
                    f"{'n/a' if p is None else f'{p:.1f} %'}.*")
        self._eval_figures("Nearest-neighbour retrieval", "retrieval", caption)

    def attention(self):
        self.add("## Attention maps and masks", "")
        seed = self.m["seeds"][0]
        vit = [t for t in self.trained() if t.vit]
        others = [f"{TITLES[t.method]} ({t.arch})" for t in self.trained() if not t.vit]
        if others:
            self.add(f"Not applicable to {', '.join(others)}: a convolutional backbone has no self-attention.", "")
        for t in vit:
            self.add(f"### {TITLES[t.method]} ({t.arch})", "")
            for kind, caption in (("attention", self._attention_caption), ("jaccard", self._jaccard_caption)):
                steps = self.find(t.row, kind, seed)
                j = self.result(steps[0]) if steps else None
                if not j:
                    self.add(f"- {kind}: *{steps[0]['status'] if steps else 'not run'}* (see Not run)", "")
                    continue
                for png in sorted(Path(steps[0]["out"]).glob("*.png")):
                    self.add(self.image(png, f"{t.row} {kind}", f"{t.slug}-s{seed}", png.name), "")
                self.add(caption(j), "")

    @staticmethod
    def _attention_caption(j):
        return (f"*Last-layer CLS self-attention of each of the {j.get('num_heads')} heads and their maximum, "
                f"overlaid on test images, with the masks that keep {j.get('protocol', {}).get('mass', 0.6):.0%} "
                "of the attention mass (as DINO, Caron et al. 2021, figs. 1 and 3).*")

    @staticmethod
    def _jaccard_caption(j):
        rows = j.get("rows", {})
        text = [f"{name.replace('_', ' ')}: best head {r.get('dino_best_head', float('nan')):.1f}, "
                f"largest object (max-head mask) {_get(r, 'largest_class', 'head_max', default=float('nan')):.1f}, "
                f"union of objects {_get(r, 'union_of_classes', 'head_max', default=float('nan')):.1f}"
                for name, r in rows.items()]
        return (f"*Jaccard index (%) of the 60 % attention-mass masks against the ground-truth masks of "
                f"{j.get('n_images')} `{j.get('data')}` images — {'; '.join(text)}. Columns: image, ground truth, "
                "the best head's mask, the mask of the maximum over heads.*")

    def _method_pngs(self, row: str, seed: int) -> list[Path]:
        run = self.run_dir(row, seed)
        if not run or not run.exists():
            return []
        return sorted(p for p in run.glob("*.png") if p.name not in RUN_FIGURES)

    def _method_section(self, title: str, owners: tuple[str, ...], pattern: str, caption: str):
        self.add(f"## {title}", "")
        seed = self.m["seeds"][0]
        shown = False
        for t in self.trained():
            pngs = [p for p in self._method_pngs(t.row, seed) if re.search(pattern, p.name)]
            if not pngs:
                if t.method in owners:
                    train = self.find(t.row, "train", seed)
                    status = train[0]["status"] if train else "not run"
                    self.add(f"- {t.label}: " + ("the run drew no such figure" if status in OK
                                                 else f"*{status}* (see Not run)"), "")
                continue
            for png in _thin(pngs):
                self.add(f"**{t.label}** — `{png.name}`", "",
                         self.image(png, f"{t.row} {png.stem}", f"{t.slug}-s{seed}", png.name), "")
                shown = True
        missing = [TITLES[m] for m in owners if m not in self.methods()]
        if missing:
            self.add(f"{', '.join(missing)} was not part of this invocation (--methods).", "")
        if shown:
            self.add(caption)

    def colourisations(self):
        self._method_section("Colourisations", ("colorization",), r"colo", "*Grayscale input (the L channel), "
                             "the predicted colours (annealed mean of the 313 ab bins, T = 0.38) and the ground "
                             "truth, for held-out images.*")

    def puzzles(self):
        self._method_section("Jigsaw puzzles", ("jigsaw",), r"puzzle|jigsaw|tile", "*Shuffled tiles as the "
                             "network sees them, the true order and the predicted permutation.*")

    def cross_correlation(self):
        self._method_section("Cross-correlation", ("barlow_twins", "dino_twins"), r"corr",
                             "*Cross-correlation matrix C of the two views' batch-normalised embeddings (the first "
                             "dimensions): Barlow Twins drives it to the identity.*")

    def other_figures(self):
        seed = self.m["seeds"][0]
        rest = [(t, p) for t in self.trained() for p in self._method_pngs(t.row, seed)
                if not re.search(r"colo|puzzle|jigsaw|tile|corr", p.name)]
        if rest:
            self.add("## Other method figures", "")
            for t, png in _thin(rest, key=lambda tp: (tp[0].row, _series_key(tp[1]))):
                self.add(f"**{t.label}** — `{png.name}`", "",
                         self.image(png, f"{t.row} {png.stem}", f"{t.slug}-s{seed}", png.name), "")

    def settings(self):
        s = self.m["settings"]
        self.add("## Settings", "",
                 f"Options every method's `train.py` got in the **{self.m['profile']}** profile: "
                 f"`{s['common_train']}`. Everything not listed keeps the paper default documented in the "
                 "script's `--help`.", "",
                 "| method | backbone | method options |", "|---|---|---|")
        for t in self.trained():
            arch, options = s["train" if t.main else "also"][t.method]
            if not t.main:  # on top of the method's own options
                options = f"{s['train'][t.method][1]} {options}".strip()
            self.add(f"| {TITLES[t.method]} | {arch} | `{options or '(paper defaults)'}` |")
        self.add("", "| evaluation | options (profile) | options (protocol) |", "|---|---|---|")
        for kind, options in s["protocol"].items():
            prof = " ".join(x for x in (s["eval"].get("*", ""), s["eval"].get(
                "finetune" if kind == "scratch" else kind, "")) if x)
            self.add(f"| {kind} | `{prof or '—'}` | `{options or '—'}` |")

    def runs(self):
        self.add("## Runs", "",
                 "Every training run: the exact command, where it ran, versions and wall time; its full "
                 "configuration (every resolved option) is in the collapsed block, its curves below it.", "")
        for t in self.trained():
            for seed in self.m["seeds"]:
                train = self.find(t.row, "train", seed)
                if not train:
                    continue
                step = train[0]
                run = Path(step["out"])
                config = _load(run / "config.json") or {}
                env = config.get("environment", {})
                rows = _metrics(run)
                stop = next((r for r in reversed(rows) if r.get("event") == "stop"), {})
                speed = [r["img_per_s"] for r in rows if isinstance(r.get("img_per_s"), (int, float))]
                marker = step.get("marker") or {}
                self.add(f"### {TITLES[t.method]} ({t.arch}), seed {seed} — {step['status']}", "",
                         "```", step["command"], "```", "",
                         f"- run directory: `{run}`",
                         f"- device {config.get('device', '?')}, AMP {config.get('amp', '?')}, "
                         f"{config.get('world_size', '?')} process(es); "
                         f"{env.get('gpu') or (str(env.get('cpu_threads', '?')) + ' CPU threads')} on "
                         f"{env.get('platform', '?')}",
                         f"- versions: python {env.get('python', '?')}, torch {env.get('torch', '?')}, torchvision "
                         f"{env.get('torchvision', '?')}, numpy {env.get('numpy', '?')}"
                         + (f", CUDA {env['cuda']}" if env.get("cuda") else "")
                         + f"; git commit {env.get('git_commit') or 'unknown'}",
                         f"- {config.get('train_images', '?')} training images, {config.get('steps_per_epoch', '?')} "
                         f"steps per epoch; stopped at step {stop.get('step', '?')} ({stop.get('reason', '?')}); "
                         f"training wall time {stop.get('wall_time_s', '?')} s; step wall time "
                         f"{marker.get('wall_s', '?')} s"
                         + (f"; median {sorted(speed)[len(speed) // 2]:.0f} images/s" if speed else ""), "")
                if config:
                    self.add("<details><summary>config.json</summary>", "", "```json",
                             json.dumps(config.get("args", config), indent=1, default=str), "```", "", "</details>", "")
                for name in RUN_FIGURES:
                    if (run / name).exists():
                        self.add(self.image(run / name, f"{t.row} {name}", f"{t.slug}-s{seed}", f"run-{name}"), "")
                evals = [s for s in self.steps if s["row"] == t.row and s["seed"] == seed and s["kind"] != "train"]
                if evals:
                    self.add("| evaluation | status | wall time (s) | command |", "|---|---|---|---|")
                    for s in evals:
                        wall = (s.get("marker") or {}).get("wall_s")
                        self.add(f"| {s['kind']} | {s['status']} | {'' if wall is None else wall} | "
                                 f"`{s['command']}` |")
                    self.add("")
                for s in evals:
                    j = self.result(s)
                    extra = [p for p in sorted(Path(s["out"]).glob("*.png"))
                             if s["kind"] in ("knn", "linear", "finetune")] if j else []
                    for png in extra:
                        self.add(self.image(png, f"{t.row} {png.stem}", f"{t.slug}-s{seed}", png.name), "")
        base = [s for s in self.steps if s["row"].startswith(("random init", "supervised"))]
        if base:
            self.add("### Baselines", "", "| step | status | wall time (s) | command |", "|---|---|---|---|")
            for s in base:
                wall = (s.get("marker") or {}).get("wall_s")
                self.add(f"| {s['id']} | {s['status']} | {'' if wall is None else wall} | `{s['command']}` |")
            self.add("")
            for s in base:
                j = self.result(s)
                if j and s["kind"] == "scratch":
                    for png in sorted(Path(s["out"]).glob("*.png")):
                        self.add(self.image(png, s["id"], "baselines", f"{s['id'].replace('/', '-')}.png"), "")

    def not_run(self):
        self.add("## Not run", "")
        bad = [s for s in self.steps if s["status"] not in OK]
        skipped = [m for m in METHOD_ORDER if m not in self.m["methods"]]
        vit_only = [TITLES[m] for m in self.methods() if not any(t.vit for t in self.trained() if t.method == m)]
        if not bad and not skipped:
            self.add("Every step of this invocation succeeded.", "")
        for s in bad:
            log = (s.get("marker") or {}).get("log")
            self.add(f"- **{s['id']}** — {s['status']}: {s['reason'] or 'no reason recorded'}"
                     + (f" (log: `{log}`)" if log else "") + f"; command: `{s['command']}`")
        for m in skipped:
            self.add(f"- **{TITLES[m]}** — not selected in this invocation (`--methods`).")
        if vit_only:
            self.add(f"- attention maps and Jaccard for {', '.join(vit_only)} — not applicable (no ViT backbone).")


def _mean(records: list[dict], key: str, digits: int = 1) -> str:
    s = summarise(records, key)
    return "—" if s is None else f"{s['mean']:.{digits}f}"


def _cell(records: list[dict], key: str) -> str:
    """The table cell of one field over seeds: mean ± std, or why there is none."""
    cell = fmt([r[key] for r in records if r.get(key) is not None])
    missing = [r["missing"][key] for r in records if key in r.get("missing", {})]
    return f"*{missing[0]}*" if cell == "—" and missing else cell


def _pretext_text(records: list[dict]) -> str:
    found = [r["pretext"] for r in records if r.get("pretext") and r["pretext"].get("value") is not None]
    if not found:
        return "—"
    p = found[0]
    value = sum(x["value"] for x in found) / len(found)
    chance = "" if p.get("chance") is None else f"{p['chance_is'].split(':')[0]} {p['chance']:.1f} %, "
    return f"{p['name']} {value:.1f} % ({chance}{p.get('split')})"


def pretext(method: str, run_dir: Path) -> dict | None:
    """The pretext task's own score at the end of the run (held-out if the run had a held-out split,
    else the last logged training batch) beside its chance level; None for other methods."""
    if method not in PRETEXT:
        return None
    key, name, chance, meaning = PRETEXT[method]
    rows = _metrics(Path(run_dir))
    held = [r for r in rows if _number(r.get(f"val_{key}")) is not None]
    train = [r for r in rows if _number(r.get(key)) is not None]
    if held:
        row, value, split = held[-1], held[-1][f"val_{key}"], "held-out"
    elif train:
        row, value, split = train[-1], train[-1][key], "training batch"
    else:
        return None
    config = _load(Path(run_dir) / "config.json") or {}
    return {"name": name, "value": float(value), "chance": _number(chance(config, row)), "chance_is": meaning,
            "split": split, "epoch": row.get("epoch")}


def _series_key(path: Path) -> str:
    return re.sub(r"\d+", "#", path.stem)


def _thin(items, key=None, keep: int = 3):
    """Of each numbered series (e.g. cross_correlation_epoch0001..0100), keep the first, the middle
    and the last, so that a long run does not flood the report."""
    key = key or _series_key
    groups: dict = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    out = []
    for group in groups.values():
        if len(group) > keep:
            group = [group[0], group[len(group) // 2], group[-1]]
        out.extend(group)
    return out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(manifest: dict, out) -> Path:
    """Write `<out>/REPORT.md` and `<out>/figures/` from a pipeline manifest; returns the report's path."""
    return Report(manifest, Path(out)).write()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Assemble REPORT.md from the manifest ./run_all.sh wrote.")
    p.add_argument("--out", default="reports", help="report folder (holds pipeline.json)")
    p.add_argument("--manifest", default=None, help="pipeline manifest (default: <out>/pipeline.json)")
    args = p.parse_args(argv)
    path = Path(args.manifest or Path(args.out) / "pipeline.json")
    manifest = _load(path)
    if manifest is None:
        raise SystemExit(f"error: {path} is missing or not JSON; run ./run_all.sh first (it writes it)")
    print(write_report(manifest, args.out))


if __name__ == "__main__":
    main()
