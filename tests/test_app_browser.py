"""The web page in a real headless Chromium (Debian's ``/usr/bin/chromium`` and ``chromedriver``,
driven by Selenium pointed at those binaries: nothing is downloaded at run time).

The app runs in this process on a free port of 127.0.0.1 (every other connection refused). The
browser resolves no host name but 127.0.0.1 (``--host-resolver-rules``), sends everything else to
a dead proxy, and its performance log lists every request the page made: the test asserts all of
them went to the app. It types a prompt, picks a method and the 2:1 size, clicks Generate, sees
the progress bar count the steps, and checks the image's size and the downloaded PNG; it drops a
PNG to fill the form; it presses Cancel during a long run and sees the app ready again; it compares
two methods (gallery, table with the toy metrics, image slider, history) and upscales an image,
after the one-line notice a bad strength gets; it picks a LoRA of the app's --lora-dir, sets its
weight and types a regional prompt, and finds both in the PNG it gets.

The screenshot it takes is the README's ``docs/app.png``: set ``ANYSIZE_APP_SCREENSHOT=docs/app.png``
to write it there. Without Chromium or its driver the module is skipped, except under CI (env
``CI``), where that is a failure (``.ci/run`` installs both).
"""

import json
import os
import re
import shutil
import time
import urllib.request

import pytest
from _app_helpers import require, require_file

require("gradio", "the web UI's tests")
require("selenium", "the browser test drives Chromium with it")
CHROMIUM = require_file("/usr/bin/chromium", "the browser test runs Debian's Chromium")
CHROMEDRIVER = require_file("/usr/bin/chromedriver", "the browser test drives Chromium with it")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service as DriverService  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

from anysize.app import server  # noqa: E402
from anysize.app.handlers import Service  # noqa: E402
from anysize.output import read_metadata, read_parameters  # noqa: E402

PROMPT = "a blue square on a red background"


@pytest.fixture(scope="module")
def app(loopback_module, tmp_path_factory):
    from anysize.builders.lora import tiny_lora

    base = Service.load(None, queue=2)
    loras = tmp_path_factory.mktemp("browser-loras")
    tiny_lora(base.adapter.pipe, loras, name="style.safetensors")
    service = Service.serving(base.adapter, None, queue=2, lora_dirs=[loras])  # the page lists its LoRA
    running = server.launch(service, host="127.0.0.1", port=server.free_port())
    yield running
    running.close()
    service.close()
    base.close()


@pytest.fixture(scope="module")
def browser(app, loopback_module):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1700", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-default-apps",
                # no name resolves but 127.0.0.1, and anything else goes to a proxy that is not there
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--proxy-server=http://127.0.0.1:9",
                "--proxy-bypass-list=127.0.0.1"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=DriverService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    requests = []
    driver.get(app.url)
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#prompt textarea"), 60, "the page to load")
    yield driver, requests
    driver.quit()


def wait_for(condition, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def requested_urls(driver, into: list) -> list:
    """Every URL the page has requested so far (the performance log drains when read)."""
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] in ("Network.requestWillBeSent", "Network.webSocketCreated"):
            into.append(message["params"].get("request", {}).get("url") or message["params"].get("url"))
    return into


def external(urls, app_url):
    origin = app_url.rstrip("/")
    return sorted({u for u in urls if not (u.startswith(origin + "/") or u == origin or u.startswith(("data:", "blob:")))})


def element(driver, selector, timeout=10):
    """The element at ``selector`` once the page shows it (a just-opened accordion or tab renders its
    contents asynchronously: on a loaded machine they appear a moment after the click)."""
    return wait_for(lambda: next((e for e in driver.find_elements(By.CSS_SELECTOR, selector) if e.is_displayed()), None),
                    timeout, f"{selector} on the page")


