import sys

from gpunet.cli import main

sys.exit(main())
