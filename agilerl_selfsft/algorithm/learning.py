"""Learning in SelfSFT: response-only cross-entropy (and KL to the reference), run in length buckets.

:class:`BucketedLearning` is mixed into :class:`~agilerl_selfsft.algorithm.selfsft.SelfSFT` ahead of AgileRL's
``SFT``, whose ``learn`` it replaces. It keeps that method's optimisation: the same micro-batches (of
``micro_batch_size_per_gpu`` rows), each with the mean loss over its labelled tokens, one backward pass (and,
without DeepSpeed, one optimizer step, through AgileRL's ``_backward_pass``) per micro-batch. What changes is
how a micro-batch goes through the model: in length buckets (:mod:`agilerl_selfsft.algorithm.batching`), with logits
only where a label is read. Its housekeeping is SFT's too: every call starts by collecting garbage and emptying the
CUDA (and MPS) allocator caches, as ``SFT.learn`` does. With a KL term, the frozen reference's hidden states of a
sample are computed the first time it is learned from and kept for its later epochs and replays
(:mod:`agilerl_selfsft.algorithm.reference_cache`; ``reference_cache_mb`` 0 recomputes them every step).
"""

from __future__ import annotations

import gc
import math
from typing import Any

import torch
import torch.nn.functional as F
from agilerl.algorithms.core.base import LLMAlgorithm

from agilerl_selfsft.agilerl_adapter import (
    accumulation_steps,
    backward_step,
    engine_backward,
    gather_lm_head,
    hold_loss,
    is_sharded,
    learn_phase_seconds,
    learn_phases,
    unwrapped_actor,
    world_and_rank,
)

from agilerl_selfsft.algorithm.batching import DEFAULT_MAX_PADDING, Bucket, padding_fraction, plan_buckets, row_extents
from agilerl_selfsft.algorithm.reference_cache import DEFAULT_REFERENCE_CACHE_MB, ReferenceCache, row_keys
from agilerl_selfsft.algorithm.shared_prefix import forward_with_shared_prefix, shared_prefix_length
from agilerl_selfsft.generation.decode import attention_window


