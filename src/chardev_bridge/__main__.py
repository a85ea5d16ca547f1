"""`python -m chardev_bridge`: the same as the `chardev-bridge` command."""

from chardev_bridge.cli import main

raise SystemExit(main())
