"""The interactive HTML report (landscape.plot.report, scripts/report.py): its contents from the file
alone, that it is self-contained, and that it renders in a real headless Chromium without a
JavaScript error or a network request."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("plotly", reason="the report needs plotly (pip install plotly)")

from landscape.errors import LandscapeError  # noqa: E402
from landscape.plot.report import provenance_rows, report_html, report_path, write_report  # noqa: E402
from landscape.storage import Surface, read_surface, write_surface  # noqa: E402
from landscape.trajectory import write_projection  # noqa: E402

SHA = "ab" * 32
RUNS = [{"points": 40, "seconds": 12.5, "ranks": 1, "finished": "2026-01-02T03:04:05+00:00"},
        {"points": 23, "seconds": 7.5, "ranks": 2, "finished": "2026-01-03T03:04:05+00:00"}]


def _attrs() -> dict:
    """Attributes as `compute_surface` writes them."""
    return {
        "checkpoint": "/ckpts/digits_r20.pt", "checkpoint_sha256": SHA, "model": "resnet20", "dataset": "digits",
        "normalization": {"mean": [0.3], "std": [0.4]}, "sample_seed": 0, "loss_name": "cross_entropy",
        "splits": "train,test", "evaluation": {"train": "resident", "test": "resident"},
        "n_samples": {"train": 1437, "test": 360},
        "directions": {"kind": "random", "seed": 7, "same_dir": False, "xnorm": "filter", "xignore": "biasbn",
                       "ynorm": "filter", "yignore": "biasbn", "dir_type": "weights"},
        "dir_type": "weights", "seed": 7, "device": "cpu", "batch_size": 256,
        "engine": {"precision": "bf16", "fold_bn": True, "fused": 19, "hardware": {"kind": "cpu", "name": "Xeon"}},
        "ranks": 1, "runs": json.dumps(RUNS), "created": "2026-01-02T03:00:00+00:00", "landscape_version": "0.1.0",
        "settings": json.dumps({"precision": "bf16", "loss": "cross_entropy"}),
    }


def _surface(tmp_path: Path, ndim: int = 2, se: bool = True, eigs: bool = True) -> Path:
    """A small surface file: a quadratic bowl on a 9 x 7 grid (not square, to catch a transpose),
    one point not computed, standard errors, train and test splits, curvature."""
    x = np.linspace(-1, 1, 9)
    y = np.linspace(-0.6, 0.6, 7) if ndim == 2 else None
    xx, yy = np.meshgrid(x, y) if ndim == 2 else (x, 0.0)  # (ny, nx)
    loss = 0.1 + xx ** 2 + 2 * yy ** 2
    surf = Surface(x, y, attrs=_attrs(), dir_file="dirs.h5")
    surf.metrics["train_loss"] = loss
    surf.metrics["train_acc"] = np.clip(1.0 - loss / 4, 0, 1)  # a fraction in memory
    surf.metrics["test_loss"] = loss * 1.1
    surf.metrics["test_acc"] = np.clip(0.95 - loss / 4, 0, 1)
    if se:
        surf.metrics["train_loss_se"] = 0.01 + 0.02 * loss
        surf.metrics["train_acc_se"] = np.full(surf.shape, 0.004)
        surf.metrics["train_n"] = np.full(surf.shape, 512.0)
    if eigs:
        surf.metrics["max_eig"] = 2.0 + np.abs(xx) + 0 * loss
        surf.metrics["min_eig"] = -0.3 * np.abs(xx) + 0 * loss
    surf.done[...] = True
    surf.done.flat[-1] = False  # a point not computed yet
    for m in surf.metrics.values():
        m.flat[-1] = np.nan
    path = tmp_path / f"surf{ndim}d.h5"
    write_surface(path, surf)
    return path


def _projection(tmp_path: Path) -> Path:
    coords = np.array([[0.9, 0.5], [0.6, 0.3], [0.35, 0.12], [0.1, 0.03], [0.0, 0.0]])
    return write_projection(tmp_path / "traj_proj.h5", coords, [0, 5, 10, 15, 20])


def _without_plotlyjs(page: str) -> str:
    """The page less the embedded plotly.js library (whose text holds links of features never used)."""
    start = page.index('<script type="text/javascript" id="plotlyjs">')
    end = page.index("</script>", start)
    return page[:start] + page[end:]


def _figures(page: str) -> dict[str, list[dict]]:
    """div id -> the traces passed to Plotly.newPlot for it."""
    out, decoder = {}, json.JSONDecoder()
    for m in re.finditer(r'Plotly\.newPlot\(\s*"([^"]+)",\s*', page):
        out[m.group(1)], _ = decoder.raw_decode(page, m.end())
    return out


def _array(v) -> np.ndarray:
    """A trace's array: a JSON list (null -> NaN), or plotly's typed array {dtype, bdata, shape}."""
    if isinstance(v, dict):
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        return a.reshape([int(n) for n in str(v["shape"]).split(",")]) if "shape" in v else a
    a = np.array(v, dtype=object)
    return np.array([np.nan if e is None else e for e in a.reshape(-1)], dtype=float).reshape(a.shape)


# ---------------------------------------------------------------------------- the page


def test_self_contained(tmp_path):
    page = report_html(_surface(tmp_path), projection=_projection(tmp_path), vmax=5)
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.I)  # plotly.js inline, no script file
    assert not re.search(r"<link\b", page, re.I)
    assert not re.search(r"<(img|iframe|object|embed|video|audio|source)\b[^>]*\b(src|data)\s*=", page, re.I)
    assert "plotly.js v" in page and "Plotly.newPlot" in page  # the library itself is in the page
    rest = _without_plotlyjs(page)
    assert not re.search(r"""(src|href|url)\s*[=(]\s*["']?\s*(https?:)?//""", rest, re.I)
    assert "https://cdn" not in rest and "http://" not in rest and "https://" not in rest
    assert "MathJax" not in rest.replace("MathJaxConfig: 'local'", "")  # no MathJax from a CDN either


def test_provenance(tmp_path):
    path = _surface(tmp_path)
    page = report_html(path)
    for value in ("/ckpts/digits_r20.pt", SHA, "resnet20", "digits", "bf16", "cross_entropy", "xnorm filter",
                  "seed 7", "train 1437", "test 360", "2 runs: 63 points in 20.0 s", "62 / 63", str(path),
                  "2026-01-03T03:04:05+00:00", "9 points; y: -0.6 to 0.6, 7 points", "weights"):
        assert value in page, value
    rows = dict(provenance_rows(read_surface(path), str(path)))
    assert rows["checkpoint sha256"] == SHA
    assert rows["precision"] == "bf16"
    assert rows["direction seed"] == "7"
    assert rows["points done"] == "62 / 63 (98 %)"
    assert rows["runs"].startswith("2 runs: 63 points in 20.0 s, 0.317 s a point")


def test_reference_file_without_attributes(tmp_path):
    """A file of the reference code: no attributes, accuracies in %; what is there is shown."""
    import h5py

    path = tmp_path / "ref.h5"
    x, y = np.linspace(-1, 1, 5), np.linspace(-1, 1, 4)
    with h5py.File(path, "w") as f:
        f["xcoordinates"], f["ycoordinates"] = x, y
        f["train_loss"] = np.arange(20.0).reshape(5, 4) + 0.5  # the reference's (nx, ny) shape
        f["train_acc"] = np.full((5, 4), 90.0)
    page = report_html(path)
    rows = dict(provenance_rows(read_surface(path)))
    assert set(rows) == {"grid", "points done"}
    assert "records no provenance" in page
    assert "train_acc: 90.00 %" in page  # read as a fraction, shown in percent


def test_traces_2d(tmp_path):
    page = report_html(_surface(tmp_path), vmax=1.0)
    figs = _figures(page)
    assert {"train-3d", "train-contour", "train-slices", "test-3d", "test-contour", "test-slices",
            "curvature-0-max", "curvature-0-min", "curvature-0-ratio"} <= set(figs)
    surface = figs["train-3d"][0]
    assert surface["type"] == "surface"
    z = _array(surface["z"])  # (ny, nx), null -> NaN
    assert z.shape == (7, 9)
    loss = read_surface(_surface(tmp_path)).metrics["train_loss"]
    keep = np.isfinite(loss) & (loss <= 1.0)
    assert np.allclose(z[keep], loss[keep])
    assert np.isnan(z[~keep]).all() and (~keep).sum() > 1  # above vmax: left out, no slab at 1
    assert np.nanmax(z) < 1.0
    contour = figs["train-contour"][0]
    assert contour["type"] == "contour" and contour["zmax"] == 1.0
    hover = np.array(contour["text"], dtype=object)  # (ny, nx) strings
    assert hover.shape == (7, 9)
    # the center (x = 0, y = 0): loss 0.1, SE 0.012 -> ± 0.024; accuracy 97.5 % ± 0.8 %; samples
    center = hover[3, 4]
    assert "x: 0<br>y: 0" in center and "train_loss: 0.1 ± 0.024" in center
    assert "train_acc: 97.50 % ± 0.80 %" in center and "samples: 512" in center
    assert hover[-1, -1].endswith("not computed")
    assert "±" not in figs["test-contour"][0]["text"][3][4]  # the test split has no error bars
    slices = figs["train-slices"]
    names = [t.get("name") for t in slices]
    assert names.count("train_loss") == 2 and names.count("train_acc") == 2
    assert sum(t.get("fill") == "tonexty" for t in slices) == 4  # loss and accuracy bands, both slices
    along_x = next(t for t in slices if t.get("name") == "train_loss")
    assert np.allclose(_array(along_x["x"]), np.linspace(-1, 1, 9))
    assert np.allclose(_array(along_x["y"]), 0.1 + np.linspace(-1, 1, 9) ** 2)  # y = 0 row
    acc = next(t for t in slices if t.get("name") == "train_acc")
    assert np.isclose(np.nanmax(_array(acc["y"])), 97.5)  # percent


def test_log_scale(tmp_path):
    figs = _figures(report_html(_surface(tmp_path), log=True, vmax=1.0))
    z = _array(figs["train-3d"][0]["z"])
    assert np.isclose(np.nanmin(z), np.log10(0.1)) and np.nanmax(z) <= 0.0
    assert '"type":"log"' in report_html(_surface(tmp_path), log=True)
    with pytest.raises(LandscapeError, match="vmax must be positive"):
        report_html(_surface(tmp_path), log=True, vmax=0.0)


def test_trajectory(tmp_path):
    page = report_html(_surface(tmp_path), projection=_projection(tmp_path))
    traj = next(t for t in _figures(page)["train-contour"] if t.get("name") == "trajectory")
    assert np.allclose(_array(traj["x"]), [0.9, 0.6, 0.35, 0.1, 0.0]) and traj["text"][1] == "epoch 5"
    assert "trajectory" not in json.dumps(_figures(report_html(_surface(tmp_path)))["train-contour"])
    with pytest.raises(LandscapeError, match="2-D surface"):
        report_html(_surface(tmp_path, ndim=1), projection=_projection(tmp_path))


def test_curvature(tmp_path):
    own = tmp_path / "own"
    own.mkdir()
    plain = _surface(own, eigs=False)
    assert "curvature-0" not in report_html(plain)
    curv = _surface(tmp_path)  # a separate curvature map file
    figs = _figures(report_html(plain, curvature=curv))
    ratio = figs["curvature-0-ratio"][0]
    assert ratio["type"] == "heatmap" and ratio["zmax"] == 0.5
    r = _array(ratio["z"])
    assert np.isclose(r[0, 0], 0.3 / 3.0) and np.isclose(r[0, 4], 0.0) and np.isnan(r[-1, -1])
    with pytest.raises(LandscapeError, match="no max_eig and min_eig"):
        report_html(curv, curvature=plain)


def test_1d(tmp_path):
    path = _surface(tmp_path, ndim=1)
    page = report_html(path, curvature=path)
    figs = _figures(page)
    assert {"train-line", "test-line", "curvature-0-line", "curvature-1-line"} <= set(figs)
    assert not any(k.endswith("3d") or k.endswith("contour") for k in figs)
    line = figs["train-line"]
    loss = next(t for t in line if t.get("name") == "train_loss")
    assert np.allclose(_array(loss["x"]), np.linspace(-1, 1, 9))
    assert np.isnan(_array(loss["y"])[-1])  # not computed
    assert sum(t.get("fill") == "tonexty" for t in line) == 2  # loss and accuracy bands
    assert "1-D, 9 points" in page


def test_write_report_and_script(tmp_path, script, capsys):
    path = _surface(tmp_path)
    out = write_report(path, tmp_path / "a" / "r.html", vmax=3)
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert report_path(path) == tmp_path / "surf2d_report.html"
    report = script("report")
    report.main(["--surf_file", str(path), "--projection", str(_projection(tmp_path)), "--vmax", "3", "--log"])
    assert capsys.readouterr().out.strip() == str(tmp_path / "surf2d_report.html")
    report.main(["--surf_file", str(path), "--out", str(tmp_path / "docs"), "--name", "x"])
    assert capsys.readouterr().out.strip() == str(tmp_path / "docs" / "x_report.html")
    assert (tmp_path / "docs" / "x_report.html").is_file()
    (tmp_path / "plain").mkdir()
    plain = _surface(tmp_path / "plain", eigs=False)
    for argv, message in [(["--out", str(tmp_path / "r.html")], "--out .* names a file"),
                          (["--name", "a/b"], "--name 'a/b' is a file name stem"),
                          (["--curvature", str(plain)], "--curvature .* no max_eig"),
                          (["--vmax", "nan"], "--vmax must be a finite number")]:
        with pytest.raises(SystemExit) as e:
            report.main(["--surf_file", str(path), *argv])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert re.search(message, err) and err.count("\n") == 1, err


# ---------------------------------------------------------------------------- a real browser

CHROMIUM = os.environ.get("CHROMIUM") or next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")) if p),
    None)

