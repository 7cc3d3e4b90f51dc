"""Entry point of the ``brainsynth`` script: routes each command to the layer that owns it, importing only
that layer (the client and ``up`` commands never load torch)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from service import COMMANDS as SERVICE_COMMANDS

USAGE = """usage: brainsynth COMMAND [options]   (brainsynth COMMAND --help for its options)

models and sampling on this machine:
  models     list registered models (models register DIR: add a trained one; models import-bundle DIR:
             import the released weights)
  sample     generate a cohort and write it as a BIDS dataset
  phantoms   write MNI152 phantoms with known volumes (training data)
  train      train a model's autoencoder, then its diffusion UNet (or the volume probe)
  evaluate   measure a model's conditioning fidelity and diversity (report + PNG sweeps)

the service:
  up         start Redis, S3 (SeaweedFS), workers and the API as local processes; Ctrl-C stops all
  submit     queue a cohort on the service (--wait to watch it)
  status     show a cohort's status
  wait       show progress until a cohort finishes
  download   download a finished cohort and unpack it
  cancel     cancel a cohort
  list       your cohorts, newest first
  subjects   a cohort's subjects: covariates, seed, status
  delete     delete a finished or canceled cohort

  --version  print the version
"""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if args else 2
    if args[0] == "--version":
        from models.bids import package_version

        print(f"brainsynth {package_version()}")
        return 0
    if args[0] in SERVICE_COMMANDS:
        from service.cli import main as service_main

        return service_main(args)
    from models.cli import main as models_main

    return models_main(args)


if __name__ == "__main__":
    sys.exit(main())
