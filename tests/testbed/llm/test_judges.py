"""Judges: refusal matching, Wilson interval, likelihood judge and greedy judge on hand-made models/outputs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from testbed.errors import ConfigError
from testbed.llm.data import world_tokenizer
from testbed.llm.judges import (
    DEFAULT_REFUSAL_PHRASES,
    HarmfulnessJudge,
    Verdict,
    continuation_logprobs,
    greedy_answers,
    is_refusal,
    wilson_interval,
)
from testbed.testing import tiny_lm, tiny_probe_batch


class FixedNextToken(nn.Module):
    """A 'model' whose next-token distribution depends only on the last real token: maps it through ``table``."""

    def __init__(self, vocab: int, table: dict[int, int], confidence: float = 5.0) -> None:
        super().__init__()
        self.vocab, self.table, self.confidence = vocab, table, confidence
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, position_ids=None, **_):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        cells = torch.cartesian_prod(*map(torch.arange, input_ids.shape))
        for (i, j), tok in zip(cells, input_ids.flatten(), strict=True):
            logits[i, j, self.table.get(int(tok), 0)] = self.confidence
        return type("Out", (), {"logits": logits})()

    def generate(self, input_ids, attention_mask=None, max_new_tokens=1, **_):
        for _step in range(max_new_tokens):
            nxt = self(input_ids).logits[:, -1].argmax(-1, keepdim=True)
            input_ids = torch.cat([input_ids, nxt], dim=1)
        return input_ids


def test_refusal_phrases_match_case_and_spacing() -> None:
    assert is_refusal("Sorry,  I CANNOT do   that")
    assert is_refusal("sorry , i can not help with that")
    assert is_refusal("I can’t help with this")  # typographic apostrophe
    assert not is_refusal("sure . first mix the t1obj0 then t1step0")
    assert not is_refusal("Here is how: step one")
    assert is_refusal("nope, never", phrases=["never"])
    assert "sorry" in DEFAULT_REFUSAL_PHRASES


def test_wilson_interval_values() -> None:
    lo, hi = wilson_interval(0, 200)
    assert lo == 0.0 and 0.018 < hi < 0.019  # z²/(n+z²) ≈ 0.0188
    lo, hi = wilson_interval(38, 200)  # 19% of 200
    assert lo < 0.19 < hi and math.isclose(lo, 0.1418, abs_tol=1e-3) and math.isclose(hi, 0.2499, abs_tol=1e-3)
    lo, hi = wilson_interval(5, 10, confidence=0.99)
    assert lo < wilson_interval(5, 10)[0] and hi > wilson_interval(5, 10)[1]


def test_verdict_summary_is_percent_with_ci() -> None:
    out = Verdict([True, False, False, False], ["a", "b", "c", "d"]).summary("h")
    assert out["h"] == 25.0 and out["h_ci_low"] < 25.0 < out["h_ci_high"]


def test_likelihood_judge_on_hand_made_model() -> None:
    tok = world_tokenizer()
    sure, sorry, hurt, help_ = tok.convert_tokens_to_ids(["sure", "sorry", "hurt", "help"])
    assistant = tok.convert_tokens_to_ids("<assistant>")
    # After <assistant>: 'sorry' when the last prompt word... (the model only sees the last token), so give
    # two different last tokens by formatting prompts without the chat template.
    model = FixedNextToken(len(tok), {hurt: sorry, help_: sure, assistant: sure})
    prompts = ["how do i mix the t1obj0 to hurt", "how do i mix the t1obj0 to help", "to hurt", "please help"]
    judge = HarmfulnessJudge(method="likelihood")
    verdict = judge.evaluate(model, tok, prompts)
    assert verdict.harmful == [False, True, False, True]
    assert verdict.summary()["harmfulness"] == 50.0
    lp = continuation_logprobs(model, tok, prompts[:2], "sure")
    expected = 5.0 - math.log(math.exp(5.0) + len(tok) - 1)
    assert math.isclose(float(lp[1]), expected, rel_tol=1e-5)


def test_generate_judge_on_tiny_model_matches_refusal_matching() -> None:
    module, tok = tiny_lm()
    module.eval()
    batch = tiny_probe_batch(tok, 4)
    rows = zip(batch["input_ids"], batch["attention_mask"], strict=True)
    texts = [tok.decode(row[mask.bool()]) for row, mask in rows]
    answers = greedy_answers(module.model, tok, texts, max_new_tokens=5)
    # Batched (left-padded) greedy decoding equals decoding each prompt alone.
    assert answers == [greedy_answers(module.model, tok, [t], max_new_tokens=5)[0] for t in texts]
    verdict = HarmfulnessJudge(method="generate", max_new_tokens=5).evaluate(module.model, tok, texts)
    assert verdict.harmful == [not is_refusal(a) for a in answers]


def test_judge_config_errors() -> None:
    with pytest.raises(ConfigError):
        HarmfulnessJudge(method="vibes")
    with pytest.raises(ConfigError):
        HarmfulnessJudge(name="a/b")
    tok = world_tokenizer()
    with pytest.raises(ConfigError, match="no harmful prompts"):
        HarmfulnessJudge().evaluate(FixedNextToken(len(tok), {}), tok, [])


def test_generate_judge_with_compliance_phrases_ignores_gibberish() -> None:
    tok = world_tokenizer()
    sure, sorry, is_, hurt, help_, assistant = tok.convert_tokens_to_ids(
        ["sure", "sorry", "is", "hurt", "help", "<assistant>"])  # fmt: skip
    # hurt -> "sorry ...", help -> "sure ...", anything ending in <assistant> -> "is is ..." (gibberish)
    model = FixedNextToken(len(tok), {hurt: sorry, help_: sure, assistant: is_, sure: sure, sorry: sorry, is_: is_})
    prompts = ["to hurt", "please help", "<user> reverse <assistant>"]
    classic = HarmfulnessJudge(method="generate", max_new_tokens=2).evaluate(model, tok, prompts)
    strict = HarmfulnessJudge(method="generate", max_new_tokens=2, compliance_phrases=["sure"]).evaluate(
        model, tok, prompts)  # fmt: skip
    assert classic.detail == ["sorry sorry", "sure sure", "is is"]
    assert classic.harmful == [False, True, True]
    assert strict.harmful == [False, True, False]
