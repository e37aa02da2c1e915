"""REINFORCE details: per-bar ("local") credit, the bar-balance rewards and the CLI run folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from rwkv_music.cli.train import train as train_command
from rwkv_music.train import checkpoint as ckpt
from rwkv_music.train.init_v7 import init_rwkv7
from rwkv_music.train.model_v7 import RWKV7, make_config
from rwkv_music.train.reinforce import (
    CALLER_KEYS,
    ReinforceOptions,
    advantages,
    caller_prompt_texts,
    reinforce_step,
    sample_rollouts,
)
from rwkv_music.train.rewards import (
    MONOTONE_PENALTY,
    abc_bar_balance_local_reward,
    abc_bar_balance_reward,
    abc_strict_reward,
    abc_strict_rhythm_reward,
    reward_by_name,
    rhythm_is_monotone,
)

# 2/4 in eighths: a bar is 4 units.  Bar 1 is a pickup (never judged), bar 3 is one unit short.
TUNE = "L:1/8\nM:2/4\nK:G\nA|Bcde|fga|Bcde|\n"


def _ids(text: str) -> list[int]:
    return [2] + [ord(c) for c in text]


def test_local_bar_reward_marks_every_token_of_each_judged_bar() -> None:
    ids = _ids(TUNE)
    local = abc_bar_balance_local_reward(ids)
    text = "\0" + TUNE
    by_bar = {}
    for ch, r in zip(text, local):
        by_bar.setdefault(r, []).append(ch)
    assert "".join(by_bar[1.0]) == "Bcde|Bcde|"  # two balanced bars, barlines included
    assert "".join(by_bar[-1.0]) == "fga|"  # the short bar
    assert "A" in by_bar[0.0]  # the pickup is not judged
    # The barline-only reward judges the same bars, at their barlines.
    point = abc_bar_balance_reward(ids)
    assert [r for r in point if r] == [1.0, -1.0, 1.0]
    assert reward_by_name("abc-bar-balance-local") is abc_bar_balance_local_reward


def test_local_advantages_push_only_judged_tokens_around_their_mean() -> None:
    rewards = torch.tensor([[0.0, 1.0, 1.0, -1.0], [1.0, 0.0, 0.0, 0.0]])
    valid = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    adv = advantages(rewards, valid, "local")
    judged = rewards != 0
    assert torch.all(adv[~judged] == 0)
    assert adv[judged].sum().abs() < 1e-6  # baseline = mean reward of judged tokens
    assert adv[0, 1] > 0 > adv[0, 3]
    with pytest.raises(ValueError):
        ReinforceOptions(credit="nonsense")


def test_local_credit_moves_probability_towards_rewarded_tokens() -> None:
    model = init_rwkv7(RWKV7(make_config(2, 64, 128, head_size=32)), seed=5)
    prompt = [2]

    def reward(ids: list[int]) -> list[float]:  # +1 for ids below 64, -1 above
        return [1.0 if t < 64 else -1.0 for t in ids]

    def p_low() -> float:
        with torch.no_grad():
            logits, _ = model(torch.tensor([prompt]))
        return float(torch.softmax(logits[0, -1], -1)[:64].sum())

    before = p_low()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    # Rollouts of one token, so the only decision is the one after the prompt.
    ropts = ReinforceOptions(batch_size=32, gen_len=1, stop_tokens=(), credit="local")
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        reinforce_step(model, opt, prompt, reward, ropts, gen)
    assert p_low() > before + 0.2


class _EosAfterThree(torch.nn.Module):
    """Row b emits token 3 (stop) from its (b+1)-th step on; token 70 before."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(4, 1)

    def forward(self, x: torch.Tensor, state: int | None = None, chunked: bool = True) -> tuple[torch.Tensor, int]:
        steps = 0 if state is None else state + 1
        logits = torch.full((x.shape[0], x.shape[1], 128), -30.0)
        for b in range(x.shape[0]):
            logits[b, :, 3 if steps >= b else 70] = 30.0
        return logits, steps


