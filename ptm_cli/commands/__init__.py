"""One module per command or command group; :mod:`ptm_cli.cli` assembles them.

Commands only translate: they parse options, call the library, and write
what it returns. They import click and nothing heavy at module level.
"""
