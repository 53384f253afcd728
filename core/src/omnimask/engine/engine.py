"""The training engine: one code path for CPU, one GPU, many GPUs and many nodes.

Hugging Face Accelerate owns devices, process groups, DDP wrapping and bf16 autocast. The engine
owns what makes a run reproducible and safe: the resumable sampler (we do not let Accelerate
re-shard the DataLoader, because the sampler's position is part of the saved state), per-step mask
generators, atomic checkpoints with every RNG, and the non-finite loss guard.
"""

from __future__ import annotations

import atexit
import gc
import logging
import math
import re
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, send_to_device
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from omnimask.config import (
    ConfigError,
    check_ranges,
    differences,
    from_yaml,
    is_resumable,
    to_yaml,
)
from omnimask.data import BadSampleError, EngineDataset, engine_collate
from omnimask.engine import checkpoint as ckpt
from omnimask.engine.checkpoint import ResumeError
from omnimask.engine.metrics import MetricsWriter
from omnimask.engine.optim import build_optimizer, build_scheduler
from omnimask.engine.runlock import RunLockedError, run_lock
from omnimask.engine.sampler import BucketedBatchSampler, ResumableBatchSampler
from omnimask.engine.warm_start import init_from_run
from omnimask.model import LOSS_WEIGHT
from omnimask.monitors import CollapseWarnings, probe_health
from omnimask.recipe import Recipe, RecipeConfig
from omnimask.seeding import mix_seed

logger = logging.getLogger("omnimask")

#: Loss-dict entries that are counts, not figures to log.
COUNTS = ("num_tokens", LOSS_WEIGHT)
#: Sum of `loss * loss_weight` between two log lines: the logged loss is the one optimised, the
#: mean over every unit, when the recipe returns `LOSS_WEIGHT`.
WEIGHTED_LOSS = "_weighted_loss"


class NonFiniteLossError(RuntimeError):
    """Too many non-finite losses in a row."""


#: how many batches' worth of samples `Engine._refill` tries before giving up.
REFILL_TRIES = 4
#: the augmentation-seed "epoch" of refill samples, apart from the sampler's epochs.
REFILL_EPOCH = -1


class _CheckpointTrust:
    """Which checkpoint a diverged run should resume from. A checkpoint holds the weights after
    its step's update, which can already have exploded while that step's loss (computed before
    the update) was finite; its weights are trusted once the next step's loss is finite."""

    def __init__(self, resumed_from: str | None) -> None:
        self.trusted = resumed_from
        self.unconfirmed: str | None = None

    def written(self, name: str) -> None:
        self.unconfirmed = name

    def step_was_finite(self) -> None:
        if self.unconfirmed is not None:
            self.trusted, self.unconfirmed = self.unconfirmed, None

    def advice(self) -> str:
        """Where to resume from, for the stop message."""
        parts = []
        if self.unconfirmed is not None:
            parts.append(
                f"The newest checkpoint, {self.unconfirmed}, was followed only by non-finite "
                "losses: its weights may have diverged already"
            )
        if self.trusted is not None:
            parts.append(f"the newest checkpoint whose weights gave a finite loss: {self.trusted}")
        else:
            parts.append("no checkpoint's weights have given a finite loss yet")
        text = "; ".join(parts)
        return text[0].upper() + text[1:]


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    last_loss: float


def progress_receivers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Submodules driven by training progress (mask-ratio schedules, HPM, temperature
    annealing): every module with a `set_progress(progress)` method, found once per run."""
    return [m for m in model.modules() if m is not model and hasattr(m, "set_progress")]


def set_progress(model: torch.nn.Module, progress: float) -> None:
    """Tell every progress-driven submodule how far training is, in [0, 1]."""
    for receiver in progress_receivers(model):
        receiver.set_progress(progress)


def weight_units(model: torch.nn.Module, ema: Any) -> dict[str, torch.nn.Module]:  # noqa: ANN401
    """The modules whose weights a checkpoint holds, by name: the model, and the EMA's copy."""
    return {"model": model, **({"ema": ema.module} if ema is not None else {})}


