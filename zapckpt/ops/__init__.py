"""The operations, one module per command family, each reading top to bottom in a function named
after its command. They use everything below them and nothing above (cli, view)."""
