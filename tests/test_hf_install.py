"""The installable library: `pip install .` gives `tr` (and `viz`) with the library's own dependencies,
each version pinned once in requirements*.txt, which the Space installs on its own; the README keeps its
two set-up commands and CI runs the second."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import setup as package  # the repository's setup.py: its requirement sections

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "requirements.txt", "requirements-dev.txt", "tr", "viz")


def top_level_imports(folder: Path) -> set[str]:
    """Every module a package's files import at any depth, by top-level name, relative imports left out."""
    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def distribution(requirement: str) -> str:
    return re.split(r"[\[=<>~!; ]", requirement, maxsplit=1)[0]


def test_the_library_installs_what_it_imports_and_nothing_else():
    found = package.sections("requirements.txt", "requirements-dev.txt")
    library = {distribution(line) for line in found[package.LIBRARY]}
    assert library == {"torch", "transformers", "safetensors"}
    imported = top_level_imports(ROOT / "tr") - set(sys.stdlib_module_names) - {"tr"}
    assert imported == library  # the GGUF reader (gguf, accelerate) is transformers' optional part: an extra
    viz = top_level_imports(ROOT / "viz") - set(sys.stdlib_module_names) - {"tr", "viz"}
    assert viz <= library | {distribution(line) for line in found["viz"]}


def test_every_version_is_pinned_once():
    found = package.sections("requirements.txt", "requirements-dev.txt")
    lines = [line for section in found.values() for line in section]
    assert all("==" in line for line in lines), lines
    names = [distribution(line) for line in lines]
    assert len(names) == len(set(names))
    extras = package.extras(found)
    assert set(extras) == {"gguf", "viz", "app", "dev"}
    assert set(extras["app"]) >= set(found["gguf"] + found["viz"]) and "gradio[mcp]==6.31.0" in extras["app"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["dependencies", "optional-dependencies"]' in pyproject and "==" not in pyproject


def test_requirements_txt_stands_alone_as_a_space_installs_it():
    """A Space mounts requirements.txt alone and runs plain pip on it before the repository is copied in."""
    text = (ROOT / "requirements.txt").read_text()
    options = [line for line in text.splitlines() if line.strip().startswith("-") or line.strip().startswith(".")]
    assert options == []
    every = [line for section in package.sections("requirements.txt").values() for line in section]
    written = [line.split(" #")[0].strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert written == every  # every requirement lies in a section: nothing the library's extras miss


def readme_commands() -> list[str]:
    section = (ROOT / "README.md").read_text().split("## Set up", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_the_readme_keeps_two_set_up_commands_and_ci_runs_the_second():
    app, tests = readme_commands()
    assert app.startswith("pip install -r requirements.txt &&") and app.endswith("python app.py")
    assert tests.startswith("pip install -r requirements-dev.txt &&") and tests.endswith("python -m pytest")
    assert tests in (ROOT / ".ci" / "run").read_text().replace(" -q", "")  # CI's pip calls are quiet


def run(command: list[str], cwd: Path, timeout: float) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done.stdout


def test_both_requirement_files_resolve_as_the_commands_read_them(tmp_path):
    """The README's commands (from the repository's root) and a Space's install (requirements.txt alone in
    an empty folder) resolve in this environment: nothing to fetch, nothing missing."""
    alone = tmp_path / "space"
    alone.mkdir()
    shutil.copy(ROOT / "requirements.txt", alone)
    for folder, file in ((alone, "requirements.txt"), (ROOT, "requirements-dev.txt")):
        out = run([sys.executable, "-m", "pip", "install", "--dry-run", "-r", file], folder, timeout=100)
        assert "Would install" not in out, out[-2000:]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_pip_install_in_a_new_venv_gives_the_library_without_the_app(tmp_path):
    """`pip install .` on the library's files alone, in a new virtual environment: torch, transformers and
    safetensors come in, gradio does not, and `from tr.hf import TokenRecycling` works."""
    clone = tmp_path / "clone"
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, clone / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            clone.mkdir(exist_ok=True)
            shutil.copy(source, clone / name)
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp_path, timeout=120)
    python = str(venv / "bin" / "python")
    run([python, "-m", "pip", "install", "-q", str(clone)], tmp_path, timeout=700)
    check = ("import importlib.util, tr.hf, transformers, torch\n"
             "from tr.hf import TokenRecycling\n"
             "TokenRecycling(k=8, tree='auto', start='primed')\n"
             "assert importlib.util.find_spec('gradio') is None and importlib.util.find_spec('gguf') is None\n"
             "print(tr.hf.__file__, transformers.__version__, torch.__version__)")
    out = run([python, "-c", check], tmp_path, timeout=120)
    assert str(venv) in out and "5.23.0" in out and "2.13.0" in out
