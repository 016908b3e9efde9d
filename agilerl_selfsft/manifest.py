"""A checkpoint's manifest, ``selfsft.json``, and the check made against it before anything is loaded.

The manifest records the format version, the iteration, the base model (its folder name, and its identity
by content: :func:`base_identity`), the LoRA shape and the SHA-256 of every file of the checkpoint.
:func:`verify_checkpoint` checks a checkpoint folder against it:

- every name it lists is a plain relative path inside the folder (no ``..``, no absolute path, no link
  leading out), and is there with its recorded hash;
- the folder holds nothing it does not list (an extra file in ``actor/``, an ``attributes.pt`` added
  later…): AgileRL loads whatever it finds in those places, some of it with pickle;
- given an agent, the checkpoint was trained from the agent's base model (same architecture and sizes, and
  the same bytes in a few fixed weight tensors; manifests from before that field was written are checked
  by the model folder's name) and with its LoRA shape.

The hashes prove that the files are the ones the run wrote, not who wrote them: anyone who can write the
folder can also rewrite its manifest. Load only checkpoints of runs you trust.

This module sits below the algorithm so that every loader (resume, ``SelfSFT.population``,
``load_adapters``, ``load_into``, export) runs the same check.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from agilerl_selfsft.agilerl_adapter import unwrapped_actor
from agilerl_selfsft.errors import SelfSFTError

MANIFEST = "selfsft.json"
FORMAT_VERSION = 2
OLDER_MANIFESTS = (1,)  # manifests from before one version covered the folder: the same layout
LORA_FIELDS = ("r", "lora_alpha", "target_modules")
#: the architecture and sizes a base model is identified by (with the fingerprint of a few weights)
CONFIG_FIELDS = (
    "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "tie_word_embeddings",
)
_EMBEDDING_ROWS = 16  # rows of the input embeddings, evenly spaced over the vocabulary


def write_manifest(folder: Path, agent: Any, iteration: int, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``folder/selfsft.json`` for the files now in ``folder``, trained by ``agent``; returns it.

    :param folder: the finished checkpoint folder (before it is renamed into place)
    :param agent: the agent whose checkpoint it is (base model and LoRA shape)
    :param iteration: the iteration the checkpoint completes
    :param info: more keys for the manifest (e.g. ``eval_reward``), defaults to None
    """
    manifest = {
        "format_version": FORMAT_VERSION,
        "iteration": iteration,
        "base_model": Path(str(agent.pretrained_model_name_or_path)).name,
        "base_identity": base_identity(unwrapped_actor(agent)),
        "lora": lora_summary(agent.lora_config),
        **(info or {}),
        "files": {f.relative_to(folder).as_posix(): sha256(f) for f in sorted(folder.rglob("*")) if f.is_file()},
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def verify_checkpoint(path: str | Path, agent: Any | None = None) -> dict[str, Any]:
    """Check a checkpoint against its manifest (and, given an ``agent``, its base model and LoRA shape).

    :param path: the checkpoint folder (a link to it, such as ``checkpoints/latest``, is followed)
    :param agent: the agent it is to be loaded into, defaults to None (files only)
    :return: the manifest
    :raises SelfSFTError: naming the first problem: not a checkpoint, a name that leads out of the folder, a
        file the manifest does not list, a missing, truncated or changed file, another base model, another
        LoRA shape
    """
    path = Path(path)
    manifest = read_versioned_json(path / MANIFEST, f"not a SelfSFT checkpoint: {path}", OLDER_MANIFESTS)
    root = path.resolve()
    listed = manifest.get("files")
    if not isinstance(listed, dict):
        raise SelfSFTError(f"checkpoint {path} has a manifest without its list of files")
    for name in listed:
        _check_inside(path, root, name)
    extra = sorted(set(_files(path, root)) - set(listed) - {MANIFEST})
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise SelfSFTError(f"checkpoint {path} holds files its manifest does not list: {shown} "
                           "(they would be loaded unchecked; remove them)")
    for name, digest in listed.items():
        file = root / name
        if not file.is_file():
            raise SelfSFTError(f"checkpoint {path} is incomplete: {name} is missing")
        if sha256(file) != digest:
            raise SelfSFTError(
                f"checkpoint {path} is damaged: {name} does not match its manifest (truncated or changed)"
            )
    if agent is not None:
        _check_base(path, manifest, agent)
        ours = lora_summary(agent.lora_config)
        theirs = manifest["lora"]
        diff = [f"{k}: checkpoint {theirs.get(k)!r} vs config {ours[k]!r}" for k in ours if theirs.get(k) != ours[k]]
        if diff:
            raise SelfSFTError(
                f"checkpoint {path} has another LoRA shape ({'; '.join(diff)}); set lora in the config to match"
            )
    return manifest


def _check_inside(path: Path, root: Path, name: Any) -> None:
    """Refuse a listed name that is not a plain relative path to a regular file inside ``root``."""
    parts = PurePosixPath(name).parts if isinstance(name, str) and name else ()
    plain = bool(parts) and not PurePosixPath(name).is_absolute() and not {"..", "."} & set(parts) and "\\" not in name
    if plain:
        file = root.joinpath(*parts)
        linked = any(p.is_symlink() for p in [file, *file.parents] if p != root and root in p.parents)
        plain = not linked and (not file.exists() or root in file.resolve().parents)
    if not plain:
        raise SelfSFTError(f"checkpoint {path} has a manifest entry outside the checkpoint folder: {name!r}")


def _files(path: Path, root: Path) -> list[str]:
    """Every regular file under ``root``, relative; a link or another kind of entry is refused by name."""
    found = []
    for folder, dirs, files in os.walk(root):
        for entry in [*dirs, *files]:
            full = Path(folder) / entry
            relative = full.relative_to(root).as_posix()
            if full.is_symlink() or not (full.is_dir() or full.is_file()):
                raise SelfSFTError(f"checkpoint {path} holds {relative}, which is not a plain file or folder")
            if entry in files:
                found.append(relative)
    return found


def _check_base(path: Path, manifest: dict[str, Any], agent: Any) -> None:
    """Refuse a checkpoint trained from another base model than ``agent``'s.

    By content when the manifest records the base's identity (and the agent's can be read); by the model
    folder's name for manifests from before that (or when the weights are partitioned over processes).
    """
    name = Path(str(agent.pretrained_model_name_or_path)).name
    recorded = manifest.get("base_identity")
    ours = base_identity(unwrapped_actor(agent)) if recorded else None
    if ours is None:
        if manifest["base_model"] != name:
            raise SelfSFTError(f"checkpoint {path} was trained from {manifest['base_model']!r}, not {name!r}")
        return
    theirs = recorded.get("config") or {}
    config_diff = [f"{k}: checkpoint {theirs.get(k)!r} vs model {v!r}" for k, v in ours["config"].items()
                   if theirs.get(k) != v]
    if not config_diff and recorded.get("weights") == ours["weights"]:
        return
    reason = "; ".join(config_diff) if config_diff else "same architecture, other weights"
    which = (f"{manifest['base_model']!r}, not {name!r}" if manifest["base_model"] != name
             else "another base model than the agent's" + (f" {name!r}" if name else ""))
    raise SelfSFTError(f"checkpoint {path} was trained from {which} ({reason})")


def base_identity(model: Any) -> dict[str, Any] | None:
    """What identifies a base model by content: its architecture and sizes, and a fingerprint of its weights.

    The fingerprint is the SHA-256 of 16 evenly spaced rows of the input embeddings and of the first and
    last one-dimensional weights (layer norms in Llama-like models), each cast to bfloat16 first, so the
    same model loaded in fp32, fp16 or bf16 has the same fingerprint.

    :param model: a transformers model (the base, without adapters), or a PEFT model around it
    :return: ``{"config": {...}, "weights": sha256, "tensors": [names]}``, or None when the weights cannot
        be read here (partitioned over processes, or no input embeddings)
    """
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is None or getattr(embeddings, "weight", None) is None or embeddings.weight.numel() == 0:
        return None
    config = getattr(model, "config", None)
    vectors = [
        (name.replace(".base_layer", "").replace(".original_module", ""), p)
        for name, p in model.named_parameters()
        if p.dim() == 1 and "lora_" not in name and "modules_to_save" not in name
    ]
    rows = torch.linspace(0, embeddings.weight.shape[0] - 1, _EMBEDDING_ROWS).long()
    chosen = [("input_embeddings[16 rows]", embeddings.weight.detach()[rows.to(embeddings.weight.device)])]
    chosen += [vectors[0], vectors[-1]] if vectors else []
    if any(t.numel() == 0 for _, t in chosen):
        return None
    digest = hashlib.sha256()
    for _, tensor in chosen:
        value = tensor.detach().to("cpu", torch.bfloat16).contiguous()
        digest.update(str(tuple(value.shape)).encode())
        digest.update(value.view(torch.int16).numpy().tobytes())
    return {
        "config": {k: getattr(config, k, None) for k in CONFIG_FIELDS},
        "weights": digest.hexdigest(),
        "tensors": [name for name, _ in chosen],
    }


def read_versioned_json(path: Path, what: str, older: tuple[int, ...] = ()) -> dict[str, Any]:
    """A JSON file of :data:`FORMAT_VERSION` (or one of the ``older`` versions that read the same);
    a :class:`SelfSFTError` that starts with ``what`` otherwise."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SelfSFTError(f"{what}: {path.name} is missing") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise SelfSFTError(f"{what}: {path.name} is unreadable ({exc})") from None
    if not isinstance(data, dict) or data.get("format_version") not in (FORMAT_VERSION, *older):
        version = data.get("format_version") if isinstance(data, dict) else None
        raise SelfSFTError(f"{what}: {path.name} has format {version!r}; this version reads {FORMAT_VERSION}")
    return data


def lora_summary(config: Any) -> dict[str, Any]:
    """The LoRA fields a checkpoint must share with the agent it is loaded into."""
    targets = config.target_modules
    return {
        "r": config.r,
        "lora_alpha": config.lora_alpha,
        "target_modules": sorted(targets) if isinstance(targets, (set, list, tuple)) else targets,
    }


def sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
