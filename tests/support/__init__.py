"""Test doubles shared by test tiers (only where the real thing cannot produce the case)."""

from tests.support.scripted_lm import DEFAULT_TEXT, RecordedRequest, Reply, ScriptedLM

__all__ = ["DEFAULT_TEXT", "RecordedRequest", "Reply", "ScriptedLM"]
