"""Shapes-world tests: the built-in tiny generator, captioner and checks."""
