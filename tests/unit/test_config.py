from __future__ import annotations

import pytest
import yaml

from lappdeploy.config import TrainConfig, load_yaml_mapping, parse_shape
from lappdeploy.errors import ConfigError


def test_defaults_are_valid_and_round_trip_through_yaml(tmp_path):
    cfg = TrainConfig(epochs=3, lr_schedule="step", lr_milestones=(1, 2), synthetic_shape="1x8x8")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    again = TrainConfig.from_dict(load_yaml_mapping(path))
    assert again == cfg
    assert again.synthetic_shape == (1, 8, 8)
    assert again.lr_milestones == (1, 2)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"lr": 0}, "lr must be > 0"),
        ({"momentum": 1.0}, "momentum must be in"),
        ({"label_smoothing": -0.1}, "label_smoothing must be in"),
        ({"weight_decay": -1}, "weight_decay must be >= 0"),
        ({"warmup_epochs": 5, "epochs": 2}, "warmup_epochs"),
        ({"lr_milestones": (3, 1), "epochs": 4}, "lr_milestones"),
        ({"lr_schedule": "linear"}, "lr_schedule must be one of cosine, step"),
        ({"amp_dtype": "fp8"}, "amp_dtype must be one of"),
        ({"device": "gpu"}, "device must be auto, cpu"),
        ({"train_subset": 0}, "train_subset must be >= 1"),
        ({"synthetic_shape": "3x0x4"}, "CxHxW"),
        ({"epochs": 2.5}, "epochs must be an integer"),
        ({"epochs": "many"}, "epochs must be an integer"),
        ({"amp": "yes"}, "amp must be true or false"),
        ({"momentum": 0.0}, "nesterov needs momentum"),
    ],
)
def test_invalid_values_name_the_field(changes, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**changes)


def test_numbers_from_yaml_are_coerced():
    cfg = TrainConfig.from_dict({"lr": 1, "epochs": 3.0, "lr_milestones": "1,2"})
    assert isinstance(cfg.lr, float) and cfg.lr == 1.0
    assert isinstance(cfg.epochs, int) and cfg.epochs == 3
    assert cfg.lr_milestones == (1, 2)


def test_unknown_keys_are_rejected_with_suggestion():
    with pytest.raises(ConfigError, match="unknown option 'learning_rate'"):
        TrainConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(ConfigError, match="did you mean epochs"):
        TrainConfig.from_dict({"epoch": 3})


def test_malformed_yaml_is_a_config_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [0.1\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_yaml_mapping(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_yaml_mapping(listing)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_yaml_mapping(empty) == {}


def test_yaml_keys_may_use_dashes(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("batch-size: 32\nlr: 0.05\n")
    assert load_yaml_mapping(path) == {"batch_size": 32, "lr": 0.05}


def test_parse_shape():
    assert parse_shape("3x64x64") == (3, 64, 64)
    assert parse_shape([1, 28, 28]) == (1, 28, 28)
    for bad in ("3x64", "ax1x1", "0x1x1"):
        with pytest.raises(ConfigError):
            parse_shape(bad)
