"""Training of both stages of the latent diffusion model (Pinaya et al. 2022, section 2.2), its data loader,
and the MNI152 phantoms with known volumes that the demo model is trained on."""
