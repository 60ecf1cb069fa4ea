"""(g) The Review page's embedding map at the cod study's size: 8,637 images x 1,152 dimensions.

In this process, each side timed on the same random features (with an age signal):
  - ours:  space.scaled (l2) + space.project (PCA) + charts.embedding_map(...).to_dict() as JSON, and
           space.nearest for one image;
  - bare:  sklearn normalize + PCA(2) + a plain altair circle chart of the same columns as JSON, and a
           brute-force cosine argsort for one image.
Then, when Debian's chromium and playwright are here, in a real browser: a Streamlit page drawing our map
(click selection on the nearest point, tooltips) against a page drawing the bare chart, each its own
server, alternating: seconds from opening the page to the map's canvas being drawn; and for ours, from a
click on the map to the page showing the picked image (a rerun through Streamlit).

    python benchmarks/embedding_map.py [--n 8637] [--dim 1152] [--rounds 3] [--no-browser]
"""

import argparse
import json
import os
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

PAGE = textwrap.dedent("""
    import pandas as pd, streamlit as st, altair as alt
    from otolith_core.charts import embedding_map
    side = {side!r}
    points = pd.read_csv({points!r})
    if side == "ours":
        event = st.altair_chart(embedding_map(points, title="map"), on_select="rerun", key="map")
        chosen = event.selection.get("picked", []) if event and event.selection else []
        st.markdown(f"picked: {{chosen[0]['image']}}" if chosen else "picked: none")
    else:
        alt.data_transformers.disable_max_rows()
        st.altair_chart(alt.Chart(points).mark_circle(size=40).encode(
            x="x:Q", y="y:Q", color="reader_age:Q", tooltip=["image:N", "reader_age:Q", "model_age:Q"]))
""")


def features(n: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    ages = np.clip(np.round(rng.normal(6, 2, n)), 1, 12).astype(int)
    x = rng.normal(size=(n, dim)).astype(np.float32) + np.outer(ages, rng.normal(size=dim)).astype(np.float32) * 0.05
    return x, ages


def ours(x: np.ndarray, ages: np.ndarray):
    import altair as alt
    import pandas as pd

    from otolith_core.charts import embedding_map
    from otolith_core.space import nearest, project, scaled

    alt.data_transformers.disable_max_rows()  # the JSON spec whole (Streamlit itself sends the data as Arrow)
    start = time.perf_counter()
    unit = scaled(x, "l2")
    coords = project(unit, method="pca")
    points = pd.DataFrame({"x": coords[:, 0], "y": coords[:, 1], "image": [f"img/{i:05d}.jpg" for i in range(len(x))],
                           "reader_age": ages, "model_age": ages})
    spec = json.dumps(embedding_map(points, title="map").to_dict())
    mapped = time.perf_counter() - start
    start = time.perf_counter()
    found = nearest(unit, 0, k=6)
    return mapped, time.perf_counter() - start, len(spec), points, found.index


def bare(x: np.ndarray, ages: np.ndarray):
    import altair as alt
    import pandas as pd
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import normalize

    alt.data_transformers.disable_max_rows()
    start = time.perf_counter()
    unit = normalize(x.astype(np.float64))
    coords = PCA(n_components=2).fit_transform(unit)
    points = pd.DataFrame({"x": coords[:, 0], "y": coords[:, 1], "image": [f"img/{i:05d}.jpg" for i in range(len(x))],
                           "reader_age": ages, "model_age": ages})
    spec = json.dumps(alt.Chart(points).mark_circle(size=40).encode(
        x="x:Q", y="y:Q", color="reader_age:Q", tooltip=["image:N", "reader_age:Q", "model_age:Q"]).to_dict())
    mapped = time.perf_counter() - start
    start = time.perf_counter()
    similarity = unit @ unit[0]
    similarity[0] = -np.inf
    index = np.argsort(-similarity, kind="stable")[:6]
    return mapped, time.perf_counter() - start, len(spec), index


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(script: Path):
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(port), "--server.address",
         "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return process, url
        except OSError:
            if time.time() > deadline:
                process.kill()
                raise RuntimeError("streamlit did not start")
            time.sleep(0.3)


def browser(points, rounds: int) -> dict[str, list[float]] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        chromium = None
    if chromium is None:
        print("browser part skipped: needs Debian's chromium and playwright")
        return None
    times: dict[str, list[float]] = {"ours": [], "bare": [], "click": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "points.csv"
        points.to_csv(data, index=False)
        servers = {}
        for side in ("ours", "bare"):
            script = Path(tmp) / f"{side}.py"
            script.write_text(PAGE.format(side=side, points=str(data)))
            servers[side] = _serve(script)
        try:
            with sync_playwright() as p:
                web = p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"])
                for _ in range(rounds):
                    for side in ("ours", "bare"):
                        page = web.new_page(viewport={"width": 1200, "height": 900})
                        start = time.perf_counter()
                        page.goto(servers[side][1], timeout=120_000)
                        chart = page.locator('[data-testid="stVegaLiteChart"] canvas').first
                        chart.wait_for(timeout=120_000)
                        page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
                        times[side].append(time.perf_counter() - start)
                        if side == "ours":
                            page.get_by_text("picked: none").wait_for(timeout=60_000)
                            box = chart.bounding_box()
                            start = time.perf_counter()
                            chart.click(position={"x": box["width"] * 0.4, "y": box["height"] * 0.5})
                            page.get_by_text("picked: img/").wait_for(timeout=60_000)
                            times["click"].append(time.perf_counter() - start)
                        page.close()
                web.close()
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(timeout=20)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=8637)
    parser.add_argument("--dim", type=int, default=1152)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()
    x, ages = features(args.n, args.dim)
    runs_ours, runs_bare = [], []
    for _ in range(args.rounds):  # alternating; medians
        runs_ours.append(ours(x, ages))
        runs_bare.append(bare(x, ages))
    mapped_ours, mapped_bare = (statistics.median(r[0] for r in runs) for runs in (runs_ours, runs_bare))
    near_ours, near_bare = (statistics.median(r[1] for r in runs) for runs in (runs_ours, runs_bare))
    same = np.array_equal(runs_ours[0][4], runs_bare[0][3])
    print(f"(g) map of {args.n:,} x {args.dim:,}: ours {mapped_ours:.2f} s, bare {mapped_bare:.2f} s, "
          f"ratio {mapped_ours / mapped_bare:.2f}; chart spec {runs_ours[0][2] / 1e6:.2f} MB vs {runs_bare[0][2] / 1e6:.2f} MB")
    print(f"(g) 6 nearest of one image: ours {near_ours * 1e3:.1f} ms, bare {near_bare * 1e3:.1f} ms, "
          f"ratio {near_ours / near_bare:.2f}; same neighbours: {same}")
    if args.no_browser:
        return
    times = browser(runs_ours[0][3], args.rounds)
    if times:
        drawn_ours, drawn_bare = statistics.median(times["ours"]), statistics.median(times["bare"])
        print(f"(g) browser, page opened -> map drawn: ours {drawn_ours:.2f} s, bare chart {drawn_bare:.2f} s, "
              f"ratio {drawn_ours / drawn_bare:.2f} (runs: ours {times['ours']}, bare {times['bare']})")
        print(f"(g) browser, click on the map -> picked image shown: median {statistics.median(times['click']):.2f} s "
              f"(runs {times['click']})")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
