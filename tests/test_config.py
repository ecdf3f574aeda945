"""Config dataclasses and the shipped YAML files."""

from __future__ import annotations

import pytest

from tkh.config import Config, ModelConfig, load_config
from tkh.errors import ConfigError


def test_yaml_round_trip(tmp_path):
    cfg = Config().replace(model={"image_size": 64, "bottleneck_size": 8}, train={"steps": 7})
    cfg.to_yaml(tmp_path / "c.yaml")
    again = Config.from_yaml(tmp_path / "c.yaml")
    assert again == cfg and isinstance(again.loss.vgg19_layers, tuple)


def test_unknown_keys_are_refused(tmp_path):
    (tmp_path / "typo.yaml").write_text("model:\n  imagesize: 64\n")
    with pytest.raises(ConfigError, match="imagesize"):
        Config.from_yaml(tmp_path / "typo.yaml")
    (tmp_path / "sec.yaml").write_text("modle: {}\n")
    with pytest.raises(ConfigError, match="modle"):
        Config.from_yaml(tmp_path / "sec.yaml")


def test_invalid_values_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="image_size"):
        ModelConfig(image_size=100)
    with pytest.raises(ConfigError, match="not found"):
        Config.from_yaml(tmp_path / "nope.yaml")


@pytest.mark.parametrize("name", ["tiny", "small", "paper-256"])
def test_shipped_configs_load(name):
    cfg = load_config(name)
    assert cfg.model.image_size in (64, 128, 256)
