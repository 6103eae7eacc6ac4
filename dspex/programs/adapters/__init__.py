"""Adapters between signatures and chat messages."""

from dspex.programs.adapters.base import Adapter, AdapterResult
from dspex.programs.adapters.chat import ChatAdapter
from dspex.programs.adapters.json import JSONAdapter

__all__ = ["Adapter", "AdapterResult", "ChatAdapter", "JSONAdapter"]
