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
    w = {
        "kind": max(len("kind"), *(len(p.kind) for p in plugins)) + 2,
        "name": max(len("name"), *(len(p.name) for p in plugins)) + 2,
        "target": max(len("target"), *(len(p.target) for p in plugins)) + 2,
    }
    print(f"{'kind':<{w['kind']}}{'name':<{w['name']}}{'version':<10}{'target':<{w['target']}}dist")
    for p in plugins:
        print(
            f"{p.kind:<{w['kind']}}{p.name:<{w['name']}}{p.version:<10}"
            f"{p.target:<{w['target']}}{p.distribution}"
        )
    extra = config_search_path()
    if extra:
        print("\nextra config search path: " + ", ".join(extra))


if __name__ == "__main__":
    main()
