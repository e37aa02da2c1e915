"""One validity-check worker process: ``python -m rwkv_music.formats.validity_worker``.

It reads one JSON request a line on standard input, ``{"mode": "abc", "text": "..."}``, and answers
each with one JSON line, ``{"validity": {...}}`` (what the format's ``validity(text)`` returns) or
``{"error": "..."}``.  It ends when its input closes, so it never outlives the process that started
it.  :class:`rwkv_music.formats.validity_pool.ValidityPool` starts and feeds these workers.
"""

from __future__ import annotations

import json
import os
import sys


def serve(requests, answers) -> int:  # noqa: ANN001 - binary line streams
    """Answer every request line of ``requests`` on ``answers``; return how many were answered."""
    from rwkv_music.formats.base import format_for

    formats: dict[str, object] = {}
    served = 0
    for line in requests:
        try:
            request = json.loads(line)
            mode = request["mode"]
            if mode not in formats:
                formats[mode] = format_for(mode)
            answer = {"validity": formats[mode].validity(request["text"])}  # type: ignore[attr-defined]
        except Exception as exc:  # the parent checks that text itself instead
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        answers.write(json.dumps(answer).encode("utf-8") + b"\n")
        answers.flush()
        served += 1
    return served


def main() -> int:
    # the answers get a private copy of standard output; anything a library prints goes to standard
    # error instead, where it cannot break a line of the protocol
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin.buffer, answers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
