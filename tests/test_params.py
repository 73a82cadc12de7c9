"""Profiles: applied to params.yaml in place, or as `dvc exp run -S` arguments."""

from __future__ import annotations

import pytest

from dithead.params import apply_profile, load_params, load_profile, set_args


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("train:\n  steps: 1000   # paper scale\n  precision: auto\nother: 1\n")
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "tiny.yaml").write_text('train:\n  steps: 5\n  precision: "no"\n')
    return tmp_path


def test_profile_overrides_keys_and_keeps_comments(project):
    assert apply_profile("tiny") == ["train.steps", "train.precision"]
    text = (project / "params.yaml").read_text()
    assert "# paper scale" in text
    # "no" stays a string for YAML 1.1 readers (PyYAML, DVC), not the boolean False.
    assert load_params() == {"train": {"steps": 5, "precision": "no"}, "other": 1}


def test_profile_floats_stay_floats_for_yaml_1_1_readers(project):
    (project / "params.yaml").write_text("train:\n  lr: 0.001\n  big: 1.0\n")
    (project / "profiles" / "lr.yaml").write_text("train:\n  lr: 2.0e-5\n  big: 1.0e+20\n")
    apply_profile("lr")
    assert load_params() == {"train": {"lr": 2.0e-5, "big": 1.0e20}}     # PyYAML reads 2e-05 as a string


def test_every_bundled_profile_applies_with_the_types_of_params_yaml(tmp_path, monkeypatch):
    from pathlib import Path
    import shutil

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(tmp_path)
    shutil.copytree(root / "profiles", tmp_path / "profiles")
    for profile in sorted((tmp_path / "profiles").glob("*.yaml")):
        shutil.copy(root / "params.yaml", tmp_path / "params.yaml")
        apply_profile(profile.stem)
        params, wanted = load_params(), load_profile(profile.stem)
        for section, values in wanted.items():
            for key, value in values.items():
                assert params[section][key] == value, f"{profile.name}: {section}.{key}"


def test_profile_with_unknown_key_is_an_error(project):
    (project / "profiles" / "typo.yaml").write_text("train:\n  stepz: 5\n")
    with pytest.raises(KeyError, match="train.stepz is not a key"):
        apply_profile("typo")
    assert load_params()["train"]["steps"] == 1000            # nothing written


def test_missing_profile_lists_known_ones(project):
    with pytest.raises(FileNotFoundError, match="known: tiny"):
        apply_profile("nope")


def test_set_args_for_dvc_exp_run(project):
    assert set_args({"train": {"steps": 5, "sizes": [1, 2]}}) == ["-S", "train.steps=5", "-S", "train.sizes=[1, 2]"]


# --------------------------------------------------------------------------- params sections -> config objects

from dataclasses import asdict, dataclass, field, fields, is_dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

from dithead.params import ParamsError, section_config  # noqa: E402

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def _config_classes():
    """(config class, params section, values the class needs besides its section)."""
    from dithead.data.audio_features import AudioFeatureSettings
    from dithead.data.mask import MaskSettings
    from dithead.data.preprocess import PreprocessConfig
    from dithead.inference.interpolation import InterpolateSettings
    from dithead.inference.pipeline import SampleSettings
    from dithead.metrics.evaluation import EvalConfig
    from dithead.metrics.weights import WeightPaths
    from dithead.stage import StagePaths
    from dithead.training.split import SplitSettings
    from dithead.training.train_dit import DiTTrainingConfig
    from dithead.training.train_vqgan import VQGANTrainingConfig

    return [(StagePaths, "paths", {}), (MaskSettings, "mask", {}), (SplitSettings, "split", {}), (PreprocessConfig, "preprocess", {}),
            (VQGANTrainingConfig, "vqgan", {"masked": True}), (DiTTrainingConfig, "dit", {}),
            (SampleSettings, "sample", {}), (EvalConfig, "evaluate", {}),
            (AudioFeatureSettings, "audio_features", {}), (InterpolateSettings, "interpolate", {}),
            (WeightPaths, "weights", {})]


def _plain(value):
    if is_dataclass(value):
        return asdict(value)
    if isinstance(value, Path):
        return str(value)
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("cls, section, needed", _config_classes(), ids=lambda v: getattr(v, "__name__", None))
def test_config_defaults_agree_with_params_yaml(cls, section, needed):
    params = load_params(REPO_PARAMS)
    default = cls(**needed)
    assert set(params[section]) <= {f.name for f in fields(cls)}, f"{cls.__name__} lacks keys of {section}"
    for key, value in params[section].items():
        assert _plain(getattr(default, key)) == value, f"{cls.__name__}.{key} default differs from {section}.{key}"


def test_config_defaults_agree_with_the_params_they_take_from_other_sections():
    from dithead.data.preprocess import PreprocessConfig
    from dithead.inference.pipeline import SampleSettings
    from dithead.metrics.evaluation import EvalConfig
    from dithead.training.train_dit import DiTTrainingConfig
    from dithead.training.train_vqgan import VQGANTrainingConfig

    params = load_params(REPO_PARAMS)
    assert PreprocessConfig().fps == EvalConfig().fps == DiTTrainingConfig().fps == params["data"]["fps"]
    assert PreprocessConfig().sample_rate == params["data"]["sample_rate"]
    assert DiTTrainingConfig().seed == VQGANTrainingConfig(masked=True).seed == SampleSettings().seed == params["seed"]
    assert SampleSettings().min_ref_distance == params["dit"]["min_ref_distance"]


def test_every_config_section_of_params_yaml_builds_its_config():
    params = load_params(REPO_PARAMS)
    for cls, section, needed in _config_classes():
        config = section_config(cls, params[section], section, **needed)
        for key, value in params[section].items():
            assert _plain(getattr(config, key)) == value, f"{section}.{key}"


@dataclass
class _Inner:
    size: int = 1


@dataclass
class _Outer:
    steps: int = 10
    inner: _Inner = field(default_factory=_Inner)


def test_section_config_builds_nested_settings_and_takes_extra_values():
    config = section_config(_Outer, {"steps": 3, "inner": {"size": 2}}, "outer")
    assert config == _Outer(steps=3, inner=_Inner(size=2))
    assert section_config(_Outer, {}, "outer", steps=5) == _Outer(steps=5)


@pytest.mark.parametrize("section, message", [
    ({"stepz": 3}, r"params.yaml outer has unknown key\(s\) stepz"),
    ({"inner": {"sise": 2}}, r"params.yaml outer.inner has unknown key\(s\) sise"),
])
def test_section_config_rejects_unknown_keys_with_one_error_type(section, message):
    with pytest.raises(ParamsError, match=message):
        section_config(_Outer, section, "outer")
    assert issubclass(ParamsError, ValueError)        # stages turn ValueErrors into their clear-error exit
