"""``make bench`` / ``python -m bench``: every benchmark, one table, ratios against baselines.

Each benchmark runs in a fresh child process (``python -m bench --child NAME``)
so none inherits another's imports, threads or peak RSS; each measures its
baseline in the same run. The table shows absolute figures, the ratio ours /
baseline and, where the issue sets one, the goal and PASS/MISS. The results
(every figure, every sample) go to ``bench/results/latest.json``.

Options: ``--only cold_start,warm_submit`` runs a subset; ``--quick`` uses
fewer repetitions (a smoke run, not for publishing); ``--strict`` exits 1 when
a goal is missed (a benchmark that fails exits 1 regardless).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "latest.json"

# name -> (module, keyword arguments for run(), the same with --quick)
BENCHMARKS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "cold_start": ("bench.cold_start", {"runs": 7}, {"runs": 3}),
    "first_submit": ("bench.first_submit", {"runs": 5}, {"runs": 2}),
    "warm_submit": ("bench.warm_submit", {"requests_per_variant": 20}, {"requests_per_variant": 5}),
    "memory": ("bench.memory", {"concurrency": 20}, {"concurrency": 20}),
    "poll": ("bench.poll_bench", {}, {}),
    "idempotency_race": ("bench.idempotency_race", {"rounds": 5}, {"rounds": 2}),
    "metrics": ("bench.metrics_bench", {"steps": 100_000, "runs": 3}, {"steps": 20_000, "runs": 1}),
    "evaluation": (
        "bench.evaluation_bench",
        {"steps": 96_200, "runs": 3},
        {"steps": 20_000, "runs": 1},
    ),
    "deploy_race": ("bench.deploy_race", {"rounds": 5}, {"rounds": 2}),
    "poll_history": ("bench.poll_history", {}, {"sizes": (0, 10_000), "polls": 3}),
    "chat_proxy": ("bench.chat_proxy", {"rounds": 30}, {"rounds": 8}),
    "openai_list": ("bench.openai_list", {}, {"sizes": (20, 200), "filtered_history": 1000}),
    # BENCH_FILE_BYTES (env) makes the 1 GiB file smaller for a quick look.
    "file_check": ("bench.file_check", {"runs": 3}, {"size": 64 << 20, "runs": 1}),
    "token_count": ("bench.token_count", {}, {"examples": 5000, "runs": 1}),
    "upload_compose": ("bench.upload_compose", {}, {"parts": (512,)}),
    "dpo_memory": ("bench.dpo_memory", {"runs": 2}, {"runs": 1}),
    "labels": ("bench.labels", {}, {"examples_count": 400, "runs": 3}),
    "eval_memory": ("bench.eval_memory", {"runs": 2}, {"runs": 1, "hidden": 256, "layers": 4}),
    "teams": ("bench.teams_bench", {}, {"requests_per_variant": 6, "runs": 5}),
}
# openai_list's baseline (the old scan of 5,000 records) alone takes minutes on a busy machine.
CHILD_TIMEOUT_S = 1800


# -- child side ----------------------------------------------------------------------


def _child(name: str, out: Path, quick: bool) -> int:
    import importlib

    module_name, kwargs, quick_kwargs = BENCHMARKS[name]
    module = importlib.import_module(module_name)
    result = module.run(**(quick_kwargs if quick else kwargs))
    out.write_text(json.dumps(result), encoding="utf-8")
    return 0


# -- parent side ---------------------------------------------------------------------


def _run_child(name: str, quick: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-result-") as tmp:
        out = Path(tmp) / "result.json"
        args = [sys.executable, "-m", "bench", "--child", name, "--out", str(out)]
        if quick:
            args.append("--quick")
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path}
        try:
            done = subprocess.run(
                args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {CHILD_TIMEOUT_S} s"}
        if done.returncode != 0 or not out.exists():
            tail = (done.stderr or done.stdout)[-3000:]
            return {"error": f"exit {done.returncode}", "output": tail}
        result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
        return result


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "MISS")


Row = dict[str, Any]


def _row(
    name: str,
    ours: str,
    baseline: str,
    ratio: float | None,
    goal: str = "-",
    ok: bool | None = None,
) -> Row:
    return {
        "benchmark": name,
        "ours": ours,
        "baseline": baseline,
        "ratio": ratio,
        "goal": goal,
        "result": _verdict(ok),
    }


def _cold_rows(r: dict[str, Any]) -> list[Row]:
    base = f"{r['hello_ms']:.0f} ms hello"
    return [
        _row(
            "cold start train_http -> /healthz 200",
            f"{r['train_http_ms']:.0f} ms",
            base,
            r["train_http_ratio"],
            "<= 1.30x",
            r["train_http_ratio"] <= 1.3,
        ),
        _row(
            "cold start poll_jobs -> no-op poll 200",
            f"{r['poll_jobs_ms']:.0f} ms",
            base,
            r["poll_jobs_ratio"],
            "<= 1.30x",
            r["poll_jobs_ratio"] <= 1.3,
        ),
        _row(
            "  the same, poll state in Cloud Storage (emulator)",
            f"{r['poll_jobs_gcs_ms']:.0f} ms",
            f"{r['poll_jobs_ms']:.0f} ms local state",
            round(r["poll_jobs_gcs_ms"] / r["poll_jobs_ms"], 2),
        ),
    ]


def _first_rows(r: dict[str, Any]) -> list[Row]:
    return [
        _row(
            "first submit, cold instance -> 201 (CLI: exit)",
            f"{r['ours_ms']:.0f} ms",
            f"{r['cli_ms']:.0f} ms truss CLI",
            r["ratio"],
            "<= 1.00x",
            r["ratio"] <= 1.0,
        ),
        _row(
            "first submit, start -> job created in Baseten",
            f"{r['ours_to_job_created_ms']:.0f} ms",
            f"{r['cli_to_job_created_ms']:.0f} ms truss CLI",
            r["ratio_to_job_created"],
        ),
    ]


def _warm_rows(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for latency, f in r["latencies"].items():
        base = f"{f['baseline_p50_ms']:.1f} ms push()"
        rows.append(
            _row(
                f"warm submit p50, {latency} ms latency",
                f"{f['ours_p50_ms']:.1f} ms",
                base,
                f["ratio_p50"],
                "<= 1.15x",
                f["ratio_p50"] <= 1.15,
            )
        )
        p95_ratio = round(f["ours_p95_ms"] / f["baseline_p95_ms"], 2)
        rows.append(
            _row(
                f"warm submit p95, {latency} ms latency",
                f"{f['ours_p95_ms']:.1f} ms",
                f"{f['baseline_p95_ms']:.1f} ms push()",
                p95_ratio,
            )
        )
        rows.append(
            _row(
                f"warm submit + Idempotency-Key p50, {latency} ms",
                f"{f['ours_key_p50_ms']:.1f} ms (+{f['key_cost_p50_ms']:.1f})",
                base,
                f["ratio_p50_key"],
            )
        )
    return rows


def _memory_rows(r: dict[str, Any]) -> list[Row]:
    return [
        _row(
            f"memory: worker peak RSS, {r['concurrency']} concurrent submits",
            f"{r['worker_peak_mb']:.0f} MB",
            f"instance ~ {r['instance_peak_estimate_mb']:.0f} MB",
            None,
            f"<= {r['goal_mb']} MB",
            r["worker_peak_mb"] <= r["goal_mb"],
        )
    ]


def _poll_rows(r: dict[str, Any]) -> list[Row]:
    p = r["poll"]
    unlimited = r["concurrency_only"]
    rate = r["configured_rate_per_s"]
    return [
        _row(
            f"poll {r['jobs']} jobs, {r['latency_ms']:.0f} ms latency, limit {rate:.0f}/s",
            f"{p['seconds']:.2f} s",
            f"{r['sequential_seconds']:.2f} s sequential",
            round(p["seconds"] / r["sequential_seconds"], 2),
            "<= 0.10x",
            p["seconds"] / r["sequential_seconds"] <= 0.10,
        ),
        _row(
            "  same poll without the rate limit (concurrency alone)",
            f"{unlimited['seconds']:.2f} s",
            f"{r['sequential_seconds']:.2f} s sequential",
            round(unlimited["seconds"] / r["sequential_seconds"], 2),
        ),
        _row(
            "  request rate reached (busiest 1 s), 429s",
            f"{p['request_rate_per_s']:.1f}/s ({p['max_requests_in_any_1s_window']}), "
            f"{p['responses_429']} x 429",
            f"limit {rate:.0f}/s",
            None,
            "<= limit, 0 x 429",
            p["request_rate_per_s"] <= rate and p["responses_429"] == 0,
        ),
        _row(
            "  poll peak RSS",
            f"{r['peak_rss_mb']:.0f} MB",
            f"{r['rss_before_poll_mb']:.0f} MB before",
            None,
        ),
    ]


def _race_rows(r: dict[str, Any]) -> list[Row]:
    burst = r["burst"]
    return [
        _row(
            f"same key x{burst} on 2 instances at once: live jobs per key",
            f"{r['max_live_jobs_per_key']} (of {burst} requests)",
            f"{r['baseline_jobs_per_burst']} without a key",
            round(r["max_live_jobs_per_key"] / r["baseline_jobs_per_burst"], 2),
            "1 job",
            r["max_live_jobs_per_key"] == 1 and r["every_answer_names_the_kept_job"],
        ),
        _row(
            f"  duplicates stopped over {r['rounds']} keys, longest lifetime",
            f"{r['duplicates_created']}, {r['max_duplicate_lifetime_ms']:.0f} ms",
            f"create delay {r['create_delay_ms']} ms",
            None,
        ),
    ]


def _metrics_rows(r: dict[str, Any]) -> list[Row]:
    return [
        _row(
            f"GET metrics, {r['log_lines']:,} log lines ({r['steps']:,} steps), "
            f"{r['latency_ms']:.0f} ms latency, limit {r['configured_rate_per_s']:.0f}/s",
            f"{r['ours_ms'] / 1000:.2f} s ({r['baseten_requests_per_answer']} requests)",
            f"{r['baseline_ms'] / 1000:.2f} s ({r['baseline_pages']} pages in sequence)",
            r["ratio"],
            "<= 0.50x",
            r["ratio"] <= 0.5,
        ),
        _row(
            "  429s, busiest 1 s; peak RSS growth of the worker",
            f"{r['responses_429']} x 429 ({r['max_requests_in_any_1s_window']}/s); "
            f"+{r['peak_rss_growth_mb']:.0f} MB",
            f"{r['rss_before_mb']:.0f} MB before",
            None,
            "0 x 429, <= 64 MB",
            r["responses_429"] == 0 and r["peak_rss_growth_mb"] <= 64,
        ),
        _row(
            "  the same as SVG: first chart (imports matplotlib), then cached answer",
            f"{r['svg_first_ms']:.0f} ms, {r['svg_cached_answer_ms']:.0f} ms",
            "-",
            None,
        ),
    ]


def _deploy_race_rows(r: dict[str, Any]) -> list[Row]:
    burst = r["burst"]
    return [
        _row(
            f"same deploy x{burst} on 2 instances at once: deployments per checkpoint",
            f"{r['max_live_deployments_per_checkpoint']} (of {burst} requests)",
            f"{r['baseline_deployments_per_burst']} as truss's CLI sends it",
            round(
                r["max_live_deployments_per_checkpoint"] / r["baseline_deployments_per_burst"], 2
            ),
            "1 deployment",
            r["max_live_deployments_per_checkpoint"] == 1
            and r["every_answer_names_the_kept_deployment"],
        ),
        _row(
            f"  duplicates created and deleted over {r['rounds']} checkpoints, slowest answer",
            f"{r['duplicates_deleted']} of {r['deployments_created']}, "
            f"{r['slowest_answer_ms']:.0f} ms",
            f"latency {r['latency_ms']} ms per Baseten request",
            None,
        ),
    ]


def _history_rows(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    base = r["runs"][0]

    def figures(f: dict[str, Any]) -> str:
        return f"{f['ms']:.0f} ms, {f['bytes'] / 1000:.0f} kB, {f['peak_rss_mb']:.0f} MB"

    for item in r["runs"]:
        steady, largest = item["steady"], item is r["runs"][-1]
        ok = (
            steady["peak_rss_mb"] <= 80
            and steady["bytes"] <= 1_000_000
            and steady["time_ratio"] <= 1.2
        )
        rows.append(
            _row(
                f"poll, {item['finished_jobs']:,} finished + 20 running: time, bytes, peak RSS",
                figures(steady),
                figures(base["steady"]) + " (no history)",
                steady["time_ratio"],
                "<= 1.2x, 1 MB, 80 MB" if largest else "-",
                ok if largest else None,
            )
        )
    for item in r["runs"]:
        first = item["first"]
        wait = first.get("baseten_answer_wait_ms", 0) / 1000
        rows.append(
            _row(
                f"  full sweep (no state), {item['finished_jobs']:,} finished"
                f" (sandbox answer wait {wait:.1f} s)",
                figures(first),
                figures(base["first"]) + " (no history)",
                first["time_ratio"],
            )
        )
    rows.append(
        _row(
            "  google.cloud.storage import (first poll, with a bucket)",
            f"{r['storage_import_ms']:.0f} ms",
            "-",
            None,
        )
    )
    return rows


def _chat_rows(r: dict[str, Any]) -> list[Row]:
    paced, bare = r["paced"], r["bare"]
    return [
        _row(
            f"streamed chat, time to first byte (model's first token {paced['first_token_ms']:.0f}"
            " ms): /v1/chat/completions vs the deployment",
            f"{paced['proxy_median_ms']:.1f} ms",
            f"{paced['direct_median_ms']:.1f} ms",
            paced["ratio"],
            "<= 1.20x",
            paced["ratio"] <= 1.2,
        ),
        _row(
            "  the same with an instant model: the proxy's own overhead",
            f"{bare['proxy_median_ms']:.1f} ms (+{bare['overhead_ms']:.1f} ms)",
            f"{bare['direct_median_ms']:.1f} ms",
            bare["ratio"],
        ),
    ]


def _openai_list_rows(r: dict[str, Any]) -> list[Row]:
    rows = []
    for item in r["pages"]:
        rows.append(
            _row(
                f"/v1/fine_tuning/jobs?limit={r['limit']}, {item['page']} page, "
                f"{item['history']} jobs indexed (index part)",
                f"{item['median_ms']:.1f} ms; {item['listings']} listing, {item['reads']} reads",
                "-",
                None,
                "1 listing, reads = items <= limit",
                item["reads"] == item["items"] <= r["limit"] and item["listings"] == 1,
            )
        )
    filtered = r.get("filtered")
    if filtered:
        ours, base = filtered["joined"], filtered["baseline"]
        rows.append(
            _row(
                f"/v1/fine_tuning/jobs?limit=1 with two metadata filters, "
                f"{filtered['history']} jobs indexed (the second pair marks one old job)",
                f"{ours['median_ms']:.1f} ms; {ours['listings']} listings, {ours['reads']} reads",
                f"{base['median_ms']:.1f} ms; {base['listings']} listings, {base['reads']} reads"
                " (the first pair's records scanned)",
                ours["median_ms"] / base["median_ms"] if base["median_ms"] else None,
                "<= 200 storage requests",
                ours["listings"] + ours["reads"] <= 200,
            )
        )
    return rows


def _file_check_rows(r: dict[str, Any]) -> list[Row]:
    size = f"{r['bytes'] / (1 << 30):.2f} GiB"
    return [
        _row(
            f"check a {size} chat JSONL in Cloud Storage (emulator), MB/s",
            f"{r['ours_mb_per_s']:.0f} MB/s ({r['ours_seconds']:.1f} s)",
            f"{r['baseline_mb_per_s']:.0f} MB/s download only",
            r["ratio"],
            ">= 0.50x",
            r["ratio"] >= 0.5,
        ),
        _row(
            "  peak RSS growth of the checking process",
            f"+{r['peak_rss_growth_mb']:.0f} MB",
            f"{r['rss_before_mb']:.0f} MB before",
            None,
            "<= 64 MB",
            r["peak_rss_growth_mb"] <= 64,
        ),
        *_shape_rows(r["shapes"]),
    ]


SHAPES: dict[str, tuple[str, str | None, float | None]] = {
    "tool_chat": ("chat with tool calls (line by line)", None, None),
    "preference": ("preference pairs (line by line)", None, None),
    "ones": ("hostile: nothing but '1' lines", ">= 20 MB/s", 20.0),
    "braces": ("hostile: nothing but '{}' lines", ">= 20 MB/s", 20.0),
}


def _shape_rows(shapes: dict[str, Any]) -> list[Row]:
    base = shapes["plain_chat"]
    rows = []
    for name, (label, goal, floor) in SHAPES.items():
        item = shapes[name]
        rows.append(
            _row(
                f"  check alone, {item['bytes'] >> 20} MiB in memory: {label}",
                f"{item['mb_per_s']:.0f} MB/s ({item['seconds']:.2f} s)",
                f"{base['mb_per_s']:.0f} MB/s plain chat",
                item["ratio"],
                goal or "-",
                None if floor is None else item["mb_per_s"] >= floor,
            )
        )
    return rows


def _token_rows(r: dict[str, Any]) -> list[Row]:
    return [
        _row(
            f"dry-run token count, {r['examples']:,} chats (BPE, tokenizer in its own process, "
            f"started once in {r['worker_start_ms']:.0f} ms), examples/s",
            f"{r['ours_examples_per_s']:,}/s",
            f"{r['baseline_examples_per_s']:,}/s tokenizer alone",
            r["ratio"],
            ">= 0.50x",
            r["ratio"] >= 0.5,
        )
    ]


def _upload_compose_rows(r: dict[str, Any]) -> list[Row]:
    rows = []
    for item in r["rows"]:
        base = item.get("baseline_s")
        rows.append(
            _row(
                f"/v1/uploads complete storage, {item['parts']} parts, {item['route']}",
                f"{item['ours_s']:.2f} s",
                "-" if base is None else f"{base:.2f} s one call at a time",
                item.get("ratio"),
                "< 60 s",
                item["ours_s"] < 60,
            )
        )
    return rows


def _dpo_memory_rows(r: dict[str, Any]) -> list[Row]:
    return [
        _row(
            f"DPO run's peak RSS, {r['weights_mb']:.0f} MB model, vs a supervised run",
            f"{r['dpo_peak_mb']:.0f} MB",
            f"{r['supervised_peak_mb']:.0f} MB supervised",
            r["ratio"],
            f"<= {r['goal_ratio']:.2f}x",
            r["ratio"] <= r["goal_ratio"],
        ),
        _row(
            "  the same with a second copy of the model (what it avoids)",
            f"{r['supervised_peak_mb'] + r['weights_mb']:.0f} MB",
            f"{r['supervised_peak_mb']:.0f} MB supervised",
            r["copy_ratio"],
        ),
    ]


def _labels_rows(r: dict[str, Any]) -> list[Row]:
    what = f"{r['examples']:,} chats, {r['tool_examples']:,} with tool calls"
    return [
        _row(
            f"build labels (what carries loss), {what}, µs/example",
            f"{r['ours_us_per_example']:,} µs",
            f"{r['baseline_us_per_example']:,} µs apply_chat_template(tokenize=True)",
            r["ratio"],
            "<= 1.30x",
            r["ratio"] <= 1.3,
        ),
        _row(
            "... the same against one direct render + the Rust tokenizer's encode",
            f"{r['ours_us_per_example']:,} µs",
            f"{r['floor_us_per_example']:,} µs",
            r["ratio_to_floor"],
        ),
    ]


def _evaluation_rows(r: dict[str, Any]) -> list[Row]:
    return [
        _row(
            f"GET evaluation vs GET metrics, same job of {r['log_lines']:,} log lines "
            f"({r['steps']:,} steps, validation set), {r['latency_ms']:.0f} ms latency",
            f"{r['evaluation_ms'] / 1000:.2f} s",
            f"{r['metrics_ms'] / 1000:.2f} s (metrics route)",
            r["ratio"],
            "<= 1.20x",
            r["ratio"] <= 1.2,
        ),
        _row(
            "  finished job: first evaluation (kept), then again (Baseten requests)",
            f"{r['finished_first_ms'] / 1000:.2f} s, {r['finished_kept_ms']:.0f} ms "
            f"({r['finished_kept_baseten_requests']} request)",
            "-",
            None,
            "1 request (the job)",
            r["finished_kept_baseten_requests"] == 1,
        ),
    ]


def _eval_memory_rows(r: dict[str, Any]) -> list[Row]:
    return [
        _row(
            f"template: peak RSS with eval_samples {r['eval_samples']} "
            f"({r['weights_mb']:.0f} MB model)",
            f"{r['with_samples_peak_mb']:.0f} MB",
            f"{r['without_samples_peak_mb']:.0f} MB without samples "
            f"(a second copy: {r['copy_ratio']:.2f}x)",
            r["ratio"],
            f"<= {r['goal_ratio']}x",
            r["ratio"] <= r["goal_ratio"],
        )
    ]


def _teams_rows(r: dict[str, Any]) -> list[Row]:
    check, limit = r["check"], r["limit"]
    rows = [
        _row(
            f"teams: warm {what} with team:key entries vs without teams (p50)",
            f"{check[f'{key}_teams_p50_ms']:.1f} ms",
            f"{check[f'{key}_plain_p50_ms']:.1f} ms",
            check[f"ratio_{key}_p50"],
            "<= 1.05x",
            check[f"ratio_{key}_p50"] <= 1.05,
        )
        for key, what in (("submit", "POST /jobs"), ("get", "GET /jobs/{p}/{j}"))
    ]
    rows.append(
        _row(
            f"teams: TEAM_LIMITS check, {limit['active_jobs']} active jobs in 10 teams "
            f"(+{limit['finished_jobs']} finished)",
            f"{limit['baseten_requests_per_check']:.0f} search; {limit['own_p50_ms']:.1f} ms ours "
            f"({limit['check_p50_ms']:.1f} ms in all)",
            f"{limit['raw_search_p50_ms']:.1f} ms (the search alone)",
            None,
            "1 search, <= 50 ms ours",
            limit["baseten_requests_per_check"] == 1 and limit["own_p50_ms"] <= 50,
        )
    )
    return rows


ROWS: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "cold_start": _cold_rows,
    "first_submit": _first_rows,
    "warm_submit": _warm_rows,
    "memory": _memory_rows,
    "poll": _poll_rows,
    "idempotency_race": _race_rows,
    "metrics": _metrics_rows,
    "evaluation": _evaluation_rows,
    "deploy_race": _deploy_race_rows,
    "poll_history": _history_rows,
    "chat_proxy": _chat_rows,
    "openai_list": _openai_list_rows,
    "file_check": _file_check_rows,
    "token_count": _token_rows,
    "upload_compose": _upload_compose_rows,
    "dpo_memory": _dpo_memory_rows,
    "labels": _labels_rows,
    "eval_memory": _eval_memory_rows,
    "teams": _teams_rows,
}


def _table(rows: list[Row]) -> str:
    headers = ["benchmark", "ours", "baseline", "ratio", "goal", "result"]
    cells = [[str(row[h]) if h != "ratio" else _ratio(row[h]) for h in headers] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)) for cell in cells]
    return "\n".join(lines)


def _meta() -> dict[str, Any]:
    try:
        from importlib.metadata import version

        truss_version = version("truss")
        ff_version = version("functions-framework")
    except Exception:  # noqa: BLE001 - informational only
        truss_version = ff_version = "unknown"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "truss": truss_version,
        "functions_framework": ff_version,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", help="comma list of: " + ", ".join(BENCHMARKS))
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args.child, args.out, args.quick)

    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error("unknown benchmark(s): " + ", ".join(unknown))

    import importlib.util

    missing = [n for n in names if importlib.util.find_spec(BENCHMARKS[n][0]) is None]
    for name in missing:
        print(f"[bench] {name}: {BENCHMARKS[name][0]} does not exist; skipped", file=sys.stderr)
    names = [n for n in names if n not in missing]

    meta = _meta()
    results: dict[str, Any] = {}
    rows: list[Row] = []
    failed: list[str] = []
    started = time.monotonic()
    for name in names:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        began = time.monotonic()
        result = _run_child(name, args.quick)
        result["elapsed_seconds"] = round(time.monotonic() - began, 1)
        results[name] = result
        if "error" in result:
            failed.append(name)
            print(f"[bench] {name} FAILED: {result['error']}", file=sys.stderr)
            print(result.get("output", ""), file=sys.stderr)
            rows.append(_row(name, "error", "-", None, "-", False))
            continue
        print(f"[bench] {name} done in {result['elapsed_seconds']} s", file=sys.stderr, flush=True)
        rows.extend(ROWS[name](result))

    meta["elapsed_seconds"] = round(time.monotonic() - started, 1)
    meta["quick"] = args.quick
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps({"meta": meta, "results": results, "rows": rows}, indent=2) + "\n",
        encoding="utf-8",
    )

    print()
    print(
        f"Benchmarks on {meta['cpus']} CPUs, Python {meta['python']}, truss {meta['truss']}, "
        f"commit {meta['commit'] or '?'}{' (--quick)' if args.quick else ''}; "
        "ratio = ours / baseline (lower is better)"
    )
    print(_table(rows))
    memory = results.get("memory", {})
    if "recommended_memory_mib" in memory:
        print(
            f"\nmemory: worker peak {memory['worker_peak_mb']:.0f} MB, instance ~ "
            f"{memory['instance_peak_estimate_mb']:.0f} MB (worker + arbiter's private pages) "
            f"-> recommended instance size: {memory['recommended_memory_mib']} MiB"
        )
    print(f"\n{len(rows)} rows in {meta['elapsed_seconds']} s; JSON: {RESULTS.relative_to(ROOT)}")
    missed = [row["benchmark"] for row in rows if row["result"] == "MISS"]
    if failed:
        return 1
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
