import sys

from sensiprune.commands.cli import main

sys.exit(main())
