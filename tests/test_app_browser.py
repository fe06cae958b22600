"""The web app in a real browser: headless Chromium (Debian's, through selenium) drives the page.

Run by `make test-browser`, which installs chromium and chromium-driver when they are missing;
`make test` leaves it out (marker `browser`). APP_SCREENSHOT names where the screenshot goes
(`make test-browser` writes docs/app.png, the README's picture)."""

from __future__ import annotations

import io
import os
import shutil
import time
import urllib.request

import numpy as np
import pytest
from conftest import serve_app
from PIL import Image

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
STEPS = 4


@pytest.fixture(scope="module")
def editor(shipped_editor):
    return shipped_editor


@pytest.fixture(scope="module")
def url(editor):
    yield from serve_app(editor)


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and DRIVER):
        pytest.skip("no chromium and chromedriver here: `make test-browser` installs them")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1600"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(driver, css: str, timeout: float = 60, condition=None):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    condition = condition or expected_conditions.presence_of_element_located
    return WebDriverWait(driver, timeout).until(condition((By.CSS_SELECTOR, css)))


def wait_until(check, timeout: float = 60):
    end = time.time() + timeout
    while time.time() < end:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def fetch(src: str) -> bytes:
    with urllib.request.urlopen(src, timeout=30) as response:
        return response.read()


def a_scene_the_model_edits_right(editor):
    """A held-out edit the shipped model gets right at the app's settings, and its expected output."""
    from instruct_pix2pix.small_world.edits import sample_edits
    from instruct_pix2pix.small_world.evaluate import EVALUATION_SPLIT, alternatives, score_edit
    from instruct_pix2pix.small_world.scenes import render

    settings = editor.default_settings.replace(num_inference_steps=STEPS)
    for edit in sample_edits(EVALUATION_SPLIT, 60):
        before = render(edit.before)
        out = editor.edit(before, edit.instruction, settings, seed=0, show_progress=False).images[0]
        others = [render(s) for s in alternatives(edit)]
        if score_edit(out, before, render(edit.after), others).success:
            return edit, before, out
    pytest.fail("the shipped model got none of 60 held-out edits right")


def text_of(driver, css: str) -> str:
    from selenium.webdriver.common.by import By

    return " ".join(e.text for e in driver.find_elements(By.CSS_SELECTOR, css))


def result_images(driver):
    from selenium.webdriver.common.by import By

    return [e.get_attribute("src") for e in driver.find_elements(By.CSS_SELECTOR, "#results img")]


def test_the_app_in_a_browser(browser, url, editor, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from instruct_pix2pix.images import read_metadata

    browser.get(url)
    wait_for(browser, "#load-example").click()  # a held-out scene and one of its instructions
    wait_for(browser, "#input-image img")
    instruction = browser.find_element(By.CSS_SELECTOR, "#instruction textarea")
    wait_until(lambda: instruction.get_attribute("value"))
    browser.find_element(By.CSS_SELECTOR, "#edit").click()  # with the ground truth beside the result
    wait_until(lambda: "against the ground truth" in text_of(browser, "#status"))
    wait_for(browser, "#ground-truth img")
    time.sleep(1)
    browser.save_screenshot(os.environ.get("APP_SCREENSHOT") or str(tmp_path / "app.png"))
    first = result_images(browser)

    # Our own scene, uploaded, with its instruction typed: the result is the editor's, which is right.
    edit, before, expected = a_scene_the_model_edits_right(editor)
    scene = tmp_path / "scene.png"
    before.save(scene)
    browser.find_element(By.CSS_SELECTOR, "#input-image input[type=file]").send_keys(str(scene))
    steps = browser.find_element(By.CSS_SELECTOR, "input[aria-label='number input for Steps']")
    steps.send_keys(Keys.CONTROL, "a")
    steps.send_keys(str(STEPS), Keys.TAB)
    instruction.send_keys(Keys.CONTROL, "a")
    instruction.send_keys(Keys.DELETE)
    instruction.send_keys(edit.instruction)
    time.sleep(1)
    browser.find_element(By.CSS_SELECTOR, "#edit").click()
    src = wait_until(lambda: [s for s in result_images(browser) if s not in first])[0]
    result = Image.open(io.BytesIO(fetch(src))).convert("RGB")
    assert np.abs(np.asarray(result, int) - np.asarray(expected, int)).max() <= 1
    assert np.abs(np.asarray(result, int) - np.asarray(before.convert("RGB"), int)).max() > 0

    # The download is the PNG with the settings in it.
    link = wait_for(browser, "#downloads a[href]").get_attribute("href")
    png = tmp_path / "download.png"
    png.write_bytes(fetch(link))
    metadata = read_metadata(png)
    assert edit.instruction in metadata["ip2p-command"] and f"--steps {STEPS}" in metadata["ip2p-command"]

    # Live progress: a long edit shows the editor's own progress bar (its tqdm, followed by Gradio).
    import re

    steps.send_keys(Keys.CONTROL, "a")
    steps.send_keys("150", Keys.TAB)
    time.sleep(1)
    browser.find_element(By.CSS_SELECTOR, "#edit").click()
    bar = re.compile(r'aria-valuetext="editing: \d+ / 150')  # the tqdm bar's own words, step by step
    wait_until(lambda: bar.search(browser.page_source), timeout=60)
    wait_until(lambda: not bar.search(browser.page_source), timeout=180)
    steps.send_keys(Keys.CONTROL, "a")
    steps.send_keys(str(STEPS), Keys.TAB)

    # An empty instruction returns the input, said in the page.
    instruction.send_keys(Keys.CONTROL, "a")
    instruction.send_keys(Keys.DELETE)
    browser.find_element(By.CSS_SELECTOR, "#edit").click()
    wait_until(lambda: "unchanged" in text_of(browser, "#status"))

    # A file that is not an image: one line in the page, and the app goes on.
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    browser.find_element(By.CSS_SELECTOR, "#input-image input[type=file]").send_keys(str(bad))
    instruction.send_keys("make it red")
    time.sleep(1)
    browser.find_element(By.CSS_SELECTOR, "#edit").click()
    message = wait_until(lambda: text_of(browser, ".toast-body") or text_of(browser, "[data-testid='toast-body']"))
    assert "image" in message.lower() and "Traceback" not in message
