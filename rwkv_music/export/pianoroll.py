"""Piano-roll pictures (PNG) of MIDI files, drawn with matplotlib's Agg canvas.

The figure is built with :class:`matplotlib.figure.Figure` and an Agg canvas directly, never
through ``pyplot``, so no global figure state or GUI backend is touched.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from rwkv_music.export.midi import PERCUSSION_CHANNEL, notes_of
from rwkv_music.io_utils import atomic_write_bytes

DPI = 100


def piano_roll_png(midi: Any, title: str | None = None, width: float = 12.0, height: float = 5.0) -> bytes:
    """Render ``midi`` (a :class:`mido.MidiFile`) as a PNG piano roll; one colour per channel."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    notes = notes_of(midi)
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    by_channel: dict[int, list[tuple[float, float, int]]] = {}
    for n in notes:
        by_channel.setdefault(n.channel, []).append((n.start, max(n.end - n.start, 0.02), n.pitch))
    for channel, items in sorted(by_channel.items()):
        colour = cmap(channel % 20)
        label = "drums" if channel == PERCUSSION_CHANNEL else f"ch {channel + 1}"
        for i, (start, dur, pitch) in enumerate(items):
            ax.broken_barh([(start, dur)], (pitch - 0.4, 0.8), facecolors=colour, label=label if i == 0 else None)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("MIDI pitch")
    if notes:
        ax.set_xlim(0, max(n.end for n in notes) * 1.01 + 0.1)
        ax.set_ylim(min(n.pitch for n in notes) - 2, max(n.pitch for n in notes) + 2)
        ax.legend(loc="upper right", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no notes", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title or f"{len(notes)} notes, {midi.length:.1f} s")
    ax.grid(True, alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def write_piano_roll(midi: Any, path: str | os.PathLike, force: bool = False, title: str | None = None) -> Path:
    """Write the piano roll of ``midi`` to ``path`` (.png) atomically."""
    return atomic_write_bytes(path, piano_roll_png(midi, title), force)
