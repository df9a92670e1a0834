"""The registered classifiers ``svm``, ``dnn3d`` (Zhuang et al. 2019) and ``vgg3d`` (King et al. 2024)
on a tiny simulated fMRI cohort, and the torch classifier's training options (AdamW, selection by
validation loss, augmented batches, training from a stream).

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


# ------------------------------------------------------------------------ vgg3d and training options


def test_vgg3d_has_the_papers_layers_and_parameter_count():
    """King et al. (2024) Fig. S1: 7,361,057 parameters at 64^3 with one sigmoid unit."""
    from brainkern.models.classifiers import VGG3D, vgg3d_features

    paper = VGG3D(shape=(64, 64, 64), sigmoid_unit=True)
    assert sum(p.numel() for p in paper.parameters()) == 7_361_057
    # brainkern's default: one logit per class, the last layer 128 + 1 weights wider
    assert sum(p.numel() for p in VGG3D(shape=(64, 64, 64)).parameters()) == 7_361_057 + 129
    convs = [m for m in paper.modules() if isinstance(m, torch.nn.Conv3d)]
    assert [c.out_channels for c in convs] == [16, 64, 128] and all(c.padding == (0, 0, 0) for c in convs)
    kinds = [type(m).__name__ for m in paper.features]
    assert kinds == ["Conv3d", "ReLU", "BatchNorm3d", "MaxPool3d"] * 3
    linears = [m for m in paper.head if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(27648, 256), (256, 128), (128, 1)]
    assert vgg3d_features((64, 64, 64)) == (6, 6, 6) and vgg3d_features((22, 30, 24)) == (1, 2, 1)
    # a small grid and a width multiplier
    small = VGG3D(num_classes=3, shape=(24, 26, 22), width=0.125).eval()
    assert small(torch.zeros(2, 1, 24, 26, 22)).shape == (2, 3)
    assert [m.out_channels for m in small.modules() if isinstance(m, torch.nn.Conv3d)] == [2, 8, 16]


def test_vgg3d_sigmoid_unit_is_the_binary_cross_entropy():
    from brainkern.models.classifiers import VGG3D

    torch.manual_seed(0)
    net = VGG3D(shape=(22, 22, 22), width=0.125, sigmoid_unit=True).eval()
    x = torch.randn(4, 1, 22, 22, 22)
    logits = net(x)
    z = net.head(net.features(x))[:, 0]
    assert torch.equal(logits[:, 0], torch.zeros(4)) and torch.equal(logits[:, 1], z)
    y = torch.tensor([0, 1, 1, 0])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(z, y.float())
    assert torch.nn.functional.cross_entropy(logits, y).item() == pytest.approx(bce.item(), rel=1e-6)


def test_vgg3d_errors():
    with pytest.raises(ValueError, match="every grid size >= 22"):
        build_model("vgg3d", shape=(21, 40, 40))
    with pytest.raises(ValueError, match="sigmoid_unit is the 2-class case"):
        build_model("vgg3d", num_classes=3, shape=(22, 22, 22), sigmoid_unit=True)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        build_model("vgg3d", shape=(22, 22, 22), optimizer="sgd")
    with pytest.raises(ValueError, match="select must be one of"):
        build_model("vgg3d", shape=(22, 22, 22), select="f1")
    net = build_model("vgg3d", shape=(22, 22, 22), width=0.125).module
    with pytest.raises(ValueError, match=r"expects volumes \(N, 1, 22, 22, 22\)"):
        net(torch.zeros(1, 1, 24, 22, 22))


def test_defaults_keep_dnn3d_and_vgg3d_takes_the_papers_optimiser():
    clf = build_model("dnn3d")
    assert (clf.optimizer, clf.select) == ("adam", "accuracy")
    paper = build_model("vgg3d", shape=(22, 22, 22))
    assert (paper.optimizer, paper.select, paper.lr, paper.weight_decay, paper.batch_size) == (
        "adamw",
        "loss",
        5e-6,
        0.01,
        12,
    )


def test_adamw_steps_are_torchs_adamw(cohort):
    """One epoch of one batch by the classifier equals one hand-made AdamW step (decoupled decay)."""
    from brainkern.models.classifier import TorchClassifier

    x, y = cohort["train"]
    x, y = x[[0, 1, 2, 14, 15, 16]], y[[0, 1, 2, 14, 15, 16]]
    torch.manual_seed(1)
    net = DNN3D(2, width=2, dropout=0.0)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    clf = TorchClassifier(net, epochs=1, batch_size=6, lr=0.01, weight_decay=0.5, optimizer="adamw")
    clf.fit(x, y)
    by_hand = DNN3D(2, width=2, dropout=0.0)
    by_hand.load_state_dict(start)
    opt = torch.optim.AdamW(by_hand.parameters(), lr=0.01, weight_decay=0.5)
    order = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    torch.nn.functional.cross_entropy(by_hand(x[order]), y[order]).backward()
    opt.step()
    for key, value in by_hand.state_dict().items():
        torch.testing.assert_close(net.state_dict()[key], value, rtol=1e-5, atol=1e-6)
    adam = TorchClassifier(DNN3D(2, width=2, dropout=0.0), epochs=1, batch_size=6, lr=0.01, weight_decay=0.5)
    adam.module.load_state_dict(start)
    adam._initial = {k: v.clone() for k, v in start.items()}
    adam.fit(x, y)
    assert not torch.allclose(adam.module.head.weight, net.head.weight)


def test_loss_selection_keeps_the_lowest_validation_loss(cohort):
    """With swapped validation labels, the epoch of least validation loss is kept (not the most
    accurate one where they differ), and its weights are those of a run stopped there."""
    from brainkern.models.classifier import TorchClassifier

    def make(**kw):
        torch.manual_seed(2)
        return TorchClassifier(DNN3D(2, width=4), **{**FAST, **kw})

    x_val, y_val = cohort["val"]
    swapped = (x_val, 1 - y_val)
    clf = make(select="loss").fit(*cohort["train"], validation=swapped)
    rows = clf.history
    lowest = min(rows, key=lambda r: (r["val_loss"], -r["val_accuracy"], r["epoch"]))
    assert clf.best_epoch == lowest["epoch"]
    p = clf.predict_proba(x_val)
    loss = float(-np.mean(np.log(p[np.arange(len(p)), swapped[1].numpy()])))
    assert loss == pytest.approx(lowest["val_loss"], rel=1e-5)
    stopped = make(epochs=clf.best_epoch).fit(*cohort["train"])
    np.testing.assert_array_equal(stopped.predict_proba(x_val), p)
    by_accuracy = make().fit(*cohort["train"], validation=swapped)
    assert by_accuracy.history == rows  # the same trajectory, another choice
    ranked = max(rows, key=lambda r: (r["val_accuracy"], -r["val_loss"], -r["epoch"]))
    assert by_accuracy.best_epoch == ranked["epoch"]


def test_transform_augments_training_batches_only(cohort):
    from brainkern.models.classifier import TorchClassifier

    seen = []

    def transform(xb, gen):
        seen.append(xb.shape[0])
        return xb + 0.01 * torch.randn(xb.shape, generator=gen)

    def make():
        torch.manual_seed(3)
        return TorchClassifier(DNN3D(2, width=2), epochs=2, batch_size=8)

    a = make().fit(*cohort["train"], validation=cohort["val"], transform=transform)
    assert seen == [8, 8, 8, 4] * 2  # 28 training maps a pass; validation never transformed
    b = make().fit(*cohort["train"], validation=cohort["val"], transform=transform)
    plain = make().fit(*cohort["train"], validation=cohort["val"])
    x_test = cohort["test"][0]
    np.testing.assert_array_equal(a.predict_proba(x_test), b.predict_proba(x_test))
    assert a.history != plain.history


def _stream(x, y, seed, calls):
    """A stream of fresh batches of 6: training maps plus noise, drawn with a seeded generator."""
    gen = torch.Generator().manual_seed(seed)

    def draw():
        calls.append(1)
        idx = torch.randint(0, x.shape[0], (6,), generator=gen)
        return x[idx] + 0.05 * torch.randn(6, *x.shape[1:], generator=gen), y[idx]

    return draw


def test_stream_training_is_deterministic_and_keeps_the_best_evaluation(cohort):
    from brainkern.models.classifier import TorchClassifier

    x, y = cohort["train"]

    def fit(seed, stream_seed, calls, **kw):
        torch.manual_seed(4)
        clf = TorchClassifier(DNN3D(2, width=4), lr=3e-3, seed=seed, select="loss", **kw)
        return clf.fit_stream(
            _stream(x, y, stream_seed, calls), 43, classes=[0, 1], validation=cohort["val"], eval_every=10
        )

    calls = []
    a = fit(0, 0, calls)
    assert len(calls) == 43
    assert [r["iteration"] for r in a.history] == [10, 20, 30, 40, 43]
    assert set(a.history[0]) == {"iteration", "loss", "val_accuracy", "val_loss"}
    assert a.best_epoch == min(a.history, key=lambda r: (r["val_loss"], r["iteration"]))["iteration"]
    x_val = cohort["val"][0]
    p = a.predict_proba(x_val)
    y_val = cohort["val"][1].numpy()
    assert float(-np.mean(np.log(p[np.arange(len(p)), y_val]))) == pytest.approx(
        min(r["val_loss"] for r in a.history), rel=1e-5
    )
    b = fit(0, 0, [])
    np.testing.assert_array_equal(a.predict_proba(x_val), b.predict_proba(x_val))
    assert a.history == b.history
    assert not np.allclose(fit(0, 1, []).predict_proba(x_val), p)  # another stream
    assert not np.allclose(fit(1, 0, []).predict_proba(x_val), p)  # another dropout seed
    assert _accuracy(a, cohort["test"]) >= 0.75
    early = fit(0, 0, [], patience=1)
    assert len(early.history) <= len(a.history)


def test_stream_errors(cohort):
    from brainkern.models.classifier import TorchClassifier

    x, y = cohort["train"]
    clf = TorchClassifier(DNN3D(2, width=2), patience=2)
    with pytest.raises(ValueError, match="patience needs validation"):
        clf.fit_stream(_stream(x, y, 0, []), 2, classes=[0, 1])
    clf = TorchClassifier(DNN3D(2, width=2))
    with pytest.raises(ValueError, match="iterations and eval_every must be >= 1"):
        clf.fit_stream(_stream(x, y, 0, []), 0, classes=[0, 1])
    with pytest.raises(ValueError, match=r"outside classes \[0\]"):
        clf.fit_stream(_stream(x, y, 0, []), 2, classes=[0])
    with pytest.raises(ValueError, match="gives 2 logits but the training labels have 3"):
        clf.fit_stream(lambda: (x[:4], torch.tensor([0, 1, 2, 0])), 2, classes=[0, 1, 2])
