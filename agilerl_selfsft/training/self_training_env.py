"""SelfTrainingEnv: a SelfSFTGym that AgileRL's own SFT loop can drive, and that refills itself from the policy.

AgileRL's ``finetune_llm_sft`` (2.10: ``env.reset(True)`` once, then ``env.step()`` per agent step) and
``train_llm_dataset`` (2.58: every ``env.reset(...)`` is the next batch) train on a fixed dataset. This
environment serves the batches of a :class:`~agilerl_selfsft.env.gym.SelfSFTGym` buffer instead, and when a
pass over the buffer is spent it draws the next train prompts, has the policy generate K completions (or agent
conversations) for them, scores, selects, and refills the buffer: the generate → score → select → buffer half
of :func:`~agilerl_selfsft.training.loop.finetune_llm_selfsft`, inside AgileRL's loop, which does the learn,
evaluate and evolve half.

**How the environment reaches the policy.** Every training batch it serves names it (``batch["refill_from"]``);
a :class:`~agilerl_selfsft.algorithm.selfsft.SelfSFT` that learns such a batch calls :meth:`attach` with itself.
The next refill generates with the fittest attached agent that is still alive (AgileRL's tournament empties
the actors of replaced agents), by latest fitness, the most recently attached on ties; before any agent has
learned, with the ``policy`` given here. So a population evolved by AgileRL's loop keeps generating from its
current elite, and nothing outside the loop needs to know the population.

What the loop sees: ``name``, ``data_batch_size_per_gpu``, ``world_size``/``rank`` (from the agents' launch),
``len(env)`` (the prompts of one refill: the loop's ``num_epochs`` counts refills), ``num_epochs`` (refills
after the first; it never goes down, so ``reset_dataloaders`` rewinds nothing: self-generated data is not
replayed as it was), ``eval_mode()`` and ``close()``. Under ``eval_mode()`` (AgileRL's ``SFT.test``) batches
come from the current buffer without moving the training order: there are no held-out SFT targets in
self-training, so that loss is on the policy's own selected samples. Held-out *reward* is
:func:`~agilerl_selfsft.training.evaluation.evaluate` (or ``finetune_llm_selfsft``).

:attr:`refills` records every refill: the iteration, the agent's index, the selection statistics and the ids
of the prompts whose samples were kept.
"""

from __future__ import annotations

import math
import weakref
from contextlib import AbstractContextManager
from typing import Any

from agilerl_selfsft.distributed import DataParallel
from agilerl_selfsft.env.curriculum import sample_iteration
from agilerl_selfsft.env.gym import SelfSFTGym
from agilerl_selfsft.errors import SelfSFTError


