from hammerfs.cli.main import main

raise SystemExit(main())