def pick(driver, elem_id, label_start):
    """Choose the option of a dropdown whose text starts with ``label_start``."""
    element(driver, f"#{elem_id} input").click()
    options = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, f"#{elem_id} li[role=option]"), 10,
                       f"{elem_id}'s options")
    labels = [o.get_attribute("aria-label") for o in options]
    for option, label in zip(options, labels):
        if label.startswith(label_start):
            option.click()
            return
    raise AssertionError(f"{elem_id} has no option {label_start!r}: {labels}")


def type_into(driver, selector, text):
    box = element(driver, selector)
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    box.send_keys(text)
    box.send_keys(Keys.TAB)  # commit the value (Gradio reads it on blur)


def status(driver) -> str:
    return driver.find_element(By.CSS_SELECTOR, "#anysize-status").text.strip()


def test_generate_at_2_to_1_with_progress(app, browser, tmp_path, loopback_only):
    driver, urls = browser
    type_into(driver, "#prompt textarea", PROMPT)
    pick(driver, "method", "multidiffusion")
    wait_for(lambda: any(e.is_displayed() for e in driver.find_elements(By.CSS_SELECTOR, "#gen-options-multidiffusion")),
             10, "multidiffusion's options panel")
    assert driver.find_element(By.CSS_SELECTOR, "#gen-opt-multidiffusion-weighting input").get_attribute("value") == "uniform"
    pick(driver, "size-preset", "2:1")
    wait_for(lambda: driver.find_element(By.CSS_SELECTOR, "#width input").get_attribute("value") == "256", 10,
             "the 2:1 preset to set the width")
    assert driver.find_element(By.CSS_SELECTOR, "#height input").get_attribute("value") == "128"
    type_into(driver, "#steps input", "8")
    type_into(driver, "#seed input", "21")
    driver.find_element(By.CSS_SELECTOR, "#generate").click()
    # the progress bar counts the steps of the stage ("multidiffusion 3/8")
    progress = wait_for(lambda: "multidiffusion" in (t := driver.find_element(By.CSS_SELECTOR, "#image").text)
                        and "/8" in t and t, 120, "the progress bar")
    assert "steps" in progress
    img = wait_for(lambda: [i for i in driver.find_elements(By.CSS_SELECTOR, "#image img") if i.get_attribute("src")],
                   180, "the image")[0]
    wait_for(lambda: driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img), 30,
             "the image to decode")
    assert driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img) == [256, 128]
    wait_for(lambda: status(driver).startswith("done: multidiffusion 256x128 seed 21"), 30, "the done status")
    # the download link gives the PNG the app wrote (the CLI's file, with both metadata chunks)
    link = driver.find_element(By.CSS_SELECTOR, "#png-out a[download]").get_attribute("href")
    assert link.startswith(app.url) and link.endswith("anysize-multidiffusion-256x128-s21.png")
    download = tmp_path / "download.png"
    with urllib.request.urlopen(link, timeout=30) as r:
        download.write_bytes(r.read())
    meta = read_metadata(download)
    assert (meta["prompt"], meta["method"], meta["width"], meta["height"], meta["steps"], meta["seed"]) == (
        PROMPT, "multidiffusion", 256, 128, 8, 21)
    assert read_parameters(download).startswith(f"{PROMPT}\nSteps: 8, ")
    written = max(app.service.out_dir.rglob("*.png"), key=os.path.getmtime)
    assert written.read_bytes() == download.read_bytes()
    shot = tmp_path / "app.png"
    driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("ANYSIZE_APP_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["ANYSIZE_APP_SCREENSHOT"])
    requested_urls(driver, urls)
    assert any("/gradio_api/" in u for u in urls)
    assert external(urls, app.url) == []


def test_dropping_a_png_fills_the_form(app, browser):
    driver, urls = browser
    src = app.service.generate("a green circle on a grey background", width=128, height=256, seed=77, steps=3,
                               method="fstd").path
    driver.find_element(By.CSS_SELECTOR, "#png-in input[type=file]").send_keys(str(src))
    wait_for(lambda: status(driver).startswith("read anysize's parameters"), 30, "the form to fill")
    value = lambda sel: driver.find_element(By.CSS_SELECTOR, sel).get_attribute("value")  # noqa: E731
    assert value("#prompt textarea") == "a green circle on a grey background"
    assert (value("#width input"), value("#height input"), value("#seed input"), value("#steps input")) == (
        "128", "256", "77", "3")
    assert value("#method input") == "fstd" and value("#size-preset input").startswith("1:2")
    assert external(requested_urls(driver, urls), app.url) == []


def test_cancel_a_long_run_and_ready_again(app, browser):
    driver, urls = browser
    pick(driver, "method", "direct")
    pick(driver, "size-preset", "native")
    type_into(driver, "#steps input", "500")
    driver.find_element(By.CSS_SELECTOR, "#generate").click()
    # any step of the first hundred (a poll that missed steps 2 and 3 of a fast run used to wait in vain)
    wait_for(lambda: re.search(r"direct [1-9]\d?/500", driver.find_element(By.CSS_SELECTOR, "#image").text), 120,
             "the long run to start")
    started = time.monotonic()
    driver.find_element(By.CSS_SELECTOR, "#cancel").click()
    text = wait_for(lambda: status(driver).startswith("cancelled") and status(driver), 60, "the cancelled status")
    # seen between two steps, or at the next network call within one (anysize/cancel.py)
    assert re.fullmatch(r"cancelled (before|during) step \d+/500 · ready", text), text
    assert time.monotonic() - started < 30  # not the 500 steps
    wait_for(lambda: "/500" not in driver.find_element(By.CSS_SELECTOR, "#image").text, 30, "the progress bar to go")
    assert app.service.queue.stats()["running"] == 0 and len(app.service.jobs) == 0
    # ready again: a short run goes through
    type_into(driver, "#steps input", "2")
    type_into(driver, "#seed input", "5")
    driver.find_element(By.CSS_SELECTOR, "#generate").click()
    wait_for(lambda: status(driver).startswith("done: direct 128x128 seed 5"), 120, "the next run")
    assert external(requested_urls(driver, urls), app.url) == []


def open_tab(driver, name):
    tab = [b for b in driver.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text.strip() == name]
    assert tab, f"no tab {name!r}"
    tab[0].click()


def test_compare_side_by_side_with_a_slider(app, browser):
    driver, urls = browser
    type_into(driver, "#steps input", "2")
    type_into(driver, "#seed input", "8")
    pick(driver, "size-preset", "native")
    open_tab(driver, "Compare")
    checked = {label.text.strip() for label in driver.find_elements(By.CSS_SELECTOR, "#compare-methods label")
               if label.find_element(By.CSS_SELECTOR, "input").is_selected()}
    assert checked == {"direct", "multidiffusion"}
    driver.find_element(By.CSS_SELECTOR, "#compare").click()
    wait_for(lambda: status(driver).startswith("compared 2 methods"), 180, "the comparison")
    wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#compare-gallery img")) >= 2, 30, "the gallery")
    table = driver.find_element(By.CSS_SELECTOR, "#compare-table").text
    assert "direct" in table and "multidiffusion" in table and "object" in table  # the toy metrics column
    wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#compare-slider img")) == 2, 30, "the image slider")
    open_tab(driver, "History")
    wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#history img")) >= 3, 30, "the session's history")
    open_tab(driver, "Generate")
    assert external(requested_urls(driver, urls), app.url) == []


def test_upscale_tab_and_a_bad_input_message(app, browser, tmp_path):
    driver, urls = browser
    src = app.service.generate("a red star on a grey background", steps=2, seed=4).path
    open_tab(driver, "Upscale")
    driver.find_element(By.CSS_SELECTOR, "#upscale-in input[type=file]").send_keys(str(src))
    type_into(driver, "#steps input", "2")  # strength 0.4 of 2 steps runs no step: the CLI's message
    time.sleep(1)
    driver.find_element(By.CSS_SELECTOR, "#upscale").click()
    toast = wait_for(lambda: [t.text for t in driver.find_elements(By.CSS_SELECTOR, "[data-testid=toast-body]")
                              if "runs no step" in t.text], 60, "the error notice")[0]
    assert "strength 0.4 of 2 steps runs no step at all; use strength >= 0.5 or more steps" in toast
    assert "Traceback" not in driver.page_source
    type_into(driver, "#steps input", "5")
    driver.find_element(By.CSS_SELECTOR, "#upscale").click()
    wait_for(lambda: status(driver).startswith("done: fstd 256x256 seed"), 180, "the upscale")
    img = wait_for(lambda: [i for i in driver.find_elements(By.CSS_SELECTOR, "#upscale-image img")
                            if i.get_attribute("src")], 30, "the enlarged image")[0]
    wait_for(lambda: driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img), 30,
             "the image to decode")
    assert driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img) == [256, 256]
    open_tab(driver, "Generate")
    assert external(requested_urls(driver, urls), app.url) == []


