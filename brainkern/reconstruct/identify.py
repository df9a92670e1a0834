"""Pairwise identification of reconstructions, made automatic.

Seeliger et al. (2018, section 3.2) judged their reconstructions with people: a rater saw a test
stimulus ``x_i`` and two candidates, its own reconstruction ``r_i`` and the reconstruction ``r_j``
of another test stimulus, and picked the more similar one. Each test image got 5 such comparisons,
each with a randomly drawn distractor, and the paper reports the fraction of correct comparisons
("overall") and the fraction of images whose majority vote over their 5 comparisons is correct
("by image"), each tested against 50% with a binomial test.

Here the judge is a similarity measure: comparison ``(i, j)`` is correct when
``S[i, i] > S[i, j]``, with ``S[i, j]`` the Pearson correlation between stimulus ``i`` and
reconstruction ``j`` (over pixels, or over a feature network's activations). A tie counts half.
Because a machine judge costs nothing, every pair ``(i, j != i)`` is scored too ("all pairs"):
the exhaustive version of the same test, free of the distractor draw's noise; brainkern reports
it as the main figure and the paper's 5-comparison protocol beside it for comparison.

Counting conventions (brainkern's choices; the paper does not say how it handled ties):

- percentages count a tied comparison, or an image whose score is exactly half, as half correct;
- binomial tests leave ties out (the sign-test convention) and test the rest against 0.5,
  one-sided (``alternative="greater"``: the hypothesis is above-chance identification), with an
  exact two-sided (Clopper-Pearson) 95% interval for the proportion.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "PAPER_FIGURES",
    "format_identification",
    "identification",
    "identify",
    "shuffled_control",
    "similarity_matrix",
]

# Seeliger et al. (2018), section 3.2 and Figure 9: human raters on Mechanical Turk, 5 comparisons
# per test image. Percentages as printed (vim-1's and Generic Object Decoding's 75.5% by image is not
# a whole number of their 50 images; the paper does not say why).
PAPER_FIGURES: dict[str, dict[str, float | int]] = {
    "BRAINS": {"overall": 75.0, "by_image": 74.3, "images": 70, "comparisons": 350},
    "vim-1": {"overall": 67.6, "by_image": 75.5, "images": 50, "comparisons": 250},
    "Generic Object Decoding": {"overall": 64.4, "by_image": 75.5, "images": 50, "comparisons": 250},
}

_BOOTSTRAP = 10_000


def _as_images(x: Any, name: str, dtype: type = np.float64) -> np.ndarray:
    """``x`` as an ``(n, S, S)`` array of ``dtype``, n >= 1 (accepts ``(n, 1, S, S)`` and torch tensors)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=dtype)
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3 or x.shape[0] == 0:
        raise ValueError(f"{name} must be images of shape (n, S, S) with n >= 1, got {x.shape}")
    return x


