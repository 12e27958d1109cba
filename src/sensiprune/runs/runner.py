"""Run a recipe: prune, fine-tune, checkpoint after every stage, resume after a crash, report.

A run is a fixed list of stages (pretraining epochs, then for each pruning step the prune and
its fine-tuning epochs). After each stage the whole state is checkpointed atomically, so
re-running the same command continues after the last finished stage and, with the same seed on
the same machine, ends with exactly the weights an uninterrupted run ends with.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sensiprune import distributed
from sensiprune.analysis.sensitivity import SensitivityTable, sensitivity
from sensiprune.data import checked_loss, default_loss
from sensiprune.errors import SensipruneError
from sensiprune.io.atomic import atomic_write_bytes
from sensiprune.io.onnx import deployable, export_onnx, require_exporter
from sensiprune.io.saving import save
from sensiprune.measure import count_flops, count_parameters, latency, weights_kept
from sensiprune.progress import progress
from sensiprune.pruning import prune_with
from sensiprune.report.run import METRICS_FILE, RESULTS_FILE, write_run_report
from sensiprune.result import PruneResult
from sensiprune.runs.checkpoint import read_checkpoint, read_progress, restore_rng, write_checkpoint
from sensiprune.runs.distill import embedding_distillation, embedding_similarity, frozen_copy
from sensiprune.runs.loading import (
    build_model,
    call_factory,
    data_splits,
    import_object,
    limited,
    model_inputs,
    read_budget,
)
from sensiprune.runs.lock import DirectoryLock
from sensiprune.runs.recipe import RESUME_GROUPS, Recipe, load_recipe
from sensiprune.runs.train import correct_predictions, evaluate, finetune
from sensiprune.selection.allocation import allocate, warn_if_clamped
from sensiprune.selection.groups import channel_multiple
from sensiprune.selection.schedule import sparsity_at, structured_step
from sensiprune.selection.unstructured import Sparsity
from sensiprune.structure.adapters import KINDS
from sensiprune.structured import layer_widths
from sensiprune.targets import require_targets, resolve_layer_names

log = logging.getLogger(__name__)
CHECKPOINT_DIR = "checkpoint"
DENSE_DIR = "dense"
MODEL_DIR = "model"
SENSITIVITY_FILE = "sensitivity.json"
BUDGET_FILE = "budget.json"


@dataclass(frozen=True)
class Stage:
    """``step`` 0 is pretraining; ``epoch`` 0 is the prune of that step, 1.. its epochs."""

    step: int
    epoch: int

    def __str__(self) -> str:
        if self.step == 0:
            return f"pretraining epoch {self.epoch}"
        return f"step {self.step} " + (f"epoch {self.epoch}" if self.epoch else "prune")


def plan(recipe: Recipe) -> list[Stage]:
    stages = [Stage(0, e) for e in range(1, recipe.model.pretrain_epochs + 1)]
    epochs = range(1, recipe.finetune.epochs + 1)
    if recipe.schedule.kind == "gradual":
        return stages + [Stage(1, e) for e in epochs]
    for step in range(1, recipe.schedule.steps + 1):
        stages += [Stage(step, 0)] + [Stage(step, e) for e in epochs]
    return stages


@dataclass(frozen=True)
class RunResult:
    directory: Path
    report: Path
    resumed_after: str | None  # the stage a resumed run continued after


def run_recipe(
    recipe_path: str | Path, restart: bool = False, show_progress: bool = True
) -> RunResult:
    """Validate everything, then run (or resume) the recipe and write its report."""
    recipe = load_recipe(recipe_path)
    with PruningRun(recipe, Path(recipe_path), restart, show_progress) as run:
        return run.run()


class PruningRun:
    """A recipe's run in its output directory, which it holds locked from its first write
    until the ``with`` block that made it ends."""

    def __init__(self, recipe: Recipe, path: Path, restart: bool, show_progress: bool) -> None:
        distributed.init_from_environment()
        self.recipe = recipe
        self.out = Path(recipe.output)
        self.lock = DirectoryLock(self.out)
        self.show = show_progress
        self.stages = plan(recipe)
        self.search = [Path.cwd(), path.resolve().parent]
        self.source = path.read_text()
        existing = read_progress(self.out / CHECKPOINT_DIR) if not restart else None
        changed = self._changed_since(existing, path) if existing is not None else set()
        self.retuned = "finetune" in changed
        self.stale = (SENSITIVITY_FILE, BUDGET_FILE) if "prune" in changed else ()
        self.resuming = existing is not None
        _seed(recipe.seed)
        self.data = data_splits(
            call_factory(recipe.data.factory, recipe.data.kwargs, "data.factory", self.search),
            recipe.data.batch_size,
        )
        # each rank trains and scores on its part; the score batches are chosen before sharing
        self.train = distributed.shard(self.data.train)
        count = recipe.prune.score_batches
        scored = self.data.train if count is None else limited(self.data.train, count)
        self.score_data = distributed.shard(scored)
        model = build_model(self.factory, recipe.model.weights)
        self._bind_loss_and_metric(model)
        self.inputs = model_inputs(next(iter(self.data.validation)), model)
        self.sample = tuple(t[:1] for t in self.inputs)  # FLOPs are reported per sample
        checked_loss(self.loss_fn, model, next(iter(self.data.train)))  # fails before writing
        budget_file = recipe.prune.target.budget
        self.file_budget = read_budget(budget_file) if budget_file is not None else None
        # names that match nothing are found now, before pretraining writes anything
        targets = require_targets(model, recipe.prune.ignore)
        if self.file_budget is not None:
            resolve_layer_names(targets, [k for k in self.file_budget if k not in KINDS])
        if recipe.report.onnx:
            require_exporter()
        self.model = model
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.progress: dict[str, Any] = {"fingerprints": recipe.fingerprints(), "completed": 0}
        self.restart = restart

    def _changed_since(self, progress: dict[str, Any], path: Path) -> set[str]:
        """The groups of :data:`RESUME_GROUPS` changed since the checkpoint; a change that
        voids finished stages is refused."""
        saved = progress.get("fingerprints", {})
        changed = {g for g, v in self.recipe.fingerprints().items() if saved.get(g) != v}
        pretraining = sum(1 for stage in self.stages if stage.step == 0)
        voiding = changed & ({"run", "prune"} if progress["completed"] > pretraining else {"run"})
        if voiding:
            sections = ", ".join(s for g in sorted(voiding) for s in RESUME_GROUPS[g])
            raise SensipruneError(
                f"{path} has changed since {self.out} was started, in what its finished stages "
                f"depend on ({sections}): pass --restart to start over (its checkpoint is "
                "replaced), or use another output directory"
            )
        return changed

    def __enter__(self) -> PruningRun:
        return self

    def __exit__(self, *_: object) -> None:
        self.lock.release()

    def _bind_loss_and_metric(self, teacher: nn.Module) -> None:
        """Import the recipe's loss and metric; the distillation ones compare with ``teacher``,
        the unpruned model."""
        recipe = self.recipe
        if recipe.loss == "distillation" or recipe.metric == "embedding_similarity":
            teacher = frozen_copy(teacher)  # one copy for both
        if recipe.loss == "distillation":
            self.loss_fn = embedding_distillation(teacher, copy_teacher=False)
        else:
            self.loss_fn = (
                import_object(recipe.loss, "loss", self.search) if recipe.loss else default_loss
            )
        if recipe.metric == "embedding_similarity":
            self.metric = embedding_similarity(teacher, copy_teacher=False)
        elif recipe.metric == "accuracy":
            self.metric = correct_predictions
        else:
            self.metric = import_object(recipe.metric, "metric", self.search)

    def factory(self) -> nn.Module:
        spec = self.recipe.model
        model = call_factory(spec.factory, spec.kwargs, "model.factory", self.search)
        if not isinstance(model, nn.Module):
            raise SensipruneError(f"model.factory returned {type(model).__name__}, not a Module")
        return model

    def run(self) -> RunResult:
        resumed_after = self._start()
        self._run_stages(len(self.stages))
        return RunResult(self.out, self._finish(), resumed_after)

    def dense_model(self) -> nn.Module:
        """The model as pruning finds it. Pretraining it asks for runs here, checkpointed like
        any stage, so a later ``prune`` of the same recipe continues from it."""
        self._start()
        pretraining = sum(1 for stage in self.stages if stage.step == 0)
        if self.progress["completed"] > pretraining:
            return build_model(self.factory, str(self.out / DENSE_DIR))
        self._run_stages(pretraining)
        return self.model

    def sensitivity_table(self, model: nn.Module) -> SensitivityTable:
        """Per-layer curves on the validation split; cached in the run directory, resumable."""
        spec = self.recipe.prune
        return sensitivity(
            model,
            lambda m: evaluate(m, self.data.validation, self.metric),
            self.recipe.measured_sparsities(),
            spec.criterion,
            self.score_data,
            self.loss_fn,
            ignore=spec.ignore,
            show_progress=self.show,
            resume=self.out / SENSITIVITY_FILE,
            structured=spec.structured,
            example_inputs=self.inputs,
        )

    def _start(self) -> str | None:
        if distributed.is_main():
            self._prepare_directory()
        distributed.barrier()
        return self._resume() if self.resuming else None

    def _run_stages(self, until: int) -> None:
        first = self.progress["completed"]
        for index in progress(range(first, until), "stages", self.show, until - first):
            stage = self.stages[index]
            distributed.same_rng()
            started = time.perf_counter()
            record = self._run_stage(stage)
            record.update(stage=str(stage), seconds=round(time.perf_counter() - started, 3))
            self._log(record)
            self.progress["completed"] = index + 1
            self.progress["last_stage"] = [stage.step, stage.epoch]
            if distributed.is_main():
                write_checkpoint(
                    self.out / CHECKPOINT_DIR,
                    self.model,
                    self.progress,
                    self.optimizer,
                    self.scheduler,
                )
            log.info("%s: %s", stage, record)

    # -- setup -----------------------------------------------------------------------------
    def _prepare_directory(self) -> None:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.out):
                pass
        except OSError as exc:
            raise SensipruneError(
                f"output {self.out} is not writable ({exc.strerror}): choose another directory"
            ) from exc
        self.lock.acquire()
        stale = (CHECKPOINT_DIR, METRICS_FILE, SENSITIVITY_FILE, BUDGET_FILE, DENSE_DIR)
        for name in stale if self.restart else self.stale:  # curves of other prune settings
            path = self.out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        atomic_write_bytes(self.out / "recipe.yaml", self.source.encode())

    def _resume(self) -> str:
        checkpoint = read_checkpoint(self.out / CHECKPOINT_DIR, self.factory)
        self.model, self.progress = checkpoint.model, checkpoint.progress
        last = self.progress.get("last_stage")
        if self.retuned and last is not None:  # the epochs may have changed: find it again
            self.progress["completed"] = sum(
                1 for s in self.stages if (s.step, s.epoch) <= tuple(last)
            )
        self.progress["fingerprints"] = self.recipe.fingerprints()
        done = self.progress["completed"]
        stage = self.stages[min(done, len(self.stages)) - 1]
        if checkpoint.optimizer is not None:
            self._new_optimizer(stage.step)
            if not self.retuned:
                self.optimizer.load_state_dict(checkpoint.optimizer)
                if self.scheduler is not None and checkpoint.scheduler is not None:
                    self.scheduler.load_state_dict(checkpoint.scheduler)
        if distributed.is_main():
            self._truncate_log(self.progress.get("log_lines", 0))
        restore_rng(checkpoint.rng)  # last: building the model above drew random numbers
        if self.retuned:
            log.warning(
                "the recipe's finetune section changed: resuming %s after %s with the new "
                "settings and a fresh optimizer; %d stage(s) to run",
                self.out, stage, max(len(self.stages) - done, 0),
            )  # fmt: skip
        else:
            log.warning("resuming %s after %s", self.out, stage)
        return str(stage)

    # -- stages ----------------------------------------------------------------------------
    def _run_stage(self, stage: Stage) -> dict[str, Any]:
        if stage.step >= 1 and "dense" not in self.progress:
            self.progress["dense"] = self._measure_dense()
        if stage.epoch == 0:
            return self._prune_step(stage.step)
        if stage.epoch == 1:
            self._new_optimizer(stage.step)
        hook = self._gradual_hook(stage.epoch) if self._gradual and stage.step else None
        try:
            with distributed.data_parallel(self.model) as trained:
                tuned = finetune(
                    trained,
                    self.train,
                    1,
                    self.loss_fn,
                    self.optimizer,
                    show_progress=self.show,
                    before_step=hook,
                )
        except SensipruneError as exc:
            done = self.progress["completed"]
            kept = f"after {self.stages[done - 1]}" if done else "none yet"
            raise SensipruneError(
                f"{exc} (during {stage}); the last good checkpoint ({kept}) is kept in "
                f"{self.out / CHECKPOINT_DIR}"
            ) from exc
        if self.scheduler is not None:
            self.scheduler.step()
        return {
            "train_loss": tuned.epoch_losses[0],
            "val": self._validate(),
            **self._sparsity_fields(),
        }

    def _prune_step(self, step: int) -> dict[str, Any]:
        self.optimizer = self.scheduler = None  # pruned tensors change: fresh state per step
        seed, (sparsity, multiple) = self.recipe.seed + step, self._step_sparsity(step)
        if sparsity == {}:  # whole counts: every family already at this step's count
            log.info("step %d: every family already at its count", step)
        else:
            log.info("%s", self._prune_to(sparsity, seed, multiple))
        return {"val": self._validate(), **self._sparsity_fields()}

    def _prune_to(self, sparsity: Sparsity, seed: int, round_to: int | None = None) -> PruneResult:
        """``round_to``: this step's channel multiple where it is not the recipe's (a step
        rounded up cuts nothing from a narrow family: 32 channels to 8 in multiples of 8 would
        come back to 24 at every step)."""
        options = self.recipe.prune.options(self.inputs, seed, self.show)
        if round_to is not None and options.structured is not None:
            options = replace(options, structured=replace(options.structured, round_to=round_to))
        return prune_with(self.model, sparsity, options, self.score_data, self.loss_fn)

    @property
    def _gradual(self) -> bool:
        return self.recipe.schedule.kind == "gradual"

    def _gradual_hook(self, epoch: int):
        """Prune at the AGP event steps that fall into this epoch (counted in batches)."""
        per_epoch = self._batches_per_epoch
        events = self.recipe.schedule.steps
        span = self.recipe.pruning_epochs * per_epoch
        at = {(i - 1) * span // events: i for i in range(events, 0, -1)}
        offset = (epoch - 1) * per_epoch

        def before_step(batch_index: int) -> None:
            event = at.get(offset + batch_index)
            if event is not None:
                self._prune_to(self._target_at(event), self.recipe.seed + event)

        return before_step

    @functools.cached_property
    def _batches_per_epoch(self) -> int:
        """Training batches every rank reaches in an epoch; counted once, by len() where the
        loader has one (counting by iteration would load a whole epoch of data)."""
        try:
            mine = len(self.train)
        except TypeError:  # an iterable without a length
            mine = sum(1 for _ in self.train)
        return min(distributed.gather(mine))

    def _target(self) -> Sparsity:
        target = self.recipe.prune.target
        if target.sparsity is not None:
            return target.sparsity
        if "budget" not in self.progress:
            self.progress["budget"] = (
                self.file_budget if self.file_budget is not None else self._allocated_budget()
            )
            if distributed.is_main():
                atomic_write_bytes(
                    self.out / BUDGET_FILE, json.dumps(self.progress["budget"], indent=1).encode()
                )
        return dict(self.progress["budget"])

    def _target_at(self, step: int) -> Sparsity:
        schedule = self.recipe.schedule
        return sparsity_at(self._target(), step, schedule.steps, schedule.curve)

    def _step_sparsity(self, step: int) -> tuple[Sparsity, int | None]:
        """What step ``step`` prunes, and its channel multiple (None: the recipe's).
        Unstructured steps name total sparsity; structured ones the share of what is left
        (``schedule.structured_step``: whole counts where a budget per layer and rounded
        counts give widths to count from, else rounded at the last step only)."""
        if not self.recipe.prune.structured:
            return self._target_at(step), None
        spec, schedule = self.recipe.prune, self.recipe.schedule
        target = self._target()
        widths = self._widths(target) if step == 1 else self.progress.get("widths")
        multiple = channel_multiple(self.model, spec.round_to)
        return structured_step(target, step, schedule.steps, schedule.curve, widths, multiple,
                               spec.min_density)  # fmt: skip

    def _widths(self, target: Sparsity) -> dict[str, int] | None:
        """The channel count of each layer ``target`` names (all, for one sparsity per
        layer), read off the unpruned model and kept in the progress for a resumed run;
        None where the steps are not rounded or a global ranking decides the counts."""
        spec = self.recipe.prune
        self.progress.pop("widths", None)
        if spec.round_to == 1 or self.recipe.schedule.steps == 1:
            return None
        if not isinstance(target, dict) and spec.scope != "layer":
            return None
        widths = layer_widths(self.model, self.inputs, spec.ignore)
        named = target if isinstance(target, dict) else widths
        if not set(named) <= set(widths):  # per-kind budgets (heads, ffn) are not layers
            return None
        self.progress["widths"] = {layer: widths[layer] for layer in named}
        return self.progress["widths"]

    def _allocated_budget(self) -> dict[str, float]:
        spec, target = self.recipe.prune, self.recipe.prune.target
        budget = allocate(
            self.sensitivity_table(self.model),
            max_drop=target.max_drop,
            target_flops=target.flops,
            min_density=spec.min_density,
        )
        warn_if_clamped(budget)
        return dict(budget)

    def _new_optimizer(self, step: int) -> None:
        self.optimizer = self.recipe.finetune.optimizer.build(self.model)
        epochs = self.recipe.model.pretrain_epochs if step == 0 else self.recipe.finetune.epochs
        self.scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=epochs)
            if self.recipe.finetune.lr_schedule == "cosine"
            else None
        )

    # -- measuring -------------------------------------------------------------------------
    def _validate(self) -> float:
        return evaluate(self.model, self.data.validation, self.metric)

    def _sparsity_fields(self) -> dict[str, Any]:
        params = count_parameters(self.model)
        dense = self.progress.get("dense", {}).get("params", params.total)
        return {"params": params.nonzero, "compression": round(dense / max(params.nonzero, 1), 4)}

    def _measure_dense(self) -> dict[str, Any]:
        if distributed.is_main():
            save(self.model, self.out / DENSE_DIR)
        return {
            "val": self._validate(),
            "test": self._test(self.model),
            "params": count_parameters(self.model).nonzero,
            "flops": count_flops(self.model, *self.sample).effective,
        }

    def _test(self, model: nn.Module) -> float | None:
        return evaluate(model, self.data.test, self.metric) if self.data.test else None

    def _finish(self) -> Path:
        """Measure, save and report: rank 0's work; the other ranks are done."""
        if not distributed.is_main():
            return self.out / "report.md"
        dense_model = build_model(self.factory, str(self.out / DENSE_DIR))
        flops = count_flops(self.model, *self.sample)
        final = {
            "val": self._validate(),
            "test": self._test(self.model),
            "params": count_parameters(self.model).nonzero,
            "flops_dense_kernels": flops.dense,
            "flops": flops.effective,
        }
        if self.recipe.report.latency:
            final["latency_s"] = latency(deployable(self.model), *self.inputs)
            final["latency_batch"] = len(self.inputs[0])
            self.progress["dense"]["latency_s"] = latency(dense_model, *self.inputs)
        save(self.model, self.out / MODEL_DIR)
        if self.recipe.report.onnx:
            export_onnx(self.model, self.inputs, self.out / "model.onnx")
        results = {
            "recipe": self.recipe.model_dump(mode="json"),
            "dense": self.progress["dense"],
            "pruned": final,
            "layers": weights_kept(dense_model, self.model),
            "budget": self.progress.get("budget"),
        }
        atomic_write_bytes(self.out / RESULTS_FILE, json.dumps(results, indent=1).encode())
        return write_run_report(self.out)

    # -- the metrics log -------------------------------------------------------------------
    def _log(self, record: dict[str, Any]) -> None:
        if distributed.is_main():
            with open(self.out / METRICS_FILE, "a") as handle:
                handle.write(json.dumps(record) + "\n")
        self.progress["log_lines"] = self.progress.get("log_lines", 0) + 1

    def _truncate_log(self, lines: int) -> None:
        """Drop records of stages that ran after the checkpoint: they are about to rerun."""
        path = self.out / METRICS_FILE
        kept = path.read_text().splitlines(keepends=True)[:lines] if path.exists() else []
        atomic_write_bytes(path, "".join(kept).encode())


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
