"""Quality of the shipped default models against simple baselines (issue 8).

* Held-out loss (bits/token) of each default on its own validation split (recorded in the
  asset's ``train_meta.json``) next to an interpolated Witten–Bell n-gram fitted on the same
  training split: character 5-gram for ABC, token 3-gram for MIDI.
* ABC: N unconstrained tunes (prompt ``[2]``, T 1.0, top-k 8, top-p 0.8 as in docs/formats.md D4):
  music21 parse rate and bar-balance rate (``rwkv_music.formats.abc.check`` when present).
* MIDI: N pieces of ~20 s (prompt ``[0]``, docs/formats.md D3 sampler without penalties): note density,
  pitch-class entropy and polyphony, beside the same statistics of 20-s openings of training pieces.

* ``--music`` (issue 15): the musicianship tables instead, side by side with human music.
  ABC, per caller metre (4/4, 3/4, 2/4, 6/8, 9/8, C, C|): the share of tunes the strict judge
  (:mod:`rwkv_music.formats.abc.judge`) finds balanced, section barlines per 8 bars, the longest
  space run, bars per line, tunes whose parts are 4/8/16 bars, tunes ending on the tonic,
  tunes cut at the length cap, tunes that write one bar three times running, tunes whose notes
  all have one written length (``rhythm_is_monotone``) and tunes whose last note is shorter than a
  quarter note ("end<q") -- for the
  shipped model constrained and not, a random-weights RWKV-7 under the constraint, and music21's
  non-Essen tunes in that metre.  MIDI: the share of notes in the best-fitting diatonic scale,
  pitch-class entropy, notes ended by the decoder's 5-s forced release, peak polyphony and notes
  outside their instrument's range, for the shipped model (default preset, with and without
  ``--instruments``) beside music21 scores rendered to MIDI.

Run: ``python benchmarks/bench_quality.py [--abc-tunes 100] [--midi-pieces 50] [--skip-midi]``
(a few minutes on one CPU core with the defaults; shrink the counts for a quick look), or
``python benchmarks/bench_quality.py --music [--tunes 30] [--pieces 16] [--seconds 30]``.
"""

from __future__ import annotations

import argparse
import json
import time
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from rwkv_music.assets import default_model_dir, default_model_path
from rwkv_music.train import checkpoint as ckpt
from rwkv_music.train.data import TokenStream, split_documents
from rwkv_music.train.ngram import WittenBellNGram
from rwkv_music.train.trainer import evaluate_bits

if TYPE_CHECKING:
    from rwkv_music.compose.composer import Composer
    from rwkv_music.train.data import Document
    from rwkv_music.train.model_v7 import RWKV7

STEP_MS = 8  # docs/formats.md C1 wait step


