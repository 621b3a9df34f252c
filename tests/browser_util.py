"""Run the dashboard in a real Streamlit server and look at it with headless Chromium.

Shared by ``tests/test_browser.py`` and ``docs/take_screenshots.py``. The server listens on
127.0.0.1 only, on a free port. Chromium runs headless with a fresh profile per page and is
driven over its DevTools pipe (standard library only, no port): a Streamlit page is drawn
only after the server has run the script over a websocket, in real time, which the simple
``--screenshot``/``--dump-dom`` flags with ``--virtual-time-budget`` do not wait for.
Every wait here is bounded.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import html.parser
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app.py"
HOST = "127.0.0.1"
HEALTH_TIMEOUT_S = 90.0
# The first page also waits for the model to load (shared by later pages through st.cache_resource).
RENDER_TIMEOUT_S = 120.0
POLL_S = 0.5
# After the script finishes, Plotly charts and fonts take a moment to draw.
SETTLE_S = 1.5
WINDOW = "1400,1000"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    f"--window-size={WINDOW}",
]


@dataclass(frozen=True)
class AppPage:
    """One ``st.Page`` of app.py: its title, and the URL path it is served at (``""`` = root)."""

    script: str
    title: str
    url_path: str

    @property
    def name(self) -> str:
        """A file-name-safe name for the page (its script's stem)."""
        return Path(self.script).stem


def chromium_binary() -> str | None:
    """The Chromium executable on PATH, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def app_pages(app: Path = APP) -> list[AppPage]:
    """The pages app.py declares with ``st.Page(...)``, read from its source (not executed).

    The URL path is ``url_path`` when given, else the file name's stem (what Streamlit
    infers); the ``default=True`` page is served at the root URL.
    """
    pages = []
    for node in ast.walk(ast.parse(app.read_text())):
        if not (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "Page" and node.args):
            continue
        script = ast.literal_eval(node.args[0])
        wanted = ("title", "url_path", "default")
        options = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg in wanted}
        url_path = "" if options.get("default") else options.get("url_path") or Path(script).stem
        pages.append(AppPage(script=script, title=options.get("title") or Path(script).stem, url_path=url_path))
    return pages


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _healthy(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/_stcore/health", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(process: subprocess.Popen) -> None:
    """Terminate the server's process group, then kill it if it does not exit in time."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)


@contextlib.contextmanager
def streamlit_server(
    env: dict[str, str] | None = None, log_path: Path | None = None, extra_args: list[str] | None = None
) -> Iterator[str]:
    """Run ``streamlit run app.py`` on a free 127.0.0.1 port; yields its base URL.

    ``env`` entries are added to this process's environment; ``extra_args`` are more
    ``streamlit run`` options. The server runs in its own process group, which is
    terminated on exit whatever happens.
    """
    port = free_port()
    base_url = f"http://{HOST}:{port}"
    command = [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.port", str(port),
        "--server.headless", "true",
        "--server.address", HOST,
        "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
        *(extra_args or []),
    ]  # fmt: skip
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    log_file = open(log_path, "wb") if log_path else contextlib.nullcontext(subprocess.DEVNULL)  # noqa: SIM115
    with log_file as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + HEALTH_TIMEOUT_S
            while not _healthy(base_url):
                if process.poll() is not None:
                    raise RuntimeError(f"streamlit exited with code {process.returncode}; see {log_path}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no answer from {base_url}/_stcore/health within {HEALTH_TIMEOUT_S:.0f} s")
                time.sleep(0.5)
            yield base_url
        finally:
            _stop(process)


class DevToolsError(RuntimeError):
    """Chromium answered a DevTools command with an error, or did not answer in time."""


