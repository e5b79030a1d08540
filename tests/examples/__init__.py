"""Tests of the example plugin distributions under examples/."""