def step_generator(seed: int, step: int) -> torch.Generator:
    """The mask generator of one optimiser step, the same for every micro-batch and process:
    masks are then drawn per sample id (`MaskedModel.draw_mask`), so splitting a batch into
    micro-batches or over processes does not change them."""
    return torch.Generator().manual_seed(mix_seed(seed, step))


class Engine:
    """Trains a recipe's `MaskedModel` into a run directory.

    A run directory that already holds checkpoints is resumed from its newest readable one;
    the config must then agree with the saved one except for the keys that
    `omnimask.config.is_resumable` allows.
    """

    def __init__(self, recipe: Recipe, config: RecipeConfig, run_dir: Path | None = None) -> None:
        check_ranges(config)  # configs built in Python skip the CLI's `apply_overrides`
        self.recipe = recipe
        self.config = config
        self.train = config.train
        cuda = torch.cuda.is_available()
        use_bf16 = cuda and self.train.mixed_precision == "bf16"
        # cpu=True without CUDA lets `accelerate launch --multi_gpu` / torchrun processes on a
        # CPU-only machine form a gloo process group (Accelerate needs to be told).
        self.accelerator = Accelerator(mixed_precision="bf16" if use_bf16 else "no", cpu=not cuda)
        self.is_main = self.accelerator.is_main_process
        # FSDP shards over processes: with one there is nothing to shard, and no process group
        self.sharded = self.train.strategy == "fsdp" and self.accelerator.num_processes > 1
        if self.train.strategy == "fsdp" and not self.sharded:
            logger.info("train.strategy=fsdp on one process: nothing to shard, the model is whole")
        #: unsharded CPU copies of the model and EMA on the main process, which sharded runs'
        #: full weights are loaded into to be saved as a DDP run saves them (`_save`)
        self.plain: dict[str, torch.nn.Module] = {}
        if run_dir is None:  # every process must write to the one directory the first names
            from omnimask.runs import new_run_dir

            chosen = [str(new_run_dir(recipe.name))]
            if self.accelerator.num_processes > 1:
                chosen = broadcast_object_list(chosen)
            run_dir = Path(chosen[0])
        self.run_dir = Path(run_dir)

    # ---------------------------------------------------------------- run directory
    def _prepare_run_dir(self) -> None:
        """Create the run directory, or check that an existing one is this run's."""
        config_path = self.run_dir / "config.yaml"
        if config_path.exists():
            saved = from_yaml(config_path.read_text(), type(self.config), str(config_path))
            changed = differences(saved, self.config)
            sections = self.recipe.eval_sections
            blocking = [d for d in changed if not is_resumable(d[0], sections)]
            if blocking:
                lines = "\n".join(f"  {k}: saved {a!r}, now {b!r}" for k, a, b in blocking)
                raise ResumeError(
                    f"{self.run_dir} holds a run with a different config; resuming it with this "
                    f"one would not continue the same run:\n{lines}\n"
                    "Use a new run directory, or the saved values."
                )
            if changed and self.is_main:
                stamp = time.strftime("%Y%m%d-%H%M%S")
                config_path.rename(self.run_dir / f"config.before-{stamp}.yaml")
        if self.is_main:
            for sub in ("checkpoints", "figures"):
                (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
            if not config_path.exists():
                config_path.write_text(to_yaml(self.config))
        self.accelerator.wait_for_everyone()

    # ---------------------------------------------------------------- data
    def _sample_lengths(self, dataset: EngineDataset) -> Sequence[int] | None:
        """The recipe's sample lengths when `data.bucket_batches` asks for bucketing, else None."""
        if self.config.data.bucket_batches <= 0:
            return None
        lengths = self.recipe.sample_lengths(dataset.dataset, self.config)
        if lengths is None:
            raise ConfigError(
                f"data.bucket_batches={self.config.data.bucket_batches} needs sample lengths, "
                f"and recipe {self.recipe.name!r} gives none; set data.bucket_batches=0"
            )
        if len(lengths) != len(dataset):
            raise ValueError(
                f"recipe {self.recipe.name!r} gave {len(lengths)} sample lengths for a data set "
                f"of {len(dataset)} samples"
            )
        return lengths

    def _loader(
        self, dataset: EngineDataset, start: int, stop: int, lengths: Sequence[int] | None
    ) -> DataLoader:
        placement = {
            "seed": self.train.seed,
            "start": start,
            "stop": stop,
            "shuffle": self.config.data.shuffle,
            "num_replicas": self.accelerator.num_processes,
            "rank": self.accelerator.process_index,
        }
        if lengths is None:
            sampler = ResumableBatchSampler(len(dataset), self.train.batch_size, **placement)
        else:
            sampler = BucketedBatchSampler(
                lengths,
                self.train.batch_size,
                bucket_batches=self.config.data.bucket_batches,
                **placement,
            )
        workers = self.config.data.num_workers
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=engine_collate(self.recipe.collate),
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            prefetch_factor=4 if workers else None,
            persistent_workers=False,
            # Its own generator: drawing worker seeds from the global RNG would shift the
            # dropout stream of a resumed run against the uninterrupted one.
            generator=torch.Generator().manual_seed(mix_seed(self.train.seed, start)),
        )

    # ---------------------------------------------------------------- training
    def _build_model(self) -> torch.nn.Module:
        """The recipe's model; recipes check their config as they build, and a `ValueError`
        from that is the user's config, reported as a `ConfigError` (one line, no traceback)."""
        try:
            return self.recipe.build_model(self.config)
        except ConfigError:
            raise
        except ValueError as error:
            raise ConfigError(
                f"recipe {self.recipe.name!r} cannot build a model from this config: {error}"
            ) from error

    def run(self) -> TrainResult:
        train = self.train
        accelerator = self.accelerator
        # The data is opened first: a bad data path fails before a run directory is made.
        dataset = EngineDataset(
            self.recipe.build_dataset(self.config), train.seed, self.config.data.on_bad_sample
        )
        self.recipe.configure(self.config, dataset.dataset)  # values that come from the data
        lengths = self._sample_lengths(dataset)
        torch.manual_seed(mix_seed(train.seed, accelerator.process_index))
        model = self._build_model()  # so is a config the recipe cannot build a model from
        if train.init_from:  # saved resolved; read on a fresh run only
            train.init_from = str(Path(train.init_from).resolve())
            if not ckpt.list_checkpoints(self.run_dir / "checkpoints"):
                init_from_run(model, Path(train.init_from))
        with self._run_dir_lock():
            self._prepare_run_dir()
            result = self._train(dataset, lengths, model)
        if self.accelerator.num_processes > 1:
            self.accelerator.free_memory()  # its references to the prepared model and optimizer
            atexit.register(_destroy_process_group)
        return result

    @contextmanager
    def _run_dir_lock(self) -> Iterator[None]:
        """The run directory's lock (`runlock`), held by the main process, which alone writes
        there; a refusal is broadcast, so every process stops with it instead of waiting for
        the main process at the next barrier."""
        held = ExitStack()
        refusal = ["", ""]  # the error's kind and its line
        if self.is_main:
            try:
                held.enter_context(run_lock(self.run_dir))
            except RunLockedError as error:
                refusal = ["locked", str(error)]
            except OSError as error:  # the directory cannot be made or written
                refusal = ["write", ckpt.write_problem(error, self.run_dir)]
        if self.accelerator.num_processes > 1:
            refusal = broadcast_object_list(refusal)
        if refusal[0]:
            raise (RunLockedError if refusal[0] == "locked" else ckpt.RunWriteError)(refusal[1])
        with held:
            yield

    def _train(
        self, dataset: EngineDataset, lengths: Sequence[int] | None, model: torch.nn.Module
    ) -> TrainResult:
        """Resume from the newest usable checkpoint, then train to `train.steps`."""
        train = self.train
        accelerator = self.accelerator
        ema = None
        if train.ema_decay > 0:
            from timm.utils import ModelEmaV3

            ema = ModelEmaV3(model, decay=train.ema_decay)

        start_step = 0
        expected = ckpt.Expected(
            model, ema.module if ema is not None else None, accelerator.num_processes
        )
        # Loads the weights of the newest usable checkpoint into the model (and the EMA).
        loaded = ckpt.load_latest(self.run_dir / "checkpoints", accelerator.process_index, expected)
        accelerator.wait_for_everyone()  # every process has read before any file moves
        if loaded is not None and loaded.unusable and self.is_main:
            moved = ckpt.set_aside(loaded.unusable)
            logger.warning("moved unusable checkpoints to %s", ", ".join(map(str, moved)))
        if self.sharded:  # after loading: the checkpoint's weights are full, not shards
            from omnimask.engine import fsdp

            for name, unit in weight_units(model, ema).items():
                if self.is_main:
                    self.plain[name] = fsdp.plain_copy(unit)
                fsdp.shard(unit, accelerator.device, accelerator.num_processes)
        # built over the sharded parameters when sharding: they replace the model's own
        optimizer = build_optimizer(model, train, accelerator.num_processes)
        scheduler = build_scheduler(optimizer, train)
        if loaded is not None:
            if self.sharded:
                fsdp.load_optimizer_state(model, optimizer, loaded.state["optimizer"])
            else:
                optimizer.load_state_dict(loaded.state["optimizer"])
            scheduler.load_state_dict(loaded.state["scheduler"])
            start_step = int(loaded.state["step"])
            ckpt.restore_rng_state(loaded.rng)  # type: ignore[arg-type]  # checked by `expected`
            if self.is_main:
                logger.info("resuming %s from %s (step %d)", self.run_dir, loaded.path, start_step)

        if not self.sharded:  # DDP (several processes), or the model as it is (one)
            model, optimizer = accelerator.prepare(model, optimizer)
            if ema is not None:
                ema.to(accelerator.device)
        if train.compile:
            model = torch.compile(model)

        loader = self._loader(
            dataset, start_step * train.grad_accum, train.steps * train.grad_accum, lengths
        )
        batches: Iterator[tuple[dict[str, Any] | BadSampleError | None, list[str]]] = iter(loader)

        metrics, error = None, None
        if self.is_main:
            try:
                metrics = MetricsWriter(self.run_dir, start_step)
            except OSError as failed:
                error = failed
        if not self._all_processes(error is None):
            raise ckpt.RunWriteError(ckpt.write_problem(error, self.run_dir / "metrics.jsonl"))
        bar = tqdm(
            total=train.steps,
            initial=start_step,
            desc=self.recipe.name,
            disable=not (train.progress and self.is_main),
            dynamic_ncols=True,
        )
        nonfinite_run = 0  # checkpoints are only written after a finite step
        checkpoints = _CheckpointTrust(loaded.path.name if loaded else None)
        skipped_total = int(loaded.state.get("skipped_samples", 0)) if loaded else 0
        warned: set[str] = set()
        # left out while the data set was built (`Recipe.build_dataset`), once per run
        skipped_at_load = len(getattr(dataset.dataset, "skipped_at_load", ()))
        last_loss = math.nan
        window = _MetricWindow()
        receivers = progress_receivers(model)
        health = self._health_monitor(dataset, metrics, start_step)
        if health is not None:
            health.start(model, loaded.state.get("health_start_std") if loaded else None)
        model.train()
        try:
            for step in range(start_step, train.steps):
                for receiver in receivers:
                    receiver.set_progress(step / max(1, train.steps))
                step_sums: dict[str, torch.Tensor] = {}
                sample_ids: list[int] = []
                generator = step_generator(train.seed, step)
                for micro in range(train.grad_accum):
                    batch, skipped = next(batches)
                    if isinstance(batch, BadSampleError):  # from a worker, under `raise`
                        raise batch
                    if batch is None:  # every sample bad: refill, the stream stays as it is
                        batch, more = self._refill(dataset, step, micro)
                        skipped += more
                    skipped_total += len(skipped)
                    for reason in skipped:
                        if reason not in warned:  # once per bad sample, not once per epoch
                            warned.add(reason)
                            logger.warning("skipped bad sample: %s", reason)
                    sample_ids += batch["sample_id"].tolist()
                    batch = send_to_device(batch, accelerator.device, non_blocking=True)
                    last_micro = micro == train.grad_accum - 1
                    if self.sharded:  # gradients reduced once, after the last micro-batch
                        plain = accelerator.unwrap_model(model, keep_torch_compile=False)
                        plain.set_requires_gradient_sync(last_micro)
                        context = nullcontext()
                    else:
                        context = accelerator.no_sync(model) if not last_micro else nullcontext()
                    with context, accelerator.autocast():
                        losses = model(batch, generator)
                    if LOSS_WEIGHT in losses:  # a sum now; divided by the global weight below
                        accelerator.backward(losses["loss"] * losses[LOSS_WEIGHT].detach())
                    else:
                        accelerator.backward(losses["loss"] / train.grad_accum)
                    for key, value in losses.items():  # stays on the device: no sync per term
                        step_sums[key] = step_sums.get(key, 0.0) + value.detach().float()
                    if LOSS_WEIGHT in losses:  # the logged loss is the one optimised
                        weighted = losses["loss"].detach().float() * losses[LOSS_WEIGHT]
                        step_sums[WEIGHTED_LOSS] = step_sums.get(WEIGHTED_LOSS, 0.0) + weighted
                    window.samples += len(batch["sample_id"])

                # The one host-device sync of a step: is the loss finite on every process?
                finite = self._all_processes(bool(torch.isfinite(step_sums["loss"])))
                if finite and LOSS_WEIGHT in step_sums:
                    self._divide_by_global_weight(model, step_sums[LOSS_WEIGHT])
                if not finite:
                    optimizer.zero_grad(set_to_none=True)
                    nonfinite_run += 1
                    logger.warning(
                        "non-finite loss at step %d (samples %s); step skipped (%d in a row)",
                        step,
                        sample_ids,
                        nonfinite_run,
                    )
                    if nonfinite_run >= train.max_nonfinite:
                        raise NonFiniteLossError(
                            f"stopping: {nonfinite_run} non-finite losses in a row, the last at "
                            f"step {step} (samples {sample_ids}). {checkpoints.advice()}. "
                            "Lower train.lr, set train.clip_grad, or check the data for NaN/inf "
                            "values."
                        )
                else:
                    nonfinite_run = 0
                    checkpoints.step_was_finite()
                    if train.clip_grad > 0:
                        accelerator.clip_grad_norm_(model.parameters(), train.clip_grad)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    if ema is not None:
                        ema.update(
                            accelerator.unwrap_model(model, keep_torch_compile=False), step=step
                        )
                    window.add({k: v / train.grad_accum for k, v in step_sums.items()})
                with warnings.catch_warnings():
                    # a skipped step still advances the schedule, so it stays aligned with `step`
                    warnings.filterwarnings("ignore", re.escape("Detected call of `lr_scheduler"))
                    scheduler.step()

                done = step + 1
                bar.update(1)
                if done % train.log_every == 0 or done == train.steps:
                    means = self._mean_over_processes(window.means())
                    if WEIGHTED_LOSS in means:  # per unit over the window and every process
                        means["loss"] = means.pop(WEIGHTED_LOSS) / max(means[LOSS_WEIGHT], 1e-12)
                    last_loss = means.get("loss", math.nan)
                    elapsed = window.elapsed()
                    record = {k: v for k, v in means.items() if k not in COUNTS}
                    record["loss"] = last_loss
                    record["lr"] = scheduler.get_last_lr()[0]
                    processes = accelerator.num_processes
                    record["samples_per_s"] = window.samples * processes / elapsed
                    tokens_per_step = means.get("num_tokens", 0.0) * train.grad_accum
                    tokens = tokens_per_step * window.steps * processes
                    record["tokens_per_s"] = tokens / elapsed if window.steps else 0.0
                    record["skipped_samples"] = skipped_total + skipped_at_load
                    if health is not None and health.due(done, train.steps):
                        record.update(health.check(model, step, done))
                    error = _attempt(metrics.log, step, record) if metrics else None
                    if not self._all_processes(error is None):  # a full disk stops every process
                        path = self.run_dir / "metrics.jsonl"
                        raise ckpt.RunWriteError(ckpt.write_problem(error, path))
                    bar.set_postfix(
                        loss=f"{last_loss:.4f}",
                        samples_s=f"{record['samples_per_s']:.1f}",
                        tokens_s=f"{record['tokens_per_s']:.0f}",
                    )
                    window = _MetricWindow()
                if done % train.checkpoint_every == 0 or done == train.steps:
                    # Never a checkpoint of a diverging run: a resume would start from it.
                    if nonfinite_run or not self._weights_finite(model):
                        logger.warning(
                            "no checkpoint at step %d: the loss or the weights are not finite",
                            done,
                        )
                        continue
                    start_std = health.start_std if health is not None else None
                    self._save(model, ema, optimizer, scheduler, done, skipped_total, start_std)
                    checkpoints.written(ckpt.checkpoint_name(done))
        finally:
            bar.close()
            # Closing flushes TensorBoard: its failure is the run's error only when there is
            # no other one already on its way up.
            error = _attempt(metrics.close) if metrics is not None else None
        if not self._all_processes(error is None):
            raise ckpt.RunWriteError(ckpt.write_problem(error, self.run_dir / "metrics.jsonl"))
        accelerator.wait_for_everyone()
        return TrainResult(self.run_dir, train.steps, last_loss)

    def _health_monitor(
        self, dataset: EngineDataset, metrics: MetricsWriter | None, start_step: int
    ) -> HealthMonitor | None:
        """The health monitor (None when `train.monitor_every` is 0): of the main process, or
        of every process when the model is sharded, as its forward then needs them all."""
        if self.train.monitor_every <= 0 or not (self.is_main or self.sharded):
            return None
        from omnimask.visualize import sample_batch

        count = max(2, self.train.monitor_samples)
        batch = sample_batch(self.recipe, self.config, dataset.dataset, count, self.train.seed)
        return HealthMonitor(
            send_to_device(batch, self.accelerator.device),
            self.train.monitor_every,
            self.accelerator,
            metrics,
            start_step,
            speaks=self.is_main,
        )

    # ---------------------------------------------------------------- helpers
    def _all_processes(self, flag: bool) -> bool:
        if self.accelerator.num_processes == 1:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.accelerator.device)
        return bool(
            self.accelerator.reduce(value, reduction="sum").item() == self.accelerator.num_processes
        )

    def _divide_by_global_weight(self, model: torch.nn.Module, weight: torch.Tensor) -> None:
        """Turn gradients of `sum(loss_i * weight_i)` (averaged over processes by DDP) into the
        gradient of the loss's mean over every unit of the global batch (`LOSS_WEIGHT`)."""
        total = self.accelerator.reduce(weight.reshape(1), reduction="sum")[0]
        scale = self.accelerator.num_processes / total.clamp_min(1.0)
        for parameter in model.parameters():
            if parameter.grad is not None:
                parameter.grad.mul_(scale)

    def _mean_over_processes(self, values: dict[str, float]) -> dict[str, float]:
        if self.accelerator.num_processes == 1:
            return values
        keys = sorted(values)
        stacked = torch.tensor([values[k] for k in keys], device=self.accelerator.device)
        reduced = self.accelerator.reduce(stacked, reduction="mean").tolist()
        return dict(zip(keys, reduced))

    def _refill(
        self, dataset: EngineDataset, step: int, micro: int
    ) -> tuple[dict[str, Any], list[str]]:
        """A batch for a micro-batch whose samples were all bad (under `skip`): good samples
        drawn in an order seeded by (seed, step, micro-batch, process), loaded here, so the run
        stays a function of its seed and resumes exactly. Raises `BadSampleError` if
        `REFILL_TRIES` batches' worth of samples holds no good one."""
        size = self.train.batch_size
        seed = mix_seed(self.train.seed, step, micro, self.accelerator.process_index)
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
        loaded, reasons = [], []
        for index in order[: REFILL_TRIES * size].tolist():
            item = dataset[(index, REFILL_EPOCH)]
            if item.sample is None:
                reasons.append(item.error or "")
                continue
            loaded.append(item)
            if len(loaded) == size:
                break
        if not loaded:
            raise BadSampleError(
                f"the data at step {step}",
                f"every sample of the batch and {len(reasons)} others tried to replace them "
                "were bad (see the warnings)",
            )
        batch, _ = engine_collate(self.recipe.collate)(loaded)
        return batch, reasons  # type: ignore[return-value]

    def _weights_finite(self, model: torch.nn.Module) -> bool:
        """Whether every weight is finite on every process (one sync, at checkpoint steps)."""
        checks = [torch.isfinite(_local(p)).all() for p in model.parameters()]
        return self._all_processes(bool(torch.stack(checks).all()) if checks else True)

    def _save(
        self,
        model: torch.nn.Module,
        ema: Any,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        step: int,
        skipped_total: int,
        health_start_std: float | None,
    ) -> None:
        """Write checkpoint `step` (atomically: `omnimask.engine.checkpoint`). A failed write
        (full disk, no permission) on any process stops every process: the unfinished
        `.tmp-step_*` is removed, the previous checkpoints stay as they were, and
        `RunWriteError` names the file. Each part's success is all-reduced in place of a plain
        barrier, so no process waits for one that gave up."""
        accelerator = self.accelerator
        directory = self.run_dir / "checkpoints"
        temp = directory / f"{ckpt.TEMP_PREFIX}{ckpt.checkpoint_name(step)}"
        # The plain module: a compiled one's state dict prefixes every key with `_orig_mod.`,
        # which eval, export and resuming could not read.
        units = weight_units(accelerator.unwrap_model(model, keep_torch_compile=False), ema)
        if self.sharded:  # gathered by every process, written by the main one
            from omnimask.engine import fsdp

            full = {name: fsdp.full_model_state(unit) for name, unit in units.items()}
            optimizer_state = fsdp.full_optimizer_state(units["model"], optimizer)
            if self.is_main:
                for name, state_dict in full.items():
                    self.plain[name].load_state_dict(state_dict)
                units = self.plain
        else:
            optimizer_state = optimizer.state_dict()

        def finish() -> None:
            state = {
                "step": step,
                "data_position": step * self.train.grad_accum,
                "optimizer": optimizer_state,
                "scheduler": scheduler.state_dict(),
                "skipped_samples": skipped_total,
                "num_processes": accelerator.num_processes,
                "health_start_std": health_start_std,
            }
            ckpt.finish_checkpoint(
                temp,
                model=units["model"],
                ema=units.get("ema"),
                state=state,
                config_yaml=to_yaml(self.config),
                keep_last=self.train.keep_last,
            )

        parts = [
            (self.is_main, lambda: ckpt.begin_checkpoint(directory, step)),
            (True, lambda: ckpt.write_rng(temp, accelerator.process_index)),
            (self.is_main, finish),
        ]
        for runs_here, part in parts:
            error = _attempt(part) if runs_here else None
            if not self._all_processes(error is None):
                if self.is_main:
                    shutil.rmtree(temp, ignore_errors=True)
                raise ckpt.RunWriteError(ckpt.write_problem(error, temp))


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of a parameter sharded by FSDP (`DTensor`), else the tensor."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _attempt(action: Callable[..., object], *args: Any) -> OSError | None:
    """Run `action(*args)`; the `OSError` it raised (a write that failed), or None."""
    try:
        action(*args)
    except OSError as error:
        return error
    return None


