"""``aelab report``: one self-contained HTML page of real runs, checked as HTML and in a real browser.

Four tiny runs trained once per module on the real shared data: three VAEs on mnist-10k in a group
directory (beta 1 with seeds 0 and 1, beta 4: two settings, one with two replicates) and a text VAE
on fortunes. The page is parsed (every picture an inlined PNG, nothing to fetch, one table row per
run, the metrics of the logs, everything from a user's files escaped), then rendered headless in
Debian's chromium through Selenium (no console errors, every picture loaded, the table sorts, no
horizontal overflow on a 375-px phone screen).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import require_shared_data
from PIL import Image

from aelab.cli import main
from aelab.report.html import collect_runs, render_html, run_report, write_report
from aelab.runs import RunConfig, train_run

TRAINER = {"epochs": 2, "batch_size": 50, "log_every": 4, "iwae_k": 3, "iwae_limit": 50, "images": False,
           "progress": False}
VAE = {"latent_dim": 4, "backbone": {"hidden": [32]}}
MNIST = {"name": "mnist-10k", "train_subset": 600, "test_subset": 200}
TEXT = {"name": "fortunes", "train_subset": 320, "test_subset": 64, "min_count": 3, "max_vocab": 500, "max_len": 15}
INJECTED = "<script>alert('x')</script>"
PNG = b"\x89PNG\r\n\x1a\n"


def _train(run_dir: Path, model: str, model_config: dict, data: dict, **trainer) -> Path:
    cfg = RunConfig.from_dict({"model": model, "model_config": model_config, "data": data,
                               "trainer": TRAINER | trainer})
    train_run(cfg, run_dir)
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The group ``sweep/`` of three VAE runs (and a directory that is not a run) and a text run."""
    data = require_shared_data()
    if not (data / "fortunes-train.txt").is_file():
        pytest.fail(f"fortunes-train.txt not found in {data} (the project's shared data)")
    root = tmp_path_factory.mktemp("report")
    sweep = root / "sweep"
    _train(sweep / "beta1-seed0", "vae", VAE, MNIST)
    _train(sweep / "beta1-seed1", "vae", VAE, MNIST, seed=1)
    _train(sweep / "beta4-seed0", "vae", VAE | {"beta": "4.0"}, MNIST)
    (sweep / "notes").mkdir()
    text = _train(root / "text", "text_vae", {"hidden": 32, "embed_dim": 16, "latent_dim": 4}, TEXT,
                  batch_size=32, log_every=2)
    # a config string from a user's file that would run as script if it were not escaped
    path = text / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"parent": {"note": INJECTED}}))
    return {"root": root, "sweep": sweep, "text": text}


@pytest.fixture(scope="module")
def report(runs) -> Path:
    out, n = write_report([runs["sweep"], runs["text"]], runs["root"] / "report.html")
    assert n == 4
    return out


