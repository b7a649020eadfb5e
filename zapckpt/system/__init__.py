"""The host pieces operations stand on: the storage pool, private staging directories, locks,
deferred Ctrl-C, /proc, and the tests' fault points."""
