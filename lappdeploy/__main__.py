"""`python -m lappdeploy ...` (also what `torchrun -m lappdeploy ...` runs)."""

from lappdeploy.cli import main

if __name__ == "__main__":
    main()
