"""Keep the sandbox true to Baseten's published OpenAPI document (``sandbox/spec/``).

The vendored documents are the contract. For every request under ``/v1/`` the
sandbox asks :class:`Spec` which operation it is (path template and method),
then checks the path parameters, the query parameters and the JSON body
against that operation's schemas; a violation is refused the way Baseten
refuses it (404 unknown path, 405 unknown method, 400 naming the field). Every
answer the sandbox sends is checked against the operation's response schema
for its status. All schema work is done by ``jsonschema`` (Draft 2020-12, the
dialect of OpenAPI 3.1) with ``referencing`` resolving the ``$ref`` s inside
the documents: no hand-written schema checks.

Everything is driven by the documents: an operation a helper adds to the
sandbox's route table is validated as soon as the spec has it, with no change
here. :data:`LEDGER` counts, for the whole process, the answers validated and
every request the spec rejected or answer that broke its schema, so the test
suite can fail when any client sent a request Baseten would refuse. A request
that deliberately probes a rejection carries :data:`PROBE_HEADER` and is
recorded as such.

Only the sandbox and the tests import this module (``jsonschema`` is a
test/sandbox dependency; the deployed functions never see it).
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_DIR = Path(__file__).resolve().parent / "spec"
#: The vendored parts of ``https://api.baseten.co/v1/spec``: training, then models/deployments.
SPEC_FILES = ("baseten-openapi.yaml", "baseten-models-openapi.yaml")
SOURCE_URL = "https://api.baseten.co/v1/spec"
#: Header a test sends on a request that is meant to be refused (probing the sandbox).
PROBE_HEADER = "X-Sandbox-Probe"

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_PARAM = re.compile(r"\{([^/{}]+)\}")


def _pointer_escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def field_path(prefix: str, path: Iterator[Any] | Any) -> str:
    """``training_job.runtime.start_commands[1]`` from a jsonschema error path."""
    out = prefix
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else str(part)
    return out or "body"


@dataclass(frozen=True)
class Operation:
    """One (method, path template) of a vendored document."""

    method: str
    path: str
    operation_id: str | None
    deprecated: bool
    document: str
    regex: re.Pattern[str]
    parameters: tuple[dict[str, Any], ...]
    body_pointer: str | None
    body_required: bool
    #: status ("200", "4XX", "default") -> pointer of its JSON schema (None: no JSON body defined)
    responses: Mapping[str, str | None]

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"

    def literal_segments(self) -> int:
        return sum(1 for part in self.path.split("/") if part and not _PARAM.fullmatch(part))


@dataclass(frozen=True)
class Violation:
    """A request the spec refuses: answered with ``status`` and ``message``."""

    status: int
    code: str
    message: str


@dataclass(frozen=True)
class RequestCheck:
    operation: Operation | None
    violation: Violation | None


class Spec:
    """The vendored documents, indexed by operation, with cached validators."""

    def __init__(self, documents: Mapping[str, dict[str, Any]]) -> None:
        self.documents = dict(documents)
        registry: Registry[Any] = Registry()
        for name, doc in self.documents.items():
            resource = Resource.from_contents(doc, default_specification=DRAFT202012)
            registry = registry.with_resource(self._uri(name), resource)
        self._registry = registry.crawl()
        self._validators: dict[tuple[str, str], Draft202012Validator] = {}
        self._lock = threading.Lock()
        operations: list[Operation] = []
        for name, doc in self.documents.items():
            for path, item in (doc.get("paths") or {}).items():
                operations.extend(self._operations(name, doc, path, item))
        # A literal segment beats a template: /jobs/search before /jobs/{id}.
        operations.sort(key=lambda op: -op.literal_segments())
        self.operations: tuple[Operation, ...] = tuple(operations)

    @staticmethod
    def _uri(document: str) -> str:
        return f"urn:baseten-spec:{document}"

    @classmethod
    def load(cls, directory: Path = SPEC_DIR) -> Spec:
        return cls({name: load_document(directory / name) for name in SPEC_FILES})

    # ------------------------------------------------------------- indexing

    def _resolve(self, doc: dict[str, Any], node: Any) -> Any:
        """Follow a local ``$ref`` (parameters, request bodies, responses)."""
        seen = 0
        while isinstance(node, dict) and isinstance(node.get("$ref"), str) and seen < 16:
            ref: str = node["$ref"]
            if not ref.startswith("#/"):
                raise ValueError(f"only local references are supported, got {ref!r}")
            target: Any = doc
            for token in ref[2:].split("/"):
                target = target[token.replace("~1", "/").replace("~0", "~")]
            node = target
            seen += 1
        return node

    def _operations(
        self, name: str, doc: dict[str, Any], path: str, item: dict[str, Any]
    ) -> Iterator[Operation]:
        base = f"/paths/{_pointer_escape(path)}"
        shared = self._parameters(doc, f"{base}/parameters", item.get("parameters"))
        pattern = re.escape(path)
        for param in _PARAM.findall(path):
            pattern = pattern.replace(re.escape("{" + param + "}"), f"(?P<{param}>[^/]+)")
        regex = re.compile(f"^{pattern}/?$")
        for method in HTTP_METHODS:
            op = item.get(method)
            if not isinstance(op, dict):
                continue
            op_ptr = f"{base}/{method}"
            own = self._parameters(doc, f"{op_ptr}/parameters", op.get("parameters"))
            merged = {(p["in"], p["name"]): p for p in [*shared, *own]}
            body_pointer: str | None = None
            body = self._resolve(doc, op.get("requestBody"))
            if isinstance(body, dict) and "application/json" in (body.get("content") or {}):
                body_pointer = self._schema_pointer(doc, op_ptr, "requestBody")
            responses: dict[str, str | None] = {}
            for status, response in (op.get("responses") or {}).items():
                resolved = self._resolve(doc, response)
                content = (resolved or {}).get("content") or {}
                schema = (content.get("application/json") or {}).get("schema")
                responses[str(status)] = (
                    self._schema_pointer(doc, f"{op_ptr}/responses/{status}", None)
                    if schema is not None
                    else None
                )
            yield Operation(
                method=method.upper(),
                path=path,
                operation_id=op.get("operationId"),
                deprecated=bool(op.get("deprecated", False)),
                document=name,
                regex=regex,
                parameters=tuple(merged.values()),
                body_pointer=body_pointer,
                body_required=bool(isinstance(body, dict) and body.get("required")),
                responses=responses,
            )

    def _parameters(self, doc: dict[str, Any], pointer: str, params: Any) -> list[dict[str, Any]]:
        """Resolved parameters, each with ``x-schema-pointer`` (where its schema lives)."""
        out: list[dict[str, Any]] = []
        for index, param in enumerate(params or []):
            where = f"{pointer}/{index}"
            if isinstance(param, dict) and isinstance(param.get("$ref"), str):
                where = "/" + param["$ref"][2:]
            resolved = dict(self._resolve(doc, param))
            resolved["x-schema-pointer"] = f"{where}/schema"
            out.append(resolved)
        return out

    def _schema_pointer(self, doc: dict[str, Any], pointer: str, key: str | None) -> str:
        """The pointer of ``.../content/application~1json/schema``, through a ``$ref`` if any."""
        node: Any = doc
        tokens = [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]
        if key is not None:
            tokens.append(key)
        out: list[str] = []
        for token in tokens:
            node = node[token]
            out.append(token)
            if isinstance(node, dict) and isinstance(node.get("$ref"), str):
                ref = node["$ref"]
                node = self._resolve(doc, node)
                out = [t.replace("~1", "/").replace("~0", "~") for t in ref[2:].split("/")]
        out += ["content", "application/json", "schema"]
        return "/" + "/".join(_pointer_escape(t) for t in out)

    # ------------------------------------------------------------- matching

    def find(self, method: str, path: str) -> tuple[Operation | None, dict[str, str], bool]:
        """``(operation, path_params, path_known)`` for a request."""
        path_known = False
        for op in self.operations:
            match = op.regex.match(path)
            if match is None:
                continue
            path_known = True
            if op.method == method.upper():
                return op, match.groupdict(), True
        return None, {}, path_known

    def operation(self, method: str, path_template: str) -> Operation | None:
        for op in self.operations:
            if op.method == method.upper() and op.path == path_template:
                return op
        return None

    def validator(self, document: str, pointer: str) -> Draft202012Validator:
        key = (document, pointer)
        with self._lock:
            found = self._validators.get(key)
            if found is None:
                found = Draft202012Validator(
                    {"$ref": f"{self._uri(document)}#{pointer}"}, registry=self._registry
                )
                self._validators[key] = found
            return found

    def schema_error(
        self, document: str, pointer: str, instance: Any, prefix: str = ""
    ) -> str | None:
        """``None`` when ``instance`` conforms, else a message naming the field."""
        error: ValidationError | None = best_match(
            self.validator(document, pointer).iter_errors(instance)
        )
        if error is None:
            return None
        where = field_path(prefix, error.absolute_path)
        if error.validator == "required" and isinstance(error.instance, dict):
            missing = [k for k in error.validator_value if k not in error.instance]
            if missing:
                name = f"{where}.{missing[0]}" if where != "body" else missing[0]
                return f"{name}: required, but missing"
        return f"{where}: {error.message}"

    # ------------------------------------------------------------- requests

    def check_request(
        self,
        method: str,
        path: str,
        query: Mapping[str, list[str]],
        raw_body: bytes,
    ) -> RequestCheck:
        """Which operation a request is, and why the spec refuses it (if it does)."""
        op, params, path_known = self.find(method, path)
        if op is None:
            if path_known:
                return RequestCheck(
                    None,
                    Violation(
                        405, "METHOD_NOT_ALLOWED", f"method {method} is not allowed on {path}"
                    ),
                )
            return RequestCheck(None, Violation(404, "NOT_FOUND", f"no route {method} {path}"))
        problem = self._parameter_problem(op, params, query) or self._body_problem(op, raw_body)
        if problem is not None:
            return RequestCheck(op, Violation(400, "VALIDATION_ERROR", problem))
        return RequestCheck(op, None)

    def _parameter_problem(
        self, op: Operation, path_params: Mapping[str, str], query: Mapping[str, list[str]]
    ) -> str | None:
        declared_query = {p["name"] for p in op.parameters if p.get("in") == "query"}
        unknown = sorted(set(query) - declared_query)
        if unknown:
            return f"query parameter {unknown[0]!r}: not a parameter of {op.label}"
        for param in op.parameters:
            where, name = param.get("in"), param["name"]
            if where == "path":
                values = [path_params[name]] if name in path_params else []
            elif where == "query":
                values = list(query.get(name, []))
            else:
                continue  # headers and cookies: auth is checked by the server itself
            if not values:
                if param.get("required"):
                    return f"{where} parameter {name!r}: required"
                continue
            if len(values) > 1:
                return f"{where} parameter {name!r}: given {len(values)} times, expected once"
            value = _coerce(values[0], param.get("schema") or {})
            error = self.schema_error(op.document, param["x-schema-pointer"], value)
            if error is not None:
                return f"{where} parameter {name!r}: {error.removeprefix('body: ')}"
        return None

    def _body_problem(self, op: Operation, raw_body: bytes) -> str | None:
        if op.body_pointer is None:
            return None  # an operation without a body ignores one (truss sends {} to some)
        if not raw_body.strip():
            return "body: required" if op.body_required else None
        try:
            body = json.loads(raw_body)
        except (ValueError, UnicodeDecodeError):
            return "body: not valid JSON"
        return self.schema_error(op.document, op.body_pointer, body)

    # ------------------------------------------------------------ responses

    def response_pointer(self, op: Operation, status: int) -> tuple[bool, str | None]:
        """``(status_documented, schema_pointer)`` for an answer to ``op``."""
        code = str(status)
        for key in (code, f"{code[0]}XX", f"{code[0]}xx", "default"):
            if key in op.responses:
                return True, op.responses[key]
        return False, None

    def check_response(self, op: Operation, status: int, body: Any) -> tuple[bool, str | None]:
        """``(validated against a schema, problem)``; no problem when the answer conforms.

        A 2xx status the operation does not document is a problem; other
        statuses without a documented JSON schema (most errors) are not checked.
        """
        documented, pointer = self.response_pointer(op, status)
        if not documented:
            if 200 <= status < 300:
                return False, f"{op.label}: status {status} is not one the spec documents"
            return False, None
        if pointer is None:
            return False, None
        return True, self.schema_error(op.document, pointer, body, prefix="response")


def _coerce(value: str, schema: Mapping[str, Any]) -> Any:
    """A query string as the JSON value its schema most likely means (``"5"`` → 5)."""
    types: set[str] = set()
    for option in [schema, *(schema.get("anyOf") or []), *(schema.get("oneOf") or [])]:
        kind = option.get("type")
        if isinstance(kind, str):
            types.add(kind)
        elif isinstance(kind, list):
            types.update(k for k in kind if isinstance(k, str))
    if "integer" in types and re.fullmatch(r"-?[0-9]+", value):
        return int(value)
    if "number" in types and re.fullmatch(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?", value):
        return float(value)
    if "boolean" in types and value in ("true", "false"):
        return value == "true"
    return value


def load_document(path: Path) -> dict[str, Any]:
    """A YAML or JSON OpenAPI document."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with path.open(encoding="utf-8") as handle:
        doc = yaml.load(handle, Loader=loader)  # noqa: S506 (a safe loader)
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not an OpenAPI document (expected a mapping)")
    return doc


