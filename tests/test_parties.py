"""The party pool's memory guard: parties holding too much are killed, the error says what to do."""

from __future__ import annotations

import functools
import time

import pytest

import backends.parties as parties


def idle_party(rank: int, conn) -> None:
    conn.send(("ok", 0.0))
    parties.serve(rank, conn)


def hold(megabytes: int, seconds: float) -> int:
    """Job: touch `megabytes` of memory and keep it for `seconds`."""
    block = bytearray(megabytes << 20)
    block[::4096] = b"x" * len(block[::4096])
    time.sleep(seconds)
    return len(block)


def test_parties_over_their_memory_share_are_killed(monkeypatch):
    pool = parties.PartyPool("k", "test", idle_party, range(2), (), timeout_s=60)
    assert pool.run_each([functools.partial(hold, 1, 0)] * 2, timeout_s=60) == [1 << 20] * 2
    machine = parties.machine_memory()
    monkeypatch.setattr(parties, "MEMORY_SHARE", (parties.resident_bytes(pool.pids) + (150 << 20)) / machine)
    pids = pool.pids
    with pytest.raises(parties.PartyError, match="the test parties held .* GB, over .* use smaller shapes"):
        pool.run_each([functools.partial(hold, 200, 30)] * 2, timeout_s=60)
    assert pool.procs == [] and parties.resident_bytes(pids) == 0
