"""The web client in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``),
driven by Selenium 4 from this (not monkey-patched) process; the server is a subprocess.

``Service("/usr/bin/chromedriver")`` is explicit so nothing is downloaded at run time.
Every wait has a deadline (``WebDriverWait``); nothing sleeps and hopes.

Screenshots for the README are written to ``docs/`` when ``GEVENTCHAT_SCREENSHOTS=1``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.helpers import ServerProcess

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = "/usr/bin/chromedriver"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or not os.path.exists(CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
           "chromium-driver)")

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

WAIT = 15.0
DOCS = Path(__file__).resolve().parent.parent / "docs"


def make_driver(dark: bool = False, width: int = 1000, height: int = 640):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--disable-gpu", f"--window-size={width},{height}",
                "--force-prefers-reduced-motion"):
        opts.add_argument(arg)
    if dark:
        opts.add_argument("--force-dark-mode")
        opts.add_argument("--blink-settings=preferredColorScheme=0")
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    drv.set_page_load_timeout(WAIT)
    return drv


@pytest.fixture
def browser():
    drivers = []

    def make(**kw):
        d = make_driver(**kw)
        drivers.append(d)
        return d

    yield make
    for d in drivers:
        d.quit()


@pytest.fixture
def srv(tmp_path):
    s = ServerProcess(tmp_path)
    s.start()
    yield s
    s.kill()


def wait_until(drv, cond, what: str, timeout: float = WAIT):
    return WebDriverWait(drv, timeout).until(lambda d: cond(d), message=what)


def log_texts(drv) -> list[str]:
    return drv.execute_script(
        "return Array.from(document.querySelectorAll('#log li')).map(li => li.textContent)")


def wait_line(drv, needle: str, timeout: float = WAIT) -> str:
    return wait_until(drv, lambda d: next((t for t in log_texts(d) if needle in t), None),
                      f"a log line containing {needle!r}; log: {log_texts(drv)[-10:]!r}",
                      timeout)


def enter(drv, port: int, name: str) -> None:
    drv.get(f"http://127.0.0.1:{port}/")
    box = wait_until(drv, lambda d: d.find_element(By.ID, "name"), "name field")
    box.send_keys(name, Keys.ENTER)
    wait_until(drv, lambda d: not d.find_element(By.ID, "login").is_displayed(),
               "the login form to go away")


def say(drv, text: str) -> None:
    box = drv.find_element(By.ID, "input")
    box.send_keys(text, Keys.ENTER)


def test_browser_and_native_user_chat(browser, srv):
    native = srv.connect("nat")
    native.send("hello from the terminal")
    drv = browser()
    enter(drv, srv.port, "webby")
    wait_line(drv, "hello from the terminal")  # replayed history
    native.expect("* webby joined")
    # The input has focus without a click, and Enter sends.
    assert drv.switch_to.active_element == drv.find_element(By.ID, "input")
    say(drv, "hello from the browser")
    native.expect("webby: hello from the browser")
    native.send("hi webby, welcome")
    line = wait_line(drv, "hi webby, welcome")
    assert "nat" in line
    mention = drv.find_elements(By.CSS_SELECTOR, "#log li.mention")
    assert mention and "hi webby" in mention[-1].text  # a mention is highlighted
    # A hostile line is shown as the literal text, not as an element.
    native.send("<img src=x onerror=alert(1)>")
    wait_line(drv, "<img src=x onerror=alert(1)>")
    assert drv.find_elements(By.CSS_SELECTOR, "#log img") == []
    # Who is here.
    wait_until(drv, lambda d: {e.text for e in d.find_elements(By.CSS_SELECTOR, "#members button")}
               == {"nat", "webby"}, "member list")
    if os.environ.get("GEVENTCHAT_SCREENSHOTS"):
        native.send("/me waves at the browser")
        wait_line(drv, "waves at the browser")
        DOCS.mkdir(exist_ok=True)
        drv.save_screenshot(str(DOCS / "web-light.png"))
    # Up recalls the last line.
    box = drv.find_element(By.ID, "input")
    box.send_keys(Keys.ARROW_UP)
    assert box.get_attribute("value") == "hello from the browser"
    box.clear()
    # /help comes back through the same command table.
    say(drv, "/help")
    wait_line(drv, "/join ROOM")
    # A private message to the native user.
    say(drv, "/msg nat just for you")
    native.expect("(private) webby -> nat: just for you")
    wait_line(drv, "(private) webby → nat: just for you")
    native.send("/msg webby and back")
    wait_line(drv, "(private) nat → webby: and back")


def test_join_room_by_command_and_click(browser, srv):
    native = srv.connect("nat2")
    drv = browser()
    enter(drv, srv.port, "roamer")
    say(drv, "/join dev")
    wait_until(drv, lambda d: d.find_element(By.ID, "room-name").text == "dev", "room dev")
    native.expect("* roamer left (to dev)")
    native.send("/join dev")
    wait_line(drv, "nat2 joined")
    say(drv, "/topic Dev talk")
    wait_until(drv, lambda d: d.find_element(By.ID, "topic").text == "Dev talk", "topic")
    # Back to the lobby by clicking it in the room list.
    lobby = wait_until(drv, lambda d: next((b for b in d.find_elements(
        By.CSS_SELECTOR, "#rooms button") if b.text.startswith("lobby")), None),
        "lobby in the room list")
    lobby.click()
    wait_until(drv, lambda d: d.find_element(By.ID, "room-name").text == "lobby", "lobby")
    native.expect("* roamer left (to lobby)")
    assert drv.switch_to.active_element == drv.find_element(By.ID, "input")


def test_admin_password_field(browser, tmp_path):
    from tests.helpers import add_admin

    s = ServerProcess(tmp_path)
    add_admin(s.admins, "boss", "s3cret-pass")
    s.start()
    try:
        drv = browser()
        drv.get(f"http://127.0.0.1:{s.port}/")
        wait_until(drv, lambda d: d.find_element(By.ID, "name"), "name field").send_keys(
            "boss", Keys.ENTER)
        pw = wait_until(drv, lambda d: (e := d.find_element(By.ID, "password")).is_displayed()
                        and e, "password field")
        assert pw.get_attribute("type") == "password"
        pw.send_keys("s3cret-pass", Keys.ENTER)
        wait_until(drv, lambda d: not d.find_element(By.ID, "login").is_displayed(),
                   "logged in")
        say(drv, "/help")
        wait_line(drv, "(admins)")
    finally:
        s.kill()


def test_page_survives_a_server_restart(browser, srv):
    """The page reconnects by itself and resumes where it was: back in its room, each line
    shown once (what it had seen is not repeated, what was said meanwhile is shown)."""
    drv = browser()
    enter(drv, srv.port, "phoenix")
    say(drv, "/join dev")
    wait_until(drv, lambda d: d.find_element(By.ID, "room-name").text == "dev", "room dev")
    before = srv.connect("before")
    before.send("/join dev")
    before.expect("* before joined")
    before.send("seen before the restart")
    wait_line(drv, "seen before the restart")
    assert srv.stop() == 0
    wait_line(drv, "disconnected")
    srv.start()  # same port and files
    native = srv.connect("after")
    native.send("/join dev")
    native.send("meanwhile-line")
    wait_line(drv, "reconnected", timeout=30)
    wait_until(drv, lambda d: d.find_element(By.ID, "room-name").text == "dev",
               "back in dev after the restart", timeout=30)
    wait_line(drv, "meanwhile-line", timeout=30)
    texts = log_texts(drv)
    assert sum("seen before the restart" in t for t in texts) == 1, "\n".join(texts)
    assert sum("meanwhile-line" in t for t in texts) == 1, "\n".join(texts)
    say(drv, "still here")
    native.expect("phoenix: still here")


def test_phone_width_and_dark(browser, srv):
    native = srv.connect("nat3")
    native.send("a line for the screenshot")
    drv = browser(dark=True, width=390, height=740)
    enter(drv, srv.port, "phone")
    wait_line(drv, "a line for the screenshot")
    # Nothing overflows sideways at phone width.
    assert drv.execute_script(
        "return document.documentElement.scrollWidth <= window.innerWidth + 1")
    bg = drv.execute_script("return getComputedStyle(document.body).backgroundColor")
    if os.environ.get("GEVENTCHAT_SCREENSHOTS"):
        drv.set_window_size(1000, 640)
        native.send("dark mode follows prefers-color-scheme")
        wait_line(drv, "dark mode follows")
        drv.save_screenshot(str(DOCS / "web-dark.png"))
    assert bg == "rgb(23, 25, 28)"  # the dark palette
