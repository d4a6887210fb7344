"""Language-and-vision tests: tiny transformers models through the nodes."""
