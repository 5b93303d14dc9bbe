"""``python -m dicomnode`` runs the command line."""

from __future__ import annotations

from dicomnode.cli import main

if __name__ == "__main__":
    main()