@lru_cache(maxsize=1)
def vendored_spec() -> Spec:
    """The vendored documents, loaded once per process."""
    return Spec.load()


# ---------------------------------------------------------------- the ledger


@dataclass(frozen=True)
class Rejection:
    method: str
    path: str
    status: int
    message: str
    probe: bool


@dataclass(frozen=True)
class BadAnswer:
    operation: str
    status: int
    message: str


@dataclass
class Ledger:
    """What every sandbox of this process saw, never reset (``Sandbox.reset`` keeps it)."""

    answers_validated: int = 0
    answers_unchecked: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    bad_answers: list[BadAnswer] = field(default_factory=list)
    #: ``"GET /v1/..."`` (spec template) -> answers validated against its schemas
    validated_operations: Counter[str] = field(default_factory=Counter)
    #: ``"GET /v1/..."`` -> requests received (any outcome)
    requested_operations: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def requested(self, operation: str) -> None:
        with self._lock:
            self.requested_operations[operation] += 1

    def answered(self, validated: bool, operation: str | None = None) -> None:
        with self._lock:
            if validated:
                self.answers_validated += 1
                if operation is not None:
                    self.validated_operations[operation] += 1
            else:
                self.answers_unchecked += 1

    def rejected(self, rejection: Rejection) -> None:
        with self._lock:
            self.rejections.append(rejection)

    def bad_answer(self, bad: BadAnswer) -> None:
        with self._lock:
            self.bad_answers.append(bad)

    def unexpected_rejections(self) -> list[Rejection]:
        """Rejected requests that were not marked as deliberate probes."""
        with self._lock:
            return [r for r in self.rejections if not r.probe]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {
                "answers_validated": self.answers_validated,
                "answers_unchecked": self.answers_unchecked,
                "rejections": len(self.rejections),
                "unexpected_rejections": sum(1 for r in self.rejections if not r.probe),
                "bad_answers": len(self.bad_answers),
            }


LEDGER = Ledger()
