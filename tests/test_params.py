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
