"""`python -m llmgateway` is the `llmgateway` command: the one core module that names the web
layer, because the command's `serve` is the web layer's."""

import sys

from handlers.app import main

sys.exit(main())
