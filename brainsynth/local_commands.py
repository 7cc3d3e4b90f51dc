"""The ``brainsynth`` commands that run on this machine: list, import and register models, sample cohorts,
make phantoms, train and evaluate models. Each imports torch and the model code it needs when it runs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brainsynth.arguments import (
    UsageError,
    add_cohort_arguments,
    cohort_subjects,
    resolve_guidance,
    resolve_sampling,
)
from models.catalogue.config import PROBE_JSON, read_model_config
from models.catalogue.presets import PRESETS, ukb
from models.catalogue.registry import (
    ModelEntry,
    describe_model,
    list_models,
    register_model,
    resolve_model_dir,
    user_models_dir,
)
from models.cohort.design import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_STEPS,
    MAX_ATTEMPTS_LIMIT,
    MAX_GUIDANCE,
    check_sampler,
    unprintable,
)
from models.dataset.bids import DEFAULT_QC_TOLERANCE, require_empty_folder
from models.dataset.segmentation import Samseg, SegmentationError
from models.inference.execution import Execution

if TYPE_CHECKING:
    from models.dataset.writer import VolumeMeasure


def register(commands: argparse._SubParsersAction) -> None:
    """Add this machine's commands to the ``brainsynth`` parser (each sets ``run``)."""
    models = commands.add_parser(
        "models",
        help="list registered models (models register DIR: add a trained one; models import-bundle DIR: "
        "import the released weights)",
    )
    models.set_defaults(run=_cmd_models)
    models.add_argument("--json", action="store_true", help="machine-readable output")
    models_sub = models.add_subparsers(dest="models_command", parser_class=type(models))
    imp = models_sub.add_parser("import-bundle", help="import the released MONAI bundle weights")
    imp.add_argument("bundle_dir", type=Path, help="folder with autoencoder.pt + model.pt (or the .pth names)")
    imp.add_argument("--name", default="ukb", help="name to register the model under (default: ukb)")
    reg = models_sub.add_parser("register", help="add a trained model directory to the registry (the API sees it)")
    reg.add_argument("model_dir", type=Path, help="a model directory with model.json and both weight files")
    reg.add_argument("--name", help="name to register it under (default: the name in its model.json)")
    reg.add_argument("--link", action="store_true", help="link the directory instead of copying it")
    imp.add_argument(
        "--trust-unverified",
        action="store_true",
        help="import files whose md5 differs from the published one (recorded as unverified)",
    )

    sample = commands.add_parser("sample", help="generate a cohort and write it as a BIDS dataset")
    sample.set_defaults(run=_cmd_sample)
    add_cohort_arguments(sample)
    sample.add_argument("--out", type=Path, required=True, help="output BIDS folder (new or empty)")
    sample.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help=f"subjects per UNet call (default {DEFAULT_BATCH_SIZE}, as the service's tasks: the same bytes as a "
        "cohort from the API; values agree within 1e-5 across batch sizes)",
    )
    sample.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    sample.add_argument(
        "--precision",
        choices=("bf16", "fp16"),
        help="autocast the UNet and decoder (faster on GPUs; default float32, the bundle's setting)",
    )
    sample.add_argument(
        "--channels-last", action="store_true", help="channels-last (NDHWC) tensors; faster on some hardware"
    )
    sample.add_argument(
        "--compile", action="store_true", help="torch.compile the UNet and decoder (pays off on long runs, if at all)"
    )
    sample.add_argument(
        "--decode-slab",
        type=int,
        metavar="ROWS",
        help="decode ROWS rows at a time with whole-volume statistics: same volume, less memory (default: whole)",
    )
    sample.add_argument(
        "--decode-offload", action="store_true", help="with --decode-slab: keep full-size tensors in host memory"
    )
    phantoms = commands.add_parser("phantoms", help="write MNI152 phantoms with known volumes (training data)")
    phantoms.set_defaults(run=_cmd_phantoms)
    phantoms.add_argument("--n", type=int, required=True, help="number of phantoms")
    phantoms.add_argument("--seed", type=int, required=True, help="cohort seed (phantom seeds derive from it)")
    phantoms.add_argument("--out", type=Path, required=True, help="output BIDS folder (new or empty)")
    phantoms.add_argument("--model", default="demo", help="model (name or directory) whose grid to use; default demo")
    phantoms.add_argument(
        "--range-fraction", type=float, metavar="F",
        help="share of phantoms drawn evenly over the model's accepted ranges, the rest like the UK Biobank "
        "cohort (default 0.4; 0: all like the UK Biobank, as before)",
    )  # fmt: skip
    phantoms.add_argument(
        "--ventricles", type=float, nargs=2, metavar=("LO", "HI"),
        help="draw the evenly spread share's ventricular volumes from LO-HI mm3 only (inside the model's accepted "
        "range; e.g. --range-fraction 1 --ventricles 5000 12000: phantoms for the range's low end)",
    )  # fmt: skip
    train = commands.add_parser(
        "train", help="train a model's autoencoder, then its diffusion UNet (or the volume probe)"
    )
    stages = train.add_subparsers(dest="stage", required=True, parser_class=type(train))
    for stage, default_steps, default_batch in (("autoencoder", 2000, 4), ("diffusion", 4000, 16)):
        sub = stages.add_parser(stage, help=f"train the {stage} stage (resumes from its checkpoint)")
        sub.set_defaults(run=_cmd_train)
        sub.add_argument(
            "--data", type=Path, nargs="+", required=True, metavar="DATA",
            help="BIDS folder with participants.tsv (several: trained on together)",
        )  # fmt: skip
        sub.add_argument("--model-dir", type=Path, required=True, help="model directory (created from --preset)")
        sub.add_argument("--preset", choices=sorted(PRESETS), default="demo", help="architecture for a new model-dir")
        sub.add_argument("--name", help="the model's name in model.json and every cohort (default: --model-dir's name)")
        sub.add_argument("--version", dest="model_version", help="the model's version (default 0.1.0 for a new one)")
        sub.add_argument("--description", help="what the model is (default: its preset and training data)")
        sub.add_argument("--intended-use", help="what the model may be used for (default: research use only)")
        sub.add_argument("--steps", type=int, default=default_steps, help=f"optimiser steps (default {default_steps})")
        sub.add_argument("--batch-size", type=int, default=default_batch, help=f"default {default_batch}")
        sub.add_argument("--lr", type=float, help="learning rate (default: the stage's)")
        sub.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
        sub.add_argument("--device", help="cpu or cuda (default: cuda if available); bf16 autocast on cuda")
        sub.add_argument(
            "--init-from",
            metavar="MODEL",
            help=f"fine-tune: start the {'UNet' if stage == 'diffusion' else 'autoencoder'} from MODEL's (a new "
            "--model-dir also takes MODEL's autoencoder)",
        )
        if stage == "diffusion":
            sub.add_argument(
                "--condition-dropout", type=float, default=0.0, metavar="P",
                help="train on the null condition with probability P (classifier-free guidance; model.json records "
                "it, and the model then samples with --guidance W); default 0: no guidance support",
            )  # fmt: skip
            sub.add_argument(
                "--default-guidance", type=float, metavar="W",
                help="the guidance scale cohorts get when they name none (model.json; with --condition-dropout; "
                "default 1, or the one model.json already records)",
            )  # fmt: skip
    probe = stages.add_parser("volumes", help="train the volume probe that `evaluate` measures with (phantoms)")
    probe.set_defaults(run=_cmd_train_volumes)
    probe.add_argument(
        "--data", type=Path, nargs="+", required=True, metavar="DATA",
        help="phantom BIDS folder to train on (several: trained on together)",
    )  # fmt: skip
    probe.add_argument("--validation", type=Path, required=True, help="phantoms of another seed, held out")
    probe.add_argument("--out", type=Path, required=True, help="folder for volume_probe.pt/.json")
    probe.add_argument("--model", default="demo", help="model whose grid the probe measures (default demo)")
    probe.add_argument("--steps", type=int, default=1500, help="optimiser steps (default 1500)")
    probe.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    probe.add_argument(
        "--decoded", action="store_true",
        help="also train on the phantoms as --model's autoencoder reconstructs them (the smoother images a model "
        "decodes) and validate on both",
    )  # fmt: skip

    evaluate = commands.add_parser(
        "evaluate", help="measure a model's conditioning fidelity and diversity (report + PNG sweeps)"
    )
    evaluate.set_defaults(run=_cmd_evaluate)
    evaluate.add_argument("--model", required=True, help="registered model name or model directory")
    evaluate.add_argument("--n", type=int, required=True, help="subjects to sample for the fidelity measures")
    evaluate.add_argument("--out", type=Path, required=True, help="report folder (report.md/.json, PNG sweeps)")
    evaluate.add_argument("--probe", type=Path, help="volume probe folder (default: the model directory)")
    evaluate.add_argument("--data", type=Path, help="the training data, for MS-SSIM of real pairs")
    evaluate.add_argument("--seed", type=int, default=0, help="evaluation seed (default 0)")
    evaluate.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    evaluate.add_argument(
        "--guidance", type=float, nargs="+", metavar="W",
        help="classifier-free guidance scale (default: the model's); several make a sweep: one report per scale "
        "(guidance-W/) and sweep.md/.json with sweep-guidance.png",
    )  # fmt: skip
    evaluate.add_argument(
        "--end-seeds", type=int, default=8, metavar="K",
        help="seeds at each end of the requested ventricular range (mean measured and its error; default 8)",
    )  # fmt: skip
    evaluate.add_argument("--batch-size", type=int, default=4, help="default 4")
    evaluate.add_argument("--device", help="cpu or cuda (default: cuda if available)")