class _DevToolsPipe:
    """A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe``.

    Chromium reads NUL-terminated JSON commands from its fd 3 and writes replies and events
    to its fd 4; no port is opened. Only the standard library is needed.
    """

    def __init__(self, to_browser: int, from_browser: int) -> None:
        self.to_browser, self.from_browser = to_browser, from_browser
        self.buffer, self.next_id = b"", 0

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.from_browser], [], [], remaining)[0]:
                raise DevToolsError("chromium did not answer a DevTools command in time")
            chunk = os.read(self.from_browser, 1 << 20)
            if not chunk:
                raise DevToolsError("chromium closed its DevTools pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        """Run one command and return its result (events arriving meanwhile are dropped)."""
        self.next_id += 1
        command = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            command["sessionId"] = session
        os.write(self.to_browser, json.dumps(command).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise DevToolsError(f"{method}: {reply['error']}")
                return reply.get("result", {})


@contextlib.contextmanager
def _chromium_devtools() -> Iterator[_DevToolsPipe]:
    """Headless Chromium with a fresh profile, driven through its DevTools pipe; always stopped."""
    binary = chromium_binary()
    if binary is None:
        raise FileNotFoundError("chromium is not installed (apt-get install chromium)")
    to_chrome_r, to_chrome_w = os.pipe()
    from_chrome_r, from_chrome_w = os.pipe()

    def wire_pipes() -> None:  # runs in the child: Chromium expects the pipe on fds 3 and 4
        os.dup2(to_chrome_r, 3)
        os.dup2(from_chrome_w, 4)

    with tempfile.TemporaryDirectory(prefix="atlas-chromium-") as profile:
        command = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"]
        try:
            # close_fds=False keeps fds 3 and 4; os.pipe's own fds are not inherited anyway.
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=wire_pipes,  # noqa: PLW1509 - only dup2 before exec
                close_fds=False,
                start_new_session=True,
            )
        except OSError:
            os.close(to_chrome_w)
            os.close(from_chrome_r)
            raise
        finally:
            os.close(to_chrome_r)
            os.close(from_chrome_w)
        try:
            yield _DevToolsPipe(to_chrome_w, from_chrome_r)
        finally:
            os.close(to_chrome_w)
            os.close(from_chrome_r)
            _stop(process)


# True once the page shows its title and Streamlit has finished running the script: no
# status widget ("Running..."), no skeleton or spinner left. Plotly charts draw a moment later.
_SETTLED_JS = """
(() => {
  const titles = [...document.querySelectorAll("h1")].map(h => h.textContent.trim());
  const busy = document.querySelector(['stStatusWidget', 'stAppSkeleton', 'stSkeleton', 'stSpinner']
    .map(id => `[data-testid="${id}"]`).join(", ") + ', [data-test-script-state="running"]');
  return {titles: titles, busy: Boolean(busy)};
})()
"""


@dataclass(frozen=True)
class Rendered:
    """One page as Chromium rendered it: its DOM, whether it settled in time, how long it took."""

    dom: str
    settled: bool
    seconds: float


class BrowserSession:
    """One headless Chromium tab on the app: one Streamlit session across every step.

    ``goto`` opens a URL (a new Streamlit session), ``click`` presses a button by its label,
    ``nav`` follows a sidebar link (same session, so computed state carries over),
    ``wait`` blocks until the page settles, ``screenshot`` and ``dom`` read it.
    """

    def __init__(self, browser: _DevToolsPipe) -> None:
        self.browser = browser
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.resize(*(int(n) for n in WINDOW.split(",")))

    def resize(self, width: int, height: int) -> None:
        """Emulate a window of this size (a taller one shows more of a long page in a screenshot)."""
        self.browser.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            self.session,
        )

    def evaluate(self, expression: str):
        reply = self.browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, self.session)
        return reply.get("result", {}).get("value")

    def goto(self, url: str) -> None:
        self.browser.send("Page.navigate", {"url": url}, self.session)

    def wait(self, title: str, timeout: float = RENDER_TIMEOUT_S) -> bool:
        """True once ``title`` is an ``<h1>`` and Streamlit is idle, twice in a row (then SETTLE_S more)."""
        started, ready_polls = time.monotonic(), 0
        while time.monotonic() - started < timeout:
            time.sleep(POLL_S)
            value = self.evaluate(_SETTLED_JS) or {}
            ready = title in value.get("titles", []) and not value.get("busy", True)
            ready_polls = ready_polls + 1 if ready else 0
            if ready_polls >= 2:
                time.sleep(SETTLE_S)
                return True
        return False

    def click(self, label_prefix: str) -> None:
        """Press the first enabled button whose text starts with ``label_prefix``."""
        self._click_first("button", label_prefix, "starts", "enabled button starting with")

    def check(self, label_prefix: str) -> None:
        """Toggle the first checkbox whose label starts with ``label_prefix`` (open a closed expander first)."""
        self._click_first('[data-testid="stCheckbox"]', label_prefix, "starts", "checkbox (open its expander first) labelled", "input")

    def expand(self, label_part: str) -> None:
        """Open the first closed expander whose header contains ``label_part`` (Streamlit draws its content then)."""
        self._click_first('[data-testid="stExpander"] details:not([open]) summary', label_part, "contains", "closed expander with")

    def nav(self, page_title: str) -> None:
        """Follow the sidebar link to ``page_title`` inside this Streamlit session."""
        # The link's text starts with its icon's ligature name, so match the end.
        self._click_first('[data-testid="stSidebarNav"] a', page_title, "ends", "sidebar link to")

    def _click_first(self, selector: str, text: str, how: str, what: str, inner: str | None = None) -> None:
        arguments = (json.dumps(selector), json.dumps(text), json.dumps(how), json.dumps(inner))
        if not self.evaluate(_CLICK_FIRST_JS % arguments):
            raise DevToolsError(f"no {what} {text!r} on the page")
        time.sleep(2 * POLL_S)  # let Streamlit start the rerun before anyone waits for it to end

    def dom(self) -> str:
        return self.evaluate("document.documentElement.outerHTML") or ""

    def screenshot(self, png: Path) -> None:
        png.parent.mkdir(parents=True, exist_ok=True)
        shot = self.browser.send("Page.captureScreenshot", {"format": "png"}, self.session, timeout=60)
        png.write_bytes(base64.b64decode(shot["data"]))


# Click the first element matching a CSS selector whose text starts with / ends with /
# contains the given text (or the element inside it matching ``inner``); false when there
# is none or it is disabled.
_CLICK_FIRST_JS = """
((selector, text, how, inner) => {
  const matches = (t) => how === "starts" ? t.startsWith(text) : how === "ends" ? t.endsWith(text) : t.includes(text);
  const element = [...document.querySelectorAll(selector)].find(e => matches(e.innerText.trim()));
  const target = element && (inner ? element.querySelector(inner) : element);
  if (!target || target.disabled) return false;
  target.click();
  return true;
})(%s, %s, %s, %s)
"""


@contextlib.contextmanager
def browser_session() -> Iterator[BrowserSession]:
    """A BrowserSession in a fresh headless Chromium, closed afterwards."""
    with _chromium_devtools() as browser:
        try:
            yield BrowserSession(browser)
        finally:
            with contextlib.suppress(DevToolsError):
                browser.send("Browser.close", timeout=5)


def render_page(url: str, title: str, png: Path | None = None, timeout: float = RENDER_TIMEOUT_S) -> Rendered:
    """Open ``url`` in headless Chromium, wait until Streamlit has drawn the page, return its DOM.

    Waits (at most ``timeout`` seconds of real time) until an ``<h1>`` reads ``title`` and
    Streamlit is no longer running the script, twice in a row, then ``SETTLE_S`` more for
    charts; saves a PNG of the window to ``png`` when given. Real time matters here: the
    page is drawn only after the server has run the script over a websocket, which
    Chromium's ``--virtual-time-budget`` does not wait for.
    """
    started = time.monotonic()
    with browser_session() as tab:
        tab.goto(url)
        settled = tab.wait(title, timeout)
        dom = tab.dom()
        if png is not None:
            tab.screenshot(png)
    return Rendered(dom=dom, settled=settled, seconds=time.monotonic() - started)


class _TextOf(html.parser.HTMLParser):
    """Collects the text inside every element of one tag (e.g. all ``h1`` texts)."""

    def __init__(self, tag: str) -> None:
        super().__init__()
        self.tag, self.depth, self.texts = tag, 0, []

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag == self.tag:
            self.depth += 1
            if self.depth == 1:
                self.texts.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == self.tag and self.depth:
            self.depth -= 1

    def handle_data(self, data: str) -> None:
        if self.depth:
            self.texts[-1] += data


def texts_of(dom: str, tag: str) -> list[str]:
    """The stripped text content of every ``<tag>`` element in an HTML string."""
    parser = _TextOf(tag)
    parser.feed(dom)
    return [text.strip() for text in parser.texts]


def dom_problems(dom: str, title: str) -> list[str]:
    """What is wrong with a rendered page's DOM: an exception box, a traceback, no title."""
    problems = []
    if 'data-testid="stException"' in dom:
        problems.append("the page shows a Streamlit exception box")
    if "Traceback" in dom:
        problems.append("the page shows a Python traceback")
    if title not in texts_of(dom, "h1"):
        problems.append(f"no <h1> {title!r} (page not rendered?); h1 texts: {texts_of(dom, 'h1')}")
    return problems


def server_env() -> dict[str, str]:
    """Extra server environment: the tiny test model when the organism is not built."""
    if (ROOT / "cache" / "models" / "refusal-organism" / "config.json").is_file():
        return {}
    return {"REFUSAL_ATLAS_TEST_MODEL": "tiny"}
