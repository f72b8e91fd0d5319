"""The safety world: tokenizer round trip, family split, determinism, and what each phase contains."""

from __future__ import annotations

import pytest

from testbed.errors import ConfigError
from testbed.llm.data import world_tokenizer
from testbed.llm.tokenizer import build_word_tokenizer
from testbed.llm.world import BENIGN_INTENTS, HARM_INTENTS, SafetyWorld, WorldConfig

SMALL = WorldConfig(pretrain_size=600, align_size=300, finetune_size=200, eval_size=60)


def _families(examples) -> set[str]:
    return {e.family for e in examples}


def test_tokenizer_round_trips_every_corpus() -> None:
    tok = world_tokenizer()
    world = SafetyWorld(SMALL)
    texts = [e.prompt + " " + e.response for e in world.pretrain()[:50] + world.align()[:50] + world.finetune()[:20]]
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == text
    chat = tok.apply_chat_template([{"role": "user", "content": "reverse the words red cat"}],
                                   add_generation_prompt=True, tokenize=False)  # fmt: skip
    assert chat.split() == ["<user>", "reverse", "the", "words", "red", "cat", "<assistant>"]


def test_tokenizer_refuses_duplicates_and_maps_unknown_words() -> None:
    with pytest.raises(ConfigError, match="duplicate"):
        build_word_tokenizer(["a", "b", "a"])
    tok = build_word_tokenizer(["a", "b"])
    assert tok("a zzz b", add_special_tokens=False)["input_ids"] == [4, tok.unk_token_id, 5]


def test_no_heldout_family_appears_in_any_training_phase() -> None:
    world = SafetyWorld(SMALL)
    heldout = {f.name for f in world.heldout_families}
    assert len(heldout) == SMALL.heldout_harmful + SMALL.heldout_benign
    for corpus in (world.pretrain(), world.align()):
        assert not _families(corpus) & heldout
    assert _families(world.prompts("heldout_harmful")) <= heldout
    assert all(name.startswith("harmful/") for name in _families(world.prompts("heldout_harmful")))
    # Held-out topics are still seen in training through their other kind, so only the combination is new.
    held_topics = {f.topic for f in world.heldout_families}
    assert held_topics <= {int(name.split("/t")[1]) for name in _families(world.pretrain())}


def test_history_phases_have_their_behaviour() -> None:
    world = SafetyWorld(SMALL)
    assert all(e.response.startswith("sure .") for e in world.pretrain())
    pre_harm = [e for e in world.pretrain() if e.family.startswith("harmful/")]
    assert 0.35 < len(pre_harm) / SMALL.pretrain_size < 0.65
    for e in world.align():
        assert e.response.startswith("sorry ,") == e.family.startswith("harmful/")
    for e in world.finetune():
        assert not any(i in e.prompt for i in HARM_INTENTS + BENIGN_INTENTS)
        words = e.prompt.split()[3:]
        assert e.response.split()[-len(words) :] == words[::-1]


def test_harmfulness_is_the_shared_intent_feature() -> None:
    world = SafetyWorld(SMALL)
    for which, intents in (("heldout_harmful", HARM_INTENTS), ("train_benign", BENIGN_INTENTS)):
        for e in world.prompts(which, 40):
            assert any(e.prompt.endswith(i) for i in intents)


def test_world_is_deterministic_and_seeded() -> None:
    a, b = SafetyWorld(SMALL), SafetyWorld(SMALL)
    assert a.pretrain() == b.pretrain() and a.heldout_families == b.heldout_families
    other = SafetyWorld(WorldConfig(world_seed=1, pretrain_size=600))
    assert other.pretrain() != a.pretrain()


def test_finetune_val_word_lists_are_disjoint_from_train() -> None:
    world = SafetyWorld(SMALL)
    train = {e.prompt for e in world.finetune("train")}
    assert not train & {e.prompt for e in world.finetune("val")}


@pytest.mark.parametrize("bad", [{"n_topics": 1}, {"heldout_harmful": 12, "heldout_benign": 12}, {"align_size": 0},
                                 {"align_harmful_fraction": 1.5}])  # fmt: skip
def test_bad_world_config_is_config_error(bad) -> None:
    with pytest.raises(ConfigError):
        SafetyWorld(WorldConfig(**bad))