def _cmd_train_volumes(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from models.evaluation.volumes import train_probe

    if args.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {args.steps}")
    model_dir = resolve_model_dir(args.model)
    config = read_model_config(model_dir)
    decoder, decoder_sha256 = None, None
    if args.decoded:
        from models.catalogue.networks import load_autoencoder

        if config.weights is None:
            raise UsageError(f"--decoded: {model_dir} has no trained autoencoder to reconstruct the phantoms with")
        decoder, decoder_sha256 = load_autoencoder(model_dir, config), config.weights.autoencoder.sha256
    with tqdm(total=args.steps, unit="step", desc="training volume probe", file=sys.stderr) as bar:

        def progress(step: int, loss: float) -> None:
            bar.update(step - bar.n)
            bar.set_postfix(loss=f"{loss:.4f}")

        probe = train_probe(config, args.data, args.validation, steps=args.steps, seed=args.seed, decoder=decoder,
                            decoder_sha256=decoder_sha256, callback=progress)  # fmt: skip
    probe.save(args.out)
    v = probe.info.validation
    lines = [("held-out phantoms", "")] + ([("their reconstructions", "decoded_")] if args.decoded else [])
    print(f"volume probe in {args.out.resolve()}")
    for what, key in lines:
        print(
            f"on {int(v['n'])} {what}: ventricles r {v[key + 'ventricles_pearson_r']} (MAE "
            f"{v[key + 'ventricles_mae_mm3']:,.0f} mm3), brain r {v[key + 'brain_pearson_r']} (MAE "
            f"{v[key + 'brain_mae_mm3']:,.0f} mm3)"
        )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from models.evaluation.evaluate import EvaluationSettings, evaluate
    from models.evaluation.volumes import VolumeProbe
    from models.inference.pipeline import BrainLDMPipeline

    if args.n < 2:
        raise UsageError(f"--n must be at least 2 (a correlation needs pairs), got {args.n}")
    if args.end_seeds < 1:
        raise UsageError(f"--end-seeds must be at least 1, got {args.end_seeds}")
    model_dir = resolve_model_dir(args.model)
    config = read_model_config(model_dir, check_networks=False)
    scales = args.guidance or [None]
    for scale in scales:  # checked before torch loads
        config.guidance_scale(scale)
    probe = VolumeProbe.load(args.probe or model_dir)
    pipeline = BrainLDMPipeline.from_dir(model_dir, device=args.device)
    settings = EvaluationSettings(n=args.n, seed=args.seed, steps=args.steps, batch_size=args.batch_size,
                                  end_seeds=args.end_seeds)  # fmt: skip

    def say(message: str) -> None:
        print(f"evaluate: {message}", file=sys.stderr)

    if len(scales) > 1:
        from models.evaluation.evaluate import guidance_sweep

        guidance_sweep(pipeline, probe, settings, [float(s) for s in scales], args.out, training_data=args.data,
                       callback=say)  # fmt: skip
        print((args.out / "sweep.md").read_text())
        print(f"sweep: {(args.out / 'sweep.md').resolve()}")
        return 0
    report = evaluate(pipeline, probe, replace(settings, guidance=scales[0]), args.out, training_data=args.data,
                      callback=say)  # fmt: skip
    print((args.out / "report.md").read_text())
    print(f"report: {(args.out / 'report.md').resolve()}")
    return 0 if report else 1


def _adopt_autoencoder(source_dir: Path, model_dir: Path) -> None:
    """Copy ``source_dir``'s trained autoencoder into the new ``model_dir`` (same architecture required)."""
    import shutil

    from models.catalogue.config import AUTOENCODER_FILE, Weights, write_model_config
    from models.catalogue.weights import verify_sha256

    source, target = read_model_config(source_dir), read_model_config(model_dir)
    if source.weights is None:
        raise UsageError(f"--init-from {source_dir} has no trained autoencoder")
    if source.autoencoder != target.autoencoder or source.image_shape != target.image_shape:
        raise UsageError(f"--init-from {source_dir} has another autoencoder or grid than {model_dir}")
    entry = source.weights.autoencoder
    verify_sha256(source_dir / entry.file, entry.sha256)
    shutil.copyfile(source_dir / entry.file, model_dir / AUTOENCODER_FILE)
    weights = Weights(autoencoder=entry.model_copy(update={"file": AUTOENCODER_FILE}))
    write_model_config(model_dir, target.model_copy(update={"weights": weights}))


def _cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from models.inference.pipeline import resolve_device
    from models.training.data import load_training_set

    for name in ("steps", "batch_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.lr is not None and not args.lr > 0:
        raise UsageError(f"--lr must be positive, got {args.lr}")
    if not 0 <= getattr(args, "condition_dropout", 0.0) < 1:
        raise UsageError(f"--condition-dropout must be in [0, 1), got {args.condition_dropout}")
    if getattr(args, "default_guidance", None) is not None:
        if not args.condition_dropout > 0:
            raise UsageError("--default-guidance needs --condition-dropout P > 0: a model trained without it "
                             "samples at guidance 1 only")  # fmt: skip
        if not 0 <= args.default_guidance <= MAX_GUIDANCE:
            raise UsageError(f"--default-guidance must be between 0 and {MAX_GUIDANCE:g}, got {args.default_guidance}")
    device = resolve_device(args.device)
    _prepare_model_dir(args)
    init_from = resolve_model_dir(args.init_from) if args.init_from else None
    if init_from is not None and read_model_config(args.model_dir).weights is None:
        _adopt_autoencoder(init_from, args.model_dir)
    config = read_model_config(args.model_dir)
    data = load_training_set(args.data, config)
    overrides: dict[str, Any] = {"steps": args.steps, "batch_size": args.batch_size, "seed": args.seed}
    if init_from is not None:
        overrides["init_from"] = init_from
    if args.stage == "diffusion":
        overrides["condition_dropout"] = args.condition_dropout
        overrides["default_guidance"] = args.default_guidance
    if args.lr is not None:
        overrides["lr"] = args.lr
    with tqdm(total=args.steps, unit="step", desc=f"training {args.stage}", file=sys.stderr) as bar:

        def progress(done: int, _total: int, losses: dict[str, float]) -> None:
            bar.update(done - bar.n)
            bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items()}, refresh=False)

        if args.stage == "autoencoder":
            from models.training.autoencoder import AutoencoderSettings, train_autoencoder

            path = train_autoencoder(
                data, args.model_dir, replace(AutoencoderSettings(), **overrides), device, progress
            )
        else:
            from models.training.diffusion import DiffusionSettings, train_diffusion

            path = train_diffusion(data, args.model_dir, replace(DiffusionSettings(), **overrides), device, progress)
    _record_training(args, len(data.participant_ids), init_from)
    print(f"trained {args.stage} on {len(data.participant_ids)} subjects: {path.resolve()}")
    return 0


