"""The bar a row would copy a third time in a row: the state behind the constraint's ``max_bar_repeats``.

Human tunes rarely write one bar three times running: 0.4 % of music21's non-Essen tunes have such a
run (``TuneReport.max_same_bars``), while the shipped model under the constraint wrote one in 5.8 % of
120 tunes before this rule (14 times as often).  The rule: while a row's last ``limit`` bars are the
same and the bar it is writing is still a copy of them, the byte that would continue the copy is
banned -- unless it is the only legal byte, so the rule never leaves a row without a token.

Bars are compared as written, spaces and line breaks aside, with the barline's own characters
(``:``, ``[``, ``]``, an ending's number) stripped from their edges.  This reads bytes on its own;
the judge (:mod:`rwkv_music.formats.abc.judge`) measures the same thing from its parse of the tune.
"""

from __future__ import annotations

from dataclasses import dataclass

_SPACE = " \t\r\n"
_EDGE_AFTER = ":["  # "...:|" and "...[|" leave these at a bar's end
_EDGE_BEFORE = ":[]0123456789"  # "|:", "|]", "|1", "|[2" leave these at the next bar's start


def _music(bar: str) -> str:
    """A finished bar's text as compared: the barline's characters off both edges."""
    return bar.rstrip(_EDGE_AFTER).lstrip(_EDGE_BEFORE)


@dataclass
class BarRun:
    """One row: the bar being written and the run of equal bars just before it."""

    in_body: bool = False  # past the header's K: line
    line: str = ""  # the header line being read
    current: str = ""  # the bar being written, spaces removed
    previous: str = ""  # the last finished bar, as compared
    run: int = 0  # how many bars in a row were ``previous``

    def feed(self, ch: str) -> None:
        """One more character of the tune (prompt or sampled)."""
        if not self.in_body:
            if ch == "\n":
                self.in_body = self.line.startswith("K:")
                self.line = ""
            else:
                self.line += ch
            return
        if ch in _SPACE:
            return
        if ch == "|" or (ch == ":" and self.current.endswith(":")):  # "|..." or the "::" repeat
            bar = _music(self.current)
            if bar:  # (the second character of "||", ":|:" ...: no music, no bar)
                self.run = self.run + 1 if bar == self.previous else 1
                self.previous = bar
            self.current = ""
            return
        self.current += ch

    def copy_byte(self, limit: int) -> int:
        """The byte that would make the bar being written the ``limit + 1``-th copy in a row's run
        one character closer to done, or -1 where no copy is under way."""
        if self.run < limit:
            return -1
        done = self.current.lstrip(_EDGE_BEFORE)
        if len(done) >= len(self.previous) or not self.previous.startswith(done):
            return -1
        return ord(self.previous[len(done)])


__all__ = ["BarRun"]
