"""The engine: exact resumption, checkpoint fallback, loss guard, bad samples, accumulation,
multi-process equivalence. Runs the toy recipe (tests/core/toy_recipe.py)."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omnimask.config import apply_overrides, from_yaml
from omnimask.data import BadSampleError
from omnimask.engine import Engine, NonFiniteLossError, ResumeError, checkpoint
from omnimask.engine.checkpoint import (
    CheckpointError,
    Expected,
    RunWriteError,
    list_checkpoints,
    load_latest,
)
from omnimask.engine.engine import _CheckpointTrust
from omnimask.engine.metrics import MetricsWriter, read_metrics
from omnimask.engine.optim import warmup_cosine
from omnimask.engine.runlock import RunLockedError
from omnimask.engine.sampler import ResumableBatchSampler
from safetensors.torch import load, save_model
from toy_recipe import ToyRecipe

RUN_TOY = Path(__file__).parent / "run_toy.py"
BIN = Path(sys.executable).parent


def train(run_dir: Path, *overrides: str) -> dict[int, dict]:
    recipe = ToyRecipe()
    Engine(recipe, apply_overrides(recipe.config("demo"), list(overrides)), run_dir).run()
    return read_metrics(run_dir / "metrics.jsonl")


def losses(metrics: dict[int, dict]) -> list[float]:
    return [metrics[step]["loss"] for step in sorted(metrics)]


def final_weights(run_dir: Path) -> bytes:
    _, newest = list_checkpoints(run_dir / "checkpoints")[0]
    return (newest / "model.safetensors").read_bytes()


def test_run_killed_with_sigkill_resumes_bit_exact(tmp_path: Path) -> None:
    args = ["train.ema_decay=0.9", "delay=0.01"]
    reference = tmp_path / "reference"
    subprocess.run([sys.executable, RUN_TOY, reference, *args], check=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, RUN_TOY, killed, *args])
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline:  # kill between the step-4 and step-8 checkpoints
        if metrics.exists() and len(read_metrics(metrics)) >= 6:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert [step for step, _ in list_checkpoints(killed / "checkpoints")] == [4]
    subprocess.run([sys.executable, RUN_TOY, killed, *args], check=True)

    assert losses(read_metrics(metrics)) == losses(read_metrics(reference / "metrics.jsonl"))
    assert final_weights(killed) == final_weights(reference)
    # the killed run's lines past its checkpoint were dropped on resume: every step once
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    logged = [r["step"] for r in records if "loss" in r]
    assert logged == sorted(set(logged)) == list(range(12))
    assert {"event": "resume", "step": 4} in records
    _, newest = list_checkpoints(killed / "checkpoints")[0]
    _, newest_reference = list_checkpoints(reference / "checkpoints")[0]
    assert (newest / "ema.safetensors").read_bytes() == (
        newest_reference / "ema.safetensors"
    ).read_bytes()


def test_truncated_newest_checkpoint_falls_back_with_a_warning(tmp_path, caplog) -> None:
    reference = tmp_path / "reference"
    expected = losses(train(reference))
    run = tmp_path / "run"
    train(run)
    # As if the run had died while step 12 was being written and step 8 had been cut short.
    (run / "checkpoints" / "step_00000012" / "state.pt").unlink()
    weights = run / "checkpoints" / "step_00000008" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with caplog.at_level(logging.WARNING):
        resumed = losses(train(run))
    assert "step_00000012 is unreadable" in caplog.text
    assert "step_00000008 is unreadable" in caplog.text
    assert "falling back" in caplog.text
    assert resumed == expected
    assert final_weights(run) == final_weights(reference)


@pytest.fixture(scope="module")
def ema_reference(tmp_path_factory) -> tuple[Path, list[float]]:  # noqa: ANN001
    run = tmp_path_factory.mktemp("ema") / "reference"
    return run, losses(train(run, "train.ema_decay=0.9"))


def drop_rng(path: Path) -> None:
    (path / "rng_rank0.pt").unlink()


def drop_ema(path: Path) -> None:
    (path / "ema.safetensors").unlink()


def drop_optimizer(path: Path) -> None:
    state = torch.load(path / "state.pt", weights_only=True)
    del state["optimizer"]
    torch.save(state, path / "state.pt")


def other_model(path: Path) -> None:
    recipe = ToyRecipe()
    wider = recipe.build_model(apply_overrides(recipe.config("demo"), ["model.width=32"]))
    save_model(wider, str(path / "model.safetensors"))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (drop_rng, "rng_rank"),
        (drop_ema, "no ema.safetensors"),
        (drop_optimizer, "state.pt has no 'optimizer'"),
        (other_model, "model.safetensors does not fit the model (size mismatch for encoder.body.0"),
    ],
)
def test_incomplete_newest_checkpoint_is_set_aside_and_the_resume_stays_exact(
    ema_reference,
    tmp_path,
    caplog,
    damage,
    reason,  # noqa: ANN001
) -> None:
    reference, expected = ema_reference
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    damage(run / "checkpoints" / "step_00000012")
    with caplog.at_level(logging.WARNING):
        resumed = losses(train(run, "train.ema_decay=0.9"))
    assert "step_00000012 is unreadable" in caplog.text and reason in caplog.text
    assert resumed == expected  # resumed from step 8 and replayed 9-12 exactly
    assert final_weights(run) == final_weights(reference)
    kept = run / "checkpoints" / "unreadable" / "step_00000012"
    assert kept.is_dir()  # the damaged checkpoint is kept for inspection, out of the way


def test_all_checkpoints_unreadable_stops_and_changes_nothing(tmp_path) -> None:
    run = tmp_path / "run"
    train(run)
    for _, path in list_checkpoints(run / "checkpoints"):
        (path / "state.pt").write_bytes(b"not a checkpoint")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(CheckpointError) as raised:
        train(run)
    message = str(raised.value)
    assert "no checkpoint in" in message and "step_00000012" in message and "\n" not in message
    assert before == {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}


def test_checkpoint_of_another_process_count_is_refused(tmp_path) -> None:
    run = tmp_path / "run"
    train(run)
    model = ToyRecipe().build_model(ToyRecipe().config("demo"))
    with pytest.raises(ResumeError, match="written by 1 process.* and 2 are resuming it"):
        load_latest(run / "checkpoints", 0, Expected(model, num_processes=2))


def test_pruning_after_a_fallback_keeps_the_readable_checkpoints(tmp_path) -> None:
    run = tmp_path / "run"
    train(run, "train.checkpoint_every=2", "train.keep_last=2")  # keeps 12 and 10
    (run / "checkpoints" / "step_00000012" / "state.pt").unlink()
    train(run, "train.checkpoint_every=2", "train.keep_last=2", "train.steps=14")
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [14, 12]
    assert (run / "checkpoints" / "unreadable" / "step_00000012").is_dir()


HOLD_LOCK = """
import sys, time
from pathlib import Path
from omnimask.engine.runlock import run_lock
with run_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_run_into_a_run_directory_is_refused_until_the_first_is_gone(tmp_path) -> None:
    run = tmp_path / "run"
    train(run, "train.steps=4")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        before = (run / "metrics.jsonl").read_bytes()
        with pytest.raises(RunLockedError, match=rf"is in use by pid {holder.pid} on "):
            train(run, "train.steps=8")
        assert (run / "metrics.jsonl").read_bytes() == before  # nothing written
    finally:
        holder.send_signal(signal.SIGKILL)  # killed: the kernel drops its lock
        holder.wait()
    assert max(train(run, "train.steps=8")) == 7  # the stale lock does not block the resume


