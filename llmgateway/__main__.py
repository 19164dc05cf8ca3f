"""`python -m llmgateway` is the `llmgateway` command."""

import sys

from .cli import main

sys.exit(main())
