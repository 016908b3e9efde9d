"""Versioned checkpoints: iteration folders, the ``latest`` link, pruning, and loading the saved adapter."""

from __future__ import annotations

import json
import os

import torch
from conftest import CHATS
from peft import PeftModel

from agilerl_selfsft.data.chat import collate
from agilerl_selfsft.manifest import FORMAT_VERSION, MANIFEST
from agilerl_selfsft.manifest import sha256 as _sha256
from agilerl_selfsft.training.checkpoints import save_iteration



def test_iterations_latest_and_pruning(tiny_agent, tmp_path):
    paths = [save_iteration(tiny_agent, tmp_path, i, keep_last=2, info={"eval_reward": i / 10}) for i in range(1, 5)]
    root = tmp_path / "checkpoints"
    assert paths[-1] == root / "iteration_0004"
    entries = sorted(os.listdir(root))
    assert entries == ["iteration_0003", "iteration_0004", "latest"]  # no hidden temporaries left behind
    latest = root / "latest"
    assert latest.is_symlink()
    assert not os.path.isabs(os.readlink(latest))  # relative: the run folder can be moved
    assert latest.resolve() == (root / "iteration_0004").resolve()
    for name in ("iteration_0003", "iteration_0004"):
        folder = root / name
        assert (folder / "actor" / "adapter_model.safetensors").is_file()
        assert (folder / "actor" / "adapter_config.json").is_file()
        assert (folder / "reference").is_dir()
        assert (folder / "attributes.pt").is_file()
    manifest = json.loads((latest / MANIFEST).read_text())
    assert manifest["iteration"] == 4
    assert manifest["eval_reward"] == 0.4
    assert "base_model" in manifest
    assert json.loads((root / "iteration_0003" / MANIFEST).read_text())["iteration"] == 3


def test_saving_an_iteration_again_replaces_it(tiny_agent, tmp_path):
    save_iteration(tiny_agent, tmp_path, 1, info={"eval_reward": 0.1})
    save_iteration(tiny_agent, tmp_path, 1, info={"eval_reward": 0.2})
    root = tmp_path / "checkpoints"
    assert sorted(os.listdir(root)) == ["iteration_0001", "latest"]
    assert json.loads((root / "latest" / MANIFEST).read_text())["eval_reward"] == 0.2


