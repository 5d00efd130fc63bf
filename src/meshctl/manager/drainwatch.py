"""One drain watch: when to read a draining generation's connections, and what the window says.

Every path that drains a generation goes through `DrainWatch.look`: the old generation after
an upgrade, the old slot's generation after a pod handover, the live one at shutdown. The
decision itself is `meshctl.drain.window.DrainWindow`; this module decides when a reading is
worth its cost.
"""

from __future__ import annotations

from meshctl.drain.activity import cpu_seconds
from meshctl.drain.connections import count_downstream
from meshctl.drain.window import DrainWindow, Verdict
from meshctl.manager.generation import Generation

# How often connections are read from the kernel while draining (the window's input; two zero
# readings in a row end it; none before they could, `DrainWindow.first_useful_reading`). A
# reading walks the kernel's whole TCP table: ~20 ms with 40k TIME_WAIT entries here.
SAMPLE_S = 0.25
# Many connections left (a gradual drain spreads the closes over seconds): the window cannot
# end before they are gone, so read less often; near idle, at the full rate again.
SAMPLE_BUSY_S = 1.0
NEAR_IDLE = 4


def sample_interval_s(connections: int | None) -> float:
    return SAMPLE_S if connections is None or connections <= NEAR_IDLE else SAMPLE_BUSY_S


class DrainWatch:
    def __init__(self) -> None:
        self.last_look = 0.0

    def look(self, window: DrainWindow, draining: Generation, now: float) -> Verdict | None:
        """The window's verdict on `draining` after a reading of its connections, or None when
        no reading was due (the caller waits either way unless a verdict ends the window)."""
        if not self.reading_due(window, now, draining):
            return None
        self.last_look = now
        draining.connections = count_downstream(draining.pid, draining.listener_ports)
        return window.decide(now, draining.connections)

    def reading_due(self, window: DrainWindow, now: float, draining: Generation) -> bool:
        """Always at the deadline; else not before a reading can help end the window, then at
        the interval its last count calls for, and not while it is visibly serving (it used
        more than 8 % of a core since the last look: a reading costs milliseconds of our CPU
        beside Envoy's workers and could only say "wait"; `meshctl.drain.activity`)."""
        deadline = window.time_left(now) == 0
        if not deadline and not (
                now >= window.first_useful_reading(SAMPLE_S)
                and now - self.last_look >= sample_interval_s(draining.connections)):
            return False
        if window.readings.allow(now, cpu_seconds(draining.pid), force=deadline):
            return True
        self.last_look = now  # looked and skipped: the next look is an interval later
        return False
