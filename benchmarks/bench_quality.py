"""Quality of the shipped default models against simple baselines (issue 8).

* Held-out loss (bits/token) of each default on its own validation split (recorded in the
  asset's ``train_meta.json``) next to an interpolated Witten–Bell n-gram fitted on the same
  training split: character 5-gram for ABC, token 3-gram for MIDI.
* ABC: N unconstrained tunes (prompt ``[2]``, T 1.0, top-k 8, top-p 0.8 as in FORMATS D4):
  music21 parse rate and bar-balance rate (``rwkv_music.formats.abc.check`` when present).
* MIDI: N pieces of ~20 s (prompt ``[0]``, FORMATS D3 sampler without penalties): note density,
  pitch-class entropy and polyphony, beside the same statistics of 20-s openings of training pieces.

Run: ``python benchmarks/bench_quality.py [--abc-tunes 100] [--midi-pieces 50] [--skip-midi]``
(a few minutes on one CPU core with the defaults; shrink the counts for a quick look).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from rwkv_music.assets import default_model_dir, default_model_path
from rwkv_music.train import checkpoint as ckpt
from rwkv_music.train.data import TokenStream, split_documents
from rwkv_music.train.ngram import WittenBellNGram
from rwkv_music.train.trainer import evaluate_bits

STEP_MS = 8  # FORMATS C1 wait step


def sample_batch(model, prompt: list[int], n: int, max_len: int, stop: set[int], seed: int,
                 top_k: int = 8, top_p: float = 0.8, budget_fn=None) -> list[list[int]]:
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


def heldout(mode: str, order: int, docs, folder: Path | None = None) -> dict:
    folder = Path(folder) if folder else default_model_dir(mode)
    meta = json.loads((folder / ckpt.META_FILE).read_text())
    opts = meta["options"]
    train_docs, val_docs = split_documents(docs, opts["val_fraction"], opts["seed"])
    tr, va = TokenStream(train_docs), TokenStream(val_docs)
    path = folder / ckpt.MODEL_FILE if folder != default_model_dir(mode) else default_model_path(mode)
    model = ckpt.model_from_checkpoint(path).eval()
    t0 = time.time()
    model_bits = evaluate_bits(model, va, opts["ctx"], 8, "cpu")
    ngram_bits = WittenBellNGram(order, model.config.vocab_size).fit(tr.ids).bits(va.ids, va.mask)
    return {"mode": mode, "val_docs": len(val_docs), "val_tokens": len(va), "model_bits": model_bits,
            f"{order}gram_bits": ngram_bits, "seconds": time.time() - t0, "model": model}


# ----------------------------------------------------------------------------- ABC generation


def abc_quality(model, n: int, seed: int, max_len: int) -> dict:
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


def midi_quality(model, docs, n: int, seed: int, max_len: int) -> dict:
    def over_20s(ids: list[int]) -> bool:
        return sum((t - 2) * STEP_MS for t in ids if 3 <= t <= 127) >= 20000

    pieces = sample_batch(model, [0], n, max_len, {0, 2}, seed, budget_fn=over_20s)
    gen = _summ([midi_stats(p) for p in pieces if p])
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(docs), size=min(n, len(docs)), replace=False)
    data = _summ([midi_stats(docs[i].ids.tolist()) for i in pick])
    return {"pieces": n, "generated_median": gen, "training_median": data,
            "mean_tokens": float(np.mean([len(p) for p in pieces]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--abc-tunes", type=int, default=100)
    ap.add_argument("--midi-pieces", type=int, default=50)
    ap.add_argument("--abc-max-len", type=int, default=1024)
    ap.add_argument("--midi-max-len", type=int, default=1500)
    ap.add_argument("--midi-data", type=Path, default=None, help="Rendered MIDI folder (default: render cache).")
    ap.add_argument("--abc-model", type=Path, default=None, help="Run folder to test instead of the ABC default.")
    ap.add_argument("--midi-model", type=Path, default=None, help="Run folder to test instead of the MIDI default.")
    ap.add_argument("--composer-tunes", type=int, default=0,
                    help="Also compose this many tunes through Composer (5 headers), unconstrained and constrained.")
    ap.add_argument("--skip-abc", action="store_true")
    ap.add_argument("--skip-midi", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
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
