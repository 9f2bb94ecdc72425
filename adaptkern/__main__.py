import sys

from adaptkern.cli import main

sys.exit(main())
