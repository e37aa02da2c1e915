"""An independent, music21-only oracle for ABC validity and bar balance.

This module does **not** use the ABC state machine (:mod:`rwkv_music.formats.abc.grammar.machine`);
tests, benchmarks and the renderer's manifest use it to judge generated tunes.  Every function
tolerates garbage: it returns ``False`` / an unbalanced report and never raises.

* :func:`prepare_for_music21` -- model text (docs/formats.md B: control codes, no ``X:``) to standard ABC.
* :func:`parse_ok` -- music21 parses the tune and it has at least one note or chord.
* :func:`bar_balance` -- each checked measure lasts ``TimeSignature.barDuration``.  Skipped, as
  in the corpus baseline of docs/formats.md E: the first and the last measure with notes (pickup, final
  partial bar), measures next to a repeat, double or final bar line or inside/next to an ending
  bracket, and tunes without a meter (``M:none`` or no ``M:``); ``all_balanced`` is that
  tune-level metric.  Because music21 re-bars an overfull measure into a full one plus a short
  one (which may then be skipped), every ABC bar is also summed from music21's ABC tokens and
  bars longer than the meter, wherever they are, are counted in ``overfull``;
  ``strictly_balanced`` asks for both (use it for generated tunes).
* :func:`corpus_tunes` -- the human tunes of the installed music21 corpus, split at ``X:`` lines.

>>> parse_ok("L:1/8\\nM:2/4\\nK:G\\nG2 A2|B4|]")
True
>>> r = bar_balance("X:1\\nL:1/8\\nM:2/4\\nK:G\\nD|G2 A2|B3 c|B4|A4|d3|]")
>>> (r.checked, r.balanced, r.all_balanced)
(4, 4, True)
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

_CONTROL_LINE = re.compile(r"^[SBE]:\s*\d+\s*$")
_FIELD_LINE = re.compile(r"^[A-Za-z]:")
_X_LINE = re.compile(r"^X:")
_EPS = 1e-6


def prepare_for_music21(text: str) -> str:
    """Standard ABC for music21: leading control-code lines dropped, ``X:1`` first if missing.

    >>> prepare_for_music21("S:2\\nB:8\\nL:1/8\\nK:D\\nDFA|")
    'X:1\\nL:1/8\\nK:D\\nDFA|\\n'
    """
    try:
        lines = str(text).replace("\r\n", "\n").replace("\r", "\n").split("\n")
    except Exception:  # garbage in: an empty tune out
        return "X:1\n"
    i = 0
    while i < len(lines) and (not lines[i].strip() or _CONTROL_LINE.match(lines[i].strip())):
        i += 1
    lines = lines[i:]
    if not lines or not _X_LINE.match(lines[0]):
        lines = ["X:1"] + lines
    return "\n".join(lines).rstrip("\n") + "\n"


def _parse(text: str) -> Any:
    """The music21 score of one tune, or ``None``."""
    try:
        from music21 import converter

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return converter.parse(prepare_for_music21(text), format="abc", forceSource=True)
    except Exception as exc:  # music21 raises many kinds of errors on bad ABC
        log.debug("music21 could not parse the tune: %s: %s", type(exc).__name__, exc)
        return None


def parse_ok(abc_text: str) -> bool:
    """music21 parses ``abc_text`` (model text or standard ABC) and it has notes."""
    score = _parse(abc_text)
    try:
        return score is not None and len(score.flatten().notes) > 0
    except Exception:
        return False


@dataclass(frozen=True)
class BarBalanceReport:
    """Bar balance of one tune (see the module docstring for what is skipped)."""

    parsed: bool  # music21 read the tune
    metered: bool  # it has a time signature (M:none and no M: are not checked)
    measures: int  # measures with notes
    checked: int  # measures compared with the meter
    balanced: int  # ... whose duration equals TimeSignature.barDuration
    unbalanced: tuple[int, ...]  # indices (0-based, among measures with notes) of the others
    overfull: int  # ABC bars (from music21's tokens) longer than the meter, anywhere
    all_balanced: bool  # parsed and no unbalanced measure (the tune-level metric of docs/formats.md E)

    @property
    def rate(self) -> float:
        """Balanced / checked (1.0 when nothing was checked)."""
        return self.balanced / self.checked if self.checked else 1.0

    @property
    def strictly_balanced(self) -> bool:
        """:attr:`all_balanced` and no overfull bar anywhere (the check for generated tunes)."""
        return self.all_balanced and self.overfull == 0


def bar_balance(abc_text: str) -> BarBalanceReport:
    """Per-measure durations against the meter; never raises."""
    score = _parse(abc_text)
    if score is None:
        return BarBalanceReport(False, False, 0, 0, 0, (), 0, False)
    try:
        return _measure_report(score, _overfull_bars(abc_text))
    except Exception as exc:
        log.debug("bar balance failed: %s: %s", type(exc).__name__, exc)
        return BarBalanceReport(True, False, 0, 0, 0, (), 0, False)


def _special(barline: Any) -> bool:
    return barline is not None and getattr(barline, "type", "regular") != "regular"


def _measure_report(score: Any, overfull: int) -> BarBalanceReport:
    from music21 import meter, spanner, stream

    parts = list(score.parts) or [score]
    measures: list[Any] = []
    skip: set[int] = set()
    metered = True
    for part in parts:
        if not part.recurse().getElementsByClass(meter.TimeSignature):
            metered = False
            continue
        ms = list(part.getElementsByClass(stream.Measure))
        index = {id(m): i for i, m in enumerate(ms)}
        skipped = set()
        for i in range(len(ms) - 1):  # both sides of a repeat / double / final bar line
            if _special(ms[i].rightBarline) or _special(ms[i + 1].leftBarline):
                skipped |= {i, i + 1}
        for i, m in enumerate(ms):
            if _special(m.leftBarline) or _special(m.rightBarline):
                skipped.add(i)
        for bracket in part.getElementsByClass(spanner.RepeatBracket):  # endings and their neighbours
            spanned = [index[id(m)] for m in bracket.getSpannedElements() if id(m) in index]
            if spanned:
                skipped |= set(range(min(spanned) - 1, max(spanned) + 2))
        with_notes = [i for i, m in enumerate(ms) if m.notesAndRests and m.duration.quarterLength > 0]
        if with_notes:
            skipped |= {with_notes[0], with_notes[-1]}
        base = len(measures)
        measures += [ms[i] for i in with_notes]
        skip |= {base + k for k, i in enumerate(with_notes) if i in skipped}
    checked = balanced = 0
    unbalanced = []
    if metered:
        for k, m in enumerate(measures):
            if k in skip:
                continue
            ts = m.timeSignature or m.getContextByClass(meter.TimeSignature)
            if ts is None:
                continue
            checked += 1
            if abs(float(m.duration.quarterLength) - float(ts.barDuration.quarterLength)) < _EPS:
                balanced += 1
            else:
                unbalanced.append(k)
    return BarBalanceReport(
        True, metered, len(measures), checked, balanced, tuple(unbalanced), overfull, not unbalanced
    )


def _overfull_bars(abc_text: str) -> int:
    """ABC bars whose notes (as music21's ABC tokens time them) outlast the meter.

    Walks music21's token list itself (not ``splitByMeasure``, which drops a meter change that
    sits on a bar boundary): a meter field applies to the notes after it, a bar line ends a bar.
    """
    from music21 import abcFormat

    handler = abcFormat.ABCHandler()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        handler.process(prepare_for_music21(abc_text))
    count = 0
    for voice in handler.splitByVoice():
        bar_ql: float | None = None
        total = 0.0
        for token in voice.tokens + [abcFormat.ABCBar("|")]:
            if isinstance(token, abcFormat.ABCMetadata) and token.isMeter():
                ts = token.getTimeSignatureObject()
                bar_ql = float(ts.barDuration.quarterLength) if ts is not None else None
            elif isinstance(token, abcFormat.ABCBar):
                if bar_ql is not None and total > bar_ql + _EPS:
                    count += 1
                total = 0.0
            elif isinstance(token, abcFormat.ABCNote) and not token.inGrace:
                ql = float(token.quarterLength)
                tup = token.activeTuplet
                if tup is not None:
                    ql *= tup.numberNotesNormal / tup.numberNotesActual
                total += ql
    return count


# -- the music21 corpus ------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusTune:
    collection: str  # corpus folder, e.g. "oneills1850"
    path: str  # file path inside the installed music21 corpus
    index: int  # tune number within the file (0-based)
    text: str  # the tune from its X: line, line ends normalised, trailing blank lines removed


def corpus_tunes(collections: tuple[str, ...] | None = None) -> Iterator[CorpusTune]:
    """The ABC tunes of the installed music21 corpus (read at run time, never copied).

    Args:
        collections: corpus folders to read (``None``: all of them).
    """
    from music21 import corpus

    for path in sorted(corpus.getCorePaths(fileExtensions=("abc",))):
        collection = Path(path).parent.name
        if collections is not None and collection not in collections:
            continue
        data = Path(path).read_bytes()
        try:
            raw = data.decode("utf-8")
        except UnicodeDecodeError:
            raw = data.decode("latin-1")
        raw = raw.replace("\r\n", "\n").replace("\r", "\n")
        chunks = re.split(r"(?m)^(?=X:)", raw)
        tunes = [c.strip("\n") for c in chunks if _X_LINE.match(c)]
        for i, tune in enumerate(tunes):
            lines = tune.split("\n")
            while lines and not lines[-1].strip():
                lines.pop()
            text = "\n".join(line.rstrip() for line in lines)
            yield CorpusTune(collection, str(path), i, text)


__all__ = ["BarBalanceReport", "CorpusTune", "bar_balance", "corpus_tunes", "parse_ok", "prepare_for_music21"]
