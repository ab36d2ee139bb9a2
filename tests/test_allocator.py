"""The allocator settings: added where unset, the user's kept, an opt-out, and a kernel that sees them."""
from __future__ import annotations

import os
import sys

import pytest

from modtools import allocator as A
from modtools import runner


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the settings are glibc's")
def test_tuned_environment_adds_the_settings_where_unset_and_keeps_the_users():
    env = A.tuned_environment({"PATH": "/bin", "MALLOC_TRIM_THRESHOLD_": "7"})
    assert env["PATH"] == "/bin" and env["MALLOC_TRIM_THRESHOLD_"] == "7"
    assert env["MALLOC_MMAP_THRESHOLD_"] == str(A.SETTINGS["MALLOC_MMAP_THRESHOLD_"])
    off = A.tuned_environment({"MODTOOLS_MALLOC": "default"})
    assert not any(k.startswith("MALLOC_") for k in off)
    with pytest.raises(ValueError, match=r"MODTOOLS_MALLOC='fast' is not allowed; use 'tuned'"):
        A.tuned_environment({"MODTOOLS_MALLOC": "fast"})


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_tune_allocator_applies_once_and_skips_what_the_user_set(monkeypatch):
    monkeypatch.setattr(A, "_applied", None)
    monkeypatch.setenv("MALLOC_TOP_PAD_", "1048576")
    first = A.tune_allocator()
    assert "MALLOC_TOP_PAD_" not in first and first.get("MALLOC_MMAP_THRESHOLD_") == A.SETTINGS["MALLOC_MMAP_THRESHOLD_"]
    assert A.tune_allocator() == first
    monkeypatch.setattr(A, "_applied", None)
    monkeypatch.setenv("MODTOOLS_MALLOC", "default")
    assert A.tune_allocator() == {}


def test_a_kernel_environment_is_restored_afterwards(monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    before = dict(os.environ)
    with runner.kernel_environment():
        if sys.platform.startswith("linux"):
            assert os.environ["MALLOC_MMAP_THRESHOLD_"] == str(A.SETTINGS["MALLOC_MMAP_THRESHOLD_"])
    assert dict(os.environ) == before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the settings are glibc's")
def test_a_notebook_kernel_starts_with_the_settings(monkeypatch, tmp_path):
    import papermill

    seen = {}

    def fake(*args, **kwargs):   # what a kernel started here would inherit
        seen.update(os.environ)
        raise RuntimeError("stop")

    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.setattr(papermill, "execute_notebook", fake)
    with pytest.raises(RuntimeError, match="stop"):
        runner.run_notebook("00_quickstart", "smoke", run_dir=tmp_path / "run")
    assert seen["MALLOC_MMAP_THRESHOLD_"] == str(A.SETTINGS["MALLOC_MMAP_THRESHOLD_"])
    assert "MALLOC_MMAP_THRESHOLD_" not in os.environ
