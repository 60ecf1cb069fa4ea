"""`streamlit run app.py` in a real headless Chromium: extraction and comparison jobs survive what a user does,
every page opens.

Needs Debian's `chromium-headless-shell` (or `chromium`). CI installs the first: Chromium's engine without the desktop
browser around it, the build Playwright itself runs headless; over the walk it spends about an eighth less CPU.
With ``$OTOLITH_SCREENSHOTS`` set, the walk saves a picture of each page there (that is how README's pictures are
made); a failed walk saves one in the test's temporary folder.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path
from typing import NamedTuple

import pytest

from conftest import copy_cache_lacking

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium-headless-shell") or shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PAGES = ["Data", "Embeddings", "Results", "Errors"]
MISSING = 60  # images whose morphometrics the walk extracts (0.2 s each): enough to outlast a reload
# `streamlit run`, able to write every thread's stack into its output on SIGUSR1 (a failed walk asks for it)
LAUNCH = ("import faulthandler, signal, sys; faulthandler.register(signal.SIGUSR1, all_threads=True); "
          "from streamlit.web.cli import main; sys.argv[0] = 'streamlit'; sys.exit(main())")

if CHROMIUM is None:
    message = "Debian's Chromium is needed for the browser test: apt-get install chromium-headless-shell"
    if os.environ.get("CI"):
        raise RuntimeError(message)  # CI installs it; never pass silently there
    pytest.skip(message, allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Dashboard(NamedTuple):
    url: str
    folder: Path  # holds cache/ and server.log


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory, demo_manifest, demo_cache):
    """The dashboard on a free port, for this file's tests (each opens its own browser tab: a session of its own), its
    cache holding the session's small demo (149 images) where the first start writes its 400-image demo
    (tests/test_dashboard.py checks that writing), and the demo's embeddings but for the last MISSING images'
    morphometrics and all of pixels-32: the walk's extraction jobs are real, and short. Its folder holds the cache
    and the server's output."""
    folder = tmp_path_factory.mktemp("dashboard")
    copy_cache_lacking(demo_cache, demo_manifest, folder / "cache", {"otolith-morphometrics": MISSING,
                                                                    "pixels-32": None})
    shutil.copytree(demo_manifest.parent, folder / "cache" / "demo_data")
    port = _free_port()
    env = dict(os.environ, OTOLITH_CACHE_DIR=str(folder / "cache"))
    env.pop("OTOLITH_DATA", None)
    # the server's output goes to a file: a pipe nobody reads fills up (64 KiB of warnings over a long walk) and
    # then blocks the server mid-write, which froze the walk's page on CI
    log = (folder / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, "run", str(ROOT / "app.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    (folder / "server.pid").write_text(str(process.pid))
    try:
        deadline = time.time() + 60
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                if time.time() > deadline or process.poll() is not None:
                    raise RuntimeError("streamlit did not start")
                time.sleep(0.5)
        yield Dashboard(url, folder)
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for this file's tests, with one browsing context (a profile: one HTTP cache, so the
    dashboard's front end is fetched and compiled once, not in every tab); each test opens its own tabs in it, and
    each tab is a Streamlit session of its own."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport={"width": 1500, "height": 1100})
        context.add_init_script(STILL)
        yield context
        context.close()
        browser.close()


# Streamlit's spinners, running-man icon and transitions, stopped: a still page (as in Playwright's own screenshots).
# Headless Chromium otherwise draws them in software frame after frame while jobs run (over the walk: 89 CPU-s of
# Chromium with them, 77 without, one run each), and they change nothing a test reads.
STILL = ("document.addEventListener('DOMContentLoaded', () => { const style = document.createElement('style'); "
         "style.textContent = '*, *::before, *::after { animation: none !important; transition: none !important; }'; "
         "document.head.appendChild(style); });")


def _tab(browser):
    """A new tab (a session of its own) in the browser's desktop-sized window, its page kept still (``STILL``)."""
    return browser.new_page()


@pytest.mark.slow
def test_extraction_goes_on_through_widget_changes_page_switches_and_a_reload(dashboard, browser, tmp_path,
                                                                             tiny_timm_dir, demo_manifest):
    """The issue's walk-through: Run starts extraction jobs; change the seed, open another page, reload the tab;
    the settings are restored from the URL, the jobs keep going and finish, and every page then opens."""
    n = len(demo_manifest.read_text().splitlines()) - 1
    shots = Path(os.environ["OTOLITH_SCREENSHOTS"]) if os.environ.get("OTOLITH_SCREENSHOTS") else None
    server = dashboard.url
    page = _tab(browser)
    try:
        page.goto(server, timeout=120_000)
        page.get_by_role("button", name="Run comparison").wait_for(timeout=300_000)
        page.wait_for_timeout(1500)  # let the first script run finish before pressing Run
        _press_run(page)
        sidebar = page.locator('[data-testid="stSidebar"]')
        sidebar.get_by_role("heading", name="Jobs").wait_for(timeout=120_000)
        _open(page, "Results", page.get_by_text("Waiting for extraction").first, timeout=120_000)
        _picture(page, shots, "waiting.png")

        seed = page.get_by_label("Seed", exact=True)  # touch a widget while the jobs run
        seed.fill("3")
        seed.press("Enter")
        _open(page, "Embeddings")
        page.wait_for_function("() => new URLSearchParams(location.search).get('seed') === '3'", timeout=60_000)
        page.reload()
        page.get_by_label("Seed", exact=True).wait_for(timeout=120_000)
        assert page.get_by_label("Seed", exact=True).input_value() == "3"  # restored from the URL after the reload
        assert "encoders=otolith-morphometrics" in page.url and "encoders=pixels-32" in page.url
        sidebar = page.locator('[data-testid="stSidebar"]')
        # the jobs are listed after the reload (running, or finished already on a fast machine)
        sidebar.get_by_text(re.compile(f"/{n} images|finished: {n} images")).first.wait_for(timeout=60_000)
        for extracted in (MISSING, n):  # both end: the morphometrics the cache lacked, every image's pixels
            sidebar.get_by_text(f"finished: {n} images ({extracted} extracted now").first.wait_for(timeout=600_000)
        assert page.locator('[data-testid="stException"]').count() == 0

        page.wait_for_timeout(3000)  # the status area reruns the page when the jobs end; let that run finish
        _press_run(page)  # the seed changed: run these settings
        for name in PAGES:
            _open(page, name)
            if name == "Results":
                page.get_by_role("button", name="predictions.csv").first.wait_for(timeout=300_000)
                assert page.get_by_text("seed 3").count() > 0
            if name == "Errors":
                page.get_by_text("Where two models disagree").first.wait_for(timeout=300_000)
            _settle(page)
            assert page.locator('[data-testid="stException"]').count() == 0, f"exception box on {name}"
            _picture(page, shots, f"{name.lower()}.png")
        _review_and_read_again(page, server, dashboard.folder / "cache", shots, tiny_timm_dir)
    except BaseException as exc:
        page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)  # kept in pytest's tmp folder
        _explain(exc, page, dashboard.folder / "server.log")
        raise
    page.close()


def _picture(page, shots: Path | None, name: str) -> None:
    """A full-page picture for README (only when ``$OTOLITH_SCREENSHOTS`` names a folder: each costs the browser
    seconds of CPU on a long page)."""
    if shots is not None:
        shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shots / name), full_page=True)


