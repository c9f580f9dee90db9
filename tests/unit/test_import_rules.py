"""The import graph's rules, read from the source (every import, also those inside functions).

* ``udfs/`` (the engine) imports neither ``recsys``, ``flink_jobs`` nor ``pyflink``: the job,
  the simulator and the benchmarks all call it, so it must run without Flink.
* ``state_schemas/`` (configuration and codecs, the base of the graph) imports nothing of the
  project but itself.
* Among the project's packages only ``flink_jobs/`` imports ``pyflink``, and not its
  ``settings`` module, which the local cluster tooling imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("udfs", "state_schemas", "recsys", "flink_jobs")


def imported_roots(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports (absolute imports)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package, forbidden", [
    ("udfs", {"recsys", "flink_jobs", "pyflink"}),
    ("state_schemas", {"udfs", "recsys", "flink_jobs", "pyflink"}),
    ("recsys", {"pyflink"}),
])
def test_a_package_imports_only_what_lies_below_it(package, forbidden):
    offenders = {str(p.relative_to(ROOT)): sorted(imported_roots(p) & forbidden)
                 for p in modules(package) if imported_roots(p) & forbidden}
    assert offenders == {}


def test_only_the_job_imports_pyflink_and_its_settings_do_not():
    importers = {str(p.relative_to(ROOT)) for pkg in PACKAGES for p in modules(pkg)
                 if "pyflink" in imported_roots(p)}
    assert importers and all(p.startswith("flink_jobs/") for p in importers), importers
    assert "pyflink" not in imported_roots(ROOT / "flink_jobs" / "settings.py")


def test_the_rules_see_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from pyflink.datastream import x\n    import recsys.cli\n")
    assert imported_roots(module) == {"pyflink", "recsys"}


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_opens_with_a_docstring_saying_its_role(package):
    missing = [str(p.relative_to(ROOT)) for p in sorted((ROOT / package).rglob("*.py"))
               if not ast.get_docstring(ast.parse(p.read_text(), str(p)))]
    assert not missing, missing
