"""`python -m autopar`: the same command line as the `autopar` script."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="autopar")
