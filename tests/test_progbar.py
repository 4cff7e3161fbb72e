"""Tests for kcompile.progbar.Progbar."""

import io
import re

import pytest

from kcompile import progbar as progbar_module
from kcompile.progbar import Progbar


class TerminalStream(io.StringIO):
    """A StringIO that claims to be a terminal."""

    def isatty(self):
        return True


def run_epoch(bar, steps, losses=None):
    for step in range(1, steps + 1):
        loss = losses[step - 1] if losses else 0.5
        bar.update(step, [("loss", loss), ("accuracy", 0.8213)])


def test_non_terminal_prints_one_plain_line_per_epoch():
    stream = io.StringIO()
    for _ in range(3):
        run_epoch(Progbar(1688, stream=stream), 1688)
    output = stream.getvalue()
    assert "\r" not in output and "\b" not in output
    lines = output.splitlines()
    assert len(lines) == 3
    assert re.fullmatch(r"1688/1688 \[={30}\] - \d+s \d+(s|ms|us)/step - loss: 0\.5000 - accuracy: 0\.8213", lines[0])


def test_terminal_redraws_with_carriage_return():
    stream = TerminalStream()
    bar = Progbar(10, stream=stream, interval=0)
    run_epoch(bar, 10)
    output = stream.getvalue()
    assert output.count("\r") == 10
    assert "ETA:" in output and output.endswith("\n") and output.count("\n") == 1
    assert "\r 3/10 [========>" + "." * 21 + "]" in output


def test_terminal_updates_are_throttled_but_final_line_is_printed():
    stream = TerminalStream()
    run_epoch(Progbar(1000, stream=stream, interval=60), 1000)
    output = stream.getvalue()
    assert output.count("\r") == 2  # the first draw and the final one
    assert output.rstrip("\n").endswith("accuracy: 0.8213")


def _last_draw(stream) -> str:
    return stream.getvalue().split("\r")[-1].rstrip()


def test_running_average_weighted_by_steps_and_the_final_value_as_given():
    """Keras 3's Progbar: updates before the last show the average over steps, weighted by the
    steps since the previous update; the final update shows the value it is given (fit's epoch
    logs), not an average (it had shown 3.0 for updates of 1, 3 and 5)."""
    stream = TerminalStream()
    bar = Progbar(8, stream=stream, interval=0)
    bar.update(1, [("loss", 4.0)])
    bar.update(4, [("loss", 0.0)])  # weight 3
    assert _last_draw(stream).endswith("loss: 1.0000")
    bar.update(8, [("loss", 2.0)])
    assert _last_draw(stream).endswith("loss: 2.0000")
    stream = io.StringIO()          # (one line, at the end)
    bar = Progbar(3, stream=stream)
    for step, value in enumerate([1.0, 3.0, 5.0], start=1):
        bar.update(step, [("loss", value)])
    assert stream.getvalue().rstrip().endswith("loss: 5.0000")


def test_stateful_metrics_show_last_value():
    stream = TerminalStream()
    bar = Progbar(3, stream=stream, stateful_metrics=["accuracy"], interval=0)
    for step, value in enumerate([0.1, 0.2, 0.9], start=1):
        bar.update(step, [("loss", value), ("accuracy", value)])
        if step == 2:
            assert _last_draw(stream).endswith("loss: 0.1500 - accuracy: 0.2000")
    assert _last_draw(stream).endswith("loss: 0.9000 - accuracy: 0.9000")


def test_add_advances_by_n():
    stream = TerminalStream()
    bar = Progbar(6, stream=stream, interval=0)
    bar.add(2, [("loss", 1.0)])
    assert _last_draw(stream).startswith("2/6 [") and _last_draw(stream).endswith("loss: 1.0000")
    bar.add(4, [("loss", 2.5)])
    assert _last_draw(stream).startswith("6/6 [") and _last_draw(stream).endswith("loss: 2.5000")


def test_verbose_2_prints_one_line_without_bar():
    terminal = TerminalStream()
    run_epoch(Progbar(20, verbose=2, stream=terminal), 20)
    assert "\r" not in terminal.getvalue() and terminal.getvalue().count("\n") == 1
    stream = io.StringIO()
    bar = Progbar(20, verbose=2, stream=stream)
    run_epoch(bar, 20)
    output = stream.getvalue()
    assert re.fullmatch(r"20/20 - \d+s - \d+(s|ms|us)/step - loss: 0\.5000 - accuracy: 0\.8213\n", output)


def test_verbose_0_prints_nothing():
    for stream in (io.StringIO(), TerminalStream()):
        run_epoch(Progbar(5, verbose=0, stream=stream), 5)
        assert stream.getvalue() == ""


def test_unknown_target():
    stream = io.StringIO()
    bar = Progbar(None, stream=stream)
    for step in range(1, 8):
        bar.update(step, [("loss", 1e-5)])
    assert stream.getvalue() == ""  # never finalized on its own
    bar.update(7, finalize=True)
    assert re.fullmatch(r"      7/Unknown - \d+s \d+(s|ms|us)/step - loss: 1\.0000e-05\n", stream.getvalue())

    terminal = TerminalStream()
    bar = Progbar(None, stream=terminal, interval=0)
    bar.update(3)
    assert terminal.getvalue().startswith("\r      3/Unknown - ")


def test_default_stream_is_looked_up_at_call_time(capsys):
    bar = Progbar(2)
    bar.update(2, [("loss", 1.0)])
    captured = capsys.readouterr().out
    assert captured.startswith("2/2 [") and "\r" not in captured


@pytest.mark.parametrize(
    "seconds, expected",
    [(3.2, "3s/step"), (1.0, "1s/step"), (0.0021, "2ms/step"), (0.000045, "45us/step"), (0, "0s/step")],
)
def test_time_per_step_units(seconds, expected):
    assert progbar_module._format_time_per_unit(seconds, "step") == expected


def test_eta_format():
    assert progbar_module._format_eta(45.7) == "45s"
    assert progbar_module._format_eta(125) == "2:05"
    assert progbar_module._format_eta(3725) == "1:02:05"


def test_invalid_arguments():
    with pytest.raises(ValueError, match="target"):
        Progbar(-1)
    with pytest.raises(ValueError, match="verbose"):
        Progbar(10, verbose=3)
