from mcp_sandbox.cli import main

raise SystemExit(main())
