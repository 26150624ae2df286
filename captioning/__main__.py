"""`python -m captioning`: the commands of captioning/cli.py."""

from captioning.cli import main

if __name__ == "__main__":
    main()
