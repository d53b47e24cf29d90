import pytest

from pipeline import config
from pipeline.errors import UserError


def test_defaults_then_file_then_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\nteacher:\n  epochs: 5\n  lr: 1\n")
    cfg = config.load(str(path), ["teacher.epochs=7", "data.dataset=synthetic"])
    assert cfg.seed == 3
    assert cfg.teacher.epochs == 7  # --set wins over the file
    assert cfg.teacher.lr == 1.0 and isinstance(cfg.teacher.lr, float)  # int accepted for a float
    assert cfg.data.dataset == "synthetic"
    assert cfg.teacher.momentum == config.TrainConfig().momentum  # untouched default


def test_unknown_key_names_the_closest_one():
    with pytest.raises(UserError, match="did you mean 'teacher.epochs'"):
        config.load(None, ["teacher.epoch=3"])
    with pytest.raises(UserError, match="did you mean 'data'"):
        config.load(None, ["dta.dataset=x"])


def test_wrong_type_is_an_error():
    with pytest.raises(UserError, match="teacher.epochs' expects int"):
        config.load(None, ["teacher.epochs=three"])
    with pytest.raises(UserError, match="expects bool"):
        config.load(None, ["teacher.channels_last=5"])
    with pytest.raises(UserError, match="expects int"):
        config.load(None, ["seed=true"])


def test_config_is_frozen_and_dumps_round_trip():
    cfg = config.load("smoke")
    with pytest.raises(AttributeError):
        cfg.seed = 4  # type: ignore[misc]
    import yaml
    assert config.from_dict(yaml.safe_load(config.dump(cfg))) == cfg


def test_shipped_configs_load_and_every_key_is_commented():
    for name in ("smoke", "default", "paper"):
        config.load(name)
        for line in (config.CONFIG_DIR / f"{name}.yaml").read_text().splitlines():
            if ":" in line and not line.lstrip().startswith("#") and not line.rstrip().endswith(":"):
                assert "#" in line, f"{name}.yaml: uncommented key: {line}"


def test_unknown_config_name_and_bad_yaml(tmp_path):
    with pytest.raises(UserError, match="not found"):
        config.load("no-such-config")
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        config.load(str(bad))


def test_section_hash_changes_with_content():
    a = config.load("smoke")
    b = config.load("smoke", ["teacher.epochs=9"])
    assert config.section_hash(a.teacher) != config.section_hash(b.teacher)
    assert config.section_hash(a.data) == config.section_hash(b.data)
