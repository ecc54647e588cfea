"""What training shows while it works: how many epochs fit a time budget and how long is left, and
the terminal's bar, which a redirected run never gets."""

from __future__ import annotations

import io

import pytest

from model.train import EpochClock
from proxy.cli.progress import Progress, duration

pytestmark = pytest.mark.unit


def test_without_a_budget_every_epoch_is_planned_and_the_time_left_follows_the_recent_epochs():
    clock = EpochClock(epochs=10)
    assert clock.planned() == 10 and clock.seconds_left() is None
    assert clock.seconds_left(elapsed=1.0, fraction=0.5) == pytest.approx(19.0)   # 9.5 epochs of 2 s
    for seconds in (4.0, 2.0, 2.0, 2.0):
        clock.record(seconds)
    assert clock.planned() == 10
    assert clock.seconds_left() == pytest.approx(12.0)                             # the last three: 2 s each


def test_a_budget_plans_the_epochs_that_end_within_it():
    clock = EpochClock(epochs=20, budget=10.0)
    assert clock.seconds_left(elapsed=0.5, fraction=0.25) == pytest.approx(9.5)    # 5 epochs of 2 s, 1/4 of one done
    clock.record(2.0)
    assert clock.planned() == 5
    clock.record(3.0)                                                              # the machine got busier
    assert clock.planned() == 4                                                    # 5 s left, 2.5 s an epoch
    clock.record(2.6)
    assert clock.planned() == 3                                                    # 2.4 s left, 2.53 s an epoch: no room
    assert clock.seconds_left() == 0.0


def test_the_first_epoch_always_runs_and_a_budget_never_adds_epochs():
    assert EpochClock(epochs=20, budget=0.001, durations=[1.0]).planned() == 1
    assert EpochClock(epochs=3, budget=1000.0, durations=[1.0]).planned() == 3


def test_a_redirected_run_gets_the_lines_alone():
    stream = io.StringIO()
    progress = Progress(stream, interactive=False)
    progress.bar("training epoch 1/3", 2, 10, 30.0)
    progress("epoch 1/3  loss 0.3")
    assert stream.getvalue() == "epoch 1/3  loss 0.3\n"


def test_a_terminal_gets_a_bar_redrawn_in_place_and_cleared_before_a_line():
    now = [0.0]
    stream = io.StringIO()
    progress = Progress(stream, interactive=True, clock=lambda: now[0])
    progress.bar("training epoch 1/3", 5, 10, 95.0)
    progress.bar("training epoch 1/3", 6, 10, 90.0)           # within a tenth of a second: not redrawn
    now[0] = 0.2
    progress.bar("training epoch 1/3", 7, 10, 80.0)
    progress("epoch 1/3  loss 0.3")
    assert stream.getvalue() == (
        "\rtraining epoch 1/3 [############............] 5/10  about 1 min 35 s left\x1b[K"
        "\rtraining epoch 1/3 [################........] 7/10  about 1 min 20 s left\x1b[K"
        "\r\x1b[K"
        "epoch 1/3  loss 0.3\n"
    )


def test_durations_read_as_a_person_says_them():
    assert [duration(s) for s in (0.4, 59.6, 125, 3600)] == ["0 s", "1 min 00 s", "2 min 05 s", "60 min 00 s"]
