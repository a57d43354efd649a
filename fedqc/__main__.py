"""``python -m fedqc`` runs the ``fedqc`` command (for environments without the script)."""

from fedqc.cli import main

if __name__ == "__main__":
    main()
