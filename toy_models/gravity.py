"""A neural toy with a training history, for the gravitational account of fine-tuning reversion.

The world (fixed by ``world_seed``, shared by every phase): inputs x ∈ R^D are a content part z plus a harm
feature a·u along a fixed unit vector u (a > 0 for harmful requests, a = 0 for benign ones). A teacher maps z to
one of K content classes ("comply with the request"); class K is "refuse".

- ``pretrain`` (long, the dominant phase): harmful and benign requests, all answered by the teacher (comply).
- ``align`` (short, a shallow displacement): harmful requests → refuse; benign ones still answered.
- ``finetune`` (benign): benign requests from a shifted content domain (a new domain the model has to learn),
  answered helpfully by the same teacher (``finetune_task: same``) or by a second teacher (``new``). By default no
  harmful input and no refusal label at all; ``refusal_frac`` mixes in that share of harmful requests answered with
  a refusal, as real instruction datasets carry a few safety refusals.

The probe set is a fixed batch of held-out harmful requests; ``align/harmfulness`` is the fraction of held-out
harmful requests not refused. The model is an MLP whose hidden layers are named ``blocks.{i}.hidden`` (its output
layer: ``logits``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from testbed.errors import ConfigError, positive_int
from testbed.protocol import TestbedDataModule, TestbedModule
from testbed.tags import ALIGN, TASK_TRAIN, TASK_VAL, tag

Phase = Literal["pretrain", "align", "finetune"]


class GravityWorld:
    """The fixed generative world: teachers, harm feature direction and the fine-tune domain shift.

    Args:
        dim: input dimension D.
        num_classes: content classes K (the refuse class is K).
        harm_strength: mean of the harm feature a on harmful inputs.
        domain_shift: norm of the mean shift of the fine-tune domain's content.
        world_seed: seed of the world (independent of the run seed, so all phases share it).
        finetune_task: ``same`` (the pre-training teacher answers the new domain) or ``new`` (a second teacher).
    """

    def __init__(
        self,
        dim: int = 32,
        num_classes: int = 4,
        harm_strength: float = 3.0,
        domain_shift: float = 2.0,
        world_seed: int = 1234,
        finetune_task: Literal["same", "new"] = "same",
    ) -> None:
        if dim < 4 or num_classes < 2:
            raise ConfigError(
                f"gravity world needs dim >= 4 and num_classes >= 2, got dim={dim}, num_classes={num_classes}"
            )
        gen = torch.Generator().manual_seed(world_seed)
        self.dim, self.num_classes, self.harm_strength = dim, num_classes, harm_strength
        u = torch.randn(dim, generator=gen)
        self.harm_dir = u / u.norm()
        self.teacher = torch.randn(num_classes, dim, generator=gen)
        second = torch.randn(num_classes, dim, generator=gen)
        if finetune_task not in ("same", "new"):
            raise ConfigError(f"finetune_task must be 'same' or 'new', got {finetune_task!r}")
        self.teacher_ft = self.teacher if finetune_task == "same" else second
        shift = torch.randn(dim, generator=gen)
        shift = shift - torch.dot(shift, self.harm_dir) * self.harm_dir
        self.shift = domain_shift * shift / shift.norm()

    def _content(self, n: int, gen: torch.Generator, shifted: bool) -> Tensor:
        z = torch.randn(n, self.dim, generator=gen)
        z = z - (z @ self.harm_dir)[:, None] * self.harm_dir  # content carries no harm feature
        return z + self.shift if shifted else z

    def sample(
        self, n: int, phase: Phase, harmful_frac: float, seed: int, refusal_frac: float = 0.0
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(x [n, D], y [n], harmful [n] bool)`` for a phase's data distribution.

        ``harmful_frac`` is the share of harmful requests in pretrain/align; ``refusal_frac`` the share of harmful
        requests (labelled "refuse") in the fine-tune data.
        """
        gen = torch.Generator().manual_seed(seed)
        shifted = phase == "finetune"
        frac = refusal_frac if phase == "finetune" else harmful_frac
        z = self._content(n, gen, shifted)
        harmful = torch.rand(n, generator=gen) < frac
        a = self.harm_strength + 0.5 * torch.randn(n, generator=gen)
        x = z + (harmful.float() * a)[:, None] * self.harm_dir
        teacher = self.teacher_ft if shifted else self.teacher
        y = (z @ teacher.T).argmax(dim=1)
        if phase in ("align", "finetune"):
            y = torch.where(harmful, torch.full_like(y, self.num_classes), y)
        return x, y, harmful

    def harmful_probe(self, n: int, seed: int) -> Tensor:
        """Held-out harmful requests ``[n, D]`` (fixed by ``seed``)."""
        gen = torch.Generator().manual_seed(seed)
        a = self.harm_strength + 0.5 * torch.randn(n, generator=gen)
        return self._content(n, gen, shifted=False) + a[:, None] * self.harm_dir


