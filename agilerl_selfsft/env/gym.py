"""SelfSFTGym: an SFTGym-like environment whose training data is refilled from the policy's own samples."""

from __future__ import annotations

from collections.abc import Callable, Generator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from agilerl_selfsft.data.chat import collate, tokenize_conversation
from agilerl_selfsft.data.readers import as_conversations
from agilerl_selfsft.distributed import DataParallel, shard_rows
from agilerl_selfsft.env.buffer import ReplayBuffer, draw_static, static_count
from agilerl_selfsft.env.curriculum import Curriculum, DifficultySettings
from agilerl_selfsft.env.selection import STRATEGIES, select
from agilerl_selfsft.errors import SelfSFTError
from agilerl_selfsft.rewards import DEFAULT_TIMEOUT, WeightedReward, resolve_reward, score
from agilerl_selfsft.samples import Generations, Message, Scored, Task


class SelfSFTGym:
    """Train and held-out prompts, a reward, and the buffer of selected samples that training batches come from.

    Batches have AgileRL's ``SFTPrompts`` format (``prompt``, ``response``, ``prompt_lengths``, right-padded
    ``input_ids`` and ``attention_mask``) plus a ``loss_mask`` over the sample's own (last, assistant) turn:
    assistant turns inside a task's prompt, such as few-shot examples, are context and carry no loss. A
    static conversation's ``loss_mask`` covers every assistant turn, an agent trajectory's every reply the
    policy generated in it (tool calls included). ``num_static`` and ``num_self`` count the batch's static and
    self-generated rows (over all processes).

    **Agents** (``agent``: a multi-turn agent function, see :mod:`agilerl_selfsft.generation.agents`) replace the
    single completion and the reward: each of the K samples of a prompt is one conversation of the agent
    with the policy (turns of all conversations batched into one generate call), scored by the reward the
    agent returns. Selection, replay, static data and evaluation work on these trajectories as on
    completions.

    ``reset()`` shuffles the buffer and returns its first batch; ``step()`` returns the next, starting a new
    shuffled pass (and counting ``num_epochs``) when the buffer is used up. ``eval_mode()`` switches
    :attr:`prompts` to the held-out set.

    **Static data** (``static_data``: SFT conversations that are not generated, e.g. oracle trajectories) is
    mixed into every refill: the share ``f`` of the buffer (:meth:`static_fraction_at`) is static
    conversations, walked in shuffled passes; with ``n`` self-generated samples and ``p`` prompts sampled, a
    refill takes ``max(f / (1 - f) * n, f * p)`` of them (:func:`~agilerl_selfsft.env.buffer.static_count`: a
    warm start still learns when little passes the selection); ``f = 1`` learns static conversations only.

    With a population, every agent trains on its own samples: :meth:`refill` takes the agent's index and
    keeps one replay memory per agent (:attr:`replays`); after a tournament, :meth:`inherit_replays` hands
    each new member a copy of its parent's. The selection ``threshold`` and ``top_fraction`` given here are
    defaults that an agent's own (mutable) values override.

    :param train_tasks: prompts to self-train on
    :type train_tasks: list[Task]
    :param eval_tasks: held-out prompts, never trained on
    :type eval_tasks: list[Task]
    :param tokenizer: the policy's tokenizer (its chat template renders the samples)
    :type tokenizer: PreTrainedTokenizerBase
    :param reward: reward spec — a callable, a built-in name, ``"module:function"``, or a weighted list;
        None with an ``agent`` (its return value is the reward), defaults to None
    :type reward: Any, optional
    :param data_batch_size_per_gpu: samples per training batch, defaults to 8
    :type data_batch_size_per_gpu: int, optional
    :param selection: ``threshold``, ``top_k``, ``top_fraction`` or ``random``, defaults to ``threshold``
    :type selection: str, optional
    :param threshold: least reward a sample needs to be kept, defaults to 1.0
    :type threshold: float, optional
    :param top_k: samples kept per prompt by ``top_k``, defaults to 1
    :type top_k: int, optional
    :param top_fraction: share of all samples kept by ``top_fraction``, defaults to 0.25
    :type top_fraction: float, optional
    :param keep_truncated: also keep completions cut off at ``max_new_tokens``, defaults to False
    :type keep_truncated: bool, optional
    :param prefer_shorter: among equally rewarded samples, prefer the shorter (see ``select``), defaults to False
    :type prefer_shorter: bool, optional
    :param replay_capacity: past winners remembered for replay, defaults to 0 (off)
    :type replay_capacity: int, optional
    :param replay_ratio: replayed samples added per new sample, defaults to 0.5
    :type replay_ratio: float, optional
    :param accumulate: every refill learns all samples selected so far (ReST-EM's data; ``restart_from_base``
        in the loop): the replay memory keeps them all, replayed in full, defaults to False
    :type accumulate: bool, optional
    :param max_context_length: longest training sequence in tokens (longer ones are cut), defaults to None
    :type max_context_length: int, optional
    :param static_data: static SFT conversations to mix in: a source
        :func:`~agilerl_selfsft.data.readers.load_conversations` reads (a path, a ``datasets.Dataset``, a list
        of rows) or conversations already loaded (a list of message lists, each with an assistant turn), see
        :func:`~agilerl_selfsft.data.readers.as_conversations`, defaults to None (none)
    :type static_data: Any, optional
    :param static_fraction: share of each refill that is static data (at iteration 1), defaults to 0.5
    :type static_fraction: float, optional
    :param static_final_fraction: the share it moves to, linearly, defaults to None (``static_fraction``
        throughout)
    :type static_final_fraction: float, optional
    :param static_decay_iterations: iterations the move takes: the share reaches ``static_final_fraction``
        at iteration ``1 + static_decay_iterations``, defaults to 1
    :type static_decay_iterations: int, optional
    :param seed: seed of the shuffles and of random selection, defaults to 42
    :type seed: int, optional
    :param accelerator: with several processes, each batch holds the batch size (per process) times the
        number of processes, and each process gets its own slice of it (as AgileRL's ``SFTGym`` shards its
        dataloader); ``finetune_llm_selfsft`` sets it from the agents when left None; on agilerl 2.58 (no
        accelerator) the processes are ``torchrun``'s, defaults to None
    :type accelerator: accelerate.Accelerator, optional
    :param agent: a multi-turn agent function ``agent(task, chat) -> reward`` (see
        :mod:`agilerl_selfsft.generation.agents`) that generates and scores the samples instead of one completion and
        ``reward``, defaults to None (single-turn completions)
    :type agent: Callable, optional
    :param reward_timeout: seconds each call of a reward function may take before the run stops with an error
        naming it (see :func:`~agilerl_selfsft.rewards.score`), defaults to 300 (None: no limit, and the
        function runs in the calling thread)
    :type reward_timeout: float, optional
    :param eval_reward: the reward inside :meth:`eval_mode` (held-out samples) when it should differ from
        ``reward`` (e.g. a checker beside a ``majority_vote`` train reward), same forms, defaults to None (``reward``)
    :type eval_reward: Any, optional
    :param sampling: difficulty-aware sampling (:class:`~agilerl_selfsft.env.curriculum.DifficultySettings` or
        a dict of its fields), defaults to None (every train prompt once per pass)
    :type sampling: DifficultySettings | dict, optional
    """

    def __init__(
        self,
        train_tasks: list[Task],
        eval_tasks: list[Task],
        tokenizer: PreTrainedTokenizerBase,
        reward: Any = None,
        data_batch_size_per_gpu: int = 8,
        selection: str = "threshold",
        threshold: float = 1.0,
        top_k: int = 1,
        top_fraction: float = 0.25,
        keep_truncated: bool = False,
        prefer_shorter: bool = False,
        replay_capacity: int = 0,
        replay_ratio: float = 0.5,
        accumulate: bool = False,
        max_context_length: int | None = None,
        static_data: Any | None = None,
        static_fraction: float = 0.5,
        static_final_fraction: float | None = None,
        static_decay_iterations: int = 1,
        seed: int = 42,
        accelerator: Any | None = None,
        agent: Callable[..., Any] | None = None,
        reward_timeout: float | None = DEFAULT_TIMEOUT,
        eval_reward: Any = None,
        sampling: DifficultySettings | dict[str, Any] | None = None,
    ) -> None:
        if (reward is None) == (agent is None):
            raise SelfSFTError("SelfSFTGym needs a reward, or an agent whose return value is the reward (not both)")
        if agent is not None and not callable(agent):
            raise SelfSFTError(f"agent must be a function agent(task, chat) -> reward, got {type(agent).__name__}")
        if not train_tasks or not eval_tasks:
            raise SelfSFTError("SelfSFTGym needs at least one train and one held-out prompt")
        if selection not in STRATEGIES:
            raise SelfSFTError(f"unknown selection {selection!r}; choose one of {', '.join(STRATEGIES)}")
        if data_batch_size_per_gpu < 1:
            raise SelfSFTError(f"data_batch_size_per_gpu must be >= 1, got {data_batch_size_per_gpu}")
        for name, value in (("static_fraction", static_fraction), ("static_final_fraction", static_final_fraction)):
            if value is not None and not 0 <= value <= 1:
                raise SelfSFTError(f"{name} must be between 0 and 1, got {value}")
        if static_decay_iterations < 1:
            raise SelfSFTError(f"static_decay_iterations must be >= 1, got {static_decay_iterations}")
        if reward_timeout is not None and not reward_timeout > 0:
            raise SelfSFTError(f"reward_timeout must be a number of seconds above 0 (or None), got {reward_timeout}")
        self.reward_timeout = reward_timeout
        self.static_data: list[list[Message]] = as_conversations(static_data) if static_data is not None else []
        if agent is not None or self.static_data:  # multi-turn learning needs a prefix-consistent template: now
            tokenize_conversation(tokenizer, [{"role": "user", "content": "1"}, {"role": "assistant", "content": "2"},
                                              {"role": "user", "content": "3"}, {"role": "assistant", "content": "4"}])
        self.static_fraction = static_fraction
        self.static_final_fraction = static_fraction if static_final_fraction is None else static_final_fraction
        self.static_decay_iterations = static_decay_iterations
        self._static_order: list[int] = []
        self.train_tasks = train_tasks
        self.eval_tasks = eval_tasks
        self.tokenizer = tokenizer
        self.agent = agent
        self.rewards: list[WeightedReward] = resolve_reward(reward) if reward is not None else []
        if eval_reward is not None and agent is not None:
            raise SelfSFTError("eval_reward needs a reward: an agent scores its held-out conversations itself")
        self.eval_rewards = resolve_reward(eval_reward) if eval_reward is not None else self.rewards
        self.reward_metrics: dict[str, float] = {}  # what the reward functions reported in the last score()
        self.data_batch_size_per_gpu = data_batch_size_per_gpu
        self.selection = selection
        self.threshold = threshold
        self.top_k = top_k
        self.top_fraction = top_fraction
        self.keep_truncated, self.prefer_shorter, self.accumulate = keep_truncated, prefer_shorter, accumulate
        self.replay_capacity = replay_capacity
        self.replays: dict[int, ReplayBuffer] = {}
        self.replay_ratio = replay_ratio
        self.max_context_length = max_context_length
        self.rng = np.random.default_rng(seed)
        self.buffer: list[Scored] = []
        self.evaluation_mode = False  # see eval_mode()
        self.num_epochs, self._order, self._cursor = 0, [], 0
        self._rows = data_batch_size_per_gpu
        if isinstance(sampling, dict):
            sampling = DifficultySettings(**sampling)
        self.curriculum = Curriculum([t.id for t in train_tasks], self.rng, sampling)
        ReplayBuffer(replay_capacity)  # checks the capacity now, not at the first refill
        self.accelerator = accelerator

    # ---- prompts ----
    @property
    def prompts(self) -> list[Task]:
        """The prompt set in use: held-out inside :meth:`eval_mode`, train otherwise."""
        return self.eval_tasks if self.evaluation_mode else self.train_tasks

    @contextmanager
    def eval_mode(self) -> Generator[None, None, None]:
        """Switch :attr:`prompts` to the held-out set for the block."""
        self.evaluation_mode = True
        try:
            yield
        finally:
            self.evaluation_mode = False

    def sample_prompts(self, n: int, exclude: set[int] = frozenset()) -> list[Task]:
        """The next ``n`` train prompts (not those whose ids ``exclude`` names), walking a shuffled order so every
        prompt comes up once per pass; with difficulty settings, mastered and never-solved ones are skipped
        (:meth:`Curriculum.draw <agilerl_selfsft.env.curriculum.Curriculum.draw>`)."""
        return [self.train_tasks[i] for i in self.curriculum.draw(n, exclude)]

    # ---- scoring and selection ----
    def score(self, tasks: list[Task], generations: Generations, policy: Any = None) -> list[Scored]:
        """Score each completion (``texts[i]`` answers ``tasks[i]``) by the reward (:meth:`eval_mode`: the eval reward),
        handing ``policy`` on; counts in :attr:`reward_metrics` (``unscored``: no score, left out)."""
        if self.agent is not None:
            raise SelfSFTError("this environment's samples are scored by its agent: use agents.rollout, not score")
        flat_tasks = [t for t, texts in zip(tasks, generations.texts, strict=True) for _ in texts]
        completions = [c for texts in generations.texts for c in texts]
        finished = [f for flags in generations.finished for f in flags]
        self.reward_metrics = {}
        if not completions:
            return []
        columns = {c: [t.columns.get(c) for t in flat_tasks] for c in {n for t in flat_tasks for n in t.columns}}
        functions = self.eval_rewards if self.evaluation_mode else self.rewards
        rewards = score(functions, [t.prompt for t in flat_tasks], completions, columns, self.reward_timeout, policy)
        self.reward_metrics = dict(rewards.metrics)
        terms = [dict(zip(rewards.terms, values, strict=True)) for values in zip(*rewards.terms.values(), strict=True)]
        return [  # a completion no reward function scored (None) is no sample
            Scored(t.id, [*t.messages, {"role": "assistant", "content": c}], c, r, f, terms=m)
            for t, c, r, f, m in zip(flat_tasks, completions, rewards, finished, terms, strict=True) if r is not None
        ]

    def replay_for(self, member: int = 0) -> ReplayBuffer:
        """The replay memory of agent ``member`` (created empty on first use)."""
        if member not in self.replays:
            self.replays[member] = ReplayBuffer(None if self.accumulate else self.replay_capacity)
        return self.replays[member]

    def inherit_replays(self, lineage: dict[int, int]) -> None:
        """After selection: agent ``new`` gets a copy of the replay memory of agent ``lineage[new]``."""
        old = self.replays
        self.replays = {}
        for child, parent in lineage.items():
            if parent in old:
                self.replay_for(child).samples.extend(old[parent].samples)

    # ---- run state (what a resumed run restores; plain JSON values) ----
    def state_dict(self) -> dict[str, Any]:
        """What changes during a run: the random state, prompt and static-data orders, the prompts' solve-rate
        history, replays, epochs."""
        curriculum = self.curriculum.state_dict()
        return {
            "rng": self.rng.bit_generator.state,
            "prompt_order": curriculum["order"],
            "prompt_history": curriculum["history"],
            "static_order": [int(i) for i in self._static_order],
            "replays": {str(member): [asdict(s) for s in buf.samples] for member, buf in self.replays.items()},
            "num_epochs": self.num_epochs,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put back what :meth:`state_dict` returned; the training buffer starts empty (the next refill fills it)."""
        self.rng.bit_generator.state = state["rng"]
        self.curriculum.load_state_dict({"order": state["prompt_order"], "history": state.get("prompt_history", {})})
        self._static_order = list(state.get("static_order", []))  # absent in states written before static data
        self.replays = {}
        for member, samples in state["replays"].items():
            self.replay_for(int(member)).samples.extend(Scored(**s) for s in samples)
        self.num_epochs = state["num_epochs"]
        self.buffer, self._order, self._cursor = [], [], 0

    # ---- static data ----
    def static_fraction_at(self, iteration: int) -> float:
        """The share of static data in the buffer of ``iteration`` (1 for the first), 0 without static data."""
        if not self.static_data:
            return 0.0
        progress = min(max(iteration - 1, 0) / self.static_decay_iterations, 1.0)
        return self.static_fraction + (self.static_final_fraction - self.static_fraction) * progress

    def draw_static(self, n: int) -> list[Scored]:
        """The next ``n`` static conversations as static samples (:func:`~agilerl_selfsft.env.buffer.draw_static`)."""
        return draw_static(self.static_data, self._static_order, n, self.rng)

    def refill(
        self,
        samples: list[Scored],
        member: int = 0,
        threshold: float | None = None,
        top_fraction: float | None = None,
        static_fraction: float | None = None,
    ) -> dict[str, float]:
        """Select from scored samples, mix in replayed past winners and static data, and make them the training buffer.

        :param samples: one agent's scored completions (of every prompt sampled this iteration)
        :param member: that agent's index (whose replay memory is used), defaults to 0
        :param threshold: the agent's selection threshold, defaults to None (:attr:`threshold`)
        :param top_fraction: the agent's ``top_fraction``, defaults to None (:attr:`top_fraction`)
        :param static_fraction: this iteration's share of static data (see the class docstring), defaults to
            None (:meth:`static_fraction_at` iteration 1); ignored without static data
        :return: ``kept`` (new samples selected), ``replayed``, ``static`` (static conversations mixed in),
            ``buffer`` (what will be learned), ``prompts_solved`` (distinct prompts with a kept sample) and
            ``static_fraction``
        """
        kept = select(
            samples,
            strategy=self.selection,
            threshold=self.threshold if threshold is None else threshold,
            k=self.top_k,
            fraction=self.top_fraction if top_fraction is None else top_fraction,
            keep_truncated=self.keep_truncated,
            prefer_shorter=self.prefer_shorter,
            rng=self.rng,
        )
        replay = self.replay_for(member)
        wanted = len(replay) if self.accumulate else int(round(self.replay_ratio * len(kept)))
        replayed = replay.draw(wanted, exclude=kept, rng=self.rng)
        replay.add(kept)
        own = kept + replayed
        fraction = self.static_fraction_at(1) if static_fraction is None else static_fraction
        if not self.static_data:
            fraction = 0.0
        static = self.draw_static(static_count(fraction, len(own), len({s.prompt_id for s in samples})))
        self.buffer = (own if fraction < 1 else []) + static
        self._order, self._cursor = [], 0
        return {
            "kept": len(kept),
            "replayed": len(replayed),
            "static": len(static),
            "buffer": len(self.buffer),
            "prompts_solved": len({s.prompt_id for s in kept}),
            "static_fraction": float(fraction),
        }

    # ---- training batches (SFTGym's interface) ----
    @property
    def num_batches(self) -> int:
        """Batches in one pass over the buffer (with several processes, each batch is the processes' slices)."""
        return -(-len(self.buffer) // (self._rows * self._world))

    @property
    def _world(self) -> int:
        return DataParallel(self.accelerator).world

    def reset(self, reset_dataloaders: bool = False, batch_size: int | None = None) -> dict[str, Any]:
        """Shuffle the buffer and return its first batch.

        :param batch_size: samples per batch from now on, defaults to None (``data_batch_size_per_gpu``);
            the loop passes each agent's own (mutable) batch size
        """
        if not self.buffer:
            raise SelfSFTError("the training buffer is empty: no sample passed the selection")
        self._rows = batch_size or self.data_batch_size_per_gpu
        self._order = list(self.rng.permutation(len(self.buffer)))
        self._cursor = 0
        return self.step()

    def step(self, completions: Any = None) -> dict[str, Any]:
        """The next batch of the buffer (a new shuffled pass when the current one is used up)."""
        if not self._order:
            return self.reset()
        if self._cursor >= len(self._order):
            self._order = list(self.rng.permutation(len(self.buffer)))
            self._cursor = 0
            self.num_epochs += 1
        rows = self._order[self._cursor : self._cursor + self._rows * self._world]
        self._cursor += len(rows)
        return self.batch(rows)

    def batch(self, rows: list[int]) -> dict[str, Any]:
        """The batch of buffer samples ``rows`` (over every process; this process collates its slice)."""
        num_static, num_rows = sum(self.buffer[i].static for i in rows), len(rows)  # over every process's rows
        dp = DataParallel(self.accelerator)
        if dp.enabled:  # this process's slice; every rank draws the same rows (same random state)
            rows = shard_rows(rows, dp.world, dp.rank)
        samples = [self.buffer[i] for i in rows]
        # a generated sample's own turn is its last message: assistant turns of the prompt (few-shot examples)
        # are context; a static conversation learns every assistant turn; a trajectory the turns it names
        learn = [s.learn_turns if s.learn_turns is not None else (0 if s.static else -1) for s in samples]
        batch = collate(self.tokenizer, [s.messages for s in samples], self.max_context_length,
                        learn_from=learn, tools=[s.tools for s in samples])
        batch["num_static"], batch["num_self"] = num_static, num_rows - num_static
        return batch