def _prepare_model_dir(args: argparse.Namespace) -> None:
    """A new model directory gets the preset's architecture under an identity of its own (never the preset's
    name, version or description: cohorts would claim to come from the shipped model); ``--name``,
    ``--version`` and ``--description`` rename an existing one."""
    from pydantic import ValidationError

    from models.catalogue.config import MODEL_JSON, write_model_config

    model_dir: Path = args.model_dir
    identity = {
        key: value
        for key, value in (
            ("name", args.name),
            ("version", args.model_version),
            ("description", args.description),
            ("intended_use", args.intended_use),
        )
        if value is not None
    }
    if not (model_dir / MODEL_JSON).is_file():
        preset = PRESETS[args.preset]()
        identity = {
            "name": model_dir.resolve().name,
            "version": "0.1.0",
            "description": f"{args.preset} architecture trained with `brainsynth train` on "
            + " + ".join(str(d) for d in args.data),
            "intended_use": "synthetic data for research use only; not for clinical use",
            **identity,
        }
        model_dir.mkdir(parents=True, exist_ok=True)
        config = preset
    else:
        config = read_model_config(model_dir)
    if identity:
        try:
            config = type(config).model_validate({**config.model_dump(), **identity})
        except ValidationError as err:
            problem = err.errors()[0]
            raise UsageError(
                f"--{problem['loc'][0]}: {problem['msg']} (names: letters, digits, '.', '_', '-')"
            ) from err
        write_model_config(model_dir, config)


