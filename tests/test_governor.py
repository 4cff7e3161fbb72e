"""codegen.governor: the thread count chosen by measuring, only where the user left it to the policy,
and never changing what a model computes."""
from __future__ import annotations

import numpy as np
import pytest

from codegen import governor, parallel
from codegen.governor import Governor, ladder


class FakeMachine:
    """A clock and a thread count: every tick of work advances the clock by the current count's cost
    per unit of work (which a test changes to play a machine that gets busy and idle again)."""

    def __init__(self, costs):
        self.costs = dict(costs)
        self.count = None
        self.now = 0.0
        self.applied = []
        self.units = {}

    def apply(self, count):
        self.count = count
        self.applied.append(count)

    def clock(self):
        return self.now

    def run(self, gov, steps, rows=32):
        for _ in range(steps):
            self.now += self.costs[self.count] * rows
            self.units[self.count] = self.units.get(self.count, 0) + rows
            gov.tick(rows)


def test_ladder():
    assert ladder(2) == [1, 2]
    assert ladder(6) == [1, 2, 4, 6]
    assert ladder(8) == [1, 2, 4, 8]
    assert ladder(1) == [1]


def test_stays_at_the_faster_count_and_probes_rarely():
    machine = FakeMachine({1: 3e-5 / 32 * 1.75, 2: 3e-5 / 32})   # 2 threads: 30 us a step
    gov = Governor(2, machine.apply, machine.clock)
    gov.begin()
    machine.units.clear()
    machine.run(gov, 200_000)
    assert gov.best == 2 and gov.switches == 0
    assert gov.gap == governor.MAX_GAP
    # after the gap has grown, about one window in MAX_GAP + 1 is a probe at one thread
    share = machine.units[1] / sum(machine.units.values())
    assert 0 < share < 2.0 / governor.MAX_GAP


def test_follows_a_machine_that_gets_busy_and_idle_again():
    idle = {1: 1.75e-6, 2: 1.0e-6}
    busy = {1: 2.0e-6, 2: 3.8e-6}      # one core taken by another process
    machine = FakeMachine(idle)
    gov = Governor(2, machine.apply, machine.clock)
    gov.begin()
    machine.run(gov, 50_000)
    assert gov.best == 2
    machine.costs = busy
    # the next probe comes within MAX_GAP windows (+1): 25 ms windows of 32-row steps at 3.8e-6 s/row
    steps_per_window = governor.WINDOW / (32 * busy[2]) + 1
    machine.run(gov, int((governor.MAX_GAP + 3) * steps_per_window))
    assert gov.best == 1 and machine.count == 1
    machine.costs = idle
    machine.run(gov, int((governor.MAX_GAP + 3) * governor.WINDOW / (32 * idle[1]) + 64))
    assert gov.best == 2 and machine.count == 2
    assert gov.switches == 2


def test_probes_both_neighbours_on_a_longer_ladder():
    # four threads is best, and only reachable through two
    machine = FakeMachine({1: 4e-6, 2: 2e-6, 4: 1e-6, 8: 1.5e-6})
    gov = Governor(8, machine.apply, machine.clock)
    gov.begin()
    machine.run(gov, 100_000)
    assert gov.best == 4
    assert {2, 8} <= set(machine.applied)


def test_a_loop_compares_only_its_own_windows():
    # a new loop (an evaluation after training) starts from `best` and measures afresh: its first
    # windows are not probes and are not compared with the last loop's
    machine = FakeMachine({1: 2e-6, 2: 1e-6})
    gov = Governor(2, machine.apply, machine.clock)
    gov.begin()
    machine.run(gov, 10_000)
    machine.costs = {1: 20e-6, 2: 10e-6}      # ten times the work per row
    gov.begin()
    assert machine.count == 2
    machine.run(gov, 3 * int(governor.WINDOW / (32 * 10e-6) + 1))
    assert gov.best == 2 and gov.switches == 0


