"""``train(config)``: the training loop of docs/method.md §4, resumable by running it again.

    patchforcing train --out runs/digits                          # the default digits preset, CPU
    torchrun --nproc_per_node 8 -m patchforcing train --preset imagenet-xl2 --data latents/in256
    accelerate launch --multi_gpu -m patchforcing train --preset imagenet-b2 --data latents/in256

Per step: the step's global batch (``batches.py``), this process's example (``example.py``), then
``step.train_step``: its loss (``patchforcing.loss``) under bf16 autocast on CUDA, gradient-norm
clipping, AdamW, the warm-up schedule, the EMA update.
Every ``log_every`` steps a metrics line; every ``val_every`` / ``sample_every`` / ``ckpt_every``
steps the validation loss, a sample grid and a checkpoint (rank 0 writes all files).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from patchforcing import runtime
from patchforcing.data import load_dataset
from patchforcing.errors import ConfigError, DataError, TrainingError
from patchforcing.loss import Example
from patchforcing.models import Kind, build_model
from patchforcing.runs import RunFolder
from patchforcing.timesteps import timestep_distribution
from patchforcing.training import distributed, evaluate, monitor, repa, state, trackers
from patchforcing.training.batches import StepBatches, iterate, latent_views
from patchforcing.training.config import TrainConfig, data_info, network_config, text_network_config
from patchforcing.training.example import step_example
from patchforcing.training.resume import changed_settings, check_resumable, write_config
from patchforcing.training.step import LossTracker, make_ema_and_optimizer, step_options, train_step, warmup_factor
from patchforcing.training.text import TextConditioner

DIGEST_ENV = "PATCHFORCING_PRINT_WEIGHTS_DIGEST"  # "1": every process prints a hash of its final weights


def train(config: TrainConfig) -> dict[str, Any]:
    """Train (or resume) the run in ``config.out``; returns the summary of the final step.

    Returns:
        dict with ``steps``, ``steps_run``, ``final_loss``, ``val_loss``, ``images_per_sec``,
        ``minutes``, ``checkpoint`` (path of the newest checkpoint) and ``out``.

    Raises:
        ConfigError: invalid settings, or a run folder trained with another network or data.
        CheckpointError: the newest checkpoint of the run folder cannot be read.
        TrainingError: the loss became NaN or infinite.
        DataError: the data set cannot be loaded.
    """
    distributed.check_batch_split(config.batch_size, config.grad_accum)
    trackers.require_packages(config.log)  # a missing tracker package stops the run before it writes anything
    procs = runtime.setup(config.device, config.dist_timeout)
    if procs.device.type == "cpu":
        runtime.steady_cpu_allocator()  # every step reuses the last one's pages
    lock = None
    try:
        lock = runtime.own_folder(config.out, procs)
        return _Run(config, procs).fit()
    finally:
        if lock is not None:
            lock.release()
        runtime.teardown(procs, barrier=False)


class _Run:
    def __init__(self, cfg: TrainConfig, procs: runtime.Processes):
        self.t0 = time.perf_counter()
        self.cfg, self.procs, self.dir = cfg, procs, Path(cfg.out)
        self.folder = RunFolder(self.dir)  # every path of the run folder
        if self.dir.exists() and not self.dir.is_dir():
            raise ConfigError(f"--out {self.dir} is a file; pass a folder for the run")
        self.last_checkpoint: Path | None = None
        self.progress: monitor.Progress | None = None
        self.data = load_dataset(cfg.data, split="train", resolution=cfg.resolution)
        self.text = TextConditioner.for_run(cfg, self.data)  # None unless a T2I-* network
        self.repa = repa.target_source(cfg, self.data, procs.device) if cfg.repa_encoder else None
        if self.text is not None:  # the text encoder decides the network's input width
            self.model_config = text_network_config(cfg, self.data, self.text.network_fields())
        else:
            self.model_config = network_config(cfg, self.data, repa_dim=self.repa.feature_dim if self.repa else None)
        self.data_info = data_info(self.data)
        checkpoint = check_resumable(self.dir, cfg, self.model_config.to_dict(), procs.device)
        self._build(checkpoint)
        self.validator = self._validator() if cfg.val_every and procs.is_main else None

    # --- setting up ---------------------------------------------------------------------------------
    def _build(self, checkpoint: dict[str, Any] | None) -> None:
        cfg, device = self.cfg, self.procs.device
        torch.manual_seed(cfg.seed)  # the same initial weights in every process
        self.net = build_model(self.model_config).to(device).train()
        self.ema, self.optimizer, self.scheduler = make_ema_and_optimizer(self.net, cfg)
        self.start = 1
        if checkpoint is not None:
            self._restore(checkpoint)
        self.model = distributed.wrap(self.net, self.procs, cfg.compile)
        self.batches = StepBatches(
            self.data.images, self.data.labels, seed=cfg.seed, batch_size=cfg.batch_size, rank=self.procs.rank,
            world_size=self.procs.world_size, timesteps=timestep_distribution(cfg.timestep_name, **cfg.timestep_params()),
            num_patches=self.model_config.num_patches, null_label=self.model_config.null_label,
            drop_prob=self.model_config.class_dropout_prob, global_time=self.model_config.kind is Kind.SIT,
            features=self.repa.stored if self.repa else None, **latent_views(self.data, cfg.latent_sampling),
            **(self.text.batch_fields() if self.text else {}),
        )
        self.step_options = step_options(cfg, device)  # clipping, micro-batches, autocast, loss weights

    def _restore(self, ckpt: dict[str, Any]) -> None:
        self.net.load_state_dict(ckpt["model"])
        self.ema.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        # The config is the source of truth for the optimiser's settings (they may change on resume).
        self.scheduler.base_lrs = [self.cfg.lr for _ in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:
            group.update(initial_lr=self.cfg.lr, lr=self.cfg.lr * warmup_factor(self.cfg.warmup_steps)(self.scheduler.last_epoch),
                         betas=(self.cfg.beta1, self.cfg.beta2), weight_decay=self.cfg.weight_decay)
        state.set_rng_state(ckpt["rng"])
        self.start = int(ckpt["step"]) + 1
        self.last_checkpoint = state.checkpoint_path(self.dir, int(ckpt["step"]))

    def _validator(self) -> evaluate.Validator | None:
        try:
            test = load_dataset(self.cfg.data, split="test", resolution=self.cfg.resolution)
        except DataError as err:
            self.say(f"validation off: the held-out split does not load ({err})")
            return None
        labels = self.text.states(test.captions, "cpu") if self.text is not None else test.labels
        return evaluate.Validator(test.images, labels, self.cfg.val_size, self.procs.device)

    # --- the loop -----------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        cfg, main = self.cfg, self.procs.is_main
        self.metrics = monitor.MetricsLog(self.folder.metrics, enabled=main)
        if main and self.start > 1:
            changes = changed_settings(self.dir, cfg)
            self.say(f"resuming {self.dir} from step {self.start - 1}" + (f" with changed settings: {', '.join(changes)}" if changes else ""))
        if main:
            write_config(self.dir, cfg, self.model_config.to_dict(), self.data_info)
            self.metrics.truncate_after(self.start - 1)
        try:
            return self._fit()
        finally:
            self.metrics.close()

    def _fit(self) -> dict[str, Any]:
        cfg, main = self.cfg, self.procs.is_main
        self.last_loss, self.last_val, self.train_seconds = None, None, 0.0
        if self.start > cfg.steps:
            self.say(f"nothing to train: {self.dir} is at step {self.start - 1} already (--steps {cfg.steps}); raise --steps to go on")
            return self._summary(steps_run=0)
        if main:  # TensorBoard / W&B beside metrics.jsonl (--log); a resumed run continues its W&B run
            self.metrics.trackers = trackers.open_trackers(cfg.log, self.dir, cfg.to_dict(), self.start)
        self.progress = progress = monitor.Progress(main, self.start, cfg.steps, print_every=max(cfg.log_every, cfg.steps // 20))
        tracker = LossTracker(self.procs)
        interval_start, interval_eval, interval_steps = time.perf_counter(), 0.0, 0
        batches = iterate(self.batches, self.start, cfg.steps, cfg.num_workers, self.procs.device.type == "cuda")
        try:
            for step, drawn in zip(range(self.start, cfg.steps + 1), batches, strict=True):
                tracker.add(step, self._step(step, drawn))
                interval_steps += 1
                stats = None
                if step % cfg.log_every == 0 or step == cfg.steps:
                    self._check_finite(tracker)
                    seconds = time.perf_counter() - interval_start - interval_eval
                    self.train_seconds += seconds
                    stats = self._log(step, tracker, interval_steps * cfg.batch_size / max(seconds, 1e-9))
                    interval_start, interval_eval, interval_steps = time.perf_counter(), 0.0, 0
                t_eval = time.perf_counter()
                self._periodic(step, tracker)
                interval_eval += time.perf_counter() - t_eval
                progress.update(step, stats)
        finally:
            progress.close()
            self.progress = None
        self._digest()
        summary = self._summary(steps_run=cfg.steps - self.start + 1)
        self.say(monitor.summary_line(summary))
        return summary

    def _step(self, step: int, drawn: Example) -> dict[str, torch.Tensor]:
        """One optimizer step on this process's rows ``drawn`` of ``step``: ``train_step``'s losses and gradient norm."""
        example = step_example(drawn, self.procs.device, text=self.text, repa=self.repa)
        return train_step(self.model, self.ema, self.optimizer, example, scheduler=self.scheduler, **self.step_options)

    def _periodic(self, step: int, tracker: LossTracker) -> None:
        cfg, last = self.cfg, step == self.cfg.steps
        due_val = cfg.val_every and (step % cfg.val_every == 0 or last)  # the same on every process
        due_sample = cfg.sample_every and (step % cfg.sample_every == 0 or last)
        due_ckpt = (cfg.ckpt_every and step % cfg.ckpt_every == 0) or last
        if not (due_val or due_sample or due_ckpt):
            return
        self._check_finite(tracker)  # never evaluate or save NaN weights
        if due_val and self.validator is not None:  # rank 0 only
            mean, segments = self.validator(self.ema.module)
            self.last_val = mean
            self.metrics.write({"step": step, "val_loss": mean, "val_segments": segments})
        if due_sample and self.procs.is_main:
            if evaluate.can_draw(self.data.channels, self.data.is_latent):
                evaluate.write_sample_grid(self.ema.module, self.folder.sample_grid(step), count=cfg.sample_count,
                                           steps=cfg.sample_steps, cfg_scale=cfg.sample_cfg_scale, device=self.procs.device,
                                           prompts=self.text.grid_prompts if self.text is not None else None)
                self.metrics.image(step, self.folder.sample_grid(step))
            elif step == cfg.sample_every or last:
                self.say(f"no sample grids: {self.data.name} holds {'VAE latents' if self.data.is_latent else f'{self.data.channels}-channel data'} "
                         "(sample from the checkpoint with `patchforcing sample`, which decodes latents)")
        if due_ckpt:
            self._save(step)

    def _save(self, step: int) -> None:
        if self.procs.is_main:
            if not state.state_is_finite(self.net) or not state.state_is_finite(self.ema.module):
                raise TrainingError(f"the weights hold NaN or Inf at step {step}; not saving them. {self._advice()}")
            contents = {
                "images_seen": step * self.cfg.batch_size, "model_config": self.model_config.to_dict(),
                "model": self.net.state_dict(), "ema": self.ema.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": state.rng_state(self.procs.device),
                "train_config": self.cfg.to_dict(), "world_size": self.procs.world_size, "data_info": self.data_info,
            }
            state.save_checkpoint(self.dir, step, contents, keep=self.cfg.keep_checkpoints)
        self.last_checkpoint = state.checkpoint_path(self.dir, step)
        runtime.barrier(self.procs)

    # --- reporting ----------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        """Print on rank 0 (above the progress bar while there is one)."""
        if self.progress is not None:
            self.progress.note(text)
        elif self.procs.is_main:
            print(text, flush=True)

    def _check_finite(self, tracker: LossTracker) -> None:
        bad = tracker.first_bad()
        if bad is not None:
            step, value = bad
            rows = self._non_finite_rows(step)
            if rows:  # the data, not the optimisation: a lower learning rate would not help
                raise TrainingError(f"loss became {value} at step {step} because the training data holds NaN or inf "
                                    f"values (rows {rows[:5]}{' ...' if len(rows) > 5 else ''} of --data "
                                    f"{self.cfg.data!r}); remove or re-prepare those images")
            raise TrainingError(f"loss became {value} at step {step}; {self._advice()}")

    def _non_finite_rows(self, step: int) -> list[int]:
        """Data set rows of ``step``'s global batch whose images hold NaN or inf (read only on failure)."""
        index = self.batches.indices(step)  # (B,)
        x1 = self.batches.images[index]  # (B, C, H, W)
        bad = ~torch.isfinite(x1.reshape(x1.shape[0], -1)).all(dim=1)
        return sorted(set(index[bad].tolist()))

    def _advice(self) -> str:
        where = (f"the last good checkpoint is {self.last_checkpoint} (rerun the same command to resume from it)"
                 if self.last_checkpoint else f"no checkpoint was written to {self.dir} yet")
        cfg = self.cfg
        fixes = [f"lower --lr (now {cfg.lr:g})", f"lengthen --warmup-steps (now {cfg.warmup_steps})"]
        if cfg.grad_clip <= 0 or cfg.grad_clip > 1:
            fixes.append(f"set --grad-clip 1 (now {cfg.grad_clip:g}{': off' if cfg.grad_clip <= 0 else ''})")
        if self.procs.device.type == "cuda" and cfg.precision != "fp32":
            fixes.append(f"train in float32 with --precision fp32 (now {cfg.precision})")
        return f"{where}; {', '.join(fixes[:-1])} or {fixes[-1]}"

    def _log(self, step: int, tracker: LossTracker, images_per_sec: float) -> dict[str, Any]:
        means = tracker.pop_means()
        entry = {"step": step, **means, "lr": self.optimizer.param_groups[0]["lr"], "images_per_sec": images_per_sec,
                 "images_seen": step * self.cfg.batch_size, "time_s": time.perf_counter() - self.t0}
        self.metrics.write(entry)
        self.last_loss = means["loss"]
        return entry

    def _digest(self) -> None:
        if os.environ.get(DIGEST_ENV) == "1":
            print(f"rank {self.procs.rank}/{self.procs.world_size} weights sha256 {state.weights_digest(self.net, self.ema.module)}", flush=True)

    def _summary(self, steps_run: int) -> dict[str, Any]:
        images = steps_run * self.cfg.batch_size
        return {
            "steps": max(self.cfg.steps, self.start - 1), "steps_run": steps_run, "final_loss": self.last_loss,
            "val_loss": self.last_val, "images_per_sec": images / self.train_seconds if self.train_seconds else 0.0,
            "minutes": (time.perf_counter() - self.t0) / 60, "checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
            "out": str(self.dir),
        }
