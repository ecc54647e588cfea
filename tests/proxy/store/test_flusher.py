"""The worker's one flusher: its steps in the stated order, a failing step not stopping the rest, the
last write at shutdown; and the runtime's order (feedback, counters, drift alarms, quality alarms)."""

from __future__ import annotations

import pytest

from proxy.http.app import create_app
from proxy.runtime import COUNTERS_STEP, DRIFT_STEP, FEEDBACK_STEP, QUALITY_STEP
from proxy.settings import Settings
from proxy.store.flusher import Flusher, Step


@pytest.mark.unit
def test_a_round_runs_every_step_in_order_and_one_that_raises_stops_none_of_the_others():
    ran: list[str] = []

    def broken() -> None:
        ran.append("broken")
        raise RuntimeError("a bug in a step")

    flusher = Flusher(1.0, [Step("a", lambda: ran.append("a")), Step("broken", broken)])
    flusher.add(Step("c", lambda: ran.append("c")))
    flusher.add(Step("first", lambda: ran.append("first")), before="a")
    flusher.run_round()
    flusher.run_round()
    assert ran == ["first", "a", "broken", "c"] * 2


@pytest.mark.unit
def test_close_writes_a_last_time_in_order_and_names_what_it_could_not_write():
    ran: list[str] = []
    flusher = Flusher(60.0, [Step("feedback", lambda: ran.append("feedback") or True, on_close=True),
                             Step("counters", lambda: ran.append("counters") or False, on_close=True),
                             Step("alarms", lambda: ran.append("alarms"))])
    flusher.start()
    assert flusher.close(timeout=2.0) == ["counters"]
    # the thread stopped before its first interval ended; the readers do not run at shutdown
    assert ran == ["feedback", "counters"]


@pytest.mark.integration
def test_the_runtime_flushes_feedback_then_counters_then_the_drift_then_the_quality_alarms(
        tiny_bundle, loaded_bundle, redis_server):
    settings = Settings.from_env({}, bundle=tiny_bundle, redis_url=redis_server.url, feedback_secret="s" * 32)
    runtime = create_app(settings, loaded_bundle).extensions["recguard"]
    try:
        assert [step.name for step in runtime.flusher.steps] == [FEEDBACK_STEP, COUNTERS_STEP, DRIFT_STEP,
                                                                 QUALITY_STEP]
        assert [step.name for step in runtime.flusher.steps if step.on_close] == [FEEDBACK_STEP, COUNTERS_STEP]
    finally:
        runtime.close()
