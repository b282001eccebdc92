"""Several daemons sharing one PostgreSQL database: claims, leases, takeovers, the fleet view.

Every instance runs the same schedules. At a fire time each of them asks the database to
*claim* the fire; one wins (the fire time only moves forward, in one statement), the others
let it pass. The winner holds a *lease* on the schedule: ``queued`` until the fleet-wide limits
give it a slot, then ``running``. At most one running lease per site (a unique index), and the
global and group caps are counted over every instance's leases under one advisory lock.

The holder renews its leases every third of the lease duration. An instance that stops renewing
(crashed, frozen, cut off) loses them when they expire, by the database's clock; another
instance then takes each one over: a queued fire is queued there, a running backup is resumed
with ``stepBackup`` from its saved checkpoint exactly as after a restart. An instance that has
not renewed within the lease duration (measured from before its last successful renewal went
out, so always before the database lets another take over) must not call the site again:
:meth:`PostgresCoordinator.lease_valid` turns false and its runs stop before their next call.

All statements run in a worker thread on this module's own connection; a failure is logged,
the connection dropped and opened again at the next use. Nothing here decides *when* schedules
fire: that stays the scheduler's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final, TypeVar

from akeeba_backupd.clock import Clock
from akeeba_backupd.database import Connection, Database, StateError
from akeeba_backupd.state import SavedCheckpoint, checkpoint_from_json, stats_from_json
from akeeba_backupd.status import FinishedRun, ScheduleStats

log = logging.getLogger(__name__)

ScheduleKey = tuple[str, str]
T = TypeVar("T")

_DISPATCH_LOCK_KEY: Final = 0x616B6566  # one instance at a time hands out run slots
CONFIG_FLEET_NAME: Final = "config"
RUN_ID_OVERLAP: Final = 500
"""History rows read again at each refresh, for ids committed out of order."""
REFRESH_INTERVAL_SECONDS: Final = 5.0
"""How often an instance reads what the others changed (tallies, history, pauses, runs)."""
REFRESH_OVERLAP_SECONDS: Final = 30.0
"""Rows changed this long before the last refresh are read again (commits land late)."""


class Claim(StrEnum):
    """What the database said to a claim on a fire."""

    WON = "won"
    """This instance took the fire (and, when it asked to run it, holds a queued lease)."""
    LOST = "lost"
    """Another instance took it first."""
    BUSY = "busy"
    """Taken, but the schedule already has a queued or running lease: skip it (overlap)."""


@dataclass(frozen=True, slots=True)
class FireClaim:
    """One fire an instance wants to take."""

    key: ScheduleKey
    fire_at: datetime
    fire_timing: str
    group: str | None
    run: bool
    """True when the fire would start a run (not paused, not skipped as missed)."""


@dataclass(frozen=True, slots=True)
class RunSlotRequest:
    """A queued schedule asking for a slot under the fleet-wide limits."""

    key: ScheduleKey
    group: str | None
    fire_at: datetime
    run_id: str
    """The run this slot is for (a lease ends with the run that holds it)."""
    create: bool = False
    """True for a run-now request, which has no lease yet; a claimed fire has one."""


@dataclass(slots=True)
class SlotGrant:
    """The answer to :meth:`PostgresCoordinator.acquire`."""

    granted: set[ScheduleKey] = field(default_factory=set)
    """May start now (the lease is running and ours)."""
    gone: set[ScheduleKey] = field(default_factory=set)
    """Another instance holds this schedule's lease: drop the local queue entry."""


@dataclass(frozen=True, slots=True)
class Takeover:
    """A lease taken over from an instance that stopped renewing it."""

    key: ScheduleKey
    fire_at: datetime
    previous_owner: str
    """The instance that held it."""
    resume: SavedCheckpoint | None
    """The run to continue; None for a fire that never started (queue it)."""


@dataclass(frozen=True, slots=True)
class RemoteRun:
    """A run another instance is executing, as its last checkpoint shows it."""

    owner: str
    resume: SavedCheckpoint | None


