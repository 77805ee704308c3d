from chromabeam.pipelines.cli import main

raise SystemExit(main())
