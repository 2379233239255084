from itertrain.cli import console

raise SystemExit(console())
