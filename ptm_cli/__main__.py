"""`python -m ptm_cli` runs the same command line as `ptm`."""

from .cli import main

if __name__ == "__main__":
    main()
