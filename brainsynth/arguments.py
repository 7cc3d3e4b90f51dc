"""Command-line pieces shared by ``brainsynth sample`` (local) and ``brainsynth submit`` (the service's
client): one set of cohort options, turned into subjects or into an API request. Imports no torch."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from models.cohort.conditioning import EXTRAPOLATE_HINT, ConditioningRanges
from models.cohort.design import (
    DEFAULT_STEPS,
    DTYPES,
    FEWER_STEPS_HINT,
    QC_MEASURES,
    SAMPLERS,
    CohortDesign,
    Span,
    SubjectSpec,
    default_steps_text,
    design_subjects,
    normalise_sex,
    read_subjects_tsv,
    tsv_guidance,
    tsv_has_column,
    tsv_sampling,
)
from models.cohort.like import ReferenceTable, like_subjects


class UsageError(Exception):
    """Bad command-line arguments (printed as one line, exit code 2)."""


#: Hints of the model layer and the API as the command line spells them.
_FLAG_WORDING = {
    EXTRAPOLATE_HINT: "pass --extrapolate to go beyond it",
    FEWER_STEPS_HINT: "use --sampler ddim or pndm for fewer steps",
}
#: Each request field (its path in a ``POST /v1/cohorts`` body, or the model layer's ``field``) as the flag that
#: sets it: one mapping for the API's 422s, the local request check and the model layer's errors.
FIELD_FLAGS: dict[tuple[str, ...], str] = {
    ("model",): "--model",
    ("n_subjects",): "--n",
    ("seed",): "--seed",
    ("name",): "--name",
    ("authors",): "--authors",
    ("dtype",): "--dtype",
    ("extrapolate",): "--extrapolate",
    ("sampler",): "--sampler",
    ("sampler", "name"): "--sampler",
    ("sampler", "steps"): "--steps",
    ("subjects",): "--subjects",
    ("like",): "--like",
    ("qc",): "--qc",
    ("qc_tolerance",): "--qc-tolerance",
    ("max_attempts",): "--max-attempts",
    ("guidance",): "--guidance",
    ("covariates", "age"): "--age/--age-range",
    ("covariates", "ventricular_volume_mm3"): "--ventricular-volume/--ventricular-range",
    ("covariates", "brain_volume_mm3"): "--brain-volume/--brain-range",
    ("covariates", "sex"): "--sex/--female-fraction",
    ("covariates", "sex", "female_fraction"): "--female-fraction",
    ("female_fraction",): "--female-fraction",
    ("Idempotency-Key",): "--idempotency-key",
}


def flag_for(loc: Sequence[str | int]) -> str:
    """The flag for an error location (``["body", "sampler", "steps"]`` -> ``--steps``; a listed subject ->
    ``--subjects row N``, N the file's line); a model-layer covariate field (``age``) counts as one."""
    path = [part for part in loc if part not in ("body", "header", "query")]
    if len(path) >= 2 and path[0] == "subjects" and isinstance(path[1], int):
        return f"--subjects row {path[1] + 2}"
    if len(path) == 1 and ("covariates", str(path[0])) in FIELD_FLAGS:
        return FIELD_FLAGS[("covariates", str(path[0]))]
    for length in range(len(path), 0, -1):
        flag = FIELD_FLAGS.get(tuple(str(part) for part in path[:length]))
        if flag is not None:
            return flag
    return ".".join(str(part) for part in path) or "request"


def _plain(message: str) -> str:
    """pydantic's wording without its prefixes (``Input should be ...`` -> ``should be ...``)."""
    return message.removeprefix("Value error, ").removeprefix("Input ")


def field_errors_message(errors: Sequence[dict[str, Any]]) -> str:
    """Invalid request fields (the API's 422 ``detail``, or pydantic's errors) as flags and messages."""
    parts = []
    for error in errors:
        text = f"{flag_for(error.get('loc', []))}: {_plain(str(error.get('msg', 'invalid')))}"
        if "input" in error and not isinstance(error["input"], (dict, list)):
            text += f", got {error['input']!r}"
        parts.append(text)
    return cli_message("; ".join(parts))


def cli_message(err: BaseException | str) -> str:
    """A message in the command line's words: a model-layer error's field as its flag (``n_subjects: ...``
    -> ``--n: ...``), and ``--extrapolate`` where the API says ``extrapolate``."""
    message = str(err)
    field = getattr(err, "field", None)
    if isinstance(field, str) and not isinstance(err, str):
        flag = flag_for(field.split("."))
        message = f"{flag}: {message.removeprefix(f'{field}: ')}" if flag != field else message
    for api, cli in _FLAG_WORDING.items():
        message = message.replace(api, cli)
    return message


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are :class:`UsageError` (one line, the caller decides the exit)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def add_cohort_arguments(
    parser: argparse.ArgumentParser,
    *,
    seed_required: bool = True,
    model_help: str = "registered model name or model directory",
) -> None:
    """Model, size, seed, covariates (physical units), explicit subjects, sampler, dtype, extrapolation."""
    parser.add_argument("--model", required=True, help=model_help)
    parser.add_argument("--n", type=int, help="number of subjects (not needed with --subjects)")
    seed_help = "cohort seed (subject seeds derive from it)" + (
        "; required with --n (a --subjects file with a seed column carries its own)" if seed_required
        else "; default: drawn by the server"
    )  # fmt: skip
    parser.add_argument("--seed", type=int, help=seed_help)
    parser.set_defaults(seed_required=seed_required)
    age = parser.add_mutually_exclusive_group()
    age.add_argument("--age", type=float, metavar="A", help="age in years for every subject")
    age.add_argument("--age-range", type=float, nargs=2, metavar=("LO", "HI"), help="uniform age range, years")
    parser.add_argument(
        "--sex", type=_sex_option, default="mixed", metavar="{F,M,mixed}",
        help="F or M (female/male, any case) for every subject, or mixed (default)",
    )  # fmt: skip
    parser.add_argument(
        "--female-fraction", type=float, default=0.5, help="share of females when --sex mixed (default 0.5)"
    )
    vent = parser.add_mutually_exclusive_group()
    vent.add_argument("--ventricular-volume", type=float, metavar="V", help="ventricular CSF volume, mm3")
    vent.add_argument("--ventricular-range", type=float, nargs=2, metavar=("LO", "HI"), help="uniform range, mm3")
    brain = parser.add_mutually_exclusive_group()
    brain.add_argument("--brain-volume", type=float, metavar="B", help="head-size-normalised brain volume, mm3")
    brain.add_argument("--brain-range", type=float, nargs=2, metavar=("LO", "HI"), help="uniform range, mm3")
    parser.add_argument("--subjects", type=Path, metavar="FILE.tsv", help="explicit subjects (participants.tsv format)")
    parser.add_argument(
        "--like", type=Path, metavar="FILE.tsv",
        help="draw the covariates like this reference table (a real study's participants.tsv: age, sex, and the "
        "volumes when present), keeping its marginals and correlations (Gaussian copula); with --n",
    )  # fmt: skip
    parser.add_argument(
        "--sampler", choices=SAMPLERS, help="default ddim (a --subjects file that records its sampler: that one)"
    )
    parser.add_argument("--steps", type=int, help=f"denoising steps (default: {default_steps_text()})")
    parser.add_argument(
        "--guidance", type=float, metavar="W",
        help="classifier-free guidance scale (eps_null + W (eps_cond - eps_null)): larger follows the conditioning "
        "more closely; default the model's (`brainsynth models`); models without condition dropout take 1 only",
    )  # fmt: skip
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="NIfTI data type")
    parser.add_argument("--extrapolate", action="store_true", help="allow covariates beyond the training range")
    parser.add_argument("--authors", nargs="+", metavar="NAME", help="dataset authors (dataset_description.json)")
    parser.add_argument(
        "--qc", choices=QC_MEASURES,
        help="measure each subject's volumes back: probe (the model's volume probe; default where the model has "
        "one, else none), samseg (FreeSurfer's SAMSEG, minutes a subject: the service's measuring workers; "
        "brainsynth up --measure-workers N), none",
    )  # fmt: skip
    parser.add_argument(
        "--qc-tolerance", type=float, metavar="FRACTION",
        help="relative difference per volume that still passes QC (default 0.25)",
    )  # fmt: skip
    parser.add_argument(
        "--max-attempts", type=int, metavar="N",
        help="generate a subject measured outside --qc-tolerance again with its next attempt's seed, up to N "
        "attempts in all, then keep it flagged (default 1; --qc probe or samseg)",
    )  # fmt: skip


