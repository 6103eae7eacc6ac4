"""Optimizers (teleprompters) that learn instructions and demos from data."""
