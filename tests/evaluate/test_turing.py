"""The Visual Turing Test (brainkern.evaluate.turing): sessions, durable answers, the report."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("scipy")

from scipy.stats import beta, binomtest  # noqa: E402

from brainkern.evaluate import turing  # noqa: E402
from brainkern.evaluate.__main__ import main as evaluate_main  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _images(n: int, seed: int, shape=(2, 6, 5), shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.uniform(-0.8, 0.8, (n, *shape)) + shift, -1, 1).astype(np.float32)


def _session(tmp_path: Path, n: int = 4, seed: int = 0, name: str = "s", **kw) -> Path:
    return turing.prepare_session(
        _images(n + 2, 1), _images(n + 3, 2, shift=0.1), tmp_path / name, n=n, seed=seed, **kw
    )


def _meta(session: Path) -> dict:
    return json.loads((session / "session.json").read_text())


def _truths(session: Path) -> list[str]:
    key = json.loads((session / "key.json").read_text())["items"]
    return [key[item["id"]]["truth"] for item in _meta(session)["items"]]


def _png_pixels(path: Path) -> np.ndarray:
    from matplotlib.image import imread

    return np.round(imread(path) * 255).astype(int)


# ----------------------------------------------------------------------------- preparation


def test_equal_counts_seeded_order_and_channels_in_equal_proportion(tmp_path):
    a = _session(tmp_path, n=6, name="a", names=["T1", "T2"])
    b = _session(tmp_path, n=6, name="b", names=["T1", "T2"])
    c = _session(tmp_path, n=6, seed=1, name="c", names=["T1", "T2"])
    truths = _truths(a)
    assert truths.count("real") == truths.count("synthetic") == 6
    # Per side, the channels cycle: 3 T1 and 3 T2 trials of real and of synthetic images.
    for side in ("real", "synthetic"):
        shown = [it["channel"] for it, t in zip(_meta(a)["items"], truths, strict=True) if t == side]
        assert sorted(shown) == ["T1"] * 3 + ["T2"] * 3
    # The same seed gives the same trials (truth, channel, pixels); the names are fresh tokens.
    assert _truths(b) == truths and _truths(c) != truths
    pix = lambda s: [_png_pixels(s / it["file"]).tolist() for it in _meta(s)["items"]]  # noqa: E731
    assert pix(a) == pix(b)
    assert {it["id"] for it in _meta(a)["items"]}.isdisjoint(it["id"] for it in _meta(b)["items"])
    with np.load(a / "images.npz") as z:  # the pools: every image given (6 + 2 real, 6 + 3 synthetic)
        assert z["real"].shape == (8, 2, 6, 5) and z["synthetic"].shape == (9, 2, 6, 5)
    with pytest.raises(ValueError, match="already holds a session"):
        _session(tmp_path, n=6, name="a")


def test_nothing_reveals_the_key_before_the_end(tmp_path):
    session = _session(tmp_path, n=5)
    meta = _meta(session)
    files = sorted((session / "images").iterdir())
    assert len(files) == 10
    for item in meta["items"]:
        assert set(item) == {"id", "file", "channel"}
        assert re.fullmatch(r"[0-9a-f]{16}", item["id"]) and item["file"] == f"images/{item['id']}.png"
    # One byte length and one pixel grid for every PNG, whatever its content.
    assert len({p.stat().st_size for p in files}) == 1
    assert len({_png_pixels(p).shape for p in files}) == 1
    server = turing.serve(session, port=0)
    import threading

    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        state = urllib.request.urlopen(server.url + "api/state?rater=AB").read().decode()
        assert "real" not in state and "synthetic" not in state and "truth" not in state
        assert json.loads(state)["result"] is None
        for secret in ("key.json", "images.npz", "session.json", "images/../key.json", "answers/ab.jsonl"):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(server.url + secret)
            assert err.value.code == 404, secret
    finally:
        server.shutdown()
        server.server_close()


def test_real_and_synthetic_pass_through_one_display_rule(tmp_path):
    # Constant images: -1 -> 0, 0.5 -> round(0.75 * 255) = 191, values beyond the window clip.
    real = np.full((2, 1, 4, 4), 0.5, np.float32)
    synthetic = np.full((2, 1, 4, 4), 3.0, np.float32)
    session = turing.prepare_session(real, synthetic, tmp_path / "s", n=2)
    truths = _truths(session)
    values = {t: set() for t in ("real", "synthetic")}
    for item, truth in zip(_meta(session)["items"], truths, strict=True):
        values[truth] |= set(_png_pixels(session / item["file"]).ravel().tolist())
    assert values == {"real": {191}, "synthetic": {255}}
    # Folder images: a percentile window per image, so a brighter copy looks the same.
    ramp = np.linspace(0, 1, 100, dtype=np.float32).reshape(1, 1, 10, 10)
    session = turing.prepare_session(ramp, 7 * ramp + 3, tmp_path / "p", n=1, window="percentile")
    a, b = (_png_pixels(session / it["file"]) for it in _meta(session)["items"])
    assert (a == b).all() and a.min() == 0 and a.max() == 255


def test_volumes_show_their_central_sagittal_slice_upright_or_three_planes(tmp_path):
    vol = np.full((1, 1, 8, 6, 4), -1.0, np.float32)
    vol[0, 0, 4, :, 3] = 1.0  # the top (superior) row of the central sagittal slice
    session = turing.prepare_session(vol, vol, tmp_path / "s", n=1)
    img = _png_pixels(session / _meta(session)["items"][0]["file"])
    assert img.shape == (4, 6)  # rows: superior to inferior (W), columns: posterior to anterior (H)
    assert (img[0] == 255).all() and (img[1:] == 0).all()
    session = turing.prepare_session(vol, vol, tmp_path / "t", n=1, view="triplanar")
    img = _png_pixels(session / _meta(session)["items"][0]["file"])
    # sagittal 4x6, coronal 4x8, axial 6x8 side by side with 2-pixel gaps, 6 rows high
    assert img.shape == (6, 6 + 2 + 8 + 2 + 8)


def test_bad_inputs_say_what_was_expected(tmp_path):
    with pytest.raises(ValueError, match="give both one shape"):
        turing.prepare_session(_images(3, 0), _images(3, 0, shape=(2, 6, 6)), tmp_path / "a", n=2)
    with pytest.raises(ValueError, match="n=4 real images needed, got 3"):
        turing.prepare_session(_images(3, 0), _images(5, 0), tmp_path / "b", n=4)
    with pytest.raises(ValueError, match="one per channel"):
        turing.prepare_session(_images(3, 0), _images(3, 0), tmp_path / "c", n=2, names=["T1"])
    with pytest.raises(ValueError, match=r"\(N, 1, D, H, W\)"):
        turing.prepare_session(np.zeros((2, 2, 3, 3, 3)), np.zeros((2, 2, 3, 3, 3)), tmp_path / "d", n=1)


def test_raters_get_their_own_order_of_the_same_items(tmp_path):
    meta = _meta(_session(tmp_path, n=10))
    ab, cd = turing.rater_order(meta, "AB"), turing.rater_order(meta, "CD")
    assert ab != cd and sorted(it["id"] for it in ab) == sorted(it["id"] for it in cd)
    assert turing.rater_order(meta, "  ab ") == ab  # case and outer spaces do not make a new rater


def test_rater_names_become_distinct_safe_file_names():
    keys = [turing.rater_key(n) for n in ("A B", "A_B", "a~20b", "../etc/passwd", "Dr. Müller")]
    assert len(set(keys)) == len(keys)
    assert all(re.fullmatch(r"[a-z0-9_~-]+", k) for k in keys)
    assert keys[0] == "a~20b" and keys[2] == "a~7e20b"
    for bad in ("", "   ", "a\nb", "x" * 65):
        with pytest.raises(ValueError):
            turing.rater_key(bad)


# ----------------------------------------------------------------------------- durability


class _Server:
    """``python -m brainkern.evaluate turing --session DIR --port 0`` in a subprocess."""

    def __init__(self, session: Path):
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "brainkern.evaluate", "turing", "--session", str(session), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        line = self.proc.stdout.readline()
        match = re.search(r"http://\S+/", line)
        assert match, f"no URL printed: {line!r}"
        self.url = match.group(0)

    def state(self, rater: str) -> dict:
        return json.loads(urllib.request.urlopen(f"{self.url}api/state?rater={rater}").read())

    def post(self, rater: str, item: str, answer: str) -> tuple[int, dict]:
        body = json.dumps({"rater": rater, "item": item, "answer": answer, "ms": 1500}).encode()
        request = urllib.request.Request(self.url + "api/answer", body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc.stdout.close()


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_killed_server_resumes_without_losing_or_doubling_answers(tmp_path):
    session = _session(tmp_path, n=3)
    server = _Server(session)
    try:
        items = [it["id"] for it in server.state("AB")["items"]]
        given = ["real", "synthetic", "unreadable"]
        for item, answer in zip(items, given, strict=False):
            assert server.post("AB", item, answer)[0] == 200
        # A retried POST is stored once; a different answer to an answered item is refused.
        assert server.post("AB", items[1], "synthetic") == (
            200,
            {"status": "already saved", "answer": "synthetic", "answered": 3, "finished": False},
        )
        assert server.post("AB", items[1], "real")[0] == 409
        assert server.post("", items[3], "real")[0] == 400
        assert server.post("AB", "nope", "real")[0] == 400
        assert server.post("CD", items[0], "real")[0] == 200
    finally:
        server.kill()
    ab = session / "answers" / "ab.jsonl"
    assert [(r["item"], r["answer"]) for r in _lines(ab)] == list(zip(items, given, strict=False))
    assert [r["item"] for r in _lines(session / "answers" / "cd.jsonl")] == [items[0]]
    # A line torn by a kill mid-write: ignored on reading, dropped before the next append.
    with open(ab, "ab") as f:
        f.write(b'{"rater": "AB", "item": "')
    assert len(turing.read_answers(session)["AB"]) == 3

    server = _Server(session)
    try:
        state = server.state("ab")
        assert [it["id"] for it in state["items"]] == items  # same order after the restart
        assert state["answered"] == dict(zip(items, given, strict=False))  # resumes at item 4
        for item in items[3:]:
            assert server.post("AB", item, "real")[0] == 200
        state = server.state("AB")
        assert state["finished"] and state["result"]["judged"] == 5 and state["result"]["unreadable"] == 1
    finally:
        server.kill()
    records = _lines(ab)
    assert [r["item"] for r in records] == items and all(r["ms"] == 1500 for r in records)


# ----------------------------------------------------------------------------- the report


def _write_answers(session: Path, rater: str, counts: dict[tuple[str, str], int]) -> None:
    """Answers by hand: ``counts[(truth, answer)]`` items of each kind, in session order."""
    key = json.loads((session / "key.json").read_text())["items"]
    pending = {truth: [i for i, v in key.items() if v["truth"] == truth] for truth in ("real", "synthetic")}
    lines = []
    for (truth, answer), k in counts.items():
        for _ in range(k):
            lines.append(json.dumps({"rater": rater, "item": pending[truth].pop(), "answer": answer}))
    path = session / "answers" / f"{turing.rater_key(rater)}.jsonl"
    path.write_text("\n".join(lines) + "\n")


def test_report_matches_a_hand_computed_table(tmp_path, capsys):
    real, synthetic = _images(50, 3, shape=(1, 4, 4)), _images(50, 4, shape=(1, 4, 4))
    session = turing.prepare_session(real, synthetic, tmp_path / "s", n=50)
    _write_answers(
        session,
        "Dr A",
        {
            ("real", "real"): 30,
            ("real", "synthetic"): 15,
            ("real", "unreadable"): 5,
            ("synthetic", "real"): 10,
            ("synthetic", "synthetic"): 38,
            ("synthetic", "unreadable"): 2,
        },
    )
    _write_answers(
        session, "B", {("real", "real"): 20, ("synthetic", "synthetic"): 5, ("synthetic", "real"): 5}
    )
    table = turing.turing_table(session, machine=False)
    a, b = table["rows"]
    assert (a["rater"], b["rater"]) == ("B", "Dr A")  # sorted by file name: b, dr~20a
    assert [
        a[k] for k in ("real_as_real", "real_as_synthetic", "synthetic_as_real", "synthetic_as_synthetic")
    ] == [
        20,
        0,
        5,
        5,
    ]
    assert a["answered"] == 30 and not a["complete"] and a["accuracy"] == pytest.approx(25 / 30)
    assert b["answered"] == 100 and b["complete"] and b["unreadable"] == 7 and b["judged"] == 93
    assert b["unreadable_real"] == 5 and b["unreadable_synthetic"] == 2
    assert b["accuracy"] == pytest.approx(68 / 93)
    # Clopper-Pearson from the beta quantiles, the two-sided exact binomial test.
    assert b["ci_low"] == pytest.approx(beta.ppf(0.025, 68, 93 - 68 + 1), rel=1e-9)
    assert b["ci_high"] == pytest.approx(beta.ppf(0.975, 68 + 1, 93 - 68), rel=1e-9)
    assert b["p_value"] == pytest.approx(binomtest(68, 93, 0.5).pvalue, rel=1e-12)
    pooled = table["pooled"]
    assert pooled["real_as_real"] == 50 and pooled["synthetic_as_real"] == 15 and pooled["judged"] == 123
    assert pooled["accuracy"] == pytest.approx(93 / 123) and pooled["items"] == 200
    assert table["han2018"][0] == {
        "row": "T1 (DCGAN, 128x128)",
        "accuracy": 70,
        "real_as_real": 26,
        "real_as_synthetic": 24,
        "synthetic_as_real": 6,
        "synthetic_as_synthetic": 44,
    }
    for row in table["han2018"]:  # the paper's accuracies are its cells' (RR + SS) / 100
        assert row["accuracy"] == row["real_as_real"] + row["synthetic_as_synthetic"]
    only = turing.turing_table(session, "dr a", machine=False)
    assert [r["rater"] for r in only["rows"]] == ["Dr A"] and only["pooled"] is None

    # The command: prints the table, writes report.md and report.json, with the machine observer.
    assert evaluate_main(["turing-report", str(session), "--permutations", "9"]) == 0
    out = capsys.readouterr().out
    assert (
        "| Dr A | 73.1 |" in out
        and "| pooled (incomplete) | 75.6 |" in out
        and "| B (incomplete) | 83.3 |" in out
    )
    assert "50% accuracy is chance" in out and "| Concat (WGAN, 64x64) | 53 | 18 | 32 | 15 | 35 |" in out
    report = json.loads((session / "report.json").read_text())
    assert report["machine"]["n_real"] == 50 and report["machine"]["permutations"] == 9
    assert 0 <= report["machine"]["accuracy"] <= 1
    assert (session / "report.md").read_text() == out.split("written:")[0]


def test_cli_prepares_a_session_from_folders_of_pngs(tmp_path, capsys):
    from matplotlib.image import imsave

    for name, seed in (("real", 0), ("synthetic", 1)):
        (tmp_path / name).mkdir()
        for k, img in enumerate(_images(4, seed, shape=(8, 8))):
            imsave(tmp_path / name / f"{k}.png", img, cmap="gray")
    code = evaluate_main(
        ["turing", str(tmp_path / "synthetic"), "--real", str(tmp_path / "real"), "--n", "3", "--no-serve",
         "--session", str(tmp_path / "s")]
    )  # fmt: skip
    assert code == 0 and "session prepared" in capsys.readouterr().out
    meta = _meta(tmp_path / "s")
    assert meta["window"] == "percentile" and meta["pool"] == {**meta["pool"], "real": 4, "synthetic": 4}
    assert len(meta["items"]) == 6 and meta["image_shape"] == [1, 8, 8]
    assert evaluate_main(["turing", str(tmp_path / "synthetic"), "--no-serve"]) == 2
    assert "give --real DIR" in capsys.readouterr().err


def test_a_3d_run_gives_held_out_volumes_beside_its_samples(tmp_path, monkeypatch):
    pytest.importorskip("nibabel")
    from brainkern.train import config
    from brainkern.train.engine import Trainer

    monkeypatch.setenv("BRAINKERN_CACHE", str(tmp_path / "cache"))
    cfg = config.resolve(
        "quick",
        [
            {
                "model": {"latent_dim": 8, "width": 4, "code_hidden": 16},
                "data": {"n_per_class": 4, "shape": [16, 16, 16], "cohort_shape": [16, 16, 16], "folds": 2},
                "train": {"iters": 1, "batch_size": 2, "threads": 1},
                "log": {"every": 1, "checkpoint_every": 1, "n_samples": 0},
            }
        ],
    )
    Trainer(cfg, tmp_path / "run", progress=False, log=None).fit()
    code = evaluate_main(
        ["turing", str(tmp_path / "run"), "--n", "3", "--pool", "4", "--no-serve", "--view", "triplanar"]
    )
    assert code == 0
    (session,) = tmp_path.glob("turing-run-*")
    meta = _meta(session)
    assert meta["kind"] == "3d" and meta["view"] == "triplanar" and meta["window"] == [-1.0, 1.0]
    assert meta["real_images"].startswith("held-out test volumes (4,")
    with np.load(session / "images.npz") as z:
        assert z["real"].shape == z["synthetic"].shape == (4, 1, 16, 16, 16)
