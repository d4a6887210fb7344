"""Server tests: a real aiohttp server on 127.0.0.1 with a real SQLite queue."""
