import sys

from kanal.cli import main

sys.exit(main())
