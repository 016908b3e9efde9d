"""Models out: a checkpoint's actor as files other tools load (``agilerl-selfsft export``).

:func:`export_checkpoint` writes the checkpoint's actor as

- ``adapter``: a PEFT adapter folder (``PeftModel.from_pretrained(base, folder)``, the ``default`` adapter);
- ``merged``: the base model with the adapter merged in (in fp32, then cast to fp16 or bf16) and its
  tokenizer, a transformers folder (``AutoModelForCausalLM.from_pretrained(folder)``);
- ``gguf``: the merged model and tokenizer as one GGUF file (f32, f16, bf16 or q8_0; Llama-architecture
  models only, see :mod:`agilerl_selfsft.export.gguf`).

The checkpoint is verified against its manifest first. Every export is written into a temporary sibling
of the output and renamed into place at the end, so an interrupted export leaves nothing half-written; an
existing non-empty output is only replaced with ``overwrite``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from agilerl_selfsft.data.chat import turn_end_token_ids
from agilerl_selfsft.errors import SelfSFTError
from agilerl_selfsft.models import EMBEDDED_NAME, load_model, resolve_model_path
from agilerl_selfsft.training.checkpoints import verify_checkpoint


FORMATS = ("adapter", "merged", "gguf")
MERGED_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
_ACTOR_FILES = ("actor/adapter_config.json", "actor/adapter_model.safetensors")


def export_checkpoint(
    checkpoint: str | Path,
    output: str | Path,
    format: str,  # noqa: A002 -- the CLI's --format
    dtype: str | None = None,
    outtype: str | None = None,
    base_model: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Export a checkpoint's actor as a PEFT adapter, a merged 16-bit model or a GGUF file.

    :param checkpoint: a SelfSFT checkpoint folder, e.g. ``RUN/checkpoints/latest``
    :param output: the folder (``adapter``, ``merged``) or ``.gguf`` file (``gguf``) to create
    :param format: ``adapter``, ``merged`` or ``gguf``
    :param dtype: for ``merged`` only: ``float16`` (default) or ``bfloat16``
    :param outtype: for ``gguf`` only: ``f32``, ``f16`` (default), ``bf16`` or ``q8_0``
    :param base_model: the base model (name, folder or hub id), defaults to the one the checkpoint records
        (not needed for ``adapter``)
    :param overwrite: replace an existing non-empty ``output``
    :return: ``output``
    :raises SelfSFTError: one line naming the problem (bad format, dtype or output type, an output in the
        way, a damaged checkpoint or one without an actor adapter, an unsupported architecture)
    """
    if format not in FORMATS:
        raise SelfSFTError(f"unsupported export format {format!r}; choose one of {', '.join(FORMATS)}")
    if dtype is not None and format != "merged":
        hint = " (use --outtype)" if format == "gguf" else ""
        raise SelfSFTError(f"--dtype applies to --format merged, not {format}{hint}")
    if outtype is not None and format != "gguf":
        raise SelfSFTError(f"--outtype applies to --format gguf, not {format}")
    if format == "adapter":
        return export_adapter(checkpoint, output, overwrite=overwrite)
    if format == "merged":
        return export_merged(checkpoint, output, dtype=dtype or "float16", base_model=base_model, overwrite=overwrite)
    return export_gguf(checkpoint, output, outtype=outtype or "f16", base_model=base_model, overwrite=overwrite)


def export_adapter(checkpoint: str | Path, output: str | Path, overwrite: bool = False) -> Path:
    """Copy the checkpoint's actor adapter into a PEFT adapter folder.

    ``peft.PeftModel.from_pretrained(base, output)`` loads it as the ``default`` adapter (the files are
    PEFT's own, checked against the checkpoint's manifest first).

    :param checkpoint: a SelfSFT checkpoint folder
    :param output: the folder to create
    :param overwrite: replace an existing non-empty ``output``
    :return: ``output``
    :raises SelfSFTError: see :func:`export_checkpoint`
    """
    checkpoint, output = Path(checkpoint), Path(output)
    _check_checkpoint(checkpoint)
    _check_output(output, checkpoint, overwrite, file=False)
    with _staged(output, file=False) as tmp:
        for name in _ACTOR_FILES:
            shutil.copyfile(checkpoint / name, tmp / Path(name).name)
    return output


