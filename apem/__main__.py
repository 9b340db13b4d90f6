from apem.cli import main

raise SystemExit(main())