def _correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of every row of ``a`` ``(n, P)`` with every row of ``b`` ``(m, P)``.

    A constant row has no defined correlation; it gets 0 with everything (no linear relation to
    measure), so a blank reconstruction is never preferred and never penalised by NaNs.
    """
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    na = np.linalg.norm(a, axis=1, keepdims=True)
    nb = np.linalg.norm(b, axis=1, keepdims=True)
    a = np.divide(a, na, out=np.zeros_like(a), where=na > 1e-12)
    b = np.divide(b, nb, out=np.zeros_like(b), where=nb > 1e-12)
    return np.clip(a @ b.T, -1.0, 1.0)


def _feature_vectors(
    images: np.ndarray, features: Callable[[torch.Tensor], torch.Tensor], batch_size: int
) -> np.ndarray:
    """``features`` applied to ``(n, 1, S, S)`` float32 CPU batches, flattened to ``(n, F)``."""
    out = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            batch = torch.from_numpy(images[start : start + batch_size, None].astype(np.float32))
            f = features(batch)
            if not isinstance(f, torch.Tensor) or f.shape[0] != batch.shape[0]:
                got = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
                raise ValueError(
                    f"features must map (N, 1, S, S) tensors to (N, F); got {got} for N={batch.shape[0]}"
                )
            out.append(f.detach().to("cpu", torch.float64).reshape(f.shape[0], -1).numpy())
    return np.concatenate(out)


def similarity_matrix(
    stimuli: np.ndarray,
    reconstructions: np.ndarray,
    kind: str = "pixel",
    features: Callable[[torch.Tensor], torch.Tensor] | None = None,
    *,
    mask: np.ndarray | None = None,
    batch_size: int = 256,
) -> np.ndarray:
    """Pearson correlation between each stimulus and each reconstruction.

    Args:
        stimuli: ``(n, S, S)`` test stimuli in [-1, 1] (``(n, 1, S, S)`` and tensors accepted).
        reconstructions: ``(n, S, S)``, reconstruction ``j`` of stimulus ``j``.
        kind: ``"pixel"``: correlation over pixels (only those inside ``mask`` when given, e.g. the
            circular aperture of vim-1-like stimuli); ``"feature"``: correlation over the vectors
            ``features`` returns (the lead passes a feature network's conv1 + conv2 maps).
        features: for ``kind="feature"``, a callable mapping float32 CPU tensors ``(N, 1, S, S)`` to
            ``(N, F)`` (trailing dimensions are flattened); called under ``torch.no_grad()``.
        mask: ``(S, S)`` bool, pixels to compare (``kind="pixel"`` only).
        batch_size: images per ``features`` call.

    Returns:
        ``S`` ``(n, n)`` float64 with ``S[i, j] = corr(stimulus i, reconstruction j)``; a constant
        image correlates 0 with everything (brainkern's choice: Pearson's r is undefined there).

    Raises:
        ValueError: shapes that differ, an unknown ``kind``, ``kind="feature"`` without
            ``features``, or a mask of the wrong shape or with no pixel set.
    """
    x = _as_images(stimuli, "stimuli")
    r = _as_images(reconstructions, "reconstructions")
    if x.shape != r.shape:
        raise ValueError(f"stimuli {x.shape} and reconstructions {r.shape} must have the same shape")
    if kind == "pixel":
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != x.shape[1:] or not mask.any():
                raise ValueError(
                    f"mask must be a bool {x.shape[1:]} array with some pixel set, got {mask.shape}"
                )
            return _correlations(x[:, mask], r[:, mask])
        return _correlations(x.reshape(len(x), -1), r.reshape(len(r), -1))
    if kind == "feature":
        if features is None:
            raise ValueError('kind="feature" needs a features callable mapping (N, 1, S, S) to (N, F)')
        if mask is not None:
            raise ValueError('mask applies to kind="pixel" only; apply it in the features callable instead')
        return _correlations(
            _feature_vectors(x, features, batch_size), _feature_vectors(r, features, batch_size)
        )
    raise ValueError(f'kind must be "pixel" or "feature", got {kind!r}')


def _binomial(score: np.ndarray) -> dict[str, Any]:
    """One-sided exact binomial test against 0.5 of outcomes in {0, 0.5, 1}; the halves (ties) are
    left out. Returns k, the trials tested, ties, the proportion, its two-sided Clopper-Pearson 95% CI
    and the one-sided p."""
    from scipy.stats import binomtest  # noqa: PLC0415

    score = np.asarray(score, dtype=np.float64)
    wins = int(np.sum(score > 0.5))
    ties = int(np.sum(score == 0.5))
    trials = score.size - ties
    if trials == 0:
        return {"k": 0, "n": 0, "ties": ties, "proportion": None, "ci": [None, None], "p_value": None}
    test = binomtest(wins, trials, 0.5, alternative="greater")
    # The interval is two-sided (the one-sided test's own interval would end at 1).
    ci = binomtest(wins, trials, 0.5).proportion_ci(0.95, method="exact")
    return {
        "k": wins,
        "n": trials,
        "ties": ties,
        "proportion": wins / trials,
        "ci": [float(ci.low), float(ci.high)],
        "p_value": float(test.pvalue),
    }


def _outcome(own: np.ndarray, other: np.ndarray) -> np.ndarray:
    """1 where the own reconstruction is more similar, 0.5 on a tie, 0 otherwise."""
    return (own > other) + 0.5 * (own == other)


def _number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


def identification(S: np.ndarray, *, comparisons: int = 5, seed: int = 0) -> dict[str, Any]:
    """Pairwise identification accuracy from a similarity matrix.

    Args:
        S: ``(n, n)`` similarity of stimulus ``i`` (row) to reconstruction ``j`` (column), e.g.
            :func:`similarity_matrix`; higher is more similar. ``n >= 2``.
        comparisons: distractors per image in the paper's protocol (Seeliger et al. used 5; an odd
            number avoids tied votes, which otherwise count half).
        seed: seeds the distractor draw (``numpy.random.default_rng``) and the bootstrap.

    Returns:
        A JSON-serialisable dict:

        - ``"all_pairs"``: every ``(i, j != i)`` scored. ``accuracy`` (the fraction of all
          ``n(n-1)`` pairs won, equal to the mean per-image accuracy), ``ci``: a 95% percentile
          bootstrap interval over test images (10 000 resamples of the images, seeded; images are
          the independent units), and ``above_half``: a binomial test of the number of images
          whose accuracy exceeds 0.5 (images at exactly 0.5 left out).
        - ``"paper"``: ``comparisons`` distinct random distractors per image, drawn without
          replacement. ``overall``: the fraction of the ``n * comparisons`` comparisons won and
          its binomial test (these comparisons are not independent: each image is the target of
          ``comparisons`` of them and a distractor in about as many more, so the test is
          optimistic, as in the paper); ``by_image``: the fraction of images whose majority vote
          is correct (a tied vote counts half) and its binomial test over images (independent).
        - ``"images"``: per image ``index``, ``all_pairs`` accuracy, ``correct`` (comparisons won
          in the paper protocol), ``vote`` (1, 0.5 or 0) and its ``distractors``.
        - ``"n"``, ``"comparisons"``, ``"seed"`` and ``"notes"`` (the conventions, in words).

    Raises:
        ValueError: ``S`` not square, ``n < 2``, non-finite entries, or ``comparisons`` outside
            ``1 .. n-1``.
    """
    S = np.asarray(S, dtype=np.float64)
    if S.ndim != 2 or S.shape[0] != S.shape[1] or S.shape[0] < 2:
        raise ValueError(f"S must be a square (n, n) similarity matrix with n >= 2, got shape {S.shape}")
    if not np.isfinite(S).all():
        raise ValueError("S holds NaN or infinite similarities; check the images for NaNs")
    n = S.shape[0]
    if isinstance(comparisons, bool) or int(comparisons) != comparisons or not 1 <= comparisons <= n - 1:
        raise ValueError(
            f"comparisons must be an integer in 1..{n - 1} for {n} test images, got {comparisons!r}"
        )
    comparisons = int(comparisons)
    rng = np.random.default_rng(seed)
    own = np.diag(S)

    # All pairs: row i compares S[i, i] with every S[i, j], j != i.
    outcome = _outcome(own[:, None], S)
    np.fill_diagonal(outcome, 0.0)
    per_image = outcome.sum(axis=1) / (n - 1)
    boot = per_image[rng.integers(0, n, size=(_BOOTSTRAP, n))].mean(axis=1)
    lo, hi = np.quantile(boot, [0.025, 0.975])
    above = _outcome(per_image, np.full(n, 0.5))

    # The paper's protocol: `comparisons` distinct distractors j != i per image.
    distractors = np.empty((n, comparisons), dtype=np.int64)
    for i in range(n):
        pick = rng.choice(n - 1, size=comparisons, replace=False)
        distractors[i] = pick + (pick >= i)  # skip i itself
    won = _outcome(own[:, None], np.take_along_axis(S, distractors, axis=1))
    correct = won.sum(axis=1)
    vote = _outcome(correct, np.full(n, comparisons / 2))

    return {
        "n": n,
        "comparisons": comparisons,
        "seed": int(seed),
        "all_pairs": {
            "accuracy": float(per_image.mean()),
            "ci": [float(lo), float(hi)],
            "ci_method": f"percentile bootstrap over test images, {_BOOTSTRAP} resamples",
            "above_half": _binomial(above),
        },
        "paper": {
            "overall": float(won.mean()),
            "overall_test": _binomial(won.ravel()),
            "by_image": float(vote.mean()),
            "by_image_test": _binomial(vote),
        },
        "images": [
            {
                "index": i,
                "all_pairs": float(per_image[i]),
                "correct": _number(correct[i]),
                "vote": _number(vote[i]),
                "distractors": distractors[i].tolist(),
            }
            for i in range(n)
        ],
        "notes": (
            "a comparison is correct when the stimulus correlates more with its own reconstruction than "
            "with the distractor's; ties count half in accuracies and are left out of the binomial tests "
            "(one-sided, greater than 0.5; exact 95% CI). The paper-protocol overall test treats its "
            "comparisons as independent, which they are not (each image appears in several)."
        ),
    }


def identify(
    stimuli: np.ndarray,
    reconstructions: np.ndarray,
    *,
    features: Callable[[torch.Tensor], torch.Tensor] | None = None,
    mask: np.ndarray | None = None,
    comparisons: int = 5,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """:func:`identification` under pixel correlation and, when ``features`` is given, feature
    correlation.

    Args:
        stimuli: ``(n, S, S)`` test stimuli in [-1, 1].
        reconstructions: ``(n, S, S)`` their reconstructions, in the same order.
        features: ``(N, 1, S, S) -> (N, F)`` callable for the feature similarity (omitted if None).
        mask: ``(S, S)`` bool aperture for the pixel similarity (the features see whole images).
        comparisons, seed: as in :func:`identification` (the same seed for both kinds, so both
            judge the same distractors).

    Returns:
        ``{"pixel": identification(...), "feature": identification(...)}`` (no ``"feature"``
        without ``features``).
    """
    out = {
        "pixel": identification(
            similarity_matrix(stimuli, reconstructions, "pixel", mask=mask),
            comparisons=comparisons,
            seed=seed,
        )
    }
    if features is not None:
        out["feature"] = identification(
            similarity_matrix(stimuli, reconstructions, "feature", features),
            comparisons=comparisons,
            seed=seed,
        )
    return out


def shuffled_control(reconstructions: np.ndarray, seed: int = 0) -> np.ndarray:
    """The reconstructions reordered so that none stays with its own stimulus: a chance-level control.

    A seeded uniformly random derangement (rejection sampling of permutations). Identification
    of such unrelated reconstructions should come out near 50%: slightly below for small ``n``,
    since each stimulus's own reconstruction sits among the distractors of one other image.

    Args:
        reconstructions: ``(n, ...)`` with ``n >= 2``.
        seed: ``numpy.random.default_rng`` seed.

    Returns:
        A reordered copy, ``(n, ...)``.
    """
    r = np.asarray(reconstructions)
    n = r.shape[0] if r.ndim else 0
    if n < 2:
        raise ValueError(f"shuffled_control needs at least 2 reconstructions, got {n}")
    rng = np.random.default_rng(seed)
    while True:  # about e tries on average
        order = rng.permutation(n)
        if not np.any(order == np.arange(n)):
            return r[order].copy()


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _p(test: Mapping[str, Any]) -> str:
    p = test.get("p_value")
    if p is None:
        return "-"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def format_identification(
    results: Mapping[str, Mapping[str, Any]], paper: str | Sequence[str] | None = None
) -> str:
    """A plain-text table of identification results, one row per method and similarity kind.

    Args:
        results: method name (e.g. ``"GAN latent (ensemble of 15)"``, ``"ridge to pixels"``,
            ``"shuffled (chance)"``) -> :func:`identify` output (``{"pixel": ..., "feature": ...}``)
            or a single :func:`identification` dict (shown as kind ``"pixel"``).
        paper: which of Seeliger et al.'s data sets to quote for reference (keys of
            :data:`PAPER_FIGURES`); None quotes all three, ``[]`` none.

    Returns:
        The table: all-pairs accuracy [95% bootstrap CI] and the p-value of images above half;
        paper-protocol overall % and by-image % with their one-sided binomial p-values; then the
        paper's human figures, with the reminder that those are human judgements and these a
        machine similarity.
    """
    if not results:
        raise ValueError("format_identification needs at least one method's results")
    names = list(PAPER_FIGURES) if paper is None else [paper] if isinstance(paper, str) else list(paper)
    unknown = [p for p in names if p not in PAPER_FIGURES]
    if unknown:
        raise ValueError(f"unknown paper data set(s) {unknown}; choose from {list(PAPER_FIGURES)}")
    rows = []
    first = None
    for method, res in results.items():
        kinds = {"pixel": res} if "all_pairs" in res else dict(res)
        for kind, r in kinds.items():
            ap, pp = r["all_pairs"], r["paper"]
            first = first or r
            rows.append(
                (
                    str(method),
                    kind,
                    f"{_pct(ap['accuracy'])} [{_pct(ap['ci'][0])}, {_pct(ap['ci'][1])}]",
                    _p(ap["above_half"]),
                    _pct(pp["overall"]),
                    _p(pp["overall_test"]),
                    _pct(pp["by_image"]),
                    _p(pp["by_image_test"]),
                )
            )
    head = ("method", "similarity", "all pairs % [95% CI]", "p (images)", "overall %", "p", "by image %", "p")
    widths = [max(len(row[c]) for row in [head, *rows]) for c in range(len(head))]
    line = "  ".join("-" * w for w in widths)
    fmt = "  ".join(f"{{:{'<' if c < 2 else '>'}{w}}}" for c, w in enumerate(widths))
    out = [fmt.format(*head), line, *(fmt.format(*row) for row in rows), line]
    n, k = first["n"], first["comparisons"]
    out.append(
        f"n = {n} test images; all pairs: {n * (n - 1)} comparisons, CI by bootstrap over images, p: images "
        f"above 50%; paper protocol: {k} random distractors per image ({n * k} comparisons), majority vote "
        "by image. p: one-sided exact binomial tests against 50%, ties left out."
    )
    for name in names:
        f = PAPER_FIGURES[name]
        out.append(
            f"Seeliger et al. (2018), {name}: {f['overall']:.1f}% overall ({f['comparisons']} comparisons), "
            f"{f['by_image']:.1f}% by image ({f['images']} images)."
        )
    if names:
        out.append(
            "The paper's figures are human raters' choices (Mechanical Turk); ours are a machine similarity "
            "(Pearson correlation), so they compare only loosely."
        )
    return "\n".join(out)
