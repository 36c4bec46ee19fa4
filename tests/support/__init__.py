"""Helpers only tests use (STYLE item 15): nothing in shared/, services/ or projections/ imports them."""
