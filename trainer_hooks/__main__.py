"""``python -m trainer_hooks SCRIPT ARGS...``: the same as ``babysit run SCRIPT ARGS...``."""
import sys

from monitor.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
