"""A text progress bar, modelled on ``keras.utils.Progbar``.

On a terminal the bar redraws in place with ``\\r``. Anywhere else (a log file, CI, pytest's capture) it
writes exactly one plain line when the bar is finalized and never a carriage return, so logs stay readable:

    1688/1688 [==============================] - 3s 2ms/step - loss: 0.5012 - accuracy: 0.8213
"""

import math
import numbers
import sys
import time

import numpy as np


def _format_time_per_unit(time_per_unit, unit_name):
    """Formats a duration per unit as Keras does: ``3s/step``, ``2ms/step`` or ``45us/step``."""
    if time_per_unit >= 1 or time_per_unit == 0:
        return f"{time_per_unit:.0f}s/{unit_name}"
    if time_per_unit >= 1e-3:
        return f"{time_per_unit * 1e3:.0f}ms/{unit_name}"
    return f"{time_per_unit * 1e6:.0f}us/{unit_name}"


def _format_eta(seconds):
    """Formats a remaining time as ``1:02:03``, ``2:03`` or ``45s``."""
    if seconds > 3600:
        return f"{int(seconds // 3600)}:{int((seconds % 3600) // 60):02d}:{int(seconds % 60):02d}"
    if seconds > 60:
        return f"{int(seconds // 60)}:{int(seconds % 60):02d}"
    return f"{int(seconds)}s"


def _format_value(value):
    """Formats a metric value with 4 decimals, or in scientific notation when it is tiny."""
    if isinstance(value, str):
        return value
    return f"{value:.4f}" if abs(value) > 1e-3 else f"{value:.4e}"


class Progbar:
    """Displays a progress bar with running metric averages.

    Args:
        target: Total number of steps expected, or None if unknown.
        width: Width of the bar in characters.
        verbose: 0 prints nothing, 1 prints a bar, 2 prints one line when finalized.
        stateful_metrics: Names of metrics shown as their last value instead of averaged over steps (for
            values that are already averages, such as those ``fit`` logs).
        unit_name: Name of a step in the time display, e.g. ``'step'`` or ``'sample'``.
        stream: File-like object to write to. Defaults to ``sys.stdout`` as it is when writing, so redirection
            after construction (pytest's capture, ``contextlib.redirect_stdout``) is honoured.
        interval: Minimum seconds between redraws of a live bar.
    """

    def __init__(
        self,
        target,
        width=30,
        verbose=1,
        stateful_metrics=None,
        unit_name="step",
        stream=None,
        interval=0.05,
    ):
        if target is not None and (isinstance(target, bool) or not isinstance(target, numbers.Integral) or target < 0):
            raise ValueError(f"Progbar target must be a non-negative integer or None; got target={target!r}.")
        if verbose not in (0, 1, 2):
            raise ValueError(f"Progbar verbose must be 0, 1 or 2; got verbose={verbose!r}.")
        self.target = target
        self.width = width
        self.verbose = verbose
        self.stateful_metrics = set(stateful_metrics or ())
        self.unit_name = unit_name
        self.stream = stream
        self.interval = interval

        # Per metric: [weighted sum, total weight] for averaged metrics, [last value, 1] for stateful ones.
        self._values = {}
        self._values_order = []
        self._seen_so_far = 0
        self._start = time.time()
        self._last_update = 0.0
        self._time_after_first_step = None
        self._previous_width = 0

    def _stream(self):
        return self.stream if self.stream is not None else sys.stdout

    def _is_terminal(self, stream):
        isatty = getattr(stream, "isatty", None)
        try:
            return bool(isatty()) if isatty is not None else False
        except ValueError:  # isatty on a closed file
            return False

    def _write(self, stream, text):
        stream.write(text)
        flush = getattr(stream, "flush", None)
        if flush is not None:
            flush()

    def update(self, current, values=None, finalize=None):
        """Updates the progress bar.

        Args:
            current: Index of the current step (the number of steps done so far).
            values: List of ``(name, value)`` tuples. Values of metrics not in ``stateful_metrics`` are
                averaged over steps, weighted by the number of steps since the previous update; the
                final update's are shown as given.
            finalize: Whether this is the last update. Defaults to ``current >= target`` (False if the target
                is unknown).
        """
        if finalize is None:
            finalize = self.target is not None and current >= self.target

        for name, value in values or ():
            if name not in self._values_order:
                self._values_order.append(name)
            try:
                value = float(np.mean(value))
            except (TypeError, ValueError):
                self._values[name] = [str(value), 1]
                continue
            if name in self.stateful_metrics or finalize:
                # (the final update shows the value given, as Keras 3's does: an epoch's logs)
                self._values[name] = [value, 1]
                continue
            # NOTE: at least 1, because an epoch-end update may repeat the last step's `current`.
            weight = max(current - self._seen_so_far, 1)
            total = self._values.get(name)
            if total is None or isinstance(total[0], str):
                self._values[name] = [value * weight, weight]
            else:
                total[0] += value * weight
                total[1] += weight
        self._seen_so_far = current

        now = time.time()
        time_per_unit = self._estimate_step_duration(current, now)
        if self.verbose == 1:
            self._display_bar(current, finalize, now, time_per_unit)
        elif self.verbose == 2 and finalize:
            count = f"{current}/{self.target}" if self.target is not None else f"{current}/Unknown"
            line = f"{count} - {now - self._start:.0f}s - {_format_time_per_unit(time_per_unit, self.unit_name)}"
            self._write(self._stream(), line + self._metrics_text() + "\n")
        self._last_update = now

    def add(self, n, values=None):
        """Advances the progress bar by ``n`` steps; see ``update`` for ``values``."""
        self.update(self._seen_so_far + n, values)

    def _display_bar(self, current, finalize, now, time_per_unit):
        stream = self._stream()
        live = self._is_terminal(stream)
        if not live and not finalize:
            return
        if live and not finalize and now - self._last_update < self.interval:
            return

        if self.target is not None:
            digits = int(math.log10(self.target)) + 1 if self.target > 0 else 1
            bar = f"{current:{digits}d}/{self.target} ["
            progress = min(current / self.target, 1.0) if self.target > 0 else 1.0
            filled = int(self.width * progress)
            if filled > 0:
                bar += "=" * (filled - 1) + (">" if current < self.target else "=")
            bar += "." * (self.width - filled) + "]"
        else:
            bar = f"{current:7d}/Unknown"

        if self.target is not None and not finalize:
            info = f" - ETA: {_format_eta(time_per_unit * (self.target - current))}"
        else:
            info = f" - {now - self._start:.0f}s {_format_time_per_unit(time_per_unit, self.unit_name)}"
        info += self._metrics_text()

        line = bar + info
        if not live:
            self._write(stream, line + "\n")
            return
        # Pad with spaces to erase the tail of a longer previous line.
        padding = " " * max(self._previous_width - len(line), 0)
        self._previous_width = len(line)
        self._write(stream, "\r" + line + padding + ("\n" if finalize else ""))

    def _metrics_text(self):
        text = ""
        for name in self._values_order:
            total, weight = self._values[name]
            value = total if isinstance(total, str) else total / max(weight, 1)
            text += f" - {name}: {_format_value(value)}"
        return text

    def _estimate_step_duration(self, current, now):
        """Seconds per step, excluding the first step (which includes compilation) once there are others."""
        if not current:
            return 0.0
        if self._time_after_first_step is not None and current > 1:
            time_per_unit = (now - self._time_after_first_step) / (current - 1)
        else:
            time_per_unit = (now - self._start) / current
        if current == 1:
            self._time_after_first_step = now
        return time_per_unit