class HealthMonitor:
    """Scores a fixed probe batch (`omnimask.monitors`) at log steps at least `every` steps
    apart, and warns once per kind of collapse, in the log and as a `collapse` event in
    `metrics.jsonl`. It runs on the main process (on every process of a sharded model, where
    only the main one `speaks`: warns and logs) and draws no random numbers. The figures
    before training go with the first check's, as `health/<figure>_at_start`."""

    def __init__(
        self,
        batch: dict[str, Any],
        every: int,
        accelerator: Accelerator,
        metrics: MetricsWriter | None,
        start_step: int,
        speaks: bool = True,
    ) -> None:
        self.batch, self.every, self.accelerator, self.metrics = batch, every, accelerator, metrics
        self.speaks = speaks
        self.last = start_step
        self.warnings = CollapseWarnings()
        self.start_std: float | None = None
        self.unlogged_start: dict[str, float] = {}

    def start(self, model: torch.nn.Module, saved_start_std: float | None) -> None:
        """The embedding std before training, the reference of the collapse warning: measured
        now on a fresh run, taken from the checkpoint on a resumed one."""
        if saved_start_std is not None or self.last > 0:
            self.start_std = saved_start_std
            return
        plain = self.accelerator.unwrap_model(model, keep_torch_compile=False)
        figures = probe_health(plain, self.batch).figures
        self.start_std = figures.get("health/embedding_std")
        # logged with the first check, as `<figure>_at_start`: no line of its own, so that
        # every line of a run's metrics.jsonl stays a step record
        self.unlogged_start = {f"{k}_at_start": v for k, v in figures.items()}

    def due(self, done: int, total: int) -> bool:
        return done - self.last >= self.every or done == total

    def check(self, model: torch.nn.Module, step: int, done: int) -> dict[str, float]:
        """The figures after `done` steps, logged under `step` like the losses beside them."""
        self.last = done
        plain = self.accelerator.unwrap_model(model, keep_torch_compile=False)
        report = probe_health(plain, self.batch, self.start_std)
        for line in self.warnings(step, report.collapse) if self.speaks else ():
            if self.metrics is not None:
                self.metrics.event("collapse", step=step, message=line)
        figures, self.unlogged_start = {**self.unlogged_start, **report.figures}, {}
        return figures


