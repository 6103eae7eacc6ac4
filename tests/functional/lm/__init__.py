"""LM clients against the scripted LM server."""
