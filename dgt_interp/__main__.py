import sys

from dgt_interp.cli import main

sys.exit(main())
