"""Seeliger et al.'s (2018) reconstruction experiment from end to end.

One call of :func:`run` (``python -m brainkern.reconstruct``):

1. the stimulus domain (:func:`brainkern.data.stimuli.load_domain`) and its division into the
   prior's images and the experiment's training and test stimuli (``split.json``);
2. the image prior: the DCGAN ``seeliger-dcgan`` trained through brainkern's engine on the
   prior's images only (``prior/``, an ordinary run directory), or a trained run given as
   ``prior.run`` (checked to have seen no test stimulus);
3. the feature network, trained to classify the prior's images (``features.pt``);
4. the responses: the user's (``responses.path`` + ``responses.table``), or simulated by the
   Gabor-wavelet voxel model at each ``responses.snr`` (one experiment folder per SNR);
5. PCA on the training stimuli' responses; the ensemble of linear maps to ``z`` trained on
   them; the test stimuli reconstructed; the baselines (ridge to pixels, nearest training
   image) and a chance control beside them;
6. pairwise identification (pixel and feature correlation), pictures, ``report.md``.

Everything fitted (prior, feature network, encoder's signal scale, PCA, regression, ridge)
sees training stimuli or prior images only; the test stimuli' responses are used once, to
reconstruct.
"""

from __future__ import annotations

import copy
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

__all__ = ["DEFAULTS", "PRESETS_DIR", "load_config", "preset_names", "run"]

PRESETS_DIR = Path(__file__).resolve().parents[1] / "configs" / "reconstruct"

DEFAULTS: dict[str, Any] = {
    "preset": None,
    "seed": 0,
    # The stimulus domain (brainkern.data.stimuli): digits, natural or a folder; stimuli:
    # [training, test] stimuli of the experiment (simulated responses only).
    "images": {"domain": "digits", "size": 64, "mask": False, "seed": 0, "n": None, "stimuli": [290, 70]},
    "prior": {
        "run": None,  # a trained prior's run directory; None: train one into <out>/prior
        "preset": "seeliger2018-prior-digits",
        "set": {},  # overrides of the prior's training configuration, e.g. {"train.iters": 600}
        "checkpoint": "last",
    },
    "features": {"epochs": 4, "batch_size": 64, "lr": 1.0e-3},
    "responses": {
        "path": None,  # the user's responses (NIfTI 4D, .npy, .csv); None: simulated
        "table": None,  # their stimulus table (stimulus, part[, repeat])
        "mask": None,  # a NIfTI mask for a 4D series
        "n_voxels": 1000,
        "snr": [1.0],  # simulated: one experiment per single-trial signal-to-noise ratio
        "repeats": [2, 2],  # simulated: trials averaged per training / test stimulus
        "pca": 0.99,  # fraction of variance the PCA keeps (Seeliger et al.: 0.99; vim-1 0.90)
    },
    "reconstruction": {
        "members": 15,
        "epochs": 20,
        "batch_size": 3,
        "lr": 1.0e-3,
        "weight_decay": 0.01,
        "lambda_px": 10.0,
        "lambda_fp": 50.0,
        "lambda_fm": 1.0,
        "threshold": 1.0,
    },
    "evaluation": {"comparisons": 5, "grid": 20},
    "threads": None,
}


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def _dotted(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"iters": 5}}`` -> ``{"train.iters": 5}`` (keys with dots kept as they are)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key not in ("images",):
            out.update(_dotted(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _merge(base: dict[str, Any], over: dict[str, Any], where: str = "") -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        name = f"{where}{key}"
        if key not in base:
            raise ValueError(f"unknown configuration key {name!r} (known: {', '.join(sorted(base))})")
        if key == "set" and isinstance(value, dict):  # prior.set: dotted keys, added to the preset's
            out[key] = {**base[key], **_dotted(value)}
        elif isinstance(base[key], dict) and key != "set":
            if not isinstance(value, dict):
                raise ValueError(f"{name} must be a mapping, got {value!r}")
            out[key] = _merge(base[key], value, f"{name}.")
        else:
            out[key] = value
    return out


def load_config(
    preset: str | None = None, config: str | Path | None = None, sets: list[str] | tuple[str, ...] = ()
) -> dict[str, Any]:
    """The experiment's configuration: :data:`DEFAULTS`, then a preset
    (``brainkern/configs/reconstruct/<name>.yaml``) or a YAML file, then ``key.sub=value``
    overrides (values parsed as YAML).

    Raises:
        ValueError: an unknown preset or key, a malformed override.
        FileNotFoundError: a missing config file.
    """
    cfg = copy.deepcopy(DEFAULTS)
    if preset is not None:
        path = PRESETS_DIR / f"{preset}.yaml"
        if not path.is_file():
            raise ValueError(f"unknown preset {preset!r}; choose one of {preset_names()}")
        cfg = _merge(cfg, yaml.safe_load(path.read_text()) or {})
        cfg["preset"] = preset
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"no config file at {path}")
        cfg = _merge(cfg, yaml.safe_load(path.read_text()) or {})
    for item in sets:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set wants key=value, got {item!r}")
        *parents, last = key.split(".")
        over: dict[str, Any] = {last: yaml.safe_load(text)}
        for p in reversed(parents):
            over = {p: over}
        cfg = _merge(cfg, over)
    return cfg


def _versions() -> dict[str, str]:
    import sklearn

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
    }


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1) + "\n")


