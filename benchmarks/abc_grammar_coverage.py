"""Coverage of the ABC state machine on the human tunes of the music21 corpus (issue 4).

Every tune of the installed music21 corpus (``X:`` to the next ``X:``, 12,978 tunes) is folded
to ASCII as the ABC tokenizer would (``AbcTokenizer(errors="fold")``) and fed byte by byte to
the lenient grammar (``AbcGrammarConfig.human()``, the one the acceptance test uses) and, for
comparison, to the strict generation grammar.  Prints Markdown tables: acceptance per
collection, and the most common rejection reasons (phase/mode where the byte was refused, and
the byte) with examples.  Reads the corpus at run time; nothing is copied.

Run: ``python benchmarks/abc_grammar_coverage.py [--limit N] [--examples 2] [--top 25]``
(about 4 minutes for the whole corpus on one core).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter, defaultdict

from rwkv_music.formats.abc.check import corpus_tunes
from rwkv_music.formats.abc.grammar.machine import AbcGrammar, AbcGrammarConfig
from rwkv_music.formats.abc.tokenizer import AbcTokenizer


def emit(line: str = "") -> None:
    """One line of the Markdown report (benchmarks print tables, STYLE.md habit 12)."""
    print(line)  # noqa: T201


def char_class(char: str) -> str:
    if char == "":
        return "end of tune"
    if char == "\n":
        return "newline"
    if char.isdigit():
        return "digit"
    if char.isalpha():
        return "letter"
    return repr(char)


def run(grammar: AbcGrammar, tunes: list, n_examples: int) -> tuple[Counter, Counter, Counter, dict]:
    accepted, total, reasons = Counter(), Counter(), Counter()
    examples: dict[tuple[str, str], list[str]] = defaultdict(list)
    fold = AbcTokenizer(errors="fold").fold
    for tune in tunes:
        text = fold(tune.text)
        total[tune.collection] += 1
        rejection = grammar.explain(text)
        if rejection is None:
            accepted[tune.collection] += 1
            continue
        key = (f"{rejection.phase}/{rejection.mode}", char_class(rejection.char))
        reasons[key] += 1
        if len(examples[key]) < n_examples:
            at = rejection.position
            context = text[max(0, at - 25) : at] + "⟦" + text[at : at + 1] + "⟧" + text[at + 1 : at + 12]
            examples[key].append(f"{tune.collection}#{tune.index}: {context!r}")
    return accepted, total, reasons, examples


def report(name: str, accepted: Counter, total: Counter, reasons: Counter, examples: dict, top: int) -> None:
    n_ok, n = sum(accepted.values()), sum(total.values())
    emit(f"\n## {name}: {n_ok}/{n} tunes accepted ({100 * n_ok / max(n, 1):.1f} %)\n")
    emit("| collection | accepted | tunes | % |\n|---|---:|---:|---:|")
    for coll in sorted(total):
        emit(f"| {coll} | {accepted[coll]} | {total[coll]} | {100 * accepted[coll] / total[coll]:.1f} |")
    emit(f"\n### top rejection reasons ({name})\n")
    emit("| tunes | where (phase/mode) | byte | examples |\n|---:|---|---|---|")
    for (where, char), count in reasons.most_common(top):
        shown = "<br>".join(e.replace("|", "\\|") for e in examples[(where, char)])
        emit(f"| {count} | {where} | {char} | {shown} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="only the first N tunes (default: all)")
    ap.add_argument("--examples", type=int, default=2, help="examples per rejection reason")
    ap.add_argument("--top", type=int, default=25, help="rejection reasons shown")
    ap.add_argument("--strict", action="store_true", help="also run the strict generation grammar")
    args = ap.parse_args()
    tunes = list(corpus_tunes())[: args.limit]
    configs = [("lenient (AbcGrammarConfig.human())", AbcGrammarConfig.human())]
    if args.strict:
        configs.append(("strict (AbcGrammarConfig())", AbcGrammarConfig()))
    emit(f"# ABC grammar coverage on the music21 corpus ({len(tunes)} tunes)")
    for name, config in configs:
        started = time.perf_counter()
        results = run(AbcGrammar(config), tunes, args.examples)
        report(name, *results, args.top)
        emit(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
