"""Human pairwise identification (brainkern.reconstruct.human) on the Turing-test machinery."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("scipy")

from scipy.stats import beta, binomtest  # noqa: E402

from brainkern.evaluate import turing  # noqa: E402
from brainkern.reconstruct import human  # noqa: E402


def _arrays(n: int = 5, size: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    stimuli = rng.uniform(-1, 1, (n, size, size)).astype(np.float32)
    return stimuli, np.clip(stimuli + 0.3 * rng.standard_normal(stimuli.shape), -1, 1).astype(np.float32)


def _session(tmp_path: Path, name: str = "s", n: int = 5, repeats: int = 3, **kw) -> Path:
    stimuli, recon = _arrays(n)
    names = [f"img-{i}" for i in range(n)]
    return human.prepare_pairs_session(stimuli, recon, tmp_path / name, names=names, repeats=repeats, **kw)


def _meta(session: Path) -> dict:
    return json.loads((session / "session.json").read_text())


def _key(session: Path) -> dict:
    return json.loads((session / "key.json").read_text())["items"]


def _pixels(path: Path) -> np.ndarray:
    from matplotlib.image import imread

    return np.round(imread(path) * 255).astype(int)


def _expected(image: np.ndarray, scale: int) -> np.ndarray:
    gray = np.round(np.clip((image + 1) / 2, 0, 1) * 255).astype(int)
    return np.kron(gray, np.ones((scale, scale), int))


# ----------------------------------------------------------------------------- trials


def test_every_image_gets_repeats_distinct_distractors_balanced_and_seeded():
    trials = human.pair_trials(7, 5, seed=3)
    assert len(trials) == 35
    by_image: dict[int, list[tuple[int, str]]] = {}
    for i, j, side in trials:
        by_image.setdefault(i, []).append((j, side))
    assert sorted(by_image) == list(range(7))
    for i, pairs in by_image.items():
        distractors = [j for j, _ in pairs]
        assert len(distractors) == 5 and len(set(distractors)) == 5 and i not in distractors
        sides = Counter(side for _, side in pairs)
        assert abs(sides["left"] - sides["right"]) == 1  # 3 and 2, either way
    # Every reconstruction is a distractor exactly `repeats` times.
    assert Counter(j for _, j, _ in trials) == {j: 5 for j in range(7)}
    assert human.pair_trials(7, 5, seed=3) == trials and human.pair_trials(7, 5, seed=4) != trials
    overall = Counter(side for *_, side in trials)
    assert abs(overall["left"] - overall["right"]) <= 7
    with pytest.raises(ValueError, match="needs at least 6 test images"):
        human.pair_trials(5, 5, seed=0)


def test_a_session_shows_the_original_above_its_own_and_a_distractor_reconstruction(tmp_path):
    stimuli, recon = _arrays(5)
    mask = np.zeros((4, 4), bool)
    mask[1:3, 1:3] = True
    session = human.prepare_pairs_session(
        stimuli, recon, tmp_path / "s", repeats=3, scale=2, seed=1, mask=mask
    )
    meta, key = _meta(session), _key(session)
    assert meta["task"] == "pairs" and meta["format"] == turing.FORMAT and meta["repeats"] == 3
    assert len(meta["items"]) == 15 and Counter(v["image"] for v in key.values()) == {i: 3 for i in range(5)}
    files = sorted((session / "images").iterdir())
    assert len(files) == 45 and len({p.stat().st_size for p in files}) == 1
    masked = lambda x: np.where(mask, x, 0.0)  # noqa: E731 - mid grey outside the aperture
    for item in meta["items"]:
        truth = key[item["id"]]
        i, j = truth["image"], truth["distractor"]
        other = "right" if truth["truth"] == "left" else "left"
        assert (_pixels(session / item["file"]) == _expected(masked(stimuli[i]), 2)).all()
        assert (_pixels(session / item[truth["truth"]]) == _expected(masked(recon[i]), 2)).all()
        assert (_pixels(session / item[other]) == _expected(masked(recon[j]), 2)).all()
    assert _pixels(session / meta["items"][0]["file"])[0, 0] == 128
    # The same seed gives the same trials; file names are fresh tokens.
    again = human.prepare_pairs_session(stimuli, recon, tmp_path / "t", repeats=3, scale=2, seed=1, mask=mask)
    strip = lambda k: [(v["image"], v["distractor"], v["truth"]) for v in k.values()]  # noqa: E731
    assert strip(_key(again)) == strip(key)
    with pytest.raises(ValueError, match="already holds a session"):
        human.prepare_pairs_session(stimuli, recon, tmp_path / "s", repeats=3)
    with pytest.raises(ValueError, match="one per stimulus"):
        human.prepare_pairs_session(stimuli, recon[:4], tmp_path / "u")
    with pytest.raises(ValueError, match=r"mask must be \(4, 4\)"):
        human.prepare_pairs_session(stimuli, recon, tmp_path / "v", repeats=2, mask=np.ones((3, 3), bool))


# ----------------------------------------------------------------------------- the server


class _Running:
    def __init__(self, session: Path):
        self.server = turing.serve(session, port=0)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = self.server.url

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def state(self, rater: str) -> dict:
        return json.loads(self.get(f"api/state?rater={urllib.request.quote(rater)}")[1])

    def post(self, rater: str, item: str, answer: str) -> tuple[int, dict]:
        body = json.dumps({"rater": rater, "item": item, "answer": answer, "ms": 900}).encode()
        request = urllib.request.Request(self.url + "api/answer", body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_answers_are_durable_resumable_idempotent_and_the_key_stays_hidden(tmp_path):
    session = _session(tmp_path, n=4, repeats=2)
    key = {k: v["truth"] for k, v in _key(session).items()}
    run = _Running(session)
    try:
        assert json.loads(run.get("api/task")[1]) == {"task": "pairs", "answers": ["left", "right"]}
        raw = run.get("api/state?rater=AB")[1].decode()
        assert "truth" not in raw and "distractor" not in raw and "img-" not in raw
        state = json.loads(raw)
        assert state["task"] == "pairs" and state["result"] is None and state["total"] == 8
        assert set(state["items"][0]) == {"id", "src", "left", "right"}
        for secret in ("key.json", "images.npz", "session.json", "answers/ab.jsonl"):
            assert run.get(secret)[0] == 404, secret
        assert run.get(state["items"][0]["left"].lstrip("/"))[0] == 200
        items = [it["id"] for it in state["items"]]
        for item in items[:3]:
            assert run.post("AB", item, key[item])[0] == 200
        # A retry is stored once, a different answer is refused, answers outside the task are bad.
        assert run.post("AB", items[1], key[items[1]]) == (
            200,
            {"status": "already saved", "answer": key[items[1]], "answered": 3, "finished": False},
        )
        flip = {"left": "right", "right": "left"}
        assert run.post("AB", items[1], flip[key[items[1]]])[0] == 409
        assert run.post("AB", items[3], "real")[0] == 400
        assert run.post("AB", items[3], "unsure")[0] == 400  # "can't tell" is off by default
    finally:
        run.close()
    lines = (session / "answers" / "ab.jsonl").read_text().splitlines()
    assert [json.loads(line)["item"] for line in lines] == items[:3]

    run = _Running(session)  # a new server resumes where the rater stopped, in the same order
    try:
        state = run.state(" ab ")
        assert [it["id"] for it in state["items"]] == items
        assert state["answered"] == {item: key[item] for item in items[:3]}
        for item in items[3:-1]:
            assert run.post("AB", item, key[item])[0] == 200
        assert run.post("AB", items[-1], flip[key[items[-1]]])[1]["finished"]
        result = run.state("AB")["result"]
        assert result == {"answered": 8, "unsure": 0, "judged": 8, "correct": 7, "accuracy": 7 / 8}
    finally:
        run.close()


# ----------------------------------------------------------------------------- the report


def _answer(session: Path, rater: str, pick) -> None:
    """Answers by hand: ``pick(truth_record) -> answer`` for every item."""
    lines = [
        json.dumps({"rater": rater, "item": item, "answer": pick(v)}) for item, v in _key(session).items()
    ]
    (session / "answers" / f"{turing.rater_key(rater)}.jsonl").write_text("\n".join(lines) + "\n")


def test_report_counts_comparisons_and_majority_votes_by_image(tmp_path, capsys):
    flip = {"left": "right", "right": "left"}
    session = _session(tmp_path, "all", n=5, repeats=3)
    _answer(session, "Right", lambda v: v["truth"])
    row = human.pairs_table(session)["rows"][0]
    assert (row["correct"], row["judged"], row["accuracy"]) == (15, 15, 1.0)
    assert row["p_value"] == pytest.approx(0.5**15) and row["complete"]
    assert row["ci_low"] == pytest.approx(beta.ppf(0.025, 15, 1), rel=1e-9) and row["ci_high"] == 1.0
    assert row["by_image"]["identified"] == 5 and row["by_image"]["p_value"] == pytest.approx(0.5**5)

    session = _session(tmp_path, "mixed", n=5, repeats=3)
    _answer(session, "Wrong", lambda v: flip[v["truth"]])
    row = human.pairs_table(session)["rows"][0]
    assert (row["correct"], row["accuracy"], row["p_value"], row["by_image"]["identified"]) == (
        0,
        0.0,
        1.0,
        0,
    )
    # A second rater right on images 0-2 only: by image 3 of 5 identified; pooled, each image gets
    # 6 votes, and images 0-2 get 3 right + 3 wrong: ties, not identified.
    _answer(session, "Half", lambda v: v["truth"] if v["image"] < 3 else flip[v["truth"]])
    table = human.pairs_table(session)
    half, wrong = table["rows"]
    assert (half["rater"], half["correct"], half["by_image"]["identified"]) == ("Half", 9, 3)
    assert half["p_value"] == pytest.approx(binomtest(9, 15, 0.5, alternative="greater").pvalue, rel=1e-12)
    pooled = table["pooled"]
    assert (pooled["correct"], pooled["judged"], pooled["items"]) == (9, 30, 30)
    assert pooled["by_image"] == {**pooled["by_image"], "images": 5, "identified": 0, "tied": 3}
    assert human.pairs_table(session, "half ")["rows"] == [half]
    with pytest.raises(ValueError, match="no answers from rater"):
        human.pairs_table(session, "nobody")
    assert table["seeliger2018"][1] == {
        "data_set": "vim-1 (grey-scale natural photographs)",
        "correct_comparisons": 67.6,
        "identified_by_image": 75.5,
    }

    assert human.human_report_main([str(session)]) == 0
    out = capsys.readouterr().out
    assert "| Half | 9 / 15 | 60.0 |" in out and "| pooled | 9 / 30 | 30.0 |" in out
    assert "| BRAINS (handwritten characters) | 75.0 | 74.3 |" in out
    assert (session / "report.md").read_text() == out.split("written:")[0]
    assert json.loads((session / "report.json").read_text())["pooled"]["correct"] == 9


def test_unsure_answers_are_counted_apart(tmp_path):
    session = _session(tmp_path, n=3, repeats=2, unsure=True)
    items = list(_key(session))
    turing.record_answer(session, "A", items[0], "unsure")
    turing.record_answer(session, "A", items[1], _key(session)[items[1]]["truth"])
    row = human.pairs_table(session)["rows"][0]
    assert (row["answered"], row["unsure"], row["judged"], row["correct"], row["complete"]) == (
        2,
        1,
        1,
        1,
        False,
    )


def test_old_turing_sessions_load_and_the_two_reports_refuse_each_others_sessions(tmp_path):
    old = turing.prepare_session(np.zeros((2, 1, 4, 4)), np.ones((2, 1, 4, 4)), tmp_path / "old", n=2)
    meta = _meta(old)
    assert "task" not in meta and turing.session_task(meta) == "turing"
    item = meta["items"][0]["id"]
    assert turing.record_answer(old, "A", item, "real")[0]
    with pytest.raises(ValueError, match="answer must be one of"):
        turing.record_answer(old, "A", meta["items"][1]["id"], "left")
    assert turing.turing_table(old, machine=False)["rows"][0]["answered"] == 1
    run = _Running(old)
    try:
        assert json.loads(run.get("api/task")[1])["task"] == "turing"
        assert set(run.state("A")["items"][0]) == {"id", "src", "channel"}
    finally:
        run.close()
    with pytest.raises(ValueError, match="turing-report"):
        human.pairs_table(old)
    with pytest.raises(ValueError, match="human-report"):
        turing.turing_table(_session(tmp_path), machine=False)


# ----------------------------------------------------------------------------- from a run


def test_the_command_prepares_a_session_from_a_reconstruction_run(tmp_path, capsys):
    stimuli, recon = _arrays(4, size=6)
    arrays = tmp_path / "run" / "arrays"
    arrays.mkdir(parents=True)
    np.save(arrays / "stimuli.npy", stimuli)
    np.save(arrays / "reconstruction_gan.npy", recon)
    (arrays / "names.json").write_text(json.dumps([f"digits-{i:04d}" for i in range(4)]))
    loaded = human.pairs_from_run(tmp_path / "run")
    assert loaded["names"][3] == "digits-0003" and (loaded["reconstructions"] == recon).all()
    argv = [str(tmp_path / "run"), "--repeats", "2", "--session", str(tmp_path / "s"), "--no-serve"]
    assert human.human_main(argv) == 0 and "session prepared" in capsys.readouterr().out
    meta = _meta(tmp_path / "s")
    assert len(meta["items"]) == 8 and meta["method"] == "gan" and meta["image_shape"] == [6, 6]
    with np.load(tmp_path / "s" / "images.npz") as z:
        assert (z["stimuli"] == stimuli).all() and list(z["names"]) == loaded["names"]
    assert human.human_main([str(tmp_path / "run"), "--method", "ridge", "--no-serve"]) == 2
    err = capsys.readouterr().err
    assert "reconstruction_ridge.npy is missing" in err and "['gan']" in err
    assert human.human_main([]) == 2
    assert human.human_report_main([str(tmp_path / "nothing")]) == 2


def test_the_command_serves_a_session_until_ctrl_c(tmp_path):
    session = _session(tmp_path, n=3, repeats=1)
    # A shell's background job (nohup ... &) starts with SIGINT ignored, and Python keeps it
    # ignored: the child takes Ctrl-C's default handler back, as in a terminal.
    code = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from brainkern.reconstruct.human import human_main; sys.exit(human_main(sys.argv[1:]))"
    )
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--session", str(session), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("pairwise identification test at http://127.0.0.1:"), line
        url = re.search(r"http://\S+/", line).group(0)
        assert json.loads(urllib.request.urlopen(url + "api/task").read())["task"] == "pairs"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0 and "stopped; answers are in" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
