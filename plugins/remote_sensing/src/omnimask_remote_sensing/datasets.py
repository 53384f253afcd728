"""Chip data sets over S1/S2 scene pairs, with one scan that finds usable chips and band stats.

Building a data set opens every pair's headers (band counts, CRS, extent, dtype kind), then reads
each chip once through a window: chips with no valid pixel in either sensor are dropped and
counted, and, when the config has no band statistics yet, per-band mean/std of the valid pixels
are accumulated in the same pass and written into the config (which the engine saves with the
run). Items are standardised with those statistics; nodata pixels become 0 (the band mean) and
each item carries `valid`, which the model uses to leave them out of the reconstruction loss.

Under `data.on_bad_sample=skip`, a pair whose headers fail the checks is left out, and so is a
chip whose window cannot be read (a truncated or damaged file): each is logged and counted.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omnimask.data import BadSampleError, DataPathError
from rasterio.windows import Window
from torch.utils.data import Dataset

from omnimask_remote_sensing.config import BandStats, CromaConfig
from omnimask_remote_sensing.geotiff import (
    SceneInfo,
    ScenePair,
    check_dtype_kinds,
    chip_windows,
    find_pairs,
    inspect_pair,
    read_chip,
)
from omnimask_remote_sensing.stats import RunningBandStats

logger = logging.getLogger("omnimask.remote_sensing")


@dataclass
class ScanReport:
    """What building the data set found: usable chips and what was left out, and why."""

    chips: int = 0
    nodata_chips: int = 0
    skipped_pairs: list[str] = field(default_factory=list)
    unreadable_chips: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ChipRef:
    pair: int
    window: Window


class ChipDataset(Dataset):
    """Standardised chips `{"s1": [C1, S, S], "s2": [C2, S, S], "valid": [S, S], "crs",
    "transform"[, "label"]}`; `valid` is True where every band of both sensors holds data.

    `transform` is the chip's affine (a, b, c, d, e, f) in float64 and `crs` its WKT, so any
    output on the chip grid can be written back as a GeoTIFF (`geotiff.write_geotiff`).
    """

    def __init__(
        self,
        pairs: list[ScenePair],
        config: CromaConfig,
        on_bad_sample: str = "raise",
    ) -> None:
        chips = config.chips
        self.pairs: list[ScenePair] = []
        self.infos: list[SceneInfo] = []
        self.report = ScanReport()
        self.skipped_at_load: list[str] = []  # pairs and chips; the engine counts them
        self.s1_linear = chips.s1_linear
        self.on_bad_sample = on_bad_sample
        for pair in pairs:
            try:
                info = inspect_pair(pair, chips.s1_bands, chips.s2_bands)
                if not chip_windows(info, chips.size):
                    raise BadSampleError(
                        pair.s2,
                        f"is {info.width}x{info.height} px, smaller than one {chips.size} px chip",
                    )
            except BadSampleError as error:
                if on_bad_sample == "raise":
                    raise
                logger.warning("skipped scene pair: %s", error)
                self.report.skipped_pairs.append(str(error))
                self.skipped_at_load.append(str(error))
                continue
            self.pairs.append(pair)
            self.infos.append(info)
        if not self.pairs:
            raise DataPathError(
                "no usable S1/S2 scene pair: " + "; ".join(self.report.skipped_pairs)
            )
        check_dtype_kinds(self.pairs, self.infos)
        compute_stats = not config.stats.complete(chips.s1_bands, chips.s2_bands)
        self.chips = self._scan(chips.size, chips.s1_bands, chips.s2_bands, config, compute_stats)
        self.sample = ChipNormalizer(config.stats)
        self.decoding = decoding_settings(config)

    def _scan(
        self, size: int, s1_bands: int, s2_bands: int, config: CromaConfig, compute_stats: bool
    ) -> list[ChipRef]:
        """One windowed pass: keep chips holding data; accumulate band stats if asked."""
        s1_stats, s2_stats = RunningBandStats(s1_bands), RunningBandStats(s2_bands)
        kept = []
        for index, (pair, info) in enumerate(zip(self.pairs, self.infos)):
            unreadable: list[str] = []
            for window in chip_windows(info, size):
                try:
                    chip = read_chip(pair, info, window, self.s1_linear)
                except BadSampleError as error:
                    if self.on_bad_sample == "raise":
                        raise
                    unreadable.append(str(error))
                    continue
                if not chip.valid.any():
                    self.report.nodata_chips += 1
                    continue
                kept.append(ChipRef(index, window))
                if compute_stats:
                    s1_stats.update(chip.s1[:, chip.valid])
                    s2_stats.update(chip.s2[:, chip.valid])
            if unreadable:  # one line per pair: a truncated scene fails chip after chip
                logger.warning(
                    "skipped %d unreadable chips of a scene pair, the first: %s",
                    len(unreadable),
                    unreadable[0],
                )
                self.report.unreadable_chips.extend(unreadable)
                self.skipped_at_load.extend(unreadable)
        if self.report.nodata_chips:
            logger.info("left out %d chips without valid pixels", self.report.nodata_chips)
        if not kept:
            raise DataPathError(
                f"no usable chip: {self.report.nodata_chips} hold no valid pixel and "
                f"{len(self.report.unreadable_chips)} cannot be read; nothing to train on"
            )
        self.report.chips = len(kept)
        if compute_stats:
            config.stats = BandStats(
                s1_mean=s1_stats.mean.tolist(),
                s1_std=s1_stats.std().tolist(),
                s2_mean=s2_stats.mean.tolist(),
                s2_std=s2_stats.std().tolist(),
            )
        return kept

    def __len__(self) -> int:
        return len(self.chips)

    #: the record layout in shards (`omnimask.shards`); bump when it changes
    record_kind = "remote_sensing.chip_pair/1"

    def record(self, index: int) -> dict[str, Any]:
        """Chip `index` of both sensors as read (dB for S1), before normalisation."""
        ref = self.chips[index]
        pair, info = self.pairs[ref.pair], self.infos[ref.pair]
        chip = read_chip(pair, info, ref.window, self.s1_linear)
        record = {
            "s1": chip.s1,
            "s2": chip.s2,
            "valid": chip.valid,
            "crs": chip.crs.to_wkt(),
            "transform": np.asarray(tuple(chip.transform)[:6], dtype=np.float64),
        }
        if pair.label is not None:
            record["label"] = pair.label
        return record

    def shard_attributes(self) -> dict[str, Any]:
        """What shaped the records, and the band statistics, which a run on the shards uses
        when its config has none (as a run on the scenes computes them)."""
        return {**self.decoding, "stats": asdict(self.sample.stats)}

    def __getitem__(self, index: int) -> dict:
        return self.sample(self.record(index))


def decoding_settings(config: CromaConfig) -> dict[str, Any]:
    """The `chips.*` values that change a chip record."""
    chips = config.chips
    names = ("size", "s1_bands", "s2_bands", "s1_linear")
    return {f"chips.{name}": getattr(chips, name) for name in names}


class ChipNormalizer:
    """A chip record -> the training sample: each band standardised with the band statistics
    over valid pixels, nodata set to 0 (and kept out of the loss through `valid`)."""

    def __init__(self, stats: BandStats) -> None:
        self.stats = stats
        self.s1_mean, self.s1_std = _column(stats.s1_mean), _column(stats.s1_std)
        self.s2_mean, self.s2_std = _column(stats.s2_mean), _column(stats.s2_std)

    def __call__(self, record: dict[str, Any]) -> dict:
        valid = record["valid"]
        s1 = np.where(valid, (record["s1"] - self.s1_mean) / self.s1_std, 0.0)
        s2 = np.where(valid, (record["s2"] - self.s2_mean) / self.s2_std, 0.0)
        item = {
            "s1": torch.from_numpy(s1.astype(np.float32)),
            "s2": torch.from_numpy(s2.astype(np.float32)),
            "valid": torch.from_numpy(valid),
            "crs": record["crs"],
            "transform": torch.from_numpy(record["transform"]),
        }
        if "label" in record:
            item["label"] = torch.tensor(record["label"])
        return item


def _column(values: list[float]) -> np.ndarray:
    """Per-band values as `[C, 1, 1]` for broadcasting over a chip."""
    return np.asarray(values, dtype=np.float32).reshape(-1, 1, 1)


def labelled_splits(path: str | Path, config: CromaConfig) -> tuple[ChipDataset, ChipDataset]:
    """(train, test) chip sets from a manifest whose rows carry `label` (and `split`).

    Normalisation uses the run's saved band statistics, so features match pretraining (a config
    without them gets them from the labelled training chips).
    """
    pairs = find_pairs(path)
    unlabelled = [p for p in pairs if p.label is None]
    if unlabelled:
        raise BadSampleError(unlabelled[0].s2, "has no label in the manifest (column 'label')")
    if any(p.split is not None for p in pairs):
        train = [p for p in pairs if p.split != "test"]
        test = [p for p in pairs if p.split == "test"]
    else:  # no split column: hold out every fourth pair, deterministically
        train = [p for i, p in enumerate(pairs) if i % 4 != 3]
        test = [p for i, p in enumerate(pairs) if i % 4 == 3]
    if not train or not test:
        raise DataPathError(
            f"{path}: need labelled pairs for both training and testing (column 'split': "
            "train/test, or at least 4 pairs for an automatic hold-out)"
        )
    return ChipDataset(train, config), ChipDataset(test, config)
