"""The ``brainsynth`` commands of the service: ``up`` (the whole stack as local processes) and the HTTP
client commands (submit, status, wait, download, cancel, list, subjects, delete). Never imports torch; the
client (httpx) and the stack load when their command runs."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brainsynth.arguments import UsageError, add_cohort_arguments, cohort_request

if TYPE_CHECKING:
    from service.client import BrainSynthClient

DEFAULT_URL = "http://127.0.0.1:8000"


def _tenant_key(text: str) -> tuple[str, str]:
    tenant, sep, key = text.partition("=")
    if not sep or not tenant or not key:
        raise argparse.ArgumentTypeError(f"expected TENANT=KEY, got {text!r}")
    return tenant, key


def register(commands: argparse._SubParsersAction) -> None:
    """Add the service's commands to the ``brainsynth`` parser (each sets ``run``)."""
    up = commands.add_parser(
        "up", help="start Redis, S3 (SeaweedFS), workers and the API as local processes; Ctrl-C stops all"
    )
    up.set_defaults(run=_cmd_up)
    up.add_argument("--host", default="127.0.0.1", help="API bind address (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
    up.add_argument("--data-dir", type=Path, default=Path("brainsynth-data"), help="Redis, S3 data and logs")
    up.add_argument(
        "--api-key-file", type=Path, metavar="FILE",
        help="tenants' API keys, one TENANT=KEY per line (or JSON); keeps keys out of `ps` (preferred)",
    )  # fmt: skip
    up.add_argument(
        "--api-key", type=_tenant_key, action="append", default=[], metavar="TENANT=KEY",
        help="a tenant and its API key (repeatable; visible to local users in `ps`: prefer --api-key-file; "
        "default: one tenant 'local' with a key printed at start)",
    )  # fmt: skip
    up.add_argument("--workers", type=int, default=1, help="worker processes, one per GPU (default 1)")
    up.add_argument(
        "--measure-workers", type=int, default=0, metavar="N",
        help="SAMSEG measuring worker processes (CPU, their own environment: make install), needed by cohorts with "
        "qc samseg (default 0: none)",
    )  # fmt: skip

    def client_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--url", default=os.environ.get("BRAINSYNTH_URL", DEFAULT_URL), help="API URL ($BRAINSYNTH_URL)"
        )
        sub.add_argument(
            "--api-key", default=os.environ.get("BRAINSYNTH_API_KEY"), help="API key ($BRAINSYNTH_API_KEY)"
        )

    submit = commands.add_parser("submit", help="queue a cohort on the service (--wait to watch it)")
    submit.set_defaults(run=_with_client(_cmd_submit))
    add_cohort_arguments(
        submit,
        seed_required=False,
        model_help="a model registered on the server (`brainsynth models` there; a local directory: "
        "`brainsynth models register DIR` on the server first)",
    )
    submit.add_argument("--name", help="dataset name in dataset_description.json")
    submit.add_argument("--idempotency-key", help="a retry with the same key returns the same cohort")
    submit.add_argument("--wait", action="store_true", help="then show progress until it finishes")
    client_options(submit)
    for name, text in (("status", "show a cohort's status"), ("wait", "show progress until a cohort finishes"),
                       ("cancel", "cancel a cohort (finished subjects stay)")):  # fmt: skip
        sub = commands.add_parser(name, help=text)
        sub.set_defaults(run=_with_client(_CLIENT_COMMANDS[name]))
        sub.add_argument("cohort_id")
        sub.add_argument("--json", action="store_true", help="print the status as JSON")
        client_options(sub)
    listing = commands.add_parser("list", help="your cohorts, newest first")
    listing.set_defaults(run=_with_client(_cmd_list))
    listing.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    listing.add_argument("--json", action="store_true", help="print them as JSON")
    client_options(listing)
    subjects = commands.add_parser("subjects", help="a cohort's subjects: covariates, seed, status")
    subjects.set_defaults(run=_with_client(_cmd_subjects))
    subjects.add_argument("cohort_id")
    subjects.add_argument("--json", action="store_true", help="print them as JSON (with download URLs)")
    client_options(subjects)
    delete = commands.add_parser("delete", help="delete a finished or canceled cohort and all its files")
    delete.set_defaults(run=_with_client(_cmd_delete))
    delete.add_argument("cohort_id")
    client_options(delete)
    download = commands.add_parser("download", help="download a finished cohort and unpack it")
    download.set_defaults(run=_with_client(_cmd_download))
    download.add_argument("cohort_id")
    download.add_argument("--out", type=Path, required=True, help="folder to unpack into (cohort-ID/ inside)")
    download.add_argument("--keep-zip", action="store_true", help="keep the ZIP instead of unpacking it")
    download.add_argument("--part", type=int, metavar="I", help="only part I of --parts (1-based); with --parts")
    download.add_argument(
        "--parts", type=int, metavar="K", help="split into K ZIPs of whole subjects (all K in one --out: the lot)"
    )
    client_options(download)


