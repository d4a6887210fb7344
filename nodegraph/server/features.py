"""The feature flags the server announces (``GET /features`` and the WebSocket ``feature_flags`` reply)."""

from __future__ import annotations

#: ``max_upload_size`` is replaced by the configured cap where it is answered
FEATURES = {"supports_preview_metadata": False, "max_upload_size": 100 * 1024 * 1024}
