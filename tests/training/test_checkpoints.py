"""Versioned checkpoints: iteration folders, the ``latest`` link, pruning, and loading the saved adapter."""

from __future__ import annotations

import json
import os

import torch
from conftest import CHATS
from peft import PeftModel

from agilerl_selfsft.data.chat import collate
from agilerl_selfsft.training.checkpoints import FORMAT_VERSION, MANIFEST, save_iteration



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
