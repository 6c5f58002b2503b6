import sys

from lk_segment.cli import main

sys.exit(main())
