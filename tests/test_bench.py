"""The benchmark's baseline (the bundle's loop) produces what the project's sampler produces."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.baseline import bundle_loop
from bench.run import format_table
from models.cohort.conditioning import Covariates, normalise
from models.inference.pipeline import BrainLDMPipeline


def test_bundle_loop_matches_the_project_sampler(tiny_model_dir: Path) -> None:
    pipeline = BrainLDMPipeline.from_dir(tiny_model_dir)
    covariates = Covariates("F", 60.0, 30000.0, 1.5e6)
    ours = pipeline([covariates], [42], sampler="ddim", num_inference_steps=10)[0].volume
    vector = list(normalise(covariates, pipeline.config.conditioning))
    theirs = bundle_loop(pipeline, vector, 42, steps=10)[0, 0].numpy()
    assert theirs.shape == ours.shape
    assert np.abs(theirs - ours).max() <= 1e-4


def test_table_lists_only_columns_in_use() -> None:
    table = format_table([{"row": "a", "s_per_brain": 1.5}, {"row": "b", "mb_per_s": 300}])
    assert table.splitlines()[0] == "| row | s_per_brain | mb_per_s |"
    assert "| a | 1.5 |  |" in table
    whole = format_table([{"row": "whole process", "wall_s": 5.1, "speedup": 1.8}])
    assert whole.splitlines()[0] == "| row | wall_s | speedup |"  # every column a row uses is shown
    guided = format_table([{"row": "g", "s_per_brain": 1.4, "cost_vs_unguided": 1.86}])
    assert guided.splitlines()[0] == "| row | s_per_brain | cost_vs_unguided |"  # one the list does not name


def test_io_rows_time_a_real_worker_task(tiny_model_dir: Path) -> None:
    from bench.run import io_rows

    pipeline = BrainLDMPipeline.from_dir(tiny_model_dir)
    rows = {row["row"]: row for row in io_rows(pipeline, lambda _message: None)}
    task = next(row for name, row in rows.items() if name.startswith("worker task"))
    assert task["sampling_share_percent"] > 0  # a ratio of two timings: no bound asserted (noise)
    full_size = rows["NIfTI encode + gzip level 1, 160x224x160 (as shipped)"]
    assert full_size["bytes_in"] > 160 * 224 * 160 * 4 and full_size["gzip_ratio"] > 1


def test_decode_memory_rows_measure_both_decoders_in_fresh_processes() -> None:
    import torch

    from bench.run import decode_rows

    rows = decode_rows(torch.device("cpu"), "2x3x2", lambda _message: None)
    whole, slab = rows
    assert whole["row"].startswith("decode 16x24x16") and "whole volume" in whole["row"]
    assert whole["peak_mib"] > 0 and slab["peak_mib"] > 0
    assert 0 < slab["max_abs_diff_vs_whole"] < 1e-3  # the same volume, computed another way
