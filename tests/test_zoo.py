"""Every torchvision classifier through the whole path, or a typed error (``pytest -m zoo`` runs all;
the default run takes one model per family, see ``conftest.py``)."""
from __future__ import annotations

import pytest

from modtools import compat


@pytest.mark.zoo
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", compat.classifiers())
def test_torchvision_classifier_goes_through(name):
    row = compat.check_torchvision(name)
    fam = compat.family(name)
    if fam in compat.UNSUPPORTED:
        assert row["status"] == "unsupported", row
        assert compat.UNSUPPORTED[fam] in row["reason"]
        return
    assert row["status"] == "ok", row.get("reason")
    assert row["relative_diff"] <= 1e-5   # |masked − extracted| / max(1, |output|)
    assert row["macs_ratio"] < 1.0 and row["module_macs_ratio"] <= 1.0
    assert row["module_roundtrip"]


def test_families_cover_every_classifier():
    families = {compat.family(n) for n in compat.classifiers()}
    assert families == {compat.family(n) for n in compat.REPRESENTATIVE}