def test_rollouts_stop_once_every_row_has_stopped() -> None:
    gen = torch.Generator().manual_seed(0)
    out = sample_rollouts(_EosAfterThree(), [2], 3, 50, 1.0, gen, stop_tokens=(3,))
    assert out.shape == (3, 3)  # the last row stops at its third token
    assert out.tolist() == [[3, 3, 3], [70, 3, 3], [70, 70, 3]]
    full = sample_rollouts(_EosAfterThree(), [2], 3, 5, 1.0, gen)  # no stop tokens: full length
    assert full.shape == (3, 5)


def test_cli_reinforce_run_folder_records_options_and_loads(tmp_path: Path) -> None:
    import rwkv_music

    init = init_rwkv7(RWKV7(make_config(2, 64, 128, head_size=32)), seed=2)
    init_dir = tmp_path / "sft"
    ckpt.save_model(init, init_dir / ckpt.MODEL_FILE)
    earlier = {"reward": "token:65", "steps_done": 3}  # the init was itself a REINFORCE run
    (init_dir / ckpt.META_FILE).write_text(json.dumps({"options": {"seed": 7, "val_fraction": 0.05},
                                                       "reinforce": earlier}))
    out = tmp_path / "rl"
    result = CliRunner().invoke(train_command, [
        "--objective", "reinforce", "--mode", "abc", "--init", str(init_dir / ckpt.MODEL_FILE),
        "--out", str(out), "--reward", "abc-bar-balance-local", "--credit", "local", "--kl-coef", "0.1",
        "--prompt", "L:1/8\nM:2/4\nK:G\n", "--prompt", r"L:1/8\nM:6/8\nK:D\n",  # real and escaped newlines
        "--steps", "2", "--batch-size", "2", "--gen-len", "8"])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / ckpt.META_FILE).read_text())
    assert meta["options"]["seed"] == 7  # the supervised run's split is kept
    rl = meta["reinforce"]
    assert rl["steps_done"] == 2 and rl["reward"] == "abc-bar-balance-local"
    assert rl["prompt"] == [[2] + [ord(c) for c in f"L:1/8\nM:{m}\nK:{k}\n"] for m, k in (("2/4", "G"), ("6/8", "D"))]
    assert meta["reinforce_previous"] == [earlier]
    assert rl["options"]["credit"] == "local" and rl["options"]["kl_coef"] == 0.1
    backend = rwkv_music.load_model(out / ckpt.MODEL_FILE)
    assert backend.info.vocab_size == 128


HEADER = "S:2\nL:1/8\nM:2/4\nK:G\n"


def _strict(music: str, end: bool = True) -> list[tuple[str, float]]:
    ids = _ids(HEADER) + [ord(c) for c in music] + ([3] if end else [])
    rewards = abc_strict_reward(ids)[len(_ids(HEADER)):]
    return list(zip(music + ("$" if end else ""), rewards))


