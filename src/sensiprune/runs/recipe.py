"""The YAML recipe of a pruning run: every field typed, documented and checked before any work.

Errors name the file, the line and the field, e.g.
``recipe.yaml:12: schedule.steps: must be greater than 0, got -3``. Relative paths in a recipe
are read from the directory the command runs in; import paths are looked up there and beside
the recipe, so a model defined in a file next to the recipe needs no installing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)
from torch import nn

from sensiprune import criteria
from sensiprune.compress import check_goal
from sensiprune.errors import SensipruneError
from sensiprune.options import PruneOptions, StructuredOptions
from sensiprune.selection.unstructured import parse_pattern

ImportPath = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$",
        description="an import path 'package.module:attribute'",
    ),
]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]


def _known_criterion(name: str) -> str:
    if name not in criteria.available():
        raise ValueError(f"unknown criterion {name!r}; known: {', '.join(criteria.available())}")
    return name


CriterionName = Annotated[str, AfterValidator(_known_criterion)]


def _multiple(value: int | str) -> int | str:
    if value != "auto" and not (isinstance(value, int) and value >= 1):
        raise ValueError(f"must be a positive integer or 'auto', got {value!r}")
    return value


ChannelMultiple = Annotated[StrictInt | StrictStr, AfterValidator(_multiple)]


class Section(BaseModel):
    """Unknown fields are errors: a typo must not silently fall back to a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(Section):
    factory: ImportPath = Field(description="callable that builds the model, 'pkg.module:fn'")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments to it")
    weights: str | None = Field(
        default=None,
        description="weights to start from: a .safetensors file, a torch checkpoint (read with "
        "weights_only=True, so a pickle with code in it is refused) or a directory written by "
        "sensiprune.save",
    )
    pretrain_epochs: int = Field(
        default=0, ge=0, description="train this many epochs before pruning (no weights yet)"
    )


