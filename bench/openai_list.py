"""The cost of one ``/v1/fine_tuning/jobs`` page as the job history grows.

The job index (finetune_api/jobs/index.py) in fake-gcs-server through the real
``google-cloud-storage`` client: ``sizes`` jobs are indexed (as submits do), then
the first page and a page deep in the history (``after`` = a job half-way down)
are read ``runs`` times each. We report the median time of the index part of a
page (the Baseten reads it adds are one per job still moving, in parallel) and
what it cost in Cloud Storage requests: listings and record reads. The goal is
that both stay the same whatever the history: one listing, ``limit`` reads.

``filtered``: two ``metadata[…]`` filters over a history of ``filtered_history`` jobs,
``limit=1``, where the first pair marks every job and the second one job far down
(issue 27 item 8: the worst case of the scan that listed the first pair's markers and
read every record it marked). The baseline, measured in the same run on the same
bucket, is that scan (:func:`_scan_first_pair`, the index's page before the join).
Goal: at most 200 storage requests (listings + reads) per page, whatever the filter.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from bench.harness import median, ms
from finetune_api.core.buckets import Bucket
from finetune_api.jobs.index import BY_METADATA, JobIndex, metadata_key
from loopback.servers import LocalGcs


class _Counting(Bucket):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.listings = 0
        self.reads = 0

    def names(
        self, prefix: str, start_after: str | None, count: int, *, inclusive: bool = False
    ) -> list[str]:
        self.listings += 1
        return super().names(prefix, start_after, count, inclusive=inclusive)

    def read(self, name: str) -> tuple[bytes, str] | None:
        self.reads += 1
        return super().read(name)


def _submit(index: JobIndex, number: int, metadata: dict[str, str] | None = None) -> None:
    seconds = 1_700_000_000 + number
    job = SimpleNamespace(
        training_project_id="proj1",
        training_job_id=f"job{number:06d}",
        job_name=f"run-{number}",
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds)),
    )
    request = SimpleNamespace(
        model_id="Qwen/Qwen3-0.6B",
        training_file="file-x",
        dataset_id=None,
        validation_file=None,
        deploy=None,
        hyperparameters=SimpleNamespace(num_epochs=1, batch_size=4, learning_rate=2e-4, seed=42),
    )
    pairs = metadata or {"team": f"t{number % 4}"}
    index.record(job, request, {"metadata": pairs, "suffix": None})


def _scan_first_pair(
    index: JobIndex, limit: int, wanted: dict[str, str]
) -> list[tuple[dict[str, Any], str]]:
    """The baseline: the page before the join (the first pair's markers listed batch by
    batch, every record read and checked against the other pairs)."""
    key, value = next(iter(wanted.items()))
    prefix = f"{BY_METADATA}{metadata_key(key, value)}/"
    store = index._store
    found: list[tuple[dict[str, Any], str]] = []
    cursor = None
    while True:
        need = limit + 1 - len(found)
        batch = store.names(prefix, cursor, need)
        if not batch:
            return found
        cursor = batch[-1]
        for item in index._read_all(batch):
            if item is not None and all(
                (item[0].get("metadata") or {}).get(k) == v for k, v in wanted.items()
            ):
                found.append(item)
        if len(found) > limit or len(batch) < need:
            return found[:limit]


def _filtered(gcs: LocalGcs, history: int, runs: int) -> dict[str, Any]:
    bucket = f"bench-filtered-{history}"
    gcs.client().create_bucket(bucket)
    store = _Counting(bucket, emulator_host=gcs.url, project="bench")
    index = JobIndex(store)
    rare = history // 10  # an old job (ids sort newest first: near the end of the listing)
    from concurrent.futures import ThreadPoolExecutor

    def one(number: int) -> None:
        pairs = {"project": "all", "run": "rare" if number == rare else f"r{number}"}
        _submit(index, number, pairs)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(history)))
    wanted = {"project": "all", "run": "rare"}
    figures: dict[str, Any] = {"history": history, "limit": 1}
    for label, page in (
        ("joined", lambda: index.page(None, 1, wanted)[0]),
        ("baseline", lambda: _scan_first_pair(index, 1, wanted)),
    ):
        times = []
        for _ in range(runs if label == "joined" else 1):
            store.listings = store.reads = 0
            started = time.perf_counter()
            items = page()
            times.append(time.perf_counter() - started)
        assert [r["training_job_id"] for r, _ in items] == [f"job{rare:06d}"], label
        figures[label] = {
            "median_ms": ms(median(times)),
            "listings": store.listings,
            "reads": store.reads,
            "items": len(items),
        }
    return figures


def run(
    sizes: tuple[int, ...] = (20, 200, 2000),
    limit: int = 20,
    runs: int = 7,
    filtered_history: int = 5000,
) -> dict[str, Any]:
    pages = []
    with LocalGcs() as gcs:
        for size in sizes:
            bucket = f"bench-{size}"
            gcs.client().create_bucket(bucket)
            store = _Counting(bucket, emulator_host=gcs.url, project="bench")
            index = JobIndex(store)
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda n, index=index: _submit(index, n), range(size)))
            middle = index.page(None, size // 2)[0][-1][0]["id"] if size > 1 else None
            for label, after in (("first", None), ("deep", middle)):
                times = []
                for _ in range(runs):
                    store.listings = store.reads = 0
                    started = time.perf_counter()
                    page, _ = index.page(after, limit)
                    times.append(time.perf_counter() - started)
                pages.append(
                    {
                        "history": size,
                        "page": label,
                        "median_ms": ms(median(times)),
                        "listings": store.listings,
                        "reads": store.reads,
                        "items": len(page),
                    }
                )
        filtered = _filtered(gcs, filtered_history, runs) if filtered_history else None
    return {"limit": limit, "runs": runs, "pages": pages, "filtered": filtered}


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