def _print_status(status: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(status, indent=2))
        return
    progress = status["progress"]
    line = f"{status['id']}  {status['status']:<9}  {progress['done']}/{progress['total']} subjects"
    if status.get("request", {}).get("qc") == "samseg":
        line += f", {progress.get('measured', 0)}/{progress['total']} measured"
    if status.get("request", {}).get("name"):
        line += f"  {status['request']['name']}"
    print(line + (f"  error: {status['error']}" if status.get("error") else ""))


def _watch(client: BrainSynthClient, cohort_id: str) -> dict[str, Any]:
    from tqdm import tqdm

    from service.client import FINAL_STATES

    first = client.status(cohort_id)
    with tqdm(total=first["progress"]["total"], unit="subject", desc=cohort_id[:8], file=sys.stderr) as bar:

        def update(status: dict[str, Any]) -> None:
            progress = status["progress"]
            bar.update(progress["done"] - bar.n)
            measuring = status.get("request", {}).get("qc") == "samseg"
            bar.set_postfix_str(status["status"] + (f", {progress['measured']}/{progress['total']} measured by "
                                                    "SAMSEG" if measuring else ""))  # fmt: skip

        update(first)
        final = first if first["status"] in FINAL_STATES else client.wait(cohort_id, on_progress=update)
    return final


