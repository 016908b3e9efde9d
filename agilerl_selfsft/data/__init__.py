"""Data in: prompt sets, static SFT conversations, chat rendering and tool calls.

``readers`` (every accepted file and dataset shape as one :class:`~agilerl_selfsft.data.readers.Row`),
``tasks`` (prompt sets as :class:`~agilerl_selfsft.samples.Task` lists, the built-in tasks), ``chat`` (prompts for
generation, assistant-only loss masks, training batches), ``tools`` (tool schemas, the tools prompt, the
tool-call parser), ``builtin/`` (the capitals and arithmetic data).
"""

from agilerl_selfsft.data.readers import Row, load_conversations, load_rows
from agilerl_selfsft.data.tasks import ARITHMETIC_DIR, CAPITALS_DIR, load_tasks

__all__ = ["ARITHMETIC_DIR", "CAPITALS_DIR", "Row", "load_conversations", "load_rows", "load_tasks"]
