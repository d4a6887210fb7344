"""Helpers shared by the language-and-vision node families (``nodes/llm.py``, ``vision.py``, ``fusion.py``,
``safety.py``, ``loops.py``, ``augment.py``, ``strings.py``, ``dataset.py``): model folders, dtype and
device choice, image preprocessing, seeded text generation. No node classes live here.
"""
