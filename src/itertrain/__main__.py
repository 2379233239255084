from itertrain.app.cli import console

raise SystemExit(console(prog="python -m itertrain"))