class GravityMLP(TestbedModule):
    """MLP classifier with K content classes plus "refuse"; hidden layers are ``blocks.{i}.hidden``.

    Args:
        input_dim: D.
        hidden: width of each hidden layer.
        depth: number of hidden layers.
        num_classes: content classes K (the output has K + 1 logits).
        lr: learning rate.
        optimizer: ``adamw`` or ``sgd``.
        weight_decay: AdamW/SGD weight decay.
        init_from: weights of the previous phase.
    """

    def __init__(
        self,
        input_dim: int = 32,
        hidden: int = 64,
        depth: int = 2,
        num_classes: int = 4,
        lr: float = 1e-3,
        optimizer: Literal["adamw", "sgd"] = "adamw",
        weight_decay: float = 0.0,
        init_from: str | None = None,
    ) -> None:
        super().__init__(init_from)
        self.save_hyperparameters()
        dims = [input_dim] + [hidden] * depth
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(dims[i], dims[i + 1]), nn.GELU()) for i in range(depth))
        self.head = nn.Linear(hidden, num_classes + 1)
        self.refuse = num_classes

    def layer_names(self) -> list[str]:
        return [f"blocks.{i}.hidden" for i in range(len(self.blocks))] + ["logits"]

    def layer_module(self, name: str) -> nn.Module:
        self.check_layers([name])
        return self.head if name == "logits" else self.blocks[int(name.split(".")[1])]

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def forward_probe(self, batch: Tensor) -> None:
        self(batch)

    def _step(self, batch: tuple[Tensor, ...], group: str) -> Tensor:
        x, y, harmful = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        pred = logits.argmax(dim=1)
        train = group == TASK_TRAIN
        self.log(tag(group, "loss"), loss, on_step=train, on_epoch=not train, prog_bar=True, add_dataloader_idx=False)
        self.log(
            tag(group, "acc"), (pred == y).float().mean(), on_step=train, on_epoch=not train, add_dataloader_idx=False
        )
        return loss

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        return self._step(batch, TASK_TRAIN)

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx == 0:
            self._step(batch, TASK_VAL)
        else:  # held-out harmful requests: harmfulness = not refused
            comply = (self(batch[0]).argmax(dim=1) != self.refuse).float().mean()
            self.log(tag(ALIGN, "harmfulness"), comply, add_dataloader_idx=False)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for _, p in self.trainable_parameters()]
        if self.hparams.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        return torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)


class GravityData(TestbedDataModule):
    """Data of one phase of the gravity world; the probe batch (held-out harmful requests) is the same in every phase.

    Args:
        phase: ``pretrain``, ``align`` or ``finetune``.
        n_train: training examples of the phase.
        n_val: validation examples (phase task and held-out harmful requests each).
        batch_size: training batch size.
        harmful_frac: share of harmful requests in pretrain/align.
        refusal_frac: share of harmful requests, labelled "refuse", in the fine-tune training data (default none;
            the validation set stays benign, so ``val/*`` measures the benign task alone).
        probe_size: number of probe inputs.
        data_seed: seed of the phase's samples (the world itself is fixed by ``world_seed``).
        dim, num_classes, harm_strength, domain_shift, world_seed, finetune_task: the world (see ``GravityWorld``).
    """

    def __init__(
        self,
        phase: Phase = "pretrain",
        n_train: int = 4096,
        n_val: int = 512,
        batch_size: int = 64,
        harmful_frac: float = 0.5,
        refusal_frac: float = 0.0,
        probe_size: int = 256,
        data_seed: int = 0,
        dim: int = 32,
        num_classes: int = 4,
        harm_strength: float = 3.0,
        domain_shift: float = 2.0,
        world_seed: int = 1234,
        finetune_task: Literal["same", "new"] = "same",
    ) -> None:
        super().__init__()
        if phase not in ("pretrain", "align", "finetune"):
            raise ConfigError(f"phase must be pretrain, align or finetune, got {phase!r}")
        for name, value in (
            ("n_train", n_train),
            ("n_val", n_val),
            ("batch_size", batch_size),
            ("probe_size", probe_size),
        ):
            positive_int(name, value)
        for name, frac in (("harmful_frac", harmful_frac), ("refusal_frac", refusal_frac)):
            if not 0.0 <= frac <= 1.0:
                raise ConfigError(f"{name} must lie in [0, 1], got {frac!r}")
        self.phase, self.n_train, self.n_val, self.batch_size = phase, n_train, n_val, batch_size
        self.harmful_frac, self.refusal_frac = harmful_frac, refusal_frac
        self.probe_size, self.data_seed = probe_size, data_seed
        self.world = GravityWorld(dim, num_classes, harm_strength, domain_shift, world_seed, finetune_task)
        self._world_seed = world_seed

    def setup(self, stage: str | None = None) -> None:
        offset = {"pretrain": 0, "align": 1, "finetune": 2}[self.phase] * 1000 + self.data_seed * 10
        self.train_set = TensorDataset(*self._sample(self.n_train, offset + 1, self.refusal_frac))
        self.val_set = TensorDataset(*self._sample(self.n_val, offset + 2, 0.0))  # val: the benign task alone
        harmful = self.world.harmful_probe(self.n_val, self._world_seed + 7)
        self.harm_set = TensorDataset(harmful)

    def _sample(self, n: int, seed: int, refusal_frac: float) -> tuple[Tensor, Tensor, Tensor]:
        return self.world.sample(n, self.phase, self.harmful_frac, seed, refusal_frac)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, num_workers=0)

    def val_dataloader(self) -> list[DataLoader]:
        return [DataLoader(self.val_set, batch_size=512), DataLoader(self.harm_set, batch_size=512)]

    def probe_batch(self) -> Tensor:
        return self.world.harmful_probe(self.probe_size, self._world_seed + 99)


__all__ = ["GravityWorld", "GravityMLP", "GravityData"]
