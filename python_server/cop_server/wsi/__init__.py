"""Whole-slide regions: reading, tile planning, cross-tile prompts, stitching, streaming output."""
