"""The test suite, a package so that its helper modules import by their path (``tests.helpers.live_server``,
``tests.server.slow_nodes``); pytest puts the repository root on ``sys.path`` for it."""
