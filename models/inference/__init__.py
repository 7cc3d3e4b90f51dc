"""Inference: the latent diffusion pipeline (Pinaya et al. 2022), its samplers and solvers, and the decoder's
execution settings (precision, memory format, slab decoding)."""
