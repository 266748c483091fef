"""Every entry script runs this checkout's code, installed or not, from any working directory;
the install adds no top-level package; `common/` imports no method; --help imports no torch and
prints each default once, for every train.py and every eval script."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
METHODS = ("dino", "byol", "barlow_twins", "dino_twins", "jigsaw", "colorization")
HEADER = "sys.path.insert(0, str(Path(__file__).resolve().parents[1]))"
PROJECT = ("common", "eval", *METHODS)
EVALS = ("knn", "linear", "finetune", "tsne", "retrieval", "attention", "jaccard")
HEAVY = ("torch", "torchvision", "sklearn", "matplotlib")  # what an eval script imports only after parsing


def entry_scripts() -> list[Path]:
    scripts = [REPO / m / "train.py" for m in METHODS] + sorted((REPO / "benchmarks").glob("*.py"))
    scripts += [p for p in sorted((REPO / "eval").glob("*.py")) if 'if __name__ == "__main__"' in p.read_text()]
    return scripts


def top_level_project_imports(tree: ast.Module) -> list[ast.stmt]:
    return [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
            and (n.module if isinstance(n, ast.ImportFrom) else n.names[0].name).split(".")[0] in PROJECT]


def test_every_entry_script_puts_its_checkout_first_before_any_project_import():
    scripts = entry_scripts()
    assert len(scripts) >= 6 + 2 + 8
    for path in scripts:
        text = path.read_text()
        tree = ast.parse(text)
        header = [n for n in tree.body if isinstance(n, ast.Expr) and ast.unparse(n) == HEADER
                  or isinstance(n, ast.Expr) and ast.unparse(n) == "sys.path.insert(0, str(REPO))"]
        assert len(header) == 1, f"{path.relative_to(REPO)}: no unconditional path header at module level"
        imports = top_level_project_imports(tree)
        assert all(n.lineno > header[0].lineno for n in imports), path.relative_to(REPO)


def decoys(tmp_path: Path, names=("common", "torch")) -> Path:
    """A folder with a foreign `common` and a `torch` (or other `names`) that fail loudly when imported."""
    root = tmp_path / "decoys"
    for name in names:
        (root / name).mkdir(parents=True)
        (root / name / "__init__.py").write_text(f"raise ImportError('the decoy {name} was imported')\n")
    return root


@pytest.mark.parametrize("where", ["root", "elsewhere"])
def test_train_help_uses_this_checkout_and_never_imports_torch(tmp_path, where):
    """`python dino/train.py --help`, from the root and from another directory, with a decoy `common`
    first on PYTHONPATH and site-packages switched off (-S: nothing installed, not even torch).
    The decoy torch proves that --help is answered before any heavy import."""
    env = {**os.environ, "PYTHONPATH": str(decoys(tmp_path))}
    cwd = REPO if where == "root" else tmp_path
    for method in METHODS:
        script = f"{method}/train.py" if where == "root" else str(REPO / method / "train.py")
        run = subprocess.run([sys.executable, "-S", script, "--help"], cwd=cwd, env=env,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, (method, run.stderr[-500:])
        assert f"python {method}/train.py" in run.stdout and "--epochs" in run.stdout


def test_the_report_drivers_also_run_from_anywhere(tmp_path):
    """run_all.sh runs eval/pipeline.py by path; both drivers need only the standard library to parse."""
    env = {**os.environ, "PYTHONPATH": str(decoys(tmp_path))}
    for script in ("pipeline", "report"):
        run = subprocess.run([sys.executable, "-S", str(REPO / "eval" / f"{script}.py"), "--help"], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0 and "--out" in run.stdout, (script, run.stderr[-500:])
    assert 'python "$ROOT/eval/pipeline.py"' in (REPO / "run_all.sh").read_text()


def test_a_bad_option_is_one_line_and_also_needs_no_torch(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(decoys(tmp_path))}
    run = subprocess.run([sys.executable, "-S", "dino/train.py", "--epochs", "0"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "--epochs must be at least 1" in run.stderr
    assert "decoy" not in run.stderr and "Traceback" not in run.stderr


def help_entries(text: str) -> list[str]:
    """One string per option of an argparse help text."""
    body = text.split("\n\n", 1)[1]
    return [" ".join(e.split()) for e in re.split(r"\n(?=  -)", body) if e.lstrip().startswith("-")]


def test_help_states_each_default_once_and_explains_every_option():
    from common.options import base_parser
    from dino import train as dino_train

    parser = base_parser("dino", **dino_train.DEFAULTS)
    dino_train.add_arguments(parser)
    entries = help_entries(parser.format_help())
    assert len(entries) > 40
    for entry in entries:
        assert entry.count("(default") <= 1, entry
    assert [a.dest for a in parser._actions if not a.help] == []
    by_flag = {e.split()[0].rstrip(","): e for e in entries}
    # DINO's cosine weight decay 0.04 -> 0.4: the help shows DINO's end value, not the shared "constant".
    assert by_flag["--weight-decay-end"].endswith("(default: 0.4)")
    assert "(default" not in by_flag["--deterministic"] and "(default" not in by_flag["--max-steps"]
    assert by_flag["--norm-last-layer"].endswith("(default: True)")


def test_eval_help_is_grouped_and_explains_every_option():
    from eval import cli

    parser = cli.base_parser("demo", script="demo")
    parser.group("evaluation").add_argument("--k", type=int, default=20, help="neighbours")
    text = parser.format_help()
    titles = [g.title for g in parser._action_groups if g._group_actions]
    assert titles == ["options", "checkpoint", "data", "evaluation", "run"]  # options: -h alone, as a train.py
    assert text.startswith("usage: python eval/demo.py")
    for entry in help_entries(text):
        assert entry.count("(default") <= 1, entry
    assert [a.dest for a in parser._actions if not a.help] == []
    assert "(default: 20)" in text and "--device" in text and "--seed" in text


def eval_parser(script: str):
    """The parser of eval/<script>.py: the shared options plus the script's own."""
    import importlib

    from eval import cli

    parser = cli.base_parser(script=script, multi_checkpoint=script == "tsne", raw_pixels=script in ("knn", "linear"))
    importlib.import_module(f"eval.{script}").add_arguments(parser)
    return parser


