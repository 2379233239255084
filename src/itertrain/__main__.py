from itertrain.cli import main

raise SystemExit(main())
