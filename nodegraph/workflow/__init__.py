"""Workflow formats: ComfyUI's API format (what runs) and its UI/canvas format (what people save).

``ui_format`` converts a canvas workflow into the API format the way ComfyUI's frontend does on Queue.
"""

from .ui_format import is_api_workflow, is_ui_workflow, parse_ui_workflow, ui_to_api

__all__ = ["is_api_workflow", "is_ui_workflow", "parse_ui_workflow", "ui_to_api"]
