"""A bundle-like whole process, the baseline of `make bench`'s whole-process row: what a user of the MONAI
bundle runs (``python -m bench.bundle_process --model demo --n 8 --steps 20 --out DIR``).

As the bundle's ``scripts/sampler.py`` and ``saver.py`` work: load the model, then one subject at a time the
bundle's fp32 DDIM loop (:func:`bench.baseline.bundle_loop`), and ``nibabel.save`` of each volume (default
gzip level). Covariates and seeds are the cohort a ``brainsynth sample`` with the same ``--seed`` draws.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np

from bench.baseline import bundle_loop
from models.catalogue.registry import resolve_model_dir
from models.cohort.conditioning import normalise
from models.cohort.design import CohortDesign, design_subjects
from models.inference.pipeline import BrainLDMPipeline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    pipeline = BrainLDMPipeline.from_dir(resolve_model_dir(args.model), device="cpu")
    config = pipeline.config
    args.out.mkdir(parents=True, exist_ok=True)
    for spec in design_subjects(CohortDesign(args.n, args.seed), config.conditioning):
        vector = list(normalise(spec.covariates, config.conditioning))
        image = bundle_loop(pipeline, vector, spec.seed, steps=args.steps)[0, 0].numpy()
        nib.save(nib.Nifti1Image(np.clip(image, 0, 1), np.asarray(config.affine)),
                 args.out / f"{spec.participant_id}_T1w.nii.gz")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
