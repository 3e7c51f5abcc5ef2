"""Offline ``dvc plots show``: Vega, Vega-Lite and Vega-Embed inlined into DVC's HTML template.

DVC's default page loads the three scripts from a CDN, so offline it is blank. ``make install``
runs ``python -m mambava.vega``, which fetches the packages with ``npm pack`` (the npm registry,
at install time only; the versions DVC's renderer is written for, each checked against its pinned
integrity), takes their minified browser builds and writes ``.dvc/vega/template.html``: a page
with the scripts inline and DVC's ``{plot_divs}`` and ``{refresh_tag}`` placeholders but no
``{scripts}`` (where DVC would put the CDN tags). ``.dvc/config`` points
``plots.html_template`` at it, so ``dvc plots show`` and ``dvc plots diff`` write pages that
render with no network.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tarfile
import tempfile
from pathlib import Path

from mambava.io import write_text

# name: (version, file in the package, npm integrity of the package tarball)
PACKAGES = {
    "vega": ("5.20.2", "package/build/vega.min.js",
             "sha512-qmH7aD9GGPpssVdxL1xgcdxTbQzyRUeRR16Os385ymvQhiwCYQNA6+eXUPAZDTVLfk0RXu6Jzj6kUE5jQ80EVw=="),
    "vega-lite": ("5.2.0", "package/build/vega-lite.min.js",
                  "sha512-Yxcg8MvYfxHcG6BbkaKT0oVCIMIcE19UvqIsEwBmyd/7h2nzW7oRnID81T8UrY7hpDrIr6wa2JADOT2dhGNErw=="),
    "vega-embed": ("6.18.2", "package/build/vega-embed.min.js",
                   "sha512-wcDyQPE4J5aiCDc3/suH5RQDvrKkjuLkhzUcbOLwEkNF8/+pp17tS0JghzEvAPNRg+5aG1/N2ydixq8Lk3dOlg=="),
}
TEMPLATE = Path(".dvc") / "vega" / "template.html"  # plots.html_template in .dvc/config is vega/template.html

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- {versions}: inlined by mambava.vega (no network needed) -->
{inline}
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def page(scripts: dict[str, str]) -> str:
    """DVC's page layout with ``scripts`` (name -> JavaScript source) inline."""
    for name, js in scripts.items():
        if "</script" in js.lower() or any(p in js for p in ("{plot_divs}", "{scripts}", "{refresh_tag}")):
            raise ValueError(f"{name}: cannot be inlined (contains </script or a DVC placeholder)")
    inline = "\n".join(f"    <script>/* {name} */\n{js}\n    </script>" for name, js in scripts.items())
    versions = ", ".join(f"{n}@{PACKAGES[n][0]}" if n in PACKAGES else n for n in scripts)
    return PAGE.replace("{versions}", versions).replace("{inline}", inline)  # the scripts last: untouched


def fetch(workdir: Path) -> dict[str, str]:
    """``npm pack`` each package into ``workdir``; check its integrity; its minified build."""
    specs = [f"{n}@{v}" for n, (v, _, _) in PACKAGES.items()]
    r = subprocess.run(["npm", "pack", "--json", *specs], cwd=workdir, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"npm pack {' '.join(specs)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    packed = {d["name"]: d for d in json.loads(r.stdout)}
    scripts = {}
    for name, (version, member, integrity) in PACKAGES.items():
        d = packed[name]
        if d["version"] != version or d["integrity"] != integrity:
            raise RuntimeError(f"npm pack {name}@{version}: got {d['version']} {d['integrity']}, pinned {integrity}")
        with tarfile.open(workdir / d["filename"]) as tar:
            scripts[name] = tar.extractfile(member).read().decode("utf-8")
    return scripts


def install(out: str | Path = TEMPLATE) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        html = page(fetch(Path(tmp)))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, html)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(TEMPLATE), help="where to write the HTML template (default %(default)s)")
    out = install(ap.parse_args(argv).out)
    print(f"{out}: {out.stat().st_size // 1024} KiB, Vega inline")


if __name__ == "__main__":
    main()
