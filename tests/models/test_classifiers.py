"""The registered classifiers ``svm`` and ``dnn3d`` (Zhuang et al. 2019) on a tiny simulated fMRI cohort.

Both must tell held-out task maps apart well above chance, pick their settings or
their epoch on a validation split only, keep the SVM's brain mask to the training
rows, reproduce themselves from a seed, and save and load into equal classifiers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

# A bare GPU image (benchmarks/gpu.sh's test stages) may lack these: skip, not fail to collect.
pytest.importorskip("sklearn")
pytest.importorskip("nibabel")
pytest.importorskip("nilearn")

from brainkern.data import foreground_mask  # noqa: E402
from brainkern.models import Classifier, build_model  # noqa: E402
from brainkern.models.classifiers import DNN3D, BrainMasker  # noqa: E402

SHAPE = (12, 14, 10)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Two classes of 30 maps in [0, 1]: per class 14 train, 4 validation, 12 test."""
    from brainkern.data import VolumeDataset, cohorts

    table = cohorts.fmri(
        tmp_path_factory.mktemp("fmri"), n_per_class=30, n_classes=2, shape=SHAPE, seed=3, noise=0.5
    )
    ds = VolumeDataset.from_table(table, scale="[0,1]", trim=False, mask=None)
    x = torch.from_numpy(np.asarray(ds.volumes, dtype=np.float32)).unsqueeze(1)
    y = torch.as_tensor(ds.labels)
    parts = {"train": [], "val": [], "test": []}
    for k in range(2):
        idx = torch.nonzero(y == k).flatten().tolist()
        parts["train"] += idx[:14]
        parts["val"] += idx[14:18]
        parts["test"] += idx[18:]
    return {name: (x[idx], y[idx]) for name, idx in parts.items()}


def _accuracy(clf: Classifier, part) -> float:
    x, y = part
    return float(np.mean(clf.predict(x) == np.asarray(y)))


def _round_trip(clf: Classifier, x, path) -> Classifier:
    back = Classifier.load(clf.save(path))
    assert type(back) is type(clf) and back.name == clf.name and back.config == clf.config
    np.testing.assert_array_equal(back.predict(x), clf.predict(x))
    np.testing.assert_allclose(back.predict_proba(x), clf.predict_proba(x), rtol=0, atol=1e-12)
    return back


# ---------------------------------------------------------------------------------- svm


def test_svm_classifies_held_out_maps(cohort, tmp_path):
    clf = build_model("svm", c=0.1).fit(*cohort["train"])
    assert _accuracy(clf, cohort["test"]) >= 0.9  # chance: 0.5
    p = clf.predict_proba(cohort["test"][0])
    assert p.shape == (24, 2) and np.allclose(p.sum(1), 1)
    masker = clf.estimator[0]
    assert isinstance(masker, BrainMasker) and 0 < masker.mask_.sum() < np.prod(SHAPE)
    _round_trip(clf, cohort["test"][0], tmp_path / "svm.pt")


def test_svm_mask_comes_from_the_training_rows_only():
    """A corner that is background in every training map but signal in the held-out ones stays out."""
    rng = np.random.default_rng(0)
    train = np.full((6, 1, 4, 4, 4), 0.3, dtype=np.float32)
    train[:, :, 1:3, 1:3, 1:3] = rng.uniform(0.5, 1.0, (6, 1, 2, 2, 2))
    train[:3, :, 1, 1, 1] += 0.5  # something to learn: class 1 is brighter there
    held = rng.uniform(0.0, 1.0, (4, 1, 4, 4, 4)).astype(np.float32)
    clf = build_model("svm").fit(train, [1, 1, 1, 0, 0, 0])
    masker = clf.estimator[0]
    expected = foreground_mask(train.reshape(6, -1))
    np.testing.assert_array_equal(masker.mask_, expected)
    assert masker.mask_.sum() == 8
    assert not np.array_equal(expected, foreground_mask(held.reshape(4, -1)))
    rows = held.reshape(4, -1)
    np.testing.assert_array_equal(masker.transform(rows), rows[:, expected])
    assert clf.predict(held).shape == (4,)
    with pytest.raises(ValueError, match="fitted on rows of 64 voxels, got 27"):
        masker.transform(np.zeros((2, 27), dtype=np.float32))


def test_svm_chooses_c_on_validation(cohort, tmp_path):
    train = cohort["train"]
    alone = {c: build_model("svm", c=c).fit(*train) for c in (1e-4, 1.0)}
    # A validation set that only C = 1 gets fully right: noise maps labelled by C = 1's own answers.
    x_val = torch.rand(40, 1, *SHAPE, generator=torch.Generator().manual_seed(0))
    y_val = alone[1.0].predict(x_val)
    assert (alone[1e-4].predict(x_val) != y_val).any()
    clf = build_model("svm", c=[1e-4, 1.0]).fit(*train, validation=(x_val, y_val))
    assert [row["params"] for row in clf.selection_] == [{"linearsvc__C": 1e-4}, {"linearsvc__C": 1.0}]
    assert [row["val_accuracy"] for row in clf.selection_] == [_accuracy(alone[1e-4], (x_val, y_val)), 1.0]
    assert clf.best_params_ == {"linearsvc__C": 1.0}
    # the kept SVM is the one fitted on the training maps alone
    np.testing.assert_array_equal(clf.predict_proba(x_val), alone[1.0].predict_proba(x_val))
    back = _round_trip(clf, x_val, tmp_path / "svm.pt")
    assert back.selection_ == clf.selection_ and back.best_params_ == clf.best_params_
    # a tie goes to the first value listed
    tied = build_model("svm", c=[1.0, 1e-4]).fit(*train, validation=cohort["val"])
    assert [row["val_accuracy"] for row in tied.selection_] == [1.0, 1.0]
    assert tied.best_params_ == {"linearsvc__C": 1.0}