def _log(progress: bool, message: str) -> None:
    if progress:
        print(message, flush=True)


# --------------------------------------------------------------------------- the prior


def _train_prior(cfg: dict[str, Any], out: Path, progress: bool) -> Path:
    """Train the DCGAN prior on the prior's images through ``python -m brainkern.train``."""
    from brainkern.train.__main__ import main as train_main

    images = cfg["images"]
    run_dir = out / "prior"
    argv = ["--preset", cfg["prior"]["preset"], "--out", str(run_dir), "--no-evaluate"]
    sets = {
        "data.images": json.dumps({k: v for k, v in images.items() if v is not None}),
        "seed": str(cfg["seed"]),
        **{k: json.dumps(v) for k, v in cfg["prior"]["set"].items()},
    }
    if cfg.get("threads"):
        sets.setdefault("train.threads", str(cfg["threads"]))
    for key, value in sets.items():
        argv += ["--set", f"{key}={value}"]
    if not progress:
        argv.append("--quiet")
    code = train_main(argv)
    if code != 0:
        raise RuntimeError(f"training the image prior failed (exit {code}); see {run_dir}")
    return run_dir


def _check_prior(run_dir: Path, test_names: list[str]) -> None:
    """Refuse a prior whose training images include a test stimulus."""
    split = run_dir / "split.json"
    if not split.is_file():
        raise ValueError(f"prior.run {run_dir}: no split.json, so it cannot be checked for test stimuli")
    record = json.loads(split.read_text())
    trained = set(record.get("subjects", {}).get("train") or record.get("files", {}).get("train") or [])
    leaked = sorted(trained & set(test_names))
    if leaked:
        raise ValueError(
            f"prior.run {run_dir} trained on {len(leaked)} of the test stimuli (e.g. {leaked[0]}); "
            "train the prior without them (data.images.stimuli reserves them)"
        )


# --------------------------------------------------------------------------- the experiment(s)


def _class_accuracy(fnet, images: np.ndarray, classes: np.ndarray) -> dict[str, Any]:
    """The share of ``images (N, S, S)`` the feature network assigns to ``classes (N,)``, with an
    exact (Clopper-Pearson) 95% CI."""
    from scipy.stats import binomtest

    with torch.no_grad():
        pred = fnet.eval()(torch.as_tensor(np.asarray(images, np.float32))[:, None]).argmax(1).numpy()
    k, n = int((pred == classes).sum()), len(classes)
    ci = binomtest(k, n).proportion_ci(0.95, method="exact")
    return {"accuracy": k / n, "k": k, "n": n, "ci": [float(ci.low), float(ci.high)]}