def _explain(exc: BaseException, page, log: Path) -> None:
    """Add to a failed walk's report what CI's log cannot otherwise show: the page's exception boxes, the end of
    its text, and the end of the server's output."""
    try:
        boxes = page.locator('[data-testid="stException"]').all_inner_texts()
        text = page.locator('[data-testid="stMain"]').first.inner_text(timeout=5_000)
    except Exception as failure:  # the page itself may be gone
        boxes, text = [], f"(the page could not be read: {failure})"
    try:
        script = page.locator("[data-test-script-state]").first.get_attribute("data-test-script-state", timeout=5_000)
    except Exception as failure:
        script = f"unknown ({failure})"
    exc.add_note(f"the page's address: {page.url}; its script: {script}")
    exc.add_note("exception boxes on the page: " + (" | ".join(boxes) or "none"))
    exc.add_note("the page's text ends with:\n" + text[-3000:])
    pid = log.with_name("server.pid")
    if pid.exists():  # every thread's stack of the server, to see where a script run that never ends waits
        try:
            os.kill(int(pid.read_text()), signal.SIGUSR1)
            time.sleep(2)
        except OSError:
            pass
    if log.exists():
        exc.add_note("the server's output ends with:\n" + log.read_text(errors="replace")[-12000:])


def _open(page, name: str, shows=None, *, timeout: int = 300_000) -> None:
    """Click the sidebar's link to page ``name``, then wait for ``shows`` (by default the page's heading).

    Now and then a page click is lost while jobs end and the status area reruns the page: the server stays idle on
    the old page (seen on CI, and here under load, where every thread's stack showed no script running; a small
    Streamlit 1.67 app whose self-refreshing fragment reruns the whole app lost 1 click in 60). A person clicks
    again; so does the walk, once, and says so in a warning. A page still drawing after a minute is waited for,
    never clicked twice."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    shows = shows or page.get_by_role("heading", name=name).first
    page.get_by_role("link", name=name).first.click()
    try:
        shows.wait_for(timeout=60_000)
        return
    except PlaywrightTimeout:
        if page.locator('[data-test-script-state="running"]').count() > 0:
            shows.wait_for(timeout=timeout)
            return
    warnings.warn(f"the click on the {name} link was lost (the page stayed idle on the old one); clicked again")
    page.get_by_role("link", name=name).first.click()
    shows.wait_for(timeout=timeout)


def _settle(page) -> None:
    """Wait until the page's script run has ended (an exception box would be drawn by then); for README's
    pictures (``$OTOLITH_SCREENSHOTS``) a further 1.5 s, so charts finish drawing."""
    page.wait_for_selector('[data-test-script-state="notRunning"]', state="attached", timeout=120_000)
    page.wait_for_timeout(1500 if os.environ.get("OTOLITH_SCREENSHOTS") else 200)


def _press_run(page) -> None:
    """Press Run comparison once: the sidebar must confirm it, even when the press lands while the page reruns
    itself (here, right after the jobs ended); a press used to be lost then, and a person had to press again."""
    page.get_by_role("button", name="Run comparison").click()
    page.get_by_text("The Results and Errors pages show this run.").wait_for(timeout=60_000)


def _review_and_read_again(page, server: str, cache: Path, shots: Path | None, vit: Path) -> None:
    """The Review page from a shared link asking for the logistic head on a built-in and a tiny random-weight
    timm ViT typed as "Other model" (3 folds, to keep it short): Run extracts the ViT, then starts the comparison
    job; a reload and a page change while it runs join it (no second job); the ranking shows, Read again opens the
    blind view, a typed reading is saved to second_readings.csv, the map and the picked image's neighbours are
    drawn, and the ViT's heat map is laid over the photo."""
    from urllib.parse import parse_qsl, urlencode, urlsplit

    params = [(k, v) for k, v in parse_qsl(urlsplit(page.url).query, keep_blank_values=True)
              if k not in ("heads", "encoders", "folds", "run", "extra_model")]
    params += [("encoders", "otolith-morphometrics"), ("extra_model", f"local-dir:{vit}"), ("heads", "logistic"),
               ("folds", "3")]
    page.goto(f"{server}/review?{urlencode(params)}", timeout=120_000)
    page.get_by_role("button", name="Run comparison").wait_for(timeout=120_000)
    page.wait_for_timeout(1500)
    _press_run(page)  # starts the ViT's extraction, then the comparison job when it ends
    page.get_by_text("Cross-validating in the background").first.wait_for(timeout=300_000)
    started = _comparison_jobs(cache)
    page.reload()  # the job goes on without the tab; the reloaded tab (a new session) joins it
    page.get_by_role("button", name="Run comparison").wait_for(timeout=120_000)
    _open(page, "Data")
    _open(page, "Review", page.get_by_role("heading", name="Doubtful reader ages").first)
    assert _comparison_jobs(cache) == started, "the reload or the page change started the comparison again"
    _settle(page)  # the run that drew the ranking has ended: the click below is not one a rerun may swallow
    page.get_by_role("button", name="Read again").first.click()
    page.get_by_text("Nearest in").first.wait_for(timeout=120_000)  # the image read again is the map's pick
    page.get_by_label("Your name or initials").wait_for(timeout=60_000)
    assert page.get_by_text("The reader's age was").count() == 0  # blind until a reading is entered
    page.get_by_label("Your name or initials").fill("GS")
    page.get_by_label("Your age reading (years)").fill("5")
    page.get_by_role("button", name="Save reading").click()
    page.get_by_text("The reader's age was").first.wait_for(timeout=60_000)
    page.get_by_text("Nearest in").first.wait_for(timeout=120_000)  # still the map's pick after the reading
    page.locator('[data-testid="stVegaLiteChart"] canvas, [data-testid="stVegaLiteChart"] svg').first.wait_for(
        timeout=60_000)  # the embedding map is drawn
    _settle(page)
    assert page.locator('[data-testid="stException"]').count() == 0, "exception box on Review"
    _picture(page, shots, "review.png")
    page.get_by_text("Nearest in").first.scroll_into_view_if_needed()  # the map sits just above
    _settle(page)
    _picture(page, shots, "review_map.png")
    page.get_by_role("button", name="Show the heat map").click()
    page.get_by_text("patches)").first.wait_for(timeout=120_000)  # the overlay's caption: "(4 x 4 patches)"
    _settle(page)
    assert page.locator('[data-testid="stException"]').count() == 0, "exception box after the heat map"
    page.get_by_text("patches)").first.scroll_into_view_if_needed()
    _picture(page, shots, "review_heat_map.png")
    _click_on_the_map(page)
    saved = list(cache.glob("readings/second_readings.csv"))
    assert len(saved) == 1 and saved[0].read_text().count("\n") == 2  # the header and the reading
    _box_on_the_map(page)
    _a_second_reader_in_another_tab(_tab(page.context), page.url, cache)


