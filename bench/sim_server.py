"""A bench-only launcher of the simulator: one shard of a fleet, plus a tiny control server.

``python -m bench.sim_server --first 1 --count 500 --steps 50`` serves sites ``site-00001`` to
``site-00500`` (the names do not depend on the sharding) and prints one JSON line on stdout:
``{"port": P, "control_port": C, "pid": ...}``. The control server answers

- ``GET /stats``: calls by method over the whole shard and completed backups;
- ``GET /trace``: with ``--trace``, every request seen so far as ``[site, method, backupid,
  arrival, replied]`` (wall-clock seconds), then forgets them.

It stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Mapping

from aiohttp import web

from akeeba_backupd.simulator import Simulator, SiteSpec

SECRET = "bench-secret-0123456789"  # a throwaway secret for a loopback benchmark


def site_name(number: int) -> str:
    """Return the name of site ``number`` (from 1)."""
    return f"site-{number:05d}"


class Tracer:
    """Collects one record per request: site, method, backupid, arrival and reply times."""

    def __init__(self) -> None:
        self.records: list[list[object]] = []

    def __call__(self, site: str, query: Mapping[str, str]) -> Callable[[], None]:
        record: list[object] = [
            site,
            query.get("method", ""),
            query.get("backupid", ""),
            time.time(),
            0.0,
        ]
        self.records.append(record)

        def replied() -> None:
            record[4] = time.time()

        return replied


async def serve(args: argparse.Namespace) -> None:
    tracer = Tracer() if args.trace else None
    rng = random.Random(args.first)
    specs = [
        SiteSpec(
            name=site_name(number),
            secret=SECRET,
            steps=args.steps,
            step_seconds=args.step_seconds * rng.uniform(1 - args.jitter, 1 + args.jitter),
            sleep_time_ms=args.sleep_time_ms,
        )
        for number in range(args.first, args.first + args.count)
    ]
    simulator = Simulator(specs, seed=1, trace=tracer)
    port = await simulator.start("127.0.0.1", args.port)

    async def stats(request: web.Request) -> web.Response:
        calls: dict[str, int] = {}
        completed = 0
        for site in simulator.sites.values():
            completed += site.completed_backups
            for method, count in site.calls_by_method.items():
                calls[method] = calls.get(method, 0) + count
        return web.json_response({"calls": calls, "completed": completed})

    async def trace(request: web.Request) -> web.Response:
        records: list[list[object]] = []
        if tracer is not None:
            records, tracer.records = tracer.records, []
        return web.json_response(records)

    control = web.Application()
    control.router.add_get("/stats", stats)
    control.router.add_get("/trace", trace)
    runner = web.AppRunner(control, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    control_port = int(runner.addresses[0][1])
    print(json.dumps({"port": port, "control_port": control_port, "pid": os.getpid()}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()
    await simulator.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--first", type=int, default=1, help="number of the first site")
    parser.add_argument("--count", type=int, required=True, help="how many sites")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--step-seconds", type=float, default=0.0)
    parser.add_argument(
        "--jitter", type=float, default=0.0, help="each site's step time × U(1-j, 1+j)"
    )
    parser.add_argument("--sleep-time-ms", type=int, default=0)
    parser.add_argument("--trace", action="store_true", help="record every request's times")
    args = parser.parse_args(argv)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
