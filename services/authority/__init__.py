"""The identity duties as a part of their own (DESIGN §15)."""
