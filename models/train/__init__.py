"""Training of both stages of the latent diffusion model (Pinaya et al. 2022, section 2.2)."""
