import pytest

from pipeline import config, files
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
    assert files.section_hash(a.teacher) != files.section_hash(b.teacher)
    assert files.section_hash(a.data) == files.section_hash(b.data)


@pytest.mark.parametrize("item, message", [
    ("teacher.epochs=-3", "'teacher.epochs' = -3 is out of range; it must be >= 0"),
    ("teacher.epochs=0", "teacher.epochs is 0 (use the weights as given) but teacher.weights is empty"),
    ("student.epochs=0", "'student.epochs' = 0 is out of range; it must be >= 1"),
    ("teacher.backbone_lr=1.5", "'teacher.backbone_lr' = 1.5 is out of range; it must be > 0.0 and <= 1.0"),
    ("teacher.batch_size=0", "'teacher.batch_size' = 0 is out of range; it must be >= 1"),
    ("student.lr=0", "'student.lr' = 0.0 is out of range; it must be > 0.0"),
    ("data.val_fraction=1.5", "'data.val_fraction' = 1.5 is out of range; it must be >= 0.0 and < 1.0"),
    ("distill.temperature=-1", "'distill.temperature' = -1.0 is out of range; it must be > 0.0"),
    ("teacher.schedule=cosin", "'teacher.schedule' = 'cosin' is not allowed (did you mean 'cosine'?)"),
    ("quantize.targets=[x86, arn]", "'quantize.targets' = 'arn' is not allowed"),
    ("adapt.stages=[-1]", "'adapt.stages' = -1 is out of range"),
    ("export.opset=16", "'export.opset' = 16 is out of range; it must be >= 17"),
    ("teacher.lr=1e-x", "expects float, got '1e-x'"),
    ("quantize.targets=[x86, x86]", "'quantize.targets' lists 'x86' twice"),
    ("bundle.formats=[tflite_int8, onnx_fp32, tflite_int8]", "'bundle.formats' lists 'tflite_int8' twice"),
    ("adapt.stages=[1, 1]", "'adapt.stages' lists 1 twice"),
    ("compare.methods=[student, kd, kd]", "'compare.methods' lists 'kd' twice"),
    ("data.image_size=7", "'data.image_size' = 7 is too small; give 8 or more"),
    ("bundle.runtime=tflite-runtime==2.14.0", "'bundle.runtime' = 'tflite-runtime==2.14.0' is not allowed (did you "
                                              "mean 'tflite-runtime'?); use one of: ai-edge-litert, tflite-runtime"),
])
def test_out_of_range_values_name_the_key_value_and_range(item, message):
    with pytest.raises(UserError) as info:
        config.load("smoke", [item])
    assert message in str(info.value)


def test_nothing_to_quantize_is_an_error():
    with pytest.raises(UserError, match="quantize.targets and quantize.tflite are both empty"):
        config.load("smoke", ["quantize.targets=[]", "quantize.tflite=[]"])


def test_exponents_without_a_dot_are_floats():
    cfg = config.load("smoke", ["teacher.lr=1e-3", "student.lr=2E-2", "adapt.lr=5e+0"])
    assert (cfg.teacher.lr, cfg.student.lr, cfg.adapt.lr) == (0.001, 0.02, 5.0)


def test_edges_of_a_range_are_accepted():
    cfg = config.load("smoke", ["data.train_subset=0", "benchmark.max_drop=0", "teacher.momentum=0",
                                "data.image_size=8"])
    assert cfg.data.train_subset == 0 and cfg.benchmark.max_drop == 0.0 and cfg.data.image_size == 8


def test_a_binary_file_as_config_is_a_clear_error():
    with pytest.raises(UserError, match="not a text file"):
        config.load("/bin/ls")


def test_numbers_written_with_leading_zeros_and_sections_with_every_key_commented_out(tmp_path):
    """--set seed=010 trained with seed 8 (YAML 1.1 octal) and android.serial=0123 failed with 'got 83'; a section
    whose keys were all commented out was 'must be a mapping, got None'."""
    assert config.load("smoke", ["android.serial=0123"]).android.serial == "0123"
    with pytest.raises(UserError, match="config key 'seed' expects int, got '010'"):
        config.load("smoke", ["seed=010"])
    with pytest.raises(UserError, match="expects text, got the number 2024; put the value in quotes"):
        config.load("smoke", ["data.root=2024"])
    assert config.load("smoke", ["seed=+7"]).seed == 7
    path = tmp_path / "c.yaml"
    path.write_text("teacher:\n  # epochs: 3\nstudent:\n  epochs: 2\n")
    assert config.load(str(path)).student.epochs == 2


def test_a_photo_folder_config_without_a_folder_is_refused_before_anything_runs():
    """data.root '' is the working folder: the scan walked the checkout and failed on an unrelated folder."""
    with pytest.raises(UserError, match="data.root is empty; set data.root to the photo folder"):
        config.load("smoke", ["data.dataset=imagefolder"])