def _sex_option(text: str) -> str:
    """``--sex``: F/M in any case, female/male, or mixed; stored as BIDS F/M."""
    if text.strip().lower() == "mixed":
        return "mixed"
    try:
        return normalise_sex(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{err}, or mixed") from err


def _span(value: float | None, pair: Sequence[float] | None) -> Span | None:
    if value is not None:
        return Span.fixed(value)
    if pair is not None:
        return Span(pair[0], pair[1])
    return None


def _covariate_flags_given(args: argparse.Namespace) -> bool:
    fixed = [args.age, args.age_range, args.ventricular_volume, args.ventricular_range, args.brain_volume,
             args.brain_range]  # fmt: skip
    return any(v is not None for v in fixed) or args.sex != "mixed"


def _reference(args: argparse.Namespace) -> ReferenceTable | None:
    """The ``--like`` reference table (checked against the other options), or ``None``."""
    if args.like is None:
        return None
    if args.subjects is not None or _covariate_flags_given(args):
        raise UsageError("--like draws every covariate: do not combine it with --subjects, --age/--sex/--*-volume")
    if args.n is None:
        raise UsageError("--like needs --n (how many subjects to draw like the table)")
    return ReferenceTable.from_tsv(args.like)


def _explicit_subjects(args: argparse.Namespace) -> list[SubjectSpec] | None:
    """The subjects of ``--subjects`` (checked against the other options), or ``None``."""
    if args.subjects is None:
        if args.n is None:
            raise UsageError("--n is required unless --subjects is given")
        return None
    if _covariate_flags_given(args):
        raise UsageError("--subjects lists every covariate: do not combine it with --age/--sex/--*-volume/--*-range")
    if not Path(args.subjects).is_file():
        raise UsageError(f"--subjects {args.subjects} does not exist")
    if args.seed_required and args.seed is None and not tsv_has_column(args.subjects, "seed"):
        raise UsageError(f"--seed is required: {args.subjects} has no seed column to regenerate its subjects from")
    subjects = read_subjects_tsv(args.subjects, args.seed or 0)
    if args.n is not None and args.n != len(subjects):
        raise UsageError(f"--n {args.n} but {args.subjects} lists {len(subjects)} subjects")
    return subjects


def _spans(args: argparse.Namespace) -> dict[str, Span | None]:
    return {
        "age": _span(args.age, args.age_range),
        "ventricular_volume_mm3": _span(args.ventricular_volume, args.ventricular_range),
        "brain_volume_mm3": _span(args.brain_volume, args.brain_range),
    }


def _female_fraction(args: argparse.Namespace) -> float:
    return {"F": 1.0, "M": 0.0}.get(args.sex, args.female_fraction)


def resolve_sampling(args: argparse.Namespace) -> tuple[str, int | None]:
    """The sampler and steps (``None``: the sampler's default) to use: as given, or for a ``--subjects``
    file that records them (a participants.tsv of an earlier cohort), the file's; other settings than the
    file's would make other images than its subjects, so they are refused rather than silently used."""
    recorded = tsv_sampling(args.subjects) if args.subjects is not None and Path(args.subjects).is_file() else None
    if recorded is None:
        return args.sampler or "ddim", args.steps
    sampler, steps = recorded
    if args.sampler not in (None, sampler) or args.steps not in (None, steps):
        asked_sampler = args.sampler or sampler
        default = DEFAULT_STEPS[asked_sampler] if args.sampler not in (None, sampler) else steps
        asked = f"{asked_sampler} {args.steps if args.steps is not None else default}"
        raise UsageError(
            f"{args.subjects} was made with {sampler} {steps} steps, and --sampler/--steps ask for {asked}: its "
            "subjects would come out as other images. Drop --sampler/--steps to regenerate them, or delete the "
            "file's sampler and steps columns to sample new ones"
        )
    return sampler, steps


def resolve_guidance(args: argparse.Namespace) -> float | None:
    """The guidance scale to use (``None``: the model's default): as given, or for a ``--subjects`` file that
    records one, the file's (another would make other images than its subjects: refused)."""
    recorded = tsv_guidance(args.subjects) if args.subjects is not None and Path(args.subjects).is_file() else None
    if recorded is None:
        return args.guidance
    if args.guidance not in (None, recorded):
        raise UsageError(
            f"{args.subjects} was made with guidance {recorded:g}, and --guidance asks for {args.guidance:g}: its "
            "subjects would come out as other images. Drop --guidance to regenerate them, or delete the file's "
            "guidance column to sample new ones"
        )
    return recorded


def cohort_subjects(
    args: argparse.Namespace, ranges: ConditioningRanges
) -> tuple[list[SubjectSpec], dict[str, Any] | None]:
    """Every subject the options describe (for local sampling), and with ``--like`` the comparison with the
    reference table (:func:`models.cohort.like.like_report`)."""
    reference = _reference(args)
    explicit = _explicit_subjects(args)
    if explicit is not None:
        return explicit, None
    if args.seed is None:
        raise UsageError("--seed is required with --n: every subject's seed derives from it")
    if reference is not None:
        return like_subjects(reference, args.n, args.seed, ranges, extrapolate=args.extrapolate)
    design = CohortDesign(args.n, args.seed, _female_fraction(args), **_spans(args))
    return design_subjects(design, ranges, extrapolate=args.extrapolate), None


def cohort_request(args: argparse.Namespace) -> dict[str, Any]:
    """The ``POST /v1/cohorts`` body the options describe (the server validates and draws the subjects)."""
    request: dict[str, Any] = {"model": args.model, "dtype": args.dtype, "extrapolate": args.extrapolate}
    for field in ("qc", "qc_tolerance", "max_attempts"):
        if getattr(args, field) is not None:
            request[field] = getattr(args, field)
    if (guidance := resolve_guidance(args)) is not None:
        request["guidance"] = guidance
    if args.authors:
        request["authors"] = args.authors
    sampler, steps = resolve_sampling(args)
    request["sampler"] = {"name": sampler, **({"steps": steps} if steps is not None else {})}
    if args.seed is not None:
        request["seed"] = args.seed
    explicit = _explicit_subjects(args)
    if explicit is not None:
        request["subjects"] = [
            {
                "age": s.covariates.age,
                "sex": s.covariates.sex,
                "ventricular_volume_mm3": s.covariates.ventricular_volume_mm3,
                "brain_volume_mm3": s.covariates.brain_volume_mm3,
                "seed": s.seed,
            }
            for s in explicit
        ]
    elif (reference := _reference(args)) is not None:
        request["n_subjects"] = args.n
        request["like"] = {"rows": reference.rows()}
    else:
        request["n_subjects"] = args.n
        covariates: dict[str, Any] = {"sex": {"female_fraction": _female_fraction(args)}}
        for field, span in _spans(args).items():
            if span is not None:
                covariates[field] = {"value": span.lo} if span.lo == span.hi else {"min": span.lo, "max": span.hi}
        request["covariates"] = covariates
    return checked_request(request)


def checked_request(request: dict[str, Any]) -> dict[str, Any]:
    """``request`` checked against the API's own schema (:class:`service.schemas.CohortRequest`) before it is
    sent, so a bad flag is named as the flag (exit 2) without a round trip; the server checks the rest
    (the model's ranges, its limits) and its 422s are named the same way (:func:`field_errors_message`)."""
    from pydantic import ValidationError

    from service.schemas import CohortRequest

    try:
        CohortRequest.model_validate(request)
    except ValidationError as err:
        raise UsageError(field_errors_message(err.errors(include_url=False))) from err
    return request
