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
