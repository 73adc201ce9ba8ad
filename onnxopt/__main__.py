"""``python -m onnxopt`` runs the command line."""

from onnxopt.cli import main

raise SystemExit(main())
