"""``python -m brainkern.sample RUN_DIR --n N``: write generated volumes as NIfTI.

Volumes are written on the run's training grid with its affine (the output grid
of the data set the model was trained on), so they overlay on the preprocessed
inputs in any viewer. Latents come from ``--seed``; generation runs in batches.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from brainkern._cli import positive_int


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m brainkern.sample",
        description="Sample volumes from a trained run and write them as NIfTI (.nii.gz).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("run_dir", help="a run directory written by python -m brainkern.train")
    parser.add_argument("--n", type=positive_int, required=True, help="number of volumes")
    parser.add_argument("--out", help="output folder (default: RUN_DIR/generated)")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="volumes per generator call")
    parser.add_argument("--seed", type=int, default=0, help="seed of the latent vectors")
    parser.add_argument("--checkpoint", choices=("last", "best"), default="last", help="which checkpoint")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def sample_run(
    run_dir: str | Path,
    n: int,
    out: str | Path | None = None,
    *,
    batch_size: int = 16,
    seed: int = 0,
    checkpoint: str = "last",
    device: str = "auto",
    progress: bool = True,
) -> list[Path]:
    """Write ``n`` sampled volumes of a run as ``out/sample_#####.nii.gz``; returns the paths."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from brainkern.data import save_volume
    from brainkern.train.engine import load_run

    model, _cfg, ckpt = load_run(run_dir, checkpoint, device)
    affine = np.asarray(ckpt["affine"], dtype=np.float64)
    out = Path(out) if out is not None else Path(run_dir) / "generated"
    gen = torch.Generator().manual_seed(seed)
    dev = next(model.parameters()).device
    paths: list[Path] = []
    with torch.no_grad(), tqdm(total=n, unit="vol", disable=not progress, desc="sampling") as bar:
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            volumes = model.generate(model.sample_latent(b, generator=gen, device=dev)).float().cpu()
            for i, v in enumerate(volumes):
                paths.append(save_volume(v[0].numpy(), affine, out / f"sample_{start + i:05d}.nii.gz"))
            bar.update(b)
    return paths


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        paths = sample_run(
            args.run_dir,
            args.n,
            args.out,
            batch_size=args.batch_size,
            seed=args.seed,
            checkpoint=args.checkpoint,
            device=args.device,
            progress=not args.quiet,
        )
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(paths)} volumes written to {paths[0].parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
