"""Shared fixtures: a small synthetic otolith set and tiny OpenCLIP models the tests build themselves."""

from __future__ import annotations

import gc
import json
import os
import shutil
import time
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist (pyproject's addopts): one worker per core, so one thread per worker. Set before torch and
    # numpy's BLAS are loaded; two workers of two threads each on 2 cores were slower than no workers at all.
    for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_variable, "1")


_LAUNCHER = []  # the launcher this run started at its start (otolith_core.launcher), if it started one


def pytest_configure(config):
    """Collection, in each process that collects (a worker, or a run without workers), with Python's cyclic garbage
    collector off; :func:`pytest_collection_finish` freezes what it loaded and turns the collector on again.

    Collecting imports torch, timm, scikit-learn, pandas and Altair: some 900,000 objects that live until the run
    ends. Every full collection walks all of them: 15 while the modules load (about 4 s of CPU a worker), and five
    at the run's end (pytest's last look for unraisable exceptions, 3 s). Frozen (``gc.freeze``), they are left out
    of every later collection. The tests themselves run with the collector on, as always."""
    xdist_controller = getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput")
    if not xdist_controller:  # the controller collects nothing
        gc.disable()


def pytest_collection_finish(session):
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def _workers_environment() -> dict[str, str]:
    """The environment the workers' jobs are started with: one thread each, unless set (above)."""
    from otolith_core.launcher import THREAD_VARIABLES

    return {**{name: "1" for name in THREAD_VARIABLES}, **os.environ}


def pytest_sessionstart(session):
    """The run's job launcher (otolith_core.launcher) starts with the run, as the dashboard starts it at its own
    start: it imports while the workers collect the tests, and the first jobs find it ready."""
    if not hasattr(session.config, "workerinput") and getattr(session.config.option, "numprocesses", None):
        from otolith_core.launcher import start_launcher

        _LAUNCHER.append(start_launcher(_workers_environment()))


def pytest_sessionfinish(session):
    """The run's job launcher (otolith_core.launcher) ends with the run, not after its idle time; the workers
    share it, so the controller (or a run without workers) ends it, once they are done."""
    if not hasattr(session.config, "workerinput"):
        from otolith_core.launcher import stop_launcher

        stop_launcher(_workers_environment())
        stop_launcher(dict(os.environ))  # a run without workers
        for launcher in _LAUNCHER:  # one still importing (a short run) has no socket to be asked on yet
            if launcher is not None:
                launcher.terminate()


TINY_MODEL_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}
TINY_PREPROCESS = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic", "resize_mode": "squash"}


