"""Files in Cloud Storage: the real google-cloud-storage client against fake-gcs-server.

train_http runs with ``FILES_BUCKET`` and ``STORAGE_EMULATOR_HOST`` pointing at a
pass-through proxy (loopback/gcs_proxy.py) in front of fake-gcs-server, so a
bucket the service may not read answers a real 403 and an outage a real 503.
Mocked, because it cannot run here: IAM (the proxy's 403) and V4 signing
through IAM signBlob (the signing test uses a locally generated key instead).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from loopback.fake_secret_manager import FakeSecretManager
from loopback.functions import FunctionServer
from loopback.gcs_proxy import GcsProxy
from loopback.servers import LocalGcs, LocalS3
from sandbox import Sandbox
from tests.conftest import function_env

BUCKET, USERS, PRIVATE = "ft-files", "team-data", "someone-elses"
# Another team's bucket the service's identity could read, and the poll's own state.
OTHER, STATE = "other-team", "ft-state"
MODEL = "Qwen/Qwen3-0.6B"
CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hey"}]}
GOOD = (json.dumps(CHAT) + "\n").encode() * 40


@pytest.fixture(scope="module")
def gcs() -> Iterator[tuple[LocalGcs, GcsProxy]]:
    with LocalGcs() as server, GcsProxy(server.url) as proxy:
        client = server.client()
        for name in (BUCKET, USERS, PRIVATE, OTHER, STATE):
            client.create_bucket(name)
        client.bucket(OTHER).blob("secret.jsonl").upload_from_string(GOOD)
        client.bucket(STATE).blob("poll-state.json").upload_from_string(b'{"jobs": {}}')
        client.bucket(USERS).blob("chats/good.jsonl").upload_from_string(GOOD)
        client.bucket(USERS).blob("chats/bad.jsonl").upload_from_string(b"a,b\n" + GOOD)
        client.bucket(PRIVATE).blob("x.jsonl").upload_from_string(GOOD)
        proxy.forbidden_buckets.add(PRIVATE)
        yield server, proxy


@pytest.fixture(scope="module")
def server(
    gcs: tuple[LocalGcs, GcsProxy],
    sandbox_server: Sandbox,
    secret_manager: FakeSecretManager,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[FunctionServer]:
    tmp = tmp_path_factory.mktemp("gcs-function-tmp")
    env = function_env(
        sandbox_server,
        secret_manager,
        tmp,
        FILES_BUCKET=BUCKET,
        STORAGE_EMULATOR_HOST=gcs[1].host,
        POLL_STATE_BUCKET=STATE,
        # The service's own buckets are listed too: they are refused whatever this says.
        GCS_ALLOWED_BUCKETS=f"{USERS},{PRIVATE},{BUCKET},{STATE}",
    )
    with FunctionServer("train_http", env) as function:
        yield function
    assert list(tmp.iterdir()) == []  # /tmp left as found


def objects(gcs: tuple[LocalGcs, GcsProxy], prefix: str = "files/") -> list[str]:
    return sorted(b.name for b in gcs[0].client().list_blobs(BUCKET, prefix=prefix))


def submit(server: FunctionServer, body: dict[str, Any]) -> requests.Response:
    return requests.post(f"{server.url}/jobs", json=body, timeout=60)


def test_multipart_upload_lands_in_the_bucket(
    server: FunctionServer, gcs: tuple[LocalGcs, GcsProxy]
) -> None:
    response = requests.post(
        f"{server.url}/files",
        files={"file": ("chats.jsonl", GOOD)},
        data={"purpose": "fine-tune"},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    file = response.json()
    assert file["status"] == "processed" and file["validation"]["examples"] == 40
    blob = gcs[0].client().bucket(BUCKET).blob(f"files/data/{file['id']}.jsonl")
    assert blob.download_as_bytes() == GOOD
    assert requests.get(f"{server.url}/files/{file['id']}", timeout=10).json() == file
    listed = requests.get(f"{server.url}/files", params={"limit": 1}, timeout=10).json()
    assert listed["data"][0]["id"] == file["id"]


def test_the_resumable_session_path(server: FunctionServer, gcs: tuple[LocalGcs, GcsProxy]) -> None:
    opened = requests.post(
        f"{server.url}/files",
        json={"filename": "big.jsonl", "bytes": len(GOOD), "purpose": "fine-tune"},
        timeout=10,
    ).json()
    assert opened["status"] == "pending_upload"
    assert opened["upload_url"].startswith(gcs[0].url)  # straight to storage, not the function
    # The session URL is the opener's alone: never in a GET or a list answer.
    got = requests.get(f"{server.url}/files/{opened['id']}", timeout=10).json()
    assert "upload_url" not in got
    listed = requests.get(f"{server.url}/files", timeout=10).json()["data"]
    assert all("upload_url" not in item for item in listed)
    complete = f"{server.url}/files/{opened['id']}/complete"
    early = requests.post(complete, timeout=10)
    assert early.status_code == 409
    assert requests.get(f"{server.url}/files/{opened['id']}", timeout=10).json()["status"] == (
        "pending_upload"
    )
    # The client sends its bytes to the session (one PUT; a real client may send chunks).
    put = requests.put(opened["upload_url"], data=GOOD, timeout=30)
    assert put.status_code in (200, 201), put.text
    # A storage outage during the check: 503, and the File stays retryable.
    gcs[1].fail_media = True
    try:
        outage = requests.post(complete, timeout=60)
    finally:
        gcs[1].fail_media = False
    assert outage.status_code == 503 and outage.headers.get("Retry-After")
    assert requests.get(f"{server.url}/files/{opened['id']}", timeout=10).json()["status"] == (
        "pending_upload"
    )
    done = requests.post(complete, timeout=30).json()
    assert done["status"] == "processed" and done["sha256"] == hashlib.sha256(GOOD).hexdigest()
    assert done["validation"]["examples"] == 40
    # The finished session writes nothing more: the checked bytes stay.
    requests.put(opened["upload_url"], data=GOOD.replace(b"hey", b"HEY"), timeout=30)
    blob = gcs[0].client().bucket(BUCKET).blob(f"files/data/{opened['id']}.jsonl")
    assert blob.download_as_bytes() == GOOD


def test_a_gs_object_is_checked_and_handed_to_the_job_pinned(
    server: FunctionServer, sandbox: Sandbox, s3: LocalS3, gcs: tuple[LocalGcs, GcsProxy]
) -> None:
    ref = f"gs://{USERS}/chats/good.jsonl"
    response = submit(server, {"training_file": ref, "model_id": MODEL})
    assert response.status_code == 201, response.text
    [recorded] = sandbox.jobs()
    [artifact] = recorded["request"]["runtime"]["artifacts"]
    blob = s3.client().get_object(Bucket=artifact["s3_bucket"], Key=artifact["s3_key"])
    with tarfile.open(fileobj=io.BytesIO(blob["Body"].read())) as archive:
        staged = json.load(archive.extractfile("runtime_config.json"))  # type: ignore[arg-type]
    handed = staged["training_file"]
    generation = gcs[0].client().bucket(USERS).get_blob("chats/good.jsonl").generation
    assert handed["source"] == ref and handed["generation"] == str(generation)
    assert handed["sha256"] == hashlib.sha256(GOOD).hexdigest() and handed["examples"] == 40
    # The URL the job gets reads exactly those bytes, at that generation.
    assert requests.get(handed["url"], timeout=10).content == GOOD
    # The check is remembered per generation: a second job reads no bytes again.
    assert any(name.startswith("files/checks/") for name in objects(gcs))


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        (f"gs://{USERS}/chats/missing.jsonl", "does not exist"),
        (f"gs://{USERS}/", "malformed gs:// URI"),
        ("gs://UPPER/x.jsonl", "malformed gs:// URI"),
        (f"gs://{PRIVATE}/x.jsonl", "may not read that Cloud Storage object"),
        (f"gs://{USERS}/chats/bad.jsonl", "failed its check (1 invalid lines; first: line 1"),
    ],
)
def test_bad_gs_objects_are_distinct_clear_400s(
    server: FunctionServer, sandbox: Sandbox, ref: str, reason: str
) -> None:
    response = submit(server, {"training_file": ref, "model_id": MODEL})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert reason in error["message"] and error["details"][0]["location"] == "training_file"
    assert sandbox.jobs() == []


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        (f"gs://{OTHER}/secret.jsonl", "not in GCS_ALLOWED_BUCKETS"),
        (f"gs://{STATE}/poll-state.json", "never reads its own buckets"),
        (f"gs://{BUCKET}/files/meta/x.json", "never reads its own buckets"),
        (f"gs://{BUCKET}/jobs/index/x.json", "never reads its own buckets"),
    ],
)
def test_a_bucket_not_allowed_or_our_own_is_refused_and_read_not_at_all(
    server: FunctionServer, sandbox: Sandbox, gcs: tuple[LocalGcs, GcsProxy], ref: str, reason: str
) -> None:
    bucket = ref.split("/")[2]
    stored_before = sorted((b.name, b.generation) for b in gcs[0].client().list_blobs(bucket))
    gcs[1].paths.clear()
    for body in (
        {"training_file": ref, "model_id": MODEL},
        {"training_file": ref, "model_id": MODEL, "dry_run": True},
        {"dataset_id": "org/data", "validation_file": ref, "model_id": MODEL},
    ):
        response = submit(server, body)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert reason in error["message"] and "sha256" not in response.text
    # Not one request for that bucket reached storage; nothing created, nothing lost.
    assert not [path for path in gcs[1].paths if f"/b/{bucket}" in path], gcs[1].paths
    assert sandbox.jobs() == []
    after = sorted((b.name, b.generation) for b in gcs[0].client().list_blobs(bucket))
    assert after == stored_before


def test_without_gcs_allowed_buckets_every_gs_reference_is_refused(tmp_path: Path) -> None:
    from finetune_api.core.errors import InvalidRequestError
    from finetune_api.core.settings import load_settings
    from finetune_api.runtime import build_files

    settings = load_settings({}, files_dir=str(tmp_path), gcs_allowed_buckets="")
    assert settings.gcs_allowed_buckets == ()
    files = build_files(settings)
    with pytest.raises(InvalidRequestError, match="not in GCS_ALLOWED_BUCKETS"):
        files.resolve("training_file", f"gs://{USERS}/chats/good.jsonl")
    assert list(tmp_path.iterdir()) == []  # nothing read, nothing written


def test_signed_url_for_a_real_bucket_is_v4_and_short_lived(tmp_path: Path) -> None:
    """Outside the emulator the job gets a V4 signed URL (here signed by a generated key)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from google.cloud import storage  # type: ignore[attr-defined]
    from google.oauth2 import service_account

    from finetune_api.files.stores import GcsFileStore

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    info = {
        "type": "service_account",
        "client_email": "runner@p.iam.gserviceaccount.com",
        "private_key": pem,
        "private_key_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    credentials = service_account.Credentials.from_service_account_info(info)  # type: ignore[no-untyped-call]
    store = GcsFileStore(BUCKET)
    store._objects._client = storage.Client(project="p", credentials=credentials)
    url = store.object_url(USERS, "chats/good.jsonl", "123", 3600)
    assert url.startswith(f"https://storage.googleapis.com/{USERS}/chats/good.jsonl?")
    assert "X-Goog-Algorithm=GOOG4-RSA-SHA256" in url and "X-Goog-Expires=3600" in url
    assert "generation=123" in url and "X-Goog-Signature=" in url


@pytest.mark.parametrize(
    ("name", "data", "sentence"),
    [
        ("empty.jsonl", b"", "the file is empty"),
        ("blank.jsonl", b"\n\n", "no valid example in the file"),
    ],
)
def test_a_file_wide_error_reads_as_a_sentence(
    server: FunctionServer,
    sandbox: Sandbox,
    gcs: tuple[LocalGcs, GcsProxy],
    name: str,
    data: bytes,
    sentence: str,
) -> None:
    gcs[0].client().bucket(USERS).blob(f"chats/{name}").upload_from_string(data)
    response = submit(server, {"training_file": f"gs://{USERS}/chats/{name}", "model_id": MODEL})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert f"first: {sentence})" in error["message"]
    reasons = [detail["reason"] for detail in error["details"]]
    assert reasons[0] == sentence
    assert "None" not in error["message"] and not any("None" in r for r in reasons)
    assert all(r == sentence or r.startswith("line ") for r in reasons)
    assert sandbox.jobs() == []


def test_a_refused_part_is_deleted_from_the_bucket(
    server: FunctionServer, gcs: tuple[LocalGcs, GcsProxy]
) -> None:
    upload = requests.post(
        f"{server.url}/v1/uploads",
        json={"filename": "x.jsonl", "bytes": 100, "purpose": "fine-tune"},
        timeout=10,
    ).json()
    prefix = f"files/uploads/{upload['id']}/"

    def part(data: bytes) -> requests.Response:
        return requests.post(
            f"{server.url}/v1/uploads/{upload['id']}/parts",
            files={"data": ("blob", data, "application/octet-stream")},
            timeout=30,
        )

    assert part(b"x" * 150).status_code == 413
    assert objects(gcs, prefix) == []
    kept = part(b"x" * 60)
    assert kept.status_code == 200
    past = part(b"y" * 60)
    assert past.status_code == 413 and "announced" in past.json()["error"]["message"]
    assert objects(gcs, prefix) == [prefix + kept.json()["id"]]
