"""Run configuration: a YAML file validated into plain values, and the objects it builds.

Every key has a default except ``task``. Unknown keys and wrong types are reported in one line that names
the key (and, for a misspelling, the closest known key).
"""

from __future__ import annotations

import difflib
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from agilerl_selfsft.env.curriculum import DifficultySettings
from agilerl_selfsft.errors import SelfSFTError
from agilerl_selfsft.rewards import DEFAULT_TIMEOUT
from agilerl_selfsft.models import DEVICES, EMBEDDED_NAME


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskFiles(_Strict):
    """The train prompts and the held-out prompts: ``.jsonl``, ``.json`` or ``.csv`` files, or folders
    written by ``datasets``' ``save_to_disk`` (see :mod:`agilerl_selfsft.data.readers` for the row shapes)."""

    train: str
    eval: str


class LoraSettings(_Strict):
    """LoRA adapter shape (PEFT ``LoraConfig``)."""

    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"


class SelectionSettings(_Strict):
    """Which samples are learned from (see :mod:`agilerl_selfsft.env.selection`)."""

    strategy: Literal["threshold", "top_k", "top_fraction", "random"] = "threshold"
    threshold: float = 1.0
    top_k: int = Field(1, ge=1)
    top_fraction: float = Field(0.25, gt=0, le=1)
    keep_truncated: bool = False
    prefer_shorter: bool = Field(False, description="among equally rewarded samples, keep the shorter (top_k, top_fraction)")
    replay_capacity: int = Field(0, ge=0)
    replay_ratio: float = Field(0.5, ge=0)

    @model_validator(mode="after")
    def _shorter_changes_something(self) -> SelectionSettings:
        if self.prefer_shorter and self.strategy not in ("top_k", "top_fraction"):
            raise ValueError(f"prefer_shorter only changes top_k and top_fraction selection ({self.strategy} keeps "
                             "every sample that passes whatever its length)")
        return self


def _checked_by_dataclass(model: BaseModel) -> BaseModel:
    """Run the dataclass's own checks (its message names the key)."""
    try:
        DifficultySettings(**model.model_dump())
    except SelfSFTError as exc:
        raise ValueError(str(exc)) from None
    return model


#: ``sampling:``, difficulty-aware sampling: the fields of :class:`~agilerl_selfsft.env.curriculum.DifficultySettings`
SamplingSettings = create_model(
    "SamplingSettings", __base__=_Strict, __doc__=DifficultySettings.__doc__,
    __validators__={"_checks": model_validator(mode="after")(_checked_by_dataclass)},
    **{name: (kind, getattr(DifficultySettings, name)) for name, kind in typing.get_type_hints(DifficultySettings).items()},
)


class StaticDataSettings(_Strict):
    """Static SFT conversations (not generated, e.g. oracle trajectories) mixed into every training buffer.

    ``fraction`` is the share of each iteration's buffer that is static data; with ``final_fraction`` it
    moves linearly to that over ``decay_iterations`` iterations (e.g. 1.0 → 0.0: a warm start on the static
    data, then self-generated samples only). See :class:`~agilerl_selfsft.env.gym.SelfSFTGym`.
    """

    path: str
    fraction: float = Field(0.5, ge=0, le=1)
    final_fraction: float | None = Field(None, ge=0, le=1)
    decay_iterations: int = Field(1, ge=1)


class GenerationSettings(_Strict):
    """Which engine samples the completions (see :mod:`agilerl_selfsft.generation.engine`).

    ``engine``: ``hf`` (our decode loop), ``vllm`` (one vLLM engine, merged weights synced once per change) or
    ``auto`` (vLLM when it is installed). ``fold_lora`` is the ``hf`` engine's (``SelfSFT(fold_lora=...)``). The
    other keys are the vLLM engine's: the share of GPU memory (on CPU,
    of host memory) for its KV cache, and ``enforce_eager: false`` to let vLLM compile (slower start, faster
    decode).
    """

    engine: Literal["auto", "hf", "vllm"] = "auto"
    fold_lora: bool | Literal["auto"] = Field(
        "auto", description="hf engine: fold LoRA into weight copies per call (auto: when they fit in memory)"
    )
    gpu_memory_utilization: float | None = Field(None, gt=0, lt=1)
    enforce_eager: bool = True


MUTABLE = (
    "lr", "temperature", "num_generations", "batch_size", "kl_coef", "selection_threshold", "selection_top_fraction"
)


