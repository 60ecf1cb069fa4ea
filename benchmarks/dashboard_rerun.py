"""(j) The dashboard once embeddings and a comparison exist, at the cod study's size (8,637 images), in a real browser.

Writes 8,637 small drawn images (48 x 48 PNG, rings by age, two photos of some fish) and a manifest, extracts two
built-in encoders into a fresh cache (`otolith extract`: pixels-32 and its squash variant, 3,072 dimensions each,
more than SO400M's 1,152), starts `streamlit run app.py` on them and opens Results in Chromium with a run of
ridge and svc asked for in the address. Times, from one run:
  - the comparison job (started by the page, cross-validating in its own process) until Results shows it;
  - warm reruns after a widget change that recomputes nothing, from the click until Streamlit's script run has
    ended in the browser (the app's `data-test-script-state` back to notRunning): the Results page's per-fold
    metric, the sidebar's tie level, and Errors' minimum error of the gallery;
  - the same kind of rerun on a bare Streamlit page drawing the same summary table, the three metric bar charts
    and the per-fold chart from the same stored comparison, with no sidebar, no jobs and no caches of ours: the
    floor Streamlit itself sets on this machine.

    python benchmarks/dashboard_rerun.py [--n 8637] [--rounds 5] [--keep DIR]
"""

import argparse
import os
import pickle
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ENCODERS = ("pixels-32", "pixels-32@squash")
HEADS = ("ridge", "knn")

BARE = textwrap.dedent("""
    import pickle, streamlit as st
    from otolith_core.charts import BAR_METRICS, fold_lines, metric_bars
    st.set_page_config(layout="wide")
    comparison = pickle.load(open({path!r}, "rb"))
    summary = comparison.summary_frame()
    st.dataframe(summary, hide_index=True)
    for column, metric in zip(st.columns(3), BAR_METRICS):
        column.altair_chart(metric_bars(summary, metric, height=380), use_container_width=True)
    metric = st.radio("Metric", list(BAR_METRICS), horizontal=True, key="fold_metric")
    st.altair_chart(fold_lines(comparison.folds_frame(), metric), use_container_width=True)
""")


def write_images(folder: Path, n: int) -> Path:
    """``n`` 48 x 48 grey PNGs whose ring count is the age (1..10, cod-like counts), about one fish in ten
    photographed twice; returns the manifest."""
    from PIL import Image

    rng = np.random.default_rng(0)
    images = folder / "images"
    images.mkdir(parents=True)
    radius = np.hypot(*np.meshgrid(np.arange(48) - 23.5, np.arange(48) - 23.5))
    rows, fish = [], 0
    while len(rows) < n:
        age = int(np.clip(round(rng.normal(5, 2)), 1, 10))
        for _ in range(2 if rng.random() < 0.1 else 1):
            rings = 0.5 + 0.5 * np.cos(radius * np.pi * age / 24 + rng.normal(0, 0.3))
            pixels = np.clip(rings * 180 + rng.normal(40, 25, radius.shape), 0, 255).astype(np.uint8)
            name = f"images/{len(rows):05d}.png"
            Image.fromarray(pixels).save(folder / name)
            rows.append(f"{name},{age},fish{fish}")
        fish += 1
    manifest = folder / "manifest.csv"
    manifest.write_text("path,age,fish_id\n" + "\n".join(rows[:n]) + "\n")
    return manifest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(script: Path, env: dict):
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(port), "--server.address",
         "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return process, url
        except OSError:
            if time.time() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("streamlit did not start")
            time.sleep(0.3)


WATCH = """() => {
    const app = document.querySelector('[data-test-script-state]');
    window.__runs = [];
    new MutationObserver(() => window.__runs.push([performance.now(), app.getAttribute('data-test-script-state')]))
        .observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
    return performance.now();
}"""
ENDED = "() => window.__runs.some(r => r[1] === 'running') && window.__runs.at(-1)[1] === 'notRunning'"


def timed_rerun(page, action) -> float:
    """Seconds from ``action`` (a click, a typed value) to the end of the script run it caused, in the browser."""
    page.wait_for_timeout(800)  # the page is idle (charts drawn)
    start = page.evaluate(WATCH)
    action()
    page.wait_for_function(ENDED, timeout=120_000)
    return (page.evaluate("() => window.__runs.at(-1)[0]") - start) / 1000


