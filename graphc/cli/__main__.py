"""python -m graphc.cli"""
from . import main

raise SystemExit(main())