class DataSpec(Section):
    factory: ImportPath = Field(
        description="callable returning train / validation (or val) / test (optional) batch "
        "iterables or torch Datasets, as attributes or mapping keys"
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments to it")
    batch_size: int = Field(
        default=64, gt=0, description="batch size for splits given as Datasets (train shuffled)"
    )


class TargetSpec(Section):
    sparsity: Fraction | None = Field(
        default=None, description="fraction of prunable weights (or channels) to remove"
    )
    flops: float | None = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description="fraction of FLOPs to keep; budget allocated from measured sensitivity "
        "(structured only)",
    )
    max_drop: float | None = Field(
        default=None,
        gt=0.0,
        description="largest validation-metric drop to allow; budget allocated from measured "
        "sensitivity",
    )
    budget: str | dict[str, Fraction] | None = Field(
        default=None,
        description="{layer: sparsity}, inline or a JSON file as `sensiprune analyze` writes; "
        "for transformers 'heads', 'query_heads' (inside key/value groups) and 'ffn' stand for "
        "every block's, and 'hidden' for the model dimension",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> TargetSpec:
        given = [
            k for k in ("sparsity", "flops", "max_drop", "budget") if getattr(self, k) is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of sparsity, flops, max_drop, budget"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self

    @property
    def needs_analysis(self) -> bool:
        return self.flops is not None or self.max_drop is not None


def _checked_by(check: Callable[[Any], object]) -> Callable[[Any], Any]:
    """A field validator from a check that raises SensipruneError: its one line becomes the
    field's error (None passes: the field was left out)."""

    def validate(value: Any) -> Any:
        if value is not None:
            try:
                check(value)
            except SensipruneError as exc:
                raise ValueError(str(exc)) from None
        return value

    return validate


class PruneSpec(Section):
    criterion: CriterionName = Field(default="taylor", description="see `sensiprune criteria`")
    target: TargetSpec
    structured: bool = Field(default=False, description="remove whole channels / heads / units")
    scope: Literal["global", "layer", "row"] = Field(
        default="global", description="rank weights over the model, per layer or per row"
    )
    normalize: Literal["lamp", "l2", "none"] = Field(
        default="lamp", description="per-layer score normalisation before a global ranking"
    )
    ignore: list[str] = Field(default_factory=list, description="module names never pruned")
    min_density: float = Field(
        default=0.01, ge=0.0, le=1.0, description="fraction every layer keeps at least"
    )
    round_to: ChannelMultiple = Field(
        default=1,
        description="structured: channel counts multiple of N ('auto': the hardware's vector)",
    )
    score_batches: int | None = Field(
        default=None, gt=0, description="training batches to score on (default: all)"
    )
    pattern: Annotated[str | None, AfterValidator(_checked_by(parse_pattern))] = Field(
        default=None,
        description="'N:M' (such as '2:4'): N zeros in every M consecutive inputs of a row; "
        "target.sparsity N/M, one_shot, not structured",
    )
    blockwise: bool | None = Field(
        default=None,
        description="one block at a time, as language models are pruned: where it applies "
        "(default), always (true: or say why not), or never (false)",
    )

    def options(self, example_inputs: object, seed: int, show_progress: bool) -> PruneOptions:
        """The settings of every prune this recipe runs."""
        shape = StructuredOptions(example_inputs, self.round_to) if self.structured else None
        return PruneOptions(
            self.criterion,
            self.scope,
            tuple(self.ignore),
            self.min_density,
            self.normalize,
            seed=seed,
            structured=shape,
            show_progress=show_progress,
            pattern=self.pattern,
            blockwise=self.blockwise,
        )


class CompressSpec(Section):
    target: Annotated[dict[str, float] | None, AfterValidator(_checked_by(check_goal))] = Field(
        default=None,
        description="the goal of `sensiprune compress`, one of params (fraction of the "
        "parameters kept), bytes (fraction of the saved file kept), flops (fraction of the "
        "FLOPs kept), speedup (times faster, "
        "measured on this device at the validation batch size) or max_drop (largest drop of "
        "the metric), e.g. {params: 0.1} or {speedup: 2.0}; max_drop beside another goal is "
        "the drop after fine-tuning at which to stop short of it, e.g. "
        "{speedup: 3.0, max_drop: 0.02}",
    )
    criterion: CriterionName | None = Field(
        default=None,
        description="default: obs for params, bytes and max_drop, taylor for flops and speedup",
    )
    round_to: ChannelMultiple | None = Field(
        default=None,
        description="channel counts kept multiples of N for flops and speedup goals "
        '("auto": one SIMD vector of this device); default: any count, a speedup goal\'s '
        "rounded up to whole vectors where that measures as fast",
    )
    latency_cache: str | None = Field(
        default=None,
        description="directory where latency tables measured for speedup goals are kept and "
        "reused (per architecture, device, dtype and batch); default: measured afresh",
    )
    folds: int = Field(default=5, ge=2, description="k-fold cross-validation of the budget")
    steps: int | None = Field(
        default=None,
        ge=1,
        description="prune / fine-tune steps (cubic schedule); default 1, or 4 geometric ones "
        "with max_drop beside another goal",
    )
    epochs_per_step: int = Field(default=5, ge=0, description="fine-tuning after each step")


class AnalysisSpec(Section):
    sparsities: list[Fraction] = Field(
        default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95],
        min_length=1,
        description="per-layer sparsities measured for the sensitivity curves",
    )
    folds: int = Field(
        default=5,
        ge=0,
        description="k-fold cross-validation of the allocated budget on the validation split "
        "(0 skips it)",
    )


class CompareSpec(Section):
    criteria: list[CriterionName] = Field(
        default_factory=lambda: ["magnitude", "random", "taylor", "obd", "snip", "activation"],
        min_length=1,
        description="criteria side by side (add perturbation, the measured loss change: one "
        "forward pass per weight, small models only)",
    )
    sparsities: list[Fraction] = Field(
        default_factory=lambda: [0.5, 0.8, 0.9, 0.95], min_length=1, description="x axis"
    )


class OptimizerSpec(Section):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(default=1e-3, gt=0.0)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0, description="sgd only")
    weight_decay: float = Field(default=0.0, ge=0.0)

    def build(self, model: nn.Module) -> torch.optim.Optimizer:
        params = [p for p in model.parameters() if p.requires_grad]
        if self.name == "sgd":
            return torch.optim.SGD(
                params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
            )
        kind = torch.optim.AdamW if self.name == "adamw" else torch.optim.Adam
        return kind(params, lr=self.lr, weight_decay=self.weight_decay)


