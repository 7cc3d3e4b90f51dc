"""BrainSynth model layer: the latent diffusion model of Pinaya et al. 2022 on MONAI, with no service code.

Imports only torch, MONAI, nibabel, numpy and pydantic; the worker and the service build on it.
"""
