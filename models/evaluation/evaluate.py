"""Fidelity of a model, measured the way Pinaya et al. 2022 measure it (section 3.2, Fig. 2).

- Conditioning fidelity: sample subjects whose requested ventricular and brain volumes span the probe's
  training range within the model's accepted range, measure both volumes on each generated image with the volume probe
  (:mod:`models.evaluation.volumes`), report Pearson r and mean absolute error (paper: r = 0.972 for ventricles).
- Diversity: MS-SSIM over random pairs of generated images and over random pairs of training images
  (paper: 0.6555 generated vs 0.6536 real). MONAI ``MultiScaleSSIMMetric`` with 3 scales and a 5-voxel
  kernel, the most a 40x56x40 (4 mm) image admits; the default 5 scales need >= 161 voxels per side.
- Range ends: the lowest and the highest ventricular volume requested, each with several seeds (a female and a
  male half, 65 years, mid brain volume): mean measured volume and its relative error (issue 20: within 15 %).
- Pictures: mid-slices across a sweep of ventricular volume and of age, one seed (like the paper's Fig. 2).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.metrics import MultiScaleSSIMMetric
from PIL import Image, ImageDraw

from models.cohort.conditioning import Covariates
from models.cohort.design import subject_seed
from models.evaluation.volumes import VolumeProbe, agreement
from models.inference.pipeline import BrainLDMPipeline, SubjectSample
from models.training.data import load_training_set

#: The paper's anchors (section 3).
PAPER = {"ventricles_pearson_r": 0.972, "ms_ssim_generated": 0.6555, "ms_ssim_real": 0.6536}
#: Issue 4's targets for the demo model.
TARGETS = {"ventricles_pearson_r": 0.95, "brain_pearson_r": 0.9, "ms_ssim_gap": 0.02, "range_end_error": 0.15}
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001)


@dataclass(frozen=True)
class EvaluationSettings:
    n: int
    seed: int
    sampler: str = "ddim"
    steps: int = 50
    batch_size: int = 4
    pairs: int = 50
    #: classifier-free guidance scale (``None``: the model's default)
    guidance: float | None = None
    #: seeds per end of the requested ventricular range
    end_seeds: int = 8


def _images(samples: list[SubjectSample]) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.clip(s.volume, 0.0, 1.0) for s in samples])[:, None]).float()


def ms_ssim_pairs(images: torch.Tensor, pairs: int, seed: int) -> float:
    """Mean MS-SSIM over ``pairs`` random distinct pairs of ``images`` (N, 1, X, Y, Z)."""
    rng = np.random.default_rng(seed)
    first, second = [], []
    while len(first) < pairs:
        i, j = rng.choice(images.shape[0], size=2, replace=False)
        first.append(int(i))
        second.append(int(j))
    metric = MultiScaleSSIMMetric(spatial_dims=3, data_range=1.0, kernel_size=5, weights=MS_SSIM_WEIGHTS)
    values = [metric(images[[i]], images[[j]]).item() for i, j in zip(first, second, strict=True)]
    return round(float(np.mean(values)), 4)


def _strip(volumes: list[np.ndarray], labels: list[str], title: str) -> Image.Image:
    """Axial and coronal mid-slices of each volume in a column, labelled (grey levels 0-1)."""
    tiles = []
    for volume in volumes:
        v = np.clip(volume, 0.0, 1.0)
        axial = np.rot90(v[:, :, v.shape[2] // 2])  # (y, x): anterior up
        coronal = np.rot90(v[:, v.shape[1] // 2, :])  # (z, x): superior up
        tiles.append(np.concatenate([axial, np.zeros((2, axial.shape[1])), coronal], axis=0))
    scale = 4
    width, height = tiles[0].shape[1] * scale, tiles[0].shape[0] * scale
    canvas = Image.new("L", (width * len(tiles), height + 44), color=0)
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), title, fill=255)
    for index, (tile, label) in enumerate(zip(tiles, labels, strict=True)):
        image = Image.fromarray((tile * 255).astype(np.uint8)).resize((width, height), Image.Resampling.NEAREST)
        canvas.paste(image, (index * width, 16))
        for line, text in enumerate(label.split("\n")):
            draw.text((index * width + 4, height + 18 + 12 * line), text, fill=255)
    return canvas


def _sweep(
    pipeline: BrainLDMPipeline,
    probe: VolumeProbe,
    settings: EvaluationSettings,
    covariates: list[Covariates],
    labels: list[str],
    title: str,
    path: Path,
) -> list[dict[str, float]]:
    seed = subject_seed(settings.seed, 10_000)
    samples = pipeline(
        covariates,
        [seed] * len(covariates),
        sampler=settings.sampler,
        num_inference_steps=settings.steps,
        guidance=settings.guidance,
        batch_size=settings.batch_size,
    )
    measured = probe.measure(_images(samples))
    rows = []
    for covariate, label, (vent, brain) in zip(covariates, labels, measured, strict=True):
        rows.append({"requested": label, "measured_ventricles_mm3": round(float(vent)),
                     "measured_brain_mm3": round(float(brain)),
                     "requested_ventricles_mm3": covariate.ventricular_volume_mm3})  # fmt: skip
    text = [f"{label}\nmeasured V {vent / 1000:.1f}k" for label, (vent, _) in zip(labels, measured, strict=True)]
    _strip([s.volume for s in samples], text, title).save(path)
    return rows


def _range_ends(
    pipeline: BrainLDMPipeline,
    probe: VolumeProbe,
    settings: EvaluationSettings,
    ventricles: tuple[float, float],
    brain: float,
) -> list[dict[str, Any]]:
    """Each end of the requested ventricular range with ``settings.end_seeds`` seeds: mean measured, error."""
    k = settings.end_seeds
    requests = [Covariates("F" if i % 2 == 0 else "M", 65.0, end, brain) for end in ventricles for i in range(k)]
    seeds = [subject_seed(settings.seed, 20_000 + i) for _end in ventricles for i in range(k)]
    samples = pipeline(requests, seeds, sampler=settings.sampler, num_inference_steps=settings.steps,
                       guidance=settings.guidance, batch_size=settings.batch_size)  # fmt: skip
    measured = probe.measure(_images(samples))[:, 0]
    rows = []
    for index, end in enumerate(ventricles):
        values = measured[index * k : (index + 1) * k]
        rows.append({
            "end": "low" if index == 0 else "high",
            "requested_ventricles_mm3": end,
            "seeds": k,
            "measured_mean_mm3": round(float(values.mean())),
            "measured_min_mm3": round(float(values.min())),
            "measured_max_mm3": round(float(values.max())),
            "relative_error": round(float(values.mean() / end - 1.0), 4),
        })  # fmt: skip
    return rows


def evaluate(
    pipeline: BrainLDMPipeline,
    probe: VolumeProbe,
    settings: EvaluationSettings,
    out_dir: Path,
    *,
    training_data: Path | None = None,
    callback: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the evaluation, write ``report.json``, ``report.md`` and the sweep PNGs into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    say = callback or (lambda _message: None)
    info = probe.info
    rng = np.random.default_rng(settings.seed)
    # requests span what the model accepts and the probe has seen measured, both
    ranges = pipeline.config.conditioning
    vent_lo = max(info.ventricular_range_mm3[0], ranges.ventricular_volume_mm3.min)
    vent_hi = min(info.ventricular_range_mm3[1], ranges.ventricular_volume_mm3.max)
    brain_lo = max(info.brain_range_mm3[0], ranges.brain_volume_mm3.min)
    brain_hi = min(info.brain_range_mm3[1], ranges.brain_volume_mm3.max)
    requested = [
        Covariates(
            sex="F" if i % 2 == 0 else "M",
            age=round(float(rng.uniform(44, 82)), 1),
            ventricular_volume_mm3=round(float(rng.uniform(vent_lo, vent_hi)), 1),
            brain_volume_mm3=round(float(rng.uniform(brain_lo, brain_hi)), 1),
        )
        for i in range(settings.n)
    ]
    seeds = [subject_seed(settings.seed, i) for i in range(settings.n)]
    say(f"sampling {settings.n} subjects across the probe's volume range")
    samples = pipeline(requested, seeds, sampler=settings.sampler, num_inference_steps=settings.steps,
                       guidance=settings.guidance, batch_size=settings.batch_size)  # fmt: skip
    generated = _images(samples)
    measured = probe.measure(generated)
    fidelity = {
        "ventricles": agreement(np.array([c.ventricular_volume_mm3 for c in requested]), measured[:, 0]),
        "brain": agreement(np.array([c.brain_volume_mm3 for c in requested]), measured[:, 1]),
    }
    say("MS-SSIM diversity")
    diversity: dict[str, Any] = {
        "ms_ssim_generated": ms_ssim_pairs(generated, settings.pairs, settings.seed),
        "scales": len(MS_SSIM_WEIGHTS),
        "kernel_size": 5,
        "pairs": settings.pairs,
    }
    if training_data is not None:
        real = load_training_set(training_data, pipeline.config).images
        diversity["ms_ssim_training"] = ms_ssim_pairs(real, settings.pairs, settings.seed + 1)
        diversity["gap"] = round(abs(diversity["ms_ssim_generated"] - diversity["ms_ssim_training"]), 4)
    mid_brain = round((brain_lo + brain_hi) / 2)
    mid_vent = round((vent_lo + vent_hi) / 2)
    say(f"range ends ({settings.end_seeds} seeds each)")
    range_ends = _range_ends(pipeline, probe, settings, (round(vent_lo), round(vent_hi)), mid_brain)
    say("sweeps")
    vent_values = np.linspace(vent_lo, vent_hi, 5).round()
    vent_sweep = _sweep(
        pipeline, probe, settings,
        [Covariates("F", 65.0, float(v), mid_brain) for v in vent_values],
        [f"V {v / 1000:.1f}k mm3" for v in vent_values],
        f"ventricular volume sweep (F, 65 y, brain {mid_brain / 1e6:.2f}M mm3, one seed)",
        out_dir / "sweep-ventricles.png",
    )  # fmt: skip
    ages = [45.0, 55.0, 65.0, 75.0, 82.0]
    age_sweep = _sweep(
        pipeline, probe, settings,
        [Covariates("F", a, mid_vent, mid_brain) for a in ages],
        [f"age {a:.0f} y" for a in ages],
        f"age sweep (F, ventricles {mid_vent / 1000:.1f}k mm3, brain {mid_brain / 1e6:.2f}M mm3, one seed)",
        out_dir / "sweep-age.png",
    )  # fmt: skip
    report = {
        "model": {"name": pipeline.config.name, "version": pipeline.config.version},
        "settings": {**settings.__dict__, "guidance": pipeline.config.guidance_scale(settings.guidance)},
        "probe": {
            "validation": info.validation,
            "ventricular_range_mm3": info.ventricular_range_mm3,
            "brain_range_mm3": info.brain_range_mm3,
            "decoder_sha256": info.decoder_sha256,
        },
        "requested": {"ventricular_range_mm3": [vent_lo, vent_hi], "brain_range_mm3": [brain_lo, brain_hi]},
        "conditioning_fidelity": fidelity,
        "diversity": diversity,
        "range_ends": range_ends,
        "sweeps": {"ventricles": vent_sweep, "age": age_sweep},
        "paper": PAPER,
        "targets": TARGETS,
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "report.md").write_text(markdown_report(report))
    return report


def markdown_report(report: dict[str, Any]) -> str:
    """The report as a Markdown table with the paper's anchors and the targets."""
    f, d, p = report["conditioning_fidelity"], report["diversity"], report["probe"]["validation"]
    s, r = report["settings"], report["requested"]
    decoder = report["probe"].get("decoder_sha256")
    p_decoder = f"autoencoder {decoder[:8]}" if decoder else "an autoencoder"
    lines = [
        f"# Evaluation of {report['model']['name']} {report['model']['version']}",
        "",
        f"{s['n']} subjects, seed {s['seed']}, {s['sampler']} {s['steps']} steps, guidance {s['guidance']:g}; "
        f"requested ventricles {r['ventricular_range_mm3'][0]:,.0f}-{r['ventricular_range_mm3'][1]:,.0f} mm3 and brain "
        f"{r['brain_range_mm3'][0]:,.0f}-{r['brain_range_mm3'][1]:,.0f} mm3 (uniform); volumes measured with the "
        "volume probe (models/evaluation/volumes.py) whose accuracy on held-out phantoms is given first.",
        "",
        "| measure | value | paper | target |",
        "|---|---|---|---|",
        f"| probe on held-out phantoms: ventricles r / MAE | {p.get('ventricles_pearson_r')} / "
        f"{p.get('ventricles_mae_mm3')} mm3 | SynthSeg | - |",
        f"| probe on held-out phantoms: brain r / MAE | {p.get('brain_pearson_r')} / {p.get('brain_mae_mm3')} mm3 "
        "| SynthSeg | - |",
        *(
            [
                f"| probe on their reconstructions by {p_decoder}: ventricles r / MAE | "
                f"{p['decoded_ventricles_pearson_r']} / {p['decoded_ventricles_mae_mm3']} mm3 | - | - |",
                f"| probe on their reconstructions by {p_decoder}: brain r / MAE | {p['decoded_brain_pearson_r']} / "
                f"{p['decoded_brain_mae_mm3']} mm3 | - | - |",
            ]
            if "decoded_brain_pearson_r" in p
            else []
        ),
        f"| ventricles: Pearson r (requested vs measured) | {f['ventricles']['pearson_r']} | 0.972 | >= 0.95 |",
        f"| ventricles: MAE | {f['ventricles']['mae_mm3']} mm3 ({f['ventricles']['mape_percent']} %) | - | - |",
        f"| brain volume: Pearson r | {f['brain']['pearson_r']} | - | >= 0.9 |",
        f"| brain volume: MAE | {f['brain']['mae_mm3']} mm3 ({f['brain']['mape_percent']} %) | - | - |",
        f"| MS-SSIM, generated pairs | {d['ms_ssim_generated']} | 0.6555 | - |",
        f"| MS-SSIM, training pairs | {d.get('ms_ssim_training', 'not measured')} | 0.6536 | - |",
        f"| MS-SSIM gap | {d.get('gap', 'not measured')} | 0.0019 | <= 0.02 |",
        *(
            f"| ventricles at the {e['end']} end ({e['requested_ventricles_mm3']:,.0f} mm3, {e['seeds']} seeds): "
            f"mean measured (min-max) | {e['measured_mean_mm3']:,} mm3 ({e['relative_error']:+.1%}; "
            f"{e['measured_min_mm3']:,}-{e['measured_max_mm3']:,}) | - | within 15 % |"
            for e in report.get("range_ends", [])
        ),
        "",
        f"MS-SSIM: {d['scales']} scales, kernel {d['kernel_size']}, {d['pairs']} random pairs each.",
        "",
        "![ventricular volume sweep](sweep-ventricles.png)",
        "",
        "![age sweep](sweep-age.png)",
        "",
    ]
    return "\n".join(lines)


