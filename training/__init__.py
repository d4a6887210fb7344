"""Training code for the built-in models: run from a clone, never imported at run time, not in the wheel."""
