"""Offline `dvc plots show`: the HTML template that `make install` writes (.dvc/vega/template.html,
src/mambava/vega.py) carries Vega inline, and DVC's renderer with it writes a page that loads no
script from the network. (That the page draws its plots in Chromium with the network off was
checked by hand; see docs/comparing-runs.md.)"""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest

from mambava import vega

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / vega.TEMPLATE
REMOTE_SCRIPT = re.compile(r"<script[^>]*\bsrc\s*=\s*[\"']?\s*(https?:)?//", re.I)


def test_the_pinned_versions_are_those_dvc_render_loads_from_its_cdn():
    from dvc_render.vega import VegaRenderer

    cdn = dict(re.findall(r"npm/([a-z-]+)@([\d.]+)", VegaRenderer.SCRIPTS))
    assert cdn == {name: v for name, (v, _, _) in vega.PACKAGES.items()}


def test_page_inlines_the_scripts_and_keeps_dvc_placeholders_but_not_scripts():
    html = vega.page({"vega": "var a = {b: 1};", "vega-lite": "x()", "vega-embed": "y()"})
    assert "{plot_divs}" in html and "{refresh_tag}" in html
    assert "{scripts}" not in html  # where DVC would put its CDN <script src=...> tags
    assert "var a = {b: 1};" in html and html.index("vega-lite") < html.index("vega-embed")
    assert not REMOTE_SCRIPT.search(html)
    with pytest.raises(ValueError, match="</script"):
        vega.page({"vega": "s = '</script>'"})


def test_dvc_config_names_the_template():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / ".dvc" / "config")
    assert (REPO / ".dvc" / cfg["plots"]["html_template"]).resolve() == TEMPLATE.resolve()


def _installed() -> str:
    assert TEMPLATE.exists(), f"{TEMPLATE}: missing; `make install` writes it (python -m mambava.vega)"
    return TEMPLATE.read_text()


def test_installed_template_has_vega_inline_and_no_remote_script():
    html = _installed()
    assert not REMOTE_SCRIPT.search(html)
    for name, (version, _, _) in vega.PACKAGES.items():
        assert f"{name}@{version}" in html
    # the three libraries' globals are defined inline
    assert "vegaEmbed" in html and "vegaLite" in html and len(html) > 500_000


def test_dvc_renderer_with_the_template_writes_a_page_with_no_remote_script(tmp_path):
    """DVC's own HTML writer (dvc_render.render_html, what `dvc plots show` calls) with a line plot."""
    from dvc_render import render_html
    from dvc_render.vega import VegaRenderer

    _installed()
    points = [{"step": s, "loss": 1.0 / s, "rev": "workspace", "filename": "loss.tsv", "field": "loss"}
              for s in range(1, 6)]
    renderer = VegaRenderer(points, "train/loss", x="step", y="loss", template="linear")
    out = render_html([renderer], tmp_path / "index.html", html_template=TEMPLATE)
    page = Path(out).read_text()
    assert "vegaEmbed('#" in page and '"loss"' in page  # the plot is there
    assert not REMOTE_SCRIPT.search(page)
    assert "cdn.jsdelivr" not in page