def _box_on_the_map(page) -> None:
    """A box dragged over most of the first map opens its images as a gallery below the maps."""
    chart = page.locator('[data-testid="stVegaLiteChart"]').first
    chart.scroll_into_view_if_needed()
    box = chart.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.15, box["y"] + box["height"] * 0.15)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.85, box["y"] + box["height"] * 0.85, steps=8)
    page.mouse.up()
    page.get_by_text(re.compile(r"^\d+ selected")).first.wait_for(timeout=60_000)
    assert page.get_by_text("no image inside the box").count() == 0
    assert page.locator('[data-testid="stException"]').count() == 0, "exception box after a box on the map"


def _a_second_reader_in_another_tab(page, url: str, cache: Path) -> None:
    """Reader B opens the same run in a second tab: the first image to read is the one GS read, with none of GS's
    ages shown; B flags it uncertain with a comment and presses the age key 3; only then GS's age is shown."""
    import pandas as pd

    page.goto(url, timeout=120_000)
    try:
        page.get_by_label("Your name or initials").wait_for(timeout=300_000)
    except BaseException as exc:
        page.screenshot(path=str(cache.parent / "second_tab_failure.png"), full_page=True)
        _explain(exc, page, cache.parent / "server.log")
        raise
    _settle(page)
    name = page.get_by_label("Your name or initials")
    name.fill("B")
    name.press("Enter")
    page.get_by_text(re.compile(r"^0 of \d+ read by you")).first.wait_for(timeout=60_000)
    assert page.get_by_text("other readers").count() == 0 and page.get_by_text("The reader's age was").count() == 0
    page.get_by_text("uncertain", exact=True).first.click()
    _settle(page)
    comment = page.get_by_label("Comment")
    comment.fill("faint edge")
    comment.press("Enter")
    _settle(page)
    page.evaluate("document.activeElement && document.activeElement.blur()")  # out of the text box: keys go to the page
    page.keyboard.press("3")
    page.get_by_text("other readers: GS: 5").first.wait_for(timeout=60_000)
    assert page.locator('[data-testid="stException"]').count() == 0, "exception box in the second tab"
    readings = pd.read_csv(cache / "readings" / "second_readings.csv", keep_default_na=False)
    assert readings[["reader", "second_age", "flags", "comment"]].values.tolist()[-1] == ["B", 3, "uncertain", "faint edge"]
    assert readings["image"].iloc[-1] == readings["image"].iloc[0]  # the image GS read
    page.get_by_text("read by two or more human readers").first.wait_for(timeout=60_000)
    page.close()


