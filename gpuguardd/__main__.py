import sys

from gpuguardd.cli import main

sys.exit(main())