class FinetuneSpec(Section):
    epochs: int = Field(default=1, ge=0, description="epochs after each pruning step")
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    lr_schedule: Literal["constant", "cosine"] = Field(
        default="constant", description="per epoch, restarted after each pruning step"
    )


class ScheduleSpec(Section):
    kind: Literal["one_shot", "iterative", "gradual"] = Field(
        default="one_shot",
        description="one_shot: prune once, fine-tune; iterative: `steps` prune/fine-tune "
        "rounds; gradual: `steps` pruning events spread over the first `pruning_epochs` "
        "fine-tuning epochs (Zhu & Gupta's AGP)",
    )
    steps: int = Field(default=1, gt=0, description="pruning steps (one_shot: 1)")
    curve: Literal["cubic", "linear", "geometric"] = Field(
        default="cubic",
        description="sparsity path over the steps (cubic: Zhu & Gupta; geometric: each step "
        "keeps the same share of what is left)",
    )
    pruning_epochs: int | None = Field(
        default=None, gt=0, description="gradual: epochs that prune (default: all but the last)"
    )


class ReportSpec(Section):
    latency: bool = Field(default=True, description="measure median forward latency")
    onnx: bool = Field(
        default=False,
        description="also export model.onnx, dynamic batch (pip install sensiprune[onnx])",
    )


class Recipe(Section):
    output: str = Field(description="run directory: checkpoints, logs, model and report")
    seed: int = Field(default=0, description="seeds model init, data order and scoring")
    model: ModelSpec
    data: DataSpec
    loss: ImportPath | Literal["distillation"] | None = Field(
        default=None,
        description="loss(model, batch) -> scalar; default cross-entropy; 'distillation': "
        "1 - cosine to the unpruned model's sentence embeddings (no labels needed)",
    )
    metric: ImportPath | Literal["accuracy", "embedding_similarity"] = Field(
        default="accuracy",
        description="metric(model, batch) -> (sum, count), higher is better; "
        "'embedding_similarity': cosine to the unpruned model's sentence embeddings",
    )
    prune: PruneSpec
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    finetune: FinetuneSpec = Field(default_factory=FinetuneSpec)
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec)
    compare: CompareSpec = Field(default_factory=CompareSpec)
    compress: CompressSpec = Field(default_factory=CompressSpec)
    report: ReportSpec = Field(default_factory=ReportSpec)

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        kind, steps = self.schedule.kind, self.schedule.steps
        if kind == "one_shot" and steps != 1:
            raise ValueError("schedule.steps must be 1 for kind one_shot; use kind iterative")
        if kind == "gradual":
            if self.prune.structured:
                raise ValueError("gradual pruning masks weights; use iterative for structured")
            if self.finetune.epochs < 1 or self.pruning_epochs > self.finetune.epochs:
                raise ValueError(
                    "gradual pruning needs finetune.epochs >= schedule.pruning_epochs >= 1"
                )
        teacher_bound = self.loss == "distillation" or self.metric == "embedding_similarity"
        if teacher_bound and self.model.pretrain_epochs:
            raise ValueError(
                "distillation and embedding_similarity compare with the model's own starting "
                "weights: give model.weights and pretrain_epochs: 0"
            )
        if self.analysis.folds == 1:
            raise ValueError("analysis.folds must be 0 (no cross-validation) or at least 2")
        if self.prune.target.flops is not None and not self.prune.structured:
            raise ValueError("prune.target.flops needs prune.structured: true")
        if self.prune.pattern is not None:
            zeros, group = parse_pattern(self.prune.pattern)
            if kind != "one_shot" or self.prune.structured:
                raise ValueError("prune.pattern is filled in one step of masks: use "
                                 "schedule.kind one_shot and prune.structured: false")  # fmt: skip
            if (
                self.prune.target.sparsity is None
                or abs(self.prune.target.sparsity - zeros / group) > 1e-9
            ):
                raise ValueError(
                    f"prune.pattern {self.prune.pattern!r} prunes {zeros} of every {group} "
                    f"weights: give prune.target.sparsity: {zeros / group:g}"
                )
        return self

    @property
    def pruning_epochs(self) -> int:
        given = self.schedule.pruning_epochs
        return given if given is not None else max(self.finetune.epochs - 1, 1)

    def measured_sparsities(self) -> list[float]:
        """``analysis.sparsities``, and with a sparsity target at or past the last of them,
        three more up to the densest limit ``min_density`` allows: a budget can only go as far
        as the curves were measured, and a target there would leave every layer at it."""
        points = sorted(self.analysis.sparsities)
        target, limit = self.prune.target.sparsity, round(1.0 - self.prune.min_density, 4)
        if target is None or points[-1] > target or points[-1] >= limit:
            return points
        return points + [round(points[-1] + (limit - points[-1]) * k / 3, 4) for k in (1, 2, 3)]

    def fingerprints(self) -> dict[str, str]:
        """A digest of each group of sections in :data:`RESUME_GROUPS`; the report and
        compare sections decide nothing a run checkpoints."""
        return {
            group: hashlib.sha256(
                json.dumps(
                    self.model_dump(mode="json", include=set(sections)), sort_keys=True
                ).encode()
            ).hexdigest()
            for group, sections in RESUME_GROUPS.items()
        }


