"""The package's import boundaries (ARCHITECTURE.md, "Import rules"), and the CLI's model list.

1. ``core/`` imports neither JAX/Flax nor napari/Qt, at any nesting level; it reaches the models only through
   their JAX-free surfaces (``models.registry``, ``models.spec``, ``models.weights``, ``models.mc``).
2. Nothing imports JAX at napari start-up: the manifest's modules, the widget, the sample data and the
   layers, and the registry with every spec.
3. ``models/`` and ``training/`` import no napari and no Qt.

The static checks read every ``.py`` file with :mod:`ast` (imports inside functions, ``try`` blocks and
``TYPE_CHECKING`` branches included, and ``importlib.import_module("...")`` / ``__import__("...")`` with a
literal name); the dynamic checks import the modules in a fresh interpreter and look at ``sys.modules``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import napari_sr_uncertainty

PACKAGE = "napari_sr_uncertainty"
PACKAGE_DIR = Path(napari_sr_uncertainty.__file__).resolve().parent
SRC_DIR = PACKAGE_DIR.parent

JAX_LIBS = {"jax", "jaxlib", "flax", "optax"}
GUI_LIBS = {"napari", "qtpy", "magicgui", "PyQt5", "PyQt6", "PySide2", "PySide6"}
# the models' modules ARCHITECTURE.md names as core's way in: importing them imports no JAX
DOCUMENTED_MODEL_SURFACES = {"registry", "spec", "weights", "mc"}


@dataclass(frozen=True)
class Import:
    path: Path
    line: int
    module: str  # absolute dotted name


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC_DIR).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(dotted: str) -> bool:
    """Whether ``dotted`` names a module or package of this package's source tree."""
    parts = dotted.split(".")
    if parts[0] != PACKAGE:
        return False
    base = SRC_DIR.joinpath(*parts)
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports_of(path: Path) -> list[Import]:
    """Every module ``path`` imports, anywhere in the file, as absolute dotted names.

    ``from .pkg import name`` counts as importing ``pkg.name`` when that is a module, else ``pkg``.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(path, node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.append(Import(path, node.lineno, candidate if _is_module(candidate) else base))
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if called in ("import_module", "__import__") and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and not arg.value.startswith("."):
                    found.append(Import(path, node.lineno, arg.value))
    return found


def files_of(layer: str) -> list[Path]:
    files = sorted((PACKAGE_DIR / layer).rglob("*.py"))
    assert files, f"no Python files under {PACKAGE_DIR / layer}"
    return files


def top(module: str) -> str:
    return module.split(".")[0]


def where(imp: Import) -> str:
    return f"{imp.path.relative_to(SRC_DIR)}:{imp.line} imports {imp.module}"


def run_python(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- the static checker itself
def test_the_checker_sees_nested_relative_and_dynamic_imports(tmp_path, monkeypatch):
    """The AST walk finds imports inside functions, try blocks and TYPE_CHECKING branches, resolves relative
    imports against the file's package, and catches ``import_module("jax")``."""
    fake_pkg = tmp_path / PACKAGE
    (fake_pkg / "core").mkdir(parents=True)
    (fake_pkg / "models").mkdir()
    for init in (fake_pkg / "__init__.py", fake_pkg / "core" / "__init__.py", fake_pkg / "models" / "__init__.py"):
        init.write_text("")
    (fake_pkg / "models" / "dropout.py").write_text("")
    source = fake_pkg / "core" / "thing.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import napari\n"
        "def f():\n    try:\n        import jax.numpy as jnp\n    except ImportError:\n        pass\n"
        "    from ..models import dropout\n    from ..models.dropout import Grid\n    from . import other\n"
        "    import importlib\n    importlib.import_module('flax.linen')\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "SRC_DIR", tmp_path)
    modules = {imp.module for imp in imports_of(source)}
    assert {"napari", "jax.numpy", "flax.linen"} <= modules
    assert f"{PACKAGE}.models.dropout" in modules
    assert f"{PACKAGE}.core" in modules  # "from . import other": not a module here, so the package


