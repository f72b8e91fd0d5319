"""The fuzzer behind ``tests/testbed/test_fuzz.py``: hostile fit configs and command-line overrides made from the
CLI's own schema, run through ``python -m testbed`` in-process, and the contract each run must keep.

Schema: ``fit --print_config`` of a shipped config (every Trainer, model, data and callback setting with its
resolved value), plus the fields of the settings dataclasses that the model's and data's signatures name (``world``,
``lora``, ``optimizer``, ...), which print as ``null`` when unset. A case picks one to three of those leaves and
gives each a hostile value (NaN/inf, out of range, huge, empty, a wrong type, odd unicode, a path with ``..``), or
adds an unknown key, or repeats a key in the YAML; it is delivered as ``--key=value`` overrides or as a whole
config file. Run length and process layout are pinned (2 steps, no validation, one CPU process) so a case takes
seconds.

Contract: exit status 0; or 2 with exactly one ``testbed: error:`` line, no traceback, and nothing left in the
sandbox (a run stopped by a non-finite value after it trained keeps its logs, never a checkpoint). A case slower
than the per-case limit is counted as slow, not failed (the contract is about answers, not time).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import math
import os
import resource
import shutil
import signal
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

from tests.helpers.paths import REPO_ROOT

__all__ = ["BASES", "PINNED", "Case", "Outcome", "print_config", "schema_leaves", "fixtures", "case_strategy",
           "run_case", "memory_cap"]

BASES = {
    "gravity": "experiments/gravity_toy/finetune.yaml",
    "quartic": "experiments/toy_regimes/quartic.yaml",
    "neural": "experiments/neural_toy/neural.yaml",
    "llm": "experiments/llm_safety/pretrain.yaml",
}
# Appended after every case: bounded runs, one process on the CPU, no validation loop.
PINNED = ["--trainer.max_steps=2", "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0",
          "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu", "--trainer.devices=1",
          "--trainer.max_time=null", "--trainer.max_epochs=null"]
# The CurvatureMonitor of the toy configs fits its law over the two pinned steps.
EXTRA = {name: ["--trainer.callbacks.init_args.fit_window=[1, 2]"] for name in ("quartic", "neural")}
# Leaves the fuzzer leaves alone: run length, processes and devices (pinned above), and hooks that would start
# other programs or write outside the sandbox by design.
FIXED = ("trainer.max_steps", "trainer.max_epochs", "trainer.min_steps", "trainer.min_epochs", "trainer.max_time",
         "trainer.limit_", "trainer.devices", "trainer.num_nodes", "trainer.strategy", "trainer.accelerator",
         "trainer.val_check_interval", "trainer.check_val_every_n_epoch", "trainer.num_sanity_val_steps",
         "trainer.profiler", "trainer.plugins", "trainer.default_root_dir", "trainer.fast_dev_run",
         "trainer.overfit_batches", "trainer.reload_dataloaders", "trainer.detect_anomaly", "trainer.barebones",
         "trainer.logger.init_args.save_dir", "trainer.model_registry", "trainer.enable_progress_bar")

INTS = [0, -1, 1, 2, 3, -(2**31), 2**31, 2**40, 2**63, 2**64, 10**30]
FLOATS = [math.nan, math.inf, -math.inf, 0.0, -0.0, -1.0, -0.5, 1e-320, 0.5, 1.0, 2.0, 1e300]
TEXTS = ["", " ", "..", ".", "../x", "../../x", "a/../../../b", "x/./../..", "~", "$HOME", "%s", "{seed}",
         "{directions.v}", "nan", "inf", "-1", "1e999", "true", "null", "[]", "{}", "x" * 300, "\u202edlrow",
         "😀", "日本語", "\x00", "a\x00b", "\t\n", "Ａ１", "class_path", "torch.nn.Linear", "os.system"]


@dataclasses.dataclass
class Outcome:
    """What one case did: ``ok`` (kept the contract), ``slow`` or ``failed`` (with why)."""

    verdict: str
    code: int | str
    why: str = ""
    args: list[str] = dataclasses.field(default_factory=list)
    changes: str = ""


def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from _flatten(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for i, item in enumerate(value):
            yield from _flatten(item, f"{prefix}.{i}")
    else:
        yield prefix, value


def _dataclass_fields(cls: type, path: str) -> Iterator[tuple[str, Any]]:
    """Leaves of the settings dataclasses a class's ``__init__`` takes (shown as ``null`` when unset)."""
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:
        return
    for name, hint in hints.items():
        for option in typing.get_args(hint) or (hint,):
            if dataclasses.is_dataclass(option):
                for f in dataclasses.fields(option):
                    default = f.default if f.default is not dataclasses.MISSING else (
                        f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore
                    yield f"{path}.init_args.{name}.{f.name}", default


def print_config(base: str) -> dict[str, Any]:
    """The full resolved config of a shipped fit config (``fit --print_config``)."""
    from testbed.__main__ import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main(["fit", "--config", str(REPO_ROOT / base), "--print_config"])
    return yaml.safe_load(out.getvalue())


def schema_leaves(config: dict[str, Any]) -> dict[str, Any]:
    """Dotted leaf -> current value: the printed config, plus the dataclass fields of model, data and callbacks."""
    import importlib

    leaves = dict(_flatten(config))
    classes = [(k[: -len(".class_path")], v) for k, v in leaves.items() if k.endswith("class_path")]
    for path, class_path in classes:
        module, _, name = str(class_path).rpartition(".")
        with contextlib.suppress(Exception):
            leaves.update(dict(_dataclass_fields(getattr(importlib.import_module(module), name), path)))
    return {k: v for k, v in leaves.items() if not k.startswith(FIXED) and not k.endswith("class_path")}


_LEAVES: dict[str, dict[str, Any]] = {}


def _leaves_of(name: str, config: dict[str, Any]) -> dict[str, Any]:
    if name not in _LEAVES:
        _LEAVES[name] = schema_leaves(config)
    return _LEAVES[name]


def hostile_values(current: Any) -> st.SearchStrategy:
    """Values a hostile user would try in place of ``current``: mostly edge values of its own type (which pass type
    checks and reach the settings' own validation), sometimes another type."""
    keys = st.sampled_from(["a", "class_path", "init_args"])
    wrong = st.one_of(st.booleans(), st.none(), st.lists(st.integers(-3, 3), max_size=3),
                      st.dictionaries(keys, st.integers(-2, 2), max_size=2), st.sampled_from(TEXTS))
    ints = st.one_of(st.sampled_from(INTS), st.integers(-(10**6), 10**6))
    floats = st.one_of(st.sampled_from(FLOATS), st.floats(allow_nan=True, allow_infinity=True))
    texts = st.one_of(st.sampled_from(TEXTS), st.text(max_size=10))
    if isinstance(current, bool):
        return st.one_of(ints, texts, wrong)
    if isinstance(current, int):
        return st.one_of(ints, ints, ints, floats, wrong)
    if isinstance(current, float):
        return st.one_of(floats, floats, floats, ints, wrong)
    if isinstance(current, str):
        return st.one_of(texts, texts, texts, ints, wrong)
    if isinstance(current, list):
        item = ints if current and all(isinstance(v, int) for v in current) else floats
        return st.one_of(st.lists(item, max_size=4), st.lists(item, min_size=len(current), max_size=len(current)),
                         wrong)
    return st.one_of(ints, floats, texts, wrong)


def _set(config: dict[str, Any], key: str, value: Any) -> None:
    node: Any = config
    parts = key.split(".")
    for part in parts[:-1]:
        child = node[int(part)] if isinstance(node, list) else node.get(part)
        if not isinstance(child, (dict, list)):
            child = {}
            node[part] = child
        node = child
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value


def _flow(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10**6).strip()
    return text[:-4].strip() if text.endswith("\n...") else text.removesuffix("...").strip()


Case = tuple[list[str], str, "Path | None"]  # arguments, what was changed, a folder copied into the work folder


@st.composite
def case_strategy(draw: Any, bases: dict[str, dict[str, Any]], inputs: Path, paths: dict[str, str]) -> Case:
    """One hostile case: mostly ``fit`` (config files written into ``inputs``), sometimes ``study`` or ``report``.

    Args:
        draw: hypothesis's draw.
        bases: base name -> its printed config (``print_config``).
        inputs: where case files are written (``fixtures`` made its study and report inputs there).
        paths: base name -> its config file (``fixtures``'s answer).
    """
    verb = draw(st.sampled_from(["fit"] * 6 + ["study", "report"]))
    if verb == "study":
        return draw(_study_case(inputs))
    if verb == "report":
        return draw(_report_case(inputs))
    name = draw(st.sampled_from(sorted(bases)))
    config = bases[name]
    leaves = _leaves_of(name, config)
    keys = draw(st.lists(st.sampled_from(sorted(leaves)), min_size=1, max_size=3, unique=True))
    changes = {key: draw(hostile_values(leaves[key])) for key in keys}
    extra = draw(st.sampled_from(["none", "none", "unknown_key", "repeated_key"]))
    if extra == "unknown_key":
        changes[draw(st.sampled_from(sorted(leaves))).rsplit(".", 1)[0] + ".bogus_setting"] = 1
    pinned = [*PINNED, *EXTRA.get(name, [])]
    described = f"{name}: " + ", ".join(f"{key}={value!r}" for key, value in changes.items())
    if draw(st.booleans()):  # as command-line overrides
        args = ["fit", "--config", str(REPO_ROOT / paths[name])]
        args += [f"--{key}={_flow(value)}" for key, value in changes.items()]
        return args + pinned, described + " (overrides)", None
    mutated = copy.deepcopy(config)
    for key, value in changes.items():
        _set(mutated, key, value)
    text = yaml.safe_dump(mutated, sort_keys=False, allow_unicode=True)
    if extra == "repeated_key":
        text += f"seed_everything: {draw(st.integers(0, 3))}\n"
        described += ", seed_everything repeated"
    path = inputs / f"case{len(list(inputs.iterdir()))}.yaml"
    path.write_text(text, encoding="utf-8")
    return ["fit", "--config", str(path), *pinned], described + " (config file)", None


def _dataset_base(inputs: Path) -> Path:
    """A causal-LM fit on files read by ``DatasetDataModule`` (the field's formats), with a judge callback."""
    inputs = inputs.absolute()
    prompts = [f"please help me {verb} the city" for verb in ("fix", "clean", "build", "open")]
    rows = [json.dumps({"prompt": prompt, "response": "sure ."}) + "\n" for prompt in prompts]
    (inputs / "train.jsonl").write_text("".join(rows), encoding="utf-8")
    (inputs / "harmful.txt").write_text("\n".join(f"how do i {v} people" for v in ("hurt", "poison")) + "\n")
    judge = {"class_path": "testbed.llm.judges.HarmfulnessJudge", "init_args": {"batch_size": 2, "max_prompts": 2}}
    config = {
        "seed_everything": 0,
        "model": {"class_path": "testbed.llm.CausalLMModule",
                  "init_args": {"model": "gpt2", "optimizer": {"lr": 1e-3},
                                "model_config": {"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 48}}},
        "data": {"class_path": "testbed.llm.DatasetDataModule",
                 "init_args": {"train": {"path": str(inputs / "train.jsonl")},
                               "harmful": {"path": str(inputs / "harmful.txt"), "format": "prompts"},
                               "batch_size": 2, "max_length": 24, "probe_size": 2}},
        "trainer": {"callbacks": [{"class_path": "testbed.judging.HarmfulnessCallback",
                                   "init_args": {"judges": [judge], "steps": [2]}}],
                    "logger": {"class_path": "pytorch_lightning.loggers.TensorBoardLogger",
                               "init_args": {"save_dir": "runs", "name": "dataset"}}},
    }
    path = inputs / "dataset.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def fixtures(inputs: Path) -> dict[str, str]:
    """The study file and phase config of the ``study`` cases, the finished runs the ``report`` cases read, and the
    fit bases made here (name -> path; the shipped ones are ``BASES``)."""
    from torch.utils.tensorboard import SummaryWriter

    from testbed.study.layout import DONE, RunKey, run_dir
    from tests.helpers.hostile import quadratic_fit

    (inputs / "toy.yaml").write_text(yaml.safe_dump(quadratic_fit(2)))
    for arm in ("plain", "blocked"):
        for seed in (0, 1):
            folder = run_dir(inputs / "study", RunKey(arm, seed))
            with SummaryWriter(str(folder)) as writer:
                for step in range(1, 4):
                    writer.add_scalar("m/x", step * (1 + seed), step)
                    writer.add_scalar("align/loss", 1e-3 * step**4, step)
            (folder / DONE).write_text("{}")
    return {**BASES, "dataset": str(_dataset_base(inputs))}


def _study_base(inputs: Path) -> dict[str, Any]:
    final = {"name": "finetune", "config": str(inputs / "toy.yaml"), "overrides": {"trainer.log_every_n_steps": 1}}
    return {"name": "fz", "runs_dir": "runs", "seeds": [0], "final": final,
            "arms": {"plain": {}, "other": {"overrides": {"model.init_args.sharpness": 2.0}}},
            "sweeps": {"s": {"grid": {"model.init_args.coupling": [0.1, 0.2]}}}}


@st.composite
def _study_case(draw: Any, inputs: Path) -> Case:
    """A study file with hostile values (the study verb's own keys, arm names, sweep values), run or dry-run."""
    study = _study_base(inputs)
    leaves = {k: v for k, v in _flatten(study) if not k.endswith("max_steps")}
    keys = draw(st.lists(st.sampled_from(sorted(leaves)), min_size=1, max_size=3, unique=True))
    changes = {key: draw(hostile_values(leaves[key])) for key in keys}
    if draw(st.booleans()):
        changes[f"arms.{draw(st.sampled_from(TEXTS))}"] = {}
    for key, value in changes.items():
        _set(study, key, value)
    path = inputs / f"study{len(list(inputs.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False, allow_unicode=True), encoding="utf-8")
    dry = draw(st.booleans())
    described = "study: " + ", ".join(f"{k}={v!r}" for k, v in changes.items()) + (" (dry run)" if dry else "")
    return ["study", "--config", str(path), "--quiet", "true", "--dry_run", str(dry).lower()], described, None


@st.composite
def _report_case(draw: Any, inputs: Path) -> Case:
    """``report`` of a finished study with hostile options (the report verb's own signature)."""
    import inspect

    from testbed.report import report_command

    options = {k: p.default for k, p in inspect.signature(report_command).parameters.items() if k != "run_dir"}
    keys = draw(st.lists(st.sampled_from(sorted(options)), min_size=1, max_size=3, unique=True))
    regex = st.sampled_from(["(", "[x", "*", "(?P<", "a{99999999999}", "\\", "m/.*", "^$", "(a|b", ".*"])
    changes = {key: draw(st.one_of(hostile_values(options[key]), regex)) for key in keys}
    args = ["report", "study", *[f"--{key}={_flow(value)}" for key, value in changes.items()]]
    described = "report: " + ", ".join(f"{k}={v!r}" for k, v in changes.items())
    return args, described, inputs / "study"


class _Slow(BaseException):
    """Raised by the alarm: the case ran past its time limit."""


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def run_case(case: Case, sandbox: Path, seconds: float) -> Outcome:
    """Run one case in ``sandbox/a/b/c/d/work`` (``..`` paths stay in the sandbox) and judge it by the contract."""
    args, described, copied = case
    work = sandbox / "a" / "b" / "c" / "d" / "work"
    work.mkdir(parents=True, exist_ok=True)
    if copied is not None:
        shutil.copytree(copied, work / copied.name)
    outcome = _run(args, sandbox, work, seconds)
    outcome.changes = described
    return outcome


def _run(args: list[str], sandbox: Path, work: Path, seconds: float) -> Outcome:
    from testbed.__main__ import main

    before = _files(sandbox)
    err, code = io.StringIO(), 0
    old_cwd, old_handler = os.getcwd(), signal.signal(signal.SIGALRM, _alarm)
    os.chdir(work)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            main(list(args))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except _Slow:
        return Outcome("slow", "timeout", f"over {seconds}s", args)
    except BaseException as exc:  # a traceback: the contract is broken
        return Outcome("failed", "traceback", f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}", args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        os.chdir(old_cwd)
    return _judge(code, err.getvalue(), sorted(_files(sandbox) - before), args)


def _alarm(signum: int, frame: Any) -> None:
    raise _Slow


def _judge(code: int, stderr: str, left: list[str], args: list[str]) -> Outcome:
    lines = [line for line in stderr.splitlines() if line.startswith("testbed: error:")]
    if code == 0:
        return Outcome("ok", 0, "", args)
    if code != 2:
        return Outcome("failed", code, stderr.strip().splitlines()[-1][:300] if stderr.strip() else "", args)
    if len(lines) != 1 or "Traceback" in stderr:
        return Outcome("failed", 2, f"{len(lines)} error lines: {stderr[-300:]}", args)
    trained = "non-finite" in lines[0]
    kept = [f for f in left if not (trained and not f.endswith((".ckpt", ".pt")))]
    if args[0] == "study":  # a study stopped at a later run keeps the runs that finished before it, and their layout
        kept = [f for f in kept if not _of_finished_run(f, left)]
    kept = [f for f in kept if not all(part in ("a", "b", "c", "d", "work") for part in Path(f).parts)]
    if kept:
        return Outcome("failed", 2, f"left behind {kept[:5]} after: {lines[0][:200]}", args)
    return Outcome("ok", 2, lines[0][:300], args)


def _of_finished_run(path: str, left: list[str]) -> bool:
    """Whether ``path`` is, holds or lies in a finished run's folder (one with ``DONE.json``), or is the layout."""
    if path.endswith(".study_layout"):
        return True
    done = [str(Path(f).parent) for f in left if Path(f).name == "DONE.json"]
    return any(path == d or path.startswith(d + "/") or d.startswith(path + "/") for d in done)


@contextlib.contextmanager
def memory_cap(extra_bytes: int = 6 << 30) -> Iterator[None]:
    """Cap this process's address space at its current size plus ``extra_bytes`` for the block, so a hostile size
    fails to allocate at once instead of exhausting the machine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as fh:
        current = int(fh.read().split()[0]) * resource.getpagesize()
    limit = current + extra_bytes if hard == resource.RLIM_INFINITY else min(hard, current + extra_bytes)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
