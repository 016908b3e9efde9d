"""A SelfSFT checkpoint continues into the installed AgileRL's (2.10 or 2.58) real DPO and GRPO, and exports to PEFT, transformers and GGUF."""

from __future__ import annotations

import json
import math
import shutil
from types import SimpleNamespace

import pytest
import torch
from agilerl.algorithms import DPO, GRPO
from datasets import Dataset
from peft import LoraConfig

from agilerl_selfsft import export_adapter, export_checkpoint, export_gguf, export_merged, load_into
from agilerl_selfsft.agilerl_adapter import AGILERL_258, dataset_env, unwrapped_actor
from agilerl_selfsft.data.chat import collate
from agilerl_selfsft.errors import SelfSFTError
from agilerl_selfsft.manifest import MANIFEST
from agilerl_selfsft.manifest import sha256 as _sha256
from agilerl_selfsft.training.checkpoints import save_iteration

from conftest import CHATS, lora_config, lora_params



def adapter(agent, name):
    """Copies of one adapter's LoRA weights under adapter-free names, to compare adapters with each other."""
    return {n.replace(f".{name}.", "."): p for n, p in lora_params(agent, name, copy=True).items()}


@pytest.fixture
def checkpoint(tiny_agent, tmp_path):
    batch = collate(tiny_agent.tokenizer, CHATS)
    for _ in range(3):
        tiny_agent.learn(batch)
    return tiny_agent, save_iteration(tiny_agent, tmp_path, 1)


def check_loaded(agent, selfsft):
    ours = adapter(selfsft, "actor")
    for name in ("actor", "reference"):
        theirs = adapter(agent, name)
        assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in ours)
    assert unwrapped_actor(agent).active_adapter == "actor"


def test_into_dpo_keeps_dpo_settings_and_learns(checkpoint, tokenizer, tiny_model_factory):
    selfsft, path = checkpoint
    dpo = DPO(pad_token_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token, actor_network=tiny_model_factory(0),
              lora_config=lora_config(), lr=3e-4, beta=0.2, batch_size=2, gradient_checkpointing=False)
    state_before = {k: getattr(dpo, k) for k in ("algo", "beta", "lr", "batch_size")}
    load_into(dpo, path)
    check_loaded(dpo, selfsft)
    assert {k: getattr(dpo, k) for k in state_before} == state_before and dpo.algo == "DPO"
    assert not dpo.optimizer.optimizer.state  # fresh optimizer
    data = Dataset.from_dict({"prompt": ["Capital of France?", "Capital of Peru?"], "chosen": [" Paris.", " Lima."],
                              "rejected": [" Rome.", " Quito."]})
    env = dataset_env(data, data, tokenizer, "preference", data_batch_size_per_gpu=2)
    metrics = dpo.learn(env.reset())
    assert all(math.isfinite(v) for v in metrics.values()), metrics


def test_into_grpo_keeps_grpo_settings_and_learns(checkpoint, tokenizer, tiny_model_factory):
    selfsft, path = checkpoint
    grpo = GRPO(pad_token_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token, actor_network=tiny_model_factory(0),
                lora_config=lora_config(), lr=1e-4, beta=0.01, group_size=2, batch_size=2, max_output_tokens=4,
                temperature=0.7, gradient_checkpointing=False)
    state_before = {k: getattr(grpo, k) for k in ("algo", "beta", "lr", "temperature", "batch_size")}
    load_into(grpo, path)
    check_loaded(grpo, selfsft)
    assert {k: getattr(grpo, k) for k in state_before} == state_before and grpo.algo == "GRPO"
    assert_learns_from_groups(grpo, tokenizer)


