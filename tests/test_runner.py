"""The runner: listing, parameter checks before any kernel starts, the CLI."""
from __future__ import annotations

import pytest

from modtools import runner
from modtools.__main__ import main
from modtools.errors import UnknownNameError
from modtools.profiles import PROFILE_VALUES


def test_notebooks_are_listed_with_parameters():
    names = runner.list_notebooks()
    assert names[:2] == ["00_quickstart", "10_train_models"]
    params = runner.notebook_parameters("00_quickstart")
    assert params["keep_fraction"]["default"] == 0.8 and "run_dir" in params


def test_every_profile_value_is_a_notebook_parameter():
    for notebook, profiles in PROFILE_VALUES.items():
        allowed = runner.notebook_parameters(notebook)
        for profile, values in profiles.items():
            assert set(values) <= set(allowed), (notebook, profile, set(values) - set(allowed))


def test_unknown_parameter_rejected_before_kernel(monkeypatch):
    import papermill

    def boom(*a, **k):
        raise AssertionError("a kernel was started")

    monkeypatch.setattr(papermill, "execute_notebook", boom)
    with pytest.raises(UnknownNameError, match="keep_fractoin.*allowed:.*keep_fraction"):
        runner.run_notebook("00_quickstart", "smoke", {"keep_fractoin": 0.5})
    with pytest.raises(UnknownNameError, match="unknown profile 'fast'"):
        runner.run_notebook("00_quickstart", "fast")
    with pytest.raises(UnknownNameError, match="unknown notebook 'nope'.*00_quickstart"):
        runner.run_notebook("nope")


def test_cli_exit_codes(capsys):
    assert main(["run", "00_quickstart", "-p", "bogus", "1"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert main(["list"]) == 0
    assert "keep_fraction = 0.8" in capsys.readouterr().out


def test_parse_value():
    assert runner.parse_value("3") == 3 and runner.parse_value("[1, 2]") == [1, 2]
    assert runner.parse_value("cifar10") == "cifar10" and runner.parse_value("None") is None


def test_write_results_refuses_reserved_names(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        runner.write_results(tmp_path, "x", {}, {"seed": 1})


def test_config_from_takes_matching_names():
    from modtools.mwt import MwTConfig

    cfg = runner.config_from(MwTConfig, {"arch": "resnet20", "epochs": 3, "run_dir": "x", "profile": "smoke"},
                             threshold=0.5)
    assert cfg.arch == "resnet20" and cfg.epochs == 3 and cfg.threshold == 0.5


@pytest.mark.parametrize("overrides, match", [
    ({"target_class": 42}, r"target_class=42.*out of range.*0\.\.9"),
    ({"keep_fraction": 1.5}, r"keep_fraction must be in \(0, 1\], got 1\.5"),
    ({"keep_fraction": "lots"}, r"keep_fraction='lots' has type str; allowed: a number"),
    ({"epochs": 2.5}, r"epochs=2\.5 has type float; allowed: an integer"),
    ({"epochs": -1}, r"epochs=-1 is out of range; allowed: an integer >= 0"),
    ({"dataset": "imagenet"}, r"dataset='imagenet' is not a data set; allowed: fashion-mnist"),
    ({"arch": "resnet999"}, r"arch='resnet999' is not an architecture"),
    ({"device": "tpu"}, r"device='tpu' is not a device"),
    ({"schedule": "sometimes"}, r"schedule='sometimes' is not supported"),
    ({"augment": 1}, r"augment=1 has type int; allowed: True or False"),
])
def test_bad_parameter_values_rejected_before_a_kernel_starts(tmp_path, monkeypatch, overrides, match):
    import papermill

    from modtools.errors import ParameterError

    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **k: pytest.fail("a kernel was started"))
    with pytest.raises(ParameterError, match=match):
        runner.run_notebook("00_quickstart", "quick", overrides, run_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "00_quickstart.ipynb").exists()


def test_values_of_other_notebooks_are_checked_too(monkeypatch):
    from modtools.errors import ParameterError

    with pytest.raises(ParameterError, match=r"tasks\[0\].*class id 12.*0\.\.9"):
        runner.resolve_parameters("32_gradsplitter_new_task", "quick", {"tasks": [[[0, 1], [12]]]})
    with pytest.raises(ParameterError, match=r"tasks\[0\]=\[0, 1\] must be a list of 2 class lists"):
        runner.resolve_parameters("32_gradsplitter_new_task", "quick", {"tasks": [[0, 1]]})
    with pytest.raises(ParameterError, match=r"subtasks\[1\].*twice"):
        runner.resolve_parameters("42_mwt_subtask_reuse", "quick", {"subtasks": [[0, 1], [2, 2]]})
    with pytest.raises(ParameterError, match=r"MwTConfig: beta=-1.0 is out of range"):
        runner.resolve_parameters("40_mwt_modular_training", "quick", {"beta": -1.0})
    with pytest.raises(ParameterError, match=r"GradSplitterConfig: init='zeros' is not allowed"):
        runner.resolve_parameters("30_gradsplitter_modularize", "quick", {"init": "zeros"})
    assert runner.resolve_parameters("00_quickstart", "quick", {"per_class": None})["per_class"] is None
    # 52: the source may be torchvision's ImageNet weights, the target a folder of images
    got = runner.resolve_parameters("52_seam_defect_inheritance", "quick", {"source": "imagenet", "target": "folder:x"})
    assert got["source"] == "imagenet" and got["target"] == "folder:x"
    with pytest.raises(ParameterError, match=r"target='imagenet' is not a data set.*'folder:PATH'"):
        runner.resolve_parameters("52_seam_defect_inheritance", "quick", {"target": "imagenet"})
    with pytest.raises(ParameterError, match=r"source='web' is not a data set.*or 'imagenet'"):
        runner.resolve_parameters("52_seam_defect_inheritance", "quick", {"source": "web"})


def test_every_profile_passes_the_value_checks():
    for notebook in runner.list_notebooks():
        for profile in runner.PROFILES:
            runner.resolve_parameters(notebook, profile)


def test_cli_rejects_a_bad_value_with_exit_code_2(capsys):
    assert main(["run", "00_quickstart", "-p", "keep_fraction", "lots"]) == 2
    err = capsys.readouterr().err
    assert "keep_fraction='lots'" in err and "TypeError" not in err
