"""Token-level rewards for REINFORCE: ``reward(ids) -> list[float]``, one value per token.

A reward is credited to the token that *completes* the event it judges (the barline closing a
bar, the wait token after which a note has been held too long), so the policy gradient with
returns-to-go pushes on the decisions that led there.

* :func:`token_reward` — +value each time a given id appears (a test / toy reward).
* :func:`abc_bar_balance_reward` — +1 at a barline whose bar has the metre's length, −1 if it
  has not (in units of the tune's ``L:``; the first bar may be a pickup and bars touching a
  repeat/ending sign are not judged, as in docs/formats.md E's bar-balance rule).
* :func:`abc_bar_balance_local_reward` — the same judgement given to *every* token of the judged
  bar, its closing barline included (for ``credit="local"`` in :mod:`rwkv_music.train.reinforce`).
* :func:`abc_strict_reward` (``abc-strict``) — the strict judge's verdict
  (:func:`rwkv_music.formats.abc.judge.judge_tune`: every bar a full bar, pickup pairs only, no
  exemption by barline kind, overfull bars count) given to every token of each bar, ±1; −1 on
  spaces beyond a run of two; at the end-of-tune token a cadence score (final barline, parts of
  4/8/16 bars, last note on the tonic, as many sections as the ``S:n`` control code asks; 1 + half of
  it, so ending always earns more than the mean bar), −1 on the final bar if the tune closes with
  fewer sections than ``S:n`` asks, and half
  the tonic term on the final bar's tokens; −1 on every token written after the ``S:n``-th section
  has closed (the tune should have ended there), on bars past 16 per requested section in all and on
  bars past the 24th of one section; ±0.5 on the bar closing each part as the part has 4, 8 or 16
  bars or not; −1 on every token
  of an empty bar (``| |``, a line of bar lines; one barline closing a line and another opening the
  next is one barline) and on everything after a blank line (it ends the tune); a rollout that
  never ends gets −1 on its unfinished bar, no positive reward at all and −0.5 on every token (so
  writing more bars instead of ending costs).  For ``credit="local"``.
* :func:`abc_strict_rhythm_reward` (``abc-strict-rhythm``) — ``abc-strict``, and −0.5 on every token
  of a finished tune whose notes all have one written length (no broken rhythm, no tuplet).
* :func:`midi_stuck_notes_reward` — −1 at the wait token where a note has been held longer than
  ``max_hold_ms``, −1 at the end for every note still held, −0.5 for a note-off of a note that
  is not sounding.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from fractions import Fraction

from rwkv_music.errors import RwkvMusicError

RewardFn = Callable[[list[int]], list[float]]

# docs/formats.md C1 id arithmetic (kept local: rewards must run without the tokenizer module).
_N_WAIT_FIRST, _N_WAIT_LAST, _NOTE_FIRST, _BIN_SIZE, _STEP_MS = 3, 127, 128, 1536, 8


def token_reward(token_id: int, value: float = 1.0) -> RewardFn:
    """Reward ``value`` at each occurrence of ``token_id``."""

    def reward(ids: list[int]) -> list[float]:
        return [value if t == token_id else 0.0 for t in ids]

    return reward


# ----------------------------------------------------------------------------- ABC bars

_NOTE_RE = re.compile(r"(?P<acc>\^{1,2}|_{1,2}|=)?(?P<pitch>[A-Ga-gzxZ])[,']*(?P<num>\d*)(?P<slash>/*)(?P<den>\d*)")
_FIELD_RE = re.compile(r"^([LM]):\s*(\S+)", re.M)


def _meter_units(text: str) -> Fraction | None:
    """Bar length in units of L (None if M:/L: missing or free metre)."""
    fields = dict(_FIELD_RE.findall(text))
    meter = {"C": "4/4", "C|": "2/2"}.get(fields.get("M", ""), fields.get("M", ""))
    unit = fields.get("L", "1/8")
    try:
        m = Fraction(meter)
        u = Fraction(unit)
    except (ValueError, ZeroDivisionError):
        return None
    return m / u if u else None


def _note_length(m: re.Match) -> Fraction:
    num = int(m.group("num")) if m.group("num") else 1
    slashes = len(m.group("slash"))
    if not slashes:
        return Fraction(num)
    den = int(m.group("den")) if m.group("den") else 2 ** slashes
    return Fraction(num, den)


def _first_chord_note(m: re.Match) -> str:
    first = _NOTE_RE.search(m.group(1))
    return first.group(0) if first else ""


def bar_length(bar: str) -> Fraction:
    """Approximate length of one bar of ABC music in L units (chords count once, tuplets scaled)."""
    bar = re.sub(r'"[^"]*"|![^!]*!|\{[^}]*\}|\+[^+]*\+', "", bar)  # chord symbols, decorations, grace notes
    bar = re.sub(r"\[[A-Za-z]:[^\]]*\]", "", bar)  # inline fields [K:G]
    bar = re.sub(r"\[([^\]|:]*)\]", _first_chord_note, bar)  # a chord lasts as its first note
    total, tuplet_left, tuplet_scale = Fraction(0), 0, Fraction(1)
    i = 0
    broken = Fraction(1)
    while i < len(bar):
        t = re.match(r"\((\d)", bar[i:])
        if t:
            p = int(t.group(1))
            tuplet_scale = Fraction({2: 3, 3: 2, 4: 3, 6: 2, 9: 2}.get(p, 2 if p % 2 else 3), p)
            tuplet_left = p
            i += t.end()
            continue
        m = _NOTE_RE.match(bar, i)
        if m:
            length = _note_length(m) * broken
            broken = Fraction(1)
            rest = bar[m.end():]
            arrows = re.match(r"[<>]+", rest)
            if arrows:
                a = arrows.group(0)
                factor = 1 - Fraction(1, 2 ** len(a))
                length *= (1 + factor) if a[0] == ">" else (1 - factor)
                broken = (1 - factor) if a[0] == ">" else (1 + factor)
            if tuplet_left:
                length *= tuplet_scale
                tuplet_left -= 1
            total += length
            i = m.end() + (arrows.end() if arrows else 0)
            continue
        i += 1
    return total


def abc_bar_balance_reward(ids: list[int], prefix: str = "") -> list[float]:
    """+1/−1 at each judged barline (see module doc); ``prefix`` is prompt text for M:/L:."""
    return _bar_rewards(ids, prefix, spread=False)


def abc_bar_balance_local_reward(ids: list[int], prefix: str = "") -> list[float]:
    """Each token of a judged bar (from just after the previous barline to its own) gets ±1."""
    return _bar_rewards(ids, prefix, spread=True)


def _bar_rewards(ids: list[int], prefix: str, spread: bool) -> list[float]:
    text = "".join(chr(t) if t > 3 else "\0" for t in ids)
    rewards = [0.0] * len(ids)
    units = None
    body_start = None
    for m in re.finditer(r"^K:.*$", prefix + text, re.M):
        units = _meter_units((prefix + text)[: m.end()])
        body_start = m.end() - len(prefix)
        break
    if units is None or body_start is None:
        return rewards
    base = bar_start = max(body_start, 0)
    n_bars = 0
    for m in re.finditer(r":\|:|\|\]|\[\||\|\||::|\|:|:\||\||\0", text[base:]):
        pos = base + m.start()
        if m.group(0) == "\0":
            break
        bar = text[bar_start:pos]
        prev_sign = text[bar_start - 2:bar_start] if bar_start >= 2 else ""
        judged = (n_bars > 0 and m.group(0) == "|" and ":" not in prev_sign and "]" not in prev_sign
                  and not re.match(r"\s*\[?\d", bar) and re.search(r"[A-Ga-gz]", bar))
        if re.search(r"[A-Ga-gz]", bar):
            n_bars += 1
        if judged:
            value = 1.0 if bar_length(bar) == units else -1.0
            for i in range(bar_start if spread else pos, pos + len(m.group(0))):
                rewards[i] = value
        bar_start = pos + len(m.group(0))
    return rewards


# ----------------------------------------------------------------------------- strict ABC

_STRICT_BARLINE = re.compile(r"\.?(?:\[\||:*\|+\]?:*|::+)(?:\s*\[?\d+(?:[,-]\d+)*)?|\[\d+(?:[,-]\d+)*")
_FINAL_BARLINES = ("|]", ":|", "||", "::")
# A section of a common tune has 8 (at most 16) bars: bars beyond 16 per S:n section are penalised,
# or a policy learns to dodge the end-of-tune checks by never closing a section.
BARS_PER_SECTION_LIMIT = 16
PART_BARS_LIMIT = 24  # one section: human parts run 4, 8 or 16 bars, a few 20; a policy's 40-bar "parts" have no form


def _bar_spans(text: str, start: int, end: int) -> list[tuple[int, int, bool]]:
    """(first char, one past its barline, has music) of each stretch between barlines in text[start:end].

    Its own small scanner (quoted text, decorations, grace notes and inline fields hold no bar
    content); bars with music must line up one-to-one with the judge's ``bar_list``.
    """
    spans: list[tuple[int, int, bool]] = []
    bar_start, music, i = start, False, start
    line_start = True
    while i < end:
        ch = text[i]
        if line_start and re.match(r"[A-Za-z]:", text[i:i + 2]) and text[i:i + 2] != "|:":
            j = text.find("\n", i, end)
            i = end if j < 0 else j + 1
            continue
        line_start = ch == "\n"
        if ch == "%":
            j = text.find("\n", i, end)
            i = end if j < 0 else j
        elif ch in '"!{':
            j = text.find({"{": "}"}.get(ch, ch), i + 1, end)
            i = end if j < 0 else j + 1
        elif ch == "[" and re.match(r"\[[A-Za-z]:", text[i:i + 3]):
            j = text.find("]", i, end)
            i = end if j < 0 else j + 1
        elif ch in "|:[" and (ch != "[" or (i + 1 < end and (text[i + 1] == "|" or text[i + 1].isdigit()))):
            m = _STRICT_BARLINE.match(text, i, end)
            if m is None or m.end() == i:
                i += 1
                continue
            spans.append((bar_start, m.end(), music))
            bar_start, music, i = m.end(), False, m.end()
        else:
            music = music or ch in "ABCDEFGabcdefgzxZX"
            i += 1
    if bar_start < end:
        spans.append((bar_start, end, music))
    return spans


def _sections_end(text: str, body: int, end: int, wanted: int) -> int | None:
    """Position just after the barline that closes section number ``wanted`` (counted as the
    training data's ``S:`` control code counts them, :func:`rwkv_music.train.data.abc_sections`)."""
    from rwkv_music.train.data import abc_sections

    music = text[body:end]
    for m in re.finditer(r":\|:|\|\]|\[\||\|\||::|\|:|:\|", music):
        if len(abc_sections(music[: m.end()])) >= wanted:
            return body + m.end()
    return None


def _tune_text(ids: list[int], prefix: str) -> tuple[str, int | None, int]:
    """``ids`` as text (special ids as ``\0``), where the music starts in it (after ``prefix`` + the header's
    ``K:`` line; None without one) and where the end token is (-1 if the tune never ended)."""
    text = "".join(chr(t) if t > 3 else "\0" for t in ids)
    head = re.search(r"^K:[^\n\0]*(\n|$)", prefix + text, re.M)
    if head is None:
        return text, None, -1
    body = max(head.end() - len(prefix), 0)
    return text, body, text.find("\0", body)


def abc_strict_reward(ids: list[int], prefix: str = "") -> list[float]:
    """Per-token strict reward (module docstring); ``prefix`` is header text not in ``ids``."""
    from rwkv_music.formats.abc.judge import judge_tune

    rewards = [0.0] * len(ids)
    text, body, stop = _tune_text(ids, prefix)
    if body is None:
        return rewards
    full = prefix + text
    ended = stop >= 0
    end = stop if ended else len(text)
    blank = re.search(r"\n[ \t]*\n", text[body:end])
    if blank is not None:  # a blank line ends an ABC tune: what follows is not part of it, and is wrong
        cut = body + blank.start() + 1
        for i in range(cut, end):
            rewards[i] = -1.0
        end = cut
    spans = _bar_spans(text, body, end)
    if not ended:  # cut by the length cap: judge complete bars only, the unfinished one is wrong
        if spans and not re.search(r"[|\]]\s*$", text[spans[-1][0]:spans[-1][1]]):
            first, last, _ = spans.pop()
            for i in range(first, last):
                rewards[i] = -1.0
        end = spans[-1][1] if spans else body
    report = judge_tune(full[: len(prefix) + end].replace("\0", ""))
    music = [s for s in spans if s[2]]
    bad = set(report.unbalanced)
    wanted = re.search(r"^\0?S:(\d+)$", full, re.M)  # (the bos byte reads as \0)
    max_bars = BARS_PER_SECTION_LIMIT * max(int(wanted.group(1)) if wanted else 2, 1)
    if len(music) == len(report.bar_list):
        in_part = 0  # bars so far in the current section
        sections = sorted({b.section for b in report.bar_list if b.ending <= 1})
        part_len = dict(zip(sections, report.part_bars))  # bars of each part, a pickup pair counted once
        for k, (first, last, _) in enumerate(music):
            in_part = in_part + 1 if k and report.bar_list[k].section == report.bar_list[k - 1].section else 1
            too_long = k >= max_bars or in_part > PART_BARS_LIMIT
            for i in range(first, last):  # bars past the length limits are wrong however long they are
                rewards[i] = -1.0 if k in bad or too_long else 1.0
            section = report.bar_list[k].section
            closes = report.bar_list[k + 1].section != section if k + 1 < len(music) else ended
            if closes:  # the bar closing a part (the last one only if the tune did end there):
                form = 0.5 if part_len.get(section) in (4, 8, 16) else -0.5  # a whole number of phrases
                for i in range(first, last):
                    rewards[i] += form
    elif music:  # the scanners disagree (a rare construct): judge the tune as a whole
        value = 1.0 if report.strictly_balanced else -1.0
        for i in range(music[0][0], music[-1][1]):
            rewards[i] = value
    for k, (first, last, has_music) in enumerate(spans):  # empty bars ("| |", a line of bar lines)
        # one barline closing a line and one opening the next, before music, is a single barline
        continued = (text[first:last].count("\n") == 1 and text[first:last].lstrip(" ").startswith("\n")
                     and k + 1 < len(spans) and spans[k + 1][2])
        if not has_music and not continued:
            for i in range(first, last):
                rewards[i] = -1.0
    for m in re.finditer(r" {3,}", text[body:end]):
        for i in range(body + m.start() + 2, body + m.end()):
            rewards[i] = -1.0
    done_at = _sections_end(text, body, stop if ended else len(text), int(wanted.group(1))) if wanted else None
    if done_at is not None:  # music after the S:n-th section: the tune should have ended there
        for i in range(done_at, stop if ended else len(text)):
            if text[i] not in " \n":
                rewards[i] = -1.0
    if not ended:  # a tune that never ends: no credit for its bars, and every token of it loses 0.5, else
        # length itself pays (policies trained with local credit stopped ending their tunes: 88 % ran into the cap)
        rewards = [min(r, 0.0) - (0.5 if i >= body else 0.0) for i, r in enumerate(rewards)]
    if ended:
        tail = text[body:end].rstrip()
        checks = (tail.endswith(_FINAL_BARLINES) and (wanted is None or done_at is not None),
                  report.regular_parts, report.ends_on_tonic)
        # the end token itself always earns 0.5-1.5, 1 + half the cadence score: with local credit a
        # score below the batch's mean token reward taught the policy not to end at all
        rewards[stop] = 1.0 + 0.5 * sum(1.0 if ok else -1.0 for ok in checks) / len(checks)
        if music:
            first, last, _ = music[-1]
            if wanted is not None and done_at is None:
                # fewer sections than S:n asks: closing the tune there was wrong, however balanced the
                # bar (a policy learned to write one short part and stop, safer than a second one)
                for i in range(first, last):
                    rewards[i] = -1.0
            for i in range(first, last):
                rewards[i] += 0.5 if report.ends_on_tonic else -0.5
    return rewards


MONOTONE_MIN_NOTES = 8  # a tune this long whose notes all have one written length has no rhythm to speak of
MONOTONE_PENALTY = 0.5  # (abc-strict-rhythm:<value> sets another)


def rhythm_is_monotone(body: str) -> bool:
    """Every note and rest of the music ``body`` has the same written length, with no broken rhythm and no
    tuplet (and at least :data:`MONOTONE_MIN_NOTES` of them).  0-2 % of music21's non-Essen tunes by metre
    are; 62-88 % of the 3/4 tunes the issue-15 ABC model wrote were (every note a crotchet)."""
    music = re.sub(r'"[^"]*"|![^!]*!|\{[^}]*\}|\+[^+]*\+|\[[A-Za-z]:[^\]]*\]', "", body)
    if re.search(r"[<>]|\(\d", music):
        return False
    lengths = [_note_length(m) for m in _NOTE_RE.finditer(music)]
    return len(lengths) >= MONOTONE_MIN_NOTES and len(set(lengths)) == 1


def abc_strict_rhythm_reward(ids: list[int], prefix: str = "", penalty: float = MONOTONE_PENALTY) -> list[float]:
    """``abc-strict-rhythm[:penalty]``: :func:`abc_strict_reward`, and -``penalty`` on every token of the
    tune's music when a finished tune's rhythm is monotone (:func:`rhythm_is_monotone`).  The tokens of such
    a tune then fall below the batch's mean (balanced bars earn +1), which pushes on the choices of note
    length; the end token keeps its reward (see :func:`abc_strict_reward` for why)."""
    rewards = abc_strict_reward(ids, prefix)
    text, body, stop = _tune_text(ids, prefix)
    if body is not None and stop >= 0 and rhythm_is_monotone(text[body:stop]):
        for i in range(body, stop):
            if text[i] not in " \n":
                rewards[i] -= penalty
    return rewards


# ----------------------------------------------------------------------------- MIDI notes


def midi_stuck_notes_reward(ids: list[int], max_hold_ms: int = 5000) -> list[float]:
    """Penalise stuck notes and orphan note-offs in MIDI-tokenizer ids (docs/formats.md C1 layout)."""
    rewards = [0.0] * len(ids)
    held: dict[tuple[int, int], int] = {}  # (bin, pitch) -> onset time in ms
    now = 0
    last = len(ids) - 1
    for i, t in enumerate(ids):
        if _N_WAIT_FIRST <= t <= _N_WAIT_LAST:
            now += (t - 2) * _STEP_MS
            for key, onset in list(held.items()):
                if now - onset > max_hold_ms:
                    rewards[i] -= 1.0
                    del held[key]  # judged once
        elif t >= _NOTE_FIRST:
            rel = t - _NOTE_FIRST
            key = (rel // _BIN_SIZE, (rel % _BIN_SIZE) // 12)
            if rel % 12:
                held.setdefault(key, now)
            elif key in held:
                del held[key]
            else:
                rewards[i] -= 0.5
        elif t in (0, 2):  # <pad> / <end>: the piece is over
            last = i
            break
    rewards[last] -= float(len(held))
    return rewards


def reward_by_name(name: str) -> RewardFn:
    """``abc-strict``, ``abc-strict-rhythm[:<penalty>]``, ``abc-bar-balance``, ``abc-bar-balance-local``,
    ``midi-stuck-notes`` or ``token:<id>[:<value>]``."""
    if name == "abc-bar-balance":
        return abc_bar_balance_reward
    if name == "abc-bar-balance-local":
        return abc_bar_balance_local_reward
    if name == "abc-strict":
        return abc_strict_reward
    if name == "abc-strict-rhythm":
        return abc_strict_rhythm_reward
    if name.startswith("abc-strict-rhythm:"):
        try:
            penalty = float(name.split(":", 1)[1])
        except ValueError as exc:
            raise RwkvMusicError(f"bad reward {name!r}; expected abc-strict-rhythm:<penalty>") from exc
        return functools.partial(abc_strict_rhythm_reward, penalty=penalty)
    if name == "midi-stuck-notes":
        return midi_stuck_notes_reward
    if name.startswith("token:"):
        parts = name.split(":")
        try:
            return token_reward(int(parts[1]), float(parts[2]) if len(parts) > 2 else 1.0)
        except (ValueError, IndexError) as exc:
            raise RwkvMusicError(f"bad reward {name!r}; expected token:<id>[:<value>]") from exc
    raise RwkvMusicError(f"unknown reward {name!r}; expected abc-strict, abc-strict-rhythm, abc-bar-balance, "
                         "abc-bar-balance-local, midi-stuck-notes or token:<id>")
