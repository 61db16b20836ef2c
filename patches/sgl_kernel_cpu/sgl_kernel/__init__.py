"""Placeholder until the stand-in ops land; see patches/README.md."""
