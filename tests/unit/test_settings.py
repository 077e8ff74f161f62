"""Config: TOML then env; an invalid key or value stops start-up, naming it."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from mcp_sandbox.config.settings import Settings, load_settings
from mcp_sandbox.errors import ConfigError


def test_toml_then_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('image = "a:1"\n[limits]\nmemory_mib = 256\npids = 100\n')
    monkeypatch.setenv("MCP_SANDBOX_LIMITS__PIDS", "50")
    s = load_settings(cfg)
    assert (s.image, s.limits.memory_mib, s.limits.pids) == ("a:1", 256, 50)


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("[limits]\nmemory_mb = 5\n", "limits.memory_mb: Extra inputs are not permitted"),
        ("[limits]\nmemory_mib = 1\n", "limits.memory_mib"),
        ("[limits]\ntimeout_s = 200\n", "above bounds.max_timeout_s"),
        ("imagee = 'x'\n", "imagee"),
        ("not toml [", "not valid TOML"),
    ],
)
def test_invalid_config_names_the_key(tmp_path: Path, toml: str, needle: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[")):
        load_settings(cfg)


def test_unknown_env_var_with_our_prefix_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_SANDBOX_MEMORY_MIB", "100")
    with pytest.raises(ConfigError, match="MCP_SANDBOX_MEMORY_MIB"):
        load_settings()


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every leaf key of ``model``: a nested model's keys as ``outer.inner``."""
    keys = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += _keys(ann, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def test_every_key_is_documented_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    keys = [k for k in _keys(Settings) if k != "config"]
    missing = [k for k in keys if f"`{k}`" not in readme]
    assert not missing, f"README.md does not document: {missing}"
