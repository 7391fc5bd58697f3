"""`python -m autopar`: the same command line as the `autopar` script."""

from .cli.main import main

if __name__ == "__main__":
    main(prog_name="autopar")
