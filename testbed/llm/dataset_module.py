"""``DatasetDataModule``: instruction data and prompt sets in the field's formats (``testbed.llm.formats``), with a
setting for what longer than ``max_length`` means.

Length, in tokens of the formatted text (chat template included): a training example is prompt + response + EOS,
a prompt (probe or judge) is the formatted prompt alone. With ``overlong: truncate`` an example keeps its prompt and
loses the end of its response; a prompt too long for even one response token (or a prompt of a prompt set too long
for ``max_length``) loses the end of its own text, so the template around it stays whole. The number truncated is
logged once per set. With ``overlong: refuse`` the first over-long row is a ``ConfigError`` naming file and row.
``max_length`` is also capped at the model's context by ``CausalLMModule.setup``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor

from testbed.errors import ConfigError, as_settings, one_of
from testbed.llm.data import InstructionDataModule, prompt_batch, world_tokenizer
from testbed.llm.formats import DataSource, SourceRow, read_rows
from testbed.llm.tokenizer import load_tokenizer
from testbed.llm.world import Example

__all__ = ["DatasetDataModule", "fit_prompt"]


def _ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def fit_prompt(tokenizer: Any, prompt: str, render: Any, budget: int) -> str | None:
    """The longest leading part of ``prompt`` whose rendering ``render(text)`` fits ``budget`` tokens (None: the
    rendering does not fit even with an empty prompt)."""
    raw = _ids(tokenizer, prompt)
    low, high = 0, len(raw)
    if len(_ids(tokenizer, render(prompt))) <= budget:
        return prompt
    if len(_ids(tokenizer, render(""))) > budget:
        return None
    while low < high:  # the largest k with render(decode(raw[:k])) inside the budget
        mid = (low + high + 1) // 2
        if len(_ids(tokenizer, render(tokenizer.decode(raw[:mid], skip_special_tokens=True)))) <= budget:
            low = mid
        else:
            high = mid - 1
    return tokenizer.decode(raw[:low], skip_special_tokens=True)


class DatasetDataModule(InstructionDataModule):
    """Instruction data and prompt sets from ``DataSource``s (local files, folders, ``save_to_disk``, the cache).

    Args:
        train: instruction data for training (e.g. ``{path: alpaca.json, format: alpaca}``).
        val: held-out instruction data (task loss/accuracy); default: none.
        harmful: held-out harmful prompts for the judges (e.g. ``{path: advbench.csv, format: advbench}``).
        benign: held-out benign prompts (over-refusal); optional.
        probe: prompts for the probe batch; default: ``harmful``, else the training prompts.
        tokenizer_path: a local Hugging Face tokenizer folder; default: the safety world's tokenizer.
        batch_size: training batch size.
        max_length: maximum tokens of a formatted example or prompt.
        overlong: ``truncate`` (counted and logged) or ``refuse`` (an error naming the row) for longer ones.
        prompt_format: used when the tokenizer has no chat template; ``{prompt}`` is replaced.
        probe_size: number of probe prompts (at most the available ones).
    """

    def __init__(self, train: DataSource, val: DataSource | None = None, harmful: DataSource | None = None,
                 benign: DataSource | None = None, probe: DataSource | None = None, tokenizer_path: str | None = None,
                 batch_size: int = 8, max_length: int = 512, overlong: Literal["truncate", "refuse"] = "truncate",
                 prompt_format: str = "{prompt}", probe_size: int = 32) -> None:  # fmt: skip
        super().__init__(batch_size=batch_size, max_length=max_length, prompt_format=prompt_format,
                         probe_size=probe_size)  # fmt: skip
        self.overlong = one_of("overlong", overlong, ("truncate", "refuse"))
        self.sources = {name: as_settings(DataSource, value, f"data.{name}") for name, value in
                        {"train": train, "val": val, "harmful": harmful, "benign": benign, "probe": probe}.items()}
        if self.sources["train"] is None:
            raise ConfigError("data.train must name a DataSource")
        self.tokenizer = load_tokenizer(tokenizer_path) if tokenizer_path else world_tokenizer()
        self.rows: dict[str, list[SourceRow]] = {}

    def prepare_examples(self) -> None:
        for name, source in self.sources.items():
            if source is not None:
                self.rows[name] = read_rows(source, want_response=name in ("train", "val"))
        self.train_examples = [Example(r.prompt, r.response, r.category) for r in self.rows["train"]]
        self.val_examples = [Example(r.prompt, r.response, r.category) for r in self.rows.get("val", [])]
        self.harmful_prompts = [r.prompt for r in self.rows.get("harmful", [])]
        self.benign_prompts = [r.prompt for r in self.rows.get("benign", [])]
        probes = self.rows.get("probe") or self.rows.get("harmful") or self.rows["train"]
        self.rows["probe"] = probes[: self.probe_size]
        self.probe_prompts = [r.prompt for r in self.rows["probe"]]

    # ---- lengths ------------------------------------------------------------------------------------------------
    def _origin(self, name: str, index: int) -> str:
        rows = self.rows.get(name, [])
        return rows[index].origin if index < len(rows) else f"{name} row {index + 1}"

    def _report(self, n: int, total: int, what: str) -> None:
        if n:
            rank_zero_info(f"testbed: truncated {n} of {total} {what} to max_length={self.max_length} tokens")

    def _fit_prompts(self, prompts: Sequence[str], name: str) -> list[str]:
        """Formatted prompts, each within ``max_length`` (truncated or refused as ``overlong`` says)."""
        out, cut = [], 0
        for i, prompt in enumerate(prompts):
            text = self.format(prompt)
            if len(_ids(self.tokenizer, text)) > self.max_length:
                fitted = self._shorten(prompt, self.max_length, name, i)
                text, cut = self.format(fitted), cut + 1
            out.append(text)
        self._report(cut, len(prompts), f"{name} prompts")
        return out

    def _shorten(self, prompt: str, budget: int, name: str, index: int) -> str:
        if self.overlong == "refuse":
            raise ConfigError(f"{self._origin(name, index)}: longer than max_length={self.max_length} tokens "
                              "(set overlong: truncate, or raise max_length)")  # fmt: skip
        fitted = fit_prompt(self.tokenizer, prompt, self.format, budget)
        if fitted is None:
            raise ConfigError(f"{self._origin(name, index)}: the prompt template alone exceeds max_length="
                              f"{self.max_length} tokens")  # fmt: skip
        return fitted

    def _encode(self, examples: Sequence[Example]) -> list[tuple[list[int], int]]:
        name = "train" if examples is self.train_examples else "val"
        items, cut = [], 0
        eos = [self.tokenizer.eos_token_id]
        for i, example in enumerate(examples):
            prompt_ids = _ids(self.tokenizer, self.format(example.prompt))
            response_ids = _ids(self.tokenizer, example.response) + eos
            if len(prompt_ids) + len(response_ids) > self.max_length:
                if len(prompt_ids) >= self.max_length or self.overlong == "refuse":
                    prompt = self._shorten(example.prompt, self.max_length - 1, name, i)
                    prompt_ids = _ids(self.tokenizer, self.format(prompt))
                cut += 1
            items.append(((prompt_ids + response_ids)[: self.max_length], len(prompt_ids)))
        self._report(cut, len(examples), f"{name} examples")
        return items

    def probe_batch(self) -> dict[str, Tensor]:
        """Left-padded probe prompts (formatted, within ``max_length``), fixed for one config."""
        self._ensure()
        return prompt_batch(self.tokenizer, self._fit_prompts(self.probe_prompts, "probe"))

    def judge_prompts(self, which: Literal["harmful", "benign"] = "harmful") -> list[str]:
        """Formatted held-out prompts (within ``max_length``) for the judges."""
        self._ensure()
        return self._fit_prompts(self.harmful_prompts if which == "harmful" else self.benign_prompts, which)

    def val_dataloader(self) -> Any:
        self._ensure()
        if not self.val_examples:
            from torch.utils.data import DataLoader

            return DataLoader([])
        return super().val_dataloader()
