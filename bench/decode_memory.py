"""Peak memory and time of one decode with the ukb autoencoder architecture (random weights), whole volume
or slab by slab, measured in a fresh process so earlier work does not set the peak. Prints one JSON line.

    python -m bench.decode_memory --latent 20x28x20 [--slab 8 [--offload]] [--device cuda]

Peak: CUDA ``max_memory_allocated`` on a GPU; on a CPU, VmHWM (peak resident set) minus the resident set
before the decode. With ``--slab`` the whole-volume decode also runs afterwards to report the difference.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from models.catalogue.networks import build_autoencoder
from models.catalogue.presets import ukb
from models.inference.pipeline import resolve_device
from models.inference.slab_decode import SlabDecoder


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latent", default="20x28x20", help="latent grid; the ukb image is 8x it per axis")
    parser.add_argument("--slab", type=int, help="rows per slab (default: whole-volume decode)")
    parser.add_argument("--offload", action="store_true")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    autoencoder = build_autoencoder(ukb()).to(device).eval()
    latent = torch.randn(1, 3, *(int(n) for n in args.latent.split("x")), device=device)
    decode = SlabDecoder(autoencoder, args.slab, args.offload) if args.slab else autoencoder.decode_stage_2_outputs
    before = _status_mib("VmRSS")
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    start = time.perf_counter()
    with torch.inference_mode():
        image = decode(latent)
        if device.type == "cuda":
            torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _status_mib("VmHWM")
    result = {"seconds": seconds, "peak_mib": peak - before, "shape": list(image.shape[2:])}
    if args.slab:
        with torch.inference_mode():
            whole = autoencoder.decode_stage_2_outputs(latent)
        result["max_abs_diff"] = float((image.to(device) - whole).abs().max())
        result["max_abs_value"] = float(whole.abs().max())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