def assert_learns_from_groups(agent, tokenizer):
    """One step of a GRPO-family agent on two prompts: sample a group each, reward one sample of each group."""
    prompts = []  # what ReasoningGym (2.10) and RolloutHarness (2.58) hand get_action: one tokenized chat each
    for question in ("Capital of France?", "Capital of Peru?"):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
        prompts.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    before = adapter(agent, "actor")
    action = agent.get_action(prompts)
    completion_ids, action_masks = action[0], action[1]  # 2.10 names the first completion_ids, 2.58 token_ids
    rewards = torch.tensor([[1.0, 0.0]] * len(prompts))  # group_size 2: one better, one worse sample a prompt
    metrics = agent.learn((completion_ids, action_masks, rewards))
    assert all(math.isfinite(float(v)) for v in metrics.values()), metrics
    after = adapter(agent, "actor")
    assert any(not torch.equal(after[k], before[k]) for k in before)  # it learned


@pytest.mark.agilerl258  # algorithms 2.10 does not have (LLMPPO needs a value-head model: not covered)
@pytest.mark.parametrize("name", ["GSPO", "CISPO", "LLMREINFORCE"])
def test_into_the_other_llm_algorithms_of_agilerl_258(name, checkpoint, tokenizer, tiny_model_factory):
    import agilerl.algorithms

    selfsft, path = checkpoint
    cls = getattr(agilerl.algorithms, name)
    kwargs = dict(pad_token_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token, actor_network=tiny_model_factory(0),
                  lora_config=lora_config(), beta=0.01, batch_size=2, max_output_tokens=4, temperature=0.7)
    if name in ("GSPO", "CISPO"):
        kwargs.update(lr=1e-4, group_size=2, gradient_checkpointing=False)
    else:  # REINFORCE keeps a reference adapter only when asked to
        kwargs.update(use_separate_reference_adapter=True, lr=1e-4)
    agent = cls(**kwargs)
    state_before = {k: getattr(agent, k) for k in ("algo", "beta", "temperature", "batch_size")}
    load_into(agent, path)
    check_loaded(agent, selfsft)
    assert {k: getattr(agent, k) for k in state_before} == state_before
    if name in ("GSPO", "CISPO"):
        assert_learns_from_groups(agent, tokenizer)


def test_another_lora_shape_names_the_fields(checkpoint, tokenizer, tiny_model_factory):
    _, path = checkpoint
    dpo = DPO(pad_token_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token, actor_network=tiny_model_factory(0),
              lora_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
              gradient_checkpointing=False)
    with pytest.raises(SelfSFTError, match=r"another LoRA shape \(r: checkpoint 4 vs config 8; lora_alpha: checkpoint 8 vs config 16\)"):
        load_into(dpo, path)


def _dpo(tokenizer, model):
    return DPO(pad_token_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token, actor_network=model,
               lora_config=lora_config(), lr=3e-4, beta=0.2, batch_size=2, gradient_checkpointing=False)


def test_the_plain_agilerl_recipe_works_and_plain_load_checkpoint_does_not(checkpoint, tokenizer, tiny_model_factory):
    """What README documents for users who stay with AgileRL's own calls (pitfall 7 of agilerl 2.10.0)."""
    selfsft, path = checkpoint
    safe = _dpo(tokenizer, tiny_model_factory(0))
    safe._load_model_checkpoint(str(path), overwrite_reference_adapter=True)
    safe.use_adapter("actor")
    safe.reinit_optimizers()
    check_loaded(safe, selfsft)
    assert (safe.algo, safe.beta, safe.lr) == ("DPO", 0.2, 3e-4)

    unsafe = _dpo(tokenizer, tiny_model_factory(0))
    unsafe.load_checkpoint(str(path))
    # the upstream agent's settings replace DPO's, and (2.10) the reference adapter is left active
    assert unsafe.algo == "SFT" and unsafe.lr == selfsft.lr and unsafe.temperature == selfsft.temperature
    assert unwrapped_actor(unsafe).active_adapter == ("actor" if AGILERL_258 else "reference")


def test_a_checkpoint_of_another_base_model_is_refused_and_nothing_changes(checkpoint, tokenizer, tiny_model_factory):
    _, path = checkpoint
    other = tiny_model_factory(1)
    other.config._name_or_path = other.name_or_path = "/models/other-base"
    dpo = _dpo(tokenizer, other)
    before = adapter(dpo, "actor")
    with pytest.raises(SelfSFTError, match=r"was trained from '.*', not 'other-base'"):
        load_into(dpo, path)
    assert all(torch.equal(adapter(dpo, "actor")[k], before[k]) for k in before)