def _once_per_run(tmp_path_factory, name: str, build) -> Path:
    """``build(folder)`` -> a path, made once per test run in a new ``folder``. Under pytest-xdist the workers
    share it: the first to ask builds it in the run's common temporary folder, the others wait and read it."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build(tmp_path_factory.mktemp(name))
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent  # the workers' folders lie side by side in it
    with FileLock(str(shared / f"{name}.lock")):
        made = shared / f"{name}.path"
        if not made.exists():
            made.write_text(str(build(shared / name)))
        return Path(made.read_text())


@pytest.fixture(scope="session")
def demo_manifest(tmp_path_factory) -> Path:
    """The synthetic demo at its smallest size (n_images=120: 149 images, at least 12 per reader age)."""
    from otolith_core.demo import write_demo_dataset

    return _once_per_run(tmp_path_factory, "demo", lambda folder: write_demo_dataset(folder, n_images=120, seed=3))


@pytest.fixture
def demo_drawn_blank(monkeypatch):
    """The demo writer draws every photo blank (drawing 149 otoliths takes 7-10 s), for tests of what writes the
    demo rather than of its drawing: test_demo checks the drawing, with the real renderer."""
    import numpy as np

    from otolith_core import demo

    monkeypatch.setattr(demo, "render_otolith", lambda fish, rng: np.zeros((demo.HEIGHT, demo.WIDTH, 3), np.uint8))


@pytest.fixture(scope="session")
def flipped_demo_manifest(tmp_path_factory, demo_manifest) -> Path:
    """The same demo written again with five fish's reader ages moved 3+ years (``flip=5``; test_review ranks the
    moved ones). The same seed draws the same images, with or without ``flip`` (test_demo checks that the drawing is
    asked for the same photos, written under the same names), so they are copied from ``demo_manifest``'s rather
    than drawn again (7-10 s): the writer here draws them blank, and the copies take their place."""
    def write(folder: Path) -> Path:
        from unittest import mock

        import numpy as np

        from otolith_core import demo

        blank = np.zeros((demo.HEIGHT, demo.WIDTH, 3), np.uint8)
        with mock.patch.object(demo, "render_otolith", lambda fish, rng: blank):
            manifest = demo.write_demo_dataset(folder, n_images=120, seed=3, flip=5)
        shutil.copytree(demo_manifest.parent / "images", folder / "images", dirs_exist_ok=True)
        return manifest

    return _once_per_run(tmp_path_factory, "demo-flipped", write)


@pytest.fixture(scope="session")
def demo_cache(demo_manifest, tmp_path_factory) -> Path:
    """A cache holding both built-in extractors' embeddings of the demo; copy it, never write into it."""
    from otolith_core.data import load_dataset
    from otolith_core.embeddings import extract_embeddings
    from otolith_core.encoders import registry

    def extract(cache: Path) -> Path:
        import subprocess
        import sys

        import pandas as pd

        # The morphometrics take half a minute on one core while the other test worker waits for this cache:
        # the second half of the images is extracted by a second process into the same cache meanwhile.
        rows = pd.read_csv(demo_manifest)
        rows["path"] = [str(demo_manifest.parent / p) for p in rows.path]
        half = len(rows) // 2
        rows.iloc[half:].to_csv(cache.parent / "demo-second-half.csv", index=False)
        other = subprocess.Popen([sys.executable, "-m", "otolith_core.cli", "extract", "--data",
                                  str(cache.parent / "demo-second-half.csv"), "--model", "otolith-morphometrics",
                                  "--cache-dir", str(cache)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        data = load_dataset(demo_manifest)
        extract_embeddings(data.subset(range(half)), registry()["otolith-morphometrics"], cache_dir=cache)
        _, errors = other.communicate(timeout=600)
        assert other.returncode == 0, errors.decode()
        for name in ("otolith-morphometrics", "pixels-32"):
            extract_embeddings(data, registry()[name], cache_dir=cache)
        return cache

    return _once_per_run(tmp_path_factory, "demo-cache", extract)


def copy_cache_lacking(demo_cache: Path, demo_manifest: Path, destination: Path, lacking: dict[str, int | None]
                       ) -> Path:
    """A copy of the session's demo cache as if extraction had stopped part-way: for each built-in encoder in
    ``lacking``, its last N images of the demo are missing (None: its whole store). A test that shows an extraction
    at work extracts those few instead of the whole demo (the morphometrics cost 0.2 s an image)."""
    import diskcache

    from otolith_core.cache import _CACHE_SETTINGS, _MATRIX_KEY, WRITTEN, FileHashes, record_key, store_path
    from otolith_core.data import load_dataset
    from otolith_core.encoders import registry

    shutil.copytree(demo_cache, destination)
    shutil.rmtree(destination / "jobs", ignore_errors=True)  # the fixture's own extraction jobs: not the user's
    records = load_dataset(demo_manifest).records
    hashes = FileHashes(destination)
    try:
        for name, n in lacking.items():
            folder = store_path(destination, registry()[name], hashes)
            if n is None:
                shutil.rmtree(folder)
                continue
            with diskcache.Cache(str(folder), **_CACHE_SETTINGS) as store:
                store.delete(_MATRIX_KEY)  # the complete matrix of the last full read would still serve them
                for record in records[len(records) - n:]:
                    store.delete(record_key(record, hashes))
            (folder / WRITTEN).write_text(str(time.time_ns()))
    finally:
        hashes.close()
    return destination


def save_tiny_open_clip(folder: Path, *, preprocess: dict | None = None, seed: int = 0,
                        model_cfg: dict | None = None) -> Path:
    """A complete random-weight OpenCLIP model (both towers) in open_clip's local-dir layout."""
    import torch
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model_cfg = model_cfg or TINY_MODEL_CFG
    model = CLIP(**model_cfg)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess or TINY_PREPROCESS}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def save_tiny_timm(folder: Path, *, architecture: str = "vit_tiny_patch16_224", seed: int = 0, **model_args) -> Path:
    """A random-weight timm ViT saved with timm's own ``save_for_hf`` (config.json + model.safetensors)."""
    import timm
    import torch
    from timm.models import save_for_hf

    torch.manual_seed(seed)
    args = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 0, **model_args}
    model = timm.create_model(architecture, pretrained=False, **args)
    save_for_hf(model, str(folder), model_args=args, safe_serialization=True)
    return folder


HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"  # the snapshot place_in_hf_cache lays out by default
NEWER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"  # a later one (the hub repo changed)


def place_in_hf_cache(cache: Path, repo: str, files: dict[str, Path], *, commit: str = HUB_COMMIT) -> str:
    """Lay files out exactly as huggingface_hub's cache does (refs/main -> snapshots/<commit>/); refs/main then
    names ``commit``, as after a download of that revision. Returns ``commit``."""
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        (snapshot / name).write_bytes(Path(source).read_bytes())
    return commit


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny_open_clip(tmp_path_factory.mktemp("tiny") / "tiny-clip")


@pytest.fixture(scope="session")
def tiny_timm_dir(tmp_path_factory) -> Path:
    return save_tiny_timm(tmp_path_factory.mktemp("tiny") / "tiny-timm")


@pytest.fixture
def offline_hub(monkeypatch):
    """No network for the Hugging Face hub, the way a user's offline laptop has none."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def write_tiny_photos_manifest(folder: Path, manifest: str, *, seed: int) -> Path:
    """``folder/m.csv`` holding ``manifest`` (its first column names photos ``o0.png``, ``o1.png``, ...), and one
    16 x 16 random photo per data row beside it; returns the manifest's path."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(len(manifest.strip().splitlines()) - 1):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"o{i}.png")
    (folder / "m.csv").write_text(manifest)
    return folder / "m.csv"