def export_merged(
    checkpoint: str | Path,
    output: str | Path,
    dtype: str = "float16",
    base_model: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Merge the actor adapter into its base model and save a full 16-bit transformers model with its tokenizer.

    The merge is done in fp32, then the weights are cast to ``dtype``; ``AutoModelForCausalLM.from_pretrained``
    loads the folder.

    :param checkpoint: a SelfSFT checkpoint folder
    :param output: the folder to create
    :param dtype: ``float16`` or ``bfloat16``
    :param base_model: the base model, defaults to the one the checkpoint records
    :param overwrite: replace an existing non-empty ``output``
    :return: ``output``
    :raises SelfSFTError: see :func:`export_checkpoint`
    """
    if dtype not in MERGED_DTYPES:
        raise SelfSFTError(f"unsupported dtype {dtype!r} for a merged model; choose one of {', '.join(MERGED_DTYPES)}")

    def write(model: Any, tokenizer: Any, tmp: Path, manifest: dict[str, Any]) -> None:
        model.to(MERGED_DTYPES[dtype])
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return _export_merged_model(checkpoint, output, base_model, overwrite, write, file=False)


def export_gguf(
    checkpoint: str | Path,
    output: str | Path,
    outtype: str = "f16",
    base_model: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Merge the actor adapter into its base model and write one GGUF file (weights, config and tokenizer).

    Llama-architecture models only (see :mod:`agilerl_selfsft.export.gguf`). transformers loads the file
    with ``AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=...)`` (dequantising to the
    dtype asked for) and ``AutoTokenizer.from_pretrained(folder, gguf_file=name)``; llama.cpp reads it too.

    :param checkpoint: a SelfSFT checkpoint folder
    :param output: the ``.gguf`` file to create
    :param outtype: ``f32``, ``f16``, ``bf16`` or ``q8_0``
    :param base_model: the base model, defaults to the one the checkpoint records
    :param overwrite: replace an existing file
    :return: ``output``
    :raises SelfSFTError: see :func:`export_checkpoint`
    """
    from agilerl_selfsft.export.gguf import OUTTYPES, check_supported, write_gguf

    if outtype not in OUTTYPES:
        raise SelfSFTError(f"unsupported GGUF output type {outtype!r}; choose one of {', '.join(OUTTYPES)}")

    def write(model: Any, tokenizer: Any, tmp: Path, manifest: dict[str, Any]) -> None:
        name = f"{manifest['base_model']}-selfsft-iteration{manifest.get('iteration', 0)}"
        write_gguf(model, tokenizer, tmp, outtype=outtype, name=name)

    return _export_merged_model(checkpoint, output, base_model, overwrite, write, file=True, check=check_supported)


def _export_merged_model(
    checkpoint: str | Path, output: str | Path, base_model: str | None, overwrite: bool,
    write: Callable[[Any, Any, Path, dict[str, Any]], None], file: bool,
    check: Callable[[Any, Any], None] | None = None,
) -> Path:
    """Check the checkpoint and the output, merge the actor into its base, and ``write(model, tokenizer, tmp,
    manifest)`` into a staged ``tmp`` (a folder, or a file with ``file``) that is renamed to ``output``."""
    checkpoint, output = Path(checkpoint), Path(output)
    manifest = _check_checkpoint(checkpoint)
    _check_output(output, checkpoint, overwrite, file=file)
    model, tokenizer = merged_model(checkpoint, base_model, manifest, check=check)
    with _staged(output, file=file) as tmp:
        write(model, tokenizer, tmp, manifest)
    return output


def merged_model(
    checkpoint: str | Path, base_model: str | None = None, manifest: dict[str, Any] | None = None,
    check: Callable[[Any, Any], None] | None = None,
) -> tuple[Any, Any]:
    """The base model with the checkpoint's actor adapter merged in (fp32), and the base model's tokenizer.

    :param checkpoint: a SelfSFT checkpoint folder
    :param base_model: the base model, defaults to the one the checkpoint records
    :param manifest: the checkpoint's verified manifest (verified here when not given)
    :param check: called as ``check(base, tokenizer)`` before the adapter is loaded (to refuse early)
    :return: ``(model, tokenizer)``; the tokenizer's eos is the chat template's end of turn (the model's
        ``generation_config`` stops at it and at the old eos), and it has a pad token (the eos when it had none)
    :raises SelfSFTError: for a base model that cannot be found or that the adapter does not fit
    """
    from peft import PeftModel
    from transformers import AutoTokenizer

    checkpoint = Path(checkpoint)
    manifest = manifest or _check_checkpoint(checkpoint)
    path = _base_model_path(checkpoint, manifest, base_model)
    base, _ = load_model(path, dtype=torch.float32, device="cpu")  # merged and written from host memory
    tokenizer = AutoTokenizer.from_pretrained(path)
    ends_turn = turn_end_token_ids(tokenizer)
    if ends_turn[0] != tokenizer.eos_token_id:  # e.g. SmolLM2's eos is <|im_start|>: any consumer stops at the turn end
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(ends_turn[0])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if check is not None:
        check(base, tokenizer)
    try:
        peft_model = PeftModel.from_pretrained(base, str(checkpoint / "actor"))
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SelfSFTError(f"the actor adapter of {checkpoint} does not fit base model {path}: {first}") from None
    model = peft_model.merge_and_unload()
    model.eval()
    model.generation_config.eos_token_id = ends_turn
    return model, tokenizer


def _check_checkpoint(checkpoint: Path) -> dict[str, Any]:
    manifest = verify_checkpoint(checkpoint)
    missing = [name for name in _ACTOR_FILES if name not in manifest["files"]]
    if missing:
        raise SelfSFTError(
            f"checkpoint {checkpoint} has no actor adapter ({', '.join(missing)} missing); nothing to export"
        )
    return manifest


def _base_model_path(checkpoint: Path, manifest: dict[str, Any], base_model: str | None) -> str:
    """The base model to merge into: ``base_model``, else the embedded model or the folder the adapter records."""
    expected = manifest["base_model"]
    if base_model is None:
        adapter_config = json.loads((checkpoint / "actor" / "adapter_config.json").read_text())
        recorded = adapter_config.get("base_model_name_or_path") or ""
        if expected.lower() == EMBEDDED_NAME:
            base_model = EMBEDDED_NAME
        elif recorded and Path(recorded).expanduser().is_dir():
            base_model = recorded
        else:
            raise SelfSFTError(
                f"base model {expected!r} of checkpoint {checkpoint} is not at {recorded or 'a recorded path'}; "
                "pass --base-model (base_model=) with its folder or hub id"
            )
    path = resolve_model_path(base_model)
    if Path(path).name != expected:
        raise SelfSFTError(f"checkpoint {checkpoint} was trained from {expected!r}, not {Path(path).name!r}")
    return path


def _check_output(output: Path, checkpoint: Path, overwrite: bool, file: bool) -> None:
    """Refuse an output that is in the way (unless ``overwrite``) or that overlaps the checkpoint."""
    out, ckpt = output.resolve(), checkpoint.resolve()
    if out == ckpt or ckpt in out.parents or out in ckpt.parents:
        raise SelfSFTError(f"output {output} overlaps the checkpoint {checkpoint}; choose another path")
    if file and output.suffix != ".gguf":
        raise SelfSFTError(f"GGUF output must be a file name ending in .gguf, not {output}")
    if file and output.is_dir():
        raise SelfSFTError(f"output {output} is a folder; name a .gguf file")
    if overwrite or not (output.exists() or output.is_symlink()):
        return
    if output.is_dir() and not any(output.iterdir()):
        return  # an empty folder is filled
    what = "folder" if output.is_dir() else "file"
    raise SelfSFTError(f"output {output} is an existing {what}" + (" (not empty)" if what == "folder" else "")
                       + "; pass --overwrite to replace it")


@contextmanager
def _staged(output: Path, file: bool) -> Iterator[Path]:
    """Yield a temporary sibling of ``output`` to write into; rename it into place only once it is complete."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        yield tmp / output.name if file else tmp
        _normal_modes(tmp)  # mkdtemp's 700 (and 600 files some writers make) would leak into the output
        if file:
            os.replace(tmp / output.name, output)  # atomic, also over an existing file
        elif output.exists() or output.is_symlink():  # a folder cannot be renamed over a non-empty one
            old = tmp.with_suffix(".old")
            os.replace(output, old)
            try:
                os.replace(tmp, output)
            except BaseException:
                os.replace(old, output)  # put the previous output back
                raise
            _remove(old)
        else:
            os.replace(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _normal_modes(root: Path) -> None:
    """Give ``root`` and everything under it the modes a plain ``mkdir`` / ``open`` would under the umask."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