class SelfTrainingEnv:
    """SFTGym / DatasetEnv interface over a self-refilling :class:`SelfSFTGym`.

    :param gym: the prompts, reward, selection and buffer
    :type gym: SelfSFTGym
    :param policy: the agent that generates until an agent attaches by learning (see the module docstring)
    :type policy: SelfSFT
    :param prompts_per_refill: train prompts drawn for each refill, defaults to 8
    :type prompts_per_refill: int, optional
    :param max_empty_refills: prompt draws in a row that may yield no selected sample before the run stops
        with an error (each tries the next prompts), defaults to 3
    :type max_empty_refills: int, optional
    :param name: the environment's name in AgileRL's logs, defaults to ``"selfsft"``
    :type name: str, optional
    """

    def __init__(
        self,
        gym: SelfSFTGym,
        policy: Any,
        prompts_per_refill: int = 8,
        max_empty_refills: int = 3,
        name: str = "selfsft",
    ) -> None:
        if prompts_per_refill < 1:
            raise SelfSFTError(f"prompts_per_refill must be >= 1, got {prompts_per_refill}")
        if max_empty_refills < 1:
            raise SelfSFTError(f"max_empty_refills must be >= 1, got {max_empty_refills}")
        if gym.accelerator is None:
            gym.accelerator = getattr(policy, "accelerator", None)
        self.gym = gym
        self.policy = policy
        self.prompts_per_refill = prompts_per_refill
        self.max_empty_refills = max_empty_refills
        self.name = name
        self.refills: list[dict[str, Any]] = []
        self._attached: list[weakref.ref[Any]] = []
        self._batches_left = 0  # training batches left in the current pass over the buffer
        self._eval_cursor = 0
        dp = DataParallel(gym.accelerator)
        self.world_size, self.rank = dp.world, dp.rank

    @property
    def data_batch_size_per_gpu(self) -> int:
        """Samples per batch and process."""
        return self.gym.data_batch_size_per_gpu

    def __len__(self) -> int:
        return self.prompts_per_refill

    @property
    def num_epochs(self) -> int:
        """AgileRL's epoch count: the refills after the first (it never goes down)."""
        return max(len(self.refills) - 1, 0)

    # ---- the policy ----
    def attach(self, agent: Any) -> None:
        """Make ``agent`` a candidate policy for the next refill (SelfSFT calls it for every batch it learns)."""
        self._attached = [ref for ref in self._attached if ref() is not None and ref() is not agent]
        self._attached.append(weakref.ref(agent))

    def generating_agent(self) -> Any:
        """The agent the next refill generates with: the fittest live attached agent, else ``policy``."""
        live = [a for a in (ref() for ref in self._attached) if a is not None and a.actor is not None]
        if not live:
            return self.policy

        def fitness(order_agent: tuple[int, Any]) -> tuple[float, int]:  # latest fitness, NaN last; ties: latest
            order, agent = order_agent
            last = float(agent.fitness[-1]) if agent.fitness else -math.inf
            return (-math.inf if math.isnan(last) else last, order)

        return max(enumerate(live), key=fitness)[1]

    # ---- refilling ----
    def refill(self) -> dict[str, Any]:
        """Generate, score and select for the next prompts, and make the kept samples the buffer.

        :return: the refill's record (also appended to :attr:`refills`)
        :raises SelfSFTError: when ``max_empty_refills`` prompt draws in a row keep nothing
        """
        agent = self.generating_agent()
        for _ in range(self.max_empty_refills):
            tasks = self.gym.sample_prompts(self.prompts_per_refill)
            threshold = self.gym.threshold if agent.selection_threshold is None else agent.selection_threshold
            scored, _, drawn = sample_iteration(agent, self.gym, tasks, threshold)  # difficulty-aware when set
            stats = self.gym.refill(scored, agent.index, agent.selection_threshold, agent.selection_top_fraction)
            if self.gym.buffer:
                break
        else:
            raise SelfSFTError(
                f"no sample passed the selection in {self.max_empty_refills} refills of {self.prompts_per_refill} "
                f"prompts ({self.gym.selection}, threshold {agent.selection_threshold}): lower the threshold, "
                "use top_k / top_fraction selection, or add static data"
            )
        rewards = [s.reward for s in scored]
        record = {
            "iteration": len(self.refills) + 1,
            "agent": agent.index,
            "reward/train": sum(rewards) / len(rewards) if rewards else math.nan,  # static data only: none
            **{f"selection/{k}": v for k, v in stats.items()},
            **{f"sampling/{k}": v for k, v in drawn.items()},
            "kept_prompt_ids": sorted({s.prompt_id for s in self.gym.buffer if not s.static}),
        }
        self.refills.append(record)
        self._batches_left = self.gym.num_batches  # the gym's next step starts a shuffled pass over it
        self._eval_cursor = 0
        return record

    # ---- batches ----
    def reset(self, reset_dataloaders: bool = False, batch_size: int | None = None) -> dict[str, Any]:
        """The next batch (both AgileRL versions' loops call it; in :meth:`eval_mode`, an evaluation batch).

        :param reset_dataloaders: accepted for AgileRL's loops; nothing is rewound (see the module docstring)
        :param batch_size: accepted for AgileRL's loops; the gym's batch size is used
        """
        return self.step()

    def step(self, completions: Any = None) -> dict[str, Any]:
        """The next training batch, refilling first when the current buffer is spent (2.10's loop calls this)."""
        if self.evaluation_mode:
            return self._eval_batch()
        if self._batches_left <= 0:
            self.refill()
        self._batches_left -= 1
        batch = self.gym.step()
        batch["refill_from"] = self
        return batch

    def _eval_batch(self) -> dict[str, Any]:
        if not self.gym.buffer:
            self.refill()
        n = len(self.gym.buffer)
        size = min(n, self.data_batch_size_per_gpu * self.world_size)
        rows = [(self._eval_cursor + i) % n for i in range(size)]
        self._eval_cursor = (self._eval_cursor + size) % n
        return self.gym.batch(rows)

    @property
    def evaluation_mode(self) -> bool:
        """Inside :meth:`eval_mode`: batches are evaluation batches."""
        return self.gym.evaluation_mode

    def eval_mode(self) -> AbstractContextManager[None]:
        """Serve evaluation batches (from the current buffer) for the block (the gym's own switch)."""
        return self.gym.eval_mode()

    def close(self) -> None:
        """Nothing to release (AgileRL's trainers call it)."""
