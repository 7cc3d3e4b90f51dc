"""Built-in model presets: the paper's ``ukb`` configuration and the small CPU ``demo`` configuration.

``ukb`` is exactly the MONAI bundle ``brain_image_synthesis_latent_diffusion_model`` (``autoencoder_def``,
``diffusion_def`` and scheduler of ``configs/inference.json``), i.e. the model of Pinaya et al. 2022:
AutoencoderKL 13,766,248 parameters, DiffusionModelUNet 553,168,899 parameters, 160x224x160 at 1 mm,
latent 3x20x28x20, scaled-linear betas 0.0015-0.0205 over 1000 steps, epsilon prediction, scale factor 1.0.

``demo`` keeps the topology and the hybrid conditioning at 4 mm with narrow networks, so that it trains
and samples on a laptop CPU (issue "Train and ship the demo model" trains it).
"""

from __future__ import annotations

from models.catalogue.config import ModelConfig, SchedulerConfig
from models.cohort.conditioning import UKB_RANGES, ConditioningRanges, CovariateRange
from models.cohort.nifti import grid_affine, mni_centred_affine

#: The demo's normalisation ranges: its phantoms' volumes (ventricles 9,109-35,325 mm3, brain
#: 1,310,973-1,648,892 mm3) span 3x more of [0, 1] than with the UK Biobank ranges (0.01-0.17 for the
#: ventricles), so the conditioning signal the small model learns from is stronger; the ranges still cover
#: the usual requests (ventricles 5,000-65,000 mm3).
DEMO_RANGES = ConditioningRanges(
    age=UKB_RANGES.age,
    ventricular_volume_mm3=CovariateRange(
        min=5000.0, max=65000.0, unit="mm3", description=UKB_RANGES.ventricular_volume_mm3.description
    ),
    brain_volume_mm3=CovariateRange(
        min=1250000.0, max=1700000.0, unit="mm3", description=UKB_RANGES.brain_volume_mm3.description
    ),
)

UKB_AUTOENCODER = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 1,
    "latent_channels": 3,
    "channels": [64, 128, 128, 128],
    "num_res_blocks": 2,
    "norm_num_groups": 32,
    "norm_eps": 1e-06,
    "attention_levels": [False, False, False, False],
    "with_encoder_nonlocal_attn": False,
    "with_decoder_nonlocal_attn": False,
}

UKB_DIFFUSION = {
    "spatial_dims": 3,
    "in_channels": 7,
    "out_channels": 3,
    "channels": [256, 512, 768],
    "num_res_blocks": 2,
    "attention_levels": [False, True, True],
    "norm_num_groups": 32,
    "norm_eps": 1e-06,
    "resblock_updown": True,
    "num_head_channels": [0, 512, 768],
    "with_conditioning": True,
    "transformer_num_layers": 1,
    "cross_attention_dim": 4,
    "upcast_attention": True,
    "use_flash_attention": False,
}

RESEARCH_USE = "synthetic data for research use only; not for clinical use"


def ukb() -> ModelConfig:
    """The released UK Biobank model of Pinaya et al. 2022 (weights via ``brainsynth models import-bundle``)."""
    return ModelConfig(
        name="ukb",
        version="1.0.0",
        description="Brain LDM of Pinaya et al. 2022 (arXiv:2209.07162), trained on 31,740 UK Biobank T1w "
        "head images; MONAI bundle brain_image_synthesis_latent_diffusion_model",
        intended_use=RESEARCH_USE,
        autoencoder=UKB_AUTOENCODER,
        diffusion=UKB_DIFFUSION,
        scheduler=SchedulerConfig(),
        scale_factor=1.0,
        conditioning=UKB_RANGES,
        image_shape=(160, 224, 160),
        voxel_size_mm=(1.0, 1.0, 1.0),
        affine=grid_affine(1.0),
    )


def demo() -> ModelConfig:
    """A small model with the paper's topology at 4 mm, for CPUs (trained on phantoms, not on people).

    4 mm (40x56x40) rather than 2 mm: on a 2-core CPU an autoencoder training step at 2 mm took 7.3 s
    against 0.8 s at 4 mm, and a 4-subject cohort must sample in under a minute (measured with
    channels (16, 32, 64, 64) vs (16, 32, 64), one res-block per level, batch 1).
    """
    return ModelConfig(
        name="demo",
        version="0.3.1",
        description="Small brain LDM with the topology of Pinaya et al. 2022 at 4 mm, for CPU demos",
        intended_use=RESEARCH_USE + "; a demonstration model trained on MNI152 phantoms, not on real subjects",
        autoencoder={
            **UKB_AUTOENCODER,
            "channels": [16, 32, 64],
            "num_res_blocks": 1,
            "norm_num_groups": 16,
            "attention_levels": [False, False, False],
        },
        diffusion={
            **UKB_DIFFUSION,
            "channels": [32, 64],
            "attention_levels": [False, True],
            "num_head_channels": [0, 64],
            "norm_num_groups": 16,
        },
        scheduler=SchedulerConfig(),
        scale_factor=1.0,
        conditioning=DEMO_RANGES,
        image_shape=(40, 56, 40),
        voxel_size_mm=(4.0, 4.0, 4.0),
        # centred on the MNI152 brain, where the phantoms it is trained on lie (not the ukb saver's grid)
        affine=mni_centred_affine((40, 56, 40), 4.0),
    )


PRESETS = {"ukb": ukb, "demo": demo}