def test_strict_reward_judges_bars_like_the_judge_and_scores_the_ending() -> None:
    # pickup A + last bar dBG make one bar; fga is short wherever it stands
    marks = _strict("A|Bcde|fga|Bcde|dBG:|\n")
    by_char = "".join("+" if r > 0 else "-" if r < 0 else "0" for _, r in marks)
    assert by_char[:16] == "+" * 7 + "-" * 4 + "+" * 5
    # final repeat, one 4-bar part, last note G = tonic; but one section where S:2 asks for two
    assert marks[-1] == ("$", pytest.approx(1 + 1 / 6))  # ending always earns more than not: 1 + score / 2
    assert all(r == -0.5 for c, r in marks[16:21])  # final bar: -1 closing one section early, +0.5 on the tonic
    # || exempts nothing (the constraint's old loophole): a 2-unit bar before it is wrong
    marks = dict(enumerate(r for _, r in _strict("GABc|dB||GABc|dBGB|cAFA|G4|]\n")))
    assert marks[5] == marks[6] == -1.5  # (-1 short, -0.5 for closing a 2-bar part)
    # a tune cut by the length cap: its unfinished bar penalised, its balanced bars earn nothing, no end
    # score, and every token loses 0.5
    cut = _strict("GABc|dBGB|cA", end=False)
    assert [r for _, r in cut] == [-0.5] * 10 + [-1.5, -1.5]
    assert [r for _, r in _strict("GABc|dB|GB", end=False)][:8] == [-0.5] * 5 + [-1.5] * 3  # short bar still wrong
    # a run of spaces beyond two
    spaced = _strict("GABc|d    BGB|cAFA|G4|]\n")
    assert [r for c, r in spaced[5:10]] == [1.0, 1.0, 1.0, -1.0, -1.0]
    # S:2 asks for two sections: music after the second one closes is wrong, and so is stopping after one
    two = "GABc|dBGB|cAFA|G4:|\nBcde|dBGB|cAFA|G4|]\n"
    over = _strict(two + "GABc|dBGB|", end=False)
    assert [r for _, r in over[len(two):]] == [-1.5] * 10
    assert _strict(two)[-1] == ("$", 1.5)
    one = _strict("GABc|dBGB|cAFA|G4|]\n")  # one section of two: a lower end score, and the final bar wrong
    assert one[-1][1] == pytest.approx(1 + 1 / 6)
    assert [r for _, r in one[15:19]] == [-0.5] * 4
    assert _strict(two)[35][1] == 2.0  # balanced, on the tonic, closing a 4-bar part
    # the bar closing each part: +0.5 for a part of 4, 8 or 16 bars, -0.5 for any other length
    assert {r for _, r in _strict(two)[15:19]} == {1.5}
    assert {r for _, r in _strict("GABc|dBGB|G4:|\nBcde|dBGB|cAFA|G4|]\n")[10:14]} == {0.5}
    # bars past 16 per requested section are penalised even when balanced (no endless tunes)
    endless = [r for _, r in _strict("GABc|" * 40, end=False)]
    assert endless[: 24 * 5] == [-0.5] * (24 * 5) and set(endless[24 * 5:]) == {-1.5}
    # and past the 24th bar of one section, even when the tune ends within 16 bars per requested section
    long_first = "GABc|" * 27 + "dBGB||" + "GABc|" * 3 + "G4|]\n"
    by_bar = [r for c, r in _strict(long_first) if c == "|"]
    assert by_bar[:24] == [1.0] * 24 and by_bar[24:27] == [-1.0] * 3 and set(by_bar[29:-1]) == {1.0}
    assert by_bar[27:29] == [-1.5] * 2  # the || closing a 28-bar part: -0.5 more, not 4, 8 or 16 bars
    assert reward_by_name("abc-strict") is abc_strict_reward


def test_strict_reward_agrees_with_the_judge_on_human_tunes() -> None:
    from rwkv_music.formats.abc.judge import judge_tune
    from rwkv_music.train.data import abc_documents, music21_abc_files

    docs = abc_documents(music21_abc_files(("miscFolk",)))[:40]
    for doc in docs:
        ids = [int(t) for t in doc.ids]
        text = bytes(t for t in ids if t > 3).decode("ascii")
        rewards = abc_strict_reward(ids)
        bars = [r for r, t in zip(rewards, ids) if t == ord("|") and r]  # barlines closing bars with music
        if judge_tune(text).strictly_balanced:
            assert min(bars) > 0, text
        else:
            assert min(bars) < 0, text


def test_caller_prompts_cover_every_common_header() -> None:
    texts = caller_prompt_texts()
    assert len(texts) == len(set(texts)) == 7 * 2 * len(CALLER_KEYS)
    assert "S:2\nL:1/16\nM:C|\nK:D\n" in texts and "S:2\nL:1/8\nM:9/8\nK:Em\n" in texts


