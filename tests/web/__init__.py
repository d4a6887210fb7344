"""Browser tests: the canvas in a headless Chromium, and the static routes behind it."""
