"""OHIF Viewer v3 driven in headless Chromium: open a study, a series, read what it drew.

What the tests read, and why:

- the browser console (``goog:loggingPrefs``), where OHIF logs what went wrong: its
  error boundary (``Route viewer Error Boundary`` and the ``Something went wrong``
  notification it stores), a display set that failed (``Error loading displaySet``)
  and uncaught exceptions (level SEVERE);
- the page: error toasts and the ``Something went wrong`` text;
- the viewport's SVG layer, where cornerstone draws annotations: one
  ``g[data-annotation-uid]`` per SR measurement, whose UID is the measurement group's
  Tracking Unique Identifier, and its label text;
- a screenshot of the viewport, for a segmentation's colours over the grey image.

Headless Chromium does not always repaint the SVG layer after an SR loads; a resize
of the window makes cornerstone render again (``redraw``).
"""

from __future__ import annotations

import io
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from tests.ohif import REQUIRE_TOOLS_ENV, OhifServer

__all__ = ["ERROR_MARKS", "ViewerPage", "chromium", "require_chromium"]

#: Console text that means OHIF failed to show something.
ERROR_MARKS = (
    "Error Boundary",
    "Something went wrong",
    "Error loading displaySet",
    "failed to load",
    "Uncaught",
)
#: SEVERE console entries that are not OHIF failing: none expected so far.
_HARMLESS_SEVERE: tuple[str, ...] = ()
_WINDOW = (1600, 1000)


def require_chromium() -> tuple[str, str]:
    """Debian's chromium and chromedriver; skip without them (fail with REQUIRE_TOOLS)."""
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if browser and driver:
        return browser, driver
    reason = "Debian chromium and chromium-driver are not installed"
    if os.environ.get(REQUIRE_TOOLS_ENV) == "1":
        pytest.fail(f"{REQUIRE_TOOLS_ENV}=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@contextmanager
def chromium() -> Iterator[Any]:
    """Headless Chromium (Selenium) that keeps every console entry of its pages."""
    binary, driver_path = require_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
        # Software WebGL (SwiftShader) for cornerstone, without the deprecation warning.
        "--enable-unsafe-swiftshader", f"--window-size={_WINDOW[0]},{_WINDOW[1]}",
    ):  # fmt: skip
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"OHIF: {what} within {timeout:.0f} s")
        time.sleep(0.25)


