import sys

from lk_segment.commands.cli import main

sys.exit(main())
