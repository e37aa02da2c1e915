"""Piano-roll pictures (PNG) of MIDI files, drawn with matplotlib's Agg canvas.

The figure is built with :class:`matplotlib.figure.Figure` and an Agg canvas directly, never
through ``pyplot``, so no global figure state or GUI backend is touched.  Notes are coloured by
instrument (General MIDI name of the channel's program, "Drums" on channel 10); the legend sits
outside the plot so it never hides notes; a continuation's prompt end is a dashed line.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from rwkv_music.export.midi import PERCUSSION_CHANNEL, notes_of
from rwkv_music.formats.midi.decode import instrument_name
from rwkv_music.io_utils import atomic_write_bytes

DPI = 100


def piano_roll_png(
    midi: Any,
    title: str | None = None,
    width: float = 12.0,
    height: float = 5.0,
    prompt_seconds: float | None = None,
) -> bytes:
    """Render ``midi`` (a :class:`mido.MidiFile`) as a PNG piano roll, one colour per instrument.

    ``prompt_seconds`` marks where the prompt of a continuation ends.
    """
    fig = piano_roll_figure(midi, title, width, height, prompt_seconds)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def piano_roll_figure(
    midi: Any,
    title: str | None = None,
    width: float = 12.0,
    height: float = 5.0,
    prompt_seconds: float | None = None,
) -> Any:
    """The matplotlib :class:`~matplotlib.figure.Figure` of :func:`piano_roll_png` (one axes)."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    notes = notes_of(midi)
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    cmap = colormaps["tab10"]
    by_instrument: dict[str, list[tuple[float, float, int]]] = {}
    for n in notes:
        name = instrument_name(n.program, n.channel == PERCUSSION_CHANNEL)
        by_instrument.setdefault(name, []).append((n.start, max(n.end - n.start, 0.02), n.pitch))
    for k, (name, items) in enumerate(by_instrument.items()):  # first to play first
        colour = cmap(k % 10)
        for i, (start, dur, pitch) in enumerate(items):
            ax.broken_barh([(start, dur)], (pitch - 0.4, 0.8), facecolors=colour, label=name if i == 0 else None)
    if prompt_seconds is not None and prompt_seconds > 0:
        ax.axvline(prompt_seconds, color="black", linestyle="--", linewidth=1.2, label="end of prompt")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("MIDI pitch")
    if notes:
        ax.set_xlim(0, max(max(n.end for n in notes), prompt_seconds or 0) * 1.01 + 0.1)
        ax.set_ylim(min(n.pitch for n in notes) - 2, max(n.pitch for n in notes) + 2)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", borderaxespad=0)
    else:
        ax.text(0.5, 0.5, "no notes", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title or f"{len(notes)} notes, {midi.length:.1f} s")
    ax.grid(True, alpha=0.3)
    return fig


def write_piano_roll(
    midi: Any,
    path: str | os.PathLike,
    force: bool = False,
    title: str | None = None,
    prompt_seconds: float | None = None,
) -> Path:
    """Write the piano roll of ``midi`` to ``path`` (.png) atomically."""
    return atomic_write_bytes(path, piano_roll_png(midi, title, prompt_seconds=prompt_seconds), force)
