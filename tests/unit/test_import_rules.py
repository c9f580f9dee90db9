"""The import graph's rules, read from the source (every import, also those inside functions).

* ``udfs/`` (the engine) imports neither ``recsys``, ``flink_jobs`` nor ``pyflink``: the job,
  the simulator and the benchmarks all call it, so it must run without Flink.
* ``state_schemas/`` (configuration and codecs, the base of the graph) imports nothing of the
  project but itself.
* Among the project's packages only ``flink_jobs/`` imports ``pyflink``, and not its
  ``settings`` module, which the local cluster tooling imports.
* ``recsys/`` is split by role, and the roles depend on each other one way only: serving and
  sample data on no other role; local infrastructure not on evaluation; nothing on the CLI.
* No import cycles among the project's modules.
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


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path, known: set[str]) -> set[str]:
    """The project modules ``path`` imports (``from pkg import mod`` counts as ``pkg.mod`` when
    that is a module, else as ``pkg``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known
                     else node.module for alias in node.names]
        else:
            continue
        out.update(n for n in names if n in known)
    return out


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for pkg in PACKAGES for p in modules(pkg)}
    return {name: project_imports(path, set(files)) - {name} for name, path in files.items()}


ROLE_RULES = {  # role package: the roles it must not import
    "recsys.serving": {"recsys.local", "recsys.evaluation", "recsys.sample_data", "recsys.cli"},
    "recsys.sample_data": {"recsys.local", "recsys.evaluation", "recsys.serving", "recsys.cli"},
    "recsys.local": {"recsys.evaluation", "recsys.cli"},
    "recsys.evaluation": {"recsys.serving", "recsys.cli"},
}


@pytest.mark.parametrize("role", sorted(ROLE_RULES))
def test_the_roles_of_recsys_depend_one_way(role):
    graph = import_graph()
    offenders = {m: sorted(i for i in imported if any(i == f or i.startswith(f + ".")
                                                      for f in ROLE_RULES[role]))
                 for m, imported in graph.items() if m == role or m.startswith(role + ".")}
    assert {m: v for m, v in offenders.items() if v} == {}


def test_recsys_is_split_by_role():
    loose = sorted(p.name for p in (ROOT / "recsys").glob("*.py"))
    assert loose == ["__init__.py", "cli.py", "config_args.py", "kafka_io.py", "paths.py"]


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


def test_no_import_cycles():
    assert find_cycles(import_graph()) == []


def test_the_cycle_check_sees_a_cycle_through_a_function_level_import(tmp_path):
    pkg = tmp_path / "udfs"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from udfs import b\n")
    (pkg / "b.py").write_text("import udfs.a\n")
    files = {module_name(p, tmp_path): p for p in sorted(pkg.rglob("*.py"))}
    graph = {n: project_imports(p, set(files)) - {n} for n, p in files.items()}
    assert find_cycles(graph) == [["udfs.a", "udfs.b", "udfs.a"]]


def test_the_rules_see_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from pyflink.datastream import x\n    import recsys.cli\n")
    assert imported_roots(module) == {"pyflink", "recsys"}


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_opens_with_a_docstring_saying_its_role(package):
    missing = [str(p.relative_to(ROOT)) for p in sorted((ROOT / package).rglob("*.py"))
               if not ast.get_docstring(ast.parse(p.read_text(), str(p)))]
    assert not missing, missing