def test_saved_actor_adapter_reproduces_the_agent(tiny_agent, tiny_model_factory, tokenizer, tmp_path):
    batch = collate(tokenizer, CHATS)
    for _ in range(3):
        tiny_agent.learn(batch)  # the adapter is no longer the zero-initialised identity
    folder = save_iteration(tiny_agent, tmp_path, 1)

    with torch.no_grad(), tiny_agent.select_adapter("actor"):
        tiny_agent.actor.eval()
        expected = tiny_agent.actor(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    base = tiny_model_factory()  # same seed: the same base weights the agent was built on
    with torch.no_grad():
        base_logits = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert not torch.allclose(base_logits, expected, atol=1e-5)  # the trained adapter matters

    loaded = PeftModel.from_pretrained(base, folder / "actor")
    loaded.eval()
    with torch.no_grad():
        got = loaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


# ---- the manifest: checked before anything is loaded ----
from peft import LoraConfig  # noqa: E402
import pytest  # noqa: E402

from agilerl_selfsft.errors import SelfSFTError  # noqa: E402
from agilerl_selfsft.training.checkpoints import load_adapters, verify_checkpoint  # noqa: E402


def test_manifest_hashes_every_file_and_loads_clean(tiny_agent, make_agent, tmp_path):
    tiny_agent.learn(collate(tiny_agent.tokenizer, CHATS))
    path = save_iteration(tiny_agent, tmp_path, 1, info={"eval_reward": 0.5})
    manifest = verify_checkpoint(path, tiny_agent)
    assert manifest["iteration"] == 1 and manifest["format_version"] == FORMAT_VERSION
    assert {"actor/adapter_model.safetensors", "reference/adapter_model.safetensors", "attributes.pt"} <= set(manifest["files"])
    fresh = make_agent()
    load_adapters(fresh, path)  # safetensors only
    batch = collate(tiny_agent.tokenizer, CHATS)
    assert fresh.learn(batch, training=False)["loss"] == pytest.approx(tiny_agent.learn(batch, training=False)["loss"], abs=1e-6)


def test_one_format_version_and_older_manifests_still_read(tiny_agent, tmp_path):
    # A checkpoint folder has one format version, manifest and run state alike; a manifest written when it
    # had its own number (1; same layout) still verifies, and an unknown version is refused by name.
    path = save_iteration(tiny_agent, tmp_path, 1, extra=lambda folder: (folder / "run_state.json").write_text(
        json.dumps({"format_version": FORMAT_VERSION})))
    assert json.loads((path / "run_state.json").read_text())["format_version"] == FORMAT_VERSION
    manifest = json.loads((path / MANIFEST).read_text())
    for version, readable in ((1, True), (FORMAT_VERSION + 1, False)):
        (path / MANIFEST).write_text(json.dumps({**manifest, "format_version": version}))
        if readable:
            assert verify_checkpoint(path, tiny_agent)["format_version"] == 1
        else:
            with pytest.raises(SelfSFTError, match=rf"has format {version}; this version reads {FORMAT_VERSION}"):
                verify_checkpoint(path)


def test_truncated_or_missing_files_are_named(tiny_agent, tmp_path):
    path = save_iteration(tiny_agent, tmp_path, 1)
    adapter = path / "actor" / "adapter_model.safetensors"
    intact = adapter.read_bytes()
    adapter.write_bytes(intact[:100])
    with pytest.raises(SelfSFTError, match=r"is damaged: actor/adapter_model.safetensors does not match its manifest"):
        verify_checkpoint(path)
    adapter.write_bytes(intact)
    verify_checkpoint(path)
    (path / "attributes.pt").unlink()
    with pytest.raises(SelfSFTError, match="is incomplete: attributes.pt is missing"):
        verify_checkpoint(path)
    (path / MANIFEST).unlink()
    with pytest.raises(SelfSFTError, match="not a SelfSFT checkpoint"):
        verify_checkpoint(path)


def test_another_lora_shape_is_refused_with_the_fields(tiny_agent, make_agent, tmp_path):
    path = save_iteration(tiny_agent, tmp_path, 1)
    other = make_agent(lora_config=LoraConfig(r=8, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    with pytest.raises(SelfSFTError, match=r"another LoRA shape \(r: checkpoint 4 vs config 8\)"):
        load_adapters(other, path)


# ---- the manifest covers the folder, and only the folder ----
def _relist(path, files):
    """Rewrite a checkpoint's manifest with ``files`` as its list (what someone editing the folder could do)."""
    manifest = json.loads((path / MANIFEST).read_text())
    (path / MANIFEST).write_text(json.dumps({**manifest, "files": files}))


def test_manifest_names_that_lead_out_of_the_checkpoint_are_refused(tiny_agent, tmp_path):
    path = save_iteration(tiny_agent, tmp_path / "run", 1)
    listed = json.loads((path / MANIFEST).read_text())["files"]
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"not part of the checkpoint")
    digest = _sha256(outside)
    for name in ("../../../outside.bin", str(outside)):  # relative escape, absolute path: both hash correctly
        _relist(path, {**listed, name: digest})
        with pytest.raises(SelfSFTError, match=r"has a manifest entry outside the checkpoint folder: '.*outside.bin'"):
            verify_checkpoint(path)
    # a listed file that is a link to a file elsewhere (same bytes, so its hash matches)
    _relist(path, listed)
    config = path / "actor" / "adapter_config.json"
    copy = tmp_path / "adapter_config.json"
    copy.write_bytes(config.read_bytes())
    config.unlink()
    config.symlink_to(copy)
    with pytest.raises(SelfSFTError, match=r"outside the checkpoint folder: 'actor/adapter_config.json'"):
        verify_checkpoint(path)


def test_files_the_manifest_does_not_list_are_refused(tiny_agent, tmp_path):
    path = save_iteration(tiny_agent, tmp_path, 1)
    listed = json.loads((path / MANIFEST).read_text())["files"]
    extra = path / "actor" / "adapter_model.bin"  # what a loader could pick up besides the listed safetensors
    extra.write_bytes(b"\x80\x04unchecked pickle")
    with pytest.raises(SelfSFTError, match=r"holds files its manifest does not list: actor/adapter_model.bin "
                                           r"\(they would be loaded unchecked; remove them\)"):
        verify_checkpoint(path)
    extra.unlink()
    verify_checkpoint(path)
    _relist(path, {k: v for k, v in listed.items() if k != "attributes.pt"})  # there, but no longer listed
    with pytest.raises(SelfSFTError, match=r"does not list: attributes.pt"):
        verify_checkpoint(path)


def test_two_bases_of_one_config_are_told_apart_by_their_weights(make_agent, tiny_model_factory, tmp_path):
    from transformers import LlamaForCausalLM

    from agilerl_selfsft.manifest import base_identity

    trained = make_agent(seed=0)
    path = save_iteration(trained, tmp_path, 1)
    same, other = make_agent(seed=0), make_agent(seed=1)  # both built from a config: no folder name at all
    assert trained.pretrained_model_name_or_path == other.pretrained_model_name_or_path
    verify_checkpoint(path, same)
    with pytest.raises(SelfSFTError, match=r"was trained from another base model than the agent's \(same architecture, "
                                           r"other weights\)"):
        verify_checkpoint(path, other)
    wider = tiny_model_factory(0).config
    wider.intermediate_size = 128
    with pytest.raises(SelfSFTError, match=r"\(intermediate_size: checkpoint 64 vs model 128\)"):
        verify_checkpoint(path, make_agent(model=LlamaForCausalLM(wider)))
    # the same weights in another dtype are the same base; a moved (renamed) model folder too
    assert base_identity(tiny_model_factory(0)) == base_identity(tiny_model_factory(0).to(torch.bfloat16))

    def renamed():
        model = tiny_model_factory(0)
        model.name_or_path = model.config._name_or_path = "/models/renamed"
        return make_agent(model=model)

    assert renamed().pretrained_model_name_or_path == "/models/renamed"
    verify_checkpoint(path, renamed())
    # a manifest from before the field existed is checked by the folder name, as it was
    manifest = json.loads((path / MANIFEST).read_text())
    del manifest["base_identity"]
    (path / MANIFEST).write_text(json.dumps(manifest))
    verify_checkpoint(path, other)
    with pytest.raises(SelfSFTError, match=r"was trained from '', not 'renamed'"):
        verify_checkpoint(path, renamed())