@pytest.mark.parametrize("damage", ["no_manifest", "truncated_adapter"])
def test_a_half_written_checkpoint_is_refused_and_nothing_changes(checkpoint, tokenizer, tiny_model_factory, tmp_path, damage):
    _, path = checkpoint
    half = tmp_path / ".iteration_0002.tmp"  # what a crash while saving leaves behind
    shutil.copytree(path, half)
    if damage == "no_manifest":
        (half / "selfsft.json").unlink()
        expected = "not a SelfSFT checkpoint: .*selfsft.json is missing"
    else:
        weights = half / "actor" / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
        expected = "is damaged: actor/adapter_model.safetensors does not match its manifest"
    dpo = _dpo(tokenizer, tiny_model_factory(0))
    before = adapter(dpo, "actor")
    with pytest.raises(SelfSFTError, match=expected):
        load_into(dpo, half)
    assert all(torch.equal(adapter(dpo, "actor")[k], before[k]) for k in before)


def test_a_peft_model_as_actor_network_is_rejected_by_agilerl(checkpoint, tokenizer, tiny_model_factory):
    from peft import PeftModel

    _, path = checkpoint
    peft_model = PeftModel.from_pretrained(tiny_model_factory(0), str(path / "actor"))
    with pytest.raises(Exception, match="manages its own LoRA adapters"):
        _dpo(tokenizer, peft_model)


# --- Models out: adapter, merged, gguf -------------------------------------------------------------------------

PROMPTS = ["What is the capital of France?", "Write a haiku about rain.", "2 + 2 ="]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tokenizer, tiny_model_factory, make_agent):
    """A checkpoint whose actor clearly differs from the base (and from the reference), on a tiny base saved to disk."""
    from transformers import LlamaForCausalLM

    root = tmp_path_factory.mktemp("models-out")
    base_dir = root / "tiny-base"
    tiny_model_factory(0).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    agent = make_agent(model=LlamaForCausalLM.from_pretrained(base_dir))
    # LoRA B starts at zero (the adapter is the identity): give the actor large B weights, so that an export
    # that ignores the adapter, or takes the reference, changes the greedy outputs.
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in agent.actor.named_parameters():
            if "lora_B.actor" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    return SimpleNamespace(agent=agent, path=save_iteration(agent, root / "run", 1), base_dir=base_dir, root=root)


def fresh_base(trained):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(trained.base_dir, dtype=torch.float32).eval()


def greedy(model, tokenizer, new_tokens=10):
    out = []
    for prompt in PROMPTS:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            seq = model.generate(**ids, do_sample=False, max_new_tokens=new_tokens, pad_token_id=tokenizer.pad_token_id, eos_token_id=None)
        out.append(seq[0, ids["input_ids"].shape[1]:].tolist())
    return out


def logits(model, tokenizer):
    with torch.no_grad():
        return model(**tokenizer(PROMPTS[0], return_tensors="pt")).logits.float()


@pytest.fixture(scope="module")
def adapter_model(trained, tokenizer):
    """The exported adapter loaded with PEFT onto a fresh base: the reference for merged and gguf."""
    from peft import PeftModel

    out = export_adapter(trained.path, trained.root / "adapter")
    model = PeftModel.from_pretrained(fresh_base(trained), str(out)).eval()
    return SimpleNamespace(model=model, folder=out, greedy=greedy(model, tokenizer), logits=logits(model, tokenizer))