def write_mixed_manifest(demo_manifest: Path, folder: Path) -> tuple[Path, list[str], list[str], str]:
    """The demo plus every kind of bad row, every unusual-but-valid image format and a copy of a demo
    image under another age, as one CSV manifest.

    Returns (manifest, paths of the valid images added, a phrase of the reason given for each bad row,
    the path of the copy that disagrees on age).
    """
    import numpy as np
    import pandas as pd
    from PIL import Image

    rows = pd.read_csv(demo_manifest)[["path", "age"]]
    rows["path"] = [str(demo_manifest.parent / p) for p in rows.path]
    odd = folder / "odd"
    odd.mkdir()
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8))
    valid = {
        "grey16.png": Image.fromarray((rng.random((300, 400)) * 65535).astype(np.uint16)),
        "cmyk.jpg": base.convert("CMYK"),
        "palette.png": base.convert("P"),
        "alpha.png": base.convert("RGBA"),
        "grey16.tif": Image.fromarray((rng.random((300, 400)) * 65535).astype(np.uint16)),
        "otólito ñ.png": base,
        "big35mp.jpg": base.resize((7200, 4900)),
    }
    for name, image in valid.items():
        image.save(odd / name)
    exif = Image.Exif()
    exif[0x0112] = 8
    base.save(odd / "rotated.jpg", exif=exif.tobytes())
    valid["rotated.jpg"] = None
    (odd / "empty.jpg").write_bytes(b"")
    (odd / "truncated.jpg").write_bytes((odd / "cmyk.jpg").read_bytes()[:200])
    (odd / "notes.png").write_text("not an image")
    Image.new("RGB", (1, 1), (9, 9, 9)).save(odd / "tiny.png")
    Image.new("RGB", (100, 100), (0, 0, 0)).save(odd / "blank.png")
    bad = [("empty.jpg", 5, "cannot decode"), ("truncated.jpg", 5, "cannot decode"), ("notes.png", 5, "cannot decode"),
           ("tiny.png", 5, "only 1x1"), ("blank.png", 5, "blank"), ("missing.jpg", 5, "file not found"),
           ("cmyk.jpg", "five", "not a number"), ("cmyk.jpg", -2, ">= 0"), ("cmyk.jpg", "", "blank age")]
    copy = odd / "copy of the first demo image.png"
    copy.write_bytes(Path(rows.path[0]).read_bytes())
    valid[copy.name] = None
    extra = [(str(odd / n), 6 if n != copy.name else int(rows.age[0]) % 10 + 1) for n in valid] \
        + [(str(odd / n), a) for n, a, _ in bad]
    manifest = pd.concat([rows, pd.DataFrame(extra, columns=["path", "age"])], ignore_index=True)
    manifest["x0"] = manifest["y0"] = manifest["x1"] = manifest["y1"] = ""
    inverted = {"path": str(odd / "alpha.png"), "age": 4, "x0": 50, "y0": 50, "x1": 10, "y1": 90}
    outside = {"path": str(odd / "palette.png"), "age": 4, "x0": 0, "y0": 0, "x1": 900, "y1": 90}
    manifest = pd.concat([manifest, pd.DataFrame([inverted, outside])], ignore_index=True)
    manifest.to_csv(folder / "mixed.csv", index=False)
    return (folder / "mixed.csv", [str(odd / n) for n in valid], [reason for *_, reason in bad] + ["inverted", "outside"],
            str(copy))


