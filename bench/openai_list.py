"""The cost of one ``/v1/fine_tuning/jobs`` page as the job history grows.

The job index (finetune_api/jobs/index.py) in fake-gcs-server through the real
``google-cloud-storage`` client: ``sizes`` jobs are indexed (as submits do), then
the first page and a page deep in the history (``after`` = a job half-way down)
are read ``runs`` times each. We report the median time of the index part of a
page (the Baseten reads it adds are one per job still moving, in parallel) and
what it cost in Cloud Storage requests: listings and record reads. The goal is
that both stay the same whatever the history: one listing, ``limit`` reads.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from bench.harness import median, ms
from finetune_api.jobs.index import GcsObjects, JobIndex
from loopback.servers import LocalGcs


class _Counting(GcsObjects):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.listings = 0
        self.reads = 0

    def names(self, prefix: str, start_after: str | None, count: int) -> list[str]:
        self.listings += 1
        return super().names(prefix, start_after, count)

    def read(self, name: str) -> tuple[bytes, str] | None:
        self.reads += 1
        return super().read(name)


def _submit(index: JobIndex, number: int) -> None:
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
    index.record(job, request, {"metadata": {"team": f"t{number % 4}"}, "suffix": None})


def run(sizes: tuple[int, ...] = (20, 200, 2000), limit: int = 20, runs: int = 7) -> dict[str, Any]:
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
    return {"limit": limit, "runs": runs, "pages": pages}


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
