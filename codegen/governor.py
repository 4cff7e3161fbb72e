"""The thread count of compiled code, adapted while a loop of steps runs, by measuring it.

    with governor.governed() as tick:
        for ...:
            run one step over `rows` rows
            tick(rows)

On an idle 2-core machine a batch-32 training step of the seed's MLP is about 1.75 times faster on
two threads than on one; beside one busy process it is about 1.9 times *slower* on two (a parallel
region ends when its last thread does, and the thread that shares its core with the busy process
waits for a time slice).  A fixed count is wrong on one of the two machines, and a shared machine
is one and then the other.  So a loop of steps measures which count is faster now:

* Time is cut into windows of at least WINDOW seconds (whole steps); a window's cost is its time per
  unit of work (rows).  Windows run at the `best` count, except a probe window now and then at a
  neighbouring count on the ladder (1, 2, 4, ... up to the CPUs the process may use: on 2 CPUs,
  1 and 2), down and up in turn.
* A probe that costs less than MARGIN of the median of the last REFERENCE windows at `best` (in the
  same loop: a training step and an evaluation step are not compared) makes its count `best`.
* Probes are GAP windows apart at first, twice as far after each probe that lost, up to MAX_GAP
  (about 1.6 s of steps); a probe that won brings the gap back to GAP.  On the idle machine the
  probes then cost about 1% of the time (one window in MAX_GAP + 1 at 1.75 times the cost).
* The thread count never changes results (codegen.parallel: pieces never depend on the thread that
  runs them, nor on the count), so adapting it changes only time.

Only where the user left the count to the policy (`parallel.adaptive_count()`: no
$KCOMPILE_NUM_THREADS, no `set_num_threads`), and in one loop at a time in the process (a second
Python thread's loop runs at whatever count the first one chose, unmeasured).  Between loops the
count is the policy's again; what was learned (`best`, the gap) carries over to the next loop.
"""
from __future__ import annotations

import contextlib
import threading
import time

from . import parallel

__all__ = ["Governor", "governed", "time_shares", "WINDOW", "MARGIN", "GAP", "MAX_GAP", "REFERENCE"]

WINDOW = 0.025      # seconds of steps per measured window, at least
MARGIN = 0.92       # a probe must cost less than this times the reference to win
GAP = 4             # windows between probes after a change
MAX_GAP = 64        # ... and at most, after probes that lost
REFERENCE = 3       # windows at `best` whose median a probe is compared with


def ladder(top: int) -> list:
    """The counts a governor moves between: powers of two below `top`, and `top`."""
    counts, count = [], 1
    while count < top:
        counts.append(count)
        count *= 2
    return counts + [top]


class Governor:
    """Chooses a thread count from measured windows.  `apply(count)` is called whenever the count to
    run at changes; `clock()` gives seconds.  Pure bookkeeping: testable with a fake clock."""

    def __init__(self, top: int, apply, clock=time.perf_counter):
        self.counts = ladder(top)
        self.best = top
        self.apply, self.clock = apply, clock
        self.gap = GAP
        self.switches = 0          # (how often a probe won, for tests and curiosity)
        self.seconds = {}          # count -> seconds of measured windows run at it
        self._up = False           # the direction of the next probe
        self._begin_loop()

    def _begin_loop(self) -> None:
        self._recent = []          # costs of this loop's windows at `best`
        self._countdown = self.gap
        self._probe = None         # the count of the window running now, when it is a probe
        self._start = None
        self._work = 0

    def begin(self) -> None:
        """A loop starts: run at `best`, measure afresh."""
        self._begin_loop()
        self.apply(self.best)
        self._start = self.clock()

    def tick(self, work) -> None:
        """`work` units (rows) have run since the last tick."""
        self._work += work
        now = self.clock()
        elapsed = now - self._start
        if elapsed < WINDOW or self._work <= 0:
            return
        count = self.best if self._probe is None else self._probe
        self.seconds[count] = self.seconds.get(count, 0.0) + elapsed
        self._window(elapsed / self._work)
        self._start = self.clock()
        self._work = 0

    def _window(self, cost: float) -> None:
        if self._probe is not None:
            recent = sorted(self._recent[-REFERENCE:])
            reference = recent[len(recent) // 2]
            if cost < MARGIN * reference:
                self.best, self.gap, self._recent = self._probe, GAP, [cost]
                self.switches += 1
            else:
                self.gap = min(2 * self.gap, MAX_GAP)
            self._probe, self._countdown = None, self.gap
            self.apply(self.best)
            return
        self._recent.append(cost)
        del self._recent[:-REFERENCE]
        self._countdown -= 1
        if self._countdown <= 0 and len(self._recent) >= 2:
            self._probe = self._neighbour()
            if self._probe is None:
                self._countdown = self.gap
            else:
                self.apply(self._probe)

    def _neighbour(self):
        i = self.counts.index(self.best)
        below = self.counts[i - 1] if i > 0 else None
        above = self.counts[i + 1] if i + 1 < len(self.counts) else None
        self._up = not self._up
        first, second = (above, below) if self._up else (below, above)
        return first if first is not None else second


_governor: Governor | None = None
_owner = threading.Lock()


def _process_governor(top: int) -> Governor:
    global _governor
    if _governor is None or _governor.counts[-1] != top:
        _governor = Governor(top, parallel._set_adapted_count)
    return _governor


def time_shares() -> dict:
    """count -> share of the process's governed windows' time run at that count ({} if none ran)."""
    seconds = dict(_governor.seconds) if _governor is not None else {}
    total = sum(seconds.values())
    return {count: value / total for count, value in sorted(seconds.items())} if total else {}


def _no_tick(work) -> None:
    pass


@contextlib.contextmanager
def governed(active: bool = True):
    """Adapt the thread count over the steps of a loop (see the module's doc); yields `tick(work)`.
    A no-op where the count is fixed, while another loop in the process governs, or when not
    `active` (a loop of code that is not compiled: libgomp is not even loaded then)."""
    top = parallel.adaptive_count() if active else 0
    if not top or not _owner.acquire(blocking=False):
        yield _no_tick
        return
    try:
        governor = _process_governor(top)
        governor.begin()
        yield governor.tick
    finally:
        parallel._set_adapted_count(top)
        _owner.release()
