"""`/v1/uploads/{id}/complete`'s storage work on fake-gcs-server, before and after (issue 27).

Parts are stored as the Uploads API stores them (``files/uploads/<id>/<part id>``),
then the work ``complete`` does in storage is timed: read every part's size,
compose the parts in rounds of 32 into the File's data, delete the parts.

- baseline: the one-call-at-a-time way (one ``get_blob`` per part, the composes
  of a round one after another, one delete per part), as main had it;
- ours: :class:`~finetune_api.files.stores.GcsFileStore` (one listing for the
  sizes, the composes of a round and the deletes ``PARALLEL_CALLS`` at a time).

Both run in this process against the same fake-gcs-server, on the same parts
(each measured on a fresh copy), twice: ``direct``, and through the loopback
proxy (loopback/gcs_proxy.py, what tests/files/test_files_gcs.py runs behind,
and where the issue's 51.7 s for 512 parts was measured), whose every call costs
tens of ms, as Cloud Storage's own do. On a 2-core machine fake-gcs-server is
CPU-bound, so the direct figures understate what concurrency buys against the
real service; the proxied ones show the latency-bound case. The check of the
joined File is not included (bench/file_check.py measures it).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from finetune_api.files.stores import COMPOSE_MAX, DATA, UPLOADS, GcsFileStore
from finetune_api.files.uploads import new_part_id, new_upload_id
from loopback.gcs_proxy import GcsProxy
from loopback.servers import LocalGcs

BUCKET = "bench-uploads"


def _store_parts(client: Any, upload_id: str, count: int) -> list[str]:
    bucket = client.bucket(BUCKET)
    part_ids = [new_part_id() for _ in range(count)]

    def put(item: tuple[int, str]) -> None:
        number, part_id = item
        line = b'{"text": "part %d"}\n' % number
        bucket.blob(f"{UPLOADS}{upload_id}/{part_id}").upload_from_string(line)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, enumerate(part_ids)))
    return part_ids


def _sequential(client: Any, upload_id: str, part_ids: list[str], file_id: str) -> None:
    """main's way: every storage call of complete one after another."""
    bucket = client.bucket(BUCKET)
    for part_id in part_ids:
        bucket.get_blob(f"{UPLOADS}{upload_id}/{part_id}")
    sources = [bucket.blob(f"{UPLOADS}{upload_id}/{part_id}") for part_id in part_ids]
    round_number = 0
    while len(sources) > COMPOSE_MAX:
        round_number += 1
        joined = []
        for index in range(0, len(sources), COMPOSE_MAX):
            target = bucket.blob(f"{UPLOADS}{upload_id}/round-{round_number}-{index}")
            target.compose(sources[index : index + COMPOSE_MAX])
            joined.append(target)
        sources = joined
    bucket.blob(f"{DATA}{file_id}.jsonl").compose(sources)
    for blob in list(client.list_blobs(BUCKET, prefix=f"{UPLOADS}{upload_id}/")):
        blob.delete()


def _ours(store: GcsFileStore, upload_id: str, part_ids: list[str], file_id: str) -> None:
    sizes = store.part_sizes(upload_id, part_ids)
    assert all(size is not None for size in sizes)
    store.join_parts(upload_id, part_ids, file_id)
    store.delete_parts(upload_id)


def run(parts: tuple[int, ...] = (512, 1024), baseline_max: int = 1024) -> dict[str, Any]:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    results = []
    with LocalGcs() as gcs, GcsProxy(gcs.url) as proxy:
        gcs.client().create_bucket(BUCKET)
        client = gcs.client()
        for route, url in (("direct", gcs.url), ("proxy", proxy.url)):
            timed = storage.Client(
                project="bench",
                credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                client_options={"api_endpoint": url},
            )
            store = GcsFileStore(BUCKET, emulator_host=url, project="bench")
            for count in parts:
                row: dict[str, Any] = {"parts": count, "route": route}
                for label in ("baseline", "ours"):
                    if label == "baseline" and count > baseline_max:
                        row["baseline_s"] = None
                        continue
                    upload_id = new_upload_id()
                    part_ids = _store_parts(client, upload_id, count)
                    file_id = f"file-bench{label}{count}-{route}"
                    started = time.perf_counter()
                    if label == "baseline":
                        _sequential(timed, upload_id, part_ids, file_id)
                    else:
                        _ours(store, upload_id, part_ids, file_id)
                    row[f"{label}_s"] = round(time.perf_counter() - started, 2)
                    final = client.bucket(BUCKET).blob(f"{DATA}{file_id}.jsonl")
                    assert final.download_as_bytes().count(b"\n") == count  # every part, once
                    final.delete()
                    left = list(client.list_blobs(BUCKET, prefix=f"{UPLOADS}{upload_id}/"))
                    assert left == []
                base = row.get("baseline_s")
                row["ratio"] = round(row["ours_s"] / base, 3) if base else None
                results.append(row)
    return {"rows": results}


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