class EvolutionSettings(_Strict):
    """Population search with AgileRL's ``TournamentSelection`` and ``Mutations`` (used when population > 1).

    ``hp`` maps each hyperparameter to mutate to its ``[min, max]``; a mutation multiplies it by 0.8 or 1.2.
    LLM agents take only ``rl_hp`` mutations: ``architecture``, ``parameters`` and ``activation`` must stay 0.
    """

    tournament_size: int = Field(2, ge=1)
    elitism: bool = True
    evo_steps: int = Field(1, ge=1, description="iterations between evolutions")
    no_mutation: float = Field(0.4, ge=0)
    rl_hp: float = Field(0.6, ge=0)
    architecture: float = Field(0.0, ge=0)
    parameters: float = Field(0.0, ge=0)
    activation: float = Field(0.0, ge=0)
    mutate_elite: bool = False
    hp: dict[Literal[MUTABLE], tuple[float, float]] = {  # type: ignore[valid-type]
        "lr": (1e-5, 1e-3), "temperature": (0.5, 1.2), "num_generations": (2, 8), "batch_size": (4, 32),
    }

    @model_validator(mode="after")
    def _agilerl_accepts(self) -> EvolutionSettings:
        bad = [f"{k}={getattr(self, k)}" for k in ("architecture", "parameters", "activation") if getattr(self, k)]
        if bad:
            raise ValueError(f"LLM agents only take rl_hp mutations; set {', '.join(bad)} to 0")
        if not self.elitism:
            raise ValueError("AgileRL's tournament needs elitism: true for LLM populations")
        if self.no_mutation + self.rl_hp <= 0:
            raise ValueError("no_mutation and rl_hp are both 0: give at least one a positive probability")
        if self.rl_hp > 0 and not self.hp:
            raise ValueError("rl_hp > 0 but hp names nothing to mutate")
        for name, (lo, hi) in self.hp.items():
            if not 0 <= lo <= hi:
                raise ValueError(f"hp.{name} must be [min, max] with 0 <= min <= max, got [{lo}, {hi}]")
        return self


class SamplesSettings(_Strict):
    """What each iteration's samples leave behind (:mod:`agilerl_selfsft.training.sample_log`)."""

    per_iteration: int | None = Field(
        512, ge=0, description="rows of RUN/samples/iteration_NNNN.jsonl (kept ones first; null: all, 0: none)"
    )
    log_examples: int = Field(1, ge=0, description="the best and the worst samples logged per iteration, this many each")


class WandbSettings(BaseModel):
    """``wandb.init`` arguments; the section turns Weights & Biases on. Other keys go to ``wandb.init`` as they are."""

    model_config = ConfigDict(extra="allow")
    project: str = "agilerl-selfsft"
    name: str | None = None
    entity: str | None = None
    group: str | None = None
    tags: list[str] | None = None
    mode: Literal["online", "offline", "disabled"] | None = None


#: ``preset:`` values, put under the config's own: a key the config sets wins, and a section the preset sets
#: (``sampling``, ``selection``, …) merges key by key with the config's. ``efficient``: the learning benchmark's
#: best arm so far, the best passing sample per prompt, the shorter of equal ones (README, "Spend generation where
#: it teaches": within noise of the default, with fewer tokens trained and shorter answers).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "efficient": {"selection": {"strategy": "top_k", "top_k": 1, "prefer_shorter": True}},
}