class _MetricWindow:
    """Loss terms summed on the device over the steps between two log lines (finite steps only),
    so logging every N steps costs one transfer per N steps."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.samples = 0

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.steps += 1

    def means(self) -> dict[str, float]:
        if not self.steps:
            return {"loss": math.nan}
        keys = sorted(self.sums)
        values = torch.stack([self.sums[k] for k in keys]).cpu().tolist()
        return {k: v / self.steps for k, v in zip(keys, values)}

    def elapsed(self) -> float:
        return max(time.perf_counter() - self.start, 1e-9)


def _destroy_process_group() -> None:
    """Close the process group before the interpreter shuts down: a gloo group left to the
    interpreter's teardown can abort the process (SIGABRT, "terminate called without an active
    exception", pytorch/pytorch#190489), failing a run that finished. The DDP or FSDP model that
    still references the group sits in reference cycles (Accelerate's, the model's own), which
    only a collection frees: collected first, while the interpreter is whole, so no gloo thread
    is left to release tensors during teardown. Registered only after a run that ended well (a
    process group torn down while another process still waits in a collective can hang), and
    at exit, so a script may still use the group after `pretrain`."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        gc.collect()
        torch.distributed.destroy_process_group()


def pretrain(
    recipe: Recipe, config: RecipeConfig, run_dir: str | Path | None = None
) -> TrainResult:
    """Train `recipe` with `config` into `run_dir` (default `runs/<recipe>/<timestamp>`);
    resumes automatically when `run_dir` already holds checkpoints."""
    return Engine(recipe, config, Path(run_dir) if run_dir is not None else None).run()
