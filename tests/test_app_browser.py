"""The Module Foundry app in a real browser: Voilà serves notebook 90 on a free local port and
Debian's Chromium (headless, driven by Playwright; no browser download) searches, opens a card,
runs a decomposition, cancels a job and downloads a zip. Screenshots go to ``runs/app/``.

Skipped where Chromium or Playwright is missing, unless ``MODTOOLS_REQUIRE_BROWSER=1`` (as in CI),
where that is an error.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from modtools.runner import repo_root
from modtools.store import ModuleStore

from foundry_fixtures import foundry_model, make_module  # noqa: F401  (fixtures)

CHROMIUM = os.environ.get("MODTOOLS_CHROMIUM", "/usr/bin/chromium")
pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]


def _missing() -> str | None:
    if not Path(CHROMIUM).is_file():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright)"
    if shutil.which("voila", path=str(Path(sys.executable).parent)) is None:
        return "voila is not installed (pip install voila)"
    return None


@pytest.fixture(scope="module")
def app(tmp_path_factory, foundry_model):
    why = _missing()
    if why:
        if os.environ.get("MODTOOLS_REQUIRE_BROWSER") == "1":
            pytest.fail(f"the browser test is required here but cannot run: {why}")
        pytest.skip(why)
    model, rec, data, cache = foundry_model
    store = ModuleStore(tmp_path_factory.mktemp("app") / "store")
    store.add(make_module(model, data, [1], keep=0.5, accuracy=0.93), "fixture-module", source_key=rec["key"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MODTOOLS_STORE": str(store.root), "MODTOOLS_CACHE": str(cache), "MODTOOLS_DOWNLOAD": "0",
           "MODTOOLS_APP": "1"}
    log = open(store.root / "voila.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "voila"), str(repo_root() / "notebooks" /
                             "90_module_foundry.ipynb"), "--no-browser", "--Voila.ip=127.0.0.1", f"--port={port}",
                             "--Voila.port_retries=0"], stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(f"Voilà did not start: {(store.root / 'voila.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield url, store, rec["key"]
    os.killpg(proc.pid, 15)
    proc.wait(timeout=20)
    log.close()


def test_the_app_in_a_browser(app, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, store, model_key = app
    shots = repo_root() / "runs" / "app"
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
        page.goto(url, timeout=90_000)
        page.wait_for_selector(".mt-dashboard", timeout=120_000)
        assert "foundry_dashboard(store" not in page.inner_text("body"), "the app shows no code"

        # 1. search for the fixture's module and open its card
        page.locator(".mt-search-text input").fill("CLASS1")
        page.locator(".mt-search-button").click()
        expect(page.locator(".mt-results")).to_contain_text("fixture-module", timeout=30_000)
        page.locator(".mt-open-card").click()
        expect(page.locator(".mt-card-title")).to_have_text("fixture-module", timeout=30_000)
        page.screenshot(path=str(shots / "1_search_and_card.png"), full_page=True)

        # 2. a short decomposition on the synthetic data set
        page.locator(".lm-TabBar-tab", has_text="Decompose").click()
        expect(page.locator(".mt-model-pick select")).to_contain_text(model_key)
        page.locator(".mt-approach-pick select").select_option(label="Importance baseline")
        page.locator(".mt-classes input").fill("class2, class3")
        page.locator(".mt-module-name input").fill("browser-module")
        page.locator(".mt-modularize").click()
        done = page.locator(".mt-jobs .mt-status-done")
        expect(done).to_have_count(1, timeout=120_000)
        expect(page.locator(".mt-jobs")).to_contain_text("browser-module")
        page.screenshot(path=str(shots / "2_decomposition_done.png"), full_page=True)
        assert "browser-module" in store.names()

        # 3. a second, long job, cancelled
        page.locator(".lm-TabBar-tab", has_text="Decompose").click()
        page.locator(".mt-approach-pick select").select_option(label="SeaM")
        page.locator(".mt-classes input").fill("class0")
        page.locator(".mt-module-name input").fill("to-cancel")
        page.locator(".mt-modularize").click()
        row = page.locator(".mt-jobs > .widget-hbox", has_text="SeaM")
        expect(row.locator(".mt-status-running")).to_have_count(1, timeout=60_000)
        row.locator(".mt-cancel").click()
        expect(row.locator(".mt-status-cancelled")).to_have_count(1, timeout=30_000)
        page.screenshot(path=str(shots / "3_job_cancelled.png"), full_page=True)
        assert "to-cancel" not in store.names()

        # 4. download the zip and check its contents
        page.locator(".lm-TabBar-tab", has_text="Reuse").click()
        page.locator(".mt-download-pick select").select_option(label="browser-module")
        page.locator(".mt-download").click()
        anchor = page.locator("a.mt-download-anchor")
        expect(anchor).to_be_visible(timeout=30_000)
        with page.expect_download(timeout=30_000) as info:
            anchor.click()
        target = tmp_path / "browser-module.zip"
        info.value.save_as(target)
        page.screenshot(path=str(shots / "4_download.png"), full_page=True)
        browser.close()
    with zipfile.ZipFile(target) as zf:
        assert sorted(zf.namelist()) == ["card.json", "weights.safetensors"]
        assert b'"browser-module"' in zf.read("card.json")
    assert sorted(p.name for p in shots.glob("*.png")) >= ["1_search_and_card.png", "2_decomposition_done.png",
                                                           "3_job_cancelled.png", "4_download.png"]
