import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while the CLI is still loading: no traceback
    sys.exit(130)

sys.exit(main())
