import sys

from nest_ssl.cli import main

sys.exit(main())
