import sys

from isonyc_dagster.cli.main import main

sys.exit(main())
