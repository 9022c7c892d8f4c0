"""ProgressDisplay's plain lines (stderr not a terminal): when they come, and what they say."""

from __future__ import annotations

import io

from ropext.progress import ProgressDisplay


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _display(stream: io.StringIO, clock: Clock, **kwargs) -> ProgressDisplay:
    options = {"interactive": False, "stream": stream, "clock": clock, "interval_s": 30.0, "percent_step": 25.0}
    return ProgressDisplay("ppl tiny", **(options | kwargs))


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_lines_come_at_the_start_every_step_of_percent_after_the_interval_and_at_the_end() -> None:
    stream, clock = io.StringIO(), Clock()
    with _display(stream, clock, total=100, unit="window") as shown:
        assert _lines(stream) == ["ppl tiny: 0/100 (0%), 0:00:00 elapsed"]
        clock.now += 10
        shown.update(10)
        assert len(_lines(stream)) == 1  # neither 25% nor 30 s yet
        clock.now += 10
        shown.update(25)
        assert _lines(stream)[-1] == "ppl tiny: 25/100 (25%), 0:00:20 elapsed, 1.25 windows/s, ETA 0:01:00"
        clock.now += 31
        shown.update(26, detail="best ppl 12.5")  # not another 25%, but 31 s since the last line
        assert _lines(stream)[-1].startswith("ppl tiny: 26/100 (26%), 0:00:51 elapsed")
        assert _lines(stream)[-1].endswith("; best ppl 12.5")
        clock.now += 1
        shown.update(99)
        assert len(_lines(stream)) == 4  # 75% passed
        shown.update(100)
        assert _lines(stream)[-1].startswith("ppl tiny: 100/100 (100%), 0:00:52 elapsed, 1.92 windows/s; ")
    assert len(_lines(stream)) == 5  # the end was already printed
    assert "\x1b" not in stream.getvalue()


def test_a_resumed_run_counts_its_rate_from_its_own_work_and_an_early_stop_is_printed() -> None:
    stream, clock = io.StringIO(), Clock()
    with _display(stream, clock, total=57, completed=40, unit="evaluation", percent_step=100) as shown:
        clock.now += 20
        shown.update(41)
    assert _lines(stream)[0] == "ppl tiny: 40/57 (70%), 0:00:00 elapsed"
    assert _lines(stream)[-1] == "ppl tiny: 41/57 (72%), 0:00:20 elapsed, 20.0 s/evaluation, ETA 0:05:20"


def test_an_unknown_total_waits_for_the_first_update_and_a_restart_is_a_new_stage() -> None:
    stream, clock = io.StringIO(), Clock()
    with _display(stream, clock) as shown:
        assert _lines(stream) == []
        shown.update(0, total=8)
        assert _lines(stream) == ["ppl tiny: 0/8 (0%), 0:00:00 elapsed"]
        clock.now += 5
        shown.update(8)
        shown.restart("passkey tiny", 4)
        assert _lines(stream)[-1] == "passkey tiny: 0/4 (0%), 0:00:00 elapsed"
        clock.now += 2
        shown.advance(description="passkey tiny @ 128")
        assert _lines(stream)[-1] == "passkey tiny @ 128: 1/4 (25%), 0:00:02 elapsed, 2.0 s/item, ETA 0:00:06"
