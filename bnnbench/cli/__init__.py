from bnnbench.cli.main import main

__all__ = ["main"]