def full_disk(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_last_checkpoint(
    tmp_path,
    monkeypatch,  # noqa: ANN001
) -> None:
    run = tmp_path / "run"
    train(run, "train.steps=4")
    kept = {p: p.read_bytes() for p in (run / "checkpoints").rglob("*") if p.is_file()}
    monkeypatch.setattr(checkpoint, "save_model", full_disk)
    with pytest.raises(RunWriteError) as raised:
        train(run, "train.steps=8")
    message = str(raised.value)
    assert message.startswith(f"cannot write {run / 'checkpoints' / '.tmp-step_00000008'}")
    assert "No space left on device" in message and "MiB free there" in message
    assert "\n" not in message
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000004"]
    assert {p: p.read_bytes() for p in (run / "checkpoints").rglob("*") if p.is_file()} == kept


def test_a_metrics_file_that_cannot_be_written_is_one_line(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(MetricsWriter, "log", full_disk)
    with pytest.raises(RunWriteError, match=r"cannot write .*metrics.jsonl: No space left"):
        train(tmp_path / "run")


def test_a_tensorboard_folder_that_cannot_be_written_is_one_line(
    tmp_path,
    monkeypatch,
    capfd,  # noqa: ANN001
) -> None:
    """TensorBoard writes from a thread of its own; its failure is still the run's one line,
    naming the folder, with no thread traceback printed above it."""
    from tensorboard.summary.writer import record_writer

    monkeypatch.setattr(record_writer.RecordWriter, "write", full_disk)
    run = tmp_path / "run"
    with pytest.raises(RunWriteError) as raised:
        train(run)
    message = str(raised.value)
    assert message.startswith(f"cannot write {run / 'tensorboard'}: No space left on device")
    assert "\n" not in message
    assert "Traceback" not in capfd.readouterr().err


def test_a_run_directory_that_cannot_be_made_is_one_line(tmp_path) -> None:  # noqa: ANN001
    (tmp_path / "a_file").write_text("")
    with pytest.raises(RunWriteError, match=r"cannot write .*a_file/run: Not a directory"):
        train(tmp_path / "a_file" / "run")


def test_nonfinite_loss_skips_the_step_and_names_the_samples(tmp_path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        metrics = train(tmp_path / "run", "nan=[5]")
    bad_steps = [s for s, record in metrics.items() if record["loss"] == "nan"]
    assert bad_steps, "the NaN sample must have produced a non-finite loss"
    assert f"non-finite loss at step {bad_steps[0]}" in caplog.text
    assert "5" in caplog.text.split(f"step {bad_steps[0]} (samples ")[1].split(")")[0]
    assert all(isinstance(metrics[s]["loss"], float) for s in metrics if s not in bad_steps)


def test_too_many_nonfinite_losses_stop_the_run(tmp_path) -> None:
    every = "[" + ",".join(str(i) for i in range(64)) + "]"
    with pytest.raises(NonFiniteLossError, match="3 non-finite losses in a row") as raised:
        train(tmp_path / "run", f"nan={every}", "train.max_nonfinite=3")
    assert "No checkpoint's weights have given a finite loss yet" in str(raised.value)


def test_no_checkpoint_is_written_at_a_nonfinite_step(tmp_path, caplog) -> None:  # noqa: ANN001
    run = tmp_path / "run"
    every = ["train.checkpoint_every=1", "train.keep_last=100"]
    with caplog.at_level(logging.WARNING):
        metrics = train(run, "nan=[5]", *every)
    bad = [s for s, record in metrics.items() if record["loss"] == "nan"]
    written = {s for s, _ in list_checkpoints(run / "checkpoints")}
    assert bad and written == set(range(1, 13)) - {s + 1 for s in bad}
    assert f"no checkpoint at step {bad[0] + 1}: the loss or the weights are not finite" in (
        caplog.text
    )


def test_the_stop_message_says_which_checkpoint_to_trust(tmp_path) -> None:  # noqa: ANN001
    """At lr 1e12 the first update explodes the weights while its loss, computed before the
    update, is finite: the checkpoint written after it holds diverged weights, and every later
    loss is not finite. The message says so instead of pointing at it as the last good state."""
    blowup = ["train.lr=1e12", "train.warmup_steps=0", "train.checkpoint_every=1"]
    with pytest.raises(NonFiniteLossError) as raised:
        train(tmp_path / "run", "train.max_nonfinite=2", *blowup)
    message = str(raised.value)
    assert "The newest checkpoint, step_00000001, was followed only by non-finite losses" in message
    assert "no checkpoint's weights have given a finite loss yet" in message
    assert "\n" not in message


def test_a_checkpoint_is_trusted_once_the_next_loss_is_finite() -> None:
    trust = _CheckpointTrust(resumed_from="step_00000004")
    trust.written("step_00000008")
    assert trust.advice().endswith("gave a finite loss: step_00000004")
    trust.step_was_finite()
    assert trust.advice() == (
        "The newest checkpoint whose weights gave a finite loss: step_00000008"
    )
    trust.written("step_00000012")
    assert "step_00000012, was followed only by non-finite losses" in trust.advice()


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_sample_raise_names_the_file(tmp_path, workers) -> None:  # noqa: ANN001
    with pytest.raises(BadSampleError) as raised:
        train(tmp_path / "run", "bad=[3]", f"data.num_workers={workers}")
    assert str(raised.value) == "toy/3.npy: corrupt"  # the same line, with or without workers


def test_bad_sample_skip_counts_and_continues(tmp_path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        metrics = train(tmp_path / "run", "bad=[3]", "data.on_bad_sample=skip")
    assert len(metrics) == 12
    assert metrics[11]["skipped_samples"] == 2  # 12 steps of 8 = 1.5 epochs of 64: met twice
    assert caplog.text.count("skipped bad sample: toy/3.npy: corrupt") == 1  # warned once


def test_a_batch_of_bad_samples_is_refilled_and_the_run_resumes_exactly(tmp_path) -> None:
    """Unshuffled, the batches of steps 0 and 8 (8 steps of 8 make an epoch of 64) are samples
    0-7: all bad. They are refilled with good samples drawn from (seed, step), so the run goes
    on, and a resume from step 4 replays step 8's refill exactly."""
    args = ["bad=[0,1,2,3,4,5,6,7]", "data.on_bad_sample=skip", "data.shuffle=false"]
    whole = train(tmp_path / "whole", *args)
    assert len(whole) == 12 and whole[0]["skipped_samples"] >= 8  # and any refill met
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "whole", resumed)
    for step in (8, 12):  # as if killed after the step-4 checkpoint
        shutil.rmtree(resumed / "checkpoints" / f"step_{step:08d}")
    assert losses(train(resumed, *args)) == losses(whole)


def test_resume_with_another_per_process_batch_is_refused_even_for_the_same_global_batch(
    tmp_path,  # noqa: ANN001
) -> None:
    """Batch 8 resumed as 2 micro-batches of 4 is the same global batch, but `train.batch_size`
    is part of what a run computes: one line names it, rather than a continuation whose
    exactness would rest on every recipe's loss following the batch contract."""
    run = tmp_path / "run"
    train(run, "train.steps=4")
    with pytest.raises(ResumeError, match=r"train.batch_size: saved 8, now 4"):
        train(run, "train.steps=8", "train.batch_size=4", "train.grad_accum=2")


def test_resume_with_an_incompatible_config_is_refused_and_loses_nothing(tmp_path) -> None:
    run = tmp_path / "run"
    train(run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(ResumeError, match=r"model.width: saved 16, now 32"):
        train(run, "model.width=32")
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert before == after


def test_gradient_accumulation_equals_the_large_batch(tmp_path) -> None:
    large = losses(train(tmp_path / "large", "model.dropout=0.0", "train.batch_size=8"))
    accumulated = losses(
        train(tmp_path / "acc", "model.dropout=0.0", "train.batch_size=4", "train.grad_accum=2")
    )
    torch.testing.assert_close(torch.tensor(accumulated), torch.tensor(large))


def test_a_weighted_loss_accumulates_like_the_large_batch(tmp_path) -> None:
    """A per-token mean with a different number of tokens per sample: equal weights per
    micro-batch train another model than the large batch; `LOSS_WEIGHT` trains the same one."""
    ragged = ["model.dropout=0.0", "model.ragged=true"]
    split = ["train.batch_size=4", "train.grad_accum=2"]
    for weighted, same in (("false", False), ("true", True)):
        weighting = f"model.weighted={weighted}"
        large = tmp_path / f"large-{weighted}"
        accumulated = tmp_path / f"accumulated-{weighted}"
        large_losses = losses(train(large, *ragged, weighting, "train.batch_size=8"))
        accumulated_losses = losses(train(accumulated, *ragged, weighting, *split))
        large_weights = load(final_weights(large))
        accumulated_weights = load(final_weights(accumulated))
        close = all(
            torch.allclose(large_weights[k], accumulated_weights[k], rtol=1e-5, atol=1e-6)
            for k in large_weights
        )
        assert close == same, f"weighted={weighted}"
        assert (
            torch.allclose(
                torch.tensor(large_losses), torch.tensor(accumulated_losses), rtol=1e-5, atol=1e-6
            )
            == same
        ), f"weighted={weighted}: logged losses"


def test_data_loader_workers_do_not_change_the_run(tmp_path) -> None:
    inline = losses(train(tmp_path / "inline"))
    workers = losses(train(tmp_path / "workers", "data.num_workers=2"))
    assert inline == workers


def test_keep_last_prunes_old_checkpoints(tmp_path) -> None:
    train(tmp_path / "run", "train.checkpoint_every=2", "train.keep_last=2")
    assert [s for s, _ in list_checkpoints(tmp_path / "run" / "checkpoints")] == [12, 10]


@pytest.mark.parametrize("masking", ["even", "ragged"])
def test_two_processes_match_one_process_with_the_doubled_batch(tmp_path, masking) -> None:  # noqa: ANN001
    """Also for a per-token loss over a different number of tokens per sample, weighed by
    `LOSS_WEIGHT` across the processes."""
    args = ["model.dropout=0.0"]
    if masking == "ragged":
        args += ["model.ragged=true", "model.weighted=true"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, RUN_TOY, tmp_path / "one", *args, "train.batch_size=8"],
        check=True,
        env=env,
    )
    launch = [BIN / "accelerate", "launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", str(free_port())]  # tests run side by side (xdist)
    subprocess.run(
        [*launch, RUN_TOY, tmp_path / "two", *args, "train.batch_size=4"], check=True, env=env
    )
    one = losses(read_metrics(tmp_path / "one" / "metrics.jsonl"))
    two = losses(read_metrics(tmp_path / "two" / "metrics.jsonl"))
    torch.testing.assert_close(torch.tensor(two), torch.tensor(one), rtol=1e-5, atol=1e-6)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


SBATCH = Path(__file__).parents[2] / "scripts" / "slurm" / "pretrain.sbatch"
FAKE_SLURM = Path(__file__).parent / "fake_slurm"


def slurm_job(run: Path, log: Path, *args: str) -> subprocess.Popen:
    """`scripts/slurm/pretrain.sbatch` as SLURM runs it for a 2-node job, with `srun` and
    `scontrol` stood in for (`fake_slurm/`): one `torchrun --nnodes 2` per node, meeting through
    c10d rendezvous (gloo), both on this machine."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PATH": f"{FAKE_SLURM}:{BIN}:{os.environ['PATH']}",
        "SLURM_JOB_ID": "77",
        "SLURM_NNODES": "2",
        "SLURM_JOB_NODELIST": "node[1-2]",
        "OMNIMASK_PROCS_PER_NODE": "1",
        "OMNIMASK_RDZV_PORT": str(free_port()),
        "FAKE_SLURM_LOG": str(log),
    }
    command = ["bash", SBATCH, RUN_TOY, run, *args]
    return subprocess.Popen(command, env=env, start_new_session=True)


def test_a_two_node_slurm_job_matches_one_process_and_resumes_exactly_when_requeued(
    tmp_path,  # noqa: ANN001
) -> None:
    """Two nodes with batch 4 each give the per-step losses and final weights of one process
    with batch 8, also when the job is told its time is up (USR1: it requeues itself), killed
    past its step-4 checkpoint, and started again."""
    args = ["model.dropout=0.0", "delay=0.02", "train.batch_size=4"]
    one = tmp_path / "one"
    train(one, "model.dropout=0.0", "train.batch_size=8")

    run, log = tmp_path / "two_nodes", tmp_path / "slurm.log"
    job = slurm_job(run, log, *args)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and job.poll() is None:
        if metrics.exists() and len(read_metrics(metrics)) >= 6:
            break
        time.sleep(0.05)
    job.send_signal(signal.SIGUSR1)  # what `--signal=B:USR1@300` sends before the time limit
    deadline = time.time() + 30
    while time.time() < deadline and not log.exists():
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)  # the time limit: every process of the job goes
    job.wait()
    assert log.read_text() == "requeue 77\n"
    assert [step for step, _ in list_checkpoints(run / "checkpoints")] == [4]

    requeued = slurm_job(run, log, *args)
    assert requeued.wait(timeout=240) == 0
    expected = losses(read_metrics(one / "metrics.jsonl"))
    torch.testing.assert_close(torch.tensor(losses(read_metrics(metrics))), torch.tensor(expected))
    resumed, uninterrupted = load(final_weights(run)), load(final_weights(one))
    for key, value in uninterrupted.items():
        torch.testing.assert_close(resumed[key], value, msg=lambda m, key=key: f"{key}: {m}")


def test_each_process_takes_its_slice_of_the_global_batch() -> None:
    single = ResumableBatchSampler(10, 4, seed=3, start=0, stop=6)
    ranks = [
        ResumableBatchSampler(10, 2, seed=3, start=0, stop=6, num_replicas=2, rank=r)
        for r in range(2)
    ]
    for whole, *parts in zip(single, *ranks):
        assert whole == parts[0] + parts[1]
    epochs = [epoch for batch in single for _, epoch in batch]
    assert epochs == sorted(epochs) and epochs[-1] == 2  # 24 draws over 10 samples: 3 epochs
    first_epoch = [index for batch in single for index, epoch in batch if epoch == 0]
    assert sorted(first_epoch) == list(range(10))  # each epoch is a permutation


def test_resumed_sampler_continues_the_same_stream() -> None:
    whole = list(ResumableBatchSampler(7, 3, seed=1, start=0, stop=9))
    tail = list(ResumableBatchSampler(7, 3, seed=1, start=4, stop=9))
    assert whole[4:] == tail


def test_compiled_run_trains_like_the_eager_run(tmp_path: Path) -> None:
    # No dropout: inductor draws its dropout masks from its own generator.
    eager = train(tmp_path / "eager", "model.dropout=0.0")
    compiled = train(tmp_path / "compiled", "model.dropout=0.0", "train.compile=true")
    assert len(compiled) == len(eager) == ToyRecipe().config("demo").train.steps
    torch.testing.assert_close(losses(compiled), losses(eager), rtol=1e-4, atol=1e-6)
    # The compiled run's checkpoints hold the plain model's keys (no `_orig_mod.` prefix), so
    # eval, export and resuming read them like any other run's.
    saved = [load(final_weights(tmp_path / name)) for name in ("eager", "compiled")]
    assert saved[1].keys() == saved[0].keys()
    for key, value in saved[0].items():
        torch.testing.assert_close(saved[1][key], value, rtol=1e-4, atol=1e-6)


def test_warmup_cosine_schedule() -> None:
    assert warmup_cosine(0, 4, 20, 0.0) == pytest.approx(0.25)
    assert warmup_cosine(3, 4, 20, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(12, 4, 20, 0.0) == pytest.approx(0.5)  # half way through the decay
    assert warmup_cosine(20, 4, 20, 0.1) == pytest.approx(0.1)


class DataSizedToy(ToyRecipe):
    """A recipe whose model width comes from its data (as a table's columns would)."""

    calls: list[str] = []

    def configure(self, config, dataset) -> None:  # noqa: ANN001
        self.calls.append("configure")
        config.model.width = len(dataset) // 2

    def build_model(self, config):  # noqa: ANN001, ANN201
        self.calls.append("build_model")
        return super().build_model(config)


def test_configure_fills_data_derived_values_before_the_model_and_the_saved_config(
    tmp_path,  # noqa: ANN001
) -> None:
    recipe = DataSizedToy()
    run = tmp_path / "run"
    Engine(recipe, apply_overrides(recipe.config("demo"), ["train.steps=2"]), run).run()
    assert recipe.calls[:2] == ["configure", "build_model"]
    saved = from_yaml((run / "config.yaml").read_text(), type(recipe.config("demo")))
    assert saved.model.width == 32  # 64 samples // 2, saved: the run rebuilds without its data
    _, newest = list_checkpoints(run / "checkpoints")[0]
    weights = load((newest / "model.safetensors").read_bytes())
    assert weights["encoder.body.0.weight"].shape == (32, 4)


def test_the_random_init_baseline_is_the_model_the_run_started_from(tmp_path) -> None:  # noqa: ANN001
    from omnimask.evaluation import initial_model

    run = tmp_path / "run"
    train(run, "train.steps=1", "train.lr=1e-12", "train.warmup_steps=0")
    recipe = ToyRecipe()
    config = from_yaml((run / "config.yaml").read_text(), type(recipe.config()))
    started = initial_model(recipe, config).state_dict()
    trained = load(final_weights(run))
    for key, value in trained.items():  # one step at lr 1e-12 moves no weight by 1e-6
        torch.testing.assert_close(started[key], value, atol=1e-6, rtol=0)
    other = initial_model(recipe, apply_overrides(config, ["train.seed=1"])).state_dict()
    assert any(not torch.allclose(other[k], v, atol=1e-3) for k, v in trained.items())
