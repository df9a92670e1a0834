"""The Visual Turing Test page in a real browser: headless Chromium driven by Selenium.

A rater takes a 3 + 3 session from the name screen to the end screen with clicks and key
presses, flags one image as unreadable, and reloads the page half-way (it must resume at
the first unanswered image); ``turing-report`` must then give the table their answers make.

What the test needs it installs itself (once per test session, timed and printed): Debian's
``chromium`` and ``chromium-driver`` with apt-get (as root, or through sudo) and ``selenium``
with pip into this Python. Only when that fails is the test skipped, with the reason.

``BRAINKERN_SCREENSHOT=path.png`` also saves a screenshot of the page mid-session, with
slices of the embedded smri cohort (real subjects on both sides: the picture shows the
page, not a generator) instead of the test's small made-up images; that is how
``docs/images/turing-page.png`` is made.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("scipy")

from brainkern.evaluate import turing  # noqa: E402
from brainkern.evaluate.__main__ import main as evaluate_main  # noqa: E402

RATER = "Dr Test"


def _run(cmd: list[str], timeout: float) -> str | None:
    """Run an install step; the reason it failed, or None."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{' '.join(cmd)}: {exc}"
    if done.returncode != 0:
        return f"{' '.join(cmd)} failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-400:]}"
    return None


