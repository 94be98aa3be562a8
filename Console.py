"""The FedLedger console: ``python Console.py --ip HOST --port PORT [-c "commands"]``."""

import sys

from console.app import main

if __name__ == "__main__":
    sys.exit(main())
