"""Verified power operations: the one place where "the host is off" gets *proven*.

:func:`wait_for_power_state` is the single poll-until-state loop (ironic's wait-for-power-state
pattern): read the state through the driver, return when the target is read back, back off between
reads, and fail with :class:`PowerStateNotReached` at the deadline. The operations built on it
(:func:`power_off_verified`, :func:`power_on_verified`, :func:`reboot_verified`) read the state first,
send a command only when needed, and succeed only when the target state was read back.

The first read after a command is immediate. The pause between reads is proportional to the time
already spent (``backoff_ratio`` of it, at least ``initial_interval``, at most ``max_interval``): a host
that goes off in 0.25 s is polled every 50 ms like a bare client would, one that takes 10 s is polled
every second, and in both cases the state is noticed at most ~10% (plus one read) after it changed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from remediator.errors import FenceError, IdentityMismatch, PowerStateNotReached
from remediator.fencing.base import Identity, PowerDriver, PowerState

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], None]

DEFAULT_INITIAL_INTERVAL = 0.05
DEFAULT_MAX_INTERVAL = 1.0
#: The pause between reads is this fraction of the time spent so far (between the two bounds above).
DEFAULT_BACKOFF_RATIO = 0.1
#: Default budget for one verified operation (command plus read-back).
DEFAULT_OPERATION_TIMEOUT = 60.0


@dataclass(frozen=True)
class PollResult:
    """The target state was read back after ``elapsed`` seconds and ``polls`` successful reads."""

    state: PowerState
    elapsed: float
    polls: int


@dataclass(frozen=True)
class PowerResult:
    """Outcome of a verified operation. ``command_sent`` is false when the host was already there."""

    action: str
    state: PowerState
    elapsed: float
    polls: int
    command_sent: bool

    def as_dict(self) -> dict[str, object]:
        return {
            "action": self.action,
            "state": self.state.value,
            "elapsed_s": round(self.elapsed, 4),
            "polls": self.polls,
            "command_sent": self.command_sent,
        }


def wait_for_power_state(
    driver: PowerDriver,
    target: PowerState,
    deadline_s: float,
    *,
    initial_interval: float = DEFAULT_INITIAL_INTERVAL,
    max_interval: float = DEFAULT_MAX_INTERVAL,
    backoff_ratio: float = DEFAULT_BACKOFF_RATIO,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
) -> PollResult:
    """Read ``driver``'s power state until it equals ``target``; give up after ``deadline_s`` seconds.

    The first read is immediate. ``UNKNOWN`` answers and retryable :class:`FenceError` s (timeouts,
    unreachable, garbage) are tolerated until the deadline; non-retryable ones (bad credentials, TLS,
    unsupported) are raised at once. The deadline is checked between reads; one read may overrun it by
    at most the driver's call timeout.
    """
    if target is PowerState.UNKNOWN:
        raise ValueError("cannot wait for the UNKNOWN power state")
    start = clock()
    deadline = start + max(deadline_s, 0.0)
    polls = 0
    last_state: PowerState | None = None
    last_error: FenceError | None = None
    while True:
        try:
            state = driver.power_state()
        except FenceError as exc:
            if not exc.retryable:
                raise
            last_error = exc
            log.debug("%s: power state read failed, will retry: %s", driver.name, exc)
        else:
            polls += 1
            last_state = state
            if state is target:
                return PollResult(state, clock() - start, polls)
        remaining = deadline - clock()
        if remaining <= 0:
            seen = last_state.value if last_state is not None else "none (no successful read)"
            detail = f"; last error: {last_error}" if last_error is not None else ""
            raise PowerStateNotReached(
                f"{driver.name}: power state {target.value!r} not read back within {deadline_s:.1f}s; "
                f"last state seen: {seen} after {polls} reads{detail}"
            )
        interval = min(max(initial_interval, backoff_ratio * (clock() - start)), max_interval)
        sleep(min(interval, remaining))


def _set_power_verified(
    driver: PowerDriver,
    target: PowerState,
    timeout: float,
    *,
    initial_interval: float,
    max_interval: float,
    clock: Clock,
    sleep: Sleep,
    read_first: bool = True,
) -> PowerResult:
    action = "off" if target is PowerState.OFF else "on"
    start = clock()
    reads = 0
    if read_first:
        current = driver.power_state()
        reads = 1
        if current is target:
            log.info("%s: already %s, no command sent", driver.name, target.value)
            return PowerResult(action, target, clock() - start, reads, command_sent=False)
        log.info("%s: power %s (was %s)", driver.name, action, current.value)
    if target is PowerState.OFF:
        driver.power_off()
    else:
        driver.power_on()
    remaining = timeout - (clock() - start)
    polled = wait_for_power_state(
        driver,
        target,
        remaining,
        initial_interval=initial_interval,
        max_interval=max_interval,
        clock=clock,
        sleep=sleep,
    )
    elapsed = clock() - start
    log.info("%s: %s read back after %.3fs", driver.name, target.value, elapsed)
    return PowerResult(action, target, elapsed, reads + polled.polls, command_sent=True)


def power_off_verified(
    driver: PowerDriver,
    timeout: float = DEFAULT_OPERATION_TIMEOUT,
    *,
    initial_interval: float = DEFAULT_INITIAL_INTERVAL,
    max_interval: float = DEFAULT_MAX_INTERVAL,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
    read_first: bool = True,
) -> PowerResult:
    """Hard power-off, then read ``OFF`` back within ``timeout`` seconds.

    With ``read_first`` (the default) the state is read first and no command is sent to a host that
    is already off (some BMCs refuse ForceOff when off). ``read_first=False`` saves that one request
    when the caller knows the host was on.
    """
    return _set_power_verified(
        driver,
        PowerState.OFF,
        timeout,
        initial_interval=initial_interval,
        max_interval=max_interval,
        clock=clock,
        sleep=sleep,
        read_first=read_first,
    )


def power_on_verified(
    driver: PowerDriver,
    timeout: float = DEFAULT_OPERATION_TIMEOUT,
    *,
    initial_interval: float = DEFAULT_INITIAL_INTERVAL,
    max_interval: float = DEFAULT_MAX_INTERVAL,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
    read_first: bool = True,
) -> PowerResult:
    """Power on, then read ``ON`` back within ``timeout`` seconds (no command if already on)."""
    return _set_power_verified(
        driver,
        PowerState.ON,
        timeout,
        initial_interval=initial_interval,
        max_interval=max_interval,
        clock=clock,
        sleep=sleep,
        read_first=read_first,
    )


def reboot_verified(
    driver: PowerDriver,
    timeout: float = DEFAULT_OPERATION_TIMEOUT,
    *,
    initial_interval: float = DEFAULT_INITIAL_INTERVAL,
    max_interval: float = DEFAULT_MAX_INTERVAL,
    clock: Clock = time.monotonic,
    sleep: Sleep = time.sleep,
) -> PowerResult:
    """Off (verified), then on (verified), all within ``timeout``. Not a blind power cycle."""
    start = clock()
    off = power_off_verified(
        driver,
        timeout,
        initial_interval=initial_interval,
        max_interval=max_interval,
        clock=clock,
        sleep=sleep,
    )
    on = power_on_verified(
        driver,
        timeout - (clock() - start),
        initial_interval=initial_interval,
        max_interval=max_interval,
        clock=clock,
        sleep=sleep,
    )
    return PowerResult(
        "reboot", on.state, clock() - start, off.polls + on.polls, off.command_sent or on.command_sent
    )


def check_identity(driver: PowerDriver, expected_system_uuid: str | None) -> Identity:
    """Read the BMC's identity; raise :class:`IdentityMismatch` when both UUIDs are known and differ."""
    identity = driver.identity()
    if identity.uuid_matches(expected_system_uuid) is False:
        raise IdentityMismatch(
            f"{driver.name}: BMC reports system UUID {identity.system_uuid}, "
            f"expected {Identity(expected_system_uuid).system_uuid}; refusing to act on the wrong host"
        )
    return identity