def write_tray(path: Path, boxes: list[tuple[int, int, int, int]], *, size: tuple[int, int] = (1200, 800),
               orientation: int | None = None, seed: int = 0) -> Path:
    """A JPEG tray photo: a dark noisy field with a bright ringed ellipse in each box (boxes in pixels of the
    upright photo, ``size`` its upright width x height); ``orientation`` is stored as EXIF, the pixels turned to match."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = size
    grey = rng.normal(30, 6, (height, width))
    for x0, y0, x1, y1 in boxes:
        x1, y1 = min(x1, width), min(y1, height)  # a box past the edge (a test of that error) is drawn in part
        rows, cols = np.mgrid[y0:y1, x0:x1]
        cy, cx, ry, rx = (y0 + y1) / 2, (x0 + x1) / 2, (y1 - y0) * 0.35, (x1 - x0) * 0.4
        rho = np.hypot((rows - cy) / ry, (cols - cx) / rx)
        rings = 170 + 50 * np.cos(rho * rng.uniform(12, 30))
        grey[y0:y1, x0:x1] = np.where(rho <= 1, rings, grey[y0:y1, x0:x1])
    rgb = np.clip(grey[..., None] * np.array([1.0, 0.95, 0.85]), 0, 255).astype(np.uint8)
    photo = Image.fromarray(rgb)
    if orientation is None:
        photo.save(path, quality=90)
        return path
    # stored so that applying the orientation gives the upright photo back
    stored = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    photo.transpose(stored).save(path, quality=90, exif=exif.tobytes())
    return path


def grid_boxes(n: int, *, size: tuple[int, int] = (1200, 800), columns: int = 5,
               box: tuple[int, int] | None = None, seed: int = 0) -> list[tuple[int, int, int, int]]:
    """``n`` boxes on a grid over a ``size`` photo: all ``box`` (width, height), or of random sizes within their cell."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = -(-n // columns)
    cell_w, cell_h = size[0] // columns, size[1] // rows
    boxes = []
    for i in range(n):
        left, top = (i % columns) * cell_w, (i // columns) * cell_h
        w, h = box or (int(rng.integers(cell_w // 3, cell_w - 4)), int(rng.integers(cell_h // 3, cell_h - 4)))
        boxes.append((left + 2, top + 2, left + 2 + w, top + 2 + h))
    return boxes


EXPORT_COLUMNS = "measurement_id,station_id,age,length,bounding_box,image__content__url"


def write_tray_export(folder: Path, *, boxes_per_tray: int, extra_rows: tuple[str, ...] = (), trays: int = 2,
                      cruises: int = 0, base_url: str | None = None, signature: str = "s1") -> Path:
    """A lab platform's export as it comes (``EXPORT_COLUMNS``): ``trays`` random tray photos of ``boxes_per_tray``
    otoliths side by side, tray t taken at station ST<t>, one row per otolith with its box column, ages written as
    4.0, ids M<tray><box:02d>; ``cruises`` > 0 adds a last column ``cruise_id``, tray t in cruise C<t % cruises>;
    ``extra_rows`` appended as written. With ``base_url`` (a :class:`PhotoServer`'s), the photos are named by
    presigned-style URLs under it (signature ``signature``) instead of local paths. Returns the CSV."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = [EXPORT_COLUMNS + (",cruise_id" if cruises else "")]
    for t in range(trays):
        pixels = rng.integers(0, 255, (200, 50 * boxes_per_tray, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"tray{t}.jpg")
        where = f"{base_url}/tray{t}.jpg?{presigned_query(signature)}" if base_url else f"tray{t}.jpg"
        for b in range(boxes_per_tray):
            rows.append(f'M{t}{b:02d},ST{t},{3 + b % 2}.0,{30 + b},"[[{50 * b}, 10], [{50 * b + 40}, 190]]",{where}'
                        + (f",C{t % cruises}" if cruises else ""))
    (folder / "export.csv").write_text("\n".join([*rows, *extra_rows]) + "\n")
    return folder / "export.csv"


def presigned_query(signature: str, *, expires: int = 4102444800) -> str:
    """A presigned S3 link's query string (``Expires`` in the past: the link has expired, the server says 403)."""
    return f"AWSAccessKeyId=AKIAEXAMPLE&Signature={signature}%2Bx%3D&Expires={expires}"


class PhotoServer:
    """A local HTTP server for the files of one folder, answering as a presigned S3 link does: 403 without a
    signature or past its ``Expires``, 404 for a missing file; ``slow`` (seconds) delays each answer. Counts the
    GET requests per file name (``requests``)."""

    def __init__(self, folder: Path) -> None:
        import http.server
        import threading
        import time
        from collections import Counter
        from urllib.parse import parse_qs, unquote, urlsplit

        self.folder, self.requests, self.slow = Path(folder), Counter(), 0.0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server name
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                name = unquote(parts.path.rsplit("/", 1)[-1])
                server.requests[name] += 1
                time.sleep(server.slow)
                file = server.folder / name
                if "Signature" not in query or int(query.get("Expires", ["0"])[0]) < time.time():
                    self.send_error(403, "Forbidden")
                elif not file.is_file():
                    self.send_error(404, "Not Found")
                else:
                    body = file.read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    try:
                        self.wfile.write(body)
                    except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                        pass

            def log_message(self, *args):
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/bucket"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def photo_server(tmp_path):
    """A :class:`PhotoServer` for ``tmp_path / "served"``."""
    (tmp_path / "served").mkdir()
    server = PhotoServer(tmp_path / "served")
    yield server
    server.close()


@pytest.fixture
def network_calls(monkeypatch):
    """Every name lookup, TCP connection and huggingface_hub download attempted, each refused: a test asserts
    it stays empty."""
    import socket

    import huggingface_hub

    calls = []

    def refuse(kind):
        def refused(*args, **kwargs):
            calls.append((kind, args))
            raise OSError(f"no network in this test ({kind})")
        return refused

    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse("hf_hub_download"))
    return calls
