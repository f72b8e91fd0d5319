"""Loading safety: a checkpoint whose pickle executes code is refused by every loader, and the code never runs;
remote code is never trusted by default."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from testbed.checkpoint_io import SafeCheckpointIO
from testbed.errors import CheckpointError
from testbed.io import load_state_dict, load_torch_file
from testbed.testing import TinyRegressor
from tests.helpers.paths import REPO_ROOT
from tests.helpers.payloads import write_pickle_bomb

REPO = REPO_ROOT
SOURCE_DIRS = ("testbed", "toy_models", "theory", "experiments")

TINY_CONFIG = """
seed_everything: 0
model:
  class_path: testbed.testing.TinyRegressor
data:
  class_path: testbed.testing.TinyData
trainer:
  max_steps: 2
  accelerator: cpu
  enable_progress_bar: false
  logger: false
  enable_checkpointing: false
"""


@pytest.fixture
def bomb(tmp_path: Path) -> tuple[Path, Path]:
    """(hostile checkpoint, marker file that appears if its code runs) with weights that fit TinyRegressor."""
    marker = tmp_path / "pwned"
    path = write_pickle_bomb(tmp_path / "evil.ckpt", marker, TinyRegressor().state_dict())
    return path, marker


def test_payload_is_live_when_loaded_unsafely(bomb: tuple[Path, Path]) -> None:
    """Control: the payload really executes under an unsafe load, so the refusals below mean something."""
    path, marker = bomb
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize(
    "loader",
    [
        pytest.param(lambda p: load_torch_file(p), id="load_torch_file"),
        pytest.param(lambda p: load_state_dict(p), id="load_state_dict(init_from)"),
        pytest.param(lambda p: SafeCheckpointIO().load_checkpoint(p), id="SafeCheckpointIO"),
        pytest.param(lambda p: SafeCheckpointIO().load_checkpoint(p, weights_only=False), id="weights_only=False"),
        pytest.param(lambda p: TinyRegressor(init_from=str(p)).setup("fit"), id="TestbedModule.init_from"),
    ],
)
def test_python_loaders_refuse_pickle_payload(bomb: tuple[Path, Path], loader) -> None:
    path, marker = bomb
    with pytest.raises(CheckpointError, match=r"evil\.ckpt|weights_only"):
        loader(path)
    assert not marker.exists()


def _config(tmp_path: Path, extra: str = "") -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_CONFIG + extra)
    return str(path)


@pytest.mark.parametrize("flag", ["--model.init_args.init_from", "--ckpt_path"], ids=["init_from", "resume"])
def test_cli_refuses_pickle_payload(flag: str, bomb, tmp_path, run_cli, capsys) -> None:
    path, marker = bomb
    code = run_cli(["fit", "--config", _config(tmp_path), flag, str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "weights_only" in err and "evil.ckpt" in err
    assert not marker.exists()


def test_cli_resume_refuses_unsafe_opt_out(bomb, tmp_path, run_cli, capsys) -> None:
    """Even an explicit ``--weights_only false`` does not make the testbed unpickle code."""
    path, marker = bomb
    code = run_cli(["fit", "--config", _config(tmp_path), "--ckpt_path", str(path), "--weights_only", "false"])
    assert code == 2
    assert "weights_only" in capsys.readouterr().err
    assert not marker.exists()


def test_direction_loader_refuses_pickle_payload(tmp_path: Path) -> None:
    from testbed.directions import load_direction

    marker = tmp_path / "pwned"
    path = write_pickle_bomb(tmp_path / "vrev.pt", marker)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_direction(path)
    assert not marker.exists()


# ---- Hugging Face folders (the LLM track's real-checkpoint path) -------------------------------------------------
def _tiny_hf_folder(folder: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=1, n_head=2, n_embd=8, n_positions=16, vocab_size=16, bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def test_hf_remote_code_is_never_run(tmp_path: Path) -> None:
    """A model folder whose config asks for custom code (auto_map) must not get that code executed."""
    from testbed.llm.models import load_pretrained

    folder = _tiny_hf_folder(tmp_path / "model")
    marker = tmp_path / "pwned"
    (folder / "modeling_evil.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import GPT2LMHeadModel\nclass EvilLM(GPT2LMHeadModel):\n    pass\n"
    )
    (folder / "configuration_evil.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import GPT2Config\nclass EvilConfig(GPT2Config):\n    pass\n"
    )
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig",
                          "AutoModelForCausalLM": "modeling_evil.EvilLM"}
    (folder / "config.json").write_text(json.dumps(config))
    try:
        model = load_pretrained(str(folder))
    except CheckpointError:
        model = None  # refusing the folder is fine too
    assert not marker.exists()
    assert model is None or type(model).__module__.startswith("transformers.")


def test_hf_pickled_weights_are_refused(tmp_path: Path) -> None:
    """A ``pytorch_model.bin`` whose pickle runs code is refused (no safetensors to fall back on)."""
    from testbed.llm.models import load_pretrained

    folder = _tiny_hf_folder(tmp_path / "model")
    weights = {k: v for k, v in _load_safetensors(folder).items()}
    for f in folder.glob("*.safetensors"):
        f.unlink()
    marker = tmp_path / "pwned"
    write_pickle_bomb(folder / "pytorch_model.bin", marker, weights)
    with pytest.raises(CheckpointError, match="cannot load causal LM"):
        load_pretrained(str(folder))
    assert not marker.exists()


def _load_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(next(folder.glob("*.safetensors"))))


# ---- static checks over the project's own source -------------------------------------------------
def _source_files() -> list[Path]:
    return [p for d in SOURCE_DIRS if (REPO / d).is_dir() for p in sorted((REPO / d).rglob("*.py"))]


def _calls(text: str, name: str) -> list[str]:
    """The argument text of every call ``name(...)`` in ``text`` (balanced parentheses)."""
    found = []
    for match in re.finditer(re.escape(name) + r"\(", text):
        depth, i = 1, match.end()
        while depth and i < len(text):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        found.append(text[match.end() : i - 1])
    return found


def test_source_never_unpickles_untrusted_data() -> None:
    offenders = []
    for path in _source_files():
        text = path.read_text()
        rel = path.relative_to(REPO)
        for args in _calls(text, "torch.load"):
            if "weights_only=True" not in args:
                offenders.append(f"{rel}: torch.load({args.strip()[:60]}) without weights_only=True")
        for bad in ("weights_only=False", "pickle.load(", "pickle.loads(", "allow_pickle=True", "dill.load"):
            if bad in text:
                offenders.append(f"{rel}: uses {bad}")
    assert not offenders, "\n".join(offenders)


def test_source_never_trusts_remote_code_by_default() -> None:
    offenders = []
    for path in _source_files():
        text = path.read_text()
        rel = path.relative_to(REPO)
        if re.search(r"trust_remote_code\s*=\s*True", text):
            offenders.append(f"{rel}: trust_remote_code=True")
        for match in re.finditer(r"trust_remote_code\s*:\s*bool\s*=\s*(\w+)", text):
            if match.group(1) != "False":
                offenders.append(f"{rel}: trust_remote_code defaults to {match.group(1)}")
    assert not offenders, "\n".join(offenders)
