"""`python -m stcstore` (also under torchrun)."""

from .cli import main

if __name__ == "__main__":
    main()
