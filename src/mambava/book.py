"""Tools around the book: strip volatile metadata from executed notebooks, check the built HTML,
and take screenshots of its pages in headless Chromium.

    mambava book strip book/notebooks/table1.ipynb     (after papermill, in each notebook stage)
    mambava book check [book/_build/html]              (errors, missing images, tables, CDN assets)
    mambava book screenshots [--out outputs/book_screenshots]

The check is what tests/test_book.py asserts; the screenshots need Debian's ``chromium`` and are
for a person to look at, not part of ``make test``.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

# The pages of the book built from notebooks, and how many tables / figures each must show.
PAGES = {
    "data": {"tables": 1, "images": 3},
    "ladder": {"tables": 4, "images": 1},
    "features": {"tables": 1, "images": 2},
    "table1": {"tables": 1, "images": 1},
    "table2": {"tables": 1, "images": 0},
    "ablations": {"tables": 2, "images": 2},
    "long_sequences": {"tables": 1, "images": 1},
    "predictions": {"tables": 1, "images": 1},
    "reproducibility": {"tables": 2, "images": 1},
}

# With real Aff-Wild2 (data.source affwild2) the Ladder page has only the face-encoder rung on the
# validation folds (no label ceiling, no oracle rung, no test labels): its ladder and comparisons.
PAGES_REAL = {**PAGES, "ladder": {"tables": 2, "images": 1}}


def pages_for(source: str) -> dict:
    """What each page must show for a data source (``data.source``)."""
    return PAGES if source == "synthetic" else PAGES_REAL


# --------------------------------------------------------------------------- strip
# papermill's notebook metadata: everything but the parameters is dropped (timestamps, duration,
# paths, environment, version); nbstripout does the stripping.
PAPERMILL_DROPPED = ("default_parameters", "duration", "end_time", "environment_variables", "exception",
                     "input_path", "output_path", "start_time", "version")


def strip_notebook(path: str | Path, out: str | Path | None = None) -> Path:
    """Remove what changes from run to run so that re-executing a notebook with the same inputs
    gives the same file: nbstripout's ``strip_output`` with the outputs kept (the book shows
    them), execution counts cleared, cell ids made sequential ("0", "1", ...: papermill draws a
    random id for its injected cell) and papermill's/nbclient's timestamps and durations removed
    (``metadata.papermill`` but its ``parameters``, ``cell.metadata.execution``,
    ``cell.metadata.papermill``). Read and written with nbformat; writes in place (atomically)
    unless ``out`` is given."""
    import nbformat
    from nbstripout import strip_output

    from mambava.io import write_text

    path = Path(path)
    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    keys = [f"metadata.papermill.{k}" for k in PAPERMILL_DROPPED] + ["cell.metadata.execution", "cell.metadata.papermill"]
    strip_output(nb, keep_output=True, keep_count=False, keep_id=False, extra_keys=keys)
    if nb.metadata.get("papermill") == {}:
        del nb.metadata["papermill"]
    out = Path(out) if out else path
    write_text(out, nbformat.writes(nb))
    return out


# --------------------------------------------------------------------------- check
def notebook_problems(path: str | Path) -> list[str]:
    """What an executed notebook must not show (empty = good): error outputs and tracebacks,
    NaN in any output, tables without a single data cell, figures without a coloured pixel
    (axes with nothing drawn on them are black, white and grey)."""
    import base64
    import io
    import re

    import nbformat
    import numpy as np
    from PIL import Image

    nb = nbformat.read(Path(path), as_version=4)
    problems = []
    for k, cell in enumerate(nb.cells):
        where = f"{Path(path).name}: cell {k}"
        for out in cell.get("outputs", []):
            if out.output_type == "error" or "Traceback (most recent call last)" in str(out):
                problems.append(f"{where}: error output {out.get('ename', '')}")
                continue
            data = out.get("data", {}) if out.output_type != "stream" else {"text/plain": out.get("text", "")}
            text = " ".join(str(data.get(m, "")) for m in ("text/plain", "text/html", "text/markdown"))
            if re.search(r"(?<![\w.])nan(?![\w])", text, flags=re.IGNORECASE):
                problems.append(f"{where}: NaN in the output")
            html = str(data.get("text/html", ""))
            if "<table" in html and "<td" not in html:
                problems.append(f"{where}: a table without data cells")
            if "image/png" in data:
                img = np.asarray(Image.open(io.BytesIO(base64.b64decode(data["image/png"]))).convert("RGB")).astype(int)
                if not ((img.max(axis=2) - img.min(axis=2)) > 60).any():
                    problems.append(f"{where}: a figure with nothing coloured drawn")
    return problems


@dataclass
class PageReport:
    page: str
    tables: int = 0
    images: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class _Scan(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tables = 0
        self.images: list[str] = []
        self.remote: list[str] = []
        self.errors: list[str] = []
        self._stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = a.get("class") or ""
        if tag == "table":
            self.tables += 1
        if tag == "img" and a.get("src"):
            self.images.append(a["src"])
        for key in ("src", "href") if tag in ("script", "link", "img", "iframe") else ():
            url = a.get(key) or ""
            if urlparse(url).scheme in ("http", "https") or url.startswith("//"):
                if tag != "link" or a.get("rel") and set(a["rel"].split()) & {"stylesheet", "preload", "icon"}:
                    self.remote.append(f"<{tag} {key}={url}>")
        if "traceback" in cls or "output stderr" in cls or "output error" in cls:
            self.errors.append(f"<{tag} class={cls!r}>")

    def handle_data(self, data):
        if "Traceback (most recent call last)" in data:
            self.errors.append("a Python traceback")


def check_page(html_file: str | Path, root: str | Path | None = None) -> PageReport:
    """Scan one built page: tables, images (and whether each resolves to a file), error or stderr
    outputs, and assets loaded from the network."""
    html_file = Path(html_file)
    scan = _Scan()
    scan.feed(html_file.read_text(errors="replace"))
    rep = PageReport(page=html_file.name, tables=scan.tables, images=scan.images)
    rep.problems += [f"{html_file.name}: error output {e}" for e in scan.errors]
    rep.problems += [f"{html_file.name}: loads from the network {r}" for r in scan.remote]
    for src in scan.images:
        u = urlparse(src)
        if u.scheme == "data":
            continue
        if u.scheme in ("http", "https"):
            continue  # already reported as remote
        target = (html_file.parent / unquote(u.path)).resolve()
        if not target.is_file() or target.stat().st_size == 0:
            rep.problems.append(f"{html_file.name}: image {src} does not resolve to a file")
    return rep


def check_book(html_dir: str | Path = "book/_build/html", pages: dict | None = None) -> list[str]:
    """Problems of the built book (empty = good): every page scanned by check_page(); each
    notebook page in ``pages`` ({name: {"tables": n, "images": n}}) must exist under
    ``notebooks/`` and show at least that many tables and figures."""
    html_dir = Path(html_dir)
    pages = PAGES if pages is None else pages
    if not (html_dir / "index.html").exists():
        return [f"{html_dir}: no index.html (build the book first)"]
    problems = []
    for f in sorted(html_dir.rglob("*.html")):
        if "_static" in f.parts or f.name in ("search.html", "genindex.html"):
            continue
        problems += check_page(f, html_dir).problems
    for name, want in pages.items():
        f = html_dir / "notebooks" / f"{name}.html"
        if not f.exists():
            problems.append(f"{f}: page missing")
            continue
        r = check_page(f, html_dir)
        if r.tables < want.get("tables", 0):
            problems.append(f"{f.name}: {r.tables} table(s), expected at least {want['tables']}")
        if len(r.images) < want.get("images", 0):
            problems.append(f"{f.name}: {len(r.images)} figure(s), expected at least {want['images']}")
    return problems


# --------------------------------------------------------------------------- screenshots
def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def screenshot(html_file: Path, png: Path, chromium: str, width: int = 1280, height: int = 5000) -> Path:
    """One page to PNG in headless Chromium (a tall viewport, trailing blank rows trimmed; taller
    until the whole page fits)."""
    while True:
        _shoot(html_file, png, chromium, width, height)
        if _trim(png) > 120 or height >= 40000:
            return png
        height *= 2


def _shoot(html_file: Path, png: Path, chromium: str, width: int, height: int) -> None:
    with tempfile.TemporaryDirectory(prefix="mambava-chromium-") as profile:
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={width},{height}",
               f"--screenshot={png}", html_file.resolve().as_uri()]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if r.returncode or not png.exists():
        raise RuntimeError(f"chromium could not screenshot {html_file}: {r.stderr[-2000:]}")


def _trim(png: Path, margin: int = 40) -> int:
    """Cut the blank space below the content: the last row that is not uniform in the article
    column (the sidebars run to the bottom of the viewport, so they are left out of the test).
    Returns the blank rows found below the content (small: the page may be taller than the shot)."""
    import numpy as np
    from PIL import Image

    img = Image.open(png).convert("RGB")
    a = np.asarray(img).astype(int)
    col = a[:, img.width // 4 : img.width - 20]
    busy = np.flatnonzero((col.max(axis=1) - col.min(axis=1)).max(axis=1) > 0)
    busy = busy[busy < img.height - 80]  # the theme pins a footer and a button to the viewport's bottom
    if busy.size:
        img.crop((0, 0, img.width, min(img.height, int(busy[-1]) + margin))).save(png)
    return img.height - (int(busy[-1]) if busy.size else 0)


def screenshots(html_dir: str | Path = "book/_build/html", out: str | Path = "outputs/book_screenshots",
                chromium: str | None = None) -> list[Path]:
    """Screenshots of every page (index.html only redirects, so it is skipped) into ``out``."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise RuntimeError("no chromium found (Debian: apt-get install -y chromium)")
    html_dir, out = Path(html_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pages = [*sorted(p for p in html_dir.glob("*.html") if p.name not in ("index.html", "search.html", "genindex.html")),
             *sorted((html_dir / "notebooks").glob("*.html"))]
    return [screenshot(p, out / f"{p.stem}.png", chromium) for p in pages if p.exists()]
