"""``lakeloom plugins``: list the plugins installed through the entry-point group."""

from __future__ import annotations

import sys

from lake.plugin import config_search_path, discover


def main() -> None:
    """Print one line per plugin: kind, name, version, target, distribution."""
    plugins = discover()
    if not plugins:
        print("no plugins installed", file=sys.stderr)
        sys.exit(1)
    print(f"{'kind':<10}{'name':<16}{'version':<10}{'target':<44}distribution")
    for p in plugins:
        print(f"{p.kind:<10}{p.name:<16}{p.version:<10}{p.target:<44}{p.distribution}")
    extra = config_search_path()
    if extra:
        print("\nextra config search path: " + ", ".join(extra))


if __name__ == "__main__":
    main()
