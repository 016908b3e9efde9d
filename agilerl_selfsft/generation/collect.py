"""Generate and score: one call that turns prompts into scored samples, sharded over the processes of a launch.

This is the *generate → score* step of the loop, for training prompts and held-out ones alike. Each process
generates for its contiguous share of the tasks (:class:`~agilerl_selfsft.distributed.DataParallel`) — one
batched :meth:`SelfSFT.sample` call scored by the environment's reward, or, with an agent on the
environment, the agent's multi-turn conversations (:func:`~agilerl_selfsft.generation.agents.rollout`), scored
by the agent — and every process then gets every result, in task order.
"""

from __future__ import annotations

from typing import Any, Protocol

from agilerl_selfsft.distributed import DataParallel
from agilerl_selfsft.generation.agents import rollout
from agilerl_selfsft.samples import Generations, Scored, Task


class Scorer(Protocol):
    """What :func:`sample_scored` needs of an environment (:class:`~agilerl_selfsft.env.gym.SelfSFTGym` is one):
    its multi-turn ``agent`` (or None) and a reward over one sampling call's completions."""

    agent: Any

    def score(self, tasks: list[Task], generations: Generations, policy: Any = None) -> list[Scored]:
        """The scored samples of ``generations`` (K per task), ``policy`` being the agent that made them."""
        ...


def sample_scored(
    agent: Any,
    env: Scorer,
    tasks: list[Task],
    num_generations: int | None = None,
    greedy: bool = False,
    temperature: float | None = None,
) -> tuple[list[Scored], Generations]:
    """Sample and score completions for ``tasks`` (arguments as :meth:`SelfSFT.sample`), each rank doing its
    share; all ranks get every result. With an agent on ``env``, each sample is one of the agent's
    conversations (:func:`agilerl_selfsft.generation.agents.rollout`), scored by the agent.

    :return: the scored samples in the order of ``tasks`` (K per task) and the generations of all ranks
        (``texts``/``finished`` in task order, ``num_tokens`` summed, ``seconds`` of the slowest rank)
    """
    dp = DataParallel(getattr(agent, "accelerator", None))
    mine = tasks[dp.shard(len(tasks))]
    if mine and getattr(env, "agent", None) is not None:  # multi-turn: the agent's conversations, batched
        done = rollout(agent, env.agent, mine, num_generations or agent.num_generations, greedy, temperature)
        generations, scored = done.generations(), done.scored()
    elif mine:
        generations = agent.sample([t.messages for t in mine], num_generations, greedy=greedy, temperature=temperature)
        scored = env.score(mine, generations, policy=agent)
    else:  # more ranks than tasks
        generations, scored = Generations(), []
    if not dp.enabled:
        return scored, generations
    parts = dp.gather([(scored, generations)])
    merged = Generations(
        texts=[t for _, g in parts for t in g.texts],
        finished=[f for _, g in parts for f in g.finished],
        num_tokens=sum(g.num_tokens for _, g in parts),
        seconds=max(g.seconds for _, g in parts),
    )
    return [s for part, _ in parts for s in part], merged
