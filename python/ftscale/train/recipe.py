"""The per-worker training recipe: setup → train → save → cleanup, a straight line.

Runs inside every Ray Train worker (``train_loop``). One step = ``grad_accum`` micro-batches
per rank; the loss is normalised by the number of loss tokens in the whole global batch
(all micro-batches of all ranks), so gradients do not depend on how tokens fall into
micro-batches. Checkpoints hold the DeepSpeed engine (weights, optimizer, scheduler), the
loader position, every RNG state and the guard/eval state, so a resumed run continues
bit-exactly. They are complete or invisible (``runs``): every rank lists its files, rank 0
commits them after a barrier, and the checkpoint to resume or roll back to is chosen once
and broadcast (``resume``). Nothing in a checkpoint is unpickled beyond tensors
(``torch_load``): the run's own state is JSON (``ftscale_run.json``, and one
``ftscale_rng_rank<R>.json`` per rank).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ftscale.config import TrainConfig, build, to_dict
from ftscale.errors import ConfigError, InputError
from ftscale.train.runs import DS_TAG, RUN_FILE, checkpoint_name

RNG_FILE = "ftscale_rng_rank{rank}.json"
REFERENCE_FILE = "ftscale_reference.npz"  # reference: precomputed — the reference log-probs (rank 0 writes)
UNIVERSAL_DIR = ".ftscale-universal"  # in the run directory: checkpoints converted for another world size
# Ray keeps the checkpoints with the highest score (CheckpointConfig) and always the latest:
# scoring a checkpoint by its step, plus this when it was the best at the time, keeps the
# current best (the latest of the bests) whatever keep_checkpoints is.
KEEP_SCORE = "keep_score"
KEEP_BEST_BONUS = 1e12


def _all_reduce_sum(values: list[float], device: Any) -> list[float]:
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


class Recipe:
    def __init__(self, cfg: TrainConfig, rank: int, world_size: int, run_dir: str | Path) -> None:
        self.cfg = cfg
        self.rank = rank
        self.world_size = world_size
        self.run_dir = str(run_dir)  # a local directory or a storage URI (ftscale.train.storage)
        self.log_dir: Path | None = None  # where rank 0 writes metrics: run_dir, or a staging copy of it
        self.step = 0
        self.best_val: float | None = None
        self.evals_without_gain = 0
        self.skipped_windows: list[dict[str, int]] = []
        self.metrics_file = None
        self.tb = None
        self.trackers: Any = None  # rank 0's W&B / MLflow sessions (ftscale.train.tracking)
        self.progress: Any = None  # rank 0: the driver's progress queue (its bar replaces the step lines)
        self.clock: Any = None  # ftscale.progress.StepClock of this session's steps
        self.last_checkpoint_step = -1
        self.suite: Any = None  # ftscale.eval.runner.TaskSuite when eval.tasks is set
        self.tokenizer: Any = None
        self.preference = False  # the data are preference pairs: the objective is cfg.preference.loss
        self.reference_kind: str | None = None  # "adapters" | "precomputed" (preference runs)
        self.references: dict[str, Any] = {}  # precomputed: "train" / "val/<source>" → ReferenceTable
        self.pair_sums: Any = None  # ftscale.train.preference.PairStats of the micro-batches since the last reset

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        """Build everything, then resume from the run's newest complete checkpoint, if any."""
        import torch

        cfg = self.cfg
        self.on_gpu = torch.cuda.is_available() and cfg.use_gpu is not False
        self.device = torch.device("cuda", torch.cuda.current_device()) if self.on_gpu else torch.device("cpu")
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if self.on_gpu else "cpu")
        import deepspeed

        from ftscale.data.loader import PackedLoader
        from ftscale.data.format import read_manifest
        from ftscale.train.ds_config import build_ds_config, resolve_precision
        from ftscale.train.adapters import apply_method, attn_implementation_for, quantization_config, require_cuda_for
        from ftscale.train.model import flops_per_token, load_model, trainable_parameters
        from ftscale.train.optim import make_optimizer, make_scheduler
        from ftscale.train.gate import Gate
        from ftscale.train.resume import choose_checkpoint
        from ftscale.train.rng import seed_everything
        from ftscale.train.spike import SpikeGuard
        from ftscale.train.torch_load import weights_only_loads

        require_cuda_for(cfg.method, self.on_gpu)
        weights_only_loads()
        seed_everything(cfg.seed + self.rank)
        torch.use_deterministic_algorithms(True, warn_only=True)
        self.manifest = read_manifest(cfg.data.path)
        self.gate = Gate(cfg.eval.select, cfg.eval.guard)
        if cfg.eval.tasks is not None:
            self._setup_tasks()
        self.precision = resolve_precision(cfg.precision, self.on_gpu)
        # bf16 weights when training in bf16 (DeepSpeed keeps fp32 master copies in the
        # optimizer); this is also what lets "auto" attention pick flash-attention varlen.
        self.compute_dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        model = load_model(cfg.model.path, cfg.model.config,
                           dtype="bfloat16" if self.precision == "bf16" else "float32",
                           attn_implementation=attn_implementation_for(cfg), seed=cfg.seed,
                           quantization=quantization_config(cfg))
        self.attn_implementation = model.config._attn_implementation
        self.model_config = model.config
        if cfg.model.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model = apply_method(model, cfg)
        self.trainable, self.total_params = trainable_parameters(model)
        self.flops_per_token = flops_per_token(self.model_config, cfg.seq_len, self.trainable / self.total_params)
        self.grad_accum = cfg.grad_accum_steps(self.world_size)
        self.guard = SpikeGuard(cfg.spike.window, cfg.spike.z_threshold, cfg.spike.min_history,
                                cfg.spike.max_spikes, cfg.spike.enabled)
        self.current_loss = 0.0
        self.verdict = None

        def judge(grad_norm: float) -> bool:
            self.verdict = self.guard.check(self.step, self.current_loss, grad_norm)
            return self.verdict.spike

        optimizer = make_optimizer(
            [p for p in model.parameters() if p.requires_grad], lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
            eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay, clip_norm=cfg.optim.grad_clip,
            partitioned=cfg.zero_stage >= 1, judge=judge)
        scheduler = make_scheduler(optimizer, cfg.optim.warmup_steps, cfg.max_steps, cfg.optim.lr, cfg.optim.min_lr)
        ds_config = build_ds_config(
            zero_stage=cfg.zero_stage, micro_batch_size=cfg.micro_batch_size, grad_accum_steps=self.grad_accum,
            world_size=self.world_size, precision=self.precision, offload_optimizer=cfg.offload_optimizer,
            offload_params=cfg.offload_params)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
        self.client_optimizer = optimizer
        self.loader = PackedLoader(
            cfg.data.path, cfg.data.mixture, cfg.seq_len, cfg.micro_batch_size, self.rank, self.world_size,
            cfg.seed, tokens_per_epoch=cfg.data.tokens_per_epoch, strategy=cfg.data.strategy,
            temperature=cfg.data.temperature, max_repeat=cfg.data.max_repeat)
        self.preference = self.loader.paired
        if self.preference:
            self.reference_kind = cfg.preference.reference_for(cfg.method)
        with self._scratch() as scratch:
            resume = choose_checkpoint(self.run_dir, self.rank, self.world_size, self.device, scratch)
            if resume is not None:
                self.load(resume)
        if self.reference_kind == "precomputed" and not self.references:
            self.references = self._reference_pass()
        if self.rank == 0:
            self.log_dir = self._stage_logs()
            self.metrics_file = open(self.log_dir / "metrics.jsonl", "a", encoding="utf-8")
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.log_dir / "tensorboard"))
            except ImportError:  # tensorboard is optional; the JSONL file has everything
                self.tb = None
            from ftscale.train.tracking import Trackers

            self.trackers = Trackers(cfg, self.run_dir, to_dict(cfg))
        if self.rank == 0:
            print(f"ftscale: {self.world_size} workers, {'GPU' if self.on_gpu else 'CPU'} ({torch.get_num_threads()} "
                  f"threads/worker), {self.precision}, ZeRO-{cfg.zero_stage}, {self.attn_implementation} attention, "
                  f"grad accum {self.grad_accum}, {self.trainable:,}/{self.total_params:,} trainable params",
                  flush=True)

    def _setup_tasks(self) -> None:
        """The eval tasks and the tokenizer of the prepared data (every rank reads all items)."""
        from ftscale.data.tokenize import load_tokenizer
        from ftscale.eval.runner import TaskSuite
        from ftscale.eval.tasks import load_tasks

        tok = self.manifest.tokenizer
        self.tokenizer = load_tokenizer(tok["path"], tok.get("chat_template")).hf
        if self.tokenizer is None:
            raise ConfigError("eval.tasks: task evaluation needs a Hugging Face tokenizer; the data was prepared "
                              f"with {tok['path']}")
        assert self.cfg.eval.tasks is not None
        self.suite = TaskSuite(load_tasks(self.cfg.eval.tasks), self.cfg.eval.batch_size)

    # ------------------------------------------------------------------ train

    def train(self) -> None:
        from ftscale.progress import StepClock

        cfg = self.cfg
        last = min(cfg.max_steps, cfg.stop_at_step or cfg.max_steps)
        self.clock = StepClock(self.step, last)
        if cfg.eval_on_start and self.step == 0:
            metrics = {"step": 0, **self.evaluate()}
            self._judge(metrics)
            self._log(metrics)
            self._report(metrics)
        while self.step < last:
            t0 = time.perf_counter()
            stats = self._train_step()
            elapsed = time.perf_counter() - t0
            self.step += 1
            verdict = self.verdict
            metrics = self._step_metrics(stats, elapsed)
            if verdict is not None and verdict.spike:
                metrics["skipped"] = verdict.reason
            report_ckpt = self.step % cfg.checkpoint_every == 0 or self.step == last
            stop = best = evaluated = False
            if cfg.eval_every and (self.step % cfg.eval_every == 0 or self.step == cfg.max_steps):
                metrics.update(self.evaluate())
                judged = self._judge(metrics)
                stop = self._early_stop(metrics) or judged.stop
                best, evaluated = judged.best, True
            if verdict is not None and verdict.rollback and self.last_checkpoint_step >= 0:
                self._log(metrics)
                self._rollback()
                continue
            self._log(metrics)
            if report_ckpt or stop or best:
                self.save(metrics, best=best)
            elif evaluated:
                self._report(metrics)
            if stop:
                break

    def _train_step(self) -> dict[str, float]:
        from ftscale.train.loss import scaled_loss
        from ftscale.train.preference import PairStats

        micro = [next(self.loader) for _ in range(self.grad_accum)]  # the loader is its own iterator
        # The loss is a mean over loss tokens, or over pairs for a preference objective.
        unit = "num_pairs" if self.preference else "num_loss_tokens"
        local = [sum(float(m[unit]) for m in micro), sum(float(m["num_tokens"]) for m in micro)]
        global_units, global_tokens = _all_reduce_sum(local, self.device)
        if global_units == 0:
            global_units = 1.0  # a batch with no targets contributes no gradient
        loss_total = 0.0
        self.pair_sums = PairStats()
        self.engine.train()
        for i, mb in enumerate(micro):
            loss_sum, _ = self._loss_sum(mb)
            self.engine.backward(scaled_loss(loss_sum, global_units, self.world_size, self.grad_accum))
            loss_total += float(loss_sum.detach())
            if i == len(micro) - 1:
                self.current_loss = _all_reduce_sum([loss_total], self.device)[0] / global_units
            self.verdict = None
            self.engine.step()
        stats = {"loss": self.current_loss, "global_tokens": global_tokens, "global_loss_tokens": global_units,
                 "slots": float(self.world_size * self.grad_accum * self.cfg.micro_batch_size * self.cfg.seq_len)}
        if self.preference:
            pairs = PairStats.from_list(_all_reduce_sum(self.pair_sums.as_list(), self.device))
            stats.update({k: v for k, v in pairs.metrics().items() if k != "loss"})
        return stats

    def _loss_sum(self, batch: dict[str, Any], split: str = "train") -> tuple[Any, int]:
        """``(S, n)`` of one micro-batch: the summed token cross-entropy (a tensor, with grad
        in training) and the number of loss tokens; for preference data the summed pair losses
        and the number of pairs (``_pair_loss_sum``). Logits are computed only at the positions
        that carry a loss (``keep_logits``)."""
        from ftscale.train.attention import forward_kwargs
        from ftscale.train.loss import kept_loss_sum, loss_positions
        from ftscale.train.model import keep_logits

        kwargs = forward_kwargs(batch, self.attn_implementation, dtype=self.compute_dtype, device=self.device)
        keep, targets = loss_positions(batch["labels"].to(self.device))
        if self.preference:
            return self._pair_loss_sum(batch, kwargs, keep, targets, split)
        with keep_logits(self.engine.module, keep):
            return kept_loss_sum(self.engine(**kwargs).logits, targets), targets.numel()

    def _pair_loss_sum(self, batch: dict[str, Any], kwargs: dict[str, Any], keep: Any, targets: Any,
                       split: str) -> tuple[Any, int]:
        """The preference loss of a micro-batch's pairs (``ftscale.train.preference``), its
        metrics added to ``pair_sums``. The policy's log-probs carry the gradient; the
        reference's come from the base with adapters off (one no-grad forward, eval mode) or
        from the precomputed table of ``split``."""
        import torch

        from ftscale.train.model import keep_logits
        from ftscale.train.preference import pair_losses, pair_stats, sequence_logps, target_sequences

        pref = self.cfg.preference
        seq = target_sequences(batch["labels"].to(self.device), batch["sequence_index"].to(self.device))
        n_seq = len(batch["sequence_doc"])
        module = self.engine.module
        with keep_logits(module, keep):
            policy, counts = sequence_logps(self.engine(**kwargs).logits, targets, seq, n_seq)
        if self.reference_kind == "adapters":
            was_training = module.training
            module.eval()
            with torch.no_grad(), module.disable_adapter(), keep_logits(module, keep):
                reference, _ = sequence_logps(module(**kwargs).logits, targets, seq, n_seq)
            module.train(was_training)
        else:
            reference, _ = self.references[split].lookup(batch["sequence_doc"], self.device)
        if pref.loss == "ipo":  # IPO compares per-token means
            policy, reference = policy / counts.clamp(min=1), reference / counts.clamp(min=1)
        losses, chosen_rewards, rejected_rewards = pair_losses(
            policy[0::2], policy[1::2], reference[0::2], reference[1::2], pref.beta, pref.loss, pref.label_smoothing)
        if self.pair_sums is not None:
            self.pair_sums.add(pair_stats(losses, chosen_rewards, rejected_rewards, policy[0::2], policy[1::2]))
        return losses.sum(), int(losses.numel())

    def _reference_pass(self) -> dict[str, Any]:
        """``reference: precomputed``: the log-probs of every side of the train split (and of each
        source's val split) under the starting weights, one pass over every pair on all ranks
        together (each rank scores its share; an all-reduce assembles the tables)."""
        import torch

        from ftscale.data.loader import PackedLoader
        from ftscale.train.attention import forward_kwargs
        from ftscale.train.loss import loss_positions
        from ftscale.train.model import keep_logits
        from ftscale.train.preference import ReferenceTable, sequence_logps, target_sequences

        cfg = self.cfg
        loaders = {"train": self.loader}
        for name, entry in sorted(self.manifest.sources.items()):
            if entry.val and name in self.loader.sources:
                loaders[f"val/{name}"] = PackedLoader(cfg.data.path, {name: 1.0}, cfg.seq_len, cfg.micro_batch_size,
                                                      self.rank, self.world_size, cfg.seed, split="val",
                                                      drop_last=False)
        module = self.engine.module
        was_training = module.training
        module.eval()
        tables = {}
        for split, loader in loaders.items():
            table = torch.zeros(2, loader.num_documents, dtype=torch.float32, device=self.device)
            with torch.no_grad():
                for batch in loader.pair_pass():
                    kwargs = forward_kwargs(batch, self.attn_implementation, dtype=self.compute_dtype,
                                            device=self.device)
                    labels = batch["labels"].to(self.device)
                    keep, targets = loss_positions(labels)
                    seq = target_sequences(labels, batch["sequence_index"].to(self.device))
                    docs = batch["sequence_doc"].to(self.device)
                    with keep_logits(module, keep):
                        logps, counts = sequence_logps(module(**kwargs).logits, targets, seq, len(docs))
                    table[0, docs] = logps
                    table[1, docs] = counts
            if torch.distributed.is_initialized():
                torch.distributed.all_reduce(table)  # every side was scored by exactly one rank
            host = table.cpu().numpy()
            tables[split] = ReferenceTable(host[0], host[1])
        module.train(was_training)
        if self.rank == 0:
            print(f"ftscale: reference log-probs of {sum(len(t.logps) for t in tables.values()) // 2:,} pairs "
                  "precomputed with the starting weights", flush=True)
        return tables

    def _step_metrics(self, stats: dict[str, float], elapsed: float) -> dict[str, Any]:
        from ftscale.train.metrics import mfu

        tokens_per_s = stats["global_tokens"] / elapsed
        out: dict[str, Any] = {
            "step": self.step,
            "loss": stats["loss"],
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": getattr(self.client_optimizer, "last_grad_norm", float("nan")),
            "tokens_per_s": tokens_per_s,
            ("pairs" if self.preference else "loss_tokens"): stats["global_loss_tokens"],
            "padding_fraction": 1.0 - stats["global_tokens"] / stats["slots"],
            "step_time_s": elapsed,
            "epoch": self.loader.state_dict()["epoch"],
        }
        out.update({k: v for k, v in stats.items() if k.startswith(("rewards/", "logps/"))})
        value = mfu(self.flops_per_token, tokens_per_s, self.world_size, self.cfg.peak_tflops, self.device)
        if value is not None:
            out["mfu"] = value
        return out

    # ------------------------------------------------------------------ eval

    def evaluate(self) -> dict[str, float]:
        import torch

        from ftscale.data.loader import PackedLoader

        from ftscale.train.preference import PairStats

        out: dict[str, float] = {}
        self.engine.eval()
        sums = []
        for name, entry in sorted(self.manifest.sources.items()):
            # A preference run is validated on its preference sources, a token run on the others.
            if not entry.val or (entry.kind == "preference") != self.preference or \
                    (self.preference and name not in self.loader.sources):
                continue
            loader = PackedLoader(self.cfg.data.path, {name: 1.0}, self.cfg.seq_len, self.cfg.micro_batch_size,
                                  self.rank, self.world_size, self.cfg.seed, split="val", max_epochs=1,
                                  drop_last=False)
            loss_sum, count = 0.0, 0.0
            self.pair_sums = PairStats()
            with torch.no_grad():
                for i, batch in enumerate(loader):
                    if i >= self.cfg.eval_batches:
                        break
                    s, n = self._loss_sum(batch, split=f"val/{name}")
                    loss_sum += float(s)
                    count += float(n)
            loss_sum, count = _all_reduce_sum([loss_sum, count], self.device)
            if self.preference:
                pairs = PairStats.from_list(_all_reduce_sum(self.pair_sums.as_list(), self.device))
                for key, value in pairs.metrics().items():
                    if key != "loss":
                        out[f"val_{key}/{name}"] = value
            if count:
                out[f"val_loss/{name}"] = loss_sum / count
                if not self.preference:
                    out[f"val_ppl/{name}"] = float(np.exp(min(loss_sum / count, 50.0)))
                sums.append((loss_sum, count))
        self.pair_sums = None
        if sums:
            out["val_loss"] = sum(s for s, _ in sums) / sum(c for _, c in sums)
        if self.suite is not None:
            out.update(self._task_scores())
        self.engine.train()
        return out

    def _task_scores(self) -> dict[str, float]:
        """``task/...`` metrics: each rank scores its shard of the items on the engine's module
        (under ZeRO-3 its forward gathers the parameter shards, in lockstep across ranks)."""
        from ftscale.eval.group import TorchGroup
        from ftscale.eval.runner import flatten, merge_records

        group = TorchGroup(self.device, synced=self.cfg.zero_stage == 3)
        records = self.suite.run_shard(self.engine.module, self.tokenizer, device=self.device, rank=self.rank,
                                       world_size=self.world_size, group=group)
        return flatten(self.suite.aggregate(merge_records(group.gather(records))))

    def _judge(self, metrics: dict[str, Any]) -> Any:
        """The forgetting gate's verdict on an evaluation, noted in its metrics."""
        verdict = self.gate.observe(metrics["step"], metrics)
        if verdict.regression is not None:
            metrics["guard/regression"] = verdict.regression
            metrics["guard/violations"] = self.gate.violations
        if verdict.best:
            metrics["best"] = True
        if verdict.stop:
            metrics["early_stop"] = metrics["guard_stop"] = True
        return verdict

    def _early_stop(self, metrics: dict[str, Any]) -> bool:
        if "val_loss" not in metrics:
            return False
        if self.best_val is None or metrics["val_loss"] < self.best_val:
            self.best_val = metrics["val_loss"]
            self.evals_without_gain = 0
            return False
        self.evals_without_gain += 1
        patience = self.cfg.early_stop_patience
        if patience and self.evals_without_gain >= patience:
            metrics["early_stop"] = True
            return True
        return False

    # ------------------------------------------------------------------ checkpoints

    def _shared_state(self) -> dict[str, Any]:
        """What every rank holds alike (the loss and norm the guard judges are all-reduced), as JSON."""
        return {
            "step": self.step,
            "loader": self.loader.state_dict(),
            "guard": self.guard.state_dict(),
            "gate": self.gate.state_dict(),
            "best_val": self.best_val,
            "evals_without_gain": self.evals_without_gain,
            "skipped_windows": self.skipped_windows,
        }

    def save(self, metrics: dict[str, Any], best: bool = False) -> None:
        """Every rank writes its part and lists it; once all uploads are done, rank 0 commits."""
        import ray.train

        from ftscale.train.resume import barrier
        from ftscale.train.rng import rng_state
        from ftscale.train.runs import clear, commit, write_rank_files
        from ftscale.train.storage import clear_remote, commit_remote, is_remote, join, local_path

        remote = is_remote(self.run_dir)
        name = checkpoint_name(self.step)
        if self.rank == 0:
            if remote:
                clear_remote(join(self.run_dir, name))
            else:
                clear(Path(local_path(self.run_dir)) / name)
        barrier()  # no rank uploads into what is left of an earlier attempt at this step
        with tempfile.TemporaryDirectory(prefix="ftscale-ckpt-") as tmp:
            self.engine.save_checkpoint(tmp, tag=DS_TAG)
            (Path(tmp) / RNG_FILE.format(rank=self.rank)).write_text(json.dumps(rng_state(self.on_gpu)))
            if self.rank == 0 and self.references:
                _save_references(Path(tmp) / REFERENCE_FILE, self.references)
            if self.rank == 0:
                run = {"config": to_dict(self.cfg), "step": self.step, "world_size": self.world_size,
                       "global_batch_rows": self._global_batch_rows(), "loader": self.loader.state_dict(),
                       "metrics": metrics, "state": self._shared_state(), "tokenizer": self.manifest.tokenizer,
                       "method": self.cfg.method, "gate": self.gate.describe()}
                (Path(tmp) / RUN_FILE).write_text(json.dumps(run, indent=2, default=str))
                base_config = getattr(self.model_config, "to_dict", lambda: {})()
                (Path(tmp) / "model_config.json").write_text(json.dumps(base_config, indent=2, default=str))
            write_rank_files(Path(tmp), self.rank)
            reported = _scalars(metrics)
            if self.cfg.eval.select is not None:
                reported[KEEP_SCORE] = self.step + (KEEP_BEST_BONUS if best else 0.0)
            ray.train.report(reported, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=name)
        barrier()  # report returns once this rank's upload is done: after the barrier, all are
        if self.rank == 0:
            if remote:
                commit_remote(self.run_dir, name, self.world_size, self.step)
            else:
                commit(Path(local_path(self.run_dir)) / name, self.world_size, self.step)
        self.last_checkpoint_step = self.step
        self._sync_logs()

    @staticmethod
    def _report(metrics: dict[str, Any]) -> None:
        """An evaluation without a checkpoint, reported to Ray (a sweep's scheduler sees it)."""
        import ray.train

        ray.train.report(_scalars(metrics))

    def load(self, path: Path) -> None:
        """Continue from checkpoint ``path`` (complete and verified: see ``resume``)."""
        from ftscale.train.resume import barrier
        from ftscale.train.rng import seed_everything, set_rng_state
        from ftscale.train.torch_load import refusal_message, refused

        run = _read_json(path / RUN_FILE)
        saved_world = run.get("world_size")
        if saved_world != self.world_size:
            self._check_elastic_resume(run, path / RUN_FILE)
        # ZeRO-1/2/3 partition the optimizer by rank: another world size loads DeepSpeed's
        # universal form of the checkpoint (one file per parameter), converted once.
        universal = saved_world != self.world_size and self.cfg.zero_stage >= 1
        source = self._universal_copy(path) if universal else path
        try:
            self._load_engine(source, universal)
        except pickle.UnpicklingError as e:
            if refused(e):
                raise InputError(refusal_message(path, e)) from e
            raise
        if universal:
            barrier()  # every rank has read the converted copy: it can go
            if self.rank == 0:
                shutil.rmtree(source, ignore_errors=True)
        self._load_shared(run.get("state"), path / RUN_FILE)
        if self.reference_kind == "precomputed":
            self.references = _load_references(path / REFERENCE_FILE)
        if saved_world == self.world_size:
            set_rng_state(_read_json(path / RNG_FILE.format(rank=self.rank)), self.on_gpu,
                          str(path / RNG_FILE.format(rank=self.rank)))
        else:
            # A rank's generators belong to its rank: with another world size there is no state to
            # take over, so every rank starts fresh streams, derived from the seed, rank and step.
            seed_everything(self.cfg.seed + self.rank + 7919 * self.step)
            if self.rank == 0:
                print(f"ftscale: resuming a {saved_world}-worker checkpoint on {self.world_size} workers: same "
                      "global batch and data sequence; random generators (dropout) reseeded", flush=True)
        self.last_checkpoint_step = self.step

    def _global_batch_rows(self) -> int:
        """Sequences per optimizer step, over all ranks and micro-batches."""
        return self.world_size * self.grad_accum * self.cfg.micro_batch_size

    def _check_elastic_resume(self, run: dict[str, Any], where: Path) -> None:
        """A checkpoint of another world size resumes only with the same ZeRO stage and global batch."""
        saved = run.get("config", {})
        if not isinstance(saved, dict) or saved.get("zero_stage") != self.cfg.zero_stage:
            raise ConfigError(f"zero_stage: the checkpoint ({where.parent.name}) was trained with ZeRO-"
                              f"{saved.get('zero_stage') if isinstance(saved, dict) else '?'}; resume with that stage")
        rows = run.get("global_batch_rows")
        if rows != self._global_batch_rows():
            raise ConfigError(f"num_workers: {where.parent.name} was trained with {rows} sequences per step on "
                              f"{run.get('world_size')} workers; {self.world_size} workers give "
                              f"{self._global_batch_rows()}, which would change the optimisation: choose a worker "
                              "count that divides tokens_per_step into whole micro-batches")

    def _universal_copy(self, checkpoint: Path) -> Path:
        """DeepSpeed's universal checkpoint of ``checkpoint`` (rank 0 converts it once into the
        run directory; every rank waits for it). A remote run's ranks each hold their own
        download of ``checkpoint``, so each converts its copy, beside it."""
        from argparse import Namespace

        from ftscale.train.resume import barrier
        from ftscale.train.storage import is_remote, local_path

        remote = is_remote(self.run_dir)
        base = checkpoint.parent if remote else Path(local_path(self.run_dir))
        target = base / UNIVERSAL_DIR / checkpoint.name
        if (self.rank == 0 or remote) and not (target / "done").is_file():
            from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

            tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            print(f"ftscale: converting {checkpoint.name} to DeepSpeed's universal format for "
                  f"{self.world_size} workers", flush=True)
            # One process, no pool: the conversion runs in this worker, with its weights-only loads.
            ds_to_universal(Namespace(input_folder=str(checkpoint / DS_TAG), output_folder=str(tmp / DS_TAG),
                                      num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False,
                                      strict=True, inject_missing_state=True))
            (tmp / "done").write_text(checkpoint.name)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        barrier()
        return target

    def _load_engine(self, path: Path, universal: bool) -> None:
        # DeepSpeed 0.19 reads this flag only when loading (engine.load_universal_checkpoint()),
        # so one engine can load either form; there is no public setter.
        self.engine._config.load_universal_checkpoint = universal
        self.engine.load_checkpoint(str(path), tag=DS_TAG, load_optimizer_states=True, load_lr_scheduler_states=True)

    def _load_shared(self, state: Any, where: Path) -> None:
        try:
            self.step = int(state["step"])
            self.loader.load_state_dict(state["loader"])
            self.guard.load_state_dict(state["guard"])
            self.gate.load_state_dict(state["gate"])
            self.best_val = None if state["best_val"] is None else float(state["best_val"])
            self.evals_without_gain = int(state["evals_without_gain"])
            self.skipped_windows = [dict(w) for w in state["skipped_windows"]]
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{where}: the run state is malformed ({type(e).__name__}: {e}); "
                             "the checkpoint is damaged") from e

    def _rollback(self) -> None:
        """Too many spikes: reload the last checkpoint and skip the data read since then."""
        from ftscale.train.resume import choose_checkpoint

        bad_until = self.loader.state_dict()
        with self._scratch() as scratch:
            ckpt_dir = choose_checkpoint(self.run_dir, self.rank, self.world_size, self.device, scratch)
            if ckpt_dir is None:
                return
            self.load(ckpt_dir)
        resumed = self.loader.state_dict()
        if bad_until["epoch"] == resumed["epoch"]:
            skip = bad_until["rows_consumed"] - resumed["rows_consumed"]
        else:
            skip = self.loader.rows_per_epoch - resumed["rows_consumed"]
        self.loader.skip_rows(skip)
        window = {"at_step": self.step, "epoch": resumed["epoch"], "from_row": resumed["rows_consumed"],
                  "rows_skipped": skip}
        self.skipped_windows.append(window)
        self._log({"step": self.step, "rollback": window})

    @contextlib.contextmanager
    def _scratch(self) -> Iterator[Path | None]:
        """Where this rank downloads the checkpoint it loads from a remote run (removed after
        loading); None for a local run, whose checkpoints are read where they are."""
        from ftscale.train.storage import is_remote

        if not is_remote(self.run_dir):
            yield None
            return
        with tempfile.TemporaryDirectory(prefix="ftscale-resume-") as tmp:
            yield Path(tmp)

    def _stage_logs(self) -> Path:
        """Rank 0's log directory: the run directory itself, or for a storage URI a local copy
        of its metrics (appended to on resume) that ``_sync_logs`` uploads."""
        from ftscale.train.storage import download, exists, is_remote, join

        if not is_remote(self.run_dir):
            Path(self.run_dir).mkdir(parents=True, exist_ok=True)
            return Path(self.run_dir)
        staging = Path(tempfile.mkdtemp(prefix="ftscale-run-"))
        if exists(join(self.run_dir, "metrics.jsonl")):
            download(join(self.run_dir, "metrics.jsonl"), staging / "metrics.jsonl")
        return staging

    def _sync_logs(self) -> None:
        """Upload rank 0's metrics and TensorBoard files to a remote run directory."""
        from ftscale.train.storage import is_remote, join, upload

        if self.log_dir is None or not is_remote(self.run_dir):
            return
        if self.metrics_file is not None:
            self.metrics_file.flush()
        if self.tb is not None:
            self.tb.flush()
        for name in ("metrics.jsonl", "tensorboard"):
            if (self.log_dir / name).exists():
                upload(self.log_dir / name, join(self.run_dir, name))

    # ------------------------------------------------------------------ logging

    def _log(self, metrics: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        if "loss" not in metrics and "val_loss" in metrics:
            print(f"step {metrics['step']}/{self.cfg.max_steps} " + " ".join(
                f"{k} {v:.4f}" for k, v in metrics.items() if _shown(k)), flush=True)
        if "loss" in metrics and self.progress is not None:
            self.progress.put_nowait({"step": metrics["step"], "total": self.cfg.max_steps, "loss": metrics["loss"],
                                      "tokens_per_s": metrics["tokens_per_s"]})
        elif "loss" in metrics and metrics["step"] % self.cfg.log_every == 0:
            pace = self.clock.describe(metrics["step"]) if self.clock is not None else ""
            print(f"step {metrics['step']}/{self.cfg.max_steps} loss {metrics['loss']:.4f} "
                  f"lr {metrics['lr']:.2e} grad_norm {metrics['grad_norm']:.3f} "
                  f"tokens/s {metrics['tokens_per_s']:,.0f}"
                  + "".join(f" {k} {v:.4f}" for k, v in metrics.items() if _shown(k))
                  + (f" SKIPPED ({metrics['skipped']})" if "skipped" in metrics else "")
                  + (f" ({pace})" if pace else ""), flush=True)
        if self.metrics_file is not None:
            self.metrics_file.write(json.dumps({"time": time.time(), **metrics}, default=str) + "\n")
            self.metrics_file.flush()
        if self.tb is not None:
            for k, v in _scalars(metrics).items():
                if k != "step":
                    self.tb.add_scalar(k, v, metrics.get("step", self.step))
        if self.trackers is not None:
            self.trackers.log(_scalars(metrics), metrics.get("step", self.step))

    def cleanup(self) -> None:
        self._sync_logs()
        if self.metrics_file is not None:
            self.metrics_file.close()
        if self.tb is not None:
            self.tb.close()
        if self.trackers is not None:
            self.trackers.close()


def _shown(key: str) -> bool:
    """Evaluation metrics printed in the log line: val losses and per-task scores."""
    return key.startswith(("val_loss", "rewards/accuracy", "val_rewards/accuracy")) or \
        (key.startswith("task/") and key.count("/") == 2)


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _save_references(path: Path, tables: dict[str, Any]) -> None:
    """The precomputed reference tables as one .npz of plain float32 arrays (no pickle)."""
    arrays = {}
    for split, table in tables.items():
        arrays[f"{split}:logps"] = table.logps
        arrays[f"{split}:counts"] = table.counts
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _load_references(path: Path) -> dict[str, Any]:
    """The tables ``_save_references`` wrote; InputError when the file is missing or damaged."""
    from ftscale.train.preference import ReferenceTable

    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{path} cannot be read ({e}); the checkpoint of a reference: precomputed run is "
                         "damaged") from e
    tables = {}
    for key in arrays:
        split, _, kind = key.rpartition(":")
        if kind == "logps" and f"{split}:counts" in arrays and \
                arrays[key].shape == arrays[f"{split}:counts"].shape and arrays[key].ndim == 1:
            tables[split] = ReferenceTable(arrays[key], arrays[f"{split}:counts"])
    if "train" not in tables:
        raise InputError(f"{path} holds no train reference table; the checkpoint is damaged")
    return tables


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object of a checkpoint; InputError when it is unreadable or not an object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"{path} cannot be read ({e}); the checkpoint is damaged") from e
    if not isinstance(value, dict):
        raise InputError(f"{path}: expected a JSON object; the checkpoint is damaged")
    return value


def train_loop(loop_config: dict[str, Any]) -> None:
    """Entry point of every Ray Train worker."""
    import ray.train

    cfg = build(TrainConfig, loop_config["config"])
    ctx = ray.train.get_context()
    recipe = Recipe(cfg, ctx.get_world_rank(), ctx.get_world_size(), loop_config["run_dir"])
    if recipe.rank == 0:
        recipe.progress = loop_config.get("progress")
    # On a first launch, a relaunch and a restart after a failure alike, the run directory (or
    # storage URI) is searched for its newest complete checkpoint (not Ray's last report, which
    # may be torn).
    recipe.setup()
    try:
        recipe.train()
    finally:
        recipe.cleanup()
