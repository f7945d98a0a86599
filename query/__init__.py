"""Lookalike query: search a photo's faces, render and explain results."""
