"""Generate and score: one call that turns prompts into scored samples, sharded over the processes of a launch.

This is the *generate → score* step of the loop, for training prompts and held-out ones alike. Each process
generates for its contiguous share of the tasks (:class:`~agilerl_selfsft.distributed.DataParallel`) — one
batched :meth:`SelfSFT.sample` call scored by the environment's reward, or, with an agent on the
environment, the agent's multi-turn conversations (:func:`~agilerl_selfsft.generation.agents.rollout`), scored
by the agent — and every process then gets every result, in task order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
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

    def produce(mine: list[Task]) -> list[tuple[list[Scored], Generations]]:
        if getattr(env, "agent", None) is not None:  # multi-turn: the agent's conversations, batched
            done = rollout(agent, env.agent, mine, num_generations or agent.num_generations, greedy, temperature)
            generations = done.generations()
            return [(done.scored(), generations)]
        generations = agent.sample([t.messages for t in mine], num_generations, greedy=greedy, temperature=temperature)
        return [(env.score(mine, generations, policy=agent), generations)]

    return _gathered(agent, tasks, produce, parts=1)[0]


def sample_scored_with_greedy(
    agent: Any, env: Scorer, tasks: list[Task], num_generations: int, temperature: float | None = None,
) -> tuple[tuple[list[Scored], Generations], tuple[list[Scored], Generations]]:
    """:func:`sample_scored` of ``num_generations`` samples per task and of one greedy completion per task, as
    evaluation scores both. A single-turn policy decodes the greedy rows in the batch of the samples
    (``SelfSFT.sample(with_greedy=True)``: one prefill and one step per token for both, instead of a second
    call); an agent's conversations are rolled out twice. The samples are scored first, and the environment's
    ``reward_metrics`` are left describing them, as after :func:`sample_scored` of the samples alone.

    :return: (scored samples, their generations) and (scored greedy completions, theirs); the call's
        ``seconds`` are the samples' (the greedy ones' 0) when they shared it
    """
    if getattr(env, "agent", None) is not None:
        samples = sample_scored(agent, env, tasks, num_generations, temperature=temperature)
        with _metrics_kept(env):
            return samples, sample_scored(agent, env, tasks, greedy=True)

    def produce(mine: list[Task]) -> list[tuple[list[Scored], Generations]]:
        both = agent.sample([t.messages for t in mine], num_generations, temperature=temperature, with_greedy=True)
        samples, greedy = split_last(both)
        scored = env.score(mine, samples, policy=agent)
        with _metrics_kept(env):
            return [(scored, samples), (env.score(mine, greedy, policy=agent), greedy)]

    samples, greedy = _gathered(agent, tasks, produce, parts=2)
    return samples, greedy


@contextmanager
def _metrics_kept(env: Scorer) -> Iterator[None]:
    """Leave ``env.reward_metrics`` (where it has them) as they are on entry, whatever is scored inside."""
    kept = getattr(env, "reward_metrics", None)
    try:
        yield
    finally:
        if kept is not None:
            env.reward_metrics = kept


def split_last(generations: Generations) -> tuple[Generations, Generations]:
    """``generations`` cut into every prompt's completions but its last, and its last ones (one per prompt); the
    call's counts and timing go with the first part."""
    def part(cut: slice) -> Generations:
        return Generations(texts=[t[cut] for t in generations.texts],
                           finished=[f[cut] for f in generations.finished],
                           token_ids=[ids[cut] for ids in generations.token_ids],
                           num_tokens=sum(len(ids) for group in generations.token_ids for ids in group[cut]))

    first, last = part(slice(None, -1)), part(slice(-1, None))
    first.seconds, first.batch_rows = generations.seconds, generations.batch_rows
    first.peak_rows, first.computed_rows = generations.peak_rows, generations.computed_rows
    return first, last


def _gathered(
    agent: Any, tasks: list[Task], produce: Callable[[list[Task]], list[tuple[list[Scored], Generations]]], parts: int,
) -> list[tuple[list[Scored], Generations]]:
    """``produce`` (``parts`` pairs of scored samples and generations) for this rank's share of ``tasks``, and with
    several ranks every rank's, merged in task order."""
    dp = DataParallel(getattr(agent, "accelerator", None))
    mine = tasks[dp.shard(len(tasks))]
    local = produce(mine) if mine else [([], Generations()) for _ in range(parts)]  # more ranks than tasks
    if not dp.enabled:
        return local
    ranks = dp.gather([local])
    merged = []
    for p in range(parts):
        pieces = [rank[p] for rank in ranks]
        merged.append(([s for scored, _ in pieces for s in scored], Generations(
            texts=[t for _, g in pieces for t in g.texts],
            finished=[f for _, g in pieces for f in g.finished],
            num_tokens=sum(g.num_tokens for _, g in pieces),
            seconds=max(g.seconds for _, g in pieces),
        )))
    return merged
