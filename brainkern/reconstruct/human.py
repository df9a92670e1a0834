"""Human pairwise identification of reconstructions (Seeliger et al. 2018, section 3.2).

Seeliger et al. judged their reconstructions with people rather than pixel metrics: on
Mechanical Turk, a worker saw one original test stimulus and two reconstructions, its own
and that of another test stimulus picked at random, and chose the one that belonged to the
original. Each test image was compared five times, with a different distractor each time.
They report the share of correct comparisons, and the share of images identified by a
majority vote over each image's comparisons (their Figure 9).

This module runs that test on brainkern's Visual Turing Test machinery
(:mod:`brainkern.evaluate.turing`): a session folder with opaque image names, a key that
the server keeps until the rater has finished, answers appended durably per rater, resume
by name, and a local page served on 127.0.0.1. A pairs session's ``session.json`` says
``"task": "pairs"``; each trial (item) shows the original on top and the two candidates
beneath it, left and right, as three PNGs of their own (fresh random names per trial, so
no name recurs between trials and none says which candidate is the true one).

Choices brainkern makes where the paper is silent (said so where they are made):

- distractors are balanced: every reconstruction is the distractor exactly ``repeats``
  times, so how often a picture appears says nothing (the paper drew them at random);
- the true reconstruction is on the left in half of an image's comparisons (the extra
  one of an odd ``repeats`` on a random side);
- one rater may see all comparisons, so they can meet a stimulus again with the same true
  reconstruction; on Mechanical Turk 38 workers shared the 850 comparisons. Several raters
  with fewer trials each come closer to the paper; each rater's order is their own;
- "can't tell" (``unsure``) is off by default, as in the paper (a forced choice); when on,
  such answers are counted apart and left out of the percentages;
- by image, an image counts as identified when its correct votes outnumber the wrong ones;
  a tie (possible with an even number of votes) counts as not identified;
- the p-values are one-sided exact binomial tests against 50% (better than chance), the
  paper's binomial test, whose sidedness it does not state.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brainkern.evaluate import turing

__all__ = [
    "SEELIGER2018_FIGURE9",
    "format_pairs_table",
    "human_main",
    "human_report_main",
    "pair_trials",
    "pairs_from_run",
    "pairs_table",
    "prepare_pairs_session",
    "write_pairs_report",
]

# Seeliger et al. (2018), section 3.2 and Figure 9: Mechanical Turk workers, 5 comparisons per
# test image (850 in all, 250 for each natural image set). (data set, % correct comparisons,
# % of images identified by a majority of their 5 comparisons)
SEELIGER2018_FIGURE9: tuple[tuple[str, float, float], ...] = (
    ("BRAINS (handwritten characters)", 75.0, 74.3),
    ("vim-1 (grey-scale natural photographs)", 67.6, 75.5),
    ("Generic Object Decoding (grey-scale natural photographs)", 64.4, 75.5),
)

CHANCE = (
    "50% is chance: the rater could not tell a stimulus's own reconstruction from that of another "
    "test stimulus. The higher, the more of each stimulus its reconstruction keeps."
)

BACKGROUND = 0.0  # outside the aperture, on the [-1, 1] scale: mid grey (brainkern's choice)


# ----------------------------------------------------------------------------- preparation


def _images(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3 or arr.shape[1] != arr.shape[2]:
        raise ValueError(f"{name}: expected square images (N, S, S) or (N, 1, S, S), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return arr


def _count(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def pair_trials(n: int, repeats: int, seed: int) -> list[tuple[int, int, str]]:
    """The comparisons of ``n`` test images, ``repeats`` each, as ``(image, distractor, side)``.

    Each image gets ``repeats`` different distractors, none of them itself; ``side`` (``"left"``
    or ``"right"``) is where its own reconstruction goes. The images are put in a random cycle
    (seeded) and image ``i``'s distractors are the images ``d_1 .. d_repeats`` steps further
    on, for distinct random steps: so every reconstruction is a distractor exactly ``repeats``
    times (brainkern's choice; Seeliger et al. drew each distractor at random). The true side
    alternates over an image's comparisons from a random start, then is shuffled.

    Raises:
        ValueError: ``repeats`` not below ``n``.
    """
    n, repeats = _count(n, "n", 2), _count(repeats, "repeats", 1)
    if repeats >= n:
        raise ValueError(f"repeats={repeats} needs at least {repeats + 1} test images, got {n}")
    rng = np.random.default_rng(_count(seed, "seed", 0))
    cycle = rng.permutation(n)
    place = np.empty(n, np.int64)
    place[cycle] = np.arange(n)
    steps = rng.choice(np.arange(1, n), size=repeats, replace=False)
    trials = []
    for i in range(n):
        first = int(rng.integers(2))
        sides = [("left", "right")[(first + r) % 2] for r in range(repeats)]
        rng.shuffle(sides)
        for step, side in zip(steps, sides, strict=True):
            trials.append((i, int(cycle[(place[i] + step) % n]), side))
    return trials


def _picture(image: np.ndarray, scale: int, mask: np.ndarray | None) -> np.ndarray:
    """``(S * scale, S * scale)`` uint8: [-1, 1] to black-white, masked, upscaled nearest-neighbour."""
    if mask is not None:
        image = np.where(mask, image, BACKGROUND)
    gray = np.round(np.clip((image + 1.0) / 2.0, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.repeat(np.repeat(gray, scale, axis=0), scale, axis=1)


def prepare_pairs_session(
    stimuli: Any,
    reconstructions: Any,
    out: str | os.PathLike,
    *,
    names: Sequence[str] | None = None,
    repeats: int = 5,
    seed: int = 0,
    scale: int = 4,
    mask: np.ndarray | None = None,
    unsure: bool = False,
    source: str | None = None,
    notes: dict[str, Any] | None = None,
) -> Path:
    """Prepare a pairwise identification session folder (see the module docstring).

    Every test image is compared ``repeats`` times (Seeliger et al.: 5) with distinct
    distractors (:func:`pair_trials`), in an order fixed by ``seed``; each rater then gets
    their own order of these trials. Pictures are shown on the fixed range [-1, 1] (the
    same rule for originals and reconstructions), outside ``mask`` painted mid grey, and
    enlarged ``scale`` times without smoothing.

    Args:
        stimuli: the original test images ``(n, S, S)`` (or ``(n, 1, S, S)``) in [-1, 1].
        reconstructions: their reconstructions, the same shape, in the same order.
        out: the session folder (must not hold a session yet).
        names: the ``n`` stimulus names (recorded in the key and ``images.npz``).
        repeats: comparisons per test image (at most ``n - 1``).
        seed: seed of the distractors, sides and trial order (a non-negative integer).
        scale: integer enlargement for the screen (64-pixel images at 4: 256 pixels).
        mask: ``(S, S)`` bool circular aperture (True inside), or None.
        unsure: also offer a "can't tell" answer (the paper forced a choice).
        source: what the images came from, recorded in ``session.json``.
        notes: extra JSON-able facts recorded in ``session.json``.

    Returns:
        The session folder.

    Raises:
        ValueError: bad shapes, too few images for ``repeats``, wrong ``names`` or ``mask``,
            or ``out`` already holding a session.
    """
    stim, rec = _images(stimuli, "stimuli"), _images(reconstructions, "reconstructions")
    if stim.shape != rec.shape:
        raise ValueError(f"stimuli are {stim.shape}, reconstructions {rec.shape}: give one per stimulus")
    n, size = stim.shape[0], stim.shape[1]
    scale = _count(scale, "scale", 1)
    names = [str(v) for v in names] if names is not None else [f"image-{i}" for i in range(n)]
    if len(names) != n or len(set(names)) != n:
        raise ValueError(f"names: {n} distinct names expected (one per stimulus), got {len(names)}")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (size, size):
            raise ValueError(f"mask must be ({size}, {size}) like the images, got {mask.shape}")
    out = Path(out)
    if (out / "session.json").exists():
        raise ValueError(f"{out} already holds a session; serve it with --session or choose another folder")
    trials = pair_trials(n, repeats, seed)
    order = np.random.default_rng([_count(seed, "seed", 0), 1]).permutation(len(trials))
    trials = [trials[int(k)] for k in order]

    own = [_picture(x, scale, mask) for x in stim]
    theirs = [_picture(x, scale, mask) for x in rec]
    pictures = []
    for i, j, side in trials:
        left, right = (theirs[i], theirs[j]) if side == "left" else (theirs[j], theirs[i])
        pictures += [own[i], left, right]
    tokens = turing.write_pictures(out, pictures)
    items, key = [], {}
    for t, (i, j, side) in enumerate(trials):
        target, left, right = tokens[3 * t : 3 * t + 3]
        items.append(
            {
                "id": target,
                "file": f"images/{target}.png",
                "left": f"images/{left}.png",
                "right": f"images/{right}.png",
            }
        )
        key[target] = {"truth": side, "image": i, "distractor": j, "name": names[i]}
    np.savez_compressed(out / "images.npz", stimuli=stim, reconstructions=rec, names=np.asarray(names))
    meta = {
        "format": turing.FORMAT,
        "task": "pairs",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
        "source": source,
        "seed": int(seed),
        "n": n,
        "repeats": int(repeats),
        "image_shape": [size, size],
        "scale": scale,
        "window": [-1.0, 1.0],
        "masked": mask is not None,
        "unsure": bool(unsure),
        "items": items,
        **(notes or {}),
    }
    return turing.save_session(out, meta, key)


def pairs_from_run(run_dir: str | os.PathLike, method: str = "gan") -> dict[str, Any]:
    """The test stimuli, one method's reconstructions and the names of a reconstruction run.

    Returns:
        ``{"stimuli": (n, S, S), "reconstructions": (n, S, S), "names": [n], "source": str}``,
        ready for ``prepare_pairs_session(**pairs_from_run(...), out=...)``.

    Raises:
        FileNotFoundError: a missing ``arrays/stimuli.npy``, ``arrays/reconstruction_<method>.npy``
            or ``arrays/names.json``.
    """
    arrays = Path(run_dir) / "arrays"
    paths = [arrays / "stimuli.npy", arrays / f"reconstruction_{method}.npy", arrays / "names.json"]
    for path in paths:
        if not path.is_file():
            have = sorted(p.stem.removeprefix("reconstruction_") for p in arrays.glob("reconstruction_*.npy"))
            raise FileNotFoundError(
                f"{path} is missing: give a reconstruction run directory"
                + (f" and one of its methods {have}" if have else " (run the pipeline first)")
            )
    return {
        "stimuli": np.load(paths[0]),
        "reconstructions": np.load(paths[1]),
        "names": [str(v) for v in json.loads(paths[2].read_text())],
        "source": f"{Path(run_dir).resolve()} ({method})",
    }


# ----------------------------------------------------------------------------- the table


def _pairs_row(name: str, records: list[dict[str, Any]], key: dict[str, dict[str, Any]], total: int) -> dict:
    counts = turing.pairs_counts(records, {item: v["truth"] for item, v in key.items()})
    votes: dict[int, list[int]] = {}  # image -> [correct, wrong]
    for r in records:
        if r["answer"] == turing.UNSURE:
            continue
        tally = votes.setdefault(int(key[r["item"]]["image"]), [0, 0])
        tally[0 if r["answer"] == key[r["item"]]["truth"] else 1] += 1
    identified = sum(1 for c, w in votes.values() if c > w)
    tied = sum(1 for c, w in votes.values() if c == w)
    return {
        "rater": name,
        **counts,
        "items": total,
        "complete": counts["answered"] >= total,
        **turing.binomial_summary(counts["correct"], counts["judged"], "greater"),
        "by_image": {
            "images": len(votes),
            "identified": identified,
            "tied": tied,
            **turing.binomial_summary(identified, len(votes), "greater"),
        },
    }


def pairs_table(session: str | os.PathLike, rater: str | None = None) -> dict[str, Any]:
    """Seeliger et al.'s Figure 9 for a pairs session: per rater and pooled over raters.

    Each row: ``correct`` of ``judged`` comparisons (``unsure`` ones left out) with the exact
    (Clopper-Pearson) 95% interval and a one-sided exact binomial test against 50%; and
    ``by_image``: ``identified`` of ``images`` by majority vote over that row's comparisons of
    each image (ties, counted apart as ``tied``, are not identified), with the same statistics.
    The pooled row takes every rater's answers together (by image: one vote over all raters).

    Args:
        session: a pairs session folder.
        rater: only this rater (name as typed; case and outer spaces ignored).

    Returns:
        A JSON-able dict: ``rows``, ``pooled`` (None without answers), ``seeliger2018``,
        ``chance`` and the session's facts.

    Raises:
        FileNotFoundError: not a session.
        ValueError: not a pairs session, unreadable answers, or no answers from ``rater``.
    """
    session = Path(session)
    meta = turing.load_session(session)
    if turing.session_task(meta) != "pairs":
        raise ValueError(
            f"{session} is a Visual Turing Test session: report it with "
            "'python -m brainkern.evaluate turing-report'"
        )
    key = json.loads((session / "key.json").read_text())["items"]
    answers = turing.read_answers(session)
    if rater is not None:
        wanted = turing.rater_key(rater)
        answers = {name: r for name, r in answers.items() if turing.rater_key(name) == wanted}
        if not answers:
            raise ValueError(f"no answers from rater {rater!r} in {session}")
    rows = [_pairs_row(name, records, key, len(key)) for name, records in answers.items()]
    pooled = None
    if rows:
        every = [r for records in answers.values() for r in records]
        pooled = _pairs_row("pooled", every, key, len(key) * len(rows))
    return {
        "session": str(session),
        "task": "pairs",
        "source": meta.get("source"),
        "n_images": meta.get("n"),
        "repeats": meta.get("repeats"),
        "comparisons": len(key),
        "image_shape": meta.get("image_shape"),
        "unsure_allowed": bool(meta.get("unsure")),
        "rows": rows,
        "pooled": pooled,
        "seeliger2018": [
            {"data_set": d, "correct_comparisons": c, "identified_by_image": b}
            for d, c, b in SEELIGER2018_FIGURE9
        ],
        "chance": CHANCE,
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _stats(s: dict[str, Any], k: int, total: int) -> str:
    ci = "-" if s["ci_low"] is None else f"{_pct(s['ci_low'])} - {_pct(s['ci_high'])}"
    p = "-" if s["p_value"] is None else f"{s['p_value']:.3g}"
    return f"{k} / {total} | {_pct(s['accuracy'])} | {ci} | {p}"


def format_pairs_table(table: dict[str, Any]) -> str:
    """Markdown of a :func:`pairs_table`: the raters' and the pooled row, what 50% means, and
    Seeliger et al.'s Figure 9 figures for reference."""
    lines = [
        f"# Pairwise identification of reconstructions: {table['session']}",
        "",
        f"Source: {table.get('source')}; {table['n_images']} test images, {table['repeats']} comparisons "
        f"each ({table['comparisons']} in all); 'can't tell' "
        f"{'offered' if table['unsure_allowed'] else 'not offered'}.",
        "",
        "| rater | correct comparisons | % | 95% CI (%) | p (> 50%) | images identified | % | 95% CI (%) "
        "| p (> 50%) | tied images | answered | can't tell |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in table["rows"] + ([table["pooled"]] if table.get("pooled") and len(table["rows"]) > 1 else []):
        b = r["by_image"]
        flag = "" if r["complete"] else " (incomplete)"
        lines.append(
            f"| {r['rater']}{flag} | {_stats(r, r['correct'], r['judged'])} | "
            f"{_stats(b, b['identified'], b['images'])} | {b['tied']} | {r['answered']} / {r['items']} | "
            f"{r['unsure']} |"
        )
    if not table["rows"]:
        lines.append("| (no answers yet) | | | | | | | | | | | |")
    lines += [
        "",
        "Correct comparisons: the rater chose the stimulus's own reconstruction; 'can't tell' answers are "
        "counted apart and left out. Images identified: majority vote over each image's comparisons (a tie "
        "is not identified). CI: exact (Clopper-Pearson); p: one-sided exact binomial test against 50%."
        + (" The pooled row takes all raters' answers together." if len(table["rows"]) > 1 else ""),
        "",
        table["chance"],
        "",
        "## Seeliger et al. (2018), section 3.2 / Figure 9, for reference "
        "(Mechanical Turk, 5 comparisons per image)",
        "",
        "| data set | correct comparisons (%) | images identified, majority of 5 (%) |",
        "| --- | ---: | ---: |",
    ]
    for r in table["seeliger2018"]:
        lines.append(f"| {r['data_set']} | {r['correct_comparisons']:.1f} | {r['identified_by_image']:.1f} |")
    return "\n".join(lines) + "\n"


def write_pairs_report(session: str | os.PathLike, rater: str | None = None) -> tuple[str, dict[str, Any]]:
    """:func:`pairs_table` written as ``SESSION/report.md`` and ``SESSION/report.json`` (the
    Turing session's names); returns ``(markdown, table)``.

    Raises:
        As :func:`pairs_table`.
    """
    from brainkern.data.io import atomic_path  # noqa: PLC0415

    table = pairs_table(session, rater)
    text = format_pairs_table(table)
    for name, body in (("report.md", text), ("report.json", json.dumps(table, indent=2) + "\n")):
        with atomic_path(Path(session) / name) as tmp:
            tmp.write_text(body)
    return text, table


# ----------------------------------------------------------------------------- command lines

PROG = "python -m brainkern.reconstruct"


def _parser(command: str, description: str) -> argparse.ArgumentParser:
    from brainkern._cli import subcommand_parser  # noqa: PLC0415

    return subcommand_parser(PROG, command, description)


def build_human_parser() -> argparse.ArgumentParser:
    """The ``human`` command's arguments."""
    from brainkern._cli import positive_int  # noqa: PLC0415

    parser = _parser(
        "human",
        "Seeliger et al.'s (2018) human pairwise identification test: prepare a session where each trial "
        "shows a test stimulus and two reconstructions (its own and another test stimulus's), and serve a "
        "local page where a rater picks the matching one. Answers are saved on disk as they are given; "
        "reopen the page with the same name to resume.",
    )
    parser.add_argument(
        "run_dir", nargs="?", help="a reconstruction run directory; leave out to serve --session"
    )
    parser.add_argument(
        "--method", default="gan", help="which reconstructions (arrays/reconstruction_<method>.npy)"
    )
    parser.add_argument("--repeats", type=positive_int, default=5, help="comparisons per test image")
    parser.add_argument("--seed", type=int, default=0, help="seed of the distractors, sides and order (>= 0)")
    parser.add_argument("--scale", type=positive_int, default=4, help="on-screen enlargement of the images")
    parser.add_argument("--unsure", action="store_true", help="also offer a 'can't tell' answer")
    parser.add_argument("--session", help="session folder (default: RUN_DIR/human-<method>-<time>)")
    parser.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (0.0.0.0 opens it to the network)"
    )
    parser.add_argument("--no-serve", action="store_true", help="only prepare the session")
    return parser


def build_human_report_parser() -> argparse.ArgumentParser:
    """The ``human-report`` command's arguments."""
    parser = _parser(
        "human-report",
        "Seeliger et al.'s (2018) Figure 9 for a pairwise identification session: per rater and pooled, "
        "correct comparisons and images identified by majority vote, each with its exact 95% CI and "
        "one-sided binomial test against 50%; written to SESSION/report.md and report.json.",
    )
    parser.add_argument("session", help="a session folder written by 'human'")
    parser.add_argument("--rater", help="only this rater")
    return parser


def _run_mask(run_dir: Path) -> np.ndarray | None:
    """The run's aperture if it saved one (``arrays/mask.npy``), else None."""
    path = run_dir / "arrays" / "mask.npy"
    return np.load(path).astype(bool) if path.is_file() else None


def human_main(argv: Sequence[str]) -> int:
    """``human``: prepare and/or serve a pairs session; returns the exit status."""
    args = build_human_parser().parse_args(argv)
    if args.run_dir is None and not args.session:
        print("error: give a RUN_DIR to prepare, or --session DIR to serve a session again", file=sys.stderr)
        return 2
    try:
        if args.run_dir is not None:
            run_dir = Path(args.run_dir)
            stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
            session = Path(args.session) if args.session else run_dir / f"human-{args.method}-{stamp}"
            session = prepare_pairs_session(
                **pairs_from_run(run_dir, args.method),
                out=session,
                repeats=args.repeats,
                seed=args.seed,
                scale=args.scale,
                mask=_run_mask(run_dir),
                unsure=args.unsure,
                notes={"method": args.method},
            )
            print(f"session prepared: {session}", flush=True)
        else:
            session = Path(args.session)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.no_serve:
        return 0
    return turing.serve_until_stopped(session, args.host, args.port, "pairwise identification test")


def human_report_main(argv: Sequence[str]) -> int:
    """``human-report``: print and write the session's table; returns the exit status."""
    args = build_human_report_parser().parse_args(argv)
    try:
        text, _ = write_pairs_report(args.session, args.rater)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text, end="")
    print(f"written: {Path(args.session) / 'report.md'} and report.json")
    return 0