class _Page(HTMLParser):
    """The attributes of every tag, and each table as header names and rows of (text, data-sort)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.tables: list[dict] = []
        self._cell: list | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "table":
            self.tables.append({"head": [], "rows": [], "classes": (a.get("class") or "").split()})
        elif tag == "tr":
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th"):
            self._cell = [tag, "", a.get("data-sort")]

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1] += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            kind, text, sort = self._cell
            table = self.tables[-1]
            if kind == "th":
                table["head"].append(text)
            else:
                table["rows"][-1].append((text, sort))
            self._cell = None

    def table(self, first_header: str) -> tuple[list[str], list[list[tuple[str, str | None]]]]:
        t = next(t for t in self.tables if t["head"] and t["head"][0] == first_header)
        return t["head"], [r for r in t["rows"] if r]


def _last_test(run_dir: Path) -> dict:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["split"] == "test"][-1]


def test_collect_runs_finds_the_group_and_its_runs(runs):
    alone, groups = collect_runs([runs["text"], runs["sweep"], runs["text"]])  # a run given twice: once
    assert alone == [runs["text"]]
    assert [g.path for g in groups] == [runs["sweep"]]
    assert [p.name for p in groups[0].runs] == ["beta1-seed0", "beta1-seed1", "beta4-seed0"]
    assert [p.name for p in groups[0].skipped] == ["notes"]


def test_the_page_is_self_contained(report):
    text = report.read_text()
    page = _Page(text)
    for tag, attrs in page.tags:
        for key in ("src", "href"):
            value = attrs.get(key) or ""
            assert "://" not in value and not value.startswith("//"), (tag, value[:80])
        assert tag not in ("link", "iframe", "object", "embed"), tag
    assert [a for t, a in page.tags if t == "script" and a.get("src")] == []
    images = [a["src"] for t, a in page.tags if t == "img"]
    # group curves; per VAE: curves, reconstructions, samples, traversals, KL; text: curves, KL
    assert len(images) == 1 + 3 * 5 + 2
    for src in images:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.removeprefix("data:image/png;base64,"), validate=True)
        assert png.startswith(PNG)
        with Image.open(io.BytesIO(png)) as im:
            im.verify()
            assert im.size[0] > 0 and im.size[1] > 0
    assert "default-src 'none'" in text  # the browser itself refuses to fetch anything


def test_comparison_table_has_a_row_per_run_with_its_final_metrics(report, runs):
    head, rows = _Page(report.read_text()).table("run")
    assert len(rows) == 4
    assert [r[0][0] for r in rows] == [str(runs["text"]), "sweep/beta1-seed0", "sweep/beta1-seed1",
                                       "sweep/beta4-seed0"]
    by_run = {r[0][0]: dict(zip(head, r)) for r in rows}
    for label, run_dir in [(str(runs["text"]), runs["text"]), ("sweep/beta4-seed0", runs["sweep"] / "beta4-seed0")]:
        final = _last_test(run_dir)
        for key in ("neg_elbo", "kl"):
            shown, sort = by_run[label][key]
            assert float(sort) == final[key] and shown == f"{final[key]:.5g}"
    assert by_run[str(runs["text"])]["nll"][1] == repr(_last_test(runs["text"])["nll"])
    assert by_run["sweep/beta1-seed0"]["nll"] == ("", "")  # a metric the run does not have: blank
    assert by_run["sweep/beta4-seed0"]["model.beta"][0] == "4.0"


def test_the_group_pools_replicates_by_setting(report, runs):
    head, rows = _Page(report.read_text()).table("model.beta")
    assert head[:2] == ["model.beta", "runs"] and "trainer.seed" not in head
    rows = {r[0][0]: dict(zip(head, r)) for r in rows}
    assert set(rows) == {"1.0", "4.0"} and rows["1.0"]["runs"][0] == "2" and rows["4.0"]["runs"][0] == "1"
    finals = [_last_test(runs["sweep"] / f"beta1-seed{s}")["neg_elbo"] for s in (0, 1)]
    text, sort = rows["1.0"]["neg_elbo"]
    assert float(sort) == pytest.approx(sum(finals) / 2) and " ± " in text
    # below it the 95% t-interval of the mean of the 2 runs: mean +- t(1) s / sqrt(2), t(1) = 12.706
    half = 12.7062 * abs(finals[0] - finals[1]) / 2 ** 0.5 / 2 ** 0.5
    lo, hi = (float(v) for v in text.split("[")[1].rstrip("]").split(", "))
    mean = sum(finals) / 2
    assert lo == pytest.approx(mean - half, rel=1e-3) and hi == pytest.approx(mean + half, rel=1e-3)
    assert rows["4.0"]["neg_elbo"][1] == repr(_last_test(runs["sweep"] / "beta4-seed0")["neg_elbo"])
    assert "neg_elbo against the step, one curve per setting" in report.read_text()
    assert "not runs (no config.json), left out: notes" in report.read_text()


def test_run_sections_have_best_metrics_and_the_text_runs_sentences(report, runs):
    text = report.read_text()
    page = _Page(text)
    metric_tables = [t for t in page.tables if t["head"] == ["metric", "final", "best", "best at step"]]
    assert len(metric_tables) == 4
    records = [json.loads(line) for line in (runs["text"] / "metrics.jsonl").read_text().splitlines()]
    best = min(r["nll"] for r in records if r["split"] == "test")
    nll = next(dict(zip(["metric", "final", "best", "step"], r)) for r in metric_tables[0]["rows"]
               if r and r[0][0] == "nll")
    assert float(nll["best"][1]) == best and float(nll["final"][1]) == _last_test(runs["text"])["nll"]
    samples = next(t for t in page.tables if t["head"] == ["sentence"])
    assert len([r for r in samples["rows"] if r]) == 8 and all(r[0][0].strip() for r in samples["rows"] if r)
    homotopy = next(t for t in page.tables if t["head"] == ["t", "sentence"])
    assert [r[0][0] for r in homotopy["rows"] if r][::3] == ["0.000", "0.500", "1.000"]
    assert "Greedy reconstructions of test sentences" in text and "KL per latent dimension" in text


def test_text_from_files_is_escaped(report):
    text = report.read_text()
    assert INJECTED not in text and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
    assert text.count("<script") == 1  # the table sorter, nothing else
    assert "&lt;unk&gt;" in text and "<unk>" not in text  # words of the corpus's sentences, too


def test_no_figures_reads_config_and_metrics_only(runs, tmp_path, capsys):
    out = tmp_path / "quick.html"
    assert main(["report", str(runs["sweep"]), "--no-figures", "--out", str(out), "--title", "a <b> title"]) == 0
    assert f"wrote {out} (3 runs" in capsys.readouterr().out
    page = _Page(out.read_text())
    assert len([a for t, a in page.tags if t == "img"]) == 1  # the group's curves only
    assert "<title>a &lt;b&gt; title</title>" in out.read_text()


def test_bad_paths_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: not a run directory \(no config.json\) and no run directories"):
        write_report([tmp_path / "empty"], tmp_path / "r.html")
    with pytest.raises(FileNotFoundError, match="missing: no such run directory"):
        write_report([tmp_path / "missing"], tmp_path / "r.html")
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aelab: error: ") and str(tmp_path / "empty") in err and err.count("\n") == 1
    assert not (tmp_path / "r.html").exists()


def _copy_logs(run_dir: Path, to: Path) -> Path:
    to.mkdir()
    for name in ("config.json", "metrics.jsonl"):
        shutil.copy(run_dir / name, to / name)
    return to


def test_a_damaged_metrics_log_is_named_and_the_old_report_kept(runs, tmp_path):
    out = tmp_path / "report.html"
    out.write_text("the previous report")
    lines = (runs["text"] / "metrics.jsonl").read_text().splitlines()
    bad = _copy_logs(runs["text"], tmp_path / "bad")
    (bad / "metrics.jsonl").write_text("\n".join([*lines[:2], '{"step": 3, "spl', *lines[2:]]) + "\n")
    with pytest.raises(ValueError, match=rf"{bad / 'metrics.jsonl'}, line 3: not a JSON record"):
        write_report([bad], out, figures=False)
    cut = _copy_logs(runs["text"], tmp_path / "cut")  # a last line cut short: named too
    (cut / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 99, "split": "te')
    with pytest.raises(ValueError, match=rf"{cut / 'metrics.jsonl'}, line {len(lines) + 1}: not a JSON record"):
        write_report([cut], out, figures=False)
    assert out.read_text() == "the previous report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "cut", "report.html"]  # no temporary left
    write_report([_copy_logs(runs["text"], tmp_path / "good")], out, figures=False)
    assert "<!DOCTYPE html>" in out.read_text()


# --- in a real browser -------------------------------------------------------------------------------
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    """Headless chromium driven by Selenium (Debian's ``chromium`` and ``chromium-driver``)."""
    if CHROMIUM is None and os.environ.get("CI"):  # .ci/run installs it: its absence there is a failure
        pytest.fail("no chromium binary on PATH in CI: .ci/run should have installed chromium and chromium-driver")
    if CHROMIUM is None:
        pytest.skip("no chromium binary on PATH: install Debian's chromium and chromium-driver "
                    "(.ci/run does) to render the report in a real browser")
    if CHROMEDRIVER is None:
        pytest.fail(f"chromium is installed ({CHROMIUM}) but chromedriver is not: apt-get install chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def _open(driver, path: Path, width: int) -> list[dict]:
    """Load ``path`` at a viewport ``width`` px wide (a phone's below 500); the console's severe entries."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": 800, "deviceScaleFactor": 1, "mobile": width < 500})
    driver.get(path.resolve().as_uri())  # returns once the page has loaded
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


IMAGES_LOADED = """return Array.from(document.images).map(
    i => [i.complete && i.naturalWidth > 0, i.getBoundingClientRect().right <= window.innerWidth + 0.5])"""


def _fits(driver, width: int) -> bool:
    """No horizontal overflow of the page on a screen ``width`` px wide. On a phone a page wider than
    the screen also widens the layout viewport (zoomed out to fit), so ``innerWidth`` is checked too."""
    scroll_width, inner = driver.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
    return inner == width and scroll_width <= inner


def test_the_checks_catch_a_broken_page(browser, report, tmp_path):
    """What the browser test relies on fails where it should: a JavaScript error and an image that
    does not decode are severe console entries, the image is not loaded, a wide block overflows the screen."""
    broken = tmp_path / "broken.html"
    broken.write_text(report.read_text().replace(
        "</body>", '<img src="data:image/png;base64,AAAA"><div style="width:900px">wide</div>'
                   "<script>no_such_function()</script></body>"))
    severe = _open(browser, broken, 375)
    assert any("no_such_function" in e["message"] for e in severe), severe
    assert not all(ok for ok, _ in browser.execute_script(IMAGES_LOADED))
    assert not _fits(browser, 375)


def test_the_page_in_a_browser(browser, report, tmp_path):
    for width in (1280, 375):
        assert _open(browser, report, width) == [], f"console errors at {width} px"
        loaded = browser.execute_script(IMAGES_LOADED)
        assert len(loaded) == 18 and all(ok for ok, _ in loaded), loaded
        assert all(fits for _, fits in loaded), f"an image wider than the {width}-px screen"
        assert _fits(browser, width), f"the page overflows a {width}-px screen horizontally"
        shot = tmp_path / f"report-{width}px.png"
        assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # sorting: click a numeric header of the comparison table, then again
    table = browser.find_element("css selector", "table.sortable")
    head = [th.text.rstrip(" ↕↑↓") for th in table.find_elements("css selector", "thead th")]
    col = head.index("neg_elbo")
    th = table.find_elements("css selector", "thead th")[col]

    def column() -> list[float]:
        return [float(td.get_attribute("data-sort")) for td in
                table.find_elements("css selector", f"tbody tr td:nth-child({col + 1})")]

    before = column()
    th.click()
    assert column() == sorted(before) and th.get_attribute("aria-sort") == "ascending"
    th.click()
    assert column() == sorted(before, reverse=True) and th.get_attribute("aria-sort") == "descending"
    assert len(set(before)) == 4  # four different values: the order really changed
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []



def test_a_report_of_50_runs_opens_in_a_few_seconds(browser, runs, tmp_path):
    """50 runs, each with the pictures of a real run (so the page weighs what 50 runs weigh): the
    browser's own navigation timing, from request to the load event, stays under a few seconds."""
    one = run_report(runs["sweep"] / "beta1-seed0")
    many = [replace(one, label=f"run {i}", final={k: v + i for k, v in one.final.items()}) for i in range(50)]
    page = tmp_path / "fifty.html"
    page.write_text(render_html(many, []))
    assert _open(browser, page, 1280) == []
    loaded = browser.execute_script(IMAGES_LOADED)
    assert len(loaded) == 50 * len(one.pictures) and all(ok for ok, _ in loaded)
    ms = browser.execute_script("const t = performance.getEntriesByType('navigation')[0]; return t.loadEventEnd;")
    assert 0 < ms < 5000, f"{page.stat().st_size / 1e6:.1f} MB page took {ms:.0f} ms to load"
    rows = browser.find_elements("css selector", "table.sortable tbody tr")
    assert len(rows) == 50
