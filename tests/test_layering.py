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