@pytest.fixture
def policy_count():
    """The thread count left to the policy (as in a fresh process), restored afterwards."""
    parallel.reset_num_threads()
    yield
    parallel.reset_num_threads()


def test_fixed_counts_are_not_adapted(policy_count, monkeypatch):
    if not parallel.threads_available():
        assert parallel.adaptive_count() == 0
        return
    monkeypatch.setattr(parallel, "_available_cpus", lambda: 4)
    monkeypatch.delenv(parallel.ENV_NUM_THREADS, raising=False)
    assert parallel.adaptive_count() == 4
    parallel.set_num_threads(3)
    assert parallel.adaptive_count() == 0
    with governor.governed() as tick:
        tick(10)
        assert parallel.get_num_threads() == 3
    assert parallel.get_num_threads() == 3
    parallel.reset_num_threads()
    assert parallel.get_num_threads() == 4 and parallel.adaptive_count() == 4
    monkeypatch.setenv(parallel.ENV_NUM_THREADS, "2")
    assert parallel.adaptive_count() == 0
    monkeypatch.setattr(parallel, "_available_cpus", lambda: 1)
    monkeypatch.delenv(parallel.ENV_NUM_THREADS)
    assert parallel.adaptive_count() == 0


def _model(seed):
    from kcompile.layers import Dense, Dropout
    from kcompile.models import Sequential
    from kcompile.utils import set_random_seed
    set_random_seed(seed)
    model = Sequential([Dense(300, activation="relu", input_shape=(40,)), Dropout(0.3),
                        Dense(5, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  target="llvm")
    return model


@pytest.mark.skipif(not parallel.threads_available(), reason="libgomp cannot be loaded")
def test_adapting_the_count_changes_no_result(policy_count, monkeypatch):
    # a governor that probes at every other step (windows of one step, gap one) against a fixed
    # single thread: the same weights, losses and predictions, bit for bit
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 40)).astype(np.float32)
    y = rng.integers(0, 5, 2000)
    monkeypatch.setattr(parallel, "_available_cpus", lambda: 2)
    monkeypatch.delenv(parallel.ENV_NUM_THREADS, raising=False)
    parallel.reset_num_threads()
    monkeypatch.setattr(governor, "WINDOW", 0.0)
    monkeypatch.setattr(governor, "GAP", 1)
    monkeypatch.setattr(governor, "MAX_GAP", 1)
    monkeypatch.setattr(governor, "MARGIN", 10.0)    # every probe wins: the count flips each probe
    monkeypatch.setattr(governor, "_governor", None)
    applied = []
    real = parallel._set_adapted_count
    monkeypatch.setattr(parallel, "_set_adapted_count", lambda n: (applied.append(n), real(n)))

    adapted = _model(1)
    history = adapted.fit(x, y, batch_size=64, epochs=2, verbose=0, shuffle=True)
    predictions = adapted.predict(x, batch_size=256, verbose=0)
    assert parallel.get_num_threads() == 2          # the policy's count between loops
    assert applied.count(1) > 10 and applied.count(2) > 10

    parallel.set_num_threads(1)
    fixed = _model(1)
    fixed_history = fixed.fit(x, y, batch_size=64, epochs=2, verbose=0, shuffle=True)
    assert history.history == fixed_history.history
    for a, b in zip(adapted.get_weights(), fixed.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(predictions, fixed.predict(x, batch_size=256, verbose=0))


@pytest.mark.skipif(not parallel.threads_available(), reason="libgomp cannot be loaded")
def test_a_nested_loop_does_not_govern(policy_count, monkeypatch):
    monkeypatch.setattr(parallel, "_available_cpus", lambda: 2)
    monkeypatch.delenv(parallel.ENV_NUM_THREADS, raising=False)
    parallel.reset_num_threads()
    with governor.governed() as outer:
        assert outer is not governor._no_tick
        with governor.governed() as inner:
            assert inner is governor._no_tick
