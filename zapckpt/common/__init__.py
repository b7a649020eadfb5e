"""What fsbackend, catalog and zapckpt share: typed errors, the one subprocess wrapper, the one
mount-table parser. Imports nothing else of the project (tests/test_layers.py)."""
