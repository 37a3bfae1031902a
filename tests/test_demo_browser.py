"""The demo page in a real browser: demo/app.py serves a tiny model on 127.0.0.1, headless Chromium (Debian's
chromium and chromium-driver, installed by scripts/setup.sh) types a sentence and gets the translation and its
heatmap. The screenshot is kept in test-artifacts/demo-browser.png."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from hf_rnn_attn.hub import save_for_hub
from hf_rnn_attn.pipeline_translation import translation_pipeline
from hf_rnn_attn.tokenizer_training import train_translation_tokenizer
from tiny_models import copy_task_sentences, train_copy_model

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ARTIFACTS = ROOT / "test-artifacts"
SENTENCE = "el gato come"
TIMEOUT = 60  # seconds, for the server to start and for the page to answer


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """demo/app.py, started as a user would, with a tiny model that copies its input."""
    sentences = copy_task_sentences()
    tokenizer = train_translation_tokenizer(sentences, sentences, vocab_size=60)
    folder = tmp_path_factory.mktemp("demo") / "model"
    model = train_copy_model(tokenizer, sentences)
    save_for_hub(model, tokenizer, folder)
    expected = translation_pipeline(model, tokenizer)(SENTENCE, num_beams=5, max_new_tokens=200)[0]
    port = free_port()
    log = (tmp_path_factory.mktemp("demo-log") / "server.log").open("w+")
    server = subprocess.Popen([sys.executable, str(ROOT / "demo" / "app.py"), "--model", str(folder), "--port", str(port)],
                              stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"})
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    pytest.fail(f"demo/app.py did not start on {url}:\n{log.read()[-3000:]}")
                time.sleep(0.5)
        yield url, expected["translation_text"]
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def browser():
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: run `bash scripts/setup.sh` (it installs Debian's chromium and "
                    f"chromium-driver).")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1400", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every request the page makes
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    yield driver
    driver.quit()


def test_the_page_translates_and_shows_the_heatmap(demo, browser):
    demo_url, expected_translation = demo
    browser.get(demo_url)
    wait = WebDriverWait(browser, TIMEOUT)
    source = wait.until(lambda driver: driver.find_element(By.CSS_SELECTOR, "#source textarea"))
    source.send_keys(SENTENCE)
    browser.find_element(By.CSS_SELECTOR, "button#translate").click()
    translation = wait.until(lambda driver: driver.find_element(By.CSS_SELECTOR, "#translation textarea")
                             .get_attribute("value"))
    heatmap = wait.until(lambda driver: next(
        (image for image in driver.find_elements(By.CSS_SELECTOR, "#heatmap img")
         if driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image)), None))
    browser.execute_script("arguments[0].scrollIntoView()", heatmap)
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "demo-browser.png"))

    assert translation == expected_translation  # the default beam size, 5
    assert heatmap.get_attribute("src").startswith("data:image/png;base64,")
    alignment = browser.find_element(By.CSS_SELECTOR, "#alignment textarea").get_attribute("value")
    assert alignment and all(pair.split("-")[0].isdigit() for pair in alignment.split())
    requested = [json.loads(entry["message"])["message"] for entry in browser.get_log("performance")]
    urls = {message["params"]["request"]["url"] for message in requested
            if message["method"] == "Network.requestWillBeSent"}
    assert urls and all(url.startswith((demo_url, "data:", "blob:")) for url in urls), \
        sorted(url for url in urls if not url.startswith(demo_url))  # the page needs nothing from the internet
