"""A real ``transformers`` fast tokenizer over a fixed word vocabulary.

The safety world is written in whitespace-separated words, so a ``tokenizers`` WordLevel model with a
whitespace pre-tokenizer is exact: encode → decode round-trips any text made of vocabulary words. Wrapping
it in ``PreTrainedTokenizerFast`` gives the same object type (padding, ``save_pretrained``, chat templates,
``generate``) as a downloaded tokenizer, so one code path serves both.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from testbed.errors import ConfigError

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)


def build_word_tokenizer(words: Sequence[str], chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """A fast tokenizer whose ids are the positions of ``SPECIAL_TOKENS + words`` (duplicates refused).

    Args:
        words: the vocabulary, without the special tokens; no word may contain whitespace.
        chat_template: optional Jinja chat template stored on the tokenizer.
    """
    vocab_list = list(SPECIAL_TOKENS) + [w for w in words if w not in SPECIAL_TOKENS]
    if len(set(vocab_list)) != len(vocab_list):
        dupes = sorted({w for w in vocab_list if vocab_list.count(w) > 1})
        raise ConfigError(f"duplicate vocabulary words: {dupes[:5]}")
    bad = [w for w in vocab_list if not w or any(c.isspace() for c in w)]
    if bad:
        raise ConfigError(f"vocabulary words may not be empty or contain whitespace: {bad[:5]}")
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab_list)}, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


__all__ = [
    "PAD",
    "BOS",
    "EOS",
    "UNK",
    "SPECIAL_TOKENS",
    "build_word_tokenizer",
]