def test_the_install_adds_no_top_level_package(tmp_path):
    """What `pip install -e .` would put in site-packages, from the metadata setuptools builds."""
    pytest.importorskip("setuptools")
    run = subprocess.run([sys.executable, "-c", "import setuptools; setuptools.setup()", "-q", "egg_info",
                          "--egg-base", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-500:]
    top_level = (tmp_path / "ssl_lab.egg-info" / "top_level.txt").read_text().split()
    assert top_level == []
    requires = (tmp_path / "ssl_lab.egg-info" / "requires.txt").read_text()
    assert "torch" in requires and "numpy" in requires


def test_common_imports_no_method():
    for path in sorted((REPO / "common").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level
                     else [])
            assert not [n for n in names if n.split(".")[0] in METHODS], f"{path.name} imports {names}"


@pytest.mark.parametrize("script", EVALS)
def test_every_eval_script_help_renders_grouped_with_each_default_once(script, capsys):
    """Grouped as every train.py; every option explained; an option with a value shows its default
    exactly once (the formatter adds it, or the help says what unset means), an on/off flag and
    --checkpoint (always given) never."""
    import importlib

    module = importlib.import_module(f"eval.{script}")
    with pytest.raises(SystemExit) as stop:
        module.main(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: python eval/{script}.py")
    for title in ("checkpoint", "data", "evaluation", "run"):
        assert f"\n{title}:\n" in text, title
    parser = eval_parser(script)
    assert [a.dest for a in parser._actions if not a.help] == []
    by_flag = {e.split()[0].rstrip(","): e for e in help_entries(text)}
    own = {a.dest for a in parser._actions if a.dest != "help"}
    assert len(by_flag) == len(own) + 1, sorted(by_flag)
    for action in parser._actions:
        if action.dest == "help":
            continue
        entry = by_flag[action.option_strings[0]]
        flag = action.nargs == 0 and action.default is False  # store_true
        given = action.dest == "checkpoint"  # no default: required (or --raw-pixels instead)
        assert entry.count("(default") == (0 if flag or given else 1), entry
    assert "where to run" in by_flag["--device"] and "seed of" in by_flag["--seed"]


def test_eval_help_and_option_errors_import_no_torch(tmp_path):
    """`python eval/<script>.py --help` and a refused option, with decoys of torch, torchvision,
    scikit-learn and matplotlib first on PYTHONPATH: answered before any of them is imported
    (which is what makes --help take a tenth of a second instead of seconds)."""
    env = {**os.environ, "PYTHONPATH": str(decoys(tmp_path, HEAVY))}
    for script in EVALS:
        run = subprocess.run([sys.executable, f"eval/{script}.py", "--help"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0 and "\nevaluation:\n" in run.stdout, (script, run.stderr[-500:])
        run = subprocess.run([sys.executable, f"eval/{script}.py", "--checkpoint", "runs/x.pt", "--seed", "-1"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert run.returncode == 1 and run.stderr.strip() == "error: --seed must be >= 0, got -1", (script, run.stderr)


def test_importing_the_eval_scripts_imports_no_torch():
    """The eval scripts are libraries too (eval.knn.KNNMonitor, eval.linear.train_probe): importing
    them, as the engine and the benchmarks do, loads no torch until a function needs it."""
    code = (f"import importlib, sys\nfor s in {EVALS!r}:\n    importlib.import_module('eval.' + s)\n"
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-1000:]
    assert run.stdout.strip() == "[]"


def test_recipe_cpu_puts_its_options_first_so_that_the_command_line_wins():
    from barlow_twins.train import DEFAULTS, add_arguments
    from common import recipes
    from common.options import parse_cli

    args = parse_cli("barlow_twins", add_arguments, DEFAULTS, ["--recipe", "cpu", "--epochs", "3"])
    assert (args.recipe, args.arch, args.image_size, args.batch_size, args.optimizer) == \
        ("cpu", "cnn_tiny", 32, 128, "adamw")
    assert args.epochs == 3 and args.projector == "512-512-512" and args.color_jitter[3] == 0.5
    paper = parse_cli("barlow_twins", add_arguments, DEFAULTS, [])
    assert paper.recipe == "paper" and paper.arch == "resnet18" and paper.projector == "8192-8192-8192"
    assert recipes.expand("dino", ["--recipe=cpu"])[:2] == ["--arch", "cnn_tiny"]
    assert recipes.expand("dino", ["--", "--recipe", "cpu"]) == ["--", "--recipe", "cpu"]
    assert set(recipes.CPU) == {"dino", "byol", "barlow_twins", "dino_twins", "jigsaw", "colorization"}