@dataclass(slots=True)
class FleetChanges:
    """What the other instances changed since the last refresh."""

    stats: dict[ScheduleKey, ScheduleStats] = field(default_factory=dict)
    last_fire_at: dict[ScheduleKey, datetime] = field(default_factory=dict)
    runs: list[FinishedRun] = field(default_factory=list)
    pauses: set[ScheduleKey] = field(default_factory=set)
    remote_runs: dict[ScheduleKey, RemoteRun] = field(default_factory=dict)
    config_generation: int = 0
    config_fingerprint: str | None = None


def _ts(moment: datetime) -> float:
    return moment.timestamp()


def _dt(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def _boot_time() -> float:
    """Return seconds on a clock that keeps running while the machine is suspended."""
    return time.clock_gettime(getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC))


def owner_token(instance: str) -> str:
    """Return this process's lease owner: the instance name and a per-start nonce, so that a
    restarted instance never mistakes the leases of its previous life for live ones."""
    return f"{instance}/{secrets.token_hex(4)}"


class PostgresCoordinator:
    """The claims and leases of one instance in the shared database."""

    def __init__(
        self,
        database: Database,
        *,
        instance: str,
        lease_seconds: float,
        clock: Clock,
        owner: str | None = None,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        """Coordinate through ``database`` as ``instance``; nothing is sent before use.

        ``monotonic`` measures lease validity; the default counts time the machine spent
        suspended too (CLOCK_BOOTTIME), so a host waking from sleep knows its leases lapsed.
        """
        self.instance = instance
        self.owner = owner or owner_token(instance)
        self.lease_seconds = lease_seconds
        self.renew_interval_seconds = lease_seconds / 3.0
        self.poll_interval_seconds = min(1.0, self.renew_interval_seconds)
        """How often queued fires ask again for a slot (other instances free them)."""
        self._db = database
        self._clock = clock
        self._connection: Connection | None = None
        self._lock = asyncio.Lock()
        self._monotonic = monotonic or _boot_time
        self._valid_until = self._monotonic() + lease_seconds
        self._held: set[ScheduleKey] = set()
        self._to_release: dict[ScheduleKey, bool] = {}
        self._refreshed_to = 0.0
        self._last_run_id = 0
        self.takeovers_total = 0
        """Leases this instance took over from another."""
        self.leases_lost_total = 0
        """Leases this instance lost (expired and taken over, or not renewed in time)."""
        self.problem: str | None = None
        """Why the database cannot be reached right now (None while it works)."""

    # --- what the scheduler asks ----------------------------------------------------------

    @property
    def leases_held(self) -> int:
        """Return how many leases (queued or running) this instance holds."""
        return len(self._held)

    def lease_valid(self) -> bool:
        """Return False once this instance may have lost its leases: it has not renewed them
        within the lease duration, so another instance may be taking its runs over."""
        return self._monotonic() < self._valid_until

    async def claim_fires(self, claims: Sequence[FireClaim]) -> dict[ScheduleKey, Claim]:
        """Claim fires in one transaction; raise StateError when the database is unreachable."""
        if not claims:
            return {}
        results: dict[ScheduleKey, Claim] = await self._call(lambda: (self._claim_fires, claims))
        for claim in claims:
            if claim.run and results.get(claim.key) is Claim.WON:
                self._hold(claim.key)
        return results

    async def acquire(
        self, requests: Sequence[RunSlotRequest], max_concurrent: int, group_caps: dict[str, int]
    ) -> SlotGrant:
        """Turn queued fires into running leases where the fleet-wide limits allow, in order.

        Nothing is asked while this instance may have lost its leases (not renewed in time):
        its queued fires may be another instance's by now.
        """
        if not requests or not self.lease_valid():
            return SlotGrant()
        grant: SlotGrant = await self._call(
            lambda: (self._acquire, requests, max_concurrent, group_caps)
        )
        for key in grant.granted:
            self._hold(key)
        self._held -= grant.gone
        return grant

    def release(self, key: ScheduleKey, *, hand_over: bool) -> None:
        """Give up a lease: delete it (the run ended, or a queued fire was dropped), or, with
        ``hand_over``, let it expire now so another instance resumes the run at once
        (shutdown, or a lost lease). Sent within a second (or when the database is back)."""
        if key in self._held and not self.lease_valid():
            # Not renewed in time: another instance may be taking it over by now.
            log.warning(
                "%s/%s: lease not renewed within %.0f s (database unreachable, or this "
                "process was frozen): handed over",
                *key,
                self.lease_seconds,
            )
            self.leases_lost_total += 1
        self._held.discard(key)
        self._to_release[key] = hand_over

    def _hold(self, key: ScheduleKey) -> None:
        # A release queued for an earlier lease of this schedule must not delete this one.
        self._to_release.pop(key, None)
        self._held.add(key)

    async def send_releases(self) -> None:
        """Send the releases queued since the last round (no renewal)."""
        if self._to_release:
            await self._call(lambda: (self._release_and_renew, dict(self._to_release), None))

    async def renew(self) -> set[ScheduleKey]:
        """Renew every lease held, send pending releases; return the leases found lost.

        A lease of this instance that it does not hold (a claim whose reply was lost) is
        handed over rather than kept alive unused.
        """
        sent_at = self._monotonic()
        snapshot: dict[str, Any] = {}

        def prepare() -> tuple[Any, ...]:
            # Under the lock: no claim or grant can slip between this and the statements.
            snapshot["held"] = set(self._held)
            snapshot["releases"] = dict(self._to_release)
            return (self._release_and_renew, snapshot["releases"], snapshot["held"])

        kept = await self._call(prepare)
        assert kept is not None
        self._valid_until = sent_at + self.lease_seconds
        releases: dict[ScheduleKey, bool] = snapshot["releases"]
        for key, hand_over in releases.items():
            if self._to_release.get(key) == hand_over:
                del self._to_release[key]
        held: set[ScheduleKey] = snapshot["held"]
        lost = {key for key in held if key not in kept and key in self._held}
        self._held -= lost
        self.leases_lost_total += len(lost)
        return lost

    async def take_over(self, limit: int) -> list[Takeover]:
        """Take up to ``limit`` expired leases not held here (another instance's, or this
        one's own handed over after an outage); return them."""
        if limit <= 0:
            return []
        taken: list[Takeover] = await self._call(lambda: (self._take_over, limit, set(self._held)))
        for item in taken:
            self._hold(item.key)
        self.takeovers_total += sum(1 for item in taken if item.previous_owner != self.instance)
        return taken

    async def refresh(self) -> FleetChanges:
        """Return what changed in the database since the last refresh."""
        changes: FleetChanges = await self._call(lambda: (self._refresh,))
        return changes

    async def publish_config(self, fingerprint: str) -> int:
        """Tell every instance that the configuration changed; return the new generation."""
        generation: int = await self._call(lambda: (self._publish_config, fingerprint))
        return generation

    async def config_generation(self) -> tuple[int, str | None]:
        """Return the fleet's config generation and the fingerprint published with it."""
        found: tuple[int, str | None] = await self._call(lambda: (self._config_generation,))
        return found

    async def close(self) -> None:
        """Hand over what is still held and close the connection."""
        for key in list(self._held):
            self.release(key, hand_over=True)
        with contextlib.suppress(StateError):
            await self.send_releases()
        async with self._lock:
            if self._connection is not None:
                with contextlib.suppress(*self._db.errors):
                    self._connection.close()
                self._connection = None

    # --- plumbing ---------------------------------------------------------------------------

    async def _call(self, prepare: Callable[[], tuple[Any, ...]]) -> Any:
        """Run ``prepare()`` (a statement function and its arguments, read under the lock) in
        one transaction in a worker thread, one call at a time."""
        async with self._lock:
            function, *arguments = prepare()
            # Shielded: a cancelled caller must not free the lock (and the connection) while
            # the thread is still inside the transaction.
            work = asyncio.ensure_future(
                asyncio.to_thread(self._in_transaction, function, *arguments)
            )
            try:
                result = await asyncio.shield(work)
            except asyncio.CancelledError:
                with contextlib.suppress(BaseException):
                    await work
                raise
            except StateError as error:
                self._trouble(str(error))
                raise
            except self._db.errors as error:
                self._drop_connection()
                message = f"cannot reach {self._db.describe}: {_first_line(error)}"
                self._trouble(message)
                raise StateError(message) from None
            if self.problem is not None:
                log.warning("fleet database %s is reachable again", self._db.describe)
                self.problem = None
            return result

    def _in_transaction(self, function: Callable[..., T], *arguments: Any) -> T:
        if self._connection is None:
            self._connection = self._db.connect()
        connection = self._connection
        self._run(connection, "BEGIN")
        try:
            result = function(connection, *arguments)
            self._run(connection, "COMMIT")
        except BaseException:
            with contextlib.suppress(*self._db.errors):
                self._run(connection, "ROLLBACK")
            raise
        return result

    def _run(self, connection: Connection, sql: str, parameters: tuple[Any, ...] = ()) -> Any:
        return self._db.execute(connection, sql.replace(":now", self._db.now), parameters)

    def _drop_connection(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(*self._db.errors):
                self._connection.close()
            self._connection = None

    def _trouble(self, message: str) -> None:
        if self.problem != message:
            log.error("FLEET DATABASE UNAVAILABLE: %s", message)
        self.problem = message

    # --- the statements (worker thread, inside a transaction) ------------------------------

    def _claim_fires(
        self, connection: Connection, claims: Sequence[FireClaim]
    ) -> dict[ScheduleKey, Claim]:
        results: dict[ScheduleKey, Claim] = {}
        for claim in claims:
            site, schedule = claim.key
            row = self._run(
                connection,
                "INSERT INTO schedule_state"
                " (site, schedule, data, last_fire_at, fire_timing, updated_at)"
                " VALUES (?, ?, '{}', ?, ?, :now)"
                " ON CONFLICT (site, schedule) DO UPDATE SET"
                " last_fire_at = excluded.last_fire_at, fire_timing = excluded.fire_timing"
                " WHERE schedule_state.last_fire_at IS NULL"
                " OR schedule_state.fire_timing IS DISTINCT FROM excluded.fire_timing"
                " OR schedule_state.last_fire_at < excluded.last_fire_at"
                " RETURNING site",
                (site, schedule, _ts(claim.fire_at), claim.fire_timing),
            ).fetchone()
            if row is None:
                results[claim.key] = Claim.LOST
                continue
            if not claim.run:
                results[claim.key] = Claim.WON
                continue
            inserted = self._run(
                connection,
                "INSERT INTO leases"
                " (site, schedule, state, owner, expires_at, fire_at, group_name)"
                " VALUES (?, ?, 'queued', ?, :now + ?, ?, ?)"
                " ON CONFLICT (site, schedule) DO NOTHING RETURNING site",
                (site, schedule, self.owner, self.lease_seconds, _ts(claim.fire_at), claim.group),
            ).fetchone()
            results[claim.key] = Claim.WON if inserted is not None else Claim.BUSY
        return results

    def _acquire(
        self,
        connection: Connection,
        requests: Sequence[RunSlotRequest],
        max_concurrent: int,
        group_caps: dict[str, int],
    ) -> SlotGrant:
        grant = SlotGrant()
        self._run(connection, "SELECT pg_advisory_xact_lock(?)", (_DISPATCH_LOCK_KEY,))
        leases: dict[ScheduleKey, tuple[str, str]] = {}
        busy_sites: set[str] = set()
        group_running: dict[str, int] = {}
        running = 0
        for site, schedule, state, owner, group in self._run(
            connection, "SELECT site, schedule, state, owner, group_name FROM leases"
        ).fetchall():
            leases[(site, schedule)] = (state, owner)
            if state == "running":
                running += 1
                busy_sites.add(site)
                if group is not None:
                    group_running[group] = group_running.get(group, 0) + 1
        for request in requests:
            site, schedule = request.key
            found = leases.get(request.key)
            if found is None and not request.create:
                # A claimed fire whose lease is gone was taken over and run elsewhere.
                grant.gone.add(request.key)
                continue
            if found is not None and found[1] != self.owner:
                grant.gone.add(request.key)
                continue
            if found is not None and found[0] == "running":
                # Taken over mid-run (its slot is counted), or the lease of this instance's
                # previous run of the schedule, not yet released: it is this run's now.
                self._run(
                    connection,
                    "UPDATE leases SET run_id = ? WHERE site = ? AND schedule = ?",
                    (request.run_id, site, schedule),
                )
                grant.granted.add(request.key)
                continue
            if site in busy_sites or running >= max_concurrent:
                continue
            cap = None if request.group is None else group_caps.get(request.group)
            if cap is not None and group_running.get(request.group or "", 0) >= cap:
                continue
            taken = self._run(
                connection,
                "INSERT INTO leases"
                " (site, schedule, state, owner, expires_at, fire_at, group_name, run_id)"
                " VALUES (?, ?, 'running', ?, :now + ?, ?, ?, ?)"
                " ON CONFLICT (site, schedule) DO UPDATE SET state = 'running',"
                " expires_at = excluded.expires_at, group_name = excluded.group_name,"
                " run_id = excluded.run_id"
                " WHERE leases.owner = excluded.owner RETURNING site",
                (
                    site,
                    schedule,
                    self.owner,
                    self.lease_seconds,
                    _ts(request.fire_at),
                    request.group,
                    request.run_id,
                ),
            ).fetchone()
            if taken is None:
                grant.gone.add(request.key)
                continue
            # The lease holder owns the run's checkpoint from now on.
            self._run(
                connection,
                "UPDATE inflight SET owner = ? WHERE site = ? AND schedule = ?",
                (self.owner, site, schedule),
            )
            running += 1
            busy_sites.add(site)
            if request.group is not None:
                group_running[request.group] = group_running.get(request.group, 0) + 1
            grant.granted.add(request.key)
        return grant

    def _release_and_renew(
        self,
        connection: Connection,
        releases: dict[ScheduleKey, bool],
        held: set[ScheduleKey] | None,
    ) -> set[ScheduleKey] | None:
        for (site, schedule), hand_over in releases.items():
            if hand_over:
                self._run(
                    connection,
                    "UPDATE leases SET expires_at = 0"
                    " WHERE site = ? AND schedule = ? AND owner = ?",
                    (site, schedule, self.owner),
                )
            else:
                self._run(
                    connection,
                    "DELETE FROM leases WHERE site = ? AND schedule = ? AND owner = ?",
                    (site, schedule, self.owner),
                )
        if held is None:
            return None
        names = [f"{site}/{schedule}" for site, schedule in held]
        # Leases of this owner it does not hold (a claim or takeover whose reply was lost)
        # are handed over, not renewed forever.
        self._run(
            connection,
            "UPDATE leases SET expires_at = 0 WHERE owner = ? AND expires_at > 0"
            " AND NOT (site || '/' || schedule = ANY(?))",
            (self.owner, names),
        )
        rows = self._run(
            connection,
            "UPDATE leases SET expires_at = :now + ? WHERE owner = ? AND expires_at > 0"
            " AND site || '/' || schedule = ANY(?) RETURNING site, schedule",
            (self.lease_seconds, self.owner, names),
        ).fetchall()
        return {(site, schedule) for site, schedule in rows}

    def _take_over(
        self, connection: Connection, limit: int, held: set[ScheduleKey]
    ) -> list[Takeover]:
        rows = self._run(
            connection,
            "SELECT site, schedule, state, owner, fire_at FROM leases"
            " WHERE expires_at < :now AND NOT (owner = ? AND site || '/' || schedule = ANY(?))"
            " ORDER BY fire_at LIMIT ? FOR UPDATE SKIP LOCKED",
            (self.owner, [f"{site}/{schedule}" for site, schedule in held], limit),
        ).fetchall()
        taken: list[Takeover] = []
        for site, schedule, state, owner, fire_at in rows:
            self._run(
                connection,
                "UPDATE leases SET owner = ?, expires_at = :now + ?"
                " WHERE site = ? AND schedule = ?",
                (self.owner, self.lease_seconds, site, schedule),
            )
            resume = None
            if state == "running":
                self._run(
                    connection,
                    "UPDATE inflight SET owner = ? WHERE site = ? AND schedule = ?",
                    (self.owner, site, schedule),
                )
                saved = self._run(
                    connection,
                    "SELECT checkpoint, saved_at FROM inflight WHERE site = ? AND schedule = ?",
                    (site, schedule),
                ).fetchone()
                if saved is not None:
                    try:
                        resume = SavedCheckpoint(checkpoint_from_json(saved[0]), _dt(saved[1]))
                    except ValueError as error:
                        log.error("%s/%s: unreadable checkpoint: %s", site, schedule, error)
                if resume is None:
                    # A run's first checkpoint is committed before its startBackup goes out,
                    # and its lease deleted with its last one: this run never started.
                    self._run(
                        connection,
                        "UPDATE leases SET state = 'queued' WHERE site = ? AND schedule = ?",
                        (site, schedule),
                    )
            taken.append(Takeover((site, schedule), _dt(fire_at), _instance_of(owner), resume))
        return taken

    def _refresh(self, connection: Connection) -> FleetChanges:
        changes = FleetChanges()
        since = self._refreshed_to - REFRESH_OVERLAP_SECONDS
        now = self._run(connection, "SELECT :now").fetchone()[0]
        for site, schedule, data, last_fire_at in self._run(
            connection,
            "SELECT site, schedule, data, last_fire_at FROM schedule_state WHERE updated_at > ?",
            (since,),
        ).fetchall():
            key = (site, schedule)
            with contextlib.suppress(ValueError, TypeError, KeyError):
                changes.stats[key] = stats_from_json(site, schedule, data)
            if last_fire_at is not None:
                changes.last_fire_at[key] = _dt(last_fire_at)
        self._refreshed_to = float(now)
        for row in self._run(
            connection,
            "SELECT id, site, schedule, run_id, outcome, reason, message, started_at,"
            " finished_at, duration_seconds, warnings, archive, archive_size_bytes,"
            " backup_record_id FROM runs WHERE id > ? ORDER BY id",
            # Ids are handed out before commit: read a margin again (known runs are skipped).
            (self._last_run_id - RUN_ID_OVERLAP,),
        ).fetchall():
            self._last_run_id = max(self._last_run_id, int(row[0]))
            changes.runs.append(_finished_run(row[1:]))
        changes.pauses = {
            (site, schedule)
            for site, schedule in self._run(
                connection, "SELECT site, schedule FROM pauses"
            ).fetchall()
        }
        for site, schedule, owner, checkpoint, saved_at in self._run(
            connection,
            "SELECT l.site, l.schedule, l.owner, i.checkpoint, i.saved_at FROM leases l"
            " LEFT JOIN inflight i ON i.site = l.site AND i.schedule = l.schedule"
            " WHERE l.state = 'running' AND l.owner <> ?",
            (self.owner,),
        ).fetchall():
            resume = None
            if checkpoint is not None:
                with contextlib.suppress(ValueError):
                    resume = SavedCheckpoint(checkpoint_from_json(checkpoint), _dt(saved_at))
            changes.remote_runs[(site, schedule)] = RemoteRun(_instance_of(owner), resume)
        generation = self._config_generation(connection)
        changes.config_generation, changes.config_fingerprint = generation
        return changes

    def _publish_config(self, connection: Connection, fingerprint: str) -> int:
        row = self._run(
            connection,
            "INSERT INTO fleet (name, generation, value, updated_at) VALUES (?, 1, ?, :now)"
            " ON CONFLICT (name) DO UPDATE SET generation = fleet.generation + 1,"
            " value = excluded.value, updated_at = excluded.updated_at RETURNING generation",
            (CONFIG_FLEET_NAME, fingerprint),
        ).fetchone()
        return int(row[0])

    def _config_generation(self, connection: Connection) -> tuple[int, str | None]:
        row = self._run(
            connection,
            "SELECT generation, value FROM fleet WHERE name = ?",
            (CONFIG_FLEET_NAME,),
        ).fetchone()
        return (0, None) if row is None else (int(row[0]), str(row[1]))


def _instance_of(owner: str) -> str:
    """Return the instance name of a lease owner token."""
    return owner.rsplit("/", 1)[0]


def _finished_run(row: Iterable[Any]) -> FinishedRun:
    import json

    (
        site,
        schedule,
        run_id,
        outcome,
        reason,
        message,
        started_at,
        finished_at,
        duration_seconds,
        warnings,
        archive,
        archive_size_bytes,
        backup_record_id,
    ) = row
    return FinishedRun(
        site=site,
        schedule=schedule,
        run_id=run_id,
        outcome=outcome,
        reason=reason,
        message=message,
        started_at=_dt(started_at),
        finished_at=_dt(finished_at),
        duration_seconds=duration_seconds,
        warnings=tuple(json.loads(warnings)),
        archive=archive,
        archive_size_bytes=archive_size_bytes,
        backup_record_id=backup_record_id,
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