def test_adapter_export_loads_with_peft_as_the_actor(trained, adapter_model, tokenizer):
    assert sorted(p.name for p in adapter_model.folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    model = adapter_model.model
    assert model.active_adapter == "default"
    def by_layer(weights):  # the agent's names start "module.base_model.model.", PEFT's "base_model.model."
        return {k[k.index("layers."):]: v for k, v in weights.items()}

    ours = by_layer(adapter(trained.agent, "actor"))
    theirs = by_layer(adapter(SimpleNamespace(actor=model), "default"))
    assert len(ours) == 2 * 14  # A and B of every linear layer of both blocks
    assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in ours)
    with torch.no_grad(), trained.agent.select_adapter("actor"):
        trained.agent.actor.eval()
        expected = trained.agent.actor(**tokenizer(PROMPTS[0], return_tensors="pt")).logits
    torch.testing.assert_close(adapter_model.logits, expected)
    assert adapter_model.greedy != greedy(fresh_base(trained), tokenizer)  # the adapter matters


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_merged_export_is_a_16_bit_model_with_the_adapters_greedy_outputs(trained, adapter_model, tokenizer, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agilerl_selfsft.export.formats import merged_model

    out = export_merged(trained.path, trained.root / f"merged-{dtype}", dtype=dtype)
    native = AutoModelForCausalLM.from_pretrained(out)
    assert native.dtype == getattr(torch, dtype)
    # exactly the fp32 merge, rounded once to the 16-bit dtype
    reference = merged_model(trained.path)[0].state_dict()
    weights = native.state_dict()
    assert set(weights) == set(reference)
    assert all(torch.equal(weights[k], reference[k].to(native.dtype)) for k in reference)
    saved_tokenizer = AutoTokenizer.from_pretrained(out)
    assert all(saved_tokenizer(p)["input_ids"] == tokenizer(p)["input_ids"] for p in PROMPTS)
    assert saved_tokenizer.chat_template == tokenizer.chat_template
    # Computed in fp32 from the 16-bit weights, and in fp16 itself.
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    torch.testing.assert_close(logits(merged, tokenizer), adapter_model.logits, atol=2e-2 if dtype == "bfloat16" else 2e-3, rtol=0)
    if dtype == "float16":
        assert greedy(merged, saved_tokenizer) == adapter_model.greedy
        assert greedy(native.eval(), saved_tokenizer) == adapter_model.greedy
    # bf16 keeps 8 bits of mantissa to fp16's 11: on this random tiny model, whose logits are near ties, its
    # greedy outputs part from the fp32 adapter's after a few tokens (the weights are checked exactly above).


@pytest.mark.parametrize("outtype", ["f32", "f16", "q8_0"])
def test_gguf_export_loads_in_transformers_with_the_adapters_outputs(trained, adapter_model, tokenizer, outtype):
    from transformers import AutoModelForCausalLM

    out = export_gguf(trained.path, trained.root / f"model-{outtype}.gguf", outtype=outtype)
    model = AutoModelForCausalLM.from_pretrained(out.parent, gguf_file=out.name, dtype=torch.float32).eval()
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.tie_word_embeddings
    if outtype == "f32":  # exactly the fp32 merge, weight for weight (the q/k permutation round-trips)
        from agilerl_selfsft.export.formats import merged_model

        reference = merged_model(trained.path)[0].state_dict()
        loaded = model.state_dict()
        assert set(loaded) == set(reference) and all(torch.equal(loaded[k], reference[k]) for k in reference)
    if outtype in ("f32", "f16"):
        assert greedy(model, tokenizer) == adapter_model.greedy
    torch.testing.assert_close(logits(model, tokenizer), adapter_model.logits,
                               atol={"f32": 1e-5, "f16": 2e-3, "q8_0": 5e-2}[outtype], rtol=0)


def test_gguf_bf16_writes_bf16_matrices_and_f32_norms(trained):
    """bf16, the one output type not loaded above, read back with gguf's reader (transformers dequantises with it)."""
    import gguf

    from agilerl_selfsft.export.formats import merged_model

    embed = merged_model(trained.path)[0].model.embed_tokens.weight.detach()
    out = export_gguf(trained.path, trained.root / "types-bf16.gguf", outtype="bf16")
    tensors = {t.name: t for t in gguf.GGUFReader(str(out)).tensors}
    assert "output.weight" not in tensors and len(tensors) == 2 + 9 * 2  # tied embeddings, 2 blocks of 9
    assert {t.tensor_type for n, t in tensors.items() if "norm" in n} == {gguf.GGMLQuantizationType.F32}
    assert {t.tensor_type for n, t in tensors.items() if "norm" not in n} == {gguf.GGMLQuantizationType.BF16}
    t = tensors["token_embd.weight"]
    values = gguf.quants.dequantize(t.data, t.tensor_type).reshape(embed.shape)
    assert torch.equal(torch.from_numpy(values.copy()), embed.to(torch.bfloat16).float())


def test_gguf_carries_the_tokenizer_and_chat_template(trained, tokenizer):
    from transformers import AutoTokenizer

    out = export_gguf(trained.path, trained.root / "tokenizer-check.gguf", outtype="q8_0")
    rebuilt = AutoTokenizer.from_pretrained(out.parent, gguf_file=out.name)
    texts = PROMPTS + ["  two spaces, digits 12345, tabs\t\tand é ü 日本", "<|im_start|>user\nHi<|im_end|>"]
    assert [rebuilt(t)["input_ids"] for t in texts] == [tokenizer(t)["input_ids"] for t in texts]
    assert [rebuilt.decode(rebuilt(t)["input_ids"]) for t in texts] == texts
    chat = [{"role": "user", "content": "Hi"}]
    assert rebuilt.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == \
        tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    import gguf

    fields = gguf.GGUFReader(str(out)).fields
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert fields["tokenizer.ggml.pre"].contents() == "gpt-2"  # llama.cpp's name; it refuses an unknown one ("gpt2")
    assert fields["tokenizer.ggml.token_type"].contents()[:3] == [gguf.TokenType.CONTROL] * 3  # <|endoftext|>, <|im_start|>, <|im_end|>
    assert fields["tokenizer.ggml.padding_token_id"].contents() == tokenizer.pad_token_id


def test_cli_export_end_to_end_and_refusal_to_overwrite(trained, adapter_model, tokenizer, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from agilerl_selfsft.cli import main

    out = tmp_path / "merged"
    argv = ["export", "--checkpoint", str(trained.path), "--format", "merged", "--output", str(out)]
    assert main(argv) == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.float16
    assert greedy(model.to(torch.float32).eval(), tokenizer) == adapter_model.greedy
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert main(argv + ["--dtype", "bfloat16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: output {out} is an existing folder (not empty); pass --overwrite to replace it"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched
    assert main(argv + ["--dtype", "bfloat16", "--overwrite"]) == 0
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]  # no temporary siblings left


def rewrite_manifest(folder):
    """Recompute a copied checkpoint's manifest after an edit (what a checkpoint of that shape would carry)."""
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"] = {str(f.relative_to(folder)): _sha256(f) for f in sorted(folder.rglob("*")) if f.is_file() and f.name != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps(manifest))


def test_bad_requests_are_one_line_errors_and_write_nothing(trained, tmp_path):
    path = trained.path
    cases = [
        (lambda: export_checkpoint(path, tmp_path / "x", "onnx"), r"unsupported export format 'onnx'; choose one of adapter, merged, gguf"),
        (lambda: export_checkpoint(path, tmp_path / "x", "merged", dtype="float32"), r"unsupported dtype 'float32' .* float16, bfloat16"),
        (lambda: export_checkpoint(path, tmp_path / "x.gguf", "gguf", dtype="float16"), r"--dtype applies to --format merged, not gguf"),
        (lambda: export_checkpoint(path, tmp_path / "x.gguf", "gguf", outtype="q4_k"), r"unsupported GGUF output type 'q4_k'; choose one of f32, f16, bf16, q8_0"),
        (lambda: export_checkpoint(path, tmp_path / "x.bin", "gguf"), r"must be a file name ending in .gguf"),
        (lambda: export_checkpoint(path, path / "adapter", "adapter"), r"overlaps the checkpoint"),
        (lambda: export_checkpoint(tmp_path, tmp_path / "x", "adapter"), r"not a SelfSFT checkpoint"),
    ]
    for call, message in cases:
        with pytest.raises(SelfSFTError, match=message) as info:
            call()
        assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_damaged_or_actorless_checkpoints_and_a_missing_base_are_named(trained, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(trained.path, damaged)
    weights = damaged / "actor" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(SelfSFTError, match="is damaged: actor/adapter_model.safetensors does not match its manifest"):
        export_checkpoint(damaged, tmp_path / "out", "adapter")

    actorless = tmp_path / "actorless"
    shutil.copytree(trained.path, actorless)
    shutil.rmtree(actorless / "actor")
    rewrite_manifest(actorless)
    with pytest.raises(SelfSFTError, match=r"has no actor adapter \(actor/adapter_config.json, actor/adapter_model.safetensors missing\)"):
        export_checkpoint(actorless, tmp_path / "out", "adapter")

    moved = tmp_path / "moved"
    shutil.copytree(trained.path, moved)
    config = json.loads((moved / "actor" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone" / "tiny-base")
    (moved / "actor" / "adapter_config.json").write_text(json.dumps(config))
    rewrite_manifest(moved)
    with pytest.raises(SelfSFTError, match=r"base model 'tiny-base' of checkpoint .* is not at .*gone/tiny-base; pass --base-model"):
        export_checkpoint(moved, tmp_path / "out.gguf", "gguf")
    with pytest.raises(SelfSFTError, match=r"was trained from 'tiny-base', not 'other'"):
        export_checkpoint(moved, tmp_path / "out.gguf", "gguf", base_model=str(tmp_path / "other"))
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.gguf").exists()


def test_gguf_refuses_other_architectures_by_name(trained, tokenizer, tiny_model_factory, tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from agilerl_selfsft.export.gguf import check_supported

    biased = tmp_path / "biased" / "tiny-base"  # same name as the checkpoint's base, another shape
    tiny_model_factory(0, attention_bias=True).save_pretrained(biased)
    tokenizer.save_pretrained(biased)
    with pytest.raises(SelfSFTError, match=r"GGUF export supports Llama-architecture models .*; this model has attention or MLP biases"):
        export_gguf(trained.path, tmp_path / "out.gguf", base_model=str(biased))
    assert not (tmp_path / "out.gguf").exists()
    qwen = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(SelfSFTError, match=r"supports Llama-architecture models .*; this model is Qwen2ForCausalLM \(model_type 'qwen2'\)"):
        check_supported(qwen, tokenizer)


def test_an_existing_output_is_kept_when_an_export_fails_midway(trained, tmp_path, monkeypatch):
    from agilerl_selfsft.export import gguf as gguf_export

    out = tmp_path / "model.gguf"
    out.write_bytes(b"previous export")
    with pytest.raises(SelfSFTError, match="is an existing file; pass --overwrite"):
        export_gguf(trained.path, out, outtype="f32")

    def crash(model, tokenizer, path, **kw):
        path.write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_export, "write_gguf", crash)
    with pytest.raises(KeyboardInterrupt):
        export_gguf(trained.path, out, outtype="f32", overwrite=True)
    assert out.read_bytes() == b"previous export" and sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]

    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    monkeypatch.setattr(shutil, "copyfile", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        export_adapter(trained.path, folder, overwrite=True)
    assert [p.name for p in folder.iterdir()] == ["keep.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "model.gguf"]


def test_exports_stop_at_the_end_of_turn_and_get_the_umasks_modes(trained, tmp_path):
    import os
    import stat

    from transformers import AutoTokenizer, GenerationConfig

    old = os.umask(0o022)
    try:
        merged = export_merged(trained.path, tmp_path / "merged")
        single = export_gguf(trained.path, tmp_path / "model.gguf", outtype="q8_0")
    finally:
        os.umask(old)
    assert stat.S_IMODE(merged.stat().st_mode) == 0o755  # not the staging folder's 700
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in merged.iterdir()} == {p.name: 0o644 for p in merged.iterdir()}
    assert stat.S_IMODE(single.stat().st_mode) == 0o644
    tokenizer = AutoTokenizer.from_pretrained(merged)
    assert tokenizer.eos_token == "<|im_end|>"  # SmolLM2's own eos is <|im_start|>
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end in GenerationConfig.from_pretrained(merged).eos_token_id
    import gguf

    assert gguf.GGUFReader(str(single)).fields["tokenizer.ggml.eos_token_id"].contents() == end
