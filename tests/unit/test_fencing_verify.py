"""The poll-until-state loop and the verified operations, against a scripted PowerDriver."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import pytest

from remediator.errors import (
    BmcAuthenticationFailed,
    BmcTimeout,
    FenceError,
    IdentityMismatch,
    PowerStateNotReached,
)
from remediator.fencing.base import Identity, PowerDriver, PowerState
from remediator.fencing.verify import (
    check_identity,
    power_off_verified,
    power_on_verified,
    reboot_verified,
    wait_for_power_state,
)

ON, OFF, UNKNOWN = PowerState.ON, PowerState.OFF, PowerState.UNKNOWN


class FakeClock:
    def __init__(self, read_cost: float = 0.0) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []
        self.read_cost = read_cost

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


class ScriptedDriver:
    """A PowerDriver whose reads follow a script; commands are recorded."""

    name = "fake bmc"

    def __init__(
        self, reads: Iterable[PowerState | FenceError], clock: FakeClock, *, then: PowerState | None = None
    ):
        self._reads = list(reads)
        self._then = then
        self.clock = clock
        self.commands: list[str] = []
        self.reads = 0
        self.ident = Identity("6695eb01-f6a4-8304-79aa-97f2502e193f", "SN1")

    def describe(self) -> str:
        return self.name

    def power_state(self) -> PowerState:
        self.reads += 1
        self.clock.now += self.clock.read_cost
        item = self._reads.pop(0) if self._reads else self._then
        if item is None:
            raise AssertionError("script exhausted")
        if isinstance(item, FenceError):
            raise item
        return item

    def power_off(self) -> None:
        self.commands.append("off")

    def power_on(self) -> None:
        self.commands.append("on")

    def identity(self) -> Identity:
        return self.ident

    def close(self) -> None:
        pass


def test_fake_implements_the_protocol() -> None:
    assert isinstance(ScriptedDriver([], FakeClock()), PowerDriver)


def test_wait_returns_on_first_matching_read_without_sleeping() -> None:
    clock = FakeClock()
    drv = ScriptedDriver([OFF], clock)
    result = wait_for_power_state(drv, OFF, 5, clock=clock, sleep=clock.sleep)
    assert (result.state, result.polls, result.elapsed) == (OFF, 1, 0.0)
    assert clock.sleeps == []


def test_wait_backs_off_in_proportion_to_elapsed_time() -> None:
    clock = FakeClock()
    drv = ScriptedDriver([], clock, then=ON)
    with pytest.raises(PowerStateNotReached):
        wait_for_power_state(
            drv, OFF, 30, initial_interval=0.05, max_interval=1.0, clock=clock, sleep=clock.sleep
        )
    assert clock.sleeps[0] == pytest.approx(0.05)
    body = clock.sleeps[:-1]  # the last pause is cut short by the deadline
    assert all(b >= a for a, b in itertools.pairwise(body))
    assert max(clock.sleeps) == pytest.approx(1.0)
    # never sleeps past the deadline
    assert sum(clock.sleeps) == pytest.approx(30.0)


def test_wait_tolerates_unknown_and_retryable_errors() -> None:
    clock = FakeClock()
    drv = ScriptedDriver([UNKNOWN, BmcTimeout("slow"), ON, OFF], clock)
    result = wait_for_power_state(drv, OFF, 5, clock=clock, sleep=clock.sleep)
    assert result.state is OFF
    assert result.polls == 3  # successful reads; the timed-out one does not count
    assert drv.reads == 4


def test_wait_raises_non_retryable_errors_at_once() -> None:
    clock = FakeClock()
    drv = ScriptedDriver([UNKNOWN, BmcAuthenticationFailed("no")], clock, then=OFF)
    with pytest.raises(BmcAuthenticationFailed):
        wait_for_power_state(drv, OFF, 5, clock=clock, sleep=clock.sleep)


def test_deadline_message_names_the_last_state_seen() -> None:
    clock = FakeClock()
    drv = ScriptedDriver([], clock, then=ON)
    with pytest.raises(PowerStateNotReached, match=r"last state seen: on") as info:
        wait_for_power_state(drv, OFF, 2, clock=clock, sleep=clock.sleep)
    assert info.value.retryable


def test_unknown_never_counts_as_off() -> None:
    clock = FakeClock()
    drv = ScriptedDriver([], clock, then=UNKNOWN)
    with pytest.raises(PowerStateNotReached, match="last state seen: unknown"):
        power_off_verified(drv, 2, clock=clock, sleep=clock.sleep)
    assert drv.commands == ["off"]


def test_only_errors_until_deadline() -> None:
    clock = FakeClock()
    drv = ScriptedDriver([], clock, then=None)
    drv._then = BmcTimeout("no answer")  # type: ignore[assignment]
    with pytest.raises(PowerStateNotReached, match=r"no successful read.*no answer"):
        wait_for_power_state(drv, OFF, 1, clock=clock, sleep=clock.sleep)


def test_a_read_that_overruns_the_deadline_still_counts_if_it_matches() -> None:
    clock = FakeClock(read_cost=3.0)
    result = wait_for_power_state(ScriptedDriver([OFF], clock), OFF, 2, clock=clock, sleep=clock.sleep)
    assert result.state is OFF and result.elapsed == 3.0
    with pytest.raises(PowerStateNotReached):
        wait_for_power_state(ScriptedDriver([ON, OFF], clock), OFF, 2, clock=clock, sleep=clock.sleep)


def test_off_verified_sends_the_command_and_reads_back() -> None:
    clock = FakeClock()
    drv = ScriptedDriver([ON, ON, ON, OFF], clock)
    result = power_off_verified(drv, 10, clock=clock, sleep=clock.sleep)
    assert drv.commands == ["off"]
    assert result.command_sent and result.state is OFF
    assert result.polls == 4


def test_off_verified_skips_the_command_when_already_off() -> None:
    clock = FakeClock()
    drv = ScriptedDriver([OFF], clock)
    result = power_off_verified(drv, 10, clock=clock, sleep=clock.sleep)
    assert drv.commands == []
    assert not result.command_sent and result.state is OFF and result.polls == 1


def test_off_verified_without_read_first() -> None:
    clock = FakeClock()
    drv = ScriptedDriver([OFF], clock)
    result = power_off_verified(drv, 10, clock=clock, sleep=clock.sleep, read_first=False)
    assert drv.commands == ["off"] and result.polls == 1


def test_on_verified_after_unknown() -> None:
    clock = FakeClock()
    drv = ScriptedDriver([UNKNOWN, OFF, ON], clock)
    assert power_on_verified(drv, 10, clock=clock, sleep=clock.sleep).state is ON
    assert drv.commands == ["on"]


def test_reboot_is_off_verified_then_on_verified() -> None:
    clock = FakeClock()
    drv = ScriptedDriver([ON, ON, OFF, OFF, ON], clock)
    result = reboot_verified(drv, 10, clock=clock, sleep=clock.sleep)
    assert drv.commands == ["off", "on"]
    assert result.action == "reboot" and result.state is ON and result.polls == 5


def test_reboot_never_powers_on_if_off_was_not_read_back() -> None:
    clock = FakeClock()
    drv = ScriptedDriver([], clock, then=ON)
    with pytest.raises(PowerStateNotReached):
        reboot_verified(drv, 3, clock=clock, sleep=clock.sleep)
    assert drv.commands == ["off"]


def test_check_identity() -> None:
    drv = ScriptedDriver([], FakeClock())
    assert check_identity(drv, "6695EB01-F6A4-8304-79AA-97F2502E193F").serial == "SN1"
    assert check_identity(drv, None).system_uuid is not None
    with pytest.raises(IdentityMismatch, match="expected 00000000-0000-0000-0000-000000000001"):
        check_identity(drv, "00000000-0000-0000-0000-000000000001")
    drv.ident = Identity(None, None)
    check_identity(drv, "00000000-0000-0000-0000-000000000001")  # unknown: not a mismatch