def test_a_lora_and_a_region_from_the_accordion(app, browser, tmp_path, loopback_only):
    driver, urls = browser
    open_tab(driver, "Generate")
    element(driver, "#gen-extras button").click()  # open "LoRA, ControlNet, regions"
    pick(driver, "gen-lora-pick", "style.safetensors")
    value = lambda sel: driver.find_element(By.CSS_SELECTOR, sel).get_attribute("value")  # noqa: E731
    wait_for(lambda: value("#gen-loras textarea") == "style.safetensors:1", 10, "the pick to write its line")
    driver.find_element(By.CSS_SELECTOR, "body").send_keys(Keys.ESCAPE)  # close the dropdown
    type_into(driver, "#gen-loras textarea", "style.safetensors:0.5")
    regions = "#gen-regions textarea"
    pick(driver, "method", "direct")
    wait_for(lambda: driver.find_element(By.CSS_SELECTOR, regions).get_attribute("disabled") is not None, 10,
             "the regions box to be off for direct")
    pick(driver, "method", "multidiffusion")
    wait_for(lambda: driver.find_element(By.CSS_SELECTOR, regions).get_attribute("disabled") is None, 10,
             "the regions box to be on for multidiffusion")
    type_into(driver, regions, "0,0,64,128: a blue square")
    pick(driver, "size-preset", "native")
    type_into(driver, "#steps input", "2")
    type_into(driver, "#seed input", "9")
    driver.find_element(By.CSS_SELECTOR, "#generate").click()
    wait_for(lambda: status(driver).startswith("done: multidiffusion 128x128 seed 9"), 180, "the run")
    link = driver.find_element(By.CSS_SELECTOR, "#png-out a[download]").get_attribute("href")
    download = tmp_path / "lora-region.png"
    with urllib.request.urlopen(link, timeout=30) as r:
        download.write_bytes(r.read())
    meta = read_metadata(download)
    assert [(x["file"], x["scale"]) for x in meta["loras"]] == [("style.safetensors", 0.5)]
    assert [(x["prompt"], x["box"]) for x in meta["regions"]] == [("a blue square", [0, 0, 64, 128])]
    assert 'LoRAs: "style.safetensors:0.5 (' in read_parameters(download)
    # the PNG dropped on "load parameters" refills the LoRA and the region
    type_into(driver, "#gen-loras textarea", "")
    type_into(driver, regions, "")
    clear = driver.find_elements(By.CSS_SELECTOR, "#png-in button[aria-label*=Clear], #png-in button[title*=Clear]")
    if clear:  # the PNG an earlier test dropped
        clear[0].click()
    upload = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#png-in input[type=file]"), 10,
                      f"an empty 'load parameters' box: {driver.find_element(By.CSS_SELECTOR, '#png-in').get_attribute('innerHTML')[:3000]}")
    upload[0].send_keys(str(download))
    wait_for(lambda: value("#gen-loras textarea") == "style.safetensors:0.5", 30, "the LoRA line to come back")
    assert value(regions) == "0,0,64,128:a blue square"
    assert external(requested_urls(driver, urls), app.url) == []
