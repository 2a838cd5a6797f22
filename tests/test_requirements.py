"""Every runtime requirement earns its place in the deployed function.

`requirements.txt` is what every deploy installs. A pin that nothing imports
costs install time and attack surface on every deploy, so each one must be
imported by the service (`finetune_api/`, `main.py`) or be a transitive need
documented below with the reason it is pinned directly.
"""

from __future__ import annotations

import ast
import re
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Pinned on purpose although the service never imports them itself.
DOCUMENTED_TRANSITIVE: dict[str, str] = {}


def _requirements() -> list[str]:
    names = []
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(re.split(r"[=<>!~;\[ ]", line, maxsplit=1)[0])
    return names


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_modules() -> set[str]:
    """Every dotted name the service imports, lazily or not (`from a.b import c`: a.b, a.b.c)."""
    sources = [ROOT / "main.py", *sorted((ROOT / "finetune_api").rglob("*.py"))]
    found: set[str] = set()
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _provided_modules(distribution: str) -> set[str]:
    """The dotted module and package names a distribution installs."""
    provided = set()
    for file in metadata.distribution(distribution).files or ():
        if file.suffix != ".py" or ".dist-info" in str(file) or ".data" in file.parts[0]:
            continue
        parts = list(file.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if parts:
            provided.add(".".join(parts))
    return provided


def _unused(requirements: list[str], imported: set[str]) -> list[str]:
    documented = {_normalise(name) for name in DOCUMENTED_TRANSITIVE}
    return [
        name
        for name in requirements
        if _normalise(name) not in documented and not (_provided_modules(name) & imported)
    ]


def test_every_runtime_requirement_is_imported_or_documented() -> None:
    requirements = _requirements()
    assert requirements, "requirements.txt lists no requirement"
    unused = _unused(requirements, _imported_modules())
    assert unused == [], (
        f"{unused} pinned in requirements.txt but never imported by finetune_api/ or main.py; "
        "remove them, or add them to DOCUMENTED_TRANSITIVE with the reason"
    )


def test_the_check_catches_an_unused_pin() -> None:
    # A requirement installed here that the service never imports must be reported.
    assert _unused(["pytest"], _imported_modules()) == ["pytest"]
    assert _unused(["requests"], _imported_modules()) == []