def radio_option(page, label: str, option: str):
    group = page.locator('[data-testid="stRadio"]').filter(has_text=label).last
    return group.get_by_text(option, exact=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=8637)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keep", help="write the data and cache here and keep them (default: a temporary folder)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("needs Debian's chromium (apt-get install chromium) and playwright")
    folder = Path(args.keep or tempfile.mkdtemp(prefix="rerun-"))
    cache = folder / "cache"
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; folder {folder}")
    if not (folder / "manifest.csv").exists():
        start = time.perf_counter()
        manifest = write_images(folder, args.n)
        print(f"wrote {args.n} images in {time.perf_counter() - start:.1f} s")
    manifest = folder / "manifest.csv"
    for name in ENCODERS:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "otolith_core.cli", "extract", "--data", str(manifest), "--model", name,
                        "--cache-dir", str(cache)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"extract {name}: {time.perf_counter() - start:.1f} s (cached after the first run)")
    env = dict(os.environ, OTOLITH_DATA=str(manifest), OTOLITH_CACHE_DIR=str(cache))
    ours, url = serve(ROOT / "app.py", env)
    times: dict[str, list[float]] = {"results: per-fold metric": [], "sidebar: tie level": [],
                                     "errors: gallery filter": [], "bare page: per-fold metric": []}
    bare = None
    try:
        with sync_playwright() as p:
            web = p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"])
            page = web.new_page(viewport={"width": 1500, "height": 1100})
            query = [("encoders", "pixels-32"), ("variants", "squash"), *(("heads", h) for h in HEADS), ("run", "1")]
            start = time.perf_counter()
            page.goto(f"{url}/results?{urlencode(query)}", timeout=120_000)
            page.get_by_role("button", name="predictions.csv").first.wait_for(timeout=1_800_000)
            print(f"Run (from the address) -> comparison job -> Results drawn: {time.perf_counter() - start:.1f} s")
            page.wait_for_timeout(2000)
            metrics = ["±1 accuracy", "RMSE (years)", "Accuracy"]
            for r in range(args.rounds):
                option = radio_option(page, "Metric", metrics[r % 3])
                times["results: per-fold metric"].append(timed_rerun(page, option.click))
                tie = page.get_by_role("spinbutton", name="Tie level")
                level = ("0.1", "0.05")[r % 2]
                times["sidebar: tie level"].append(timed_rerun(page, lambda: (tie.fill(level), tie.press("Enter"))))
            page.get_by_role("link", name="Errors").first.click()
            page.get_by_text("Misclassified images").first.wait_for(timeout=300_000)
            for r in range(args.rounds):
                box = page.get_by_role("spinbutton", name="Error of at least")
                value = ("2", "1")[r % 2]
                times["errors: gallery filter"].append(timed_rerun(page, lambda: (box.fill(value), box.press("Enter"))))
            assert page.locator('[data-testid="stException"]').count() == 0, "an exception box"

            from otolith_core.cache import ResultStore

            store = ResultStore(cache)
            stored = [store.get(key) for key in store._cache.iterkeys()]
            comparison = next(c for c in stored if c is not None)
            pickled = folder / "comparison.pickle"
            pickled.write_bytes(pickle.dumps(comparison))
            script = folder / "bare_page.py"
            script.write_text(BARE.format(path=str(pickled)))
            bare = serve(script, dict(os.environ))
            page.goto(bare[1], timeout=120_000)
            page.locator('[data-testid="stVegaLiteChart"]').first.wait_for(timeout=120_000)
            for r in range(args.rounds):
                option = radio_option(page, "Metric", ("pm1_accuracy", "rmse", "accuracy")[r % 3])
                times["bare page: per-fold metric"].append(timed_rerun(page, option.click))
            web.close()
    finally:
        for process in (ours, bare[0] if bare else None):
            if process is not None:
                process.terminate()
                process.wait(timeout=20)
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    floor = statistics.median(times["bare page: per-fold metric"])
    print(f"\nwarm reruns at {args.n} images, {len(ENCODERS)} encoders x {len(HEADS)} heads, "
          f"median of {args.rounds} (all, s):")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:28s} {median:.2f} s  ratio to the bare page {median / floor:.2f}  "
              f"({', '.join(f'{v:.2f}' for v in values)})")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
