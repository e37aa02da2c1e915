"""Token-level rewards for REINFORCE: ``reward(ids) -> list[float]``, one value per token.

A reward is credited to the token that *completes* the event it judges (the barline closing a
bar, the wait token after which a note has been held too long), so the policy gradient with
returns-to-go pushes on the decisions that led there.

* :func:`token_reward` — +value each time a given id appears (a test / toy reward).
* :func:`abc_bar_balance_reward` — +1 at a barline whose bar has the metre's length, −1 if it
  has not (in units of the tune's ``L:``; the first bar may be a pickup and bars touching a
  repeat/ending sign are not judged, as in FORMATS E's bar-balance rule).
* :func:`abc_bar_balance_local_reward` — the same judgement given to *every* token of the judged
  bar, its closing barline included (for ``credit="local"`` in :mod:`rwkv_music.train.reinforce`).
* :func:`midi_stuck_notes_reward` — −1 at the wait token where a note has been held longer than
  ``max_hold_ms``, −1 at the end for every note still held, −0.5 for a note-off of a note that
  is not sounding.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from fractions import Fraction

from rwkv_music.errors import RwkvMusicError

RewardFn = Callable[[list[int]], list[float]]

# FORMATS C1 id arithmetic (kept local: rewards must run without the tokenizer module).
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


# ----------------------------------------------------------------------------- MIDI notes


def midi_stuck_notes_reward(ids: list[int], max_hold_ms: int = 5000) -> list[float]:
    """Penalise stuck notes and orphan note-offs in MIDI-tokenizer ids (FORMATS C1 layout)."""
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
    """``abc-bar-balance``, ``abc-bar-balance-local``, ``midi-stuck-notes`` or ``token:<id>[:<value>]``."""
    if name == "abc-bar-balance":
        return abc_bar_balance_reward
    if name == "abc-bar-balance-local":
        return abc_bar_balance_local_reward
    if name == "midi-stuck-notes":
        return midi_stuck_notes_reward
    if name.startswith("token:"):
        parts = name.split(":")
        try:
            return token_reward(int(parts[1]), float(parts[2]) if len(parts) > 2 else 1.0)
        except (ValueError, IndexError) as exc:
            raise RwkvMusicError(f"bad reward {name!r}; expected token:<id>[:<value>]") from exc
    raise RwkvMusicError(f"unknown reward {name!r}; expected abc-bar-balance, abc-bar-balance-local, "
                         "midi-stuck-notes or token:<id>")
