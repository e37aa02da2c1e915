"""How many human ABC tunes convert to MIDI (issue 18): every non-Essen tune of the music21 corpus.

Each tune (``rwkv_music.formats.abc.check.corpus_tunes``, the ``essenFolksong`` folder skipped) goes
through :func:`rwkv_music.formats.score.abc_to_midi`, the path of ``render --abc-to-midi``, ``--midi``
and ``Piece.save(".mid")``.  A tune "converts" when a MIDI file with notes comes back; a tune whose
repeats music21 cannot expand still converts (played without repeats) and is counted separately.
Prints one Markdown row per collection and a total, and the first failures.  Target: >= 99 %.

Run: ``python benchmarks/abc_convert_rate.py [--collections oneills1850,airdsAirs] [--limit N]``
(all collections take a few minutes).
"""

from __future__ import annotations

import argparse
import logging
import time
from collections import Counter

from rwkv_music.errors import RwkvMusicError
from rwkv_music.formats.abc.check import corpus_tunes
from rwkv_music.formats.midi.files import notes_of
from rwkv_music.formats.score import abc_to_midi

SKIP = "essenFolksong"


class _Unexpanded(logging.Handler):
    """Counts the tunes :func:`score_to_midi_bytes` wrote without expanding their repeats."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.sources: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        if "repeats not expanded" in record.getMessage():
            self.sources.add(str(record.args[0]) if record.args else record.getMessage())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collections", default=None, help="comma-separated corpus folders (default: all but Essen)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many tunes per collection")
    args = parser.parse_args(argv)
    wanted = tuple(args.collections.split(",")) if args.collections else None

    score_log = logging.getLogger("rwkv_music.formats.score")
    score_log.setLevel(logging.INFO)
    unexpanded = _Unexpanded()
    score_log.addHandler(unexpanded)

    total, ok, failures = Counter(), Counter(), []
    start = time.perf_counter()
    for tune in corpus_tunes(wanted):
        if tune.collection == SKIP or (args.limit is not None and total[tune.collection] >= args.limit):
            continue
        total[tune.collection] += 1
        source = f"{tune.path.split('corpus/')[-1]}#{tune.index + 1}"
        try:
            if notes_of(abc_to_midi(tune.text, source=source)):
                ok[tune.collection] += 1
            else:
                failures.append(f"{source}: no notes in the MIDI")
        except RwkvMusicError as exc:
            failures.append(str(exc))
        except Exception as exc:  # counted, not fatal: this is what the benchmark looks for
            failures.append(f"{source}: uncaught {type(exc).__name__}: {exc}")
    seconds = time.perf_counter() - start

    print("| collection | tunes | converted | rate |")  # noqa: T201 - a benchmark reports
    print("|---|---:|---:|---:|")  # noqa: T201
    for name in sorted(total):
        print(f"| {name} | {total[name]} | {ok[name]} | {100 * ok[name] / total[name]:.2f} % |")  # noqa: T201
    n, k = sum(total.values()), sum(ok.values())
    print(f"| **all** | {n} | {k} | {100 * k / max(n, 1):.2f} % |")  # noqa: T201
    print(f"\n{len(unexpanded.sources)} converted without expanding repeats; {seconds:.0f} s")  # noqa: T201
    for line in failures[:20]:
        print(f"failed: {line}")  # noqa: T201


if __name__ == "__main__":
    main()