def _record_training(args: argparse.Namespace, subjects: int, init_from: Path | None) -> None:
    """Append this run's provenance (data folder, subjects, participants.tsv hash) to ``model.json``; a run that
    repeats the last one exactly (resumed at its end: nothing trained) is not appended again."""
    from models.catalogue.config import TrainingProvenance, write_model_config
    from models.catalogue.weights import sha256_file

    config = read_model_config(args.model_dir)
    folders = [str(d) for d in args.data]
    hashes = [sha256_file(Path(d) / "participants.tsv") for d in args.data]
    run = TrainingProvenance(
        stage=args.stage,
        data=folders[0] if len(folders) == 1 else tuple(folders),
        subjects=subjects,
        participants_sha256=hashes[0] if len(hashes) == 1 else tuple(hashes),
        steps=args.steps,
        init_from=str(init_from) if init_from is not None else None,
    )
    if config.training and config.training[-1] == run:
        return
    write_model_config(args.model_dir, config.model_copy(update={"training": (*config.training, run)}))


def _cmd_phantoms(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    try:
        from models.training.phantoms import DEFAULT_RANGE_FRACTION, write_phantom_cohort
    except ImportError as err:
        raise UsageError(f"phantoms need the training extras: pip install 'brainsynth[train]' ({err})") from err
    entry = next((e for e in list_models() if e.name == args.model), None)
    config = entry.config if entry else read_model_config(resolve_model_dir(args.model))
    if args.seed < 0:
        raise UsageError(f"--seed must be a non-negative integer, got {args.seed}")
    fraction = DEFAULT_RANGE_FRACTION if args.range_fraction is None else args.range_fraction
    if not 0 <= fraction <= 1:
        raise UsageError(f"--range-fraction must be between 0 and 1, got {fraction}")
    accepted = config.conditioning.ventricular_volume_mm3
    if args.ventricles is not None and not accepted.min <= args.ventricles[0] < args.ventricles[1] <= accepted.max:
        low, high = args.ventricles
        raise UsageError(f"--ventricles LO HI must satisfy {accepted.min:g} <= LO < HI <= {accepted.max:g} (the "
                         f"{config.name} model's accepted range, mm3), got {low:g} {high:g}")  # fmt: skip
    require_empty_folder(args.out, "--out")
    with tqdm(total=args.n, unit="phantom", desc="phantoms", file=sys.stderr) as bar:
        write_phantom_cohort(args.n, args.seed, args.out, config, range_fraction=fraction,
                             ventricle_range=tuple(args.ventricles) if args.ventricles else None,
                             callback=lambda done, _t: bar.update(done - bar.n))  # fmt: skip
    print(f"wrote {args.n} phantoms on the {config.name} grid to {args.out.resolve()}")
    return 0


def _entry_summary(entry: ModelEntry) -> dict[str, Any]:
    """The model as ``GET /v1/models`` describes it, plus what only this machine knows: its directory, whether
    its weights were verified, its parameter counts and latent grid."""
    config = entry.config
    return {
        **describe_model(entry),
        "directory": str(entry.directory) if entry.directory else None,
        "weights_verified": config.weights_verified,
        "parameters": _parameter_counts(config),
        "latent_shape": list(config.latent_shape),
    }


def _cmd_models(args: argparse.Namespace) -> int:
    if args.models_command == "import-bundle":
        from models.catalogue.bundle import import_bundle

        dest = user_models_dir() / args.name
        config = ukb().model_copy(update={"name": args.name})
        registered = import_bundle(args.bundle_dir, dest, config, trust_unverified=args.trust_unverified)
        state = "verified" if registered.weights_verified else "UNVERIFIED"
        print(f"imported {args.name} ({state}) into {dest}")
        return 0
    if args.models_command == "register":
        destination = register_model(args.model_dir, args.name, link=args.link)
        print(f"registered {destination.name} at {destination} (the API and workers see it at once)")
        return 0
    summaries = [_entry_summary(e) for e in list_models()]
    if args.json:
        print(json.dumps(summaries, indent=2))
        return 0
    header = ("name", "status", "autoencoder", "unet", "image (voxel mm)", "age / ventricles / brain")
    print(f"{header[0]:<12} {header[1]:<11} {header[2]:>12} {header[3]:>12}  {header[4]:<22} {header[5]}")
    for s in summaries:
        c = s["conditioning"]
        status = "ready" if s["ready"] else "no weights"
        image = "x".join(map(str, s["image_shape"])) + f" ({s['voxel_size_mm'][0]:g})"
        ranges = " / ".join(
            f"{c[f]['min']:,.8g}-{c[f]['max']:,.8g} {c[f]['unit']}"
            for f in ("age", "ventricular_volume_mm3", "brain_volume_mm3")
        )
        p = s["parameters"]
        print(f"{s['name']:<12} {status:<11} {p['autoencoder']:>12,} {p['unet']:>12,}  {image:<22} {ranges}")
    return 0


def _parameter_counts(config: Any) -> dict[str, int]:
    from models.catalogue.networks import parameter_counts

    return parameter_counts(config)


def _local_measure(args: argparse.Namespace, model_dir: Path) -> Callable[[], VolumeMeasure] | None:
    """What ``--qc`` asks for on this machine (checked before torch loads): a loader of the model's volume
    probe, or ``None``."""
    has_probe = (model_dir / PROBE_JSON).is_file()
    qc = args.qc or ("probe" if has_probe else "none")
    if qc == "probe" and not has_probe:
        raise UsageError(f"--qc probe: {model_dir} has no volume probe ({PROBE_JSON}); use --qc none")
    if args.qc_tolerance is not None and not 0 < args.qc_tolerance <= 1:
        raise UsageError(f"--qc-tolerance must be in (0, 1], got {args.qc_tolerance}")
    if args.max_attempts is not None and not 1 <= args.max_attempts <= MAX_ATTEMPTS_LIMIT:
        raise UsageError(f"--max-attempts must be 1 to {MAX_ATTEMPTS_LIMIT}, got {args.max_attempts}")
    if (args.max_attempts or 1) > 1 and qc == "none":
        raise UsageError("--max-attempts needs a measure to judge by: use --qc probe or --qc samseg")
    if qc in ("none", "samseg"):  # SAMSEG runs in its own environment (_local_samseg)
        return None

    def load() -> VolumeMeasure:
        from models.evaluation.volumes import VolumeProbe

        return VolumeProbe.load(model_dir).measure_volume

    return load


def _local_samseg() -> Samseg:
    """SAMSEG in the measuring environment (``.venv-measure``, or ``BRAINSYNTH_MEASURE_PYTHON``), all cores to
    one run; checked before torch loads."""
    from service.localstack import ServerError
    from service.stack import measure_python

    try:
        return Samseg.in_environment(measure_python(), threads=os.cpu_count() or 1)
    except (ServerError, SegmentationError) as err:
        raise UsageError(f"--qc samseg: {err}") from err


def _cmd_sample(args: argparse.Namespace) -> int:
    # Everything the user typed is checked before torch is imported (a typo answers in well under a second).
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    require_empty_folder(args.out, "--out")
    model_dir = resolve_model_dir(args.model)
    config = read_model_config(model_dir, check_networks=False)
    for author in args.authors or []:
        if found := unprintable(author):
            raise UsageError(f"--authors {author!r} holds a control or invisible character ({found})")
    sampler, given_steps = resolve_sampling(args)
    steps = given_steps if given_steps is not None else DEFAULT_STEPS[sampler]
    check_sampler(sampler, steps, config.scheduler.num_train_timesteps)
    guidance = config.guidance_scale(resolve_guidance(args))
    subjects, like_report = cohort_subjects(args, config.conditioning)
    measure = _local_measure(args, model_dir)
    samseg = _local_samseg() if args.qc == "samseg" else None
    if samseg is not None:
        print(f"--qc samseg: SAMSEG {samseg.version} segments each subject as it is written (minutes a subject: "
              "~3-4 at 4 mm, ~10 at 1 mm on 2 cores)", file=sys.stderr)  # fmt: skip
    execution = Execution(args.precision, args.channels_last, args.compile, args.decode_slab, args.decode_offload)

    from tqdm import tqdm

    from models.dataset.writer import write_cohort
    from models.inference.pipeline import BrainLDMPipeline

    pipeline = BrainLDMPipeline.from_dir(model_dir, device=args.device, execution=execution)
    total = len(subjects) * (steps + 1)
    with tqdm(total=total, unit="step", desc=f"sampling {len(subjects)} subjects", file=sys.stderr) as bar:

        def progress(done: int, _total: int) -> None:
            bar.update(done - bar.n)

        write_cohort(
            pipeline,
            subjects,
            args.out,
            sampler=sampler,
            num_inference_steps=steps,
            batch_size=args.batch_size,
            dtype=args.dtype,
            extrapolate=args.extrapolate,
            guidance=guidance,
            authors=args.authors,
            like_report=like_report,
            measure=measure() if measure else None,
            qc_tolerance=args.qc_tolerance or DEFAULT_QC_TOLERANCE,
            max_attempts=args.max_attempts or 1,
            samseg=samseg,
            callback=progress,
        )
    guided = f", guidance {guidance:g}" if config.guidance is not None else ""
    print(f"wrote {len(subjects)} subjects ({config.name}, {sampler} {steps} steps{guided}) to {args.out.resolve()}")
    return 0