def _experiment(
    name: str,
    folder: Path,
    train_x: np.ndarray,
    test_x: np.ndarray,
    stim_train: np.ndarray,
    stim_test: np.ndarray,
    test_names: list[str],
    generator,
    fnet,
    cfg: dict[str, Any],
    mask: np.ndarray | None,
    progress: bool,
    test_classes: np.ndarray | None = None,
) -> dict[str, Any]:
    """One experiment: PCA, the ensemble, the baselines, identification, pictures; with
    ``test_classes`` (the test stimuli' classes as the feature network numbers them) also the
    share of reconstructions the feature network assigns to their stimulus's class."""
    from brainkern.reconstruct.features import feature_vector
    from brainkern.reconstruct.identify import format_identification, identify, shuffled_control
    from brainkern.reconstruct.loss import ReconstructionLoss
    from brainkern.reconstruct.model import fit_latent_ensemble, nearest_training, reconstruct, ridge_pixels
    from brainkern.reconstruct.pictures import reconstruction_grid
    from brainkern.reconstruct.responses import reduce

    rc, seed = cfg["reconstruction"], int(cfg["seed"])
    pcs_train, pcs_test, pca = reduce(train_x, test_x, float(cfg["responses"]["pca"]))
    scale = float(np.sqrt(pca.explained_variance_[0]))  # inputs of order one for Adam's steps
    pcs_train, pcs_test = pcs_train / scale, pcs_test / scale
    _log(
        progress,
        f"[{name}] PCA: {pca.n_components_} components keep "
        f"{100 * pca.explained_variance_ratio_.sum():.1f}% of the training responses' variance",
    )
    loss = ReconstructionLoss(
        fnet,
        lambda_px=rc["lambda_px"],
        lambda_fp=rc["lambda_fp"],
        lambda_fm=rc["lambda_fm"],
        threshold=rc["threshold"],
    )
    ensemble, history = fit_latent_ensemble(
        pcs_train,
        stim_train,
        generator,
        loss,
        members=int(rc["members"]),
        epochs=int(rc["epochs"]),
        batch_size=int(rc["batch_size"]),
        lr=float(rc["lr"]),
        weight_decay=float(rc["weight_decay"]),
        seed=seed,
        progress=progress,
    )
    _log(
        progress,
        f"[{name}] latent regression: {history['members']} members x {history['epochs']} epochs "
        f"in {history['seconds']:.0f} s; loss {history['loss'][0]:.3f} -> {history['loss'][-1]:.3f}",
    )
    recon = {
        "gan": reconstruct(ensemble, pcs_test, generator),
        "gan_single": reconstruct(ensemble, pcs_test, generator, member=0),
    }
    recon["ridge"], ridge_info = ridge_pixels(train_x, stim_train, test_x)
    recon["nearest"] = nearest_training(train_x, stim_train, test_x)
    recon["shuffled"] = shuffled_control(recon["gan"], seed=seed)
    if mask is not None:
        for r in recon.values():
            r[:, ~mask] = 0.0

    def features(x: torch.Tensor) -> torch.Tensor:
        return feature_vector(fnet, x, pool=2)

    ev = cfg["evaluation"]
    results = {
        m: identify(stim_test, r, features=features, mask=mask, comparisons=int(ev["comparisons"]), seed=seed)
        for m, r in recon.items()
    }
    arrays = folder / "arrays"
    arrays.mkdir(parents=True, exist_ok=True)
    np.save(arrays / "stimuli.npy", stim_test.astype(np.float32))
    for m, r in recon.items():
        np.save(arrays / f"reconstruction_{m}.npy", r.astype(np.float32))
    (arrays / "names.json").write_text(json.dumps(test_names) + "\n")
    if mask is not None:
        np.save(arrays / "mask.npy", mask)
    torch.save(
        {
            "state_dict": ensemble.state_dict(),
            "members": ensemble.members,
            "n_inputs": ensemble.n_inputs,
            "latent_dim": ensemble.latent_dim,
            "pca_components": pca.components_,
            "pca_mean": pca.mean_,
            "scale": scale,
        },
        folder / "regression.pt",
    )
    labels = {
        "gan": f"GAN latent (ensemble of {rc['members']})",
        "gan_single": "GAN latent (one member)",
        "ridge": "ridge to pixels",
        "nearest": "nearest training image",
        "shuffled": "chance control (shuffled)",
    }
    n_show = min(int(ev["grid"]), len(stim_test))
    reconstruction_grid(
        stim_test[:n_show],
        {labels[m]: recon[m][:n_show] for m in ("gan", "gan_single", "ridge", "nearest")},
        folder / "reconstructions.png",
        accuracy={
            labels[m]: np.asarray([im["all_pairs"] for im in results[m]["pixel"]["images"]])[:n_show]
            for m in ("gan", "gan_single", "ridge", "nearest")
        },
        title=f"{name}: test stimuli (top) and their reconstructions",
    )
    table = format_identification({labels[m]: results[m] for m in recon})
    classes = None
    if test_classes is not None:
        classes = {
            m: _class_accuracy(fnet, r, test_classes) for m, r in {"stimuli": stim_test, **recon}.items()
        }
        table += "\n" + "\n".join(
            f"class of the reconstruction (feature network): {labels.get(m, 'the test stimuli themselves')}: "
            f"{100 * c['accuracy']:.1f}% [{100 * c['ci'][0]:.1f}, {100 * c['ci'][1]:.1f}]"
            for m, c in classes.items()
        )
    summary = {
        "name": name,
        "pca_components": int(pca.n_components_),
        "history": history,
        "ridge": ridge_info,
        "identification": {m: results[m] for m in recon},
        "labels": labels,
        "class_accuracy": classes,
    }
    _write_json(folder / "identification.json", summary)
    (folder / "identification.txt").write_text(table + "\n")
    _log(progress, table)
    return summary


