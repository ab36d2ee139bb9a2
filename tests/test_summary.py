"""figures/README.md: every figure with its line, wall times, and the fidelity table when the check is there."""
from __future__ import annotations

from modtools.summary import FIGURE_NOTES, write_figures_readme


def test_figures_readme_lists_figures_times_and_fidelity(tmp_path, monkeypatch):
    figs, runs = tmp_path / "figures", tmp_path / "runs"
    figs.mkdir()
    runs.mkdir()
    for name in ("00_quickstart_module_vs_model", "99_unknown_plot"):
        (figs / f"{name}.png").write_bytes(b"\x89PNG")
    script = tmp_path / "fidelity.py"
    script.write_text("import sys\nprint('nb  what  measured  target  SHORT', sys.argv[1:])\nsys.exit(1)\n")
    monkeypatch.setenv("MODTOOLS_FIDELITY", str(script))
    path = write_figures_readme(figs, runs, "quick", {"00_quickstart": 61.0, "10_train_models": 30.0}, ["10_train_models"])
    text = path.read_text()
    assert FIGURE_NOTES["00_quickstart_module_vs_model"] in text and "99_unknown_plot.png" in text
    assert "| `00_quickstart` | 61 |" in text and "**91** (1.5 min)" in text and "Failed:** 10_train_models" in text
    assert "exit status 1" in text and "SHORT" in text and f"'--runs', '{runs}'" in text
    monkeypatch.setenv("MODTOOLS_FIDELITY", str(tmp_path / "absent.py"))
    assert "is not on this machine" in write_figures_readme(figs, runs, "quick", {}).read_text()


def test_figures_readme_names_the_runs_folder_relative_to_the_repository(tmp_path, monkeypatch):
    from modtools.runner import repo_root

    figs = tmp_path / "figures"
    figs.mkdir()
    script = tmp_path / "fidelity.py"
    script.write_text("print('20  mean KRR  0.6  <= 0.7  ok')\n")
    monkeypatch.setenv("MODTOOLS_FIDELITY", str(script))
    text = write_figures_readme(figs, repo_root() / "runs", "quick", {}).read_text()
    assert "`fidelity.py --runs runs` (exit status 0: every target holds)" in text
    assert str(repo_root()) not in text
