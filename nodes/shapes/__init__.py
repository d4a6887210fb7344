"""The "shapes world": a small, exactly specified visual world (64×64 flat-colour scenes of circles,
squares, triangles and stars), its seeded renderer and caption grammar, and the tiny text-to-image
model and captioner trained on it, so the whole pipeline runs offline on a CPU.
"""
