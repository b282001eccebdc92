"""The baseline of the ``steps`` scenario: a bare aiohttp client making the daemon's HTTP calls.

For every site URL in the JSON file given, one backup the way the daemon's first run on a site
goes (``akeeba/detect.py``, ``run.py``): getVersion, getProfiles, startBackup, stepBackup until
``HasRun`` is false (honouring ``sleepTime``), getBackupInfo. Same endpoint, verb (GET), headers
(``X-Akeeba-Auth``, ``Accept``, ``User-Agent``) and one shared session with an unlimited
connector; all backups at once, as the daemon runs them with a high ``max_concurrent``.

Protocol with the harness (so that it reads this process's CPU time around the work only):
prints ``ready``, waits for a line on stdin, runs, prints ``done <json>``, waits for another
line, exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

import aiohttp

from akeeba_backupd.akeeba.transport import USER_AGENT

ENDPOINT = "index.php?option=com_akeebabackup&view=Api&format=raw"


class Failed(Exception):
    """A call answered something other than API status 200."""


async def call(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], params: dict[str, str]
) -> Any:
    async with session.get(url, params=params, headers=headers) as response:
        body = await response.read()
    envelope = json.loads(body.decode("utf-8"))
    if envelope.get("status") != 200:
        raise Failed(f"{params['method']}: {envelope}")
    return envelope["data"]


async def backup(
    session: aiohttp.ClientSession, base: str, secret: str, number: int, *, version: bool
) -> int:
    url = base + ENDPOINT.split("?", 1)[0]
    fixed = dict(part.split("=", 1) for part in ENDPOINT.split("?", 1)[1].split("&"))
    headers = {"Accept": "application/json", "User-Agent": USER_AGENT, "X-Akeeba-Auth": secret}

    async def api(method: str, **params: str) -> Any:
        return await call(session, url, headers, {**fixed, "method": method, **params})

    if version:  # the daemon detects the endpoint once, on its first run on the site
        await api("getVersion")
    await api("getProfiles")
    status = await api(
        "startBackup",
        profile="1",
        description=f"Bench backup {number}",
        comment=f"akeeba-backupd:bench-{number:06d}",
    )
    backupid = status["backupid"]
    record_id = status["BackupID"]
    steps = 0
    while status["HasRun"]:
        if status.get("sleepTime"):
            await asyncio.sleep(status["sleepTime"] / 1000)
        status = await api("stepBackup", backupid=backupid)
        steps += 1
    await api("getBackupInfo", backup_id=str(record_id))
    return steps


async def run_all(bases: list[str], secret: str, *, version: bool) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
    async with aiohttp.ClientSession(connector=connector) as session:
        results = await asyncio.gather(
            *(
                backup(session, base, secret, number, version=version)
                for number, base in enumerate(bases)
            ),
            return_exceptions=True,
        )
    failures = [repr(result) for result in results if isinstance(result, BaseException)]
    steps = sum(result for result in results if isinstance(result, int))
    return {"backups": len(bases) - len(failures), "steps": steps, "failures": failures[:5]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="bare aiohttp baseline client")
    parser.add_argument("sites", help="a JSON file: list of site base URLs")
    parser.add_argument("--secret", required=True)
    parser.add_argument("--skip-version", action="store_true", help="no getVersion call")
    args = parser.parse_args(argv)
    with open(args.sites, encoding="utf-8") as file:
        bases: list[str] = json.load(file)
    print("ready", flush=True)
    sys.stdin.readline()
    summary = asyncio.run(run_all(bases, args.secret, version=not args.skip_version))
    print("done " + json.dumps(summary), flush=True)
    sys.stdin.readline()
    return 0


if __name__ == "__main__":
    sys.exit(main())
