"""The "shapes world": a small, exactly specified visual world (flat-colour scenes of circles,
squares, triangles and stars on a 64-px grid), its seeded renderer (any multiple of 64 px) and caption
grammar, and the tiny text-to-image model (128×128 images, 16×16 latents) and captioner trained on it,
so the whole pipeline runs offline on a CPU.
"""
