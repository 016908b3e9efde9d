"""SelfSFT: AgileRL's SFT that also samples from itself and can stay near a frozen reference."""

from __future__ import annotations

import copy
import itertools
from typing import TYPE_CHECKING, Any

import torch
from agilerl.algorithms.sft import SFT
from transformers import PreTrainedTokenizerBase

from agilerl_selfsft.agilerl_adapter import follow_batch_size, sft_kwargs
from agilerl_selfsft.algorithm.learning import BucketedLearning
from agilerl_selfsft.algorithm.population import SharedBasePopulation
from agilerl_selfsft.algorithm.sampling_settings import check_sampling_call, check_sampling_settings
from agilerl_selfsft.data.chat import render_prompt, turn_end_token_ids
from agilerl_selfsft.errors import SelfSFTError
from agilerl_selfsft.generation.decode import Sampling
from agilerl_selfsft.generation.engine import Engine, HFEngine, engine_name
from agilerl_selfsft.generation.folding import check_fold_lora
from agilerl_selfsft.generation.vllm_engine import VLLMEngine
from agilerl_selfsft.samples import Generations, Message

_WEIGHTS_VERSIONS = itertools.count()

if TYPE_CHECKING:
    from accelerate import Accelerator
    from agilerl.algorithms.core.registry import HyperparameterConfig
    from peft import LoraConfig