def token_losses(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
    ref_hidden: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-mean cross-entropy of the lm_head's fp32 logits on ``hidden`` against ``targets``, and
    KL(actor ‖ reference) per token where the reference's hidden states are given (0 otherwise).

    :param hidden: the actor's last hidden states at the labelled positions, ``(N, H)``
    :param weight: the lm_head weight ``(V, H)``; ``bias`` its bias or None
    :param targets: the N labels
    :param ref_hidden: the reference adapter's hidden states at the same positions, or None for no KL
    :return: ``(ce, kl)``; for N = 0 a zero CE that still depends on the graph
    """
    logits = F.linear(hidden, weight, bias).float()
    if not targets.numel():
        return logits.sum() * 0.0, torch.zeros((), device=logits.device)
    ce = F.cross_entropy(logits, targets)
    if ref_hidden is None:
        return ce, torch.zeros((), device=logits.device)
    with torch.no_grad():  # the anchor: no gradient, not even into a trainable lm_head
        ref_logits = F.linear(ref_hidden, weight, bias).float()
    kl = F.kl_div(F.log_softmax(ref_logits, dim=-1), F.log_softmax(logits, dim=-1), log_target=True, reduction="batchmean")
    return ce, kl


class BucketedLearning:
    """Mixin for an AgileRL ``LLMAlgorithm`` with a ``reference`` adapter: :meth:`learn` as described in the
    module docstring.

    It relies on ``LLMAlgorithm``'s own attributes (``actor``, ``micro_batch_size_per_gpu``,
    ``update_epochs``, ``zero_stage``, ``calc_position_embeddings``, ``metrics``, the optimizer) and on the
    two below, which the algorithm sets.
    """

    #: weight of the KL(actor ‖ reference) term added to the cross-entropy (0: no reference pass)
    kl_coef: float
    #: most tokens (rows × padded length) per forward pass, None for no cap beyond the micro-batch
    micro_batch_tokens: int | None
    #: most padding a micro-batch's length buckets may compute, as a share of computed tokens
    bucket_max_padding: float = DEFAULT_MAX_PADDING
    #: host memory (MiB) for the reference's hidden states kept per sample (0: recompute them every step); see
    #: :mod:`agilerl_selfsft.algorithm.reference_cache`
    reference_cache_mb: float = DEFAULT_REFERENCE_CACHE_MB
    #: run a prompt prefix every row of a bucket shares through the model once (see :meth:`_shared_prefix`)
    share_prompt_prefix: bool = True
    _reference_cache: ReferenceCache | None = None  # the agent's own (a clone starts empty)
    _active_reference_cache: ReferenceCache | None = None  # the one this learn call uses, None when off

    def learn(self, experiences: dict[str, Any], training: bool = True) -> dict[str, float]:
        """Response-only cross-entropy (plus ``kl_coef`` × KL to the reference) on one batch.

        As in AgileRL's ``SFT.learn``, the batch is cut into micro-batches of ``micro_batch_size_per_gpu``
        rows; each micro-batch's loss is the mean over its labelled tokens and makes one backward pass
        (and, as the installed AgileRL's ``SFT.learn`` does, an optimizer step: every micro-batch without
        DeepSpeed on agilerl 2.10, every mini-batch on 2.58). Inside a micro-batch the rows run through the model
        in length buckets (:mod:`agilerl_selfsft.algorithm.batching`), each cut to its own longest row and holding at
        most :attr:`micro_batch_tokens` tokens, so little compute goes to padding; the loss and gradient are
        those of the whole micro-batch (see :meth:`_learn_micro_batch`).

        :param experiences: an ``SFTPrompts`` batch: ``input_ids``, ``attention_mask``, ``prompt_lengths``,
            and optionally ``loss_mask`` (1 on the tokens to learn: every assistant turn)
        :type experiences: dict
        :param training: when ``False`` only the loss is computed, defaults to True
        :type training: bool, optional
        :return: ``{"loss", "perplexity", "kl"}`` averaged over micro-batches and epochs, ``"tokens"``: real
            (non-padding) tokens put through the model, over all epochs, ``"padding"``: the share of
            computed positions that were padding, and on agilerl 2.58 its ``learn_phase_<phase>_s`` timings
        :rtype: dict[str, float]
        """
        release_cached_memory()
        phases = learn_phases(self)
        self._active_reference_cache = self._checked_reference_cache()
        input_ids = experiences["input_ids"]
        attention_mask = experiences["attention_mask"].long()
        mask = experiences.get("loss_mask")
        if mask is None:
            mask = LLMAlgorithm._create_prompt_masks(experiences["prompt_lengths"], max_length=input_ids.shape[1])
        mask = (mask.cpu() * attention_mask.cpu())[:, 1:]  # position t predicts token t+1
        labels = torch.where(mask.bool(), input_ids[:, 1:].cpu(), -100)

        n = input_ids.shape[0]
        micro = min(n, self.micro_batch_size_per_gpu or n)
        extents = row_extents(attention_mask)
        labelled = (labels != -100).any(dim=1).tolist()
        real = attention_mask.cpu().sum(dim=1).tolist()
        # ZeRO-3 gathers weights in every forward pass: every process must make as many, so no splitting
        split = not is_sharded(self)
        plans = [
            plan_buckets(
                range(s, min(s + micro, n)), extents, labelled, self.micro_batch_tokens, self.bucket_max_padding, split
            )
            for s in range(0, n, micro)
        ]
        computed = sum(b.computed_tokens for plan in plans for b in plan)
        real_tokens = sum(real[r] for plan in plans for b in plan for r in b.rows)
        totals = {"loss": 0.0, "perplexity": 0.0, "kl": 0.0}
        steps, held = 0, None
        phases.mark("prepare")
        for _ in range(self.update_epochs):
            for plan in plans:
                ce, kl, held = self._learn_micro_batch(plan, input_ids, attention_mask, labels, training, phases, held)
                totals["loss"] += ce
                totals["perplexity"] += math.exp(min(ce, 100.0))
                totals["kl"] += kl
                steps += 1
        if held is not None:  # micro-batches pending the next learn's optimizer step (2.58): checked now, as SFT does
            self._raise_if_not_finite(held)
        result = {key: value / max(steps, 1) for key, value in totals.items()}
        result["tokens"] = float(real_tokens * self.update_epochs)
        result["padding"] = padding_fraction(computed, real_tokens)
        result.update(learn_phase_seconds(self))  # agilerl 2.58's learn_phase_<phase>_s
        if training:
            for key, value in result.items():
                self.metrics.log(key, value)
        return result

    def _learn_micro_batch(
        self,
        buckets: list[Bucket],
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        training: bool,
        phases: Any,
        held: torch.Tensor | None,
    ) -> tuple[float, float, torch.Tensor | None]:
        """One micro-batch, bucket by bucket: its token-mean CE and KL, and (training) its backward pass.

        A bucket's loss is its own token mean times its share of the micro-batch's labelled tokens, so the
        bucket losses add up to the micro-batch's token-mean loss and their gradients to its gradient. Without
        DeepSpeed each bucket is backpropagated as soon as it is computed (one bucket's activations alive at
        a time) and the last one goes through AgileRL's ``_backward_pass`` (clipping, optimizer step; on agilerl
        2.58 every ``gradient_accumulation_steps`` micro-batches, each loss divided by that count); under
        DeepSpeed the bucket losses are summed into one ``_backward_pass``, so the engine sees one backward
        per micro-batch, as before, and counts its gradient accumulation steps as before. A non-finite loss
        raises before the optimizer step that would apply it (checked once per step, as the installed
        ``SFT.learn`` does: ``held`` carries the window's loss), and the gradients gathered so far are dropped.

        :return: the CE, the KL, and the loss still held for the check at the next optimizer step
        """
        kept = [labels[list(b.rows), : b.length - 1] for b in buckets]
        total = sum(int((k != -100).sum()) for k in kept)
        per_bucket = training and not engine_backward(self)
        ce_sum, kl_sum, pending = [], [], []
        for i, (bucket, bucket_labels) in enumerate(zip(buckets, kept, strict=True)):
            rows = list(bucket.rows)
            weight = int((bucket_labels != -100).sum()) / total if total else 1.0
            args = (input_ids[rows, : bucket.length].to(self.device), attention_mask[rows, : bucket.length].to(self.device),
                    bucket_labels.to(self.device), training)
            with torch.set_grad_enabled(training):
                if self.kl_coef > 0:
                    ce, kl = self._selfsft_loss(*args)
                    loss = (ce + self.kl_coef * kl) * weight
                else:  # SFT's loss, under SFT's name (what AgileRL's own tests hook)
                    ce = self._sft_loss(*args)
                    kl, loss = torch.zeros((), device=ce.device), ce * weight
            ce_sum.append(ce.detach().float() * weight)  # summed on the device: one host sync per micro-batch
            kl_sum.append(kl.detach().float() * weight)
            phases.mark("forward")
            if not training:
                continue
            pending.append(loss)
            if per_bucket and i < len(buckets) - 1:
                (loss / accumulation_steps(self)).backward()  # as _backward_pass scales the last bucket
                phases.mark("backward")
        if training:
            whole = torch.stack([p.detach() for p in pending]).sum()  # the micro-batch's loss
            try:
                held = hold_loss(self, whole, held)
            except ValueError:
                self.optimizer.zero_grad()  # buckets already backpropagated, and micro-batches pending a step
                raise
            backward_step(self, pending[-1] if per_bucket else torch.stack(pending).sum())
        return float(torch.stack(ce_sum).sum()), float(torch.stack(kl_sum).sum()), held

    def _raise_if_not_finite(self, loss: torch.Tensor) -> None:
        """AgileRL's finiteness check; the gradients gathered so far are dropped first."""
        try:
            self._raise_if_loss_not_finite_on_any_rank(loss)
        except ValueError:
            self.optimizer.zero_grad()
            raise

    def _sft_loss(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, training: bool
    ) -> torch.Tensor:
        """``SFT._sft_loss``: the token-mean cross-entropy of one (bucket of a) micro-batch, computed without the
        ``(B, L, V)`` logits (see :meth:`_selfsft_loss`); with ``use_liger_loss``, SFT's own (Liger's fused
        linear cross-entropy, CUDA)."""
        if self.use_liger_loss:
            return super()._sft_loss(input_ids, attention_mask, labels, training)  # type: ignore[misc]
        return self._selfsft_loss(input_ids, attention_mask, labels, training)[0]

    def _selfsft_loss(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, training: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy on the labelled tokens, and KL(actor ‖ reference) there when ``kl_coef > 0``.

        Logits are computed only at labelled positions (the lm_head is patched to identity for the
        transformer pass), so the ``(B, L, V)`` tensor is never built.
        """
        self.actor.train(mode=training)
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
        if self.calc_position_embeddings:
            kwargs["position_ids"] = self._position_ids_from_mask(attention_mask)
        keep = labels != -100
        targets = labels[keep]
        hidden, lm_head = self._hidden_at(kwargs, keep)
        ref_hidden = None
        if self.kl_coef > 0 and targets.numel():
            ref_hidden = self._reference_hidden(kwargs, keep)
            self.actor.train(mode=training)
        with gather_lm_head(self, lm_head) as (weight, bias):
            return self.token_losses(hidden, weight, bias, targets, ref_hidden)

    def _reference_pass(self, model_kwargs: dict[str, Any], keep: torch.Tensor) -> torch.Tensor:
        """The reference adapter's hidden states ``(N, H)`` at the positions where ``keep`` is true (no gradient,
        no LoRA dropout)."""
        with torch.no_grad(), self.select_adapter("reference"):
            self.actor.train(mode=False)  # no LoRA dropout in the anchor
            return self._hidden_at(model_kwargs, keep)[0]

    def _reference_hidden(self, model_kwargs: dict[str, Any], keep: torch.Tensor) -> torch.Tensor:
        """:meth:`_reference_pass`, with rows the cache holds taken from it: only the others run (cut to their
        own longest) and are kept."""
        cache = self._active_reference_cache
        if cache is None:
            return self._reference_pass(model_kwargs, keep)
        mask = model_kwargs["attention_mask"]
        keys = row_keys(model_kwargs["input_ids"], mask, keep)
        missing = [i for i, key in enumerate(keys) if key not in cache]
        fresh: dict[bytes, torch.Tensor] = {}
        if missing:
            length = int(mask[missing].sum(dim=1).max())
            sub = {name: value[missing, :length] if torch.is_tensor(value) else value
                   for name, value in model_kwargs.items()}
            sub_keep = keep[missing, : length - 1]
            parts = self._reference_pass(sub, sub_keep).split(sub_keep.sum(dim=1).tolist())
            fresh = {keys[i]: part for i, part in zip(missing, parts, strict=True)}
        cache.hits += len(keys) - len(missing)
        cache.misses += len(missing)
        device = keep.device
        hidden = torch.cat([fresh[key] if key in fresh else cache.get(key).to(device) for key in keys])
        for key, part in fresh.items():
            cache.put(key, part)
        return hidden

    def _checked_reference_cache(self) -> ReferenceCache | None:
        """The agent's cache of reference hidden states, emptied if the reference's weights changed since it was
        filled; None when it is off: no KL, ``reference_cache_mb`` 0, several processes, or sharded weights."""
        accelerator = getattr(self, "accelerator", None)
        if self.kl_coef <= 0 or self.reference_cache_mb <= 0 or is_sharded(self) or world_and_rank(accelerator)[0] > 1:
            return None
        budget = int(self.reference_cache_mb * 2**20)
        if self._reference_cache is None or self._reference_cache.max_bytes != budget:
            self._reference_cache = ReferenceCache(budget)
        actor = unwrapped_actor(self)
        self._reference_cache.validate(p for name, p in actor.named_parameters() if ".reference." in name)
        return self._reference_cache

    def _hidden_at(self, model_kwargs: dict[str, Any], keep: torch.Tensor) -> tuple[torch.Tensor, torch.nn.Module]:
        """The last hidden states ``(N, H)`` at the N positions where ``keep`` (shifted, ``[B, L-1]``) is true,
        and the model's lm_head (which the transformer pass skipped). A prefix every row shares goes through the
        model once (:mod:`agilerl_selfsft.algorithm.shared_prefix`)."""
        prefix = self._shared_prefix(model_kwargs, keep)
        with self._patch_lm_head_to_identity() as lm_head:  # FSDP2's gathers hook __call__: the actor is called
            if prefix:
                hidden = forward_with_shared_prefix(self.actor, model_kwargs, prefix)  # [B, L - prefix, H]
                return hidden[:, :-1, :][keep[:, prefix:]], lm_head
            hidden = self.actor(**model_kwargs).logits  # [B, L, H], lm_head identity
        return hidden[:, :-1, :][keep], lm_head

    def _shared_prefix(self, model_kwargs: dict[str, Any], keep: torch.Tensor) -> int:
        """The length of the prefix to run once for this bucket (:func:`shared_prefix_length`), 0 where it does
        not apply: :attr:`share_prompt_prefix` off, a distributed run or an engine, a windowed model, or while
        training with gradient checkpointing or LoRA dropout."""
        if not self.share_prompt_prefix or is_sharded(self) or engine_backward(self):
            return 0
        if world_and_rank(getattr(self, "accelerator", None))[0] > 1:
            return 0
        model = unwrapped_actor(self)
        if model.training and (getattr(model, "is_gradient_checkpointing", False) or _lora_dropout(model)):
            return 0
        if attention_window(model) is not None:
            return 0
        return shared_prefix_length(model_kwargs["input_ids"], model_kwargs["attention_mask"], keep)

    #: the head and the losses on the picked hidden states (:func:`token_losses`); an instance may hold a compiled
    #: copy, ``agent.token_losses = torch.compile(token_losses, dynamic=True)`` (``benchmarks/training_speed.py
    #: --compile-loss`` measures whether that pays)
    token_losses = staticmethod(token_losses)


def _lora_dropout(model: torch.nn.Module) -> bool:
    """Whether any LoRA layer of ``model`` applies dropout (PEFT keeps an ``nn.Dropout`` per adapter)."""
    modules = model.named_modules()
    return any(isinstance(m, torch.nn.Dropout) and m.p > 0 for name, m in modules if "lora_dropout" in name)


def release_cached_memory() -> None:
    """What ``SFT.learn`` does first: collect garbage (reference cycles a released batch or model leaves), then
    hand the CUDA allocator's unused cached blocks back (a no-op without CUDA), and MPS's where MPS is present."""
    gc.collect()
    torch.cuda.empty_cache()
    if torch.backends.mps.is_available():
        torch.mps.empty_cache()
