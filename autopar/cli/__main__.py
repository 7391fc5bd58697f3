"""`python -m autopar.cli`: the same command line as `autopar`."""

from . import main

if __name__ == "__main__":
    main(prog_name="autopar")