def test_svm_needs_validation_to_choose_and_checks_its_arguments(cohort):
    with pytest.raises(ValueError, match="2 candidate settings .* give validation"):
        build_model("svm", c=[0.1, 1.0]).fit(*cohort["train"])
    with pytest.raises(ValueError, match="c must be a positive number"):
        build_model("svm", c=0)
    with pytest.raises(ValueError, match="mask_fraction must be in"):
        build_model("svm", mask_fraction=0)
    x, y = cohort["val"]
    with pytest.raises(ValueError, match=r"validation labels \[5\] do not occur"):
        build_model("svm").fit(*cohort["train"], validation=(x[:1], [5]))


# ---------------------------------------------------------------------------------- dnn3d

# Small settings that learn these 28 training maps in a fraction of a second.
FAST = {"epochs": 15, "batch_size": 4, "lr": 3e-3}


def test_dnn3d_classifies_held_out_maps(cohort, tmp_path):
    clf = build_model("dnn3d", **FAST).fit(*cohort["train"], validation=cohort["val"])
    assert _accuracy(clf, cohort["test"]) >= 0.75  # chance 0.5; P(>= 18 of 24 by chance) = 1 %
    assert len(clf.history) == 15 and 1 <= clf.best_epoch <= 15
    assert set(clf.history[0]) == {"epoch", "loss", "val_accuracy", "val_loss"}
    assert clf.history[-1]["loss"] < clf.history[0]["loss"]
    back = _round_trip(clf, cohort["test"][0], tmp_path / "dnn.pt")
    assert back.history == clf.history and back.best_epoch == clf.best_epoch


def test_dnn3d_restores_the_best_validation_epoch(cohort):
    """On a validation set with swapped labels the epochs get worse as training learns: the
    classifier must come back with the weights of its best epoch, which are exactly those of a
    run stopped there (validation never touches the training trajectory)."""
    x_val, y_val = cohort["val"]
    swapped = (x_val, 1 - y_val)
    clf = build_model("dnn3d", **FAST).fit(*cohort["train"], validation=swapped)
    rows = clf.history
    ranked = max(rows, key=lambda r: (r["val_accuracy"], -r["val_loss"], -r["epoch"]))
    assert clf.best_epoch == ranked["epoch"] < 15
    assert rows[-1]["val_accuracy"] < ranked["val_accuracy"]
    p = clf.predict_proba(x_val)
    acc = float(np.mean(p.argmax(1) == swapped[1].numpy()))
    loss = float(-np.mean(np.log(p[np.arange(len(p)), swapped[1].numpy()])))
    assert acc == ranked["val_accuracy"] and loss == pytest.approx(ranked["val_loss"], rel=1e-5)
    stopped = build_model("dnn3d", **{**FAST, "epochs": clf.best_epoch}).fit(*cohort["train"])
    np.testing.assert_array_equal(stopped.predict_proba(x_val), p)
    assert stopped.best_epoch == clf.best_epoch and "val_accuracy" not in stopped.history[0]

    # patience: stop that many epochs after the best one
    early = build_model("dnn3d", **FAST, patience=2).fit(*cohort["train"], validation=swapped)
    assert len(early.history) == early.best_epoch + 2 < 15
    assert early.history == rows[: len(early.history)]


def test_dnn3d_is_reproducible_and_leaves_the_global_generator_alone(cohort):
    x, y = cohort["train"]
    state = torch.get_rng_state()
    a = build_model("dnn3d", epochs=3, batch_size=4, seed=7).fit(x, y)
    assert torch.equal(torch.get_rng_state(), state)
    b = build_model("dnn3d", epochs=3, batch_size=4, seed=7).fit(x, y)
    other = build_model("dnn3d", epochs=3, batch_size=4, seed=8).fit(x, y)
    x_test = cohort["test"][0]
    np.testing.assert_array_equal(a.predict_proba(x_test), b.predict_proba(x_test))
    assert not np.allclose(a.predict_proba(x_test), other.predict_proba(x_test))
    first = a.predict_proba(x_test)  # a second fit starts again from the initial weights
    np.testing.assert_array_equal(a.fit(x, y).predict_proba(x_test), first)


def test_dnn3d_errors(cohort):
    x, y = cohort["train"]
    with pytest.raises(ValueError, match="patience needs validation"):
        build_model("dnn3d", epochs=2, patience=1).fit(x, y)
    with pytest.raises(ValueError, match="the network gives 3 logits but the training labels have 2"):
        build_model("dnn3d", num_classes=3, epochs=1).fit(x, y)
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        build_model("dnn3d", num_classes=1)
    with pytest.raises(ValueError, match="dropout must be in"):
        build_model("dnn3d", dropout=1.0)
    with pytest.raises(TypeError, match="pair"):
        build_model("dnn3d", epochs=1).fit(x, y, validation=x)


def test_dnn3d_network_takes_any_grid():
    net = DNN3D(num_classes=3, width=2).eval()
    assert net(torch.zeros(2, 1, 5, 7, 9)).shape == (2, 3)
    assert net(torch.zeros(1, 1, 27, 32, 23)).shape == (1, 3)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d)]
    assert [c.out_channels for c in convs] == [2, 4, 8, 16] and all(c.stride == (2, 2, 2) for c in convs)
    with pytest.raises(ValueError, match=r"expects volumes \(N, 1, D, H, W\)"):
        net(torch.zeros(2, 5, 7, 9))
