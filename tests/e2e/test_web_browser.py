"""The web page in a real browser: Debian's Chromium, headless, driven by Selenium.

A node (``dicomnode run`` as users start it, a ``ct-lesion-seg`` pipeline with the
shipped weights, the web token in its environment) receives a synthetic CT whose
patient name is a canary; once the job is done, Chromium opens the overview, the
studies list and the study page: the SEG thumbnail is loaded and shows the segment's
colour over the grey image, the SR's findings table has rows, an action posted
without the token is refused, and the canary is in no page's source. Screenshots of
each page are kept under ``test-artefacts/screenshots/``.
"""

from __future__ import annotations

import io
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dicomnode.synth.ct import build_ct_series
from tests.factories import encode
from tests.nodeproc import NodeProcess
from tests.scu import storescu
from tests.webclient import WebClient

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CANARY = "CANARY^Browserine^Quokka"
TOKEN = "browser-test-token"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artefacts" / "screenshots"
PIPELINE = (
    '[[pipelines]]\nname = "ct"\nmodel = "ct-lesion-seg"\n[pipelines.match]\nModality = "CT"\n'
)


def require_browser() -> tuple[str, str]:
    """Chromium and its driver; skip without them (fail with DICOMNODE_REQUIRE_TOOLS=1)."""
    browser = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if browser and driver:
        return browser, driver
    reason = "Debian chromium and chromium-driver are not installed"
    if os.environ.get("DICOMNODE_REQUIRE_TOOLS") == "1":
        pytest.fail(f"DICOMNODE_REQUIRE_TOOLS=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, str]]:
    """A node that has run ct-lesion-seg on one canary CT; its study UID."""
    folder = tmp_path_factory.mktemp("browser")
    series = list(
        build_ct_series(
            seed=424242, slices=32, rows=192, columns=192, pixel_spacing=1.8, slice_thickness=2.5
        )
    )
    files = []
    for i, ds in enumerate(series):
        ds.PatientName = CANARY
        ds.AccessionNumber = "BROWSER1"
        path = folder / f"ct{i:03d}.dcm"
        path.write_bytes(encode(ds))
        files.append(path)
    with NodeProcess(
        folder / "node", extra_toml=PIPELINE, study_quiet_seconds=0.5,
        env={"DICOMNODE_WEB__TOKEN": TOKEN},
    ) as running:  # fmt: skip
        assert storescu(running.port, files).returncode == 0
        assert running.web_port is not None
        web = WebClient(running.web_port)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if "/preview.png" in web.get(f"/studies/{series[0].StudyInstanceUID}").text:
                break
            time.sleep(1)
        else:
            pytest.fail("the job made no SEG within 300 s:\n" + running.log_text()[-4000:])
        yield running, str(series[0].StudyInstanceUID)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    binary, driver_path = require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1400,1800"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def visit(driver: object, url: str, name: str) -> str:
    """Open ``url``, keep a screenshot, and return the page source."""
    driver.get(url)  # type: ignore[attr-defined]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))  # type: ignore[attr-defined]
    source: str = driver.page_source  # type: ignore[attr-defined]
    assert CANARY not in source and CANARY.split("^")[0] not in source, name
    return source


def test_the_overview_renders_in_a_browser(node: tuple[NodeProcess, str], browser: object) -> None:
    running, _ = node
    source = visit(browser, f"http://127.0.0.1:{running.web_port}/", "overview")
    assert "DICOM listener" in source and "Queue" in source
    title: str = browser.title  # type: ignore[attr-defined]
    assert title.startswith("Overview")


def test_the_study_page_shows_the_seg_overlay_and_the_findings(
    node: tuple[NodeProcess, str], browser: object
) -> None:
    from selenium.webdriver.common.by import By

    running, study = node
    base = f"http://127.0.0.1:{running.web_port}"
    listing = visit(browser, f"{base}/studies?accession=BROWSER1", "studies")
    assert study in listing
    source = visit(browser, f"{base}/studies/{study}", "study")
    assert CANARY not in browser.title  # type: ignore[attr-defined]
    image = browser.find_element(By.CSS_SELECTOR, "img.preview")  # type: ignore[attr-defined]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not browser.execute_script(  # type: ignore[attr-defined]
        "return arguments[0].complete && arguments[0].naturalWidth > 0", image
    ):
        time.sleep(0.2)
    assert browser.execute_script("return arguments[0].naturalWidth", image) > 0  # type: ignore[attr-defined]
    image.screenshot(str(SCREENSHOTS / "seg-preview.png"))
    browser.save_screenshot(str(SCREENSHOTS / "study.png"))  # type: ignore[attr-defined]
    png = Image.open(io.BytesIO(WebClient(running.web_port).get(
        image.get_attribute("src").removeprefix(base)).body)).convert("RGB")  # fmt: skip
    pixels = np.asarray(png).astype(int)
    coloured = (pixels.max(axis=2) - pixels.min(axis=2)) > 60
    assert coloured.sum() > 50, "no segment colour over the grey image"
    findings = browser.find_elements(By.CSS_SELECTOR, "table.findings tr")  # type: ignore[attr-defined]
    assert len(findings) >= 2, "the SR's findings table has no row"
    assert "Lesion" in source


def test_an_action_without_the_token_is_refused_in_the_browser(
    node: tuple[NodeProcess, str], browser: object
) -> None:
    running, _ = node
    visit(browser, f"http://127.0.0.1:{running.web_port}/jobs", "jobs")
    status = browser.execute_script(  # type: ignore[attr-defined]
        "return fetch('/jobs/1/retry', {method: 'POST'}).then(r => r.status)"
    )
    assert status == 401
    visit(browser, f"http://127.0.0.1:{running.web_port}/audit", "audit")


def test_the_conformance_statement_renders_in_a_browser(
    node: tuple[NodeProcess, str], browser: object
) -> None:
    running, _ = node
    source = visit(browser, f"http://127.0.0.1:{running.web_port}/conformance", "conformance")
    assert "Conformance Statement" in source and "<table>" in source
