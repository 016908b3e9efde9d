"""Populations share one frozen base; AgileRL's tournament selection and rl_hp mutations work on them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from agilerl.algorithms.core.registry import HyperparameterConfig, RLParameter
from agilerl.hpo.mutation import Mutations
from agilerl.hpo.tournament import TournamentSelection

from agilerl_selfsft import SelfSFT, SelfSFTError
from agilerl_selfsft.agilerl_adapter import unwrapped_actor
from agilerl_selfsft.data.chat import collate
from conftest import lora_config, lora_params


def _kwargs(tokenizer, model, **overrides):
    kwargs = dict(
        pad_token_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token, actor_network=model,
        tokenizer=tokenizer, lora_config=lora_config(), batch_size=4, lr=1e-3, max_new_tokens=8,
        gradient_checkpointing=False, num_generations=2,
    )
    kwargs.update(overrides)
    return kwargs


def _base(agent: SelfSFT) -> dict[str, torch.Tensor]:
    return {n: p for n, p in unwrapped_actor(agent).named_parameters() if "lora_" not in n}


def _batch(tokenizer):
    chats = [[{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": w}] for w in ("yes", "no", "maybe", "ok")]
    return collate(tokenizer, chats)


def _train(agent, tokenizer, steps=2):
    for _ in range(steps):
        agent.learn(_batch(tokenizer))


def test_population_members_share_base_storage_and_own_adapters(tokenizer, tiny_model_factory):
    pop = SelfSFT.population(3, **_kwargs(tokenizer, tiny_model_factory()))
    assert [a.index for a in pop] == [0, 1, 2]
    bases = [_base(a) for a in pop]
    assert len(bases[0]) > 0
    for other in bases[1:]:
        assert all(other[n].data_ptr() == bases[0][n].data_ptr() for n in bases[0])
    loras = [lora_params(a) for a in pop]
    assert all(loras[1][n].data_ptr() != loras[0][n].data_ptr() for n in loras[0])

    before = {n: p.detach().clone() for n, p in loras[0].items()}
    frozen = {n: p.detach().clone() for n, p in bases[0].items()}
    _train(pop[1], tokenizer)
    # member 1 learned; member 0's adapters and the shared base did not move
    assert any(not torch.equal(loras[1][n], before[n]) for n in before)
    assert all(torch.equal(loras[0][n], before[n]) for n in before)
    assert all(torch.equal(bases[0][n], frozen[n]) for n in frozen)
    assert pop[0].optimizer.optimizer.state == {} and len(pop[1].optimizer.optimizer.state) > 0


def test_population_rejects_fewer_than_one_agent(tokenizer, tiny_model_factory):
    with pytest.raises(SelfSFTError, match="at least 1 agent, got 0"):
        SelfSFT.population(0, **_kwargs(tokenizer, tiny_model_factory()))


def test_tournament_clones_winner_adapters_and_optimizer_and_keeps_sharing(tokenizer, tiny_model_factory):
    pop = SelfSFT.population(3, **_kwargs(tokenizer, tiny_model_factory()))
    shared_ptr = next(iter(_base(pop[0]).values())).data_ptr()
    _train(pop[2], tokenizer, steps=3)
    winner_lora = {n: p.detach().clone() for n, p in lora_params(pop[2]).items()}
    winner_state = pop[2].optimizer.optimizer.state_dict()["state"]
    for agent, fit in zip(pop, (0.1, 0.2, 0.9), strict=True):
        agent.metrics.add_fitness(fit)

    np.random.seed(0)
    elite, new_pop, _ = TournamentSelection(tournament_size=3, elitism=True, population_size=3).select(pop)
    assert elite is new_pop[0] and elite.index == 2 and elite._cloned_from == 2
    assert all(torch.equal(lora_params(elite)[n], winner_lora[n]) for n in winner_lora)
    clone_state = elite.optimizer.optimizer.state_dict()["state"]
    assert clone_state.keys() == winner_state.keys()
    assert all(torch.equal(clone_state[k]["exp_avg"], winner_state[k]["exp_avg"]) for k in winner_state)
    for agent in new_pop:
        assert next(iter(_base(agent).values())).data_ptr() == shared_ptr
        assert agent.tokenizer is tokenizer
    # the new members learn independently of each other: own adapters, own Adam moments and step counts
    elite_state = {k: {n: t.clone() for n, t in v.items()} for k, v in clone_state.items()}
    _train(new_pop[1], tokenizer)
    assert any(not torch.equal(lora_params(new_pop[1])[n], lora_params(new_pop[0])[n]) for n in winner_lora)
    after = elite.optimizer.optimizer.state_dict()["state"]
    assert all(torch.equal(after[k][n], elite_state[k][n]) for k in elite_state for n in elite_state[k])


def test_rl_hp_mutations_reach_every_selfsft_knob(tokenizer, tiny_model_factory):
    hp = HyperparameterConfig(
        lr=RLParameter(min=1e-5, max=1e-2),
        sampling_temperature=RLParameter(min=0.3, max=1.5),
        num_generations=RLParameter(min=1, max=8, dtype=int),
        batch_size=RLParameter(min=1, max=8, dtype=int),
        kl_coef=RLParameter(min=0.0, max=1.0),
        selection_threshold=RLParameter(min=0.1, max=1.0),
        selection_top_fraction=RLParameter(min=0.05, max=1.0),
    )
    pop = SelfSFT.population(
        2, **_kwargs(tokenizer, tiny_model_factory(), hp_config=hp, kl_coef=0.1, selection_threshold=0.8, selection_top_fraction=0.5)
    )
    assert pop[0].registry.hp_config is not pop[1].registry.hp_config  # each member mutates its own values
    mutation = Mutations(no_mutation=0, architecture=0, new_layer_prob=0, parameters=0, activation=0, rl_hp=1, rand_seed=1)
    torch.manual_seed(1)
    seen: set[str] = set()
    for _ in range(40):
        pop = mutation.mutation(pop)
        seen.update(a.mut for a in pop)
        for agent in pop:
            assert agent.optimizer.optimizer.param_groups[0]["lr"] == pytest.approx(agent.lr)
            assert agent.micro_batch_size_per_gpu == agent.batch_size
            assert 1 <= agent.num_generations <= 8 and 0.3 <= agent.sampling_temperature <= 1.5
    assert seen == set(hp.config)
    # members drifted apart: each mutates from its own current value
    assert pop[0].lr != pop[1].lr or pop[0].sampling_temperature != pop[1].sampling_temperature
    # a mutated K and batch size are used at the next call
    agent = pop[0]
    agent.num_generations = 3
    assert [len(c) for c in agent.generate(["Hi", "Yo"])] == [3, 3]


def test_mutating_an_unset_selection_knob_is_a_clear_error(tokenizer, tiny_model_factory):
    hp = HyperparameterConfig(selection_threshold=RLParameter(min=0.1, max=1.0))
    with pytest.raises(SelfSFTError, match="selection_threshold=<start value>"):
        SelfSFT(**_kwargs(tokenizer, tiny_model_factory(), hp_config=hp))


class _Payload:
    """Unpickling this makes a folder: proof that a file was unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.mkdir, (self.marker,)