class SelfSFT(SharedBasePopulation, BucketedLearning, SFT):
    """Self-improvement by supervised fine-tuning (expert iteration / rejection-sampling fine-tuning).

    A drop-in :class:`agilerl.algorithms.sft.SFT` of agilerl 2.10 or 2.58 — same constructor arguments, same
    batches, the same loss and optimizer steps as that release's ``SFT.learn``, works in its SFT loop
    (``finetune_llm_sft`` on an ``SFTGym``, ``train_llm_dataset`` on a ``DatasetEnv``; and on a
    :class:`~agilerl_selfsft.training.self_training_env.SelfTrainingEnv` that refills itself from the agent) —
    that adds what a self-training loop needs:

    - :meth:`generate` / :meth:`sample`: K completions per prompt, batched across prompts. Sampling settings
      (``sampling_temperature``, ``top_p``, ``top_k``, ``max_new_tokens``, ``num_generations``) are plain
      attributes, checked and read at every call, so AgileRL mutations take effect on the next call. (SFT's own
      ``temperature`` attribute keeps SFT's value, 0, and is not used for sampling.) ``generation_engine``:
      ``hf``, our decode loop on the policy's model, or ``vllm``, one engine per population, synced per change.
    - actor and frozen reference LoRA adapters (``use_separate_reference_adapter=True`` by default), and an
      optional KL(actor ‖ reference) term in :meth:`learn`, weighted by ``kl_coef`` (0 by default).
    - response-only cross-entropy for single-turn pairs and multi-turn chats: batches that carry a
      ``loss_mask`` (as :class:`~agilerl_selfsft.env.gym.SelfSFTGym` yields) train on every assistant turn and
      on nothing else; plain ``SFTGym`` batches are masked by ``prompt_lengths`` as in SFT.

    - populations that share one frozen base model: :meth:`population` and :meth:`clone` (used by AgileRL's
      ``TournamentSelection``) copy only the LoRA adapters and the optimizer state (with sharded or quantised
      weights, AgileRL's full copy is used instead).
    - mutable self-training knobs: ``lr``, ``sampling_temperature``, ``num_generations``, ``kl_coef``,
      ``batch_size``, ``selection_threshold`` and ``selection_top_fraction`` can all be named in
      ``hp_config``; a mutation takes effect at the next iteration (a mutation hook keeps them valid and
      keeps the micro-batch size in step with ``batch_size``).

    Assumed: a causal LM with a chat template, right-padded training batches, LoRA training (AgileRL trains
    adapters only). The reward function is not part of the algorithm: it lives in the environment, so
    clones and checkpoints hold only plain values.

    Where each part is: here the constructor, every knob and its checks (:meth:`_after_mutation` after a
    mutation) and :meth:`sample`; :meth:`learn` is :class:`~agilerl_selfsft.algorithm.learning.BucketedLearning`;
    :meth:`population` and :meth:`clone` are :class:`~agilerl_selfsft.algorithm.population.SharedBasePopulation`.

    Parameters are those of the installed :class:`~agilerl.algorithms.sft.SFT` (same defaults, except
    ``use_separate_reference_adapter=True`` and, on 2.58, ``use_liger_loss=False``; ``accelerator`` and
    ``reduce_memory_peak`` are 2.10's, ``fsdp_config`` and ``moe_lora_recompute`` 2.58's), plus:

    :param tokenizer: tokenizer of the model, used by :meth:`generate`, defaults to None (generation
        then raises)
    :type tokenizer: PreTrainedTokenizerBase, optional
    :param num_generations: K, completions sampled per prompt, >= 1, defaults to 4
    :type num_generations: int, optional
    :param sampling_temperature: sampling temperature, >= 0 (0 = greedy), defaults to 0.8
    :type sampling_temperature: float, optional
    :param top_p: nucleus sampling mass, in (0, 1], defaults to 1.0
    :type top_p: float, optional
    :param top_k: top-k sampling, >= 0 (0 = off), defaults to 0
    :type top_k: int, optional
    :param max_new_tokens: longest completion, >= 1, defaults to 64
    :type max_new_tokens: int, optional
    :param generation_batch_size: most rows (prompts × K) decoded together, >= 1, defaults to 128
    :type generation_batch_size: int, optional
    :param fold_lora: on the ``hf`` engine, fold the LoRA adapters into a copy of their base weights for each
        sampling call (faster decoding, but a copy of every targeted weight: about the model's size for an
        all-linear adapter); ``"auto"`` folds only when the copies need under half of the free memory (see
        :mod:`agilerl_selfsft.generation.folding`), defaults to ``"auto"``
    :type fold_lora: bool | str, optional
    :param kl_coef: weight of the KL(actor ‖ reference) penalty in :meth:`learn`, defaults to 0.0
    :type kl_coef: float, optional
    :param generation_engine: ``hf``, ``vllm`` or ``auto`` (vLLM when it is installed), defaults to ``hf``
    :type generation_engine: str, optional
    :param use_vllm: the same as ``generation_engine="vllm"`` (AgileRL's name), defaults to False
    :type use_vllm: bool, optional
    :param vllm_config: settings of the vLLM engine: an AgileRL ``VLLMConfig`` or a dict; read are
        ``gpu_memory_utilization`` (the share of GPU memory, or on CPU of host memory, for its KV cache) and
        ``enforce_eager`` (skip compilation), defaults to None (0.3 on GPU, 0.25 on CPU; eager)
    :type vllm_config: Any, optional
    :param max_model_len: longest prompt + completion the vLLM engine takes, defaults to None (the model's
        context length)
    :type max_model_len: int, optional
    :param selection_threshold: this agent's least reward for a sample to be kept, defaults to None (the
        environment's ``threshold``); set it to mutate it
    :type selection_threshold: float, optional
    :param selection_top_fraction: this agent's share of samples kept by ``top_fraction`` selection, defaults
        to None (the environment's); set it to mutate it
    :type selection_top_fraction: float, optional
    :param micro_batch_tokens: most tokens (rows × padded length) per forward pass in :meth:`learn`, defaults to
        None (no cap beyond the micro-batch). ``micro_batch_size_per_gpu`` keeps AgileRL's meaning — the rows
        whose token-mean loss makes one backward pass (and, without DeepSpeed, one optimizer step) — and
        :meth:`learn` runs each micro-batch in length buckets: rows of similar length together, cut to their
        longest, the fewest buckets with at most :attr:`bucket_max_padding` padding, each within this cap.
        Lower it to bound activation memory without changing the optimisation (without DeepSpeed one bucket
        is in memory at a time; under DeepSpeed a micro-batch's buckets are backpropagated together)
    :type micro_batch_tokens: int, optional
    """

    #: what a clone takes from its parent beyond AgileRL's copied state (see ``SharedBasePopulation``)
    _clone_keeps = ("_tokenizer", "_micro_follows_batch", "_engine")

    def __init__(
        self,
        pad_token_id: int,
        pad_token: str,
        model_name: str | None = None,
        actor_network: Any | None = None,
        model_config: dict[str, Any] | None = None,
        hp_config: HyperparameterConfig | None = None,
        index: int = 0,
        batch_size: int = 16,
        lr: float = 5e-5,
        max_grad_norm: float = 0.1,
        update_epochs: int = 1,
        calc_position_embeddings: bool = True,
        micro_batch_size_per_gpu: int | None = None,
        mini_batch_size: int | None = None,
        device: str | torch.device | None = None,
        lora_config: LoraConfig | None = None,
        accelerator: Accelerator | None = None,
        wrap: bool = True,
        clone: bool = False,
        seed: int = 42,
        gradient_checkpointing: bool = True,
        use_liger_loss: bool = False,
        chunk_rows: int | None = None,
        reduce_memory_peak: bool = False,
        use_separate_reference_adapter: bool = True,
        quantization_config: Any | None = None,
        activation_offload: bool = False,
        lora_target_scope: str | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        num_generations: int = 4,
        sampling_temperature: float = 0.8,
        top_p: float = 1.0,
        top_k: int = 0,
        max_new_tokens: int = 64,
        generation_batch_size: int = 128,
        kl_coef: float = 0.0,
        generation_engine: str = "hf",
        use_vllm: bool = False,
        vllm_config: Any | None = None,
        max_model_len: int | None = None,
        selection_threshold: float | None = None,
        selection_top_fraction: float | None = None,
        micro_batch_tokens: int | None = None,
        fold_lora: bool | str = "auto",
        fsdp_config: Any | None = None,
        moe_lora_recompute: Any | None = None,
    ) -> None:
        check_sampling_settings(num_generations=num_generations, sampling_temperature=sampling_temperature,
                                top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens,
                                generation_batch_size=generation_batch_size)
        check_fold_lora(fold_lora)
        if kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
        if micro_batch_tokens is not None and micro_batch_tokens < 1:
            raise ValueError(f"micro_batch_tokens must be >= 1 or None, got {micro_batch_tokens}")
        if hp_config is not None and "temperature" in hp_config:
            raise SelfSFTError("hp_config mutates temperature, SFT's attribute, which sampling does not read: "
                               "name sampling_temperature instead")
        if not clone:
            # LoRA's A matrices are drawn from torch's global RNG, which is seeded at random per process:
            # seed it so the same seed gives the same adapters (and a resumed run equals an uninterrupted one).
            torch.manual_seed(seed)
        # AgileRL's mutations keep each hyperparameter's current value inside hp_config: members must not
        # share one (clones pass theirs in here, so every agent gets its own copy).
        hp_config = copy.deepcopy(hp_config)
        super().__init__(**sft_kwargs(dict(  # the installed AgileRL's SFT arguments (agilerl_adapter)
            pad_token_id=pad_token_id,
            pad_token=pad_token,
            model_name=model_name,
            actor_network=actor_network,
            model_config=model_config,
            hp_config=hp_config,
            index=index,
            batch_size=batch_size,
            lr=lr,
            max_grad_norm=max_grad_norm,
            update_epochs=update_epochs,
            calc_position_embeddings=calc_position_embeddings,
            micro_batch_size_per_gpu=micro_batch_size_per_gpu,
            mini_batch_size=mini_batch_size,
            device=device,
            lora_config=lora_config,
            accelerator=accelerator,
            wrap=wrap,
            clone=clone,
            seed=seed,
            gradient_checkpointing=gradient_checkpointing,
            use_liger_loss=use_liger_loss,
            chunk_rows=chunk_rows,
            reduce_memory_peak=reduce_memory_peak,
            use_separate_reference_adapter=use_separate_reference_adapter,
            quantization_config=quantization_config,
            activation_offload=activation_offload,
            lora_target_scope=lora_target_scope,
            fsdp_config=fsdp_config,
            moe_lora_recompute=moe_lora_recompute,
        )))
        # The tokenizer is kept private: AgileRL persists every public attribute in attributes.pt and would
        # pickle it; clone() re-attaches it instead.
        self._tokenizer = tokenizer
        self.num_generations = num_generations
        self.sampling_temperature = sampling_temperature  # SFT's own temperature keeps SFT's value (0)
        self.top_p = top_p
        self.top_k = top_k
        self.max_new_tokens = max_new_tokens
        self.generation_batch_size = generation_batch_size
        self.fold_lora = fold_lora
        self.kl_coef = kl_coef
        self.max_model_len = max_model_len
        self.selection_threshold = selection_threshold
        self.selection_top_fraction = selection_top_fraction
        self.micro_batch_tokens = micro_batch_tokens
        for name in ("selection_threshold", "selection_top_fraction"):
            if hp_config is not None and name in hp_config and getattr(self, name) is None:
                raise SelfSFTError(f"hp_config mutates {name}, but it is None: pass {name}=<start value> to SelfSFT")
        # micro-batches follow batch_size when the user did not fix them (see _after_mutation)
        self._micro_follows_batch = micro_batch_size_per_gpu is None and accelerator is None
        self.register_mutation_hook(self._after_mutation)
        self.vllm_config = vllm_config
        # AgileRL's own colocated vLLM path stays off: generation goes through our engines (one vLLM engine per
        # population, synced once per weight change; see agilerl_selfsft.generation.engine)
        self.use_vllm = False
        self.generation_engine = "vllm" if use_vllm else generation_engine
        engine_name(self.generation_engine)  # an unknown name, or vllm without vLLM: say so now
        self._engine: Engine | None = None
        self._weights_changed()
        self.metrics.register("kl")
        self.metrics.register("tokens")  # AgileRL reports these as train/tokens and train/padding ("/" would
        self.metrics.register("padding")  # make them nested, per-sub-agent metrics)

    # ---- mutations ----
    def _after_mutation(self) -> None:
        """Mutation hook: keep mutated knobs valid; micro-batches follow a mutated ``batch_size``; AgileRL's
        next mutation starts from the agent's own value."""
        self.num_generations = max(1, int(self.num_generations))
        self.batch_size = max(1, int(self.batch_size))
        self.sampling_temperature = max(float(self.sampling_temperature), 0.0)
        self.kl_coef = max(float(self.kl_coef), 0.0)
        if self.selection_top_fraction is not None:
            self.selection_top_fraction = min(max(float(self.selection_top_fraction), 1e-3), 1.0)
        if self._micro_follows_batch:
            follow_batch_size(self)
        for name in self.registry.hp_config or ():
            # AgileRL mutates from the value it stored last; start the next mutation from the agent's own.
            self.registry.hp_config[name].value = getattr(self, name)

    # ---- AgileRL's names for our settings (read-only properties: never persisted) ----
    @property
    def tokenizer(self) -> PreTrainedTokenizerBase | None:
        """The tokenizer used by :meth:`generate`."""
        return self._tokenizer

    @property
    def max_output_tokens(self) -> int:
        """AgileRL's name for :attr:`max_new_tokens`."""
        return self.max_new_tokens

    @property
    def min_output_tokens(self) -> None:
        """No minimum completion length."""
        return None

    @property
    def repetition_penalty(self) -> float:
        """No repetition penalty."""
        return 1.0

    @property
    def min_p(self) -> float:
        """No min-p filtering."""
        return 0.0

    # ---- generation ----
    def generate(self, prompts: list[str | list[Message]], num_generations: int | None = None) -> list[list[str]]:
        """Sample ``num_generations`` (default :attr:`num_generations`) completions for each prompt.

        :param prompts: user prompts (strings) or chats (lists of messages) to answer
        :type prompts: list[str | list[dict]]
        :param num_generations: K, >= 1, defaults to None (the attribute)
        :type num_generations: int, optional
        :return: ``completions[i][k]``, the k-th completion of prompt i
        :rtype: list[list[str]]
        """
        return self.sample(prompts, num_generations).texts

    def sample(
        self,
        prompts: list[str | list[Message]],
        num_generations: int | None = None,
        greedy: bool = False,
        temperature: float | None = None,
        tools: list[list[dict] | None] | None = None,
        with_greedy: bool = False,
    ) -> Generations:
        """Like :meth:`generate`, with finish flags, token counts and timing; ``greedy`` decodes one each, and
        ``with_greedy`` adds a greedy one after each prompt's K samples (``texts[i][K]``), decoded in their batch.

        ``temperature`` overrides :attr:`sampling_temperature` for this call (evaluation samples every agent
        alike); 0 decodes greedily. ``tools`` gives, per prompt, the tool schemas a chat template that supports
        tools renders (see :mod:`agilerl_selfsft.generation.agents`), defaults to None (none). The sampling
        settings and overrides are checked first (:mod:`agilerl_selfsft.algorithm.sampling_settings`); no
        prompts give no completions.

        :raises ValueError: for a setting or override out of its range, or without a tokenizer
        """
        check_sampling_call(self, temperature=temperature, num_generations=num_generations)
        temperature = self.sampling_temperature if temperature is None else temperature
        if self._tokenizer is None:
            raise ValueError("SelfSFT needs a tokenizer to generate: pass tokenizer=... to the constructor")
        if not prompts:
            return Generations()
        k = 1 if greedy else (self.num_generations if num_generations is None else num_generations) + with_greedy
        chats = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in prompts]
        tools = tools if tools is not None else [None] * len(chats)
        texts = [render_prompt(self._tokenizer, chat, t) for chat, t in zip(chats, tools, strict=True)]
        sampling = Sampling(max_new_tokens=self.max_new_tokens, stop_token_ids=turn_end_token_ids(self._tokenizer),
                            temperature=temperature, top_p=self.top_p, top_k=self.top_k, greedy=greedy,
                            greedy_last=with_greedy)  # Sampling refuses greedy with greedy_last
        with self.select_adapter("actor"):
            return self.generation_engine_instance().sample(self, texts, k, sampling)

    def generation_engine_instance(self) -> Engine:
        """The engine :attr:`generation_engine` names, built on first use (a vLLM engine is shared by the
        population: clones are handed their parent's)."""
        name = engine_name(self.generation_engine)
        if self._engine is None or self._engine.name != name:
            if name == "vllm":
                config = self.vllm_config
                settings = {} if config is None else dict(config) if isinstance(config, dict) else vars(config)
                self._engine = VLLMEngine.shared(self, settings.get("gpu_memory_utilization"),
                                                 settings.get("enforce_eager", True))
            else:
                self._engine = HFEngine()
        return self._engine

    # ---- weights versions (what a vLLM engine compares before it syncs) ----
    def _weights_changed(self) -> None:
        """Give the actor weights a new version, unique in this process."""
        self._weights_version = next(_WEIGHTS_VERSIONS)

    def learn(self, experiences: dict[str, Any], training: bool = True) -> dict[str, float]:
        """:meth:`BucketedLearning.learn <agilerl_selfsft.algorithm.learning.BucketedLearning.learn>`; after a
        training step the weights get a new version. A batch that names the environment that refills itself
        (``refill_from``, see :class:`~agilerl_selfsft.training.self_training_env.SelfTrainingEnv`) makes this
        agent a candidate to generate that environment's next samples."""
        result = super().learn(experiences, training)
        if training:
            self._weights_changed()
            if experiences.get("refill_from") is not None:
                experiences["refill_from"].attach(self)
        return result

    def load_checkpoint(self, *args: Any, **kwargs: Any) -> None:
        """AgileRL's ``load_checkpoint``; the weights get a new version. A checkpoint written before the sampling
        temperature was named ``sampling_temperature`` stored it as ``temperature``: it is read as such, and SFT's
        ``temperature`` keeps SFT's 0."""
        super().load_checkpoint(*args, **kwargs)
        if self.temperature != 0:
            self.sampling_temperature, self.temperature = float(self.temperature), 0
        self._weights_changed()

    def _load_model_checkpoint(self, *args: Any, **kwargs: Any) -> None:
        """AgileRL's adapter loader; the weights get a new version."""
        super()._load_model_checkpoint(*args, **kwargs)
        self._weights_changed()

    def clone(self, index: int | None = None, wrap: bool = True) -> Any:
        """A shared-base clone (see ``SharedBasePopulation``) with weights of its own version."""
        clone = super().clone(index=index, wrap=wrap)
        clone._weights_changed()
        return clone
