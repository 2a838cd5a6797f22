"""The loopback stand-ins stay on this machine: never imported by the service, never uploaded.

``loopback/`` (sandbox process, moto S3, local Secret Manager, webhook receiver,
function launcher) serves the tests, ``bench/`` and ``scripts/demo.py``. The
deployed code must not depend on it, and it must depend on none of them: the
layers are ``finetune_api`` <- ``loopback`` <- tests, bench, demo.
``tests/deploy/test_deploy.py`` asks the real gcloud what it would upload.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = ROOT / "loopback"


def _top_level_imports(sources: list[Path]) -> set[str]:
    """The first component of every absolute import in ``sources``, lazy ones included."""
    found: set[str] = set()
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


def _python_files(*folders: str) -> list[Path]:
    return [path for folder in folders for path in sorted((ROOT / folder).rglob("*.py"))]


def test_the_deployed_code_never_imports_the_stand_ins_or_their_users() -> None:
    deployed = [ROOT / "main.py", *_python_files("finetune_api", "training_template")]
    imported = _top_level_imports(deployed)
    assert "finetune_api" in imported  # the scan sees imports
    assert imported.isdisjoint({"loopback", "sandbox", "tests", "bench", "scripts"})


def test_the_stand_ins_never_import_tests_bench_or_the_demo() -> None:
    sources = _python_files("loopback")
    assert {path.name for path in sources} >= {
        "__init__.py",
        "servers.py",
        "functions.py",
        "fake_secret_manager.py",
        "webhook_receiver.py",
    }
    imported = _top_level_imports(sources)
    assert "sandbox" in imported  # the scan sees imports
    assert imported.isdisjoint({"tests", "bench", "scripts"})


def _finds_the_framework_executable(source: Path) -> bool:
    """Whether ``source`` locates the ``functions-framework`` executable (to spawn it)."""
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.Call) and any(
            isinstance(arg, ast.Constant) and arg.value == "functions-framework"
            for arg in node.args
        ):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in {"with_name", "which", "joinpath"}:
                return True
    return False


def test_tests_bench_and_demo_use_the_one_launcher() -> None:
    """No second functions-framework launcher beside loopback.functions."""
    assert _finds_the_framework_executable(LOOPBACK / "functions.py")
    others = [
        path.relative_to(ROOT).as_posix()
        for path in _python_files("tests", "bench", "scripts", "loopback")
        if path != LOOPBACK / "functions.py" and _finds_the_framework_executable(path)
    ]
    assert others == []


def test_gcloudignore_keeps_loopback_out_of_every_upload() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".gcloudignore").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines[0] == "/*"  # everything is left out first ...
    assert "loopback/" in lines  # ... and loopback/ again, even inside a folder let back in
    let_in = [line for line in lines if line.startswith("!")]
    assert let_in  # the check sees the let-in lines
    assert not [line for line in let_in if "loopback" in line]
    assert lines.index("loopback/") > max(lines.index(line) for line in let_in)  # last wins


# --- Inside finetune_api: rooms import each other only downward -------------------------

# Bottom to top; docs/development.md draws the same map. "" is the package root
# (``api``, ``runtime``, ``__init__``): the composition root, above every domain room.
ROOMS = (
    "core",
    "baseten",
    "notify",
    "files",
    "jobs",
    "insights",
    "serving",
    "polling",
    "compat",
    "",
    "edge",
)
PACKAGE = ROOT / "finetune_api"


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports_of(path: Path, root: Path = ROOT) -> set[str]:
    """Every module ``path`` imports (absolute or relative, lazy ones and type-only included)."""
    package_parts = _module_name(path, root).split(".")
    if path.name != "__init__.py":
        package_parts = package_parts[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            # ``from pkg import mod`` imports the module pkg.mod when there is one.
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ROOMS) else ""


def upward_imports(package: Path, root: Path = ROOT) -> list[str]:
    """``a -> b`` for every import of a module in a higher room, or in an unknown one."""
    modules = {_module_name(p, root) for p in package.rglob("*.py")}
    wrong = []
    for path in sorted(package.rglob("*.py")):
        here = _module_name(path, root)
        for target in sorted(_imports_of(path, root) & modules):
            mine, theirs = _room(here), _room(target)
            if mine not in ROOMS or theirs not in ROOMS:
                wrong.append(f"{here} -> {target} (a room missing from ROOMS)")
            elif ROOMS.index(theirs) > ROOMS.index(mine):
                wrong.append(f"{here} -> {target}")
    return wrong


def import_cycles(package: Path, root: Path = ROOT) -> list[tuple[str, str]]:
    """Pairs of modules that import each other (a package's ``__init__`` aside)."""
    modules = {_module_name(p, root): p for p in package.rglob("*.py") if p.name != "__init__.py"}
    graph = {name: _imports_of(path, root) & modules.keys() for name, path in modules.items()}
    return sorted((a, b) for a in graph for b in graph[a] if a < b and a in graph.get(b, set()))


def test_rooms_import_only_downward() -> None:
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} == {
        room for room in ROOMS if room
    }
    assert upward_imports(PACKAGE) == []


def test_at_most_ten_modules_sit_directly_in_the_package() -> None:
    assert len(list(PACKAGE.glob("*.py"))) <= 10


def test_every_room_says_what_lives_there_and_what_it_may_import() -> None:
    for room in filter(None, ROOMS):
        doc = ast.get_docstring(ast.parse((PACKAGE / room / "__init__.py").read_text()))
        assert doc and "May import" in doc, room


def test_no_two_modules_import_each_other() -> None:
    assert import_cycles(PACKAGE) == []
    assert import_cycles(ROOT / "sandbox") == []


def test_the_check_catches_an_upward_import_and_a_cycle(tmp_path: Path) -> None:
    package = tmp_path / "finetune_api"
    for room in ("core", "edge"):
        (package / room).mkdir(parents=True)
        (package / room / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "core" / "errors.py").write_text("from finetune_api.edge import routes\n")
    (package / "edge" / "routes.py").write_text("from ..core.errors import X\n")
    assert upward_imports(package, tmp_path) == [
        "finetune_api.core.errors -> finetune_api.edge",
        "finetune_api.core.errors -> finetune_api.edge.routes",
    ]
    assert import_cycles(package, tmp_path) == [
        ("finetune_api.core.errors", "finetune_api.edge.routes")
    ]
    (package / "core" / "errors.py").write_text("X = 1\n")
    assert upward_imports(package, tmp_path) == []
    assert import_cycles(package, tmp_path) == []