class ViewerPage:
    """One study open in OHIF, and what the page logged since it was opened.

    Parameters
    ----------
    driver
        A Selenium WebDriver from :func:`chromium`.
    server
        The viewer's server.
    screenshots
        Folder for :meth:`screenshot` (made when needed).
    """

    def __init__(self, driver: Any, server: OhifServer, screenshots: Path) -> None:
        self.driver = driver
        self.server = server
        self.screenshots = screenshots
        self.console: list[dict[str, Any]] = []

    # -- navigation -------------------------------------------------------------

    def open_study(self, study_instance_uid: str, timeout: float = 60) -> None:
        """Open the viewer on a study; wait for its series list and first image."""
        from selenium.webdriver.common.by import By

        self.read_console()  # what an earlier page logged is not this page's
        self.console.clear()
        self.driver.get(self.server.viewer_url(study_instance_uid))
        _wait(
            "no series listed",
            lambda: self.driver.find_elements(By.CSS_SELECTOR, "[data-cy=studyBrowser-panel]"),
            timeout,
        )
        _wait("no image shown", lambda: self._console_has("studyToFirstImage"), timeout)
        # The first visit starts a guided tour over the viewport; end it.
        for button in self.driver.find_elements(By.XPATH, "//*[text()='Skip all']"):
            button.click()

    def series_labels(self) -> list[str]:
        """The series descriptions in the study browser, in order."""
        from selenium.webdriver.common.by import By

        found = self.driver.find_elements(By.CSS_SELECTOR, "[data-cy=series-description-label]")
        return [str(element.text) for element in found]

    def open_series(self, description: str, index: int = 0) -> None:
        """Show a series in the viewport (double-click on its entry in the study browser)."""
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.by import By

        labels = [
            element
            for element in self.driver.find_elements(
                By.CSS_SELECTOR, "[data-cy=series-description-label]"
            )
            if element.text.startswith(description)
        ]
        assert len(labels) > index, f"no series {description!r} in {self.series_labels()}"
        ActionChains(self.driver).double_click(labels[index]).perform()

    def answer(self, question: str, button: str = "Yes", timeout: float = 30) -> None:
        """Click `button` of the viewport prompt that asks `question`."""
        from selenium.webdriver.common.by import By

        _wait(f"no prompt {question!r}", lambda: question in self.text(), timeout)
        buttons = self.driver.find_elements(By.XPATH, f"//button[normalize-space()='{button}']")
        assert buttons, f"prompt {question!r} has no button {button!r}"
        buttons[0].click()

    def open_panel(self, data_cy: str) -> None:
        """Open a side panel by its button (e.g. ``panelSegmentation-btn``)."""
        from selenium.webdriver.common.by import By

        self.driver.find_element(By.CSS_SELECTOR, f"[data-cy={data_cy}]").click()

    def click_text(self, text: str) -> None:
        """Click the innermost element whose text is exactly `text`."""
        from selenium.webdriver.common.by import By

        self.driver.find_element(By.XPATH, f"//*[normalize-space(text())='{text}']").click()

    def next_measurement(self) -> None:
        """Jump to the SR's next measurement (the arrow over the viewport)."""
        from selenium.webdriver.common.by import By

        arrows = self.driver.find_element(By.CSS_SELECTOR, "[data-cy=viewport-action-arrows]")
        arrows.find_elements(By.XPATH, "./*")[-1].click()

    def redraw(self) -> None:
        """Make cornerstone render again (headless Chromium may skip a repaint)."""
        width, height = _WINDOW
        self.driver.set_window_size(width, height + 1)
        time.sleep(0.5)
        self.driver.set_window_size(width, height)
        time.sleep(0.5)

    # -- what is shown ----------------------------------------------------------

    def text(self) -> str:
        """The page's visible text."""
        from selenium.webdriver.common.by import By

        return str(self.driver.find_element(By.TAG_NAME, "body").text)

    def annotations(self) -> dict[str, str]:
        """Annotation UID -> label text of what the viewport's SVG layer draws now."""
        found = self.driver.execute_script(
            "return Array.from(document.querySelectorAll("
            "'svg.svg-layer g[data-annotation-uid]')).map("
            "g => [g.getAttribute('data-annotation-uid'), g.textContent])"
        )
        return {str(uid): str(text) for uid, text in found}

    def outlines(self) -> int:
        """How many polylines (SR regions) the viewport's SVG layer draws now."""
        return int(self.driver.execute_script(
            "return document.querySelectorAll('svg.svg-layer polyline').length"
        ))  # fmt: skip

    def wait_for_annotations(self, timeout: float = 30) -> dict[str, str]:
        """The annotations drawn, once there are some (redrawing while waiting)."""

        def drawn() -> dict[str, str]:
            self.redraw()
            return self.annotations()

        result: dict[str, str] = _wait("no SR annotation drawn", drawn, timeout)
        return result

    def viewport_pixels(self) -> npt.NDArray[np.int16]:
        """The viewport as RGB pixels (rows, columns, 3)."""
        from selenium.webdriver.common.by import By

        pane = self.driver.find_element(By.CSS_SELECTOR, "[data-cy=viewport-pane]")
        image = Image.open(io.BytesIO(pane.screenshot_as_png)).convert("RGB")
        return np.asarray(image).astype(np.int16)

    def screenshot(self, name: str) -> Path:
        """Keep a screenshot of the whole page as ``ohif-<name>.png``."""
        self.screenshots.mkdir(parents=True, exist_ok=True)
        path = self.screenshots / f"ohif-{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    # -- what went wrong --------------------------------------------------------

    def read_console(self) -> list[dict[str, Any]]:
        """Collect the console entries logged since the last call; all of this page's."""
        self.console.extend(self.driver.get_log("browser"))
        return self.console

    def _console_has(self, text: str) -> bool:
        return any(text in entry["message"] for entry in self.read_console())

    def errors(self) -> list[str]:
        """Console entries and page text that say OHIF failed; empty when all went well."""
        found = []
        for entry in self.read_console():
            message = str(entry["message"])
            severe = entry["level"] == "SEVERE" and not any(
                harmless in message for harmless in _HARMLESS_SEVERE
            )
            if severe or any(mark in message for mark in ERROR_MARKS):
                found.append(f"{entry['level']}: {message[:2000]}")
        page = self.text()
        for mark in ("Something went wrong", "Error loading"):
            if mark in page:
                found.append(f"page: {mark}")
        found.extend(f"toast: {toast}" for toast in self._error_toasts())
        return found

    def _error_toasts(self) -> list[str]:
        """Text of the error notifications (sonner toasts) on the page."""
        toasts = self.driver.execute_script(
            "return Array.from(document.querySelectorAll("
            "'[data-sonner-toast][data-type=error]')).map(t => t.textContent)"
        )
        return [str(t) for t in toasts]
