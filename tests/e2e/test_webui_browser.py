"""The ToDo controls in a live WebUI's page, driven by a headless Chromium: paste, Send to img2img and the K/V line.

Needs WEBUI_URL (a WebUI with its UI, not --nowebui), selenium and chromium/chromedriver (see
README's "Live-host end-to-end tests"); skipped otherwise. Element ids follow Script.elem_id: script_<tab>_todo_<field>.
"""

import os

import pytest

WEBUI_URL = os.environ.get("WEBUI_URL", "").rstrip("/")
pytestmark = pytest.mark.skipif(not WEBUI_URL, reason="WEBUI_URL is not set (no live WebUI to test against)")
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

TODO_INFOTEXT = ("a cube\nSteps: 2, Sampler: Euler, Seed: 1, Size: 256x256, ToDo: True, ToDo ratio: 0.9375, "
                 "ToDo method: avg-pool, ToDo auto: False, ToDo hires only: False")
PLAIN_INFOTEXT = "a dog\nSteps: 2, Sampler: Euler, Seed: 1, Size: 256x256"


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,3000"):
        options.add_argument(argument)
    try:
        driver = webdriver.Chrome(options=options)
    except WebDriverException as error:
        pytest.skip(f"no headless Chromium: {error.msg}")
    driver.get(WEBUI_URL)
    WebDriverWait(driver, 300).until(lambda d: kv_line(d, "txt2img"))
    yield driver
    driver.quit()


def kv_line(driver, tab):
    return driver.execute_script(
        f"const n = gradioApp().querySelector('#script_{tab}_todo_kv_line .todo-kv-line');"
        "return n ? n.textContent : '';")


def value_of(driver, tab, field, kind="number"):
    selector = f"#script_{tab}_todo_{field} input[type={kind}]"
    if kind == "checkbox":
        selector = f"#script_{tab}_todo_{field}-checkbox input" if field == "enabled" else selector
        return driver.execute_script(f"return gradioApp().querySelector('{selector}').checked;")
    if kind == "radio":
        selector = f"#script_{tab}_todo_{field} input:checked"
    return driver.execute_script(f"return gradioApp().querySelector('{selector}').value;")


def paste(driver, text):
    driver.execute_script(
        "const area = gradioApp().querySelector('#txt2img_prompt textarea');"
        "area.value = arguments[0]; area.dispatchEvent(new Event('input', {bubbles: true}));"
        "gradioApp().querySelector('#tab_txt2img #paste').click();", text)


def test_paste_sets_every_control_and_refreshes_the_line(browser):
    paste(browser, TODO_INFOTEXT)
    WebDriverWait(browser, 30).until(lambda d: value_of(d, "txt2img", "ratio") == "0.9375")
    assert value_of(browser, "txt2img", "enabled", "checkbox") is True
    assert value_of(browser, "txt2img", "method", "radio") == "avg-pool"
    WebDriverWait(browser, 10).until(lambda d: "4x" in kv_line(d, "txt2img"))


def test_paste_without_todo_keys_turns_todo_off(browser):
    paste(browser, TODO_INFOTEXT.replace("ToDo ratio: 0.9375", "ToDo ratio: 0.89"))
    WebDriverWait(browser, 30).until(lambda d: value_of(d, "txt2img", "ratio") == "0.89")
    assert value_of(browser, "txt2img", "enabled", "checkbox") is True
    paste(browser, PLAIN_INFOTEXT)
    WebDriverWait(browser, 30).until(lambda d: value_of(d, "txt2img", "enabled", "checkbox") is False)
    assert value_of(browser, "txt2img", "ratio") == "0.89", "the other controls stay"
    WebDriverWait(browser, 10).until(lambda d: "no ToDo" in kv_line(d, "txt2img"))


def test_send_to_img2img_carries_every_control(browser):
    paste(browser, TODO_INFOTEXT)
    WebDriverWait(browser, 30).until(lambda d: value_of(d, "txt2img", "ratio") == "0.9375")
    browser.execute_script("gradioApp().querySelector('#txt2img_generate').click();")
    WebDriverWait(browser, 600).until(lambda d: d.execute_script(
        "return !!gradioApp().querySelector('#txt2img_gallery img');"))
    browser.execute_script("gradioApp().querySelector('#txt2img_send_to_img2img').click();")
    WebDriverWait(browser, 30).until(lambda d: value_of(d, "img2img", "ratio") == "0.9375")
    assert value_of(browser, "img2img", "method", "radio") == "avg-pool"
    assert value_of(browser, "img2img", "enabled", "checkbox") is True


def test_img2img_resize_by_uses_the_image_size_times_scale(browser):
    """After Send to img2img the width/height sliders hold the image's size; Scale 2 must double it."""
    browser.execute_script("switch_to_img2img();")  # every host's ui.js: Gradio 3 and 4 lay the tab buttons out apart
    browser.execute_script(
        "const group = gradioApp().querySelector('#img2img_tab_resize_by').parentElement;"  # Classic's has no id
        "[...group.querySelectorAll('button')].find(b => b.textContent.trim() === 'Resize by').click();"
        "const scale = gradioApp().querySelector('#img2img_scale input[type=number]');"
        "scale.value = 2; scale.dispatchEvent(new Event('input', {bubbles: true}));")
    width, height = browser.execute_script("return currentImg2imgSourceResolution(0, 0, 1).slice(0, 2);")
    expected = f"{2 * width}\u00d7{2 * height}" if width else "no image selected"
    WebDriverWait(browser, 10).until(lambda d: expected in kv_line(d, "img2img"))