def _install() -> str | None:
    """Install what is missing; the reason it could not, or None."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        if shutil.which("apt-get") is None:
            return "chromium is not installed and there is no apt-get to install it"
        sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
        if sudo and shutil.which("sudo") is None:
            return "chromium is not installed and installing it needs root (no sudo)"
        env = ["env", "DEBIAN_FRONTEND=noninteractive"]
        for step in (
            [*sudo, *env, "apt-get", "update", "-q"],
            [
                *sudo,
                *env,
                "apt-get",
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "chromium",
                "chromium-driver",
            ],
        ):
            reason = _run(step, timeout=900)
            if reason:
                return reason
    try:
        import selenium  # noqa: F401
    except ImportError:
        reason = _run([sys.executable, "-m", "pip", "install", "-q", "selenium>=4.10"], timeout=600)
        if reason:
            return reason
    return None


@pytest.fixture(scope="session")
def browser():
    start = time.perf_counter()
    reason = _install()
    took = time.perf_counter() - start
    print(f"\nbrowser install: {took:.1f} s" + (f" (failed: {reason})" if reason else ""))
    if reason:
        pytest.skip(f"cannot install headless Chromium + Selenium: {reason}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=820,860"):
        options.add_argument(arg)
    # The driver's own path, so Selenium Manager never tries to download one.
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


def _cohort_volumes(tmp: Path) -> tuple[np.ndarray, np.ndarray]:
    """Six subjects of the embedded smri cohort, three a side, scaled to [-1, 1]."""
    import nibabel as nib

    from brainkern.data import cohorts

    table = cohorts.smri(tmp / "cohort", n_per_class=3, shape=(96, 112, 96), seed=0)
    paths = sorted((table.parent / "images").glob("*.nii.gz"))
    vols = []
    for p in paths:
        v = np.asarray(nib.load(str(p)).get_fdata(dtype=np.float32))
        vols.append(2 * (v - v.min()) / (v.max() - v.min()) - 1)
    vols = np.stack(vols)[:, None]
    return vols[[0, 3, 1]], vols[[4, 2, 5]]


def _session(tmp: Path, screenshot: str | None) -> Path:
    if screenshot:
        real, synthetic = _cohort_volumes(tmp)
        return turing.prepare_session(
            real, synthetic, tmp / "s", n=3, window="percentile", source="smri cohort"
        )
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(np.linspace(-1, 1, 32), np.linspace(-1, 1, 32), indexing="ij"))
    blob = np.exp(-(grid**2).sum(0) / 0.3)
    real = blob + 0.1 * rng.standard_normal((3, 2, 32, 32))
    synthetic = blob + 0.3 * rng.standard_normal((3, 2, 32, 32))
    return turing.prepare_session(real * 2 - 1, synthetic * 2 - 1, tmp / "s", n=3, names=["T1", "T2"])


def test_a_rater_takes_a_session_in_chromium(browser, tmp_path, capsys):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    screenshot = os.environ.get("BRAINKERN_SCREENSHOT")
    session = _session(tmp_path, screenshot)
    meta = json.loads((session / "session.json").read_text())
    key = {k: v["truth"] for k, v in json.loads((session / "key.json").read_text())["items"].items()}
    truths = [key[it["id"]] for it in turing.rater_order(meta, RATER)]
    server = turing.serve(session, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    start = time.perf_counter()
    try:
        d = browser
        find = lambda i: d.find_element(By.ID, i)  # noqa: E731
        wait = WebDriverWait(d, 15)

        def at(k: int) -> None:  # image k (from 1) is shown and can be answered
            wait.until(lambda _: find("progress").text == f"{k} / 6" and find("real").is_enabled())

        def press(key: str) -> None:
            ActionChains(d).send_keys(key).perform()

        def start_as_rater(name: str | None) -> None:
            wait.until(lambda _: find("name").is_displayed())
            if name is not None:
                find("name").clear()
                find("name").send_keys(name)
            find("name").send_keys(Keys.ENTER)

        d.get(server.url)
        start_as_rater(RATER)
        at(1)
        find("real").click()
        at(2)
        press("s")
        at(3)
        press("u")  # unreadable
        at(4)
        # Closing and reopening the page: the same name (remembered by the page) resumes at 4.
        d.refresh()
        assert find("name").get_attribute("value") == RATER
        start_as_rater(None)
        at(4)
        if screenshot:
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            d.save_screenshot(screenshot)
        press(Keys.ARROW_RIGHT)  # synthetic
        at(5)
        find("synthetic").click()
        at(6)
        press(Keys.ARROW_LEFT)  # real
        wait.until(lambda _: find("end-screen").is_displayed())
        given = ["real", "synthetic", "unreadable", "synthetic", "synthetic", "real"]
        cells = {
            (t, a): sum(1 for tt, aa in zip(truths, given, strict=True) if (tt, aa) == (t, a))
            for t in ("real", "synthetic")
            for a in ("real", "synthetic")
        }
        shown = {i: find(i).text for i in ("rr", "rs", "sr", "ss", "judged", "unread", "accuracy")}
        correct = cells["real", "real"] + cells["synthetic", "synthetic"]
        assert shown == {
            "rr": str(cells["real", "real"]),
            "rs": str(cells["real", "synthetic"]),
            "sr": str(cells["synthetic", "real"]),
            "ss": str(cells["synthetic", "synthetic"]),
            "judged": "5",
            "unread": "1",
            "accuracy": f"{100 * correct / 5:.1f}%",
        }
    finally:
        server.shutdown()
        server.server_close()
    print(f"browser session: {time.perf_counter() - start:.1f} s")

    records = [
        json.loads(line) for line in (session / "answers" / "dr~20test.jsonl").read_text().splitlines()
    ]
    assert [r["answer"] for r in records] == given and all(r["rater"] == RATER for r in records)
    capsys.readouterr()
    assert evaluate_main(["turing-report", str(session), "--no-machine"]) == 0
    row = json.loads((session / "report.json").read_text())["rows"][0]
    assert (row["rater"], row["complete"], row["unreadable"], row["correct"], row["judged"]) == (
        RATER,
        True,
        1,
        correct,
        5,
    )
    assert [row[f"{t}_as_{a}"] for t in ("real", "synthetic") for a in ("real", "synthetic")] == list(
        cells.values()
    )


def test_a_rater_takes_a_pairs_session_in_chromium(browser, tmp_path):
    """The page as Seeliger et al.'s pairwise identification test: the original above two
    reconstructions, answered by click, by arrow key and by number key, then the end screen."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from brainkern.reconstruct import human

    rng = np.random.default_rng(0)
    stimuli = rng.uniform(-1, 1, (3, 8, 8)).astype(np.float32)
    session = human.prepare_pairs_session(stimuli, -stimuli, tmp_path / "p", repeats=1, scale=8)
    meta = json.loads((session / "session.json").read_text())
    key = {k: v["truth"] for k, v in json.loads((session / "key.json").read_text())["items"].items()}
    truths = [key[it["id"]] for it in turing.rater_order(meta, RATER)]
    server = turing.serve(session, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        d = browser
        find = lambda i: d.find_element(By.ID, i)  # noqa: E731
        wait = WebDriverWait(d, 15)

        def at(k: int) -> None:
            wait.until(lambda _: find("progress").text == f"{k} / 3" and find("left").is_enabled())

        d.get(server.url)
        wait.until(lambda _: find("title").text == "Which reconstruction matches?")
        assert not find("real").is_displayed() and not find("unsure").is_displayed()
        find("name").clear()
        find("name").send_keys(RATER, Keys.ENTER)
        at(1)
        assert all(find(i).get_property("naturalWidth") == 64 for i in ("target", "left-img", "right-img"))
        find("left").click()
        at(2)
        ActionChains(d).send_keys(Keys.ARROW_RIGHT).perform()
        at(3)
        ActionChains(d).send_keys("1").perform()
        wait.until(lambda _: find("end-screen").is_displayed())
        given = ["left", "right", "left"]
        correct = sum(t == g for t, g in zip(truths, given, strict=True))
        assert find("pairs-correct").text == str(correct) and find("pairs-judged").text == "3"
        assert not find("end-turing").is_displayed()
    finally:
        server.shutdown()
        server.server_close()
    records = [json.loads(x) for x in (session / "answers" / "dr~20test.jsonl").read_text().splitlines()]
    assert [r["answer"] for r in records] == given
