"""``python -m alphaclip_integrations.detectron2``: dump Detic-style zero-shot classifier weights."""
import sys

from . import main

sys.exit(main())
