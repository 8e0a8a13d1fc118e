"""Progress of long commands (``eval``, ``record-rollouts``, ``calibrate-detector``, ``export``, ``import``).

One helper for all of them: :class:`Progress` draws a tqdm bar with the elapsed time and an ETA when
its stream is a terminal, and nothing at all in ``--json`` mode or when the stream is a pipe or a
file (a log, CI, ``| jq``). Lines a command reports along the way (an episode's result, a bag's
frame count) go above the bar on a terminal, and as plain lines to ``log_stream`` otherwise.

A command's library function takes the bar as ``progress`` and calls it once per unit of work::

    with Progress("eval", total=20, unit="episode", quiet=args.json) as bar:
        run_eval(..., progress=bar)      # inside: progress("episode 3/20: success in 2.1 s")
"""

from __future__ import annotations

import sys
from typing import TextIO


def is_terminal(stream: TextIO | None) -> bool:
    """True when ``stream`` is an interactive terminal (False for pipes, files, closed streams, None)."""
    if stream is None:
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


class Progress:
    """A progress bar with ETA on a terminal; silent in ``--json`` mode and off a terminal.

    Calling the object (``progress(line)``) counts one unit done and reports ``line``; that is the
    protocol the commands' library functions take (a plain ``print`` works in its place).

    Args:
        desc: What is running (the bar's label), e.g. ``"eval"``.
        total: Units of work (None: unknown until :meth:`set_total`; the bar then shows a count).
        unit: What one unit is (``episode``, ``bag``, ``step``).
        quiet: ``--json`` mode: no bar and no lines at all.
        stream: Where the bar is drawn; default ``sys.stdout`` (read when the bar is made).
        log_stream: Where the lines go when there is no bar (not in quiet mode); default
            ``stream``; None: drop them.
        force: Draw the bar even when ``stream`` is not a terminal (tests, ``--progress``-style
            overrides). ``quiet`` still wins.
    """

    _DEFAULT = object()

    def __init__(self, desc: str, total: int | None = None, unit: str = "it", *, quiet: bool = False,
                 stream: TextIO | None = None, log_stream: TextIO | None | object = _DEFAULT,
                 force: bool = False) -> None:
        if total is not None and total < 0:
            raise ValueError(f"progress total must be >= 0, got {total}")
        self.desc = desc
        self.unit = unit
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stdout
        self.log_stream = None if quiet else (self.stream if log_stream is Progress._DEFAULT else log_stream)
        self.enabled = not quiet and (force or is_terminal(self.stream))
        self.done = 0
        self._bar = None
        if self.enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True,
                             leave=True, mininterval=0.2)

    # ------------------------------------------------------------------------------ reporting
    def __call__(self, line: str | None = None) -> None:
        """One unit done; ``line`` (if any) is what it came to."""
        self.advance(1, line)

    def advance(self, n: int = 1, line: str | None = None) -> None:
        """``n`` units done; ``line`` is shown above the bar (or logged when there is no bar)."""
        self.done += n
        if line:
            self.log(line)
        if self._bar is not None:
            self._bar.update(n)

    def log(self, line: str) -> None:
        """A line of output that does not count as progress (above the bar on a terminal)."""
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
        elif self.log_stream is not None:
            print(line, file=self.log_stream, flush=True)

    def set_total(self, total: int) -> None:
        """Say how many units there are once that is known."""
        if total < 0:
            raise ValueError(f"progress total must be >= 0, got {total}")
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def status(self, text: str) -> None:
        """What is running now, shown beside the bar (nothing without a bar)."""
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=True)

    def refresh(self) -> None:
        """Redraw the bar (its elapsed time) while one long unit runs."""
        if self._bar is not None:
            self._bar.refresh()

    # ------------------------------------------------------------------------------ lifetime
    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
