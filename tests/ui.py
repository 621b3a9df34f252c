"""Acting on the dashboard in a Playwright page as a user does: by the labels on screen.

Shared by ``tests/browser/test_guided_path.py`` and ``docs/take_screenshots.py``. Every wait is on a
condition (a heading, Streamlit's script-run state, a text), bounded by a timeout; none sleeps.
"""

from __future__ import annotations

import re

from playwright.sync_api import Locator, Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

# Streamlit marks its root element with the state of the script run; "notRunning" once a run ends.
IDLE = '[data-testid="stApp"][data-test-connection-state="CONNECTED"][data-test-script-state="notRunning"]'
BUSY = '[data-testid="stApp"]:not([data-test-script-state="notRunning"])'
PAGE_TIMEOUT_MS = 120_000  # the first page also loads the model
WORK_TIMEOUT_MS = 600_000
START_TIMEOUT_MS = 2_000
# Results a run draws can take a while on a busy CPU; assertions wait for them this long.
expect.set_options(timeout=60_000)


def after_action(page: Page, timeout_ms: float = WORK_TIMEOUT_MS) -> None:
    """Wait for the run an action requested to start and then to end.

    React redraws the run state a moment after the click, so waiting for "notRunning" at
    once could see the state from before the click. A run too short to be seen starting
    within START_TIMEOUT_MS is over by then.
    """
    try:
        page.wait_for_selector(BUSY, timeout=START_TIMEOUT_MS)
    except PlaywrightTimeoutError:
        pass
    idle(page, timeout_ms)


def idle(page: Page, timeout_ms: float = WORK_TIMEOUT_MS) -> None:
    """Wait until Streamlit has finished running the script."""
    page.wait_for_selector(IDLE, timeout=timeout_ms)


def heading(page: Page, title: str) -> Locator:
    return page.get_by_role("heading", name=title, level=1, exact=True)


def open_app(page: Page, url: str, title: str) -> None:
    """Open ``url`` (a new Streamlit session) and wait for its page ``title`` to be drawn."""
    page.goto(url)
    expect(heading(page, title)).to_be_visible(timeout=PAGE_TIMEOUT_MS)
    idle(page, PAGE_TIMEOUT_MS)


def go(page: Page, title: str) -> None:
    """Follow the sidebar link to the page ``title`` (same session, so results carry over)."""
    page.get_by_test_id("stSidebarNav").get_by_role("link", name=title, exact=True).click()
    expect(heading(page, title)).to_be_visible(timeout=PAGE_TIMEOUT_MS)
    idle(page, PAGE_TIMEOUT_MS)


def press(page: Page, name: str | re.Pattern, timeout_ms: float = WORK_TIMEOUT_MS) -> None:
    """Press the button ``name`` and wait for the run it starts to end."""
    page.get_by_role("button", name=name).click()
    after_action(page, timeout_ms)


def set_number(page: Page, label: str, value: float) -> None:
    """Type ``value`` into the number input labelled ``label`` and commit it."""
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    expect(box).to_have_value(str(value))
    after_action(page)


def tick(page: Page, label: str) -> None:
    """Tick the checkbox labelled ``label`` (its expander must be open)."""
    box = page.get_by_role("checkbox", name=label, exact=True)
    box.locator("xpath=ancestor::label").click()  # Streamlit hides the input behind its styled label
    expect(box).to_be_checked()
    after_action(page)


def expand(page: Page, header: str | re.Pattern) -> None:
    """Open the expander whose header shows ``header``."""
    summary = page.get_by_test_id("stExpander").locator("summary").filter(has_text=header).first
    if summary.locator("xpath=..").get_attribute("open") is None:
        summary.click()


def choose(page: Page, label: str, option: str | re.Pattern) -> None:
    """Pick ``option`` in the selectbox labelled ``label``."""
    page.get_by_role("combobox", name=label, exact=True).click()
    page.get_by_role("option", name=option).first.click()
    after_action(page)


def selected(page: Page, label: str) -> str:
    """The option a selectbox labelled ``label`` shows."""
    return page.get_by_role("combobox", name=label, exact=True).input_value()


def multiselect(page: Page, label: str) -> Locator:
    """The multiselect widget labelled ``label``."""
    return page.get_by_test_id("stMultiSelect").filter(has=page.get_by_role("combobox", name=label, exact=True))


def tags(page: Page, label: str) -> list[str]:
    """The options chosen in the multiselect labelled ``label``, in order (waits for the first to be drawn)."""
    found = multiselect(page, label).locator("[data-tag]")
    expect(found.first).to_be_attached()
    return found.evaluate_all("t => t.map(e => e.getAttribute('aria-label'))")


def chart(page: Page, key: str) -> Locator:
    """The Plotly chart drawn with ``st.plotly_chart(..., key=key)``, once Plotly has drawn it."""
    found = page.locator(f".st-key-{key} [data-testid=stPlotlyChart]")
    expect(found.locator("g.cartesianlayer").first).to_be_attached(timeout=PAGE_TIMEOUT_MS)
    return found