# --------------------------------------------------------------------------- the whole run


def run(cfg: dict[str, Any], out: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Run the experiment of ``cfg`` (see :func:`load_config`) into the folder ``out``.

    Returns:
        ``{"experiments": [summary per SNR or the user's data], "out": path, ...}``.

    Raises:
        ValueError, FileNotFoundError: bad settings, a prior that saw test stimuli, missing files.
    """
    from brainkern.data.stimuli import experiment_parts, load_domain
    from brainkern.reconstruct.features import save_feature_net, train_feature_net
    from brainkern.reconstruct.pictures import identification_figure, save_image_grid
    from brainkern.reconstruct.responses import GaborEncoder, average_repeats, load_responses, simulate
    from brainkern.train.engine import load_run

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"the output folder {out} is not empty; choose another --out")
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    torch.manual_seed(int(cfg["seed"]))
    started = time.perf_counter()
    im, rs = cfg["images"], cfg["responses"]
    user = rs["path"] is not None
    if user != (rs["table"] is not None):
        raise ValueError("give responses.path and responses.table together (or neither, to simulate)")
    stimuli = load_domain(
        im["domain"],
        size=int(im["size"]),
        mask=bool(im["mask"]),
        n=im["n"],
        seed=int(im["seed"]),
        progress=progress,
    )
    # The user's responses are read before anything is written, so bad files leave no folder.
    data = average_repeats(load_responses(rs["path"], rs["table"], mask=rs["mask"])) if user else None
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    _write_json(
        out / "run.json",
        {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "seed": cfg["seed"], "versions": _versions()},
    )
    timings: dict[str, float] = {}
    if user:
        index = {n: i for i, n in enumerate(stimuli.names)}
        unknown = sorted(set(data.stimuli) - set(index))
        if unknown:
            raise ValueError(
                f"responses.table names {len(unknown)} stimuli the domain lacks, e.g. {unknown[0]!r}"
            )
        rows = {p: [k for k, q in enumerate(data.part) if q == p] for p in ("train", "test")}
        parts = {p: np.asarray([index[data.stimuli[k]] for k in rows[p]], dtype=np.int64) for p in rows}
        used = np.concatenate([parts["train"], parts["test"]])
        parts["prior"] = np.setdiff1d(np.arange(len(stimuli)), used)
        if not cfg["prior"]["run"]:
            split_file = out / "prior_split.json"
            _write_json(
                split_file,
                {
                    "train": [stimuli.names[i] for i in parts["prior"]],
                    "test": [stimuli.names[i] for i in parts["test"]],
                },
            )
            cfg = copy.deepcopy(cfg)
            cfg["images"]["stimuli"] = [0, 0]
            cfg["prior"]["set"] = {**cfg["prior"]["set"], "data.split_file": str(split_file)}
    else:
        n_train, n_test = (int(v) for v in im["stimuli"])
        parts = experiment_parts(stimuli, n_train, n_test, int(im["seed"]))
    names = {p: [stimuli.names[i] for i in parts[p]] for p in ("prior", "train", "test")}
    _write_json(
        out / "split.json",
        {
            "method": "user table" if user else "experiment_parts (test stimuli from sources of their own)",
            "domain": stimuli.domain,
            "subjects": names,
            "sources": {p: sorted({stimuli.classes[stimuli.labels[i]] for i in parts[p]}) for p in names}
            if stimuli.domain == "natural"
            else None,
        },
    )
    _log(
        progress,
        f"stimuli: {stimuli.domain}, {len(parts['prior'])} prior images, {len(parts['train'])} "
        f"training and {len(parts['test'])} test stimuli ({im['size']}x{im['size']})",
    )

    # 2. the prior
    t = time.perf_counter()
    prior_dir = Path(cfg["prior"]["run"]) if cfg["prior"]["run"] else _train_prior(cfg, out, progress)
    _check_prior(prior_dir, names["test"])
    model, _, ckpt = load_run(prior_dir, cfg["prior"]["checkpoint"], "cpu")
    side = int(im["size"])
    if tuple(model.shape) != (side, side) or model.channels != 1:
        raise ValueError(
            f"prior.run {prior_dir} draws {model.channels}-channel {'x'.join(map(str, model.shape))} images, "
            f"the stimuli are grey {side}x{side}: set images.size={model.shape[0]} or train a prior for them"
        )
    generator = model.generator.eval().requires_grad_(False)
    generator.latent_dim = model.latent_dim
    timings["prior"] = round(time.perf_counter() - t, 1)
    with torch.no_grad():
        samples = (
            model.sample(32, generator=torch.Generator().manual_seed(int(cfg["seed"]))).squeeze(1).numpy()
        )
    save_image_grid(
        samples, out / "prior_samples.png", title=f"image prior: samples ({ckpt['iter']} iterations)"
    )

    # 3. the feature network
    t = time.perf_counter()
    fc = cfg["features"]
    prior = stimuli.subset(parts["prior"])
    present = np.unique(prior.labels)
    remap = {int(c): k for k, c in enumerate(present)}
    fnet, fhist = train_feature_net(
        prior.images,
        np.asarray([remap[int(y)] for y in prior.labels]),
        len(present),
        epochs=int(fc["epochs"]),
        batch_size=int(fc["batch_size"]),
        lr=float(fc["lr"]),
        seed=int(cfg["seed"]),
        progress=progress,
    )
    save_feature_net(fnet, out / "features.pt")
    timings["features"] = round(time.perf_counter() - t, 1)
    _log(
        progress,
        f"feature network: {len(present)} classes, validation accuracy "
        f"{100 * max(fhist['val_accuracy']):.1f}% (chance {100 * fhist['chance']:.1f}%)",
    )

    # 4-6. the experiments
    stim_train, stim_test = stimuli.images[parts["train"]], stimuli.images[parts["test"]]
    # Class accuracy needs the test stimuli' classes among the feature network's (digits, class
    # folders); the natural domain's test photographs are never among them.
    test_labels = stimuli.labels[parts["test"]]
    test_classes = (
        np.asarray([remap[int(y)] for y in test_labels]) if set(map(int, test_labels)) <= set(remap) else None
    )
    experiments = []
    if user:  # one experiment: the user's responses
        sets = [("responses", None, lambda: (data.select("train").data, data.select("test").data))]
    else:  # one experiment per SNR of the simulated voxels
        encoder = GaborEncoder(int(im["size"]), int(rs["n_voxels"]), seed=int(cfg["seed"]))

        def simulated(snr: float):
            sim = simulate(
                stim_train,
                stim_test,
                encoder,
                train_names=names["train"],
                test_names=names["test"],
                snr=snr,
                repeats=tuple(int(r) for r in rs["repeats"]),
                seed=int(cfg["seed"]),
                progress=progress,
            )
            return sim.select("train").data, sim.select("test").data

        sets = [(f"snr-{float(v):g}", float(v), lambda v=float(v): simulated(v)) for v in rs["snr"]]
    for label, snr, responses in sets:
        t = time.perf_counter()
        train_x, test_x = responses()
        experiments.append(
            _experiment(
                label,
                out / label,
                train_x,
                test_x,
                stim_train,
                stim_test,
                names["test"],
                generator,
                fnet,
                cfg,
                stimuli.mask,
                progress,
                test_classes,
            )
        )
        if snr is not None:
            experiments[-1]["snr"] = snr
        timings[label] = round(time.perf_counter() - t, 1)
    if len(experiments) > 1 or not user:
        identification_figure(
            {
                f"SNR {e['snr']:g}": {e["labels"][m]: e["identification"][m] for m in e["labels"]}
                for e in experiments
            },
            out / "identification.png",
        )
    timings["total"] = round(time.perf_counter() - started, 1)
    summary = {
        "out": str(out),
        "timings": timings,
        "feature_net": fhist,
        "prior": str(prior_dir),
        "prior_iterations": int(ckpt["iter"]),
        "experiments": experiments,
    }
    _write_json(out / "summary.json", summary)
    _write_report(out, cfg, summary)
    return summary


def _row(label: str, res: dict[str, Any], cls: dict[str, Any] | None = None) -> str:
    cells = []
    for kind in ("pixel", "feature"):
        if kind not in res:
            cells += ["", ""]
            continue
        ap = res[kind]["all_pairs"]
        cells.append(f"{100 * ap['accuracy']:.1f}% ({100 * ap['ci'][0]:.1f}-{100 * ap['ci'][1]:.1f})")
        paper = res[kind]["paper"]
        cells.append(f"{100 * paper['by_image']:.1f}% (p {paper['by_image_test']['p_value'] or 1:.2g})")
    if cls is not None:
        cells.append(f"{100 * cls['accuracy']:.1f}% ({100 * cls['ci'][0]:.1f}-{100 * cls['ci'][1]:.1f})")
    return f"| {label} | " + " | ".join(cells) + " |"


def _write_report(out: Path, cfg: dict[str, Any], summary: dict[str, Any]) -> Path:
    lines = [
        f"# brainkern reconstruction: {cfg.get('preset') or 'custom'} ({cfg['images']['domain']})",
        "",
        f"Prior: {summary['prior']} ({summary['prior_iterations']} iterations). "
        f"Timings (s): {summary['timings']}.",
        "",
    ]
    for e in summary["experiments"]:
        cls = e.get("class_accuracy") or {}
        head = "| method | pixel corr., all pairs (95% CI) | pixel, by image (5 distractors) "
        head += "| feature corr., all pairs (95% CI) | feature, by image |"
        head += " class (feature network, 95% CI) |" if cls else ""
        lines += [
            f"## {e['name']} ({e['pca_components']} PCA components)",
            "",
            head,
            "| --- " * (head.count("|") - 1) + "|",
            *(_row(e["labels"][m], e["identification"][m], cls.get(m)) for m in e["labels"]),
        ]
        if cls:
            c = cls["stimuli"]
            lines.append(
                f"| the test stimuli themselves | | | | | {100 * c['accuracy']:.1f}% "
                f"({100 * c['ci'][0]:.1f}-{100 * c['ci'][1]:.1f}) |"
            )
        lines.append("")
    lines += [
        "Seeliger et al. (2018) report human raters picking the right reconstruction well above "
        "chance: 75.0% / 74.3% (BRAINS characters, overall / by image), 67.6% / 75.5% (vim-1), "
        "64.4% / 75.5% (Generic Object Decoding). The figures above are a machine similarity on "
        "simulated responses, not human judgements.",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
