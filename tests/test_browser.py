"""The page of `encdec serve` in a real browser: Debian's chromium, headless, driven by Selenium."""

import shutil

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait
from serving import Server, attention_checkpoint, serving

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
# headless, and quiet: no sandbox (CI runs as root), no updates, sync or other calls home
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1100",
]
WAIT_SECONDS = 120  # the CPU may be shared with training runs

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="no chromium/chromedriver found: apt-get install chromium chromium-driver "
    "(.ci/run installs them)",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Server:
    """`encdec serve` with the tiny attention model."""
    log = tmp_path_factory.mktemp("serve_page") / "serve.log"
    with serving(attention_checkpoint(tmp_path_factory), log, "--max-beam-size", "5") as running:
        yield running


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium_profile')}")
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(WAIT_SECONDS)
    yield driver
    driver.quit()


@pytest.fixture()
def page(browser, server):
    """The page, loaded, with the model's description shown."""
    browser.get(server.url)
    wait(browser, lambda: "en → es" in browser.find_element(By.ID, "model").text)
    return browser


def wait(browser, condition):
    # a list the page redraws while it is read goes stale: read it again
    waiting = WebDriverWait(
        browser, WAIT_SECONDS, ignored_exceptions=[StaleElementReferenceException]
    )
    return waiting.until(lambda _: condition())


def translations(browser) -> list[str]:
    return [item.text for item in browser.find_elements(By.CSS_SELECTOR, "#translations li")]


def type_source(browser, text: str) -> None:
    source = browser.find_element(By.ID, "source")
    source.clear()
    source.send_keys(text)


def set_number(browser, element_id: str, value: int) -> None:
    field = browser.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(str(value))


def test_translate_shows_the_translation_and_its_heatmap(page, server, tmp_path):
    type_source(page, "thank you very much")
    page.find_element(By.ID, "translate").click()
    wait(page, lambda: translations(page))
    api = httpx.post(f"{server.url}/translate", json={"text": ["thank you very much"]}, timeout=60)
    (expected,) = api.json()["translations"]
    assert translations(page) == [expected["text"]]
    assert not page.find_element(By.ID, "error").is_displayed()

    heatmap = page.find_element(By.ID, "heatmap")
    assert heatmap.is_displayed()
    columns = [th.text for th in heatmap.find_elements(By.CSS_SELECTOR, "th.source")]
    rows = [th.text for th in heatmap.find_elements(By.CSS_SELECTOR, "th.target")]
    assert (columns, rows) == (expected["source_tokens"], expected["tokens"])
    cells = heatmap.find_elements(By.CSS_SELECTOR, "td.weight")
    weights = [float(cell.get_attribute("data-weight")) for cell in cells]
    assert len(weights) == len(rows) * len(columns)
    for row in range(len(rows)):
        assert abs(sum(weights[row * len(columns) : (row + 1) * len(columns)]) - 1) < 1e-2

    screenshot = tmp_path / "page.png"
    assert page.save_screenshot(str(screenshot))
    assert screenshot.read_bytes().startswith(b"\x89PNG")


def test_ctrl_enter_translates_and_the_n_best_list_shows_scores(page):
    set_number(page, "beam-size", 3)
    set_number(page, "n-best", 3)
    type_source(page, "good morning\ngood night")
    page.find_element(By.ID, "source").send_keys(Keys.CONTROL, Keys.ENTER)
    wait(page, lambda: len(translations(page)) == 2)
    rows = page.find_elements(By.CSS_SELECTOR, "#n-best-list tbody tr")
    assert len(rows) == 3
    scores = [float(row.find_elements(By.TAG_NAME, "td")[2].text) for row in rows]
    assert all(score <= 0 for score in scores)
    assert page.find_element(By.ID, "selected-number").text == "1"

    page.find_elements(By.CSS_SELECTOR, "#translations li")[1].click()
    wait(page, lambda: page.find_element(By.ID, "selected-number").text == "2")
    target_rows = page.find_elements(By.CSS_SELECTOR, "#heatmap th.target")
    first_row = [th.text for th in page.find_elements(By.CSS_SELECTOR, "#n-best-list tbody td")][1]
    assert " ".join(th.text for th in target_rows) == first_row


def test_an_example_sentence_translates_when_clicked(page):
    example = page.find_elements(By.CSS_SELECTOR, "#examples button")[-1]
    sentence = example.text
    example.click()
    wait(page, lambda: translations(page))
    assert page.find_element(By.ID, "source").get_attribute("value") == sentence


def test_the_page_shows_the_error_the_api_returns(page, server):
    set_number(page, "beam-size", 9)
    type_source(page, "good morning")
    page.find_element(By.ID, "translate").click()
    error = page.find_element(By.ID, "error")
    wait(page, lambda: error.is_displayed())
    api = httpx.post(f"{server.url}/translate", json={"text": ["good morning"], "beam_size": 9})
    assert error.text == api.json()["error"]
    assert "max_beam_size" in error.text


def test_a_temperature_samples_instead_of_searching(page, server):
    sentences = ["thank you very much", "good morning", "let's go", "see you tomorrow"]
    body = {"text": sentences, "beam_size": 3}
    searched = httpx.post(f"{server.url}/translate", json=body, timeout=60).json()
    beam_size = page.find_element(By.ID, "beam-size")
    set_number(page, "beam-size", 3)
    set_number(page, "temperature", 50)  # nearly uniform draws: not what beam search finds
    assert not beam_size.is_enabled()  # the beam counts only at temperature 0
    type_source(page, "\n".join(sentences))
    page.find_element(By.ID, "translate").click()
    wait(page, lambda: len(translations(page)) == len(sentences))
    assert not page.find_element(By.ID, "error").is_displayed()
    assert translations(page) != [t["text"] for t in searched["translations"]]
    assert len(page.find_elements(By.CSS_SELECTOR, "#n-best-list tbody tr")) == 1

    set_number(page, "temperature", 0)
    assert beam_size.is_enabled()
    page.find_element(By.ID, "translate").click()
    wait(page, lambda: translations(page) == [t["text"] for t in searched["translations"]])


def test_an_error_clears_the_results_and_timing_of_the_last_request(page):
    type_source(page, "good morning")
    page.find_element(By.ID, "translate").click()
    wait(page, lambda: translations(page))
    assert page.find_element(By.ID, "timing").text.endswith(" ms")
    set_number(page, "beam-size", 9)  # over --max-beam-size 5
    page.find_element(By.ID, "translate").click()
    error = page.find_element(By.ID, "error")
    wait(page, lambda: error.is_displayed())
    assert "max_beam_size" in error.text
    assert translations(page) == []
    assert page.find_element(By.ID, "timing").text == ""
    assert not page.find_element(By.ID, "details").is_displayed()


def test_sampling_asks_for_one_translation_whatever_the_n_best_field_says(page):
    set_number(page, "beam-size", 3)
    set_number(page, "n-best", 3)
    set_number(page, "temperature", 0.8)
    assert not page.find_element(By.ID, "n-best").is_enabled()
    type_source(page, "good morning")
    page.find_element(By.ID, "translate").click()
    wait(page, lambda: translations(page))
    assert not page.find_element(By.ID, "error").is_displayed()
    assert len(page.find_elements(By.CSS_SELECTOR, "#n-best-list tbody tr")) == 1
    set_number(page, "temperature", 0)
    assert page.find_element(By.ID, "n-best").is_enabled()