def _cmd_up(args: argparse.Namespace) -> int:
    import secrets

    from service.stack import LocalStack

    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    if args.measure_workers < 0:
        raise UsageError(f"--measure-workers must be 0 or more, got {args.measure_workers}")
    given = dict(args.api_key)
    if args.api_key_file is not None:
        from service.settings import parse_api_keys

        try:
            given = {**parse_api_keys(args.api_key_file.read_text()), **given}
        except (OSError, ValueError) as err:
            raise UsageError(f"--api-key-file {args.api_key_file}: {err}") from err
        if not given:
            raise UsageError(f"--api-key-file {args.api_key_file} lists no TENANT=KEY lines")
    keys = given or {"local": secrets.token_urlsafe(18)}
    stack = LocalStack(args.data_dir.resolve(), keys, host=args.host, port=args.port, workers=args.workers,
                       measure_workers=args.measure_workers)  # fmt: skip
    print(f"starting BrainSynth in {stack.data_dir} ...", file=sys.stderr)

    def terminate(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    try:
        stack.start()
        print(f"BrainSynth API at {stack.url} (docs: {stack.url}/docs); logs in {stack.logs}")
        for tenant, key in keys.items():
            shown = key if not given else "(as given)"
            print(f"  tenant {tenant}: BRAINSYNTH_API_KEY={shown}")
        placement = (
            f" on GPUs {', '.join(stack.gpus[i % len(stack.gpus)] for i in range(args.workers))}" if stack.gpus else ""
        )
        if stack.gpus and args.workers > len(stack.gpus):
            print(f"warning: {args.workers} workers share {len(stack.gpus)} GPU(s)", file=sys.stderr)
        measuring = f", {args.measure_workers} SAMSEG measuring worker(s)" if args.measure_workers else ""
        print(f"  {args.workers} worker(s){placement}{measuring}; Ctrl-C stops everything", flush=True)
        while True:
            for what in stack.supervise_once():
                print(f"restarted {what}", file=sys.stderr, flush=True)
            time.sleep(1.0)
    except KeyboardInterrupt:
        return 0
    finally:
        print("stopping ...", file=sys.stderr)
        stack.stop()


def _cmd_list(client: BrainSynthClient, args: argparse.Namespace) -> int:
    limit, as_json = args.limit, args.json
    if limit < 1:
        raise UsageError(f"--limit must be at least 1, got {limit}")
    cohorts: list[dict[str, Any]] = []
    token = None
    while len(cohorts) < limit:
        page = client.list(page_size=min(100, limit - len(cohorts)), page_token=token)
        cohorts += page["cohorts"]
        token = page.get("next_page_token")
        if not token:
            break
    if as_json:
        print(json.dumps(cohorts, indent=2))
        return 0
    for status in cohorts:
        print(f"{status['created_at'][:19]}  ", end="")
        _print_status(status, False)
    return 0


def _print_subjects(rows: list[dict[str, Any]]) -> None:
    header = ("participant_id", "sex", "age", "ventricular_mm3", "brain_mm3", "seed", "status")
    print(f"{header[0]:<15} {header[1]:<4} {header[2]:>6} {header[3]:>16} {header[4]:>12} {header[5]:>20} {header[6]}")
    for r in rows:
        print(f"{r['participant_id']:<15} {r['sex']:<4} {r['age']:>6.1f} {r['ventricular_volume_mm3']:>16,.0f} "
              f"{r['brain_volume_mm3']:>12,.0f} {r['seed']:>20} {r['status']}")  # fmt: skip


def _with_client(command: Callable[[BrainSynthClient, argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``command`` run with a client of the API at ``--url`` with ``--api-key`` (closed afterwards)."""

    def run(args: argparse.Namespace) -> int:
        from service.client import BrainSynthClient

        with BrainSynthClient(args.url, args.api_key or "") as client:
            return command(client, args)

    return run


def _cmd_submit(client: BrainSynthClient, args: argparse.Namespace) -> int:
    if (Path(args.model) / "model.json").is_file():
        raise UsageError(
            f"--model {args.model} is a local model directory; the service samples registered models: "
            f"run `brainsynth models register {args.model}` where the service runs, then "
            "--model NAME (or sample locally with `brainsynth sample --model DIR`)"
        )
    request = cohort_request(args)
    if args.name:
        request["name"] = args.name
    status = client.submit(request, idempotency_key=args.idempotency_key)
    print(status["id"])
    if args.wait:
        status = _watch(client, status["id"])
        _print_status(status, False)
        return 0 if status["status"] == "succeeded" else 1
    return 0


def _cmd_status(client: BrainSynthClient, args: argparse.Namespace) -> int:
    _print_status(client.status(args.cohort_id), args.json)
    return 0


def _cmd_wait(client: BrainSynthClient, args: argparse.Namespace) -> int:
    status = _watch(client, args.cohort_id)
    _print_status(status, args.json)
    return 0 if status["status"] == "succeeded" else 1


def _cmd_cancel(client: BrainSynthClient, args: argparse.Namespace) -> int:
    _print_status(client.cancel(args.cohort_id), args.json)
    return 0


def _cmd_subjects(client: BrainSynthClient, args: argparse.Namespace) -> int:
    rows = client.subjects(args.cohort_id)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    _print_subjects(rows)
    return 0


def _cmd_delete(client: BrainSynthClient, args: argparse.Namespace) -> int:
    client.delete(args.cohort_id)
    print(f"deleted {args.cohort_id}")
    return 0


def _download_part(args: argparse.Namespace) -> tuple[int, int] | None:
    """``--part I --parts K`` as (I, K); neither: the whole archive."""
    if args.part is None and args.parts is None:
        return None
    if args.part is None or args.parts is None:
        raise UsageError("--part and --parts go together: --part 1 --parts 4 is the first of 4")
    if not 1 <= args.part <= args.parts:
        raise UsageError(f"--part must be between 1 and --parts ({args.parts}), got {args.part}")
    return args.part, args.parts


def _cmd_download(client: BrainSynthClient, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    part = _download_part(args)
    with tqdm(unit="B", unit_scale=True, desc="download", file=sys.stderr) as bar:

        def total(size: int) -> None:
            bar.total = size
            bar.refresh()

        path = client.download(args.cohort_id, args.out, on_bytes=bar.update, extract=not args.keep_zip,
                               on_total=total, part=part)  # fmt: skip
    print(path.resolve())
    return 0


_CLIENT_COMMANDS = {"status": _cmd_status, "wait": _cmd_wait, "cancel": _cmd_cancel}
