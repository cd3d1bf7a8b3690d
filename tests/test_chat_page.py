"""The chat page of `mobilevlm serve`, driven in headless Chromium (Debian's `chromium`,
installed by the Makefile) through Playwright, against the built-in model.

MOBILEVLM_SCREENSHOT=FILE writes the page answering to FILE (`make screenshot`: the
picture in the README)."""

from __future__ import annotations

import base64
import os
import shutil

import pytest
from conftest import REPO

sync_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("uvicorn")

from serving import KEY, Running  # noqa: E402

from mobilevlm import shapes_vqa  # noqa: E402
from mobilevlm.runtime.pipeline import Pipeline  # noqa: E402

expect = sync_api.expect
IMAGE = REPO / "examples" / "shapes.png"
CHROMIUM = os.environ.get("MOBILEVLM_CHROMIUM") or next(
    filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None
)
# as root in a container, without the sandbox; no calls home from a machine with no network
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
ANSWER_S = 60_000  # ms: an answer of the built-in model takes well under a second


@pytest.fixture(scope="module")
def server(torch_threads):
    pipeline = Pipeline.load(precision="int4", memory_budget="1GB")  # the page shows the plan
    running = Running(pipeline, api_key=KEY)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no Chromium (make test installs Debian's chromium; or MOBILEVLM_CHROMIUM)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 900, "height": 700})
    page = context.new_page()
    page.goto(server.url + "/")
    expect(page.locator("#runtime")).to_contain_text("onnxruntime int4")
    expect(page.locator("#runtime")).to_contain_text("MiB of a 954 MiB budget")
    yield page
    context.close()


def use_key(page, key: str = KEY) -> None:
    expect(page.locator("#key")).to_be_visible()  # the server wants a key: the page asks
    page.fill("#key", key)
    page.press("#key", "Enter")
    expect(page.locator("#key")).to_be_hidden()


def ask(page, question: str) -> None:
    page.fill("#prompt", question)
    page.press("#prompt", "Enter")


def answers(page) -> list[str]:
    return page.locator(".assistant .text").all_inner_texts()


def test_the_page_answers_about_an_image_streams_and_keeps_it_for_follow_ups(page):
    use_key(page)
    page.set_input_files("#file", str(IMAGE))
    expect(page.locator("#thumb")).to_be_visible()
    ask(page, "What color is the circle?")
    stats = page.locator(".assistant .stats")
    expect(stats).to_have_count(1, timeout=ANSWER_S)
    assert shapes_vqa.is_correct(answers(page)[0], "red", "color"), answers(page)
    expect(stats.first).to_contain_text("first token")
    expect(stats.first).to_contain_text("tok/s")
    expect(page.locator(".user img")).to_have_count(1)  # the thumbnail stays in the chat

    # every text the answer showed on its way, recorded by the page itself
    page.evaluate("""() => {
        window.shown = [];
        new MutationObserver(() => {
            const all = document.querySelectorAll('.assistant .text');
            window.shown.push(all[all.length - 1].textContent);
        }).observe(document.getElementById('messages'),
                   {subtree: true, childList: true, characterData: true});
    }""")
    ask(page, "Describe the image.")
    expect(stats).to_have_count(2, timeout=ANSWER_S)
    shown = [text for text in page.evaluate("window.shown") if text]
    assert len(set(shown)) > 2 and shown[-1] == answers(page)[1], shown  # piece by piece
    ask(page, "How many shapes are there?")
    expect(stats).to_have_count(3, timeout=ANSWER_S)
    assert shapes_vqa.is_correct(answers(page)[2], "3", "count"), answers(page)
    cached = stats.nth(2).inner_text()
    assert int(cached.split(" cached prompt tokens")[0].split()[-1]) > 49, cached
    if os.environ.get("MOBILEVLM_SCREENSHOT"):
        page.screenshot(path=os.environ["MOBILEVLM_SCREENSHOT"])

    page.click("#reset")  # starts over: nothing of the conversation is left
    expect(page.locator(".message")).to_have_count(0)
    expect(page.locator("#empty")).to_be_visible()


def test_a_wrong_key_a_broken_image_and_a_long_prompt_show_the_servers_errors(page, tmp_path):
    use_key(page, "wrong")
    ask(page, "What color is the circle?")
    expect(page.locator(".error")).to_contain_text("wrong API key", timeout=ANSWER_S)
    use_key(page)  # asked again
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    page.set_input_files("#file", str(broken))
    ask(page, "What color is the circle?")
    expect(page.locator(".error")).to_have_count(2, timeout=ANSWER_S)
    expect(page.locator(".error").nth(1)).to_contain_text("cannot read image")
    page.click("#reset")
    ask(page, "shape " * 9000)  # over the 8,192 positions the budget planned
    expect(page.locator(".error")).to_have_count(1, timeout=ANSWER_S)  # the others cleared
    expect(page.locator(".error")).to_contain_text("context")
    expect(page.locator(".assistant")).to_have_count(0)


def test_an_image_dropped_on_the_page_is_attached(page):
    use_key(page)
    encoded = base64.b64encode(IMAGE.read_bytes()).decode()
    dropped = page.evaluate_handle(
        """(encoded) => {
            const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
            return transfer;
        }""",
        encoded,
    )
    page.dispatch_event("main", "drop", {"dataTransfer": dropped})
    expect(page.locator("#imagename")).to_have_text("dropped.png")
    ask(page, "What color is the circle?")
    expect(page.locator(".assistant .stats")).to_have_count(1, timeout=ANSWER_S)
    assert shapes_vqa.is_correct(answers(page)[0], "red", "color"), answers(page)


def test_shift_enter_is_a_new_line_and_the_page_fits_a_phone(page):
    page.set_viewport_size({"width": 360, "height": 740})
    page.fill("#prompt", "first line")
    page.press("#prompt", "Shift+Enter")
    page.keyboard.type("second line")
    assert page.input_value("#prompt") == "first line\nsecond line"
    expect(page.locator(".message")).to_have_count(0)  # nothing was sent
    assert page.evaluate("document.documentElement.scrollWidth") <= 360  # no sideways scroll
    for control in ("#send", "#attach", "#reset", "#prompt"):
        box = page.locator(control).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 360, control
