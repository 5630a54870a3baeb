"""The region page in a real browser: Debian's chromium + chromedriver (selenium), headless, offline.

Opens the page, picks the bundled demo scene, marks a box with two clicks on the preview, clicks
Classify, waits for the table and checks its top label against the engine's own answer for the box the
clicks made; saves a screenshot (``ALPHACLIP_APP_SCREENSHOT=docs/images/app.png`` keeps a copy there).
Skips only where the system chromium or its driver is absent (CI installs both via ``.ci/run``).
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
if not (Path(CHROMIUM).is_file() and Path(DRIVER).is_file()):
    pytest.skip(f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {DRIVER}): "
                "apt-get install -y chromium chromium-driver", allow_module_level=True)
pytest.importorskip("gradio", reason="the app needs gradio (pip install 'alpha-clip[app]')")
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from alphaclip_integrations.gradio.engine import RegionEngine, parse_regions  # noqa: E402
from alphaclip_train.synthetic import LABELS, demo_scene, load_tiny  # noqa: E402
from test_app import serve  # noqa: E402

# the browser never reaches beyond this machine: no sync, no component updates, no background fetches
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-default-apps",
         "--window-size=1400,2600")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    engine = RegionEngine(*load_tiny(), templates=["a {}."], name="the shipped toy Alpha-CLIP")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS + (f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",):
        options.add_argument(flag)
    with serve(engine) as (_, folder, port):
        driver = webdriver.Chrome(service=Service(DRIVER), options=options)
        try:
            driver.get(f"http://127.0.0.1:{port}/")
            yield driver, engine, folder
        finally:
            driver.quit()


def cell(driver, row: int, col: int) -> str:
    found = driver.find_elements(By.CSS_SELECTOR, f"#table [data-testid='cell-{row}-{col}']")
    return found[0].text.strip() if found else ""


def test_pick_scene_mark_box_classify(page, tmp_path):
    driver, engine, folder = page
    wait = WebDriverWait(driver, 60)
    # pick the bundled demo scene (the first example)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#examples button"))[0].click()
    img = wait.until(lambda d: [i for i in d.find_elements(By.CSS_SELECTOR, "#preview img")
                                if d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i)])[0]
    scene = demo_scene()
    masks = scene[1]
    # the example is the 64px scene enlarged 4x (256px), the preview shows it 2x more: 8 preview pixels per scene pixel
    ys, xs = np.nonzero(masks[0])
    corners = [((xs.min() + 1) * 8, (ys.min() + 1) * 8), ((xs.max() - 1) * 8, (ys.max() - 1) * 8)]
    for x, y in corners:
        w, h, nw, nh = driver.execute_script(
            "const r = arguments[0].getBoundingClientRect(); return [r.width, r.height, arguments[0].naturalWidth, "
            "arguments[0].naturalHeight]", img)
        assert (nw, nh) == (512, 512)
        ActionChains(driver).move_to_element_with_offset(img, x * w / nw - w / 2, y * h / nh - h / 2).click().perform()
        time.sleep(0.5)
    box_line = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#regions textarea").get_attribute("value")
                          if "box" in d.find_element(By.CSS_SELECTOR, "#regions textarea").get_attribute("value") else None)
    spec = parse_regions(box_line)
    assert len(spec) == 1 and spec[0].kind == "box"
    x0, y0, x1, y1 = spec[0].box  # in the 256px example's pixels, within a pixel or two of the clicked corners
    assert abs(x0 - (xs.min() + 1) * 4) <= 2 and abs(y1 - ((ys.max() - 1) * 4 + 1)) <= 2
    driver.find_element(By.ID, "classify-btn").click()
    top = wait.until(lambda d: cell(d, 0, 2) if cell(d, 0, 2) in LABELS else None)
    assert cell(driver, 0, 0) == "1 box" and cell(driver, 0, 1) == "1"
    # the same box through the engine, on the very picture the page holds (the example file)
    example = next(folder.rglob("scene-0.png"))
    from PIL import Image
    value = {"background": np.asarray(Image.open(example).convert("RGBA")), "layers": []}
    want = engine.classify(engine.regions(value, box_line), list(LABELS), ["a {}."], top=1, baselines=False)
    assert top == want.scores.top(0, 1)[0][0]
    assert abs(float(cell(driver, 0, 3)) - want.scores.top(0, 1)[0][1]) <= 1e-4
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#compare [data-testid='cell-4-2']")))
    time.sleep(1.0)  # let the overlay and the gallery images paint
    shot = tmp_path / "app.png"
    driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("ALPHACLIP_APP_SCREENSHOT"):
        shutil.copy(shot, os.environ["ALPHACLIP_APP_SCREENSHOT"])