# Put first in a test copy of the page: a Content-Security-Policy that lets nothing be fetched (any
# attempt is a violation event), and a recorder of uncaught errors, rejected promises, console.error
# calls, failed resources and those violations. Once the page has loaded, it writes them, the
# resources the page fetched and how many plots drew into <pre id="report-test-log">, which
# --dump-dom prints.
RECORDER = """<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'unsafe-inline'
 'unsafe-eval'; style-src 'unsafe-inline'; img-src data: blob:; font-src data:; worker-src blob:">
<script>
(function () {
  var log = [];
  window.addEventListener("error", function (e) {
    log.push("error: " + (e.message || ("resource " + (e.target && (e.target.src || e.target.href)))) +
             (e.filename ? " at " + e.filename + ":" + e.lineno : ""));
  }, true);
  window.addEventListener("unhandledrejection", function (e) { log.push("unhandled rejection: " + e.reason); });
  document.addEventListener("securitypolicyviolation", function (e) {
    log.push("blocked request: " + e.blockedURI + " (" + e.violatedDirective + ")");
  });
  var consoleError = console.error;
  console.error = function () {
    log.push("console.error: " + Array.prototype.join.call(arguments, " "));
    return consoleError.apply(console, arguments);
  };
  window.addEventListener("load", function () {
    setTimeout(function () {
      var divs = document.querySelectorAll(".plotly-graph-div");
      var drawn = Array.prototype.filter.call(divs, function (d) {
        return d._fullLayout && d.querySelector(".main-svg");
      });
      var pre = document.createElement("pre");
      pre.id = "report-test-log";
      pre.textContent = JSON.stringify({
        errors: log, plots: divs.length, drawn: drawn.length,
        scenes: document.querySelectorAll(".gl-container canvas").length,
        resources: performance.getEntriesByType("resource").map(function (r) { return r.name; })
      });
      document.body.appendChild(pre);
    }, 1500);
  });
})();
</script>
"""

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--no-first-run", "--no-default-browser-check", "--hide-scrollbars",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", "--window-size=1200,1600"]


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium, or set CHROMIUM)")
def test_renders_in_chromium(tmp_path):
    from PIL import Image

    page = write_report(_surface(tmp_path), tmp_path / "report.html", projection=_projection(tmp_path), vmax=5)
    html = page.read_text(encoding="utf-8")
    test_copy = tmp_path / "report_test.html"
    test_copy.write_text(html.replace("<head>", "<head>\n" + RECORDER, 1), encoding="utf-8")
    shot = tmp_path / "shot.png"
    proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                           "--dump-dom", test_copy.as_uri()], capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = re.search(r'<pre id="report-test-log">(.*?)</pre>', proc.stdout, re.S)
    assert m, "the page's recorder did not run:\n" + proc.stderr[-2000:]
    log = json.loads(m.group(1).replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"')
                     .replace("&amp;", "&"))
    # console messages in Chromium's own log: uncaught exceptions and refused requests
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    bad = [line for line in console if re.search(r'"(Uncaught|Refused to|Failed to load)', line)]
    assert log["errors"] == [] and bad == [], (log["errors"], bad)
    assert log["resources"] == []  # nothing fetched: no CDN, no file beside the page
    # (3-D, contour, slices) x 2 splits + 3 curvature maps, all drawn
    assert log["plots"] == html.count('class="plotly-graph-div"') == 9
    assert log["drawn"] == log["plots"]
    assert log["scenes"] >= 1  # the 3-D surfaces' WebGL canvas
    # the screenshot: the size asked for, and not blank
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 1600)
    colors = image.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 1000, f"{0 if colors is None else len(colors)} colours"
    white = max(colors)[0] / (image.width * image.height)  # the most frequent colour: the background
    assert white < 0.9
