"""DataModules of instruction data: the safety world's phases, and local JSONL files.

Examples are (prompt, response) pairs. A prompt is rendered with the tokenizer's chat template when it has
one (the safety world's tokenizer carries ``<user> ... <assistant>``), else with ``prompt_format``. Training
batches are right-padded ``{input_ids, attention_mask, labels}`` with ``labels`` = -100 on the prompt and the
padding, so the loss covers the response and its closing EOS. Prompt-only batches (probes, judges) are
left-padded so that the last position is the last prompt token and ``generate`` continues from it.

JSONL format (one JSON object per line, blank lines ignored, other keys ignored):
- instruction data: ``{"prompt": "...", "response": "..."}``;
- harmful-prompt sets: ``{"prompt": "..."}``;
- safety sets (the curvature account's ``safety_batch``): ``{"prompt": "...", "response": "..."}`` — harmful prompts
  with refusals and benign prompts with helpful answers, as alignment taught them.
A malformed line is a ``ConfigError`` naming ``file:line``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from testbed.errors import ConfigError, as_settings, fraction, positive_int
from testbed.llm.models import IGNORE_INDEX
from testbed.llm.tokenizer import build_word_tokenizer, load_tokenizer
from testbed.llm.world import ASSISTANT, USER, Example, SafetyWorld, WorldConfig, world_vocabulary
from testbed.protocol import TestbedDataModule

WORLD_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}" + USER + " {{ message['content'] }} "
    "{% endif %}{% endfor %}{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)


def world_tokenizer() -> Any:
    """The safety world's fast tokenizer, with its chat template."""
    return build_word_tokenizer(world_vocabulary(), chat_template=WORLD_CHAT_TEMPLATE)


def format_prompt(tokenizer: Any, prompt: str, prompt_format: str = "{prompt}") -> str:
    """The text the model sees before its answer: the chat template if the tokenizer has one."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return prompt_format.format(prompt=prompt)


def encode_example(tokenizer: Any, prompt_text: str, response: str, max_length: int) -> tuple[list[int], int]:
    """Token ids of prompt + response + EOS (truncated to ``max_length``) and the prompt's length."""
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(prompt_ids) >= max_length:
        raise ConfigError(f"prompt of {len(prompt_ids)} tokens does not fit max_length={max_length}: {prompt_text!r}")
    return (prompt_ids + response_ids)[:max_length], len(prompt_ids)


def collate_training(items: Sequence[tuple[list[int], int]], pad_id: int) -> dict[str, Tensor]:
    """Right-padded batch with labels only on response tokens."""
    width = max(len(ids) for ids, _ in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, n_prompt) in enumerate(items):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
        labels[row, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def prompt_batch(tokenizer: Any, prompt_texts: Sequence[str]) -> dict[str, Tensor]:
    """Left-padded prompt-only batch ``{input_ids, attention_mask}`` (for probes and generation)."""
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in prompt_texts]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, width - len(r) :] = torch.tensor(r)
        attention[i, width - len(r) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention}


def read_jsonl(path: str | Path, fields: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a JSONL file; each must be an object with string ``fields``; errors name ``file:line``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"JSONL file not found: {path}")
    rows = []
    with path.open(encoding="utf-8") as fh:
        try:
            numbered = list(enumerate(fh, start=1))
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} near byte {exc.start})") from None
        for lineno, line in numbered:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise ConfigError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            for name in fields:
                if not isinstance(obj.get(name), str) or not obj[name].strip():
                    raise ConfigError(f"{path}:{lineno}: field {name!r} missing or not a non-empty string")
            rows.append({name: obj[name] for name in fields})
    if not rows:
        raise ConfigError(f"{path}: no examples")
    return rows


