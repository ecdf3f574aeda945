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


def test_yaml_exponents_without_a_dot_are_numbers():
    """YAML 1.1 reads `1e-4` as a string; `--set train.lr_eg=1e-4` must still give a float."""
    from tkh.config import load_config
    from tkh.errors import ConfigError

    cfg = load_config("tiny").replace(train={"lr_eg": "1e-4", "steps": "12"})
    assert cfg.train.lr_eg == 1e-4 and isinstance(cfg.train.lr_eg, float) and cfg.train.steps == 12
    with pytest.raises(ConfigError, match="lr_eg"):
        load_config("tiny").replace(train={"lr_eg": "fast"})
    with pytest.raises(ConfigError, match="steps"):
        load_config("tiny").replace(train={"steps": 2.5})


def test_defaults_are_the_papers_numbers():
    """Loss weights, layers and the schedule default to the paper's (sec. 3.2-3.4 and 4); paper-256 is its model."""
    from tkh.config import LossConfig, TrainConfig
    from tkh.nets import vgg19, vggface

    loss = LossConfig()
    assert loss.vgg19_layers == vgg19.DEFAULT_LAYERS == (1, 6, 11, 20, 29)
    assert vggface.DEFAULT_LAYERS == (1, 6, 11, 18, 25)
    assert (loss.vgg19_weight, loss.face_weight, loss.fm_weight, loss.mch_weight) == (1.5e-1, 2.5e-2, 10.0, 80.0)
    assert loss.allow_no_perceptual is False  # never silently train without a perceptual network
    train = TrainConfig()
    assert (train.lr_eg, train.lr_d, train.d_steps_per_g, train.k_shots) == (5e-5, 2e-4, 2, 8)
    paper = load_config("paper-256")
    m = paper.model
    assert (m.image_size, m.base_channels, m.max_channels, m.embed_dim, m.bottleneck_size, m.gen_res_blocks) == (
        256, 64, 512, 512, 16, 5)
    assert m.attention and m.spectral_norm
    assert (paper.loss.vgg19_weight, paper.loss.face_weight, paper.loss.fm_weight, paper.loss.mch_weight) == (
        1.5e-1, 2.5e-2, 10.0, 80.0)
    assert (paper.train.lr_eg, paper.train.lr_d, paper.train.d_steps_per_g, paper.train.k_shots) == (5e-5, 2e-4, 2, 8)
    for name in ("tiny", "small", "paper-256"):
        assert load_config(name).loss.allow_no_perceptual is False
