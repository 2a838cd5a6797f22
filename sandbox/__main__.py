"""``python -m sandbox``: serve the Baseten sandbox until SIGTERM or SIGINT.

Prints exactly one line, ``sandbox listening on http://127.0.0.1:PORT``, once the
socket is bound (flushed, so a parent process can wait for it), then serves.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from sandbox.server import DEFAULT_BUCKET, Sandbox

API_KEY_ENV = "SANDBOX_API_KEY"


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox", description="Local Baseten training API sandbox."
    )
    parser.add_argument("--port", type=int, default=8123, help="0 picks a free port")
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"the one accepted API key (default: ${API_KEY_ENV})",
    )
    parser.add_argument(
        "--s3-endpoint",
        default=None,
        help="S3 server handed to clients for uploads, e.g. a moto server",
    )
    parser.add_argument(
        "--embedded-s3",
        action="store_true",
        help="start an in-process moto S3 server (needs moto[server]) instead of --s3-endpoint",
    )
    parser.add_argument("--s3-bucket", default=DEFAULT_BUCKET)
    parser.add_argument(
        "--step-seconds",
        type=float,
        default=2.0,
        help="seconds per status step; 0 = jobs move only through the control API",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    if not args.api_key:
        parser.error(f"--api-key (or ${API_KEY_ENV}) is required")
    if args.embedded_s3 and args.s3_endpoint:
        parser.error("--embedded-s3 and --s3-endpoint are exclusive")
    return args


def _start_embedded_s3() -> tuple[str, Callable[[], None]]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return f"http://{host}:{port}", server.stop


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    stop_s3: Callable[[], None] | None = None
    s3_endpoint = args.s3_endpoint
    if args.embedded_s3:
        s3_endpoint, stop_s3 = _start_embedded_s3()

    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> Any:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    sandbox = Sandbox(
        api_key=args.api_key,
        s3_endpoint=s3_endpoint,
        port=args.port,
        step_seconds=args.step_seconds or None,
        s3_bucket=args.s3_bucket,
        verbose=args.verbose,
    )
    try:
        sandbox.start()
    except OSError as exc:
        print(f"sandbox: cannot listen on port {args.port}: {exc}", file=sys.stderr)
        if stop_s3 is not None:
            stop_s3()
        return 1
    print(f"sandbox listening on {sandbox.url}", flush=True)
    if args.embedded_s3:
        print(f"sandbox S3 endpoint {s3_endpoint}", file=sys.stderr, flush=True)
    try:
        done.wait()
    finally:
        sandbox.stop()
        if stop_s3 is not None:
            stop_s3()
    return 0


if __name__ == "__main__":
    sys.exit(main())