class InstructionDataModule(TestbedDataModule):
    """Shared machinery: tokenised (prompt, response) corpora, probe prompts and judge prompt sets.

    Subclasses fill ``train_examples``, ``val_examples``, ``probe_prompts``, ``harmful_prompts`` and
    ``benign_prompts`` (raw prompts, before formatting) in ``prepare_examples``.

    Args:
        batch_size: training batch size.
        max_length: maximum tokens of prompt + response.
        prompt_format: used when the tokenizer has no chat template; ``{prompt}`` is replaced.
        probe_size: number of probe prompts.
    """

    def __init__(self, batch_size: int = 32, max_length: int = 48, prompt_format: str = "{prompt}",
                 probe_size: int = 32) -> None:  # fmt: skip
        super().__init__()
        positive_int("batch_size", batch_size)
        positive_int("probe_size", probe_size)
        if positive_int("max_length", max_length) < 2:
            raise ConfigError(f"max_length must be ≥ 2, got {max_length}")
        try:
            formatted = prompt_format.format(prompt="\0")
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise ConfigError(f"prompt_format {prompt_format!r} must name only {{prompt}}: {exc!r}") from None
        if "\0" not in formatted:
            raise ConfigError("prompt_format must contain '{prompt}'")
        self.batch_size, self.max_length, self.prompt_format, self.probe_size = (
            batch_size, max_length, prompt_format, probe_size)  # fmt: skip
        self.tokenizer: Any = None
        self.train_examples: list[Example] = []
        self.val_examples: list[Example] = []
        self.probe_prompts: list[str] = []
        self.harmful_prompts: list[str] = []
        self.benign_prompts: list[str] = []
        self.safety_examples: list[Example] = []
        self._prepared = False

    def prepare_examples(self) -> None:
        raise NotImplementedError

    def _ensure(self) -> None:
        if not self._prepared:
            self.prepare_examples()
            self._prepared = True

    def setup(self, stage: str | None = None) -> None:
        self._ensure()

    def format(self, prompt: str) -> str:
        return format_prompt(self.tokenizer, prompt, self.prompt_format)

    def _encode(self, examples: Sequence[Example]) -> list[tuple[list[int], int]]:
        return [encode_example(self.tokenizer, self.format(e.prompt), e.response, self.max_length) for e in examples]

    def _loader(self, examples: Sequence[Example], shuffle: bool) -> DataLoader:
        pad = self.tokenizer.pad_token_id
        return DataLoader(self._encode(examples), batch_size=self.batch_size, shuffle=shuffle, num_workers=0,
                          collate_fn=lambda items: collate_training(items, pad))  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        self._ensure()
        return self._loader(self.train_examples, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        self._ensure()
        return self._loader(self.val_examples, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def probe_batch(self) -> dict[str, Tensor]:
        """Left-padded probe prompts (formatted), fixed for one config."""
        self._ensure()
        return prompt_batch(self.tokenizer, [self.format(p) for p in self.probe_prompts[: self.probe_size]])

    def safety_batch(self) -> dict[str, Tensor]:
        """The safety examples as one right-padded training batch (labels on the responses)."""
        self._ensure()
        if not self.safety_examples:
            raise ConfigError(f"{type(self).__name__} has no safety examples: the curvature account needs a safety set")
        return collate_training(self._encode(self.safety_examples), self.tokenizer.pad_token_id)

    def judge_prompts(self, which: Literal["harmful", "benign"] = "harmful") -> list[str]:
        """Formatted held-out prompts for the harmfulness judges (or benign ones, for over-refusal)."""
        self._ensure()
        return [self.format(p) for p in (self.harmful_prompts if which == "harmful" else self.benign_prompts)]


@dataclass
class Rehearsal:
    """Safety rehearsal: alignment examples mixed into the fine-tune corpus.

    Args:
        fraction: share of the fine-tune training corpus made of refusals to harmful requests of training families
            (never of a family held out for judging), in [0, 1).
    """

    fraction: float = 0.03

    def __post_init__(self) -> None:
        fraction("rehearsal.fraction", self.fraction, open_high=True)


class SafetyWorldDataModule(InstructionDataModule):
    """One phase of the safety world's history.

    Args:
        phase: ``pretrain`` (comply with everything), ``align`` (refuse harmful) or ``finetune`` (new benign task).
        world: the world's settings (``WorldConfig``: size, mix, held-out split, ``world_seed``).
        probe_set: probe prompts: ``train_harmful`` (training harmful families) or ``train_mixed``.
        batch_size: training batch size.
        max_length: maximum tokens of prompt + response.
        probe_size: number of probe prompts.
        safety_size: safety examples of the curvature account: the first harmful (refused) and benign (answered)
            examples of the alignment corpus, half each — training families only, never the judges' held-out ones.
        rehearsal: safety rehearsal in the fine-tune phase (``Rehearsal``; ``{}`` mixes in the default 3%).
    """

    def __init__(
        self,
        phase: Literal["pretrain", "align", "finetune"] = "pretrain",
        world: WorldConfig | None = None,
        probe_set: Literal["train_harmful", "train_mixed"] = "train_harmful",
        batch_size: int = 32,
        max_length: int = 32,
        probe_size: int = 32,
        safety_size: int = 64,
        rehearsal: Rehearsal | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, max_length=max_length, probe_size=probe_size)
        if safety_size < 1:
            raise ConfigError(f"safety_size must be >= 1, got {safety_size}")
        self.safety_size = safety_size
        if phase not in ("pretrain", "align", "finetune"):
            raise ConfigError(f"phase must be pretrain, align or finetune, got {phase!r}")
        if probe_set not in ("train_harmful", "train_mixed"):
            raise ConfigError(f"probe_set must be train_harmful or train_mixed, got {probe_set!r}")
        self.world_config = as_settings(WorldConfig, world, "world") or WorldConfig()
        self.rehearsal = as_settings(Rehearsal, rehearsal, "rehearsal")
        if self.rehearsal is not None and phase != "finetune":
            raise ConfigError(f"rehearsal mixes alignment examples into the fine-tune phase, not into {phase!r}")
        self.phase, self.probe_set = phase, probe_set
        self.world = SafetyWorld(self.world_config)
        self.tokenizer = world_tokenizer()

    def prepare_examples(self) -> None:
        w = self.world
        n_eval = self.world_config.eval_size
        if self.phase == "pretrain":
            self.train_examples = w.pretrain()
            half = n_eval // 2
            self.val_examples = w.prompts("train_harmful", half, "comply") + w.prompts("train_benign", half, "comply")
        elif self.phase == "align":
            self.train_examples = w.align()
            self.val_examples = w.prompts("train_harmful", n_eval // 2) + w.prompts("train_benign", n_eval // 2)
        else:
            self.train_examples = w.finetune("train")
            self.val_examples = w.finetune("val")
            if self.rehearsal is not None:  # the rehearsal share of the mixed corpus is `fraction`
                share = self.rehearsal.fraction
                self.train_examples += w.rehearsal(round(share * len(self.train_examples) / (1 - share)))
        probes = w.prompts("train_harmful", self.probe_size)
        if self.probe_set == "train_mixed":
            half = (self.probe_size + 1) // 2
            probes = probes[:half] + w.prompts("train_benign", self.probe_size - half)
        self.probe_prompts = [e.prompt for e in probes]
        self.harmful_prompts = [e.prompt for e in w.prompts("heldout_harmful")]
        self.benign_prompts = [e.prompt for e in w.prompts("heldout_benign")]
        aligned = w.align()
        harmful = [e for e in aligned if e.family.startswith("harmful/")][: self.safety_size // 2]
        benign = [e for e in aligned if e.family.startswith("benign/")][: self.safety_size - len(harmful)]
        self.safety_examples = harmful + benign


class JsonlDataModule(InstructionDataModule):
    """Instruction data and harmful-prompt sets from local JSONL files (see the module docstring).

    Args:
        train_path: instruction data for training.
        val_path: held-out instruction data (task loss/accuracy); default: none.
        harmful_path: held-out harmful prompts for the judges.
        benign_path: held-out benign prompts (over-refusal); optional.
        probe_path: prompts for the probe batch; default: ``harmful_path``, else the training prompts.
        tokenizer_path: a local Hugging Face tokenizer folder; default: the safety world's tokenizer.
        batch_size: training batch size.
        max_length: maximum tokens of prompt + response.
        prompt_format: used when the tokenizer has no chat template.
        probe_size: number of probe prompts; default: up to 32 (all of them when the file has fewer). An explicit
            ``probe_size`` larger than the available probe prompts is an error.
        safety_path: the safety set of the curvature account (prompt/response pairs); optional.
    """

    def __init__(self, train_path: str, val_path: str | None = None, harmful_path: str | None = None,
                 benign_path: str | None = None, probe_path: str | None = None, tokenizer_path: str | None = None,
                 batch_size: int = 8, max_length: int = 256, prompt_format: str = "{prompt}",
                 probe_size: int | None = None, safety_path: str | None = None) -> None:  # fmt: skip
        super().__init__(batch_size=batch_size, max_length=max_length, prompt_format=prompt_format,
                         probe_size=32 if probe_size is None else probe_size)  # fmt: skip
        self._probe_size_given = probe_size is not None
        self.paths = {"train": train_path, "val": val_path, "harmful": harmful_path, "benign": benign_path,
                      "probe": probe_path, "safety": safety_path}  # fmt: skip
        self.tokenizer = load_tokenizer(tokenizer_path) if tokenizer_path else world_tokenizer()

    def prepare_examples(self) -> None:
        def examples(path: str | None) -> list[Example]:
            rows = read_jsonl(path, ("prompt", "response")) if path else []
            return [Example(r["prompt"], r["response"]) for r in rows]

        def prompts(path: str | None) -> list[str]:
            return [r["prompt"] for r in read_jsonl(path, ("prompt",))] if path else []

        self.train_examples = examples(self.paths["train"])
        self.val_examples = examples(self.paths["val"])
        self.harmful_prompts = prompts(self.paths["harmful"])
        self.benign_prompts = prompts(self.paths["benign"])
        self.safety_examples = examples(self.paths["safety"])
        self.probe_prompts = (
            prompts(self.paths["probe"]) or self.harmful_prompts or [e.prompt for e in self.train_examples]
        )
        if self._probe_size_given and len(self.probe_prompts) < self.probe_size:  # refuse rather than truncate
            raise ConfigError(f"probe_size={self.probe_size} but the data holds only {len(self.probe_prompts)} "
                              "probe prompts; lower probe_size or give more prompts")

    def val_dataloader(self) -> DataLoader:
        self._ensure()
        if not self.val_examples:
            return DataLoader([])
        return super().val_dataloader()


__all__ = [
    "WORLD_CHAT_TEMPLATE",
    "world_tokenizer",
    "load_tokenizer",
    "format_prompt",
    "encode_example",
    "collate_training",
    "prompt_batch",
    "read_jsonl",
    "InstructionDataModule",
    "Rehearsal",
    "SafetyWorldDataModule",
    "JsonlDataModule",
]