def _sweep_row(r: dict[str, Any]) -> str:
    gap = "-" if r["ms_ssim_gap"] is None else r["ms_ssim_gap"]
    return (f"| {r['guidance']:g} | {r['ventricles_pearson_r']} | {r['ventricles_mae_mm3']} | {r['brain_pearson_r']} "
            f"| {r['brain_mae_mm3']} | {r['ms_ssim_generated']} | {gap} | {r['low_end_error']:+.1%} "
            f"| {r['high_end_error']:+.1%} |")  # fmt: skip


def guidance_sweep(
    pipeline: BrainLDMPipeline,
    probe: VolumeProbe,
    settings: EvaluationSettings,
    scales: list[float],
    out_dir: Path,
    *,
    training_data: Path | None = None,
    callback: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """:func:`evaluate` at each classifier-free guidance scale (one report folder ``guidance-W`` each, the same
    subjects and seeds), then ``sweep.json``/``sweep.md`` (one row per scale: ventricle and brain r and MAE,
    MS-SSIM and its gap, the range ends' errors) and ``sweep-guidance.png`` (the ventricular volume sweep at
    each scale, stacked)."""
    from dataclasses import replace

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    say = callback or (lambda _message: None)
    rows = []
    for scale in scales:
        say(f"guidance {scale:g}")
        folder = out_dir / f"guidance-{scale:g}"
        report = evaluate(pipeline, probe, replace(settings, guidance=scale), folder, training_data=training_data,
                          callback=callback)  # fmt: skip
        f, d = report["conditioning_fidelity"], report["diversity"]
        rows.append({"guidance": scale, "ventricles_pearson_r": f["ventricles"]["pearson_r"],
                     "ventricles_mae_mm3": f["ventricles"]["mae_mm3"], "brain_pearson_r": f["brain"]["pearson_r"],
                     "brain_mae_mm3": f["brain"]["mae_mm3"], "ms_ssim_generated": d["ms_ssim_generated"],
                     "ms_ssim_gap": d.get("gap"), "low_end_error": report["range_ends"][0]["relative_error"],
                     "high_end_error": report["range_ends"][1]["relative_error"]})  # fmt: skip
    (out_dir / "sweep.json").write_text(json.dumps({"settings": settings.__dict__, "rows": rows}, indent=2) + "\n")
    lines = [
        f"# Guidance sweep of {pipeline.config.name} {pipeline.config.version}",
        "",
        f"{settings.n} subjects, seed {settings.seed}, {settings.sampler} {settings.steps} steps; the same subjects "
        "and seeds at every scale; volumes by the volume probe.",
        "",
        "| guidance | ventricles r | ventricles MAE mm3 | brain r | brain MAE mm3 | MS-SSIM generated | MS-SSIM gap "
        f"| low end ({settings.end_seeds} seeds) | high end |",
        "|---|---|---|---|---|---|---|---|---|",
        *(_sweep_row(r) for r in rows),
        "",
        "![ventricular volume sweep at each guidance scale](sweep-guidance.png)",
        "",
    ]
    (out_dir / "sweep.md").write_text("\n".join(lines))
    strips = [Image.open(out_dir / f"guidance-{scale:g}" / "sweep-ventricles.png") for scale in scales]
    canvas = Image.new("L", (max(i.width for i in strips), sum(i.height for i in strips)), color=0)
    top = 0
    for scale, strip in zip(scales, strips, strict=True):
        canvas.paste(strip, (0, top))
        ImageDraw.Draw(canvas).text((canvas.width - 90, top + 2), f"guidance {scale:g}", fill=255)
        top += strip.height
    canvas.save(out_dir / "sweep-guidance.png")
    return rows
