"""The layout's import rules: stages depend only on earlier stages (data -> models -> train ->
evaluate -> rank), curation stays on the PyTorch side, and torch is the converter's alone."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "imagenot_jax"
# (package whose modules are checked, packages they must not import)
RULES = [
    ("imagenot_jax/models", ("imagenot_jax.train", "imagenot_jax.data", "imagenot_jax.evaluate",
                             "imagenot_jax.rank")),
    ("imagenot_jax/data", ("imagenot_jax.train", "imagenot_jax.evaluate", "imagenot_jax.rank")),
    ("imagenot_jax/evaluate", ("imagenot_jax.rank",)),
    ("curation", ("jax", "flax", "optax", "orbax", "imagenot_jax")),
]  # fmt: skip
# The converter's command line writes a training workdir: its function-level imports of the
# trainer are the models package's one allowed reach into train.
FUNCTION_LEVEL_EXCEPTIONS = {"imagenot_jax/models/convert.py"}
# The converter and its lookup of torchvision's published weights (torch hub's cache).
TORCH_MODULES = {"imagenot_jax/models/convert.py", "imagenot_jax/models/torchvision_weights.py"}


def imports(path: pathlib.Path, *, module_level_only: bool) -> list[tuple[str, int]]:
    """(imported module, line) of every import in a file (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names = [f"{base}.{alias.name}" for alias in node.names]
            found += [(base, node.lineno), *((name, node.lineno) for name in names)]
    return found


def _violations(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in sorted((REPO / folder).rglob("*.py")):
        relative = str(path.relative_to(REPO))
        module_only = relative in FUNCTION_LEVEL_EXCEPTIONS
        for name, line in imports(path, module_level_only=module_only):
            if any(name == f or name.startswith(f"{f}.") for f in forbidden):
                bad.append(f"{relative}:{line} imports {name}")
    return sorted(set(bad))


@pytest.mark.parametrize(("folder", "forbidden"), RULES, ids=[r[0] for r in RULES])
def test_stage_imports_only_earlier_stages(folder, forbidden):
    assert _violations(folder, forbidden) == []


def test_torch_is_imported_only_inside_the_converter():
    where = []
    for path in sorted(PACKAGE.rglob("*.py")):
        top = {n for n, _ in imports(path, module_level_only=True)}
        everywhere = imports(path, module_level_only=False)
        torch = [(n, line) for n, line in everywhere if n == "torch" or n.startswith("torch.")]
        relative = str(path.relative_to(REPO))
        if any(n in top for n, _ in torch) or (torch and relative not in TORCH_MODULES):
            where += [f"{relative}:{line}" for _, line in torch]
    assert where == []


def test_the_rule_checker_sees_a_violation(tmp_path, monkeypatch):
    """The checks above can fail: a models module importing the trainer is reported."""
    fake = tmp_path / "imagenot_jax" / "models"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text("from imagenot_jax.train import trainer\nfrom . import layers\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert _violations("imagenot_jax/models", RULES[0][1]) == [
        "imagenot_jax/models/bad.py:1 imports imagenot_jax.train",
        "imagenot_jax/models/bad.py:1 imports imagenot_jax.train.trainer",
    ]


def test_importing_the_model_zoo_loads_no_later_stage():
    """The same rule at run time, transitive imports included."""
    code = (
        "import sys, imagenot_jax.models\n"
        "late = ('imagenot_jax.train', 'imagenot_jax.data', 'imagenot_jax.evaluate', "
        "'imagenot_jax.rank', 'torch')\n"
        "print(sorted(m for m in sys.modules if m.startswith(late)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert result.stdout.strip() == "[]"
