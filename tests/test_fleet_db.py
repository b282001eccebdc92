"""The PostgreSQL state backend and the fleet's claims and leases, against a real server.

The statements that keep several instances from running one fire twice are checked here one by
one, with two coordinators standing for two instances; tests/test_ha.py runs whole daemons.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from akeeba_backupd.clock import SystemClock
from akeeba_backupd.database import SCHEMA_VERSION, PostgresDatabase, describe_dsn
from akeeba_backupd.fleet import Claim, FireClaim, PostgresCoordinator, RunSlotRequest
from akeeba_backupd.run import Checkpoint
from akeeba_backupd.state import StateStore
from akeeba_backupd.status import FinishedRun, ScheduleStats

FIRE = datetime(2027, 1, 1, 2, 0, tzinfo=UTC)
TIMING = "0 2 * * * UTC"


def coordinator(dsn: str, instance: str, lease_seconds: float = 30.0) -> PostgresCoordinator:
    return PostgresCoordinator(
        PostgresDatabase(dsn), instance=instance, lease_seconds=lease_seconds, clock=SystemClock()
    )


def checkpoint(step: int) -> Checkpoint:
    return Checkpoint(
        site="shop",
        schedule="nightly",
        run_id="20270101T020000-aaaa",
        profile_id=1,
        started_at=FIRE,
        backupid="id-1",
        last_step_number=step,
    )


def test_a_dsn_is_described_without_its_password() -> None:
    text = describe_dsn("postgresql://akeeba:hunter2-secret@db.example.org:5433/backups")
    assert text == "PostgreSQL akeeba@db.example.org:5433/backups"
    assert "hunter2" not in describe_dsn("host=db user=x password=hunter2 dbname=y")


async def test_state_round_trips_through_postgresql(tmp_path: Path, postgres_dsn: str) -> None:
    """Tallies, history, checkpoints and pauses written by one store are read back by the
    next, on a schema migrated to the current version."""
    store = StateStore(tmp_path, database=PostgresDatabase(postgres_dsn))
    loaded = store.open()
    assert store.problem is None
    assert loaded.stats == {}
    store.start()
    stats = ScheduleStats("shop", "nightly")
    stats.runs_total = 3
    stats.archive_size_bytes = 5 * 2**30  # above 2 GiB: the column is BIGINT
    store.save_stats(stats, FIRE, TIMING)
    store.add_run(
        FinishedRun(
            site="shop",
            schedule="nightly",
            run_id="r1",
            outcome="succeeded",
            reason=None,
            message="ok",
            started_at=FIRE,
            finished_at=FIRE,
            duration_seconds=1.5,
            warnings=("w",),
            archive="a.jpa",
            archive_size_bytes=5 * 2**30,
            backup_record_id=7,
        )
    )
    store.save_checkpoint(checkpoint(4), FIRE)
    store.set_paused("shop", "weekly", True)
    await store.close()
    assert store.problem is None

    again = StateStore(tmp_path, database=PostgresDatabase(postgres_dsn))
    loaded = again.open()
    assert loaded.stats[("shop", "nightly")].runs_total == 3
    assert loaded.stats[("shop", "nightly")].archive_size_bytes == 5 * 2**30
    assert loaded.last_fire_at[("shop", "nightly")] == FIRE
    assert loaded.fire_timing[("shop", "nightly")] == TIMING
    assert [run.run_id for run in loaded.stats[("shop", "nightly")].history] == ["r1"]
    assert loaded.stats[("shop", "nightly")].history[0].duration_seconds == 1.5
    assert [saved.checkpoint.last_step_number for saved in loaded.inflight] == [4]
    assert loaded.pauses == {("shop", "weekly")}
    await again.close()
    with psycopg.connect(postgres_dsn) as db:
        assert db.execute("SELECT max(version) FROM akeeba_schema").fetchone() == (SCHEMA_VERSION,)


async def test_a_checkpoint_taken_over_is_never_overwritten_by_its_old_owner(
    tmp_path: Path, postgres_dsn: str
) -> None:
    old = StateStore(tmp_path, database=PostgresDatabase(postgres_dsn), owner="a/1")
    old.open()
    with psycopg.connect(postgres_dsn, autocommit=True) as db:
        db.execute(
            "INSERT INTO leases (site, schedule, state, owner, expires_at, fire_at, run_id)"
            " VALUES ('shop', 'nightly', 'running', 'a/1', 1e12, 0, 'r')"
        )
    old.save_checkpoint(checkpoint(4), FIRE)
    await old.flush()
    with psycopg.connect(postgres_dsn, autocommit=True) as db:
        db.execute("UPDATE inflight SET owner = 'b/2'")
        db.execute("UPDATE leases SET owner = 'b/2'")
    old.save_checkpoint(checkpoint(5), FIRE)  # a late write of the instance that lost it
    await old.flush()
    old.drop_checkpoint("shop", "nightly")
    await old.flush()
    await old.close()
    with psycopg.connect(postgres_dsn) as db:
        row = db.execute("SELECT owner, checkpoint FROM inflight").fetchone()
    assert row is not None
    assert row[0] == "b/2"
    assert '"last_step_number": 4' in row[1]


async def test_a_late_stats_write_never_takes_back_a_claimed_fire(
    tmp_path: Path, postgres_dsn: str
) -> None:
    store = StateStore(tmp_path, database=PostgresDatabase(postgres_dsn), owner="a/1")
    store.open()
    later = datetime(2027, 1, 2, 2, 0, tzinfo=UTC)
    store.save_stats(ScheduleStats("shop", "nightly"), later, TIMING)
    await store.flush()
    store.save_stats(ScheduleStats("shop", "nightly"), FIRE, TIMING)
    await store.flush()
    await store.close()
    reader = StateStore(tmp_path, database=PostgresDatabase(postgres_dsn))
    loaded = reader.open()
    await reader.close()
    assert loaded.last_fire_at[("shop", "nightly")] == later


async def test_one_instance_wins_each_fire(postgres_dsn: str) -> None:
    """Two instances claim the same fire at once: one wins it; the next fire is new again; a
    schedule whose lease is still held is busy (overlap)."""
    alpha, beta = coordinator(postgres_dsn, "alpha"), coordinator(postgres_dsn, "beta")
    claim = FireClaim(("shop", "nightly"), FIRE, TIMING, None, run=True)
    first, second = await asyncio.gather(alpha.claim_fires([claim]), beta.claim_fires([claim]))
    assert sorted([first[claim.key], second[claim.key]]) == [Claim.LOST, Claim.WON]
    assert alpha.leases_held + beta.leases_held == 1
    later = FireClaim(
        ("shop", "nightly"), datetime(2027, 1, 2, 2, 0, tzinfo=UTC), TIMING, None, True
    )
    assert (await beta.claim_fires([later]))[later.key] is Claim.BUSY
    await alpha.close()
    await beta.close()


async def test_slots_are_counted_over_every_instance(postgres_dsn: str) -> None:
    """max_concurrent, group caps and one run per site hold across instances."""
    alpha, beta = coordinator(postgres_dsn, "alpha"), coordinator(postgres_dsn, "beta")

    def request(site: str, schedule: str = "nightly", group: str | None = None) -> RunSlotRequest:
        return RunSlotRequest((site, schedule), group, FIRE, f"run-{site}", create=True)

    grant = await alpha.acquire([request("a"), request("b", group="web3")], 3, {"web3": 1})
    assert grant.granted == {("a", "nightly"), ("b", "nightly")}
    grant = await beta.acquire(
        [request("a", "hourly"), request("c", group="web3"), request("d"), request("e")],
        3,
        {"web3": 1},
    )
    # a is busy on alpha, web3's one slot is taken, d fills the third slot, e finds none.
    assert grant.granted == {("d", "nightly")}
    assert grant.gone == set()
    alpha.release(("b", "nightly"), hand_over=False)
    await alpha.renew()
    grant = await beta.acquire([request("c", group="web3")], 3, {"web3": 1})
    assert grant.granted == {("c", "nightly")}
    await alpha.close()
    await beta.close()


async def test_an_expired_lease_is_taken_over_and_its_old_holder_learns_it(
    postgres_dsn: str,
) -> None:
    alpha = coordinator(postgres_dsn, "alpha", lease_seconds=0.5)
    beta = coordinator(postgres_dsn, "beta", lease_seconds=0.5)
    store = StateStore(
        Path("/nonexistent"),
        database=PostgresDatabase(postgres_dsn),
        owner=alpha.owner,
    )
    store.open()
    grant = await alpha.acquire([RunSlotRequest(("shop", "nightly"), None, FIRE, "r", True)], 5, {})
    assert grant.granted == {("shop", "nightly")}
    store.save_checkpoint(checkpoint(6), FIRE)
    await store.close()
    assert await beta.take_over(10) == []  # still renewed in time
    time.sleep(0.7)  # alpha "freezes" past its lease
    assert not alpha.lease_valid()
    taken = await beta.take_over(10)
    assert [(item.key, item.previous_owner) for item in taken] == [(("shop", "nightly"), "alpha")]
    assert taken[0].resume is not None
    assert taken[0].resume.checkpoint.last_step_number == 6
    assert await alpha.renew() == {("shop", "nightly")}  # lost
    assert alpha.leases_held == 0
    assert beta.leases_held == 1
    assert beta.takeovers_total == 1
    assert await beta.renew() == set()
    grant = await beta.acquire([RunSlotRequest(("shop", "nightly"), None, FIRE, "r")], 5, {})
    assert grant.granted == {("shop", "nightly")}, "a run taken over keeps its slot"
    await alpha.close()
    await beta.close()


def test_an_unreachable_database_is_reported_not_raised(tmp_path: Path) -> None:
    store = StateStore(
        tmp_path,
        database=PostgresDatabase("postgresql://nobody:pw-secret@127.0.0.1:1/none"),
    )
    store.open()
    assert store.problem is not None
    assert "cannot connect to PostgreSQL nobody@127.0.0.1:1/none" in store.problem
    assert "pw-secret" not in store.problem


def test_lease_validity_follows_the_monotonic_clock(postgres_dsn: str) -> None:
    """Without a renewal for a whole lease, an instance must assume its leases are gone."""
    fresh = coordinator(postgres_dsn, "alpha", lease_seconds=0.1)
    assert fresh.lease_valid()
    time.sleep(0.15)
    assert not fresh.lease_valid()


async def test_a_queued_release_never_deletes_a_newer_lease(postgres_dsn: str) -> None:
    """A run ends (its lease release is queued) and the schedule runs again at once: the
    queued release must not delete the new lease."""
    alpha = coordinator(postgres_dsn, "alpha")
    key = ("shop", "nightly")
    assert (await alpha.acquire([RunSlotRequest(key, None, FIRE, "r1", True)], 5, {})).granted
    alpha.release(key, hand_over=False)
    assert (await alpha.acquire([RunSlotRequest(key, None, FIRE, "r2", True)], 5, {})).granted
    assert await alpha.renew() == set()
    with psycopg.connect(postgres_dsn) as db:
        assert db.execute("SELECT run_id FROM leases").fetchall() == [("r2",)]
    await alpha.close()


async def test_a_lease_this_instance_does_not_hold_is_handed_over(postgres_dsn: str) -> None:
    """A claim committed whose reply was lost leaves a lease the instance does not know it
    holds: the next renewal hands it over, and a takeover (here by the same instance) runs
    the fire."""
    alpha = coordinator(postgres_dsn, "alpha")
    await alpha.config_generation()  # connects, and creates the tables
    with psycopg.connect(postgres_dsn, autocommit=True) as db:
        db.execute(
            "INSERT INTO leases (site, schedule, state, owner, expires_at, fire_at)"
            " VALUES ('shop', 'nightly', 'queued', %s, 1e12, 0)",
            (alpha.owner,),
        )
    assert await alpha.renew() == set()
    taken = await alpha.take_over(10)
    assert [item.key for item in taken] == [("shop", "nightly")]
    assert alpha.leases_held == 1
    assert alpha.takeovers_total == 0, "its own lease is not counted as a takeover"
    await alpha.close()


async def test_a_checkpoint_is_written_only_by_the_lease_holder(
    tmp_path: Path, postgres_dsn: str
) -> None:
    """A late write of an instance that no longer holds the run creates no row."""
    late = StateStore(tmp_path, database=PostgresDatabase(postgres_dsn), owner="a/1")
    late.open()
    late.save_checkpoint(checkpoint(9), FIRE)
    await late.flush()
    await late.close()
    with psycopg.connect(postgres_dsn) as db:
        assert db.execute("SELECT count(*) FROM inflight").fetchone() == (0,)


async def test_a_finished_run_drops_its_checkpoint_and_lease_together(
    tmp_path: Path, postgres_dsn: str
) -> None:
    """No instance may find a finished run's lease still running without its checkpoint (it
    would take it for a run never started and start it again)."""
    alpha = coordinator(postgres_dsn, "alpha")
    key = ("shop", "nightly")
    run_id = checkpoint(1).run_id
    assert (await alpha.acquire([RunSlotRequest(key, None, FIRE, run_id, True)], 5, {})).granted
    store = StateStore(tmp_path, database=PostgresDatabase(postgres_dsn), owner=alpha.owner)
    store.open()
    store.save_checkpoint(checkpoint(3), FIRE)
    await store.flush()
    store.drop_checkpoint(*key, run_id)
    await store.flush()
    with psycopg.connect(postgres_dsn) as db:
        assert db.execute("SELECT count(*) FROM leases").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM inflight").fetchone() == (0,)
    await store.close()
    await alpha.close()