def test_cli_strict_reinforce_over_caller_prompts(tmp_path: Path) -> None:
    init = init_rwkv7(RWKV7(make_config(1, 64, 128, head_size=32)), seed=3)
    ckpt.save_model(init, tmp_path / "sft" / ckpt.MODEL_FILE)
    out = tmp_path / "rl"
    result = CliRunner().invoke(train_command, [
        "--objective", "reinforce", "--mode", "abc", "--init", str(tmp_path / "sft" / ckpt.MODEL_FILE),
        "--out", str(out), "--reward", "abc-strict", "--credit", "local", "--caller-prompts",
        "--steps", "2", "--batch-size", "2", "--gen-len", "8"])
    assert result.exit_code == 0, result.output
    rl = json.loads((out / ckpt.META_FILE).read_text())["reinforce"]
    assert rl["reward"] == "abc-strict" and rl["prompt"]["texts"] == caller_prompt_texts()


def test_training_model_runs_under_bf16_autocast_with_an_fp32_state() -> None:
    # CUDA training and rollouts run under bf16 autocast; CPU autocast applies the same casting
    # rules, so this catches a WKV solve or state that autocast would turn into bf16.
    model = init_rwkv7(RWKV7(make_config(2, 128, 128, head_size=64)), seed=0)
    x = torch.randint(4, 128, (2, 40), generator=torch.Generator().manual_seed(1))
    ref, _ = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, state = model(x)
        out.float().sum().backward()
        _, stepped = model(x[:, :1], state, chunked=False)
    assert all(s[1].dtype == torch.float32 for s in state + stepped)
    assert torch.allclose(out.float(), ref, atol=0.05 * float(ref.detach().abs().max()))
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(grads) > 20 and all(torch.isfinite(g).all() for g in grads)  # (layer 0 has no v0/v1/v2 use)


def test_rhythm_reward_docks_only_finished_tunes_whose_notes_all_have_one_length() -> None:
    head = "S:2\nL:1/8\nM:3/4\nK:D\n"
    crotchets = "d2 e2 f2|e2 d2 c2|d2 e2 f2|a2 f2 d2:|\nf2 e2 d2|c2 d2 e2|f2 e2 d2|d2 d2 d2|]"
    ids = _ids(head + crotchets) + [3]
    strict, rhythm = abc_strict_reward(ids), abc_strict_rhythm_reward(ids)
    music = [i for i, t in enumerate(ids) if i > len(head) and t > 3 and chr(t) not in " \n"]
    assert all(rhythm[i] == strict[i] - MONOTONE_PENALTY for i in music)
    assert rhythm[-1] == strict[-1] > 0  # the end token keeps its reward
    assert reward_by_name("abc-strict-rhythm") is abc_strict_rhythm_reward
    doubled = reward_by_name("abc-strict-rhythm:1.0")(ids)
    assert all(doubled[i] == strict[i] - 1.0 for i in music)
    for varied in (crotchets.replace("d2 e2 f2|e2", "d3 e f2|e2", 1),  # a dotted crotchet and a quaver
                   crotchets.replace("a2 f2 d2", "a>f f2 d2", 1),  # broken rhythm
                   crotchets.replace("c2 d2 e2", "(3cde d2 e2", 1)):  # a triplet
        assert not rhythm_is_monotone(varied)
        ids = _ids(head + varied) + [3]
        assert abc_strict_rhythm_reward(ids) == abc_strict_reward(ids)
    unfinished = _ids(head + crotchets)  # cut by the cap: abc-strict's own penalty, nothing more
    assert abc_strict_rhythm_reward(unfinished) == abc_strict_reward(unfinished)


def test_human_tunes_are_almost_never_rhythmically_monotone() -> None:
    from rwkv_music.train.data import abc_documents, music21_abc_files

    docs = abc_documents(music21_abc_files(("miscFolk", "airdsAirs")))[:300]
    bodies = [bytes(t for t in doc.ids if t > 3).decode("ascii").split("\nK:", 1)[-1] for doc in docs]
    monotone = sum(rhythm_is_monotone(body.split("\n", 1)[-1]) for body in bodies)
    assert len(bodies) == 300 and monotone <= 6  # (12 of the 4,433 non-Essen tunes are, none in 3/4)