def test_population_resume_verifies_the_checkpoint_before_anything_is_unpickled(tokenizer, tiny_model_factory,
                                                                                   tmp_path):
    from agilerl_selfsft.training.checkpoints import save_iteration

    trained = SelfSFT(**_kwargs(tokenizer, tiny_model_factory()))
    _train(trained, tokenizer)
    good = save_iteration(trained, tmp_path / "run", 1)
    pop = SelfSFT.population(2, resume_from_checkpoint=str(good), **_kwargs(tokenizer, tiny_model_factory()))
    for agent in pop:  # a verified checkpoint loads: adapters and optimizer state
        assert all(torch.equal(lora_params(agent)[n], lora_params(trained)[n]) for n in lora_params(trained))
    assert len(pop[0].optimizer.optimizer.state) > 0

    marker = tmp_path / "code-ran"
    torch.save({"payload": _Payload(marker)}, good / "attributes.pt")  # swapped in after the manifest was written
    with pytest.raises(SelfSFTError, match=r"is damaged: attributes.pt does not match its manifest"):
        SelfSFT.population(2, resume_from_checkpoint=str(good), **_kwargs(tokenizer, tiny_model_factory()))
    assert not marker.exists()

    plain = tmp_path / "plain"  # AgileRL's own checkpoint: no manifest to check it against
    trained.save_checkpoint(str(plain))
    torch.save({"payload": _Payload(marker)}, plain / "attributes.pt")
    with pytest.raises(SelfSFTError, match=r"not a SelfSFT checkpoint: .*selfsft.json is missing"):
        SelfSFT.population(1, resume_from_checkpoint=str(plain), **_kwargs(tokenizer, tiny_model_factory()))
    assert not marker.exists()
    with pytest.raises(SelfSFTError, match=r"was trained from another base model"):  # and the base is checked
        SelfSFT.population(1, resume_from_checkpoint=str(save_iteration(trained, tmp_path / "run2", 1)),
                           **_kwargs(tokenizer, tiny_model_factory(seed=1)))
