import sys

from mobilevlm.cli import main

sys.exit(main())
