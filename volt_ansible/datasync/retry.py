"""When the driver gives up on a link that keeps failing: only after `retries` failed attempts in a row *and* once
the link has been down for `outage_s`. A rented instance's network can vanish for minutes; with keepalives that
notice a dead link in ~15 s, five quick retries alone would give up after ~2 minutes of it. An attempt that ran
longer than `moving_s` was moving data before it dropped: the outage counts from its end."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Outage:
    retries: int
    outage_s: float
    moving_s: float
    first_delay_s: float = 5.0
    max_delay_s: float = 60.0
    failures: int = 0
    since: float | None = None

    def failed(self, started: float, ended: float) -> bool:
        """Record a failed attempt (its start and end, seconds since the epoch); True when it is time to give up."""
        if self.since is None or ended - started > self.moving_s:
            self.failures, self.since = 0, ended
        self.failures += 1
        return self.failures > self.retries and ended - self.since >= self.outage_s

    def delay(self) -> float:
        """Seconds to wait before the next attempt: doubling from first_delay_s, at most max_delay_s."""
        return min(self.max_delay_s, self.first_delay_s * 2 ** max(0, self.failures - 1))

    def down_s(self, now: float) -> float:
        return 0.0 if self.since is None else now - self.since


def of(opts: dict) -> Outage:
    """The driver's options (the role's data_sync_retries, _retry_delay_s, _outage_s, _io_timeout_s) as an Outage."""
    return Outage(retries=int(opts.get("retries", 5)), outage_s=float(opts.get("outage_s", 900)),
                  moving_s=2 * float(opts.get("io_timeout_s", 15)), first_delay_s=float(opts.get("retry_delay_s", 5)))