# What a change voids when a run resumes (see runner.PruningRun): a change of what is trained
# and measured, the whole run; of how it is pruned, every stage from the first prune on; of how
# it is fine-tuned, nothing finished: the stages still to run use the new settings (a lower lr
# after a loss that turned NaN).
RESUME_GROUPS = {
    "run": ("output", "seed", "model", "data", "loss", "metric"),
    "prune": ("prune", "schedule", "analysis"),
    "finetune": ("finetune",),
}


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read and validate a recipe; any problem raises one SensipruneError naming file and line."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SensipruneError(f"{path}: no such recipe file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SensipruneError(f"{path}: cannot read the recipe: {exc}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SensipruneError(f"{where}: invalid YAML: {problem}") from None
    if not isinstance(raw, dict):
        raise SensipruneError(f"{path}: a recipe is a YAML mapping of sections (model, data, ...)")
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        line = _line_of(root, first["loc"])
        where = f"{path}:{line}" if line else str(path)
        field = ".".join(str(part) for part in first["loc"]) or "recipe"
        raise SensipruneError(f"{where}: {field}: {_describe(first)}{more}") from None


def _describe(error: dict) -> str:
    kind, message = error["type"], error["msg"]
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "unknown field (check the spelling; `sensiprune prune --help` lists the fields)"
    message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    message = message.replace("Input should be", "must be").replace("String should", "must")
    if kind.startswith("value_error") or "input" not in error:
        return message
    return f"{message[0].lower()}{message[1:]}, got {error['input']!r}"


def _line_of(node: yaml.Node | None, loc: tuple) -> int | None:
    """1-based line of the deepest YAML node on the path ``loc`` of a validation error."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if k.value == part), None)
            if pair is None:
                break
            line, node = pair[0].start_mark.line + 1, pair[1]  # the key's line reads best
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def field_reference() -> str:
    """Every recipe field with its type, default and meaning: the CLI help prints this."""
    lines: list[str] = []
    _describe_model(Recipe, "", lines)
    return "\n".join(lines)


def _describe_model(model: type[BaseModel], prefix: str, lines: list[str]) -> None:
    for name, info in model.model_fields.items():
        annotation = info.annotation
        nested = (
            annotation if isinstance(annotation, type) and issubclass(annotation, Section) else None
        )
        if nested is not None:
            lines.append(f"{prefix}{name}:")
            _describe_model(nested, prefix + "  ", lines)
            continue
        default = (
            "required"
            if info.is_required()
            else f"default {info.get_default(call_default_factory=True)!r}"
        )
        doc = f"  {info.description}" if info.description else ""
        lines.append(f"{prefix}{name} ({default}){doc}")
