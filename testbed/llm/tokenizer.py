"""A real ``transformers`` fast tokenizer over a fixed word vocabulary.

The safety world is written in whitespace-separated words, so a ``tokenizers`` WordLevel model with a
whitespace pre-tokenizer is exact: encode → decode round-trips any text made of vocabulary words. Wrapping
it in ``PreTrainedTokenizerFast`` gives the same object type (padding, ``save_pretrained``, chat templates,
``generate``) as a downloaded tokenizer, so one code path serves both.

Local tokenizer folders are loaded here too, and checked: a folder whose ``tokenizer_config.json`` names the generic
fast class is read exactly as its ``tokenizer.json`` says (``AutoTokenizer`` may otherwise substitute the
architecture's own class named by a ``config.json`` beside it), and ``tokenizer_problem`` compares a tokenizer with
the ``tokenizer.json`` it came from, with itself (encode → decode round trip of known text) and with the model
(ids inside the embedding).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from testbed.errors import CheckpointError, ConfigError

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


GENERIC_FAST_CLASSES = ("PreTrainedTokenizerFast", "TokenizersBackend")


def load_tokenizer(path: str) -> Any:
    """A tokenizer from a local folder (no network, no remote code); pad defaults to EOS.

    Raises:
        CheckpointError: no such folder, no loadable tokenizer, or one that encodes differently from the folder's
            ``tokenizer.json``.
    """
    from transformers import AutoTokenizer

    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"tokenizer folder not found: {path}")
    config_file = folder / "tokenizer_config.json"
    named = json.loads(config_file.read_text()).get("tokenizer_class") if config_file.is_file() else None
    exact = named in GENERIC_FAST_CLASSES and (folder / "tokenizer.json").is_file()
    try:
        loader = PreTrainedTokenizerFast if exact else AutoTokenizer
        tokenizer = loader.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except Exception as exc:
        raise CheckpointError(f"cannot load a tokenizer from {path}: {str(exc).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _spaced(text: str) -> str:
    return " ".join(text.split())


def tokenizer_problem(tokenizer: Any, texts: Sequence[str], n_embed: int | None = None) -> str:
    """What is wrong with ``tokenizer`` for a model embedding ``n_embed`` ids, on ``texts`` ('' when nothing is).

    Checks: every id (vocabulary and special tokens) is inside the embedding; each text survives encode → decode
    (whitespace runs compared as one space); and when the tokenizer came from a folder with a ``tokenizer.json``,
    it encodes each text to the same ids as that file does.
    """
    if n_embed is not None and len(tokenizer) > n_embed:
        return f"tokenizer has {len(tokenizer)} tokens but the model embeds only {n_embed}"
    specials = {name: getattr(tokenizer, f"{name}_token_id", None) for name in ("pad", "bos", "eos")}
    outside = {k: v for k, v in specials.items() if v is not None and n_embed is not None and not 0 <= v < n_embed}
    if outside:
        return f"special token ids {outside} lie outside the model's {n_embed} embeddings"
    reference = None
    file = Path(str(getattr(tokenizer, "name_or_path", "") or ""), "tokenizer.json")
    if file.is_file():
        reference = Tokenizer.from_file(str(file))
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        back = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if _spaced(back) != _spaced(text):
            return f"tokenizer does not round-trip {text[:80]!r} (decodes to {back[:80]!r})"
        if reference is not None and reference.encode(text, add_special_tokens=False).ids != list(ids):
            return f"tokenizer {type(tokenizer).__name__} encodes {text[:80]!r} unlike its folder's tokenizer.json"
    return ""


__all__ = [
    "PAD",
    "BOS",
    "EOS",
    "UNK",
    "SPECIAL_TOKENS",
    "GENERIC_FAST_CLASSES",
    "build_word_tokenizer",
    "load_tokenizer",
    "tokenizer_problem",
]
