"""Loopback servers shared by the end-to-end tests, started once per session.

* S3: moto in server mode; the sandbox hands its URL to truss as the upload target.
* Baseten: the local sandbox (``sandbox/``), reset before each test that uses it.
* Secret Manager: a local REST endpoint read by the real Google client.
* ``train_http``: a real ``functions-framework`` process whose ``TMPDIR`` is a
  folder of its own, so tests can prove every request leaves it as it was.
"""

from __future__ import annotations

import contextlib
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from loopback.fake_secret_manager import FakeSecretManager
from loopback.functions import FunctionServer
from loopback.servers import LocalS3, start_sandbox
from sandbox import Sandbox
from sandbox.conformance import LEDGER

API_KEY = "bt-test-" + secrets.token_hex(16)
GCP_PROJECT = "test-project"
SECRET_NAME = "baseten-api-key"


@pytest.fixture(scope="session")
def s3() -> Iterator[LocalS3]:
    with LocalS3() as server:
        yield server


@pytest.fixture(scope="session")
def sandbox_server(s3: LocalS3) -> Iterator[Sandbox]:
    server = start_sandbox(API_KEY, s3.url)
    yield server
    server.stop()


@pytest.fixture
def sandbox(sandbox_server: Sandbox) -> Sandbox:
    """The shared sandbox, emptied: no jobs, no faults, default config."""
    sandbox_server.reset()
    return sandbox_server


@pytest.fixture(scope="session")
def secret_manager() -> Iterator[FakeSecretManager]:
    server = FakeSecretManager().start()
    server.add(GCP_PROJECT, SECRET_NAME, API_KEY)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def function_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("function-tmp")


def function_env(
    sandbox: Sandbox, secret_manager: FakeSecretManager, tmp: Path, **extra: str
) -> dict[str, str]:
    """Settings for a function process wired to the loopback servers."""
    return {
        "BASETEN_API_KEY_SECRET_ID": SECRET_NAME,
        "GOOGLE_CLOUD_PROJECT": GCP_PROJECT,
        "SECRETMANAGER_EMULATOR_HOST": secret_manager.host,
        "BASETEN_REMOTE_URL": sandbox.url,
        "BASETEN_API_URL": sandbox.url,
        # Deployed models answer on the sandbox (Baseten: https://model-{id}.api.baseten.co).
        "BASETEN_INFERENCE_URL": sandbox.url + "/model-{model_id}",
        "BASETEN_TIMEOUT_SECONDS": "3",
        "TMPDIR": str(tmp),
        # Uploaded files live beside TMPDIR (which must stay empty), never in ~/.cache.
        "FILES_DIR": str(tmp.parent / f"{tmp.name}-files"),
        # A dry run never reaches huggingface.co: nothing listens on port 9, so the model's
        # tokenizer cannot be fetched and tokens are estimated by the rule (tests that want
        # the tokenizer serve one from loopback/hf_hub.py); huggingface_hub's cache stays here.
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "HF_HOME": str(tmp.parent / f"{tmp.name}-hf-home"),
        **extra,
    }


@pytest.fixture(scope="session")
def train_http_server(
    sandbox_server: Sandbox, secret_manager: FakeSecretManager, function_tmp: Path
) -> Iterator[FunctionServer]:
    env = function_env(sandbox_server, secret_manager, function_tmp)
    with FunctionServer("train_http", env, threads=32) as server:
        yield server


@pytest.fixture
def train_http(
    train_http_server: FunctionServer, sandbox: Sandbox, function_tmp: Path
) -> Iterator[FunctionServer]:
    """train_http with an empty sandbox; afterwards its TMPDIR must be empty again."""
    yield train_http_server
    assert sorted(p.name for p in function_tmp.iterdir()) == []


# ---------------------------------------------------------------- spec conformance
# Every sandbox in this process checks each /v1 request against Baseten's
# vendored OpenAPI document and each answer against its response schema (see
# sandbox/conformance.py). A test fails when, during it, anything (our client,
# truss, a test) sent a request the spec refuses without marking it as a
# deliberate probe (header sandbox.conformance.PROBE_HEADER), or when the
# sandbox answered outside the spec.


@pytest.fixture(autouse=True)
def _baseten_spec_conformance() -> Iterator[None]:
    rejections, bad_answers = len(LEDGER.rejections), len(LEDGER.bad_answers)
    yield
    unexpected = [r for r in LEDGER.rejections[rejections:] if not r.probe]
    assert not unexpected, (
        "requests Baseten's OpenAPI document refuses were sent to the sandbox: "
        + "; ".join(f"{r.method} {r.path}: {r.message}" for r in unexpected)
    )
    broken = LEDGER.bad_answers[bad_answers:]
    assert not broken, "the sandbox answered outside Baseten's OpenAPI document: " + "; ".join(
        f"{b.operation} -> {b.status}: {b.message}" for b in broken
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    counts = LEDGER.snapshot()
    terminalreporter.write_line(
        "Baseten spec conformance: "
        f"{counts['answers_validated']} sandbox answers validated against response schemas, "
        f"{counts['answers_unchecked']} without a schema to check, "
        f"{counts['rejections']} requests refused by the spec "
        f"({counts['unexpected_rejections']} not marked as probes), "
        f"{counts['bad_answers']} answers outside the spec"
    )


@pytest.fixture(scope="session", autouse=True)
def wandb_temporary_folders() -> Iterator[None]:
    """wandb makes two temporary folders when it is imported (``wandb-media``,
    ``wandb-artifacts``; trl imports it whenever it is installed, as it is for these
    tests) and removes them only at a clean interpreter exit, which an xdist worker never
    has: they are removed here, at the end of the worker's session, so /tmp is left as
    it was found."""
    yield
    media = sys.modules.get("wandb.sdk.data_types._private")
    artifact = sys.modules.get("wandb.sdk.artifacts.artifact")
    folders = [
        getattr(media, "MEDIA_TMP", None),
        getattr(getattr(artifact, "Artifact", None), "_TMP_DIR", None),
    ]
    for folder in folders:
        if folder is not None:
            with contextlib.suppress(OSError):
                folder.cleanup()