def _comparison_jobs(cache: Path) -> dict[str, float]:
    """The comparison jobs recorded in ``cache``: id -> when it was started."""
    from otolith_core.jobs import list_jobs

    return {j.id: j.started for j in list_jobs(cache) if j.kind == "comparison"}


def _click_on_the_map(page) -> None:
    """A click on the first embedding map picks the image nearest to it: the picked image and its neighbours
    change (two spots, in case the first one's nearest image is the one already picked)."""
    picked = page.locator('[data-testid="stMarkdownContainer"]').filter(has_text=" · reader age ").first
    before = picked.inner_text()
    chart = page.locator('[data-testid="stVegaLiteChart"]').first
    chart.scroll_into_view_if_needed()
    box = chart.bounding_box()
    for fx, fy in ((0.35, 0.45), (0.6, 0.3)):
        chart.click(position={"x": box["width"] * fx, "y": box["height"] * fy})
        try:
            page.wait_for_function(
                """([before]) => [...document.querySelectorAll('[data-testid="stMarkdownContainer"]')]
                       .some(e => e.innerText.includes(' · reader age ') && e.innerText !== before)""",
                arg=[before], timeout=30_000)
            break
        except Exception:  # playwright's TimeoutError: this spot's nearest image was the one already picked
            continue
    after = picked.inner_text()
    assert after != before, "a click on the map picked no other image"
    page.get_by_text("Nearest in").first.wait_for(timeout=60_000)
    assert page.locator('[data-testid="stException"]').count() == 0, "exception box after a click on the map"


