"""Corpora by name or path, tokenised once and cached."""
