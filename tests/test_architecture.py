"""The package layout: stage order from docs/architecture.md, import direction, sizes, no sys.path games."""

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "bnp_cxr"
MAX_MODULE_LINES = 420
MAX_FUNCTION_LINES = 60


def declared_stages() -> list[tuple[int, str, list[str]]]:
    """(order, stage, paths) rows of the Stages table in docs/architecture.md."""
    text = (REPO / "docs" / "architecture.md").read_text()
    rows = re.findall(r"^\| (\d+) \| (\w+) \| (.+?) \|$", text, flags=re.M)
    return [(int(order), stage, re.findall(r"`([^`]+)`", paths)) for order, stage, paths in rows]


def stage_of(module_path: Path, stages) -> int:
    """The order of the stage a package file belongs to (its folder or its own file is listed)."""
    relative = module_path.relative_to(REPO).as_posix()
    for order, _, paths in stages:
        if any(relative == path or (path.endswith("/") and relative.startswith(path)) for path in paths):
            return order
    raise AssertionError(f"{relative} belongs to no stage of docs/architecture.md")


def module_file(name: str) -> Path | None:
    """The file of a bnp_cxr module name (package __init__ or module .py)."""
    parts = name.split(".")
    base = REPO.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every bnp_cxr import in a file, at any depth (function-level imports too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("bnp_cxr")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bnp_cxr"):
            # `from bnp_cxr.x import y` may import the submodule y: count it when it is one.
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names
                      if module_file(f"{node.module}.{alias.name}")]
    return found


PACKAGE_FILES = sorted(PACKAGE.rglob("*.py"))


def test_the_stage_table_is_ordered_and_covers_the_package():
    stages = declared_stages()
    assert [order for order, _, _ in stages] == list(range(len(stages))) and len(stages) >= 10
    for path in PACKAGE_FILES:
        stage_of(path, stages)  # raises for a file outside every stage


@pytest.mark.parametrize("path", PACKAGE_FILES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_no_stage_imports_a_later_one(path):
    stages = declared_stages()
    own = stage_of(path, stages)
    names = {order: stage for order, stage, _ in stages}
    for line, module in imported_modules(path):
        target = module_file(module)
        assert target is not None, f"{path.name}:{line} imports {module}, which does not exist"
        other = stage_of(target, stages)
        assert other <= own, (f"{path.relative_to(REPO)}:{line} ({names[own]}) imports {module} "
                              f"({names[other]}), a later stage")


def test_tools_are_thin_shims_onto_the_cli():
    for path in sorted((REPO / "tools").glob("*.py")):
        modules = [module for _, module in imported_modules(path)]
        cli = f"bnp_cxr.cli.{path.stem}"
        assert modules in ([cli], [cli, f"{cli}.main"]), (path.name, modules)
        assert len(path.read_text().splitlines()) <= 10, f"{path.name} is more than a shim"


def test_no_cli_imports_another_cli():
    for path in sorted((PACKAGE / "cli").glob("*.py")):
        others = [module for _, module in imported_modules(path)
                  if module.startswith("bnp_cxr.cli.") and not module.startswith(f"bnp_cxr.cli.{path.stem}")]
        assert others == [], f"{path.name} imports {others}"


@pytest.mark.parametrize("folder", ["bnp_cxr", "tools", "bench", "tests"])
def test_nothing_edits_sys_path(folder):
    offenders = [f"{path.relative_to(REPO)}:{number}" for path in sorted((REPO / folder).rglob("*.py"))
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if re.search(r"sys\.path\.(insert|append)|spec_from_file_location", line)
                 and path.name != "test_architecture.py"]
    assert offenders == []


def test_tests_and_benchmarks_do_not_import_each_other():
    bench_modules = {path.stem for path in (REPO / "bench").glob("*.py")}
    test_modules = {path.stem for path in (REPO / "tests").glob("*.py")}
    for folder, forbidden in (("tests", bench_modules - test_modules), ("bench", test_modules - bench_modules)):
        for path in sorted((REPO / folder).glob("*.py")):
            tree = ast.parse(path.read_text())
            names = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                     for alias in node.names}
            names |= {node.module.split(".")[0] for node in ast.walk(tree)
                      if isinstance(node, ast.ImportFrom) and node.module and not node.level}
            assert not names & (forbidden | {"tests", "bench"}), f"{path.relative_to(REPO)} imports {names & forbidden}"


@pytest.mark.parametrize("path", PACKAGE_FILES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_modules_and_functions_stay_small(path):
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{path.name}: {len(text.splitlines())} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{path.name}:{node.lineno} {node.name}() is {length} lines"
