"""Audio (.wav) through FluidSynth and a General MIDI SoundFont.

Install with ``pip install 'rwkv-music[audio]'`` (pyfluidsynth) plus the FluidSynth library and a
SoundFont from the system, e.g. ``apt install libfluidsynth3 fluid-soundfont-gm`` on Debian/Ubuntu.
The SoundFont is the ``soundfont`` argument, else the first of :data:`SYSTEM_SOUNDFONTS` that
exists (where Debian, Ubuntu, Fedora, Arch and Homebrew put theirs), else the font that
pretty_midi ships (``TimGM6mb.sf2``).  When something is missing, :class:`AudioUnavailable` says
what to install.
"""

from __future__ import annotations

import importlib.util
import io
import os
import wave
from pathlib import Path
from typing import Any

from rwkv_music.errors import BackendUnavailable
from rwkv_music.io_utils import atomic_write_bytes

SAMPLE_RATE = 44100
TAIL_SECONDS = 1.0  # let the last notes ring out
DRUM_BANK = 128  # General MIDI percussion bank in SoundFonts


class AudioUnavailable(BackendUnavailable):
    """FluidSynth or a SoundFont is missing, so .wav files cannot be rendered."""


# General MIDI SoundFonts that system packages install, best first.
SYSTEM_SOUNDFONTS: tuple[str, ...] = (
    "/usr/share/sounds/sf2/default-GM.sf2",  # Debian/Ubuntu: the alternative fluid-soundfont-gm sets
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",  # Debian/Ubuntu fluid-soundfont-gm
    "/usr/share/sounds/sf2/TimGM6mb.sf2",  # Debian/Ubuntu timgm6mb-soundfont
    "/usr/share/soundfonts/default.sf2",  # Fedora, Arch
    "/usr/share/soundfonts/FluidR3_GM.sf2",  # Fedora fluid-soundfont-gm
    "/usr/share/soundfonts/FluidR3_GM2-2.sf2",  # Arch soundfont-fluid
    "/usr/local/share/soundfonts/default.sf2",
    "/opt/homebrew/share/soundfonts/default.sf2",  # Homebrew (Apple silicon)
    "/usr/local/share/fluidsynth/default.sf2",
)
INSTALL_HINT = (
    "install a General MIDI SoundFont (e.g. `apt install fluid-soundfont-gm`) or pass --soundfont FILE.sf2"
)


def find_soundfont(soundfont: str | os.PathLike | None = None, search: tuple[str, ...] = SYSTEM_SOUNDFONTS) -> Path:
    """The SoundFont to use: ``soundfont`` if given, else the first system font of ``search``,
    else pretty_midi's bundled TimGM6mb.sf2."""
    if soundfont is not None:
        path = Path(soundfont)
        if not path.is_file():
            raise AudioUnavailable(f"{path}: no such SoundFont file")
        return path
    for candidate in search:
        if Path(candidate).is_file():
            return Path(candidate)
    spec = importlib.util.find_spec("pretty_midi")
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent / "TimGM6mb.sf2"
        if path.is_file():
            return path
    raise AudioUnavailable(f"no SoundFont for .wav output: {INSTALL_HINT}")


def _load_fluidsynth() -> Any:
    try:
        import fluidsynth  # pyfluidsynth; loads libfluidsynth on import
    except ImportError as exc:
        raise AudioUnavailable(
            ".wav output needs FluidSynth: `pip install 'rwkv-music[audio]'` and the FluidSynth library "
            f"(e.g. `apt install libfluidsynth3`) ({exc})"
        ) from None
    if not hasattr(fluidsynth, "Synth"):
        raise AudioUnavailable("the installed `fluidsynth` module is not pyfluidsynth (no Synth class)")
    return fluidsynth


def check_available(soundfont: str | os.PathLike | None = None) -> Path:
    """Raise :class:`AudioUnavailable` unless .wav rendering can work; returns the SoundFont."""
    _load_fluidsynth()
    return find_soundfont(soundfont)


def wav_bytes(midi: Any, soundfont: str | os.PathLike | None = None, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Render ``midi`` (a :class:`mido.MidiFile`) to 16-bit stereo WAV bytes."""
    import numpy as np

    fluidsynth = _load_fluidsynth()
    sf_path = find_soundfont(soundfont)
    synth = fluidsynth.Synth(samplerate=float(sample_rate))
    try:
        sfid = synth.sfload(str(sf_path))
        if sfid == -1:
            raise AudioUnavailable(f"{sf_path}: FluidSynth cannot load this SoundFont")
        for ch in range(16):
            synth.program_select(ch, sfid, DRUM_BANK if ch == 9 else 0, 0)
        chunks = []
        pending = 0.0
        for msg in midi:  # seconds between messages, tempo applied by mido
            pending += msg.time
            n = int(round(pending * sample_rate))
            if n > 0:
                chunks.append(synth.get_samples(n))
                pending -= n / sample_rate
            if msg.type == "note_on":
                synth.noteon(msg.channel, msg.note, msg.velocity)
            elif msg.type == "note_off":
                synth.noteoff(msg.channel, msg.note)
            elif msg.type == "program_change":
                synth.program_select(msg.channel, sfid, DRUM_BANK if msg.channel == 9 else 0, msg.program)
            elif msg.type == "control_change":
                synth.cc(msg.channel, msg.control, msg.value)
            elif msg.type == "pitchwheel":
                synth.pitch_bend(msg.channel, msg.pitch)
        chunks.append(synth.get_samples(int(TAIL_SECONDS * sample_rate)))
    finally:
        synth.delete()
    samples = np.concatenate([np.asarray(c, dtype=np.int16) for c in chunks])
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(samples.tobytes())
    return buf.getvalue()


def write_wav(
    midi: Any, path: str | os.PathLike, force: bool = False, soundfont: str | os.PathLike | None = None
) -> Path:
    """Render ``midi`` to a .wav file at ``path`` atomically (see :func:`wav_bytes`)."""
    return atomic_write_bytes(path, wav_bytes(midi, soundfont), force)
