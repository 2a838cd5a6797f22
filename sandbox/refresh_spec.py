"""Refresh a vendored copy of Baseten's OpenAPI document from a newer spec file.

    python -m sandbox.refresh_spec NEW_SPEC --snapshot-date 2026-12-01 [--part training|models]

``NEW_SPEC`` (YAML or JSON) is either the whole published document
(``https://api.baseten.co/v1/spec``) or an already cut part. The script keeps
the paths of the chosen part (training: ``/v1/training…``, the team project
route and ``/v1/blobs/credentials/train``; models: ``/v1/models…``) plus every
component they reference, checks that each local ``$ref`` resolves and that
each operation the sandbox implements is still there, records the source URL
and snapshot date under ``info.x-vendored``, and rewrites
``sandbox/spec/<part file>``. It prints what changed: operations added,
removed, and newly deprecated. It refuses (exit 1, file untouched) a document
that is not OpenAPI 3.1, a dangling reference, or one that drops an operation
the sandbox serves (remove the route first).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from sandbox.conformance import SOURCE_URL, SPEC_DIR, Spec, load_document

PARTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "training": (
        "baseten-openapi.yaml",
        (
            "/v1/training_projects",
            "/v1/training_jobs",
            "/v1/training/",
            "/v1/teams/{team_id}/training_projects",
            "/v1/blobs/credentials/train",
        ),
    ),
    "models": (
        "baseten-models-openapi.yaml",
        ("/v1/models", "/v1/prepare_model_upload", "/v1/instance_types"),
    ),
}


class RefreshError(Exception):
    """The new document cannot replace the vendored one (the message says why)."""


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            yield ref
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _lookup(doc: dict[str, Any], ref: str) -> Any:
    if not ref.startswith("#/"):
        raise RefreshError(f"only local references are supported, got {ref!r}")
    node: Any = doc
    for token in ref[2:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or token not in node:
            raise RefreshError(f"reference {ref!r} points to nothing")
        node = node[token]
    return node


def cut_part(doc: dict[str, Any], prefixes: Iterable[str]) -> dict[str, Any]:
    """``doc`` with only the paths under ``prefixes`` and the components they reference."""
    prefixes = tuple(prefixes)
    paths = {p: item for p, item in (doc.get("paths") or {}).items() if p.startswith(prefixes)}
    if not paths:
        raise RefreshError(f"no path starts with any of {', '.join(prefixes)}")
    wanted: set[tuple[str, str]] = set()
    pending = list(_refs(paths))
    for scheme in doc.get("security") or []:
        pending += [f"#/components/securitySchemes/{name}" for name in scheme]
    while pending:
        ref = pending.pop()
        parts = ref[2:].split("/")
        if len(parts) < 3 or parts[0] != "components":
            _lookup(doc, ref)  # any other local pointer must still resolve
            continue
        key = (parts[1], parts[2].replace("~1", "/").replace("~0", "~"))
        if key in wanted:
            continue
        wanted.add(key)
        pending += list(_refs(_lookup(doc, f"#/components/{parts[1]}/{parts[2]}")))
    components: dict[str, dict[str, Any]] = {}
    for section, name in sorted(wanted):
        components.setdefault(section, {})[name] = doc["components"][section][name]
    out = {key: value for key, value in doc.items() if key not in ("paths", "components")}
    out["paths"] = paths
    out["components"] = components
    return out


def _operations(doc: dict[str, Any]) -> dict[str, bool]:
    """``"GET /v1/x"`` -> deprecated, for every operation of ``doc``."""
    spec = Spec({"doc": doc})
    return {op.label: op.deprecated for op in spec.operations}


def sandbox_operations() -> set[str]:
    """``"GET /v1/..."`` labels of the operations the sandbox serves, in spec syntax."""
    from sandbox.server import API_ROUTES

    labels: set[str] = set()
    for rule in API_ROUTES.iter_rules():
        template = rule.rule
        if not template.startswith("/v1/"):
            continue  # GraphQL and model inference are not in the REST spec
        for argument in rule.arguments:
            template = template.replace(f"<{argument}>", "{}")
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            labels.add(f"{method} {template}")
    return labels


def _shape(label: str) -> str:
    """``GET /v1/a/{x}/b`` and ``GET /v1/a/<x>/b`` compare equal."""
    method, _, path = label.partition(" ")
    parts = ["{}" if p.startswith(("{", "<")) else p for p in path.split("/")]
    return f"{method} {'/'.join(parts)}"


def refresh(
    new_spec: Path,
    *,
    part: str,
    snapshot_date: str,
    source: str = SOURCE_URL,
    spec_dir: Path = SPEC_DIR,
) -> list[str]:
    """Rewrite ``spec_dir/<part file>`` from ``new_spec``; return the change report lines."""
    try:
        datetime.date.fromisoformat(snapshot_date)
    except ValueError as exc:
        raise RefreshError(f"--snapshot-date {snapshot_date!r}: expected YYYY-MM-DD") from exc
    file_name, prefixes = PARTS[part]
    try:
        doc = load_document(new_spec)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise RefreshError(f"{new_spec}: cannot read it ({exc})") from exc
    if not str(doc.get("openapi", "")).startswith("3.1"):
        raise RefreshError(f"{new_spec}: expected an OpenAPI 3.1 document")
    cut = cut_part(doc, prefixes)
    for ref in _refs(cut):
        _lookup(cut, ref)
    new_ops = _operations(cut)
    served = {_shape(label) for label in new_ops}
    if part == "training":
        missing = sorted(
            label
            for label in sandbox_operations()
            if label.split(" ", 1)[1].startswith(prefixes) and _shape(label) not in served
        )
        # The sandbox's blob route is a template; the spec names /train only.
        missing = [m for m in missing if "/v1/blobs/credentials/" not in m]
        if "GET /v1/blobs/credentials/train" not in new_ops:
            missing.append("GET /v1/blobs/credentials/train")
        if missing:
            raise RefreshError(
                "the new document drops operations the sandbox serves: " + ", ".join(missing)
            )
    target = spec_dir / file_name
    old_ops = _operations(load_document(target)) if target.exists() else {}
    info = dict(cut.get("info") or {})
    info["x-vendored"] = {
        "source": source,
        "snapshot_date": snapshot_date,
        "part": part,
        "refreshed_by": "python -m sandbox.refresh_spec",
    }
    cut["info"] = info
    header = (
        f"# Baseten management API, {part} part, vendored from {source}\n"
        f"# (snapshot {snapshot_date}). Do not edit by hand: refresh with\n"
        f"#   python -m sandbox.refresh_spec NEW_SPEC --part {part} --snapshot-date YYYY-MM-DD\n"
    )
    text = yaml.safe_dump(cut, sort_keys=False, allow_unicode=True, width=100)
    # Round-trip check before touching the vendored copy.
    if json.dumps(yaml.safe_load(text), sort_keys=True) != json.dumps(cut, sort_keys=True):
        raise RefreshError("the document does not survive a YAML round trip")
    temporary = target.with_suffix(".yaml.tmp")
    temporary.write_text(header + text, encoding="utf-8")
    temporary.replace(target)
    report = [f"wrote {target} ({len(new_ops)} operations, snapshot {snapshot_date})"]
    report += [f"added: {op}" for op in sorted(new_ops.keys() - old_ops.keys())]
    report += [f"removed: {op}" for op in sorted(old_ops.keys() - new_ops.keys())]
    report += [
        f"now deprecated: {op}"
        for op in sorted(new_ops)
        if new_ops[op] and not old_ops.get(op, False)
    ]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.refresh_spec", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("new_spec", type=Path, help="a newer spec file (YAML or JSON)")
    parser.add_argument("--part", choices=sorted(PARTS), default="training")
    parser.add_argument("--snapshot-date", required=True, help="when it was fetched, YYYY-MM-DD")
    parser.add_argument("--source", default=SOURCE_URL, help="where it came from")
    args = parser.parse_args(argv)
    try:
        report = refresh(
            args.new_spec, part=args.part, snapshot_date=args.snapshot_date, source=args.source
        )
    except RefreshError as exc:
        print(f"refresh_spec: {exc}", file=sys.stderr)
        return 1
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