class Config(_Strict):
    """A self-training run."""

    preset: Literal["default", "efficient"] = Field("default", description="a named set of defaults (PRESETS)")
    model: str = EMBEDDED_NAME
    task: TaskFiles
    reward: str | dict[str, Any] | list[str | dict[str, Any]] = "contains"
    eval_reward: str | dict[str, Any] | list[str | dict[str, Any]] | None = Field(
        None, description="the held-out split's reward when it should differ from reward (null: reward)"
    )
    agent: str | None = Field(
        None, description="'module:function': a multi-turn agent whose return value is the reward"
    )
    reward_timeout: float | None = Field(
        DEFAULT_TIMEOUT, gt=0, description="seconds a reward function may take per call (null: no limit)"
    )
    iterations: int = Field(6, ge=0)
    prompts_per_iteration: int = Field(64, ge=1)
    num_generations: int = Field(4, ge=1, description="K: completions sampled per prompt")
    temperature: float = Field(0.8, ge=0, description="sampling temperature; 0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(32, ge=1)
    generation: GenerationSettings = GenerationSettings()
    sampling: SamplingSettings | None = Field(  # type: ignore[valid-type]
        None, description="difficulty-aware prompt sampling (null: every train prompt once per pass)"
    )
    selection: SelectionSettings = SelectionSettings()
    restart_from_base: bool = Field(
        False, description="ReST-EM: each iteration trains fresh adapters from the base on everything selected so far"
    )
    lr: float = Field(2e-4, gt=0)
    batch_size: int = Field(16, ge=1)
    sft_epochs: int = Field(2, ge=1)
    kl_coef: float = Field(0.0, ge=0)
    reference_cache_mb: float = Field(
        1024.0, ge=0, description="host memory for the reference's hidden states kept per sample (0: recompute)"
    )
    lora: LoraSettings = LoraSettings()
    population: int = Field(1, ge=1)
    evolution: EvolutionSettings = EvolutionSettings()
    eval_samples: int = Field(4, ge=1)
    eval_greedy: bool = True
    keep_checkpoints: int = Field(3, ge=1)
    stop_after_empty: int | None = Field(
        None, ge=1, description="stop after this many iterations with nothing selected"
    )
    max_prompt_tokens: int | None = Field(None, ge=1, description="longest prompt; default: context - max_new_tokens")
    long_prompts: Literal["skip", "stop"] = "skip"
    static_data: StaticDataSettings | None = None
    bad_rows: Literal["stop", "skip"] = Field("stop", description="a malformed or unusable data row: stop, or skip it")
    samples: SamplesSettings = SamplesSettings()
    wandb: WandbSettings | None = Field(None, description="log to Weights & Biases (wandb.init arguments)")
    tensorboard: bool = Field(False, description="also write the metrics to RUN/tensorboard")
    seed: int = 42
    threads: int | None = Field(None, ge=1)
    device: str = Field("auto", description="auto (CUDA when there is a GPU, else the CPU), cpu, cuda or cuda:N")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="the policy's compute dtype; auto: bf16 on CUDA, and on a CPU where a probe measures bf16 "
        "matmul clearly faster than fp32; fp32 elsewhere"
    )
    _folder: Path | None = PrivateAttr(None)  # the config file's folder: 'module:function' modules are found there

    @property
    def folder(self) -> Path | None:
        """The folder of the YAML file this config was read from (None: built in Python)."""
        return self._folder

    @field_validator("wandb", mode="before")
    @classmethod
    def _wandb_switch(cls, value: Any) -> Any:
        return {} if value is True else None if value is False else value  # wandb: true = the defaults

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError(f"use {DEVICES}, got {value!r}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, raw: Any) -> Any:
        if not isinstance(raw, dict) or raw.get("preset", "default") not in PRESETS:
            return raw  # not a mapping, or an unknown preset: the field's own check names it
        preset = PRESETS[raw.get("preset", "default")]
        merged = {**preset, **raw}
        for key, value in preset.items():
            if isinstance(value, dict) and isinstance(raw.get(key), dict):
                merged[key] = {**value, **raw[key]}
        return merged

    @model_validator(mode="after")
    def _reward_or_agent(self) -> Config:
        if self.agent is not None and "reward" in self.model_fields_set:
            raise ValueError("set reward or agent, not both: an agent's return value is the reward")
        if self.agent is not None and self.eval_reward is not None:
            raise ValueError("eval_reward needs a reward: an agent scores its held-out conversations itself")
        return self

    def resolve_paths(self, base: Path) -> Config:
        """Data paths relative to the config file's folder become absolute."""
        fix = lambda p: str(p if Path(p).is_absolute() else (base / p).resolve())  # noqa: E731
        update: dict[str, Any] = {"task": TaskFiles(train=fix(self.task.train), eval=fix(self.task.eval))}
        if self.static_data is not None:
            update["static_data"] = self.static_data.model_copy(update={"path": fix(self.static_data.path)})
        return self.model_copy(update=update)


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config; a :class:`SelfSFTError` names the first problem."""
    path = Path(path)
    if not path.is_file():
        raise SelfSFTError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SelfSFTError(f"config {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise SelfSFTError(f"config {path} must be a mapping of keys to values")
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise SelfSFTError(f"config {path}: {_describe(exc)}") from None
    config = config.resolve_paths(path.parent)
    config._folder = path.parent.resolve()
    return config


def _describe(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc)
    if err["type"] == "extra_forbidden":
        model: type[BaseModel] = Config
        for part in loc[:-1]:
            annotation = model.model_fields[part].annotation
            sections = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
            model = sections[0] if sections else annotation  # an optional section (X | None): its model
        close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(model.model_fields)}"
        return f"unknown key {key!r}{hint}"
    if err["type"] == "missing":
        return f"missing required key {key!r}"
    if err["type"] == "value_error":  # our own checks: the message says it all
        return f"key {key!r}: {err['ctx']['error']}"
    return f"key {key!r}: {err['msg']} (got {err.get('input')!r})"
