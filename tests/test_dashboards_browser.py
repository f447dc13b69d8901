"""The dashboards in a real browser: `unclip-explorer dashboard` on localhost, driven by headless Chromium (selenium).

Each page must render with no Streamlit exception or error element; screenshots go to $UNCLIP_SCREENSHOT_DIR
(default: a temporary folder; `UNCLIP_SCREENSHOT_DIR=docs/img` refreshes the documentation's pictures).
Skipped, with the reason shown, where Chromium, chromedriver or selenium is missing.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(f"browser test needs Debian's chromium and chromium-driver (found chromium={CHROMIUM}, "
                f"chromedriver={CHROMEDRIVER}); apt-get install chromium chromium-driver", allow_module_level=True)
try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:
    pytest.skip("browser test needs the selenium package (pip install selenium)", allow_module_level=True)

import explorer  # noqa: E402
from analyses.binding_suite import make_suite  # noqa: E402
from explorer.binding import run_suite, write_suite  # noqa: E402
from explorer.store import EmbeddingStore  # noqa: E402
from unclip_core.checkpoint import list_bundled  # noqa: E402
from unclip_core.clip import bundled_world  # noqa: E402
from tiny_models import write_tiny_pipeline  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-quic", "--window-size=1400,1500",
                  "--enable-unsafe-swiftshader", "--disable-dev-shm-usage"]
ERROR_SELECTORS = ('[data-testid="stException"]', '[data-testid="stAlertContentError"]')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Dashboard:
    """`unclip-explorer dashboard` in its own process group, stopped (by its group id) on close."""

    def __init__(self, log: Path, **options: str) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "explorer", "dashboard", "--port", str(self.port)]
        for key, value in options.items():
            cmd += [f"--{key}", str(value)]
        self.log = open(log, "w")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.url = f"http://localhost:{self.port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dashboard exited with {self.proc.returncode}: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        return
            except OSError:
                time.sleep(0.5)
        self.close()
        raise RuntimeError(f"dashboard did not answer on {self.url} within 120 s: {log.read_text()[-2000:]}")

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def make_browser(profile: Path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def wait_for_page(browser, title: str, marker: str | None = None, timeout: float = 120) -> None:
    """Until the page's title and `marker` (an XPath that only a finished script shows) are there, and no
    spinner or running indicator is left."""
    def ready(b):
        heads = [h.text for h in b.find_elements(By.CSS_SELECTOR, "h1")]
        busy = b.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"], [data-testid="stSpinner"]')
        done = marker is None or b.find_elements(By.XPATH, marker)
        return any(title in h for h in heads) and done and not busy
    WebDriverWait(browser, timeout, poll_frequency=0.25).until(ready)
    time.sleep(1.0)  # let charts and images paint


GENERATE = "//button[.//p[text()='Generate']]"
MAP_POINTS = "//*[contains(@class, 'js-plotly-plot')]//*[contains(@class, 'point')]"
RUN_TAB = "//*[@role='tab'][.//p[text()='Load a run']]"


def errors_on(browser) -> list[str]:
    return [e.text for sel in ERROR_SELECTORS for e in browser.find_elements(By.CSS_SELECTOR, sel)]


def shot(browser, name: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.tmp.png"
    browser.save_screenshot(str(tmp))
    path = folder / name
    os.replace(tmp, path)
    return path


def type_into(browser, label: str, text: str) -> None:
    field = browser.find_element(By.CSS_SELECTOR, f'input[aria-label="{label}"]')
    field.clear()
    field.send_keys(text + Keys.ENTER)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    pipe_dir = write_tiny_pipeline(root / "pipe")
    explorer.export_shapes(root / "export", n=300, seed=0, progress=False)
    store = explorer.embed(root / "export", "shapes-clip", root / "store", kind="image", progress=False)
    suite = write_suite(make_suite(60, seed=0, kinds=["caption_pair", "winoground"], world=bundled_world()), root / "suite.jsonl")
    run = run_suite(suite, "shapes-clip", root / "run", probe_n=200, progress=False)
    dash = Dashboard(root / "dashboard.log", store=store.path, model=pipe_dir)
    browser = make_browser(root / "profile")
    yield {"dash": dash, "browser": browser, "run": run,
           "shots": Path(os.environ.get("UNCLIP_SCREENSHOT_DIR") or root / "shots")}
    browser.quit()
    dash.close()


def test_latent_lab_renders_and_generates(setup):
    b, shots = setup["browser"], setup["shots"]
    b.get(setup["dash"].url + "/")
    wait_for_page(b, "Latent lab", GENERATE)
    assert not errors_on(b), errors_on(b)
    b.find_element(By.XPATH, GENERATE).click()
    wait_for_page(b, "Latent lab", "//button[.//p[text()='Download PNG']]")
    assert not errors_on(b), errors_on(b)
    assert len(b.find_elements(By.CSS_SELECTOR, '[data-testid="stImage"]')) >= 2
    assert shot(b, "dashboard-latent-lab.png", shots).stat().st_size > 10_000


def test_projections_render_the_map_and_a_box_selection(setup):
    b, shots = setup["browser"], setup["shots"]
    b.get(setup["dash"].url + "/projections")
    wait_for_page(b, "Projections", MAP_POINTS)
    assert not errors_on(b), errors_on(b)
    points = b.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .scatterlayer .point")
    assert len(points) == 300
    assert shot(b, "dashboard-projections.png", shots).stat().st_size > 10_000
    # drag a box over the middle of the map: the selection's table and thumbnails appear
    drag = b.find_element(By.CSS_SELECTOR, ".js-plotly-plot .nsewdrag")
    actions = ActionChains(b).move_to_element_with_offset(drag, -150, -120).click_and_hold()
    for _ in range(10):
        actions = actions.move_by_offset(30, 24)
    actions.release().perform()
    wait_for_page(b, "Projections", "//strong[contains(., 'selected points')]")
    assert not errors_on(b), errors_on(b)
    text = b.find_element(By.XPATH, "//strong[contains(., 'selected points')]").text
    n_selected = int(text.split()[0])
    assert 0 < n_selected < 300
    assert b.find_elements(By.CSS_SELECTOR, '[data-testid="stImage"]')  # thumbnails of the selection
    b.execute_script("arguments[0].scrollIntoView();", b.find_element(By.XPATH, "//h3[contains(., 'Selection')]"))
    time.sleep(1.0)
    assert shot(b, "dashboard-projections-selection.png", shots).stat().st_size > 10_000


def test_binding_renders_a_run(setup):
    b, shots = setup["browser"], setup["shots"]
    b.get(setup["dash"].url + "/binding")
    wait_for_page(b, "Binding", RUN_TAB)
    type_into(b, "Run folder (the --out of `unclip-explorer binding run`)", str(setup["run"]))
    wait_for_page(b, "Binding", "//*[@data-testid='stMetric']")
    assert not errors_on(b), errors_on(b)
    summary = pd.read_csv(setup["run"] / "summary.csv")
    acc = summary[(summary["kind"] == "caption_pair") & (summary["category"] == "all")]["accuracy"].iloc[0]
    values = [e.text for e in b.find_elements(By.CSS_SELECTOR, '[data-testid="stMetricValue"]')]
    assert f"{acc:.3f}" in values
    assert shot(b, "dashboard-binding.png", shots).stat().st_size > 10_000


def test_bad_input_shows_a_message_not_a_traceback(setup):
    b = setup["browser"]
    b.get(setup["dash"].url + "/binding")
    wait_for_page(b, "Binding", RUN_TAB)
    type_into(b, "Run folder (the --out of `unclip-explorer binding run`)", "/no/such/run")
    WebDriverWait(b, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, '[data-testid="stAlertContentError"]'))
    assert "no binding run folder" in b.find_element(By.CSS_SELECTOR, '[data-testid="stAlertContentError"]').text
    assert not b.find_elements(By.CSS_SELECTOR, '[data-testid="stException"]')


@pytest.mark.slow
def test_time_to_first_render_of_100k_points(tmp_path):
    """Time from navigation to a painted 100k-point PCA map (WebGL); printed for the docs."""
    n, dim = 100_000, 128
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, dim))
    labels = rng.integers(0, 10, n)
    Z = (centres[labels] + 0.5 * rng.normal(size=(n, dim))).astype(np.float32)
    store = EmbeddingStore.create(tmp_path / "store", "synthetic", "synthetic-128", dim)
    store.append(Z, pd.DataFrame({"id": [f"p{i}" for i in range(n)], "kind": "image", "source": "",
                                  "cluster": [f"c{c}" for c in labels]}))
    dash = Dashboard(tmp_path / "dashboard.log", store=store.path)
    browser = make_browser(tmp_path / "profile")
    try:
        seconds = []
        for _ in range(2):  # cold (imports, PCA fit) then warm (cached projection, a fresh page load)
            t0 = time.perf_counter()
            browser.get(dash.url + "/projections")
            wait_for_page(browser, "Projections", "//*[contains(@class, 'gl-container')]//canvas", timeout=300)
            seconds.append(time.perf_counter() - t0 - 1.0)  # less wait_for_page's paint allowance
            assert not errors_on(browser), errors_on(browser)
        print(f"\n100k-point PCA projection page: first render {seconds[0]:.1f} s cold, {seconds[1]:.1f} s warm")
        shot(browser, "dashboard-projections-100k.png", Path(os.environ.get("UNCLIP_SCREENSHOT_DIR") or tmp_path))
    finally:
        browser.quit()
        dash.close()


def test_million_point_map_renders_warm_within_5_s_and_selects_every_point(tmp_path):
    """A 1M-row store: the page draws the streamed PCA as a density plus 20k markers; a box selects every point
    inside it (more than the markers), at full resolution."""
    n, dim = 1_000_000, 32
    rng = np.random.default_rng(0)
    centres = 2 * rng.normal(size=(12, dim))
    labels = rng.integers(0, 12, n)
    store = EmbeddingStore.create(tmp_path / "store", "synthetic", "synthetic-32", dim)
    blocks = ((centres[labels[a:a + 250_000]] + rng.normal(size=(len(labels[a:a + 250_000]), dim))).astype(np.float16)
              for a in range(0, n, 250_000))
    store._commit(blocks, n, pd.DataFrame({"id": pd.RangeIndex(n).astype(str), "kind": "image", "source": "",
                                           "cluster": pd.Categorical([f"c{c}" for c in labels])}))
    dash = Dashboard(tmp_path / "dashboard.log", store=store.path)
    browser = make_browser(tmp_path / "profile")
    marker = "//*[contains(@class, 'gl-container')]//canvas"
    try:
        seconds = []
        for _ in range(2):  # cold (imports, metadata, streamed PCA) then warm (a fresh page load)
            t0 = time.perf_counter()
            browser.get(dash.url + "/projections")
            wait_for_page(browser, "Projections", marker, timeout=300)
            seconds.append(time.perf_counter() - t0 - 1.0)  # less wait_for_page's paint allowance
            assert not errors_on(browser), errors_on(browser)
        print(f"\n1M-point projection page: first render {seconds[0]:.1f} s cold, {seconds[1]:.1f} s warm")
        assert seconds[1] <= 5.0, seconds
        assert "1,000,000 points drawn as a density" in browser.page_source
        shots = Path(os.environ.get("UNCLIP_SCREENSHOT_DIR") or tmp_path)
        shot(browser, "dashboard-projections-1m.png", shots)
        drag = browser.find_element(By.CSS_SELECTOR, ".js-plotly-plot .nsewdrag")
        actions = ActionChains(browser).move_to_element_with_offset(drag, -200, -150).click_and_hold()
        for _ in range(10):
            actions = actions.move_by_offset(40, 30)
        actions.release().perform()
        wait_for_page(browser, "Projections", "//strong[contains(., 'selected points')]", timeout=120)
        assert not errors_on(browser), errors_on(browser)
        n_selected = int(browser.find_element(By.XPATH, "//strong[contains(., 'selected points')]").text
                         .split()[0].replace(",", ""))
        assert 20_000 < n_selected < n  # more than every marker: the region is resolved against all points
        browser.execute_script("arguments[0].scrollIntoView();",
                               browser.find_element(By.XPATH, "//h3[contains(., 'Selection')]"))
        time.sleep(1.0)
        shot(browser, "dashboard-projections-1m-selection.png", shots)
    finally:
        browser.quit()
        dash.close()


@pytest.mark.slow
@pytest.mark.skipif("shapes-unclip" not in list_bundled(), reason="the bundled shapes-unclip is not in this checkout")
def test_latent_lab_on_the_bundled_generator(tmp_path):
    """`unclip-explorer dashboard` with no --model: the latent lab loads shapes-unclip and draws a prompt."""
    dash = Dashboard(tmp_path / "dashboard.log")
    browser = make_browser(tmp_path / "profile")
    try:
        browser.get(dash.url + "/")
        wait_for_page(browser, "Latent lab", GENERATE, timeout=300)
        assert "shapes-unclip" in browser.page_source
        browser.find_element(By.XPATH, GENERATE).click()
        wait_for_page(browser, "Latent lab", "//button[.//p[text()='Download PNG']]", timeout=300)
        assert not errors_on(browser), errors_on(browser)
        assert len(browser.find_elements(By.CSS_SELECTOR, '[data-testid="stImage"]')) >= 2
        path = shot(browser, "dashboard-latent-lab-shapes-unclip.png",
                    Path(os.environ.get("UNCLIP_SCREENSHOT_DIR") or tmp_path))
        assert path.stat().st_size > 10_000
    finally:
        browser.quit()
        dash.close()
