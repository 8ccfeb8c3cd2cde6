"""The ``curvlab`` command line: ``compute``, ``analyze``, ``show``. It uses the public API only."""
