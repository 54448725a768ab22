"""The architecture holds: imports point down the layers only, importing changes no setting, and the
library's front names resolve."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Each layer and the packages it must not import (directly).
FORBIDDEN = {
    "tr": ("tr.device", "tools", "webapp", "viz", "app", "gradio"),
    "tr/device": ("tools", "webapp", "viz", "app", "gradio"),
    "tools": ("app", "gradio"),  # tools.load drives the app through gradio_client, reading webapp's bounds
    "viz": ("torch", "tr.device", "tr.generate", "tools", "webapp", "app", "transformers"),
    "webapp": ("tools", "app"),
}
# Join the core to the device layer, by design: the library's entry point, and the same for transformers'
# `model.generate(custom_generate=...)`.
FRONT_DOORS = ("tr/generate.py", "tr/hf.py")


def imported_modules(path: Path) -> set[str]:
    """Absolute names of everything a file imports (relative imports resolved against its package)."""
    package = ".".join(path.relative_to(ROOT).parent.parts)
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package if node.level else ""
            module = ".".join(filter(None, (base, node.module)))
            names |= {module} | {f"{module}.{alias.name}" for alias in node.names}
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_imports_point_down_the_layers(layer):
    folder = ROOT / layer
    files = folder.glob("*.py") if layer != "tools" else folder.rglob("*.py")
    for path in files:
        if path.relative_to(ROOT).as_posix() in FRONT_DOORS:
            continue
        for name in imported_modules(path):
            bad = [f for f in FORBIDDEN[layer] if name == f or name.startswith(f + ".")]
            assert not bad, f"{path.relative_to(ROOT)} imports {name}"


def test_importing_tr_and_viz_loads_no_torch_and_changes_no_setting():
    script = ("import os, sys, json; before = dict(os.environ); import tr, tr.records, viz; "
              "print(json.dumps({'torch': 'torch' in sys.modules, 'changed': sorted(set(os.environ.items()) "
              "^ set(before.items()))}))")
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_SDPA_FORCE_GQA"}
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == {"torch": False, "changed": []}


def test_importing_the_core_sets_no_kernel_setting():
    script = "import os; import tr.generate, tr.decoding; print(os.environ.get('TRANSFORMERS_SDPA_FORCE_GQA'))"
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_SDPA_FORCE_GQA"}
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["None"]


def test_every_front_name_resolves():
    import tr

    assert all(getattr(tr, name) is not None for name in tr.__all__)