def test_the_checker_follows_import_time_chains_to_jax():
    """On the real tree: models.dropout imports JAX when imported (by design), the fast engine through it;
    the registry does not, although its functions import the spec files."""
    chain = jax_at_import(f"{PACKAGE}.models.dropout")
    assert chain and chain[0] == f"{PACKAGE}.models.dropout" and top(chain[-1]) in JAX_LIBS
    chain = jax_at_import(f"{PACKAGE}.models.esrcnn_fast")
    assert chain and f"{PACKAGE}.models.dropout" in chain
    assert jax_at_import(f"{PACKAGE}.models.registry") is None


# --------------------------------------------------------------------------- rule 1: core
@pytest.mark.parametrize("path", files_of("core"), ids=lambda p: p.name)
def test_core_imports_neither_jax_nor_napari_nor_qt(path):
    bad = [where(imp) for imp in imports_of(path) if top(imp.module) in JAX_LIBS | GUI_LIBS]
    assert not bad, "core/ must stay NumPy-only:\n" + "\n".join(bad)


def module_path(module: str) -> Path | None:
    base = SRC_DIR.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def import_time_imports(path: Path) -> list[Import]:
    """The imports ``path`` runs when it is imported: those outside function bodies and ``TYPE_CHECKING``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    deferred: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            deferred |= {id(child) for child in ast.walk(node)} - {id(node)}
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            deferred |= {id(child) for stmt in node.body for child in ast.walk(stmt)}
    lines = {
        child.lineno
        for child in ast.walk(tree)
        if isinstance(child, (ast.Import, ast.ImportFrom)) and id(child) not in deferred
    }
    return [imp for imp in imports_of(path) if imp.line in lines]


def jax_at_import(module: str, seen: set[str] | None = None) -> list[str] | None:
    """The chain of package modules through which importing ``module`` imports a JAX library, or None."""
    seen = set() if seen is None else seen
    if module in seen:
        return None
    seen.add(module)
    path = module_path(module)
    if path is None:
        return None
    parts = module.split(".")
    parents = [".".join(parts[:i]) for i in range(1, len(parts))]  # importing a module runs its packages too
    for imp in import_time_imports(path):
        if top(imp.module) in JAX_LIBS:
            return [module, imp.module]
    for dependency in parents + [imp.module for imp in import_time_imports(path) if top(imp.module) == PACKAGE]:
        chain = jax_at_import(dependency, seen)
        if chain:
            return [module, *chain]
    return None


def test_the_documented_model_surfaces_import_no_jax():
    """``models.registry``, ``.spec``, ``.weights`` and ``.mc`` (and every spec file the registry loads) are
    JAX-free when imported: JAX loads inside the functions that compile and run."""
    from napari_sr_uncertainty.models import registry

    modules = [f"{PACKAGE}.models.{name}" for name in sorted(DOCUMENTED_MODEL_SURFACES)]
    modules += [f"{PACKAGE}.models.{name}" for name in registry.MODEL_FILES]
    bad = {module: chain for module in modules if (chain := jax_at_import(module))}
    assert not bad, "imports JAX when imported: " + "; ".join(" -> ".join(chain) for chain in bad.values())


@pytest.mark.parametrize("path", files_of("core"), ids=lambda p: p.name)
def test_core_reaches_the_package_only_through_jax_free_model_surfaces(path):
    """core/ imports from the rest of the package only modules of models/ that import no JAX (the documented
    surfaces registry, spec, weights and mc, or another JAX-free one), never plugin/, training/ or the CLI."""
    bad = []
    for imp in imports_of(path):
        if top(imp.module) != PACKAGE or imp.module == PACKAGE or imp.module.startswith(f"{PACKAGE}.core"):
            continue
        if not imp.module.startswith(f"{PACKAGE}.models."):
            bad.append(where(imp) + " (outside core/ and models/)")
        elif chain := jax_at_import(imp.module):
            bad.append(where(imp) + " which imports JAX: " + " -> ".join(chain))
    assert not bad, "core/ must reach the models only through JAX-free modules:\n" + "\n".join(bad)


def test_importing_every_core_module_imports_no_jax_and_no_napari():
    modules = [module_name(p) for p in files_of("core")]
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(JAX_LIBS | GUI_LIBS)!r})))\n"
    )
    leaked = run_python(code)
    assert leaked == [], f"importing core/ imported {leaked}"


# --------------------------------------------------------------------------- rule 3: models and training
@pytest.mark.parametrize("path", files_of("models") + files_of("training"), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_models_and_training_import_no_napari_and_no_qt(path):
    bad = [
        where(imp)
        for imp in imports_of(path)
        if top(imp.module) in GUI_LIBS or imp.module.startswith(f"{PACKAGE}.plugin")
    ]
    assert not bad, "models/ and training/ must not import napari, Qt or the plugin:\n" + "\n".join(bad)


# --------------------------------------------------------------------------- rule 2: napari start-up
def _manifest_targets() -> list[str]:
    import yaml

    # the repository's manifest (the source of the package's copy), or the installed copy
    candidates = [Path(__file__).resolve().parents[1] / "napari.yaml", PACKAGE_DIR / "napari.yaml"]
    path = next((p for p in candidates if p.is_file()), None)
    assert path is not None, f"no napari.yaml at {candidates}"
    manifest = yaml.safe_load(path.read_text())
    return [command["python_name"] for command in manifest["contributions"]["commands"]]


def test_nothing_imports_jax_at_napari_start_up():
    """What napari loads when it starts or opens the plugin's menu: the package, the manifest's commands
    (widget, sample data), the layer builder and the registry with every spec (the model picker)."""
    targets = _manifest_targets()
    assert any(":" in t for t in targets)
    code = (
        "import importlib, json, sys\n"
        "import napari_sr_uncertainty\n"
        "import napari_sr_uncertainty.plugin.widget\n"
        "import napari_sr_uncertainty.plugin.sample_data as sample_data\n"
        "import napari_sr_uncertainty.plugin.layers\n"
        "from napari_sr_uncertainty.models import registry\n"
        "specs = registry.all_specs()\n"
        "assert specs and all(s.n_params > 0 and s.description for s in specs)\n"
        f"for target in {targets!r}:\n"
        "    module, _, attr = target.partition(':')\n"
        "    assert callable(getattr(importlib.import_module(module), attr)), target\n"
        "for layer in sample_data.astronaut() + sample_data.cell():\n"
        "    assert layer[0].size\n"
        "print(json.dumps({'jax': sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{sorted(JAX_LIBS)!r}), 'napari': 'napari' in sys.modules}}))\n"
    )
    found = run_python(code)
    assert found["napari"], "the widget module should have imported napari (else this checks nothing)"
    assert found["jax"] == [], f"napari start-up imported {found['jax']}"


# --------------------------------------------------------------------------- the CLI's model list
def test_list_models_prints_one_line_per_registered_model(capsys):
    from napari_sr_uncertainty import cli
    from napari_sr_uncertainty.models import registry

    assert cli.main(["--list-models"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    specs = registry.all_specs()
    assert len(lines) == len(specs)
    for spec, line in zip(specs, lines):  # in the registry's (the pickers') order
        fields = line.split()
        assert fields[0] == spec.id, line
        assert f"x{spec.scale}" in fields, line
        assert spec.colour in fields, line
        assert f"{spec.n_params:,}" in fields, line
        if spec.default_weights:
            assert spec.default_weights in line, line
            assert "import only" not in line, line
        else:
            assert "import only" in line, line
            for suffix in spec.importers:
                assert suffix in line, line


# Parameter counts of the originals, as their files hold them (seed000 / seed002 READMEs).
KNOWN_PARAMS = {"esrcnn-x2": 20_099, "espcn-x3": 22_729}


def test_parameter_counts_of_the_ported_originals():
    from napari_sr_uncertainty.models import registry

    for model_id, count in KNOWN_PARAMS.items():
        if model_id in registry.model_ids():
            assert registry.get_spec(model_id).n_params == count, model_id
