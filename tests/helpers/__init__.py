"""Helpers more than one test suite uses: the live server, HTTP and ComfyUI-style clients, tiny SD models."""
