"""BrainSynth model layer: the latent diffusion model of Pinaya et al. 2022 on MONAI, with no service code.

Sections, each importing only those before it: :mod:`models.cohort` (covariates, designs, seeds, NIfTI
geometry), :mod:`models.catalogue` (model.json, presets, registry, weights, networks),
:mod:`models.inference` (pipeline, samplers, slab decoder), :mod:`models.dataset` (BIDS files, the local
cohort writer), :mod:`models.training` (both stages, data loading, phantoms) and :mod:`models.evaluation`
(volume probe, fidelity reports). :mod:`models.errors` is shared by all.
"""
