"""The one results writer every command uses: CSV and JSON files rewritten atomically."""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import asdict

from .timing import environment

__all__ = ["ResultsWriter", "atomic_csv", "read_csv", "COLUMNS", "CONVERGENCE_COLUMNS", "KEY_FIELDS",
           "DUAL_KINDS", "row_key"]

DUAL_KINDS = ("zero", "fitted", "per_sample")
KEY_FIELDS = ("method", "dual_kind", "generator", "scale", "dims", "size", "levels", "batch", "temperature",
              "dtype", "device", "seed")
COLUMNS = ("cell", "status", "reason") + KEY_FIELDS + (
    "shapes", "n_cells", "timed_batch", "repeats", "fwd_ms", "bwd_ms", "total_ms", "per_sample_ms", "peak_mem_mb",
    "violation_max", "violation_mean", "max_abs_err", "primal_gap", "dual_gap", "iterations_mean",
    "iterations_max")
CONVERGENCE_COLUMNS = ("cell", "dims", "size", "levels", "temperature", "iteration", "violation_mean",
                       "violation_max", "dual_gap_mean", "dual_gap_max")


def row_key(row: dict) -> tuple:
    return tuple(str(row[k]) for k in KEY_FIELDS)

def _json_default(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return str(x)


def atomic_csv(path: str, columns, rows) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({c: _fmt(r.get(c, "")) for c in columns})
    os.replace(tmp, path)


def _fmt(v):
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    return v


def read_csv(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class ResultsWriter:
    """``bench.csv`` + ``bench.json`` in a folder, rewritten atomically after every row,
    so an interrupted run keeps every finished row."""

    def __init__(self, out_dir: str, config, device_env: str, resume: bool):
        self.out_dir = out_dir
        os.makedirs(out_dir, exist_ok=True)
        self.csv_path = os.path.join(out_dir, "bench.csv")
        self.json_path = os.path.join(out_dir, "bench.json")
        self.conv_path = os.path.join(out_dir, "convergence.csv")
        self.rows: list[dict] = []
        self.convergence: list[dict] = []
        if resume:
            self.rows = read_csv(self.csv_path)
            self.convergence = read_csv(self.conv_path)
        self.env = environment(device_env)
        self.config = asdict(config)

    def done(self) -> set:
        return {row_key(r) for r in self.rows if r.get("status") in ("ok", "skipped")}

    def add(self, row: dict) -> None:
        self.rows.append({c: row.get(c, "") for c in COLUMNS})
        self._flush()

    def add_convergence(self, rows: list[dict]) -> None:
        self.convergence.extend(rows)
        atomic_csv(self.conv_path, CONVERGENCE_COLUMNS, self.convergence)

    def _flush(self) -> None:
        atomic_csv(self.csv_path, COLUMNS, self.rows)
        tmp = self.json_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"environment": self.env, "config": self.config, "columns": list(COLUMNS),
                       "rows": self.rows}, f, indent=1, default=_json_default)
        os.replace(tmp, self.json_path)