def sample_batch(
    model: RWKV7,
    prompt: list[int],
    n: int,
    max_len: int,
    stop: set[int],
    seed: int,
    top_k: int = 8,
    top_p: float = 0.8,
    budget_fn: Callable[[list[int]], bool] | None = None,
) -> list[list[int]]:
    """Sample ``n`` continuations in one batch (top-k then top-p, T = 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        logits, state = model(torch.tensor([prompt] * n))
        logits = logits[:, -1]
        outs: list[list[int]] = [[] for _ in range(n)]
        done = [False] * n
        for _ in range(max_len):
            probs = torch.softmax(logits.float(), -1)
            top, idx = probs.topk(top_k, dim=-1)
            cum = top.cumsum(-1)
            keep = (cum - top) < top_p  # smallest prefix reaching top_p (always keeps the first)
            top = top * keep
            choice = torch.multinomial(top / top.sum(-1, keepdim=True), 1, generator=gen)
            tok = idx.gather(-1, choice)
            for i, t in enumerate(tok[:, 0].tolist()):
                if not done[i]:
                    if t in stop:
                        done[i] = True
                    else:
                        outs[i].append(t)
                        if budget_fn and budget_fn(outs[i]):
                            done[i] = True
            if all(done):
                break
            logits, state = model(tok, state)
            logits = logits[:, -1]
    return outs


# ----------------------------------------------------------------------------- held-out loss


def heldout(mode: str, order: int, docs: list[Document], folder: Path | None = None) -> dict:
    folder = Path(folder) if folder else default_model_dir(mode)
    meta = json.loads((folder / ckpt.META_FILE).read_text())
    opts = meta["options"]
    split = meta.get("split", opts)  # a fine-tune of prepared data records the data's own split
    train_docs, val_docs = split_documents(docs, split["val_fraction"], split["seed"])
    tr, va = TokenStream(train_docs), TokenStream(val_docs)
    path = folder / ckpt.MODEL_FILE if folder != default_model_dir(mode) else default_model_path(mode)
    model = ckpt.model_from_checkpoint(path).eval()
    t0 = time.time()
    model_bits = evaluate_bits(model, va, opts["ctx"], 8, "cpu")
    ngram_bits = WittenBellNGram(order, model.config.vocab_size).fit(tr.ids).bits(va.ids, va.mask)
    return {"mode": mode, "val_docs": len(val_docs), "val_tokens": len(va), "model_bits": model_bits,
            f"{order}gram_bits": ngram_bits, "seconds": time.time() - t0, "model": model}


# ----------------------------------------------------------------------------- ABC generation


def abc_quality(model: RWKV7, n: int, seed: int, max_len: int) -> dict:
    tunes = sample_batch(model, [2], n, max_len, {3}, seed)
    texts = ["".join(chr(t) for t in ids if t > 3) for ids in tunes]
    try:
        from rwkv_music.formats.abc import check as abc_check
    except ImportError:
        abc_check = None
    parsed = balanced = strict = 0
    for text in texts:
        body = "\n".join(line for line in text.splitlines() if line[:2] not in ("S:", "B:", "E:"))
        abc = "X:1\n" + body
        if abc_check is not None:
            ok = bool(abc_check.parse_ok(abc))
            bal = abc_check.bar_balance(abc)
            bal_ok = bool(getattr(bal, "all_balanced", bal if isinstance(bal, bool) else False))
            strict_ok = bool(getattr(bal, "strictly_balanced", bal_ok))
        else:
            ok = _music21_parses(abc)
            from rwkv_music.train.rewards import abc_bar_balance_reward

            r = abc_bar_balance_reward([ord(c) for c in abc if ord(c) < 128])
            bal_ok = strict_ok = ok and not any(x < 0 for x in r)
        parsed += ok
        balanced += bool(ok and bal_ok)
        strict += bool(ok and strict_ok)
    return {"tunes": n, "parse_rate": parsed / n, "bar_balance_rate": balanced / n,
            "strict_bar_balance_rate": strict / n,
            "mean_chars": float(np.mean([len(t) for t in texts])), "example": texts[0][:300],
            "checker": "rwkv_music.formats.abc.check" if abc_check else "music21 + rewards.bar_length"}


HEADERS = [("G", "6/8", "1/8"), ("D", "4/4", "1/8"), ("A", "3/4", "1/8"), ("Em", "2/4", "1/16"), ("D", "C|", "1/8")]


def composer_quality(n: int, seed: int, constrained: bool) -> dict:
    """What users get: ``Composer.load(mode="abc").compose_abc`` with its default preset, headers cycled."""
    from rwkv_music import Composer, abc_check

    composer = Composer.load(mode="abc")
    parsed = balanced = 0
    for i in range(n):
        key, meter, unit = HEADERS[i % len(HEADERS)]
        piece = composer.compose_abc(n=1, key=key, meter=meter, unit=unit, constrained=constrained,
                                     seed=seed + i)[0]
        ok = abc_check.parse_ok(piece.text)
        parsed += ok
        balanced += bool(ok and abc_check.bar_balance(piece.text).all_balanced)
    return {"tunes": n, "constrained": constrained, "parse_rate": parsed / n, "bar_balance_rate": balanced / n}


def _music21_parses(abc: str) -> bool:
    import music21

    try:
        s = music21.converter.parseData(abc, format="abc")
        return len(s.flatten().notes) > 0
    except Exception:  # music21 raises many types
        return False


# ----------------------------------------------------------------------------- MIDI statistics


def midi_stats(ids: list[int], seconds: float = 20.0) -> dict:
    """Note-ons per second, pitch-class entropy (bits), mean sounding notes at each onset."""
    now, held, onsets, pcs, poly = 0, set(), 0, np.zeros(12), []
    for t in ids:
        if 3 <= t <= 127:
            now += (t - 2) * STEP_MS
            if now > seconds * 1000:
                break
        elif t >= 128:
            rel = t - 128
            key = (rel // 1536, (rel % 1536) // 12)
            if rel % 12:
                held.add(key)
                onsets += 1
                pcs[key[1] % 12] += 1
                poly.append(len(held))
            else:
                held.discard(key)
    dur = max(min(now, seconds * 1000), 1) / 1000
    p = pcs / max(pcs.sum(), 1)
    ent = float(-(p[p > 0] * np.log2(p[p > 0])).sum())
    return {"density": onsets / dur, "pc_entropy": ent, "polyphony": float(np.mean(poly)) if poly else 0.0}


def _summ(rows: list[dict]) -> dict:
    return {k: float(np.median([r[k] for r in rows])) for k in rows[0]}


def midi_quality(model: RWKV7, docs: list[Document], n: int, seed: int, max_len: int) -> dict:
    def over_20s(ids: list[int]) -> bool:
        return sum((t - 2) * STEP_MS for t in ids if 3 <= t <= 127) >= 20000

    pieces = sample_batch(model, [0], n, max_len, {0, 2}, seed, budget_fn=over_20s)
    gen = _summ([midi_stats(p) for p in pieces if p])
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(docs), size=min(n, len(docs)), replace=False)
    data = _summ([midi_stats(docs[i].ids.tolist()) for i in pick])
    return {"pieces": n, "generated_median": gen, "training_median": data,
            "mean_tokens": float(np.mean([len(p) for p in pieces]))}


# ----------------------------------------------------------------------------- musicianship (issue 15)

MUSIC_METRES = ("4/4", "3/4", "2/4", "6/8", "9/8", "C", "C|")
HUMAN_COLLECTIONS = ("oneills1850", "airdsAirs", "ryansMammoth", "miscFolk")  # never essenFolksong


def judge_row(texts: list[str], capped: int | None = None) -> dict:
    """Musicianship measures over tunes (the strict judge's :class:`~rwkv_music.formats.abc.judge.TuneReport`
    of each, and the rhythm of its music)."""
    from rwkv_music.formats.abc.header import music_after_header
    from rwkv_music.formats.abc.judge import judge_tune
    from rwkv_music.train.rewards import rhythm_is_monotone

    reports = [judge_tune(t) for t in texts]
    n = len(reports)
    bodies = [music_after_header(t) for t in texts]
    bars = sum(r.bars for r in reports)
    return {
        "tunes": n,
        "strict": sum(r.strictly_balanced for r in reports) / n if n else float("nan"),
        "section_bars_per_8": 8 * sum(r.section_barlines for r in reports) / bars if bars else float("nan"),
        "max_space_run": max((r.max_space_run for r in reports), default=0),
        "bars_per_line": float(np.mean([r.bars_per_line for r in reports])) if n else float("nan"),
        "regular_parts": sum(r.regular_parts for r in reports) / n if n else float("nan"),
        "ends_on_tonic": sum(r.ends_on_tonic for r in reports) / n if n else float("nan"),
        "length_cap": (capped / n) if (capped is not None and n) else None,
        "mean_bars": bars / n if n else float("nan"),
        "same_bar_x3": sum(r.max_same_bars >= 3 for r in reports) / n if n else float("nan"),
        "one_length": sum(map(rhythm_is_monotone, bodies)) / n if n else float("nan"),
        "short_end": (sum(r.final_note_length is not None and r.final_note_length < Fraction(1, 4) for r in reports)
                      / n if n else float("nan")),
    }


def human_abc_rows() -> dict[str, dict]:
    """The judge's measures on music21's non-Essen ABC tunes, grouped by their written metre."""
    from rwkv_music.formats.abc.check import corpus_tunes

    groups: dict[str, list[str]] = {m: [] for m in MUSIC_METRES}
    for tune in corpus_tunes(HUMAN_COLLECTIONS):
        meter = next((line[2:].strip() for line in tune.text.split("\n") if line.startswith("M:")), None)
        if meter in groups:
            groups[meter].append(tune.text)
    return {m: judge_row(texts) for m, texts in groups.items() if texts}


def composed_abc_rows(composer: Composer, n: int, seed: int, constrained: bool, unit: str = "1/8") -> dict[str, dict]:
    rows = {}
    for meter in MUSIC_METRES:
        key = "D" if meter != "9/8" else "G"
        pieces = composer.compose_abc(n=n, key=key, meter=meter, unit=unit, seed=seed, constrained=constrained)
        capped = sum(p.meta.get("finish_reason") not in ("stop", "eos", "end") for p in pieces)
        rows[meter] = judge_row([p.text for p in pieces], capped)
    return rows


def random_abc_composer(folder: Path) -> Composer:
    from rwkv_music import Composer
    from rwkv_music.model.factory import save_random_checkpoint

    path = save_random_checkpoint(folder / "random-v7-abc.pth", "7", n_layer=2, n_embd=64, vocab_size=128, seed=1)
    return Composer.load(path, mode="abc")


def print_judge_table(title: str, rows: dict[str, dict]) -> None:
    print(f"\n{title}")  # noqa: T201
    print(f"{'metre':<6} {'tunes':>5} {'strict':>7} {'sect/8bars':>10} {'max sp':>6} {'bars/line':>9} "  # noqa: T201
          f"{'4/8/16':>7} {'tonic':>6} {'cap':>6} {'bars':>6} {'bar x3':>6} {'1 len':>6} {'end<q':>6}")
    for meter, r in rows.items():
        cap = "-" if r["length_cap"] is None else f"{r['length_cap']:.0%}"
        print(f"{meter:<6} {r['tunes']:>5} {r['strict']:>7.0%} {r['section_bars_per_8']:>10.2f} "  # noqa: T201
              f"{r['max_space_run']:>6} {r['bars_per_line']:>9.1f} {r['regular_parts']:>7.0%} "
              f"{r['ends_on_tonic']:>6.0%} {cap:>6} {r['mean_bars']:>6.1f} {r['same_bar_x3']:>6.0%} "
              f"{r['one_length']:>6.0%} {r['short_end']:>6.0%}")


def midi_measures(token_lists: list[list[int]], instruments: list[str] | None = None) -> dict:
    """Pooled MIDI measures (percussion bins excluded from the pitch measures)."""
    from rwkv_music.formats.midi.musicality import (
        UNPITCHED_BINS,
        best_diatonic_scale,
        max_polyphony,
        note_events,
        out_of_range,
        pitch_class_entropy,
    )

    shares, entropies, polys, notes, forced, outside = [], [], [], 0, 0, 0
    for ids in token_lists:
        events = note_events(ids)
        pitched = [e.pitch for e in events if e.instrument not in UNPITCHED_BINS]
        if pitched:
            shares.append(best_diatonic_scale(pitched)[0])
            entropies.append(pitch_class_entropy(pitched))
        polys.append(max_polyphony(events))
        notes += len(events)
        forced += sum(e.forced for e in events)
        outside += sum(out_of_range([(e.instrument, e.pitch) for e in events]).values())
    return {
        "pieces": len(token_lists),
        "notes": notes,
        "diatonic_share": float(np.mean(shares)) if shares else float("nan"),
        "pc_entropy": float(np.mean(entropies)) if entropies else float("nan"),
        "forced_release": forced / notes if notes else 0.0,
        "peak_polyphony": float(np.median(polys)) if polys else 0.0,
        "out_of_range": outside / notes if notes else 0.0,
        "instruments": ",".join(instruments) if instruments else "any",
    }


def human_midi_token_lists(n: int, seconds: float) -> list[list[int]]:
    """music21 scores (Bach chorales and other composers) rendered to MIDI and tokenized."""
    import tempfile

    from music21 import corpus

    from rwkv_music.formats.midi.tokenizer import MidiTokenizer

    tok = MidiTokenizer()
    paths = sorted(corpus.getComposer("bach"))[: n]
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, path in enumerate(paths):
            try:
                score = corpus.parse(path)
                target = Path(tmp) / f"{i}.mid"
                score.write("midi", fp=str(target))
                ids = tok.midi_to_ids(target)
            except Exception:  # a score music21 cannot render: skip it
                continue
            out.append(_first_seconds(ids, seconds))
    return out


def _first_seconds(ids: list[int], seconds: float) -> list[int]:
    now, out = 0, []
    for t in ids:
        if 3 <= t <= 127:
            now += (t - 2) * STEP_MS
            if now > seconds * 1000:
                break
        out.append(t)
    return out


def print_midi_table(rows: list[tuple[str, dict]]) -> None:
    print(f"\n{'MIDI source':<44} {'pieces':>6} {'notes':>6} {'diatonic':>8} {'pc H':>5} "  # noqa: T201
          f"{'forced':>7} {'poly':>5} {'out of range':>12}")
    for name, r in rows:
        print(f"{name:<44} {r['pieces']:>6} {r['notes']:>6} {r['diatonic_share']:>8.1%} {r['pc_entropy']:>5.2f} "  # noqa: T201
              f"{r['forced_release']:>7.2%} {r['peak_polyphony']:>5.0f} {r['out_of_range']:>12.2%}")


def _checkpoint(path: Path | None) -> tuple[Path | None, str]:
    """A checkpoint or run folder given on the command line as (checkpoint file, table label);
    (None, "shipped model") without one."""
    if path is None:
        return None, "shipped model"
    path = Path(path) / ckpt.MODEL_FILE if Path(path).is_dir() else Path(path)
    return path, str(path)


def music_report(tunes: int, pieces: int, seconds: float, seed: int, abc_model: Path | None = None,
                 midi_model: Path | None = None) -> dict:
    """All the issue-15 tables in one run (``abc_model`` / ``midi_model``: a checkpoint or run folder
    instead of the shipped one)."""
    import tempfile

    from rwkv_music import Composer

    report: dict = {}
    if tunes:
        report["human_abc"] = human_abc_rows()
        print_judge_table("ABC, music21 non-Essen tunes (human), by written metre", report["human_abc"])
        abc_model, which = _checkpoint(abc_model)
        abc = Composer.load(abc_model, mode="abc")
        for unit in ("1/8", "1/16"):  # the targets cover both units a caller may pass
            for constrained in (True, False):
                name = f"shipped_abc_{'constrained' if constrained else 'unconstrained'}"
                name += "" if unit == "1/8" else "_L16"
                report[name] = composed_abc_rows(abc, tunes, seed, constrained, unit)
                print_judge_table(f"ABC, {which}, {'constrained' if constrained else 'unconstrained'}, "
                                  f"{tunes} tunes per metre (L:{unit})", report[name])
        with tempfile.TemporaryDirectory() as tmp:
            report["random_abc_constrained"] = composed_abc_rows(random_abc_composer(Path(tmp)), tunes, seed, True)
        print_judge_table(f"ABC, random-weights RWKV-7, constrained, {tunes} tunes per metre",
                          report["random_abc_constrained"])
    if pieces:
        midi_model, which = _checkpoint(midi_model)
        midi = Composer.load(midi_model, mode="midi")
        rows = [("music21 Bach, rendered (human)", midi_measures(human_midi_token_lists(pieces, seconds)))]
        for instruments in (None, ["piano", "violin"]):
            made = midi.compose_midi(n=pieces, seconds=seconds, instruments=instruments, seed=seed)
            label = f"{which}, default preset, {instruments and ','.join(instruments) or 'any instrument'}"
            rows.append((label, midi_measures([p.tokens for p in made], instruments)))
        report["midi"] = dict(rows)
        print_midi_table(rows)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--music", action="store_true", help="Print the issue-15 musicianship tables and exit.")
    ap.add_argument("--tunes", type=int, default=30, help="--music: ABC tunes per metre and source.")
    ap.add_argument("--pieces", type=int, default=16, help="--music: MIDI pieces per source.")
    ap.add_argument("--seconds", type=float, default=30.0, help="--music: seconds per MIDI piece.")
    ap.add_argument("--abc-tunes", type=int, default=100)
    ap.add_argument("--midi-pieces", type=int, default=50)
    ap.add_argument("--abc-max-len", type=int, default=1024)
    ap.add_argument("--midi-max-len", type=int, default=1500)
    ap.add_argument("--midi-data", type=Path, default=None, help="Rendered MIDI folder (default: render cache).")
    ap.add_argument("--abc-model", type=Path, default=None,
                    help="Run folder (or, with --music, a checkpoint) to test instead of the ABC default.")
    ap.add_argument("--midi-model", type=Path, default=None,
                    help="Run folder (or, with --music, a checkpoint) to test instead of the MIDI default.")
    ap.add_argument("--composer-tunes", type=int, default=0,
                    help="Also compose this many tunes through Composer (5 headers), unconstrained and constrained.")
    ap.add_argument("--skip-abc", action="store_true")
    ap.add_argument("--skip-midi", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.music:
        report = music_report(args.tunes, args.pieces, args.seconds, args.seed, args.abc_model, args.midi_model)
        print(json.dumps(report, indent=1, default=str))  # noqa: T201
        return
    report = {}
    if not args.skip_abc:
        from rwkv_music.train.data import abc_documents

        h = heldout("abc", 5, abc_documents(), args.abc_model)
        model = h.pop("model")
        report["abc_heldout"] = h
        print(f"ABC  held-out: model {h['model_bits']:.4f} bits/token vs char 5-gram {h['5gram_bits']:.4f}"  # noqa: T201
              f" ({h['val_docs']} tunes, {h['val_tokens']} tokens)")
        if args.abc_tunes:
            q = abc_quality(model, args.abc_tunes, args.seed, args.abc_max_len)
            report["abc_generation"] = q
            print(f"ABC  {q['tunes']} unconstrained tunes: parse rate {q['parse_rate']:.2%}, "  # noqa: T201
                  f"bar-balance rate {q['bar_balance_rate']:.2%}, with no overfull bar either "
                  f"{q['strict_bar_balance_rate']:.2%} ({q['checker']}), mean {q['mean_chars']:.0f} characters")
        for constrained in (False, True) if args.composer_tunes else ():
            c = composer_quality(args.composer_tunes, args.seed, constrained)
            report[f"abc_composer_{'constrained' if constrained else 'unconstrained'}"] = c
            print(f"ABC  {c['tunes']} tunes via Composer.compose_abc (headers {', '.join(m for _, m, _ in HEADERS)}), "  # noqa: T201
                  f"{'constrained' if constrained else 'unconstrained'}: parse rate {c['parse_rate']:.2%}, "
                  f"bar-balance rate {c['bar_balance_rate']:.2%}")
    if not args.skip_midi:
        from rwkv_music.train.midi_data import midi_documents

        docs = midi_documents([args.midi_data] if args.midi_data else None)
        h = heldout("midi", 3, docs, args.midi_model)
        model = h.pop("model")
        report["midi_heldout"] = h
        print(f"MIDI held-out: model {h['model_bits']:.4f} bits/token vs token 3-gram {h['3gram_bits']:.4f}"  # noqa: T201
              f" ({h['val_docs']} pieces, {h['val_tokens']} tokens)")
        if args.midi_pieces:
            q = midi_quality(model, docs, args.midi_pieces, args.seed, args.midi_max_len)
            report["midi_generation"] = q
            g, d = q["generated_median"], q["training_median"]
            print(f"MIDI {q['pieces']} pieces x 20 s (medians)  generated | training data")  # noqa: T201
            for k, label in (("density", "notes/s"), ("pc_entropy", "pitch-class entropy"), ("polyphony", "polyphony")):
                print(f"     {label:<20} {g[k]:8.3f} | {d[k]:8.3f}")  # noqa: T201
    print(json.dumps(report, indent=1, default=str))  # noqa: T201


if __name__ == "__main__":
    main()
