"""On-policy preference pairs for DPO, built from the scored samples of a self-training iteration.

Every iteration of :func:`~agilerl_selfsft.training.loop.finetune_llm_selfsft` samples K completions per prompt
and scores them. Where a prompt's completions disagree in reward, the better and the worse one make a
DPO pair, for free: :func:`build_pairs` does that, :func:`pairs_to_dataset` turns pairs into the
``prompt``/``chosen``/``rejected`` dataset AgileRL 2.10.0's ``PreferenceGym`` reads, and
:func:`pair_writer` keeps each iteration's pairs as ``RUN/pairs/iteration_NNNN.jsonl``.

**Pairing rule** (per prompt id, after dropping repeats of a completion, as selection does): sort the
prompt's completions by reward, then pair the best with the worst, the second best with the second worst,
and so on — up to ``pairs_per_prompt`` pairs, each completion in at most one pair, and only while the
chosen reward exceeds the rejected one by at least ``min_margin``. Ties keep generation order. A chosen
completion must have finished (ended its turn; one cut off at ``max_new_tokens`` would teach the model not
to stop) unless ``keep_truncated``; a rejected one may be cut off.

**Text format** — how ``PreferenceGym`` (``agilerl/llm_envs/preference.py``) builds a batch:

- it tokenises ``prompt`` as a raw string (no chat template of its own), so ``prompt`` is the prompt
  rendered by the tokenizer's chat template with its generation prompt
  (:func:`~agilerl_selfsft.data.chat.render_prompt`), exactly what the model saw when it sampled;
- it tokenises ``(prompt, response + tokenizer.eos_token)`` as a text pair and learns every token after
  the prompt. So a response is what the chat template renders for the assistant turn, end-of-turn marker
  included (SmolLM2: ``"Paris.<|im_end|>\\n"``), which teaches where the answer ends; a trailing eos the
  template already writes (Qwen's, Llama-3's turn end) is cut, since ``PreferenceGym`` appends it again.
  With SmolLM2, whose eos is ``<|im_start|>``, the learned tokens are ``Paris . <|im_end|> \\n
  <|im_start|>``: the template's own continuation. A completion cut off at ``max_new_tokens`` gets no
  end-of-turn marker (it never ended).

JSONL files hold the pairs themselves (prompt turns, completion texts, rewards), not rendered text, so the
same file can be rendered for any tokenizer by :func:`load_pairs_dataset`.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from agilerl_selfsft.data.chat import render_prompt
from agilerl_selfsft.data.readers import read_jsonl
from agilerl_selfsft.env.selection import dedup
from agilerl_selfsft.errors import SelfSFTError
from agilerl_selfsft.samples import Message, Scored

NO_PAIRS_HINT = (
    "no prompt had two completions whose rewards differ by at least min_margin; sample more completions per "
    "prompt (num_generations), raise the temperature, or lower min_margin"
)


@dataclass
class Pair:
    """One preference pair: two completions of the same prompt, the better one ``chosen``.

    :param prompt_id: the prompt's task id
    :param messages: the prompt turns (system and user), without the answer
    :param chosen: the completion with the higher reward
    :param rejected: the completion with the lower reward
    :param chosen_reward: its reward
    :param rejected_reward: its reward
    :param chosen_finished: whether ``chosen`` ended its turn (not cut off at ``max_new_tokens``)
    :param rejected_finished: whether ``rejected`` ended its turn
    """

    prompt_id: int
    messages: list[Message]
    chosen: str
    rejected: str
    chosen_reward: float
    rejected_reward: float
    chosen_finished: bool = True
    rejected_finished: bool = True

    @property
    def margin(self) -> float:
        """``chosen_reward - rejected_reward``."""
        return self.chosen_reward - self.rejected_reward


def build_pairs(
    samples: list[Scored], min_margin: float = 1e-6, pairs_per_prompt: int = 1, keep_truncated: bool = False
) -> list[Pair]:
    """Pair each prompt's better completions with its worse ones (the rule is in the module docstring).

    :param samples: scored completions of one iteration (several prompts, K each)
    :param min_margin: least reward gap between chosen and rejected, defaults to 1e-6 (strictly better)
    :param pairs_per_prompt: most pairs per prompt, defaults to 1 (best vs worst)
    :param keep_truncated: also let a completion cut off at ``max_new_tokens`` be chosen, defaults to False
    :return: the pairs, grouped by prompt in the order prompts first appear; empty when no prompt has a
        reward spread (:func:`pairs_to_dataset` then says so)
    :raises SelfSFTError: for ``min_margin <= 0``, ``pairs_per_prompt < 1``, a sample without its
        completion as last turn, an agent's trajectory, a non-finite reward, or one prompt id with two
        different prompts
    """
    if not min_margin > 0:
        raise SelfSFTError(f"min_margin must be > 0 (chosen must be better than rejected), got {min_margin}")
    if pairs_per_prompt < 1:
        raise SelfSFTError(f"pairs_per_prompt must be >= 1, got {pairs_per_prompt}")
    groups: dict[int, list[Scored]] = {}
    prompts: dict[int, list[Message]] = {}
    for s in dedup(samples):
        if s.learn_turns is not None:
            raise SelfSFTError(f"prompt {s.prompt_id}: an agent's multi-turn trajectory cannot be a DPO pair "
                               "(PreferenceGym takes one prompt and one response); pair single-turn samples")
        turns = _prompt_turns(s)
        if not math.isfinite(s.reward):
            raise SelfSFTError(f"a completion of prompt {s.prompt_id} has a non-finite reward ({s.reward})")
        if prompts.setdefault(s.prompt_id, turns) != turns:
            raise SelfSFTError(f"prompt id {s.prompt_id} is used by two different prompts; give each prompt its own id")
        groups.setdefault(s.prompt_id, []).append(s)
    pairs: list[Pair] = []
    for pid, group in groups.items():
        best_first = sorted(range(len(group)), key=lambda i: -group[i].reward)  # stable: ties keep generation order
        worst_first = sorted(range(len(group)), key=lambda i: group[i].reward)
        used: set[int] = set()
        for c in best_first:
            if len(used) == 2 * pairs_per_prompt:
                break
            if c in used or not (keep_truncated or group[c].finished):
                continue
            r = next((i for i in worst_first if i not in used and i != c), None)
            # chosen rewards only fall and rejected ones only rise from here: the first gap too small ends it
            if r is None or group[c].reward - group[r].reward < min_margin:
                break
            used.update((c, r))
            chosen, rejected = group[c], group[r]
            pairs.append(Pair(pid, prompts[pid], chosen.completion, rejected.completion, float(chosen.reward),
                              float(rejected.reward), chosen.finished, rejected.finished))
    return pairs


def response_text(
    tokenizer: PreTrainedTokenizerBase, messages: list[Message], completion: str, finished: bool = True
) -> str:
    """The text ``PreferenceGym`` should learn after the rendered prompt for ``completion``.

    A finished completion gets the chat template's own rendering of the assistant turn (content and
    end-of-turn marker), less a trailing eos that ``PreferenceGym`` appends itself; a cut-off one is
    returned as it is.

    :raises SelfSFTError: when the template does not render the prompt as a prefix of the conversation
    """
    if not finished:
        return completion
    prompt = render_prompt(tokenizer, messages)
    full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": completion}], tokenize=False)
    if not full.startswith(prompt):
        raise SelfSFTError("the chat template does not render the prompt as a prefix of the conversation; "
                           "preference pairs need a prefix-consistent template")
    response = full[len(prompt) :]
    eos = tokenizer.eos_token
    if eos and response.rstrip().endswith(eos):
        response = response[: response.rstrip().rfind(eos)]
    return response


def pairs_to_dataset(pairs: list[Pair], tokenizer: PreTrainedTokenizerBase) -> Dataset:
    """A dataset for AgileRL's ``PreferenceGym``: rendered ``prompt``, ``chosen`` and ``rejected`` texts.

    It also carries ``prompt_id``, ``chosen_reward`` and ``rejected_reward`` (``PreferenceGym`` ignores them).

    :param pairs: from :func:`build_pairs` or :func:`read_pairs_jsonl`
    :param tokenizer: the policy's tokenizer; its chat template renders prompts and responses
    :raises SelfSFTError: when there are no pairs
    """
    if not pairs:
        raise SelfSFTError(f"no preference pairs to train on: {NO_PAIRS_HINT}")
    rows = {"prompt": [], "chosen": [], "rejected": [], "prompt_id": [], "chosen_reward": [], "rejected_reward": []}
    for p in pairs:
        rows["prompt"].append(render_prompt(tokenizer, p.messages))
        rows["chosen"].append(response_text(tokenizer, p.messages, p.chosen, p.chosen_finished))
        rows["rejected"].append(response_text(tokenizer, p.messages, p.rejected, p.rejected_finished))
        rows["prompt_id"].append(p.prompt_id)
        rows["chosen_reward"].append(p.chosen_reward)
        rows["rejected_reward"].append(p.rejected_reward)
    return Dataset.from_dict(rows)


# ---- files ----
def write_pairs_jsonl(path: str | Path, pairs: Iterable[Pair]) -> Path:
    """Write pairs as JSON lines, atomically (a temporary file in the same folder, renamed into place).

    :return: the file written
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for pair in pairs:
                fh.write(json.dumps(asdict(pair), ensure_ascii=False, allow_nan=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


_REQUIRED = {f.name for f in fields(Pair)} - {"chosen_finished", "rejected_finished"}


def read_pairs_jsonl(path: str | Path) -> list[Pair]:
    """Read a file written by :func:`write_pairs_jsonl`; a clear error names the file and line of a bad row."""
    pairs = []
    for number, row in read_jsonl(path, "pairs file"):
        if not isinstance(row, dict) or not _REQUIRED <= row.keys():
            found = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise SelfSFTError(f"{path}:{number}: a pair needs {', '.join(sorted(_REQUIRED))}; found {found}")
        pairs.append(Pair(**{f.name: row[f.name] for f in fields(Pair) if f.name in row}))
    return pairs


def load_pairs_dataset(paths: str | Path | Iterable[str | Path], tokenizer: PreTrainedTokenizerBase) -> Dataset:
    """Read one or more pairs files (or every ``*.jsonl`` of a folder, in name order) into a ``PreferenceGym`` dataset.

    :raises SelfSFTError: for a missing or bad file, or when the files hold no pairs
    """
    if isinstance(paths, (str, Path)):
        folder = Path(paths)
        paths = sorted(folder.glob("*.jsonl")) if folder.is_dir() else [folder]
        if not paths:
            raise SelfSFTError(f"no pairs files (*.jsonl) in {folder}")
    pairs = [pair for path in paths for pair in read_pairs_jsonl(path)]
    return pairs_to_dataset(pairs, tokenizer)


def pair_writer(
    run_dir: str | Path, min_margin: float = 1e-6, pairs_per_prompt: int = 1, keep_truncated: bool = False
) -> Callable[[int, Any, list[Scored]], None]:
    """A callback for ``finetune_llm_selfsft(on_scored=...)`` that keeps each iteration's pairs.

    It writes ``run_dir/pairs/iteration_NNNN.jsonl`` (``iteration_NNNN.agent_I.jsonl`` for population
    members other than agent 0); an iteration without pairs gets an empty file. A resumed run rewrites the
    files of the iterations it repeats. The options are those of :func:`build_pairs`.
    """
    build_pairs([], min_margin, pairs_per_prompt, keep_truncated)  # check the options now, not mid-run
    folder = Path(run_dir) / "pairs"

    def write(iteration: int, agent: Any, scored: list[Scored]) -> None:
        index = getattr(agent, "index", 0)
        name = f"iteration_{iteration:04d}" + (f".agent_{index}" if index else "") + ".jsonl"
        write_pairs_jsonl(folder / name, build_pairs(scored, min_margin, pairs_per_prompt, keep_truncated))

    return write


def _prompt_turns(sample: Scored) -> list[Message]:
    if not sample.messages or sample.messages[-1].get("role") != "assistant":
        raise SelfSFTError(f"a sample of prompt {sample.prompt_id} does not end with its assistant completion")
    return sample.messages[:-1]