@pytest.mark.slow
def test_settings_keep_their_values_when_one_switches_to_ones_own_data(dashboard, browser, tmp_path):
    """Choosing "Folder or CSV manifest" hides the settings until a path is typed; they come back as they were
    (the browser used to draw them at their defaults: Ridge alpha 0, no heads, while the run used the old ones)."""
    from conftest import write_tray_export

    export = write_tray_export(tmp_path, boxes_per_tray=3)
    page = _tab(browser)
    try:
        page.goto(dashboard.url, timeout=120_000)
        page.get_by_role("button", name="Run comparison").wait_for(timeout=300_000)
        page.wait_for_timeout(1500)
        assert page.get_by_label("Ridge α").input_value() == "6.00"
        page.get_by_text("Folder or CSV manifest").first.click()
        page.get_by_label("Folder or manifest path").wait_for(timeout=60_000)
        page.wait_for_timeout(1500)
        path = page.get_by_label("Folder or manifest path")
        path.fill(str(export))
        path.press("Enter")
        page.get_by_label("Ridge α").wait_for(timeout=60_000)
        page.wait_for_timeout(2000)
        assert page.get_by_label("Ridge α").input_value() == "6.00"
        assert page.get_by_label("SVC C").input_value() != "0.0001"
        assert page.get_by_role("button", name="Run comparison").is_enabled()  # heads and encoders kept
    except BaseException:
        page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
        raise
    finally:
        page.close()
