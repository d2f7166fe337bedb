"""``cop bench``: the paper's evaluation protocol, simulated on a folder of annotated images.

Per image:
* typed sets: one click per cell type present; untyped sets: one click per image;
* each click sits on a randomly chosen ground-truth instance (of that type), at its centroid, or
  at the instance pixel nearest the centroid when the centroid falls outside a concave instance;
* the random choice is seeded by (seed, image name), so runs are reproducible;
* the per-instance upper bound decodes one click on every ground-truth instance, assembled with
  the same overlap guard and NMS as CoP.
The image is encoded once and reused for the upper bound and every seed.
"""

from __future__ import annotations

import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from scipy import ndimage as ndi

from cop_server.cop import CellType, Click, CopParams, run_cop
from cop_server.cop.pipeline import decode_points
from cop_server.datasets import Sample, find_datasets, image_paths, load_sample
from cop_server.metrics import instance_metrics
from cop_server.models.base import PromptableModel

METRICS = ("aji", "dice", "pq")


def instance_click_points(instances: np.ndarray, ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One click per instance: its centroid, snapped into the instance when it falls outside.

    Returns (ids, points (n, 2) image x, y at pixel centres).
    """
    if ids is None:
        ids = np.unique(instances)
        ids = ids[ids > 0]
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) == 0:
        return ids, np.zeros((0, 2))
    cents = np.asarray(ndi.center_of_mass(np.ones_like(instances, dtype=np.float32), instances, ids)).reshape(-1, 2)
    rows = np.clip(np.rint(cents[:, 0]).astype(np.int64), 0, instances.shape[0] - 1)
    cols = np.clip(np.rint(cents[:, 1]).astype(np.int64), 0, instances.shape[1] - 1)
    inside = instances[rows, cols] == ids
    for k in np.flatnonzero(~inside):  # rare: concave instances only
        yy, xx = np.nonzero(instances == ids[k])
        j = int(np.argmin((yy - cents[k, 0]) ** 2 + (xx - cents[k, 1]) ** 2))
        rows[k], cols[k] = yy[j], xx[j]
    return ids, np.stack([cols + 0.5, rows + 0.5], axis=1)


def protocol_clicks(sample: Sample, seed: int) -> tuple[list[Click], list[CellType]]:
    """The simulated user's clicks for one image (see module docstring)."""
    rng = np.random.default_rng([seed, zlib.crc32(sample.name.encode())])
    if sample.types is None:
        ids, pts = instance_click_points(sample.instances)
        if len(ids) == 0:
            return [], [CellType("cell")]
        k = int(rng.integers(len(ids)))
        return [Click(float(pts[k, 0]), float(pts[k, 1]), 0)], [CellType("cell")]
    by_type = sample.instance_types()
    present = sorted({t for t in by_type.values() if t > 0})
    names = sample.type_names or {}
    types = [CellType(names.get(t, f"type {t}")) for t in present]
    clicks = []
    for ti, t in enumerate(present):
        ids = np.array(sorted(i for i, tt in by_type.items() if tt == t))
        k = int(rng.integers(len(ids)))
        _, pt = instance_click_points(sample.instances, ids[k : k + 1])
        clicks.append(Click(float(pt[0, 0]), float(pt[0, 1]), ti))
    return clicks, types


@dataclass
class ImageScore:
    dataset: str
    name: str
    instances: int
    clicks: int
    cop: dict[str, float]  # mean over seeds
    cop_std: dict[str, float]
    upper: dict[str, float]
    encode_seconds: float
    cop_seconds: float  # per seed: HSG + FPR + decoding + assembly
    upper_seconds: float
    type_accuracy: float | None = None
    warnings: list[str] = field(default_factory=list)


def type_accuracy(sample: Sample, labels: np.ndarray, instances, types: list[CellType]) -> float | None:
    """Share of predicted instances matched (IoU > 0.5) to a GT instance whose type they carry."""
    if sample.types is None or not instances:
        return None
    gt_types = sample.instance_types()
    names = sample.type_names or {}
    name_to_t = {names.get(t, f"type {t}"): t for t in set(gt_types.values())}
    gt = sample.instances.ravel()
    pr = labels.ravel()
    both = (gt > 0) & (pr > 0)
    pairs, inter = np.unique(np.stack([gt[both], pr[both]]), axis=1, return_counts=True)
    gt_area = np.bincount(gt)
    pr_area = np.bincount(pr)
    iou = inter / (gt_area[pairs[0]] + pr_area[pairs[1]] - inter)
    matched = iou > 0.5
    if not matched.any():
        return None
    by_label = {inst.label: inst for inst in instances}
    right = [
        name_to_t.get(types[by_label[int(p)].type_index].name) == gt_types.get(int(g))
        for g, p in zip(pairs[0][matched], pairs[1][matched])
    ]
    return float(np.mean(right))


def evaluate_image(
    model: PromptableModel, sample: Sample, dataset: str, seeds: int, params: CopParams
) -> ImageScore:
    t0 = time.perf_counter()
    features = model.encode(sample.image)
    encode_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    _, gt_points = instance_click_points(sample.instances)
    up_labels, _, _ = decode_points(model, features, gt_points, params)
    upper = instance_metrics(sample.instances, up_labels)
    upper_s = time.perf_counter() - t0

    per_seed: list[dict[str, float]] = []
    accs: list[float] = []
    cop_s: list[float] = []
    warnings: list[str] = []
    n_clicks = 0
    for seed in range(seeds):
        clicks, types = protocol_clicks(sample, seed)
        n_clicks = len(clicks)
        t1 = time.perf_counter()
        if clicks:
            result = run_cop(model, features, clicks, types, params)
            labels = result.labels
            warnings.extend(result.warnings)
            acc = type_accuracy(sample, labels, result.instances, types)
            if acc is not None:
                accs.append(acc)
        else:
            labels = np.zeros_like(sample.instances)
        cop_s.append(time.perf_counter() - t1)
        per_seed.append(instance_metrics(sample.instances, labels))
    keys = per_seed[0].keys()
    return ImageScore(
        dataset=dataset,
        name=sample.name,
        instances=int(len(np.unique(sample.instances)) - (1 if (sample.instances == 0).any() else 0)),
        clicks=n_clicks,
        cop={k: float(np.mean([s[k] for s in per_seed])) for k in keys},
        cop_std={k: float(np.std([s[k] for s in per_seed])) for k in keys},
        upper=upper,
        encode_seconds=encode_s,
        cop_seconds=float(np.mean(cop_s)),
        upper_seconds=upper_s,
        type_accuracy=float(np.mean(accs)) if accs else None,
        warnings=sorted(set(warnings)),
    )


def run_bench(
    model: PromptableModel,
    root: Path,
    seeds: int = 1,
    params: CopParams = CopParams(),
    limit: int | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> list[ImageScore]:
    """Evaluate every dataset below ``root`` (or ``root`` itself)."""
    datasets = find_datasets(root)
    jobs: list[tuple[str, Path]] = []
    for d in datasets:
        rel = d.relative_to(root)
        # at least "set/split" (MoNuSeg/test), whichever folder the bench was pointed at
        label = str(rel) if len(rel.parts) >= 2 else str(Path(*(d.parts[-2:])))
        paths = image_paths(d)
        jobs.extend((label, p) for p in (paths[:limit] if limit else paths))
    iterator: Iterable = progress(jobs) if progress else jobs
    return [evaluate_image(model, load_sample(p), label, seeds, params) for label, p in iterator]


def summarise(scores: list[ImageScore]) -> list[dict[str, object]]:
    """One row per dataset (means over images), then one row over all images."""
    rows = []
    groups: dict[str, list[ImageScore]] = {}
    for s in scores:
        groups.setdefault(s.dataset, []).append(s)
    for name, group in list(groups.items()) + ([("ALL", scores)] if len(groups) > 1 else []):
        row: dict[str, object] = {"dataset": name, "images": len(group)}
        row["clicks"] = float(np.mean([g.clicks for g in group]))
        row["cells"] = float(np.mean([g.instances for g in group]))
        for m in METRICS:
            row[f"cop_{m}"] = float(np.mean([g.cop[m] for g in group]))
            row[f"ub_{m}"] = float(np.mean([g.upper[m] for g in group]))
        row["seed_std_aji"] = float(np.mean([g.cop_std["aji"] for g in group]))
        row["ratio_aji"] = row["cop_aji"] / row["ub_aji"] if row["ub_aji"] else float("nan")
        accs = [g.type_accuracy for g in group if g.type_accuracy is not None]
        row["type_acc"] = float(np.mean(accs)) if accs else float("nan")
        row["encode_s"] = float(np.mean([g.encode_seconds for g in group]))
        row["cop_s"] = float(np.mean([g.cop_seconds for g in group]))
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, object]]) -> str:
    """A plain-text table that reads well in a terminal and pastes into Markdown."""
    cols = [
        ("dataset", "dataset", "{}"),
        ("images", "imgs", "{}"),
        ("clicks", "clicks/img", "{:.1f}"),
        ("cells", "cells/img", "{:.0f}"),
        ("cop_aji", "CoP AJI", "{:.3f}"),
        ("cop_dice", "CoP Dice", "{:.3f}"),
        ("cop_pq", "CoP PQ", "{:.3f}"),
        ("ub_aji", "UB AJI", "{:.3f}"),
        ("ub_dice", "UB Dice", "{:.3f}"),
        ("ub_pq", "UB PQ", "{:.3f}"),
        ("ratio_aji", "AJI ratio", "{:.3f}"),
        ("seed_std_aji", "AJI seed std", "{:.3f}"),
        ("type_acc", "type acc", "{:.3f}"),
        ("encode_s", "encode s/img", "{:.2f}"),
        ("cop_s", "CoP s/img", "{:.2f}"),
    ]
    header = "| " + " | ".join(c[1] for c in cols) + " |"
    sep = "|" + "|".join("---" for _ in cols) + "|"
    lines = [header, sep]
    for r in rows:
        cells = []
        for key, _, fmt in cols:
            v = r[key]
            cells.append("n/a" if isinstance(v, float) and np.isnan(v) else fmt.format(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tqdm_progress(items: list) -> Iterable:
    """A progress bar on stderr (quiet when stderr is not a terminal and CI is set)."""
    from tqdm import tqdm

    return tqdm(items, desc="bench", unit="img", file=sys.stderr)
