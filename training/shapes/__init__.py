"""Training scripts for the shapes-world models (not shipped in the wheel; the weights they write are)."""
