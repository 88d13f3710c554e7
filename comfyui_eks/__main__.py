import sys

from comfyui_eks.cli import main

sys.exit(main())
